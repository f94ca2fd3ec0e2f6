//! Finding and parsing the files of `config/sys/`: `<name>.json` or `<name>.toml` (never both),
//! parsed into a [`Doc`] (a `serde_json::Value` and the file order of its environments and of
//! each environment's keys), and picking one environment out of a file.
//!
//! The order of server types and entries matters, and `serde_json`'s maps are sorted (kennel
//! does not turn on its `preserve_order` feature, which would slow every game's `Value`), so
//! the key order of the first two levels is read beside the value. Files are parsed directly
//! with serde_json / toml rather than through figment, whose dictionaries are sorted too.

use std::path::{Path, PathBuf};

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{ConfigError, Format, Problem, describe};

/// The directory, relative to the project directory, holding the config files.
pub const SYS_DIR: &str = "config/sys";

/// One config file that exists.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    pub path: PathBuf,
    pub format: Format,
}

impl SourceFile {
    /// An [`ConfigError::Invalid`] about this file.
    pub(crate) fn invalid(
        &self,
        env: &str,
        entry: Option<String>,
        problem: Problem,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.path.clone(),
            env: env.to_owned(),
            entry,
            problem: Box::new(problem),
        }
    }
}

/// Finds `dir/config/sys/<name>.{json,toml}`.
pub(crate) fn locate(dir: &Path, name: &'static str, env: &str) -> Result<SourceFile, ConfigError> {
    let sys = dir.join(SYS_DIR);
    let json = sys.join(format!("{name}.json"));
    let toml = sys.join(format!("{name}.toml"));
    match (json.exists(), toml.exists()) {
        (true, true) => Err(ConfigError::AmbiguousFile {
            json,
            toml,
            env: env.to_owned(),
        }),
        (true, false) => Ok(SourceFile {
            path: json,
            format: Format::Json,
        }),
        (false, true) => Ok(SourceFile {
            path: toml,
            format: Format::Toml,
        }),
        (false, false) => Err(ConfigError::MissingFile {
            name,
            dir: sys,
            env: env.to_owned(),
        }),
    }
}

/// A parsed config file.
#[derive(Debug)]
pub(crate) struct Doc {
    /// The file's content (objects with sorted keys).
    pub value: Value,
    /// The top-level keys (environments) in file order, each with its value's keys in file
    /// order (empty when the value is not a table).
    order: Vec<(String, Vec<String>)>,
}

impl Doc {
    /// The entries of environment `env`'s table in file order (empty if it is not a table).
    pub(crate) fn env_entries<'a>(&'a self, env: &str) -> Vec<(&'a String, &'a Value)> {
        let Some(Value::Object(map)) = self.value.get(env) else {
            return Vec::new();
        };
        let keys = self
            .order
            .iter()
            .find(|(k, _)| k == env)
            .map(|(_, keys)| keys.as_slice())
            .unwrap_or_default();
        let mut out: Vec<_> = keys
            .iter()
            .filter_map(|k| map.get_key_value(k.as_str()))
            .collect();
        // Keys the order does not know (none when both come from one parse) go last, sorted.
        out.extend(map.iter().filter(|(k, _)| !keys.contains(k)));
        out
    }
}

/// The key order of a document's first two object levels, read by serde alongside the value.
struct KeyOrder(Vec<(String, Vec<String>)>);

/// The keys of one object in order; empty for anything else.
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for KeyOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<KeyOrder, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    out.push((k, m.next_value::<Keys>()?.0));
                }
                Ok(KeyOrder(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Keys, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    m.next_value::<IgnoredAny>()?;
                    out.push(k);
                }
                Ok(Keys(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Keys, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Keys(Vec::new()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Keys, E> {
                Ok(Keys(Vec::new()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Keys, E> {
                Ok(Keys(Vec::new()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Keys, E> {
                Ok(Keys(Vec::new()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Keys, E> {
                Ok(Keys(Vec::new()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Keys, E> {
                Ok(Keys(Vec::new()))
            }
            fn visit_unit<E>(self) -> Result<Keys, E> {
                Ok(Keys(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The key order of a TOML table's first two levels (toml's tables keep file order).
fn toml_order(t: &toml::Table) -> Vec<(String, Vec<String>)> {
    t.iter()
        .map(|(k, v)| {
            let keys = match v {
                toml::Value::Table(inner) => inner.keys().cloned().collect(),
                _ => Vec::new(),
            };
            (k.clone(), keys)
        })
        .collect()
}

/// Reads and parses a file (`env` is only for error messages).
pub(crate) fn parse(file: &SourceFile, env: &str) -> Result<Doc, ConfigError> {
    let text = std::fs::read_to_string(&file.path).map_err(|source| ConfigError::Io {
        file: file.path.clone(),
        action: "read",
        source,
    })?;
    parse_str(file, env, &text)
}

fn parse_str(file: &SourceFile, env: &str, text: &str) -> Result<Doc, ConfigError> {
    let malformed = |message: String| ConfigError::Malformed {
        file: file.path.clone(),
        env: env.to_owned(),
        format: file.format,
        message,
    };
    match file.format {
        Format::Json => {
            let value: Value = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
            // A document that is not a table has no order to keep (and is reported as such).
            let order = serde_json::from_str::<KeyOrder>(text)
                .map(|o| o.0)
                .unwrap_or_default();
            Ok(Doc { value, order })
        }
        Format::Toml => {
            let table = text
                .parse::<toml::Table>()
                .map_err(|e| malformed(e.to_string().trim_end().to_owned()))?;
            let order = toml_order(&table);
            Ok(Doc {
                value: toml_to_json(toml::Value::Table(table)),
                order,
            })
        }
    }
}

/// Converts a TOML value to JSON; datetimes become strings.
fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(x) => serde_json::Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// The environment names of a per-environment file, in file order.
pub(crate) fn environments(
    file: &SourceFile,
    doc: &Doc,
    env: &str,
) -> Result<Vec<String>, ConfigError> {
    match &doc.value {
        Value::Object(_) => Ok(doc.order.iter().map(|(k, _)| k.clone()).collect()),
        other => Err(file.invalid(
            env,
            None,
            Problem::WrongType {
                what: "the file".to_owned(),
                expected: "a table keyed by environment name",
                found: describe(other),
            },
        )),
    }
}

/// Picks environment `env` out of a per-environment file; it must be a table.
pub(crate) fn select_env<'a>(
    file: &SourceFile,
    doc: &'a Doc,
    env: &str,
) -> Result<&'a Map<String, Value>, ConfigError> {
    let available = environments(file, doc, env)?;
    match doc.value.get(env) {
        None => Err(ConfigError::UnknownEnv {
            file: file.path.clone(),
            env: env.to_owned(),
            available,
        }),
        Some(Value::Object(map)) => Ok(map),
        Some(other) => Err(file.invalid(
            env,
            None,
            Problem::WrongType {
                what: format!("environment \"{env}\""),
                expected: "a table",
                found: describe(other),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(format: Format) -> SourceFile {
        SourceFile {
            path: PathBuf::from("/p/config/sys/servers.x"),
            format,
        }
    }

    #[test]
    fn toml_tables_keep_document_order() {
        let text = "[dev]\nzeta = 1\nalpha = 2\n[[dev.z]]\nid = \"a\"\n[[dev.a]]\nid = \"b\"\n";
        let doc = parse_str(&file(Format::Toml), "dev", text).unwrap();
        let keys: Vec<_> = doc.env_entries("dev").into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["zeta", "alpha", "z", "a"]);
        assert_eq!(doc.env_entries("dev")[0].1, &Value::from(1));
    }

    #[test]
    fn json_objects_keep_document_order() {
        let doc = parse_str(
            &file(Format::Json),
            "dev",
            r#"{"prod": [1, {"x": 2}], "dev": {"zeta": 1, "alpha": {"b": 1, "a": 2}, "mid": []}}"#,
        )
        .unwrap();
        let keys: Vec<_> = doc.env_entries("dev").into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["zeta", "alpha", "mid"]);
        assert_eq!(
            doc.env_entries("dev")[1].1,
            &serde_json::json!({"a": 2, "b": 1})
        );
        assert_eq!(
            environments(&file(Format::Json), &doc, "dev").unwrap(),
            ["prod", "dev"]
        );
        assert!(doc.env_entries("prod").is_empty(), "not a table");
    }

    #[test]
    fn toml_datetime_becomes_string() {
        let doc = parse_str(&file(Format::Toml), "dev", "d = 1979-05-27T07:32:00Z\n").unwrap();
        assert_eq!(doc.value["d"], Value::String("1979-05-27T07:32:00Z".into()));
    }

    #[test]
    fn malformed_toml_carries_parser_position() {
        let err = parse_str(&file(Format::Toml), "dev", "[dev\nport = 1\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("malformed TOML"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }
}
