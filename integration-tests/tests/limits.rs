//! Memory and connections bounded in bytes, before and after authentication, over real
//! processes: a never-reading client spamming 1 MiB echoes, WebSocket clients that send
//! megabytes before their handshake, the per-client rate limit (close and drop), the cap on
//! session settings, and hundreds of idle connections on the master port and a peer port
//! (`cargo test -p integration-tests --test limits -- --nocapture` prints the figures).

use std::process::Output;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use integration_tests::TIMEOUT;
use integration_tests::client::Client;
use integration_tests::cluster::{Cluster, ClusterOptions};
use integration_tests::load::{Witness, fd_count, login_join, rss_kib};
use kennel_proto::client::put_message;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// The operator CLI against `cluster`.
fn cli(cluster: &Cluster, args: &[&str]) -> Output {
    cluster.cli(args)
}

/// The peak of `pid`'s RSS (KiB), sampled every 20 ms while `f` runs.
async fn peak_rss<T>(pid: i32, f: impl std::future::Future<Output = T>) -> (T, u64) {
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
            tokio::select! {
                _ = &mut stop => return peak,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    });
    let out = f.await;
    let _ = stop_tx.send(());
    (out, sampler.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_reading_client_spamming_1_mib_echoes_is_closed_within_its_byte_budget() {
    let cluster = Cluster::start(1, 1).unwrap();
    let addr = cluster.client_addr(0).to_string();
    let witness = Witness::tcp(&addr, 50, 5).await.unwrap();
    let pid = cluster.server_pids()["connector-server-1"];
    let fds_before = fd_count(pid).unwrap();
    let rss_before = rss_kib(pid).unwrap();

    // 300 echo requests of 1 MiB (300 MiB of replies), never reading a byte back.
    let mut hog = Client::connect(&addr).await.unwrap();
    let echo = hog.cmd("connector.main.echo").unwrap();
    let payload = serde_json::to_vec(&json!({"pad": "x".repeat(1 << 20)})).unwrap();
    let mut frame = BytesMut::new();
    put_message(&mut frame, echo, &payload);
    let frame = frame.freeze();
    let ((sent, released), peak) = peak_rss(pid, async {
        let mut sent = 0;
        for _ in 0..300 {
            if timeout(Duration::from_secs(5), hog.send_raw(&frame))
                .await
                .map_or(true, |r| r.is_err())
            {
                break; // closed by the server, or no longer read: it is closing
            }
            sent += 1;
        }
        // The frontend lets go of the socket while the hog still reads nothing.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut released = false;
        while Instant::now() < deadline {
            if fd_count(pid).unwrap() <= fds_before {
                released = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (sent, released)
    })
    .await;
    let grew = peak.saturating_sub(rss_before);
    println!(
        "never-reading client, 1 MiB echoes: sent {sent}, closed at the 4 MiB sendQueueBytes \
         cap; frontend RSS {rss_before} KiB, peak {peak} KiB (+{grew} KiB)"
    );
    // The queue's 4 MiB, the frame being read and the one being written, and the
    // allocator's slack: far below the 1024-frame cap's gigabyte.
    assert!(
        grew < 24 * 1024,
        "frontend RSS grew by {grew} KiB (budget: 4 MiB queue + 20 MiB slack)"
    );
    assert!(released, "the frontend still holds the hog's socket");
    cluster
        .wait_log("connector-server-1", "sendQueueBytes 4194304): closing")
        .unwrap();
    witness.check("after the hog").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_cannot_make_the_frontend_buffer_before_their_handshake() {
    let cluster = Cluster::start_with(0, 1, 1).unwrap();
    let addr = cluster.client_addr(0).to_string();
    let witness = Witness::start(
        Client::connect_ws(&addr).await.unwrap(),
        Client::connect_ws(&addr).await.unwrap(),
        60,
        6,
    )
    .await
    .unwrap();
    let pid = cluster.server_pids()["connector-server-1"];
    let rss_before = rss_kib(pid).unwrap();
    // 20 upgraded sockets each send an 8 MiB binary message instead of a handshake.
    let junk = Bytes::from(vec![7u8; 8 << 20]);
    let ((), peak) = peak_rss(pid, async {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (url, junk) = (format!("ws://{addr}/"), junk.clone());
            tasks.push(tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                let sent = timeout(TIMEOUT, ws.send(Message::Binary(junk))).await;
                assert!(sent.is_ok(), "the server neither read nor closed");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    let grew = peak.saturating_sub(rss_before);
    println!(
        "20 websocket clients x 8 MiB before their handshake: frontend RSS {rss_before} KiB, \
         peak {peak} KiB (+{grew} KiB)"
    );
    assert!(
        grew < 16 * 1024,
        "frontend RSS grew by {grew} KiB for clients that never handshook"
    );
    cluster
        .wait_log("connector-server-1", "bytes before the handshake")
        .unwrap();
    witness.check("after the junk").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_closes_or_drops_as_configured() {
    // The TCP frontend closes past the limit, the WebSocket one drops.
    let cluster = Cluster::start_opts(&ClusterOptions {
        tcp: 1,
        ws: 1,
        chats: 1,
        connector_extra: json!({"rateLimit": {"perSecond": 20, "burst": 40, "action": "close"}}),
        ws_extra: json!({"rateLimit": {"perSecond": 20, "burst": 40, "action": "drop"}}),
        ..ClusterOptions::default()
    })
    .unwrap();
    let (tcp, ws) = (
        cluster.client_addr(0).to_string(),
        cluster.client_addr(1).to_string(),
    );
    let witness = Witness::tcp(&tcp, 70, 7).await.unwrap();

    // Close: 100 echoes at once; the burst is answered, then the connection is closed.
    let mut c = Client::connect(&tcp).await.unwrap();
    let echo = c.cmd("connector.main.echo").unwrap();
    let mut burst = BytesMut::new();
    for n in 0..100 {
        put_message(&mut burst, echo, json!(n).to_string().as_bytes());
    }
    c.send_raw(&burst).await.unwrap();
    let mut answered = 0;
    let closed = loop {
        match c.next_message().await {
            Ok(_) => answered += 1,
            Err(e) => break e.to_string(),
        }
    };
    assert!(!closed.contains("timed out"), "{closed}");
    assert!(
        (40..=45).contains(&answered),
        "{answered} of 100 answered before the close"
    );
    cluster
        .wait_log(
            "connector-server-1",
            "client over its rate limit (20 messages/s, burst 40): closing",
        )
        .unwrap();

    // Drop: same burst over WebSocket; the rest is dropped, the connection stays, and it is
    // served again once the bucket refills.
    let mut w = Client::connect_ws(&ws).await.unwrap();
    let t0 = Instant::now();
    w.send_raw(&burst).await.unwrap();
    let mut got = Vec::new();
    while let Ok(Ok((_, v))) = timeout(Duration::from_millis(700), w.next_message()).await {
        got.push(v);
    }
    let answered_ws = got.len();
    assert!(
        (40..=55).contains(&answered_ws),
        "{answered_ws} of 100 answered ({:?} after the burst)",
        t0.elapsed()
    );
    cluster
        .wait_log(
            "connector-server-2",
            "client over its rate limit (20 messages/s, burst 40): message dropped",
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = w
        .request("connector.main.echo", &json!("still here"))
        .await
        .unwrap();
    assert_eq!(r, json!("still here"));
    witness.check("after the floods").await.unwrap();
    println!(
        "rate limit 20/s burst 40: close: {answered}/100 answered, then closed; drop: \
         {answered_ws}/100 answered, the connection served on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_past_64_kib_are_refused_with_a_clear_error() {
    let cluster = Cluster::start(1, 1).unwrap();
    let mut c = Client::connect(cluster.client_addr(0)).await.unwrap();
    login_join(&mut c, 80, 8).await.unwrap();
    // chat.main.join stores the client's room in the session (it travels with every
    // forwarded message): a 70 KiB room is refused, and nothing changed.
    let big = "r".repeat(70 * 1024);
    let r = c
        .request("chat.main.join", &json!({"room": big}))
        .await
        .unwrap();
    assert_eq!(r["code"], 3, "{r}");
    let err = r["err"].as_str().unwrap_or_default();
    assert!(
        err.contains("session setting \"room\" refused") && err.contains("65536"),
        "unclear error: {err}"
    );
    let again = c.request("chat.main.join", &json!({})).await.unwrap();
    assert_eq!(
        again["room"],
        json!(8),
        "the session kept its room: {again}"
    );
    let ok = c
        .request("chat.main.join", &json!({"room": "r".repeat(1000)}))
        .await
        .unwrap();
    assert_eq!(ok["code"], 0, "{ok}");
    println!("session settings: a 70 KiB setting refused: {err}");
}

/// Opens `n` TCP connections to `port` that never send a byte, and keeps opening one every
/// 10 ms until the returned sender is dropped (a steady attacker, as well as a burst).
async fn junk(port: u16, n: usize) -> tokio::sync::oneshot::Sender<()> {
    let mut held = Vec::new();
    for _ in 0..n {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            held.push(s);
        }
    }
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut rx => return,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
                held.push(s);
            }
        }
    });
    tx
}

/// The RPC port of server `id`, from the cluster's `servers.json`.
fn rpc_port(cluster: &Cluster, id: &str) -> u16 {
    let text = std::fs::read_to_string(cluster.dir.path().join("config/sys/servers.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["test"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|list| list.as_array().unwrap())
        .find(|e| e["id"] == id)
        .and_then(|e| e["port"].as_u64())
        .unwrap() as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_junk_on_the_master_and_peer_ports_starves_neither_registrations_nor_the_cli() {
    let mut cluster = Cluster::start(1, 1).unwrap();
    let addr = cluster.client_addr(0).to_string();
    // chat-server-1 dials connector-server-1's RPC port (the smaller id dials).
    let peer_port = rpc_port(&cluster, "connector-server-1");
    let master = junk(cluster.master_port, 500).await;
    let peer = junk(peer_port, 500).await;

    // `kennel list` answers.
    let t0 = Instant::now();
    let out = cli(&cluster, &["list"]);
    let list = t0.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("chat-server-1"),
        "{out:?}"
    );
    // `kennel restart`: the server stops, starts, registers through the crowded master port,
    // and links to connector-server-1 through its crowded peer port.
    let mark = cluster.lines.lock().unwrap().len();
    let t0 = Instant::now();
    let out = cli(&cluster, &["restart", "chat-server-1"]);
    let restart = t0.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("chat-server-1 restarted and registered"),
        "{out:?}"
    );
    cluster
        .wait_line_after(mark, "server registered server=chat-server-1")
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while cluster
        .log("connector-server-1")
        .matches("peer link up peer=chat-server-1")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "chat-server-1 never linked again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let linked = t0.elapsed();
    let mut c = Client::connect(&addr).await.unwrap();
    login_join(&mut c, 90, 0).await.unwrap();
    let served = t0.elapsed();
    drop((master, peer));
    println!(
        "500 idle connections on the master port and on a peer port (and 100 more a second): \
         list {list:?}; restart (registered) {restart:?}; linked again {linked:?}; a player \
         served by it {served:?}"
    );
    assert!(list < Duration::from_secs(2), "list took {list:?}");
    assert!(restart < Duration::from_secs(2), "restart took {restart:?}");
    assert!(
        linked < Duration::from_secs(2),
        "re-linking took {linked:?}"
    );
    let log = cluster.log("connector-server-1");
    assert!(
        log.contains("too many unauthenticated connections on the peer port"),
        "{log}"
    );
    cluster.stop().unwrap();
}
