//! The RPC mesh: every known server, and one authenticated TCP link per pair of servers (the
//! smaller id dials, the larger accepts). A link is a writer task draining a bounded queue of
//! [`PeerMsg`]s (coalescing them into few writes) and a reader loop dispatching what arrives.
//!
//! Calls in flight on a link are failed with [`RpcError::LinkDropped`] the moment it drops.
//! A dialer redials after a delay for as long as the master lists the peer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use kennel_proto::auth;
use kennel_proto::frame::{AUTH_MAX_FRAME, ProtoCodec, length_codec};
use kennel_proto::msg::{PeerMsg, Role, peer_msg};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{App, RpcError, ServerInfo};

/// Messages queued per link before senders wait.
const LINK_QUEUE: usize = 8192;
/// How long authentication may take.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, RpcError>>>>;

/// One live link to a peer.
pub(crate) struct Link {
    generation: u64,
    peer: String,
    tx: mpsc::Sender<PeerMsg>,
    /// Calls waiting for a reply on this link; failed when it drops.
    pending: Pending,
    /// Cancelled when the link ends (either side), or to close it.
    closed: CancellationToken,
}

impl Link {
    /// Queues a message (waits while the queue is full). False if the link is gone.
    pub(crate) async fn send(&self, m: PeerMsg) -> bool {
        self.tx.send(m).await.is_ok()
    }

    /// Sends a request and waits for its reply.
    pub(crate) async fn call(
        &self,
        id: u64,
        m: PeerMsg,
    ) -> Result<oneshot::Receiver<Result<Bytes, RpcError>>, RpcError> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        if !self.send(m).await {
            self.pending.lock().unwrap().remove(&id);
            return Err(RpcError::LinkDropped(self.peer.clone()));
        }
        Ok(rx)
    }

    pub(crate) fn forget(&self, id: u64) {
        self.pending.lock().unwrap().remove(&id);
    }

    fn fail_pending(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap());
        for (_, tx) in pending {
            let _ = tx.send(Err(RpcError::LinkDropped(self.peer.clone())));
        }
    }
}

struct Peer {
    info: Option<ServerInfo>,
    link: watch::Sender<Option<Arc<Link>>>,
    /// Callers waiting for `link` (bounded by `rpcMsgCacheCount`).
    waiting: Arc<AtomicUsize>,
    /// Stops this peer's dialer (smaller id dials).
    dialer: Option<CancellationToken>,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            info: None,
            link: watch::channel(None).0,
            waiting: Arc::new(AtomicUsize::new(0)),
            dialer: None,
        }
    }
}

/// Every known server and the links to them.
#[derive(Default)]
pub(crate) struct Peers {
    map: RwLock<HashMap<String, Peer>>,
    generation: AtomicU64,
}

impl Peers {
    /// The link to a known server, waiting up to `timeout` while it is not connected yet
    /// (booting, reconnecting). `route` names what waits, for the timeout error. At most
    /// `rpcMsgCacheCount` waiters per peer; pairs of types in `noRpcMatrix` fail at once.
    pub(crate) async fn wait_link(
        &self,
        app: &App,
        id: &str,
        route: &str,
        timeout: Duration,
    ) -> Result<Arc<Link>, RpcError> {
        let (mut rx, waiting) = match self.map.read().unwrap().get(id) {
            None => return Err(RpcError::UnknownServer(id.to_string())),
            Some(p) => {
                if let Some(info) = &p.info
                    && !app
                        .rpc_config()
                        .may_link(app.server_type(), &info.server_type)
                    && id != app.id()
                {
                    return Err(RpcError::NoLink {
                        server: id.to_string(),
                        from_type: app.server_type().to_string(),
                        to_type: info.server_type.clone(),
                    });
                }
                match p.link.borrow().as_ref() {
                    Some(l) => return Ok(l.clone()),
                    None => (p.link.subscribe(), p.waiting.clone()),
                }
            }
        };
        let limit = app.rpc_config().msg_cache_count;
        if waiting.fetch_add(1, Ordering::AcqRel) >= limit {
            waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(RpcError::QueueFull {
                server: id.to_string(),
                count: limit,
            });
        }
        let r = tokio::time::timeout(timeout, rx.wait_for(|l| l.is_some())).await;
        waiting.fetch_sub(1, Ordering::AcqRel);
        match r {
            Ok(Ok(l)) => Ok(l.clone().expect("waited for Some")),
            Ok(Err(_)) => Err(RpcError::UnknownServer(id.to_string())),
            Err(_) => Err(RpcError::Timeout {
                server: id.to_string(),
                route: route.to_string(),
            }),
        }
    }

    /// Every known server (this one included once registered).
    pub(crate) fn servers(&self) -> Vec<ServerInfo> {
        self.map
            .read()
            .unwrap()
            .values()
            .filter_map(|p| p.info.clone())
            .collect()
    }

    /// The type of a known server.
    fn type_of(&self, id: &str) -> Option<String> {
        let map = self.map.read().unwrap();
        map.get(id)?.info.as_ref().map(|i| i.server_type.clone())
    }

    /// Whether `id` is a known server of type `server_type`.
    pub(crate) fn is_of_type(&self, id: &str, server_type: &str) -> bool {
        self.map
            .read()
            .unwrap()
            .get(id)
            .and_then(|p| p.info.as_ref())
            .is_some_and(|i| i.server_type == server_type && !i.frontend)
    }

    /// Ids of every known server.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.map
            .read()
            .unwrap()
            .iter()
            .filter(|(_, p)| p.info.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Adds or updates a server; returns true if it is new. Starts the dialer when this server
    /// has the smaller id.
    pub(crate) fn add(&self, app: &App, info: ServerInfo) -> bool {
        let me = app.id();
        let mut map = self.map.write().unwrap();
        let id = info.id.clone();
        let entry = map.entry(id.clone()).or_insert_with(Peer::new);
        let new = entry.info.is_none();
        entry.info = Some(info.clone());
        let may_link = app
            .rpc_config()
            .may_link(app.server_type(), &info.server_type);
        if id.as_str() != me && me < id.as_str() && entry.dialer.is_none() && may_link {
            let token = app.inner.shutdown.child_token();
            entry.dialer = Some(token.clone());
            tokio::spawn(dial_loop(app.clone(), info, token));
        }
        new
    }

    /// Forgets a server: stops dialing it, closes its link and fails its calls.
    pub(crate) fn remove(&self, id: &str) -> Option<ServerInfo> {
        let peer = self.map.write().unwrap().remove(id)?;
        if let Some(d) = &peer.dialer {
            d.cancel();
        }
        if let Some(l) = peer.link.borrow().as_ref() {
            l.closed.cancel();
            l.fail_pending();
        }
        peer.info
    }

    /// Installs a new link to `peer`, replacing (and closing) any previous one.
    fn install(&self, link: Arc<Link>) {
        let mut map = self.map.write().unwrap();
        let entry = map.entry(link.peer.clone()).or_insert_with(Peer::new);
        let old = entry.link.send_replace(Some(link));
        if let Some(old) = old {
            old.closed.cancel();
            old.fail_pending();
        }
    }

    /// Removes `link` if it is still the current one for its peer.
    fn uninstall(&self, link: &Link) {
        let map = self.map.read().unwrap();
        if let Some(p) = map.get(&link.peer) {
            p.link.send_if_modified(|cur| {
                if cur
                    .as_ref()
                    .is_some_and(|c| c.generation == link.generation)
                {
                    *cur = None;
                    true
                } else {
                    false
                }
            });
        }
    }
}

/// Dials `info` until cancelled, keeping one link up; redials after `reconnect_delay`.
async fn dial_loop(app: App, info: ServerInfo, cancel: CancellationToken) {
    let addr = format!("{}:{}", info.host, info.port);
    let mut logged = false;
    loop {
        let attempt = async {
            let stream = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(app.rpc_config().no_delay);
            let mut framed = Framed::new(stream, length_codec(AUTH_MAX_FRAME));
            tokio::time::timeout(
                AUTH_TIMEOUT,
                auth::dial(
                    &mut framed,
                    &app.inner.secret,
                    Role::Peer,
                    app.id(),
                    &info.id,
                ),
            )
            .await
            .map_err(|_| "authentication timed out".to_string())?
            .map_err(|e| e.to_string())?;
            Ok::<_, String>(framed)
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok(framed) => {
                logged = false;
                run_link(app.clone(), info.id.clone(), framed, cancel.clone()).await;
            }
            Err(e) if !logged => {
                debug!(peer = %info.id, %addr, cause = %e, "cannot reach peer yet; retrying");
                logged = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(app.reconnect_delay()) => {}
        }
    }
}

/// Accepts peer links on this server's RPC port until `shutdown`.
pub(crate) async fn accept_loop(app: App, listener: TcpListener, shutdown: CancellationToken) {
    while let Some((stream, addr)) = crate::listen::accept(&listener, &shutdown, "peer").await {
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(app.rpc_config().no_delay);
            let mut framed = Framed::new(stream, length_codec(AUTH_MAX_FRAME));
            let me = app.id().to_string();
            let secret = app.inner.secret.clone();
            let admit = |h: &kennel_proto::msg::Hello| {
                if h.role != Role::Peer as i32 {
                    return Err("this port takes peer links only".to_string());
                }
                if h.target != me {
                    return Err(format!("this is {me}, not {}", h.target));
                }
                if h.id.as_str() >= me.as_str() {
                    return Err(format!(
                        "{} must wait for {me} to dial (the smaller id dials)",
                        h.id
                    ));
                }
                if let Some(t) = app.inner.peers.type_of(&h.id)
                    && !app.rpc_config().may_link(&t, app.server_type())
                {
                    return Err(format!(
                        "noRpcMatrix: no links between {t} and {} servers",
                        app.server_type()
                    ));
                }
                Ok(secret.clone())
            };
            match tokio::time::timeout(AUTH_TIMEOUT, auth::accept(&mut framed, app.id(), admit))
                .await
            {
                Ok(Ok(hello)) => run_link(app, hello.id, framed, shutdown).await,
                Ok(Err(e)) => warn!(%addr, cause = %e, "peer link refused"),
                Err(_) => warn!(%addr, "peer link authentication timed out"),
            }
        });
    }
}

/// Runs an authenticated link until either side closes it, `cancel` fires, or the peer is
/// silent past the heartbeat timeout.
async fn run_link(
    app: App,
    peer: String,
    framed: Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
    cancel: CancellationToken,
) {
    let cfg = app.rpc_config().clone();
    let framed = framed.map_codec(|_| ProtoCodec::<PeerMsg, PeerMsg>::new(cfg.max_len));
    let (sink, mut stream) = framed.split();
    let (tx, rx) = mpsc::channel::<PeerMsg>(LINK_QUEUE);
    let link = Arc::new(Link {
        generation: app.inner.peers.generation.fetch_add(1, Ordering::Relaxed),
        peer: peer.clone(),
        tx,
        pending: Mutex::new(HashMap::new()),
        closed: cancel.child_token(),
    });
    app.inner.peers.install(link.clone());
    info!(%peer, "peer link up");

    let interval = cfg.interval.of(app.server_type());
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        link.closed.clone(),
        interval,
        cfg.heartbeat,
    ));

    // Silence is checked once per heartbeat period (a timer per message would cost on every
    // message): a link quiet past the timeout is closed. With heartbeats off, never.
    let silence = cfg.heartbeat_timeout;
    let mut check = tokio::time::interval(if cfg.heartbeat.is_zero() {
        Duration::from_secs(3600)
    } else {
        cfg.heartbeat
    });
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let m = tokio::select! {
            _ = link.closed.cancelled() => break,
            _ = check.tick() => {
                if !cfg.heartbeat.is_zero() && last_heard.elapsed() > silence {
                    warn!(%peer, "peer link silent for {silence:?} (heartbeat timeout): closing it");
                    break;
                }
                continue;
            }
            m = stream.next() => m,
        };
        last_heard = tokio::time::Instant::now();
        match m {
            None => break,
            Some(Err(e)) => {
                warn!(%peer, cause = %e, "bad message on peer link: closing it");
                break;
            }
            Some(Ok(PeerMsg { msg: Some(m) })) => app.on_peer_msg(&link, m).await,
            Some(Ok(PeerMsg { msg: None })) => {}
        }
    }
    link.closed.cancel();
    app.inner.peers.uninstall(&link);
    link.fail_pending();
    let _ = writer.await;
    info!(%peer, "peer link down");
}

/// Drains a link's queue into its socket: whatever is queued goes out in one write; with an
/// `interval`, messages are held up to that long to batch more. Sends a ping when the link has
/// been idle for `heartbeat`.
async fn write_loop<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<PeerMsg>,
    closed: CancellationToken,
    interval: Duration,
    heartbeat: Duration,
) where
    S: futures_util::Sink<PeerMsg> + Unpin,
{
    // One ticker for the heartbeat (not a timer per message): a tick after a period with
    // nothing sent sends a ping.
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(if heartbeat.is_zero() {
        Duration::from_secs(3600)
    } else {
        heartbeat
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    let mut sent = false;
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    sent = true;
                    m
                }
                None => break,
            },
            _ = closed.cancelled() => break,
            _ = tick.tick(), if !heartbeat.is_zero() => {
                if std::mem::take(&mut sent) {
                    continue;
                }
                seq += 1;
                msg(peer_msg::Msg::Ping(kennel_proto::msg::Ping { seq }))
            }
        };
        if !interval.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = closed.cancelled() => {}
            }
        }
        if sink.feed(first).await.is_err() {
            break;
        }
        let mut n = 0;
        while n < 1024 {
            match rx.try_recv() {
                Ok(m) => {
                    if sink.feed(m).await.is_err() {
                        closed.cancel();
                        return;
                    }
                    n += 1;
                }
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    closed.cancel();
}

impl Link {
    /// Delivers an RPC reply to its waiting caller.
    pub(crate) fn complete(&self, id: u64, r: Result<Bytes, RpcError>) {
        if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
            let _ = tx.send(r);
        }
    }

    /// The peer's id.
    pub(crate) fn peer(&self) -> &str {
        &self.peer
    }
}

/// A `PeerMsg` from its variant.
pub(crate) fn msg(m: peer_msg::Msg) -> PeerMsg {
    PeerMsg { msg: Some(m) }
}
