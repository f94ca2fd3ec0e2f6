//! Finding and parsing the files of `config/sys/`: `<name>.json` or `<name>.toml` (never both),
//! parsed into an order-preserving `serde_json::Value`, and picking one environment out of a
//! file.
//!
//! Files are parsed directly with serde_json / toml rather than through figment because
//! figment's dictionaries are sorted, and the order of server types and entries matters.

use std::path::{Path, PathBuf};

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

/// Reads and parses a file (`env` is only for error messages).
pub(crate) fn parse(file: &SourceFile, env: &str) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(&file.path).map_err(|source| ConfigError::Io {
        file: file.path.clone(),
        action: "read",
        source,
    })?;
    parse_str(file, env, &text)
}

fn parse_str(file: &SourceFile, env: &str, text: &str) -> Result<Value, ConfigError> {
    let malformed = |message: String| ConfigError::Malformed {
        file: file.path.clone(),
        env: env.to_owned(),
        format: file.format,
        message,
    };
    match file.format {
        Format::Json => serde_json::from_str(text).map_err(|e| malformed(e.to_string())),
        Format::Toml => text
            .parse::<toml::Table>()
            .map(|t| toml_to_json(toml::Value::Table(t)))
            .map_err(|e| malformed(e.to_string().trim_end().to_owned())),
    }
}

/// Converts a TOML value to JSON, keeping table order; datetimes become strings.
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
    doc: &Value,
    env: &str,
) -> Result<Vec<String>, ConfigError> {
    match doc {
        Value::Object(map) => Ok(map.keys().cloned().collect()),
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
    doc: &'a Value,
    env: &str,
) -> Result<&'a Map<String, Value>, ConfigError> {
    let available = environments(file, doc, env)?;
    match doc.get(env) {
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
        let v = parse_str(&file(Format::Toml), "dev", text).unwrap();
        let keys: Vec<_> = v["dev"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["zeta", "alpha", "z", "a"]);
    }

    #[test]
    fn json_objects_keep_document_order() {
        let v = parse_str(
            &file(Format::Json),
            "dev",
            r#"{"dev": {"zeta": 1, "alpha": 2}}"#,
        )
        .unwrap();
        let keys: Vec<_> = v["dev"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["zeta", "alpha"]);
    }

    #[test]
    fn toml_datetime_becomes_string() {
        let v = parse_str(&file(Format::Toml), "dev", "d = 1979-05-27T07:32:00Z\n").unwrap();
        assert_eq!(v["d"], Value::String("1979-05-27T07:32:00Z".into()));
    }

    #[test]
    fn malformed_toml_carries_parser_position() {
        let err = parse_str(&file(Format::Toml), "dev", "[dev\nport = 1\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("malformed TOML"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }
}
