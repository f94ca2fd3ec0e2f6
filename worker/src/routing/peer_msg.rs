//! What a peer link reads for the game ([`PeerMessages`], the mesh's [`PeerHandler`]): a
//! client message a frontend forwarded (run by the local handler, with the session copy that
//! came along), frames for this frontend's clients, a call of one of this server's remotes
//! (run inline until it first waits; a panic anywhere in it is the call's error), and a
//! backend's session apply.

use std::sync::Arc;
use std::task::Poll;

use kennel_proto::msg::{ClientPush, ClientRequest, RpcRequest, SessionApply};
use tracing::warn;

use crate::edge::direct;
use crate::mesh::PeerHandler;
use crate::mesh::link::Link;
use crate::routing::dispatch::{poll_now, spawn_rest};
use crate::routing::{deliver, inbound, remote};
use crate::{App, Session};

/// The routing layer as the mesh sees it.
#[derive(Clone)]
pub(crate) struct PeerMessages(pub(crate) App);

impl PeerHandler for PeerMessages {
    fn client_message(&self, link: &Arc<Link>, req: ClientRequest) {
        let app = &self.0;
        let cmd = req.cmd as u16;
        if req.cmd as usize >= app.router().len() {
            warn!(
                from = link.peer(),
                cmd = req.cmd,
                "forwarded cmd outside the route list; ignored"
            );
            return;
        }
        let session = Session::from_proto(app, req.session.unwrap_or_default(), link.peer_id());
        inbound::run_handler(app, session, cmd, req.payload);
    }

    fn push(&self, _link: &Link, push: ClientPush) {
        // Held back until the reader has read everything: one write per client per read.
        direct::deferred(|| deliver::push_here(&self.0, push));
    }

    fn call(&self, link: &Arc<Link>, req: RpcRequest) {
        let app = &self.0;
        let id = req.id;
        let mut fut = match remote::start(app, &req.route, req.args) {
            Ok(fut) => fut,
            Err(e) => return link.answer(id, &req.route, Err(e)),
        };
        match poll_now(&mut fut) {
            Poll::Ready(r) => {
                let r = remote::finished(app, &req.route, r);
                link.answer(id, &req.route, r);
            }
            Poll::Pending => {
                let (app, link) = (app.clone(), link.clone());
                spawn_rest(fut, move |r| {
                    let r = remote::finished(&app, &req.route, r);
                    link.answer(id, &req.route, r);
                });
            }
        }
    }

    fn apply(&self, link: &Link, apply: SessionApply) {
        deliver::apply_here(&self.0, apply.conn_id, &apply.settings, link.peer());
    }

    fn read_all(&self) {
        direct::flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_forwarded_cmd_outside_the_route_list_runs_no_handler() {
        let app = crate::app::test_app(false);
        static RAN: AtomicUsize = AtomicUsize::new(0);
        app.handler(
            "room.main.join",
            |_: App, _: Session, _: serde_json::Value| async {
                RAN.fetch_add(1, Ordering::Relaxed);
            },
        );
        let _ = app.freeze().unwrap();
        let link = crate::mesh::link::detached("gate-1", Duration::from_secs(10));
        let peer = PeerMessages(app.clone());
        let forwarded = |cmd| ClientRequest {
            session: None,
            cmd,
            payload: bytes::Bytes::from_static(b"{}"),
        };
        peer.client_message(&link, forwarded(1));
        assert_eq!(RAN.load(Ordering::Relaxed), 1, "cmd 1 is room.main.join");
        // 65,537 is 1 in 16 bits: it must not pass for route 1.
        peer.client_message(&link, forwarded(65_537));
        assert_eq!(RAN.load(Ordering::Relaxed), 1);
    }
}
