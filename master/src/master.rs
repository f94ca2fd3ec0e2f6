//! The master itself: [`run`] binds everything together. It owns the event loop that is the
//! only writer of the cluster state (the process table of [`crate::supervisor`] and the links
//! of [`crate::registry`]); child-wait tasks, restart timers and link tasks talk to it through
//! one bounded mpsc of [`Event`]s. It also owns the stop sequence.
//!
//! Shutdown: `shutdown` (from the caller, e.g. SIGINT/SIGTERM) or a CLI `stop` ends the event
//! loop; the stop sequence then SIGTERMs frontends, waits for them, SIGTERMs backends, SIGKILLs
//! whatever is left at the deadline, reaps every child, closes every link and returns.
//!
//! A master that is killed (SIGKILL, crash) runs no stop sequence: its servers keep serving
//! and keep redialling the master port. The next master started on the same project adopts
//! them (see [`crate::supervisor`]) instead of starting duplicates; they re-register by
//! themselves and the readiness line is printed once every configured server has. So:
//! Ctrl-C / SIGTERM to the master = stop everything; SIGKILL / crash of the master = the
//! servers keep running and are re-adopted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kennel_config::{Project, Secrets, ServerConfig};
use kennel_proto::msg::{FromMaster, ListReply, Report, ServerInfo, ServerStatus};
use kennel_proto::net::PreAuthGate;
use nix::sys::signal::Signal;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::MasterError;
use crate::console::say;
use crate::launch::{Launcher, ThisHost};
use crate::listener::{self, Shared};
use crate::logs;
use crate::metrics::{self, MetricsConfig};
use crate::procfs::RUN_DIR;
use crate::registry::Answer;
use crate::registry::Registry;
use crate::sampler::Sampler;
use crate::supervisor::{Exit, Launch, Proc, SpawnEnv, Supervisor, plan, plan_one};

/// Where server logs go, relative to the project directory.
pub const LOGS_DIR: &str = "logs";
/// Default bound on the whole stop sequence before the remaining servers are SIGKILLed.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time frontends get to exit before backends are told to stop.
pub const DEFAULT_FRONTEND_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SIGKILLed servers get to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long link and tail tasks get to finish once the cluster has stopped.
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// Capacity of the event channel.
const EVENT_QUEUE: usize = 1024;
/// Connections allowed to be authenticating at once (then the oldest is closed for a new
/// one: idle junk cannot starve registrations and the CLI).
const MAX_PENDING_AUTH: usize = 128;
/// ... and from one source address.
const MAX_PENDING_AUTH_PER_IP: usize = 64;

/// What the master runs: the project, its secrets and how to treat the servers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StartOptions {
    /// The loaded project (a relative `dir` is made absolute against the current directory).
    pub project: Project,
    /// The cluster's secrets; servers get `secrets.server` in `KENNEL_SERVER_SECRET`.
    pub secrets: Secrets,
    /// Binary for every server, overriding the configured ones.
    pub bin: Option<PathBuf>,
    /// Start the configured servers (`false`: only accept registrations, e.g. when servers
    /// are started by another supervisor).
    pub spawn: bool,
    /// Servers never started by this master, in addition to those whose entry says
    /// `"external": true`: they are started by hand or by another supervisor and register.
    pub external: Vec<String>,
    /// Echo each server's log file on stdout as `[<id>] <line>`.
    pub echo_logs: bool,
    /// Bound on the stop sequence before remaining servers are SIGKILLed.
    pub stop_timeout: Duration,
    /// Time frontends get to exit before backends are told to stop.
    pub frontend_stop_timeout: Duration,
}

impl StartOptions {
    /// Options that spawn every server with its configured binary and echo their logs.
    pub fn new(project: Project, secrets: Secrets) -> StartOptions {
        StartOptions {
            project,
            secrets,
            bin: None,
            spawn: true,
            external: Vec::new(),
            echo_logs: true,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            frontend_stop_timeout: DEFAULT_FRONTEND_STOP_TIMEOUT,
        }
    }
}

/// What the event loop hears about.
#[derive(Debug)]
pub(crate) enum Event {
    /// A server's process ended (a child was reaped, or an adopted one's pidfd fired).
    Exited {
        index: usize,
        generation: u64,
        exit: Exit,
    },
    /// The SIGKILL delay after a `restart`/`remove` SIGTERM passed.
    KillDue { index: usize, generation: u64 },
    /// A restart delay passed.
    RestartDue { index: usize, generation: u64 },
    /// An authenticated server sent `Register`; the reply is its link id or the refusal.
    Register {
        /// The id the link authenticated as.
        authenticated: String,
        info: ServerInfo,
        tx: mpsc::Sender<FromMaster>,
        close: CancellationToken,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// A registered link ended.
    LinkClosed { id: String, link_id: u64 },
    /// The CLI asks for the server table.
    List { reply: oneshot::Sender<ListReply> },
    /// The CLI asks to restart one server.
    Restart {
        id: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The CLI asks to remove servers (by id and by type).
    Remove {
        ids: Vec<String>,
        types: Vec<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The CLI asks to start servers (removed ones, or ids new in the config file).
    Start {
        ids: Vec<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// A server reported its client count, status columns and RPC counters.
    Report {
        id: String,
        link_id: u64,
        report: Report,
    },
    /// A server answered a `kennel send` command.
    CommandReply {
        id: String,
        link_id: u64,
        seq: u64,
        result: Result<String, String>,
    },
    /// The CLI asks to send a command to servers (by id and type; neither: every server).
    /// The reply lists each target with what to wait on, or why there is nothing to wait on.
    Send {
        ids: Vec<String>,
        types: Vec<String>,
        args: Vec<String>,
        reply: oneshot::Sender<Result<SendTargets, String>>,
    },
}

/// Each target of a `kennel send`: its answer to wait for, or why it gets none.
pub(crate) type SendTargets = Vec<(String, Result<Answer, String>)>;

/// Runs a master on `listener` until `shutdown` is cancelled or a CLI asks it to stop: spawns
/// the servers (unless `opts.spawn` is false), accepts registrations and CLI links, restarts
/// crashed servers, then stops every server and returns once all of them are reaped.
///
/// Prints its status lines on stdout (`kennel: master ... listening on ...`,
/// `kennel: cluster ready: ...`, `kennel: clients connect to ...`, `kennel: cluster stopped`).
pub async fn run(
    opts: StartOptions,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), MasterError> {
    let started = Instant::now();
    let addr = listener.local_addr().map_err(MasterError::Listener)?;
    let StartOptions {
        mut project,
        secrets,
        bin,
        spawn,
        mut external,
        echo_logs,
        stop_timeout,
        frontend_stop_timeout,
    } = opts;
    // Servers run in the project directory and relative binaries resolve against it: make it
    // absolute so neither depends on the master's own working directory.
    if let Ok(dir) = std::path::absolute(&project.dir) {
        project.dir = dir;
    }

    if let Some(id) = external.iter().find(|id| project.server(id).is_none()) {
        return Err(MasterError::Setting {
            what: format!(
                "--external {id}: unknown server id (not in the {:?} config of {})",
                project.env,
                project.dir.display()
            ),
        });
    }
    if !spawn {
        external = project.servers.iter().map(|s| s.id.clone()).collect();
    }
    let this_host = ThisHost::detect();
    let launches = plan(&project, bin.as_deref(), &external, &this_host)?;
    let launcher = Launcher::of(&project.master);
    let crash_loop = project.master.settings.crash_loop;
    let rotation = project.master.settings.logs;
    let metrics = match MetricsConfig::of(&project.master) {
        Some(m) => Some(m.bind().await?),
        None => None,
    };
    let logs_dir = project.dir.join(LOGS_DIR);
    let run_dir = project.dir.join(RUN_DIR);
    if launches.iter().any(|l| *l != Launch::External) {
        std::fs::create_dir_all(&logs_dir).map_err(|source| MasterError::Logs {
            path: logs_dir.clone(),
            source,
        })?;
    }

    say(format_args!(
        "kennel: master {} listening on {addr} (env {}, project {})",
        project.master.id,
        project.env,
        project.dir.display()
    ));

    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    // Cancelled by the caller's `shutdown` or by a CLI `stop`; ends the event loop.
    let stop = shutdown.child_token();
    // Cancelled at the very end: closes the listener and every link.
    let conns = CancellationToken::new();
    let tracker = TaskTracker::new();
    let shared = Arc::new(Shared {
        master_id: project.master.id.clone(),
        server_secret: secrets.server.clone().into_bytes(),
        cli_secret: secrets.cli.clone().into_bytes(),
        events: events_tx.clone(),
        stop: stop.clone(),
        conns: conns.clone(),
        pending: PreAuthGate::new(MAX_PENDING_AUTH, MAX_PENDING_AUTH_PER_IP),
        evictions: Default::default(),
        tracker: tracker.clone(),
    });
    tracker.spawn(listener::accept_loop(listener, shared));
    if let Some(l) = metrics {
        if let Ok(a) = l.local_addr() {
            say(format_args!("kennel: metrics on http://{a}/metrics"));
        }
        tokio::spawn(metrics::serve(l, events_tx.clone(), conns.clone()));
    }
    // Log rotation runs as long as the master does (it ends with the links).
    tokio::spawn(logs::rotate_loop(logs_dir.clone(), rotation, conns.clone()));

    // Cancelled after the last child is reaped: tails read once more and end.
    let tails_stop = CancellationToken::new();
    let tails = TaskTracker::new();
    if echo_logs {
        for (s, _) in project
            .servers
            .iter()
            .zip(&launches)
            .filter(|(_, l)| **l != Launch::External)
        {
            let path = logs::log_path(&logs_dir, &s.id);
            let from = logs::current_len(&path);
            tails.spawn(logs::tail(s.id.clone(), path, from, tails_stop.clone()));
        }
    }

    let spawn_env = SpawnEnv {
        env: project.env.clone(),
        dir: project.dir.clone(),
        server_secret: secrets.server.clone(),
        master_host: project.master.host.clone(),
        master_port: addr.port(),
    };
    let supervisor = Supervisor::new(
        &project.servers,
        launches,
        &logs_dir,
        &run_dir,
        spawn_env,
        crash_loop,
        stop_timeout,
        launcher,
        events_tx,
    )?;
    let sampler = Sampler::start(conns.clone());
    let mut core = Core {
        index: project
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect(),
        registry: Registry::new(project.servers.iter().map(|s| s.id.clone()).collect()),
        project,
        supervisor,
        sampler,
        started,
        ready: false,
        stopping: false,
        spawn,
        bin,
        external,
        this_host,
        echo: echo_logs.then(|| (tails.clone(), tails_stop.clone())),
        logs_dir,
    };
    let adopted = core.supervisor.start_all();
    if !adopted.is_empty() {
        say(format_args!(
            "kennel: adopted {} running servers left by an earlier master: {}",
            adopted.len(),
            adopted.join(", ")
        ));
    }
    core.check_ready();
    core.update_sampler();

    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(ev) = events.recv() => {
                core.handle(ev);
                core.update_sampler();
            }
        }
    }
    core.stop_all(&mut events, frontend_stop_timeout, stop_timeout)
        .await;

    conns.cancel();
    tracker.close();
    if timeout(DRAIN_WAIT, tracker.wait()).await.is_err() {
        warn!("some master links did not close in time");
    }
    tails_stop.cancel();
    tails.close();
    let _ = timeout(DRAIN_WAIT, tails.wait()).await;
    say("kennel: cluster stopped");
    Ok(())
}

/// The cluster state, owned by the event loop.
struct Core {
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
    /// Servers are started by this master.
    spawn: bool,
    /// Binary overriding the configured ones (for servers added by `kennel start <id>`).
    bin: Option<PathBuf>,
    /// Ids external by the command line (`--external`).
    external: Vec<String>,
    /// Tells local hosts from remote ones.
    this_host: ThisHost,
    /// Where new servers' log echo tasks go, when logs are echoed.
    echo: Option<(TaskTracker, CancellationToken)>,
    logs_dir: PathBuf,
}

impl Core {
    fn handle(&mut self, ev: Event) {
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
                let id = &self.project.servers[index].id;
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
                let id = self.project.servers[i].id.clone();
                let answer = self.registry.command(&id, args).ok_or_else(|| {
                    format!(
                        "not registered (state {})",
                        self.state_of(i, self.registry.get(&id).is_some())
                    )
                });
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
                .filter(|&i| self.project.servers[i].server_type == *t)
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
                && let Some(link) = self.registry.get(&slot.config.id)
                && self.this_host.is_known_local(&slot.config.host)
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
        if !self.spawn {
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
                    self.bin.as_deref(),
                    &self.external,
                    &self.this_host,
                )
                .map_err(|e| e.to_string())?;
                new.push((s.clone(), launch));
            }
        }
        for (s, launch) in new {
            let id = s.id.clone();
            let external = launch == Launch::External;
            let i = self
                .supervisor
                .add(s.clone(), launch)
                .map_err(|e| e.to_string())?;
            self.index.insert(id.clone(), i);
            self.registry.add(id.clone());
            if let Some((tails, stop)) = self.echo.as_ref().filter(|_| !external) {
                let path = logs::log_path(&self.logs_dir, &id);
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
        let configured = &self.project.servers[i].server_type;
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
            .all(|s| self.registry.registered_once(&s.config.id))
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
                s.launch == Launch::External && !self.registry.registered_once(&s.config.id)
            })
            .map(|s| s.config.id.as_str())
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
        for s in self.project.servers.iter().filter(|s| s.frontend) {
            if let Some(port) = s.client_port {
                say(format_args!(
                    "kennel: clients connect to {} at {}:{port}",
                    s.id, s.host
                ));
            }
        }
    }

    /// The state `kennel list` shows for slot `i` (`linked`: its master link is live).
    fn state_of(&self, i: usize, linked: bool) -> &'static str {
        let silent = linked
            && self
                .registry
                .get(&self.supervisor.slots[i].config.id)
                .is_some_and(|l| l.silent());
        match self.supervisor.slots[i].proc {
            Proc::Running {
                registered,
                signalled,
                ..
            } => {
                if signalled {
                    "stopping"
                } else if silent {
                    "unreachable"
                } else if linked {
                    "running"
                } else if registered {
                    "unlinked"
                } else {
                    "starting"
                }
            }
            Proc::Restarting => "restarting",
            Proc::Exited => "exited",
            Proc::CrashLoop => "crashloop",
            Proc::Removed => "removed",
            Proc::Unmanaged if silent => "unreachable",
            Proc::Unmanaged if linked => "external",
            Proc::Unmanaged => "down",
        }
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
                let link = self.registry.get(&slot.config.id);
                let state = self.state_of(i, link.is_some());
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
                            self.this_host
                                .is_known_local(&slot.config.host)
                                .then_some(l.info.pid),
                        ),
                        None => (0, Duration::ZERO, false, None),
                    },
                    _ => (0, Duration::ZERO, false, None),
                };
                let info = link
                    .map(|l| l.info.clone())
                    .unwrap_or_else(|| config_info(&slot.config, pid));
                let usage = local_pid.map(|p| self.sampler.usage(p)).unwrap_or_default();
                ServerStatus {
                    info: Some(info),
                    state: state.to_owned(),
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

    /// Processes events until no server (of one kind, when `frontend` is given) is running,
    /// or until `deadline`. Returns whether they all exited.
    async fn wait_for(
        &mut self,
        events: &mut mpsc::Receiver<Event>,
        frontend: Option<bool>,
        deadline: Instant,
    ) -> bool {
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            if self.supervisor.running_count(frontend) == 0 {
                return true;
            }
            tokio::select! {
                Some(ev) = events.recv() => self.handle(ev),
                _ = sleep_until(deadline) => return false,
            }
        }
    }

    /// The stop sequence (see the module docs).
    async fn stop_all(
        &mut self,
        events: &mut mpsc::Receiver<Event>,
        frontend_timeout: Duration,
        total_timeout: Duration,
    ) {
        self.stopping = true;
        self.supervisor.stop_restarting();
        let t0 = Instant::now();
        let deadline = t0 + total_timeout;
        info!(
            running = self.supervisor.running_count(None),
            "stopping the cluster"
        );

        if self.supervisor.signal(Some(true), Signal::SIGTERM) > 0
            && !self
                .wait_for(events, Some(true), (t0 + frontend_timeout).min(deadline))
                .await
        {
            warn!(
                "frontends still running after {:.1} s; stopping backends anyway",
                frontend_timeout.as_secs_f64()
            );
        }
        self.supervisor.signal(Some(false), Signal::SIGTERM);
        if !self.wait_for(events, None, deadline).await {
            let n = self.supervisor.signal(None, Signal::SIGKILL);
            warn!(
                "{n} servers still running after {:.1} s: sent SIGKILL",
                total_timeout.as_secs_f64()
            );
            if !self
                .wait_for(events, None, Instant::now() + KILL_WAIT)
                .await
            {
                error!(
                    "{} servers could not be reaped after SIGKILL",
                    self.supervisor.running_count(None)
                );
            }
        }
    }
}

/// A server's info as configured (for servers that have not registered).
fn config_info(s: &ServerConfig, pid: u32) -> ServerInfo {
    ServerInfo {
        id: s.id.clone(),
        server_type: s.server_type.clone(),
        host: s.host.clone(),
        port: u32::from(s.port),
        frontend: s.frontend,
        client_port: s.client_port.map(u32::from).unwrap_or(0),
        pid,
        extra_json: serde_json::Value::Object(s.extra.clone()).to_string(),
    }
}
