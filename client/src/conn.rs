//! The raw connection: TCP or WebSocket transport (either over TLS with [`Options::tls`]), the
//! PROTOCOL.md handshake (with the route list cached per address by md5), and a split
//! [`FrameReader`] / [`FrameWriter`] pair that the high-level [`crate::Client`] and load
//! generators drive directly.
//!
//! The writer appends frames to one reused buffer and writes it with one syscall (TCP) or one
//! binary WebSocket message per [`FrameWriter::flush`]; the reader decodes frames in place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use kennel_proto::client::{
    ClientCodec, DEFAULT_MAX_LEN, Frame, HandshakeReply, HandshakeRequest, TYPE_HANDSHAKE,
    TYPE_HEARTBEAT, put_frame, put_message,
};
use serde::Serialize;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::codec::{Decoder, FramedRead};

use crate::error::{Error, Result};
use crate::tls::{Stream, TlsOptions};

/// Which transport to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Frames concatenated on a TCP stream.
    #[default]
    Tcp,
    /// Frames carried in binary WebSocket messages (`ws://addr/`).
    Ws,
}

/// Connection settings. [`Options::default`] is TCP, 10 s timeouts, the 10 MiB frame limit and
/// the process-wide route cache.
#[derive(Debug, Clone)]
pub struct Options {
    /// TCP or WebSocket.
    pub transport: Transport,
    /// Limit for TCP connect + WebSocket upgrade + handshake.
    pub connect_timeout: Duration,
    /// Limit for each request's reply.
    pub request_timeout: Duration,
    /// Largest frame accepted from the server (`len`: type byte + body).
    pub max_len: usize,
    /// Heartbeat interval to use instead of the one the server announces (`Some(0s)` = none).
    pub heartbeat_override: Option<Duration>,
    /// Where route lists are cached by address; `None` = never cache (always send `""`).
    pub route_cache: Option<RouteCache>,
    /// Set `TCP_NODELAY` (default true: requests are small and latency matters).
    pub no_delay: bool,
    /// TLS (TCP: TLS carrying the frames; WebSocket: `wss://`), or none (the default).
    pub tls: Option<TlsOptions>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            transport: Transport::Tcp,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_len: DEFAULT_MAX_LEN,
            heartbeat_override: None,
            route_cache: Some(RouteCache::global().clone()),
            no_delay: true,
            tls: None,
        }
    }
}

/// The server's route list: route name <-> `cmd`.
#[derive(Debug)]
pub struct Routes {
    list: Vec<String>,
    index: HashMap<String, u16>,
    md5: String,
}

impl Routes {
    /// Builds the lookup for `list` (whose md5 the server announced as `md5`).
    pub fn new(list: Vec<String>, md5: String) -> Routes {
        let index = list
            .iter()
            .enumerate()
            .map(|(i, r)| (r.clone(), i as u16))
            .collect();
        Routes { list, index, md5 }
    }

    /// The `cmd` of `route`, or [`Error::UnknownRoute`].
    pub fn cmd(&self, route: &str) -> Result<u16> {
        self.index
            .get(route)
            .copied()
            .ok_or_else(|| Error::UnknownRoute(route.to_string()))
    }

    /// The route of `cmd`, if the list has one.
    pub fn route(&self, cmd: u16) -> Option<&str> {
        self.list.get(cmd as usize).map(String::as_str)
    }

    /// The whole list, in `cmd` order.
    pub fn list(&self) -> &[String] {
        &self.list
    }

    /// The md5 the server announced for this list.
    pub fn md5(&self) -> &str {
        &self.md5
    }
}

/// Route lists keyed by server address, so a reconnect sends the cached md5 and the server
/// skips resending the list (as mydog clients do). Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct RouteCache(Arc<Mutex<HashMap<String, Arc<Routes>>>>);

impl RouteCache {
    /// A new, empty cache.
    pub fn new() -> RouteCache {
        RouteCache::default()
    }

    /// The process-wide cache that [`Options::default`] uses.
    pub fn global() -> &'static RouteCache {
        static GLOBAL: OnceLock<RouteCache> = OnceLock::new();
        GLOBAL.get_or_init(RouteCache::new)
    }

    /// The cached route list of `key`.
    pub fn get(&self, key: &str) -> Option<Arc<Routes>> {
        self.0.lock().unwrap().get(key).cloned()
    }

    fn put(&self, key: &str, routes: Arc<Routes>) {
        self.0.lock().unwrap().insert(key.to_string(), routes);
    }
}

/// What the handshake established.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The route list (from the reply, or from the cache when the reply omitted it).
    pub routes: Arc<Routes>,
    /// The server's reply as received (`route` is `None` when the cached md5 matched).
    pub reply: HandshakeReply,
    /// The reply's body, the bytes as received (for byte-exact comparisons with mydog).
    pub reply_body: Bytes,
    /// The md5 this client sent (`""` without a cached list).
    pub sent_md5: String,
    /// The server's TLS certificate (DER) over TLS, else `None`.
    pub peer_certificate: Option<Vec<u8>>,
}

impl Handshake {
    /// The heartbeat interval the server asked for (`None` = off).
    pub fn heartbeat(&self) -> Option<Duration> {
        (self.reply.heartbeat > 0).then(|| Duration::from_secs(self.reply.heartbeat))
    }
}

type WsStream = WebSocketStream<Stream>;

enum ReadIo {
    Tcp(FramedRead<OwnedReadHalf, ClientCodec>),
    TlsTcp(FramedRead<ReadHalf<Stream>, ClientCodec>),
    Ws {
        stream: SplitStream<WsStream>,
        buf: BytesMut,
        codec: ClientCodec,
    },
}

enum WriteIo {
    Tcp(OwnedWriteHalf),
    TlsTcp(WriteHalf<Stream>),
    Ws(SplitSink<WsStream, Message>),
}

/// The receiving half of a connection: decoded frames in arrival order.
pub struct FrameReader {
    io: ReadIo,
}

impl FrameReader {
    /// The next frame. [`Error::Closed`] when the server ended the connection, [`Error::Decode`]
    /// for a malformed frame. Cancel-safe.
    pub async fn next(&mut self) -> Result<Frame> {
        match &mut self.io {
            ReadIo::Tcp(framed) => stream_frame(framed.next().await),
            ReadIo::TlsTcp(framed) => stream_frame(framed.next().await),
            ReadIo::Ws { stream, buf, codec } => loop {
                match codec.decode(buf) {
                    Ok(Some(f)) => return Ok(f),
                    Ok(None) => {}
                    Err(e) => return Err(decode_err("a frame from the server", e)),
                }
                match stream.next().await {
                    None | Some(Ok(Message::Close(_))) => {
                        return Err(Error::Closed("the server closed the websocket".into()));
                    }
                    Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
                    Some(Ok(Message::Text(_))) => {
                        return Err(decode_err(
                            "a websocket message",
                            "text message (frames travel in binary messages)",
                        ));
                    }
                    Some(Ok(_)) => {} // ping/pong
                    Some(Err(e)) => return Err(Error::Io(std::io::Error::other(e))),
                }
            },
        }
    }

    /// A frame that is already buffered (or readable without waiting), else `None`.
    pub fn try_next(&mut self) -> Option<Result<Frame>> {
        use futures_util::FutureExt;
        self.next().now_or_never()
    }
}

/// The sending half of a connection: frames are appended to one reused buffer and written by
/// [`FrameWriter::flush`].
pub struct FrameWriter {
    io: WriteIo,
    pub(crate) buf: BytesMut,
}

impl FrameWriter {
    /// Appends a message frame with an already-encoded payload.
    pub fn push_message(&mut self, cmd: u16, payload: &[u8]) {
        put_message(&mut self.buf, cmd, payload);
    }

    /// Appends a message frame whose payload is `msg` as JSON, serialized straight into the
    /// buffer. `route` only names the message in an error.
    pub fn push_json<T: Serialize + ?Sized>(
        &mut self,
        cmd: u16,
        route: &str,
        msg: &T,
    ) -> Result<()> {
        encode_json(&mut self.buf, cmd, route, msg)
    }

    /// Appends a heartbeat frame.
    pub fn push_heartbeat(&mut self) {
        put_frame(&mut self.buf, TYPE_HEARTBEAT, &[]);
    }

    /// Appends raw bytes (for tests of malformed input).
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes appended and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything appended so far (nothing when empty).
    pub async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match &mut self.io {
            WriteIo::Tcp(w) => {
                let r = w.write_all(&self.buf).await;
                self.buf.clear();
                r?;
            }
            WriteIo::TlsTcp(w) => {
                // TLS holds what the socket did not take at once until a flush.
                let r = match w.write_all(&self.buf).await {
                    Ok(()) => w.flush().await,
                    Err(e) => Err(e),
                };
                self.buf.clear();
                r?;
            }
            WriteIo::Ws(sink) => {
                let frames = self.buf.split().freeze();
                sink.send(Message::Binary(frames))
                    .await
                    .map_err(std::io::Error::other)?;
            }
        }
        Ok(())
    }

    /// Flushes, then closes the sending side (TCP FIN / WebSocket close).
    pub async fn shutdown(&mut self) -> Result<()> {
        let flushed = self.flush().await;
        match &mut self.io {
            WriteIo::Tcp(w) => {
                let _ = w.shutdown().await;
            }
            WriteIo::TlsTcp(w) => {
                let _ = w.shutdown().await;
            }
            WriteIo::Ws(sink) => {
                let _ = sink.close().await;
            }
        }
        flushed
    }
}

/// Appends one message frame with `msg` serialized as JSON into `buf`; on a serialization error
/// `buf` is left as it was.
pub(crate) fn encode_json<T: Serialize + ?Sized>(
    buf: &mut BytesMut,
    cmd: u16,
    route: &str,
    msg: &T,
) -> Result<()> {
    let start = buf.len();
    buf.put_u32(0);
    buf.put_u8(kennel_proto::client::TYPE_MESSAGE);
    buf.put_u16(cmd);
    let mut w = buf.writer();
    if let Err(source) = serde_json::to_writer(&mut w, msg) {
        w.into_inner().truncate(start);
        return Err(Error::Encode {
            route: route.to_string(),
            source,
        });
    }
    let buf = w.into_inner();
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A frame from a TCP stream's decoder.
fn stream_frame(
    next: Option<std::result::Result<Frame, kennel_proto::client::FrameError>>,
) -> Result<Frame> {
    match next {
        Some(Ok(f)) => Ok(f),
        Some(Err(kennel_proto::client::FrameError::Io(e))) => Err(Error::Io(e)),
        Some(Err(e)) => Err(decode_err("a frame from the server", e)),
        None => Err(Error::Closed("the server closed the connection".into())),
    }
}

fn decode_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Decode {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// A connected, handshaken connection, not yet split.
pub struct Connection {
    /// The receiving half.
    pub reader: FrameReader,
    /// The sending half.
    pub writer: FrameWriter,
    /// What the handshake established.
    pub handshake: Handshake,
    /// The address connected to (`host:port`).
    pub addr: String,
}

impl Connection {
    /// Connects to `addr` (`host:port`) and completes the handshake, all within
    /// `opts.connect_timeout`.
    pub async fn connect(addr: &str, opts: &Options) -> Result<Connection> {
        let what = format!("connect to {}", cache_key(addr, opts));
        tokio::time::timeout(opts.connect_timeout, Connection::connect_inner(addr, opts))
            .await
            .map_err(|_| Error::Timeout {
                what,
                after: opts.connect_timeout,
            })?
    }

    async fn connect_inner(addr: &str, opts: &Options) -> Result<Connection> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(opts.no_delay)?;
        let stream = match &opts.tls {
            None => Stream::Plain(tcp),
            Some(tls) => tls.connect(addr, tcp).await?,
        };
        let peer_certificate = stream.peer_certificate();
        let (mut reader, writer) = match (opts.transport, stream) {
            (Transport::Tcp, Stream::Plain(stream)) => {
                let (rd, wr) = stream.into_split();
                let reader = FramedRead::new(rd, ClientCodec::new(opts.max_len));
                (ReadIo::Tcp(reader), WriteIo::Tcp(wr))
            }
            (Transport::Tcp, stream) => {
                let (rd, wr) = tokio::io::split(stream);
                let reader = FramedRead::new(rd, ClientCodec::new(opts.max_len));
                (ReadIo::TlsTcp(reader), WriteIo::TlsTcp(wr))
            }
            (Transport::Ws, stream) => {
                let cfg = WebSocketConfig::default()
                    .max_message_size(Some(opts.max_len + 4))
                    .max_frame_size(Some(opts.max_len + 4));
                let (ws, _) = tokio_tungstenite::client_async_with_config(
                    cache_key(addr, opts),
                    stream,
                    Some(cfg),
                )
                .await
                .map_err(|e| Error::Handshake(format!("websocket upgrade: {e}")))?;
                let (sink, stream) = ws.split();
                (
                    ReadIo::Ws {
                        stream,
                        buf: BytesMut::new(),
                        codec: ClientCodec::new(opts.max_len),
                    },
                    WriteIo::Ws(sink),
                )
            }
        };
        let key = cache_key(addr, opts);
        let cached = opts.route_cache.as_ref().and_then(|c| c.get(&key));
        let sent_md5 = cached.as_ref().map(|r| r.md5.clone()).unwrap_or_default();

        let mut writer = FrameWriter {
            io: writer,
            buf: BytesMut::with_capacity(4096),
        };
        let body = serde_json::to_vec(&HandshakeRequest {
            md5: sent_md5.clone(),
        })
        .map_err(|e| Error::Handshake(e.to_string()))?;
        put_frame(&mut writer.buf, TYPE_HANDSHAKE, &body);
        writer.flush().await?;

        let mut fr = FrameReader { io: reader };
        let body = match fr.next().await {
            Ok(Frame::Handshake(body)) => body,
            Ok(other) => {
                return Err(Error::Handshake(format!(
                    "expected a handshake reply, got {other:?}"
                )));
            }
            Err(Error::Closed(why)) => {
                return Err(Error::Handshake(format!("closed before the reply: {why}")));
            }
            Err(e) => return Err(e),
        };
        reader = fr.io;
        let reply: HandshakeReply = serde_json::from_slice(&body).map_err(|e| {
            Error::Handshake(format!(
                "bad reply {:?}: {e}",
                String::from_utf8_lossy(&body)
            ))
        })?;
        let routes = match (&reply.route, cached) {
            (Some(list), _) => {
                let routes = Arc::new(Routes::new(list.clone(), reply.md5.clone()));
                if let Some(cache) = &opts.route_cache {
                    cache.put(&key, routes.clone());
                }
                routes
            }
            (None, Some(cached)) if cached.md5 == reply.md5 => cached,
            (None, _) => {
                return Err(Error::Handshake(format!(
                    "the reply carries no route list and none is cached for md5 {}",
                    reply.md5
                )));
            }
        };
        Ok(Connection {
            reader: FrameReader { io: reader },
            writer,
            handshake: Handshake {
                routes,
                reply,
                reply_body: body,
                sent_md5,
                peer_certificate,
            },
            addr: addr.to_string(),
        })
    }
}

/// An address with its transport: `host:port`, `tls://host:port`, `ws://host:port/` or
/// `wss://host:port/` (the route cache's key, and the WebSocket URL).
fn cache_key(addr: &str, opts: &Options) -> String {
    match (opts.transport, opts.tls.is_some()) {
        (Transport::Tcp, false) => addr.to_string(),
        (Transport::Tcp, true) => format!("tls://{addr}"),
        (Transport::Ws, false) => format!("ws://{addr}/"),
        (Transport::Ws, true) => format!("wss://{addr}/"),
    }
}

impl Connection {
    /// Flushes what the writer holds and hands back the TCP socket with the bytes already read
    /// past the last frame taken, for load generators that drive the socket themselves (e.g.
    /// with io_uring) after a handshake and setup requests made here. `None` over WebSocket.
    pub async fn into_tcp(mut self) -> Result<Option<(TcpStream, BytesMut)>> {
        self.writer.flush().await?;
        match (self.reader.io, self.writer.io) {
            (ReadIo::Tcp(mut framed), WriteIo::Tcp(wr)) => {
                let leftover = framed.read_buffer_mut().split();
                let stream = framed
                    .into_inner()
                    .reunite(wr)
                    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
                Ok(Some((stream, leftover)))
            }
            _ => Ok(None),
        }
    }
}
