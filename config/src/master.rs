//! The master entry of `master.*`: typed keys, defaults, and the `KENNEL_MASTER_HOST` /
//! `KENNEL_MASTER_PORT` overrides, layered over the file with figment.

use figment::Figment;
use figment::providers::{Env, Serialized};
use serde_json::{Map, Value};

use crate::MasterConfig;
use crate::error::{ConfigError, Problem};
use crate::expand::{opt_string, port_number, required_string};
use crate::source::SourceFile;

/// Environment variable overriding the master's `host` (for whichever environment is loaded).
pub const MASTER_HOST_ENV: &str = "KENNEL_MASTER_HOST";
/// Environment variable overriding the master's `port` (for whichever environment is loaded).
pub const MASTER_PORT_ENV: &str = "KENNEL_MASTER_PORT";

/// The default host of the master and of servers.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// The keys not copied to [`MasterConfig::extra`]: placement and secrets (the first six of
/// [`crate::settings::MASTER_KEYS`]).
const KNOWN: &[&str] = crate::settings::MASTER_KEYS.split_at(6).0;

/// A label for the master entry in error messages.
pub(crate) fn label(obj: &Map<String, Value>) -> String {
    match obj.get("id").and_then(Value::as_str) {
        Some(id) => format!("master (\"{id}\")"),
        None => "master".to_owned(),
    }
}

/// Builds the master config from its (already selected) environment entry.
pub(crate) fn extract(
    file: &SourceFile,
    env: &str,
    obj: &Map<String, Value>,
) -> Result<MasterConfig, ConfigError> {
    let entry = label(obj);
    let invalid = |problem| file.invalid(env, Some(entry.clone()), problem);

    // host/port: the file's values, overridden by KENNEL_MASTER_HOST / KENNEL_MASTER_PORT.
    let mut base = Map::new();
    for key in ["host", "port"] {
        if let Some(v) = obj.get(key) {
            base.insert(key.to_owned(), v.clone());
        }
    }
    let figment = Figment::from(Serialized::defaults(base))
        .merge(Env::prefixed("KENNEL_MASTER_").only(&["host", "port"]));
    let layered: Map<String, Value> = figment.extract().map_err(|e| {
        invalid(Problem::WrongType {
            what: "`host`/`port`".to_owned(),
            expected: "valid values",
            found: e.to_string(),
        })
    })?;
    let from_env = |key: &str, var: &str, p: Problem| -> Problem {
        let overridden = figment
            .find_metadata(key)
            .is_some_and(|m| m.name.contains("environment"));
        match (overridden, p) {
            (
                true,
                Problem::WrongType {
                    what,
                    expected,
                    found,
                },
            ) => Problem::WrongType {
                what: format!("{what} (from {var})"),
                expected,
                found,
            },
            (true, Problem::PortOutOfRange { key, value }) => Problem::PortOutOfRange {
                key,
                value: format!("{value} (from {var})"),
            },
            (_, p) => p,
        }
    };

    let id = required_string(obj, "id").map_err(invalid)?;
    let host = match layered.get("host") {
        None => DEFAULT_HOST.to_owned(),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(invalid(from_env(
                "host",
                MASTER_HOST_ENV,
                Problem::Empty { key: "host" },
            )));
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(invalid(from_env(
                "host",
                MASTER_HOST_ENV,
                Problem::WrongType {
                    what: "`host`".to_owned(),
                    expected: "a string",
                    found: crate::error::describe(other),
                },
            )));
        }
    };
    let port = match layered.get("port") {
        None => return Err(invalid(Problem::MissingKey { key: "port" })),
        Some(v) => {
            port_number("port", v).map_err(|p| invalid(from_env("port", MASTER_PORT_ENV, p)))?
        }
    };
    let bin = opt_string(obj, "bin").map_err(invalid)?;
    let server_secret = opt_string(obj, "serverSecret").map_err(invalid)?;
    let cli_secret = opt_string(obj, "cliSecret").map_err(invalid)?;
    let settings =
        crate::settings::master_settings(&Value::Object(obj.clone())).map_err(invalid)?;
    let extra = obj
        .iter()
        .filter(|(k, _)| !KNOWN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(MasterConfig {
        id,
        host,
        port,
        bin,
        server_secret,
        cli_secret,
        settings,
        extra,
    })
}
