//! The library's error types: [`MasterError`] (the master could not start) and
//! [`ClientError`] (the CLI could not talk to a master).

use std::path::PathBuf;

use kennel_proto::auth::AuthError;
use kennel_proto::frame::LinkError;

/// Why the master could not start its cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MasterError {
    /// Neither `--bin`, the server's `bin` nor the master's `bin` names a binary.
    #[error(
        "server {id}: no binary configured (set `bin` in master.json or in the server's entry, or pass --bin)"
    )]
    NoBinary {
        /// The server id.
        id: String,
    },
    /// The server's binary does not exist.
    #[error("server {id}: binary {} not found", path.display())]
    MissingBinary {
        /// The server id.
        id: String,
        /// The path looked at.
        path: PathBuf,
    },
    /// The server's binary exists but is not an executable file.
    #[error("server {id}: binary {} is not an executable file", path.display())]
    NotExecutable {
        /// The server id.
        id: String,
        /// The path looked at.
        path: PathBuf,
    },
    /// The `logs/` directory (or a log file) could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Logs {
        /// The directory or file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A setting given on the command line (`--external`) or a metrics port that cannot be
    /// bound (the config files' settings are checked by kennel-config when the project loads).
    #[error("{what}")]
    Setting {
        /// What is wrong, naming the setting.
        what: String,
    },
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// Why the CLI could not get an answer from the master.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing accepted the TCP connection.
    #[error("no master answering at {addr}: {source}")]
    Unreachable {
        /// `host:port` dialed.
        addr: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The master's proof did not match our secret: the CLI secret is wrong.
    #[error(
        "the master at {addr} does not accept this CLI secret (check --token-file, --token, KENNEL_CLI_SECRET_FILE, KENNEL_CLI_SECRET or the project's .kennel/secrets.json)"
    )]
    WrongSecret {
        /// `host:port` dialed.
        addr: String,
    },
    /// Authentication failed for another reason (refused, malformed, closed).
    #[error("authentication with the master at {addr} failed: {source}")]
    Auth {
        /// `host:port` dialed.
        addr: String,
        /// What went wrong.
        source: AuthError,
    },
    /// The master did not answer in time.
    #[error("the master at {addr} did not answer within {secs} s")]
    Timeout {
        /// `host:port` dialed.
        addr: String,
        /// The timeout.
        secs: u64,
    },
    /// The master closed the link before answering.
    #[error("the master at {addr} closed the connection")]
    Closed {
        /// `host:port` dialed.
        addr: String,
    },
    /// The link broke or carried garbage.
    #[error("link to the master at {addr}: {source}")]
    Link {
        /// `host:port` dialed.
        addr: String,
        /// The error.
        source: LinkError,
    },
    /// The master answered with an error, or with an unexpected reply.
    #[error("the master at {addr} answered: {message}")]
    Master {
        /// `host:port` dialed.
        addr: String,
        /// The master's message.
        message: String,
    },
}
