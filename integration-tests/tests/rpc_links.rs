//! RPC links over real processes (the chat-demo cluster, configured through the master's `rpc`
//! key and the connectors' entries): a peer stopped without a FIN is dropped by the link
//! heartbeat, calls to it wait in a bounded queue (`rpcMsgCacheCount`) and are flushed when it
//! comes back; `noRpcMatrix` refuses a pair of types with a clear error; a connector's
//! `interval` holds replies to batch them.

use std::time::{Duration, Instant};

use integration_tests::client::Client;
use integration_tests::cluster::{Cluster, ClusterOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

async fn login(c: &mut Client, uid: u64, room: i64) -> Value {
    let r = c
        .request("connector.main.login", &json!({"uid": uid, "room": room}))
        .await
        .unwrap();
    assert_eq!(r["code"], 0, "login {uid}: {r}");
    r
}

/// Resumes a stopped process even if the test fails half-way.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_peer_is_dropped_by_heartbeat_and_queued_calls_flush_when_it_returns() {
    let mut cluster = Cluster::start_opts(&ClusterOptions {
        tcp: 1,
        chats: 2,
        master_extra: json!({"rpc": {
            "heartbeat": 0.3, "heartbeatTimeout": 1.2, "rpcMsgCacheCount": 2,
            "timeout": 25, "reconnectDelay": 0.2
        }}),
        ..ClusterOptions::default()
    })
    .expect("cluster boots");
    let mut c = Client::connect(cluster.client_addr(0)).await.unwrap();
    // Room 0 -> chat-server-1, whose rpcEcho calls chat-server-2.
    let r = login(&mut c, 1, 0).await;
    assert_eq!(r["chatServerId"], "chat-server-1");
    assert_eq!(
        c.request("chat.main.rpcEcho", &json!({"n": 0}))
            .await
            .unwrap(),
        json!({"n": 0})
    );

    let pid = cluster.server_pids()["chat-server-2"];
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let resume = Resume(pid);
    // No FIN was sent: only the heartbeat can tell the link is dead.
    cluster
        .wait_log("chat-server-1", "heartbeat timeout")
        .unwrap();

    // Four calls while chat-server-2 is unreachable: two wait, two are refused at once.
    for n in 1..=4 {
        c.send("chat.main.rpcEcho", &json!({"n": n})).await.unwrap();
    }
    for _ in 0..2 {
        let (_, v) = c.next_message().await.unwrap();
        assert_eq!(v["code"], 1, "{v}");
        let err = v["err"].as_str().unwrap();
        assert!(
            err.contains("already wait for the link to chat-server-2"),
            "{err}"
        );
    }
    drop(resume); // SIGCONT
    // The two queued calls are flushed once the link is back, with their own bodies.
    let mut got = Vec::new();
    for _ in 0..2 {
        let (_, v) = c.next_message().await.unwrap();
        got.push(v["n"].as_i64().unwrap_or(-1));
    }
    got.sort();
    assert!(
        got.len() == 2 && got.iter().all(|n| (1..=4).contains(n)),
        "queued calls answered with their bodies: {got:?}"
    );
    // And the link keeps working.
    assert_eq!(
        c.request("chat.main.rpcEcho", &json!({"n": 5}))
            .await
            .unwrap(),
        json!({"n": 5})
    );
    cluster.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rpc_matrix_refuses_a_pair_of_types_with_a_clear_error() {
    let mut cluster = Cluster::start_opts(&ClusterOptions {
        tcp: 1,
        chats: 2,
        master_extra: json!({"rpc": {"noRpcMatrix": {"chat": ["chat"]}}}),
        ..ClusterOptions::default()
    })
    .expect("cluster boots");
    let mut c = Client::connect(cluster.client_addr(0)).await.unwrap();
    login(&mut c, 1, 0).await;
    // connector <-> chat still links: backend echo works.
    assert_eq!(
        c.request("chat.main.echo", &json!("hi")).await.unwrap(),
        json!("hi")
    );
    // chat <-> chat does not: the call fails at once, naming the rule.
    let started = Instant::now();
    let r = c
        .request("chat.main.rpcEcho", &json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(r["code"], 1, "{r}");
    assert!(r["err"].as_str().unwrap().contains("noRpcMatrix"), "{r}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        !cluster
            .log("chat-server-1")
            .contains("peer link up peer=chat-server-2"),
        "no link between chat servers"
    );
    cluster.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_interval_holds_replies_to_batch_them() {
    let interval = Duration::from_millis(400);
    let mut cluster = Cluster::start_opts(&ClusterOptions {
        tcp: 1,
        chats: 1,
        connector_extra: json!({"interval": interval.as_millis() as u64}),
        ..ClusterOptions::default()
    })
    .expect("cluster boots");
    let mut c = Client::connect(cluster.client_addr(0)).await.unwrap();
    // A burst of requests: each reply is held for the interval, none is lost or reordered.
    let started = Instant::now();
    for n in 0..5 {
        c.send("connector.main.echo", &json!(n)).await.unwrap();
    }
    for n in 0..5 {
        let (_, v) = c.next_message().await.unwrap();
        assert_eq!(v, json!(n));
    }
    assert!(
        started.elapsed() >= interval,
        "replies were held for the interval ({:?})",
        started.elapsed()
    );
    cluster.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_keep_peers_without_the_master_and_reconcile_when_it_returns() {
    let mut cluster = Cluster::start_opts(&ClusterOptions {
        tcp: 1,
        chats: 2,
        master_extra: json!({"rpc": {"reconcileGrace": 1}}),
        ..ClusterOptions::default()
    })
    .expect("cluster boots");
    let mut c = Client::connect(cluster.client_addr(0)).await.unwrap();
    login(&mut c, 1, 0).await; // chat-server-1, whose rpcEcho calls chat-server-2

    // The master dies: servers keep serving and keep their peers.
    cluster.kill_master().unwrap();
    cluster
        .wait_log("chat-server-1", "master link dropped")
        .unwrap();
    assert_eq!(
        c.request("chat.main.rpcEcho", &json!({"n": 1}))
            .await
            .unwrap(),
        json!({"n": 1}),
        "peers kept while the master is away"
    );

    // While it is away chat-server-2 dies (nobody restarts it) and leaves the config.
    let pids = cluster.server_pids();
    kill(Pid::from_raw(pids["chat-server-2"]), Signal::SIGKILL).unwrap();
    let servers = cluster.dir.path().join("config/sys/servers.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&servers).unwrap()).unwrap();
    cfg["test"]["chat"].as_array_mut().unwrap().truncate(1);
    std::fs::write(&servers, cfg.to_string()).unwrap();

    // A new master re-adopts the two survivors; after the grace period they drop the peer it
    // no longer lists (the frontend's on_remove_server runs).
    let mut again = std::process::Command::new(integration_tests::cluster::bin("chat-demo"))
        .args(["start", "-e", "test", "--dir"])
        .arg(cluster.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for id in ["connector-server-1", "chat-server-1"] {
        cluster
            .wait_log(id, "server removed server=chat-server-2")
            .unwrap();
    }
    cluster
        .wait_log("connector-server-1", "chat server gone")
        .unwrap();
    // The survivors were adopted, not restarted: same pids, and they still serve.
    let now = cluster.server_pids();
    for id in ["connector-server-1", "chat-server-1"] {
        assert_eq!(now[id], pids[id], "{id} kept its process");
    }
    assert_eq!(
        c.request("chat.main.echo", &json!("still here"))
            .await
            .unwrap(),
        json!("still here")
    );
    kill(Pid::from_raw(again.id() as i32), Signal::SIGTERM).unwrap();
    let status = again.wait().unwrap();
    assert!(status.success(), "{status}");
}
