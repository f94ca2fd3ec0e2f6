//! kennel-master: the supervisor of a kennel cluster (a library) and the `kennel` operator
//! command line built on it.
//!
//! - [`run`] is the master: it spawns every configured server (`<bin> --id <id> --env <env>`,
//!   own process group, output in `logs/<id>.log`), accepts their registrations on the master
//!   port and keeps every server's view of the cluster current, restarts crashed servers with
//!   backoff, answers the CLI, and stops everything gracefully on shutdown.
//! - [`MasterClient`] is the CLI's side of the master port.
//! - [`cli_main`] / [`cli_main_with`] are the `kennel` command line (`start`, `list`, `stop`).
//!
//! Modules: `master` (event loop, stop sequence), `supervisor` (processes), `registry`
//! (master links), `listener` (accept + auth), `logs` (log files and their echo), `client`,
//! `table` (`list` output), `cli` (clap), `backoff`, `console` (stdout lines), `error`.

mod backoff;
mod cli;
mod client;
mod console;
mod error;
mod listener;
mod logs;
mod master;
mod registry;
mod supervisor;
mod table;

pub use cli::{Defaults, cli_main, cli_main_with};
pub use client::{CLI_ID, CONNECT_TIMEOUT, MasterClient, REQUEST_TIMEOUT};
pub use error::{ClientError, MasterError};
pub use master::{
    DEFAULT_FRONTEND_STOP_TIMEOUT, DEFAULT_STOP_TIMEOUT, LOGS_DIR, StartOptions, run,
};
pub use table::{ServerRow, format_uptime, render_table, rows};
