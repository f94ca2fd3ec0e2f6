//! The client's error type: every way a connect, request or push can fail.

use std::time::Duration;

/// Everything that can go wrong talking to a kennel (or mydog) frontend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection is closed (by the server, by [`crate::Client::close`], after an I/O or
    /// protocol error, or because the server went silent past twice its heartbeat). The text
    /// says why.
    #[error("connection closed: {0}")]
    Closed(String),
    /// A connect, handshake or request did not complete in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out (e.g. `request connector.main.echo`).
        what: String,
        /// The limit that passed.
        after: Duration,
    },
    /// The route is not in the server's route list.
    #[error("unknown route {0:?}: not in the server's route list")]
    UnknownRoute(String),
    /// A reply, push or frame could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded (e.g. `reply to chat.main.join`).
        what: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// A message could not be encoded as JSON.
    #[error("cannot encode the message for {route}: {source}")]
    Encode {
        /// The route the message was for.
        route: String,
        /// serde_json's complaint.
        source: serde_json::Error,
    },
    /// A socket (or WebSocket) error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The server's handshake reply was missing, malformed, or unusable.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// TLS failed: the handshake (e.g. a certificate not trusted, or not for this name) or
    /// the TLS settings ([`crate::TlsOptions`]).
    #[error("tls: {0}")]
    Tls(String),
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True for [`Error::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed(_))
    }

    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}
