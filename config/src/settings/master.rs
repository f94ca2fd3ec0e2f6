//! The settings of the master entry in `master.*`: `rpc` (for every server, [`RpcConfig`]),
//! `encryptLinks` (every internal link: master, peer and CLI links), and the master's own
//! `logs` (rotation), `crashLoop`, `metrics`, `launcher` and `remoteSignal`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::rpc::{RawRpc, RpcConfig};
use super::{at_least, in_range, parse, setting, size};
use crate::error::Problem;

/// The default launcher: `ssh <host> "cd <dir> && <bin> --id <id> --env <env> ..."`.
pub const DEFAULT_LAUNCHER: [&str; 3] = ["ssh", "{host}", "cd {dir} && {cmd}"];
/// The default remote signal command: `ssh <host> "kill -<signal> <pid>"`.
pub const DEFAULT_REMOTE_SIGNAL: [&str; 3] = ["ssh", "{host}", "kill -{signal} {pid}"];
/// Default address of the metrics listener.
pub const DEFAULT_METRICS_HOST: &str = "127.0.0.1";

/// The kennel settings of the master entry (defaults for the keys it does not set).
#[derive(Debug, Clone, PartialEq)]
pub struct MasterSettings {
    /// Server-to-server settings for every server of the cluster (`rpc`).
    pub rpc: RpcConfig,
    /// Encrypt and authenticate every internal link after its handshake (`encryptLinks`,
    /// default false): the master links, the peer mesh and the CLI link (Noise, keyed by the
    /// cluster secrets). Recommended whenever a server or the master is on another host.
    pub encrypt_links: bool,
    /// Log file rotation (`logs`).
    pub logs: LogRotation,
    /// The crash-loop limit (`crashLoop`).
    pub crash_loop: CrashLoop,
    /// The Prometheus listener (`metrics`); `None` (the default): none.
    pub metrics: Option<MetricsListen>,
    /// The argv template that starts a server on another host (`launcher`, default
    /// [`DEFAULT_LAUNCHER`]; placeholders in `docs/operations.md`).
    pub launcher: Vec<String>,
    /// The argv template that signals a server on another host (`remoteSignal`, default
    /// [`DEFAULT_REMOTE_SIGNAL`]).
    pub remote_signal: Vec<String>,
}

impl Default for MasterSettings {
    fn default() -> Self {
        let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect();
        MasterSettings {
            rpc: RpcConfig::default(),
            encrypt_links: false,
            logs: LogRotation::default(),
            crash_loop: CrashLoop::default(),
            metrics: None,
            launcher: argv(&DEFAULT_LAUNCHER),
            remote_signal: argv(&DEFAULT_REMOTE_SIGNAL),
        }
    }
}

/// How log files are rotated: `"logs": {"maxBytes": 10485760, "keep": 5}` (the defaults;
/// `maxBytes: 0` turns rotation off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// Rotate a file once it holds this many bytes (0: never).
    pub max_bytes: u64,
    /// Rotated copies kept (`.1` newest .. `.<keep>` oldest), 1 to 1000.
    pub keep: u32,
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation {
            max_bytes: 10 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// The crash-loop limit: a server is not restarted once it was restarted `restarts` times
/// within `window` (`"crashLoop": {"restarts": 5, "windowSecs": 60}`, the defaults; both at
/// least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoop {
    /// Restarts allowed within the window.
    pub restarts: usize,
    /// The window (`windowSecs`).
    pub window: Duration,
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop {
            restarts: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// Where the metrics listener binds: `"metrics": {"port": 9100, "host": "127.0.0.1"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsListen {
    /// Host or IP to bind (`host`, default [`DEFAULT_METRICS_HOST`]).
    pub host: String,
    /// Port (`port`, required; 0: any free port, printed at start).
    pub port: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMaster {
    rpc: Option<RawRpc>,
    encrypt_links: Option<bool>,
    logs: Option<RawLogs>,
    crash_loop: Option<RawCrashLoop>,
    metrics: Option<RawMetrics>,
    launcher: Option<Vec<String>>,
    remote_signal: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawLogs {
    max_bytes: Option<u64>,
    keep: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCrashLoop {
    restarts: Option<u64>,
    window_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    port: u16,
    host: Option<String>,
}

/// An argv template: a non-empty list of strings whose first (the program) is not empty.
fn argv(key: &str, v: Option<Vec<String>>, default: &[&str]) -> Result<Vec<String>, Problem> {
    match v {
        None => Ok(default.iter().map(|s| (*s).to_owned()).collect()),
        Some(a) if a.first().is_some_and(|p| !p.is_empty()) => Ok(a),
        Some(_) => Err(setting(
            key,
            format!(
                "must be a non-empty list of strings starting with the program, e.g. {default:?}"
            ),
        )),
    }
}

/// The settings of the master entry (a table).
pub(crate) fn master_settings(entry: &Value) -> Result<MasterSettings, Problem> {
    let raw: RawMaster = parse(entry)?;
    let mut s = MasterSettings {
        rpc: raw.rpc.map(RawRpc::check).transpose()?.unwrap_or_default(),
        encrypt_links: raw.encrypt_links.unwrap_or(false),
        launcher: argv("launcher", raw.launcher, &DEFAULT_LAUNCHER)?,
        remote_signal: argv("remoteSignal", raw.remote_signal, &DEFAULT_REMOTE_SIGNAL)?,
        ..MasterSettings::default()
    };
    if let Some(l) = raw.logs {
        if let Some(n) = l.max_bytes {
            s.logs.max_bytes = n;
        }
        if let Some(n) = l.keep {
            s.logs.keep = in_range("logs.keep", n, 1, 1000)? as u32;
        }
    }
    if let Some(c) = raw.crash_loop {
        if let Some(n) = c.restarts {
            s.crash_loop.restarts = size(at_least("crashLoop.restarts", n, 1)?);
        }
        if let Some(n) = c.window_secs {
            s.crash_loop.window = Duration::from_secs(at_least("crashLoop.windowSecs", n, 1)?);
        }
    }
    if let Some(m) = raw.metrics {
        let host = match m.host {
            None => DEFAULT_METRICS_HOST.to_owned(),
            Some(h) if h.is_empty() => return Err(setting("metrics.host", "is empty")),
            Some(h) => h,
        };
        s.metrics = Some(MetricsListen { host, port: m.port });
    }
    Ok(s)
}
