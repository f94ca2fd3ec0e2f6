//! Registration: every method a game calls on [`App`] before [`App::run`] to say what its
//! server does (handlers, remotes, route functions, filters, callbacks, codecs, connector and
//! RPC settings), collected in [`Setup`] and frozen by `run` ([`App::freeze`]): the game code
//! goes to the router, the app's callbacks to `run.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::app::run::Callbacks;
use crate::edge::codec::{Codecs, MessageCodec, ProtocolCodec};
use crate::routing::GameCode;
use crate::routing::handler::{
    self, AfterFn, AppCb, BeforeFn, CliSendCb, GlobalFn, HandlerFn, RemoteFn, RouteFn, ServerCb,
    SessionCb, SessionlessCb,
};
use crate::{App, ConnectorConfig, Error, RemoteRoute, Reply, RpcConfig, ServerInfo, Session};

/// Registrations, until `run` freezes them.
#[derive(Default)]
pub(crate) struct Setup {
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
    codecs: Codecs,
}

/// A client on/off callback, erased.
fn session_cb<F, Fut>(f: F) -> SessionCb
where
    F: Fn(App, Session) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |a, s| Box::pin(f(a, s)))
}

impl App {
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
    /// [`crate::RpcError::Remote`] with the error's text (not as a timeout).
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
        let cb = session_cb(f);
        self.with_setup(|s| s.client_on.push(cb))
    }

    /// Runs when a client's connection closes (frontends), before its uid is forgotten.
    pub fn on_client_off<F, Fut>(&self, f: F) -> &Self
    where
        F: Fn(App, Session) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let cb = session_cb(f);
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
    /// registration order, all of them bounded by [`crate::BEFORE_EXIT_TIMEOUT`] together.
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

    /// Replaces the RPC settings read from the master config's `rpc` key. Refused (with a
    /// warning) once they have been read: by [`App::rpc_config`], an RPC, or [`App::run`].
    pub fn set_rpc_config(&self, cfg: RpcConfig) -> &Self {
        if !self.mesh().set_config(cfg) {
            warn!(
                "set_rpc_config after the RPC settings were read (App::rpc_config, an RPC or App::run) is ignored"
            );
        }
        self
    }

    /// Answers `kennel send [--id ..] [--type ..] args...`: `f` gets the arguments and returns
    /// the text the CLI prints for this server (`Err`: printed as this server's error). Set
    /// once; a server without a handler answers with an error.
    pub fn on_cli_send<F, Fut>(&self, f: F) -> &Self
    where
        F: Fn(App, Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let cb: CliSendCb = Arc::new(move |app, args| Box::pin(f(app, args)));
        if self.inner.cli_send.set(cb).is_err() {
            warn!("on_cli_send called twice; keeping the first handler");
        }
        self
    }

    /// Freezes the registrations (`App::run`, once): the game code goes to the router, the
    /// app's callbacks are returned with the connector's settings (the server entry's keys
    /// applied on frontends).
    pub(crate) fn freeze(&self) -> Result<(Callbacks, ConnectorConfig), Error> {
        let mut setup = self
            .inner
            .setup
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| Error::Setup("App::run called twice".into()))?;
        let router = self.router();
        let mut handlers = vec![None; router.len()];
        for (route, h) in std::mem::take(&mut setup.handlers) {
            let Ok(cmd) = router.cmd_of(&route) else {
                return Err(Error::Setup(format!(
                    "handler for {route:?}, which is not in the route list"
                )));
            };
            if router.server_type(cmd) == Ok(Some(self.server_type())) {
                handlers[cmd as usize] = Some(h);
            }
        }
        // The entry's connector keys (checked at load) override the base set in code.
        if let (true, Some(me)) = (self.is_frontend(), self.settings()) {
            me.connector.apply_to(&mut setup.connector);
        }
        let code = GameCode {
            handlers,
            remotes: setup.remotes,
            route_fns: setup.route_fns,
            before: setup.before,
            after: setup.after,
            global_before: setup.global_before,
            client_on: setup.client_on,
            client_off: setup.client_off,
            codecs: setup.codecs,
        };
        if !router.freeze(code) {
            return Err(Error::Setup("App::run called twice".into()));
        }
        let callbacks = Callbacks {
            on_add: setup.on_add,
            on_remove: setup.on_remove,
            on_start_all: setup.on_start_all,
            before_exit: setup.before_exit,
        };
        Ok((callbacks, setup.connector))
    }
}
