//! The client edge of a frontend: the connector (`connector.rs`: settings, the accept loop,
//! `connection.rs`: one task per client running PROTOCOL.md's lifecycle), the transports
//! (`wire.rs`, with TLS under either in `tls.rs`; writes to idle plain-TCP clients from outside
//! their task in `direct.rs`; plain TCP on io_uring in `uring.rs`), the pluggable codecs (`codec.rs`) and the
//! registry of live clients (`clients.rs`).
//!
//! The edge knows nothing of routes, handlers or the app: a connection hands its client up
//! through [`ClientSink`], which the routing layer implements (a session for a new client, its
//! messages, its end), and the registry holds the routing layer's sessions as an opaque
//! [`ClientSession`]. TLS lives here alone (the app only hands over the certificate and answers
//! `reload-tls`); a resumable session would likewise change this folder and the sink's
//! implementation, not the callers.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

pub(crate) mod clients;
pub mod codec;
pub(crate) mod connection;
pub(crate) mod connector;
pub(crate) mod direct;
pub(crate) mod tls;
#[cfg(target_os = "linux")]
pub(crate) mod uring;
pub(crate) mod wire;

use clients::Conn;

/// What the edge needs of a client's session (for its logs).
pub(crate) trait ClientSession: Clone + Send + Sync + 'static {
    /// The bound user id, if any.
    fn uid(&self) -> Option<u64>;
    /// The client's IP address.
    fn ip(&self) -> &str;
}

/// A uid in a log line: the number, or `-` for a session not bound (or no session).
pub(crate) struct Uid(pub(crate) Option<u64>);

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(uid) => write!(f, "{uid}"),
            None => f.write_str("-"),
        }
    }
}

/// Where a connection hands its client up: implemented by the routing layer. Game code it runs
/// is behind its own panic boundaries; the connection's task has one more around everything.
pub(crate) trait ClientSink: Send + Sync + 'static {
    /// The session of a live client.
    type Session: ClientSession;
    /// A client completed its handshake on `conn`: its session (the connector registers it).
    fn open(&self, conn: Arc<Conn>, ip: String) -> Self::Session;
    /// Runs once the session is registered, before its first message is read.
    fn opened(&self, session: &Self::Session) -> impl Future<Output = ()> + Send;
    /// One message of the client, in arrival order. An error closes the connection.
    fn message(
        &self,
        session: &Self::Session,
        cmd: u16,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Runs when the connection has ended (after the session is forgotten).
    fn closed(&self, session: &Self::Session) -> impl Future<Output = ()> + Send;
}
