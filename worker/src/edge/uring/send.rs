//! The send side of a client on the ring: one `sendmsg` (`MSG_NOSIGNAL`) in flight per
//! connection ([`SendOp`]), carrying up to 64 frames, submitted by the connection's task or,
//! while the task is idle, by a direct writer ([`DirectSend`], `direct.rs`) under the
//! connection's queue lock. Either way the frames count as written once submitted
//! (optimistic); a completion that wrote them all wakes nobody, and only a short write (whose
//! rest the task sends first) or an error wakes the task. One at a time: two sends in flight
//! on one socket could complete out of order.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use io_uring::{opcode, types};

use super::{Ring, SEND_SLICES, TAG_NONE, TAG_SEND};

/// A connection's send operation.
pub(super) struct SendOp {
    /// The socket, held for as long as the operation: a submission still queued when the
    /// connection lets go keeps it open, so its number cannot go to another client first.
    fd: Arc<OwnedFd>,
    inner: Mutex<SendInner>,
    /// A completion the task must act on (short write, error) is waiting.
    attention: AtomicBool,
}

struct SendInner {
    /// Submitted, its completion not taken yet.
    armed: bool,
    result: Option<i32>,
    /// Bytes submitted.
    expect: usize,
    /// The connection's task.
    waker: Option<Waker>,
    /// The task waits for the completion whatever it is (more to send, closing).
    wait: bool,
    /// What the kernel reads while armed: the frames (kept alive by their `Bytes`), their
    /// iovecs and the header pointing at those.
    frames: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

// SAFETY: the raw pointers in `iov` and `msg` point into this same value's `frames` and `iov`
// heap buffers; only the kernel dereferences them, and only while `armed`.
unsafe impl Send for SendInner {}

impl SendOp {
    pub(super) fn new(fd: Arc<OwnedFd>) -> Arc<SendOp> {
        Arc::new(SendOp {
            fd,
            inner: Mutex::new(SendInner {
                armed: false,
                result: None,
                expect: 0,
                waker: None,
                wait: false,
                frames: Vec::new(),
                iov: Vec::new(),
                // SAFETY: all-zero is a valid `msghdr` (no name, no iovecs, no control).
                msg: unsafe { std::mem::zeroed() },
            }),
            attention: AtomicBool::new(false),
        })
    }

    /// The kernel's answer (the reactor): wakes the task for a short write or an error, or
    /// when it waits for this completion.
    pub(super) fn complete(&self, res: i32) {
        let waker = {
            let mut s = self.inner.lock().unwrap();
            s.result = Some(res);
            let unexpected = usize::try_from(res).ok() != Some(s.expect);
            if unexpected {
                self.attention.store(true, Ordering::Release);
            }
            (unexpected || s.wait).then(|| s.waker.clone()).flatten()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether a completion the task must act on waits.
    pub(super) fn attention(&self) -> bool {
        self.attention.load(Ordering::Acquire)
    }

    /// Keeps the task's waker (for completions of sends a direct writer submitted).
    pub(super) fn register(&self, cx: &Context<'_>) {
        let mut s = self.inner.lock().unwrap();
        keep_waker(&mut s.waker, cx);
    }

    /// Takes the completion of the send in flight, if any: `Ready(Ok(()))` once none is in
    /// flight, or (without `wait`) once a short write's rest was submitted again; with
    /// `wait`, `Pending` until the send in flight completed.
    pub(super) fn poll_settle(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        wait: bool,
        ring: &Ring,
    ) -> Poll<io::Result<()>> {
        let mut s = self.inner.lock().unwrap();
        settle(self, &mut s, cx, wait, ring)
    }

    /// Submits up to 64 frames from the front of `out` once no send is in flight (the task,
    /// not idle): `Ready(Ok(n))`, `n` the bytes taken (0 when only a completion was taken).
    pub(super) fn poll_write(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
        ring: &Ring,
    ) -> Poll<io::Result<usize>> {
        let mut s = self.inner.lock().unwrap();
        let more = !out.is_empty();
        match settle(self, &mut s, cx, more, ring) {
            Poll::Ready(Ok(())) => {}
            other => return other.map_ok(|()| 0),
        }
        if s.armed || !more {
            return Poll::Ready(Ok(0));
        }
        keep_waker(&mut s.waker, cx);
        Poll::Ready(Ok(take_and_arm(self, &mut s, out, ring)))
    }

    /// Queues the cancellation of the send in flight, if any (its buffers stay with the
    /// operation until the kernel completes it).
    pub(super) fn cancel(self: &Arc<Self>, ring: &Ring) {
        if self.inner.lock().unwrap().armed {
            let ud = Arc::as_ptr(self) as u64 | TAG_SEND;
            ring.push(opcode::AsyncCancel::new(ud).build().user_data(TAG_NONE));
        }
    }
}

/// Keeps `cx`'s waker in `slot` (unless the one there wakes the same task).
pub(super) fn keep_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        w => *w = Some(cx.waker().clone()),
    }
}

/// [`SendOp::poll_settle`] with the lock held.
fn settle(
    op: &Arc<SendOp>,
    s: &mut SendInner,
    cx: &mut Context<'_>,
    wait: bool,
    ring: &Ring,
) -> Poll<io::Result<()>> {
    loop {
        if !s.armed {
            return Poll::Ready(Ok(()));
        }
        let Some(res) = s.result.take() else {
            keep_waker(&mut s.waker, cx);
            s.wait = wait;
            return Poll::Pending;
        };
        s.armed = false;
        s.wait = false;
        op.attention.store(false, Ordering::Relaxed);
        if res <= 0 {
            s.frames.clear();
            return Poll::Ready(Err(if res == 0 {
                io::ErrorKind::WriteZero.into()
            } else {
                io::Error::from_raw_os_error(-res)
            }));
        }
        let mut left = res as usize;
        s.frames.retain_mut(|f| {
            let n = left.min(f.len());
            f.advance(n);
            left -= n;
            !f.is_empty()
        });
        if s.frames.is_empty() {
            return Poll::Ready(Ok(()));
        }
        arm(op, s, ring); // a short write: its rest goes before anything else
        if !wait {
            return Poll::Ready(Ok(()));
        }
    }
}

/// Moves up to 64 frames from `frames` into the send and submits it; the bytes taken.
fn take_and_arm(
    op: &Arc<SendOp>,
    s: &mut SendInner,
    frames: &mut VecDeque<Bytes>,
    ring: &Ring,
) -> usize {
    let n = frames.len().min(SEND_SLICES);
    s.frames.extend(frames.drain(..n));
    let taken = s.frames.iter().map(Bytes::len).sum();
    arm(op, s, ring);
    taken
}

/// Submits the frames in `s` (not armed).
fn arm(op: &Arc<SendOp>, s: &mut SendInner, ring: &Ring) {
    let SendInner {
        frames, iov, msg, ..
    } = s;
    iov.clear();
    iov.extend(frames.iter().map(|f| libc::iovec {
        iov_base: f.as_ptr() as *mut libc::c_void,
        iov_len: f.len(),
    }));
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    s.expect = s.frames.iter().map(Bytes::len).sum();
    s.result = None;
    s.armed = true;
    // SAFETY (of the buffers' life): the user data is a strong reference to the `SendOp`
    // owning the header, the iovecs and the frames' `Bytes` (inside its mutex, at a stable
    // heap address), released only by the reactor at the completion; none of them is
    // changed until then (`armed`); it holds the socket open as long (`SendOp::fd`).
    let entry = opcode::SendMsg::new(types::Fd(op.fd.as_raw_fd()), &s.msg)
        .flags(libc::MSG_NOSIGNAL as u32)
        .build()
        .user_data(Arc::into_raw(op.clone()) as u64 | TAG_SEND);
    ring.push(entry);
}

/// What a direct writer needs of an idle client on the ring: its send (which holds its
/// socket) and the ring.
pub(crate) struct DirectSend {
    pub(super) ring: Arc<Ring>,
    pub(super) send: Arc<SendOp>,
}

impl DirectSend {
    /// Queues the `sendmsg` of up to 64 of `frames` (taken from the front) when no send is
    /// in flight, or the one in flight wrote everything; `written` counts what was taken.
    /// True when `frames` is empty after it (else the task must be woken for the rest).
    pub(crate) fn write(&self, frames: &mut VecDeque<Bytes>, written: impl FnOnce(usize)) -> bool {
        let mut s = self.send.inner.lock().unwrap();
        if s.armed {
            let done = s
                .result
                .is_some_and(|r| usize::try_from(r).ok() == Some(s.expect));
            if !done {
                return false; // in flight, or a short write or error the task must handle
            }
            s.armed = false;
            s.result = None;
            s.frames.clear();
        }
        written(take_and_arm(&self.send, &mut s, frames, &self.ring));
        frames.is_empty()
    }
}
