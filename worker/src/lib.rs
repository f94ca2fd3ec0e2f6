//! kennel: the library a game server links.
//!
//! A game server is one binary for every server type of a project. The master starts it as
//! `<bin> --id <id> --env <env>`; [`App::from_args`] reads those flags and the project's
//! `config/sys/`, the app registers its handlers, remotes and route functions, and
//! [`App::run`] registers with the master, joins the RPC mesh and (on frontends) accepts game
//! clients speaking PROTOCOL.md.
//!
//! ```no_run
//! use kennel::{App, Session};
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let app = App::from_args()?;
//!     app.handler("connector.main.echo", |_app: App, _s: Session, msg: serde_json::Value| async move {
//!         Some(msg)
//!     });
//!     app.run().await?;
//!     Ok(())
//! }
//! ```
#![deny(missing_docs)]

mod app;
mod args;
pub mod codec;
mod connector;
mod dispatch;
mod error;
mod frontend;
mod handler;
mod listen;
mod master_link;
mod peers;
mod rpc;
mod rpc_config;
mod session;
mod stats;
mod wire;

pub use app::{App, BEFORE_EXIT_TIMEOUT, ServerInfo};
pub use args::Args;
pub use connector::{ConnectorConfig, RateLimit, RateLimitAction, Transport};
pub use error::{Error, PushError, RpcError, SessionError};
pub use handler::Reply;
pub use rpc::{RemoteRoute, Rpc};
pub use rpc_config::{Interval, RpcConfig};
pub use session::{SETTINGS_MAX, Session};
pub use stats::LATENCY_BUCKETS;

/// Installs a tracing subscriber writing to stderr (level from `RUST_LOG`, default `info`).
/// Called by [`App::from_args`]; harmless if a subscriber is already set. A failed write (a
/// full disk under the log file, a closed pipe) drops the line: tracing-subscriber's own
/// report of it would be an `eprintln!` to the same stderr, which panics.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .log_internal_errors(false)
        .try_init();
}

/// The kennel guide (`docs/guide.md`): from an empty project to a two-type cluster. Its Rust
/// snippets are compiled as doc-tests.
#[doc = include_str!("../../docs/guide.md")]
pub mod guide {}
