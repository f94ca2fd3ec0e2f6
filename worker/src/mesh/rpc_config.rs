//! [`RpcConfig`]: how servers talk to each other (mydog's `rpcConfig`): call timeout, the
//! bounded queue of calls waiting for a link, link heartbeat, redial delay, write batching,
//! frame limit, and the pairs of server types that never link (`noRpcMatrix`).
//!
//! It is read from the `rpc` key of the environment's entry in `config/sys/master.json` (the
//! same for every server of the cluster), and [`crate::App::set_rpc_config`] can replace it in
//! code. Every key is optional:
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

/// Server-to-server settings. Times in the JSON form are seconds, except `interval` (ms).
#[derive(Debug, Clone, PartialEq)]
pub struct RpcConfig {
    /// How long a call waits for its reply, link wait included (`timeout`, default 10 s).
    /// Expired calls are failed by a sweep every 50 ms, so a call fails at most that much
    /// after its timeout.
    pub timeout: Duration,
    /// Calls and forwarded messages that may wait for one peer whose link is not up yet
    /// (`rpcMsgCacheCount`, default 5000); beyond it a call fails with
    /// [`crate::RpcError::QueueFull`] at once.
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
    /// Largest internal frame accepted from a peer (`maxLen`, default 64 MiB).
    pub max_len: usize,
    /// After re-registering with a restarted master, peers it no longer lists are dropped
    /// after this long (`reconcileGrace`, default 5 s as mydog).
    pub reconcile_grace: Duration,
    /// Server types that never link with each other (`noRpcMatrix`): `{type: [types]}`,
    /// symmetric. A call across such a pair fails with [`crate::RpcError::NoLink`].
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
            max_len: kennel_proto::frame::DEFAULT_MAX_FRAME,
            reconcile_grace: Duration::from_secs(5),
            no_rpc_matrix: HashMap::new(),
        }
    }
}

/// The JSON form.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    timeout: Option<f64>,
    rpc_msg_cache_count: Option<usize>,
    heartbeat: Option<f64>,
    heartbeat_timeout: Option<f64>,
    reconnect_delay: Option<f64>,
    interval: Option<RawInterval>,
    no_delay: Option<bool>,
    max_len: Option<usize>,
    reconcile_grace: Option<f64>,
    no_rpc_matrix: Option<HashMap<String, Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawInterval {
    All(f64),
    ByType(HashMap<String, f64>),
}

fn secs(key: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| format!("{key} must be a non-negative number of seconds, not {v}"))
}

impl RpcConfig {
    /// Parses the `rpc` object of the master config; `None` gives the defaults. Errors name
    /// the key.
    pub fn from_json(v: Option<&serde_json::Value>) -> Result<RpcConfig, String> {
        let mut c = RpcConfig::default();
        let Some(v) = v else { return Ok(c) };
        let raw: Raw = serde_json::from_value(v.clone()).map_err(|e| format!("rpc: {e}"))?;
        if let Some(t) = raw.timeout {
            c.timeout = secs("rpc.timeout", t)?;
            if c.timeout.is_zero() {
                return Err("rpc.timeout must be more than 0".into());
            }
        }
        if let Some(n) = raw.rpc_msg_cache_count {
            c.msg_cache_count = n;
        }
        if let Some(h) = raw.heartbeat {
            c.heartbeat = secs("rpc.heartbeat", h)?;
            c.heartbeat_timeout = c.heartbeat * 3;
        }
        if let Some(t) = raw.heartbeat_timeout {
            c.heartbeat_timeout = secs("rpc.heartbeatTimeout", t)?;
        }
        if !c.heartbeat.is_zero() && c.heartbeat_timeout <= c.heartbeat {
            return Err(format!(
                "rpc.heartbeatTimeout ({:?}) must be longer than rpc.heartbeat ({:?})",
                c.heartbeat_timeout, c.heartbeat
            ));
        }
        if let Some(d) = raw.reconnect_delay {
            c.reconnect_delay = secs("rpc.reconnectDelay", d)?;
        }
        match raw.interval {
            None => {}
            Some(RawInterval::All(ms)) => c.interval.default = secs("rpc.interval", ms / 1000.0)?,
            Some(RawInterval::ByType(m)) => {
                for (k, ms) in m {
                    let d = secs(&format!("rpc.interval.{k}"), ms / 1000.0)?;
                    if k == "default" {
                        c.interval.default = d;
                    } else {
                        c.interval.by_type.insert(k, d);
                    }
                }
            }
        }
        if let Some(b) = raw.no_delay {
            c.no_delay = b;
        }
        if let Some(n) = raw.max_len {
            if n < 1024 {
                return Err(format!("rpc.maxLen must be at least 1024, not {n}"));
            }
            c.max_len = n;
        }
        if let Some(g) = raw.reconcile_grace {
            c.reconcile_grace = secs("rpc.reconcileGrace", g)?;
        }
        if let Some(m) = raw.no_rpc_matrix {
            c.no_rpc_matrix = m;
        }
        Ok(c)
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(RpcConfig::from_json(None).unwrap(), RpcConfig::default());
        let c = RpcConfig::from_json(Some(&json!({
            "timeout": 2, "rpcMsgCacheCount": 3, "heartbeat": 1, "reconnectDelay": 0.1,
            "interval": {"default": 5, "chat": 20}, "noDelay": false, "maxLen": 4096,
            "reconcileGrace": 0.5, "noRpcMatrix": {"connector": ["connector"]}
        })))
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.msg_cache_count, 3);
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(3));
        assert_eq!(c.reconnect_delay, Duration::from_millis(100));
        assert_eq!(c.interval.of("chat"), Duration::from_millis(20));
        assert_eq!(c.interval.of("connector"), Duration::from_millis(5));
        assert!(!c.no_delay);
        assert_eq!(c.max_len, 4096);
        assert_eq!(c.reconcile_grace, Duration::from_millis(500));
        assert!(!c.may_link("connector", "connector"));
        assert!(c.may_link("connector", "chat"));
        let c = RpcConfig::from_json(Some(&json!({"interval": 7}))).unwrap();
        assert_eq!(c.interval.of("any"), Duration::from_millis(7));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (v, needle) in [
            (json!({"timeout": -1}), "rpc.timeout"),
            (json!({"timeout": 0}), "rpc.timeout"),
            (
                json!({"heartbeat": 5, "heartbeatTimeout": 2}),
                "heartbeatTimeout",
            ),
            (json!({"maxLen": 10}), "rpc.maxLen"),
            (json!({"intervall": 10}), "intervall"),
            (json!({"interval": "x"}), "rpc"),
            (json!({"noRpcMatrix": {"a": "b"}}), "rpc"),
        ] {
            let e = RpcConfig::from_json(Some(&v)).unwrap_err();
            assert!(e.contains(needle), "{v}: {e}");
        }
    }
}
