//! A frontend's clients: each live connection's sending side ([`Conn`]), and the registry
//! of live connections by id and by bound uid ([`Clients`]), which hands encoded frames to
//! them. The registry keeps, beside each connection, the session the routing layer made for it
//! (a type parameter: the edge knows sessions only through [`ClientSession`]).
//!
//! Each connection has a send queue drained by the task that writes to its socket, bounded in
//! frames ([`SEND_QUEUE`]) and in bytes (`sendQueueBytes`, counting frames queued or handed to
//! the socket but not written yet). A client that does not read fills it; the frontend then
//! closes it rather than buffer without limit. Each connection also counts its handlers in
//! flight, so its task can stop reading at `maxInFlight`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::io;

use bytes::{Buf, Bytes};
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::edge::{ClientSession, direct};

/// Frames queued per connection before a non-reading client is closed.
pub(crate) const SEND_QUEUE: usize = 1024;

/// One live client connection's sending side: a queue of encoded frames (a plain deque under
/// a lock: an idle connection holds no queue memory) and the wake-up of its task; for a plain
/// TCP client, its socket, which others write to directly while the task is idle
/// (`direct.rs`).
pub(crate) struct Conn {
    /// Connection id (unique on this frontend).
    pub(crate) id: u64,
    queue: Mutex<Queue>,
    /// Where direct writes go (plain TCP or io_uring, without `interval`).
    direct: Option<direct::Direct>,
    /// Signalled when the queue goes from empty to non-empty.
    ready: Notify,
    /// Set to close the connection (by the server, or when the client leaves); what is
    /// queued is still written first.
    closing: AtomicBool,
    /// When the client's last heartbeat arrived ([`now_ms`]).
    heard: AtomicU64,
    /// Bytes queued or handed to the socket and not written yet.
    pending: AtomicUsize,
    /// Handlers of this connection started and not finished.
    in_flight: AtomicUsize,
    limits: Arc<ConnLimits>,
}

/// A connection's frames not yet taken by its task, and whether the task is idle.
#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// The task waits with nothing to write: others may write to the socket (under the lock).
    idle: bool,
}

/// Frames one direct write hands to the socket at most (one `writev`).
const DIRECT_SLICES: usize = 64;

/// What bounds every connection of a frontend (shared by them).
pub(crate) struct ConnLimits {
    /// `sendQueueBytes`.
    pub(crate) send_queue_bytes: usize,
    /// `maxInFlight`.
    pub(crate) max_in_flight: usize,
    /// Counts connections closed for a full queue.
    pub(crate) drops: Arc<crate::stats::Drops>,
}

impl Conn {
    /// A connection; `direct`: its socket, when others may write to it while it is idle.
    pub(crate) fn new(id: u64, limits: Arc<ConnLimits>, direct: Option<direct::Direct>) -> Conn {
        Conn {
            id,
            queue: Mutex::new(Queue::default()),
            direct,
            ready: Notify::new(),
            closing: AtomicBool::new(false),
            heard: AtomicU64::new(now_ms()),
            pending: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            limits,
        }
    }

    /// Records a heartbeat from the client.
    pub(crate) fn heard(&self) {
        self.heard.store(now_ms(), Ordering::Relaxed);
    }

    /// Queues one encoded frame; a full queue (frames or bytes) closes the connection and
    /// drops the frame. A single frame larger than `sendQueueBytes` goes out when nothing
    /// else is pending. While the task is idle the frame is written at once (or, inside
    /// [`direct::deferred`], at the next [`direct::flush`]) instead of waking the task.
    pub(crate) fn send(self: &Arc<Self>, frame: Bytes) {
        let mut q = self.queue.lock().unwrap();
        if q.frames.len() >= SEND_QUEUE {
            drop(q);
            self.queue_full(format_args!("{SEND_QUEUE} frames"));
            return;
        }
        let pending = self.pending.load(Ordering::Relaxed);
        if pending != 0 && pending + frame.len() > self.limits.send_queue_bytes {
            drop(q);
            let max = self.limits.send_queue_bytes;
            self.queue_full(format_args!(
                "{pending} bytes pending, sendQueueBytes {max}"
            ));
            return;
        }
        self.pending.fetch_add(frame.len(), Ordering::Relaxed);
        let first = q.frames.is_empty();
        q.frames.push_back(frame);
        if !first {
            return; // already written for, deferred or the task woken
        }
        if self.direct.is_some() {
            if !q.idle {
                // The task is running or waits to write: it takes the queue before it idles.
                return;
            }
            if !self.is_closing() {
                if direct::deferring() {
                    drop(q);
                    direct::defer(self);
                    return;
                }
                if self.write_direct(&mut q) {
                    return;
                }
            }
        }
        drop(q);
        self.ready.notify_one();
    }

    /// Writes what [`Conn::send`] deferred, if the task is still idle; otherwise (or for what
    /// the socket does not take) wakes the task.
    pub(crate) fn flush_direct(&self) {
        let mut q = self.queue.lock().unwrap();
        if q.frames.is_empty() {
            return;
        }
        if q.idle && !self.is_closing() && self.write_direct(&mut q) {
            return;
        }
        drop(q);
        self.ready.notify_one();
    }

    /// One vectored write of the queue to the socket, the lock held (so nobody else writes);
    /// true when the queue is empty after it. An error is left for the task to meet.
    fn write_direct(&self, q: &mut Queue) -> bool {
        let socket = match &self.direct {
            None => return false,
            Some(direct::Direct::Tcp(socket)) => socket,
            #[cfg(target_os = "linux")]
            Some(direct::Direct::Uring(d)) => {
                return d.write(&mut q.frames, |n| self.written(n));
            }
        };
        let mut slices = [io::IoSlice::new(&[]); DIRECT_SLICES];
        let n = q
            .frames
            .iter()
            .zip(slices.iter_mut())
            .map(|(f, s)| *s = io::IoSlice::new(f))
            .count();
        let Ok(mut written) = socket.try_write_vectored(&slices[..n]) else {
            return false;
        };
        self.written(written);
        while let Some(front) = q.frames.front_mut() {
            if front.len() > written {
                front.advance(written);
                break;
            }
            written -= front.len();
            q.frames.pop_front();
        }
        q.frames.is_empty()
    }

    /// Closes the connection for a full send queue (logged and counted once).
    fn queue_full(&self, what: std::fmt::Arguments<'_>) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            tracing::warn!(conn = self.id, "client send queue full ({what}): closing");
            self.limits
                .drops
                .dropped(crate::stats::Dropped::SendQueueClose);
            self.ready.notify_one();
        }
    }

    /// Notes `n` bytes of queued frames written to the socket.
    pub(crate) fn written(&self, n: usize) {
        if n != 0 {
            self.pending.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Counts a handler of this connection in flight until the guard drops.
    pub(crate) fn handler_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Whether `maxInFlight` handlers are in flight (the task stops reading the client).
    pub(crate) fn at_in_flight_limit(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) >= self.limits.max_in_flight
    }

    /// Moves every queued frame to the end of `out` (the next writes). With `may_idle` (the
    /// task has nothing else to write and is about to wait), a still empty `out` marks the
    /// connection idle: until [`Conn::wake`], others write to its socket directly.
    pub(crate) fn take(&self, out: &mut VecDeque<Bytes>, may_idle: bool) -> bool {
        let mut q = self.queue.lock().unwrap();
        if out.is_empty() {
            std::mem::swap(&mut q.frames, out);
        } else {
            out.extend(q.frames.drain(..));
        }
        q.idle = may_idle && out.is_empty() && self.direct.is_some();
        q.idle
    }

    /// The task is running again (after [`Conn::take`] marked it idle): from here on only it
    /// writes to the socket.
    pub(crate) fn wake(&self) {
        self.queue.lock().unwrap().idle = false;
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

/// One handler of a connection in flight; wakes the connection's task when it drops the count
/// below `maxInFlight` (the task then reads the client again).
pub(crate) struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let before = self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        if before == self.0.limits.max_in_flight {
            self.0.ready.notify_one();
        }
    }
}

/// The tables' hasher: foldhash, several times cheaper than std's SipHash on a `u64` (a push
/// to a room looks up every member) and seeded per table, so uids a client can choose do not
/// let it pile keys into one bucket.
type Fast = foldhash::fast::RandomState;

/// Live clients of this frontend: each connection with its session, and bound uids.
pub(crate) struct Clients<S> {
    conns: Mutex<HashMap<u64, (Arc<Conn>, S), Fast>>,
    uids: Mutex<HashMap<u64, u64, Fast>>,
    next_id: AtomicU64,
}

impl<S> Default for Clients<S> {
    fn default() -> Self {
        Clients {
            conns: Mutex::new(HashMap::default()),
            uids: Mutex::new(HashMap::default()),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<S: ClientSession> Clients<S> {
    /// A fresh connection id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Number of live connections.
    pub(crate) fn count(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    pub(crate) fn add(&self, conn: Arc<Conn>, session: S) {
        self.conns.lock().unwrap().insert(conn.id, (conn, session));
    }

    /// Forgets a closed connection and unbinds its uid.
    pub(crate) fn remove(&self, conn_id: u64, uid: Option<u64>) {
        self.conns.lock().unwrap().remove(&conn_id);
        if let Some(uid) = uid {
            let mut uids = self.uids.lock().unwrap();
            if uids.get(&uid) == Some(&conn_id) {
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
    pub(crate) fn by_uid(&self, uid: u64) -> Option<S> {
        let conn = *self.uids.lock().unwrap().get(&uid)?;
        self.by_conn(conn)
    }

    /// The session of connection `id`.
    pub(crate) fn by_conn(&self, id: u64) -> Option<S> {
        self.conns.lock().unwrap().get(&id).map(|(_, s)| s.clone())
    }

    /// Asks every connection to close (each flushes its queue first).
    pub(crate) fn close_all(&self) {
        for (c, _) in self.conns.lock().unwrap().values() {
            c.close();
        }
    }

    /// Closes every connection whose client sent no heartbeat for `limit` or longer.
    pub(crate) fn close_silent(&self, limit: Duration) {
        let now = now_ms();
        let limit_ms = limit.as_millis() as u64;
        // Collected under the lock, logged and closed after it: a mass timeout (a network
        // cut) must not hold up deliveries while thousands of lines are written.
        let silent: Vec<(Arc<Conn>, S)> = self
            .conns
            .lock()
            .unwrap()
            .values()
            .filter(|(c, _)| {
                !c.is_closing() && now.saturating_sub(c.heard.load(Ordering::Relaxed)) >= limit_ms
            })
            .cloned()
            .collect();
        for (c, s) in silent {
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
                if let Some((c, _)) = conns.get(id) {
                    c.send(frame.clone());
                }
            }
        }
        if !uids.is_empty() {
            let map = self.uids.lock().unwrap();
            let conns = self.conns.lock().unwrap();
            for uid in uids {
                if let Some((c, _)) = map.get(uid).and_then(|id| conns.get(id)) {
                    c.send(frame.clone());
                }
            }
        }
    }

    /// Sends one encoded frame to every connection.
    pub(crate) fn send_all(&self, frame: &Bytes) {
        for (c, _) in self.conns.lock().unwrap().values() {
            c.send(frame.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    /// A loopback pair with small socket buffers: the server side (direct writes), the client.
    async fn small_pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        let client = s.connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        (server, client)
    }

    fn conn(direct: Option<Arc<TcpStream>>) -> Arc<Conn> {
        let direct = direct.map(direct::Direct::Tcp);
        let limits = Arc::new(ConnLimits {
            send_queue_bytes: 16 << 20,
            max_in_flight: 8,
            drops: Arc::default(),
        });
        Arc::new(Conn::new(1, limits, direct))
    }

    /// Frames sent while the task is idle go straight to the socket; once it is full, the rest
    /// of a frame and every later one wait in the queue for the task, in order, and the
    /// pending-byte count covers exactly what the socket has not taken.
    #[tokio::test]
    async fn direct_writes_leave_what_the_socket_refuses_queued_in_order() {
        let (server, mut client) = small_pair().await;
        let socket = Arc::new(server);
        let conn = conn(Some(socket.clone()));
        let mut out = VecDeque::new();
        assert!(
            conn.take(&mut out, true),
            "an idle task with a socket marks itself idle"
        );

        let frames: Vec<Bytes> = (0..64u8).map(|i| Bytes::from(vec![i; 10_000])).collect();
        let mut woken = false;
        for f in &frames {
            conn.send(f.clone());
            // The queue's wake-up fires once the socket refused part of a frame.
            woken |= tokio::time::timeout(std::time::Duration::ZERO, conn.queued())
                .await
                .is_ok();
        }
        assert!(woken, "a full socket wakes the task");
        let pending = conn.pending.load(Ordering::Relaxed);
        assert!(pending > 0 && pending < 640_000, "pending {pending}");

        // The task's part: it runs again, takes the rest and writes it as the socket drains.
        conn.wake();
        conn.take(&mut out, false);
        assert_eq!(out.iter().map(Bytes::len).sum::<usize>(), pending);
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let reading = tokio::spawn(async move {
            let mut got = vec![0; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            assert!(got == expected, "the bytes differ from the frames in order");
        });
        for mut f in out.drain(..) {
            while !f.is_empty() {
                socket.writable().await.unwrap();
                match socket.try_write(&f) {
                    Ok(n) => f.advance(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        reading.await.unwrap();
    }

    /// Inside `deferred`, frames wait for `flush`, which writes each client's in one go.
    #[tokio::test]
    async fn deferred_frames_go_out_at_the_flush() {
        let (server, mut client) = small_pair().await;
        let conn = conn(Some(Arc::new(server)));
        let mut out = VecDeque::new();
        conn.take(&mut out, true);
        direct::deferred(|| {
            conn.send(Bytes::from_static(b"one "));
            conn.send(Bytes::from_static(b"two"));
        });
        assert_eq!(
            conn.pending.load(Ordering::Relaxed),
            7,
            "held until the flush"
        );
        direct::flush();
        assert_eq!(conn.pending.load(Ordering::Relaxed), 0);
        let mut got = [0; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two");
    }

    /// A busy task (not idle) gets its frames queued, never written behind its back.
    #[tokio::test]
    async fn a_busy_task_is_never_written_past() {
        let (server, _client) = small_pair().await;
        let conn = conn(Some(Arc::new(server)));
        conn.send(Bytes::from_static(b"queued"));
        let mut out = VecDeque::new();
        assert!(!conn.take(&mut out, false));
        assert_eq!(out, [Bytes::from_static(b"queued")]);
    }
}
