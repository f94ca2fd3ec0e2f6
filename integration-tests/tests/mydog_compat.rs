//! One game client, unchanged, drives both the original Node.js mydog 2.3.0 chat peer and
//! kennel's chat-demo: the same script ([`drive`]) runs against each cluster (2 connectors + 2
//! chat servers) and the two transcripts of replies and pushes must be identical.
//!
//! Needs `node` and `npm` on PATH (and the npm registry on first run); without them the test
//! fails, unless `KENNEL_SKIP_MYDOG=1`, when it says why and passes.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use integration_tests::client::Client;
use integration_tests::cluster::{Cluster, ROUTES};
use integration_tests::mydog::{self, MydogPeer};
use kennel_proto::client::route_md5;
use serde_json::{Value, json};

/// What the client saw, in order: (`c<i> <route>`, the JSON it received).
type Transcript = Vec<(String, Value)>;

/// The chat contract, step by step, over the frontends at `addrs` (client `i` uses
/// `addrs[i % len]`). Checks the contract as it goes and returns everything received.
async fn drive(addrs: &[String]) -> Result<Transcript> {
    let addr = |i: usize| addrs[i % addrs.len()].as_str();
    let routes: Vec<String> = ROUTES.iter().map(|s| s.to_string()).collect();
    let mut t: Transcript = Vec::new();

    // Three clients across the frontends; the handshake carries the route list and its md5.
    let mut clients = Vec::new();
    for i in 0..3 {
        let c = Client::connect(addr(i))
            .await
            .with_context(|| format!("client {i} connects to {}", addr(i)))?;
        ensure!(c.routes == routes, "client {i}: route list {:?}", c.routes);
        ensure!(
            c.handshake.md5 == route_md5(&c.routes),
            "client {i}: md5 {} is not the md5 of the route list",
            c.handshake.md5
        );
        t.push((
            format!("c{i} handshake"),
            serde_json::to_value(&c.handshake)?,
        ));
        clients.push(c);
    }

    // Log in uids 501..503 in room 4, then join it (sizes 1, 2, 3).
    for (i, c) in clients.iter_mut().enumerate() {
        let uid = 501 + i as u64;
        let r = c
            .request("connector.main.login", &json!({"uid": uid, "room": 4}))
            .await?;
        ensure!(
            r["code"] == 0 && r["uid"] == uid,
            "client {i}: login {uid}: {r}"
        );
        t.push((format!("c{i} connector.main.login"), r));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.request("chat.main.join", &json!({})).await?;
        ensure!(r["code"] == 0 && r["room"] == 4, "client {i}: join: {r}");
        t.push((format!("c{i} chat.main.join"), r));
    }

    // One message; every member, the sender included, gets it plus the sender's uid.
    let msg = json!({"s": 1, "t": "hi", "x": [1, 2]});
    clients[0].send("chat.main.send", &msg).await?;
    for (i, c) in clients.iter_mut().enumerate() {
        let got = c.expect_push("chat.main.onChat").await?;
        ensure!(
            got == json!({"s": 1, "t": "hi", "x": [1, 2], "u": 501}),
            "client {i}: onChat {got}"
        );
        t.push((format!("c{i} chat.main.onChat"), got));
    }

    // Echo on the frontend, on the chat server, and through one chat -> chat RPC, from every
    // client (so from both frontends).
    let body = json!({
        "a": {"b": [1, -2, 3.5, true, false, null, "x"], "c": {"d": {"e": []}}, "f": {}},
        "s": "\u{fc} \u{2713} \" \\ / \n \u{1f600}",
        "big": 9_007_199_254_740_991_u64,
        "neg": -0.25,
        "exp": 1.5e300,
        "n": [[[[0]]]],
    });
    for (i, c) in clients.iter_mut().enumerate() {
        for route in ["connector.main.echo", "chat.main.echo", "chat.main.rpcEcho"] {
            let r = c.request(route, &body).await?;
            ensure!(r == body, "client {i}: {route} answered {r}");
            t.push((format!("c{i} {route}"), r));
        }
    }

    // A second login on the same session: code 2 with the bound uid.
    let r = clients[0]
        .request("connector.main.login", &json!({"uid": 501, "room": 4}))
        .await?;
    ensure!(r == json!({"code": 2, "uid": 501}), "login again: {r}");
    t.push(("c0 connector.main.login (again)".into(), r));

    // The same uid from another connection to the same frontend: code 1.
    let mut dup = Client::connect(addr(0)).await?;
    let r = dup
        .request("connector.main.login", &json!({"uid": 501, "room": 4}))
        .await?;
    ensure!(r == json!({"code": 1}), "duplicate login: {r}");
    t.push(("c3 connector.main.login (duplicate uid)".into(), r));
    Ok(t)
}

/// The transcript, one entry a line.
fn show(t: &Transcript) -> String {
    t.iter().map(|(k, v)| format!("  {k}: {v}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_drives_mydog_and_kennel_alike() {
    if let Err(why) = mydog::node_and_npm() {
        if std::env::var(mydog::SKIP_ENV).is_ok_and(|v| v == "1") {
            eprintln!(
                "skipping the mydog comparison ({}=1): {why}",
                mydog::SKIP_ENV
            );
            return;
        }
        panic!(
            "the mydog comparison needs node and npm on PATH: {why} \
             (set {}=1 to skip it)",
            mydog::SKIP_ENV
        );
    }

    let t0 = Instant::now();
    let peer = MydogPeer::start(2, 2).expect("the mydog peer boots");
    eprintln!("mydog peer ready in {:?}", t0.elapsed());
    let addrs: Vec<String> = (0..2).map(|i| peer.client_addr(i).to_string()).collect();
    let from_mydog = drive(&addrs).await;
    drop(peer);
    let from_mydog = from_mydog.expect("the client drives mydog");

    let t1 = Instant::now();
    let cluster = Cluster::start(2, 2).expect("the kennel cluster boots");
    eprintln!("kennel cluster ready in {:?}", t1.elapsed());
    let addrs: Vec<String> = (0..2).map(|i| cluster.client_addr(i).to_string()).collect();
    let from_kennel = drive(&addrs).await.expect("the client drives kennel");
    drop(cluster);

    // Every entry compared as serialized JSON text: numbers by kind and value (`1` is not
    // `1.0`), and key order too when serde_json keeps it (its `preserve_order` feature).
    let text = |t: &Transcript| -> Vec<String> {
        t.iter()
            .map(|(k, v)| format!("{k}: {}", serde_json::to_string(v).unwrap()))
            .collect()
    };
    let (m, k) = (text(&from_mydog), text(&from_kennel));
    if m != k {
        let mut diff = String::new();
        for i in 0..m.len().max(k.len()) {
            let (a, b) = (m.get(i), k.get(i));
            if a != b {
                diff += &format!("  #{i}\n    mydog:  {a:?}\n    kennel: {b:?}\n");
            }
        }
        panic!(
            "kennel answered the same client differently from mydog:\n{diff}\
             mydog transcript:\n{}kennel transcript:\n{}",
            show(&from_mydog),
            show(&from_kennel)
        );
    }
    eprintln!(
        "{} identical entries from mydog and kennel in {:?}:\n{}",
        m.len(),
        t0.elapsed(),
        show(&from_mydog)
    );
}
