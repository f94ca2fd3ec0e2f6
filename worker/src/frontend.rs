//! The frontend's client registry: live connections by id, bound uids, and delivery of
//! encoded frames to local clients (replies and pushes).
//!
//! Each connection has a bounded send queue drained by the task that writes to its socket. A
//! client that does not read fills its queue; the frontend then closes it rather than buffer
//! without limit.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::Session;

/// Frames queued per connection before a non-reading client is closed.
pub(crate) const SEND_QUEUE: usize = 1024;

/// One live client connection's sending side: a queue of encoded frames (a plain deque under
/// a lock: an idle connection holds no queue memory) and the wake-up of its task.
pub(crate) struct Conn {
    /// Connection id (unique on this frontend).
    pub(crate) id: u64,
    queue: Mutex<VecDeque<Bytes>>,
    /// Signalled when the queue goes from empty to non-empty.
    ready: Notify,
    /// Set to close the connection (by the server, or when the client leaves); what is
    /// queued is still written first.
    closing: AtomicBool,
    /// When the client's last heartbeat arrived ([`now_ms`]).
    heard: AtomicU64,
}

/// Milliseconds since the first call (the clock of heartbeat checks, rate limits and log
/// throttles).
pub(crate) fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}

impl Conn {
    pub(crate) fn new(id: u64) -> Conn {
        Conn {
            id,
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            closing: AtomicBool::new(false),
            heard: AtomicU64::new(now_ms()),
        }
    }

    /// Records a heartbeat from the client.
    pub(crate) fn heard(&self) {
        self.heard.store(now_ms(), Ordering::Relaxed);
    }

    /// Queues one encoded frame; a full queue closes the connection.
    pub(crate) fn send(&self, frame: Bytes) {
        let mut q = self.queue.lock().unwrap();
        if q.len() >= SEND_QUEUE {
            drop(q);
            tracing::warn!(
                conn = self.id,
                "client send queue full ({SEND_QUEUE} frames): closing"
            );
            self.close();
            return;
        }
        let wake = q.is_empty();
        q.push_back(frame);
        drop(q);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Moves every queued frame to the end of `out` (the next writes).
    pub(crate) fn take(&self, out: &mut VecDeque<Bytes>) {
        let mut q = self.queue.lock().unwrap();
        if out.is_empty() {
            std::mem::swap(&mut *q, out);
        } else {
            out.extend(q.drain(..));
        }
    }

    /// Waits until a frame is queued (returns at once if one was queued since the last wait).
    pub(crate) async fn queued(&self) {
        self.ready.notified().await
    }

    /// Asks the connection to close after flushing its queue. The queue's wake-up fires too,
    /// so a connection task waiting only on [`Conn::queued`] sees the close.
    pub(crate) fn close(&self) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.ready.notify_one();
        }
    }

    /// Whether the connection was asked to close.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

/// Live clients of this frontend.
#[derive(Default)]
pub(crate) struct FrontendState {
    conns: Mutex<HashMap<u64, Session>>,
    uids: Mutex<HashMap<u64, u64>>,
    next_id: AtomicU64,
}

impl FrontendState {
    /// A fresh connection id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Number of live connections.
    pub(crate) fn count(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    pub(crate) fn add(&self, session: Session) {
        self.conns
            .lock()
            .unwrap()
            .insert(session.conn_id(), session);
    }

    /// Forgets a closed connection and unbinds its uid.
    pub(crate) fn remove(&self, session: &Session) {
        self.conns.lock().unwrap().remove(&session.conn_id());
        if let Some(uid) = session.uid() {
            let mut uids = self.uids.lock().unwrap();
            if uids.get(&uid) == Some(&session.conn_id()) {
                uids.remove(&uid);
            }
        }
    }

    /// Binds `uid` to `conn_id` unless another connection holds it.
    pub(crate) fn bind_uid(&self, uid: u64, conn_id: u64) -> bool {
        let mut uids = self.uids.lock().unwrap();
        match uids.get(&uid) {
            Some(c) if *c != conn_id => false,
            _ => {
                uids.insert(uid, conn_id);
                true
            }
        }
    }

    /// The session bound to `uid`.
    pub(crate) fn by_uid(&self, uid: u64) -> Option<Session> {
        let conn = *self.uids.lock().unwrap().get(&uid)?;
        self.conns.lock().unwrap().get(&conn).cloned()
    }

    /// The session of connection `id`.
    pub(crate) fn by_conn(&self, id: u64) -> Option<Session> {
        self.conns.lock().unwrap().get(&id).cloned()
    }

    /// Every live session.
    pub(crate) fn all(&self) -> Vec<Session> {
        self.conns.lock().unwrap().values().cloned().collect()
    }

    /// Closes every connection whose client sent no heartbeat for `limit` or longer.
    pub(crate) fn close_silent(&self, limit: Duration) {
        let now = now_ms();
        let limit_ms = limit.as_millis() as u64;
        // Collected under the lock, logged and closed after it: a mass timeout (a network
        // cut) must not hold up deliveries while thousands of lines are written.
        let silent: Vec<Session> = self
            .conns
            .lock()
            .unwrap()
            .values()
            .filter(|s| {
                s.conn().is_some_and(|c| {
                    !c.is_closing()
                        && now.saturating_sub(c.heard.load(Ordering::Relaxed)) >= limit_ms
                })
            })
            .cloned()
            .collect();
        for s in silent {
            let Some(c) = s.conn() else { continue };
            let limit = limit.as_secs();
            tracing::warn!(
                conn = c.id,
                ip = s.ip(),
                "no heartbeat for {limit} s: closing"
            );
            c.close();
        }
    }

    /// Delivers one encoded frame to connections and to bound uids.
    pub(crate) fn deliver(&self, frame: &Bytes, conn_ids: &[u64], uids: &[u64]) {
        if !conn_ids.is_empty() {
            let conns = self.conns.lock().unwrap();
            for id in conn_ids {
                if let Some(c) = conns.get(id).and_then(|s| s.conn()) {
                    c.send(frame.clone());
                }
            }
        }
        if !uids.is_empty() {
            let map = self.uids.lock().unwrap();
            let conns = self.conns.lock().unwrap();
            for uid in uids {
                if let Some(c) = map
                    .get(uid)
                    .and_then(|id| conns.get(id))
                    .and_then(|s| s.conn())
                {
                    c.send(frame.clone());
                }
            }
        }
    }
}
