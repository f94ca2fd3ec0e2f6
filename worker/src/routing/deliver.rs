//! The one way back to clients: a handler's reply, a push, a backend's session apply. One
//! function ([`decide`]) asks, for every sender, where it goes: to a client of this frontend
//! (its live connection, or the registry by connection id or uid), onto the link to the
//! client's frontend when it is up, or to a wait for that link (within `rpc.timeout`). The
//! senders differ only in how they wait: [`deliver_soon`] (a handler's reply, on a connection
//! task or link reader that must not wait) queues at once and leaves any waiting to a task;
//! [`deliver`] (the push API, `Session::send`, `Session::apply`) waits in place.
//!
//! What cannot be delivered (unknown frontend, link down past the timeout, congested) is
//! dropped, counted in `kennel_dropped_total{reason="peer_message"}` and logged at most once a
//! second.
//!
//! Also the push API on [`App`]: `send_by_group`, `send_by_uid_sid`, `send_by_uid`,
//! `send_all`, `send_to`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use kennel_proto::msg::{ClientPush, PeerMsg, SessionApply, peer_msg};
use serde::Serialize;
use tracing::{debug, warn};

use crate::edge::clients::Conn;
use crate::mesh::link::{Link, msg};
use crate::stats::Dropped;
use crate::{App, PushError, Session};

/// Something for clients, and who it is for.
pub(crate) enum Out<'a> {
    /// A reply or push (JSON body of route `cmd`) to one client, through its session (the
    /// live one on this frontend, or a backend's copy).
    ToSession {
        session: &'a Session,
        cmd: u16,
        json: Bytes,
    },
    /// A push (JSON body of route `cmd`) to the clients of frontend `frontend_id` bound to
    /// `uids`.
    ToUids {
        frontend_id: &'a str,
        uids: &'a [u64],
        cmd: u16,
        json: Bytes,
    },
    /// A backend's copy of a session's settings, for the live session on its frontend.
    Settings { session: &'a Session },
}

impl Out<'_> {
    fn frontend_id(&self) -> &str {
        match self {
            Out::ToSession { session, .. } | Out::Settings { session } => session.frontend_id(),
            Out::ToUids { frontend_id, .. } => frontend_id,
        }
    }

    /// What goes on the link to the frontend.
    fn into_peer_msg(self) -> PeerMsg {
        msg(match self {
            Out::ToSession { session, cmd, json } => peer_msg::Msg::Push(ClientPush {
                cmd: cmd as u32,
                payload: json,
                conn_ids: vec![session.conn_id()],
                uids: vec![],
            }),
            Out::ToUids {
                uids, cmd, json, ..
            } => peer_msg::Msg::Push(ClientPush {
                cmd: cmd as u32,
                payload: json,
                conn_ids: vec![],
                uids: uids.to_vec(),
            }),
            Out::Settings { session } => peer_msg::Msg::Apply(SessionApply {
                conn_id: session.conn_id(),
                settings: session.settings_json(),
            }),
        })
    }
}

/// Where a delivery goes next, once [`decide`] has asked.
enum Next {
    /// Delivered to this frontend's clients (or dropped, logged).
    Done,
    /// On this link, which is up.
    Link(Arc<Link>, PeerMsg),
    /// On the link to this frontend once it is up.
    WaitLink(Arc<str>, PeerMsg),
}

/// The delivery decision, for every sender: this frontend's own clients are served at once;
/// otherwise the message goes on the link to the client's frontend, or waits for it.
fn decide(app: &App, out: Out<'_>) -> Next {
    let here = match &out {
        Out::ToSession { session, .. } => session.is_live() || session.frontend_id() == app.id(),
        other => other.frontend_id() == app.id(),
    };
    if here {
        match out {
            Out::ToSession { session, cmd, json } => {
                let conn_id = [session.conn_id()];
                to_own_clients(app, cmd, json, session.conn(), &conn_id, &[]);
            }
            Out::ToUids {
                uids, cmd, json, ..
            } => to_own_clients(app, cmd, json, None, &[], uids),
            Out::Settings { session } => {
                apply_here(app, session.conn_id(), &session.settings_json(), app.id());
            }
        }
        return Next::Done;
    }
    match app.mesh().link_now(out.frontend_id()) {
        Ok(Ok(link)) => Next::Link(link, out.into_peer_msg()),
        Ok(Err(_)) => {
            let frontend: Arc<str> = match &out {
                Out::ToSession { session, .. } | Out::Settings { session } => {
                    session.frontend_id_shared().clone()
                }
                Out::ToUids { frontend_id, .. } => (*frontend_id).into(),
            };
            Next::WaitLink(frontend, out.into_peer_msg())
        }
        Err(e) => {
            undelivered(app, out.frontend_id(), &e);
            Next::Done
        }
    }
}

/// Delivers `out` without waiting: to this frontend's clients, or queued on the link to the
/// client's frontend; a full link or one not up yet is waited for by a task.
pub(crate) fn deliver_soon(app: &App, out: Out<'_>) {
    match decide(app, out) {
        Next::Done => {}
        Next::Link(link, m) => link.send_now(m),
        Next::WaitLink(frontend, m) => {
            let app = app.clone();
            tokio::spawn(async move { wait_and_send(&app, &frontend, m).await });
        }
    }
}

/// Delivers `out`, waiting in place for the link to the client's frontend and for room on it.
pub(crate) async fn deliver(app: &App, out: Out<'_>) {
    match decide(app, out) {
        Next::Done => {}
        Next::Link(link, m) => {
            if let Err(e) = link.send(m).await {
                link.refused(e);
            }
        }
        Next::WaitLink(frontend, m) => wait_and_send(app, &frontend, m).await,
    }
}

/// Waits for the link to `frontend` (within `rpc.timeout`), then sends `m` on it.
async fn wait_and_send(app: &App, frontend: &str, m: PeerMsg) {
    let mesh = app.mesh();
    match mesh.wait_link(frontend, "push", mesh.timeout()).await {
        Ok(link) => {
            if let Err(e) = link.send(m).await {
                link.refused(e);
            }
        }
        Err(e) => undelivered(app, frontend, &e),
    }
}

/// Counts a message for clients that could not reach their frontend, and logs it (one line
/// a second at most, with how many were held back).
fn undelivered(app: &App, frontend: &str, why: &dyn std::fmt::Display) {
    app.stats().drops.dropped(Dropped::PeerMessage);
    if let Some(more) = app.router().undelivered_log.tick() {
        warn!(
            frontend,
            more, "cannot deliver to clients of {frontend}: {why}; dropped"
        );
    }
}

/// A reply or push for clients of this frontend: to `conn` when the sender holds it, else to
/// the connections `conn_ids` and the uids `uids`.
fn to_own_clients(
    app: &App,
    cmd: u16,
    json: Bytes,
    conn: Option<&Arc<Conn>>,
    conn_ids: &[u64],
    uids: &[u64],
) {
    let Some(frame) = client_frame(app, cmd, json) else {
        return;
    };
    match conn {
        Some(c) => c.send(frame),
        None => app.clients().deliver(&frame, conn_ids, uids),
    }
}

/// Frames a peer pushed to clients of this frontend.
pub(crate) fn push_here(app: &App, p: ClientPush) {
    to_own_clients(app, p.cmd as u16, p.payload, None, &p.conn_ids, &p.uids);
}

/// Replaces the settings of the live session of connection `conn_id` (sent by `from`).
pub(crate) fn apply_here(app: &App, conn_id: u64, settings: &[u8], from: &str) {
    match app.clients().by_conn(conn_id) {
        Some(s) => {
            if let Err(e) = s.replace_settings(settings) {
                warn!(from, conn = conn_id, "session apply with bad settings: {e}");
            }
        }
        None => debug!(conn = conn_id, "session apply for a client that has left"),
    }
}

/// A reply/push frame for clients of this frontend from a JSON body; `None` (logged) when
/// the message codec cannot encode it (behind a panic boundary).
pub(crate) fn client_frame(app: &App, cmd: u16, json: Bytes) -> Option<Bytes> {
    let codecs = &app.router().code().codecs;
    let route = app.router().name(cmd);
    let encoded = app.guard("message codec", route, None, || codecs.message(cmd, json));
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

/// Sends a backend session copy's settings to its frontend.
pub(crate) async fn apply_session(app: &App, session: &Session) {
    deliver(app, Out::Settings { session }).await;
}

impl App {
    /// Pushes `msg` as `route` to clients grouped by frontend: `{frontend id: [uids]}`.
    /// The message is encoded once.
    pub async fn send_by_group(
        &self,
        route: &str,
        msg: &impl Serialize,
        group: &HashMap<String, Vec<u64>>,
    ) -> Result<(), PushError> {
        let cmd = self.router().cmd_of(route)?;
        let json = Bytes::from(serde_json::to_vec(msg)?);
        for (frontend_id, uids) in group {
            if !uids.is_empty() {
                let out = Out::ToUids {
                    frontend_id,
                    uids,
                    cmd,
                    json: json.clone(),
                };
                deliver(self, out).await;
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
        for (uid, frontend_id) in targets {
            group.entry(frontend_id.clone()).or_default().push(*uid);
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
        let frame = self.push_frame(route, msg)?;
        self.clients().deliver(&frame, &[], uids);
        Ok(())
    }

    /// Pushes `msg` as `route` to every client of this frontend (encoded once).
    pub fn send_all(&self, route: &str, msg: &impl Serialize) -> Result<(), PushError> {
        if !self.is_frontend() {
            return Err(PushError::NotFrontend("send_all"));
        }
        let frame = self.push_frame(route, msg)?;
        self.clients().send_all(&frame);
        Ok(())
    }

    /// Pushes `msg` as `route` to one client through its session.
    pub async fn send_to(
        &self,
        session: &Session,
        route: &str,
        msg: &impl Serialize,
    ) -> Result<(), PushError> {
        let cmd = self.router().cmd_of(route)?;
        let json = Bytes::from(serde_json::to_vec(msg)?);
        deliver(self, Out::ToSession { session, cmd, json }).await;
        Ok(())
    }

    /// The frame of a push for clients of this frontend.
    fn push_frame(&self, route: &str, msg: &impl Serialize) -> Result<Bytes, PushError> {
        let cmd = self.router().cmd_of(route)?;
        let json = Bytes::from(serde_json::to_vec(msg)?);
        let codecs = &self.router().code().codecs;
        codecs.message(cmd, json).map_err(PushError::Codec)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::edge::clients::ConnLimits;

    /// A client of `app` (a frontend), registered and bound to `uid`.
    fn client(app: &App, id: u64, uid: u64) -> (Session, Arc<Conn>) {
        let limits = Arc::new(ConnLimits {
            send_queue_bytes: 1 << 20,
            max_in_flight: 8,
            drops: app.stats().drops.clone(),
        });
        let conn = Arc::new(Conn::new(id, limits, None));
        let session = Session::live(app, conn.clone(), "10.0.0.1".into());
        app.clients().add(conn.clone(), session.clone());
        assert!(session.bind(uid));
        (session, conn)
    }

    fn queued(conn: &Conn) -> usize {
        let mut out = VecDeque::new();
        conn.take(&mut out, false);
        out.len()
    }

    #[tokio::test]
    async fn own_clients_get_it_at_once_and_an_unknown_frontend_is_counted() {
        let app = crate::app::test_app(true);
        let (session, conn) = client(&app, 1, 5);
        let json = Bytes::from_static(b"{}");
        deliver_soon(
            &app,
            Out::ToSession {
                session: &session,
                cmd: 0,
                json: json.clone(),
            },
        );
        assert_eq!(queued(&conn), 1, "a reply to a live session");
        let out = Out::ToUids {
            frontend_id: app.id(),
            uids: &[5, 6],
            cmd: 0,
            json: json.clone(),
        };
        deliver(&app, out).await;
        assert_eq!(
            queued(&conn),
            1,
            "a push to this frontend's uid 5 (6 is nobody)"
        );
        let out = Out::ToUids {
            frontend_id: "gate-9",
            uids: &[5],
            cmd: 0,
            json,
        };
        deliver(&app, out).await;
        assert_eq!(queued(&conn), 0);
        let dropped = app.stats().drops.snapshot();
        assert_eq!(dropped.get("peer_message"), Some(&1), "{dropped:?}");
    }
}
