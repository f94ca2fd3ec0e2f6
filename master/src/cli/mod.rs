//! The `kennel` command line (clap): the definitions of every command and flag, the entry
//! points [`cli_main`] and [`cli_main_with`], tracing setup, dispatch, and what several
//! commands share (loading the project, reaching the master, id ranges). The commands
//! themselves live by what they act on:
//!
//! - [`start`]: the master itself, `kennel start` in the foreground and `--daemon`;
//! - [`ops`]: a running master, `list`, `stop`, `restart`, `remove`, `start <ids>`, `send`,
//!   `logs`;
//! - [`project`]: the project files alone, `config`, `init`, `cmd`.
//!
//! This is the binary's logic, so it uses `anyhow`; every failure ends as one `kennel: ...`
//! line on stderr and exit code 1.

mod ops;
mod project;
mod start;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use kennel_config::{DEFAULT_ENV, Project, Secrets};

use crate::client::MasterClient;

/// How often `restart`/`remove`/`start` look at the server table while waiting.
const POLL: Duration = Duration::from_millis(100);

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
            start::start_daemon(cmd.start, defaults).await
        }
        Command::Start(cmd) if cmd.ids.is_empty() => start::start(cmd.start, defaults).await,
        Command::Start(cmd) if cmd.start.daemon => {
            anyhow::bail!("--daemon starts a whole cluster: give no server ids")
        }
        Command::Start(cmd) => {
            let target = TargetArgs {
                project: cmd.start.project,
                master: cmd.master,
            };
            ops::start_ids(target, cmd.ids, defaults).await
        }
        Command::List {
            target,
            json,
            watch,
        } => ops::list(target, json, watch, defaults).await,
        Command::Stop { target, yes } => ops::stop(target, yes, defaults).await,
        Command::Logs {
            project,
            id,
            follow,
            lines,
        } => ops::logs(project, id, follow, lines, defaults).await,
        Command::Restart {
            target,
            ids,
            timeout,
        } => ops::restart(target, ids, Duration::from_secs(timeout), defaults).await,
        Command::Remove { target, ids, types } => ops::remove(target, ids, types, defaults).await,
        Command::Send {
            target,
            ids,
            types,
            timeout,
            json,
            args,
        } => ops::send(target, ids, types, timeout, json, args, defaults).await,
        Command::Config { project, bin, json } => project::config(project, bin, json, defaults),
        Command::Init {
            dir,
            name,
            kennel,
            force,
        } => project::init(dir, name, kennel, force),
        Command::Cmd {
            project,
            lang,
            output,
        } => project::cmd(project, lang, output, defaults),
    }
}

/// The project `args` name (`defaults.dir` when no `--dir`), loaded and checked.
fn load_project(args: &ProjectArgs, defaults: &Defaults) -> Result<Project> {
    load_project_with(args, defaults, Project::load)
}

/// [`load_project`] for commands on a running cluster: the TLS certificate files are not
/// read (a renewal gone wrong on disk must not stop `kennel stop` or `send reload-tls`).
fn load_running_project(args: &ProjectArgs, defaults: &Defaults) -> Result<Project> {
    load_project_with(args, defaults, Project::load_without_tls_files)
}

fn load_project_with(
    args: &ProjectArgs,
    defaults: &Defaults,
    load: fn(&std::path::Path, &str) -> Result<Project, kennel_config::ConfigError>,
) -> Result<Project> {
    let dir = args
        .dir
        .clone()
        .or_else(|| defaults.dir.clone())
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = std::fs::canonicalize(&dir)
        .with_context(|| format!("project directory {}", dir.display()))?;
    let project = load(&dir, &args.env).context("cannot load the project")?;
    for w in &project.warnings {
        eprintln!("kennel: warning: {w}");
    }
    Ok(project)
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
        _ => Some(load_running_project(&target.project, defaults)?),
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
