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

// Layers, imports pointing down: `app` (the handle, setup, run) -> `routing` (route table,
// inbound messages, peer messages, the one delivery path, panic boundaries) -> `mesh` (peer
// links, RPC, discovery) and `edge` (client connectors, wire, codecs). The mesh and the edge
// hand messages up through traits routing implements (`mesh::PeerHandler`,
// `edge::ClientSink`) and import nothing from the layers above. Shared by all: `error`,
// `stats`, `panic`, `net`, `clock`.
mod app;
mod clock;
mod edge;
mod error;
mod mesh;
mod net;
mod panic;
mod routing;
mod stats;

pub use app::args::Args;
pub use app::rpc::{RemoteRoute, Rpc};
pub use app::{App, BEFORE_EXIT_TIMEOUT};
pub use edge::codec;
pub use edge::connector::{ConnectorConfig, Io, RateLimit, RateLimitAction, Transport};
pub use edge::tls::RELOAD_TLS;
pub use error::{Error, PushError, RpcError, SessionError};
pub use mesh::ServerInfo;
pub use mesh::rpc_config::{Interval, RpcConfig};
pub use routing::handler::Reply;
pub use routing::session::{SETTINGS_MAX, Session};
pub use stats::LATENCY_BUCKETS;
/// The TLS acceptor [`App::client_tls`] gives, and the rustls it runs on (ring provider).
pub use tokio_rustls::{self, TlsAcceptor};

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
