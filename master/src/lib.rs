//! kennel-master: the supervisor of a kennel cluster (a library) and the `kennel` operator
//! command line built on it.
//!
//! - [`run`] is the master: it spawns every configured server (`<bin> --id <id> --env <env>`,
//!   own process group, output in `logs/<id>.log`), accepts their registrations on the master
//!   port and keeps every server's view of the cluster current, restarts crashed servers with
//!   backoff, answers the CLI, and stops everything gracefully on shutdown.
//! - [`MasterClient`] is the CLI's side of the master port.
//! - [`cli_main`] / [`cli_main_with`] are the `kennel` command line (`start [--daemon]`,
//!   `list`, `stop`, `logs`, `restart`, `remove`, `send`, `config`, `init`, `cmd`).
//!
//! Decisions (where the design is silent):
//! - Servers get `KENNEL_SERVER_SECRET` (never `KENNEL_CLI_SECRET`) and
//!   `KENNEL_MASTER_HOST`/`KENNEL_MASTER_PORT` set to the address the master really listens on.
//! - When a server's process exits, whatever is left in its process group is SIGKILLed, and its
//!   master link (same pid) is dropped at once, so its restart is not refused as a duplicate.
//! - Registration is refused (`FromMaster::Error`, then close) for an id not in the config, a
//!   type that differs from the config, an id that differs from the authenticated one, an id
//!   whose link is live, and while the master is stopping.
//! - `kennel stop` waits until the master has stopped the cluster (the master closes the CLI
//!   link last); it asks for confirmation only when stdin is a terminal and `-y` is not given.
//! - Ctrl-C / SIGTERM to a foreground master stops every server; SIGKILL or a crash of the
//!   master leaves them serving, and the next master on the project re-adopts them through
//!   their pid files (`.kennel/run/<id>.pid`) instead of spawning duplicates (see
//!   `docs/operations.md`).
//! - Restart policies (`"restart"` in a server entry) and the crash-loop limit (`crashLoop` in
//!   master.json) decide what happens when a server exits by itself; `kennel restart`,
//!   `remove` and `start <ids>` override them for one server.
//! - `kennel restart` waits, per server, until the master shows it running with a new pid
//!   and a live master link (re-registered) before restarting the next one.
//! - Logs rotate by copy-truncate (the servers keep their `O_APPEND` descriptor); see
//!   `docs/operations.md`.
//! - `kennel start --daemon` re-runs the binary as `start --detached` in its own session
//!   (output in `logs/master.log`) and polls the CLI port until the master reports every
//!   server it starts registered (`ListReply.ready`); on a crash loop or timeout it fails but
//!   leaves the master running (it may have adopted servers that serve players).
//! - A server on another host is started through the launcher template (`ssh` by default) and
//!   stopped through the remote-signal template with the pid it registered with.
//! - External servers (`"external": true` or `--external`) are never started or signalled;
//!   a server the master starts may register only from the process it started (or its
//!   process group): a hand-started copy is refused with a hint.
//! - `kennel send` is forwarded as `Command` messages over the master links; the CLI task
//!   waits for the `CommandReply`s (bounded), so the event loop never waits.
//! - Metrics (`"metrics": {"port": N}` in master.json) are rendered at each scrape from the
//!   same table `kennel list` gets; servers send cumulative RPC counters in their reports.
//!
//! Modules, top down (each imports only those below it):
//!
//! - `cli/` (the `kennel` command line: `mod.rs` clap definitions and dispatch, `start.rs`,
//!   `ops.rs` for a running master, `project.rs` for the project files), `client` (the CLI
//!   link), `table` (`list` output), `scaffold` (`kennel init`), `codegen` (`kennel cmd`);
//! - `master`: [`run`] (wires everything, the event loop) and the stop sequence;
//! - `core`: `Core`, the single writer of the cluster state: CLI requests, registration,
//!   readiness, the `list` table;
//! - `supervisor` (the process table: spawns, exits, restart policies, adoption),
//!   `registry` (master links, reports, `send` commands), `listener` (accept + auth, the
//!   server and CLI links), `metrics` (the opt-in Prometheus listener): they feed the core
//!   through `event`, never by calling it;
//! - `event` (`Event`, `Exit`: what flows into the core), `state` (`Proc`, `LinkState` and
//!   the one [`ServerState`], also on the wire), `launch` (how a server is started: local,
//!   remote through the launcher templates, external), `policy`, `procfs` (pid files,
//!   `/proc`, pidfd, group signals), `sampler` (rss/cpu), `logs` (log files, rotation, echo),
//!   `backoff`, `console` (stdout, stderr and `logs/master.log` writes that never fail),
//!   `error`.

mod backoff;
mod cli;
mod client;
pub mod codegen;
mod console;
mod core;
mod error;
mod event;
mod launch;
mod listener;
mod logs;
mod master;
mod metrics;
mod policy;
mod procfs;
mod registry;
mod sampler;
pub mod scaffold;
mod state;
mod supervisor;
mod table;

pub use cli::{Defaults, cli_main, cli_main_with};
pub use client::{CLI_ID, CONNECT_TIMEOUT, MasterClient, REQUEST_TIMEOUT};
pub use error::{ClientError, MasterError};
pub use master::{
    DEFAULT_FRONTEND_STOP_TIMEOUT, DEFAULT_STOP_TIMEOUT, LOGS_DIR, StartOptions, run,
};
pub use state::{ServerState, UnknownState};
pub use table::{ServerRow, format_bytes, format_uptime, render_table, rows};
