//! `kennel start`: the master in the foreground (signals, `logs/master.log`, [`run`]) and
//! `kennel start --daemon` (the same, detached, watched until the cluster is up).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use kennel_config::{Project, Secrets};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Defaults, POLL, StartArgs, expand_ids, host_port, load_project, out};
use crate::client::MasterClient;
use crate::master::{LOGS_DIR, StartOptions, run};
use crate::state::ServerState;
use crate::table::rows;

/// The master's own log, in the logs directory.
const MASTER_LOG: &str = "master.log";

/// `kennel start`: runs the master in the foreground until SIGINT, SIGTERM, SIGHUP or
/// `kennel stop`, then stops the cluster.
pub(super) async fn start(args: StartArgs, defaults: &Defaults) -> Result<ExitCode> {
    // Registered first: from here on SIGINT/SIGTERM/SIGHUP stop the cluster instead of killing
    // the master (a signal arriving during startup is kept and acted on once running). SIGHUP
    // is the terminal going away: the servers must not outlive their master.
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    let project = load_project(&args.project, defaults)?;
    let secrets = Secrets::resolve(&project, true).context("cannot resolve the secrets")?;
    let bin = match args.bin.or_else(|| defaults.bin.clone()) {
        Some(b) => Some(std::path::absolute(&b).with_context(|| format!("--bin {}", b.display()))?),
        None => None,
    };
    let (host, port) = (project.master.host.clone(), project.master.port);
    let listener = TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {}", host_port(&host, port)))?;
    if !args.detached {
        // In the foreground the master also logs to logs/master.log, so losing the terminal
        // (or the pipe it prints into) loses none of its log. Detached, its stdout and stderr
        // are that file already.
        let (_, log) = open_master_log(&project)?;
        crate::console::log_to(log);
    }

    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigint.recv() => "SIGINT",
            _ = sigterm.recv() => "SIGTERM",
            _ = sighup.recv() => "SIGHUP",
        };
        token.cancel();
        info!("{name} received: stopping the cluster");
        // Keep handling them: a second Ctrl-C must not kill the master mid-stop.
        loop {
            tokio::select! {
                s = sigint.recv() => if s.is_none() { break },
                s = sigterm.recv() => if s.is_none() { break },
                s = sighup.recv() => if s.is_none() { break },
            }
            info!("already stopping");
        }
    });

    let mut opts = StartOptions::new(project, secrets);
    opts.bin = bin;
    opts.external = expand_ids(&args.external)?;
    opts.echo_logs = !args.detached;
    run(opts, listener, shutdown)
        .await
        .context("cannot start the cluster")?;
    Ok(ExitCode::SUCCESS)
}

/// Opens the master's log, `logs/master.log` of the project (creating the dir), for appending;
/// returns its path and the file.
fn open_master_log(project: &Project) -> Result<(PathBuf, std::fs::File)> {
    let logs_dir = project.dir.join(LOGS_DIR);
    std::fs::create_dir_all(&logs_dir)
        .with_context(|| format!("cannot create {}", logs_dir.display()))?;
    let path = logs_dir.join(MASTER_LOG);
    let log =
        crate::logs::open_log(&path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok((path, log))
}

/// `kennel start --daemon`: starts `kennel start --detached` in a session of its own with its
/// output in `logs/master.log`, then waits until every server it starts has registered.
/// Fails (exit 1) with the reason when the master exits during startup (its last log lines),
/// when a server is crash-looping, or after `--wait` seconds; in the last two cases the
/// master keeps running (servers it adopted keep serving players), and the message says so.
pub(super) async fn start_daemon(args: StartArgs, defaults: &Defaults) -> Result<ExitCode> {
    let project = load_project(&args.project, defaults)?;
    // Generated here (development) so the daemon and this process share them.
    let secrets = Secrets::resolve(&project, true).context("cannot resolve the secrets")?;
    let addr = host_port(&project.master.host, project.master.port);
    if MasterClient::dial(&addr).await.is_ok() {
        anyhow::bail!(
            "something already listens on the master port {addr} (a running master? `kennel list`)"
        );
    }
    let (log_path, log) = open_master_log(&project)?;
    let log_err = log.try_clone()?;
    let from = crate::logs::current_len(&log_path);

    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("start")
        .arg("--dir")
        .arg(&project.dir)
        .arg("--env")
        .arg(&project.env)
        .arg("--detached");
    if let Some(b) = args.bin.or_else(|| defaults.bin.clone()) {
        cmd.arg("--bin")
            .arg(std::path::absolute(&b).with_context(|| format!("--bin {}", b.display()))?);
    }
    for id in expand_ids(&args.external)? {
        cmd.arg("--external").arg(id);
    }
    cmd.current_dir(&project.dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
    }
    let mut child = cmd.spawn().context("cannot start the master")?;
    let pid = child.id();
    out(&format!(
        "kennel: master {} starting in the background (pid {pid}, log {})\n",
        project.master.id,
        log_path.display()
    ));

    let keeps_running = format!(
        "the master keeps running (pid {pid}): `kennel list` to look, `kennel stop` to stop it"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait);
    let mut master: Option<MasterClient> = None;
    let mut last_rows = Vec::new();
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = crate::logs::last_lines(&log_path, 5).unwrap_or_default();
            let since: Vec<String> = if crate::logs::current_len(&log_path) > from {
                tail
            } else {
                Vec::new()
            };
            let reason = since
                .iter()
                .rev()
                .find(|l| l.starts_with("kennel: "))
                .map(|l| l.trim_start_matches("kennel: ").to_owned())
                .unwrap_or_else(|| since.join(" | "));
            anyhow::bail!("the master exited during startup ({status}): {reason}");
        }
        if master.is_none() {
            match MasterClient::connect(&addr, &secrets.cli).await {
                Ok(m) => master = Some(m),
                Err(crate::ClientError::Unreachable { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(m) = master.as_mut() {
            let reply = m.list().await?;
            last_rows = rows(&reply);
            if reply.ready {
                break;
            }
            if let Some(r) = last_rows.iter().find(|r| r.state == ServerState::CrashLoop) {
                anyhow::bail!(
                    "{} is crash-looping (see {}); {keeps_running}",
                    r.id,
                    crate::logs::log_path(&project.dir.join(LOGS_DIR), &r.id).display()
                );
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let missing: Vec<String> = last_rows
                .iter()
                .filter(|r| !r.external && r.state != ServerState::Running)
                .map(|r| format!("{} ({})", r.id, r.state))
                .collect();
            anyhow::bail!(
                "the cluster is not up after {} s{}; {keeps_running}",
                args.wait,
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(": not registered: {}", missing.join(", "))
                }
            );
        }
        tokio::time::sleep(POLL).await;
    }
    // The master's own readiness lines, as it printed them.
    let printed = std::fs::read(&log_path).unwrap_or_default();
    let printed = String::from_utf8_lossy(&printed[(from as usize).min(printed.len())..]);
    for line in printed.lines().filter(|l| {
        l.starts_with("kennel: cluster ready") || l.starts_with("kennel: clients connect to")
    }) {
        out(&format!("{line}\n"));
    }
    Ok(ExitCode::SUCCESS)
}
