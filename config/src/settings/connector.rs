//! The frontend connector's settings (mydog's `connector` config): the runtime form
//! [`ConnectorConfig`] with its defaults, and [`ConnectorSettings`], the keys one server entry
//! writes (`connector`, `io`, `heartbeat`, `maxConnectionNum`, `maxLen`, `noDelay`, `interval`,
//! `handshakeTimeout`, `sendQueueBytes`, `maxInFlight`, `rateLimit`), which override a base
//! (the defaults, or what the game set with `App::set_connector`), and its TLS keys (`ssl`,
//! `cert`, `key`, `certReload`: `tls.rs`), which only the entry sets.

use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::at_least;
use crate::error::Problem;

/// Default largest frame a game client may send (`maxLen`, 10 MiB): the same as
/// `kennel_proto::client::DEFAULT_MAX_LEN` (the worker checks they agree at compile time).
pub const DEFAULT_CLIENT_MAX_LEN: usize = 10 * 1024 * 1024;

/// How game clients reach a frontend (key `connector`: `"tcp"`, `"ws"` or `"websocket"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Transport {
    /// Frames on a TCP stream (mydog `connector.Tcp`).
    #[default]
    #[serde(rename = "tcp")]
    Tcp,
    /// Frames in binary WebSocket messages (mydog `connector.Ws`).
    #[serde(rename = "ws", alias = "websocket")]
    WebSocket,
}

/// How a frontend's client sockets are driven (key `io`: `"epoll"`, the default, or
/// `"uring"`: io_uring, plain TCP only, Linux >= 6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Io {
    /// Readiness (tokio's epoll reactor): a `recv`/`writev` per read and write.
    #[default]
    Epoll,
    /// Completions (io_uring): reads and writes queued on one ring and handed to the kernel
    /// together, one `io_uring_enter` for every connection's operations of a loop turn.
    Uring,
}

impl Io {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Io::Epoll => "epoll",
            Io::Uring => "uring",
        }
    }
}

/// Frontend connector settings (mydog's `connector` config). A frontend's entry in
/// `servers.json` may override them with `connector` (`"tcp"`/`"ws"`), `heartbeat`,
/// `maxConnectionNum`, `maxLen`, `noDelay`, `interval` (ms), `handshakeTimeout` (seconds),
/// `sendQueueBytes`, `maxInFlight` and `rateLimit` ([`ConnectorSettings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorConfig {
    /// TCP or WebSocket.
    pub transport: Transport,
    /// epoll or io_uring (key `io`; io_uring only with plain TCP).
    pub io: Io,
    /// Heartbeat interval in seconds announced to clients; a client silent for twice this long
    /// is closed. 0 turns heartbeats off.
    pub heartbeat: u64,
    /// Largest frame `len` a client may send (type byte + body).
    pub max_len: usize,
    /// Connections beyond this are closed at once. Connections still before their handshake
    /// count too, so a flood of idle sockets cannot get past it.
    pub max_connections: usize,
    /// A client that has not completed its handshake by then is closed.
    pub handshake_timeout: Duration,
    /// Disable Nagle's algorithm on client sockets.
    pub no_delay: bool,
    /// Send batching: frames to a client are held up to this long and written together
    /// (key `interval`, in ms; 0 = write at once). Queued frames are flushed on close.
    pub interval: Duration,
    /// Bytes queued for one client (not yet written to its socket) beyond which it is closed
    /// (key `sendQueueBytes`, default 4 MiB; a single larger frame is still sent). Beside the
    /// 1024-frame cap: frames may be up to `maxLen` each.
    pub send_queue_bytes: usize,
    /// Handlers of one connection that may be in flight (started, not finished: awaiting an
    /// RPC, a timer...) before the connector stops reading that client's socket until one
    /// finishes (key `maxInFlight`, default 64, at least 1).
    pub max_in_flight: usize,
    /// Per-client message rate limit (key `rateLimit`): `None` turns it off.
    pub rate_limit: Option<RateLimit>,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            transport: Transport::Tcp,
            io: Io::Epoll,
            heartbeat: 60,
            max_len: DEFAULT_CLIENT_MAX_LEN,
            max_connections: 20_000,
            handshake_timeout: Duration::from_secs(10),
            no_delay: true,
            interval: Duration::ZERO,
            send_queue_bytes: 4 << 20,
            max_in_flight: 64,
            rate_limit: Some(RateLimit::default()),
        }
    }
}

/// A per-client token bucket on messages (heartbeats are not counted): `burst` messages at
/// once, refilled at `per_second`. Key `rateLimit`:
/// `{"perSecond": 1000, "burst": 2000, "action": "close"}` (the default), or `false` for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Messages per second, sustained (at least 1).
    pub per_second: u32,
    /// Messages allowed at once (at least 1).
    pub burst: u32,
    /// What happens to a client past the limit.
    pub action: RateLimitAction,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 1000,
            burst: 2000,
            action: RateLimitAction::Close,
        }
    }
}

/// What the rate limit does to a client past it (`rateLimit.action`: `"close"`, `"drop"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitAction {
    /// Close the connection (logged with the reason).
    Close,
    /// Drop the message (logged once a second per connection, counted).
    Drop,
}

/// The connector keys one server entry writes, checked; `None` where the entry is silent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorSettings {
    /// `connector`.
    pub transport: Option<Transport>,
    /// `io` (`uring` refused with `connector: "ws"` or `ssl`).
    pub io: Option<Io>,
    /// `heartbeat` (seconds, 0 to [`super::MAX_SECS`]).
    pub heartbeat: Option<u64>,
    /// `maxConnectionNum`.
    pub max_connections: Option<usize>,
    /// `maxLen` (at least 3).
    pub max_len: Option<usize>,
    /// `handshakeTimeout` (whole seconds, 1 to [`super::MAX_SECS`]).
    pub handshake_timeout: Option<Duration>,
    /// `noDelay`.
    pub no_delay: Option<bool>,
    /// `interval` (whole ms).
    pub interval: Option<Duration>,
    /// `sendQueueBytes` (at least 1024).
    pub send_queue_bytes: Option<usize>,
    /// `maxInFlight` (at least 1).
    pub max_in_flight: Option<usize>,
    /// `rateLimit`: `Some(None)` for `false`/`null` (no limit).
    pub rate_limit: Option<Option<RateLimit>>,
    /// `ssl` (with `cert`, `key`, `certReload`): TLS for this frontend's clients (wss, or TLS
    /// over TCP). Read from the entry only: [`ConnectorSettings::apply_to`] leaves it out.
    pub tls: Option<super::TlsSettings>,
}

impl ConnectorSettings {
    /// Overrides the fields of `base` this entry sets.
    pub fn apply_to(&self, base: &mut ConnectorConfig) {
        fn set<T: Clone>(slot: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *slot = v.clone();
            }
        }
        set(&mut base.transport, &self.transport);
        set(&mut base.io, &self.io);
        set(&mut base.heartbeat, &self.heartbeat);
        set(&mut base.max_connections, &self.max_connections);
        set(&mut base.max_len, &self.max_len);
        set(&mut base.handshake_timeout, &self.handshake_timeout);
        set(&mut base.no_delay, &self.no_delay);
        set(&mut base.interval, &self.interval);
        set(&mut base.send_queue_bytes, &self.send_queue_bytes);
        set(&mut base.max_in_flight, &self.max_in_flight);
        set(&mut base.rate_limit, &self.rate_limit);
    }
}

/// The defaults with this entry's keys over them.
impl From<&ConnectorSettings> for ConnectorConfig {
    fn from(s: &ConnectorSettings) -> Self {
        let mut c = ConnectorConfig::default();
        s.apply_to(&mut c);
        c
    }
}

/// The JSON form of a `rateLimit` object.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawRateLimit {
    per_second: Option<u64>,
    burst: Option<u64>,
    action: Option<RateLimitAction>,
}

impl RawRateLimit {
    /// The limit, [`RateLimit::default`] filling what is unset (`burst` defaults to twice
    /// `perSecond`).
    pub(super) fn check(self) -> Result<RateLimit, Problem> {
        let count = |key, n| at_least(key, n, 1).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let mut r = RateLimit::default();
        if let Some(n) = self.per_second {
            r.per_second = count("rateLimit.perSecond", n)?;
            r.burst = r.per_second.saturating_mul(2);
        }
        if let Some(n) = self.burst {
            r.burst = count("rateLimit.burst", n)?;
        }
        if let Some(a) = self.action {
            r.action = a;
        }
        Ok(r)
    }
}

/// `rateLimit`: `false` or `null` (off: `Some(None)`), `true` (the default limit), or an object.
pub(super) fn rate_limit<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<RawRateLimit>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<RawRateLimit>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(
                "false, or {\"perSecond\": n, \"burst\": n, \"action\": \"close\" or \"drop\"}",
            )
        }
        fn visit_bool<E>(self, on: bool) -> Result<Self::Value, E> {
            Ok(on.then_some(RawRateLimit {
                per_second: None,
                burst: None,
                action: None,
            }))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            RawRateLimit::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(V).map(Some)
}
