//! [`App`]: the server's handle, cheap to clone and shared by every handler. Built from the
//! command line and the project config ([`App::from_args`]), it answers who this server is and
//! what the cluster looks like, holds the game's key/value store, makes RPC handles
//! ([`App::rpc`]) and stops the server ([`App::shutdown`]).
//!
//! The rest of the app layer: `setup.rs` (every registration method, frozen by `run`),
//! `run.rs` (the runtime, `run`: listeners, master link, signals, the stop sequence, and the
//! membership callbacks), `rpc.rs` (the RPC API), `status.rs` (the app's `kennel list`
//! columns and the per-second report), `args.rs` (the command line). Only this folder touches
//! [`Inner`]; the layers below reach what they need through the accessors at the end of this
//! file.

use std::any::Any;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use kennel_config::{Project, SecretKind, Secrets};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::edge::clients::Clients;
use crate::edge::tls::ClientCerts;
use crate::mesh::Mesh;
use crate::routing::Router;
use crate::routing::handler::CliSendCb;
use crate::stats::Stats;
use crate::{Error, RpcConfig, ServerInfo, Session};

pub(crate) mod args;
pub(crate) mod rpc;
pub(crate) mod run;
pub(crate) mod setup;
pub(crate) mod status;

use args::Args;
use run::Callbacks;
use setup::Setup;
use status::Status;

pub use run::BEFORE_EXIT_TIMEOUT;

/// Everything a server is, behind its [`App`] handles.
pub(crate) struct Inner {
    args: Args,
    project: Project,
    /// The route table and the game code (frozen by `run`).
    router: Router,
    /// This server's place in the RPC mesh.
    mesh: Arc<Mesh>,
    /// The clients of this frontend (empty on backends).
    clients: Arc<Clients<Session>>,
    stats: Arc<Stats>,
    /// The app's own `kennel list` columns.
    status: Status,
    /// Registrations until `run` freezes them.
    setup: Mutex<Option<Setup>>,
    /// The app's callbacks, frozen by `run`.
    callbacks: OnceLock<Callbacks>,
    /// The `kennel send` handler ([`App::on_cli_send`]).
    cli_send: OnceLock<CliSendCb>,
    /// Set once every configured server has registered.
    started_all: AtomicBool,
    /// Cancelled to stop the server (signal or [`App::shutdown`]).
    shutdown: CancellationToken,
    /// The app's key/value store ([`App::set`]).
    store: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
    /// The certificate of a frontend whose entry has `ssl` (read at start, reloaded).
    client_certs: Option<Arc<ClientCerts>>,
}

/// The server's handle: cheap to clone, shared by every handler.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

/// An [`App`] that does not keep the server alive (held by sessions).
#[derive(Clone, Default)]
pub(crate) struct WeakApp(Weak<Inner>);

impl WeakApp {
    pub(crate) fn upgrade(&self) -> Option<App> {
        self.0.upgrade().map(|inner| App { inner })
    }
}

impl App {
    /// Builds the app from the process's command line (`--id`, `--env`, `--dir`) and the
    /// project config; installs logging to stderr.
    pub fn from_args() -> Result<App, Error> {
        crate::init_logging();
        let args = Args::parse(std::env::args().skip(1))?;
        App::new(args)
    }

    /// Builds the app from parsed arguments.
    pub fn new(args: Args) -> Result<App, Error> {
        let project = Project::load(&args.dir, &args.env)?;
        let entry = project
            .server(&args.id)
            .ok_or_else(|| Error::UnknownServer {
                id: args.id.clone(),
                env: args.env.clone(),
                dir: args.dir.display().to_string(),
            })?;
        for w in project.warnings.iter().filter(|w| w.concerns(&args.id)) {
            warn!("{w}");
        }
        let me = entry.info.clone();
        // Checked when the project loaded; read again here for the server's own copy.
        let client_certs = match (&entry.settings.connector.tls, entry.info.frontend) {
            (Some(tls), true) => {
                Some(Arc::new(ClientCerts::load(tls).map_err(|e| {
                    Error::Setup(format!("{}: TLS for clients: {e}", args.id))
                })?))
            }
            _ => None,
        };
        let secret = server_secret(&project)?;
        // Typed and checked when the project loaded.
        let rpc = project.master.settings.rpc.clone();
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let mesh = Mesh::new(
            me,
            secret.into_bytes(),
            project.master.settings.encrypt_links,
            rpc,
            stats.clone(),
            shutdown.clone(),
        );
        Ok(App {
            inner: Arc::new(Inner {
                router: Router::new(&project.routes),
                mesh: Arc::new(mesh),
                clients: Arc::new(Clients::default()),
                stats,
                status: Status::default(),
                setup: Mutex::new(Some(Setup::default())),
                callbacks: OnceLock::new(),
                cli_send: OnceLock::new(),
                started_all: AtomicBool::new(false),
                shutdown,
                store: Mutex::new(HashMap::new()),
                client_certs,
                args,
                project,
            }),
        })
    }

    // ------------------------------------------------------------------ identity

    /// This server's id.
    pub fn id(&self) -> &str {
        self.inner.mesh.id()
    }

    /// This server's type.
    pub fn server_type(&self) -> &str {
        self.inner.mesh.server_type()
    }

    /// The environment name.
    pub fn env(&self) -> &str {
        &self.inner.args.env
    }

    /// The project directory.
    pub fn dir(&self) -> &Path {
        &self.inner.args.dir
    }

    /// The startup arguments.
    pub fn args(&self) -> &Args {
        &self.inner.args
    }

    /// This server's config entry.
    pub fn my_info(&self) -> &ServerInfo {
        self.inner.mesh.me()
    }

    /// Whether this server accepts game clients.
    pub fn is_frontend(&self) -> bool {
        self.my_info().frontend
    }

    /// The route list.
    pub fn routes(&self) -> &[String] {
        self.inner.router.names()
    }

    // ------------------------------------------------------------------ cluster view

    /// Every live server the master has told this server about (itself included).
    pub fn servers(&self) -> Vec<ServerInfo> {
        self.inner.mesh.peers.servers()
    }

    /// Live servers of one type, sorted by id (copies of their full info; to pick a server
    /// per request, [`App::server_ids_of_type`] is cheaper).
    pub fn servers_of_type(&self, server_type: &str) -> Vec<ServerInfo> {
        let mut v: Vec<ServerInfo> = self
            .servers()
            .into_iter()
            .filter(|s| s.server_type == server_type)
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Ids of the live servers of one type, sorted: the same servers as
    /// [`App::servers_of_type`], as a shared list rebuilt only when a server joins or leaves,
    /// so calling it per request costs a lock read and a reference count.
    pub fn server_ids_of_type(&self, server_type: &str) -> Arc<[String]> {
        self.inner.mesh.peers.ids_of_type(server_type)
    }

    /// The session of the client bound to `uid` on this frontend.
    pub fn session_by_uid(&self, uid: u64) -> Option<Session> {
        self.inner.clients.by_uid(uid)
    }

    /// Number of clients connected to this frontend.
    pub fn client_count(&self) -> usize {
        self.inner.clients.count()
    }

    /// The RPC settings in effect: the master config's `rpc` key (or the defaults), or what
    /// [`App::set_rpc_config`] set. Reading them fixes them (as [`App::run`] does): a
    /// `set_rpc_config` afterwards is refused.
    pub fn rpc_config(&self) -> &RpcConfig {
        self.inner.mesh.config()
    }

    // ------------------------------------------------------------------ store

    /// Stores a value in the app's key/value store (mydog's `app.set`), replacing any value
    /// under `key`.
    pub fn set<T: Send + Sync + 'static>(&self, key: &str, value: T) -> &Self {
        self.inner
            .store
            .lock()
            .unwrap()
            .insert(key.to_string(), Arc::new(value));
        self
    }

    /// The value stored under `key`, if there is one of type `T`.
    pub fn get<T: Send + Sync + 'static>(&self, key: &str) -> Option<Arc<T>> {
        let v = self.inner.store.lock().unwrap().get(key).cloned()?;
        v.downcast::<T>().ok()
    }

    /// Removes the value stored under `key`.
    pub fn delete(&self, key: &str) -> &Self {
        self.inner.store.lock().unwrap().remove(key);
        self
    }

    // ------------------------------------------------------------------ stop

    /// Asks [`App::run`] to stop.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    // ------------------------------------------------------------------ for the layers below

    pub(crate) fn router(&self) -> &Router {
        &self.inner.router
    }

    pub(crate) fn mesh(&self) -> &Arc<Mesh> {
        &self.inner.mesh
    }

    pub(crate) fn clients(&self) -> &Arc<Clients<Session>> {
        &self.inner.clients
    }

    pub(crate) fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// This server's id, shared (by its sessions).
    pub(crate) fn server_id(&self) -> &Arc<str> {
        self.inner.mesh.id_shared()
    }

    /// The TLS acceptor of this frontend's clients when its entry has `"ssl": true`: the same
    /// certificate and key the connector serves, reloaded with it (when the files change, or
    /// on `kennel send reload-tls`). For anything else the game serves to the same players
    /// over TLS, such as a web page on another port.
    pub fn client_tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.inner.client_certs.as_ref().map(ClientCerts::acceptor)
    }

    pub(crate) fn client_certs(&self) -> Option<&Arc<ClientCerts>> {
        self.inner.client_certs.as_ref()
    }

    /// kennel's settings of this server's entry (checked when the project loaded).
    pub(crate) fn settings(&self) -> Option<&kennel_config::settings::ServerSettings> {
        self.inner.project.server(self.id()).map(|s| &s.settings)
    }

    pub(crate) fn downgrade(&self) -> WeakApp {
        WeakApp(Arc::downgrade(&self.inner))
    }
}

/// The server secret: from the environment, a file it names, or the master config.
fn server_secret(project: &Project) -> Result<String, Error> {
    // Servers never generate secrets: the master does (or the operator sets them). The server
    // secret alone is needed here, so a server does not fail for want of the CLI secret.
    match std::env::var(SecretKind::Server.env_var()) {
        Ok(s) if !s.is_empty() => return Ok(s),
        _ => {}
    }
    if let Some(file) =
        std::env::var_os(SecretKind::Server.file_env_var()).filter(|f| !f.is_empty())
    {
        return Ok(kennel_config::read_secret_file(std::path::Path::new(
            &file,
        ))?);
    }
    match &project.master.server_secret {
        Some(s) if !s.is_empty() => Ok(s.clone()),
        _ => Ok(Secrets::resolve(project, false)?.server),
    }
}

/// An app on a throwaway project, never run: for tests of the layers it ties together.
#[cfg(test)]
pub(crate) fn test_app(frontend: bool) -> App {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kennel-unit-{}-{n}", std::process::id()));
    let sys = dir.join("config/sys");
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::write(
        sys.join("master.json"),
        r#"{"development": {"id": "master-server-1", "host": "127.0.0.1", "port": 1,
            "serverSecret": "a-unit-test-secret-of-some-length"}}"#,
    )
    .unwrap();
    std::fs::write(
        sys.join("servers.json"),
        r#"{"development": {
            "gate": [{"id": "gate-1", "host": "127.0.0.1", "port": 2, "frontend": true, "clientPort": 3}],
            "room": [{"id": "room-1", "host": "127.0.0.1", "port": 4}]}}"#,
    )
    .unwrap();
    std::fs::write(
        sys.join("route.json"),
        r#"["gate.main.login", "room.main.join", "onSay"]"#,
    )
    .unwrap();
    let id = if frontend { "gate-1" } else { "room-1" };
    let app = App::new(Args {
        id: id.into(),
        env: "development".into(),
        dir: dir.clone(),
        rest: vec![],
    });
    let _ = std::fs::remove_dir_all(&dir);
    app.unwrap()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rpc_config_before_run_is_the_configured_one_and_reading_it_fixes_it() {
        let app = test_app(false);
        let mine = RpcConfig {
            timeout: Duration::from_secs(3),
            ..RpcConfig::default()
        };
        app.set_rpc_config(mine.clone());
        // Before `run`: what was set (the master config's, or the defaults, without a set).
        assert_eq!(app.rpc_config(), &mine);
        // Read once, fixed: a later set is refused, the value stays.
        app.set_rpc_config(RpcConfig::default());
        assert_eq!(app.rpc_config().timeout, Duration::from_secs(3));
        let (_, _) = app.freeze().unwrap();
        assert_eq!(app.rpc_config(), &mine);
        assert_eq!(test_app(true).rpc_config(), &RpcConfig::default());
    }
}
