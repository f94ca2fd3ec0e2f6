//! A minimal game client speaking PROTOCOL.md over TCP or WebSocket: handshake, requests
//! (matched by cmd), pushes, heartbeats, raw bytes for abuse tests and raw payloads for byte
//! comparisons, and [`Client::expect_none`] for "no reply". Every wait is bounded by
//! [`crate::TIMEOUT`].

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use kennel_proto::client::{
    ClientCodec, Frame, HandshakeReply, TYPE_HANDSHAKE, put_frame, put_message,
};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::codec::{Decoder, FramedRead};

use crate::TIMEOUT;

/// The client's transport.
enum Io {
    Tcp {
        reader: FramedRead<OwnedReadHalf, ClientCodec>,
        writer: OwnedWriteHalf,
    },
    Ws {
        ws: Box<WebSocketStream<MaybeTlsStream<TcpStream>>>,
        buf: BytesMut,
        codec: ClientCodec,
    },
}

impl Io {
    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match self {
            Io::Tcp { writer, .. } => writer.write_all(bytes).await?,
            Io::Ws { ws, .. } => {
                ws.send(Message::Binary(Bytes::copy_from_slice(bytes)))
                    .await?
            }
        }
        Ok(())
    }

    /// The next frame; `None` when the server closed the connection.
    async fn next(&mut self) -> Option<Result<Frame>> {
        match self {
            Io::Tcp { reader, .. } => reader.next().await.map(|r| r.map_err(Into::into)),
            Io::Ws { ws, buf, codec } => loop {
                match codec.decode(buf) {
                    Ok(Some(f)) => return Some(Ok(f)),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e.into())),
                }
                match ws.next().await? {
                    Ok(Message::Binary(b)) => buf.extend_from_slice(&b),
                    Ok(Message::Close(_)) => return None,
                    Ok(_) => {}
                    Err(e) => return Some(Err(e.into())),
                }
            },
        }
    }
}

/// A connected, handshaken client.
pub struct Client {
    io: Io,
    /// The route list the server announced.
    pub routes: Vec<String>,
    /// The server's handshake reply.
    pub handshake: HandshakeReply,
    /// The handshake reply's body as received.
    pub handshake_raw: Bytes,
    /// Messages (cmd, payload as received) that arrived while waiting for something else.
    inbox: VecDeque<(u16, Bytes)>,
}

impl Client {
    /// Connects over TCP to `addr` and completes the handshake (empty md5: the server sends
    /// the routes).
    pub async fn connect(addr: &str) -> Result<Client> {
        let stream = timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
        stream.set_nodelay(true)?;
        let (rd, writer) = stream.into_split();
        let reader = FramedRead::new(rd, ClientCodec::default());
        Client::handshake(Io::Tcp { reader, writer }).await
    }

    /// Connects over WebSocket to `ws://addr/` and completes the handshake.
    pub async fn connect_ws(addr: &str) -> Result<Client> {
        let (ws, _) = timeout(
            TIMEOUT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/")),
        )
        .await
        .context("websocket connect timed out")??;
        Client::handshake(Io::Ws {
            ws: Box::new(ws),
            buf: BytesMut::new(),
            codec: ClientCodec::default(),
        })
        .await
    }

    async fn handshake(mut io: Io) -> Result<Client> {
        let mut hs = BytesMut::new();
        put_frame(&mut hs, TYPE_HANDSHAKE, br#"{"md5":""}"#);
        io.write(&hs).await?;
        let first = timeout(TIMEOUT, io.next())
            .await
            .context("handshake reply timed out")?;
        let (handshake, handshake_raw): (HandshakeReply, Bytes) = match first {
            Some(Ok(Frame::Handshake(body))) => (serde_json::from_slice(&body)?, body),
            other => bail!("expected a handshake reply, got {other:?}"),
        };
        let routes = handshake
            .route
            .clone()
            .ok_or_else(|| anyhow!("handshake reply without routes"))?;
        Ok(Client {
            io,
            routes,
            handshake,
            handshake_raw,
            inbox: VecDeque::new(),
        })
    }

    /// The cmd of `route`.
    pub fn cmd(&self, route: &str) -> Result<u16> {
        self.routes
            .iter()
            .position(|r| r == route)
            .map(|i| i as u16)
            .ok_or_else(|| anyhow!("no route {route}"))
    }

    /// Sends a message without waiting for anything.
    pub async fn send(&mut self, route: &str, msg: &Value) -> Result<()> {
        let cmd = self.cmd(route)?;
        let mut b = BytesMut::new();
        put_message(&mut b, cmd, serde_json::to_string(msg)?.as_bytes());
        self.io.write(&b).await?;
        Ok(())
    }

    /// Sends `payload` (these bytes) as a message to `route` without waiting for anything.
    pub async fn send_raw_message(&mut self, route: &str, payload: &[u8]) -> Result<()> {
        let cmd = self.cmd(route)?;
        let mut b = BytesMut::new();
        put_message(&mut b, cmd, payload);
        self.io.write(&b).await?;
        Ok(())
    }

    /// Sends a request and waits for the message carrying the same cmd.
    pub async fn request(&mut self, route: &str, msg: &Value) -> Result<Value> {
        let cmd = self.cmd(route)?;
        self.send(route, msg).await?;
        parse(&self.wait_cmd(cmd).await?)
    }

    /// Sends `payload` (these bytes, e.g. JSON text with a chosen key order) as a request to
    /// `route` and returns the reply's payload as received.
    pub async fn request_raw(&mut self, route: &str, payload: &[u8]) -> Result<Bytes> {
        self.send_raw_message(route, payload).await?;
        self.wait_cmd(self.cmd(route)?).await
    }

    /// Waits for the next push of `route` (or takes it from the inbox).
    pub async fn expect_push(&mut self, route: &str) -> Result<Value> {
        parse(&self.expect_push_raw(route).await?)
    }

    /// Like [`Client::expect_push`], the payload as received.
    pub async fn expect_push_raw(&mut self, route: &str) -> Result<Bytes> {
        let cmd = self.cmd(route)?;
        self.wait_cmd(cmd).await
    }

    /// Checks that no message of `route` arrives within `within`, nor is already waiting:
    /// the assertion behind "no reply". Messages of other routes are kept for later; the
    /// connection closing is an error too.
    pub async fn expect_none(&mut self, route: &str, within: Duration) -> Result<()> {
        let cmd = self.cmd(route)?;
        if let Some((_, p)) = self.inbox.iter().find(|(c, _)| *c == cmd) {
            bail!(
                "expected no {route} message, but one was waiting: {}",
                String::from_utf8_lossy(p)
            );
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let f = match tokio::time::timeout_at(deadline, self.io.next()).await {
                Err(_) => return Ok(()),
                Ok(None) => bail!("connection closed while checking that no {route} arrives"),
                Ok(Some(f)) => f?,
            };
            match f {
                Frame::Message { cmd: c, payload } if c == cmd => bail!(
                    "expected no {route} message within {within:?}, got {}",
                    String::from_utf8_lossy(&payload)
                ),
                Frame::Message { cmd: c, payload } => self.inbox.push_back((c, payload)),
                Frame::Heartbeat => {}
                Frame::Handshake(_) => bail!("unexpected handshake frame"),
            }
        }
    }

    async fn wait_cmd(&mut self, cmd: u16) -> Result<Bytes> {
        if let Some(i) = self.inbox.iter().position(|(c, _)| *c == cmd) {
            return Ok(self.inbox.remove(i).unwrap().1);
        }
        loop {
            let (c, p) = self.next_raw().await?;
            if c == cmd {
                return Ok(p);
            }
            self.inbox.push_back((c, p));
        }
    }

    /// The next message frame from the connection, parsed (heartbeat replies skipped; the
    /// inbox is not consulted).
    pub async fn next_message(&mut self) -> Result<(u16, Value)> {
        let (cmd, payload) = self.next_raw().await?;
        Ok((cmd, parse(&payload)?))
    }

    /// Like [`Client::next_message`], the payload as received.
    pub async fn next_raw(&mut self) -> Result<(u16, Bytes)> {
        loop {
            let f = timeout(TIMEOUT, self.io.next())
                .await
                .context("timed out waiting for a message")?
                .ok_or_else(|| anyhow!("connection closed"))??;
            match f {
                Frame::Message { cmd, payload } => return Ok((cmd, payload)),
                Frame::Heartbeat => continue,
                Frame::Handshake(_) => bail!("unexpected handshake frame"),
            }
        }
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.io.write(bytes).await?;
        Ok(())
    }

    /// Waits until the server closes the connection (EOF or reset). Errors if a message
    /// arrives instead or nothing happens before the timeout.
    pub async fn expect_closed(&mut self) -> Result<()> {
        match timeout(TIMEOUT, self.io.next()).await {
            Err(_) => bail!("connection still open after {TIMEOUT:?}"),
            Ok(None) | Ok(Some(Err(_))) => Ok(()),
            Ok(Some(Ok(f))) => bail!("expected close, got {f:?}"),
        }
    }
}

/// A payload as JSON (the error names the text).
fn parse(payload: &[u8]) -> Result<Value> {
    serde_json::from_slice(payload)
        .with_context(|| format!("payload is not JSON: {}", String::from_utf8_lossy(payload)))
}

/// Bytes of one raw frame with an arbitrary declared length and type.
pub fn raw_frame(len: u32, kind: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&[kind]);
    b.extend_from_slice(body);
    b.freeze()
}
