//! Socket helpers both listeners (clients and peer links) share: accepting until shutdown (an
//! accept error, e.g. out of file descriptors, is logged and retried after a pause instead of
//! ending the loop), and reads of an adaptive size ([`AdaptiveRead`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The next connection, or `None` once `shutdown` is cancelled.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    warn!(cause = %e, "{what} accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Smallest and largest read a stream asks for.
pub(crate) const READ_MIN: usize = 64;
const READ_MAX: usize = 64 * 1024;

/// Reads of an adaptive size into a `BytesMut`: the free space wanted before a read grows
/// while reads fill the buffer (a busy stream gets few large reads) and shrinks when they stop
/// (an idle stream keeps a small buffer). Used by client connections and peer links.
pub(crate) struct AdaptiveRead(usize);

impl AdaptiveRead {
    pub(crate) const fn new() -> AdaptiveRead {
        AdaptiveRead(READ_MIN)
    }

    /// Reads what `io` has into `buf`; `Ok(0)` at the end of the stream.
    pub(crate) fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        if buf.capacity() - buf.len() < self.0 {
            buf.reserve(self.0);
        }
        let spare = buf.capacity() - buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, buf))?;
        if n == spare {
            self.0 = (self.0 * 2).min(READ_MAX);
        } else if n < self.0 / 8 {
            self.0 = (self.0 / 2).max(READ_MIN);
        }
        Poll::Ready(Ok(n))
    }
}

/// A connected pair of TCP streams on loopback, for tests.
#[cfg(test)]
pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_busy_stream_is_read_in_large_reads_and_an_idle_one_shrinks_back() {
        // An in-memory pipe, not TCP: how much one loopback read returns depends on the
        // kernel's scheduling (on a loaded machine reads of at most 32 KiB, so the size never
        // reached 64 KiB), and this tests the sizing, not the kernel.
        let (mut tx, mut rx) = tokio::io::duplex(1 << 20);
        const TOTAL: usize = 4 << 20;
        let writer = tokio::spawn(async move {
            tx.write_all(&vec![7u8; TOTAL]).await.unwrap();
            tx
        });
        let mut read = AdaptiveRead::new();
        let mut buf = BytesMut::new();
        let (mut got, mut reads) = (0, 0);
        while got < TOTAL {
            let n = std::future::poll_fn(|cx| read.poll_read(&mut rx, cx, &mut buf))
                .await
                .unwrap();
            assert!(n > 0, "stream ended early");
            got += n;
            reads += 1;
            buf.clear();
        }
        // Reads of the minimum size would take 65,536 reads; growing to 64 KiB takes ~100.
        assert!(reads < 1_000, "{reads} reads for {TOTAL} bytes");
        assert_eq!(read.0, READ_MAX, "the read size grew to the maximum");

        // Small messages afterwards shrink it back.
        let mut tx = writer.await.unwrap();
        for _ in 0..20 {
            tx.write_all(b"hi").await.unwrap();
            let n = std::future::poll_fn(|cx| read.poll_read(&mut rx, cx, &mut buf))
                .await
                .unwrap();
            assert!(n > 0);
            buf.clear();
        }
        assert_eq!(read.0, READ_MIN, "an idle stream's read size shrank back");
    }
}
