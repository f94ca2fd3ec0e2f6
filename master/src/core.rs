//! The master's single writer: [`Core`] owns the cluster state (the process table of
//! [`crate::supervisor`], the links of [`crate::registry`], the sampler) and is the only code
//! that changes it. The event loop of [`crate::master::run`] hands it every [`Event`]; it
//! answers the CLI's requests (`list`, `restart`, `remove`, `start`, `send`), admits or refuses
//! registrations, prints the readiness lines, and gives the stop sequence its primitives
//! ([`Core::begin_stop`], [`Core::running`], [`Core::signal`]).
//!
//! Layering: imports `event`, `state`, `supervisor`, `registry` and the leaf modules; nothing
//! below imports it (producers send [`Event`]s, they never call the core).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kennel_config::Project;
use kennel_proto::msg::{FromMaster, ListReply, ServerInfo, ServerStatus};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::console::say;
use crate::event::{Event, SendTargets};
use crate::launch::{Launch, ThisHost, plan_one};
use crate::logs;
use crate::registry::Registry;
use crate::sampler::Sampler;
use crate::state::{Proc, ServerState};
use crate::supervisor::Supervisor;

/// How this master starts servers: what [`Core`] needs besides the tables, for the servers
/// `kennel start <id>` adds from the config file too.
#[derive(Debug)]
pub(crate) struct Spawning {
    /// Servers are started by this master.
    pub(crate) spawn: bool,
    /// Binary overriding the configured ones.
    pub(crate) bin: Option<PathBuf>,
    /// Ids external by the command line (`--external`).
    pub(crate) external: Vec<String>,
    /// Tells local hosts from remote ones.
    pub(crate) this_host: ThisHost,
    /// Where new servers' log echo tasks go, when logs are echoed.
    pub(crate) echo: Option<(TaskTracker, CancellationToken)>,
    pub(crate) logs_dir: PathBuf,
}

/// The cluster state, owned by the event loop.
pub(crate) struct Core {
    project: Project,
    supervisor: Supervisor,
    sampler: Sampler,
    registry: Registry,
    /// Server id -> index in `project.servers` (= supervisor slot).
    index: HashMap<String, usize>,
    started: Instant,
    /// The readiness lines were printed.
    ready: bool,
    /// The stop sequence began: no restarts, no registrations.
    stopping: bool,
    /// How servers are started (also those `kennel start <id>` adds).
    spawning: Spawning,
}

impl Core {
    /// The core of a master running `project` (whose servers `supervisor` holds, not started
    /// yet), started at `started`.
    pub(crate) fn new(
        project: Project,
        supervisor: Supervisor,
        sampler: Sampler,
        started: Instant,
        spawning: Spawning,
    ) -> Core {
        Core {
            index: project
                .servers
                .iter()
                .enumerate()
                .map(|(i, s)| (s.info.id.clone(), i))
                .collect(),
            registry: Registry::new(project.servers.iter().map(|s| s.info.id.clone()).collect()),
            project,
            supervisor,
            sampler,
            started,
            ready: false,
            stopping: false,
            spawning,
        }
    }

    /// Starts every server this master starts, adopting those an earlier master left
    /// running (and says which).
    pub(crate) fn start_all(&mut self) {
        let adopted = self.supervisor.start_all();
        if !adopted.is_empty() {
            say(format_args!(
                "kennel: adopted {} running servers left by an earlier master: {}",
                adopted.len(),
                adopted.join(", ")
            ));
        }
        self.check_ready();
        self.update_sampler();
    }

    /// Applies one event (then the sampler follows the running processes).
    pub(crate) fn on_event(&mut self, ev: Event) {
        self.handle(ev);
        self.update_sampler();
    }

    /// The stop sequence begins: no more restarts and no registrations; returns how many
    /// servers run.
    pub(crate) fn begin_stop(&mut self) -> usize {
        self.stopping = true;
        self.supervisor.stop_restarting();
        self.running(None)
    }

    /// How many servers run (of one kind when `frontend` is given).
    pub(crate) fn running(&self, frontend: Option<bool>) -> usize {
        self.supervisor.running_count(frontend)
    }

    /// Sends `sig` to every running server (of one kind when `frontend` is given); returns
    /// how many were signalled.
    pub(crate) fn signal(&mut self, frontend: Option<bool>, sig: Signal) -> usize {
        self.supervisor.signal(frontend, sig)
    }

    /// Applies one event (the stop sequence: no sampling).
    pub(crate) fn handle(&mut self, ev: Event) {
        match ev {
            Event::Exited {
                index,
                generation,
                exit,
            } => {
                let pid = self.supervisor.running_pid(index);
                self.supervisor.on_exit(index, generation, exit);
                // Its link dies with it; do not wait for the socket to tell us, so the
                // restarted server is not refused as a duplicate.
                let id = &self.project.servers[index].info.id;
                if let Some(link) = self.registry.get(id)
                    && pid.is_some_and(|p| p == link.info.pid)
                {
                    let link_id = link.link_id;
                    self.registry.remove(id, link_id);
                    info!(server = %id, "server exited; dropped its link and told the other servers");
                }
            }
            Event::RestartDue { index, generation } => {
                if !self.stopping {
                    self.supervisor.on_restart_due(index, generation);
                }
            }
            Event::Register {
                authenticated,
                info,
                tx,
                close,
                reply,
            } => self.on_register(authenticated, info, tx, close, reply),
            Event::LinkClosed { id, link_id } => {
                if self.registry.remove(&id, link_id) {
                    info!(server = %id, "server link closed; told the other servers");
                }
            }
            Event::List { reply } => {
                let _ = reply.send(self.list());
            }
            Event::KillDue { index, generation } => {
                self.supervisor.on_kill_due(index, generation);
            }
            Event::Restart { id, reply } => {
                let _ = reply.send(self.restart(&id));
            }
            Event::Remove { ids, types, reply } => {
                let _ = reply.send(self.remove(&ids, &types));
            }
            Event::Start { ids, reply } => {
                let _ = reply.send(self.start(&ids));
            }
            Event::Report {
                id,
                link_id,
                report,
            } => self.registry.report(&id, link_id, report),
            Event::CommandReply {
                id,
                link_id,
                seq,
                result,
            } => self.registry.command_reply(&id, link_id, seq, result),
            Event::Send {
                ids,
                types,
                args,
                reply,
            } => {
                let _ = reply.send(self.send(&ids, &types, &args));
            }
        }
    }

    /// `kennel send`: the targets (every configured server when no id or type is given),
    /// each sent the command if registered. Unknown ids or types fail the whole request.
    fn send(
        &mut self,
        ids: &[String],
        types: &[String],
        args: &[String],
    ) -> Result<SendTargets, String> {
        let mut slots = self.slots_of(ids, types)?;
        if ids.is_empty() && types.is_empty() {
            slots = (0..self.project.servers.len()).collect();
        }
        Ok(slots
            .into_iter()
            .map(|i| {
                let id = self.project.servers[i].info.id.clone();
                let answer = self
                    .registry
                    .command(&id, args)
                    .ok_or_else(|| format!("not registered (state {})", self.state_of(i)));
                (id, answer)
            })
            .collect())
    }

    /// The slots named by `ids` and `types` (sorted, deduplicated); an unknown id or type is
    /// the one-line error.
    fn slots_of(&self, ids: &[String], types: &[String]) -> Result<Vec<usize>, String> {
        let mut slots = Vec::new();
        for id in ids {
            slots.push(self.slot_of(id)?);
        }
        for t in types {
            let of_type: Vec<usize> = (0..self.project.servers.len())
                .filter(|&i| self.project.servers[i].info.server_type == *t)
                .collect();
            if of_type.is_empty() {
                return Err(format!(
                    "unknown server type {t:?} (types: {})",
                    self.project.server_types().join(", ")
                ));
            }
            slots.extend(of_type);
        }
        slots.sort_unstable();
        slots.dedup();
        Ok(slots)
    }

    /// Tells the sampler which processes run now: local servers, and external ones that
    /// registered from this machine.
    fn update_sampler(&self) {
        let mut pids: Vec<u32> = self
            .supervisor
            .running()
            .filter(|(i, _)| matches!(self.supervisor.slots[*i].launch, Launch::Local(_)))
            .map(|(_, pid)| pid)
            .collect();
        for slot in &self.supervisor.slots {
            if slot.launch == Launch::External
                && let Some(link) = self.registry.get(&slot.config.info.id)
                && self
                    .spawning
                    .this_host
                    .is_known_local(&slot.config.info.host)
            {
                pids.push(link.info.pid);
            }
        }
        self.sampler.set_pids(pids);
    }

    fn refuse_while_stopping(&self) -> Result<(), String> {
        if self.stopping {
            Err("the master is stopping".to_owned())
        } else {
            Ok(())
        }
    }

    /// The slot of configured server `id`, or the one-line reason there is none.
    fn slot_of(&self, id: &str) -> Result<usize, String> {
        self.index.get(id).copied().ok_or_else(|| {
            format!(
                "unknown server id {id:?}: not in the {:?} config of {}",
                self.project.env,
                self.project.dir.display()
            )
        })
    }

    /// `kennel restart <id>`.
    fn restart(&mut self, id: &str) -> Result<String, String> {
        self.refuse_while_stopping()?;
        let i = self.slot_of(id)?;
        self.supervisor.restart(i)
    }

    /// `kennel remove <ids> --type <types>`: checks every name first, then removes.
    fn remove(&mut self, ids: &[String], types: &[String]) -> Result<String, String> {
        self.refuse_while_stopping()?;
        let slots = self.slots_of(ids, types)?;
        let said: Vec<String> = slots
            .into_iter()
            .map(|i| self.supervisor.remove(i))
            .collect();
        Ok(said.join("; "))
    }

    /// `kennel start <ids>`: ids unknown to this master are looked up in the config file,
    /// re-read now; every id is checked before anything is started.
    fn start(&mut self, ids: &[String]) -> Result<String, String> {
        self.refuse_while_stopping()?;
        if !self.spawning.spawn {
            return Err("this master does not start servers (spawn disabled)".to_owned());
        }
        let unknown: Vec<&String> = ids
            .iter()
            .filter(|id| !self.index.contains_key(*id))
            .collect();
        let mut new = Vec::new();
        if !unknown.is_empty() {
            let fresh = kennel_config::Project::load(&self.project.dir, &self.project.env)
                .map_err(|e| format!("cannot re-read the config: {e}"))?;
            for id in unknown {
                let s = fresh.server(id).ok_or_else(|| {
                    format!(
                        "unknown server id {id:?}: not in the {:?} config of {}",
                        self.project.env,
                        self.project.dir.display()
                    )
                })?;
                let launch = plan_one(
                    &fresh,
                    s,
                    self.spawning.bin.as_deref(),
                    &self.spawning.external,
                    &self.spawning.this_host,
                )
                .map_err(|e| e.to_string())?;
                new.push((s.clone(), launch));
            }
        }
        for (s, launch) in new {
            let id = s.info.id.clone();
            let external = launch == Launch::External;
            let i = self
                .supervisor
                .add(s.clone(), launch)
                .map_err(|e| e.to_string())?;
            self.index.insert(id.clone(), i);
            self.registry.add(id.clone());
            if let Some((tails, stop)) = self.spawning.echo.as_ref().filter(|_| !external) {
                let path = logs::log_path(&self.spawning.logs_dir, &id);
                let from = logs::current_len(&path);
                tails.spawn(logs::tail(id.clone(), path, from, stop.clone()));
            }
            self.project.servers.push(s);
            info!(server = %id, "server added from the config file");
        }
        let mut said = Vec::new();
        for id in ids {
            let i = self.slot_of(id)?;
            said.push(self.supervisor.start(i)?);
        }
        Ok(said.join("; "))
    }

    /// Why server `info` may not register now, or its slot.
    fn check_register(&self, authenticated: &str, info: &ServerInfo) -> Result<usize, String> {
        if self.stopping {
            return Err("the master is stopping".to_owned());
        }
        if info.id != authenticated {
            return Err(format!(
                "registration for {:?} on a link authenticated as {authenticated:?}",
                info.id
            ));
        }
        let Some(&i) = self.index.get(&info.id) else {
            return Err(format!(
                "unknown server id {:?}: not in the {:?} config of {}",
                info.id,
                self.project.env,
                self.project.dir.display()
            ));
        };
        let configured = &self.project.servers[i].info.server_type;
        if info.server_type != *configured {
            return Err(format!(
                "server {} registered as type {:?} but is configured as {configured:?}",
                info.id, info.server_type
            ));
        }
        if self.registry.get(&info.id).is_some() {
            return Err(format!(
                "server {} is already registered (its link is live)",
                info.id
            ));
        }
        self.supervisor.check_registering_pid(i, info.pid)?;
        Ok(i)
    }

    fn on_register(
        &mut self,
        authenticated: String,
        info: ServerInfo,
        tx: mpsc::Sender<FromMaster>,
        close: CancellationToken,
        reply: oneshot::Sender<Result<u64, String>>,
    ) {
        match self.check_register(&authenticated, &info) {
            Err(reason) => {
                warn!(server = %info.id, "registration refused: {reason}");
                let _ = reply.send(Err(reason));
            }
            Ok(i) => {
                let id = info.id.clone();
                let pid = info.pid;
                let link_id = self.registry.admit(info, tx, close);
                if reply.send(Ok(link_id)).is_err() {
                    // The link task is gone already.
                    self.registry.remove(&id, link_id);
                    return;
                }
                self.supervisor.mark_registered(i, pid);
                info!(server = %id, pid, "server registered");
                self.check_ready();
            }
        }
    }

    /// Whether every server this master starts has registered at least once (external ones
    /// are not waited for: they may be started later, by hand or another supervisor).
    fn is_ready(&self) -> bool {
        self.supervisor
            .slots
            .iter()
            .filter(|s| s.launch != Launch::External)
            .all(|s| self.registry.registered_once(&s.config.info.id))
    }

    /// Prints the readiness lines once every server this master starts has registered.
    fn check_ready(&mut self) {
        if self.ready || !self.is_ready() {
            return;
        }
        self.ready = true;
        let waiting: Vec<&str> = self
            .supervisor
            .slots
            .iter()
            .filter(|s| {
                s.launch == Launch::External && !self.registry.registered_once(&s.config.info.id)
            })
            .map(|s| s.config.info.id.as_str())
            .collect();
        let registered = self.project.servers.len() - waiting.len();
        if waiting.is_empty() {
            say(format_args!(
                "kennel: cluster ready: {registered} servers registered in {} ms",
                self.started.elapsed().as_millis()
            ));
        } else {
            say(format_args!(
                "kennel: cluster ready: {registered} servers registered in {} ms \
                 (external, not registered yet: {})",
                self.started.elapsed().as_millis(),
                waiting.join(", ")
            ));
        }
        for s in self.project.servers.iter().filter(|s| s.info.frontend) {
            if let Some(port) = s.info.client_port {
                say(format_args!(
                    "kennel: clients connect to {} at {}:{port}",
                    s.info.id, s.info.host
                ));
            }
        }
    }

    /// The state `kennel list` shows for slot `i`.
    fn state_of(&self, i: usize) -> ServerState {
        let slot = &self.supervisor.slots[i];
        ServerState::of(slot.proc, self.registry.link_state(&slot.config.info.id))
    }

    /// The server table for `kennel list`. The pid of a remote server is the one it
    /// registered with (on its host); its resources are not sampled.
    fn list(&self) -> ListReply {
        let servers = self
            .supervisor
            .slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let link = self.registry.get(&slot.config.info.id);
                let state = self.state_of(i);
                let remote = matches!(slot.launch, Launch::Remote(_));
                let (pid, uptime, adopted, local_pid) = match slot.proc {
                    Proc::Running {
                        pid,
                        since,
                        adopted,
                        ..
                    } => {
                        if remote {
                            (
                                link.map_or(0, |l| l.info.pid),
                                since.elapsed(),
                                adopted,
                                None,
                            )
                        } else {
                            (pid, since.elapsed(), adopted, Some(pid))
                        }
                    }
                    Proc::Unmanaged => match link {
                        Some(l) => (
                            l.info.pid,
                            l.since.elapsed(),
                            false,
                            self.spawning
                                .this_host
                                .is_known_local(&slot.config.info.host)
                                .then_some(l.info.pid),
                        ),
                        None => (0, Duration::ZERO, false, None),
                    },
                    _ => (0, Duration::ZERO, false, None),
                };
                let info = link
                    .map(|l| l.info.clone())
                    .unwrap_or_else(|| ServerInfo::from_config(&slot.config, pid));
                let usage = local_pid.map(|p| self.sampler.usage(p)).unwrap_or_default();
                ServerStatus {
                    info: Some(info),
                    state: state.to_wire(),
                    pid,
                    uptime_ms: u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX),
                    restarts: slot.restarts,
                    adopted,
                    rss_bytes: usage.rss,
                    cpu_percent: usage.cpu,
                    clients: link.and_then(|l| l.clients),
                    status: link.map(|l| l.status.clone()).unwrap_or_default(),
                    rpc: link.and_then(|l| l.rpc.clone()),
                    panics: link.map(|l| l.panics.clone()).unwrap_or_default(),
                    dropped: link.map(|l| l.dropped.clone()).unwrap_or_default(),
                    remote,
                    external: slot.launch == Launch::External,
                }
            })
            .collect();
        ListReply {
            servers,
            ready: self.is_ready(),
        }
    }
}
