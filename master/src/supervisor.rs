//! The process table and each server's life cycle: spawning, one exit watcher per process
//! feeding [`Event::Exited`] into the master's event loop, restarts per [`RestartPolicy`] with
//! [`Backoff`] and crash-loop detection ([`CrashLoop`]), operator restarts/removals/starts,
//! re-adoption of servers a previous master left running, and process-group signals for the
//! stop sequence. How a server is started (which binary, where, the command line) is
//! [`crate::launch`]; what the table knows of a process is [`Proc`], whose visible state is
//! [`crate::state::ServerState`].
//!
//! Each server runs as `<bin> --id <id> --env <env> <args...>` in the project directory, in a
//! process group of its own (a terminal's Ctrl-C reaches only the master, and the master can
//! signal a server together with anything it started), with stdin `/dev/null` and stdout and
//! stderr appended to `logs/<id>.log`. When a server exits, whatever is left in its process
//! group is SIGKILLed. Nothing ties a server's life to the master's: servers outlive a crashed
//! master.
//!
//! Remote servers (a `host` that is not this machine, see [`crate::launch`]) are started
//! through the launcher command instead (its process stands for the server), and signalled
//! through the remote-signal command with the pid they registered with. External servers
//! (`"external": true`, `kennel start --external <ids>`) are never started, restarted or
//! signalled: they only register.
//!
//! Re-adoption: every spawned server gets a pid file `.kennel/run/<id>.pid` (pid and start
//! time), removed when its exit is seen. At start the master adopts, instead of spawning, each
//! server whose pid file names a live process with the same start time and `--id <id>` on its
//! command line. An adopted server is not our child: its exit is watched through a pidfd
//! (readable = exited) and its exit status is unknown. It re-registers by itself (servers
//! redial the master), and is restarted per its policy when it dies.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kennel_config::ServerConfig;
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::MasterError;
use crate::backoff::Backoff;
use crate::event::{Event, Exit};
use crate::launch::{self, Launch, Launcher, SpawnEnv};
use crate::logs;
use crate::policy::{CrashLoop, RestartPolicy};
use crate::procfs::{self, Adoptable};
use crate::state::{LinkState, Proc, ServerState};

/// How many lines of a crash-looping server's log the master logs.
const CRASH_LOG_LINES: usize = 10;

/// What happens when a running server exits next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnExit {
    /// Its restart policy, backoff and crash-loop limit decide.
    Policy,
    /// Started again at once (`kennel restart`).
    RestartNow,
    /// Not restarted (`kennel remove`).
    Remove,
}

/// One configured server and its process.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) config: ServerConfig,
    /// How it is started.
    pub(crate) launch: Launch,
    /// The pid it registered with since its last start (the remote pid for remote servers).
    registered_pid: Option<u32>,
    log: PathBuf,
    pid_file: PathBuf,
    pub(crate) proc: Proc,
    /// Bumped at every spawn and every scheduled restart; stale events carry an old value.
    generation: u64,
    pub(crate) restarts: u32,
    backoff: Backoff,
    policy: RestartPolicy,
    /// When its policy restarts happened (for the crash-loop limit).
    recent: VecDeque<Instant>,
    on_exit: OnExit,
}

/// The process table.
#[derive(Debug)]
pub(crate) struct Supervisor {
    pub(crate) slots: Vec<Slot>,
    spawn_env: SpawnEnv,
    logs_dir: PathBuf,
    run_dir: PathBuf,
    crash_loop: CrashLoop,
    /// How long `restart`/`remove` wait after SIGTERM before SIGKILL.
    kill_after: Duration,
    /// Starts and signals remote servers.
    launcher: Launcher,
    events: mpsc::Sender<Event>,
    /// Cancelled by [`Supervisor::stop_restarting`]: ends pending timers. Owned here.
    restarts_stop: CancellationToken,
}

impl Supervisor {
    /// A table of `servers`; `launches[i]` says how `servers[i]` is started.
    /// Fails on an invalid `restart` policy.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        servers: &[ServerConfig],
        launches: Vec<Launch>,
        logs_dir: &Path,
        run_dir: &Path,
        spawn_env: SpawnEnv,
        crash_loop: CrashLoop,
        kill_after: Duration,
        launcher: Launcher,
        events: mpsc::Sender<Event>,
    ) -> Result<Supervisor, MasterError> {
        let mut sup = Supervisor {
            slots: Vec::new(),
            spawn_env,
            logs_dir: logs_dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            crash_loop,
            kill_after,
            launcher,
            events,
            restarts_stop: CancellationToken::new(),
        };
        for (config, launch) in servers.iter().zip(launches) {
            sup.add(config.clone(), launch)?;
        }
        Ok(sup)
    }

    /// Adds server `config` (not started); returns its slot.
    pub(crate) fn add(
        &mut self,
        config: ServerConfig,
        launch: Launch,
    ) -> Result<usize, MasterError> {
        let policy = config.settings.restart;
        self.slots.push(Slot {
            log: logs::log_path(&self.logs_dir, &config.info.id),
            pid_file: procfs::pid_file(&self.run_dir, &config.info.id),
            proc: if launch == Launch::External {
                Proc::Unmanaged
            } else {
                Proc::Restarting
            },
            config,
            launch,
            registered_pid: None,
            generation: 0,
            restarts: 0,
            backoff: Backoff::default(),
            policy,
            recent: VecDeque::new(),
            on_exit: OnExit::Policy,
        });
        Ok(self.slots.len() - 1)
    }

    /// Starts every managed server, adopting those an earlier master left running; returns
    /// the ids adopted.
    pub(crate) fn start_all(&mut self) -> Vec<String> {
        let mut adopted = Vec::new();
        for i in 0..self.slots.len() {
            if self.slots[i].launch == Launch::External {
                continue;
            }
            let slot = &self.slots[i];
            match procfs::find_adoptable(&slot.pid_file, &slot.config.info.id) {
                Some(found) => {
                    adopted.push(slot.config.info.id.clone());
                    self.adopt(i, found);
                }
                None => {
                    procfs::remove_pid_file(&slot.pid_file);
                    self.spawn(i);
                }
            }
        }
        adopted
    }

    /// Takes over server `i`, already running as `found`.
    fn adopt(&mut self, i: usize, found: Adoptable) {
        let slot = &mut self.slots[i];
        slot.generation += 1;
        let pid = found.pid;
        slot.proc = Proc::Running {
            pid,
            since: Instant::now()
                .checked_sub(found.age)
                .unwrap_or_else(Instant::now),
            registered: false,
            signalled: false,
            adopted: true,
        };
        info!(server = %slot.config.info.id, pid, "adopted the running server (left by an earlier master)");
        let events = self.events.clone();
        let generation = slot.generation;
        tokio::spawn(async move {
            let watched = procfs::watch_exit(found.pidfd).await;
            let _ = events
                .send(Event::Exited {
                    index: i,
                    generation,
                    exit: Exit::of_adopted(watched),
                })
                .await;
        });
    }

    /// Spawns server `i` and a task that reports its exit; a failed spawn is retried later.
    fn spawn(&mut self, i: usize) {
        let bin = match &self.slots[i].launch {
            Launch::External => return,
            Launch::Local(b) | Launch::Remote(b) => b.clone(),
        };
        let slot = &self.slots[i];
        let spawned = logs::open_log(&slot.log)
            .and_then(|log| {
                slot.launch
                    .command(&slot.config, &self.spawn_env, &self.launcher, log)
            })
            .and_then(|mut cmd| cmd.spawn());
        let slot = &mut self.slots[i];
        slot.on_exit = OnExit::Policy;
        slot.registered_pid = None;
        let id = slot.config.info.id.clone();
        match spawned {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                slot.generation += 1;
                slot.proc = Proc::Running {
                    pid,
                    since: Instant::now(),
                    registered: false,
                    signalled: false,
                    adopted: false,
                };
                if let Err(e) = procfs::write_pid_file(&slot.pid_file, pid) {
                    warn!(server = %id, pid, cause = %e, path = %slot.pid_file.display(),
                        "cannot write the pid file: a new master could not adopt this server");
                }
                if matches!(slot.launch, Launch::Remote(_)) {
                    info!(server = %id, launcher_pid = pid, host = %slot.config.info.host,
                        bin = %bin.display(), "server launched on its host");
                } else {
                    info!(server = %id, pid, bin = %bin.display(), "server started");
                }
                let events = self.events.clone();
                let generation = slot.generation;
                tokio::spawn(async move {
                    let status = child.wait().await;
                    // The receiver outlives every child unless the master is gone already.
                    let _ = events
                        .send(Event::Exited {
                            index: i,
                            generation,
                            exit: Exit::of_child(status),
                        })
                        .await;
                });
            }
            Err(e) => {
                let delay = slot.backoff.on_exit(Duration::ZERO);
                error!(server = %id, bin = %bin.display(), cause = %e,
                    "cannot start server; retrying in {:.1} s", delay.as_secs_f64());
                self.schedule_restart(i, delay);
            }
        }
    }

    fn schedule_restart(&mut self, i: usize, delay: Duration) {
        let slot = &mut self.slots[i];
        slot.generation += 1;
        slot.proc = Proc::Restarting;
        let generation = slot.generation;
        let events = self.events.clone();
        let stop = self.restarts_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {
                    let _ = events.send(Event::RestartDue { index: i, generation }).await;
                }
                _ = stop.cancelled() => {}
            }
        });
    }

    /// A server's process ended: restart it now, later or never (see the module docs).
    pub(crate) fn on_exit(&mut self, i: usize, generation: u64, exit: Exit) {
        let stopping = self.restarts_stop.is_cancelled();
        let crash_loop = self.crash_loop;
        let slot = &mut self.slots[i];
        let Proc::Running { pid, since, .. } = slot.proc else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        let ran = since.elapsed();
        let status = exit.text;
        let id = slot.config.info.id.clone();
        // A server's process group lives and dies with it: anything it started and left
        // behind would otherwise be an orphan nobody accounts for.
        procfs::signal_group(pid, Signal::SIGKILL);
        procfs::remove_pid_file(&slot.pid_file);
        let on_exit = std::mem::replace(&mut slot.on_exit, OnExit::Policy);
        if stopping {
            slot.proc = Proc::Exited;
            info!(server = %id, pid, %status, "server exited");
            return;
        }
        match on_exit {
            OnExit::Remove => {
                slot.proc = Proc::Removed;
                info!(server = %id, pid, %status, "server removed");
                return;
            }
            OnExit::RestartNow => {
                info!(server = %id, pid, %status, "server exited; restarting it now");
                slot.restarts += 1;
                self.spawn(i);
                return;
            }
            OnExit::Policy => {}
        }
        let policy = slot.policy;
        if policy == RestartPolicy::Never
            || (policy == RestartPolicy::OnFailure && exit.success == Some(true))
        {
            slot.proc = Proc::Exited;
            warn!(server = %id, pid, %status, "server exited; not restarting it (restart: {})",
                policy.name());
            return;
        }
        let now = Instant::now();
        while slot
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > crash_loop.window)
        {
            slot.recent.pop_front();
        }
        if slot.recent.len() >= crash_loop.restarts {
            slot.proc = Proc::CrashLoop;
            let last = logs::last_log_lines(&slot.log, CRASH_LOG_LINES)
                .map(|lines| lines.join("\n    "))
                .unwrap_or_else(|e| format!("(cannot read {}: {e})", slot.log.display()));
            error!(server = %id, pid, %status,
                "server is crash-looping ({} restarts within {} s): not restarting it; \
                 `kennel start {id}` starts it again. Last lines of {}:\n    {last}",
                slot.recent.len(), crash_loop.window.as_secs(), slot.log.display());
            return;
        }
        let delay = slot.backoff.on_exit(ran);
        warn!(server = %id, pid, %status, ran_s = ran.as_secs_f64(),
            "server exited; restarting in {:.1} s", delay.as_secs_f64());
        self.schedule_restart(i, delay);
    }

    /// A restart delay passed.
    pub(crate) fn on_restart_due(&mut self, i: usize, generation: u64) {
        let slot = &mut self.slots[i];
        if self.restarts_stop.is_cancelled()
            || slot.generation != generation
            || slot.proc != Proc::Restarting
        {
            return;
        }
        slot.restarts += 1;
        slot.recent.push_back(Instant::now());
        self.spawn(i);
    }

    /// SIGTERMs running server `i` and decides what its exit leads to; SIGKILLs it if it is
    /// still running after the kill delay.
    fn terminate(&mut self, i: usize, then: OnExit) {
        let kill_after = self.kill_after;
        let slot = &mut self.slots[i];
        let Proc::Running { pid, signalled, .. } = &mut slot.proc else {
            return;
        };
        let pid = *pid;
        *signalled = true;
        slot.on_exit = then;
        info!(server = %slot.config.info.id, pid, "signalling server: SIGTERM");
        self.signal_server(i, pid, Signal::SIGTERM);
        let slot = &self.slots[i];
        let (events, generation, stop) = (
            self.events.clone(),
            slot.generation,
            self.restarts_stop.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(kill_after) => {
                    let _ = events.send(Event::KillDue { index: i, generation }).await;
                }
                _ = stop.cancelled() => {}
            }
        });
    }

    /// The kill delay after a `restart`/`remove` SIGTERM passed.
    pub(crate) fn on_kill_due(&mut self, i: usize, generation: u64) {
        let slot = &self.slots[i];
        if let Proc::Running { pid, .. } = slot.proc
            && slot.generation == generation
        {
            warn!(server = %slot.config.info.id, pid, "still running {:.1} s after SIGTERM: SIGKILL",
                self.kill_after.as_secs_f64());
            self.signal_server(i, pid, Signal::SIGKILL);
        }
    }

    /// `kennel restart`: SIGTERM server `i` and start it again as soon as it exits (at once
    /// if it is not running).
    pub(crate) fn restart(&mut self, i: usize) -> Result<String, String> {
        let slot = &mut self.slots[i];
        let id = slot.config.info.id.clone();
        match slot.proc {
            Proc::Unmanaged => Err(format!(
                "{id} is external (started by hand or by another supervisor): this master does not restart it"
            )),
            Proc::Running { pid, .. } => {
                self.terminate(i, OnExit::RestartNow);
                Ok(format!("restarting {id} (pid {pid})"))
            }
            _ => {
                slot.recent.clear();
                slot.backoff = Backoff::default();
                slot.restarts += 1;
                self.spawn(i);
                Ok(format!("starting {id}"))
            }
        }
    }

    /// `kennel remove`: stop server `i` and do not restart it.
    pub(crate) fn remove(&mut self, i: usize) -> String {
        let slot = &mut self.slots[i];
        let id = slot.config.info.id.clone();
        match slot.proc {
            Proc::Unmanaged => format!("{id} is external: left alone"),
            Proc::Running { pid, .. } => {
                self.terminate(i, OnExit::Remove);
                format!("removing {id} (pid {pid})")
            }
            Proc::Removed => format!("{id} is already removed"),
            _ => {
                // Ends a pending restart timer's effect.
                slot.generation += 1;
                slot.proc = Proc::Removed;
                format!("removed {id}")
            }
        }
    }

    /// `kennel start <id>`: start server `i` now unless it is running.
    pub(crate) fn start(&mut self, i: usize) -> Result<String, String> {
        let slot = &mut self.slots[i];
        let id = slot.config.info.id.clone();
        match slot.proc {
            Proc::Unmanaged => Err(format!(
                "{id} is external (started by hand or by another supervisor): this master does not start it"
            )),
            Proc::Running { pid, .. } => Ok(format!("{id} is already running (pid {pid})")),
            _ => {
                slot.recent.clear();
                slot.backoff = Backoff::default();
                self.spawn(i);
                // The spawn is synchronous: the answer says whether a process exists now, so
                // the CLI need not catch a short-lived (crashing) process in a `list`.
                match self.slots[i].proc {
                    Proc::Running { pid, .. } => Ok(format!("started {id} (pid {pid})")),
                    _ => Err(format!(
                        "cannot start {id} now; the master retries with backoff (see logs/master.log)"
                    )),
                }
            }
        }
    }

    /// Server `i` registered over its master link as process `pid`.
    pub(crate) fn mark_registered(&mut self, i: usize, pid: u32) {
        let slot = &mut self.slots[i];
        if let Proc::Running { registered, .. } = &mut slot.proc {
            *registered = true;
            slot.registered_pid = Some(pid);
        }
    }

    /// Why process `pid` may not register as server `i`: a server this master starts may
    /// not register while the master has no process for it, nor from another process of
    /// this machine running as it (`--id <id>`) outside the group the master started (a copy
    /// started by hand); both are refused with a hint. A pid that is not such a process (a
    /// container's own pid namespace, a wrapper) is accepted while the master's process runs.
    pub(crate) fn check_registering_pid(&self, i: usize, pid: u32) -> Result<(), String> {
        let slot = &self.slots[i];
        let id = &slot.config.info.id;
        let hint = format!(
            "to run {id} by hand or under another supervisor, set \"external\": true in its \
             entry of servers.json or start the master with --external {id}"
        );
        match (&slot.launch, slot.proc) {
            (Launch::External, _) | (Launch::Remote(_), Proc::Running { .. }) => Ok(()),
            (Launch::Local(_), Proc::Running { pid: mine, .. }) => {
                if pid == mine
                    || procfs::process_group(pid) == Some(mine)
                    || !procfs::runs_as(pid, id)
                {
                    Ok(())
                } else {
                    Err(format!(
                        "{id} is started by this master (pid {mine}); pid {pid} is a duplicate \
                         ({hint})"
                    ))
                }
            }
            (_, state) => Err(format!(
                "{id} is started by this master and is not running now ({}); ({hint})",
                ServerState::of(state, LinkState::Down)
            )),
        }
    }

    /// Sends `sig` to running server `i` (process `pid`): to its process group here, or,
    /// for a remote server that registered, through the remote-signal command (and, for
    /// SIGKILL, to the launcher's group as well).
    fn signal_server(&self, i: usize, pid: u32, sig: Signal) {
        let slot = &self.slots[i];
        let (Launch::Remote(_), Some(remote_pid)) = (&slot.launch, slot.registered_pid) else {
            procfs::signal_group(pid, sig);
            return;
        };
        launch::signal_remote(
            &self.launcher,
            &slot.config.info.id,
            &slot.config.info.host,
            remote_pid,
            sig,
            logs::open_log(&slot.log),
        );
        if sig == Signal::SIGKILL {
            procfs::signal_group(pid, sig);
        }
    }

    /// No more restarts: pending ones are cancelled and their servers marked exited.
    pub(crate) fn stop_restarting(&mut self) {
        self.restarts_stop.cancel();
        for slot in &mut self.slots {
            if slot.proc == Proc::Restarting {
                slot.proc = Proc::Exited;
            }
        }
    }

    /// Every running server: (slot, pid).
    pub(crate) fn running(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.proc {
                Proc::Running { pid, .. } => Some((i, pid)),
                _ => None,
            })
    }

    /// The pid of server `i`, if it is running.
    pub(crate) fn running_pid(&self, i: usize) -> Option<u32> {
        match self.slots[i].proc {
            Proc::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// How many servers are running; `frontend` filters by kind.
    pub(crate) fn running_count(&self, frontend: Option<bool>) -> usize {
        self.running()
            .filter(|(i, _)| frontend.is_none_or(|f| self.slots[*i].config.info.frontend == f))
            .count()
    }

    /// Sends `sig` to the process group of every running server (of one kind when `frontend`
    /// is given); returns how many were signalled.
    pub(crate) fn signal(&mut self, frontend: Option<bool>, sig: Signal) -> usize {
        let targets: Vec<(usize, u32)> = self
            .running()
            .filter(|(i, _)| frontend.is_none_or(|f| self.slots[*i].config.info.frontend == f))
            .collect();
        for &(i, pid) in &targets {
            info!(server = %self.slots[i].config.info.id, pid, signal = %sig, "signalling server");
            self.signal_server(i, pid, sig);
            if let Proc::Running { signalled, .. } = &mut self.slots[i].proc {
                *signalled = true;
            }
        }
        targets.len()
    }
}
