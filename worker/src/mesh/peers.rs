//! The RPC mesh: every known server, and one authenticated TCP link per pair of servers (the
//! smaller id dials, the larger accepts). A sender encodes its [`PeerMsg`] straight into the
//! link's outgoing buffer; the link's writer task takes the whole buffer and writes it at once
//! (one wake-up and one write per batch, however many messages it holds). A reader loop
//! dispatches what arrives.
//!
//! Calls in flight on a link are failed with [`RpcError::LinkDropped`] the moment it drops.
//! A dialer redials after a delay for as long as the master lists the peer.
//!
//! Game code run for a message (handlers, remotes, codecs) is behind panic boundaries in
//! routing (`app.rs`). Should anything else panic in a link's reader or writer, the link is
//! closed, not left installed but dead: the reader loop runs behind a boundary, and drop guards
//! ([`Installed`], [`CloseOnDrop`]) uninstall it and fail its calls on every exit path, so the
//! dialer redials.
//!
//! A peer that stops reading (a hung process, a host gone silent) fills its link. Senders
//! wait for room while the buffer holds [`LINK_QUEUE_BYTES`]; a client message forwarded by a
//! frontend (whose connection task must go on answering its client) is queued at once up to
//! [`FORWARD_QUEUE_BYTES`] and only waits beyond. Once senders have found no room for
//! `rpc.timeout` (the writer took nothing in that time), the link is *congested*: every send
//! to it fails at once, waiting ones included, until the writer makes progress again or the
//! link is declared dead (heartbeat timeout, or the kernel's `TCP_USER_TIMEOUT`), which fails
//! every waiting sender and call at once (the writer's write is raced with the link's close).
//! A slow peer loses nothing (its senders are held back); a stopped one holds a sender, and so
//! a client connection, at most `rpc.timeout` in all.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Poll, ready};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kennel_proto::auth;
use kennel_proto::frame::{AUTH_MAX_FRAME, LinkError, ProtoCodec, length_codec};
use kennel_proto::msg::{PeerMsg, Role, peer_msg};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::codec::{Decoder, Framed, FramedParts};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::dispatch::guarded;
use crate::wire::AdaptiveRead;
use crate::{App, RpcError, ServerInfo};

/// Bytes queued per link before senders wait (a single larger message still goes out).
pub(crate) const LINK_QUEUE_BYTES: usize = 4 << 20;
/// Bytes queued per link beyond which a forwarded client message (which never waits) is
/// refused.
pub(crate) const FORWARD_QUEUE_BYTES: usize = 2 * LINK_QUEUE_BYTES;
/// A write buffer grown past this is not kept for the next batch.
const KEEP_BUFFER: usize = 1 << 20;
/// How long authentication may take.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls waiting for replies, by call id (ids are a counter: hashed by identity).
type Pending = Mutex<HashMap<u64, PendingCall, IdHash>>;

/// How often calls past their deadline are failed with [`RpcError::Timeout`]: a call times
/// out between its timeout and this much later. One sweep per server instead of a timer per
/// call, and only while calls are waiting.
pub(crate) const CALL_SWEEP: Duration = Duration::from_millis(50);

/// A call waiting for its reply.
struct PendingCall {
    tx: oneshot::Sender<Result<Bytes, RpcError>>,
    deadline: Instant,
}

/// Hashes a `u64` call id as itself: ids are unique sequential numbers, so the table's
/// buckets spread them without a keyed hash.
#[derive(Default, Clone, Copy)]
struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// The hasher of [`IdHash`].
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // Spread the bits (hashbrown takes the top 7 bits as a tag).
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A link's outgoing bytes: frames encoded by the senders, taken whole by the writer.
struct Outbox {
    state: Mutex<OutState>,
    /// Wakes the writer (bytes were queued on an empty buffer).
    ready: Notify,
    /// Wakes senders waiting for room (the writer took the buffer, or the link closed).
    room: Notify,
    /// Senders that find no room for this long make the link congested (`rpc.timeout`).
    congest_after: Duration,
}

struct OutState {
    buf: BytesMut,
    /// The writer has stopped: nothing more goes out.
    closed: bool,
    /// When a sender first found the buffer full since the writer last took it (`None` while
    /// there was room). Past `congest_after` the link is congested.
    full_since: Option<Instant>,
}

impl Outbox {
    fn new(initial: BytesMut, congest_after: Duration) -> Outbox {
        Outbox {
            state: Mutex::new(OutState {
                buf: initial,
                closed: false,
                full_since: None,
            }),
            ready: Notify::new(),
            room: Notify::new(),
            congest_after,
        }
    }

    /// Appends `m` as a frame while the buffer holds less than [`LINK_QUEUE_BYTES`] (or is
    /// empty), or less than `limit` when that is larger. Refuses it when the link is closed or
    /// congested. The clock is read only when the buffer is full.
    fn try_push(&self, m: PeerMsg, limit: usize) -> Pushed {
        let mut st = self.state.lock().unwrap();
        if st.closed {
            return Pushed::Closed;
        }
        let was_empty = st.buf.is_empty();
        if !was_empty && st.buf.len() >= LINK_QUEUE_BYTES {
            let since = *st.full_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.congest_after {
                return Pushed::Congested;
            }
            if st.buf.len() >= limit {
                return Pushed::Full(m, since + self.congest_after);
            }
        }
        encode_frame(&m, &mut st.buf);
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        Pushed::Queued
    }

    /// Marks the outbox closed and wakes every sender waiting for room.
    fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.room.notify_waiters();
    }
}

/// What [`Outbox::try_push`] did with a message.
enum Pushed {
    Queued,
    /// The link is gone.
    Closed,
    /// No room: the message back, and when the link becomes congested if the writer takes
    /// nothing until then.
    Full(PeerMsg, Instant),
    /// No room for `rpc.timeout` already (the message is dropped).
    Congested,
}

/// Why a message could not be queued on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The link is closed (dropped, or declared dead).
    Closed,
    /// Nothing was written to the link for `rpc.timeout` while senders waited for room.
    Congested,
}

impl SendError {
    /// The error an RPC caller gets.
    pub(crate) fn rpc_error(self, peer: &str) -> RpcError {
        match self {
            SendError::Closed => RpcError::LinkDropped(peer.to_string()),
            SendError::Congested => RpcError::Congested(peer.to_string()),
        }
    }

    /// Why, for a log line about a message to `peer`.
    pub(crate) fn describe(self, peer: &str, congest_after: Duration) -> String {
        match self {
            SendError::Closed => format!("the link to {peer} dropped"),
            SendError::Congested => {
                format!("the link to {peer} is congested (nothing written for {congest_after:?})")
            }
        }
    }
}

/// Appends `[u32 big-endian length][protobuf]` (the framing of [`ProtoCodec`]).
fn encode_frame(m: &PeerMsg, buf: &mut BytesMut) {
    let len = m.encoded_len();
    buf.reserve(4 + len);
    buf.put_u32(len as u32);
    m.encode(buf).expect("BytesMut grows as needed");
}

/// One live link to a peer.
pub(crate) struct Link {
    generation: u64,
    peer: String,
    /// `peer` shared, for the sessions of the client messages it forwards.
    peer_sid: Arc<str>,
    out: Outbox,
    /// Calls waiting for a reply on this link; failed when it drops.
    pending: Pending,
    /// Wakes the timeout sweep ([`expire_calls`]) when a call starts waiting on an idle link.
    calls_waiting: Arc<Notify>,
    /// Cancelled when the link ends (either side), or to close it.
    closed: CancellationToken,
    /// Counts messages dropped because the link was gone or congested.
    stats: Arc<crate::stats::Drops>,
    /// Limits the log lines about dropped messages to one a second.
    refusals: crate::stats::LogThrottle,
}

impl Link {
    /// Queues a message, waiting while the link's buffer is full (at most until the link is
    /// congested; a close ends the wait at once).
    ///
    /// The message is queued (or refused) when `send` is called; the future only waits when
    /// the buffer is full. A plain fn, not an `async fn`: the future does not hold the message
    /// (twice) for its callers, so an RPC call's future stays small.
    pub(crate) fn send(
        &self,
        m: PeerMsg,
    ) -> impl Future<Output = Result<(), SendError>> + Send + '_ {
        let wait = match self.out.try_push(m, LINK_QUEUE_BYTES) {
            Pushed::Queued => Ok(Ok(())),
            Pushed::Closed => Ok(Err(SendError::Closed)),
            Pushed::Congested => Ok(Err(SendError::Congested)),
            // Boxed: the common cases above keep their callers' futures small.
            Pushed::Full(m, _) => Err(Box::pin(self.wait_for_room(m, LINK_QUEUE_BYTES, None))),
        };
        async move {
            match wait {
                Ok(sent) => sent,
                Err(waiting) => waiting.await,
            }
        }
    }

    /// Queues a client message forwarded by a frontend: at once while the link holds less
    /// than [`FORWARD_QUEUE_BYTES`] (twice what other senders wait at); beyond, it waits for
    /// room (back-pressure on that client) but never past the moment the link becomes
    /// congested, after which every forward fails at once. So a slow peer loses nothing and a
    /// stopped one holds a connection at most `rpc.timeout` in all.
    pub(crate) fn forward(
        &self,
        m: PeerMsg,
    ) -> impl Future<Output = Result<(), SendError>> + Send + '_ {
        let wait = match self.out.try_push(m, FORWARD_QUEUE_BYTES) {
            Pushed::Queued => Ok(Ok(())),
            Pushed::Closed => Ok(Err(SendError::Closed)),
            Pushed::Congested => Ok(Err(SendError::Congested)),
            // Boxed: the common cases above keep the connection's future small.
            Pushed::Full(m, _) => Err(Box::pin(self.wait_for_room(m, FORWARD_QUEUE_BYTES, None))),
        };
        async move {
            match wait {
                Ok(sent) => sent,
                Err(waiting) => waiting.await,
            }
        }
    }

    /// Queues a message now; when the buffer is full, a task waits for room to queue it (so
    /// a reader never blocks on its own link's writer), until the link is congested. Dropped
    /// (and counted) if the link is gone or congested.
    pub(crate) fn send_now(self: &Arc<Self>, m: PeerMsg) {
        match self.out.try_push(m, LINK_QUEUE_BYTES) {
            Pushed::Queued => {}
            Pushed::Closed => self.refused(SendError::Closed),
            Pushed::Congested => self.refused(SendError::Congested),
            Pushed::Full(m, _) => {
                let link = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = link.wait_for_room(m, LINK_QUEUE_BYTES, None).await {
                        link.refused(e);
                    }
                });
            }
        }
    }

    /// Notes a message [`Link::send_now`] could not queue: counted, and logged at most once
    /// a second per link.
    fn refused(&self, e: SendError) {
        self.stats.dropped(crate::stats::Dropped::PeerMessage);
        if let Some(more) = self.refusals.tick() {
            warn!(peer = %self.peer, more, "message to a peer dropped: {}", e.describe(&self.peer, self.out.congest_after));
        }
    }

    /// Waits for room in the link's buffer (below `limit`), then queues `m`. Fails when the
    /// link closes, when it becomes congested (senders found no room for `rpc.timeout`; the
    /// clock restarts whenever the writer takes the buffer), or at `deadline` (an RPC call's;
    /// reported as [`SendError::Congested`]).
    async fn wait_for_room(
        &self,
        mut m: PeerMsg,
        limit: usize,
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        loop {
            let room = self.out.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let congested_at;
            (m, congested_at) = match self.out.try_push(m, limit) {
                Pushed::Queued => return Ok(()),
                Pushed::Closed => return Err(SendError::Closed),
                Pushed::Congested => return Err(SendError::Congested),
                Pushed::Full(m, at) => (m, at),
            };
            let until = deadline.map_or(congested_at, |d| d.min(congested_at));
            tokio::select! {
                _ = room => {}
                _ = tokio::time::sleep_until(until.into()) => {
                    if deadline.is_some_and(|d| d <= Instant::now()) {
                        return Err(SendError::Congested);
                    }
                }
            }
        }
    }

    /// Sends a request; the receiver gets its reply, or [`RpcError::Timeout`] (with an empty
    /// route) once `deadline` has passed, or [`RpcError::LinkDropped`]. A call that finds the
    /// link full waits for room until its deadline, or fails when the link is congested.
    pub(crate) fn call(
        &self,
        id: u64,
        m: PeerMsg,
        deadline: Instant,
    ) -> impl Future<Output = Result<oneshot::Receiver<Result<Bytes, RpcError>>, RpcError>> + Send + '_
    {
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut pending = self.pending.lock().unwrap();
            pending.insert(id, PendingCall { tx, deadline });
            pending.len() == 1
        };
        if first {
            self.calls_waiting.notify_one();
        }
        let wait = match self.out.try_push(m, LINK_QUEUE_BYTES) {
            Pushed::Queued => Ok(Ok(())),
            Pushed::Closed => Ok(Err(SendError::Closed)),
            Pushed::Congested => Ok(Err(SendError::Congested)),
            // Boxed: the common cases above keep the call's future small.
            Pushed::Full(m, _) => Err(Box::pin(self.wait_for_room(
                m,
                LINK_QUEUE_BYTES,
                Some(deadline),
            ))),
        };
        async move {
            let sent = match wait {
                Ok(sent) => sent,
                Err(waiting) => waiting.await,
            };
            if let Err(e) = sent {
                self.pending.lock().unwrap().remove(&id);
                if e == SendError::Congested && deadline <= Instant::now() {
                    return Err(RpcError::Timeout {
                        server: self.peer.clone(),
                        route: String::new(),
                    });
                }
                return Err(e.rpc_error(&self.peer));
            }
            Ok(rx)
        }
    }

    fn fail_pending(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap());
        for (_, c) in pending {
            let _ = c.tx.send(Err(RpcError::LinkDropped(self.peer.clone())));
        }
    }

    /// Fails the calls whose deadline is at or before `now`; how many are still waiting.
    fn expire(&self, now: Instant) -> usize {
        let (expired, left): (Vec<PendingCall>, usize) = {
            let mut pending = self.pending.lock().unwrap();
            if pending.is_empty() {
                return 0;
            }
            let expired = pending.extract_if(|_, c| c.deadline <= now).map(|(_, c)| c);
            (expired.collect(), pending.len())
        };
        for c in expired {
            let _ = c.tx.send(Err(RpcError::Timeout {
                server: self.peer.clone(),
                route: String::new(),
            }));
        }
        left
    }
}

struct Peer {
    info: Option<ServerInfo>,
    link: watch::Sender<Option<Arc<Link>>>,
    /// Callers waiting for `link` (bounded by `rpcMsgCacheCount`).
    waiting: Arc<AtomicUsize>,
    /// Stops this peer's dialer (smaller id dials).
    dialer: Option<CancellationToken>,
    /// Since when there has been no link ([`crate::frontend::now_ms`]): when the peer became
    /// known, or its last link went down.
    down_since: AtomicU64,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            info: None,
            link: watch::channel(None).0,
            waiting: Arc::new(AtomicUsize::new(0)),
            dialer: None,
            down_since: AtomicU64::new(crate::frontend::now_ms()),
        }
    }
}

/// Every known server and the links to them.
#[derive(Default)]
pub(crate) struct Peers {
    map: RwLock<HashMap<String, Peer>>,
    generation: AtomicU64,
    /// Ids of the known servers by type, sorted; rebuilt when a server is added or removed,
    /// so a lookup per request is a read lock and an `Arc` clone.
    by_type: RwLock<HashMap<String, Arc<[String]>>>,
    /// Notified when a call starts waiting on a link that had none (see [`expire_calls`]).
    calls_waiting: Arc<Notify>,
    /// Limits the log lines about client messages that could not be forwarded.
    pub(crate) refusal_log: crate::stats::LogThrottle,
}

/// Fails calls past their deadline, every [`CALL_SWEEP`] while any call waits; sleeps
/// otherwise. Runs until `shutdown`.
pub(crate) async fn expire_calls(app: App, shutdown: CancellationToken) {
    let peers = &app.inner.peers;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = peers.calls_waiting.notified() => {}
        }
        // A call that starts waiting after a sweep found none leaves a permit in the
        // `Notify`, so it is never missed.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CALL_SWEEP) => {}
            }
            if peers.expire(Instant::now()) == 0 {
                break;
            }
        }
    }
}

/// Builds the per-type id lists from the map.
fn index_by_type(map: &HashMap<String, Peer>) -> HashMap<String, Arc<[String]>> {
    let mut by_type: HashMap<String, Vec<String>> = HashMap::new();
    for (id, p) in map {
        if let Some(info) = &p.info {
            by_type
                .entry(info.server_type.clone())
                .or_default()
                .push(id.clone());
        }
    }
    by_type
        .into_iter()
        .map(|(t, mut ids)| {
            ids.sort();
            (t, ids.into())
        })
        .collect()
}

impl Peers {
    /// Fails every call past its deadline; how many calls are still waiting.
    fn expire(&self, now: Instant) -> usize {
        let links: Vec<Arc<Link>> = self
            .map
            .read()
            .unwrap()
            .values()
            .filter_map(|p| p.link.borrow().clone())
            .collect();
        links.iter().map(|l| l.expire(now)).sum()
    }

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
        match self.link_now(app, id)? {
            Ok(link) => Ok(link),
            // Boxed: the common case above keeps its callers' futures small.
            Err((rx, waiting)) => {
                Box::pin(wait_for_link(app, id, route, timeout, rx, waiting)).await
            }
        }
    }

    /// The link for a client message a frontend forwards to `id`. A link that is not up is
    /// waited for only until `timeout` after it went down, in total: the connection task that
    /// waits also answers its client, so once a peer has been unreachable that long, every
    /// forward to it fails at once (instead of each waiting `timeout` again).
    pub(crate) async fn forward_link(
        &self,
        app: &App,
        id: &str,
        route: &str,
        timeout: Duration,
    ) -> Result<Arc<Link>, RpcError> {
        let (rx, waiting) = match self.link_now(app, id)? {
            Ok(link) => return Ok(link),
            Err(w) => w,
        };
        let down_ms = self
            .map
            .read()
            .unwrap()
            .get(id)
            .map_or(0, |p| p.down_since.load(Ordering::Relaxed));
        let down_for = Duration::from_millis(crate::frontend::now_ms().saturating_sub(down_ms));
        let left = timeout.saturating_sub(down_for);
        if left.is_zero() {
            return Err(RpcError::Timeout {
                server: id.to_string(),
                route: route.to_string(),
            });
        }
        Box::pin(wait_for_link(app, id, route, left, rx, waiting)).await
    }

    /// The link to a known server if it is up (`Ok(Ok)`), or what to wait on (`Ok(Err)`).
    #[allow(clippy::type_complexity)]
    pub(crate) fn link_now(
        &self,
        app: &App,
        id: &str,
    ) -> Result<Result<Arc<Link>, (LinkWatch, Arc<AtomicUsize>)>, RpcError> {
        match self.map.read().unwrap().get(id) {
            None => Err(RpcError::UnknownServer(id.to_string())),
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
                    Some(l) => Ok(Ok(l.clone())),
                    None => Ok(Err((p.link.subscribe(), p.waiting.clone()))),
                }
            }
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

    /// Ids of the known servers of one type, sorted (shared, not copied).
    pub(crate) fn ids_of_type(&self, server_type: &str) -> Arc<[String]> {
        static EMPTY: std::sync::OnceLock<Arc<[String]>> = std::sync::OnceLock::new();
        match self.by_type.read().unwrap().get(server_type) {
            Some(ids) => ids.clone(),
            None => EMPTY.get_or_init(|| Arc::from(Vec::new())).clone(),
        }
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
        let retyped = entry
            .info
            .as_ref()
            .is_none_or(|old| old.server_type != info.server_type);
        entry.info = Some(info.clone());
        let may_link = app
            .rpc_config()
            .may_link(app.server_type(), &info.server_type);
        if id.as_str() != me && me < id.as_str() && entry.dialer.is_none() && may_link {
            let token = app.inner.shutdown.child_token();
            entry.dialer = Some(token.clone());
            tokio::spawn(dial_loop(app.clone(), info, token));
        }
        if retyped {
            *self.by_type.write().unwrap() = index_by_type(&map);
        }
        new
    }

    /// Forgets a server: stops dialing it, closes its link and fails its calls.
    pub(crate) fn remove(&self, id: &str) -> Option<ServerInfo> {
        let peer = {
            let mut map = self.map.write().unwrap();
            let peer = map.remove(id)?;
            *self.by_type.write().unwrap() = index_by_type(&map);
            peer
        };
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
                    p.down_since
                        .store(crate::frontend::now_ms(), Ordering::Relaxed);
                    true
                } else {
                    false
                }
            });
        }
    }
}

/// Watches a peer's current link.
pub(crate) type LinkWatch = watch::Receiver<Option<Arc<Link>>>;

/// Waits for a link that is not up yet (see [`Peers::wait_link`]).
async fn wait_for_link(
    app: &App,
    id: &str,
    route: &str,
    timeout: Duration,
    mut rx: LinkWatch,
    waiting: Arc<AtomicUsize>,
) -> Result<Arc<Link>, RpcError> {
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

/// Dials `info` until cancelled, keeping one link up; redials after `reconnect_delay`.
async fn dial_loop(app: App, info: ServerInfo, cancel: CancellationToken) {
    let addr = format!("{}:{}", info.host, info.port);
    let mut logged = false;
    loop {
        // Boxed: the dial and authentication state is freed before the link runs, not
        // kept in this task for the link's life.
        let attempt = Box::pin(async {
            let stream = TcpStream::connect(&addr)
                .await
                .map_err(|e| (false, e.to_string()))?;
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
            .map_err(|_| (false, "authentication timed out".to_string()))?
            .map_err(|e| {
                // A refusal without the peer's proof of the secret is anyone's to send: never
                // a verdict, the dial goes on like after any other failure.
                let untrusted = matches!(
                    e,
                    auth::AuthError::Refused(_) | auth::AuthError::Rejected(_)
                );
                (untrusted, e.to_string())
            })?;
            Ok::<_, (bool, String)>(framed)
        });
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok(framed) => {
                logged = false;
                run_link(app.clone(), info.id.clone(), framed, cancel.clone()).await;
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
            _ = tokio::time::sleep(app.reconnect_delay()) => {}
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
pub(crate) async fn accept_loop(app: App, listener: TcpListener, shutdown: CancellationToken) {
    let gate = kennel_proto::net::PreAuthGate::new(PRE_AUTH_MAX, PRE_AUTH_PER_IP);
    let evictions = crate::stats::LogThrottle::new();
    while let Some((stream, addr)) = crate::listen::accept(&listener, &shutdown, "peer").await {
        let (ticket, eviction) = gate.admit(addr.ip());
        if eviction != kennel_proto::net::Eviction::None
            && let Some(more) = evictions.tick()
        {
            warn!(%addr, ?eviction, more, max = PRE_AUTH_MAX, per_ip = PRE_AUTH_PER_IP, "too many unauthenticated connections on the peer port: closed the oldest");
        }
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Boxed: the authentication state is freed before the link runs, not kept in this
            // task for the link's life.
            let authenticated = tokio::select! {
                a = Box::pin(authenticate_inbound(&app, stream, addr)) => a,
                _ = ticket.evicted() => {
                    debug!(%addr, "unauthenticated peer connection closed for a newer one");
                    None
                }
            };
            drop(ticket);
            if let Some((peer, framed)) = authenticated {
                run_link(app, peer, framed, shutdown).await
            }
        });
    }
}

/// Authenticates an inbound peer link: the peer's id and the framed stream, or `None` (logged)
/// when it is refused or too slow.
async fn authenticate_inbound(
    app: &App,
    stream: TcpStream,
    addr: std::net::SocketAddr,
) -> Option<(
    String,
    Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
)> {
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
    match tokio::time::timeout(AUTH_TIMEOUT, auth::accept(&mut framed, app.id(), admit)).await {
        // The rest of the hello may hold slices of the authentication's read buffer: dropped
        // now, not when the link ends.
        Ok(Ok(hello)) => Some((hello.id, framed)),
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
/// silent past the heartbeat timeout.
async fn run_link(
    app: App,
    peer: String,
    framed: Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
    cancel: CancellationToken,
) {
    // The settings it needs, not a copy of the whole config held for the link's life.
    let (max_len, heartbeat, silence) = {
        let cfg = app.rpc_config();
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
    let mut stream = LinkReader {
        io: read_half,
        buf: BytesMut::from(&auth_read[..]),
        read: AdaptiveRead::new(),
        codec: ProtoCodec::new(max_len),
    };
    let write_buf = BytesMut::from(&auth_write[..]);
    // Freed now, not when the link ends.
    drop((auth_read, auth_write));
    let link = Arc::new(Link {
        generation: app.inner.peers.generation.fetch_add(1, Ordering::Relaxed),
        peer_sid: peer.as_str().into(),
        peer: peer.clone(),
        out: Outbox::new(write_buf, app.rpc_timeout()),
        pending: Mutex::new(HashMap::default()),
        calls_waiting: app.inner.peers.calls_waiting.clone(),
        closed: cancel.child_token(),
        stats: app.inner.stats.drops.clone(),
        refusals: crate::stats::LogThrottle::new(),
    });
    app.inner.peers.install(link.clone());
    // From here on every exit path closes and uninstalls the link and fails its calls.
    let installed = Installed {
        peers: &app.inner.peers,
        link: &link,
    };
    info!(%peer, "peer link up");

    let interval = app.rpc_config().interval.of(app.server_type());
    let writer = tokio::spawn({
        let closes = CloseOnDrop(link.clone());
        let link = link.clone();
        async move {
            write_loop(write_half, link, interval, heartbeat).await;
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
            let m = tokio::select! {
                biased;
                m = stream.next() => m,
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
                Some(Ok(PeerMsg { msg: Some(m) })) => app.on_peer_msg(&link, m),
                Some(Ok(PeerMsg { msg: None })) => {}
            }
        }
    });
    if let Err(p) = read.await {
        tracing::error!(
            server = app.id(),
            %peer,
            "panic in a peer link's reader: {}; closing the link",
            p.message()
        );
        app.inner.stats.panic("peer link");
    }
    drop(installed);
    let _ = writer.await;
    info!(%peer, "peer link down");
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

/// The reading side of a link: frames decoded from a buffer filled by reads of an adaptive
/// size (an idle link holds a few dozen bytes, a busy one reads up to 64 KiB at once).
struct LinkReader {
    io: OwnedReadHalf,
    buf: BytesMut,
    read: AdaptiveRead,
    codec: ProtoCodec<PeerMsg, PeerMsg>,
}

impl LinkReader {
    /// The next message; `None` when the peer closed the link between messages. Cancel-safe:
    /// bytes read stay in the buffer.
    async fn next(&mut self) -> Option<Result<PeerMsg, LinkError>> {
        std::future::poll_fn(|cx| {
            loop {
                match self.codec.decode(&mut self.buf) {
                    Ok(Some(m)) => return Poll::Ready(Some(Ok(m))),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
                match ready!(self.read.poll_read(&mut self.io, cx, &mut self.buf)) {
                    Ok(0) if self.buf.is_empty() => return Poll::Ready(None),
                    Ok(0) => {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "link closed in the middle of a message",
                        );
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                }
            }
        })
        .await
    }
}

/// Writes a link's outbox to its socket: each wake-up takes every frame queued so far and
/// writes them at once; with an `interval`, frames are held up to that long to batch more.
/// Sends a ping when the link has been idle for `heartbeat`.
async fn write_loop(
    mut io: OwnedWriteHalf,
    link: Arc<Link>,
    interval: Duration,
    heartbeat: Duration,
) {
    let out = &link.out;
    let closed = &link.closed;
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
    // The buffer being written; swapped with the outbox's so neither is reallocated.
    let mut batch = BytesMut::new();
    // Bytes queued before the writer started (from authentication) go out first.
    out.ready.notify_one();
    loop {
        tokio::select! {
            biased;
            _ = closed.cancelled() => break,
            _ = out.ready.notified() => sent = true,
            _ = tick.tick(), if !heartbeat.is_zero() => {
                if std::mem::take(&mut sent) {
                    continue;
                }
                seq += 1;
                let ping = msg(peer_msg::Msg::Ping(kennel_proto::msg::Ping { seq }));
                encode_frame(&ping, &mut out.state.lock().unwrap().buf);
            }
        }
        if !interval.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = closed.cancelled() => {}
            }
        }
        {
            let mut st = out.state.lock().unwrap();
            if st.buf.is_empty() {
                continue;
            }
            std::mem::swap(&mut st.buf, &mut batch);
            st.full_since = None;
        }
        out.room.notify_waiters();
        // Raced with the close: a link declared dead while its peer reads nothing ends now,
        // failing whoever waits on it, instead of when the peer reads again.
        let written = tokio::select! {
            r = io.write_all(&batch) => r.is_ok(),
            _ = closed.cancelled() => false,
        };
        if !written {
            break;
        }
        batch.clear();
        if batch.capacity() > KEEP_BUFFER {
            batch = BytesMut::new();
        }
    }
    out.close();
    closed.cancel();
}

impl Link {
    /// Delivers an RPC reply to its waiting caller.
    pub(crate) fn complete(&self, id: u64, r: Result<Bytes, RpcError>) {
        if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
            let _ = tx.tx.send(r);
        }
    }

    /// The peer's id.
    pub(crate) fn peer(&self) -> &str {
        &self.peer
    }

    /// The peer's id, shared.
    pub(crate) fn peer_sid(&self) -> &Arc<str> {
        &self.peer_sid
    }
}

/// A `PeerMsg` from its variant.
pub(crate) fn msg(m: peer_msg::Msg) -> PeerMsg {
    PeerMsg { msg: Some(m) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A link reader on one end of a loopback TCP pair, and the other end's writer.
    async fn reader() -> (LinkReader, TcpStream) {
        let (a, b) = crate::wire::tcp_pair().await;
        let (rd, _wr) = b.into_split();
        let r = LinkReader {
            io: rd,
            buf: BytesMut::new(),
            read: AdaptiveRead::new(),
            codec: ProtoCodec::new(1 << 20),
        };
        (r, a)
    }

    fn ping(seq: u64) -> PeerMsg {
        msg(peer_msg::Msg::Ping(kennel_proto::msg::Ping { seq }))
    }

    #[tokio::test]
    async fn reads_every_message_of_a_burst_in_order_then_the_end() {
        let (mut r, mut w) = reader().await;
        let mut bytes = BytesMut::new();
        for seq in 0..20_000 {
            encode_frame(&ping(seq), &mut bytes);
        }
        // Written in uneven pieces, so frames straddle reads.
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(777) {
                w.write_all(chunk).await.unwrap();
            }
        });
        for seq in 0..20_000 {
            let m = tokio::time::timeout(Duration::from_secs(10), r.next())
                .await
                .unwrap();
            assert_eq!(m.unwrap().unwrap(), ping(seq));
        }
        writer.await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), r.next()).await;
        assert!(
            end.unwrap().is_none(),
            "a close between messages ends the link"
        );
    }

    #[tokio::test]
    async fn a_close_in_the_middle_of_a_message_is_an_error() {
        let (mut r, mut w) = reader().await;
        let mut bytes = BytesMut::new();
        encode_frame(&ping(1), &mut bytes);
        w.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
        drop(w);
        let m = tokio::time::timeout(Duration::from_secs(10), r.next()).await;
        assert!(matches!(m.unwrap(), Some(Err(LinkError::Io(_)))));
    }

    #[tokio::test]
    async fn a_link_is_closed_uninstalled_and_its_calls_failed_when_its_reader_panics() {
        let peers = Peers::default();
        let link = Arc::new(Link {
            generation: 1,
            peer: "p".into(),
            peer_sid: "p".into(),
            out: Outbox::new(BytesMut::new(), Duration::from_secs(10)),
            pending: Mutex::new(HashMap::default()),
            calls_waiting: Arc::new(Notify::new()),
            closed: CancellationToken::new(),
            stats: Default::default(),
            refusals: crate::stats::LogThrottle::new(),
        });
        peers.install(link.clone());
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + Duration::from_secs(60);
        link.pending
            .lock()
            .unwrap()
            .insert(7, PendingCall { tx, deadline });
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _installed = Installed {
                peers: &peers,
                link: &link,
            };
            panic!("a bug in the reader");
        }));
        assert!(read.is_err());
        assert!(link.closed.is_cancelled());
        assert!(peers.map.read().unwrap()["p"].link.borrow().is_none());
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

    #[tokio::test]
    async fn an_oversized_frame_is_an_error() {
        let (mut r, mut w) = reader().await;
        w.write_all(&(2u32 << 20).to_be_bytes()).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), r.next()).await;
        assert!(matches!(m.unwrap(), Some(Err(_))));
    }
}
