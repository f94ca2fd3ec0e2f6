//! The settings of a server entry in `servers.*`: the frontend connector's keys
//! ([`ConnectorSettings`], TLS included), `threads`, `restart` and `external`. Every server the entry expands
//! to gets them, so they are set per type or per server by where they are written.

use serde::Deserialize;
use serde_json::Value;

use super::connector::{ConnectorSettings, Io, RawRateLimit, Transport, rate_limit};
use super::{at_least, in_range, parse, size, whole_secs};
use crate::error::Problem;

/// The kennel settings of one server entry (defaults for the keys it does not set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// The frontend connector's keys as written (used by frontends only; checked on every
    /// entry, since they are kennel's names).
    pub connector: ConnectorSettings,
    /// Worker threads of the server's tokio runtime (`threads`, 1 to 1024, default 1: a
    /// single-threaded runtime, like a mydog server on one Node thread). Read by
    /// `kennel::App::runtime`.
    pub threads: usize,
    /// When the master restarts the server after it exited by itself (`restart`).
    pub restart: RestartPolicy,
    /// Started by someone else: the master never starts, restarts or signals it
    /// (`external`, default false).
    pub external: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            connector: ConnectorSettings::default(),
            threads: 1,
            restart: RestartPolicy::Always,
            external: false,
        }
    }
}

/// When a server that exited by itself is started again (`restart`: `"always"`,
/// `"on-failure"`, `"never"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Always (the default).
    #[default]
    Always,
    /// Only when it did not exit with status 0 (an adopted server's exit status is unknown and
    /// counts as a failure).
    OnFailure,
    /// Never.
    Never,
}

impl RestartPolicy {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// The JSON form: every kennel key of a server entry, `None` when absent (or `null`). Other
/// keys (placement, game keys) are ignored here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServer {
    connector: Option<Transport>,
    io: Option<Io>,
    heartbeat: Option<u64>,
    max_connection_num: Option<u64>,
    max_len: Option<u64>,
    no_delay: Option<bool>,
    interval: Option<u64>,
    handshake_timeout: Option<u64>,
    send_queue_bytes: Option<u64>,
    max_in_flight: Option<u64>,
    #[serde(default, deserialize_with = "rate_limit")]
    rate_limit: Option<Option<RawRateLimit>>,
    threads: Option<u64>,
    restart: Option<RestartPolicy>,
    external: Option<bool>,
    ssl: Option<bool>,
    // As values: `cert` and `key` are kennel's only with `ssl` (a game may use `key` itself).
    cert: Option<Value>,
    key: Option<Value>,
    cert_reload: Option<u64>,
}

/// The settings of a server entry (a table).
pub(crate) fn server_settings(entry: &Value) -> Result<ServerSettings, Problem> {
    let raw: RawServer = parse(entry)?;
    if raw.io == Some(Io::Uring) {
        if raw.connector == Some(Transport::WebSocket) {
            return Err(super::setting(
                "io",
                "`uring` drives plain TCP clients only, and this entry has `connector: \"ws\"`: use `\"io\": \"epoll\"` (the default) for a WebSocket frontend",
            ));
        }
        if raw.ssl == Some(true) {
            return Err(super::setting(
                "io",
                "`uring` drives plain TCP clients only, and this entry has `ssl: true`: use `\"io\": \"epoll\"` (the default) for a TLS frontend",
            ));
        }
    }
    let connector = ConnectorSettings {
        transport: raw.connector,
        io: raw.io,
        heartbeat: raw
            .heartbeat
            .map(|n| in_range("heartbeat", n, 0, super::MAX_SECS))
            .transpose()?,
        max_connections: raw.max_connection_num.map(size),
        max_len: raw
            .max_len
            .map(|n| at_least("maxLen", n, 3).map(size))
            .transpose()?,
        handshake_timeout: raw
            .handshake_timeout
            .map(|n| whole_secs("handshakeTimeout", n, 1))
            .transpose()?,
        no_delay: raw.no_delay,
        interval: raw
            .interval
            .map(|ms| super::millis("interval", ms as f64))
            .transpose()?,
        send_queue_bytes: raw
            .send_queue_bytes
            .map(|n| at_least("sendQueueBytes", n, 1024).map(size))
            .transpose()?,
        max_in_flight: raw
            .max_in_flight
            .map(|n| at_least("maxInFlight", n, 1).map(size))
            .transpose()?,
        rate_limit: raw
            .rate_limit
            .map(|r| r.map(|r| r.check()).transpose())
            .transpose()?,
        tls: super::tls::tls_settings(
            raw.ssl,
            raw.cert.as_ref(),
            raw.key.as_ref(),
            raw.cert_reload,
        )?,
    };
    Ok(ServerSettings {
        connector,
        threads: match raw.threads {
            None => 1,
            Some(n) => size(in_range("threads", n, 1, 1024)?),
        },
        restart: raw.restart.unwrap_or_default(),
        external: raw.external.unwrap_or(false),
    })
}
