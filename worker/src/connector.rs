//! The connector of a frontend: accepts game clients over TCP or WebSocket and runs each
//! connection's lifecycle (PROTOCOL.md): pre-handshake limits, handshake (md5 of the route
//! list), heartbeat, frames to routing, and the close path (flush queued frames, `client off`
//! callbacks, unbind). The lifecycle is written once over [`FrameRead`]/[`FrameWrite`]; the
//! transport adapters at the bottom only move frames.
//!
//! Over WebSocket each binary message carries one or more whole frames (batched sends put
//! several frames in one message). The WebSocket upgrade has the same handshake timeout, and
//! its message and frame limits follow `maxLen`.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use kennel_proto::client::{self, Frame, HandshakeReply, HandshakeRequest};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::App;
use crate::codec::{FrameDecoder, OutFrame};
use crate::frontend::Conn;
use crate::session::Session;

/// How game clients reach a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Frames on a TCP stream (mydog `connector.Tcp`).
    #[default]
    Tcp,
    /// Frames in binary WebSocket messages (mydog `connector.Ws`).
    WebSocket,
}

/// Frontend connector settings (mydog's `connector` config). A frontend's entry in
/// `servers.json` may override them with `connector` (`"tcp"`/`"ws"`), `heartbeat`,
/// `maxConnectionNum`, `maxLen`, `noDelay`, `interval` (ms) and `handshakeTimeout` (seconds).
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// TCP or WebSocket.
    pub transport: Transport,
    /// Heartbeat interval in seconds announced to clients; a client silent for twice this long
    /// is closed. 0 turns heartbeats off.
    pub heartbeat: u64,
    /// Largest frame `len` a client may send (type byte + body).
    pub max_len: usize,
    /// Connections beyond this are closed at once. Connections still before their handshake
    /// count too, so a flood of idle sockets cannot get past it.
    pub max_connections: usize,
    /// A client that has not completed its handshake by then is closed.
    pub handshake_timeout: Duration,
    /// Disable Nagle's algorithm on client sockets.
    pub no_delay: bool,
    /// Send batching: frames to a client are held up to this long and written together
    /// (key `interval`, in ms; 0 = write at once). Queued frames are flushed on close.
    pub interval: Duration,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            transport: Transport::Tcp,
            heartbeat: 60,
            max_len: client::DEFAULT_MAX_LEN,
            max_connections: 20_000,
            handshake_timeout: Duration::from_secs(10),
            no_delay: true,
            interval: Duration::ZERO,
        }
    }
}

impl ConnectorConfig {
    /// Applies the overrides of a server entry's extra keys; an invalid value is an error
    /// naming the key.
    pub(crate) fn apply_entry(
        &mut self,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        use serde_json::Value;
        if let Some(v) = extra.get("connector") {
            self.transport = match v.as_str() {
                Some("tcp") => Transport::Tcp,
                Some("ws") | Some("websocket") => Transport::WebSocket,
                _ => return Err(format!("connector must be \"tcp\" or \"ws\", not {v}")),
            };
        }
        let num = |k: &str| -> Result<Option<u64>, String> {
            match extra.get(k) {
                None => Ok(None),
                Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
                Some(v) => Err(format!("{k} must be a non-negative integer, not {v}")),
            }
        };
        if let Some(h) = num("heartbeat")? {
            self.heartbeat = h;
        }
        if let Some(n) = num("maxConnectionNum")? {
            self.max_connections = n as usize;
        }
        if let Some(n) = num("handshakeTimeout")? {
            if n == 0 {
                return Err("handshakeTimeout must be at least 1 (seconds), not 0".into());
            }
            self.handshake_timeout = Duration::from_secs(n);
        }
        if let Some(n) = num("maxLen")? {
            if n < 3 {
                return Err(format!("maxLen must be at least 3, not {n}"));
            }
            self.max_len = n as usize;
        }
        if let Some(ms) = num("interval")? {
            self.interval = Duration::from_millis(ms);
        }
        match extra.get("noDelay") {
            None => {}
            Some(Value::Bool(b)) => self.no_delay = *b,
            Some(v) => return Err(format!("noDelay must be true or false, not {v}")),
        }
        Ok(())
    }
}

/// Accepts clients until `shutdown`.
pub(crate) async fn accept_loop(app: App, listener: TcpListener, shutdown: CancellationToken) {
    let cfg = Arc::new(app.connector_config());
    // Open sockets, handshaken or not (each task holds one count until it ends).
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(close_silent_loop(
        app.clone(),
        cfg.heartbeat,
        shutdown.clone(),
    ));
    while let Some((stream, addr)) = crate::listen::accept(&listener, &shutdown, "client").await {
        if open.load(std::sync::atomic::Ordering::Relaxed) >= cfg.max_connections {
            warn!(%addr, max = cfg.max_connections, "maxConnectionNum reached: closing new client");
            drop(stream);
            continue;
        }
        let held = OpenGuard::new(&open);
        let _ = stream.set_nodelay(cfg.no_delay);
        let (app, cfg) = (app.clone(), cfg.clone());
        // One task per transport: a task is as large as its largest state, for its whole life.
        match cfg.transport {
            Transport::Tcp => {
                let io = TcpIo {
                    stream,
                    // Small at first: most messages are; the buffer grows for larger frames.
                    rbuf: BytesMut::with_capacity(READ_MIN),
                    read_hint: READ_MIN,
                    codec: app.frame_decoder(),
                };
                tokio::spawn(serve_tcp(app, io, addr, cfg, held))
            }
            Transport::WebSocket => tokio::spawn(serve_ws(app, stream, addr, cfg, held)),
        };
    }
}

/// Closes clients silent for twice the heartbeat, checking once a second until `shutdown`.
/// One sweep for all connections instead of a timer in each (which would cost every
/// connection a timer entry and every heartbeat a timer reset).
pub(crate) async fn close_silent_loop(app: App, heartbeat: u64, shutdown: CancellationToken) {
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

/// Runs a TCP client in one task that reads, routes and writes: the replies to the frames of
/// one read are written together (one vectored write) once those frames are handled, and
/// pushes from other tasks wake it through the connection's queue. One task (no separate
/// writer) keeps an idle connection small and saves a cross-task wake-up per batch.
///
/// Written as a plain function returning an `async move` block: an `async fn` would keep its
/// arguments and their moved copies side by side in every connection's task.
#[allow(clippy::manual_async_fn)]
fn serve_tcp(
    app: App,
    mut io: TcpIo,
    addr: SocketAddr,
    cfg: Arc<ConnectorConfig>,
    held: OpenGuard,
) -> impl Future<Output = ()> + Send {
    async move {
        let _held = held;
        // Boxed: the handshake's state is not kept for the connection's life.
        let Some((conn, session)) = Box::pin(tcp_open(&app, &mut io, addr, &cfg)).await else {
            return;
        };
        let mut out = VecDeque::new();
        let result = tcp_loop(&app, &session, &conn, &mut io, &mut out, &cfg).await;
        let conn_id = conn.id;
        Box::pin(tcp_close(&app, session, conn, io, out, result.is_ok())).await;
        if let Err(reason) = result {
            debug!(conn = conn_id, %reason, "client closed");
        }
    }
}

/// A TCP client's handshake and session; `None` if the client failed its handshake.
async fn tcp_open(
    app: &App,
    io: &mut TcpIo,
    addr: SocketAddr,
    cfg: &ConnectorConfig,
) -> Option<(Arc<Conn>, Session)> {
    match handshake(io, cfg).await {
        Ok(req) => {
            io.codec.max_len = cfg.max_len;
            Some(open_session(app, addr, &req, cfg.heartbeat).await)
        }
        Err(reason) => {
            let reason = rejected(addr, reason);
            debug!(%addr, %reason, "client closed");
            None
        }
    }
}

/// Ends a TCP client's session; unless the socket failed, what the connection still owes the
/// client (e.g. the reason for a kick) is written within a bounded grace, then the socket is
/// shut down.
async fn tcp_close(
    app: &App,
    session: Session,
    conn: Arc<Conn>,
    mut io: TcpIo,
    mut out: VecDeque<Bytes>,
    flush: bool,
) {
    close_session(app, session, &conn).await;
    if !flush {
        return;
    }
    conn.take(&mut out);
    let write = std::future::poll_fn(|cx| {
        while !out.is_empty() {
            std::task::ready!(poll_write_frames(Pin::new(&mut io.stream), cx, &mut out))?;
        }
        Poll::Ready(io::Result::Ok(()))
    });
    if let Ok(Ok(())) = tokio::time::timeout(FLUSH_GRACE, write).await {
        let _ = io.stream.shutdown().await;
    }
}

/// A TCP client's socket and read side.
struct TcpIo {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Free space wanted before a read: grows while reads fill the buffer (a busy client gets
    /// few large reads), shrinks when they stop (an idle client keeps a small buffer).
    read_hint: usize,
    codec: FrameDecoder,
}

/// Smallest and largest read size a connection asks for.
const READ_MIN: usize = 64;
const READ_MAX: usize = 64 * 1024;

impl TcpIo {
    /// Adapts the read size to a read of `n` bytes into `spare` free bytes.
    fn adapt(&mut self, n: usize, spare: usize) {
        if n == spare {
            self.read_hint = (self.read_hint * 2).min(READ_MAX);
        } else if n < self.read_hint / 8 {
            self.read_hint = (self.read_hint / 2).max(READ_MIN);
        }
    }
}

/// What woke a TCP connection's task.
enum TcpEvent {
    /// Bytes were read or written, or the queue/close signal fired.
    Progress,
    /// The client closed its side.
    Eof,
}

/// Frames written by one vectored write at most.
const WRITE_SLICES: usize = 64;

/// The TCP connection's loop until the client leaves, the server closes it, or an error.
async fn tcp_loop(
    app: &App,
    session: &Session,
    conn: &Conn,
    io: &mut TcpIo,
    out: &mut VecDeque<Bytes>,
    cfg: &ConnectorConfig,
) -> Result<(), String> {
    let queued = conn.queued();
    tokio::pin!(queued);
    // With an `interval`, frames are held this long before they are written.
    let mut hold: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        // Frames already read are handled first, so their replies go out in one write.
        loop {
            let frame = match io.codec.decode(&mut io.rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    warn!(conn = conn.id, ip = session.ip(), cause = %e.0, "bad client frame: closing");
                    return Err(e.0);
                }
            };
            handle_frame(app, session, conn, frame).await?;
        }
        if conn.closing.is_cancelled() {
            return Ok(());
        }
        if out.len() < WRITE_SLICES {
            let was_empty = out.is_empty();
            conn.take(out);
            if was_empty && !out.is_empty() && !cfg.interval.is_zero() {
                hold = Some(Box::pin(tokio::time::sleep(cfg.interval)));
            }
        }
        let event = std::future::poll_fn(|cx| {
            if !out.is_empty() {
                let held = hold
                    .as_mut()
                    .is_some_and(|h| h.as_mut().poll(cx).is_pending());
                if !held {
                    match poll_write_frames(Pin::new(&mut io.stream), cx, out) {
                        Poll::Ready(Ok(())) => {
                            if out.is_empty() {
                                hold = None;
                            }
                            return Poll::Ready(Ok(TcpEvent::Progress));
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                }
            }
            let spare = io.rbuf.capacity() - io.rbuf.len();
            if spare < io.read_hint {
                io.rbuf.reserve(io.read_hint);
            }
            let spare = io.rbuf.capacity() - io.rbuf.len();
            match tokio_util::io::poll_read_buf(Pin::new(&mut io.stream), cx, &mut io.rbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(TcpEvent::Eof)),
                Poll::Ready(Ok(n)) => {
                    io.adapt(n, spare);
                    return Poll::Ready(Ok(TcpEvent::Progress));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if queued.as_mut().poll(cx).is_ready() {
                queued.set(conn.queued());
                return Poll::Ready(Ok(TcpEvent::Progress));
            }
            Poll::Pending
        })
        .await;
        match event {
            Ok(TcpEvent::Progress) => {}
            Ok(TcpEvent::Eof) => return Ok(()),
            Err(e) => {
                // Nothing more can be written: queued frames are dropped with the socket.
                out.clear();
                return Err(format!("socket: {e}"));
            }
        }
    }
}

/// Writes the front of `out` with one vectored write, dropping what was written (a partly
/// written frame keeps its rest).
fn poll_write_frames(
    stream: Pin<&mut TcpStream>,
    cx: &mut std::task::Context<'_>,
    out: &mut VecDeque<Bytes>,
) -> Poll<io::Result<()>> {
    let written = {
        let mut slices = [io::IoSlice::new(&[]); WRITE_SLICES];
        let n = out
            .iter()
            .zip(slices.iter_mut())
            .map(|(f, s)| *s = io::IoSlice::new(f))
            .count();
        std::task::ready!(stream.poll_write_vectored(cx, &slices[..n]))?
    };
    if written == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    let mut left = written;
    while let Some(front) = out.front_mut() {
        if front.len() > left {
            front.advance(left);
            break;
        }
        left -= front.len();
        out.pop_front();
    }
    Poll::Ready(Ok(()))
}

/// Runs a WebSocket client: the upgrade (within the handshake timeout), then frames in binary
/// messages.
async fn serve_ws(
    app: App,
    stream: TcpStream,
    addr: SocketAddr,
    cfg: Arc<ConnectorConfig>,
    _held: OpenGuard,
) {
    let ws_cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(cfg.max_len + 4))
        .max_frame_size(Some(cfg.max_len + 4));
    // Boxed: freed once upgraded, instead of sizing the connection's task.
    let upgrade = Box::pin(tokio_tungstenite::accept_async_with_config(
        stream,
        Some(ws_cfg),
    ));
    let result = match tokio::time::timeout(cfg.handshake_timeout, upgrade).await {
        Ok(Ok(ws)) => {
            let (sink, stream) = ws.split();
            let reader = WsRead {
                stream,
                buf: BytesMut::new(),
                codec: app.frame_decoder(),
            };
            serve_ws_frames(app, reader, WsWrite(sink), addr, &cfg).await
        }
        Ok(Err(e)) => {
            warn!(%addr, cause = %e, "websocket upgrade failed: closing");
            Err(format!("websocket upgrade failed: {e}"))
        }
        Err(_) => {
            warn!(%addr, "no websocket upgrade within the handshake timeout: closing");
            Err("no websocket upgrade within the handshake timeout".into())
        }
    };
    if let Err(reason) = result {
        debug!(%addr, %reason, "client closed");
    }
}

/// One count of the open-connection counter, released on drop.
struct OpenGuard(Arc<std::sync::atomic::AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<std::sync::atomic::AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads client frames from a transport.
pub(crate) trait FrameRead: Send {
    /// The next frame; `None` at a clean end.
    fn next_frame(&mut self) -> impl Future<Output = Option<Result<Frame, String>>> + Send;
    /// Changes the largest accepted frame.
    fn set_max_len(&mut self, max: usize);
}

/// Runs a WebSocket client connection to its end: a reader (this task) and a writer task.
/// Returns why it closed.
async fn serve_ws_frames(
    app: App,
    mut reader: WsRead,
    writer: WsWrite,
    addr: SocketAddr,
    cfg: &ConnectorConfig,
) -> Result<(), String> {
    let req = match handshake(&mut reader, cfg).await {
        Ok(req) => req,
        Err(reason) => return Err(rejected(addr, reason)),
    };
    reader.set_max_len(cfg.max_len);
    let (conn, session) = open_session(&app, addr, &req, cfg.heartbeat).await;
    let writer = tokio::spawn(write_loop(writer, conn.clone(), cfg.interval));
    let result = read_loop(&app, &session, &mut reader).await;
    close_session(&app, session, &conn).await;
    drop(conn);
    let _ = writer.await;
    result
}

/// Creates the connection and its live session after a handshake: queues the handshake
/// reply, registers the session and runs the `client on` callbacks.
async fn open_session(
    app: &App,
    addr: SocketAddr,
    req: &HandshakeRequest,
    heartbeat: u64,
) -> (Arc<Conn>, Session) {
    let conn = Arc::new(Conn::new(app.inner.frontend.next_id()));
    let session = Session::frontend(app, conn.clone(), addr.ip().to_string());
    conn.send(handshake_reply(app, req, heartbeat));
    app.inner.frontend.add(session.clone());
    app.client_on(&session).await;
    (conn, session)
}

/// Forgets a closed connection's session, signals its close and runs the `client off`
/// callbacks.
async fn close_session(app: &App, session: Session, conn: &Conn) {
    app.inner.frontend.remove(&session);
    conn.close();
    app.client_off(&session).await;
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

/// Logs a client that failed its handshake (`None`: it left quietly) and says why.
fn rejected(addr: SocketAddr, reason: Option<String>) -> String {
    match reason {
        Some(reason) => {
            warn!(ip = %addr.ip(), %reason, "client rejected before its handshake: closing");
            reason
        }
        None => "closed before handshake".into(),
    }
}

/// Reads and parses the handshake: before it, one frame of at most 50 bytes of body within
/// the handshake timeout. `Err(None)`: the client left quietly.
async fn handshake<R: FrameRead>(
    reader: &mut R,
    cfg: &ConnectorConfig,
) -> Result<HandshakeRequest, Option<String>> {
    let first = tokio::time::timeout(cfg.handshake_timeout, reader.next_frame())
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

/// The WebSocket reader's loop: frames to [`handle_frame`] until the client leaves, the
/// server closes the connection, or an error.
async fn read_loop(app: &App, session: &Session, reader: &mut WsRead) -> Result<(), String> {
    let conn = session.conn().expect("frontend session").clone();
    loop {
        let frame = tokio::select! {
            _ = conn.closing.cancelled() => return Ok(()),
            f = reader.next_frame() => f,
        };
        match frame {
            None => return Ok(()),
            Some(Err(e)) => {
                warn!(conn = conn.id, ip = session.ip(), cause = %e, "bad client frame: closing");
                return Err(e);
            }
            Some(Ok(frame)) => handle_frame(app, session, &conn, frame).await?,
        }
    }
}

/// Writes queued frames, coalescing whatever is queued into one write; with an `interval`,
/// frames are held up to that long to batch more. On `closing` it writes what is still queued,
/// then shuts the transport down.
async fn write_loop(mut wr: WsWrite, conn: Arc<Conn>, interval: Duration) {
    let closing = &conn.closing;
    let mut frames: VecDeque<Bytes> = VecDeque::new();
    let mut buf = BytesMut::new();
    loop {
        conn.take(&mut frames);
        if frames.is_empty() {
            // An idle connection keeps no batch memory.
            if frames.capacity() > 64 {
                frames = VecDeque::new();
            }
            tokio::select! {
                biased;
                _ = conn.queued() => continue,
                _ = closing.cancelled() => {
                    conn.take(&mut frames);
                    for f in frames.drain(..) {
                        buf.extend_from_slice(&f);
                    }
                    if !buf.is_empty() {
                        let last = buf.split().freeze();
                        let _ = tokio::time::timeout(FLUSH_GRACE, wr.write(last)).await;
                    }
                    break;
                }
            }
        }
        if !interval.is_zero() && !closing.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = closing.cancelled() => {}
            }
            conn.take(&mut frames);
        }
        let batch = if frames.len() == 1 {
            frames.pop_front().expect("one frame")
        } else {
            while buf.len() < 64 * 1024 {
                match frames.pop_front() {
                    Some(f) => buf.extend_from_slice(&f),
                    None => break,
                }
            }
            buf.split().freeze()
        };
        // A write blocked on a client that does not read must not hold the connection open
        // once it is closing: it gets the same bounded grace as the final flush.
        let write = wr.write(batch);
        tokio::pin!(write);
        let ok = tokio::select! {
            r = &mut write => r.is_ok(),
            _ = closing.cancelled() => {
                matches!(tokio::time::timeout(FLUSH_GRACE, &mut write).await, Ok(Ok(())))
            }
        };
        if !ok {
            conn.close();
            return;
        }
    }
    wr.shutdown().await;
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

// ---------------------------------------------------------------------- TCP

impl FrameRead for TcpIo {
    async fn next_frame(&mut self) -> Option<Result<Frame, String>> {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(f)) => return Some(Ok(f)),
                Ok(None) => {}
                Err(e) => return Some(Err(e.0)),
            }
            if self.rbuf.len() == self.rbuf.capacity() {
                self.rbuf.reserve(64);
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) if self.rbuf.is_empty() => return None,
                Ok(0) => return Some(Err("connection closed inside a frame".into())),
                Ok(_) => {}
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }

    fn set_max_len(&mut self, max: usize) {
        self.codec.max_len = max;
    }
}

// ---------------------------------------------------------------------- WebSocket

struct WsRead {
    stream: SplitStream<WebSocketStream<TcpStream>>,
    buf: BytesMut,
    codec: FrameDecoder,
}

impl FrameRead for WsRead {
    async fn next_frame(&mut self) -> Option<Result<Frame, String>> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(f)) => return Some(Ok(f)),
                Ok(None) => {}
                Err(e) => return Some(Err(e.0)),
            }
            match self.stream.next().await {
                None | Some(Ok(Message::Close(_))) => return None,
                Some(Err(e)) => return Some(Err(format!("websocket: {e}"))),
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(Message::Text(_))) => {
                    return Some(Err(
                        "text websocket message (frames travel in binary messages)".into(),
                    ));
                }
                Some(Ok(_)) => {} // ping/pong: answered by tungstenite
            }
        }
    }

    fn set_max_len(&mut self, max: usize) {
        self.codec.max_len = max;
    }
}

struct WsWrite(SplitSink<WebSocketStream<TcpStream>, Message>);

impl WsWrite {
    async fn write(&mut self, frames: Bytes) -> io::Result<()> {
        self.0
            .send(Message::Binary(frames))
            .await
            .map_err(io::Error::other)
    }

    async fn shutdown(&mut self) {
        let _ = self.0.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entry_overrides_and_errors() {
        let mut c = ConnectorConfig::default();
        let extra = json!({"connector": "ws", "heartbeat": 5, "maxConnectionNum": 7, "maxLen": 1000, "noDelay": false, "interval": 20, "handshakeTimeout": 3});
        c.apply_entry(extra.as_object().unwrap()).unwrap();
        assert_eq!(c.transport, Transport::WebSocket);
        assert_eq!(
            (c.heartbeat, c.max_connections, c.max_len, c.no_delay),
            (5, 7, 1000, false)
        );
        assert_eq!(c.interval, Duration::from_millis(20));
        assert_eq!(c.handshake_timeout, Duration::from_secs(3));
        for bad in [
            json!({"connector": "udp"}),
            json!({"heartbeat": -1}),
            json!({"maxLen": 1}),
            json!({"noDelay": "yes"}),
            json!({"interval": 1.5}),
            json!({"handshakeTimeout": 0}),
            json!({"handshakeTimeout": 1.5}),
        ] {
            let err = ConnectorConfig::default()
                .apply_entry(bad.as_object().unwrap())
                .unwrap_err();
            let key = bad.as_object().unwrap().keys().next().unwrap().clone();
            assert!(err.contains(&key), "{err}");
        }
    }
}
