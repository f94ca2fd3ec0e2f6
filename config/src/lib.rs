//! kennel-config: loads a project's `config/sys/{master,servers,route}.{json,toml}` for one
//! environment, expands `idStart`/port ranges, validates the cluster, and resolves the secrets.
//!
//! Public API (used by the `kennel` worker library and the `kennel-master` supervisor):
//! [`Project::load`], [`Project`], [`MasterConfig`], [`ServerConfig`], [`Secrets`], [`ConfigError`].
//!
//! Files (`<project>/config/sys/`, each either `.json` or `.toml`, never both):
//! - `master.*`: per environment, `id`, `host` (default `127.0.0.1`), `port`, optional `bin`,
//!   `serverSecret`, `cliSecret`, and kennel's settings (`rpc`, `logs`, `crashLoop`,
//!   `metrics`, `launcher`, `remoteSignal`: [`MasterConfig::settings`]); every key but the
//!   first six lands in [`MasterConfig::extra`].
//!   `KENNEL_MASTER_HOST` / `KENNEL_MASTER_PORT` override `host` / `port`.
//! - `servers.*`: per environment, server type → list of entries with `id`, `idStart`, `host`,
//!   `port` (`N` or `[first, last]`), `frontend`, `clientPort` (`N` or `[first, last]`), `bin`,
//!   `args`, and kennel's settings (connector keys, `threads`, `restart`, `external`:
//!   [`ServerConfig::settings`]); every key but the first eight lands in
//!   [`ServerConfig::extra`].
//! - `route.*`: one list for all environments (JSON: `["a.b.c", ...]`, TOML: `route = [...]`).
//!
//! kennel's settings are typed and checked here once ([`settings`]); a key that looks like a
//! misspelt setting is kept and reported in [`Project::warnings`].
#![deny(missing_docs)]

mod error;
mod expand;
mod load;
mod master;
mod route;
mod secrets;
pub mod settings;
mod source;
mod validate;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, Format, Problem};
pub use master::{DEFAULT_HOST, MASTER_HOST_ENV, MASTER_PORT_ENV};
pub use secrets::{
    CLI_SECRET_ENV, CLI_SECRET_FILE_ENV, MIN_SECRET_BITS, PRODUCTION_ENV, SECRETS_FILE,
    SERVER_SECRET_ENV, SERVER_SECRET_FILE_ENV, SecretKind, read_secret_file, secret_bits,
};
pub use source::SYS_DIR;

/// Every environment variable kennel reads for its secrets and the master's address: what a
/// harness clears so that the caller's shell does not leak into the processes it starts.
pub const ENV_VARS: [&str; 6] = [
    SERVER_SECRET_ENV,
    SERVER_SECRET_FILE_ENV,
    CLI_SECRET_ENV,
    CLI_SECRET_FILE_ENV,
    MASTER_HOST_ENV,
    MASTER_PORT_ENV,
];

/// The default environment name.
pub const DEFAULT_ENV: &str = "development";

/// A loaded, expanded and validated project for one environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    /// The project directory (the one holding `config/sys/`), as given to [`Project::load`].
    pub dir: PathBuf,
    /// The environment that was loaded (e.g. `development`).
    pub env: String,
    /// The master entry of `master.*` for this environment.
    pub master: MasterConfig,
    /// Every server after range expansion, in file order (types in file order, entries in
    /// order, expanded ids in ascending order).
    pub servers: Vec<ServerConfig>,
    /// The route list (`route.*`); a client message's `cmd` is an index into it.
    pub routes: Vec<String>,
    /// A note per route (same index), from entries written `{"route": .., "note": ..}`; used
    /// by `kennel cmd` for comments in generated client code.
    pub route_notes: Vec<Option<String>>,
    /// Keys that look like misspelt or misplaced kennel settings (the project loads all the
    /// same); `kennel config`, `kennel start` and each server print them.
    pub warnings: Vec<settings::Warning>,
}

/// The master's entry for one environment.
#[derive(Debug, Clone, PartialEq)]
pub struct MasterConfig {
    /// Master id, e.g. `master-server-1`.
    pub id: String,
    /// Host the master listens on.
    pub host: String,
    /// Port the master listens on (servers and the CLI connect here).
    pub port: u16,
    /// Default server binary (key `bin`), relative to the project dir unless absolute.
    pub bin: Option<String>,
    /// Secret servers use to authenticate (key `serverSecret`), if set in the file.
    pub server_secret: Option<String>,
    /// Secret the CLI uses to authenticate (key `cliSecret`), if set in the file.
    pub cli_secret: Option<String>,
    /// kennel's settings of the entry, checked (`rpc`, `logs`, `crashLoop`, ...).
    pub settings: settings::MasterSettings,
    /// Every other key of the entry, kept as written (kennel's settings included).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A server as the cluster knows it: who it is, where it listens and its entry's extra keys.
/// The one description of a server: a config entry's `info`, what a server registers with the
/// master (kennel-proto converts it to and from the wire), and `kennel::ServerInfo`, a server's
/// view of its peers.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    /// Server id, e.g. `chat-server-1`.
    pub id: String,
    /// Server type: the key of the group in `servers.*`, e.g. `chat`.
    pub server_type: String,
    /// Host the server's RPC port listens on.
    pub host: String,
    /// RPC (server-to-server) port.
    pub port: u16,
    /// Whether game clients connect to this server.
    pub frontend: bool,
    /// Client port (frontends only).
    pub client_port: Option<u16>,
    /// Every other key of the entry, kept as written (minus `id`, `idStart`, `port`, ...;
    /// kennel's settings included, so game code reads them as before).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One server after range expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Who it is in the cluster.
    pub info: ServerInfo,
    /// Binary overriding the master's `bin` (key `bin`).
    pub bin: Option<String>,
    /// Extra command-line arguments passed to the server (key `args`, list of strings).
    pub args: Vec<String>,
    /// kennel's settings of the entry, checked (connector keys, `threads`, `restart`, ...).
    pub settings: settings::ServerSettings,
}

/// The two shared secrets of a cluster: one for servers (master link and peer links) and one
/// for the CLI. They never cross the wire (challenge/response).
#[derive(Clone, PartialEq)]
pub struct Secrets {
    /// Secret servers use.
    pub server: String,
    /// Secret the CLI uses.
    pub cli: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("server", &"hidden")
            .field("cli", &"hidden")
            .finish()
    }
}

impl Project {
    /// Loads `dir/config/sys/{master,servers,route}.{json,toml}` for environment `env`:
    /// expands port ranges, then validates ids, addresses and routes.
    ///
    /// The environment variables `KENNEL_MASTER_HOST` and `KENNEL_MASTER_PORT`, when set,
    /// override the master's `host` and `port` of the loaded environment (before validation).
    ///
    /// kennel's settings are parsed and checked ([`settings`]): a bad value is an error naming
    /// the key path; a key close to a setting's name is a [`Project::warnings`] entry.
    ///
    /// Range expansion: `port: [a, b]` gives `b-a+1` servers with ids `id + (idStart + k)`
    /// (`idStart` defaults to 0) on ports `a + k`. A plain `port: N` gives one server whose id
    /// is `id` exactly (`idStart` is ignored). `clientPort: c` gives client ports `c + k`;
    /// `clientPort: [c, d]` must have as many ports as the `port` range and gives `c + k`.
    ///
    /// Every frontend entry with `"ssl": true` has its certificate and key files read and
    /// checked too ([`settings::read_cert_and_key`]); see [`Project::load_without_tls_files`].
    pub fn load(dir: &Path, env: &str) -> Result<Project, ConfigError> {
        load::load(dir, env, true)
    }

    /// [`Project::load`] without reading the TLS certificate and key files (their paths are
    /// still made absolute): for commands that talk to a running cluster, which a certificate
    /// file broken on disk must not stop (`kennel list`, `stop`, `send ... reload-tls`).
    pub fn load_without_tls_files(dir: &Path, env: &str) -> Result<Project, ConfigError> {
        load::load(dir, env, false)
    }

    /// The environments of the master config in `dir`, in file order.
    pub fn environments(dir: &Path) -> Result<Vec<String>, ConfigError> {
        load::environments(dir)
    }

    /// The server with id `id`.
    pub fn server(&self, id: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.info.id == id)
    }

    /// The servers of type `server_type`, in file order.
    pub fn servers_of_type<'a>(
        &'a self,
        server_type: &'a str,
    ) -> impl Iterator<Item = &'a ServerConfig> + 'a {
        self.servers
            .iter()
            .filter(move |s| s.info.server_type == server_type)
    }

    /// The server types that have servers, in file order, each once.
    pub fn server_types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = Vec::new();
        for s in &self.servers {
            if !types.contains(&s.info.server_type.as_str()) {
                types.push(&s.info.server_type);
            }
        }
        types
    }

    /// The index of `route` in [`Project::routes`] (a client message's `cmd`).
    pub fn route_index(&self, route: &str) -> Option<usize> {
        self.routes.iter().position(|r| r == route)
    }

    /// The binary to start `server` with: its own `bin`, else the master's, resolved against
    /// the project directory unless absolute. `None` when neither is set.
    pub fn server_bin(&self, server: &ServerConfig) -> Option<PathBuf> {
        let bin = server.bin.as_ref().or(self.master.bin.as_ref())?;
        Some(self.dir.join(bin))
    }
}
