//! The byte-moving side of a client connection, one adapter per transport: TCP (frames on the
//! stream, replies written with one vectored write) and WebSocket (frames in binary messages,
//! several queued frames in one message). The connection's lifecycle (`connector.rs`) drives
//! either through [`Wire`] from a single task.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

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

    /// Moves frames from the front of `out` toward the socket. `Ready(Ok)` once it made
    /// progress; `Pending` when the socket cannot take more now.
    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<()>>;

    /// Closes the sending side (TCP: shutdown; WebSocket: a close message).
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// Writes everything `out` and the transport hold.
pub(crate) async fn write_all<W: Wire>(wire: &mut W, out: &mut VecDeque<Bytes>) -> io::Result<()> {
    std::future::poll_fn(|cx| {
        while wire.write_pending(out) {
            ready!(wire.poll_write_from(cx, out))?;
        }
        Poll::Ready(Ok(()))
    })
    .await
}

/// Frames written by one vectored write at most.
const WRITE_SLICES: usize = 64;
/// Bytes of frames put in one WebSocket message at most (a single larger frame goes alone).
const WS_BATCH: usize = 64 * 1024;
/// Smallest and largest read a TCP connection asks for.
pub(crate) const READ_MIN: usize = 64;
const READ_MAX: usize = 64 * 1024;

// ---------------------------------------------------------------------- TCP

/// A TCP client: frames straight on the stream.
pub(crate) struct TcpWire {
    stream: TcpStream,
    /// Free space wanted before a read: grows while reads fill the buffer (a busy client gets
    /// few large reads), shrinks when they stop (an idle client keeps a small buffer).
    read_hint: usize,
}

impl TcpWire {
    pub(crate) fn new(stream: TcpStream) -> TcpWire {
        TcpWire {
            stream,
            read_hint: READ_MIN,
        }
    }
}

impl Wire for TcpWire {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<usize>>> {
        if buf.capacity() - buf.len() < self.read_hint {
            buf.reserve(self.read_hint);
        }
        let spare = buf.capacity() - buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            buf
        ))?;
        if n == 0 {
            return Poll::Ready(Ok(None));
        }
        if n == spare {
            self.read_hint = (self.read_hint * 2).min(READ_MAX);
        } else if n < self.read_hint / 8 {
            self.read_hint = (self.read_hint / 2).max(READ_MIN);
        }
        Poll::Ready(Ok(Some(n)))
    }

    fn write_pending(&self, out: &VecDeque<Bytes>) -> bool {
        !out.is_empty()
    }

    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<()>> {
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
        Poll::Ready(Ok(()))
    }

    async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

// ---------------------------------------------------------------------- WebSocket

/// A WebSocket client: frames in binary messages.
pub(crate) struct WsWire {
    ws: WebSocketStream<TcpStream>,
    /// A message was handed to the socket (or a pong queued) and is not flushed yet.
    flushing: bool,
}

impl WsWire {
    pub(crate) fn new(ws: WebSocketStream<TcpStream>) -> WsWire {
        WsWire {
            ws,
            flushing: false,
        }
    }
}

impl Wire for WsWire {
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
        self.flushing || !out.is_empty()
    }

    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<()>> {
        if self.flushing {
            ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(io::Error::other)?;
            self.flushing = false;
            return Poll::Ready(Ok(()));
        }
        if out.is_empty() {
            return Poll::Ready(Ok(()));
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
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(message))
            .map_err(io::Error::other)?;
        self.flushing = true;
        Poll::Ready(Ok(()))
    }

    async fn shutdown(&mut self) {
        let _ = self.ws.close(None).await;
    }
}
