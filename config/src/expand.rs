//! Server entries of `servers.*`: typed keys, defaults, and range expansion
//! (`port: [a, b]` → `b-a+1` servers `id + (idStart + k)` on ports `a + k`, client ports
//! `clientPort + k` or the matching element of a `clientPort: [c, d]` range).

use serde_json::{Map, Value};

use crate::error::{ConfigError, Problem, describe};
use crate::master::DEFAULT_HOST;
use crate::source::SourceFile;
use crate::{ServerConfig, ServerInfo};

/// The keys of a server entry that are not copied to [`ServerConfig::extra`]: its placement
/// (the first eight of [`crate::settings::SERVER_KEYS`]).
const KNOWN: &[&str] = crate::settings::SERVER_KEYS.split_at(8).0;

/// One expanded server and the entry it came from (for error messages).
#[derive(Debug)]
pub(crate) struct Placed {
    pub config: ServerConfig,
    /// e.g. `chat[0] ("chat-server-")`.
    pub entry: String,
}

/// A port key: one port or an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ports {
    One(u16),
    Range(u16, u16),
}

impl Ports {
    fn first(self) -> u16 {
        match self {
            Ports::One(p) | Ports::Range(p, _) => p,
        }
    }
    fn len(self) -> usize {
        match self {
            Ports::One(_) => 1,
            Ports::Range(a, b) => usize::from(b - a) + 1,
        }
    }
}

/// The label of entry `index` of group `server_type`, e.g. `chat[0] ("chat-server-")`.
pub(crate) fn entry_label(server_type: &str, index: usize, entry: &Value) -> String {
    match entry.get("id").and_then(Value::as_str) {
        Some(id) => format!("{server_type}[{index}] (\"{id}\")"),
        None => format!("{server_type}[{index}]"),
    }
}

/// Expands every entry of one environment's `servers.*` table, in file order.
pub(crate) fn expand_all(
    file: &SourceFile,
    env: &str,
    groups: &[(&String, &Value)],
) -> Result<Vec<Placed>, ConfigError> {
    let mut out = Vec::new();
    for &(server_type, entries) in groups {
        if server_type.is_empty() || server_type.contains('.') {
            return Err(file.invalid(
                env,
                Some(format!("\"{server_type}\"")),
                Problem::WrongType {
                    what: "a server type".to_owned(),
                    expected: "a non-empty name without dots",
                    found: format!("\"{server_type}\""),
                },
            ));
        }
        let Value::Array(entries) = entries else {
            return Err(file.invalid(
                env,
                Some(server_type.clone()),
                Problem::WrongType {
                    what: format!("server type `{server_type}`"),
                    expected: "a list of server entries",
                    found: describe(entries),
                },
            ));
        };
        for (index, entry) in entries.iter().enumerate() {
            let label = entry_label(server_type, index, entry);
            let servers = expand_entry(server_type, entry)
                .map_err(|p| file.invalid(env, Some(label.clone()), p))?;
            out.extend(servers.into_iter().map(|config| Placed {
                config,
                entry: label.clone(),
            }));
        }
    }
    Ok(out)
}

/// Expands one server entry.
pub(crate) fn expand_entry(server_type: &str, entry: &Value) -> Result<Vec<ServerConfig>, Problem> {
    let Value::Object(obj) = entry else {
        return Err(Problem::WrongType {
            what: "a server entry".to_owned(),
            expected: "a table",
            found: describe(entry),
        });
    };
    let id = required_string(obj, "id")?;
    let host = match opt_string(obj, "host")? {
        Some(h) if h.is_empty() => return Err(Problem::Empty { key: "host" }),
        Some(h) => h,
        None => DEFAULT_HOST.to_owned(),
    };
    let ports = match obj.get("port") {
        Some(v) => port_spec("port", v)?,
        None => return Err(Problem::MissingKey { key: "port" }),
    };
    let id_start = match obj.get("idStart") {
        None => 0,
        Some(v) => match v.as_u64() {
            Some(n) if n <= u64::from(u32::MAX) => n,
            _ => {
                return Err(Problem::WrongType {
                    what: "`idStart`".to_owned(),
                    expected: "a non-negative integer (at most 4294967295)",
                    found: describe(v),
                });
            }
        },
    };
    let frontend = match obj.get("frontend") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(Problem::WrongType {
                what: "`frontend`".to_owned(),
                expected: "true or false",
                found: describe(other),
            });
        }
    };
    let client_ports = obj
        .get("clientPort")
        .map(|v| port_spec("clientPort", v))
        .transpose()?;
    if frontend && client_ports.is_none() {
        return Err(Problem::FrontendWithoutClientPort);
    }
    if let Some(c @ Ports::Range(..)) = client_ports
        && c.len() != ports.len()
    {
        return Err(Problem::ClientPortCountMismatch {
            ports: ports.len(),
            client_ports: c.len(),
        });
    }
    let bin = match opt_string(obj, "bin")? {
        Some(b) if b.is_empty() => return Err(Problem::Empty { key: "bin" }),
        b => b,
    };
    let args = args(obj)?;
    let settings = crate::settings::server_settings(entry)?;
    let extra: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| !KNOWN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let mut out = Vec::with_capacity(ports.len());
    for k in 0..ports.len() {
        // In range: a range's last port is a u16, so first + k is too.
        let port = ports.first() + k as u16;
        let client_port = match client_ports {
            None => None,
            Some(c) => {
                let p = u32::from(c.first()) + k as u32;
                Some(u16::try_from(p).map_err(|_| Problem::PortOutOfRange {
                    key: "clientPort",
                    value: format!("{} + {k} = {p}", c.first()),
                })?)
            }
        };
        let id = match ports {
            Ports::One(_) => id.clone(),
            Ports::Range(..) => format!("{id}{}", id_start + k as u64),
        };
        out.push(ServerConfig {
            info: ServerInfo {
                id,
                server_type: server_type.to_owned(),
                host: host.clone(),
                port,
                frontend,
                client_port,
                extra: extra.clone(),
            },
            bin: bin.clone(),
            args: args.clone(),
            settings: settings.clone(),
        });
    }
    Ok(out)
}

fn args(obj: &Map<String, Value>) -> Result<Vec<String>, Problem> {
    let wrong = |v: &Value| Problem::WrongType {
        what: "`args`".to_owned(),
        expected: "a list of strings or a string",
        found: describe(v),
    };
    match obj.get("args") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        Some(v @ Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| wrong(v)))
            .collect(),
        Some(v) => Err(wrong(v)),
    }
}

/// A port number: an integer in 1-65535.
pub(crate) fn port_number(key: &'static str, v: &Value) -> Result<u16, Problem> {
    let n = match v {
        Value::Number(n) if n.is_u64() || n.is_i64() => n,
        other => {
            return Err(Problem::WrongType {
                what: format!("`{key}`"),
                expected: "a port number",
                found: describe(other),
            });
        }
    };
    match n.as_u64().and_then(|n| u16::try_from(n).ok()) {
        Some(p) if p != 0 => Ok(p),
        _ => Err(Problem::PortOutOfRange {
            key,
            value: n.to_string(),
        }),
    }
}

/// A port or a `[first, last]` range.
fn port_spec(key: &'static str, v: &Value) -> Result<Ports, Problem> {
    match v {
        Value::Array(items) => match items.as_slice() {
            [a, b] => {
                let (first, last) = (port_number(key, a)?, port_number(key, b)?);
                if first > last {
                    Err(Problem::ReversedRange { key, first, last })
                } else {
                    Ok(Ports::Range(first, last))
                }
            }
            _ => Err(Problem::WrongType {
                what: format!("`{key}`"),
                expected: "a port number or a [first, last] range",
                found: describe(v),
            }),
        },
        Value::Number(_) => port_number(key, v).map(Ports::One),
        other => Err(Problem::WrongType {
            what: format!("`{key}`"),
            expected: "a port number or a [first, last] range",
            found: describe(other),
        }),
    }
}

/// A required, non-empty string key.
pub(crate) fn required_string(
    obj: &Map<String, Value>,
    key: &'static str,
) -> Result<String, Problem> {
    match opt_string(obj, key)? {
        None => Err(Problem::MissingKey { key }),
        Some(s) if s.is_empty() => Err(Problem::Empty { key }),
        Some(s) => Ok(s),
    }
}

/// An optional string key (type-checked only).
pub(crate) fn opt_string(
    obj: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, Problem> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Problem::WrongType {
            what: format!("`{key}`"),
            expected: "a string",
            found: describe(other),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(servers: &[ServerConfig]) -> Vec<&str> {
        servers.iter().map(|s| s.info.id.as_str()).collect()
    }

    #[test]
    fn range_without_id_start_counts_from_zero() {
        let s = expand_entry("chat", &json!({"id": "chat-", "port": [4101, 4103]})).unwrap();
        assert_eq!(ids(&s), ["chat-0", "chat-1", "chat-2"]);
        assert_eq!(
            s.iter().map(|s| s.info.port).collect::<Vec<_>>(),
            [4101, 4102, 4103]
        );
        assert!(s.iter().all(|s| s.info.host == "127.0.0.1"
            && !s.info.frontend
            && s.info.client_port.is_none()));
    }

    #[test]
    fn single_port_keeps_id_as_written() {
        let s = expand_entry("gate", &json!({"id": "gate-1", "idStart": 5, "port": 4000})).unwrap();
        assert_eq!(ids(&s), ["gate-1"]);
    }

    #[test]
    fn one_element_range_gets_suffix() {
        let s = expand_entry("chat", &json!({"id": "c-", "idStart": 7, "port": [10, 10]})).unwrap();
        assert_eq!(ids(&s), ["c-7"]);
    }

    #[test]
    fn client_port_past_65535_is_out_of_range() {
        let p = expand_entry(
            "c",
            &json!({"id": "c-", "port": [100, 101], "frontend": true, "clientPort": 65535}),
        )
        .unwrap_err();
        assert!(
            matches!(
                p,
                Problem::PortOutOfRange {
                    key: "clientPort",
                    ..
                }
            ),
            "{p:?}"
        );
    }

    #[test]
    fn port_types() {
        for bad in [
            json!("4021"),
            json!(4021.5),
            json!([1, 2, 3]),
            json!(null),
            json!(true),
        ] {
            let p = expand_entry("c", &json!({"id": "c", "port": bad})).unwrap_err();
            assert!(matches!(p, Problem::WrongType { .. }), "{bad}: {p:?}");
        }
        for bad in [json!(0), json!(-1), json!(65536), json!([1, 70000])] {
            let p = expand_entry("c", &json!({"id": "c", "port": bad})).unwrap_err();
            assert!(
                matches!(p, Problem::PortOutOfRange { key: "port", .. }),
                "{bad}: {p:?}"
            );
        }
        assert_eq!(
            expand_entry("c", &json!({"id": "c", "port": 65535})).unwrap()[0]
                .info
                .port,
            65535
        );
    }

    #[test]
    fn args_string_is_split_on_whitespace() {
        let s = expand_entry("c", &json!({"id": "c", "port": 1, "args": " --a  1\t--b "})).unwrap();
        assert_eq!(s[0].args, ["--a", "1", "--b"]);
        let p = expand_entry("c", &json!({"id": "c", "port": 1, "args": ["x", 2]})).unwrap_err();
        assert!(matches!(p, Problem::WrongType { .. }));
    }

    #[test]
    fn missing_and_empty_keys() {
        assert_eq!(
            expand_entry("c", &json!({"port": 1})).unwrap_err(),
            Problem::MissingKey { key: "id" }
        );
        assert_eq!(
            expand_entry("c", &json!({"id": "c"})).unwrap_err(),
            Problem::MissingKey { key: "port" }
        );
        assert_eq!(
            expand_entry("c", &json!({"id": "", "port": 1})).unwrap_err(),
            Problem::Empty { key: "id" }
        );
        assert_eq!(
            expand_entry("c", &json!({"id": "c", "port": 1, "host": ""})).unwrap_err(),
            Problem::Empty { key: "host" }
        );
    }

    #[test]
    fn non_frontend_keeps_client_port() {
        let s = expand_entry("c", &json!({"id": "c", "port": 1, "clientPort": 2})).unwrap();
        assert_eq!(
            (s[0].info.frontend, s[0].info.client_port),
            (false, Some(2))
        );
    }
}
