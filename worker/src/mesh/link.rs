//! One live link to a peer: its outbox and the calls waiting for replies on it.
//!
//! A sender encodes its [`PeerMsg`] straight into the link's outgoing buffer ([`Outbox`]); the
//! link's writer task (`io.rs`) takes the whole buffer and writes it at once (one wake-up and
//! one write per batch, however many messages it holds). Calls in flight on a link are failed
//! with [`RpcError::LinkDropped`] the moment it drops.
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kennel_proto::msg::{PeerMsg, peer_msg};
use prost::Message;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::RpcError;
use crate::stats::{Dropped, Drops, LogThrottle};

/// Bytes queued per link before senders wait (a single larger message still goes out).
pub(crate) const LINK_QUEUE_BYTES: usize = 4 << 20;
/// Bytes queued per link beyond which a forwarded client message (which never waits) is
/// refused.
pub(crate) const FORWARD_QUEUE_BYTES: usize = 2 * LINK_QUEUE_BYTES;

/// Calls waiting for replies, by call id (ids are a counter: hashed by identity).
type Pending = Mutex<HashMap<u64, PendingCall, IdHash>>;

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
pub(crate) struct Outbox {
    pub(crate) state: Mutex<OutState>,
    /// Wakes the writer (bytes were queued on an empty buffer).
    pub(crate) ready: Notify,
    /// Wakes senders waiting for room (the writer took the buffer, or the link closed).
    pub(crate) room: Notify,
    /// Senders that find no room for this long make the link congested (`rpc.timeout`).
    congest_after: Duration,
}

pub(crate) struct OutState {
    pub(crate) buf: BytesMut,
    /// The writer has stopped: nothing more goes out.
    closed: bool,
    /// When a sender first found the buffer full since the writer last took it (`None` while
    /// there was room). Past `congest_after` the link is congested.
    pub(crate) full_since: Option<Instant>,
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
    pub(crate) fn try_push(&self, m: PeerMsg, limit: usize) -> Pushed {
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
    pub(crate) fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.room.notify_waiters();
    }
}

/// What [`Outbox::try_push`] did with a message.
pub(crate) enum Pushed {
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

/// Appends `[u32 big-endian length][protobuf]` (the framing of [`kennel_proto::frame::ProtoCodec`]).
pub(crate) fn encode_frame(m: &PeerMsg, buf: &mut BytesMut) {
    let len = m.encoded_len();
    buf.reserve(4 + len);
    buf.put_u32(len as u32);
    m.encode(buf).expect("BytesMut grows as needed");
}

/// One live link to a peer.
pub(crate) struct Link {
    /// Tells this link from the peer's next one.
    pub(crate) generation: u64,
    /// The peer's id, shared (by the sessions of the client messages it forwards).
    peer: Arc<str>,
    pub(crate) out: Outbox,
    /// Calls waiting for a reply on this link; failed when it drops.
    pending: Pending,
    /// Wakes the timeout sweep (`peers::expire_calls`) when a call starts waiting on an idle
    /// link.
    calls_waiting: Arc<Notify>,
    /// Cancelled when the link ends (either side), or to close it.
    pub(crate) closed: CancellationToken,
    /// Counts messages dropped because the link was gone or congested.
    drops: Arc<Drops>,
    /// Limits the log lines about dropped messages to one a second.
    refusals: LogThrottle,
}

impl Link {
    /// A link to `peer` whose outbox starts with `initial` (bytes queued while authenticating)
    /// and counts as congested after `congest_after` without room.
    pub(crate) fn new(
        generation: u64,
        peer: Arc<str>,
        initial: BytesMut,
        congest_after: Duration,
        calls_waiting: Arc<Notify>,
        closed: CancellationToken,
        drops: Arc<Drops>,
    ) -> Link {
        Link {
            generation,
            peer,
            out: Outbox::new(initial, congest_after),
            pending: Mutex::new(HashMap::default()),
            calls_waiting,
            closed,
            drops,
            refusals: LogThrottle::new(),
        }
    }

    /// The peer's id.
    pub(crate) fn peer(&self) -> &str {
        &self.peer
    }

    /// The peer's id, shared.
    pub(crate) fn peer_id(&self) -> &Arc<str> {
        &self.peer
    }

    /// Queues `m` while the buffer holds less than `limit`, else waits for room (at most until
    /// the link is congested, or `deadline`; a close ends the wait at once).
    ///
    /// The message is queued (or refused) when this is called; the future only waits when
    /// the buffer is full. A plain fn, not an `async fn`: the future does not hold the message
    /// (twice) for its callers, so their futures stay small.
    fn queue(
        &self,
        m: PeerMsg,
        limit: usize,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<(), SendError>> + Send + '_ {
        let wait = match self.out.try_push(m, limit) {
            Pushed::Queued => Ok(Ok(())),
            Pushed::Closed => Ok(Err(SendError::Closed)),
            Pushed::Congested => Ok(Err(SendError::Congested)),
            // Boxed: the common cases above keep their callers' futures small.
            Pushed::Full(m, _) => Err(Box::pin(self.wait_for_room(m, limit, deadline))),
        };
        async move {
            match wait {
                Ok(sent) => sent,
                Err(waiting) => waiting.await,
            }
        }
    }

    /// Queues a message, waiting while the link's buffer is full (at most until the link is
    /// congested; a close ends the wait at once).
    pub(crate) fn send(
        &self,
        m: PeerMsg,
    ) -> impl Future<Output = Result<(), SendError>> + Send + '_ {
        self.queue(m, LINK_QUEUE_BYTES, None)
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
        self.queue(m, FORWARD_QUEUE_BYTES, None)
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

    /// Notes a message that could not be queued: counted, and logged at most once a second
    /// per link.
    pub(crate) fn refused(&self, e: SendError) {
        self.drops.dropped(Dropped::PeerMessage);
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
        let sent = self.queue(m, LINK_QUEUE_BYTES, Some(deadline));
        async move {
            if let Err(e) = sent.await {
                self.pending.lock().unwrap().remove(&id);
                if e == SendError::Congested && deadline <= Instant::now() {
                    return Err(RpcError::Timeout {
                        server: self.peer.to_string(),
                        route: String::new(),
                    });
                }
                return Err(e.rpc_error(&self.peer));
            }
            Ok(rx)
        }
    }

    /// Delivers an RPC reply to its waiting caller.
    pub(crate) fn complete(&self, id: u64, r: Result<Bytes, RpcError>) {
        if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
            let _ = tx.tx.send(r);
        }
    }

    /// Fails every call waiting on this link (it dropped).
    pub(crate) fn fail_pending(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap());
        for (_, c) in pending {
            let _ = c.tx.send(Err(RpcError::LinkDropped(self.peer.to_string())));
        }
    }

    /// Fails the calls whose deadline is at or before `now`; how many are still waiting.
    pub(crate) fn expire(&self, now: Instant) -> usize {
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
                server: self.peer.to_string(),
                route: String::new(),
            }));
        }
        left
    }
}

/// A `PeerMsg` from its variant.
pub(crate) fn msg(m: peer_msg::Msg) -> PeerMsg {
    PeerMsg { msg: Some(m) }
}

/// A link with nothing behind it (no reader or writer), for tests.
#[cfg(test)]
pub(crate) fn detached(peer: &str, congest_after: Duration) -> Arc<Link> {
    Arc::new(Link::new(
        1,
        peer.into(),
        BytesMut::new(),
        congest_after,
        Arc::new(Notify::new()),
        CancellationToken::new(),
        Default::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(seq: u64) -> PeerMsg {
        msg(peer_msg::Msg::Ping(kennel_proto::msg::Ping { seq }))
    }

    #[tokio::test]
    async fn a_full_link_refuses_at_once_once_congested_and_a_close_fails_its_calls() {
        let link = detached("p", Duration::from_millis(50));
        // One message past the limit still goes in; the next finds no room.
        let big = msg(peer_msg::Msg::Push(kennel_proto::msg::ClientPush {
            payload: Bytes::from(vec![0u8; LINK_QUEUE_BYTES]),
            ..Default::default()
        }));
        assert_eq!(link.send(big).await, Ok(()));
        assert!(matches!(
            link.out.try_push(ping(1), LINK_QUEUE_BYTES),
            Pushed::Full(..)
        ));
        // A forward has twice the room.
        assert!(matches!(
            link.out.try_push(ping(2), FORWARD_QUEUE_BYTES),
            Pushed::Queued
        ));
        let waited = tokio::time::timeout(Duration::from_secs(5), link.send(ping(3))).await;
        assert_eq!(waited.unwrap(), Err(SendError::Congested));
        assert!(matches!(
            link.out.try_push(ping(4), FORWARD_QUEUE_BYTES),
            Pushed::Congested
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        let call = link.call(7, ping(5), deadline).await;
        assert_eq!(call.unwrap_err(), RpcError::Congested("p".into()));
        // A call in flight is failed by the close.
        let link = detached("q", Duration::from_secs(10));
        let rx = link.call(8, ping(6), deadline).await.unwrap();
        link.fail_pending();
        let r = tokio::time::timeout(Duration::from_secs(5), rx).await;
        assert_eq!(r.unwrap().unwrap(), Err(RpcError::LinkDropped("q".into())));
    }
}
