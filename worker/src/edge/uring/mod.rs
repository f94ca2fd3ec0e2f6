//! The io_uring connector (`"io": "uring"` on a plain-TCP frontend, Linux >= 6.1): client
//! sockets read and written through one ring per connector instead of tokio's epoll reactor.
//! The connection lifecycle (`connection.rs`: handshake, heartbeats, limits, close path) is
//! the same: [`UringWire`] is one more [`Wire`](crate::edge::wire::Wire).
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
//!   never read: tokio's edge-triggered epoll reports every signal. The kernel's TASKRUN flag
//!   (deferred work queued) is a hint that can stay set with nothing left to run, so the
//!   reactor never loops on it alone: a pass that brings nothing ends the turn (a timer looks
//!   again while the flag stays set), or it would starve every other task of the thread.
//! - **Reads.** One multishot `recv` per connection (`RecvMulti`), submitted once and
//!   completing for every read until it ends, into buffers the kernel picks from the
//!   connector's buffer ring (`bufring.rs`). The reactor copies each read into the
//!   connection's inbox and gives the buffer straight back, so a waiting connection holds no
//!   receive buffer and a read costs no submission. A receive the ring could not serve
//!   (`ENOBUFS`: more reads between two reaps than buffers) ends; its connection submits it
//!   again when it next reads.
//! - **Writes.** One `sendmsg` in flight per connection carrying up to 64 queued frames,
//!   optimistic (the frames count as written once submitted; only a short write or an error
//!   wakes the connection), submitted by the connection's task or, while it is idle, by a
//!   direct writer (`direct.rs`: a push to an idle client queues its `sendmsg` where the frame
//!   was made, no task wake-up, and every such write of a turn shares one `io_uring_enter`).
//!   `send.rs`. `sendQueueBytes` bounds what waits behind the send in flight (at most 64
//!   frames more).
//! - **Buffers and sockets outlive their operation.** Each submission carries a strong
//!   reference to its operation (`Arc::into_raw` as the user data), given back only by its
//!   completion, so a connection dropped with operations in flight leaves their buffers
//!   alive until the kernel is done with them; its drop queues a cancellation of each. The
//!   operations also hold the socket: an entry names it by number, and one still queued when
//!   the connection lets go must not find that number given to the next accepted client.
//!   Should the reactor end with operations in flight, their references are never given back
//!   (leaked, not freed).
//!
//! A ring that cannot be set up (`io_uring_setup` refused: EPERM when
//! `/proc/sys/kernel/io_uring_disabled` forbids it, ENOSYS on an old kernel) stops the server
//! at start ([`Ring::new`]'s error names the cause); there is no silent fallback to epoll.
//!
//! Layout: this file (the ring and its reactor), `wire.rs` (the `Wire`: reads, and the
//! tests), `send.rs` (the send side and [`DirectSend`]), `bufring.rs` (the provided
//! buffers).

mod bufring;
mod send;
mod wire;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use io_uring::{IoUring, cqueue, opcode, squeue};
use tokio::io::unix::AsyncFd;

pub(crate) use send::DirectSend;
use send::SendOp;
use wire::RecvOp;
pub(crate) use wire::UringWire;

/// Submission queue entries; a turn with more queued submits them in batches this size.
const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries (the kernel buffers an overflow: `IORING_FEAT_NODROP`).
const CQ_ENTRIES: u32 = 8 * SQ_ENTRIES;
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
    pending: Mutex<Pending>,
}

/// What connections queued since the reactor's last turn, and the reactor's waker (one lock
/// for both: a push takes it once).
#[derive(Default)]
struct Pending {
    entries: Vec<squeue::Entry>,
    reactor: Option<Waker>,
}

impl Ring {
    /// Sets up the ring (on the calling thread, which must be the runtime's when it is
    /// current-thread) and its reactor, to be spawned on the same runtime.
    pub(crate) fn new() -> io::Result<(Arc<Ring>, Reactor)> {
        Ring::with_buffers(bufring::ENTRIES)
    }

    /// [`Ring::new`] with `buffers` receive buffers (a power of two; tests use few).
    fn with_buffers(buffers: u16) -> io::Result<(Arc<Ring>, Reactor)> {
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
        let bufs = bufring::BufRing::register(&ring, buffers)?;
        let shared = Arc::new(Ring {
            pending: Mutex::default(),
        });
        // SAFETY: `efd` is an open eventfd owned by the `AsyncFd` (an `OwnedFd` keeps its
        // number for its life).
        let signal = unsafe { AsyncFd::register_with_interest(efd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        let reactor = Reactor {
            ring,
            bufs,
            signal,
            shared: shared.clone(),
            batch: Vec::new(),
            recheck: None,
            backoff: RECHECK_MIN,
        };
        Ok((shared, reactor))
    }

    /// Queues `entry` from the reactor itself (no wake-up: its turn looks at the queue again).
    fn push_quiet(&self, entry: squeue::Entry) {
        self.pending.lock().unwrap().entries.push(entry);
    }

    /// Queues `entry` for the reactor's next submission.
    fn push(&self, entry: squeue::Entry) {
        let reactor = {
            let mut p = self.pending.lock().unwrap();
            p.entries.push(entry);
            p.reactor.take()
        };
        if let Some(w) = reactor {
            w.wake();
        }
    }
}

/// The reactor's side of the ring: submits what connections queued, reaps completions.
pub(crate) struct Reactor {
    ring: IoUring,
    /// The buffers the multishot receives fill.
    bufs: bufring::BufRing,
    /// The eventfd the ring signals when completions (or their deferred work) wait.
    signal: AsyncFd<OwnedFd>,
    shared: Arc<Ring>,
    /// The queue taken from connections, being pushed to the ring.
    batch: Vec<squeue::Entry>,
    /// A look again at a TASKRUN flag that an enter left set with nothing to show for it.
    recheck: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The delay of the next such look.
    backoff: std::time::Duration,
}

/// The first and the longest delay of a look again at a TASKRUN flag left set.
const RECHECK_MIN: std::time::Duration = std::time::Duration::from_millis(1);
const RECHECK_MAX: std::time::Duration = std::time::Duration::from_secs(1);

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
        if let Some(t) = &mut self.recheck
            && t.as_mut().poll(cx).is_ready()
        {
            self.recheck = None;
        }
        loop {
            // Cleared before the enter: a signal after it makes the eventfd ready again.
            let mut signalled = false;
            while let Poll::Ready(Ok(mut guard)) = self.signal.poll_read_ready(cx) {
                guard.clear_ready();
                signalled = true;
            }
            {
                let mut p = self.shared.pending.lock().unwrap();
                match &mut p.reactor {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                std::mem::swap(&mut self.batch, &mut p.entries);
            }
            let queued = !self.batch.is_empty();
            if queued || signalled || self.work_waits() {
                // No signal for what completes while this turn runs (inline sends, the
                // deferred work the enter runs): it is reaped below, and a signal would only
                // cost another epoll_wait and turn.
                self.ring.completion().disable_eventfd();
                let submitted = self.submit();
                let reaped = self.reap();
                self.ring.completion().enable_eventfd();
                if !submitted {
                    return Poll::Pending;
                }
                if !queued && reaped == 0 {
                    // Nothing came of it: the TASKRUN flag may be stale (work queued while
                    // the enter ran sets it, and the kernel clears it only when it runs work
                    // again, never when it finds none). Looping on it starved every other
                    // task of the thread until new work arrived. One more enter with the
                    // eventfd on runs whatever came while it was off; work queued after it
                    // signals the eventfd.
                    return self.settle(cx);
                }
                self.backoff = RECHECK_MIN;
            }
            // Signals on again, then a last look (the kernel sets the TASKRUN flag or posts
            // the completion before it checks whether to signal; each side fences).
            self.ring.completion().enable_eventfd();
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            if !self.work_waits() && self.shared.pending.lock().unwrap().entries.is_empty() {
                return Poll::Pending;
            }
        }
    }

    /// The end of a turn whose last pass brought nothing. Work queued while the eventfd was
    /// off set the TASKRUN flag; with the flag set, one more enter (the eventfd on) runs it,
    /// and work queued after that signals. Should the flag still be set after it (stale, or
    /// deferred work the kernel left for a later pass, which would not signal), a timer
    /// looks again, from 1 ms doubling to 1 s while nothing comes.
    fn settle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.kernel_flags() {
            return Poll::Pending;
        }
        if self.submit() && self.reap() > 0 {
            // Work after all: the next turn takes the rest.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.kernel_flags() && self.recheck.is_none() {
            let mut t = Box::pin(tokio::time::sleep(self.backoff));
            self.backoff = (self.backoff * 2).min(RECHECK_MAX);
            if t.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            } else {
                self.recheck = Some(t);
            }
        }
        Poll::Pending
    }

    /// The kernel's flags for deferred work queued or completions overflowed.
    fn kernel_flags(&mut self) -> bool {
        let sq = self.ring.submission();
        sq.taskrun() || sq.cq_overflow()
    }

    /// Whether completions, or deferred work that posts them, wait: in the queue, in the
    /// kernel's overflow list (flushed by the next enter) or as deferred work.
    fn work_waits(&mut self) -> bool {
        self.kernel_flags() || !self.ring.completion().is_empty()
    }

    /// Pushes `batch` to the ring and enters the kernel once (more when over the queue size):
    /// submissions in, deferred completion work run (`GETEVENTS`, no wait). False when the
    /// kernel refused the enter (logged).
    fn submit(&mut self) -> bool {
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
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBUSY) | Some(libc::EINTR) | Some(libc::EAGAIN)
                    ) => {}
                Err(e) => {
                    // What the ring holds stays there; the rest goes back to the queue. Both
                    // are submitted at the reactor's next wake-up (not in a busy loop).
                    tracing::error!(cause = %e, "io_uring_enter failed");
                    let rest: Vec<_> = self.batch.drain(from..).collect();
                    self.shared
                        .pending
                        .lock()
                        .unwrap()
                        .entries
                        .splice(0..0, rest);
                    self.batch.clear();
                    return false;
                }
            }
            if from == self.batch.len() && self.ring.submission().is_empty() {
                break;
            }
            self.reap();
        }
        self.batch.clear();
        true
    }

    /// Hands each completion to its operation, and the buffers of received bytes back to the
    /// ring once copied out; the number reaped.
    fn reap(&mut self) -> usize {
        let mut n = 0;
        let mut gave_back = false;
        for cqe in self.ring.completion() {
            n += 1;
            let ud = cqe.user_data();
            let ptr = (ud & !TAG_MASK) as usize;
            match ud & TAG_MASK {
                TAG_RECV => {
                    let (res, flags) = (cqe.result(), cqe.flags());
                    let more = cqueue::more(flags);
                    let bid = cqueue::buffer_select(flags);
                    let data = match bid {
                        Some(bid) => self.bufs.filled(bid, res.max(0) as usize),
                        None => &[],
                    };
                    // SAFETY: the user data of a multishot recv holds the strong reference
                    // taken by `Arc::into_raw` at its submission, alive until its last
                    // completion (the one without `F_MORE`), which gives it back here, once.
                    let pause = unsafe { &*(ptr as *const RecvOp) }.complete(res, data, more);
                    if pause {
                        // Submitted at the next round of this turn (the queue is not empty).
                        self.shared
                            .push_quiet(opcode::AsyncCancel::new(ud).build().user_data(TAG_NONE));
                    }
                    if !more {
                        drop(unsafe { Arc::from_raw(ptr as *const RecvOp) });
                    }
                    if let Some(bid) = bid {
                        self.bufs.give_back(bid);
                        gave_back = true;
                    }
                }
                // SAFETY: the user data of a send holds the strong reference taken by
                // `Arc::into_raw` at its submission, given back here once, at its completion.
                TAG_SEND => unsafe { Arc::from_raw(ptr as *const SendOp) }.complete(cqe.result()),
                _ => {}
            }
        }
        if gave_back {
            self.bufs.publish();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes `io_uring_setup` fail with EPERM on this thread (a seccomp filter: what a
    /// container's profile or `io_uring_disabled` do to the whole process).
    fn forbid_io_uring_on_this_thread() {
        let nr = libc::SYS_io_uring_setup as u32;
        let mut filter = [
            // A = seccomp_data.nr
            libc::sock_filter {
                code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: nr,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            },
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: plain prctl calls; `prog` points at `filter`, alive for the call (the
        // kernel copies the program). Both act on this thread only (no TSYNC).
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog
                ),
                0
            );
        }
    }

    /// No io_uring: a clear error naming the cause, no ring, no fallback.
    #[test]
    fn a_ring_that_cannot_be_set_up_is_an_error_naming_the_cause() {
        std::thread::spawn(|| {
            forbid_io_uring_on_this_thread();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let err = rt.block_on(async { Ring::new().err().expect("no ring") });
            let msg = err.to_string();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{msg}");
            for needle in [
                "io_uring_setup failed",
                "/proc/sys/kernel/io_uring_disabled is",
                "Linux >= 6.1",
            ] {
                assert!(msg.contains(needle), "{needle:?} not in {msg}");
            }
        })
        .join()
        .unwrap();
    }
}
