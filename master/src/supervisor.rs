//! The server processes: spawning, one `child.wait()` task per child feeding
//! [`Event::Exited`] into the master's event loop, restarts with [`Backoff`], and process-group
//! signals for the stop sequence.
//!
//! Each server runs as `<bin> --id <id> --env <env> <args...>` in the project directory, in a
//! process group of its own (a terminal's Ctrl-C reaches only the master, and the master can
//! signal a server together with anything it started), with stdin `/dev/null` and stdout and
//! stderr appended to `logs/<id>.log`. When a server exits, whatever is left in its process
//! group is SIGKILLed. Nothing ties a server's life to the master's: servers outlive a crashed
//! master.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kennel_config::{
    CLI_SECRET_ENV, MASTER_HOST_ENV, MASTER_PORT_ENV, Project, SERVER_SECRET_ENV, ServerConfig,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::MasterError;
use crate::backoff::Backoff;
use crate::logs;
use crate::master::Event;

/// What the master knows about one server's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proc {
    /// Not started by this master (it only accepts registrations).
    Unmanaged,
    /// Alive (as far as the master knows: its exit has not been reaped yet).
    Running {
        pid: u32,
        since: Instant,
        /// Registered over its master link since this start.
        registered: bool,
        /// Sent SIGTERM/SIGKILL by the stop sequence.
        signalled: bool,
    },
    /// Waiting for its restart delay to pass (or to be started again after a failed spawn).
    Restarting,
    /// Exited and not to be restarted (the cluster is stopping).
    Exited,
}

/// One configured server and its process.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) config: ServerConfig,
    /// The binary to run; `None` for unmanaged servers.
    bin: Option<PathBuf>,
    log: PathBuf,
    pub(crate) proc: Proc,
    /// Bumped at every spawn and every scheduled restart; stale events carry an old value.
    generation: u64,
    pub(crate) restarts: u32,
    backoff: Backoff,
}

/// Everything a spawn needs besides the slot.
#[derive(Debug)]
pub(crate) struct SpawnEnv {
    pub(crate) env: String,
    pub(crate) dir: PathBuf,
    pub(crate) server_secret: String,
    pub(crate) master_host: String,
    pub(crate) master_port: u16,
}

/// The process table.
#[derive(Debug)]
pub(crate) struct Supervisor {
    pub(crate) slots: Vec<Slot>,
    spawn_env: SpawnEnv,
    events: mpsc::Sender<Event>,
    /// Cancelled by [`Supervisor::stop_restarting`]: ends pending restart timers. Owned here.
    restarts_stop: CancellationToken,
}

/// The binary each server runs: `override_bin` if given, else its configured one; checked to
/// exist and be executable.
pub(crate) fn resolve_bins(
    project: &Project,
    override_bin: Option<&Path>,
) -> Result<Vec<PathBuf>, MasterError> {
    project
        .servers
        .iter()
        .map(|s| {
            let path = match override_bin {
                Some(b) => b.to_path_buf(),
                None => project
                    .server_bin(s)
                    .ok_or_else(|| MasterError::NoBinary { id: s.id.clone() })?,
            };
            check_bin(&s.id, &path)?;
            Ok(path)
        })
        .collect()
}

fn check_bin(id: &str, path: &Path) -> Result<(), MasterError> {
    match std::fs::metadata(path) {
        Err(_) => Err(MasterError::MissingBinary {
            id: id.to_owned(),
            path: path.to_path_buf(),
        }),
        Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
            Err(MasterError::NotExecutable {
                id: id.to_owned(),
                path: path.to_path_buf(),
            })
        }
        Ok(_) => Ok(()),
    }
}

/// Sends `sig` to the process group led by `pid`. A group that no longer exists is not an error.
fn signal_group(pid: u32, sig: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 1 {
        return; // never signal "every process" or init by mistake
    }
    match killpg(Pid::from_raw(raw), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => warn!(pid, signal = %sig, cause = %e, "cannot signal process group"),
    }
}

impl Supervisor {
    /// A table of `servers`; `bins[i]` is the binary of `servers[i]` (`None`: unmanaged).
    pub(crate) fn new(
        servers: &[ServerConfig],
        bins: Vec<Option<PathBuf>>,
        logs_dir: &Path,
        spawn_env: SpawnEnv,
        events: mpsc::Sender<Event>,
    ) -> Supervisor {
        let slots = servers
            .iter()
            .zip(bins)
            .map(|(config, bin)| Slot {
                log: logs::log_path(logs_dir, &config.id),
                proc: if bin.is_some() {
                    Proc::Restarting
                } else {
                    Proc::Unmanaged
                },
                config: config.clone(),
                bin,
                generation: 0,
                restarts: 0,
                backoff: Backoff::default(),
            })
            .collect();
        Supervisor {
            slots,
            spawn_env,
            events,
            restarts_stop: CancellationToken::new(),
        }
    }

    /// Starts every managed server.
    pub(crate) fn start_all(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].bin.is_some() {
                self.spawn(i);
            }
        }
    }

    fn command(&self, slot: &Slot, bin: &Path) -> io::Result<Command> {
        let log = logs::open_log(&slot.log)?;
        let log_err = log.try_clone()?;
        let env = &self.spawn_env;
        let mut cmd = Command::new(bin);
        cmd.arg("--id")
            .arg(&slot.config.id)
            .arg("--env")
            .arg(&env.env)
            .args(&slot.config.args)
            .current_dir(&env.dir)
            .env(SERVER_SECRET_ENV, &env.server_secret)
            .env_remove(CLI_SECRET_ENV)
            // Servers dial the address this master really listens on.
            .env(MASTER_HOST_ENV, &env.master_host)
            .env(MASTER_PORT_ENV, env.master_port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        Ok(cmd)
    }

    /// Spawns server `i` and a task that reports its exit; a failed spawn is retried later.
    fn spawn(&mut self, i: usize) {
        let Some(bin) = self.slots[i].bin.clone() else {
            return;
        };
        let spawned = self
            .command(&self.slots[i], &bin)
            .and_then(|mut cmd| cmd.spawn());
        let slot = &mut self.slots[i];
        let id = slot.config.id.clone();
        match spawned {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                slot.generation += 1;
                slot.proc = Proc::Running {
                    pid,
                    since: Instant::now(),
                    registered: false,
                    signalled: false,
                };
                info!(server = %id, pid, bin = %bin.display(), "server started");
                let events = self.events.clone();
                let generation = slot.generation;
                tokio::spawn(async move {
                    let status = child.wait().await;
                    // The receiver outlives every child unless the master is gone already.
                    let _ = events
                        .send(Event::Exited {
                            index: i,
                            generation,
                            status,
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

    /// A child was reaped: schedule its restart unless the cluster is stopping.
    pub(crate) fn on_exit(
        &mut self,
        i: usize,
        generation: u64,
        status: io::Result<std::process::ExitStatus>,
    ) {
        let stopping = self.restarts_stop.is_cancelled();
        let slot = &mut self.slots[i];
        let Proc::Running { pid, since, .. } = slot.proc else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        let ran = since.elapsed();
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("unknown status ({e})"),
        };
        let id = slot.config.id.clone();
        // A server's process group lives and dies with it: anything it started and left
        // behind would otherwise be an orphan nobody accounts for.
        signal_group(pid, Signal::SIGKILL);
        if stopping {
            slot.proc = Proc::Exited;
            info!(server = %id, pid, %status, "server exited");
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
        self.spawn(i);
    }

    /// Server `i` registered over its master link.
    pub(crate) fn mark_registered(&mut self, i: usize) {
        if let Proc::Running { registered, .. } = &mut self.slots[i].proc {
            *registered = true;
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

    fn running(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
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
            .filter(|(i, _)| frontend.is_none_or(|f| self.slots[*i].config.frontend == f))
            .count()
    }

    /// Sends `sig` to the process group of every running server (of one kind when `frontend`
    /// is given); returns how many were signalled.
    pub(crate) fn signal(&mut self, frontend: Option<bool>, sig: Signal) -> usize {
        let targets: Vec<(usize, u32)> = self
            .running()
            .filter(|(i, _)| frontend.is_none_or(|f| self.slots[*i].config.frontend == f))
            .collect();
        for &(i, pid) in &targets {
            info!(server = %self.slots[i].config.id, pid, signal = %sig, "signalling server");
            signal_group(pid, sig);
            if let Proc::Running { signalled, .. } = &mut self.slots[i].proc {
                *signalled = true;
            }
        }
        targets.len()
    }
}
