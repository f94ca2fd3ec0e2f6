//! The byte-moving side of a client connection, one adapter per transport: TCP (frames on the
//! stream, replies written with one vectored write) and WebSocket (frames in binary messages,
//! several queued frames in one message). The connection's lifecycle (`connection.rs`) drives
//! either through [`Wire`] from a single task.
//!
//! Both run over a [`ClientStream`]: the TCP socket (plain TCP), the socket with a read budget
//! before the handshake ([`Capped`], plain WebSocket), or a TLS stream over a capped socket
//! (`tls.rs`, both transports). The plain paths keep their types and sizes: the stream is a
//! type parameter, defaulting to what they use.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::net::AdaptiveRead;

/// The byte stream under a [`Wire`].
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The client completed its handshake: no more pre-handshake read budget.
    fn lift(&mut self) {}

    /// Whether the stream holds bytes for the socket that only a flush writes (TLS records a
    /// write could not send at once).
    fn holds_output(&self) -> bool {
        false
    }

    /// When the client's kennel handshake must be done, if the connection's handshake time
    /// started before the wire existed (TLS: at the accept). `None`: the handshake timeout
    /// counts from the wire's first read.
    fn handshake_deadline(&self) -> Option<tokio::time::Instant> {
        None
    }

    /// The socket others may write to while the connection is idle (`direct.rs`); `None`:
    /// only the connection's task writes.
    fn direct(&self) -> Option<crate::edge::direct::Direct> {
        None
    }
}

impl ClientStream for TcpStream {}

/// A client transport as the connection task drives it: bytes in, encoded frames out.
pub(crate) trait Wire: Send + 'static {
    /// Reads what the client sent into `buf`: `Some(n)` bytes (possibly 0, e.g. a WebSocket
    /// ping), `None` at the end of the stream.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<usize>>>;

    /// Whether anything is left to write: frames in `out`, or bytes the transport holds.
    fn write_pending(&self, out: &VecDeque<Bytes>) -> bool;

    /// Moves frames from the front of `out` toward the socket. `Ready(Ok(n))` once it made
    /// progress, `n` the bytes of `out` it took (0 when it only flushed); `Pending` when the
    /// socket cannot take more now.
    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<usize>>;

    /// Closes the sending side (TCP: shutdown; WebSocket: a close message).
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;

    /// The client completed its handshake: lifts what only bounds a client before it.
    fn handshake_done(&mut self) {}

    /// See [`ClientStream::handshake_deadline`].
    fn handshake_deadline(&self) -> Option<tokio::time::Instant> {
        None
    }

    /// See [`ClientStream::direct`].
    fn direct(&self) -> Option<crate::edge::direct::Direct> {
        None
    }
}

/// Writes everything `out` and the transport hold.
pub(crate) async fn write_all<W: Wire>(wire: &mut W, out: &mut VecDeque<Bytes>) -> io::Result<()> {
    std::future::poll_fn(|cx| {
        while wire.write_pending(out) {
            let _taken = ready!(wire.poll_write_from(cx, out))?;
        }
        Poll::Ready(Ok(()))
    })
    .await
}

/// Frames written by one vectored write at most.
const WRITE_SLICES: usize = 64;
/// Bytes of frames put in one WebSocket message at most (a single larger frame goes alone).
const WS_BATCH: usize = 64 * 1024;

// ---------------------------------------------------------------------- TCP

/// A TCP client: frames straight on the stream (a TCP socket, or TLS over one).
pub(crate) struct TcpWire<S = TcpStream> {
    stream: S,
    read: AdaptiveRead,
}

impl<S: ClientStream> TcpWire<S> {
    pub(crate) fn new(stream: S) -> TcpWire<S> {
        TcpWire {
            stream,
            read: AdaptiveRead::new(),
        }
    }
}

impl<S: ClientStream> Wire for TcpWire<S> {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<usize>>> {
        let n = ready!(self.read.poll_read(&mut self.stream, cx, buf))?;
        Poll::Ready(Ok((n != 0).then_some(n)))
    }

    fn write_pending(&self, out: &VecDeque<Bytes>) -> bool {
        !out.is_empty() || self.stream.holds_output()
    }

    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<usize>> {
        if out.is_empty() {
            // Only the stream's own bytes are left (TLS records).
            ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
            return Poll::Ready(Ok(0));
        }
        let written = {
            let mut slices = [io::IoSlice::new(&[]); WRITE_SLICES];
            let n = out
                .iter()
                .zip(slices.iter_mut())
                .map(|(f, s)| *s = io::IoSlice::new(f))
                .count();
            ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..n]))?
        };
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        let mut left = written;
        while let Some(front) = out.front_mut() {
            if front.len() > left {
                front.advance(left);
                break;
            }
            left -= front.len();
            out.pop_front();
        }
        Poll::Ready(Ok(written))
    }

    async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    fn handshake_done(&mut self) {
        self.stream.lift();
    }

    fn handshake_deadline(&self) -> Option<tokio::time::Instant> {
        self.stream.handshake_deadline()
    }

    fn direct(&self) -> Option<crate::edge::direct::Direct> {
        self.stream.direct()
    }
}

// ---------------------------------------------------------------------- WebSocket

/// Bytes a WebSocket client may send before its kennel handshake, the HTTP upgrade included
/// (a TCP client may send one frame of at most 50 bytes of body): tungstenite buffers a whole
/// message before handing it over, so without this a client that never handshakes could make
/// the connector buffer up to `maxLen`.
pub(crate) const WS_PRE_HANDSHAKE_BYTES: usize = 16 * 1024;

/// A TCP stream that lets at most `LIMIT` bytes be read until [`ClientStream::lift`]; past it
/// a read fails (`InvalidData`). Writes pass through.
pub(crate) struct Capped<const LIMIT: usize = WS_PRE_HANDSHAKE_BYTES> {
    stream: TcpStream,
    budget: Option<usize>,
}

impl<const LIMIT: usize> Capped<LIMIT> {
    pub(crate) fn new(stream: TcpStream) -> Capped<LIMIT> {
        Capped {
            stream,
            budget: Some(LIMIT),
        }
    }
}

impl<const LIMIT: usize> ClientStream for Capped<LIMIT> {
    fn lift(&mut self) {
        self.budget = None;
    }
}

impl<const LIMIT: usize> AsyncRead for Capped<LIMIT> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(budget) = self.budget else {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        };
        if budget == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {LIMIT} bytes before the handshake"),
            )));
        }
        let n = {
            let mut limited = buf.take(budget);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut limited))?;
            limited.filled().len()
        };
        // SAFETY: `limited` borrowed `buf`'s unfilled part; its first `n` bytes were filled.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        self.budget = Some(budget - n);
        Poll::Ready(Ok(()))
    }
}

impl<const LIMIT: usize> AsyncWrite for Capped<LIMIT> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A WebSocket client: frames in binary messages (over a capped socket, or TLS over one).
pub(crate) struct WsWire<S = Capped> {
    ws: WebSocketStream<S>,
    /// A message was handed to the socket (or a pong queued) and is not flushed yet.
    flushing: bool,
}

impl<S: ClientStream> WsWire<S> {
    pub(crate) fn new(ws: WebSocketStream<S>) -> WsWire<S> {
        WsWire {
            ws,
            flushing: false,
        }
    }
}

impl<S: ClientStream> Wire for WsWire<S> {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<usize>>> {
        match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
            None | Some(Ok(Message::Close(_))) => Poll::Ready(Ok(None)),
            Some(Err(e)) => Poll::Ready(Err(io::Error::other(format!("websocket: {e}")))),
            Some(Ok(Message::Binary(b))) => {
                buf.extend_from_slice(&b);
                Poll::Ready(Ok(Some(b.len())))
            }
            Some(Ok(Message::Text(_))) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "text websocket message (frames travel in binary messages)",
            ))),
            Some(Ok(_)) => {
                // A ping: tungstenite queued the pong, which goes out with the next flush.
                self.flushing = true;
                Poll::Ready(Ok(Some(0)))
            }
        }
    }

    fn write_pending(&self, out: &VecDeque<Bytes>) -> bool {
        self.flushing || !out.is_empty() || self.ws.get_ref().holds_output()
    }

    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<usize>> {
        if self.flushing || out.is_empty() {
            ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(io::Error::other)?;
            self.flushing = false;
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io::Error::other)?;
        let message = if out.len() == 1 || out[0].len() >= WS_BATCH {
            out.pop_front().expect("a frame")
        } else {
            let mut batch = BytesMut::new();
            while let Some(f) = out.front() {
                if !batch.is_empty() && batch.len() + f.len() > WS_BATCH {
                    break;
                }
                batch.extend_from_slice(f);
                out.pop_front();
            }
            batch.freeze()
        };
        let taken = message.len();
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(message))
            .map_err(io::Error::other)?;
        self.flushing = true;
        Poll::Ready(Ok(taken))
    }

    async fn shutdown(&mut self) {
        let _ = self.ws.close(None).await;
    }

    fn handshake_done(&mut self) {
        self.ws.get_mut().lift();
    }

    fn handshake_deadline(&self) -> Option<tokio::time::Instant> {
        self.ws.get_ref().handshake_deadline()
    }
}
