//! The error types: [`ConfigError`] (which file, environment and entry) and [`Problem`] (what is
//! wrong with that entry). Every message an operator sees when a project does not load is
//! rendered here.

use std::fmt;
use std::path::PathBuf;

use crate::secrets::SecretKind;

/// The format of a config file, as detected from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.json`
    Json,
    /// `.toml`
    Toml,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::Toml => "TOML",
        })
    }
}

/// Why a project could not be loaded, or its secrets not resolved. Every variant names the
/// file and the environment and, where there is one, the entry.
///
/// Messages read like
/// `/game/config/sys/servers.json, environment "development", entry chat[0] ("chat-server-"): port range [4103, 4101] is reversed`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Neither `<name>.json` nor `<name>.toml` exists in `dir` (`<project>/config/sys`).
    #[error("no {name}.json or {name}.toml in {dir} (loading environment \"{env}\")")]
    MissingFile {
        /// `master`, `servers` or `route`.
        name: &'static str,
        /// The directory looked in.
        dir: PathBuf,
        /// The environment being loaded.
        env: String,
    },
    /// Both `<name>.json` and `<name>.toml` exist, so it is unclear which one is meant.
    #[error("both {json} and {toml} exist; keep only one (loading environment \"{env}\")")]
    AmbiguousFile {
        /// The JSON file.
        json: PathBuf,
        /// The TOML file.
        toml: PathBuf,
        /// The environment being loaded.
        env: String,
    },
    /// A file could not be read or written.
    #[error("{file}: cannot {action}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// What was being done (`read`, `write`, ...).
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not valid JSON / TOML; `message` is the parser's.
    #[error("{file}, environment \"{env}\": malformed {format}: {message}")]
    Malformed {
        /// The file.
        file: PathBuf,
        /// The environment being loaded.
        env: String,
        /// The file's format.
        format: Format,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The file has no entry for the requested environment.
    #[error(
        "{file}: unknown environment \"{env}\" (the file has: {})",
        list_or_none(available)
    )]
    UnknownEnv {
        /// The file.
        file: PathBuf,
        /// The requested environment.
        env: String,
        /// The environments the file has, in file order.
        available: Vec<String>,
    },
    /// An entry is invalid, or two entries conflict.
    #[error("{file}, environment \"{env}\"{}: {problem}", entry_part(entry))]
    Invalid {
        /// The file holding the entry.
        file: PathBuf,
        /// The environment being loaded.
        env: String,
        /// The entry, e.g. `chat[0] ("chat-server-")`, `master ("master-server-1")` or
        /// `route[3] ("chat.main.send")`; `None` when the problem is with the file as a whole.
        entry: Option<String>,
        /// What is wrong (boxed to keep `ConfigError` small).
        problem: Box<Problem>,
    },
    /// A secret is set nowhere and may not be generated here.
    #[error(
        "{master_file}, environment \"{env}\": no {secret} secret: set {}, {} in the master config, or start the master once to generate {secrets_file}",
        secret.env_var(),
        secret.config_key()
    )]
    MissingSecret {
        /// The master config file (where the config key would go).
        master_file: PathBuf,
        /// The secrets file that was looked in (`<project>/.kennel/secrets.json`).
        secrets_file: PathBuf,
        /// The environment being loaded.
        env: String,
        /// Which secret.
        secret: SecretKind,
    },
    /// In `production` a secret must come from the environment or the master config, never
    /// from the generated secrets file.
    #[error(
        "{master_file}, environment \"{env}\": no {secret} secret: production needs {} or {} in the master config (generated secrets are never used in production)",
        secret.env_var(),
        secret.config_key()
    )]
    ProductionSecret {
        /// The master config file.
        master_file: PathBuf,
        /// The environment being loaded (`production`).
        env: String,
        /// Which secret.
        secret: SecretKind,
    },
    /// In `production`, a secret whose estimated strength ([`crate::secret_bits`]) is under
    /// [`crate::MIN_SECRET_BITS`].
    #[error(
        "environment \"{env}\": the {secret} secret from {origin} is too weak for production (about {bits} bits, at least {} needed): make one with `openssl rand -hex 16` (or `head -c16 /dev/urandom | xxd -p`)",
        crate::MIN_SECRET_BITS
    )]
    WeakSecret {
        /// Where it came from, e.g. `KENNEL_SERVER_SECRET`.
        origin: String,
        /// The environment being loaded (`production`).
        env: String,
        /// Which secret.
        secret: SecretKind,
        /// Its estimated strength.
        bits: u32,
    },
    /// A file holding secrets (`.kennel/secrets.json`, a `KENNEL_*_SECRET_FILE`) is unusable:
    /// accessible by group or others (as ssh refuses a private key), unreadable, or empty.
    #[error("{file}: {reason}")]
    SecretFile {
        /// The file.
        file: PathBuf,
        /// What is wrong, with the way out (e.g. `run chmod 600 <file>`).
        reason: String,
    },
    /// A secret was found but is unusable (empty, not UTF-8, not a string).
    #[error("environment \"{env}\": the {secret} secret from {origin} {reason}")]
    BadSecret {
        /// Where it came from, e.g. `KENNEL_SERVER_SECRET` or `/game/.kennel/secrets.json`.
        origin: String,
        /// The environment being loaded.
        env: String,
        /// Which secret.
        secret: SecretKind,
        /// What is wrong, e.g. `is empty`.
        reason: &'static str,
    },
}

impl ConfigError {
    /// The problem of an [`ConfigError::Invalid`] error.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ConfigError::Invalid { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn entry_part(entry: &Option<String>) -> String {
    match entry {
        Some(e) => format!(", entry {e}"),
        None => String::new(),
    }
}

/// What is wrong with one entry of a config file (see [`ConfigError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A value has the wrong type or shape.
    WrongType {
        /// The key (or a description of the value), e.g. `` `port` ``.
        what: String,
        /// What was expected.
        expected: &'static str,
        /// What was found, rendered briefly.
        found: String,
    },
    /// A required key is absent.
    MissingKey {
        /// The key.
        key: &'static str,
    },
    /// A string that must not be empty is empty.
    Empty {
        /// The key.
        key: &'static str,
    },
    /// A port is outside 1-65535 (including a range's `clientPort + k` running past 65535).
    PortOutOfRange {
        /// `port` or `clientPort`.
        key: &'static str,
        /// The offending value as written or computed.
        value: String,
    },
    /// `[first, last]` with `first > last`.
    ReversedRange {
        /// `port` or `clientPort`.
        key: &'static str,
        /// First port.
        first: u16,
        /// Last port.
        last: u16,
    },
    /// `clientPort` is a range whose length differs from the `port` range's.
    ClientPortCountMismatch {
        /// Number of RPC ports.
        ports: usize,
        /// Number of client ports.
        client_ports: usize,
    },
    /// `frontend: true` without `clientPort`.
    FrontendWithoutClientPort,
    /// A server id is used twice (or is the master's id).
    DuplicateId {
        /// The id.
        id: String,
        /// The entry that used it first.
        other: String,
    },
    /// A host:port is used twice on one host (RPC ports, frontend client ports, master port).
    AddressInUse {
        /// The server whose port conflicts.
        id: String,
        /// `RPC port` or `client port`.
        what: &'static str,
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// Who has it already.
        other: String,
    },
    /// An empty route string.
    EmptyRoute,
    /// A route listed twice (a client `cmd` must map to one route).
    DuplicateRoute {
        /// Index of the first occurrence.
        first: usize,
    },
    /// A route that is neither `type.file.method` nor a dot-free push name.
    MalformedRoute,
    /// A `type.file.method` route whose server type has no servers in this environment.
    RouteWithoutServers {
        /// The server type.
        server_type: String,
    },
    /// More routes than a client message's 16-bit `cmd` can index.
    TooManyRoutes {
        /// How many routes the file lists.
        count: usize,
    },
    /// A kennel setting ([`crate::settings`]) has a bad value.
    Setting {
        /// The key path, e.g. `maxLen`, `rateLimit.burst`, `rpc.interval.chat`.
        key: String,
        /// What is wrong, e.g. `must be at least 3, found 2`.
        message: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::WrongType {
                what,
                expected,
                found,
            } => write!(f, "{what} must be {expected}, found {found}"),
            Problem::MissingKey { key } => write!(f, "`{key}` is missing"),
            Problem::Empty { key } => write!(f, "`{key}` is empty"),
            Problem::PortOutOfRange { key, value } => {
                write!(f, "`{key}` {value} is out of range (1-65535)")
            }
            Problem::ReversedRange { key, first, last } => {
                write!(f, "{key} range [{first}, {last}] is reversed")
            }
            Problem::ClientPortCountMismatch {
                ports,
                client_ports,
            } => write!(
                f,
                "`clientPort` range has {client_ports} ports but the `port` range has {ports}"
            ),
            Problem::FrontendWithoutClientPort => {
                f.write_str("frontend server without `clientPort`")
            }
            Problem::DuplicateId { id, other } => {
                write!(f, "duplicate server id \"{id}\" (already used by {other})")
            }
            Problem::AddressInUse {
                id,
                what,
                host,
                port,
                other,
            } => write!(
                f,
                "{what} {host}:{port} of server \"{id}\" is already taken by {other}"
            ),
            Problem::EmptyRoute => f.write_str("empty route"),
            Problem::DuplicateRoute { first } => {
                write!(f, "duplicate route (first listed at route[{first}])")
            }
            Problem::MalformedRoute => f.write_str(
                "a route is either \"type.file.method\" (three non-empty parts) or a push name without dots",
            ),
            Problem::RouteWithoutServers { server_type } => write!(
                f,
                "server type \"{server_type}\" has no servers in this environment"
            ),
            Problem::TooManyRoutes { count } => write!(
                f,
                "{count} routes listed, but a client message's cmd (16 bits) reaches only the first 65536"
            ),
            Problem::Setting { key, message } => write!(f, "`{key}`: {message}"),
        }
    }
}

/// Renders a JSON value briefly for [`Problem::WrongType::found`].
pub(crate) fn describe(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(_) => "an object".to_owned(),
        Value::Array(a) if a.len() > 4 => format!("a list of {} items", a.len()),
        _ => {
            let s = v.to_string();
            if s.chars().count() > 40 {
                let short: String = s.chars().take(37).collect();
                format!("{short}...")
            } else {
                s
            }
        }
    }
}
