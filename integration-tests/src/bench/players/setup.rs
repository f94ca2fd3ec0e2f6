//! Opening the players' connections before a run: TCP connect, handshake (route list from the
//! reply), and, when the scenario needs it, `connector.main.login` (a fresh uid; room `i` for
//! the echo routes, `i / room size` for chat) and `chat.main.join`. Plain tokio sockets and the
//! client framing of PROTOCOL.md, at most 256 connections in setup at a time; each exchange
//! has a deadline. Setup is not measured, so it may allocate freely.

use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use kennel_proto::client::{
    ClientCodec, Frame, HandshakeReply, TYPE_HANDSHAKE, put_frame, put_message,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::codec::Decoder;

use super::{Kind, Spec};

/// How long one setup exchange (connect, handshake, login, join) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Connections in setup at once.
const SETUP_PARALLEL: usize = 256;

/// The cmds a run uses, from the handshake's route list.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cmds {
    /// The echo route of the scenario (request and reply).
    pub request: u16,
    /// `chat.main.send`.
    pub send: u16,
    /// `chat.main.onChat`.
    pub push: u16,
}

/// One connection after setup.
pub struct Ready {
    /// The socket (nodelay).
    pub stream: TcpStream,
    /// Bytes read past the last setup reply.
    pub leftover: Vec<u8>,
}

/// Opens `spec.players` connections over `addrs` (round robin) with uids `uid_base..`; returns
/// them in index order with the cmds. Must run inside a `LocalSet`.
pub async fn open(addrs: &[String], spec: &Spec, uid_base: u64) -> Result<(Vec<Ready>, Cmds)> {
    let gate = Rc::new(Semaphore::new(SETUP_PARALLEL));
    let mut tasks = Vec::with_capacity(spec.players);
    for i in 0..spec.players {
        let addr = addrs[i % addrs.len()].clone();
        let (gate, kind, room_size) = (gate.clone(), spec.kind, spec.room_size);
        tasks.push(tokio::task::spawn_local(async move {
            let _permit = gate.acquire().await;
            tokio::time::timeout(
                SETUP_TIMEOUT,
                one(&addr, kind, i, room_size, uid_base + i as u64),
            )
            .await
            .unwrap_or_else(|_| bail!("setup of connection {i} took over {SETUP_TIMEOUT:?}"))
            .with_context(|| format!("connection {i} to {addr}"))
        }));
    }
    let mut out = Vec::with_capacity(spec.players);
    let mut cmds = Cmds::default();
    for t in tasks {
        let (ready, c) = t.await??;
        out.push(ready);
        cmds = c;
    }
    Ok((out, cmds))
}

/// Connection `i`: connect, handshake, login and join as `kind` needs.
async fn one(
    addr: &str,
    kind: Kind,
    i: usize,
    room_size: usize,
    uid: u64,
) -> Result<(Ready, Cmds)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::new();
    let mut inbuf = BytesMut::with_capacity(4096);
    let mut codec = ClientCodec::default();
    put_frame(&mut out, TYPE_HANDSHAKE, br#"{"md5":""}"#);
    stream.write_all(&out).await?;
    let reply = loop {
        match next_frame(&mut stream, &mut codec, &mut inbuf).await? {
            Frame::Handshake(body) => break serde_json::from_slice::<HandshakeReply>(&body)?,
            Frame::Heartbeat => {}
            Frame::Message { cmd, .. } => bail!("message on cmd {cmd} before the handshake reply"),
        }
    };
    let routes = reply
        .route
        .context("the handshake reply has no route list")?;
    let cmd = |route: &str| -> Result<u16> {
        routes
            .iter()
            .position(|r| r == route)
            .map(|i| i as u16)
            .with_context(|| format!("route {route} is not in the server's list {routes:?}"))
    };
    let cmds = Cmds {
        request: cmd(kind.route())?,
        send: cmd("chat.main.send")?,
        push: cmd("chat.main.onChat")?,
    };
    let room = if kind.is_chat() { i / room_size } else { i };
    if kind.logs_in() {
        let r = exchange(
            &mut stream,
            &mut codec,
            &mut inbuf,
            cmd("connector.main.login")?,
            &serde_json::json!({"uid": uid, "room": room}),
        )
        .await?;
        if r["code"] != 0 {
            bail!("login of uid {uid} refused: {r}");
        }
    }
    if kind.is_chat() {
        let r = exchange(
            &mut stream,
            &mut codec,
            &mut inbuf,
            cmd("chat.main.join")?,
            &serde_json::json!({"room": room}),
        )
        .await?;
        if r["code"] != 0 {
            bail!("join of uid {uid} to room {room} refused: {r}");
        }
    }
    Ok((
        Ready {
            stream,
            leftover: inbuf.to_vec(),
        },
        cmds,
    ))
}

/// Sends one request and returns its reply's JSON (pushes on other cmds are skipped).
async fn exchange(
    stream: &mut TcpStream,
    codec: &mut ClientCodec,
    inbuf: &mut BytesMut,
    cmd: u16,
    msg: &serde_json::Value,
) -> Result<serde_json::Value> {
    let mut out = BytesMut::new();
    put_message(&mut out, cmd, &serde_json::to_vec(msg)?);
    stream.write_all(&out).await?;
    loop {
        if let Frame::Message { cmd: c, payload } = next_frame(stream, codec, inbuf).await?
            && c == cmd
        {
            return Ok(serde_json::from_slice(&payload)?);
        }
    }
}

async fn next_frame(
    stream: &mut TcpStream,
    codec: &mut ClientCodec,
    inbuf: &mut BytesMut,
) -> Result<Frame> {
    loop {
        if let Some(f) = codec.decode(inbuf)? {
            return Ok(f);
        }
        if stream.read_buf(inbuf).await? == 0 {
            bail!("the server closed the connection during setup");
        }
    }
}
