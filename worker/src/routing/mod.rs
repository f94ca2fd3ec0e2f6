//! Routing: what a message means and where it goes. The route table and the game's code
//! ([`Router`]); a client message on its frontend ([`inbound`]: the local handler, or forwarded
//! to the backend a route function picks, with a copy of the session); a message from a peer
//! ([`peer_msg`]: forwarded client messages, pushes, remote calls, session applies); and the
//! one way back to clients ([`deliver`]: replies, pushes, session applies).
//!
//! Every piece of game code runs here behind a panic boundary ([`dispatch`]): a panic is
//! logged (server, route, uid, message), counted by route, and fails only that piece of work.
//! A client request that panics gets no reply (the client protocol has no error frame); an RPC
//! call gets [`crate::RpcError::Remote`] with `panicked: <message>`.
//!
//! Routing sits between the app above and the mesh and edge below: it implements
//! [`crate::mesh::PeerHandler`] and [`crate::edge::ClientSink`], the two ways messages come up.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};

use kennel_proto::client::route_md5;

use crate::edge::codec::Codecs;
use crate::panic::Panic;
use crate::stats::LogThrottle;
use crate::{App, PushError, Session};

pub(crate) mod deliver;
pub(crate) mod dispatch;
pub(crate) mod handler;
pub(crate) mod inbound;
pub(crate) mod peer_msg;
pub(crate) mod remote;
pub(crate) mod session;

use handler::{AfterFn, BeforeFn, GlobalFn, HandlerFn, RemoteFn, RouteFn, SessionCb};

/// One entry of the route list.
struct Route {
    name: String,
    /// `None` for push-only routes (no dots).
    server_type: Option<String>,
}

/// The game code routing runs, frozen by `App::run`.
#[derive(Default)]
pub(crate) struct GameCode {
    /// Handler per `cmd` (routes of this server's type only).
    pub(crate) handlers: Vec<Option<HandlerFn>>,
    pub(crate) remotes: HashMap<String, RemoteFn>,
    /// Route function per backend type.
    pub(crate) route_fns: HashMap<String, RouteFn>,
    pub(crate) before: Vec<BeforeFn>,
    pub(crate) after: Vec<AfterFn>,
    pub(crate) global_before: Vec<GlobalFn>,
    pub(crate) client_on: Vec<SessionCb>,
    pub(crate) client_off: Vec<SessionCb>,
    pub(crate) codecs: Codecs,
}

/// The route table (from `route.json`) and the game code, frozen when the server starts.
pub(crate) struct Router {
    routes: Vec<Route>,
    index: HashMap<String, u16>,
    names: Vec<String>,
    md5: String,
    code: OnceLock<GameCode>,
    /// Limits the log lines about messages for clients that could not be delivered.
    pub(crate) undelivered_log: LogThrottle,
}

impl Router {
    /// The router of a route list.
    pub(crate) fn new(names: &[String]) -> Router {
        Router {
            routes: names
                .iter()
                .map(|r| Route {
                    name: r.clone(),
                    server_type: r.split_once('.').map(|(t, _)| t.to_string()),
                })
                .collect(),
            index: names
                .iter()
                .enumerate()
                .map(|(i, r)| (r.clone(), i as u16))
                .collect(),
            md5: route_md5(names),
            names: names.to_vec(),
            code: OnceLock::new(),
            undelivered_log: LogThrottle::new(),
        }
    }

    /// The route list.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// The md5 of the route list (the client handshake's).
    pub(crate) fn md5(&self) -> &str {
        &self.md5
    }

    /// Number of routes.
    pub(crate) fn len(&self) -> usize {
        self.routes.len()
    }

    /// The `cmd` of a route.
    pub(crate) fn cmd_of(&self, route: &str) -> Result<u16, PushError> {
        self.index
            .get(route)
            .copied()
            .ok_or_else(|| PushError::UnknownRoute(route.to_string()))
    }

    /// The name of route `cmd` (`-` outside the route list).
    pub(crate) fn name(&self, cmd: u16) -> &str {
        self.routes
            .get(cmd as usize)
            .map_or("-", |r| r.name.as_str())
    }

    /// The server type that handles route `cmd`: `Ok(None)` for a push-only route, `Err` for a
    /// `cmd` outside the route list.
    pub(crate) fn server_type(&self, cmd: u16) -> Result<Option<&str>, ()> {
        match self.routes.get(cmd as usize) {
            Some(r) => Ok(r.server_type.as_deref()),
            None => Err(()),
        }
    }

    /// Freezes the game code (once: false when it was frozen already).
    pub(crate) fn freeze(&self, code: GameCode) -> bool {
        self.code.set(code).is_ok()
    }

    /// The game code: what was frozen, or none before `App::run`.
    pub(crate) fn code(&self) -> &GameCode {
        static NONE: LazyLock<GameCode> = LazyLock::new(GameCode::default);
        self.code.get().unwrap_or(&NONE)
    }
}

/// The server of `server_type` that handles `route` for `session`: the route function's
/// pick (behind a panic boundary), or one by uid (connection id) modulo the servers.
pub(crate) fn pick_server(
    app: &App,
    server_type: &str,
    route: &str,
    session: &Session,
) -> Result<Option<String>, Panic> {
    if let Some(f) = app.router().code().route_fns.get(server_type) {
        return app.guard("route function", route, Some(session), || f(app, session));
    }
    let list = app.server_ids_of_type(server_type);
    if list.is_empty() {
        return Ok(None);
    }
    let key = session.uid().unwrap_or(session.conn_id());
    Ok(Some(list[(key % list.len() as u64) as usize].clone()))
}
