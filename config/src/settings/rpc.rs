//! [`RpcConfig`]: how servers talk to each other (mydog's `rpcConfig`): call timeout, the
//! bounded queue of calls waiting for a link, link heartbeat, redial delay, write batching,
//! frame limit, and the pairs of server types that never link (`noRpcMatrix`).
//!
//! It is read from the `rpc` key of the environment's entry in `config/sys/master.json` (the
//! same for every server of the cluster), and `kennel::App::set_rpc_config` can replace it in
//! code. Every key is optional; an unknown one is an error:
//!
//! ```json
//! "rpc": {
//!   "timeout": 10, "rpcMsgCacheCount": 5000, "heartbeat": 10, "heartbeatTimeout": 30,
//!   "reconnectDelay": 0.5, "interval": { "default": 0, "chat": 5 }, "noDelay": true,
//!   "maxLen": 67108864, "reconcileGrace": 5, "noRpcMatrix": { "connector": ["connector"] }
//! }
//! ```

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::{millis, secs, setting};
use crate::error::Problem;

/// Default largest internal frame accepted from a peer (`rpc.maxLen`, 64 MiB): the same as
/// `kennel_proto::frame::DEFAULT_MAX_FRAME` (the worker checks they agree at compile time).
pub const DEFAULT_RPC_MAX_LEN: usize = 64 * 1024 * 1024;

/// Server-to-server settings. Times in the JSON form are seconds, except `interval` (ms); each
/// is at most [`super::MAX_SECS`].
#[derive(Debug, Clone, PartialEq)]
pub struct RpcConfig {
    /// How long a call waits for its reply, link wait included (`timeout`, default 10 s).
    /// Expired calls are failed by a sweep every 50 ms, so a call fails at most that much
    /// after its timeout.
    pub timeout: Duration,
    /// Calls and forwarded messages that may wait for one peer whose link is not up yet
    /// (`rpcMsgCacheCount`, default 5000); beyond it a call fails with
    /// `kennel::RpcError::QueueFull` at once.
    pub msg_cache_count: usize,
    /// A ping is sent on an idle link this often (`heartbeat`, default 10 s; 0 = off).
    pub heartbeat: Duration,
    /// A link silent for this long is closed as dead (`heartbeatTimeout`, default 3x heartbeat;
    /// checked once per heartbeat period, so detection takes up to one period more).
    pub heartbeat_timeout: Duration,
    /// Delay before redialing a peer (`reconnectDelay`, default 0.5 s).
    pub reconnect_delay: Duration,
    /// Write batching: messages to a peer are held up to this long and sent together
    /// (`interval` in ms, default 0 = send at once). Either one number for every server type,
    /// or `{ "default": ms, "<type>": ms }` picked by the sending server's type.
    pub interval: Interval,
    /// Disable Nagle's algorithm on links (`noDelay`, default true).
    pub no_delay: bool,
    /// Largest internal frame accepted from a peer (`maxLen`, default 64 MiB, at least 1024).
    pub max_len: usize,
    /// After re-registering with a restarted master, peers it no longer lists are dropped
    /// after this long (`reconcileGrace`, default 5 s as mydog).
    pub reconcile_grace: Duration,
    /// Server types that never link with each other (`noRpcMatrix`): `{type: [types]}`,
    /// symmetric. A call across such a pair fails with `kennel::RpcError::NoLink`.
    pub no_rpc_matrix: HashMap<String, Vec<String>>,
}

/// Write batching interval, global or per server type.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Interval {
    /// Interval for types without their own.
    pub default: Duration,
    /// Per server type.
    pub by_type: HashMap<String, Duration>,
}

impl Interval {
    /// The interval of a server type.
    pub fn of(&self, server_type: &str) -> Duration {
        self.by_type
            .get(server_type)
            .copied()
            .unwrap_or(self.default)
    }
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            timeout: Duration::from_secs(10),
            msg_cache_count: 5000,
            heartbeat: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            reconnect_delay: Duration::from_millis(500),
            interval: Interval::default(),
            no_delay: true,
            max_len: DEFAULT_RPC_MAX_LEN,
            reconcile_grace: Duration::from_secs(5),
            no_rpc_matrix: HashMap::new(),
        }
    }
}

impl RpcConfig {
    /// Whether servers of types `a` and `b` may link (`noRpcMatrix`, either direction).
    pub fn may_link(&self, a: &str, b: &str) -> bool {
        let blocks = |x: &str, y: &str| {
            self.no_rpc_matrix
                .get(x)
                .is_some_and(|l| l.iter().any(|t| t == y))
        };
        !blocks(a, b) && !blocks(b, a)
    }
}

/// The JSON form.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawRpc {
    timeout: Option<f64>,
    rpc_msg_cache_count: Option<usize>,
    heartbeat: Option<f64>,
    heartbeat_timeout: Option<f64>,
    reconnect_delay: Option<f64>,
    #[serde(default, deserialize_with = "interval")]
    interval: Option<RawInterval>,
    no_delay: Option<bool>,
    max_len: Option<usize>,
    reconcile_grace: Option<f64>,
    no_rpc_matrix: Option<HashMap<String, Vec<String>>>,
}

/// `interval`: milliseconds for every type, or per type.
enum RawInterval {
    All(f64),
    ByType(HashMap<String, f64>),
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RawInterval>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = RawInterval;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("milliseconds, or {\"default\": ms, \"<server type>\": ms}")
        }
        fn visit_u64<E>(self, v: u64) -> Result<RawInterval, E> {
            Ok(RawInterval::All(v as f64))
        }
        fn visit_i64<E>(self, v: i64) -> Result<RawInterval, E> {
            Ok(RawInterval::All(v as f64))
        }
        fn visit_f64<E>(self, v: f64) -> Result<RawInterval, E> {
            Ok(RawInterval::All(v))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawInterval, A::Error> {
            HashMap::deserialize(de::value::MapAccessDeserializer::new(map))
                .map(RawInterval::ByType)
        }
    }
    d.deserialize_any(V).map(Some)
}

impl RawRpc {
    /// The settings, defaults filling what is unset; errors name the key (`rpc.timeout`).
    pub(super) fn check(self) -> Result<RpcConfig, Problem> {
        let mut c = RpcConfig::default();
        if let Some(t) = self.timeout {
            c.timeout = secs("rpc.timeout", t)?;
            if c.timeout.is_zero() {
                return Err(setting("rpc.timeout", "must be more than 0"));
            }
        }
        if let Some(n) = self.rpc_msg_cache_count {
            c.msg_cache_count = n;
        }
        if let Some(h) = self.heartbeat {
            c.heartbeat = secs("rpc.heartbeat", h)?;
            c.heartbeat_timeout = c.heartbeat * 3;
        }
        if let Some(t) = self.heartbeat_timeout {
            c.heartbeat_timeout = secs("rpc.heartbeatTimeout", t)?;
        }
        if !c.heartbeat.is_zero() && c.heartbeat_timeout <= c.heartbeat {
            return Err(setting(
                "rpc.heartbeatTimeout",
                format!(
                    "({:?}) must be longer than rpc.heartbeat ({:?})",
                    c.heartbeat_timeout, c.heartbeat
                ),
            ));
        }
        if let Some(d) = self.reconnect_delay {
            c.reconnect_delay = secs("rpc.reconnectDelay", d)?;
        }
        match self.interval {
            None => {}
            Some(RawInterval::All(ms)) => c.interval.default = millis("rpc.interval", ms)?,
            Some(RawInterval::ByType(m)) => {
                for (k, ms) in m {
                    let d = millis(&format!("rpc.interval.{k}"), ms)?;
                    if k == "default" {
                        c.interval.default = d;
                    } else {
                        c.interval.by_type.insert(k, d);
                    }
                }
            }
        }
        if let Some(b) = self.no_delay {
            c.no_delay = b;
        }
        if let Some(n) = self.max_len {
            if n < 1024 {
                return Err(setting(
                    "rpc.maxLen",
                    format!("must be at least 1024, found {n}"),
                ));
            }
            c.max_len = n;
        }
        if let Some(g) = self.reconcile_grace {
            c.reconcile_grace = secs("rpc.reconcileGrace", g)?;
        }
        if let Some(m) = self.no_rpc_matrix {
            c.no_rpc_matrix = m;
        }
        Ok(c)
    }
}
