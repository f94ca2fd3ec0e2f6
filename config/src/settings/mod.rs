//! kennel's own settings, typed once: every key the worker library and the master read from a
//! server entry of `servers.*` ([`ServerSettings`]) or from the master entry of `master.*`
//! ([`MasterSettings`]), with its default, its unit and its checks. [`crate::Project::load`]
//! parses them, so `kennel config`, `kennel start` and every server refuse a bad value the
//! same way, before any process starts: a [`crate::ConfigError::Invalid`] naming the file, the
//! environment, the entry and the key path ([`crate::Problem::Setting`], e.g.
//! `` `rateLimit.burst`: must be at least 1, found 0 ``).
//!
//! Keys kennel does not know stay allowed (a game reads its own keys from
//! [`crate::ServerConfig::extra`], which keeps every key as written, kennel's included); one
//! that is a case change or one or two edits away from a kennel key of its file (`maxlen`,
//! `heartBeat`, `conector`, `crashloop`), or that belongs to the other file (`rpc` in a
//! server entry), gives a [`Warning`] on [`crate::Project::warnings`]. Inside kennel's own
//! objects (`rpc`, `rateLimit`, `logs`, `crashLoop`, `metrics`) an unknown key is an error.
//!
//! Layout: `server.rs` (the per-entry keys: connector, `threads`, `restart`, `external`),
//! `connector.rs` (the frontend connector's types and its keys), `tls.rs` (`ssl`, `cert`,
//! `key`, `certReload`, and the checks of the PEM files), `master.rs` (`logs`,
//! `crashLoop`, `metrics`, `launcher`, `remoteSignal`), `rpc.rs` (`rpc`). The worker re-exports
//! [`ConnectorConfig`], [`RpcConfig`] and their parts as `kennel::...`; the runtime parts
//! (sockets, timers) stay in the crates that use them.

mod connector;
mod master;
mod rpc;
mod server;
mod tls;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::Problem;

pub use connector::{
    ConnectorConfig, ConnectorSettings, DEFAULT_CLIENT_MAX_LEN, Io, RateLimit, RateLimitAction,
    Transport,
};
pub use master::{
    CrashLoop, DEFAULT_LAUNCHER, DEFAULT_METRICS_HOST, DEFAULT_REMOTE_SIGNAL, LogRotation,
    MasterSettings, MetricsListen,
};
pub use rpc::{DEFAULT_RPC_MAX_LEN, Interval, RpcConfig};
pub use server::{RestartPolicy, ServerSettings};
pub use tls::{CertAndKey, DEFAULT_CERT_RELOAD_SECS, TlsFileError, TlsSettings, read_cert_and_key};

pub(crate) use master::master_settings;
pub(crate) use server::server_settings;
pub(crate) use tls::check_files as check_tls_files;

/// The longest time any setting accepts, in seconds (one day): larger values would overflow
/// the deadlines computed from them (`now + rpc.timeout` panics past about 10^11 years, `2 x
/// heartbeat` wraps), and no useful timeout or period is that long.
pub const MAX_SECS: u64 = 86_400;

/// The keys of a server entry kennel reads: placement (`id` .. `args`) and settings.
pub const SERVER_KEYS: [&str; 26] = [
    "id",
    "idStart",
    "host",
    "port",
    "frontend",
    "clientPort",
    "bin",
    "args",
    "connector",
    "io",
    "heartbeat",
    "maxConnectionNum",
    "maxLen",
    "noDelay",
    "interval",
    "handshakeTimeout",
    "sendQueueBytes",
    "maxInFlight",
    "rateLimit",
    "ssl",
    "cert",
    "key",
    "certReload",
    "threads",
    "restart",
    "external",
];

/// The keys of the master entry kennel reads: placement and secrets, then settings.
pub const MASTER_KEYS: [&str; 13] = [
    "id",
    "host",
    "port",
    "bin",
    "serverSecret",
    "cliSecret",
    "rpc",
    "encryptLinks",
    "logs",
    "crashLoop",
    "metrics",
    "launcher",
    "remoteSignal",
];

/// A key kennel does not read that looks like a mistake. The project still loads (the key is
/// kept in `extra` for the game); `kennel config`, `kennel start` and each server print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file holding the entry.
    pub file: PathBuf,
    /// The environment loaded.
    pub env: String,
    /// The entry, labelled as in errors: `chat[0] ("chat-server-")` or `master ("m")`.
    pub entry: String,
    /// The key as written.
    pub key: String,
    /// What it looks like.
    pub kind: WarningKind,
    /// The servers the entry expands to (empty for the master entry, which concerns all).
    pub servers: Vec<String>,
}

/// Why a key is warned about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WarningKind {
    /// It is a case change or one or two edits away from this kennel key of its file.
    DidYouMean(&'static str),
    /// It is a kennel key of the other file (`"master"` or `"servers"`): here it does nothing.
    OtherFile(&'static str),
}

impl Warning {
    /// Whether the warning concerns server `id`: its own entry, or the master entry.
    pub fn concerns(&self, id: &str) -> bool {
        self.servers.is_empty() || self.servers.iter().any(|s| s == id)
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, environment \"{}\", entry {}: ",
            self.file.display(),
            self.env,
            self.entry
        )?;
        match &self.kind {
            WarningKind::DidYouMean(k) => write!(
                f,
                "`{}` is not a kennel setting: did you mean `{k}`? (kept as a game key)",
                self.key
            ),
            WarningKind::OtherFile(other) => write!(
                f,
                "`{}` is a kennel setting of {other}.json/.toml, it has no effect here (kept as a game key)",
                self.key
            ),
        }
    }
}

/// The keys of `obj` that deserve a warning: not a key of `this` file, but one of `other`'s
/// (named `other_name`), or close to one of `this`'s.
pub(crate) fn odd_keys(
    obj: &Map<String, Value>,
    this: &[&'static str],
    other: &[&'static str],
    other_name: &'static str,
) -> Vec<(String, WarningKind)> {
    obj.keys()
        .filter(|k| !this.contains(&k.as_str()))
        .filter_map(|k| {
            if other.contains(&k.as_str()) {
                return Some((k.clone(), WarningKind::OtherFile(other_name)));
            }
            did_you_mean(k, this).map(|s| (k.clone(), WarningKind::DidYouMean(s)))
        })
        .collect()
}

/// The kennel key `key` most likely misspells: equal but for case, or within one edit
/// (kennel keys of 4-5 letters) or two (longer ones); keys of 3 letters or fewer must match
/// but for case, so short game keys (`web`, `ip`) are not taken for `bin` or `id`.
pub(crate) fn did_you_mean(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    known
        .iter()
        .filter_map(|&k| {
            let max = match k.len() {
                0..=3 => 0,
                4..=5 => 1,
                _ => 2,
            };
            let d = strsim::osa_distance(&lower, &k.to_ascii_lowercase());
            (d <= max).then_some((d, k))
        })
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Deserializes `v` into `T`; a failure names the key path (`rpc.interval.chat`).
pub(crate) fn parse<T: DeserializeOwned>(v: &Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let key = e.path().to_string();
        setting(&key, e.into_inner().to_string())
    })
}

/// A [`Problem::Setting`].
pub(crate) fn setting(key: &str, message: impl Into<String>) -> Problem {
    Problem::Setting {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// `n` if it is at least `min`, else a problem naming `key`.
pub(crate) fn at_least(key: &str, n: u64, min: u64) -> Result<u64, Problem> {
    if n < min {
        return Err(setting(key, format!("must be at least {min}, found {n}")));
    }
    Ok(n)
}

/// `n` if it is in `min..=max`, else a problem naming `key`.
pub(crate) fn in_range(key: &str, n: u64, min: u64, max: u64) -> Result<u64, Problem> {
    if !(min..=max).contains(&n) {
        return Err(setting(
            key,
            format!("must be from {min} to {max}, found {n}"),
        ));
    }
    Ok(n)
}

/// A whole number of seconds of at most [`MAX_SECS`].
pub(crate) fn whole_secs(key: &str, n: u64, min: u64) -> Result<Duration, Problem> {
    in_range(key, n, min, MAX_SECS).map(Duration::from_secs)
}

/// A number of seconds (fractions allowed) from 0 to [`MAX_SECS`].
pub(crate) fn secs(key: &str, v: f64) -> Result<Duration, Problem> {
    if !(0.0..=MAX_SECS as f64).contains(&v) {
        return Err(setting(
            key,
            format!("must be a number of seconds from 0 to {MAX_SECS}, found {v}"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// A number of milliseconds from 0 to [`MAX_SECS`] seconds.
pub(crate) fn millis(key: &str, v: f64) -> Result<Duration, Problem> {
    let max = MAX_SECS as f64 * 1000.0;
    if !(0.0..=max).contains(&v) {
        return Err(setting(
            key,
            format!("must be a number of milliseconds from 0 to {max}, found {v}"),
        ));
    }
    Ok(Duration::from_secs_f64(v / 1000.0))
}

/// `n` as a `usize`, saturating (a 32-bit `usize` cannot hold every `u64`).
pub(crate) fn size(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_catches_near_misses_only() {
        let s = |k| did_you_mean(k, &SERVER_KEYS);
        assert_eq!(s("maxlen"), Some("maxLen"));
        assert_eq!(s("heartBeat"), Some("heartbeat"));
        assert_eq!(s("conector"), Some("connector"));
        assert_eq!(s("threds"), Some("threads"));
        assert_eq!(s("restrat"), Some("restart"));
        assert_eq!(s("ratelimit"), Some("rateLimit"));
        assert_eq!(s("clientport"), Some("clientPort"));
        assert_eq!(s("ID"), Some("id"));
        assert_eq!(s("IO"), Some("io"));
        for game in [
            "web", "webDir", "webHost", "ip", "roomCap", "rooms", "region",
        ] {
            assert_eq!(s(game), None, "{game}");
        }
        assert_eq!(did_you_mean("crashloop", &MASTER_KEYS), Some("crashLoop"));
        assert_eq!(did_you_mean("metric", &MASTER_KEYS), Some("metrics"));
        assert_eq!(
            did_you_mean("rcp", &MASTER_KEYS),
            None,
            "3 letters: case only"
        );
        assert_eq!(did_you_mean("RPC", &MASTER_KEYS), Some("rpc"));
    }
}
