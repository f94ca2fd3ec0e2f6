//! The `kennel` command line (clap): `start`, `list`, `stop`; the entry points
//! [`cli_main`] and [`cli_main_with`]; tracing setup. This is the binary's logic, so it uses
//! `anyhow`; every failure ends as one `kennel: ...` line on stderr and exit code 1.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use kennel_config::{DEFAULT_ENV, Project, Secrets};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::client::MasterClient;
use crate::master::{StartOptions, run};
use crate::table::{render_table, rows};

/// How long `kennel stop` waits for the master to report the cluster stopped.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Defaults an application binary gives the master CLI (see [`cli_main_with`]).
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// Project directory used when `--dir` is not given (instead of `.`).
    pub dir: Option<PathBuf>,
    /// Server binary used by `start` when `--bin` is not given (instead of the configured one).
    pub bin: Option<PathBuf>,
}

#[derive(Debug, Parser)]
#[command(
    name = "kennel",
    version,
    about = "Start and operate a kennel game-server cluster",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, an application binary starts the cluster with these.
    #[command(flatten)]
    start: StartArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the master and every configured server, in the foreground.
    Start(StartArgs),
    /// List the cluster's servers.
    List {
        #[command(flatten)]
        target: TargetArgs,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop every server gracefully, then the master.
    Stop {
        #[command(flatten)]
        target: TargetArgs,
        /// Do not ask for confirmation (it is only asked on a terminal).
        #[arg(short = 'y', long = "yes")]
        yes: bool,
    },
}

#[derive(Debug, Clone, Args)]
struct ProjectArgs {
    /// Environment to load from config/sys.
    #[arg(short, long, default_value = DEFAULT_ENV)]
    env: String,
    /// Project directory (the one holding config/sys) [default: .]
    #[arg(short, long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct StartArgs {
    #[command(flatten)]
    project: ProjectArgs,
    /// Binary for every server, overriding `bin` in the config.
    #[arg(long)]
    bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct TargetArgs {
    #[command(flatten)]
    project: ProjectArgs,
    /// Master host [default: the project's master host]
    #[arg(long)]
    host: Option<String>,
    /// Master port [default: the project's master port]
    #[arg(long)]
    port: Option<u16>,
    /// CLI secret [default: resolved from the project: cliSecret or .kennel/secrets.json]
    #[arg(long, env = "KENNEL_CLI_SECRET", hide_env_values = true)]
    token: Option<String>,
}

/// Runs the `kennel` command line (`std::env::args`) and returns its exit code.
pub fn cli_main() -> ExitCode {
    main_with(None)
}

/// Like [`cli_main`], for an application binary: `defaults` supply the project directory and
/// server binary, and with no subcommand the binary behaves as `start`.
pub fn cli_main_with(defaults: Defaults) -> ExitCode {
    main_with(Some(defaults))
}

/// The clap command; the plain `kennel` binary hides the top-level `start` flags (it needs a
/// subcommand), an application binary shows them (no subcommand means `start`).
fn command(app: bool) -> clap::Command {
    let cmd = Cli::command();
    if app {
        return cmd;
    }
    cmd.override_usage("kennel <COMMAND>")
        .mut_args(|a| match a.get_id().as_str() {
            "env" | "dir" | "bin" => a.hide(true),
            _ => a,
        })
}

fn main_with(defaults: Option<Defaults>) -> ExitCode {
    let mut cmd = command(defaults.is_some());
    let parsed = cmd
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let e = e.format(&mut cmd);
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let command = match (cli.command, defaults.is_some()) {
        (Some(c), _) => c,
        (None, true) => Command::Start(cli.start),
        (None, false) => {
            let _ = cmd.print_help();
            return ExitCode::from(2);
        }
    };
    init_logging(if matches!(command, Command::Start(_)) {
        "info"
    } else {
        "warn"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kennel: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let defaults = defaults.unwrap_or_default();
    let result = runtime.block_on(execute(command, &defaults));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kennel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Installs a tracing subscriber on stderr; `RUST_LOG` overrides `default`.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

async fn execute(command: Command, defaults: &Defaults) -> Result<ExitCode> {
    match command {
        Command::Start(args) => start(args, defaults).await,
        Command::List { target, json } => list(target, json, defaults).await,
        Command::Stop { target, yes } => stop(target, yes, defaults).await,
    }
}

fn load_project(args: &ProjectArgs, defaults: &Defaults) -> Result<Project> {
    let dir = args
        .dir
        .clone()
        .or_else(|| defaults.dir.clone())
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = std::fs::canonicalize(&dir)
        .with_context(|| format!("project directory {}", dir.display()))?;
    Project::load(&dir, &args.env).context("cannot load the project")
}

async fn start(args: StartArgs, defaults: &Defaults) -> Result<ExitCode> {
    // Registered first: from here on SIGINT/SIGTERM stop the cluster instead of killing the
    // master (a signal arriving during startup is kept and acted on once running).
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;

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

    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigint.recv() => "SIGINT",
            _ = sigterm.recv() => "SIGTERM",
        };
        info!("{name} received: stopping the cluster");
        token.cancel();
        // Keep handling them: a second Ctrl-C must not kill the master mid-stop.
        loop {
            tokio::select! {
                s = sigint.recv() => if s.is_none() { break },
                s = sigterm.recv() => if s.is_none() { break },
            }
            info!("already stopping");
        }
    });

    let mut opts = StartOptions::new(project, secrets);
    opts.bin = bin;
    run(opts, listener, shutdown)
        .await
        .context("cannot start the cluster")?;
    Ok(ExitCode::SUCCESS)
}

/// `host:port`, bracketing IPv6 hosts.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Dials and authenticates to the master `target` names (loading the project only for what
/// the flags leave out).
async fn connect(target: &TargetArgs, defaults: &Defaults) -> Result<MasterClient> {
    let project = match (&target.host, target.port, &target.token) {
        (Some(_), Some(_), Some(_)) => None,
        _ => Some(load_project(&target.project, defaults)?),
    };
    let master = project.as_ref().map(|p| &p.master);
    let host = target
        .host
        .clone()
        .or_else(|| master.map(|m| m.host.clone()))
        .unwrap_or_default();
    let port = target.port.or(master.map(|m| m.port)).unwrap_or_default();
    let addr = host_port(&host, port);
    // Connect before looking for the secret: "no master" is the likelier problem.
    let stream = MasterClient::dial(&addr).await?;
    let secret = match (&target.token, &project) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => {
            Secrets::resolve(p, false)
                .context("cannot find the CLI secret (pass --token or set KENNEL_CLI_SECRET)")?
                .cli
        }
        (None, None) => unreachable!("the project is loaded when no token is given"),
    };
    Ok(MasterClient::authenticate(stream, &addr, &secret).await?)
}

/// Writes `text` to stdout; a closed stdout is not an error worth a panic.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

async fn list(target: TargetArgs, json: bool, defaults: &Defaults) -> Result<ExitCode> {
    let mut master = connect(&target, defaults).await?;
    let rows = rows(&master.list().await?);
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
    } else {
        out(&render_table(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

async fn stop(target: TargetArgs, yes: bool, defaults: &Defaults) -> Result<ExitCode> {
    let mut master = connect(&target, defaults).await?;
    let addr = master.addr().to_owned();
    if !yes && std::io::stdin().is_terminal() {
        let question = format!("Stop every server of the cluster at {addr}? [y/N] ");
        let answer = tokio::task::spawn_blocking(move || {
            eprint!("{question}");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .context("reading the answer")?
        .context("reading the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("kennel: not stopped");
            return Ok(ExitCode::FAILURE);
        }
    }
    let ack = master.stop().await?;
    out(&format!("kennel: {ack} at {addr}\n"));
    master
        .closed(STOP_WAIT)
        .await
        .context("the master did not finish stopping")?;
    out("kennel: cluster stopped\n");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definitions_are_valid() {
        command(false).debug_assert();
        command(true).debug_assert();
    }
}
