//! The connector of a frontend: accepts game clients over TCP or WebSocket and runs each
//! connection's lifecycle (PROTOCOL.md): pre-handshake limits, handshake (md5 of the route
//! list), heartbeat, frames to routing, and the close path (flush queued frames, `client off`
//! callbacks, unbind), one task per connection. The lifecycle is written once over
//! [`Wire`]; the transport adapters (`wire.rs`) only move bytes.
//!
//! Game code called from a connection (filters, codecs, route functions, handlers, client
//! on/off callbacks) runs behind panic boundaries in routing (`app.rs`). Should anything else
//! panic inside a connection's task, the connection is closed and its session still ended: the
//! task's loop runs behind a boundary too, and a drop guard ([`Live`]) forgets the session,
//! unbinds its uid and runs the `client off` callbacks on every exit path.
//!
//! Over WebSocket each binary message carries one or more whole frames (batched sends put
//! several frames in one message). The WebSocket upgrade has the same handshake timeout, and
//! its message and frame limits follow `maxLen`; before its handshake a WebSocket client may
//! send at most [`WS_PRE_HANDSHAKE_BYTES`] (upgrade included), as a TCP client one small frame.
//!
//! Per connection: a send queue bounded in frames and bytes (`sendQueueBytes`), at most
//! `maxInFlight` handlers in flight (then the socket is not read until one finishes), and a
//! token-bucket rate limit on messages (`rateLimit`: close or drop past it).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kennel_proto::client::{self, Frame, HandshakeReply, HandshakeRequest};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::App;
use crate::codec::{FrameDecoder, OutFrame};
use crate::dispatch::{Panic, guarded};
use crate::frontend::{Conn, ConnLimits, now_ms};
use crate::session::Session;
use crate::stats::{Dropped, LogThrottle};
use crate::wire::{Capped, TcpWire, WS_PRE_HANDSHAKE_BYTES, Wire, WsWire, write_all};

/// The connector's settings are typed and checked in kennel-config when the project loads
/// (a frontend's entry overrides [`App::set_connector`]'s base, see [`App::run`]).
pub use kennel_config::settings::{ConnectorConfig, RateLimit, RateLimitAction, Transport};

const _: () = assert!(
    kennel_config::settings::DEFAULT_CLIENT_MAX_LEN == client::DEFAULT_MAX_LEN,
    "the default maxLen of kennel-config and kennel-proto differ"
);

/// A connection's token bucket: two integers, refilled from the clock once per read.
struct Bucket {
    /// Thousandths of a message available.
    milli: u64,
    /// When it was last refilled ([`crate::frontend::now_ms`]).
    at_ms: u64,
}

impl Bucket {
    fn new(r: &RateLimit) -> Bucket {
        Bucket {
            milli: u64::from(r.burst) * 1000,
            at_ms: crate::frontend::now_ms(),
        }
    }

    /// Adds what `now_ms` earned since the last refill (a message per `1/per_second` s).
    fn refill(&mut self, r: &RateLimit, now_ms: u64) {
        let earned = now_ms.saturating_sub(self.at_ms) * u64::from(r.per_second);
        self.milli = (self.milli + earned).min(u64::from(r.burst) * 1000);
        self.at_ms = now_ms;
    }

    /// Takes one message's token; false when empty.
    fn take(&mut self) -> bool {
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// Accepts clients until `shutdown`.
pub(crate) async fn accept_loop(app: App, listener: TcpListener, shutdown: CancellationToken) {
    let cfg = Arc::new(app.connector_config());
    // Open sockets, handshaken or not (each task holds one count until it ends).
    let open = Arc::new(AtomicUsize::new(0));
    tokio::spawn(close_silent_loop(
        app.clone(),
        cfg.heartbeat,
        shutdown.clone(),
    ));
    while let Some((stream, addr)) = crate::listen::accept(&listener, &shutdown, "client").await {
        if open.load(Ordering::Relaxed) >= cfg.max_connections {
            warn!(%addr, max = cfg.max_connections, "maxConnectionNum reached: closing new client");
            drop(stream);
            continue;
        }
        let held = OpenGuard::new(&open);
        let _ = stream.set_nodelay(cfg.no_delay);
        let (app, cfg) = (app.clone(), cfg.clone());
        match cfg.transport {
            Transport::Tcp => {
                let io = ClientIo::new(TcpWire::new(stream), app.frame_decoder());
                tokio::spawn(serve(app, io, addr, cfg, held))
            }
            Transport::WebSocket => tokio::spawn(serve_ws(app, stream, addr, cfg, held)),
        };
    }
}

/// Closes clients silent for twice the heartbeat, checking once a second until `shutdown`.
/// One sweep for all connections instead of a timer in each (which would cost every
/// connection a timer entry and every heartbeat a timer reset).
async fn close_silent_loop(app: App, heartbeat: u64, shutdown: CancellationToken) {
    if heartbeat == 0 {
        return;
    }
    let limit = Duration::from_secs(2 * heartbeat);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => app.inner.frontend.close_silent(limit),
        }
    }
}

/// Runs a WebSocket client: the upgrade (within the handshake timeout), then [`serve`].
async fn serve_ws(
    app: App,
    stream: TcpStream,
    addr: SocketAddr,
    cfg: Arc<ConnectorConfig>,
    held: OpenGuard,
) {
    let ws_cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(cfg.max_len + 4))
        .max_frame_size(Some(cfg.max_len + 4));
    // Boxed: freed once upgraded, instead of sizing the connection's task.
    let upgrade = Box::pin(tokio::time::timeout(
        cfg.handshake_timeout,
        tokio_tungstenite::accept_async_with_config(
            Capped::new(stream, WS_PRE_HANDSHAKE_BYTES),
            Some(ws_cfg),
        ),
    ));
    let reason = match upgrade.await {
        Ok(Ok(ws)) => {
            let io = ClientIo::new(WsWire::new(ws), app.frame_decoder());
            return serve(app, io, addr, cfg, held).await;
        }
        Ok(Err(e)) => {
            warn!(%addr, cause = %e, "websocket upgrade failed: closing");
            format!("websocket upgrade failed: {e}")
        }
        Err(_) => {
            warn!(%addr, "no websocket upgrade within the handshake timeout: closing");
            "no websocket upgrade within the handshake timeout".into()
        }
    };
    debug!(%addr, %reason, "client closed");
}

/// One count of the open-connection counter, released on drop.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection's transport and read side.
struct ClientIo<W> {
    wire: W,
    /// Bytes read and not yet decoded.
    rbuf: BytesMut,
    codec: FrameDecoder,
}

impl<W: Wire> ClientIo<W> {
    fn new(wire: W, codec: FrameDecoder) -> ClientIo<W> {
        ClientIo {
            wire,
            rbuf: BytesMut::new(),
            codec,
        }
    }

    /// The next frame, reading as needed; `None` at a clean end.
    async fn next_frame(&mut self) -> Option<Result<Frame, String>> {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(f)) => return Some(Ok(f)),
                Ok(None) => {}
                Err(e) => return Some(Err(e.0)),
            }
            match std::future::poll_fn(|cx| self.wire.poll_read_into(cx, &mut self.rbuf)).await {
                Ok(Some(_)) => {}
                Ok(None) if self.rbuf.is_empty() => return None,
                Ok(None) => return Some(Err("connection closed inside a frame".into())),
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}

/// Runs a client connection in one task that reads, routes and writes: the replies to the
/// frames of one read are written together (one vectored write on TCP, one message on
/// WebSocket) once those frames are handled, and pushes from other tasks wake it through the
/// connection's queue. One task per connection (no separate writer) keeps an idle connection
/// small and saves a cross-task wake-up per batch.
///
/// Written as a plain function returning an `async move` block: an `async fn` would keep its
/// arguments and their moved copies side by side in every connection's task.
#[allow(clippy::manual_async_fn)]
fn serve<W: Wire>(
    app: App,
    mut io: ClientIo<W>,
    addr: SocketAddr,
    cfg: Arc<ConnectorConfig>,
    held: OpenGuard,
) -> impl Future<Output = ()> + Send {
    async move {
        let _held = held;
        // Boxed: the handshake's state is not kept for the connection's life.
        let opened = guarded(Box::pin(open(&app, &mut io, addr, &cfg))).await;
        let live = match opened {
            Ok(Some(live)) => live,
            Ok(None) => return,
            Err(p) => return connection_panicked(&app, None, addr, &p),
        };
        let mut out = VecDeque::new();
        let (session, conn) = (&live.session, &live.conn);
        let result = guarded(conn_loop(&app, session, conn, &mut io, &mut out, &cfg)).await;
        let result = result.unwrap_or_else(|p| {
            connection_panicked(&app, Some(session), addr, &p);
            Err(format!("panic in the connection's task: {}", p.message()))
        });
        let conn_id = conn.id;
        Box::pin(close(&app, live, io.wire, out, result.is_ok())).await;
        if let Err(reason) = result {
            debug!(conn = conn_id, %reason, "client closed");
        }
    }
}

/// Reports a panic that escaped every boundary of a connection's task (kennel's code, or the
/// app's protocol codec): the connection is closed (its session still ended, see [`Live`]).
fn connection_panicked(app: &App, session: Option<&Session>, addr: SocketAddr, p: &Panic) {
    tracing::error!(
        server = app.id(),
        ip = %addr.ip(),
        uid = %crate::app::Uid(session.and_then(Session::uid)),
        "panic in a client connection's task: {}; closing that connection",
        p.message()
    );
    app.inner.stats.panic("connection");
}

/// A client session registered with the frontend, ended on every exit path of its task:
/// [`close`] ends it in order; dropped without that (a panic, the task dropped) it still
/// forgets the session, unbinds its uid and runs the `client off` callbacks in a new task.
struct Live {
    app: App,
    session: Session,
    conn: Arc<Conn>,
    /// Set once [`close`] has taken over.
    ended: bool,
}

impl Live {
    /// Forgets the session (unbinding its uid) and signals its close; the `client off`
    /// callbacks are the caller's to run.
    fn end(&mut self) {
        self.ended = true;
        self.app.inner.frontend.remove(&self.session);
        self.conn.close();
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.end();
        let (app, session) = (self.app.clone(), self.session.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { app.client_off(&session).await });
        }
    }
}

/// A client's handshake (before it, one frame of at most 50 bytes of body within the
/// handshake timeout), then its connection and live session: the handshake reply is queued,
/// the session registered (from then on [`Live`] ends it) and the `client on` callbacks run.
/// `None` if the handshake failed.
async fn open<W: Wire>(
    app: &App,
    io: &mut ClientIo<W>,
    addr: SocketAddr,
    cfg: &ConnectorConfig,
) -> Option<Live> {
    let req = match handshake(io, cfg).await {
        Ok(req) => req,
        Err(reason) => {
            let reason = match reason {
                Some(reason) => {
                    warn!(ip = %addr.ip(), %reason, "client rejected before its handshake: closing");
                    reason
                }
                None => "closed before handshake".into(),
            };
            debug!(%addr, %reason, "client closed");
            return None;
        }
    };
    io.codec.max_len = cfg.max_len;
    io.wire.handshake_done();
    let limits = app.inner.frontend.limits(|| ConnLimits {
        send_queue_bytes: cfg.send_queue_bytes,
        max_in_flight: cfg.max_in_flight,
        drops: app.inner.stats.drops.clone(),
    });
    let conn = Arc::new(Conn::new(app.inner.frontend.next_id(), limits));
    let session = Session::frontend(app, conn.clone(), addr.ip().to_string());
    conn.send(handshake_reply(app, &req, cfg.heartbeat));
    app.inner.frontend.add(session.clone());
    let live = Live {
        app: app.clone(),
        session,
        conn,
        ended: false,
    };
    app.client_on(&live.session).await;
    Some(live)
}

/// Reads and parses the handshake. `Err(None)`: the client left quietly.
async fn handshake<W: Wire>(
    io: &mut ClientIo<W>,
    cfg: &ConnectorConfig,
) -> Result<HandshakeRequest, Option<String>> {
    let first = tokio::time::timeout(cfg.handshake_timeout, io.next_frame())
        .await
        .map_err(|_| Some("no handshake within the timeout".to_string()))?;
    let body = match first {
        Some(Ok(Frame::Handshake(body))) => body,
        Some(Ok(other)) => return Err(Some(format!("expected a handshake, got {other:?}"))),
        Some(Err(e)) => return Err(Some(format!("before handshake: {e}"))),
        None => return Err(None),
    };
    serde_json::from_slice(&body).map_err(|e| Some(format!("bad handshake JSON: {e}")))
}

fn handshake_reply(app: &App, req: &HandshakeRequest, heartbeat: u64) -> Bytes {
    let md5 = app.inner.route_md5.clone();
    let route = (req.md5 != md5).then(|| app.inner.route_names.clone());
    let reply = HandshakeReply {
        md5,
        heartbeat,
        route,
    };
    let body = serde_json::to_vec(&reply).expect("handshake reply serializes");
    app.codecs().frame(OutFrame::Handshake(&body))
}

/// What woke a connection's task.
enum Event {
    /// Bytes were read or written, or the queue/close signal fired.
    Progress,
    /// The client closed its side.
    Eof,
}

/// Frames moved from the connection's queue to its writes at a time: beyond it the queue
/// fills and a client that does not read is closed.
const OUT_BATCH: usize = 64;

/// The connection's loop until the client leaves, the server closes it, or an error.
async fn conn_loop<W: Wire>(
    app: &App,
    session: &Session,
    conn: &Conn,
    io: &mut ClientIo<W>,
    out: &mut VecDeque<Bytes>,
    cfg: &ConnectorConfig,
) -> Result<(), String> {
    let queued = conn.queued();
    tokio::pin!(queued);
    // With an `interval`, frames are held this long before they are written.
    let mut hold: Option<Pin<Box<tokio::time::Sleep>>> = None;
    // The rate limit's bucket, refilled once per wake-up (not per message).
    let mut bucket = cfg.rate_limit.as_ref().map(Bucket::new);
    let dropped_log = LogThrottle::new();
    loop {
        if let (Some(b), Some(r)) = (bucket.as_mut(), cfg.rate_limit.as_ref()) {
            b.refill(r, now_ms());
        }
        // Frames already read are handled first, so their replies go out together; none
        // while `maxInFlight` handlers of this connection are still running (back-pressure:
        // the socket is not read either until one finishes).
        while !conn.at_in_flight_limit() {
            let frame = match io.codec.decode(&mut io.rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    warn!(conn = conn.id, ip = session.ip(), cause = %e.0, "bad client frame: closing");
                    return Err(e.0);
                }
            };
            if let (Frame::Message { cmd, .. }, Some(b), Some(r)) =
                (&frame, bucket.as_mut(), cfg.rate_limit.as_ref())
                && !b.take()
            {
                rate_limited(app, session, conn, *cmd, r, &dropped_log);
                if conn.is_closing() {
                    break;
                }
                continue;
            }
            handle_frame(app, session, conn, frame).await?;
        }
        if conn.is_closing() {
            return Ok(());
        }
        if out.len() < OUT_BATCH {
            let was_empty = out.is_empty();
            conn.take(out);
            if was_empty && !out.is_empty() && !cfg.interval.is_zero() {
                hold = Some(Box::pin(tokio::time::sleep(cfg.interval)));
            }
        }
        let reading = !conn.at_in_flight_limit();
        let event = std::future::poll_fn(|cx| {
            if io.wire.write_pending(out) {
                let held = hold
                    .as_mut()
                    .is_some_and(|h| h.as_mut().poll(cx).is_pending());
                if !held {
                    match io.wire.poll_write_from(cx, out) {
                        Poll::Ready(Ok(taken)) => {
                            conn.written(taken);
                            if out.is_empty() {
                                hold = None;
                            }
                            return Poll::Ready(Ok(Event::Progress));
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                }
            }
            if reading {
                match io.wire.poll_read_into(cx, &mut io.rbuf) {
                    Poll::Ready(Ok(Some(_))) => return Poll::Ready(Ok(Event::Progress)),
                    Poll::Ready(Ok(None)) => return Poll::Ready(Ok(Event::Eof)),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if queued.as_mut().poll(cx).is_ready() {
                queued.set(conn.queued());
                return Poll::Ready(Ok(Event::Progress));
            }
            Poll::Pending
        })
        .await;
        match event {
            Ok(Event::Progress) => {}
            Ok(Event::Eof) => return Ok(()),
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    warn!(conn = conn.id, ip = session.ip(), cause = %e, "bad client frame: closing");
                }
                // Nothing more can be written: queued frames are dropped with the socket.
                out.clear();
                return Err(e.to_string());
            }
        }
    }
}

/// A message past the client's rate limit: closes the connection (logged; what it was owed
/// is still written) or drops the message (logged once a second per connection), as
/// configured; counted either way.
fn rate_limited(
    app: &App,
    session: &Session,
    conn: &Conn,
    cmd: u16,
    r: &RateLimit,
    log: &LogThrottle,
) {
    let (per_second, burst) = (r.per_second, r.burst);
    let uid = session
        .uid()
        .map_or_else(|| "-".to_string(), |u| u.to_string());
    match r.action {
        RateLimitAction::Close => {
            app.inner.stats.drops.dropped(Dropped::RateLimitClose);
            warn!(conn = conn.id, ip = session.ip(), %uid, cmd, "client over its rate limit ({per_second} messages/s, burst {burst}): closing");
            conn.close();
        }
        RateLimitAction::Drop => {
            app.inner.stats.drops.dropped(Dropped::RateLimited);
            if let Some(more) = log.tick() {
                warn!(conn = conn.id, ip = session.ip(), %uid, cmd, more, "client over its rate limit ({per_second} messages/s, burst {burst}): message dropped");
            }
        }
    }
}

/// Handles one client frame after the handshake: a heartbeat is noted and answered, a
/// message routed. `Err` closes the connection.
async fn handle_frame(
    app: &App,
    session: &Session,
    conn: &Conn,
    frame: Frame,
) -> Result<(), String> {
    match frame {
        Frame::Heartbeat => {
            conn.heard();
            conn.send(app.codecs().frame(OutFrame::Heartbeat));
            Ok(())
        }
        Frame::Message { cmd, payload } => {
            // Boxed: the routing future is large, and inline it would sit in every idle
            // connection's task.
            if let Err(e) = Box::pin(app.route_client_message(session, cmd, payload)).await {
                warn!(conn = conn.id, ip = session.ip(), cmd, "{e}: closing");
                return Err(e);
            }
            Ok(())
        }
        Frame::Handshake(_) => {
            warn!(conn = conn.id, "second handshake: closing");
            Err("second handshake".into())
        }
    }
}

/// Ends a client's session: forgets it, signals its close and runs the `client off`
/// callbacks. Unless the socket failed, what the connection still owes the client (e.g. the
/// reason for a kick) is written within a bounded grace, then the transport is closed.
async fn close<W: Wire>(
    app: &App,
    mut live: Live,
    mut wire: W,
    mut out: VecDeque<Bytes>,
    flush: bool,
) {
    live.end();
    let conn = &live.conn;
    app.client_off(&live.session).await;
    if !flush {
        return;
    }
    conn.take(&mut out);
    if let Ok(Ok(())) = tokio::time::timeout(FLUSH_GRACE, write_all(&mut wire, &mut out)).await {
        let _ = tokio::time::timeout(FLUSH_GRACE, wire.shutdown()).await;
    }
}

/// How long a closing connection's last writes may take before the socket is dropped.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// Logs where clients connect.
pub(crate) fn log_listening(app: &App, addr: &std::net::SocketAddr, transport: Transport) {
    let t = match transport {
        Transport::Tcp => "tcp",
        Transport::WebSocket => "ws",
    };
    info!(id = app.id(), %addr, transport = t, "accepting game clients");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let r = RateLimit {
            per_second: 100,
            burst: 5,
            action: RateLimitAction::Close,
        };
        let mut b = Bucket {
            milli: 5000,
            at_ms: 1000,
        };
        assert!((0..5).all(|_| b.take()), "the burst");
        assert!(!b.take(), "then empty");
        b.refill(&r, 1009); // 9 ms at 100/s: not yet one message
        assert!(!b.take());
        b.refill(&r, 1010);
        assert!(b.take(), "one message per 10 ms");
        b.refill(&r, 100_000); // long idle: back to the burst, no more
        assert!((0..5).all(|_| b.take()) && !b.take());
    }
}
