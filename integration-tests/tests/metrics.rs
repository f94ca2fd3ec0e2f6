//! Prometheus metrics and the app's own `list` columns over real processes: a chat-demo
//! cluster with `"metrics": {"port": N}` serves `GET /metrics` (servers by state, rss, client
//! counts, RPC counters that grow with `chat.main.rpcEcho`), `list --json` and `list` carry
//! the chat servers' `rooms`/`players` columns, and a cluster without the key listens on no
//! metrics port.

use std::process::Output;
use std::time::{Duration, Instant};

use integration_tests::client::Client;
use integration_tests::cluster::{Cluster, ClusterOptions, free_port};
use integration_tests::load::listening_ports;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: the suite runs in parallel on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(20);

/// `GET /metrics` over plain HTTP/1.1: (status line, body).
async fn get(port: u16, path: &str) -> std::io::Result<(String, String)> {
    tokio::time::timeout(TIMEOUT, async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        Ok((
            head.lines().next().unwrap_or("").to_owned(),
            body.to_owned(),
        ))
    })
    .await
    .unwrap_or_else(|_| panic!("GET {path} on port {port} timed out"))
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `f` accepts the text (panics with the last text after [`TIMEOUT`]).
async fn scrape_until(port: u16, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (status, body) = get(port, "/metrics").await.expect("metrics port answers");
        assert!(status.contains(" 200 "), "{status}");
        if f(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last scrape:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The operator CLI against `cluster`.
fn cli(cluster: &Cluster, args: &[&str]) -> Output {
    cluster.cli(args)
}

const C1: &str = "server=\"connector-server-1\",type=\"connector\"";
const CHAT1: &str = "server=\"chat-server-1\",type=\"chat\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_port_serves_states_resources_clients_and_rpc_counters() {
    let port = free_port();
    let mut cluster = Cluster::start_opts(&ClusterOptions {
        tcp: 1,
        chats: 2,
        master_extra: json!({"metrics": {"port": port, "host": "127.0.0.1"}}),
        ..ClusterOptions::default()
    })
    .expect("cluster boots");
    cluster
        .wait_line(&format!(
            "kennel: metrics on http://127.0.0.1:{port}/metrics"
        ))
        .unwrap();

    // Every server running, resources sampled, the frontend reporting no client yet.
    let text = scrape_until(port, "3 running servers, rss and reports", |t| {
        sample(t, "kennel_servers{state=\"running\"}") == Some(3.0)
            && sample(t, &format!("kennel_server_rss_bytes{{{CHAT1}}}")).is_some()
            && sample(t, &format!("kennel_frontend_clients{{{C1}}}")).is_some()
            && sample(t, &format!("kennel_rpc_calls_total{{{CHAT1}}}")).is_some()
    })
    .await;
    assert_eq!(
        sample(&text, "kennel_servers{state=\"crashloop\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&text, "kennel_cluster_ready"), Some(1.0));
    let rss = sample(&text, &format!("kennel_server_rss_bytes{{{CHAT1}}}")).unwrap();
    assert!(rss > 100_000.0, "rss {rss}");
    assert_eq!(
        sample(&text, &format!("kennel_frontend_clients{{{C1}}}")),
        Some(0.0)
    );
    // Backends have no client count.
    assert!(
        !text.contains("kennel_frontend_clients{server=\"chat"),
        "{text}"
    );
    assert!(text.contains("# TYPE kennel_rpc_call_duration_seconds histogram"));
    let calls_before = sample(&text, &format!("kennel_rpc_calls_total{{{CHAT1}}}")).unwrap();

    // A client connects: the frontend's count follows.
    let mut c = Client::connect(cluster.client_addr(0)).await.unwrap();
    let r = c
        .request("connector.main.login", &json!({"uid": 7, "room": 0}))
        .await
        .unwrap();
    assert_eq!(r["chatServerId"], "chat-server-1", "{r}");
    scrape_until(port, "one client on connector-server-1", |t| {
        sample(t, &format!("kennel_frontend_clients{{{C1}}}")) == Some(1.0)
    })
    .await;

    // Five rpcEcho requests: chat-server-1 calls chat-server-2 five times.
    for n in 0..5 {
        let v = c
            .request("chat.main.rpcEcho", &json!({"n": n}))
            .await
            .unwrap();
        assert_eq!(v, json!({"n": n}));
    }
    let want = calls_before + 5.0;
    let text = scrape_until(port, "5 more rpc calls on chat-server-1", |t| {
        sample(t, &format!("kennel_rpc_calls_total{{{CHAT1}}}")) >= Some(want)
    })
    .await;
    let calls = sample(&text, &format!("kennel_rpc_calls_total{{{CHAT1}}}")).unwrap();
    assert_eq!(
        sample(
            &text,
            &format!("kennel_rpc_call_duration_seconds_count{{{CHAT1}}}")
        ),
        Some(calls)
    );
    assert_eq!(
        sample(
            &text,
            &format!("kennel_rpc_call_duration_seconds_bucket{{{CHAT1},le=\"+Inf\"}}")
        ),
        Some(calls)
    );
    // Local calls finish well within 5 s: the largest finite bucket holds them all.
    assert_eq!(
        sample(
            &text,
            &format!("kennel_rpc_call_duration_seconds_bucket{{{CHAT1},le=\"5\"}}")
        ),
        Some(calls)
    );
    let sum = sample(
        &text,
        &format!("kennel_rpc_call_duration_seconds_sum{{{CHAT1}}}"),
    )
    .unwrap();
    assert!(sum > 0.0 && sum < calls * 5.0, "sum {sum}");
    // The callee made no call of its own.
    assert_eq!(
        sample(
            &text,
            "kennel_rpc_calls_total{server=\"chat-server-2\",type=\"chat\"}"
        ),
        Some(0.0)
    );

    // The app's own columns: join a room, then `list --json` and `list` show it.
    let v = c
        .request("chat.main.join", &json!({"room": 3}))
        .await
        .unwrap();
    assert_eq!(v["code"], 0, "{v}");
    let deadline = Instant::now() + TIMEOUT;
    let rows: Vec<Value> = loop {
        let out = cli(&cluster, &["list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("list --json parses");
        let chat1 = rows.iter().find(|r| r["id"] == "chat-server-1").unwrap();
        if chat1["status"]["rooms"] == "1" {
            break rows;
        }
        assert!(Instant::now() < deadline, "no rooms=1 in {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(row("chat-server-1")["status"]["players"], "1");
    assert_eq!(
        row("chat-server-2")["status"],
        json!({"players": "0", "rooms": "0"})
    );
    assert_eq!(row("connector-server-1")["status"], json!({}));
    assert_eq!(row("connector-server-1")["clients"], 1);

    let out = cli(&cluster, &["list"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = table.lines().next().unwrap();
    assert!(header.ends_with("CLIENTS  PLAYERS  ROOMS"), "{table}");
    let connector = table
        .lines()
        .find(|l| l.starts_with("connector-server-1"))
        .unwrap();
    assert!(connector.ends_with("1        -        -"), "{table}");

    // Other paths are not found.
    let (status, _) = get(port, "/nope").await.unwrap();
    assert!(status.contains(" 404 "), "{status}");
    cluster.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_key_no_metrics_port_listens() {
    let mut cluster = Cluster::start_opts(&ClusterOptions {
        tcp: 1,
        chats: 1,
        ..ClusterOptions::default()
    })
    .expect("cluster boots");
    let pid = cluster.master_pid().expect("master runs");
    // The master listens on its own port only.
    assert_eq!(listening_ports(pid), vec![cluster.master_port]);
    assert!(
        !cluster
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("metrics on")),
        "a metrics line was printed"
    );
    cluster.stop().unwrap();
}
