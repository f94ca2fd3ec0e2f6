//! Restart policies and crash-loop detection, read from the configuration:
//!
//! - a server entry's `"restart": "always" | "on-failure" | "never"` in `servers.json`
//!   (default `always`); every server the entry expands to gets it, so it is set per type or
//!   per server by where it is written. `on-failure` does not restart a server that exited
//!   with status 0; an adopted server's exit status is unknown and counts as a failure.
//! - a server entry's `"external": true`: the master never starts it (see
//!   [`crate::supervisor`]);
//! - `crashLoop: {"restarts": 5, "windowSecs": 60}` in `master.json`: a server that would be
//!   restarted while it has already been restarted `restarts` times within the last
//!   `windowSecs` seconds is not restarted: it is marked `crashloop` (`kennel start <id>` or
//!   `kennel restart <id>` starts it again).

use std::time::Duration;

use kennel_config::{MasterConfig, ServerConfig};

use crate::MasterError;

/// When a server that exited by itself is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum RestartPolicy {
    /// Always (the default).
    #[default]
    Always,
    /// Only when it did not exit with status 0.
    OnFailure,
    /// Never.
    Never,
}

impl RestartPolicy {
    /// The policy of `server` (key `restart` of its entry).
    pub(crate) fn of(server: &ServerConfig) -> Result<RestartPolicy, MasterError> {
        let bad = || MasterError::Setting {
            what: format!(
                "server {}: \"restart\" must be \"always\", \"on-failure\" or \"never\"",
                server.id
            ),
        };
        match server.extra.get("restart") {
            None => Ok(RestartPolicy::Always),
            Some(v) => match v.as_str().ok_or_else(bad)? {
                "always" => Ok(RestartPolicy::Always),
                "on-failure" => Ok(RestartPolicy::OnFailure),
                "never" => Ok(RestartPolicy::Never),
                _ => Err(bad()),
            },
        }
    }

    /// The name used in the configuration.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// Whether `server` is external (key `"external": true` of its entry): started by hand or by
/// another supervisor, never by the master.
pub(crate) fn is_external(server: &ServerConfig) -> Result<bool, MasterError> {
    match server.extra.get("external") {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| MasterError::Setting {
            what: format!("server {}: \"external\" must be true or false", server.id),
        }),
    }
}

/// The crash-loop limit: at most `restarts` restarts within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CrashLoop {
    pub(crate) restarts: usize,
    pub(crate) window: Duration,
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop {
            restarts: 5,
            window: Duration::from_secs(60),
        }
    }
}

impl CrashLoop {
    /// The limit of `master` (key `crashLoop` of master.json), defaults filling what is unset.
    pub(crate) fn of(master: &MasterConfig) -> Result<CrashLoop, MasterError> {
        let mut limit = CrashLoop::default();
        let Some(v) = master.extra.get("crashLoop") else {
            return Ok(limit);
        };
        let bad = |what: &str| MasterError::Setting {
            what: format!("master.json crashLoop: {what}"),
        };
        let obj = v
            .as_object()
            .ok_or_else(|| bad("must be an object like {\"restarts\": 5, \"windowSecs\": 60}"))?;
        for (key, value) in obj {
            let n = value
                .as_u64()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(&format!("{key} must be a positive integer")))?;
            match key.as_str() {
                "restarts" => limit.restarts = usize::try_from(n).unwrap_or(usize::MAX),
                "windowSecs" => limit.window = Duration::from_secs(n),
                other => return Err(bad(&format!("unknown key {other:?}"))),
            }
        }
        Ok(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server(extra: serde_json::Value) -> ServerConfig {
        ServerConfig {
            id: "s-1".into(),
            server_type: "s".into(),
            host: "127.0.0.1".into(),
            port: 1,
            frontend: false,
            client_port: None,
            bin: None,
            args: vec![],
            extra: extra.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn policies() {
        assert_eq!(
            RestartPolicy::of(&server(json!({}))).unwrap(),
            RestartPolicy::Always
        );
        assert_eq!(
            RestartPolicy::of(&server(json!({"restart": "on-failure"}))).unwrap(),
            RestartPolicy::OnFailure
        );
        assert_eq!(
            RestartPolicy::of(&server(json!({"restart": "never"}))).unwrap(),
            RestartPolicy::Never
        );
        let err = RestartPolicy::of(&server(json!({"restart": "sometimes"}))).unwrap_err();
        assert!(err.to_string().contains("server s-1"), "{err}");
        assert!(!is_external(&server(json!({}))).unwrap());
        assert!(is_external(&server(json!({"external": true}))).unwrap());
        let err = is_external(&server(json!({"external": "yes"}))).unwrap_err();
        assert!(err.to_string().contains("\"external\" must be"), "{err}");
    }

    #[test]
    fn crash_loop_settings() {
        let mut m = MasterConfig {
            id: "m".into(),
            host: "127.0.0.1".into(),
            port: 1,
            bin: None,
            server_secret: None,
            cli_secret: None,
            extra: serde_json::Map::new(),
        };
        assert_eq!(CrashLoop::of(&m).unwrap(), CrashLoop::default());
        m.extra.insert("crashLoop".into(), json!({"restarts": 2}));
        assert_eq!(
            CrashLoop::of(&m).unwrap(),
            CrashLoop {
                restarts: 2,
                window: Duration::from_secs(60)
            }
        );
        m.extra.insert("crashLoop".into(), json!({"restarts": 0}));
        assert!(CrashLoop::of(&m).is_err());
    }
}
