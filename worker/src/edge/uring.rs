//! The io_uring connector (`"io": "uring"` on a plain-TCP frontend, Linux >= 6.1): client
//! sockets read and written through one ring per connector instead of tokio's epoll reactor.
//! The connection lifecycle (`connection.rs`: handshake, heartbeats, limits, close path) is
//! the same: [`UringWire`] is one more [`Wire`].
//!
//! - **One ring, one submitter.** Connections queue their submissions ([`Ring::push`], a
//!   lock and a wake-up, no syscall); the [`reactor`] task hands everything queued to the
//!   kernel with one `io_uring_enter` per turn, reaps the completions and wakes the
//!   connections waiting for them. Under the default current-thread runtime the ring is
//!   `SINGLE_ISSUER | DEFER_TASKRUN` (completion work runs only when the reactor enters the
//!   kernel, in one batch); under `"threads": N` (tasks move between threads) it is a plain
//!   ring with `COOP_TASKRUN`.
//! - **Waking the reactor.** An eventfd registered with the ring, itself registered with
//!   tokio ([`AsyncFd`]), signals that completions (or deferred completion work) wait. It is
//!   never read: tokio's edge-triggered epoll reports every signal.
//! - **Reads.** One single-shot `recv` in flight per connection, into a buffer owned by the
//!   operation ([`RecvOp`], adaptive 512 B .. 64 KiB), copied into the connection's read
//!   buffer at completion and re-armed at the next read.
//! - **Writes.** One `sendmsg` (`MSG_NOSIGNAL`) in flight per connection carrying up to 64
//!   queued frames ([`SendOp`] holds their `Bytes` and the iovecs). Optimistic: the frames
//!   count as written once submitted (the connection goes on without waiting), a completion
//!   that wrote them all wakes nobody, and only a short write (its rest is sent first) or an
//!   error wakes the connection. So frames keep their order, and `sendQueueBytes` bounds what
//!   waits behind the send in flight (which carries at most 64 frames more).
//! - **Buffers outlive their operation.** Each submission carries a strong reference to its
//!   operation (`Arc::into_raw` as the user data), given back only by its completion, so a
//!   connection dropped with operations in flight leaves their buffers alive until the
//!   kernel is done with them; its drop queues a cancellation of each. Should the reactor end
//!   with operations in flight, their references are never given back (leaked, not freed).
//!
//! A ring that cannot be set up (`io_uring_setup` refused: EPERM when
//! `/proc/sys/kernel/io_uring_disabled` forbids it, ENOSYS on an old kernel) stops the server
//! at start ([`Ring::new`]'s error names the cause); there is no silent fallback to epoll.
//! Direct writes to idle clients (`direct.rs`) are not done on this path: a frame for an idle
//! client wakes its task, which queues the `sendmsg`.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use io_uring::{IoUring, opcode, squeue, types};
use tokio::io::unix::AsyncFd;

use crate::edge::wire::Wire;

/// Submission queue entries; a turn with more queued submits them in batches this size.
const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries (the kernel buffers an overflow: `IORING_FEAT_NODROP`).
const CQ_ENTRIES: u32 = 8 * SQ_ENTRIES;
/// Smallest and largest receive buffer of a connection.
const RECV_MIN: usize = 512;
const RECV_MAX: usize = 64 * 1024;
/// Frames one `sendmsg` carries at most.
const SEND_SLICES: usize = 64;
/// The tag in the low bits of a submission's user data (the rest: the operation's address).
const TAG_MASK: u64 = 0b11;
const TAG_RECV: u64 = 0;
const TAG_SEND: u64 = 1;
/// A submission whose completion carries nothing to hand back (a cancellation).
const TAG_NONE: u64 = 2;

/// A connector's ring as connections see it: where they queue submissions.
pub(crate) struct Ring {
    queued: Mutex<Vec<squeue::Entry>>,
    /// The reactor, when it waits.
    reactor: Mutex<Option<Waker>>,
}

impl Ring {
    /// Sets up the ring (on the calling thread, which must be the runtime's when it is
    /// current-thread) and its reactor, to be spawned on the same runtime.
    pub(crate) fn new() -> io::Result<(Arc<Ring>, Reactor)> {
        let single_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        let mut b = IoUring::builder();
        b.setup_cqsize(CQ_ENTRIES).setup_submit_all();
        if single_thread {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag();
        } else {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        let ring = b.build(SQ_ENTRIES).map_err(|e| {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unreadable".into());
            io::Error::new(
                e.kind(),
                format!(
                    "io_uring_setup failed: {e} (/proc/sys/kernel/io_uring_disabled is {disabled}; io_uring needs Linux >= 6.1 with it 0, or 1 and this user in kernel.io_uring_group)"
                ),
            )
        })?;
        // SAFETY: `eventfd` has no memory arguments; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor nobody else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        let shared = Arc::new(Ring {
            queued: Mutex::new(Vec::new()),
            reactor: Mutex::new(None),
        });
        // SAFETY: `efd` is an open eventfd owned by the `AsyncFd` (an `OwnedFd` keeps its
        // number for its life).
        let signal = unsafe { AsyncFd::register_with_interest(efd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        let reactor = Reactor {
            ring,
            signal,
            shared: shared.clone(),
            batch: Vec::new(),
        };
        Ok((shared, reactor))
    }

    /// Queues `entry` for the reactor's next submission.
    fn push(&self, entry: squeue::Entry) {
        self.queued.lock().unwrap().push(entry);
        if let Some(w) = self.reactor.lock().unwrap().take() {
            w.wake();
        }
    }
}

/// The reactor's side of the ring: submits what connections queued, reaps completions.
pub(crate) struct Reactor {
    ring: IoUring,
    /// The eventfd the ring signals when completions (or their deferred work) wait.
    signal: AsyncFd<OwnedFd>,
    shared: Arc<Ring>,
    /// The queue taken from connections, being pushed to the ring.
    batch: Vec<squeue::Entry>,
}

/// Runs the reactor for as long as the runtime runs (operations of closing connections still
/// complete during shutdown).
pub(crate) async fn reactor(mut r: Reactor) {
    std::future::poll_fn(|cx| r.turn(cx)).await
}

impl Reactor {
    /// One turn: notes the signal, submits everything queued in one `io_uring_enter` (which
    /// also runs deferred completion work), reaps and dispatches the completions. Pending
    /// with the reactor's waker left for connections and the eventfd.
    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            // Cleared before the enter: a signal after it makes the eventfd ready again.
            let mut signalled = false;
            while let Poll::Ready(Ok(mut guard)) = self.signal.poll_read_ready(cx) {
                guard.clear_ready();
                signalled = true;
            }
            *self.shared.reactor.lock().unwrap() = Some(cx.waker().clone());
            std::mem::swap(&mut self.batch, &mut *self.shared.queued.lock().unwrap());
            if !self.batch.is_empty() || signalled || self.work_waits() {
                // No signal for what completes while this turn runs (inline sends, the
                // deferred work the enter runs): it is reaped below, and a signal would only
                // cost another epoll_wait and turn.
                self.ring.completion().disable_eventfd();
                self.submit();
                self.reap();
            }
            // Signals on again, then a last look (the kernel sets the TASKRUN flag or posts
            // the completion before it checks whether to signal; each side fences).
            self.ring.completion().enable_eventfd();
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            if !self.work_waits() && self.shared.queued.lock().unwrap().is_empty() {
                return Poll::Pending;
            }
        }
    }

    /// Whether completions, or deferred work that posts them, wait.
    fn work_waits(&mut self) -> bool {
        self.ring.submission().taskrun() || !self.ring.completion().is_empty()
    }

    /// Pushes `batch` to the ring and enters the kernel once (more when over the queue size):
    /// submissions in, deferred completion work run (`GETEVENTS`, no wait).
    fn submit(&mut self) {
        let mut from = 0;
        loop {
            let mut sq = self.ring.submission();
            while from < self.batch.len() {
                // SAFETY: every entry's buffers belong to the operation its user data holds a
                // strong reference to (see `RecvOp`, `SendOp`), alive until its completion.
                if unsafe { sq.push(&self.batch[from]) }.is_err() {
                    break;
                }
                from += 1;
            }
            let len = sq.len() as u32;
            drop(sq);
            // SAFETY: plain flags, no argument.
            let r = unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    len,
                    0,
                    io_uring::EnterFlags::GETEVENTS.bits(),
                    None,
                )
            };
            match r {
                Ok(_) => {}
                // EBUSY: completions must be reaped first; EINTR: a signal. Submitted again
                // on the next round (what the kernel took is gone from the queue).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EINTR)) => {}
                Err(e) => {
                    // Left queued for the next turn.
                    tracing::error!(cause = %e, "io_uring_enter failed");
                    break;
                }
            }
            if from == self.batch.len() && self.ring.submission().is_empty() {
                break;
            }
            self.reap();
        }
        self.batch.clear();
    }

    /// Hands each completion to its operation; the number reaped.
    fn reap(&mut self) -> usize {
        let mut n = 0;
        for cqe in self.ring.completion() {
            n += 1;
            let ud = cqe.user_data();
            let ptr = (ud & !TAG_MASK) as usize;
            match ud & TAG_MASK {
                // SAFETY: the user data of a recv/send holds the strong reference taken by
                // `Arc::into_raw` at its submission, given back here once, at its completion.
                TAG_RECV => unsafe { Arc::from_raw(ptr as *const RecvOp) }
                    .slot
                    .complete(cqe.result()),
                TAG_SEND => unsafe { Arc::from_raw(ptr as *const SendOp) }.complete(cqe.result()),
                _ => {}
            }
        }
        n
    }
}

/// The state of an operation shared by its connection and the reactor.
#[derive(Default)]
struct Slot(Mutex<SlotState>);

#[derive(Default)]
struct SlotState {
    /// The completion's result, until the connection takes it.
    result: Option<i32>,
    waker: Option<Waker>,
}

impl Slot {
    fn complete(&self, res: i32) {
        let waker = {
            let mut s = self.0.lock().unwrap();
            s.result = Some(res);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The result once the operation completed; else keeps `cx`'s waker for it.
    fn poll(&self, cx: &mut Context<'_>) -> Poll<i32> {
        let mut s = self.0.lock().unwrap();
        if let Some(res) = s.result.take() {
            s.waker = None;
            return Poll::Ready(res);
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// A connection's `recv` and the buffer the kernel fills.
struct RecvOp {
    slot: Slot,
    buf: UnsafeCell<Vec<u8>>,
}

// SAFETY: `buf` is touched by the connection only while no recv is in flight (its `armed`
// flag, set before the submission, cleared after the completion was taken under the slot's
// lock), and by the kernel only while one is.
unsafe impl Sync for RecvOp {}

/// A connection's `sendmsg`: the frames it writes (taken from the connection's queue, kept
/// alive by their `Bytes`), their iovecs and the message header pointing at them.
///
/// Optimistic: the frames count as written once submitted, and a completion that wrote them
/// all wakes nobody (the connection takes it at its next poll); only a short write or an
/// error wakes the connection ([`SendOp::attention`]), or a connection waiting to send more.
struct SendOp {
    state: Mutex<SendState>,
    /// A completion the connection must act on (short write, error) arrived.
    attention: std::sync::atomic::AtomicBool,
    bufs: UnsafeCell<SendBufs>,
}

#[derive(Default)]
struct SendState {
    result: Option<i32>,
    /// Bytes submitted.
    expect: usize,
    waker: Option<Waker>,
    /// The connection waits for the completion whatever it is (more to send, closing).
    wait: bool,
}

struct SendBufs {
    frames: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

// SAFETY: `bufs` is touched by the connection only while no send is in flight, by the kernel
// only while one is (as `RecvOp`). The raw pointers in `iov` and `msg` point into `frames`
// and `iov`, which are not moved or resized while in flight.
unsafe impl Sync for SendOp {}
unsafe impl Send for SendOp {}

impl SendOp {
    fn complete(&self, res: i32) {
        use std::sync::atomic::Ordering;
        let waker = {
            let mut s = self.state.lock().unwrap();
            s.result = Some(res);
            let unexpected = usize::try_from(res).ok() != Some(s.expect);
            if unexpected {
                self.attention.store(true, Ordering::Release);
            }
            if unexpected || s.wait {
                s.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The result once the send completed; else keeps `cx`'s waker, woken at the completion
    /// whatever it is with `wait`, else only for a short write or an error.
    fn poll(&self, cx: &mut Context<'_>, wait: bool) -> Poll<i32> {
        let mut s = self.state.lock().unwrap();
        if let Some(res) = s.result.take() {
            s.waker = None;
            s.wait = false;
            self.attention
                .store(false, std::sync::atomic::Ordering::Relaxed);
            return Poll::Ready(res);
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        s.wait = wait;
        Poll::Pending
    }
}

/// A plain TCP client on the ring.
pub(crate) struct UringWire {
    fd: OwnedFd,
    ring: Arc<Ring>,
    recv: Arc<RecvOp>,
    send: Arc<SendOp>,
    /// A recv (send) is in flight: submitted, its completion not taken yet.
    recv_armed: bool,
    send_armed: bool,
    /// The next recv's buffer size.
    recv_size: usize,
}

impl UringWire {
    /// Takes `stream` off tokio's reactor and onto `ring`.
    pub(crate) fn new(stream: tokio::net::TcpStream, ring: Arc<Ring>) -> io::Result<UringWire> {
        let fd = OwnedFd::from(stream.into_std()?);
        Ok(UringWire {
            fd,
            ring,
            recv: Arc::new(RecvOp {
                slot: Slot::default(),
                buf: UnsafeCell::new(Vec::new()),
            }),
            send: Arc::new(SendOp {
                state: Mutex::default(),
                attention: Default::default(),
                bufs: UnsafeCell::new(SendBufs {
                    frames: Vec::new(),
                    iov: Vec::new(),
                    // SAFETY: all-zero is a valid `msghdr` (no name, no iovecs, no control).
                    msg: unsafe { std::mem::zeroed() },
                }),
            }),
            recv_armed: false,
            send_armed: false,
            recv_size: RECV_MIN,
        })
    }

    fn arm_recv(&mut self) {
        // SAFETY: no recv is in flight (`recv_armed` is false), so only this task uses `buf`.
        let buf = unsafe { &mut *self.recv.buf.get() };
        if buf.len() != self.recv_size {
            *buf = vec![0; self.recv_size];
        }
        let entry = opcode::Recv::new(
            types::Fd(self.fd.as_raw_fd()),
            buf.as_mut_ptr(),
            buf.len() as u32,
        )
        .build()
        .user_data(Arc::into_raw(self.recv.clone()) as u64 | TAG_RECV);
        // SAFETY (of the buffer's life): the entry's user data is a strong reference to the
        // `RecvOp` owning `buf`, released only by the reactor at the completion; `buf` is not
        // resized until then (`recv_armed`).
        self.recv_armed = true;
        self.ring.push(entry);
    }

    /// Submits the frames in the send's buffers (taken from the queue, or what a short write
    /// left); the completion may wake `cx` (see [`SendOp::poll`]).
    fn arm_send(&mut self, cx: &mut Context<'_>) {
        // SAFETY: no send is in flight (`send_armed` is false), so only this task uses `bufs`.
        let b = unsafe { &mut *self.send.bufs.get() };
        b.iov.clear();
        b.iov.extend(b.frames.iter().map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        }));
        b.msg.msg_iov = b.iov.as_mut_ptr();
        b.msg.msg_iovlen = b.iov.len() as _;
        {
            let mut s = self.send.state.lock().unwrap();
            *s = SendState {
                result: None,
                expect: b.frames.iter().map(Bytes::len).sum(),
                waker: Some(cx.waker().clone()),
                wait: false,
            };
        }
        let entry = opcode::SendMsg::new(types::Fd(self.fd.as_raw_fd()), &b.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(Arc::into_raw(self.send.clone()) as u64 | TAG_SEND);
        // SAFETY (of the buffers' life): the user data is a strong reference to the `SendOp`
        // owning the header, the iovecs and the frames' `Bytes`, released only at the
        // completion; none of them is touched until then (`send_armed`).
        self.send_armed = true;
        self.ring.push(entry);
    }

    /// Takes the in-flight send's completion when there is one (waiting for it with
    /// `wait`): `Ready(Ok(()))` once no send is in flight, a short write's rest submitted
    /// again (then `Pending` until it completes, when waiting).
    fn poll_send(&mut self, cx: &mut Context<'_>, wait: bool) -> Poll<io::Result<()>> {
        while self.send_armed {
            let res = ready!(self.send.poll(cx, wait));
            self.send_armed = false;
            // SAFETY: the send completed, so the kernel is done with its buffers.
            let b = unsafe { &mut *self.send.bufs.get() };
            if res <= 0 {
                b.frames.clear();
                return Poll::Ready(Err(if res == 0 {
                    io::ErrorKind::WriteZero.into()
                } else {
                    io::Error::from_raw_os_error(-res)
                }));
            }
            let mut left = res as usize;
            b.frames.retain_mut(|f| {
                let n = left.min(f.len());
                f.advance(n);
                left -= n;
                !f.is_empty()
            });
            if b.frames.is_empty() {
                break;
            }
            self.arm_send(cx); // a short write: the rest goes first
            if !wait {
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Queues a cancellation of the operation whose user data is `ud`.
    fn cancel(&self, ud: u64) {
        let entry = opcode::AsyncCancel::new(ud).build().user_data(TAG_NONE);
        self.ring.push(entry);
    }
}

impl Wire for UringWire {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        rbuf: &mut BytesMut,
    ) -> Poll<io::Result<Option<usize>>> {
        if !self.recv_armed {
            self.arm_recv();
        }
        let res = ready!(self.recv.slot.poll(cx));
        self.recv_armed = false;
        if res < 0 {
            return Poll::Ready(Err(io::Error::from_raw_os_error(-res)));
        }
        let n = res as usize;
        if n == 0 {
            return Poll::Ready(Ok(None));
        }
        // SAFETY: the recv completed (its result taken), so the kernel is done with `buf`.
        let buf = unsafe { &*self.recv.buf.get() };
        rbuf.extend_from_slice(&buf[..n]);
        if n == buf.len() {
            self.recv_size = (self.recv_size * 2).min(RECV_MAX);
        } else if n < self.recv_size / 8 {
            self.recv_size = (self.recv_size / 2).max(RECV_MIN);
        }
        Poll::Ready(Ok(Some(n)))
    }

    fn write_pending(&self, out: &VecDeque<Bytes>) -> bool {
        !out.is_empty()
            || self
                .send
                .attention
                .load(std::sync::atomic::Ordering::Acquire)
    }

    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<usize>> {
        // One send in flight at a time (two could complete out of order).
        let more = !out.is_empty();
        ready!(self.poll_send(cx, more))?;
        if self.send_armed || !more {
            // A short write's rest went out again; or only a completion was taken.
            return Poll::Ready(Ok(0));
        }
        // SAFETY: no send is in flight, so only this task uses `bufs`.
        let b = unsafe { &mut *self.send.bufs.get() };
        let n = out.len().min(SEND_SLICES);
        b.frames.extend(out.drain(..n));
        let taken = b.frames.iter().map(Bytes::len).sum();
        self.arm_send(cx);
        Poll::Ready(Ok(taken))
    }

    async fn shutdown(&mut self) {
        // What is in flight goes first (a shutdown would fail it).
        if std::future::poll_fn(|cx| self.poll_send(cx, true))
            .await
            .is_ok()
        {
            let _ = socket2::SockRef::from(&self.fd).shutdown(std::net::Shutdown::Write);
        }
    }
}

impl Drop for UringWire {
    /// Cancels what is in flight (its buffers live on in the operations until the kernel
    /// completes them); the socket closes once the last operation holding it is done.
    fn drop(&mut self) {
        if self.recv_armed {
            self.cancel(Arc::as_ptr(&self.recv) as u64 | TAG_RECV);
        }
        if self.send_armed {
            self.cancel(Arc::as_ptr(&self.send) as u64 | TAG_SEND);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::wire::write_all;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn read_some(w: &mut UringWire, buf: &mut BytesMut) -> Option<usize> {
        std::future::poll_fn(|cx| w.poll_read_into(cx, buf))
            .await
            .unwrap()
    }

    /// Writes `out` and waits until the kernel took all of it (`write_all` returns once the
    /// last send is submitted; the connection's loop takes completions as they come).
    async fn flush(w: &mut UringWire, out: &mut VecDeque<Bytes>) {
        write_all(w, out).await.unwrap();
        std::future::poll_fn(|cx| w.poll_send(cx, true))
            .await
            .unwrap();
    }

    async fn echo_round_trips() {
        let (ring, r) = Ring::new().unwrap();
        tokio::spawn(reactor(r));
        let (mut client, server) = crate::net::tcp_pair().await;
        let mut w = UringWire::new(server, ring.clone()).unwrap();
        let mut buf = BytesMut::new();
        for round in 0..100u32 {
            let msg = format!("message {round}");
            client.write_all(msg.as_bytes()).await.unwrap();
            buf.clear();
            while buf.len() < msg.len() {
                read_some(&mut w, &mut buf).await.unwrap();
            }
            assert_eq!(&buf[..], msg.as_bytes());
            let mut out: VecDeque<Bytes> =
                [Bytes::from(msg.clone()), Bytes::from_static(b"!")].into();
            flush(&mut w, &mut out).await;
            let mut got = vec![0; msg.len() + 1];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, format!("{msg}!").as_bytes());
        }
        // A large write goes out in several sends, in order.
        let big: Vec<u8> = (0..4_000_000u32).map(|i| i as u8).collect();
        let mut out: VecDeque<Bytes> = big.chunks(100_000).map(Bytes::copy_from_slice).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; 4_000_000];
            client.read_exact(&mut got).await.unwrap();
            (client, got)
        });
        flush(&mut w, &mut out).await;
        let (client, got) = reader.await.unwrap();
        assert!(got == big, "the bytes differ");
        // The client's close ends the stream.
        drop(client);
        assert_eq!(read_some(&mut w, &mut buf).await, None);
    }

    #[tokio::test]
    async fn a_wire_on_the_ring_reads_and_writes_in_order() {
        tokio::time::timeout(std::time::Duration::from_secs(20), echo_round_trips())
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wire_on_a_multi_threaded_runtime_too() {
        tokio::time::timeout(std::time::Duration::from_secs(20), echo_round_trips())
            .await
            .unwrap();
    }

    /// A wire dropped with its recv in flight cancels it: the socket closes (the peer sees
    /// the end of the stream) and the operation's buffer is released.
    #[tokio::test]
    async fn a_dropped_wire_cancels_its_recv_and_closes() {
        let (ring, r) = Ring::new().unwrap();
        tokio::spawn(reactor(r));
        let (mut client, server) = crate::net::tcp_pair().await;
        let mut w = UringWire::new(server, ring).unwrap();
        let mut buf = BytesMut::new();
        let pending = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            read_some(&mut w, &mut buf),
        )
        .await;
        assert!(pending.is_err(), "nothing to read yet");
        let op = Arc::downgrade(&w.recv);
        drop(w);
        let mut rest = Vec::new();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut rest),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(n, 0);
        for _ in 0..100 {
            if op.strong_count() == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the recv's buffer is still held");
    }
}
