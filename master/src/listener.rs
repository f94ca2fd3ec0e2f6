//! The master port: accepts connections, authenticates them (mutual HMAC, bounded by
//! [`AUTH_TIMEOUT`]) and serves the two kinds of link it admits:
//!
//! - `Role::Server` (server secret): the master link of [`crate::registry`]. The first message
//!   must be `Register` (within [`REGISTER_TIMEOUT`]); the event loop admits or refuses it;
//!   then `Report`s and `CommandReply`s go to it until the link drops.
//! - `Role::Cli` (CLI secret): `CliRequest`s (`list`, `stop`, `restart`, `remove`,
//!   `start`, `send`), each answered by one
//!   `CliResponse`. After `stop` the link stays open until the cluster has stopped, so the
//!   CLI can wait for the master to close it.
//!
//! Any other role is refused during authentication. With `encryptLinks` both kinds of link
//! are Noise-encrypted after authentication (a server whose setting differs is refused with
//! a reason naming it; the CLI follows the master's authenticated choice).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kennel_proto::auth;
use kennel_proto::frame::{AUTH_MAX_FRAME, DEFAULT_MAX_FRAME, ProtoCodec, length_codec};
use kennel_proto::msg::{
    Cipher, CliRequest, CliResponse, FromMaster, Hello, RegisterError, Role, SendReply,
    SendRequest, SendResult, ToMaster, cli_request, cli_response, from_master, to_master,
};
use kennel_proto::net::{Eviction, PreAuthGate, Ticket};
use kennel_proto::noise::{LinkIo, framed_link};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::event::Event;

/// Bound on the authentication handshake.
pub(crate) const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the wait for a server's `Register` after authentication.
pub(crate) const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// `TCP_USER_TIMEOUT` of every link on the master port.
const LINK_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Capacity of a server link's outgoing queue.
const LINK_QUEUE: usize = 1024;
/// Largest CLI request accepted.
const CLI_MAX_FRAME: usize = 64 * 1024;
/// Longest `kennel send` timeout honoured.
pub(crate) const MAX_SEND_TIMEOUT_MS: u32 = 120_000;

type ServerLink = Framed<LinkIo<TcpStream>, ProtoCodec<ToMaster, FromMaster>>;
type CliLink = Framed<LinkIo<TcpStream>, ProtoCodec<CliRequest, CliResponse>>;

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) master_id: String,
    pub(crate) server_secret: Vec<u8>,
    pub(crate) cli_secret: Vec<u8>,
    /// What protects every link after authentication (`encryptLinks`).
    pub(crate) cipher: Cipher,
    /// Into the master's event loop.
    pub(crate) events: mpsc::Sender<Event>,
    /// Cancelled by a CLI `stop` (and by the master's shutdown): starts the stop sequence.
    pub(crate) stop: CancellationToken,
    /// Cancelled by `run` once the cluster has stopped: ends the accept loop and every link.
    pub(crate) conns: CancellationToken,
    /// Caps connections still authenticating (globally and per source address; the oldest
    /// is closed to make room for a new one).
    pub(crate) pending: PreAuthGate,
    /// Limits the log lines about closed unauthenticated connections.
    pub(crate) evictions: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
    /// Tracks the accept loop and every connection task.
    pub(crate) tracker: TaskTracker,
}

/// Accepts connections until `shared.conns` is cancelled; one task per connection.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.conns.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // E.g. out of file descriptors: keep serving, but do not spin.
                error!(cause = %e, "failed to accept");
                tokio::select! {
                    _ = shared.conns.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let (ticket, eviction) = shared.pending.admit(peer.ip());
        if eviction != Eviction::None {
            note_eviction(&shared, peer, eviction);
        }
        let task_shared = shared.clone();
        shared
            .tracker
            .spawn(connection(stream, task_shared, ticket).instrument(info_span!("link", %peer)));
    }
}

/// Logs that unauthenticated connections were closed to make room (one line a second at
/// most, with how many since the last).
fn note_eviction(shared: &Shared, peer: std::net::SocketAddr, eviction: Eviction) {
    let mut st = shared.evictions.lock().unwrap();
    let now = std::time::Instant::now();
    if st
        .0
        .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
    {
        st.1 += 1;
        return;
    }
    let more = std::mem::take(&mut st.1);
    st.0 = Some(now);
    drop(st);
    warn!(%peer, ?eviction, more, "too many connections authenticating: closed the oldest");
}

/// The secret for the dialer's role, or why it is refused.
fn admit(shared: &Shared, hello: &Hello) -> Result<Vec<u8>, String> {
    match Role::try_from(hello.role) {
        Ok(Role::Server) => Ok(shared.server_secret.clone()),
        Ok(Role::Cli) => Ok(shared.cli_secret.clone()),
        _ => Err(format!(
            "the master accepts only servers and the CLI (role {} refused)",
            hello.role
        )),
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>, ticket: Ticket) {
    let _ = stream.set_nodelay(true);
    // The kernel gives up on a peer that acknowledges nothing for this long (a host gone
    // without a FIN), as the servers' side of the link does.
    kennel_proto::net::set_user_timeout(&stream, LINK_USER_TIMEOUT);
    let mut framed = Framed::new(stream, length_codec(AUTH_MAX_FRAME));
    let accepted = tokio::select! {
        _ = shared.conns.cancelled() => return,
        _ = ticket.evicted() => {
            debug!("closed before authenticating, for a newer connection");
            return;
        }
        r = timeout(AUTH_TIMEOUT, auth::accept_with(&mut framed, &shared.master_id, shared.cipher, |h| admit(&shared, h))) => r,
    };
    let hello = match accepted {
        Err(_) => {
            warn!("authentication timed out");
            return;
        }
        Ok(Err(e)) => {
            warn!(cause = %e, "authentication failed");
            return;
        }
        Ok(Ok(accepted)) => accepted,
    };
    let (hello, transport) = hello;
    drop(ticket);
    match Role::try_from(hello.role) {
        Ok(Role::Server) => {
            let link = framed_link(framed, transport, ProtoCodec::new(DEFAULT_MAX_FRAME));
            server_link(link, hello.id, &shared).await;
        }
        Ok(Role::Cli) => {
            let link = framed_link(framed, transport, ProtoCodec::new(CLI_MAX_FRAME));
            cli_link(link, &shared).await;
        }
        _ => {} // refused by `admit`
    }
}

/// Writes queued messages to the socket until the queue closes or `close` is cancelled.
async fn writer(
    mut sink: futures_util::stream::SplitSink<ServerLink, FromMaster>,
    mut rx: mpsc::Receiver<FromMaster>,
    close: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = close.cancelled() => None,
        };
        let Some(msg) = msg else { break };
        tokio::select! {
            r = sink.send(msg) => if let Err(e) = r {
                debug!(cause = %e, "master link write failed");
                break;
            },
            _ = close.cancelled() => break,
        }
    }
    let _ = timeout(Duration::from_secs(1), sink.close()).await;
}

async fn server_link(mut link: ServerLink, authenticated: String, shared: &Shared) {
    let first = tokio::select! {
        _ = shared.conns.cancelled() => return,
        r = timeout(REGISTER_TIMEOUT, link.next()) => r,
    };
    let info = match first {
        Ok(Some(Ok(ToMaster {
            msg: Some(to_master::Msg::Register(r)),
        }))) => r.info.unwrap_or_default(),
        Ok(Some(Ok(other))) => {
            warn!(server = %authenticated, ?other, "first message is not Register; closing");
            return;
        }
        Ok(Some(Err(e))) => {
            warn!(server = %authenticated, cause = %e, "bad first message; closing");
            return;
        }
        Ok(None) => return,
        Err(_) => {
            warn!(server = %authenticated, "no Register within {REGISTER_TIMEOUT:?}; closing");
            return;
        }
    };
    let id = info.id.clone();
    let (sink, mut stream) = link.split();
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    // Cancelled when this link ends: by this task, by the registry (link falls behind) or
    // when every link is closed at the end.
    let close = shared.conns.child_token();
    let writer = shared.tracker.spawn(writer(sink, rx, close.clone()));

    let (reply_tx, reply_rx) = oneshot::channel();
    let register = Event::Register {
        authenticated,
        info,
        tx: tx.clone(),
        close: close.clone(),
        reply: reply_tx,
    };
    if shared.events.send(register).await.is_err() {
        close.cancel();
        return;
    }
    let link_id = match reply_rx.await {
        Ok(Ok(link_id)) => link_id,
        Ok(Err(reason)) => {
            // The writer sends the refusal, sees the queue close, and closes the socket.
            let refusal = FromMaster {
                msg: Some(from_master::Msg::Error(RegisterError { error: reason })),
            };
            let _ = tx.send(refusal).await;
            drop(tx);
            let _ = timeout(Duration::from_secs(2), writer).await;
            close.cancel();
            return;
        }
        Err(_) => {
            close.cancel();
            return;
        }
    };

    loop {
        let msg = tokio::select! {
            _ = close.cancelled() => break,
            m = stream.next() => m,
        };
        match msg {
            Some(Ok(ToMaster {
                msg: Some(to_master::Msg::Register(_)),
            })) => warn!(server = %id, "ignoring a second Register on a live link"),
            Some(Ok(ToMaster {
                msg: Some(to_master::Msg::Report(r)),
            })) => {
                let ev = Event::Report {
                    id: id.clone(),
                    link_id,
                    report: r,
                };
                if shared.events.send(ev).await.is_err() {
                    break;
                }
            }
            Some(Ok(ToMaster {
                msg: Some(to_master::Msg::CommandReply(r)),
            })) => {
                let result = if r.error.is_empty() {
                    Ok(r.reply)
                } else {
                    Err(r.error)
                };
                let ev = Event::CommandReply {
                    id: id.clone(),
                    link_id,
                    seq: r.seq,
                    result,
                };
                if shared.events.send(ev).await.is_err() {
                    break;
                }
            }
            Some(Ok(other)) => debug!(server = %id, ?other, "ignoring unknown message"),
            Some(Err(e)) => {
                if shared.stop.is_cancelled() {
                    debug!(server = %id, cause = %e, "master link broken while stopping");
                } else {
                    warn!(server = %id, cause = %e, "master link broken");
                }
                break;
            }
            None => break,
        }
    }
    close.cancel();
    let _ = shared.events.send(Event::LinkClosed { id, link_id }).await;
}

async fn cli_link(mut link: CliLink, shared: &Shared) {
    loop {
        let req = tokio::select! {
            _ = shared.conns.cancelled() => return,
            r = link.next() => r,
        };
        let reply = match req {
            None => return,
            Some(Err(e)) => {
                debug!(cause = %e, "CLI link broken");
                return;
            }
            Some(Ok(CliRequest {
                cmd: Some(cli_request::Cmd::List(_)),
            })) => {
                let (reply_tx, reply_rx) = oneshot::channel();
                if shared
                    .events
                    .send(Event::List { reply: reply_tx })
                    .await
                    .is_err()
                {
                    return;
                }
                match reply_rx.await {
                    Ok(list) => cli_response::Msg::List(list),
                    Err(_) => return,
                }
            }
            Some(Ok(CliRequest {
                cmd: Some(cli_request::Cmd::Stop(_)),
            })) => {
                info!("stop requested by the CLI");
                shared.stop.cancel();
                cli_response::Msg::Ok("stopping the cluster".to_owned())
            }
            Some(Ok(CliRequest {
                cmd: Some(cli_request::Cmd::Restart(r)),
            })) => {
                let (reply, rx) = oneshot::channel();
                ask(shared, Event::Restart { id: r.id, reply }, rx).await
            }
            Some(Ok(CliRequest {
                cmd: Some(cli_request::Cmd::Remove(r)),
            })) => {
                let (reply, rx) = oneshot::channel();
                let ev = Event::Remove {
                    ids: r.ids,
                    types: r.types,
                    reply,
                };
                ask(shared, ev, rx).await
            }
            Some(Ok(CliRequest {
                cmd: Some(cli_request::Cmd::Start(r)),
            })) => {
                let (reply, rx) = oneshot::channel();
                ask(shared, Event::Start { ids: r.ids, reply }, rx).await
            }
            Some(Ok(CliRequest {
                cmd: Some(cli_request::Cmd::Send(r)),
            })) => send(shared, r).await,
            Some(Ok(CliRequest { cmd: None })) => cli_response::Msg::Error(
                "unknown command (is the CLI newer than the master?)".into(),
            ),
        };
        if link.send(CliResponse { msg: Some(reply) }).await.is_err() {
            return;
        }
    }
}

/// `kennel send`: the event loop sends the command to every target; this task waits for the
/// answers (each bounded by the request's timeout) so the event loop never waits.
async fn send(shared: &Shared, r: SendRequest) -> cli_response::Msg {
    let (reply, rx) = oneshot::channel();
    let ev = Event::Send {
        ids: r.ids,
        types: r.types,
        args: r.args,
        reply,
    };
    if shared.events.send(ev).await.is_err() {
        return cli_response::Msg::Error("the master is stopping".to_owned());
    }
    let targets = match rx.await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return cli_response::Msg::Error(e),
        Err(_) => return cli_response::Msg::Error("the master is stopping".to_owned()),
    };
    let wait = Duration::from_millis(u64::from(r.timeout_ms.clamp(1, MAX_SEND_TIMEOUT_MS)));
    let deadline = tokio::time::Instant::now() + wait;
    let mut results = Vec::with_capacity(targets.len());
    for (id, answer) in targets {
        let mut out = SendResult {
            id,
            ..Default::default()
        };
        match answer {
            Err(why) => out.error = why,
            Ok(rx) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(text))) => {
                    out.ok = true;
                    out.reply = text;
                }
                Ok(Ok(Err(e))) => out.error = e,
                Ok(Err(_)) => out.error = "its master link closed before it answered".to_owned(),
                Err(_) => {
                    out.timed_out = true;
                    out.error = format!("timed out after {:.1} s", wait.as_secs_f64());
                }
            },
        }
        results.push(out);
    }
    cli_response::Msg::Send(SendReply { results })
}

/// Hands a CLI request to the event loop and turns its answer into a response.
async fn ask(
    shared: &Shared,
    ev: Event,
    rx: oneshot::Receiver<Result<String, String>>,
) -> cli_response::Msg {
    if shared.events.send(ev).await.is_err() {
        return cli_response::Msg::Error("the master is stopping".to_owned());
    }
    match rx.await {
        Ok(Ok(text)) => cli_response::Msg::Ok(text),
        Ok(Err(e)) => cli_response::Msg::Error(e),
        Err(_) => cli_response::Msg::Error("the master is stopping".to_owned()),
    }
}
