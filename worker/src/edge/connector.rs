//! The connector of a frontend: its settings ([`ConnectorConfig`], mydog's `connector`
//! keys), and the accept loop that runs one task per client (`connection.rs`) over TCP or
//! WebSocket, under `maxConnectionNum`, with one sweep closing clients whose heartbeat stopped.
//!
//! Over WebSocket each binary message carries one or more whole frames (batched sends put
//! several frames in one message). The WebSocket upgrade has the same handshake timeout, and
//! its message and frame limits follow `maxLen`; before its handshake a WebSocket client may
//! send at most [`WS_PRE_HANDSHAKE_BYTES`] (upgrade included), as a TCP client one small frame.
//!
//! Per connection: a send queue bounded in frames and bytes (`sendQueueBytes`), at most
//! `maxInFlight` handlers in flight (then the socket is not read until one finishes), and a
//! token-bucket rate limit on messages (`rateLimit`: close or drop past it).

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
use crate::edge::wire::{Capped, TcpWire, WS_PRE_HANDSHAKE_BYTES, WsWire};
use crate::stats::Stats;

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
/// `maxConnectionNum`, `maxLen`, `noDelay`, `interval` (ms), `handshakeTimeout` (seconds),
/// `sendQueueBytes`, `maxInFlight` and `rateLimit`.
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
    /// Bytes queued for one client (not yet written to its socket) beyond which it is closed
    /// (key `sendQueueBytes`, default 4 MiB; a single larger frame is still sent). Beside the
    /// 1024-frame cap: frames may be up to `maxLen` each.
    pub send_queue_bytes: usize,
    /// Handlers of one connection that may be in flight (started, not finished: awaiting an
    /// RPC, a timer...) before the connector stops reading that client's socket until one
    /// finishes (key `maxInFlight`, default 64, at least 1).
    pub max_in_flight: usize,
    /// Per-client message rate limit (key `rateLimit`): `None` turns it off.
    pub rate_limit: Option<RateLimit>,
}

/// A per-client token bucket on messages (heartbeats are not counted): `burst` messages at
/// once, refilled at `per_second`. Key `rateLimit`:
/// `{"perSecond": 1000, "burst": 2000, "action": "close"}` (the default), or `false` for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Messages per second, sustained (at least 1).
    pub per_second: u32,
    /// Messages allowed at once (at least 1).
    pub burst: u32,
    /// What happens to a client past the limit.
    pub action: RateLimitAction,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 1000,
            burst: 2000,
            action: RateLimitAction::Close,
        }
    }
}

/// What the rate limit does to a client past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitAction {
    /// Close the connection (logged with the reason).
    Close,
    /// Drop the message (logged once a second per connection, counted).
    Drop,
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
            send_queue_bytes: 4 << 20,
            max_in_flight: 64,
            rate_limit: Some(RateLimit::default()),
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
        if let Some(n) = num("sendQueueBytes")? {
            if n < 1024 {
                return Err(format!("sendQueueBytes must be at least 1024, not {n}"));
            }
            self.send_queue_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = num("maxInFlight")? {
            if n == 0 {
                return Err("maxInFlight must be at least 1, not 0".into());
            }
            self.max_in_flight = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(v) = extra.get("rateLimit") {
            self.rate_limit = RateLimit::from_json(v)?;
        }
        Ok(())
    }
}

impl RateLimit {
    /// Parses the `rateLimit` key: `false` (off), or an object whose keys default to
    /// [`RateLimit::default`]'s. Errors name the key.
    fn from_json(v: &serde_json::Value) -> Result<Option<RateLimit>, String> {
        use serde_json::Value;
        let obj = match v {
            Value::Bool(false) | Value::Null => return Ok(None),
            Value::Bool(true) => return Ok(Some(RateLimit::default())),
            Value::Object(o) => o,
            v => {
                return Err(format!(
                    "rateLimit must be false or {{\"perSecond\": n, \"burst\": n, \"action\": \"close\"|\"drop\"}}, not {v}"
                ));
            }
        };
        let mut r = RateLimit::default();
        let mut burst_given = false;
        for (k, v) in obj {
            let count = || -> Result<u32, String> {
                match v.as_u64() {
                    Some(n) if n >= 1 => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
                    _ => Err(format!(
                        "rateLimit.{k} must be an integer of at least 1, not {v}"
                    )),
                }
            };
            match k.as_str() {
                "perSecond" => r.per_second = count()?,
                "burst" => {
                    r.burst = count()?;
                    burst_given = true;
                }
                "action" => {
                    r.action = match v.as_str() {
                        Some("close") => RateLimitAction::Close,
                        Some("drop") => RateLimitAction::Drop,
                        _ => {
                            return Err(format!(
                                "rateLimit.action must be \"close\" or \"drop\", not {v}"
                            ));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "rateLimit has no key {other:?} (perSecond, burst, action)"
                    ));
                }
            }
        }
        if !burst_given {
            r.burst = r.per_second.saturating_mul(2);
        }
        Ok(Some(r))
    }
}

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
        let t = match self.cfg.transport {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "ws",
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
        match c.cfg.transport {
            Transport::Tcp => {
                let io = ClientIo::new(TcpWire::new(stream), c.frame_decoder());
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
pub(crate) async fn serve_ws<K: ClientSink>(
    c: Arc<Connector<K>>,
    stream: TcpStream,
    addr: SocketAddr,
    held: OpenGuard,
) {
    let ws_cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(c.cfg.max_len + 4))
        .max_frame_size(Some(c.cfg.max_len + 4));
    // Boxed: freed once upgraded, instead of sizing the connection's task.
    let upgrade = Box::pin(tokio::time::timeout(
        c.cfg.handshake_timeout,
        tokio_tungstenite::accept_async_with_config(
            Capped::new(stream, WS_PRE_HANDSHAKE_BYTES),
            Some(ws_cfg),
        ),
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
        assert_eq!(c.send_queue_bytes, 4 << 20);
        assert_eq!(c.max_in_flight, 64);
        assert_eq!(c.rate_limit, Some(RateLimit::default()));
        let extra = json!({"sendQueueBytes": 65536, "maxInFlight": 8, "rateLimit": {"perSecond": 10, "action": "drop"}});
        c.apply_entry(extra.as_object().unwrap()).unwrap();
        assert_eq!((c.send_queue_bytes, c.max_in_flight), (65536, 8));
        let r = c.rate_limit.unwrap();
        assert_eq!(
            (r.per_second, r.burst, r.action),
            (10, 20, RateLimitAction::Drop)
        );
        c.apply_entry(json!({"rateLimit": false}).as_object().unwrap())
            .unwrap();
        assert_eq!(c.rate_limit, None);
        for bad in [
            json!({"sendQueueBytes": 10}),
            json!({"sendQueueBytes": "4M"}),
            json!({"maxInFlight": 0}),
            json!({"maxInFlight": -3}),
            json!({"rateLimit": 100}),
            json!({"rateLimit": {"perSecond": 0}}),
            json!({"rateLimit": {"burst": 1.5}}),
            json!({"rateLimit": {"action": "ban"}}),
            json!({"rateLimit": {"perSeconds": 10}}),
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
