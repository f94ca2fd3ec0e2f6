//! Error types of the library: startup ([`Error`]), RPC ([`RpcError`]) and push ([`PushError`]).

/// Why a server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line flags.
    #[error("bad arguments: {0}")]
    Args(String),
    /// The project configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] kennel_config::ConfigError),
    /// This server's id is not in the configuration.
    #[error("server id {id:?} is not in the {env} configuration of {dir}")]
    UnknownServer {
        /// The id given with `--id`.
        id: String,
        /// The environment.
        env: String,
        /// The project directory.
        dir: String,
    },
    /// A registration names a route that is not in the route list, or is not a handler route.
    #[error("{0}")]
    Setup(String),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// What the socket is for.
        what: &'static str,
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The master refused the registration.
    #[error("the master refused registration: {0}")]
    Refused(String),
}

/// Why an RPC failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// No such server is known (not registered with the master).
    #[error("unknown server {0:?}")]
    UnknownServer(String),
    /// No answer within the timeout (including waiting for the link to come up).
    #[error("rpc {route} to {server} timed out")]
    Timeout {
        /// Target server.
        server: String,
        /// Route called.
        route: String,
    },
    /// The link to the server dropped while the call was in flight.
    #[error("link to {0} dropped while the call was in flight")]
    LinkDropped(String),
    /// The remote has no handler for the route.
    #[error("no remote {route} on {server}")]
    NoRemote {
        /// Target server.
        server: String,
        /// Route called.
        route: String,
    },
    /// The remote handler failed.
    #[error("remote {route} on {server} failed: {message}")]
    Remote {
        /// Target server.
        server: String,
        /// Route called.
        route: String,
        /// The remote's message.
        message: String,
    },
    /// Arguments or result could not be encoded/decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// Too many calls are already waiting for this server's link to come up
    /// (`rpcMsgCacheCount`).
    #[error("{count} calls already wait for the link to {server}: call refused")]
    QueueFull {
        /// Target server.
        server: String,
        /// The limit reached.
        count: usize,
    },
    /// The link to the server is congested: it took nothing for `rpc.timeout` while messages
    /// waited for room (the server stopped reading), so the call is refused at once.
    #[error("link to {0} is congested (it reads nothing): call refused")]
    Congested(String),
    /// `noRpcMatrix` forbids links between this server's type and the target's.
    #[error(
        "no rpc link between {from_type} and {to_type} servers (noRpcMatrix): cannot reach {server}"
    )]
    NoLink {
        /// Target server.
        server: String,
        /// This server's type.
        from_type: String,
        /// The target's type.
        to_type: String,
    },
}

/// Why a push could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The route is not in the route list.
    #[error("route {0:?} is not in the route list")]
    UnknownRoute(String),
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[from] serde_json::Error),
    /// The app's message codec cannot encode the message.
    #[error("message codec: {0}")]
    Codec(String),
    /// This operation is only possible on a frontend server.
    #[error("{0} is only available on a frontend server")]
    NotFrontend(&'static str),
}

/// Why [`crate::Session::set`] refused a setting (nothing was changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The settings would exceed [`crate::SETTINGS_MAX`] bytes of JSON.
    #[error(
        "session setting {key:?} refused: the settings would take {size} bytes of JSON, more than the {max} allowed (they travel with every forwarded message)"
    )]
    TooLarge {
        /// The key being set.
        key: String,
        /// The settings' size with it.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// The value does not serialize to JSON.
    #[error("session setting {key:?} refused: {message}")]
    Encode {
        /// The key being set.
        key: String,
        /// serde's error.
        message: String,
    },
}
