//! [`App`]: the server's handle. Built from the command line and the project config, it
//! collects registrations (handlers, remotes, route functions, callbacks), then [`App::run`]
//! freezes them and starts the master link, the peer listener and (frontends) the connector.
//!
//! It also owns routing: a client message's `cmd` picks a route; a route of this server's type
//! runs the local handler, any other goes to the backend the route function picks, with a copy
//! of the session; the handler's reply travels back to the client with the request's `cmd`.
//!
//! Every piece of game code it calls runs behind a panic boundary ([`crate::dispatch`]): a
//! panic is logged ([`App::panicked`]: server, route, uid, message), counted by route, and fails
//! only that piece of work. A client request that panics gets no reply (the client protocol has
//! no error frame); an RPC call gets [`RpcError::Remote`] with `panicked: <message>`.

use std::any::Any;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kennel_config::{Project, SecretKind, Secrets, ServerConfig};
use kennel_proto::msg::{self, ClientPush, ClientRequest, RpcResponse, SessionApply, peer_msg};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::codec::{Codecs, FrameDecoder, MessageCodec, ProtocolCodec};
use crate::connector::{self, ConnectorConfig};
use crate::dispatch::{self, Panic, poll_now, spawn_rest};
use crate::frontend::FrontendState;
use crate::handler::{
    self, AfterFn, AppCb, BeforeFn, BoxFuture, GlobalFn, HandlerFn, RemoteFn, Reply, RouteFn,
    ServerCb, SessionCb, SessionlessCb,
};
use crate::peers::{self, Link, Peers};
use crate::{Args, Error, PushError, RemoteRoute, Rpc, RpcConfig, RpcError, Session, master_link};

/// How long the before-exit hooks may take together (the master's stop timeout is longer).
pub const BEFORE_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A server as the cluster knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    /// Server id.
    pub id: String,
    /// Server type.
    pub server_type: String,
    /// RPC host.
    pub host: String,
    /// RPC port.
    pub port: u16,
    /// Whether clients connect to it.
    pub frontend: bool,
    /// Client port (frontends).
    pub client_port: Option<u16>,
    /// The config entry's extra keys.
    pub extra: Map<String, Value>,
}

impl From<msg::ServerInfo> for ServerInfo {
    fn from(s: msg::ServerInfo) -> Self {
        ServerInfo {
            id: s.id,
            server_type: s.server_type,
            host: s.host,
            port: s.port as u16,
            frontend: s.frontend,
            client_port: (s.client_port != 0).then_some(s.client_port as u16),
            extra: serde_json::from_str(&s.extra_json).unwrap_or_default(),
        }
    }
}

impl From<&ServerConfig> for ServerInfo {
    fn from(s: &ServerConfig) -> Self {
        ServerInfo {
            id: s.id.clone(),
            server_type: s.server_type.clone(),
            host: s.host.clone(),
            port: s.port,
            frontend: s.frontend,
            client_port: s.client_port,
            extra: s.extra.clone(),
        }
    }
}

impl ServerInfo {
    pub(crate) fn to_proto(&self, pid: u32) -> msg::ServerInfo {
        msg::ServerInfo {
            id: self.id.clone(),
            server_type: self.server_type.clone(),
            host: self.host.clone(),
            port: self.port as u32,
            frontend: self.frontend,
            client_port: self.client_port.unwrap_or(0) as u32,
            pid,
            extra_json: serde_json::to_string(&self.extra).unwrap_or_default(),
        }
    }
}

/// One entry of the route list.
pub(crate) struct Route {
    name: String,
    /// `None` for push-only routes (no dots).
    server_type: Option<String>,
}

#[derive(Default)]
struct Setup {
    handlers: HashMap<String, HandlerFn>,
    remotes: HashMap<String, RemoteFn>,
    route_fns: HashMap<String, RouteFn>,
    client_on: Vec<SessionCb>,
    client_off: Vec<SessionCb>,
    on_add: Vec<ServerCb>,
    on_remove: Vec<ServerCb>,
    on_start_all: Vec<AppCb>,
    before_exit: Vec<SessionlessCb>,
    before: Vec<BeforeFn>,
    after: Vec<AfterFn>,
    global_before: Vec<GlobalFn>,
    connector: ConnectorConfig,
    /// Set in code; otherwise read from the master config's `rpc` key.
    rpc: Option<RpcConfig>,
    codecs: Codecs,
}

/// Registrations, frozen by `run`.
struct Frozen {
    /// Handler per `cmd` (routes of this server's type only); `reg.handlers` is emptied.
    handlers: Vec<Option<HandlerFn>>,
    /// The RPC settings in effect.
    rpc: RpcConfig,
    /// Everything else, as registered.
    reg: Setup,
}

pub(crate) struct Inner {
    args: Args,
    pub(crate) project: Project,
    me: ServerInfo,
    /// This server's id, shared by its sessions.
    pub(crate) sid: Arc<str>,
    pub(crate) secret: Vec<u8>,
    routes: Vec<Route>,
    route_index: HashMap<String, u16>,
    pub(crate) route_names: Vec<String>,
    pub(crate) route_md5: String,
    setup: Mutex<Option<Setup>>,
    frozen: OnceLock<Frozen>,
    pub(crate) peers: Peers,
    pub(crate) frontend: Arc<FrontendState>,
    pub(crate) rpc_seq: AtomicU64,
    /// Set once every configured server has registered.
    started_all: std::sync::atomic::AtomicBool,
    added_at: Mutex<HashMap<String, Instant>>,
    /// Cancelled to stop the server (signal or [`App::shutdown`]).
    pub(crate) shutdown: CancellationToken,
    /// RPC counters and the app's own `list` columns ([`crate::stats`]).
    pub(crate) stats: crate::stats::Stats,
    /// The app's key/value store ([`App::set`]).
    store: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
    /// The `kennel send` handler ([`App::on_cli_send`]).
    pub(crate) cli_send: OnceLock<master_link::CliSendCb>,
}

/// The server's handle: cheap to clone, shared by every handler.
#[derive(Clone)]
pub struct App {
    pub(crate) inner: Arc<Inner>,
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
        let me = project
            .server(&args.id)
            .ok_or_else(|| Error::UnknownServer {
                id: args.id.clone(),
                env: args.env.clone(),
                dir: args.dir.display().to_string(),
            })?;
        for w in project.warnings.iter().filter(|w| w.concerns(&args.id)) {
            warn!("{w}");
        }
        let me = ServerInfo::from(me);
        let secret = server_secret(&project)?;
        let routes: Vec<Route> = project
            .routes
            .iter()
            .map(|r| Route {
                name: r.clone(),
                server_type: r.split_once('.').map(|(t, _)| t.to_string()),
            })
            .collect();
        let route_index = project
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.clone(), i as u16))
            .collect();
        Ok(App {
            inner: Arc::new(Inner {
                route_names: project.routes.clone(),
                route_md5: kennel_proto::client::route_md5(&project.routes),
                sid: me.id.as_str().into(),
                args,
                project,
                me,
                secret: secret.into_bytes(),
                routes,
                route_index,
                setup: Mutex::new(Some(Setup::default())),
                frozen: OnceLock::new(),
                peers: Peers::default(),
                frontend: Arc::new(FrontendState::default()),
                rpc_seq: AtomicU64::new(0),
                started_all: std::sync::atomic::AtomicBool::new(false),
                added_at: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                stats: crate::stats::Stats::default(),
                store: Mutex::new(HashMap::new()),
                cli_send: OnceLock::new(),
            }),
        })
    }

    /// Builds the tokio runtime this server's entry in `servers.json` asks for with
    /// `"threads": N`. Without the key (or with 1) the runtime is single-threaded, like a mydog
    /// (Node) server: one core per server process, no work stealing or cross-thread wake-ups,
    /// and the least memory; a cluster uses more cores by running more servers. A server that
    /// needs more than one core (e.g. a busy frontend) sets `"threads": 2` or more.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let app = kennel::App::from_args()?;
    /// // register handlers, remotes, ...
    /// app.runtime()?.block_on(app.run())?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime, Error> {
        let threads = self.settings().map_or(1, |s| s.threads);
        let mut builder = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads);
            b
        };
        builder
            .enable_all()
            .build()
            .map_err(|e| Error::Setup(format!("cannot start the async runtime: {e}")))
    }

    // ------------------------------------------------------------------ identity

    /// This server's id.
    pub fn id(&self) -> &str {
        &self.inner.me.id
    }

    /// This server's type.
    pub fn server_type(&self) -> &str {
        &self.inner.me.server_type
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
        &self.inner.me
    }

    /// Whether this server accepts game clients.
    pub fn is_frontend(&self) -> bool {
        self.inner.me.frontend
    }

    /// The route list.
    pub fn routes(&self) -> &[String] {
        &self.inner.route_names
    }

    /// Every live server the master has told this server about (itself included).
    pub fn servers(&self) -> Vec<ServerInfo> {
        self.inner.peers.servers()
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
        self.inner.peers.ids_of_type(server_type)
    }

    // ------------------------------------------------------------------ registration

    fn with_setup(&self, f: impl FnOnce(&mut Setup)) -> &Self {
        match self.inner.setup.lock().unwrap().as_mut() {
            Some(s) => f(s),
            None => warn!("registration after App::run is ignored"),
        }
        self
    }

    /// Registers the handler of a client route (`"type.file.method"`). It runs on servers of
    /// that type; its return value is the reply (see [`Reply`]).
    pub fn handler<Req, Res, F, Fut>(&self, route: &str, f: F) -> &Self
    where
        Req: DeserializeOwned + Send + 'static,
        Res: Reply,
        F: Fn(App, Session, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Res> + Send + 'static,
    {
        let h = handler::erase_handler(f);
        self.with_setup(|s| {
            s.handlers.insert(route.to_string(), h);
        })
    }

    /// Registers an RPC remote (`"type.file.method"`), called by [`App::rpc`]. Its return
    /// value is the result; for a remote that can fail use [`App::remote_try`].
    pub fn remote<A, R, F, Fut>(&self, route: &str, f: F) -> &Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(App, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let r = handler::erase_remote(f, |r: R| handler::encode(&r));
        self.with_setup(|s| {
            s.remotes.insert(route.to_string(), r);
        })
    }

    /// Registers an RPC remote that can fail: an `Err` reaches the caller as
    /// [`RpcError::Remote`] with the error's text (not as a timeout).
    pub fn remote_try<A, R, E, F, Fut>(&self, route: &str, f: F) -> &Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
        F: Fn(App, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
    {
        let r = handler::erase_remote(f, |r: Result<R, E>| match r {
            Ok(v) => handler::encode(&v),
            Err(e) => Err(e.to_string()),
        });
        self.with_setup(|s| {
            s.remotes.insert(route.to_string(), r);
        })
    }

    /// Registers the remote of a typed route declared with [`crate::remote_route!`]: the
    /// argument and result types are the route's, checked at compile time.
    pub fn remote_typed<R, E, F, Fut>(&self, _route: R, f: F) -> &Self
    where
        R: RemoteRoute,
        E: std::fmt::Display + Send + 'static,
        F: Fn(App, R::Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Ret, E>> + Send + 'static,
    {
        self.remote_try(R::ROUTE, f)
    }

    /// Runs `f` now if this server's type is one of `types` (`"connector|chat"`; `"*"` is
    /// every type): per-type setup in one binary, as mydog's `app.configure`.
    pub fn configure(&self, types: &str, f: impl FnOnce(&App)) -> &Self {
        if types
            .split('|')
            .map(str::trim)
            .any(|t| t == "*" || t == self.server_type())
        {
            f(self);
        }
        self
    }

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

    /// Registers the route function for a backend type: it picks the server id that handles
    /// a client's messages of that type (e.g. from a session setting). Without one, a server of
    /// the type is picked by uid (or connection id) modulo their count.
    pub fn route<F>(&self, server_type: &str, f: F) -> &Self
    where
        F: Fn(&App, &Session) -> Option<String> + Send + Sync + 'static,
    {
        self.with_setup(|s| {
            s.route_fns.insert(server_type.to_string(), Arc::new(f));
        })
    }

    /// Runs when a client completes its handshake (frontends).
    pub fn on_client_on<F, Fut>(&self, f: F) -> &Self
    where
        F: Fn(App, Session) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let cb: SessionCb = Arc::new(move |a, s| Box::pin(f(a, s)));
        self.with_setup(|s| s.client_on.push(cb))
    }

    /// Runs when a client's connection closes (frontends), before its uid is forgotten.
    pub fn on_client_off<F, Fut>(&self, f: F) -> &Self
    where
        F: Fn(App, Session) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let cb: SessionCb = Arc::new(move |a, s| Box::pin(f(a, s)));
        self.with_setup(|s| s.client_off.push(cb))
    }

    /// Runs when the master announces a server (at registration, for every live one).
    pub fn on_add_server<F: Fn(App, ServerInfo) + Send + Sync + 'static>(&self, f: F) -> &Self {
        self.with_setup(|s| s.on_add.push(Arc::new(f)))
    }

    /// Runs when a server leaves the cluster.
    pub fn on_remove_server<F: Fn(App, ServerInfo) + Send + Sync + 'static>(&self, f: F) -> &Self {
        self.with_setup(|s| s.on_remove.push(Arc::new(f)))
    }

    /// Runs once, when every server of the configuration has registered (mydog's
    /// `onStartAll`), on every server.
    pub fn on_start_all<F: Fn(App) + Send + Sync + 'static>(&self, f: F) -> &Self {
        self.with_setup(|s| s.on_start_all.push(Arc::new(f)))
    }

    /// Runs when the server is asked to stop (SIGTERM/SIGINT from the master or an operator,
    /// or [`App::shutdown`]), before it closes its clients: save state here. Hooks run in
    /// registration order, all of them bounded by [`BEFORE_EXIT_TIMEOUT`] together.
    pub fn on_before_exit<F, Fut>(&self, f: F) -> &Self
    where
        F: Fn(App) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let cb: SessionlessCb = Arc::new(move |a| Box::pin(f(a)));
        self.with_setup(|s| s.before_exit.push(cb))
    }

    /// Adds a `before` filter, run in registration order on the server that handles a client
    /// message, before its handler; returning `false` stops the message (no handler, no reply).
    pub fn before<F>(&self, f: F) -> &Self
    where
        F: Fn(&App, &Session, &str, &[u8]) -> bool + Send + Sync + 'static,
    {
        self.with_setup(|s| s.before.push(Arc::new(f)))
    }

    /// Adds an `after` filter, run in registration order after a handler with its encoded
    /// reply (`None` when it did not reply).
    pub fn after<F>(&self, f: F) -> &Self
    where
        F: Fn(&App, &Session, &str, Option<&[u8]>) + Send + Sync + 'static,
    {
        self.with_setup(|s| s.after.push(Arc::new(f)))
    }

    /// Adds a `global_before` filter, run on the frontend on every client message (raw `cmd`
    /// and payload) before routing; returning `false` drops the message.
    pub fn global_before<F>(&self, f: F) -> &Self
    where
        F: Fn(&App, &Session, u16, &[u8]) -> bool + Send + Sync + 'static,
    {
        self.with_setup(|s| s.global_before.push(Arc::new(f)))
    }

    /// Sets the codec of message bodies on the client wire (default [`crate::codec::Json`]).
    pub fn set_message_codec(&self, c: impl MessageCodec) -> &Self {
        self.with_setup(|s| s.codecs.message = Arc::new(c))
    }

    /// Sets the client framing (default [`crate::codec::MydogProtocol`], PROTOCOL.md).
    pub fn set_protocol(&self, p: impl ProtocolCodec) -> &Self {
        self.with_setup(|s| s.codecs.protocol = Arc::new(p))
    }

    /// Sets the frontend connector's settings: a base that the connector keys of this
    /// server's `servers.json` entry (checked when the project loaded) override.
    pub fn set_connector(&self, cfg: ConnectorConfig) -> &Self {
        self.with_setup(|s| s.connector = cfg)
    }

    /// kennel's settings of this server's entry (checked when the project loaded).
    fn settings(&self) -> Option<&kennel_config::settings::ServerSettings> {
        self.inner.project.server(self.id()).map(|s| &s.settings)
    }

    fn frozen(&self) -> &Frozen {
        self.inner.frozen.get().expect("App::run has started")
    }

    pub(crate) fn codecs(&self) -> &Codecs {
        &self.frozen().reg.codecs
    }

    /// A decoder for a new client: pre-handshake limit until the handshake is done.
    pub(crate) fn frame_decoder(&self) -> FrameDecoder {
        FrameDecoder {
            protocol: self.codecs().protocol.clone(),
            max_len: 1 + kennel_proto::client::PRE_HANDSHAKE_MAX_BODY,
        }
    }

    /// A reply/push frame for clients of this frontend from a JSON body; `None` (logged) when
    /// the message codec cannot encode it.
    pub(crate) fn client_frame(&self, cmd: u16, json: Bytes) -> Option<Bytes> {
        let encoded = self.guard("message codec", self.route_name(cmd), None, || {
            self.codecs().message(cmd, json)
        });
        match encoded.ok()? {
            Ok(f) => Some(f),
            Err(e) => {
                warn!(
                    cmd,
                    "message codec cannot encode an outgoing message: {e}; dropped"
                );
                None
            }
        }
    }

    pub(crate) fn connector_config(&self) -> ConnectorConfig {
        self.frozen().reg.connector.clone()
    }

    /// Replaces the RPC settings read from the master config's `rpc` key.
    pub fn set_rpc_config(&self, cfg: RpcConfig) -> &Self {
        self.with_setup(|s| s.rpc = Some(cfg))
    }

    /// The RPC settings in effect (after [`App::run`] has started).
    pub fn rpc_config(&self) -> &RpcConfig {
        &self.frozen().rpc
    }

    pub(crate) fn rpc_timeout(&self) -> Duration {
        self.rpc_config().timeout
    }

    pub(crate) fn reconnect_delay(&self) -> Duration {
        self.rpc_config().reconnect_delay
    }

    fn freeze(&self) -> Result<(), Error> {
        let setup = self
            .inner
            .setup
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| Error::Setup("App::run called twice".into()))?;
        let mut setup = setup;
        let mut handlers = vec![None; self.inner.routes.len()];
        for (route, h) in std::mem::take(&mut setup.handlers) {
            let Some(&cmd) = self.inner.route_index.get(&route) else {
                return Err(Error::Setup(format!(
                    "handler for {route:?}, which is not in the route list"
                )));
            };
            let r = &self.inner.routes[cmd as usize];
            if r.server_type.as_deref() == Some(self.server_type()) {
                handlers[cmd as usize] = Some(h);
            }
        }
        // The entry's connector keys (checked at load) override the base set in code.
        if let (true, Some(me)) = (self.is_frontend(), self.settings()) {
            me.connector.apply_to(&mut setup.connector);
        }
        let rpc = match setup.rpc.take() {
            Some(c) => c,
            None => self.inner.project.master.settings.rpc.clone(),
        };
        let _ = self.inner.frozen.set(Frozen {
            handlers,
            rpc,
            reg: setup,
        });
        Ok(())
    }

    // ------------------------------------------------------------------ running

    /// Runs the server until SIGTERM/SIGINT or [`App::shutdown`]: binds the RPC port (and the
    /// client port on frontends), registers with the master, joins the mesh.
    pub async fn run(&self) -> Result<(), Error> {
        self.freeze()?;
        let me = &self.inner.me;
        let shutdown = self.inner.shutdown.clone();
        let rpc_addr = format!("{}:{}", me.host, me.port);
        let peer_listener = TcpListener::bind(&rpc_addr)
            .await
            .map_err(|source| Error::Bind {
                what: "rpc",
                addr: rpc_addr.clone(),
                source,
            })?;
        tokio::spawn(peers::accept_loop(
            self.clone(),
            peer_listener,
            shutdown.clone(),
        ));
        tokio::spawn(peers::expire_calls(self.clone(), shutdown.clone()));
        if let (true, Some(port)) = (me.frontend, me.client_port) {
            let addr = format!("{}:{}", me.host, port);
            let l = TcpListener::bind(&addr)
                .await
                .map_err(|source| Error::Bind {
                    what: "clients",
                    addr: addr.clone(),
                    source,
                })?;
            let bound = l.local_addr().map_err(|source| Error::Bind {
                what: "clients",
                addr,
                source,
            })?;
            connector::log_listening(self, &bound, self.connector_config().transport);
            tokio::spawn(connector::accept_loop(self.clone(), l, shutdown.clone()));
        }
        info!(id = self.id(), server_type = self.server_type(), rpc = %rpc_addr, "server started");
        let master = tokio::spawn(master_link::run(self.clone(), shutdown.clone()));
        let signals = wait_for_signal();
        tokio::pin!(master);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            s = signals => info!(signal = s, "stopping"),
            r = &mut master => {
                shutdown.cancel();
                if let Ok(Err(e)) = r {
                    return Err(e);
                }
            }
        }
        // Before-exit hooks run while the server still serves (unless stopped by a fatal
        // master refusal), bounded in time.
        let hooks = async {
            for cb in &self.frozen().reg.before_exit {
                if let Err(p) = dispatch::guarded(async { cb(self.clone()).await }).await {
                    self.panicked("on_before_exit", "on_before_exit", None, &p);
                }
            }
        };
        if tokio::time::timeout(BEFORE_EXIT_TIMEOUT, hooks)
            .await
            .is_err()
        {
            warn!(
                "before-exit hooks did not finish within {BEFORE_EXIT_TIMEOUT:?}; stopping anyway"
            );
        }
        shutdown.cancel();
        // Close clients (each flushes its queue first).
        for s in self.inner.frontend.all() {
            s.close();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.inner.frontend.count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!("stopped");
        Ok(())
    }

    /// Asks [`App::run`] to stop.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    // ------------------------------------------------------------------ servers

    pub(crate) fn server_added(&self, info: ServerInfo) {
        let id = info.id.clone();
        self.inner
            .added_at
            .lock()
            .unwrap()
            .insert(id.clone(), Instant::now());
        if self.inner.peers.add(self, info.clone()) {
            if id != self.id() {
                info!(server = %id, "server added");
            }
            for cb in &self.frozen().reg.on_add {
                let _ = self.guard("on_add_server", "on_add_server", None, || {
                    cb(self.clone(), info.clone())
                });
            }
        }
        self.check_start_all();
    }

    /// Fires `on_start_all` once every configured server is known.
    fn check_start_all(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.started_all.load(Ordering::Acquire) {
            return;
        }
        let known = self.inner.peers.ids();
        let all = self
            .inner
            .project
            .servers
            .iter()
            .all(|s| known.contains(&s.id));
        if all && !self.inner.started_all.swap(true, Ordering::AcqRel) {
            info!("every configured server has registered");
            for cb in &self.frozen().reg.on_start_all {
                let _ = self.guard("on_start_all", "on_start_all", None, || cb(self.clone()));
            }
            release_free_heap();
        }
    }

    pub(crate) fn server_removed(&self, id: &str) {
        if id == self.id() {
            return;
        }
        if let Some(info) = self.inner.peers.remove(id) {
            info!(server = %id, "server removed");
            for cb in &self.frozen().reg.on_remove {
                let _ = self.guard("on_remove_server", "on_remove_server", None, || {
                    cb(self.clone(), info.clone())
                });
            }
        }
    }

    pub(crate) fn added_since(&self, id: &str, t: Instant) -> bool {
        self.inner
            .added_at
            .lock()
            .unwrap()
            .get(id)
            .is_some_and(|a| *a > t)
    }

    // ------------------------------------------------------------------ clients

    /// Runs the `client on` callbacks, each behind a panic boundary (one that panics is
    /// reported; the others still run and the connection goes on).
    pub(crate) async fn client_on(&self, s: &Session) {
        for cb in &self.frozen().reg.client_on {
            if let Err(p) = dispatch::guarded(async { cb(self.clone(), s.clone()).await }).await {
                self.panicked("on_client_on", "on_client_on", s.uid(), &p);
            }
        }
    }

    /// Runs the `client off` callbacks, each behind a panic boundary (one that panics is
    /// reported; the others still run).
    pub(crate) async fn client_off(&self, s: &Session) {
        for cb in &self.frozen().reg.client_off {
            if let Err(p) = dispatch::guarded(async { cb(self.clone(), s.clone()).await }).await {
                self.panicked("on_client_off", "on_client_off", s.uid(), &p);
            }
        }
    }

    // ------------------------------------------------------------------ panic boundaries

    /// Runs game code `f` behind a panic boundary: a panic is reported ([`App::panicked`]) and
    /// returned. `what` names the code in the log; `route` (a route, or a callback's name) is
    /// the counter's label; the uid is read from `session` only when `f` panics.
    pub(crate) fn guard<R>(
        &self,
        what: &'static str,
        route: &str,
        session: Option<&Session>,
        f: impl FnOnce() -> R,
    ) -> Result<R, Panic> {
        dispatch::catch(f)
            .inspect_err(|p| self.panicked(what, route, session.and_then(Session::uid), p))
    }

    /// Reports a panic caught in game code: an error line with this server's id, the route
    /// (or callback), the uid (`-` when there is none) and the panic's message (Rust's panic
    /// hook has printed where it happened just before), and one more in
    /// `kennel_panics_total{route}`.
    pub(crate) fn panicked(&self, what: &str, route: &str, uid: Option<u64>, p: &Panic) {
        error!(
            server = self.id(),
            route,
            uid = %Uid(uid),
            "{what} panicked: {}; only that call failed, the server goes on",
            p.message()
        );
        self.inner.stats.panic(route);
    }

    /// The name of route `cmd` (`-` outside the route list).
    fn route_name(&self, cmd: u16) -> &str {
        self.inner
            .routes
            .get(cmd as usize)
            .map_or("-", |r| r.name.as_str())
    }

    /// Routes one client message (frontend). An error closes the connection.
    pub(crate) async fn route_client_message(
        &self,
        session: &Session,
        cmd: u16,
        payload: Bytes,
    ) -> Result<(), String> {
        let Some(route) = self.inner.routes.get(cmd as usize) else {
            return Err(format!(
                "cmd {cmd} is outside the route list ({} routes)",
                self.inner.routes.len()
            ));
        };
        let filters = &self.frozen().reg.global_before;
        if !filters.is_empty() {
            let pass = self.guard("global_before filter", &route.name, Some(session), || {
                filters.iter().all(|f| f(self, session, cmd, &payload))
            });
            if !matches!(pass, Ok(true)) {
                return Ok(());
            }
        }
        let decoded = self.guard("message codec", &route.name, Some(session), || {
            self.codecs().message.decode(cmd, payload)
        });
        let payload = match decoded {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                warn!(route = %route.name, conn = session.conn_id(), "message codec cannot decode the client's message: {e}; dropped");
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
        let Some(server_type) = &route.server_type else {
            warn!(route = %route.name, "client sent a push-only route; ignored");
            return Ok(());
        };
        if server_type == self.server_type() {
            self.run_handler(session.clone(), cmd, payload);
            return Ok(());
        }
        let target = match self.pick_server(server_type, &route.name, session) {
            Ok(Some(target)) => target,
            Ok(None) => {
                warn!(route = %route.name, uid = ?session.uid(), "no {server_type} server to route to; message dropped");
                return Ok(());
            }
            // Reported: the message is dropped.
            Err(_) => return Ok(()),
        };
        if !self.inner.peers.is_of_type(&target, server_type) {
            warn!(route = %route.name, server = %target, "route function picked a server that is not a live {server_type} server; message dropped");
            return Ok(());
        }
        // A known server not linked yet (booting, reconnecting) is waited for, which also holds
        // this connection's later messages back, keeping their order; at most `rpc.timeout`
        // after its link went down, in total (then forwards to it fail at once).
        let link = match self
            .inner
            .peers
            .forward_link(self, &target, &route.name, self.rpc_timeout())
            .await
        {
            Ok(l) => l,
            Err(e) => {
                self.forward_refused(&route.name, session, &target, &e.to_string());
                return Ok(());
            }
        };
        let forward = if session.sid() == self.id() {
            session.to_forward()
        } else {
            session.to_proto()
        };
        let m = peers::msg(peer_msg::Msg::Client(ClientRequest {
            session: Some(forward),
            cmd: cmd as u32,
            payload,
        }));
        // Waits only when the link holds 8 MiB already, and never past the moment it counts as
        // congested (then every forward fails at once): a stopped backend holds this
        // connection at most `rpc.timeout` in all.
        if let Err(e) = link.forward(m).await {
            let why = e.describe(&target, self.rpc_timeout());
            self.forward_refused(&route.name, session, &target, &why);
        }
        Ok(())
    }

    /// Counts a client message that could not be forwarded and logs it (one line a second
    /// at most, with how many were held back).
    fn forward_refused(&self, route: &str, session: &Session, target: &str, why: &str) {
        self.inner
            .stats
            .drops
            .dropped(crate::stats::Dropped::Forward);
        if let Some(more) = self.inner.peers.refusal_log.tick() {
            let uid = session
                .uid()
                .map_or_else(|| "-".to_string(), |u| u.to_string());
            warn!(route, %uid, conn = session.conn_id(), server = %target, more, "cannot forward: {why}; message dropped");
        }
    }

    /// The server of `server_type` that handles `route` for `session`: the route function's
    /// pick (behind a panic boundary), or one by uid (connection id) modulo the servers.
    fn pick_server(
        &self,
        server_type: &str,
        route: &str,
        session: &Session,
    ) -> Result<Option<String>, Panic> {
        if let Some(f) = self.frozen().reg.route_fns.get(server_type) {
            return self.guard("route function", route, Some(session), || f(self, session));
        }
        let list = self.server_ids_of_type(server_type);
        if list.is_empty() {
            return Ok(None);
        }
        let key = session.uid().unwrap_or(session.conn_id());
        Ok(Some(list[(key % list.len() as u64) as usize].clone()))
    }

    /// Runs the local handler of `cmd` in arrival order and sends its reply to the client.
    fn run_handler(&self, session: Session, cmd: u16, payload: Bytes) {
        let Some(h) = self
            .frozen()
            .handlers
            .get(cmd as usize)
            .and_then(|h| h.clone())
        else {
            warn!(route = %self.inner.routes[cmd as usize].name, "no handler registered; message ignored");
            return;
        };
        let frozen = self.frozen();
        let route = self.inner.routes[cmd as usize].name.as_str();
        let filters = &frozen.reg.before;
        if !filters.is_empty() {
            let pass = self.guard("before filter", route, Some(&session), || {
                filters.iter().all(|f| f(self, &session, route, &payload))
            });
            if !matches!(pass, Ok(true)) {
                return;
            }
        }
        // The handler runs inline until it first waits; the rest is then its own task. A panic
        // anywhere in it fails this request only (no reply).
        let Ok(mut fut) = self.guard("handler", route, Some(&session), || {
            h(self.clone(), session.clone(), payload)
        }) else {
            return;
        };
        match poll_now(&mut fut) {
            Poll::Ready(Ok(r)) => self.handler_done(session, cmd, r),
            Poll::Ready(Err(p)) => self.panicked("handler", route, session.uid(), &p),
            Poll::Pending => {
                let app = self.clone();
                // A frontend handler counts against its connection's `maxInFlight` until done.
                let in_flight = session.conn().map(|c| c.handler_started());
                spawn_rest(fut, move |r| {
                    match r {
                        Ok(r) => app.handler_done(session, cmd, r),
                        Err(p) => app.panicked("handler", app.route_name(cmd), session.uid(), &p),
                    }
                    drop(in_flight);
                });
            }
        }
    }

    /// Runs the after filters on a handler's result and queues its reply.
    fn handler_done(&self, session: Session, cmd: u16, r: Result<Option<Bytes>, String>) {
        let route = self.inner.routes[cmd as usize].name.as_str();
        let reply = match r {
            Ok(r) => r,
            Err(e) => {
                warn!(route, uid = ?session.uid(), "handler failed: {e}");
                None
            }
        };
        let filters = &self.frozen().reg.after;
        if !filters.is_empty() {
            let _ = self.guard("after filter", route, Some(&session), || {
                for f in filters {
                    f(self, &session, route, reply.as_deref());
                }
            });
        }
        if let Some(reply) = reply {
            self.reply_now(session, cmd, reply);
        }
    }

    /// Queues a reply without waiting: directly to a client of this frontend, or on the link
    /// to the client's frontend when it is up with room; otherwise a task waits to send it.
    fn reply_now(&self, session: Session, cmd: u16, payload: Bytes) {
        if let Some(conn) = session.conn() {
            if let Some(f) = self.client_frame(cmd, payload) {
                conn.send(f);
            }
            return;
        }
        if session.sid() == self.id() {
            if let Some(f) = self.client_frame(cmd, payload) {
                self.inner.frontend.deliver(&f, &[session.conn_id()], &[]);
            }
            return;
        }
        if let Ok(Ok(link)) = self.inner.peers.link_now(self, session.sid()) {
            link.send_now(peers::msg(peer_msg::Msg::Push(ClientPush {
                cmd: cmd as u32,
                payload,
                conn_ids: vec![session.conn_id()],
                uids: vec![],
            })));
            return;
        }
        let app = self.clone();
        tokio::spawn(async move { app.reply(&session, cmd, payload).await });
    }

    /// Sends an encoded reply to the session's client, directly or through its frontend.
    async fn reply(&self, session: &Session, cmd: u16, payload: Bytes) {
        if let Some(conn) = session.conn() {
            if let Some(f) = self.client_frame(cmd, payload) {
                conn.send(f);
            }
            return;
        }
        self.push_remote(session.sid(), cmd, payload, vec![session.conn_id()], vec![])
            .await;
    }

    async fn push_remote(
        &self,
        sid: &str,
        cmd: u16,
        payload: Bytes,
        conn_ids: Vec<u64>,
        uids: Vec<u64>,
    ) {
        if sid == self.id() {
            if let Some(f) = self.client_frame(cmd, payload) {
                self.inner.frontend.deliver(&f, &conn_ids, &uids);
            }
            return;
        }
        let link = match self
            .inner
            .peers
            .wait_link(self, sid, "push", self.rpc_timeout())
            .await
        {
            Ok(l) => l,
            Err(e) => {
                warn!(frontend = sid, "cannot push: {e}; dropped");
                return;
            }
        };
        let m = peers::msg(peer_msg::Msg::Push(ClientPush {
            cmd: cmd as u32,
            payload,
            conn_ids,
            uids,
        }));
        if let Err(e) = link.send(m).await {
            warn!(
                frontend = sid,
                "cannot push: {}; dropped",
                e.describe(sid, self.rpc_timeout())
            );
        }
    }

    /// Handles one message from a peer link.
    pub(crate) fn on_peer_msg(&self, link: &Arc<Link>, m: peer_msg::Msg) {
        match m {
            peer_msg::Msg::Client(req) => {
                let session =
                    Session::from_proto(self, req.session.unwrap_or_default(), link.peer_sid());
                let cmd = req.cmd as u16;
                if (cmd as usize) >= self.inner.routes.len() {
                    warn!(
                        from = link.peer(),
                        cmd, "forwarded cmd outside the route list; ignored"
                    );
                    return;
                }
                self.run_handler(session, cmd, req.payload);
            }
            peer_msg::Msg::Push(p) => {
                if let Some(f) = self.client_frame(p.cmd as u16, p.payload) {
                    self.inner.frontend.deliver(&f, &p.conn_ids, &p.uids);
                }
            }
            peer_msg::Msg::Rpc(req) => {
                // The remote runs inline until it first waits; the rest is then its own task. A
                // panic anywhere in it is the call's error.
                let id = req.id;
                let mut fut = match self.guard("remote", &req.route, None, || {
                    self.start_remote(&req.route, req.args)
                }) {
                    Ok(Ok(fut)) => fut,
                    Ok(Err(e)) => return remote_done(link, id, &req.route, Err(e)),
                    Err(p) => {
                        let e = self.remote_panic(&req.route, &p);
                        return remote_done(link, id, &req.route, Err(e));
                    }
                };
                match poll_now(&mut fut) {
                    Poll::Ready(r) => {
                        let r = self.remote_finished(&req.route, r);
                        remote_done(link, id, &req.route, r);
                    }
                    Poll::Pending => {
                        let (app, link) = (self.clone(), link.clone());
                        spawn_rest(fut, move |r| {
                            let r = app.remote_finished(&req.route, r);
                            remote_done(&link, id, &req.route, r);
                        });
                    }
                }
            }
            peer_msg::Msg::RpcReply(r) => {
                let result = if r.error.is_empty() {
                    Ok(r.result)
                } else {
                    Err(RpcError::Remote {
                        server: link.peer().to_string(),
                        route: String::new(),
                        message: r.error,
                    })
                };
                link.complete(r.id, result);
            }
            // Liveness is any traffic: both ends ping an idle link, so no pong is needed.
            peer_msg::Msg::Ping(_) | peer_msg::Msg::Pong(_) => {}
            peer_msg::Msg::Apply(a) => match self.inner.frontend.by_conn(a.conn_id) {
                Some(s) => {
                    if let Err(e) = s.replace_settings(&a.settings) {
                        warn!(
                            from = link.peer(),
                            conn = a.conn_id,
                            "session apply with bad settings: {e}"
                        );
                    }
                }
                None => debug!(conn = a.conn_id, "session apply for a client that has left"),
            },
        }
    }

    /// Sends a backend session copy's settings to its frontend.
    pub(crate) async fn apply_session(&self, s: &Session) {
        let apply = SessionApply {
            conn_id: s.conn_id(),
            settings: s.settings_json(),
        };
        if s.sid() == self.id() {
            if let Some(live) = self.inner.frontend.by_conn(apply.conn_id) {
                let _ = live.replace_settings(&apply.settings);
            }
            return;
        }
        match self
            .inner
            .peers
            .wait_link(self, s.sid(), "session apply", self.rpc_timeout())
            .await
        {
            Ok(link) => {
                if let Err(e) = link.send(peers::msg(peer_msg::Msg::Apply(apply))).await {
                    let why = e.describe(s.sid(), self.rpc_timeout());
                    warn!(frontend = s.sid(), "session apply not delivered: {why}");
                }
            }
            Err(e) => warn!(frontend = s.sid(), "session apply not delivered: {e}"),
        }
    }

    /// Runs a local remote (behind a panic boundary: a panic is the call's error).
    pub(crate) async fn run_remote(&self, route: &str, args: Bytes) -> Result<Bytes, RpcError> {
        let fut = match self.guard("remote", route, None, || self.start_remote(route, args)) {
            Ok(fut) => fut?,
            Err(p) => return Err(self.remote_panic(route, &p)),
        };
        let r = dispatch::guarded(fut).await;
        self.remote_finished(route, r)
    }

    /// Starts a local remote: its future (an `Err` is the remote's error text), or
    /// `NoRemote`.
    fn start_remote(
        &self,
        route: &str,
        args: Bytes,
    ) -> Result<BoxFuture<Result<Bytes, String>>, RpcError> {
        match self.frozen().reg.remotes.get(route) {
            Some(r) => Ok(r(self.clone(), args)),
            None => Err(RpcError::NoRemote {
                server: self.id().to_string(),
                route: route.to_string(),
            }),
        }
    }

    /// What a remote's work ended with: its result, its error, or its panic (reported).
    fn remote_finished(
        &self,
        route: &str,
        r: Result<Result<Bytes, String>, Panic>,
    ) -> Result<Bytes, RpcError> {
        match r {
            Ok(r) => r.map_err(|m| self.remote_error(route, m)),
            Err(p) => {
                self.panicked("remote", route, None, &p);
                Err(self.remote_panic(route, &p))
            }
        }
    }

    /// The error a caller gets from a remote that panicked.
    fn remote_panic(&self, route: &str, p: &Panic) -> RpcError {
        self.remote_error(route, format!("panicked: {}", p.message()))
    }

    /// A local remote's failure.
    fn remote_error(&self, route: &str, message: String) -> RpcError {
        RpcError::Remote {
            server: self.id().to_string(),
            route: route.to_string(),
            message,
        }
    }

    // ------------------------------------------------------------------ RPC and push

    /// An RPC handle for server `server_id` (this server's own id calls locally).
    pub fn rpc(&self, server_id: &str) -> Rpc {
        Rpc::new(self.clone(), server_id.to_string())
    }

    fn cmd_of(&self, route: &str) -> Result<u16, PushError> {
        self.inner
            .route_index
            .get(route)
            .copied()
            .ok_or_else(|| PushError::UnknownRoute(route.to_string()))
    }

    /// Pushes `msg` as `route` to clients grouped by frontend: `{frontend id: [uids]}`.
    /// The message is encoded once.
    pub async fn send_by_group(
        &self,
        route: &str,
        msg: &impl Serialize,
        group: &HashMap<String, Vec<u64>>,
    ) -> Result<(), PushError> {
        let cmd = self.cmd_of(route)?;
        let payload = Bytes::from(serde_json::to_vec(msg)?);
        for (sid, uids) in group {
            if !uids.is_empty() {
                self.push_remote(sid, cmd, payload.clone(), vec![], uids.clone())
                    .await;
            }
        }
        Ok(())
    }

    /// Pushes `msg` as `route` to `(uid, frontend id)` pairs.
    pub async fn send_by_uid_sid(
        &self,
        route: &str,
        msg: &impl Serialize,
        targets: &[(u64, String)],
    ) -> Result<(), PushError> {
        let mut group: HashMap<String, Vec<u64>> = HashMap::new();
        for (uid, sid) in targets {
            group.entry(sid.clone()).or_default().push(*uid);
        }
        self.send_by_group(route, msg, &group).await
    }

    /// Pushes `msg` as `route` to clients of this frontend bound to `uids`.
    pub fn send_by_uid(
        &self,
        route: &str,
        msg: &impl Serialize,
        uids: &[u64],
    ) -> Result<(), PushError> {
        if !self.is_frontend() {
            return Err(PushError::NotFrontend("send_by_uid"));
        }
        let cmd = self.cmd_of(route)?;
        let frame = self.push_frame(cmd, msg)?;
        self.inner.frontend.deliver(&frame, &[], uids);
        Ok(())
    }

    /// Pushes `msg` as `route` to every client of this frontend (encoded once).
    pub fn send_all(&self, route: &str, msg: &impl Serialize) -> Result<(), PushError> {
        if !self.is_frontend() {
            return Err(PushError::NotFrontend("send_all"));
        }
        let cmd = self.cmd_of(route)?;
        let frame = self.push_frame(cmd, msg)?;
        for s in self.inner.frontend.all() {
            if let Some(c) = s.conn() {
                c.send(frame.clone());
            }
        }
        Ok(())
    }

    fn push_frame(&self, cmd: u16, msg: &impl Serialize) -> Result<Bytes, PushError> {
        let json = Bytes::from(serde_json::to_vec(msg)?);
        self.codecs().message(cmd, json).map_err(PushError::Codec)
    }

    /// The session of the client bound to `uid` on this frontend.
    pub fn session_by_uid(&self, uid: u64) -> Option<Session> {
        self.inner.frontend.by_uid(uid)
    }

    /// Number of clients connected to this frontend.
    pub fn client_count(&self) -> usize {
        self.inner.frontend.count()
    }

    /// Pushes `msg` as `route` to one client through its session.
    pub async fn send_to(
        &self,
        session: &Session,
        route: &str,
        msg: &impl Serialize,
    ) -> Result<(), PushError> {
        let cmd = self.cmd_of(route)?;
        let payload = Bytes::from(serde_json::to_vec(msg)?);
        self.reply(session, cmd, payload).await;
        Ok(())
    }
}

/// A uid in a log line: the number, or `-` for a session not bound (or no session).
pub(crate) struct Uid(pub(crate) Option<u64>);

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(uid) => write!(f, "{uid}"),
            None => f.write_str("-"),
        }
    }
}

/// Answers a remote call (`id` 0 is a notify: a failure is logged, nothing goes back).
fn remote_done(link: &Arc<Link>, id: u64, route: &str, r: Result<Bytes, RpcError>) {
    if id == 0 {
        if let Err(e) = r {
            warn!(route, from = link.peer(), "notify failed: {e}");
        }
        return;
    }
    let reply = match r {
        Ok(result) => RpcResponse {
            id,
            result,
            error: String::new(),
        },
        // The remote's own message travels; the caller adds server and route.
        Err(RpcError::Remote { message, .. }) => RpcResponse {
            id,
            result: Bytes::new(),
            error: message,
        },
        Err(e) => RpcResponse {
            id,
            result: Bytes::new(),
            error: e.to_string(),
        },
    };
    link.send_now(peers::msg(peer_msg::Msg::RpcReply(reply)));
}

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

/// Start-up is over (config parsing, registration): hands the whole free pages of the heap back
/// to the kernel. glibc returns only the top of the heap by itself; the start-up's garbage in
/// the middle (about 100-200 KB per server) would stay resident for the server's lifetime.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
