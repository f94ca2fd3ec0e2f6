//! Who may stop a cluster, over real processes.
//!
//! - A refusal from someone who has not proven the secret is not a verdict: with the master
//!   SIGKILLed and a fake listener on its port refusing every `Hello` (no MAC, anyone can send
//!   that), every server keeps running with the same pid, players keep chatting, and a real
//!   master started afterwards adopts the same pids.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use integration_tests::TIMEOUT;
use integration_tests::cluster::Cluster;
use integration_tests::load::Witness;
use kennel_proto::frame::{AUTH_MAX_FRAME, length_codec};
use kennel_proto::msg::{Challenge, Hello};
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// How long the fake master refuses every server.
const SPOOF_FOR: Duration = Duration::from_secs(12);

/// The witness, or a panic naming why it could not log in.
fn witness(w: anyhow::Result<Witness>) -> Witness {
    w.unwrap_or_else(|e| panic!("witness: {e:#}"))
}

/// Binds `port` on 127.0.0.1, retrying while the killed master's socket is still going away.
async fn bind_retrying(port: u16) -> TcpListener {
    let t0 = Instant::now();
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(e) if t0.elapsed() < TIMEOUT => {
                eprintln!("bind 127.0.0.1:{port}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind the master port {port}: {e}"),
        }
    }
}

/// A listener that answers every `Hello` with an unauthenticated refusal (a `Challenge` whose
/// `refused` is set and that carries no MAC) and closes; counts the refusals per dialer id.
async fn fake_master(listener: TcpListener, refused: Arc<Mutex<HashMap<String, usize>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let refused = refused.clone();
        tokio::spawn(async move {
            let mut link = Framed::new(stream, length_codec(AUTH_MAX_FRAME));
            let Ok(Some(Ok(bytes))) = tokio::time::timeout(TIMEOUT, link.next()).await else {
                return;
            };
            let Ok(hello) = Hello::decode(bytes.freeze()) else {
                return;
            };
            let no = Challenge {
                refused: format!("already registered: {} (spoofed)", hello.id),
                ..Default::default()
            };
            if link.send(Bytes::from(no.encode_to_vec())).await.is_ok() {
                *refused.lock().unwrap().entry(hello.id).or_default() += 1;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_refusal_on_the_master_port_stops_no_server() {
    let mut cluster = Cluster::start(2, 2).unwrap();
    // Room 0 lives on one chat server, room 1 on the other.
    let w0 = witness(Witness::tcp(cluster.client_addr(0), 100, 0).await);
    let w1 = witness(Witness::tcp(cluster.client_addr(1), 200, 1).await);
    w0.check("before").await.unwrap();
    w1.check("before").await.unwrap();
    let pids = cluster.server_pids();
    assert_eq!(pids.len(), 4, "{pids:?}");

    cluster.kill_master().unwrap();
    let refused = Arc::new(Mutex::new(HashMap::new()));
    let fake = tokio::spawn(fake_master(
        bind_retrying(cluster.master_port).await,
        refused.clone(),
    ));
    let t0 = Instant::now();
    let mut rounds = 0;
    while t0.elapsed() < SPOOF_FOR {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cluster.server_pids();
        for (id, pid) in &pids {
            assert_eq!(
                now.get(id),
                Some(pid),
                "{id} (pid {pid}) is gone {:?} into the spoofed refusals (refused so far: {:?}); its log:\n{}",
                t0.elapsed(),
                refused.lock().unwrap(),
                cluster.log(id)
            );
        }
        w0.check(&format!("spoofed {rounds}")).await.unwrap();
        w1.check(&format!("spoofed {rounds}")).await.unwrap();
        rounds += 1;
    }
    fake.abort();
    let refused = refused.lock().unwrap().clone();
    for id in pids.keys() {
        // Refused again and again: each server kept retrying, with backoff (at most one try
        // per 100 ms .. 2 s), instead of ending.
        let n = refused.get(id).copied().unwrap_or(0);
        assert!(
            (3..=SPOOF_FOR.as_millis() as usize / 100).contains(&n),
            "{id} was refused {n} times in {SPOOF_FOR:?}: {refused:?}"
        );
        assert!(
            cluster
                .log(id)
                .contains("before proving it knows the secret"),
            "{id} did not log the untrusted refusal:\n{}",
            cluster.log(id)
        );
    }

    // A real master adopts the same processes.
    let mark = cluster.lines.lock().unwrap().len();
    cluster.restart_master().unwrap();
    cluster
        .wait_line_after(mark, "adopted 4 running servers")
        .unwrap();
    cluster
        .wait_line_after(mark, "kennel: cluster ready")
        .unwrap();
    assert_eq!(
        cluster.server_pids(),
        pids,
        "servers were replaced, not adopted"
    );
    w0.check("adopted").await.unwrap();
    w1.check("adopted").await.unwrap();
    println!(
        "spoofed refusals for {SPOOF_FOR:?}: {refused:?}; {rounds} chat rounds in both rooms meanwhile; \
         the new master adopted the same 4 pids"
    );
}
