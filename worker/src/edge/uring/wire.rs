//! A plain TCP client on the ring ([`UringWire`], a [`Wire`]): its multishot `recv`
//! ([`RecvOp`]: one submission, its reads copied out of the ring's provided buffers into the
//! connection's inbox) and its send side (`send.rs`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use io_uring::{opcode, types};

use super::send::{DirectSend, SendOp, keep_waker};
use super::{Ring, TAG_NONE, TAG_RECV, bufring};
use crate::edge::direct::Direct;
use crate::edge::wire::Wire;

/// A connection's multishot `recv` (one submission, a completion per read until it ends):
/// what its completions delivered, until the connection takes it.
pub(super) struct RecvOp {
    /// The socket, held for as long as the operation: a recv still queued (not yet handed to
    /// the kernel) when the connection lets go must not read from another client's socket
    /// that took its number.
    fd: Arc<OwnedFd>,
    state: Mutex<RecvState>,
}

#[derive(Default)]
struct RecvState {
    /// Bytes received and not taken yet (copied out of the ring's buffers by the reactor).
    inbox: BytesMut,
    /// Submitted, and its last completion (the one without `IORING_CQE_F_MORE`) not seen.
    armed: bool,
    /// The inbox reached [`PAUSE_AT`] and the reactor cancelled the receive: the connection
    /// submits it again once it has taken the inbox (the socket's buffer holds the rest, and
    /// the client feels TCP's back-pressure, as on epoll).
    paused: bool,
    /// How it ended: 0 the end of the stream, else a negative errno (`ENOBUFS`: the ring ran
    /// out of buffers; `ECANCELED`: paused; the connection submits it again for either).
    end: Option<i32>,
    waker: Option<Waker>,
}

/// Bytes a connection's inbox holds before its receive is paused: what a connection that does
/// not read (at `maxInFlight`, or closing) can be made to buffer is this and the reads already
/// under way.
const PAUSE_AT: usize = 64 * 1024;

impl RecvOp {
    /// One completion (the reactor): `data` received (empty for an end); `more` whether the
    /// receive goes on. True when the receive must be paused (the reactor cancels it).
    pub(super) fn complete(&self, res: i32, data: &[u8], more: bool) -> bool {
        let (waker, pause) = {
            let mut s = self.state.lock().unwrap();
            s.inbox.extend_from_slice(data);
            let pause = more && !s.paused && s.inbox.len() >= PAUSE_AT;
            if pause {
                s.paused = true;
            }
            if !more {
                s.armed = false;
                s.paused = false;
                if res <= 0 && res != -libc::ECANCELED {
                    s.end = Some(res);
                }
            }
            (s.waker.take(), pause)
        };
        if let Some(w) = waker {
            w.wake();
        }
        pause
    }
}

/// A plain TCP client on the ring.
pub(crate) struct UringWire {
    /// Shared with the operations (`RecvOp`, `SendOp`): the socket closes once the wire and
    /// every operation submitted on it are done.
    fd: Arc<OwnedFd>,
    ring: Arc<Ring>,
    recv: Arc<RecvOp>,
    send: Arc<SendOp>,
}

impl UringWire {
    /// Takes `stream` off tokio's reactor and onto `ring`.
    pub(crate) fn new(stream: tokio::net::TcpStream, ring: Arc<Ring>) -> io::Result<UringWire> {
        let fd = Arc::new(OwnedFd::from(stream.into_std()?));
        Ok(UringWire {
            fd: fd.clone(),
            ring,
            recv: Arc::new(RecvOp {
                fd: fd.clone(),
                state: Mutex::default(),
            }),
            send: SendOp::new(fd),
        })
    }

    /// Submits the multishot recv (not armed).
    fn arm_recv(&self) {
        let entry = opcode::RecvMulti::new(types::Fd(self.recv.fd.as_raw_fd()), bufring::GROUP)
            .build()
            .user_data(Arc::into_raw(self.recv.clone()) as u64 | TAG_RECV);
        // The entry's user data is a strong reference to the `RecvOp` (and so to the socket),
        // released by the reactor at the receive's last completion.
        self.ring.push(entry);
    }

    /// Takes the send's completion, waiting for it with `wait` (see [`SendOp::poll_settle`]).
    pub(super) fn poll_send(&mut self, cx: &mut Context<'_>, wait: bool) -> Poll<io::Result<()>> {
        self.send.poll_settle(cx, wait, &self.ring)
    }
}

impl Wire for UringWire {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        rbuf: &mut BytesMut,
    ) -> Poll<io::Result<Option<usize>>> {
        let mut s = self.recv.state.lock().unwrap();
        let n = s.inbox.len();
        if n > 0 {
            rbuf.extend_from_slice(&s.inbox);
            s.inbox.clear();
            if s.inbox.capacity() > bufring::BUF_SIZE {
                // A burst's buffer is not kept while the connection waits.
                s.inbox = BytesMut::new();
            }
            return Poll::Ready(Ok(Some(n)));
        }
        match s.end {
            Some(0) => return Poll::Ready(Ok(None)),
            Some(e) if e == -libc::ENOBUFS => s.end = None,
            Some(e) => return Poll::Ready(Err(io::Error::from_raw_os_error(-e))),
            None => {}
        }
        keep_waker(&mut s.waker, cx);
        let arm = !s.armed;
        s.armed = true;
        drop(s);
        if arm {
            self.arm_recv();
        }
        // Waiting: a direct writer's short write or error must be able to wake the task.
        self.send.register(cx);
        Poll::Pending
    }

    fn write_pending(&self, out: &VecDeque<Bytes>) -> bool {
        !out.is_empty() || self.send.attention()
    }

    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<usize>> {
        self.send.poll_write(cx, out, &self.ring)
    }

    async fn shutdown(&mut self) {
        // What is in flight goes first (a shutdown would fail it).
        if std::future::poll_fn(|cx| self.poll_send(cx, true))
            .await
            .is_ok()
        {
            let _ = socket2::SockRef::from(&*self.fd).shutdown(std::net::Shutdown::Write);
        }
    }

    fn direct(&self) -> Option<Direct> {
        Some(Direct::Uring(Arc::new(DirectSend {
            ring: self.ring.clone(),
            send: self.send.clone(),
        })))
    }
}

impl Drop for UringWire {
    /// Cancels what is in flight (its buffers and the socket live on in the operations until
    /// the kernel completes them); the socket closes once the last operation holding it is
    /// done.
    fn drop(&mut self) {
        if self.recv.state.lock().unwrap().armed {
            let ud = Arc::as_ptr(&self.recv) as u64 | TAG_RECV;
            self.ring
                .push(opcode::AsyncCancel::new(ud).build().user_data(TAG_NONE));
        }
        self.send.cancel(&self.ring);
    }
}

#[cfg(test)]
mod tests {
    use super::super::reactor;
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

    /// A client socket and the server's end of it on a new ring whose reactor runs.
    async fn client_and_wire() -> (tokio::net::TcpStream, UringWire) {
        let (ring, r) = Ring::new().unwrap();
        tokio::spawn(reactor(r));
        let (client, server) = crate::net::tcp_pair().await;
        (client, UringWire::new(server, ring).unwrap())
    }

    async fn echo_round_trips() {
        let (mut client, mut w) = client_and_wire().await;
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
        let (mut client, mut w) = client_and_wire().await;
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

    /// Eight clients send 256 KiB each at once through a ring of two receive buffers: the
    /// multishot receives keep running out (`ENOBUFS`) and are submitted again, and every
    /// connection still reads all its bytes, in order.
    #[tokio::test]
    async fn a_ring_short_of_buffers_rearms_and_loses_nothing() {
        let (ring, r) = Ring::with_buffers(2).unwrap();
        tokio::spawn(reactor(r));
        let mut tasks = Vec::new();
        for c in 0..8u8 {
            let (mut client, server) = crate::net::tcp_pair().await;
            let mut w = UringWire::new(server, ring.clone()).unwrap();
            let sent: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8 ^ c).collect();
            let expected = sent.clone();
            tasks.push(tokio::spawn(async move {
                client.write_all(&sent).await.unwrap();
            }));
            tasks.push(tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while buf.len() < expected.len() {
                    read_some(&mut w, &mut buf).await.expect("not the end yet");
                }
                assert!(buf[..] == expected[..], "connection {c}: the bytes differ");
            }));
        }
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            for t in tasks {
                t.await.unwrap();
            }
        })
        .await
        .expect("every connection read everything");
    }

    /// Many connections' reads arrive in one burst while the reactor cannot run, and nothing
    /// else happens after: every one is still delivered. The kernel runs at most a few dozen
    /// deferred completions per `io_uring_enter` (`IO_LOCAL_TW_DEFAULT_MAX`, Linux >= 6.13)
    /// and signals the eventfd only when its list of them goes from empty to not, so a reactor
    /// that stops entering while some are left waits for a signal that never comes.
    #[tokio::test]
    async fn a_burst_of_reads_on_many_connections_is_all_delivered() {
        const N: usize = 200;
        let (ring, r) = Ring::new().unwrap();
        tokio::spawn(reactor(r));
        let mut clients = Vec::new();
        let mut wires = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..N {
            let (client, server) = crate::net::tcp_pair().await;
            let mut w = UringWire::new(server, ring.clone()).unwrap();
            assert!(w.poll_read_into(&mut cx, &mut BytesMut::new()).is_pending());
            clients.push(client);
            wires.push(w);
        }
        // Every receive armed in the kernel before the burst.
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !ring.pending.lock().unwrap().entries.is_empty() {
                tokio::task::yield_now().await;
            }
            tokio::task::yield_now().await;
        })
        .await
        .unwrap();
        // The burst: written without yielding, so the reactor sees all of it at once.
        for c in &clients {
            assert_eq!(socket2::SockRef::from(c).send(b"ping").unwrap(), 4);
        }
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            for (i, w) in wires.iter_mut().enumerate() {
                let mut buf = BytesMut::new();
                while buf.len() < 4 {
                    read_some(w, &mut buf).await.expect("not the end");
                }
                assert_eq!(&buf[..], b"ping", "connection {i}");
            }
        })
        .await;
        let delivered = wires
            .iter()
            .filter(|w| !w.recv.state.lock().unwrap().inbox.is_empty())
            .count();
        assert!(
            waited.is_ok(),
            "reads left undelivered ({delivered} inboxes hold data)"
        );
    }

    /// A connection that does not read (at `maxInFlight`, say) while its client sends 8 MiB:
    /// the receive pauses once the inbox holds `PAUSE_AT` (the rest waits in the socket, the
    /// client is held back by TCP), and once the connection reads again every byte arrives,
    /// in order.
    #[tokio::test]
    async fn a_connection_that_does_not_read_buffers_a_bounded_inbox() {
        let (mut client, mut w) = client_and_wire().await;
        let mut buf = BytesMut::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(w.poll_read_into(&mut cx, &mut buf).is_pending());
        let sent: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 253) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move { client.write_all(&sent).await.unwrap() });
        // Paused: the cancel's completion ended the receive (not armed any more).
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while w.recv.state.lock().unwrap().armed {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the receive pauses");
        let held = w.recv.state.lock().unwrap().inbox.len();
        assert!(
            (PAUSE_AT..PAUSE_AT + 256 * 1024).contains(&held),
            "inbox holds {held} B"
        );
        assert!(!writer.is_finished(), "the client was not held back");
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while buf.len() < expected.len() {
                read_some(&mut w, &mut buf).await.expect("not the end yet");
            }
        })
        .await
        .expect("everything arrives once the connection reads");
        assert!(buf[..] == expected[..], "the bytes differ");
        writer.await.unwrap();
    }

    /// The inode of the file behind `fd` (`None`: not open).
    fn inode(fd: i32) -> Option<u64> {
        // SAFETY: `st` is a plain struct `fstat` fills; an unknown number is EBADF, not UB.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
    }

    /// A wire dropped before the reactor handed its recv and send to the kernel: its socket
    /// stays open until those operations completed, so its number cannot go to another
    /// client first (whose bytes the stale recv would take, and to whom the stale send would
    /// write); the frame queued before the drop still reaches the peer, then the stream ends.
    #[tokio::test]
    async fn a_socket_outlives_the_operations_queued_on_it() {
        let (ring, r) = Ring::new().unwrap();
        let (mut client, server) = crate::net::tcp_pair().await;
        let mut w = UringWire::new(server, ring).unwrap();
        let (raw, ino) = (w.fd.as_raw_fd(), inode(w.fd.as_raw_fd()));
        let mut cx = Context::from_waker(Waker::noop());
        let mut buf = BytesMut::new();
        assert!(w.poll_read_into(&mut cx, &mut buf).is_pending());
        let mut out: VecDeque<Bytes> = [Bytes::from_static(b"last words")].into();
        assert!(matches!(
            w.poll_write_from(&mut cx, &mut out),
            Poll::Ready(Ok(10))
        ));
        drop(w);
        assert_eq!(
            inode(raw),
            ino,
            "the socket closed with operations still queued on its number"
        );
        tokio::spawn(reactor(r));
        let mut got = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut got),
        )
        .await
        .expect("the socket closes once its operations are done")
        .unwrap();
        assert_eq!(got, b"last words");
    }

    /// Frames for an idle client go out through direct writes on the ring; what a direct
    /// write cannot take (a send in flight, a short write on small socket buffers) waits for
    /// the task, and the client reads every byte in order.
    #[tokio::test]
    async fn direct_writes_on_the_ring_keep_the_order() {
        use crate::edge::clients::{Conn, ConnLimits};
        let (ring, r) = Ring::new().unwrap();
        tokio::spawn(reactor(r));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut client = sock.connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        let mut w = UringWire::new(server, ring).unwrap();
        let limits = Arc::new(ConnLimits {
            send_queue_bytes: 64 << 20,
            max_in_flight: 8,
            drops: Arc::default(),
        });
        let conn = Arc::new(Conn::new(1, limits, w.direct()));
        let frames: Vec<Bytes> = (0..200u32)
            .map(|i| Bytes::from(vec![i as u8; 1000 + (i as usize * 37) % 5000]))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        // A slow reader (small reads, a yield between them): the sends fill the socket and
        // complete short.
        let reading = tokio::spawn(async move {
            let mut got = Vec::with_capacity(expected.len());
            let mut buf = [0u8; 700];
            while got.len() < expected.len() {
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early");
                got.extend_from_slice(&buf[..n]);
                tokio::task::yield_now().await;
            }
            assert!(got == expected, "the bytes differ from the frames in order");
        });
        let mut out = VecDeque::new();
        let task = async {
            for chunk in frames.chunks(10) {
                // Idle: direct writes.
                assert!(conn.take(&mut out, true));
                for f in chunk {
                    conn.send(f.clone());
                    // Let the send complete (often short, on these buffers) before the next
                    // direct write: it must leave a short write's rest to the task.
                    for _ in 0..3 {
                        tokio::task::yield_now().await;
                    }
                }
                // The task's turn: what the direct writes left, in order after them.
                conn.wake();
                conn.take(&mut out, false);
                flush(&mut w, &mut out).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), task)
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(20), reading)
            .await
            .unwrap()
            .unwrap();
    }
}
