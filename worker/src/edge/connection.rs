//! One client connection's task (PROTOCOL.md): pre-handshake limits, the handshake (md5 of
//! the route list), heartbeats, frames handed to the sink in arrival order, batched writes, and
//! the close path (flush queued frames, the sink's `closed`, unbind). The lifecycle is written
//! once over [`Wire`]; the transport adapters (`wire.rs`) only move bytes.
//!
//! Game code a connection calls (filters, codecs, route functions, handlers, client on/off
//! callbacks) runs behind the routing layer's panic boundaries. Should anything else panic
//! inside a connection's task, the connection is closed and its session still ended: the
//! task's loop runs behind a boundary too, and a drop guard ([`Live`]) forgets the session,
//! unbinds its uid and runs the sink's `closed` on every exit path.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kennel_proto::client::{Frame, HandshakeRequest};
use tokio_util::codec::Decoder;
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::edge::clients::Conn;
use crate::edge::codec::{FrameDecoder, OutFrame};
use crate::edge::connector::{Connector, OpenGuard, RateLimit, RateLimitAction};
use crate::edge::wire::{Wire, write_all};
use crate::edge::{ClientSession, ClientSink, Uid};
use crate::panic::{Panic, guarded};
use crate::stats::{Dropped, LogThrottle};

/// A connection's token bucket: two integers, refilled from the clock once per read.
struct Bucket {
    /// Thousandths of a message available.
    milli: u64,
    /// When it was last refilled ([`now_ms`]).
    at_ms: u64,
}

impl Bucket {
    fn new(r: &RateLimit) -> Bucket {
        Bucket {
            milli: u64::from(r.burst) * 1000,
            at_ms: now_ms(),
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

/// A client connection's transport and read side.
pub(crate) struct ClientIo<W> {
    wire: W,
    /// Bytes read and not yet decoded.
    rbuf: BytesMut,
    codec: FrameDecoder,
}

impl<W: Wire> ClientIo<W> {
    pub(crate) fn new(wire: W, codec: FrameDecoder) -> ClientIo<W> {
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
/// arguments and their moved copies side by side in every connection's task. The size of
/// this future is what every idle connection costs: `tests::future_sizes` pins it.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<W: Wire, K: ClientSink>(
    c: Arc<Connector<K>>,
    mut io: ClientIo<W>,
    addr: SocketAddr,
    held: OpenGuard,
) -> impl Future<Output = ()> + Send {
    async move {
        let _held = held;
        // Boxed: the handshake's state is not kept for the connection's life.
        let opened = guarded(Box::pin(open(&c, &mut io, addr))).await;
        let live = match opened {
            Ok(Some(live)) => live,
            Ok(None) => return,
            Err(p) => return connection_panicked(&c, None, addr, &p),
        };
        let mut out = VecDeque::new();
        let (session, conn) = (&live.session, &live.conn);
        let result = guarded(conn_loop(&c, session, conn, &mut io, &mut out)).await;
        let result = result.unwrap_or_else(|p| {
            connection_panicked(&c, Some(session), addr, &p);
            Err(format!("panic in the connection's task: {}", p.message()))
        });
        let conn_id = conn.id;
        Box::pin(close(live, io.wire, out, result.is_ok())).await;
        if let Err(reason) = result {
            debug!(conn = conn_id, %reason, "client closed");
        }
    }
}

/// Reports a panic that escaped every boundary of a connection's task (kennel's code, or the
/// app's protocol codec): the connection is closed (its session still ended, see [`Live`]).
fn connection_panicked<K: ClientSink>(
    c: &Connector<K>,
    session: Option<&K::Session>,
    addr: SocketAddr,
    p: &Panic,
) {
    tracing::error!(
        server = %c.server_id,
        ip = %addr.ip(),
        uid = %Uid(session.and_then(ClientSession::uid)),
        "panic in a client connection's task: {}; closing that connection",
        p.message()
    );
    c.stats.panic("connection");
}

/// A client session registered with the frontend, ended on every exit path of its task:
/// [`close`] ends it in order; dropped without that (a panic, the task dropped) it still
/// forgets the session, unbinds its uid and runs the sink's `closed` in a new task.
struct Live<K: ClientSink> {
    c: Arc<Connector<K>>,
    session: K::Session,
    conn: Arc<Conn>,
    /// Set once [`close`] has taken over.
    ended: bool,
}

impl<K: ClientSink> Live<K> {
    /// Forgets the session (unbinding its uid) and signals its close; the sink's `closed` is
    /// the caller's to run.
    fn end(&mut self) {
        self.ended = true;
        self.c.clients.remove(self.conn.id, self.session.uid());
        self.conn.close();
    }
}

impl<K: ClientSink> Drop for Live<K> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.end();
        let (c, session) = (self.c.clone(), self.session.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { c.sink.closed(&session).await });
        }
    }
}

/// A client's handshake (before it, one frame of at most 50 bytes of body within the
/// handshake timeout), then its connection and live session: the handshake reply is queued,
/// the session registered (from then on [`Live`] ends it) and the sink's `opened` run.
/// `None` if the handshake failed.
async fn open<W: Wire, K: ClientSink>(
    c: &Arc<Connector<K>>,
    io: &mut ClientIo<W>,
    addr: SocketAddr,
) -> Option<Live<K>> {
    let req = match handshake(io, c.cfg.handshake_timeout).await {
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
    io.codec.max_len = c.cfg.max_len;
    io.wire.handshake_done();
    // Direct writes need the plain socket and no `interval` (which holds frames back).
    let direct = io.wire.direct().filter(|_| c.cfg.interval.is_zero());
    let conn = Arc::new(Conn::new(c.clients.next_id(), c.limits.clone(), direct));
    let session = c.sink.open(conn.clone(), addr.ip().to_string());
    conn.send(c.handshake_reply(&req));
    c.clients.add(conn.clone(), session.clone());
    let live = Live {
        c: c.clone(),
        session,
        conn,
        ended: false,
    };
    c.sink.opened(&live.session).await;
    Some(live)
}

/// Reads and parses the handshake. `Err(None)`: the client left quietly.
async fn handshake<W: Wire>(
    io: &mut ClientIo<W>,
    timeout: Duration,
) -> Result<HandshakeRequest, Option<String>> {
    // Over TLS the handshake time started at the accept (TLS handshake, upgrade and this
    // together); otherwise it starts now.
    let deadline = io
        .wire
        .handshake_deadline()
        .unwrap_or_else(|| tokio::time::Instant::now() + timeout);
    let first = tokio::time::timeout_at(deadline, io.next_frame())
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
async fn conn_loop<W: Wire, K: ClientSink>(
    c: &Connector<K>,
    session: &K::Session,
    conn: &Arc<Conn>,
    io: &mut ClientIo<W>,
    out: &mut VecDeque<Bytes>,
) -> Result<(), String> {
    let cfg = &c.cfg;
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
                rate_limited(c, session, conn, *cmd, r, &dropped_log);
                if conn.is_closing() {
                    break;
                }
                continue;
            }
            handle_frame(c, session, conn, frame).await?;
        }
        if conn.is_closing() {
            return Ok(());
        }
        // Idle (nothing to write, about to wait): others may write to the socket directly
        // until this task runs again (`direct.rs`).
        let mut idle = false;
        if out.len() < OUT_BATCH {
            let was_empty = out.is_empty();
            let may_idle = was_empty && hold.is_none() && !io.wire.write_pending(out);
            idle = conn.take(out, may_idle);
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
        if idle {
            conn.wake();
        }
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
fn rate_limited<K: ClientSink>(
    c: &Connector<K>,
    session: &K::Session,
    conn: &Conn,
    cmd: u16,
    r: &RateLimit,
    log: &LogThrottle,
) {
    let (per_second, burst) = (r.per_second, r.burst);
    let uid = Uid(session.uid());
    match r.action {
        RateLimitAction::Close => {
            c.stats.drops.dropped(Dropped::RateLimitClose);
            warn!(conn = conn.id, ip = session.ip(), %uid, cmd, "client over its rate limit ({per_second} messages/s, burst {burst}): closing");
            conn.close();
        }
        RateLimitAction::Drop => {
            c.stats.drops.dropped(Dropped::RateLimited);
            if let Some(more) = log.tick() {
                warn!(conn = conn.id, ip = session.ip(), %uid, cmd, more, "client over its rate limit ({per_second} messages/s, burst {burst}): message dropped");
            }
        }
    }
}

/// Handles one client frame after the handshake: a heartbeat is noted and answered, a
/// message handed to the sink. `Err` closes the connection.
async fn handle_frame<K: ClientSink>(
    c: &Connector<K>,
    session: &K::Session,
    conn: &Arc<Conn>,
    frame: Frame,
) -> Result<(), String> {
    match frame {
        Frame::Heartbeat => {
            conn.heard();
            conn.send(c.codecs.frame(OutFrame::Heartbeat));
            Ok(())
        }
        Frame::Message { cmd, payload } => {
            // Boxed: the routing future is large, and inline it would sit in every idle
            // connection's task.
            if let Err(e) = Box::pin(c.sink.message(session, cmd, payload)).await {
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

/// Ends a client's session: forgets it, signals its close and runs the sink's `closed`.
/// Unless the socket failed, what the connection still owes the client (e.g. the reason for
/// a kick) is written within a bounded grace, then the transport is closed.
async fn close<W: Wire, K: ClientSink>(
    mut live: Live<K>,
    mut wire: W,
    mut out: VecDeque<Bytes>,
    flush: bool,
) {
    live.end();
    live.c.sink.closed(&live.session).await;
    if !flush {
        return;
    }
    live.conn.take(&mut out, false);
    if let Ok(Ok(())) = tokio::time::timeout(FLUSH_GRACE, write_all(&mut wire, &mut out)).await {
        let _ = tokio::time::timeout(FLUSH_GRACE, wire.shutdown()).await;
    }
}

/// How long a closing connection's last writes may take before the socket is dropped.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

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
