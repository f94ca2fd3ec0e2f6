//! The `kennel` command line (clap): `start`, `list`, `stop`, `logs`, `restart`, `remove`,
//! `config`; the entry points
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
use crate::master::{LOGS_DIR, StartOptions, run};
use crate::policy::RestartPolicy;
use crate::table::{ServerRow, render_table, rows};

/// How long `kennel stop` waits for the master to report the cluster stopped.
const STOP_WAIT: Duration = Duration::from_secs(60);
/// How often `restart`/`remove`/`start` look at the server table while waiting.
const POLL: Duration = Duration::from_millis(100);
/// `list --watch` redraw period.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

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
    /// Start the master and every configured server, in the foreground; with ids, ask the
    /// running master to start those servers (removed ones, or ids new in the config file).
    Start(StartCmd),
    /// List the cluster's servers.
    List {
        #[command(flatten)]
        target: TargetArgs,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Redraw every second (until Ctrl-C).
        #[arg(short, long)]
        watch: bool,
    },
    /// Print the end of a server's log file (logs/<id>.log).
    Logs {
        #[command(flatten)]
        project: ProjectArgs,
        /// Server id.
        id: String,
        /// Keep printing what is appended (until Ctrl-C).
        #[arg(short, long)]
        follow: bool,
        /// How many lines to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
    },
    /// Restart servers one at a time, each once the previous one has re-registered.
    Restart {
        #[command(flatten)]
        target: TargetArgs,
        /// Server ids; `chat-server-1~3` means chat-server-1, chat-server-2, chat-server-3.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Seconds to wait for each server to re-register.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Stop servers and do not restart them (`kennel start <id>` starts them again).
    #[command(group = clap::ArgGroup::new("what").required(true).multiple(true).args(["ids", "types"]))]
    Remove {
        #[command(flatten)]
        target: TargetArgs,
        /// Server ids (ranges like `chat-server-1~3` allowed).
        ids: Vec<String>,
        /// Every server of these types.
        #[arg(long = "type", num_args = 1..)]
        types: Vec<String>,
    },
    /// Print the cluster as the master would run it (after range expansion).
    Config {
        #[command(flatten)]
        project: ProjectArgs,
        /// Binary for every server, overriding `bin` in the config.
        #[arg(long)]
        bin: Option<PathBuf>,
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
struct StartCmd {
    #[command(flatten)]
    start: StartArgs,
    /// Servers to start on the running master (ranges like `chat-server-1~3` allowed).
    ids: Vec<String>,
    /// With ids: how to reach the running master.
    #[command(flatten)]
    master: MasterArgs,
}

/// How the CLI reaches a running master.
#[derive(Debug, Clone, Args)]
struct MasterArgs {
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

#[derive(Debug, Clone, Args)]
struct TargetArgs {
    #[command(flatten)]
    project: ProjectArgs,
    #[command(flatten)]
    master: MasterArgs,
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
        (None, true) => Command::Start(StartCmd {
            start: cli.start,
            ids: Vec::new(),
            master: MasterArgs {
                host: None,
                port: None,
                token: None,
            },
        }),
        (None, false) => {
            let _ = cmd.print_help();
            return ExitCode::from(2);
        }
    };
    init_logging(
        if matches!(&command, Command::Start(s) if s.ids.is_empty()) {
            "info"
        } else {
            "warn"
        },
    );
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
        Command::Start(cmd) if cmd.ids.is_empty() => start(cmd.start, defaults).await,
        Command::Start(cmd) => {
            let target = TargetArgs {
                project: cmd.start.project,
                master: cmd.master,
            };
            start_ids(target, cmd.ids, defaults).await
        }
        Command::List {
            target,
            json,
            watch,
        } => list(target, json, watch, defaults).await,
        Command::Stop { target, yes } => stop(target, yes, defaults).await,
        Command::Logs {
            project,
            id,
            follow,
            lines,
        } => logs(project, id, follow, lines, defaults).await,
        Command::Restart {
            target,
            ids,
            timeout,
        } => restart(target, ids, Duration::from_secs(timeout), defaults).await,
        Command::Remove { target, ids, types } => remove(target, ids, types, defaults).await,
        Command::Config { project, bin, json } => config(project, bin, json, defaults),
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
    let project = match (
        &target.master.host,
        target.master.port,
        &target.master.token,
    ) {
        (Some(_), Some(_), Some(_)) => None,
        _ => Some(load_project(&target.project, defaults)?),
    };
    let master = project.as_ref().map(|p| &p.master);
    let host = target
        .master
        .host
        .clone()
        .or_else(|| master.map(|m| m.host.clone()))
        .unwrap_or_default();
    let port = target
        .master
        .port
        .or(master.map(|m| m.port))
        .unwrap_or_default();
    let addr = host_port(&host, port);
    // Connect before looking for the secret: "no master" is the likelier problem.
    let stream = MasterClient::dial(&addr).await?;
    let secret = match (&target.master.token, &project) {
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

async fn list(
    target: TargetArgs,
    json: bool,
    watch: bool,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let mut master = connect(&target, defaults).await?;
    let terminal = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(WATCH_PERIOD);
    loop {
        tick.tick().await;
        let rows = rows(&master.list().await?);
        let text = if json {
            format!("{}\n", serde_json::to_string_pretty(&rows)?)
        } else {
            render_table(&rows)
        };
        if !watch {
            out(&text);
            return Ok(ExitCode::SUCCESS);
        }
        if terminal {
            // Home the cursor and clear the screen, then draw.
            out(&format!(
                "\x1b[H\x1b[2J{}  (every 1 s; Ctrl-C to quit)\n{text}",
                master.addr()
            ));
        } else {
            out(&format!("{text}\n"));
        }
    }
}

/// Expands `prefix-A~B` into `prefix-A` .. `prefix-B`; other ids are kept as they are.
fn expand_ids(ids: &[String]) -> Result<Vec<String>> {
    let mut all = Vec::new();
    for id in ids {
        let Some((first, last)) = id.split_once('~') else {
            all.push(id.clone());
            continue;
        };
        let digits = first.len() - first.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (prefix, from) = first.split_at(first.len() - digits);
        let (Ok(from), Ok(to)) = (from.parse::<u64>(), last.parse::<u64>()) else {
            anyhow::bail!("bad id range {id:?} (expected e.g. chat-server-1~3)");
        };
        if to < from || to - from > 10_000 {
            anyhow::bail!("bad id range {id:?} (expected e.g. chat-server-1~3)");
        }
        all.extend((from..=to).map(|n| format!("{prefix}{n}")));
    }
    let mut seen = std::collections::HashSet::new();
    all.retain(|id| seen.insert(id.clone()));
    Ok(all)
}

/// The rows of the master's table, by id.
async fn table(master: &mut MasterClient) -> Result<Vec<ServerRow>> {
    Ok(rows(&master.list().await?))
}

/// Fails with one line naming the first id the master does not know.
fn check_known(rows: &[ServerRow], ids: &[String]) -> Result<()> {
    if let Some(id) = ids.iter().find(|id| !rows.iter().any(|r| r.id == **id)) {
        anyhow::bail!(
            "unknown server id {id:?} (servers: {})",
            rows.iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Polls the master's table until `done` holds for the rows, or `within` passes.
async fn wait_rows(
    master: &mut MasterClient,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&[ServerRow]) -> bool,
) -> Result<Vec<ServerRow>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let rows = table(master).await?;
        if done(&rows) {
            return Ok(rows);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{what}: not done after {} s", within.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn restart(
    target: TargetArgs,
    ids: Vec<String>,
    within: Duration,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let ids = expand_ids(&ids)?;
    let mut master = connect(&target, defaults).await?;
    check_known(&table(&mut master).await?, &ids)?;
    for id in &ids {
        let old = table(&mut master)
            .await?
            .into_iter()
            .find(|r| r.id == *id)
            .and_then(|r| r.pid);
        let ack = master.restart(id).await?;
        out(&format!("kennel: {ack}\n"));
        let rows = wait_rows(
            &mut master,
            within,
            &format!("{id} did not re-register"),
            |rows| {
                rows.iter()
                    .any(|r| r.id == *id && r.state == "running" && r.pid.is_some() && r.pid != old)
            },
        )
        .await?;
        let pid = rows.iter().find(|r| r.id == *id).and_then(|r| r.pid);
        out(&format!(
            "kennel: {id} restarted and registered (pid {})\n",
            pid.unwrap_or_default()
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(
    target: TargetArgs,
    ids: Vec<String>,
    types: Vec<String>,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let ids = expand_ids(&ids)?;
    let mut master = connect(&target, defaults).await?;
    let rows = table(&mut master).await?;
    check_known(&rows, &ids)?;
    if let Some(t) = types
        .iter()
        .find(|t| !rows.iter().any(|r| r.server_type == **t))
    {
        let mut known: Vec<&str> = rows.iter().map(|r| r.server_type.as_str()).collect();
        known.dedup();
        anyhow::bail!("unknown server type {t:?} (types: {})", known.join(", "));
    }
    let ack = master.remove(&ids, &types).await?;
    out(&format!("kennel: {ack}\n"));
    let targets: Vec<String> = rows
        .iter()
        .filter(|r| ids.contains(&r.id) || types.contains(&r.server_type))
        .map(|r| r.id.clone())
        .collect();
    wait_rows(&mut master, STOP_WAIT, "removing", |rows| {
        rows.iter()
            .filter(|r| targets.contains(&r.id))
            .all(|r| r.pid.is_none() || r.state == "external")
    })
    .await?;
    out(&format!("kennel: removed {}\n", targets.join(", ")));
    Ok(ExitCode::SUCCESS)
}

async fn start_ids(target: TargetArgs, ids: Vec<String>, defaults: &Defaults) -> Result<ExitCode> {
    let ids = expand_ids(&ids)?;
    let mut master = connect(&target, defaults).await?;
    let ack = master.start(&ids).await?;
    out(&format!("kennel: {ack}\n"));
    wait_rows(&mut master, STOP_WAIT, "starting", |rows| {
        ids.iter()
            .all(|id| rows.iter().any(|r| r.id == *id && r.pid.is_some()))
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn logs(
    args: ProjectArgs,
    id: String,
    follow: bool,
    lines: usize,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let project = load_project(&args, defaults)?;
    let path = crate::logs::log_path(&project.dir.join(LOGS_DIR), &id);
    if project.server(&id).is_none() && !path.exists() {
        anyhow::bail!(
            "unknown server id {id:?}: not in the {:?} config of {}",
            project.env,
            project.dir.display()
        );
    }
    let from = crate::logs::current_len(&path);
    let last = match crate::logs::last_log_lines(&path, lines) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut text = String::new();
    for l in last {
        text.push_str(&l);
        text.push('\n');
    }
    out(&text);
    if follow {
        crate::logs::follow(path, from).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// One server as `kennel config --json` prints it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigRow {
    id: String,
    #[serde(rename = "type")]
    server_type: String,
    host: String,
    port: u16,
    frontend: bool,
    client_port: Option<u16>,
    bin: Option<String>,
    args: Vec<String>,
    restart: String,
}

fn config(
    args: ProjectArgs,
    bin: Option<PathBuf>,
    json: bool,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let project = load_project(&args, defaults)?;
    let bin = bin.or_else(|| defaults.bin.clone());
    let mut rows = Vec::new();
    for s in &project.servers {
        let policy = RestartPolicy::of(s)?;
        rows.push(ConfigRow {
            id: s.id.clone(),
            server_type: s.server_type.clone(),
            host: s.host.clone(),
            port: s.port,
            frontend: s.frontend,
            client_port: s.client_port,
            bin: bin
                .clone()
                .or_else(|| project.server_bin(s))
                .map(|b| b.display().to_string()),
            args: s.args.clone(),
            restart: policy.name().to_owned(),
        });
    }
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
        return Ok(ExitCode::SUCCESS);
    }
    out(&format!(
        "env {} of {} (master {} at {})\n",
        project.env,
        project.dir.display(),
        project.master.id,
        host_port(&project.master.host, project.master.port)
    ));
    let header = [
        "ID",
        "TYPE",
        "HOST",
        "PORT",
        "CLIENT_PORT",
        "RESTART",
        "BIN",
        "ARGS",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.server_type.clone(),
                r.host.clone(),
                r.port.to_string(),
                r.client_port
                    .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                r.restart.clone(),
                r.bin.clone().unwrap_or_else(|| "-".to_owned()),
                r.args.join(" "),
            ]
        })
        .collect();
    out(&crate::table::align(&header, &cells));
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
    fn id_ranges() {
        let ids = |v: &[&str]| expand_ids(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            ids(&["chat-server-1~3", "gate-server-1"]).unwrap(),
            [
                "chat-server-1",
                "chat-server-2",
                "chat-server-3",
                "gate-server-1"
            ]
        );
        assert_eq!(ids(&["a-9~10", "a-10"]).unwrap(), ["a-9", "a-10"]);
        assert!(ids(&["chat-server-3~1"]).is_err());
        assert!(ids(&["chat-server~3"]).is_err());
    }

    #[test]
    fn cli_definitions_are_valid() {
        command(false).debug_assert();
        command(true).debug_assert();
    }
}
