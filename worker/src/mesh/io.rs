//! The sockets of the mesh: dialing a peer (the smaller id dials, and redials after a delay
//! for as long as discovery lists the peer), accepting peers (unauthenticated connections
//! capped), the mutual authentication, and each link's task: its reader loop, here, and its
//! writer task ([`write_loop`]; both on the link's bytes of `stream.rs`).
//!
//! With `encryptLinks` the handshake ends with a Noise handshake and the link's bytes are Noise
//! records ([`kennel_proto::noise`]): the writer seals each batch at once (one write per batch,
//! as plain), the reader opens records into the buffer its frames are decoded from. A record
//! that fails to decrypt ends the link like any bad message (the dialer redials; calls in
//! flight fail with the link-dropped error). The plain path is unchanged: no copy, no branch
//! per frame.
//!
//! Game code run for a message (handlers, remotes, codecs) is behind panic boundaries in
//! routing. Should anything else panic in a link's reader or writer, the link is closed, not
//! left installed but dead: the reader loop runs behind a boundary, and drop guards
//! ([`Installed`], [`CloseOnDrop`]) uninstall it and fail its calls on every exit path, so the
//! dialer redials.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use kennel_proto::auth;
use kennel_proto::frame::{AUTH_MAX_FRAME, length_codec};
use kennel_proto::msg::{PeerMsg, Role, peer_msg};
use kennel_proto::net::Ticket;
use kennel_proto::noise::Transport;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, FramedParts};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::mesh::link::Link;
use crate::mesh::peers::Peers;
use crate::mesh::stream::{LinkReader, write_loop};
use crate::mesh::{Mesh, PeerHandler, ServerInfo};
use crate::panic::guarded;
use crate::stats::LogThrottle;

/// How long authentication may take.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Dials `info` until cancelled, keeping one link up; redials after `reconnect_delay`.
pub(crate) async fn dial_loop<H: PeerHandler>(
    mesh: Arc<Mesh>,
    handler: H,
    info: ServerInfo,
    cancel: CancellationToken,
) {
    let addr = format!("{}:{}", info.host, info.port);
    let mut logged = false;
    loop {
        // Boxed: the dial and authentication state is freed before the link runs, not
        // kept in this task for the link's life.
        let attempt = Box::pin(async {
            let stream = TcpStream::connect(&addr)
                .await
                .map_err(|e| (false, e.to_string()))?;
            let _ = stream.set_nodelay(mesh.config().no_delay);
            let mut framed = Framed::new(stream, length_codec(AUTH_MAX_FRAME));
            let dial = auth::dial_with(
                &mut framed,
                &mesh.secret,
                Role::Peer,
                mesh.id(),
                &info.id,
                mesh.cipher,
            );
            let (_, transport) = tokio::time::timeout(AUTH_TIMEOUT, dial)
                .await
                .map_err(|_| (false, "authentication timed out".to_string()))?
                .map_err(|e| {
                    // The peer proved the secret, then the encrypted handshake failed (changed
                    // on the way): worth a warning every time.
                    if let auth::AuthError::Noise(_) = e {
                        warn!(peer = %info.id, %addr, cause = %e, "encrypted handshake with the peer failed; retrying");
                    }
                    // A refusal without the peer's proof of the secret is anyone's to send: never
                    // a verdict, the dial goes on like after any other failure.
                    let untrusted = matches!(
                        e,
                        auth::AuthError::Refused(_) | auth::AuthError::Rejected(_)
                    );
                    (untrusted, e.to_string())
                })?;
            Ok::<_, (bool, String)>((framed, transport))
        });
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok((framed, transport)) => {
                logged = false;
                let peer = info.id.as_str().into();
                let link = run_link(
                    mesh.clone(),
                    handler.clone(),
                    peer,
                    framed,
                    transport,
                    cancel.clone(),
                );
                link.await;
            }
            Err((true, e)) if !logged => {
                warn!(peer = %info.id, %addr, cause = %e, "peer port refused this link before proving it knows the secret: not trusted, retrying");
                logged = true;
            }
            Err((false, e)) if !logged => {
                debug!(peer = %info.id, %addr, cause = %e, "cannot reach peer yet; retrying");
                logged = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(mesh.config().reconnect_delay) => {}
        }
    }
}

/// Unauthenticated connections a server's RPC port holds at most (then the oldest is
/// closed for a new one; see [`kennel_proto::net::PreAuthGate`]).
const PRE_AUTH_MAX: usize = 256;
/// ... and from one source address.
const PRE_AUTH_PER_IP: usize = 128;

/// Accepts peer links on this server's RPC port until `shutdown`. Connections that have not
/// authenticated are capped (globally and per source address, the oldest closed to make
/// room), so idle junk cannot keep peers from linking.
pub(crate) async fn accept_loop<H: PeerHandler>(
    mesh: Arc<Mesh>,
    handler: H,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let gate = kennel_proto::net::PreAuthGate::new(PRE_AUTH_MAX, PRE_AUTH_PER_IP);
    let evictions = LogThrottle::new();
    while let Some((stream, addr)) = crate::net::accept(&listener, &shutdown, "peer").await {
        let (ticket, eviction) = gate.admit(addr.ip());
        if eviction != kennel_proto::net::Eviction::None
            && let Some(more) = evictions.tick()
        {
            warn!(%addr, ?eviction, more, max = PRE_AUTH_MAX, per_ip = PRE_AUTH_PER_IP, "too many unauthenticated connections on the peer port: closed the oldest");
        }
        let task = inbound(
            mesh.clone(),
            handler.clone(),
            stream,
            addr,
            ticket,
            shutdown.clone(),
        );
        tokio::spawn(task);
    }
}

/// The task of an accepted peer connection: authentication (until the gate evicts it for a
/// newer one), then the link. The size of its future is what every inbound link's task costs:
/// the app's tests pin it. A plain fn returning an `async move` block: an `async fn` would keep
/// its arguments and their moved copies side by side (96 B more).
#[allow(clippy::manual_async_fn)]
pub(crate) fn inbound<H: PeerHandler>(
    mesh: Arc<Mesh>,
    handler: H,
    stream: TcpStream,
    addr: SocketAddr,
    ticket: Ticket,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    async move {
        // Boxed: the authentication state is freed before the link runs, not kept in this
        // task for the link's life.
        let authenticated = tokio::select! {
            a = Box::pin(authenticate_inbound(&mesh, stream, addr)) => a,
            _ = ticket.evicted() => {
                debug!(%addr, "unauthenticated peer connection closed for a newer one");
                None
            }
        };
        drop(ticket);
        if let Some((peer, framed, transport)) = authenticated {
            run_link(mesh, handler, peer.into(), framed, transport, shutdown).await
        }
    }
}

/// Authenticates an inbound peer link: the peer's id, the framed stream and, on an encrypted
/// link, its keys; or `None` (logged) when it is refused or too slow.
async fn authenticate_inbound(
    mesh: &Mesh,
    stream: TcpStream,
    addr: SocketAddr,
) -> Option<(
    String,
    Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
    Option<Transport>,
)> {
    let _ = stream.set_nodelay(mesh.config().no_delay);
    let mut framed = Framed::new(stream, length_codec(AUTH_MAX_FRAME));
    let me = mesh.id();
    let admit = |h: &kennel_proto::msg::Hello| {
        if h.role != Role::Peer as i32 {
            return Err("this port takes peer links only".to_string());
        }
        if h.target != me {
            return Err(format!("this is {me}, not {}", h.target));
        }
        if h.id.as_str() >= me {
            return Err(format!(
                "{} must wait for {me} to dial (the smaller id dials)",
                h.id
            ));
        }
        if let Some(t) = mesh.peers.type_of(&h.id)
            && !mesh.config().may_link(&t, mesh.server_type())
        {
            return Err(format!(
                "noRpcMatrix: no links between {t} and {} servers",
                mesh.server_type()
            ));
        }
        Ok(mesh.secret.clone())
    };
    let accept = auth::accept_with(&mut framed, me, mesh.cipher, admit);
    match tokio::time::timeout(AUTH_TIMEOUT, accept).await {
        // The rest of the hello may hold slices of the authentication's read buffer: dropped
        // now, not when the link ends.
        Ok(Ok((hello, transport))) => Some((hello.id, framed, transport)),
        Ok(Err(e)) => {
            warn!(%addr, cause = %e, "peer link refused");
            None
        }
        Err(_) => {
            warn!(%addr, "peer link authentication timed out");
            None
        }
    }
}

/// Runs an authenticated link until either side closes it, `cancel` fires, or the peer is
/// silent past the heartbeat timeout: installs it, runs its writer task, and reads it here,
/// handing what arrives to `handler` (replies to this server's calls and heartbeats are the
/// mesh's own). The size of this future is what every link's task costs: the app's tests pin
/// it. A plain fn returning an `async move` block, as [`inbound`]: its arguments are
/// not kept twice.
#[allow(clippy::manual_async_fn)]
pub(crate) fn run_link<H: PeerHandler>(
    mesh: Arc<Mesh>,
    handler: H,
    peer: Arc<str>,
    framed: Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
    transport: Option<Transport>,
    cancel: CancellationToken,
) -> impl Future<Output = ()> + Send {
    async move {
        // The settings it needs, not a copy of the whole config held for the link's life.
        let (max_len, heartbeat, silence) = {
            let cfg = mesh.config();
            (cfg.max_len, cfg.heartbeat, cfg.heartbeat_timeout)
        };
        // Reader and writer own their halves of the socket (no lock between them); bytes the
        // authentication step read ahead stay in the reader's buffer.
        // Both buffers start small (the authentication step's 8 KiB ones are dropped unless they
        // hold bytes): most links of a large mesh are idle, and a busy link's buffers grow to its
        // traffic.
        let FramedParts {
            io,
            read_buf: auth_read,
            write_buf: auth_write,
            ..
        } = framed.into_parts();
        // The kernel gives up on a peer that acknowledges nothing for as long as the heartbeat
        // would (a host gone without a FIN or RST; a full window probed in vain).
        if !heartbeat.is_zero() {
            kennel_proto::net::set_user_timeout(&io, silence);
        }
        let (read_half, write_half) = io.into_split();
        let (mut stream, seal) = LinkReader::new(read_half, &auth_read, max_len, transport);
        let write_buf = BytesMut::from(&auth_write[..]);
        // Freed now, not when the link ends.
        drop((auth_read, auth_write));
        let link = Arc::new(Link::new(
            mesh.peers.generation.fetch_add(1, Ordering::Relaxed),
            peer.clone(),
            write_buf,
            mesh.timeout(),
            mesh.peers.calls_waiting.clone(),
            cancel.child_token(),
            mesh.stats.drops.clone(),
        ));
        mesh.peers.install(link.clone());
        // From here on every exit path closes and uninstalls the link and fails its calls.
        let installed = Installed {
            peers: &mesh.peers,
            link: &link,
        };
        info!(%peer, encrypted = stream.is_encrypted(), "peer link up");

        let interval = mesh.config().interval.of(mesh.server_type());
        let writer = tokio::spawn({
            let closes = CloseOnDrop(link.clone());
            let link = link.clone();
            async move {
                write_loop(write_half, link, seal, interval, heartbeat).await;
                drop(closes);
            }
        });

        // Silence is checked once per heartbeat period (neither a timer nor a clock read per
        // message): a period with traffic counts as heard at its end; a link quiet past the
        // timeout is closed. With heartbeats off, never.
        let mut check = tokio::time::interval(if heartbeat.is_zero() {
            Duration::from_secs(3600)
        } else {
            heartbeat
        });
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        let mut heard = false;
        // Registered once (not per message).
        let closed = link.closed.clone();
        let cancelled = closed.cancelled();
        tokio::pin!(cancelled);
        // Behind a panic boundary: a panic here closes the link (the dialer redials).
        let read = guarded(async {
            loop {
                // Messages first: the other branches are polled only when none is ready.
                // Before the reader waits for more, what it held back for clients goes out.
                let m = tokio::select! {
                    biased;
                    m = stream.next(|| handler.read_all()) => m,
                    _ = &mut cancelled => break,
                    _ = check.tick() => {
                        if std::mem::take(&mut heard) {
                            last_heard = tokio::time::Instant::now();
                        } else if !heartbeat.is_zero() && last_heard.elapsed() > silence {
                            warn!(%peer, "peer link silent for {silence:?} (heartbeat timeout): closing it");
                            break;
                        }
                        continue;
                    }
                };
                heard = true;
                match m {
                    None => break,
                    Some(Err(e)) => {
                        warn!(%peer, cause = %e, "bad message on peer link: closing it");
                        break;
                    }
                    Some(Ok(PeerMsg { msg: Some(m) })) => dispatch(&handler, &link, m),
                    Some(Ok(PeerMsg { msg: None })) => {}
                }
            }
        });
        let read = read.await;
        handler.read_all();
        if let Err(p) = read {
            tracing::error!(
                server = mesh.id(),
                %peer,
                "panic in a peer link's reader: {}; closing the link",
                p.message()
            );
            mesh.stats.panic("peer link");
        }
        drop(installed);
        let _ = writer.await;
        info!(%peer, "peer link down");
    }
}

/// Hands one message of `link` to where it goes.
fn dispatch<H: PeerHandler>(handler: &H, link: &Arc<Link>, m: peer_msg::Msg) {
    match m {
        peer_msg::Msg::Client(req) => handler.client_message(link, req),
        peer_msg::Msg::Push(p) => handler.push(link, p),
        peer_msg::Msg::Rpc(req) => handler.call(link, req),
        peer_msg::Msg::RpcReply(r) => link.replied(r),
        peer_msg::Msg::Apply(a) => handler.apply(link, a),
        // Liveness is any traffic: both ends ping an idle link, and nobody answers.
        peer_msg::Msg::Ping(_) => {}
    }
}

/// An installed link, closed and uninstalled (its calls failed) when dropped: on every exit
/// path of its reader, so no link stays installed with nobody reading it.
struct Installed<'a> {
    peers: &'a Peers,
    link: &'a Arc<Link>,
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        self.link.closed.cancel();
        self.peers.uninstall(self.link);
        self.link.fail_pending();
    }
}

/// Closes a link when dropped: held by its writer task, so a writer that ends in any way
/// (even a panic) ends the link and wakes its reader.
struct CloseOnDrop(Arc<Link>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.out.close();
        self.0.closed.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RpcError;
    use crate::mesh::link::{LINK_QUEUE_BYTES, Pushed, msg};
    use kennel_proto::msg::Ping;

    fn ping(seq: u64) -> PeerMsg {
        msg(peer_msg::Msg::Ping(Ping { seq }))
    }

    #[tokio::test]
    async fn a_link_is_closed_uninstalled_and_its_calls_failed_when_its_reader_panics() {
        let peers = Peers::default();
        let link = crate::mesh::link::detached("p", Duration::from_secs(10));
        peers.install(link.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let rx = link.call(7, ping(0), deadline).await.unwrap();
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _installed = Installed {
                peers: &peers,
                link: &link,
            };
            panic!("a bug in the reader");
        }));
        assert!(read.is_err());
        assert!(link.closed.is_cancelled());
        assert!(peers.link_of("p").is_none());
        let call = tokio::time::timeout(Duration::from_secs(5), rx).await;
        assert_eq!(
            call.unwrap().unwrap(),
            Err(RpcError::LinkDropped("p".into()))
        );
        // The writer's guard closes the outbox: nothing more is queued.
        let link2 = link.clone();
        drop(CloseOnDrop(link2));
        assert!(matches!(
            link.out.try_push(ping(1), LINK_QUEUE_BYTES),
            Pushed::Closed
        ));
    }
}
