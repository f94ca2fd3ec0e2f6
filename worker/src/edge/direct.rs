//! Direct writes: frames for an idle plain-TCP client written to its socket by whoever
//! produced them (a peer link's reader, a game task pushing), instead of queued for the
//! connection's task and a wake-up of it. A push to a room, a backend's reply: each cost a
//! task wake, a poll and a read attempt per client before; now one `writev` per client.
//!
//! A connection is *idle* while its task waits with nothing to write (see [`Conn::take`]);
//! only then may another context write, under the connection's queue lock, so frames keep
//! their order: what the task wrote is on the socket before it goes idle, and once it wakes
//! it takes the lock and is the only writer again. What a direct write cannot send at once
//! (a full socket buffer) stays queued and wakes the task, which waits for the socket as
//! before. WebSocket and TLS clients (framing, records) and frontends with an `interval` keep
//! the queued path.
//!
//! A peer link's reader defers its writes ([`deferred`]) until it has handled every message
//! one read brought ([`flush`]): several replies for one client in one read still go out in
//! one `writev`.
//!
//! [`SharedTcp`] is the plain TCP stream of such a connection, shared between its task (reads,
//! queued writes) and direct writers. On io_uring (`uring.rs`) a direct write queues the
//! connection's `sendmsg` on the ring instead ([`Direct::Uring`]): no system call until the
//! reactor's next submission, which carries every client's writes of that turn together.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::edge::clients::Conn;
use crate::edge::wire::ClientStream;

/// Where direct writes to an idle client go.
pub(crate) enum Direct {
    /// Its plain TCP socket (one `writev`).
    Tcp(Arc<TcpStream>),
    /// Its `sendmsg` on the io_uring connector's ring.
    #[cfg(target_os = "linux")]
    Uring(Arc<crate::edge::uring::DirectSend>),
}

/// A plain TCP client socket its connection task and direct writers share.
pub(crate) struct SharedTcp(Arc<TcpStream>);

impl SharedTcp {
    pub(crate) fn new(stream: TcpStream) -> SharedTcp {
        SharedTcp(Arc::new(stream))
    }
}

impl ClientStream for SharedTcp {
    fn direct(&self) -> Option<Direct> {
        Some(Direct::Tcp(self.0.clone()))
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // SAFETY: `try_read` only writes into the slice (the kernel fills it); the bytes
            // it reports read are initialised before `assume_init` says so. This is what
            // tokio's own `TcpStream::poll_read` does.
            let unfilled = unsafe { &mut *(buf.unfilled_mut() as *mut [_] as *mut [u8]) };
            match self.0.try_read(unfilled) {
                Ok(n) => {
                    // SAFETY: the kernel initialised the first `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

thread_local! {
    /// Whether direct writes on this thread wait for [`flush`] (inside [`deferred`]).
    static DEFERRING: Cell<bool> = const { Cell::new(false) };
    /// Connections with frames waiting for [`flush`].
    static DEFERRED: RefCell<Vec<Arc<Conn>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` (synchronous delivery code) with direct writes held for [`flush`].
pub(crate) fn deferred<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            DEFERRING.with(|d| d.set(self.0));
        }
    }
    let _reset = Reset(DEFERRING.with(|d| d.replace(true)));
    f()
}

/// Whether direct writes are being deferred on this thread.
pub(crate) fn deferring() -> bool {
    DEFERRING.with(Cell::get)
}

/// Holds `conn`'s queued frames for the next [`flush`] on this thread.
pub(crate) fn defer(conn: &Arc<Conn>) {
    DEFERRED.with(|d| d.borrow_mut().push(conn.clone()));
}

/// Writes what [`deferred`] code queued for idle clients (one `writev` each).
pub(crate) fn flush() {
    if DEFERRED.with(|d| d.borrow().is_empty()) {
        return; // the common case on a backend: nothing was pushed to clients here
    }
    let conns = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    for conn in &conns {
        conn.flush_direct();
    }
    // Keep the vector's allocation for the next batch.
    DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_empty() {
            let mut conns = conns;
            conns.clear();
            *d = conns;
        }
    });
}
