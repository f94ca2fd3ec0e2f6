//! The connector of a frontend: its settings ([`ConnectorConfig`], mydog's `connector`
//! keys, typed and checked in kennel-config), and the accept loop that runs one task per client (`connection.rs`) over TCP or
//! WebSocket, under `maxConnectionNum`, with one sweep closing clients whose heartbeat stopped.
//!
//! Over WebSocket each binary message carries one or more whole frames (batched sends put
//! several frames in one message). The WebSocket upgrade has the same handshake timeout, and
//! its message and frame limits follow `maxLen`; before its handshake a WebSocket client may
//! send at most [`WS_PRE_HANDSHAKE_BYTES`] (upgrade included), as a TCP client one small frame.
//!
//! With TLS (`ssl`, `tls.rs`) the TLS handshake runs first, in the connection's task (so it
//! counts toward `maxConnectionNum`), and one handshake timeout from the accept covers the TLS
//! handshake, the WebSocket upgrade and the kennel handshake; the socket is capped at
//! [`TLS_PRE_HANDSHAKE_BYTES`] (wss: [`WSS_PRE_HANDSHAKE_BYTES`]) until the kennel handshake.
//!
//! Per connection: a send queue bounded in frames and bytes (`sendQueueBytes`), at most
//! `maxInFlight` handlers in flight (then the socket is not read until one finishes), and a
//! token-bucket rate limit on messages (`rateLimit`: close or drop past it).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kennel_proto::client::{self, HandshakeReply, HandshakeRequest};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::edge::ClientSink;
use crate::edge::clients::{Clients, ConnLimits};
use crate::edge::codec::{Codecs, FrameDecoder, OutFrame};
use crate::edge::connection::{ClientIo, serve};
use crate::edge::direct::SharedTcp;
use crate::edge::tls::{self, TLS_PRE_HANDSHAKE_BYTES, WSS_PRE_HANDSHAKE_BYTES};
use crate::edge::wire::{Capped, ClientStream, TcpWire, WS_PRE_HANDSHAKE_BYTES, WsWire};
use crate::stats::Stats;

/// The connector's settings are typed and checked in kennel-config when the project loads
/// (a frontend's entry overrides [`crate::App::set_connector`]'s base, see
/// [`crate::App::run`]).
pub use kennel_config::settings::{ConnectorConfig, Io, RateLimit, RateLimitAction, Transport};

const _: () = assert!(
    kennel_config::settings::DEFAULT_CLIENT_MAX_LEN == client::DEFAULT_MAX_LEN,
    "the default maxLen of kennel-config and kennel-proto differ"
);

/// What every connection of a frontend shares: its settings, codecs, registry and sink.
pub(crate) struct Connector<K: ClientSink> {
    pub(crate) cfg: ConnectorConfig,
    pub(crate) codecs: Codecs,
    pub(crate) clients: Arc<Clients<K::Session>>,
    pub(crate) limits: Arc<ConnLimits>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) sink: K,
    /// This server's id (for logs).
    pub(crate) server_id: Arc<str>,
    /// TLS for every client (`ssl`), or none.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// The ring plain TCP clients are driven on (`"io": "uring"`), or none (epoll).
    #[cfg(target_os = "linux")]
    pub(crate) uring: Option<Arc<crate::edge::uring::Ring>>,
    /// The route list and its md5, for the handshake reply.
    route_md5: String,
    routes: Vec<String>,
}

impl<K: ClientSink> Connector<K> {
    /// The connector of this frontend: `routes` is the route list the handshake announces,
    /// `route_md5` its md5.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: ConnectorConfig,
        codecs: Codecs,
        clients: Arc<Clients<K::Session>>,
        stats: Arc<Stats>,
        sink: K,
        server_id: Arc<str>,
        route_md5: String,
        routes: Vec<String>,
    ) -> Connector<K> {
        let limits = Arc::new(ConnLimits {
            send_queue_bytes: cfg.send_queue_bytes,
            max_in_flight: cfg.max_in_flight,
            drops: stats.drops.clone(),
        });
        Connector {
            route_md5,
            routes,
            cfg,
            codecs,
            clients,
            limits,
            stats,
            sink,
            server_id,
            tls: None,
            #[cfg(target_os = "linux")]
            uring: None,
        }
    }

    /// A decoder for a new client: pre-handshake limit until the handshake is done.
    pub(crate) fn frame_decoder(&self) -> FrameDecoder {
        FrameDecoder {
            protocol: self.codecs.protocol.clone(),
            max_len: 1 + client::PRE_HANDSHAKE_MAX_BODY,
        }
    }

    /// The handshake reply: the heartbeat, and the route list when the client's md5 differs.
    pub(crate) fn handshake_reply(&self, req: &HandshakeRequest) -> Bytes {
        let reply = HandshakeReply {
            md5: self.route_md5.clone(),
            heartbeat: self.cfg.heartbeat,
            route: (req.md5 != self.route_md5).then(|| self.routes.clone()),
        };
        let body = serde_json::to_vec(&reply).expect("handshake reply serializes");
        self.codecs.frame(OutFrame::Handshake(&body))
    }

    /// Logs where clients connect.
    pub(crate) fn log_listening(&self, addr: &SocketAddr) {
        let t = match (self.cfg.transport, self.tls.is_some()) {
            (Transport::Tcp, false) if self.cfg.io == crate::Io::Uring => "tcp+uring",
            (Transport::Tcp, false) => "tcp",
            (Transport::WebSocket, false) => "ws",
            (Transport::Tcp, true) => "tcp+tls",
            (Transport::WebSocket, true) => "wss",
        };
        info!(id = %self.server_id, %addr, transport = t, "accepting game clients");
    }
}

/// Accepts clients until `shutdown`.
pub(crate) async fn accept_loop<K: ClientSink>(
    c: Arc<Connector<K>>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    // Open sockets, handshaken or not (each task holds one count until it ends).
    let open = Arc::new(AtomicUsize::new(0));
    tokio::spawn(close_silent_loop(c.clone(), shutdown.clone()));
    while let Some((stream, addr)) = crate::net::accept(&listener, &shutdown, "client").await {
        if open.load(Ordering::Relaxed) >= c.cfg.max_connections {
            warn!(%addr, max = c.cfg.max_connections, "maxConnectionNum reached: closing new client");
            drop(stream);
            continue;
        }
        let held = OpenGuard::new(&open);
        let _ = stream.set_nodelay(c.cfg.no_delay);
        let c = c.clone();
        if let Some(acceptor) = c.tls.clone() {
            match c.cfg.transport {
                Transport::Tcp => tokio::spawn(serve_tls::<_, TLS_PRE_HANDSHAKE_BYTES, _, _>(
                    c,
                    acceptor,
                    stream,
                    addr,
                    held,
                    serve_frames,
                )),
                Transport::WebSocket => {
                    tokio::spawn(serve_tls::<_, WSS_PRE_HANDSHAKE_BYTES, _, _>(
                        c,
                        acceptor,
                        stream,
                        addr,
                        held,
                        upgrade_then_serve,
                    ))
                }
            };
            continue;
        }
        #[cfg(target_os = "linux")]
        if let Some(ring) = c.uring.clone() {
            match crate::edge::uring::UringWire::new(stream, ring) {
                Ok(wire) => {
                    let io = ClientIo::new(wire, c.frame_decoder());
                    tokio::spawn(serve(c, io, addr, held));
                }
                Err(e) => {
                    warn!(%addr, cause = %e, "cannot move the client socket to io_uring: closing")
                }
            }
            continue;
        }
        match c.cfg.transport {
            Transport::Tcp => {
                let io = ClientIo::new(TcpWire::new(SharedTcp::new(stream)), c.frame_decoder());
                tokio::spawn(serve(c, io, addr, held))
            }
            Transport::WebSocket => tokio::spawn(serve_ws(c, stream, addr, held)),
        };
    }
}

/// Closes clients silent for twice the heartbeat, checking once a second until `shutdown`.
/// One sweep for all connections instead of a timer in each (which would cost every
/// connection a timer entry and every heartbeat a timer reset).
async fn close_silent_loop<K: ClientSink>(c: Arc<Connector<K>>, shutdown: CancellationToken) {
    if c.cfg.heartbeat == 0 {
        return;
    }
    let limit = Duration::from_secs(2 * c.cfg.heartbeat);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => c.clients.close_silent(limit),
        }
    }
}

/// Runs a WebSocket client: the upgrade (within the handshake timeout), then [`serve`].
pub(crate) fn serve_ws<K: ClientSink>(
    c: Arc<Connector<K>>,
    stream: TcpStream,
    addr: SocketAddr,
    held: OpenGuard,
) -> impl Future<Output = ()> + Send {
    upgrade_then_serve(c, Capped::<WS_PRE_HANDSHAKE_BYTES>::new(stream), addr, held)
}

/// The WebSocket upgrade of `stream` (by the stream's handshake deadline, else within the
/// handshake timeout), then [`serve`].
///
/// A plain function returning an `async move` block, as [`serve`] is: an `async fn` would keep
/// its arguments beside their moved copies in every WebSocket connection's task.
#[allow(clippy::manual_async_fn)]
pub(crate) fn upgrade_then_serve<K: ClientSink, S: ClientStream>(
    c: Arc<Connector<K>>,
    stream: S,
    addr: SocketAddr,
    held: OpenGuard,
) -> impl Future<Output = ()> + Send {
    async move {
        let ws_cfg = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(c.cfg.max_len + 4))
            .max_frame_size(Some(c.cfg.max_len + 4));
        let deadline = stream
            .handshake_deadline()
            .unwrap_or_else(|| tokio::time::Instant::now() + c.cfg.handshake_timeout);
        // Boxed: freed once upgraded, instead of sizing the connection's task.
        let upgrade = Box::pin(tokio::time::timeout_at(
            deadline,
            tokio_tungstenite::accept_async_with_config(stream, Some(ws_cfg)),
        ));
        let reason = match upgrade.await {
            Ok(Ok(ws)) => {
                let io = ClientIo::new(WsWire::new(ws), c.frame_decoder());
                return serve(c, io, addr, held).await;
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
}

/// Runs a TLS client: the TLS handshake over the socket capped at `LIMIT` bytes until the
/// kennel handshake, then `then` ([`serve_frames`] for TLS over TCP, [`upgrade_then_serve`]
/// for wss), all by one deadline a handshake timeout after the accept. A plain function over
/// an async block, as [`serve`]: the task is its plain twin's and a few words
/// (`a_tls_connection_task_is_a_plain_one_and_a_pointer` in `app::run`).
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve_tls<K, const LIMIT: usize, F, Fut>(
    c: Arc<Connector<K>>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    addr: SocketAddr,
    held: OpenGuard,
    then: F,
) -> impl Future<Output = ()> + Send
where
    K: ClientSink,
    F: FnOnce(Arc<Connector<K>>, tls::TlsStream<LIMIT>, SocketAddr, OpenGuard) -> Fut + Send,
    Fut: Future<Output = ()> + Send,
{
    async move {
        let deadline = tokio::time::Instant::now() + c.cfg.handshake_timeout;
        if let Some(tls) = tls::accept::<LIMIT>(&acceptor, stream, addr, deadline).await {
            then(c, tls, addr, held).await;
        }
    }
}

/// [`serve`] with the frames straight on `stream` (TCP, or TLS carrying them).
pub(crate) fn serve_frames<K: ClientSink, S: ClientStream>(
    c: Arc<Connector<K>>,
    stream: S,
    addr: SocketAddr,
    held: OpenGuard,
) -> impl Future<Output = ()> + Send {
    let io = ClientIo::new(TcpWire::new(stream), c.frame_decoder());
    serve(c, io, addr, held)
}

/// One count of the open-connection counter, released on drop.
pub(crate) struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    pub(crate) fn new(open: &Arc<AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
