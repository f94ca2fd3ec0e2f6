//! End to end over real processes: the master boots the chat-demo cluster, game clients speak
//! PROTOCOL.md to the frontends, messages cross frontend -> backend -> frontends, a killed
//! server is announced to the others, and stopping the master leaves no process behind.

use std::time::{Duration, Instant};

use integration_tests::client::{Client, raw_frame};
use integration_tests::cluster::{Cluster, ROUTES};
use kennel_proto::client::route_md5;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// Logs in `uid` (room `room`) and joins the room; returns the login reply.
async fn login_join(c: &mut Client, uid: u64, room: i64) -> Value {
    integration_tests::load::login_join(c, uid, room)
        .await
        .unwrap()
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_chat_kill_a_backend_and_stop() {
    let mut cluster = Cluster::start(2, 2).expect("cluster boots");
    let ready = cluster.wait_line("kennel: cluster ready").unwrap();
    assert!(ready.contains("4 servers"), "{ready}");
    cluster
        .wait_line("kennel: clients connect to connector-server-2")
        .unwrap();

    // Three clients on two frontends, one room.
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(Client::connect(cluster.client_addr(i)).await.unwrap());
    }
    // The handshake announces the route list and its md5 (mydog-compatible).
    let routes: Vec<String> = ROUTES.iter().map(|s| s.to_string()).collect();
    assert_eq!(clients[0].routes, routes);
    assert_eq!(clients[0].handshake.md5, route_md5(&routes));

    let room = 7;
    let mut chat_server = String::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let r = login_join(c, 100 + i as u64, room).await;
        chat_server = r["chatServerId"].as_str().unwrap().to_string();
        assert_eq!(r["frontend"], json!(cluster.frontends[i % 2].0));
        assert_eq!(r["uid"], json!(100 + i as u64));
    }
    // room 7 % 2 servers -> index 1 of [chat-server-1, chat-server-2]
    assert_eq!(chat_server, "chat-server-2");

    // A second login on the same session is refused with code 2, a duplicate uid with code 1.
    let again = clients[0]
        .request("connector.main.login", &json!({"uid": 100, "room": room}))
        .await
        .unwrap();
    assert_eq!(again, json!({"code": 2, "uid": 100}));
    let mut dup = Client::connect(cluster.client_addr(0)).await.unwrap();
    let r = dup
        .request("connector.main.login", &json!({"uid": 100, "room": room}))
        .await
        .unwrap();
    assert_eq!(r, json!({"code": 1}));

    // One sends; every member (sender included) receives exactly the message plus "u".
    let msg = json!({"s": 1, "t": "hello room", "x": [1, 2, 3]});
    clients[1].send("chat.main.send", &msg).await.unwrap();
    for c in clients.iter_mut() {
        let got = c.expect_push("chat.main.onChat").await.unwrap();
        assert_eq!(
            got,
            json!({"s": 1, "t": "hello room", "x": [1, 2, 3], "u": 101})
        );
    }

    // Echo on the frontend, on the backend, and through one server-to-server RPC.
    let body = json!({"k": "v", "n": 42});
    for route in ["connector.main.echo", "chat.main.echo", "chat.main.rpcEcho"] {
        assert_eq!(
            clients[2].request(route, &body).await.unwrap(),
            body,
            "{route}"
        );
    }

    // SIGKILL one chat server: the others are told it is gone.
    let pids = cluster.server_pids();
    assert_eq!(pids.len(), 4, "{pids:?}");
    let victim = pids["chat-server-1"];
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    for id in ["connector-server-1", "connector-server-2", "chat-server-2"] {
        cluster
            .wait_log(id, "server removed server=chat-server-1")
            .unwrap();
    }
    // Clients of the surviving chat server keep chatting.
    clients[0]
        .send("chat.main.send", &json!({"t": "still here"}))
        .await
        .unwrap();
    for c in clients.iter_mut() {
        assert_eq!(
            c.expect_push("chat.main.onChat").await.unwrap(),
            json!({"t": "still here", "u": 100})
        );
    }

    // Stop: SIGTERM to the master alone stops everything; no server process survives.
    let pids: Vec<i32> = cluster.server_pids().into_values().collect();
    assert!(pids.len() >= 3);
    assert_eq!(cluster.stop().unwrap(), Some(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let survivors: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
    assert!(
        survivors.is_empty(),
        "servers survived the master's stop: {survivors:?}"
    );
    assert!(cluster.server_pids().is_empty());
    for c in clients.iter_mut() {
        c.expect_closed().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_the_offender() {
    let cluster = Cluster::start(1, 1).expect("cluster boots");
    let addr = cluster.client_addr(0).to_string();
    let mut a = Client::connect(&addr).await.unwrap();
    let mut b = Client::connect(&addr).await.unwrap();
    login_join(&mut a, 1, 3).await;
    login_join(&mut b, 2, 3).await;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("length 0", vec![0, 0, 0, 0]),
        (
            "length over maxLen",
            raw_frame(64 * 1024 * 1024, 1, &[0, 4]).to_vec(),
        ),
        ("bad type byte", raw_frame(3, 9, &[0, 0]).to_vec()),
        (
            "cmd outside the route list",
            raw_frame(5, 1, &[0, 7, b'{', b'}']).to_vec(),
        ),
        (
            "message too short for a cmd",
            raw_frame(2, 1, &[0]).to_vec(),
        ),
    ];
    for (n, (what, bytes)) in cases.into_iter().enumerate() {
        let mut bad = Client::connect(&addr).await.unwrap();
        bad.send_raw(&bytes).await.unwrap();
        bad.expect_closed()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        // Everyone else keeps chatting.
        let msg = json!({"n": n, "after": what});
        a.send("chat.main.send", &msg).await.unwrap();
        for c in [&mut a, &mut b] {
            let got = c.expect_push("chat.main.onChat").await.unwrap();
            assert_eq!(got["after"], json!(what));
            assert_eq!(got["u"], json!(1));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_handshake_limits() {
    let cluster = Cluster::start(1, 1).expect("cluster boots");
    let addr = cluster.client_addr(0).to_string();
    // More than 50 bytes of body before the handshake closes the connection.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(&raw_frame(61, 2, &[b' '; 60])).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "expected close, got {n} bytes");
    // A message before the handshake closes it too.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(&raw_frame(3, 1, &[0, 4])).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    // A handshake with a cached md5 that matches gets no route list back (kennel-client's
    // route cache sends the md5 of the list the first handshake got).
    let cache = kennel_client::RouteCache::new();
    let cached = || kennel_client::Client::builder(&addr).route_cache(cache.clone());
    let first = cached().connect_raw().await.unwrap();
    let md5 = first.handshake.reply.md5.clone();
    assert_eq!(first.handshake.sent_md5, "");
    let again = cached().connect_raw().await.unwrap();
    assert_eq!(again.handshake.sent_md5, md5);
    let v: Value = serde_json::from_slice(&again.handshake.reply_body).unwrap();
    assert_eq!(v["md5"], json!(md5));
    assert!(v.get("route").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_tcp_clients_share_a_room() {
    // connector-server-1 is TCP, connector-server-2 WebSocket.
    let cluster = Cluster::start_with(1, 1, 1).expect("cluster boots");
    let mut tcp = Client::connect(cluster.client_addr(0)).await.unwrap();
    let mut ws = Client::connect_ws(cluster.client_addr(1)).await.unwrap();
    assert_eq!(ws.routes, tcp.routes);
    assert_eq!(ws.handshake.md5, tcp.handshake.md5);
    let r = login_join(&mut ws, 21, 5).await;
    assert_eq!(r["frontend"], json!("connector-server-2"));
    login_join(&mut tcp, 22, 5).await;
    ws.send("chat.main.send", &json!({"t": "from the browser side"}))
        .await
        .unwrap();
    for c in [&mut ws, &mut tcp] {
        assert_eq!(
            c.expect_push("chat.main.onChat").await.unwrap(),
            json!({"t": "from the browser side", "u": 21})
        );
    }
    for route in ["connector.main.echo", "chat.main.echo", "chat.main.rpcEcho"] {
        assert_eq!(
            ws.request(route, &json!({"ws": true})).await.unwrap(),
            json!({"ws": true}),
            "{route}"
        );
    }
    // Several frames in one WebSocket message are all handled, in order.
    let mut batch = bytes::BytesMut::new();
    for n in 0..3 {
        kennel_proto::client::put_message(&mut batch, 4, json!({"n": n}).to_string().as_bytes());
    }
    ws.send_raw(&batch).await.unwrap();
    for n in 0..3 {
        assert_eq!(
            ws.expect_push("connector.main.echo").await.unwrap(),
            json!({"n": n})
        );
    }
    // A bad frame over WebSocket closes that client only.
    ws.send_raw(&raw_frame(3, 9, &[0, 0])).await.unwrap();
    ws.expect_closed().await.unwrap();
    assert_eq!(
        tcp.request("chat.main.echo", &json!(1)).await.unwrap(),
        json!(1)
    );
}
