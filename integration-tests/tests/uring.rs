//! The io_uring connector (`"io": "uring"`, `worker/src/edge/uring.rs`) over real processes:
//! chat in a room spread over a uring and an epoll frontend with every push in order; the
//! connector's limits on uring (handshake timeout, `maxConnectionNum`, `maxLen`, a client that
//! stops reading against `sendQueueBytes`, the heartbeat timeout); thousands of connections
//! opened and closed leaving no fd behind and the memory flat; clients that reset mid-frame or
//! close while sends are in flight (no panic, the session ended).
//!
//! The other suites run on uring frontends with `KENNEL_TEST_IO=uring` (`cluster::IO_ENV`).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use integration_tests::TIMEOUT;
use integration_tests::client::{Client, raw_frame};
use integration_tests::cluster::{Cluster, ClusterOptions};
use integration_tests::load::{
    Witness, fd_count, login_join, raw_connections, rss_kib, still_open,
};
use kennel_proto::client::{TYPE_HANDSHAKE, put_frame, put_message};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A cluster of `tcp` TCP frontends, the first `uring` on io_uring, `chats` chat servers and
/// `extra` in every frontend's entry; checks the uring ones say so in their logs and waits for
/// the mesh.
fn cluster(tcp: u16, uring: u16, chats: u16, extra: Value) -> Cluster {
    let c = Cluster::start_opts(&ClusterOptions {
        tcp,
        uring,
        chats,
        connector_extra: extra,
        ..ClusterOptions::default()
    })
    .expect("cluster boots");
    for i in 1..=uring {
        c.wait_log(&format!("connector-server-{i}"), "transport=\"tcp+uring\"")
            .expect("the frontend runs on io_uring");
    }
    // Every mesh link is up, so a frontend's fd count taken now is its baseline (a link that
    // comes up after it would read as a leaked fd).
    c.wait_meshed(TIMEOUT).expect("the mesh is complete");
    c
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

/// Waits until `pid` holds at most `fds` descriptors.
async fn fds_back_to(pid: i32, fds: usize, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = fd_count(pid).unwrap();
        if now <= fds {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the frontend holds {now} fds, {fds} before"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs `uid` in on a new connection to `addr`, retrying while its old session is still
/// being ended (chat-demo refuses a uid already online): proves the old one ended.
async fn login_again(addr: &str, uid: u64, room: i64) -> Client {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut c = Client::connect(addr).await.unwrap();
        match login_join(&mut c, uid, room).await {
            Ok(_) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("uid {uid} never logged in again (its session did not end): {e}"),
        }
    }
}

/// No panic and no io_uring failure in the frontend's log.
fn log_is_clean(c: &Cluster, id: &str) {
    let log = c.log(id);
    for bad in [
        "panic",
        "io_uring_enter failed",
        "cannot move the client socket",
    ] {
        assert!(!log.contains(bad), "{bad:?} in {id}'s log:\n{log}");
    }
}

const PLAYERS: u64 = 6;
const ROUNDS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_over_a_uring_and_an_epoll_frontend_delivers_every_push_in_order() {
    let c = cluster(2, 1, 2, json!({}));
    let room = 7;
    // Players alternate between the uring frontend (0) and the epoll one (1).
    let mut players = Vec::new();
    for uid in 1..=PLAYERS {
        let addr = c.client_addr(((uid - 1) % 2) as usize).to_string();
        let mut p = Client::connect(&addr).await.unwrap();
        login_join(&mut p, uid, room).await.unwrap();
        players.push(p);
    }
    // Every player says ROUNDS things, all of them before anyone reads: pushes pile up in
    // the frontends' queues and sockets, several per write, across the peer links.
    let pad = "p".repeat(300);
    for seq in 0..ROUNDS {
        for (i, p) in players.iter_mut().enumerate() {
            p.send(
                "chat.main.send",
                &json!({"seq": seq, "from": i, "pad": pad}),
            )
            .await
            .unwrap();
        }
    }
    for (i, p) in players.iter_mut().enumerate() {
        let mut next = vec![0usize; PLAYERS as usize];
        for _ in 0..ROUNDS * PLAYERS as usize {
            let got = p.expect_push("chat.main.onChat").await.unwrap();
            let from = got["from"].as_u64().unwrap() as usize;
            assert_eq!(
                got["seq"],
                json!(next[from]),
                "player {i}: push from {from} out of order: {got}"
            );
            assert_eq!(got["u"], json!(from as u64 + 1), "{got}");
            assert_eq!(got["pad"], json!(pad));
            next[from] += 1;
        }
        p.expect_none("chat.main.onChat", Duration::from_millis(200))
            .await
            .unwrap();
    }
    // Requests and replies on the uring frontend: local echo and a backend's.
    let p = &mut players[0];
    for i in 0..50 {
        let big = "e".repeat(i * 997);
        assert_eq!(
            p.request("connector.main.echo", &json!({"i": i, "big": big}))
                .await
                .unwrap(),
            json!({"i": i, "big": big})
        );
        assert_eq!(
            p.request("chat.main.echo", &json!({"i": i})).await.unwrap(),
            json!({"i": i})
        );
    }
    log_is_clean(&c, "connector-server-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_max_len_and_heartbeat_on_uring() {
    let c = cluster(
        1,
        1,
        1,
        json!({"handshakeTimeout": 2, "heartbeat": 1, "maxLen": 4096}),
    );
    let addr = c.client_addr(0).to_string();
    let witness = Witness::tcp(&addr, 20, 2).await.unwrap();

    // No handshake: closed after the handshake timeout (2 s).
    let t0 = Instant::now();
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    closed_within(&mut idle, Duration::from_secs(10))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1900), "closed after {took:?}");
    c.wait_log("connector-server-1", "no handshake within the timeout")
        .unwrap();

    // A frame past maxLen closes that client only.
    let mut big = Client::connect(&addr).await.unwrap();
    let echo = big.cmd("connector.main.echo").unwrap();
    let mut frame = BytesMut::new();
    put_message(&mut frame, echo, &vec![b'x'; 5000]);
    big.send_raw(&frame).await.unwrap();
    big.expect_closed().await.unwrap();
    c.wait_log("connector-server-1", "exceeds the maximum")
        .unwrap();
    // A declared 4 GiB frame too, refused on its header.
    let mut huge = Client::connect(&addr).await.unwrap();
    huge.send_raw(&raw_frame(u32::MAX, 1, &[0, 4]))
        .await
        .unwrap();
    huge.expect_closed().await.unwrap();
    witness.check("after maxLen").await.unwrap();

    // A client that sends no heartbeat is closed after twice the heartbeat (2 s).
    let t0 = Instant::now();
    let mut silent = Client::connect(&addr).await.unwrap();
    login_join(&mut silent, 33, 3).await.unwrap();
    silent.expect_closed().await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(12),
        "closed after {took:?}"
    );
    c.wait_log("connector-server-1", "no heartbeat for 2 s: closing")
        .unwrap();
    witness.check("after the silent one").await.unwrap();
    log_is_clean(&c, "connector-server-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_num_on_uring() {
    let c = cluster(
        1,
        1,
        1,
        json!({"maxConnectionNum": 10, "handshakeTimeout": 30}),
    );
    let addr = c.client_addr(0).to_string();
    let witness = Witness::tcp(&addr, 20, 2).await.unwrap(); // 2 connections
    let mut raw = raw_connections(&addr, 15).await.unwrap();
    let open = still_open(&mut raw, Duration::from_secs(3)).await;
    assert_eq!(open.iter().filter(|o| **o).count(), 8, "{open:?}");
    assert!(Client::connect(&addr).await.is_err(), "an 11th was served");
    drop(raw);
    // Served again once they left.
    let deadline = Instant::now() + TIMEOUT;
    let mut again = loop {
        match Client::connect(&addr).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("never served again: {e}"),
        }
    };
    assert_eq!(
        again
            .request("connector.main.echo", &json!("in"))
            .await
            .unwrap(),
        json!("in")
    );
    witness.check("after the flood").await.unwrap();
    log_is_clean(&c, "connector-server-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_by_send_queue_bytes() {
    let c = cluster(1, 1, 1, json!({"sendQueueBytes": 1 << 20}));
    let addr = c.client_addr(0).to_string();
    let witness = Witness::tcp(&addr, 50, 5).await.unwrap();
    let pid = c.server_pids()["connector-server-1"];
    let fds_before = fd_count(pid).unwrap();
    let rss_before = rss_kib(pid).unwrap();
    // 2000 echo requests of 16 KiB (32 MiB of replies), never reading a byte back.
    let mut hog = Client::connect(&addr).await.unwrap();
    let echo = hog.cmd("connector.main.echo").unwrap();
    let payload = serde_json::to_vec(&json!({"pad": "x".repeat(16 * 1024)})).unwrap();
    let mut frame = BytesMut::new();
    put_message(&mut frame, echo, &payload);
    for _ in 0..2000 {
        if timeout(Duration::from_secs(5), hog.send_raw(&frame))
            .await
            .map_or(true, |r| r.is_err())
        {
            break;
        }
    }
    c.wait_log("connector-server-1", "client send queue full")
        .unwrap();
    // The frontend lets go of the socket while the hog still reads nothing (the send in
    // flight on it is cancelled), and its memory did not keep the replies.
    fds_back_to(pid, fds_before, "after the hog").await;
    let rss = rss_kib(pid).unwrap();
    assert!(
        rss < rss_before + 16 * 1024,
        "frontend RSS {rss_before} KiB -> {rss} KiB"
    );
    witness.check("after the hog").await.unwrap();
    log_is_clean(&c, "connector-server-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_leave_no_fd_and_flat_memory() {
    let c = cluster(1, 1, 1, json!({}));
    let addr = c.client_addr(0).to_string();
    let pid = c.server_pids()["connector-server-1"];
    let fds_before = fd_count(pid).unwrap();
    let mut rss_warm = 0;
    for wave in 0..10u64 {
        // 300 connections: handshaken ones logged in and chatting, raw ones closing at once,
        // half-sent handshakes, and resets.
        let mut clients = Vec::new();
        for i in 0..100u64 {
            let mut p = Client::connect(&addr).await.unwrap();
            if i % 4 == 0 {
                login_join(&mut p, 1000 + wave * 100 + i, 9).await.unwrap();
            }
            clients.push(p);
        }
        let mut raw = Vec::new();
        for i in 0..200 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            if i % 2 == 0 {
                s.write_all(&[0, 0, 0, 20, 1, b'{']).await.unwrap();
            }
            if i % 3 == 0 {
                reset_on_drop(&s);
            }
            raw.push(s);
        }
        let p = &mut clients[1];
        assert_eq!(
            p.request("connector.main.echo", &json!(wave))
                .await
                .unwrap(),
            json!(wave)
        );
        drop(raw);
        drop(clients);
        fds_back_to(pid, fds_before, &format!("wave {wave}")).await;
        if wave == 1 {
            rss_warm = rss_kib(pid).unwrap();
        }
    }
    let rss = rss_kib(pid).unwrap();
    println!("3000 connections: frontend RSS after warm-up {rss_warm} KiB, at the end {rss} KiB");
    assert!(
        rss < rss_warm + 4 * 1024,
        "frontend RSS grew from {rss_warm} KiB to {rss} KiB over 2400 connections"
    );
    log_is_clean(&c, "connector-server-1");
}

/// Makes the socket's drop a reset (RST) instead of a FIN (`SO_LINGER` 0: the drop does not
/// block).
fn reset_on_drop(s: &TcpStream) {
    #[allow(deprecated)]
    s.set_linger(Some(Duration::ZERO)).unwrap();
}

/// Reads one frame (`[u32 len][body]`) off `s`.
async fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    timeout(TIMEOUT, s.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let mut body = vec![0; u32::from_be_bytes(len) as usize];
    timeout(TIMEOUT, s.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_mid_frame_and_closes_during_sends_end_the_session() {
    let c = cluster(1, 1, 1, json!({}));
    let addr = c.client_addr(0).to_string();
    let witness = Witness::tcp(&addr, 60, 6).await.unwrap();
    let probe = Client::connect(&addr).await.unwrap();
    let (login, join, echo) = (
        probe.cmd("connector.main.login").unwrap(),
        probe.cmd("chat.main.join").unwrap(),
        probe.cmd("connector.main.echo").unwrap(),
    );
    for round in 0..20u64 {
        let uid = 100 + round;
        if round % 2 == 0 {
            // Logged in and joined, then half a frame and a reset (RST, not FIN).
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let mut b = BytesMut::new();
            put_frame(&mut b, TYPE_HANDSHAKE, br#"{"md5":""}"#);
            put_message(
                &mut b,
                login,
                json!({"uid": uid, "room": 1}).to_string().as_bytes(),
            );
            put_message(&mut b, join, b"{}");
            s.write_all(&b).await.unwrap();
            for _ in 0..3 {
                read_frame(&mut s).await; // the handshake, login and join replies
            }
            let mut half = BytesMut::new();
            put_message(&mut half, echo, &vec![b'h'; 1000]);
            s.write_all(&half[..500]).await.unwrap();
            reset_on_drop(&s);
            drop(s);
        } else {
            // Requests whose 256 KiB replies are being sent when the client leaves unread.
            let mut p = Client::connect(&addr).await.unwrap();
            login_join(&mut p, uid, 1).await.unwrap();
            let payload = serde_json::to_vec(&json!({"pad": "r".repeat(256 << 10)})).unwrap();
            let mut b = BytesMut::new();
            for _ in 0..8 {
                put_message(&mut b, echo, &payload);
            }
            p.send_raw(&b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await; // let some replies start
            drop(p);
        }
        // The session ended: the uid logs in again.
        let mut again = login_again(&addr, uid, 1).await;
        assert_eq!(
            again
                .request("connector.main.echo", &json!(round))
                .await
                .unwrap(),
            json!(round)
        );
    }
    witness.check("after the resets").await.unwrap();
    log_is_clean(&c, "connector-server-1");
}
