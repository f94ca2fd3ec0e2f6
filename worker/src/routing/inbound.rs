//! A client message on its frontend: the `global_before` filters, the message codec, then the
//! local handler (a route of this server's type) or a forward to the backend the route
//! function picks, with a copy of the session. Also the handler runner every handled message
//! ends in (here or on a backend): `before` filters, the handler (inline until it first waits,
//! then as its own task), `after` filters, the reply.
//!
//! [`Inbound`] is how the edge hands a connection's client up ([`ClientSink`]): a new session,
//! the `client on` / `client off` callbacks, each message.

use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use kennel_proto::msg::{ClientRequest, peer_msg};
use tracing::warn;

use crate::edge::ClientSink;
use crate::edge::Uid;
use crate::edge::clients::Conn;
use crate::mesh::link::msg;
use crate::routing::deliver::{Out, deliver_soon};
use crate::routing::dispatch::{poll_now, spawn_rest};
use crate::routing::handler::SessionCb;
use crate::routing::pick_server;
use crate::stats::Dropped;
use crate::{App, Session};

/// The routing layer as the edge sees it.
#[derive(Clone)]
pub(crate) struct Inbound(pub(crate) App);

impl ClientSink for Inbound {
    type Session = Session;

    fn open(&self, conn: Arc<Conn>, ip: String) -> Session {
        Session::live(&self.0, conn, ip)
    }

    /// The `client on` callbacks (the connection goes on whatever they do).
    async fn opened(&self, session: &Session) {
        let app = &self.0;
        let cbs = &app.router().code().client_on;
        session_callbacks(app, "on_client_on", cbs, session).await;
    }

    fn message(
        &self,
        session: &Session,
        cmd: u16,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), String>> + Send {
        client_message(&self.0, session, cmd, payload)
    }

    /// The `client off` callbacks.
    async fn closed(&self, session: &Session) {
        let app = &self.0;
        let cbs = &app.router().code().client_off;
        session_callbacks(app, "on_client_off", cbs, session).await;
    }
}

/// Runs client on/off callbacks in order, each behind a panic boundary (one that panics is
/// reported; the others still run).
async fn session_callbacks(app: &App, what: &'static str, cbs: &[SessionCb], session: &Session) {
    for cb in cbs {
        let _ = app
            .guard_async(what, Some(session), cb(app.clone(), session.clone()))
            .await;
    }
}

/// Routes one client message (frontend). An error closes the connection.
async fn client_message(
    app: &App,
    session: &Session,
    cmd: u16,
    payload: Bytes,
) -> Result<(), String> {
    let router = app.router();
    let Ok(server_type) = router.server_type(cmd) else {
        return Err(format!(
            "cmd {cmd} is outside the route list ({} routes)",
            router.len()
        ));
    };
    let route = router.name(cmd);
    let code = router.code();
    if !code.global_before.is_empty() {
        let pass = app.guard("global_before filter", route, Some(session), || {
            code.global_before
                .iter()
                .all(|f| f(app, session, cmd, &payload))
        });
        if !matches!(pass, Ok(true)) {
            return Ok(());
        }
    }
    let decoded = app.guard("message codec", route, Some(session), || {
        code.codecs.message.decode(cmd, payload)
    });
    let payload = match decoded {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            warn!(
                route,
                conn = session.conn_id(),
                "message codec cannot decode the client's message: {e}; dropped"
            );
            return Ok(());
        }
        Err(_) => return Ok(()),
    };
    let Some(server_type) = server_type else {
        warn!(route, "client sent a push-only route; ignored");
        return Ok(());
    };
    if server_type == app.server_type() {
        run_handler(app, session.clone(), cmd, payload);
        return Ok(());
    }
    let target = match pick_server(app, server_type, route, session) {
        Ok(Some(target)) => target,
        Ok(None) => {
            warn!(route, uid = %Uid(session.uid()), "no {server_type} server to route to; message dropped");
            return Ok(());
        }
        // Reported: the message is dropped.
        Err(_) => return Ok(()),
    };
    let mesh = app.mesh();
    if !mesh.peers.is_backend_of_type(&target, server_type) {
        warn!(route, server = %target, "route function picked a server that is not a live {server_type} server; message dropped");
        return Ok(());
    }
    // A known server not linked yet (booting, reconnecting) is waited for, which also holds
    // this connection's later messages back, keeping their order; at most `rpc.timeout`
    // after its link went down, in total (then forwards to it fail at once).
    let link = match mesh.forward_link(&target, route, mesh.timeout()).await {
        Ok(l) => l,
        Err(e) => {
            forward_refused(app, route, session, &target, &e);
            return Ok(());
        }
    };
    let forward = if session.frontend_id() == app.id() {
        session.to_forward()
    } else {
        session.to_proto()
    };
    let m = msg(peer_msg::Msg::Client(ClientRequest {
        session: Some(forward),
        cmd: cmd as u32,
        payload,
    }));
    // Waits only when the link holds 8 MiB already, and never past the moment it counts as
    // congested (then every forward fails at once): a stopped backend holds this
    // connection at most `rpc.timeout` in all.
    if let Err(e) = link.forward(m).await {
        let why = e.describe(&target, mesh.timeout());
        forward_refused(app, route, session, &target, &why);
    }
    Ok(())
}

/// Counts a client message that could not be forwarded and logs it (one line a second
/// at most, with how many were held back).
fn forward_refused(
    app: &App,
    route: &str,
    session: &Session,
    target: &str,
    why: &dyn std::fmt::Display,
) {
    app.stats().drops.dropped(Dropped::Forward);
    if let Some(more) = app.mesh().peers.refusal_log.tick() {
        let uid = Uid(session.uid());
        warn!(route, %uid, conn = session.conn_id(), server = %target, more, "cannot forward: {why}; message dropped");
    }
}

/// Runs the local handler of `cmd` in arrival order and sends its reply to the client.
pub(crate) fn run_handler(app: &App, session: Session, cmd: u16, payload: Bytes) {
    let router = app.router();
    let route = router.name(cmd);
    let code = router.code();
    let Some(h) = code.handlers.get(cmd as usize).and_then(|h| h.as_ref()) else {
        warn!(route, "no handler registered; message ignored");
        return;
    };
    if !code.before.is_empty() {
        let pass = app.guard("before filter", route, Some(&session), || {
            code.before
                .iter()
                .all(|f| f(app, &session, route, &payload))
        });
        if !matches!(pass, Ok(true)) {
            return;
        }
    }
    // The handler runs inline until it first waits; the rest is then its own task. A panic
    // anywhere in it fails this request only (no reply).
    let Ok(mut fut) = app.guard("handler", route, Some(&session), || {
        h(app.clone(), session.clone(), payload)
    }) else {
        return;
    };
    match poll_now(&mut fut) {
        Poll::Ready(Ok(r)) => handler_done(app, session, cmd, r),
        Poll::Ready(Err(p)) => app.panicked("handler", route, session.uid(), &p),
        Poll::Pending => {
            let app = app.clone();
            // A frontend handler counts against its connection's `maxInFlight` until done.
            let in_flight = session.conn().map(|c| c.handler_started());
            spawn_rest(fut, move |r| {
                match r {
                    Ok(r) => handler_done(&app, session, cmd, r),
                    Err(p) => app.panicked("handler", app.router().name(cmd), session.uid(), &p),
                }
                drop(in_flight);
            });
        }
    }
}

/// Runs the after filters on a handler's result and queues its reply.
fn handler_done(app: &App, session: Session, cmd: u16, r: Result<Option<Bytes>, String>) {
    let route = app.router().name(cmd);
    let reply = match r {
        Ok(r) => r,
        Err(e) => {
            warn!(route, uid = %Uid(session.uid()), "handler failed: {e}");
            None
        }
    };
    let after = &app.router().code().after;
    if !after.is_empty() {
        let _ = app.guard("after filter", route, Some(&session), || {
            for f in after {
                f(app, &session, route, reply.as_deref());
            }
        });
    }
    if let Some(json) = reply {
        let out = Out::ToSession {
            session: &session,
            cmd,
            json,
        };
        deliver_soon(app, out);
    }
}
