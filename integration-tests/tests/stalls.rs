//! Stalled peers, over real processes: a chat server frozen with SIGSTOP (sockets open, no FIN,
//! nothing read) while a player floods it with large requests. The player's own frontend routes
//! and heartbeats must keep being answered, players of the other chat server must not notice,
//! and a link declared dead must fail what waits on it at once
//! (`cargo test -p integration-tests --test stalls -- --nocapture` prints the figures).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use integration_tests::TIMEOUT;
use integration_tests::client::Client;
use integration_tests::cluster::{Cluster, ClusterOptions, ROUTES, free_port};
use integration_tests::load::login_join;
use kennel_proto::client::{
    ClientCodec, Frame, TYPE_HANDSHAKE, heartbeat_frame, put_frame, put_message,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

/// The cmd of a route of the chat route list.
fn cmd(route: &str) -> u16 {
    ROUTES.iter().position(|r| *r == route).unwrap() as u16
}

/// What a raw player's reader saw: each frame with the time it arrived.
#[derive(Debug)]
enum Seen {
    Heartbeat,
    Message(Instant, u16, Value),
    Closed,
}

/// A logged-in player whose reading runs in its own task (so a test can write while the
/// frontend does not read, and still see every reply with its arrival time).
struct RawPlayer {
    w: OwnedWriteHalf,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl RawPlayer {
    /// Connects to `addr`, handshakes, logs `uid` in (room `room`) and joins the room.
    async fn login(addr: &str, uid: u64, room: i64) -> RawPlayer {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (r, w) = s.into_split();
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = FramedRead::new(r, ClientCodec::default());
            loop {
                let seen = match r.next().await {
                    Some(Ok(Frame::Heartbeat)) => Seen::Heartbeat,
                    Some(Ok(Frame::Message { cmd, payload })) => Seen::Message(
                        Instant::now(),
                        cmd,
                        serde_json::from_slice(&payload).unwrap_or(Value::Null),
                    ),
                    Some(Ok(Frame::Handshake(_))) => continue,
                    _ => {
                        let _ = tx.send(Seen::Closed);
                        return;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        let mut p = RawPlayer { w, seen };
        let mut hs = BytesMut::new();
        put_frame(&mut hs, TYPE_HANDSHAKE, br#"{"md5":""}"#);
        p.w.write_all(&hs).await.unwrap();
        let login = p
            .request("connector.main.login", &json!({"uid": uid, "room": room}))
            .await;
        assert_eq!(login["code"], 0, "{login}");
        let join = p.request("chat.main.join", &json!({})).await;
        assert_eq!(join["code"], 0, "{join}");
        p
    }

    fn frame(route: &str, msg: &Value) -> BytesMut {
        let mut b = BytesMut::new();
        put_message(&mut b, cmd(route), msg.to_string().as_bytes());
        b
    }

    async fn request(&mut self, route: &str, msg: &Value) -> Value {
        self.w.write_all(&Self::frame(route, msg)).await.unwrap();
        let want = cmd(route);
        loop {
            match tokio::time::timeout(TIMEOUT, self.seen.recv()).await {
                Ok(Some(Seen::Message(_, c, v))) if c == want => return v,
                Ok(Some(Seen::Closed)) | Ok(None) => panic!("closed waiting for {route}"),
                Ok(Some(_)) => {}
                Err(_) => panic!("no reply to {route} within {TIMEOUT:?}"),
            }
        }
    }
}

/// A chat.main.echo request of about `size` bytes.
fn big_echo(size: usize) -> BytesMut {
    RawPlayer::frame("chat.main.echo", &json!({"pad": "x".repeat(size)}))
}

/// Players looping small requests to `route` (each waits for its reply, 5 ms apart) until told
/// to stop; returns every latency.
fn witnesses(
    clients: Vec<Client>,
    route: &'static str,
) -> (
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<Vec<Duration>>>,
) {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let tasks = clients
        .into_iter()
        .enumerate()
        .map(|(k, mut c)| {
            let rx = rx.clone();
            tokio::spawn(async move {
                let hb = heartbeat_frame();
                let mut lat = Vec::new();
                let mut n = 0u64;
                while !*rx.borrow() {
                    n += 1;
                    if n.is_multiple_of(50) {
                        c.send_raw(&hb).await.unwrap();
                    }
                    let t0 = Instant::now();
                    let r = c.request(route, &json!({"k": k, "n": n})).await.unwrap();
                    lat.push(t0.elapsed());
                    assert_eq!(r, json!({"k": k, "n": n}));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                lat
            })
        })
        .collect();
    (stop, tasks)
}

fn p99(mut lat: Vec<Duration>) -> (Duration, Duration, usize) {
    lat.sort();
    let n = lat.len();
    (lat[n * 99 / 100], lat[n - 1], n)
}

/// The operator CLI against `cluster`, which must succeed; its stdout.
fn cli(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.cli(args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The state `list --json` shows for server `id`.
fn state(cluster: &Cluster, id: &str) -> String {
    let rows: Value = serde_json::from_str(&cli(cluster, &["list", "--json"])).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// Polls `list --json` until server `id` is in `want`; how long it took.
async fn until_state(cluster: &Cluster, id: &str, want: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        let now = state(cluster, id);
        if now == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < TIMEOUT,
            "{id} is still {now:?}, not {want:?}, after {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET /metrics` on the master's metrics port: the body.
async fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut raw))
        .await
        .expect("metrics answer in time")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    raw.split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default()
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Writes `n` copies of `big` to `w`, a heartbeat after every 10, then a frontend echo of
/// `label`; returns the writer and the heartbeats written.
async fn flood(
    mut w: OwnedWriteHalf,
    big: Bytes,
    n: usize,
    label: &str,
) -> (OwnedWriteHalf, usize) {
    let hb = heartbeat_frame();
    let mut heartbeats = 0;
    for i in 0..n {
        w.write_all(&big).await.unwrap();
        if i % 10 == 9 {
            w.write_all(&hb).await.unwrap();
            heartbeats += 1;
        }
    }
    let echo = RawPlayer::frame("connector.main.echo", &json!(label));
    w.write_all(&echo).await.unwrap();
    (w, heartbeats)
}

/// Waits for the frontend echo `label` on `seen`: when it arrived, and the heartbeat
/// replies seen before it. `None` if it did not come within [`TIMEOUT`].
async fn echo_of(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    label: &str,
) -> (Option<Instant>, usize) {
    let echo_cmd = cmd("connector.main.echo");
    let mut heartbeats = 0;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(Seen::Heartbeat)) => heartbeats += 1,
            Ok(Some(Seen::Message(at, c, v))) if c == echo_cmd => {
                assert_eq!(v, json!(label));
                return (Some(at), heartbeats);
            }
            Ok(Some(Seen::Message(..))) => {}
            Ok(Some(Seen::Closed)) | Ok(None) => panic!("the flooding player was closed"),
            Err(_) => return (None, heartbeats),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backend_never_freezes_the_player_who_floods_it() {
    const RPC_TIMEOUT: u64 = 3;
    const FLOOD: usize = 200;
    const SIZE: usize = 1 << 20;
    let metrics = free_port();
    let cluster = Cluster::start_opts(&ClusterOptions {
        tcp: 1,
        chats: 2,
        master_extra: json!({"rpc": {"timeout": RPC_TIMEOUT}, "metrics": {"port": metrics}}),
        ..ClusterOptions::default()
    })
    .unwrap();
    let addr = cluster.client_addr(0).to_string();
    // Room 0 is on chat-server-1, room 1 on chat-server-2.
    let mut flooder = RawPlayer::login(&addr, 100, 0).await;
    let mut others = Vec::new();
    for uid in 200..204 {
        let mut c = Client::connect(&addr).await.unwrap();
        login_join(&mut c, uid, 1).await.unwrap();
        others.push(c);
    }
    let (stop_witnesses, witness_tasks) = witnesses(others, "chat.main.echo");

    let frozen = Pid::from_raw(cluster.server_pids()["chat-server-1"]);
    kill(frozen, Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();

    // Wave 1: FLOOD requests of 1 MiB to the frozen backend, a heartbeat after every 10, then
    // a frontend echo. Written by its own task: a frontend that stops reading the player
    // blocks these writes. Encoded once: the test's own JSON encoding (a debug build) must not
    // pace the flood.
    let big = big_echo(SIZE).freeze();
    let bound = Duration::from_secs(RPC_TIMEOUT + 2);
    let t0 = Instant::now();
    let writer = tokio::spawn(flood(flooder.w, big.clone(), FLOOD, "wave 1"));
    let (echoed, heartbeats) = echo_of(&mut flooder.seen, "wave 1").await;
    let written = tokio::time::timeout(Duration::from_secs(1), writer).await;
    let echoed = echoed.unwrap_or_else(|| {
        panic!(
            "the flooding player's frontend echo was not answered within {TIMEOUT:?} of the flood \
             (flood written: {}; {heartbeats} heartbeats answered)",
            written.is_ok()
        )
    }) - t0;
    let (w, sent_heartbeats) = written.expect("the flood was written").unwrap();
    assert!(
        echoed <= bound,
        "the frontend echo after the flood came {echoed:?} after its start (bound {bound:?})"
    );
    assert_eq!(
        heartbeats, sent_heartbeats,
        "every heartbeat of the flood is answered before the echo"
    );
    // Refused with a logged reason naming the route and the player.
    let log = cluster.log("connector-server-1");
    let line = log
        .lines()
        .find(|l| l.contains("cannot forward") && l.contains("chat.main.echo"))
        .unwrap_or_else(|| panic!("no forward refusal naming the route:\n{log}"));
    assert!(line.contains("uid=100"), "{line}");

    // The master shows the frozen server as unreachable (it sends no reports).
    let unreachable = until_state(&cluster, "chat-server-1", "unreachable").await;
    let unreachable = unreachable.max(stopped.elapsed());

    // Wave 2, once senders have found no room for longer than rpc.timeout: the link is
    // congested, every forward to it fails at once, the player is still answered.
    tokio::time::sleep_until(
        (t0 + Duration::from_secs(RPC_TIMEOUT) + Duration::from_millis(500)).into(),
    )
    .await;
    let t2 = Instant::now();
    let writer = tokio::spawn(flood(w, big, FLOOD / 4, "wave 2"));
    let (echoed2, _) = echo_of(&mut flooder.seen, "wave 2").await;
    let echoed2 = echoed2.expect("wave 2's frontend echo was answered") - t2;
    flooder.w = writer.await.unwrap().0;
    assert!(
        echoed2 <= Duration::from_secs(2),
        "the frontend echo after wave 2 came {echoed2:?} after it started"
    );
    cluster
        .wait_log("connector-server-1", "chat-server-1 is congested")
        .unwrap();

    // Counted: connector-server-1 reports what it dropped, the master exports it.
    let series =
        "kennel_dropped_total{server=\"connector-server-1\",type=\"connector\",reason=\"forward\"}";
    let deadline = Instant::now() + TIMEOUT;
    let dropped = loop {
        let n = sample(&scrape(metrics).await, series).unwrap_or(0.0);
        if n >= FLOOD as f64 {
            break n;
        }
        assert!(Instant::now() < deadline, "{series} is {n}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Let go of the flooder (its backlog's replies would only fill its queue), then resume.
    drop(flooder);
    kill(frozen, Signal::SIGCONT).unwrap();
    let resumed = Instant::now();
    // It serves again once it has read its backlog (until then its link stays congested and
    // forwards to it are refused at once): a player asks every 500 ms until answered.
    let mut back = Client::connect(&addr).await.unwrap();
    let login = back
        .request("connector.main.login", &json!({"uid": 101, "room": 0}))
        .await
        .unwrap();
    assert_eq!(login["chatServerId"], "chat-server-1", "{login}");
    let mut attempts = 0;
    loop {
        attempts += 1;
        let msg = json!("back");
        let ask = back.request("chat.main.echo", &msg);
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(500), ask).await {
            assert_eq!(r.unwrap(), json!("back"));
            break;
        }
        assert!(
            resumed.elapsed() < TIMEOUT,
            "chat-server-1 never served again after SIGCONT ({attempts} attempts)"
        );
    }
    let serving_again = resumed.elapsed();

    stop_witnesses.send(true).unwrap();
    let mut all = Vec::new();
    for t in witness_tasks {
        all.extend(t.await.unwrap());
    }
    let (p99, max, n) = p99(all);
    until_state(&cluster, "chat-server-1", "running").await;
    println!(
        "stopped backend, flood of {FLOOD} x 1 MiB: frontend echo answered {echoed:?} after the \
         flood started (bound {bound:?}), {heartbeats} heartbeats answered; shown unreachable \
         {unreachable:?} after the stop; wave 2 past rpc.timeout answered in {echoed2:?}; \
         {dropped} forwards counted as dropped; other backend's players: {n} requests, p99 \
         {p99:?}, max {max:?}; serving again {serving_again:?} after SIGCONT ({attempts} attempts)"
    );
    if std::env::var("STALLS_LOG").is_ok() {
        println!("{}", cluster.log("connector-server-1"));
    }
    assert!(
        p99 < Duration::from_millis(100),
        "players of the other backend: p99 {p99:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_declared_dead_fails_the_calls_waiting_on_it_at_once() {
    // Calls may wait 20 s; the link is declared dead after 3 s of silence.
    const CALLS: usize = 40;
    let cluster = Cluster::start_opts(&ClusterOptions {
        tcp: 1,
        chats: 2,
        master_extra: json!({"rpc": {"timeout": 20, "heartbeat": 1, "heartbeatTimeout": 3}}),
        ..ClusterOptions::default()
    })
    .unwrap();
    let addr = cluster.client_addr(0).to_string();
    // A player of chat-server-2, whose chat.main.rpcEcho calls chat-server-1.
    let mut p = RawPlayer::login(&addr, 300, 1).await;
    let frozen = Pid::from_raw(cluster.server_pids()["chat-server-1"]);
    kill(frozen, Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();

    // 40 calls of 1 MiB fill chat-server-2's link to the frozen server (socket buffers, then
    // the link's own): the later ones wait for room.
    let big = RawPlayer::frame("chat.main.rpcEcho", &json!({"pad": "x".repeat(1 << 20)}));
    for _ in 0..CALLS {
        p.w.write_all(&big).await.unwrap();
    }
    let rpc_echo = cmd("chat.main.rpcEcho");
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while answers.len() < CALLS {
        match tokio::time::timeout_at(deadline, p.seen.recv()).await {
            Ok(Some(Seen::Message(at, c, v))) if c == rpc_echo => answers.push((at - t0, v)),
            Ok(Some(Seen::Closed)) | Ok(None) => panic!("the player was closed"),
            Ok(Some(_)) => {}
            Err(_) => panic!(
                "{} of {CALLS} calls to the frozen server answered within {TIMEOUT:?}: the others \
                 still wait on a link declared dead: {answers:?}\n{}\n{}",
                answers.len(),
                cluster.log("connector-server-1"),
                cluster.log("chat-server-2")
            ),
        }
    }
    let last = answers.iter().map(|(t, _)| *t).max().unwrap();
    for (_, v) in &answers {
        assert_eq!(v["code"], 1, "{v}");
        let err = v["err"].as_str().unwrap_or_default();
        assert!(err.contains("chat-server-1"), "unclear error: {v}");
    }
    cluster
        .wait_log("chat-server-2", "peer link silent")
        .unwrap();
    // Declared dead within heartbeatTimeout + one heartbeat period; its calls fail then, not at
    // their 20 s timeout.
    assert!(
        last < Duration::from_secs(8),
        "the last call to the frozen server failed {last:?} after the stop"
    );
    let errors: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(_, v)| v["err"].as_str().unwrap_or_default().to_owned())
        .collect();

    kill(frozen, Signal::SIGCONT).unwrap();
    let resumed = Instant::now();
    loop {
        let r = p.request("chat.main.rpcEcho", &json!({"n": 1})).await;
        if r == json!({"n": 1}) {
            break;
        }
        assert!(resumed.elapsed() < TIMEOUT, "rpc never worked again: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "link declared dead: {CALLS} calls of 1 MiB to the stopped server all failed within \
         {last:?} of the stop (rpc timeout 20 s, heartbeat timeout 3 s): {errors:?}; rpc works \
         again {:?} after SIGCONT",
        resumed.elapsed()
    );
}
