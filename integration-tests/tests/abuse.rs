//! Hostile input against a real chat-demo cluster (master + servers as processes). Each case: a
//! clear line in the server's (or master's) log, the offending connection closed, and a
//! [`Witness`] pair of players who keep chatting throughout.
//!
//! Client-facing: slowloris handshakes (TCP and WebSocket), junk and bad JSON before the
//! handshake, a flood past `maxConnectionNum`, a heartbeat-silent client, a frame declaring
//! 4 GiB, an unknown cmd, invalid UTF-8 / JSON payloads (handler not called, connection kept:
//! the documented choice), and a client that never reads (send-queue cap, bounded memory).
//! Cluster-facing: wrong secrets on the master, CLI and peer ports, a replayed challenge
//! answer, registrations for a live id and for an id not in the config, oversized and
//! malformed internal frames before and after authentication.
//!
//! (`chat.rs` covers zero length, bad type, short message and the 50-byte pre-handshake rule.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use integration_tests::TIMEOUT;
use integration_tests::client::{Client, raw_frame};
use integration_tests::cluster::Cluster;
use integration_tests::load::{
    Witness, fd_count, login_join, peak_rss_kib, raw_connections, reset_peak_rss, rss_kib,
    still_open,
};
use kennel_config::Project;
use kennel_proto::auth;
use kennel_proto::client::{TYPE_HANDSHAKE, put_frame, put_message};
use kennel_proto::frame::{AUTH_MAX_FRAME, DEFAULT_MAX_FRAME, ProtoCodec, length_codec};
use kennel_proto::msg::{self, FromMaster, Role, ToMaster, from_master, to_master};
use prost::Message;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;

/// The witness, or a panic with every server's log (why could it not log in?).
fn witness(cluster: &Cluster, w: anyhow::Result<Witness>) -> Witness {
    w.unwrap_or_else(|e| {
        let mut logs = String::new();
        for id in cluster.server_pids().keys() {
            logs.push_str(&format!("--- {id}\n{}\n", cluster.log(id)));
        }
        panic!("witness: {e:#}\n{logs}")
    })
}

/// Reads until the peer closes (EOF or reset); errors if it stays open past `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => anyhow::bail!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Writes `bytes` one at a time every `gap` until the write fails or `stop` fires.
async fn trickle(mut w: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, gap: Duration) {
    for b in bytes {
        if w.write_all(&[b]).await.is_err() {
            return;
        }
        tokio::time::sleep(gap).await;
    }
}

fn handshake_bytes() -> Vec<u8> {
    let mut b = BytesMut::new();
    put_frame(&mut b, TYPE_HANDSHAKE, br#"{"md5":""}"#);
    b.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_junk_and_bad_handshakes_before_the_handshake() {
    // connector-server-1 TCP, connector-server-2 WebSocket; handshake timeout 2 s.
    let cluster = Cluster::start_custom(1, 1, 1, json!({"handshakeTimeout": 2})).unwrap();
    let (tcp, ws) = (
        cluster.client_addr(0).to_string(),
        cluster.client_addr(1).to_string(),
    );
    let witness = witness(&cluster, Witness::tcp(&tcp, 10, 1).await);
    witness.check("before").await.unwrap();

    // Slowloris over TCP: a valid handshake frame, one byte every 400 ms (6 s in all): closed
    // at the 2 s handshake timeout, not after the last byte.
    let t0 = Instant::now();
    let (mut rd, wr) = TcpStream::connect(&tcp).await.unwrap().into_split();
    let writer = tokio::spawn(trickle(wr, handshake_bytes(), Duration::from_millis(400)));
    let mut buf = [0u8; 64];
    let n = timeout(TIMEOUT, rd.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let took = t0.elapsed();
    assert_eq!(n, 0, "slowloris got a reply");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(10),
        "closed after {took:?}, expected ~2 s"
    );
    writer.abort();
    cluster
        .wait_log("connector-server-1", "no handshake within the timeout")
        .unwrap();
    witness.check("after tcp slowloris").await.unwrap();

    // Slowloris over WebSocket: the HTTP upgrade trickled. Closed at the same timeout.
    let t0 = Instant::now();
    let upgrade = format!(
        "GET / HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (mut rd, wr) = TcpStream::connect(&ws).await.unwrap().into_split();
    let writer = tokio::spawn(trickle(
        wr,
        upgrade.into_bytes(),
        Duration::from_millis(100),
    ));
    let n = timeout(TIMEOUT, rd.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let took = t0.elapsed();
    assert_eq!(n, 0);
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(10),
        "ws closed after {took:?}"
    );
    writer.abort();
    cluster
        .wait_log(
            "connector-server-2",
            "no websocket upgrade within the handshake timeout",
        )
        .unwrap();

    // A WebSocket that upgrades but never sends the kennel handshake: closed at the timeout.
    let (mut ws_conn, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/"))
        .await
        .unwrap();
    let t0 = Instant::now();
    let end = timeout(TIMEOUT, ws_conn.next()).await.unwrap();
    assert!(
        matches!(
            end,
            None | Some(Err(_)) | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
        ),
        "{end:?}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    witness.check("after ws slowloris").await.unwrap();

    // Junk that is not a frame (an HTTP request to the TCP port): its first 4 bytes declare a
    // frame far over the 51-byte pre-handshake limit; closed at once.
    let mut s = TcpStream::connect(&tcp).await.unwrap();
    s.write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await.unwrap();
    cluster
        .wait_log("connector-server-1", "exceeds the maximum 51")
        .unwrap();

    // 200 bytes of junk in a frame claiming to be a handshake: over 50 bytes of body.
    let mut s = TcpStream::connect(&tcp).await.unwrap();
    s.write_all(&raw_frame(201, TYPE_HANDSHAKE, &[0xAB; 200]))
        .await
        .unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await.unwrap();

    // A handshake whose body is not the handshake JSON: closed, logged.
    for body in [&b"not json"[..], br#"{"md5": 5}"#, &[0xff, 0xfe, 0x00]] {
        let mut s = TcpStream::connect(&tcp).await.unwrap();
        s.write_all(&raw_frame(1 + body.len() as u32, TYPE_HANDSHAKE, body))
            .await
            .unwrap();
        closed_within(&mut s, Duration::from_secs(5)).await.unwrap();
    }
    cluster
        .wait_log("connector-server-1", "bad handshake JSON")
        .unwrap();
    witness.check("after junk").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_past_max_connection_num() {
    // 10 connections at most; unhandshaken ones count too, and stay 30 s.
    let cluster = Cluster::start_custom(
        1,
        0,
        1,
        json!({"maxConnectionNum": 10, "handshakeTimeout": 30}),
    )
    .unwrap();
    let addr = cluster.client_addr(0).to_string();
    let witness = witness(&cluster, Witness::tcp(&addr, 20, 2).await); // 2 connections

    // 15 raw connections that never handshake: 8 fit, 7 are closed at once.
    let mut raw = raw_connections(&addr, 15).await.unwrap();
    let open = still_open(&mut raw, Duration::from_secs(3)).await;
    let kept = open.iter().filter(|o| **o).count();
    assert_eq!(kept, 8, "open/closed: {open:?}");
    cluster
        .wait_log("connector-server-1", "maxConnectionNum reached")
        .unwrap();
    let n = cluster
        .log("connector-server-1")
        .matches("maxConnectionNum reached")
        .count();
    assert_eq!(n, 7, "one log line per refused connection");

    // A real client is refused too while the frontend is full...
    assert!(
        Client::connect(&addr).await.is_err(),
        "an 11th connection was served"
    );
    witness.check("while full").await.unwrap();

    // ...and served again once some leave.
    let mut raw: Vec<_> = raw
        .into_iter()
        .zip(open)
        .filter_map(|(s, o)| o.then_some(s))
        .collect();
    raw.truncate(3); // 5 of the 8 leave
    let deadline = Instant::now() + TIMEOUT;
    let mut c = loop {
        match Client::connect(&addr).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("never served after connections left: {e}"),
        }
    };
    assert_eq!(
        c.request("connector.main.echo", &json!("in"))
            .await
            .unwrap(),
        json!("in")
    );
    witness.check("after").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_silent_client_is_closed_after_twice_the_heartbeat() {
    let cluster = Cluster::start_custom(1, 0, 1, json!({"heartbeat": 1})).unwrap();
    let addr = cluster.client_addr(0).to_string();
    // The witness heartbeats every 300 ms: it must survive.
    let witness = witness(&cluster, Witness::tcp(&addr, 30, 3).await);
    let t0 = Instant::now();
    let mut silent = Client::connect(&addr).await.unwrap();
    assert_eq!(silent.handshake.heartbeat, 1);
    // Messages are not heartbeats: a talkative client without heartbeats is closed too.
    login_join(&mut silent, 33, 3).await.unwrap();
    silent.expect_closed().await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(12),
        "closed after {took:?}, expected ~2 s"
    );
    cluster
        .wait_log("connector-server-1", "no heartbeat for 2 s: closing")
        .unwrap();
    witness.check("after the silent one").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_frames_unknown_cmds_and_bad_payloads() {
    let cluster = Cluster::start_with(1, 1, 1).unwrap();
    let (tcp, ws) = (
        cluster.client_addr(0).to_string(),
        cluster.client_addr(1).to_string(),
    );
    let witness = Witness::start(
        Client::connect(&tcp).await.unwrap(),
        Client::connect_ws(&ws).await.unwrap(),
        40,
        4,
    )
    .await
    .unwrap();
    for (transport, addr, log) in [
        ("tcp", &tcp, "connector-server-1"),
        ("ws", &ws, "connector-server-2"),
    ] {
        let connect = || async {
            if transport == "tcp" {
                Client::connect(addr).await.unwrap()
            } else {
                Client::connect_ws(addr).await.unwrap()
            }
        };
        // A frame declaring 4 GiB - 1: refused on its header.
        let mut c = connect().await;
        c.send_raw(&raw_frame(u32::MAX, 1, &[0, 4])).await.unwrap();
        c.expect_closed().await.unwrap();
        cluster
            .wait_log(log, "frame length 4294967295 exceeds the maximum")
            .unwrap();

        // An unknown cmd closes the connection.
        let mut c = connect().await;
        let mut b = BytesMut::new();
        put_message(&mut b, 999, b"{}");
        c.send_raw(&b).await.unwrap();
        c.expect_closed().await.unwrap();
        cluster
            .wait_log(log, "cmd 999 is outside the route list")
            .unwrap();

        // Invalid UTF-8 / invalid JSON: the handler is not called (no reply), the cause is
        // logged, and the connection stays open (the documented choice).
        let mut c = connect().await;
        let echo = c.cmd("connector.main.echo").unwrap();
        let backend_echo = c.cmd("chat.main.echo").unwrap();
        login_join(&mut c, 48, 4).await.unwrap();
        for (cmd, payload) in [
            (echo, &[0xff, 0xfe, 0x80][..]),
            (echo, b"{not json"),
            (backend_echo, &[0xc3, 0x28]),
        ] {
            let mut b = BytesMut::new();
            put_message(&mut b, cmd, payload);
            c.send_raw(&b).await.unwrap();
        }
        // The next replies on those cmds answer the valid requests: the bad ones got none.
        assert_eq!(
            c.request("connector.main.echo", &json!({"valid": transport}))
                .await
                .unwrap(),
            json!({"valid": transport})
        );
        assert_eq!(
            c.request("chat.main.echo", &json!({"valid": transport}))
                .await
                .unwrap(),
            json!({"valid": transport})
        );
        for route in ["connector.main.echo", "chat.main.echo"] {
            c.expect_none(route, Duration::from_millis(500))
                .await
                .unwrap();
        }
        cluster
            .wait_log(log, "handler failed: cannot decode")
            .unwrap();
        cluster
            .wait_log("chat-server-1", "handler failed: cannot decode")
            .unwrap();
        witness.check(transport).await.unwrap();
    }
}

/// The connector's per-connection send queue, in frames (README "Slow clients").
const SEND_QUEUE_FRAMES: u64 = 1024;
/// Memory the never-reading client may cost beyond its queued replies.
const RSS_SLACK_KIB: u64 = 8 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_memory_stays_bounded() {
    // The 1024-frame cap: the byte cap (`sendQueueBytes`, 4 MiB by default, which 1024
    // frames of 16 KiB exceed) is raised out of the way; `limits.rs` tests that one.
    let cluster = Cluster::start_custom(1, 0, 1, json!({"sendQueueBytes": 64 << 20})).unwrap();
    let addr = cluster.client_addr(0).to_string();
    let witness = witness(&cluster, Witness::tcp(&addr, 50, 5).await);
    let pid = cluster.server_pids()["connector-server-1"];
    // The peak is what buffering costs (freed memory may go back to the OS before the end).
    reset_peak_rss(pid).expect("reset the frontend's peak RSS");
    let rss_before = rss_kib(pid).unwrap();
    let fds_before = fd_count(pid).unwrap();

    // 3000 echo requests of 16 KiB (48 MiB of replies), never reading a byte back.
    let mut hog = Client::connect(&addr).await.unwrap();
    let echo = hog.cmd("connector.main.echo").unwrap();
    let payload = serde_json::to_vec(&json!({"pad": "x".repeat(16 * 1024)})).unwrap();
    let mut frame = BytesMut::new();
    put_message(&mut frame, echo, &payload);
    let mut sent = 0;
    for _ in 0..3000 {
        if timeout(Duration::from_secs(5), hog.send_raw(&frame))
            .await
            .map_or(true, |r| r.is_err())
        {
            break; // the server closed it (or stopped reading: it is closing)
        }
        sent += 1;
    }
    // Bounded by the queue: at most SEND_QUEUE_FRAMES replies of one frame each are held, plus
    // slack for the read buffer, requests being decoded and allocator overhead. Buffering every
    // reply (3000 x 16 KiB = 48 MiB) would pass the bound by more than 20 MiB.
    let reply_kib = (frame.len() as u64).div_ceil(1024);
    let bound = SEND_QUEUE_FRAMES * reply_kib + RSS_SLACK_KIB;
    let peak = peak_rss_kib(pid).unwrap();
    assert!(
        peak < rss_before + bound,
        "frontend RSS peaked at {peak} KiB from {rss_before} KiB after {sent} requests: more than \
         {SEND_QUEUE_FRAMES} replies of {reply_kib} KiB plus {RSS_SLACK_KIB} KiB"
    );
    cluster
        .wait_log(
            "connector-server-1",
            "client send queue full (1024 frames): closing",
        )
        .unwrap();
    // The server lets go of the socket by itself, while the hog still reads nothing (a write
    // blocked on it must not pin the connection).
    let deadline = Instant::now() + TIMEOUT;
    while fd_count(pid).unwrap() > fds_before {
        assert!(
            Instant::now() < deadline,
            "the frontend still holds the hog's socket {TIMEOUT:?} after closing it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then what was buffered drains, then EOF (no hang).
    let deadline = Instant::now() + TIMEOUT;
    let mut replies = 0;
    loop {
        assert!(Instant::now() < deadline, "the hog was never disconnected");
        match hog.next_message().await {
            Ok(_) => replies += 1,
            Err(e) => {
                let e = e.to_string();
                assert!(!e.contains("timed out"), "{e}");
                break;
            }
        }
    }
    assert!(
        replies < sent,
        "every request was answered: the queue cap did not act"
    );
    let rss_after = rss_kib(pid).unwrap();
    let peak = peak_rss_kib(pid).unwrap();
    println!(
        "never-reading client: sent {sent} x 16 KiB requests, {replies} replies reached it; \
         frontend RSS {rss_before} KiB -> peak {peak} KiB (+{} KiB, bound +{bound} KiB) -> {rss_after} KiB",
        peak.saturating_sub(rss_before)
    );
    assert!(
        peak < rss_before + bound,
        "frontend RSS peaked at {peak} KiB from {rss_before} KiB: more than {SEND_QUEUE_FRAMES} \
         replies of {reply_kib} KiB plus {RSS_SLACK_KIB} KiB"
    );
    assert!(
        rss_after < rss_before + bound,
        "frontend RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    witness.check("after the hog").await.unwrap();
}

// ---------------------------------------------------------------------- cluster-facing

type RawLink = Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>;

struct Secrets {
    server: Vec<u8>,
    cli: Vec<u8>,
}

fn secrets(cluster: &Cluster) -> Secrets {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.dir.path().join(".kennel/secrets.json")).unwrap(),
    )
    .unwrap();
    Secrets {
        server: v["server"].as_str().unwrap().as_bytes().to_vec(),
        cli: v["cli"].as_str().unwrap().as_bytes().to_vec(),
    }
}

async fn raw_link(addr: SocketAddr) -> RawLink {
    Framed::new(
        TcpStream::connect(addr).await.unwrap(),
        length_codec(AUTH_MAX_FRAME),
    )
}

async fn recv<M: Message + Default>(link: &mut RawLink) -> Option<M> {
    match timeout(TIMEOUT, link.next())
        .await
        .expect("no answer in time")
    {
        Some(Ok(b)) => Some(M::decode(b.freeze()).expect("a well-formed answer")),
        _ => None,
    }
}

/// Runs the dialer side by hand: sends `hello`, reads the challenge, answers with `proof`
/// (computed from the challenge). Returns the challenge and the acceptor's verdict
/// (`None`: it closed without one).
async fn scripted(
    addr: SocketAddr,
    hello: &msg::Hello,
    proof: impl FnOnce(&msg::Challenge) -> Bytes,
) -> (msg::Challenge, Option<msg::AuthResult>) {
    let mut link = raw_link(addr).await;
    link.send(Bytes::from(hello.encode_to_vec())).await.unwrap();
    let ch: msg::Challenge = recv(&mut link).await.expect("a challenge");
    let p = msg::Proof { mac: proof(&ch) };
    link.send(Bytes::from(p.encode_to_vec())).await.unwrap();
    let res = recv::<msg::AuthResult>(&mut link).await;
    // Whatever the verdict, a refused link is closed.
    if !res.as_ref().is_some_and(|r| r.ok) {
        assert!(
            recv::<msg::AuthResult>(&mut link).await.is_none(),
            "refused link left open"
        );
    }
    (ch, res)
}

fn hello(role: Role, id: &str, target: &str) -> msg::Hello {
    msg::Hello {
        role: role as i32,
        id: id.into(),
        nonce: auth::nonce().into(),
        version: kennel_proto::VERSION.into(),
        target: target.into(),
        ..Default::default()
    }
}

fn proof_with(secret: &[u8], role: Role, hello: &msg::Hello, ch: &msg::Challenge) -> Bytes {
    auth::mac(
        secret,
        b"dialer",
        role,
        &hello.id,
        &ch.id,
        &hello.nonce,
        &ch.nonce,
    )
    .into()
}

async fn register(
    addr: SocketAddr,
    secret: &[u8],
    info: msg::ServerInfo,
) -> (
    Framed<TcpStream, ProtoCodec<FromMaster, ToMaster>>,
    Option<from_master::Msg>,
) {
    let mut link = raw_link(addr).await;
    auth::dial(&mut link, secret, Role::Server, &info.id, "")
        .await
        .expect("right secret authenticates");
    let mut link = link.map_codec(|_| ProtoCodec::<FromMaster, ToMaster>::new(DEFAULT_MAX_FRAME));
    link.send(ToMaster {
        msg: Some(to_master::Msg::Register(msg::Register { info: Some(info) })),
    })
    .await
    .unwrap();
    let reply = match timeout(TIMEOUT, link.next()).await.unwrap() {
        Some(Ok(m)) => m.msg,
        _ => None,
    };
    (link, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_links_refuse_impostors_replays_and_oversized_frames() {
    let mut cluster = Cluster::start(1, 1).unwrap();
    let addr = cluster.client_addr(0).to_string();
    let witness = witness(&cluster, Witness::tcp(&addr, 60, 6).await);
    let pids_before = cluster.server_pids();
    let s = secrets(&cluster);
    let project = Project::load(cluster.dir.path(), "test").unwrap();
    let master: SocketAddr = format!("127.0.0.1:{}", cluster.master_port)
        .parse()
        .unwrap();
    let chat = project.server("chat-server-1").unwrap();
    let peer_port: SocketAddr = format!("127.0.0.1:{}", chat.info.port).parse().unwrap();

    // A server with a wrong secret: the master's challenge does not verify for it, and its
    // proof is refused.
    let h = hello(Role::Server, "chat-server-1", "");
    let (_, verdict) = scripted(master, &h, |ch| proof_with(b"wrong", Role::Server, &h, ch)).await;
    assert!(!verdict.is_some_and(|r| r.ok));
    cluster
        .wait_line("authentication failed: wrong secret")
        .unwrap();
    // The real dialer notices the master does not know its (wrong) secret and stops first.
    let mut link = raw_link(master).await;
    let r = auth::dial(&mut link, b"wrong", Role::Server, "chat-server-1", "").await;
    assert!(matches!(r, Err(auth::AuthError::BadMac)), "{r:?}");

    // The CLI with the server secret (or a wrong one) is refused.
    let h = hello(Role::Cli, "cli", "");
    let mark = cluster.lines.lock().unwrap().len();
    let (_, verdict) = scripted(master, &h, |ch| proof_with(&s.server, Role::Cli, &h, ch)).await;
    assert!(!verdict.is_some_and(|r| r.ok));
    cluster
        .wait_line_after(mark, "authentication failed: wrong secret")
        .unwrap();
    // A CLI with the right secret is accepted (the same script, so the refusals above are
    // about the secret, not the script).
    let (_, verdict) = scripted(master, &h, |ch| proof_with(&s.cli, Role::Cli, &h, ch)).await;
    assert!(
        verdict.is_some_and(|r| r.ok),
        "the right CLI secret was refused"
    );

    // A replayed answer: record an honest server proof, replay it with the same hello.
    let h = hello(Role::Server, "chat-server-9", "");
    let (ch1, verdict) =
        scripted(master, &h, |ch| proof_with(&s.server, Role::Server, &h, ch)).await;
    assert!(verdict.is_some_and(|r| r.ok), "the honest session works");
    let recorded = proof_with(&s.server, Role::Server, &h, &ch1);
    let mark = cluster.lines.lock().unwrap().len();
    let (ch2, verdict) = scripted(master, &h, |_| recorded.clone()).await;
    assert_ne!(ch1.nonce, ch2.nonce, "the master's nonce is fresh");
    assert!(
        !verdict.is_some_and(|r| r.ok),
        "a replayed answer was accepted"
    );
    cluster
        .wait_line_after(mark, "authentication failed: wrong secret")
        .unwrap();

    // A peer with a wrong secret on a server's RPC port.
    let h = hello(Role::Peer, "a-intruder", "chat-server-1");
    let (_, verdict) = scripted(peer_port, &h, |ch| proof_with(b"wrong", Role::Peer, &h, ch)).await;
    assert!(!verdict.is_some_and(|r| r.ok));
    cluster
        .wait_log("chat-server-1", "peer link refused")
        .unwrap();

    // Register for an id that is live: refused, the live one unaffected.
    let mut info = msg::ServerInfo {
        id: "chat-server-1".into(),
        server_type: "chat".into(),
        host: "127.0.0.1".into(),
        port: u32::from(chat.info.port),
        pid: std::process::id(),
        extra_json: "{}".into(),
        ..Default::default()
    };
    let (mut link, reply) = register(master, &s.server, info.clone()).await;
    match reply {
        Some(from_master::Msg::Error(e)) => {
            assert!(e.error.contains("already registered"), "{e:?}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        timeout(TIMEOUT, link.next()).await.unwrap().is_none(),
        "left open"
    );
    cluster.wait_line("registration refused").unwrap();

    // Register for an id not in the config: refused (policy: the config is the cluster; a
    // server it does not list cannot join, even with the right secret).
    info.id = "chat-server-77".into();
    let (mut link, reply) = register(master, &s.server, info).await;
    match reply {
        Some(from_master::Msg::Error(e)) => assert!(e.error.contains("unknown server id"), "{e:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        timeout(TIMEOUT, link.next()).await.unwrap().is_none(),
        "left open"
    );
    witness.check("after impostors").await.unwrap();

    // Oversized frames before authentication: refused on the header, on both ports.
    for (target, what) in [(master, "master"), (peer_port, "peer")] {
        let mut sock = TcpStream::connect(target).await.unwrap();
        sock.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        closed_within(&mut sock, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    cluster.wait_line("frame size too big").unwrap();
    cluster
        .wait_log("chat-server-1", "frame size too big")
        .unwrap();

    // After authentication: a frame over the link's 64 MiB limit, then protobuf garbage.
    let mut link = raw_link(master).await;
    auth::dial(&mut link, &s.server, Role::Server, "chat-server-1", "")
        .await
        .unwrap();
    let mut sock = link.into_inner();
    sock.write_all(&(100u32 << 20).to_be_bytes()).await.unwrap();
    closed_within(&mut sock, TIMEOUT).await.unwrap();
    cluster.wait_line("bad first message; closing").unwrap();

    for payload in [None, Some(vec![0xffu8; 32])] {
        let mut link = raw_link(peer_port).await;
        auth::dial(
            &mut link,
            &s.server,
            Role::Peer,
            "a-intruder",
            "chat-server-1",
        )
        .await
        .unwrap();
        let mut sock = link.into_inner();
        match &payload {
            None => sock.write_all(&(100u32 << 20).to_be_bytes()).await.unwrap(),
            Some(p) => {
                sock.write_all(&(p.len() as u32).to_be_bytes())
                    .await
                    .unwrap();
                sock.write_all(p).await.unwrap();
            }
        }
        closed_within(&mut sock, TIMEOUT).await.unwrap();
    }
    let log = cluster.log("chat-server-1");
    assert!(
        log.matches("bad message on peer link: closing it").count() >= 2,
        "{log}"
    );

    // Nothing crashed, and chat goes on.
    assert_eq!(
        cluster.server_pids(),
        pids_before,
        "a server process changed"
    );
    witness.check("after oversized frames").await.unwrap();
}
