//! The `kennel` command line (clap): `start` (foreground or `--daemon`), `list`, `stop`,
//! `logs`, `restart`, `remove`, `send`, `config`; the entry points
//! [`cli_main`] and [`cli_main_with`]; tracing setup. This is the binary's logic, so it uses
//! `anyhow`; every failure ends as one `kennel: ...` line on stderr and exit code 1.

use std::io::IsTerminal;
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
use crate::table::{ServerRow, render_table, rows};

/// How long `kennel stop` waits for the master to report the cluster stopped.
const STOP_WAIT: Duration = Duration::from_secs(60);
/// How often `restart`/`remove`/`start` look at the server table while waiting.
const POLL: Duration = Duration::from_millis(100);
/// `list --watch` redraw period.
const WATCH_PERIOD: Duration = Duration::from_secs(1);
/// The master's own log, in the logs directory.
const MASTER_LOG: &str = "master.log";

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
    /// Send a command to servers; each answers through its `App::on_cli_send` handler.
    Send {
        #[command(flatten)]
        target: TargetArgs,
        /// Only these servers (comma-separated or repeated; ranges like `chat-server-1~3`).
        #[arg(long = "id", value_delimiter = ',')]
        ids: Vec<String>,
        /// Only servers of these types (comma-separated or repeated).
        #[arg(long = "type", value_delimiter = ',')]
        types: Vec<String>,
        /// Seconds to wait for the answers.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// Print a JSON array instead of lines.
        #[arg(long)]
        json: bool,
        /// The command and its arguments, as the servers get them.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
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
    /// Create a new game project (a Cargo package on the kennel library, config/sys for
    /// development and production) in DIR [default: .]; refuses a non-empty DIR unless --force.
    Init {
        /// Where to create the project.
        dir: Option<PathBuf>,
        /// Package name [default: from the directory name].
        #[arg(long)]
        name: Option<String>,
        /// The `kennel` dependency as a TOML value, e.g. '{ git = "https://..." }'
        /// [default: this kennel checkout's library].
        #[arg(long)]
        kennel: Option<String>,
        /// Write into a non-empty directory (existing files of the same name are replaced).
        #[arg(long)]
        force: bool,
    },
    /// Print route constants for a client (TypeScript, C#, Lua or Rust) from the route list,
    /// each with its note ({"route": .., "note": ..} entries of route.json).
    Cmd {
        #[command(flatten)]
        project: ProjectArgs,
        /// Client language.
        #[arg(value_enum)]
        lang: crate::codegen::Lang,
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
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
    /// Run the master in the background (own session, output in logs/master.log); return
    /// once every server it starts has registered, or fail with the reason.
    #[arg(long)]
    daemon: bool,
    /// With --daemon: seconds to wait for the cluster to be up.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    wait: u64,
    /// Servers this master never starts: they are started by hand or by another supervisor
    /// and register by themselves (comma-separated or repeated; ranges allowed).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    external: Vec<String>,
    /// The daemon's own master process (set by --daemon): no log echo.
    #[arg(long, hide = true)]
    detached: bool,
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
    #[arg(long, env = "KENNEL_MASTER_HOST")]
    host: Option<String>,
    /// Master port [default: the project's master port]
    #[arg(long, env = "KENNEL_MASTER_PORT")]
    port: Option<u16>,
    /// CLI secret [default: resolved from the project: cliSecret or .kennel/secrets.json].
    /// Prefer --token-file: a flag's value shows in `ps`
    #[arg(long, env = "KENNEL_CLI_SECRET", hide_env_values = true)]
    token: Option<String>,
    /// File holding the CLI secret (one trailing newline ignored; mode 0600 or tighter)
    #[arg(long, value_name = "FILE", env = "KENNEL_CLI_SECRET_FILE")]
    token_file: Option<PathBuf>,
}

impl MasterArgs {
    /// The CLI secret the flags (or their variables) give, if any.
    fn secret(&self) -> Result<Option<String>> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "the CLI secret is given twice: pass --token (KENNEL_CLI_SECRET) or --token-file (KENNEL_CLI_SECRET_FILE), not both"
            ),
            (Some(t), None) => Ok(Some(t.clone())),
            (None, Some(f)) => Ok(Some(kennel_config::read_secret_file(f)?)),
            (None, None) => Ok(None),
        }
    }
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
                token_file: None,
            },
        }),
        (None, false) => {
            let _ = cmd.print_help();
            return ExitCode::from(2);
        }
    };
    init_logging(
        if matches!(&command, Command::Start(s) if s.ids.is_empty() && !s.start.daemon) {
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
            crate::console::err(&format!("kennel: cannot start the async runtime: {e}\n"));
            return ExitCode::FAILURE;
        }
    };
    let defaults = defaults.unwrap_or_default();
    let result = runtime.block_on(execute(command, &defaults));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            crate::console::err(&format!("kennel: {e:#}\n"));
            ExitCode::FAILURE
        }
    }
}

/// Installs a tracing subscriber on stderr, and on `logs/master.log` once a foreground master
/// opens it ([`crate::console::log_to`]); `RUST_LOG` overrides `default`. Neither writer ever
/// fails, so a closed stderr never panics (tracing-subscriber's own report of a failed write
/// is `eprintln!`, turned off here too).
fn init_logging(default: &str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(|| crate::console::Stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    let master_log = tracing_subscriber::fmt::layer()
        .with_writer(|| crate::console::MasterLog)
        .with_ansi(false)
        .log_internal_errors(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|_| {
            crate::console::MasterLog::active()
        }));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(master_log)
        .try_init();
}

async fn execute(command: Command, defaults: &Defaults) -> Result<ExitCode> {
    match command {
        Command::Start(cmd) if cmd.ids.is_empty() && cmd.start.daemon => {
            start_daemon(cmd.start, defaults).await
        }
        Command::Start(cmd) if cmd.ids.is_empty() => start(cmd.start, defaults).await,
        Command::Start(cmd) if cmd.start.daemon => {
            anyhow::bail!("--daemon starts a whole cluster: give no server ids")
        }
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
        Command::Send {
            target,
            ids,
            types,
            timeout,
            json,
            args,
        } => send(target, ids, types, timeout, json, args, defaults).await,
        Command::Config { project, bin, json } => config(project, bin, json, defaults),
        Command::Init {
            dir,
            name,
            kennel,
            force,
        } => init(dir, name, kennel, force),
        Command::Cmd {
            project,
            lang,
            output,
        } => cmd(project, lang, output, defaults),
    }
}

fn init(
    dir: Option<PathBuf>,
    name: Option<String>,
    kennel: Option<String>,
    force: bool,
) -> Result<ExitCode> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    let dep = kennel.unwrap_or_else(crate::scaffold::default_kennel_dependency);
    let files = crate::scaffold::init(&dir, name.as_deref(), &dep, force)?;
    out(&format!(
        "kennel: created {} files in {}\nkennel: next: cd {} && cargo build && kennel start\n",
        files.len(),
        dir.display(),
        dir.display()
    ));
    Ok(ExitCode::SUCCESS)
}

fn cmd(
    args: ProjectArgs,
    lang: crate::codegen::Lang,
    output: Option<PathBuf>,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let project = load_project(&args, defaults)?;
    let text = crate::codegen::generate(lang, &project.routes, &project.route_notes);
    match output {
        Some(path) => std::fs::write(&path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => out(&text),
    }
    Ok(ExitCode::SUCCESS)
}

fn load_project(args: &ProjectArgs, defaults: &Defaults) -> Result<Project> {
    let dir = args
        .dir
        .clone()
        .or_else(|| defaults.dir.clone())
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = std::fs::canonicalize(&dir)
        .with_context(|| format!("project directory {}", dir.display()))?;
    let project = Project::load(&dir, &args.env).context("cannot load the project")?;
    for w in &project.warnings {
        eprintln!("kennel: warning: {w}");
    }
    Ok(project)
}

async fn start(args: StartArgs, defaults: &Defaults) -> Result<ExitCode> {
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
        let logs_dir = project.dir.join(LOGS_DIR);
        std::fs::create_dir_all(&logs_dir)
            .with_context(|| format!("cannot create {}", logs_dir.display()))?;
        let path = logs_dir.join(MASTER_LOG);
        let log = crate::logs::open_log(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
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

/// `kennel start --daemon`: starts `kennel start --detached` in a session of its own with its
/// output in `logs/master.log`, then waits until every server it starts has registered.
/// Fails (exit 1) with the reason when the master exits during startup (its last log lines),
/// when a server is crash-looping, or after `--wait` seconds; in the last two cases the
/// master keeps running (servers it adopted keep serving players), and the message says so.
async fn start_daemon(args: StartArgs, defaults: &Defaults) -> Result<ExitCode> {
    let project = load_project(&args.project, defaults)?;
    // Generated here (development) so the daemon and this process share them.
    let secrets = Secrets::resolve(&project, true).context("cannot resolve the secrets")?;
    let addr = host_port(&project.master.host, project.master.port);
    if MasterClient::dial(&addr).await.is_ok() {
        anyhow::bail!(
            "something already listens on the master port {addr} (a running master? `kennel list`)"
        );
    }
    let logs_dir = project.dir.join(LOGS_DIR);
    std::fs::create_dir_all(&logs_dir)
        .with_context(|| format!("cannot create {}", logs_dir.display()))?;
    let log_path = logs_dir.join(MASTER_LOG);
    let log = crate::logs::open_log(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
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
            if let Some(r) = last_rows.iter().find(|r| r.state == "crashloop") {
                anyhow::bail!(
                    "{} is crash-looping (see {}); {keeps_running}",
                    r.id,
                    crate::logs::log_path(&logs_dir, &r.id).display()
                );
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let missing: Vec<String> = last_rows
                .iter()
                .filter(|r| !r.external && r.state != "running")
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

/// `kennel send`: prints each server's answer (`id: reply`), error or timeout; exit code 1
/// when any server did not answer successfully.
async fn send(
    target: TargetArgs,
    ids: Vec<String>,
    types: Vec<String>,
    timeout: f64,
    json: bool,
    args: Vec<String>,
    defaults: &Defaults,
) -> Result<ExitCode> {
    if !(timeout > 0.0 && timeout <= 120.0) {
        anyhow::bail!("--timeout must be more than 0 and at most 120 seconds");
    }
    let ids = expand_ids(&ids)?;
    let mut master = connect(&target, defaults).await?;
    let reply = master
        .send(&ids, &types, &args, Duration::from_secs_f64(timeout))
        .await?;
    let failed = reply.results.iter().filter(|r| !r.ok).count();
    if json {
        let rows: Vec<serde_json::Value> = reply
            .results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "ok": r.ok,
                    "reply": r.ok.then_some(&r.reply),
                    "error": (!r.ok).then_some(&r.error),
                    "timedOut": r.timed_out,
                })
            })
            .collect();
        out(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
    } else {
        let mut text = String::new();
        for r in &reply.results {
            let body = if r.ok {
                r.reply.clone()
            } else if r.timed_out {
                r.error.clone()
            } else {
                format!("error: {}", r.error)
            };
            let mut lines = body.lines();
            text.push_str(&format!("{}: {}\n", r.id, lines.next().unwrap_or_default()));
            for l in lines {
                text.push_str(&format!("  {l}\n"));
            }
        }
        out(&text);
    }
    if failed > 0 {
        crate::console::err(&format!(
            "kennel: {failed} of {} servers did not answer successfully\n",
            reply.results.len()
        ));
        return Ok(ExitCode::FAILURE);
    }
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
    let given = target.master.secret()?;
    let project = match (&target.master.host, target.master.port, &given) {
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
    let secret = match (given, &project) {
        (Some(t), _) => t,
        (None, Some(p)) => {
            Secrets::resolve(p, false)
                .context("cannot find the CLI secret (pass --token-file or --token, or set KENNEL_CLI_SECRET_FILE or KENNEL_CLI_SECRET)")?
                .cli
        }
        (None, None) => unreachable!("the project is loaded when no token is given"),
    };
    Ok(MasterClient::authenticate(stream, &addr, &secret).await?)
}

/// Writes `text` to stdout; a closed stdout is not an error worth a panic.
fn out(text: &str) {
    crate::console::out(text);
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
    // The master answers once every process is spawned (or says why one is not).
    let ack = master.start(&ids).await?;
    out(&format!("kennel: {ack}\n"));
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
    /// `local`, `remote` (through the launcher) or `external`.
    launch: String,
}

fn config(
    args: ProjectArgs,
    bin: Option<PathBuf>,
    json: bool,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let project = load_project(&args, defaults)?;
    let bin = bin.or_else(|| defaults.bin.clone());
    let this_host = crate::launch::ThisHost::detect();
    let mut rows = Vec::new();
    for s in &project.servers {
        let policy = s.settings.restart;
        let launch = if s.settings.external {
            "external"
        } else if this_host.is_local(&s.host) {
            "local"
        } else {
            "remote"
        };
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
            launch: launch.to_owned(),
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
        "LAUNCH",
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
                r.launch.clone(),
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
            crate::console::err(&question);
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .context("reading the answer")?
        .context("reading the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            crate::console::err("kennel: not stopped\n");
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
