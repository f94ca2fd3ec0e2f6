//! The route list of `route.*` (JSON: an array of strings; TOML: `route = [...]`), shared by
//! every environment; an entry may be `{"route": "...", "note": "..."}` to document the route
//! (the note ends up in `kennel cmd`'s generated client code). Checks: no empty or duplicate
//! routes, `type.file.method` routes must name a server type that has servers, dot-free names
//! are push-only routes, and at most 65536 routes (a client `cmd` is 16 bits).

use std::collections::HashMap;

use serde_json::Value;

use crate::ServerConfig;
use crate::error::{ConfigError, Format, Problem, describe};
use crate::source::SourceFile;

/// Most routes a list may have: a client message's `cmd` is a `u16` index into it.
const MAX_ROUTES: usize = u16::MAX as usize + 1;

fn label(index: usize, route: &str) -> String {
    format!("route[{index}] (\"{route}\")")
}

/// Reads the route list and the routes' notes out of a parsed `route.*` file (`env` is only
/// for messages).
pub(crate) fn routes(
    file: &SourceFile,
    env: &str,
    doc: &Value,
) -> Result<Vec<(String, Option<String>)>, ConfigError> {
    let items = match (file.format, doc) {
        (Format::Json, Value::Array(items)) => items,
        (Format::Toml, Value::Object(table)) => match table.get("route") {
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(file.invalid(
                    env,
                    None,
                    Problem::WrongType {
                        what: "`route`".to_owned(),
                        expected: "a list of strings",
                        found: describe(other),
                    },
                ));
            }
            None => return Err(file.invalid(env, None, Problem::MissingKey { key: "route" })),
        },
        (_, other) => {
            return Err(file.invalid(
                env,
                None,
                Problem::WrongType {
                    what: "the file".to_owned(),
                    expected: "a list of route strings",
                    found: describe(other),
                },
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let entry = match v {
                Value::String(s) => Some((s.clone(), None)),
                Value::Object(o) => match (o.get("route"), o.get("note")) {
                    (Some(Value::String(r)), None) if o.len() == 1 => Some((r.clone(), None)),
                    (Some(Value::String(r)), Some(Value::String(n))) if o.len() == 2 => {
                        Some((r.clone(), Some(n.clone())))
                    }
                    _ => None,
                },
                _ => None,
            };
            entry.ok_or_else(|| {
                file.invalid(
                    env,
                    Some(format!("route[{i}]")),
                    Problem::WrongType {
                        what: "a route".to_owned(),
                        expected: "a string or {\"route\": string, \"note\": string}",
                        found: describe(v),
                    },
                )
            })
        })
        .collect()
}

/// Checks the route list against the servers of the loaded environment.
pub(crate) fn check_routes(
    file: &SourceFile,
    env: &str,
    routes: &[String],
    servers: &[ServerConfig],
) -> Result<(), ConfigError> {
    if routes.len() > MAX_ROUTES {
        return Err(file.invalid(
            env,
            None,
            Problem::TooManyRoutes {
                count: routes.len(),
            },
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        let fail = |problem| file.invalid(env, Some(label(i, route)), problem);
        if route.is_empty() {
            return Err(fail(Problem::EmptyRoute));
        }
        if let Some(&first) = seen.get(route.as_str()) {
            return Err(fail(Problem::DuplicateRoute { first }));
        }
        seen.insert(route, i);
        let parts: Vec<&str> = route.split('.').collect();
        match parts.as_slice() {
            [_push] => {}
            [server_type, file_part, method]
                if !server_type.is_empty() && !file_part.is_empty() && !method.is_empty() =>
            {
                if !servers.iter().any(|s| s.info.server_type == *server_type) {
                    return Err(fail(Problem::RouteWithoutServers {
                        server_type: (*server_type).to_owned(),
                    }));
                }
            }
            _ => return Err(fail(Problem::MalformedRoute)),
        }
    }
    Ok(())
}
