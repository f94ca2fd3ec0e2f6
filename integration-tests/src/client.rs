//! The integration tests' game client: a thin test driver on a [`kennel_client::Connection`]
//! (kennel-client does the transport, TCP or WebSocket, the PROTOCOL.md handshake and the frame
//! codec). What stays here is what only tests want: requests matched by cmd on one connection
//! with the messages of other cmds kept in an inbox for later, payloads as received
//! ([`Client::request_raw`], [`Client::handshake_raw`]), raw bytes for abuse tests,
//! [`Client::expect_none`] for "no reply" and [`Client::expect_closed`]. No heartbeats are sent
//! unless a test sends them, and every handshake sends an empty md5 (no route cache), so the
//! server always sends the route list. Every wait is bounded by [`crate::TIMEOUT`].

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use kennel_client::{
    Connection, Frame, FrameReader, FrameWriter, HandshakeReply, Options, Transport,
};
use serde_json::Value;
use tokio::time::timeout;

use crate::TIMEOUT;

/// A connected, handshaken client.
pub struct Client {
    reader: FrameReader,
    writer: FrameWriter,
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
        Client::open(addr, Transport::Tcp).await
    }

    /// Connects over WebSocket to `ws://addr/` and completes the handshake.
    pub async fn connect_ws(addr: &str) -> Result<Client> {
        Client::open(addr, Transport::Ws).await
    }

    async fn open(addr: &str, transport: Transport) -> Result<Client> {
        let opts = Options {
            transport,
            connect_timeout: TIMEOUT,
            route_cache: None,
            ..Options::default()
        };
        let conn = Connection::connect(addr, &opts).await?;
        let routes = conn.handshake.routes.list().to_vec();
        Ok(Client {
            reader: conn.reader,
            writer: conn.writer,
            routes,
            handshake: conn.handshake.reply,
            handshake_raw: conn.handshake.reply_body,
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
        self.writer.push_json(cmd, route, msg)?;
        Ok(self.writer.flush().await?)
    }

    /// Sends `payload` (these bytes) as a message to `route` without waiting for anything.
    pub async fn send_raw_message(&mut self, route: &str, payload: &[u8]) -> Result<()> {
        let cmd = self.cmd(route)?;
        self.writer.push_message(cmd, payload);
        Ok(self.writer.flush().await?)
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
            let f = match tokio::time::timeout_at(deadline, self.reader.next()).await {
                Err(_) => return Ok(()),
                Ok(Err(e)) if e.is_closed() => {
                    bail!("connection closed while checking that no {route} arrives")
                }
                Ok(f) => f?,
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
            let f = timeout(TIMEOUT, self.reader.next())
                .await
                .context("timed out waiting for a message")??;
            match f {
                Frame::Message { cmd, payload } => return Ok((cmd, payload)),
                Frame::Heartbeat => continue,
                Frame::Handshake(_) => bail!("unexpected handshake frame"),
            }
        }
    }

    /// Writes raw bytes (over WebSocket: as one binary message).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.push_raw(bytes);
        Ok(self.writer.flush().await?)
    }

    /// Waits until the server closes the connection (EOF or reset). Errors if a message
    /// arrives instead or nothing happens before the timeout.
    pub async fn expect_closed(&mut self) -> Result<()> {
        match timeout(TIMEOUT, self.reader.next()).await {
            Err(_) => bail!("connection still open after {TIMEOUT:?}"),
            Ok(Err(_)) => Ok(()),
            Ok(Ok(f)) => bail!("expected close, got {f:?}"),
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
