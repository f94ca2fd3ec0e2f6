//! The master itself: [`run`] wires the listener, the metrics listener, log rotation and
//! echo, the supervisor and the [`Core`] together, then runs the event loop: every [`Event`]
//! (from child-wait tasks, restart timers, link tasks, scrapes; one bounded mpsc) goes to the
//! core, the only writer of the cluster state. It also owns the stop sequence.
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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kennel_config::{Project, Secrets};
use kennel_proto::msg::Cipher;
use kennel_proto::net::PreAuthGate;
use nix::sys::signal::Signal;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::MasterError;
use crate::console::say;
use crate::core::{Core, Spawning};
use crate::event::Event;
use crate::launch::{Launch, Launcher, SpawnEnv, ThisHost, plan};
use crate::listener::{self, Shared};
use crate::logs;
use crate::metrics::{self, MetricsConfig};
use crate::procfs::RUN_DIR;
use crate::sampler::Sampler;
use crate::supervisor::Supervisor;

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
        external = project.servers.iter().map(|s| s.info.id.clone()).collect();
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

    if let Some(w) = plain_off_loopback(&project) {
        say(format_args!("kennel: warning: {w}"));
    }

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
        cipher: if project.master.settings.encrypt_links {
            Cipher::Noise
        } else {
            Cipher::Plain
        },
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
            let path = logs::log_path(&logs_dir, &s.info.id);
            let from = logs::current_len(&path);
            tails.spawn(logs::tail(
                s.info.id.clone(),
                path,
                from,
                tails_stop.clone(),
            ));
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
    let spawning = Spawning {
        spawn,
        bin,
        external,
        this_host,
        echo: echo_logs.then(|| (tails.clone(), tails_stop.clone())),
        logs_dir,
    };
    let mut core = Core::new(project, supervisor, sampler, started, spawning);
    core.start_all();

    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(ev) = events.recv() => core.on_event(ev),
        }
    }
    stop_all(&mut core, &mut events, frontend_stop_timeout, stop_timeout).await;

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

/// Applies events until no server (of one kind, when `frontend` is given) is running, or
/// until `deadline`. Returns whether they all exited.
async fn wait_for(
    core: &mut Core,
    events: &mut mpsc::Receiver<Event>,
    frontend: Option<bool>,
    deadline: Instant,
) -> bool {
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        if core.running(frontend) == 0 {
            return true;
        }
        tokio::select! {
            Some(ev) = events.recv() => core.handle(ev),
            _ = sleep_until(deadline) => return false,
        }
    }
}

/// The stop sequence (see the module docs).
async fn stop_all(
    core: &mut Core,
    events: &mut mpsc::Receiver<Event>,
    frontend_timeout: Duration,
    total_timeout: Duration,
) {
    let running = core.begin_stop();
    let t0 = Instant::now();
    let deadline = t0 + total_timeout;
    info!(running, "stopping the cluster");

    if core.signal(Some(true), Signal::SIGTERM) > 0
        && !wait_for(
            core,
            events,
            Some(true),
            (t0 + frontend_timeout).min(deadline),
        )
        .await
    {
        warn!(
            "frontends still running after {:.1} s; stopping backends anyway",
            frontend_timeout.as_secs_f64()
        );
    }
    core.signal(Some(false), Signal::SIGTERM);
    if !wait_for(core, events, None, deadline).await {
        let n = core.signal(None, Signal::SIGKILL);
        warn!(
            "{n} servers still running after {:.1} s: sent SIGKILL",
            total_timeout.as_secs_f64()
        );
        if !wait_for(core, events, None, Instant::now() + KILL_WAIT).await {
            error!(
                "{} servers could not be reaped after SIGKILL",
                core.running(None)
            );
        }
    }
}

/// The warning a cluster with a process off loopback and `encryptLinks` off gets at start
/// (sessions and RPC bodies would cross the network in clear), or `None`.
pub(crate) fn plain_off_loopback(project: &Project) -> Option<String> {
    if project.master.settings.encrypt_links {
        return None;
    }
    let loopback = |host: &str| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    let mut off: Vec<String> = project
        .servers
        .iter()
        .filter(|s| !loopback(&s.info.host))
        .map(|s| format!("{} ({})", s.info.id, s.info.host))
        .collect();
    if !loopback(&project.master.host) {
        off.insert(0, format!("master ({})", project.master.host));
    }
    if off.is_empty() {
        return None;
    }
    let more = off.len().saturating_sub(3);
    off.truncate(3);
    let list = off.join(", ")
        + &if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
    Some(format!(
        "{list} not on loopback, and `encryptLinks` is off in master.json: the master, peer and CLI links carry sessions and RPC bodies in clear; set \"encryptLinks\": true (see docs/operations.md, \"Encrypting links between hosts\")"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project with a master on `master_host`, one server on `server_host`, and
    /// `encryptLinks` as given.
    fn project(master_host: &str, server_host: &str, encrypt: bool) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("config/sys");
        std::fs::create_dir_all(&sys).unwrap();
        let master = serde_json::json!({"development": {
            "id": "m", "host": master_host, "port": 3005, "encryptLinks": encrypt
        }});
        let servers = serde_json::json!({"development": {"chat": [
            {"id": "chat-1", "host": server_host, "port": 4001}
        ]}});
        std::fs::write(sys.join("master.json"), master.to_string()).unwrap();
        std::fs::write(sys.join("servers.json"), servers.to_string()).unwrap();
        std::fs::write(sys.join("route.json"), "[\"chat.main.hello\"]").unwrap();
        Project::load(dir.path(), "development").unwrap()
    }

    #[test]
    fn plain_links_off_loopback_are_warned_about_and_only_they() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.9"] {
            assert_eq!(
                plain_off_loopback(&project(host, host, false)),
                None,
                "{host}"
            );
        }
        let w = plain_off_loopback(&project("127.0.0.1", "10.1.2.3", false)).unwrap();
        assert!(
            w.contains("chat-1 (10.1.2.3)") && w.contains("encryptLinks"),
            "{w}"
        );
        let w = plain_off_loopback(&project("0.0.0.0", "127.0.0.1", false)).unwrap();
        assert!(w.starts_with("master (0.0.0.0)"), "{w}");
        // Encrypted: nothing to warn about, wherever the processes are.
        assert_eq!(
            plain_off_loopback(&project("db.example", "10.1.2.3", true)),
            None
        );
    }
}
