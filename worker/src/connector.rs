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
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use kennel_proto::client::{self, Frame, HandshakeReply, HandshakeRequest};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::codec::{Decoder, FramedRead};
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
            Transport::Tcp => tokio::spawn(serve_tcp(app, stream, addr, cfg, held)),
            Transport::WebSocket => tokio::spawn(serve_ws(app, stream, addr, cfg, held)),
        };
    }
}

/// Runs a TCP client.
async fn serve_tcp(
    app: App,
    stream: TcpStream,
    addr: SocketAddr,
    cfg: Arc<ConnectorConfig>,
    _held: OpenGuard,
) {
    let (rd, wr) = stream.into_split();
    // Small at first: most messages are; the buffer grows for larger frames.
    let reader = TcpRead(FramedRead::with_capacity(rd, app.frame_decoder(), 64));
    let ip = addr.ip().to_string();
    if let Err(reason) = serve(app, reader, TcpWrite(wr), ip, &cfg).await {
        debug!(%addr, %reason, "client closed");
    }
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
            let ip = addr.ip().to_string();
            serve(app, reader, WsWrite(sink), ip, &cfg).await
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

/// Writes encoded frames to a transport.
pub(crate) trait FrameWrite: Send + 'static {
    /// Writes one buffer of whole frames.
    fn write(&mut self, frames: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the transport's sending side.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// Runs one client connection to its end. Returns why it closed.
async fn serve<R: FrameRead, W: FrameWrite>(
    app: App,
    mut reader: R,
    writer: W,
    ip: String,
    cfg: &ConnectorConfig,
) -> Result<(), String> {
    let req = match handshake(&mut reader, cfg).await {
        Ok(req) => req,
        Err(None) => return Err("closed before handshake".into()),
        Err(Some(reason)) => {
            warn!(%ip, %reason, "client rejected before its handshake: closing");
            return Err(reason);
        }
    };
    reader.set_max_len(cfg.max_len);

    let conn = Arc::new(Conn::new(app.inner.frontend.next_id()));
    let session = Session::frontend(&app, conn.clone(), ip);
    conn.send(handshake_reply(&app, &req, cfg.heartbeat));
    let writer = tokio::spawn(write_loop(writer, conn.clone(), cfg.interval));
    app.inner.frontend.add(session.clone());
    app.client_on(&session).await;

    let result = read_loop(&app, &session, &mut reader, cfg.heartbeat).await;

    app.inner.frontend.remove(&session);
    conn.close();
    drop(conn);
    app.client_off(&session).await;
    drop(session);
    let _ = writer.await;
    result
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

async fn read_loop<R: FrameRead>(
    app: &App,
    session: &Session,
    reader: &mut R,
    heartbeat: u64,
) -> Result<(), String> {
    let conn = session.conn().expect("frontend session").clone();
    let limit = Duration::from_secs(2 * heartbeat);
    let silent = tokio::time::sleep(limit);
    tokio::pin!(silent);
    loop {
        let frame = tokio::select! {
            _ = conn.closing.cancelled() => return Ok(()),
            _ = &mut silent, if heartbeat > 0 => {
                warn!(conn = conn.id, ip = session.ip(), "no heartbeat for {} s: closing", limit.as_secs());
                return Err("heartbeat timeout".into());
            }
            f = reader.next_frame() => f,
        };
        match frame {
            None => return Ok(()),
            Some(Err(e)) => {
                warn!(conn = conn.id, ip = session.ip(), cause = %e, "bad client frame: closing");
                return Err(e);
            }
            Some(Ok(Frame::Heartbeat)) => {
                if heartbeat > 0 {
                    silent.as_mut().reset(tokio::time::Instant::now() + limit);
                }
                conn.send(app.codecs().frame(OutFrame::Heartbeat));
            }
            Some(Ok(Frame::Message { cmd, payload })) => {
                // Boxed: the routing future is large, and inline it would sit in every idle
                // connection's task.
                if let Err(e) = Box::pin(app.route_client_message(session, cmd, payload)).await {
                    warn!(conn = conn.id, ip = session.ip(), cmd, "{e}: closing");
                    return Err(e);
                }
            }
            Some(Ok(Frame::Handshake(_))) => {
                warn!(conn = conn.id, "second handshake: closing");
                return Err("second handshake".into());
            }
        }
    }
}

/// Writes queued frames, coalescing whatever is queued into one write; with an `interval`,
/// frames are held up to that long to batch more. On `closing` it writes what is still queued,
/// then shuts the transport down.
async fn write_loop<W: FrameWrite>(mut wr: W, conn: Arc<Conn>, interval: Duration) {
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
            closing.cancel();
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

struct TcpRead(FramedRead<OwnedReadHalf, FrameDecoder>);

impl FrameRead for TcpRead {
    async fn next_frame(&mut self) -> Option<Result<Frame, String>> {
        self.0.next().await.map(|r| r.map_err(|e| e.0))
    }

    fn set_max_len(&mut self, max: usize) {
        self.0.decoder_mut().max_len = max;
    }
}

struct TcpWrite(OwnedWriteHalf);

impl FrameWrite for TcpWrite {
    async fn write(&mut self, frames: Bytes) -> io::Result<()> {
        self.0.write_all(&frames).await
    }

    async fn shutdown(&mut self) {
        let _ = self.0.shutdown().await;
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

impl FrameWrite for WsWrite {
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
