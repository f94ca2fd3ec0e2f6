//! kennel-client against a real chat-demo cluster (TCP and WebSocket frontends): login, join,
//! send and pushes; requests matched per cmd under concurrency; request timeouts; unknown
//! routes; the md5 route cache; closed connections; heartbeats (kept alive by a real frontend,
//! dead-connection detection against a silent server on a real socket).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use integration_tests::cluster::{Cluster, ClusterOptions, ROUTES};
use kennel_client::{Client, Error, Frame, RouteCache};
use kennel_proto::client::{ClientCodec, TYPE_HANDSHAKE, put_frame, route_md5};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

/// Every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginReply {
    code: i64,
    uid: u64,
    chat_server_id: String,
    frontend: String,
}

async fn login_join(c: &Client, uid: u64, room: i64) -> LoginReply {
    let r: LoginReply = c
        .request("connector.main.login", &json!({"uid": uid, "room": room}))
        .await
        .unwrap();
    assert_eq!((r.code, r.uid), (0, uid), "login {uid}: {r:?}");
    let j: Value = c.request("chat.main.join", &json!({})).await.unwrap();
    assert_eq!(j["code"], 0, "join {uid}: {j}");
    assert_eq!(j["room"], json!(room));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_over_tcp_and_ws_with_pushes_timeouts_and_route_cache() {
    let cluster = Cluster::start_with(1, 1, 2).expect("cluster boots");
    cluster.wait_meshed(WAIT).unwrap();
    let (tcp_addr, ws_addr) = (cluster.client_addr(0), cluster.client_addr(1));
    let routes: Vec<String> = ROUTES.iter().map(|s| s.to_string()).collect();

    // --- md5 route cache: the first handshake gets the list, the second sends its md5 and
    // the server leaves the list out; both transports.
    let cache = RouteCache::new();
    for (addr, ws) in [(tcp_addr, false), (ws_addr, true)] {
        let b = || {
            let b = Client::builder(addr).route_cache(cache.clone());
            if ws { b.ws() } else { b }
        };
        let first = b().connect().await.unwrap();
        assert_eq!(first.handshake().sent_md5, "");
        assert_eq!(first.handshake().reply.route.as_ref(), Some(&routes));
        assert_eq!(first.routes().md5(), route_md5(&routes));
        first.close().await;
        let second = b().connect().await.unwrap();
        assert_eq!(second.handshake().sent_md5, route_md5(&routes));
        assert!(
            second.handshake().reply.route.is_none(),
            "the server resent the list: {:?}",
            second.handshake().reply
        );
        assert_eq!(second.routes().list(), &routes[..]);
        // The cached list maps names to the right cmds: an echo round-trips.
        let v: Value = second
            .request("connector.main.echo", &json!({"ws": ws}))
            .await
            .unwrap();
        assert_eq!(v, json!({"ws": ws}));
    }

    // --- login / join / send: one TCP and one WS client in one room (one chat server).
    let a = Client::connect(tcp_addr).await.unwrap();
    let b = Client::connect_ws(ws_addr).await.unwrap();
    let mut a_chat = a.subscribe("chat.main.onChat").unwrap();
    let (btx, mut brx) = tokio::sync::mpsc::unbounded_channel();
    b.on("chat.main.onChat", move |p| {
        let _ = btx.send(p.json::<Value>());
    })
    .unwrap();
    let (ra, rb) = (login_join(&a, 501, 4).await, login_join(&b, 502, 4).await);
    assert_eq!(ra.chat_server_id, rb.chat_server_id);
    assert_eq!(ra.chat_server_id, "chat-server-1"); // room 4 % 2 servers -> index 0
    assert_eq!(ra.frontend, "connector-server-1");
    assert_eq!(rb.frontend, "connector-server-2");

    b.notify("chat.main.send", &json!({"t": "from ws"}))
        .unwrap();
    a.notify("chat.main.send", &json!({"t": "from tcp"}))
        .unwrap();
    let mut at_a = Vec::new();
    for _ in 0..2 {
        at_a.push(a_chat.recv_json::<Value>(WAIT).await.unwrap());
    }
    let mut at_b = Vec::new();
    for _ in 0..2 {
        let got = tokio::time::timeout(WAIT, brx.recv())
            .await
            .unwrap()
            .unwrap();
        at_b.push(got.unwrap());
    }
    for got in [&at_a, &at_b] {
        assert!(got.contains(&json!({"t": "from ws", "u": 502})), "{got:?}");
        assert!(got.contains(&json!({"t": "from tcp", "u": 501})), "{got:?}");
    }
    assert_eq!(a.unhandled_pushes(), 0);

    // --- many concurrent requests from clones of one client, on two cmds (frontend echo and
    // backend echo) interleaved: each caller gets its own payload back.
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        let route = if i % 3 == 0 {
            "chat.main.echo"
        } else {
            "connector.main.echo"
        };
        tasks.push(tokio::spawn(async move {
            let v: Value = c.request(route, &json!({"i": i})).await.unwrap();
            (i, v)
        }));
    }
    for t in tasks {
        let (i, v) = t.await.unwrap();
        assert_eq!(v, json!({"i": i}));
    }

    // --- a request the server never answers (chat.main.send has no reply) times out...
    let started = Instant::now();
    let err = a
        .request_timeout::<_, Value>(
            "chat.main.send",
            &json!({"x": 1}),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(err.to_string().contains("chat.main.send"), "{err}");
    // ... while that send still reached the room as a push, and the connection works.
    assert_eq!(
        a_chat.recv_json::<Value>(WAIT).await.unwrap(),
        json!({"x": 1, "u": 501})
    );
    let v: Value = a.request("connector.main.echo", &json!([1])).await.unwrap();
    assert_eq!(v, json!([1]));

    // --- an unknown route fails at once, names the route, and sends nothing.
    let err = a
        .request::<_, Value>("chat.main.nope", &json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownRoute(r) if r == "chat.main.nope"),
        "{err}"
    );
    assert!(matches!(
        a.notify("nope", &json!({})),
        Err(Error::UnknownRoute(_))
    ));
    assert!(matches!(a.subscribe("nope"), Err(Error::UnknownRoute(_))));

    // --- a reply that does not fit the requested type is a Decode error naming the route.
    let err = a
        .request::<_, LoginReply>("connector.main.echo", &json!({"code": "x"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Decode { what, .. } if what.contains("connector.main.echo")),
        "{err}"
    );

    // --- close: later requests fail with Closed, the push stream ends.
    a.close().await;
    assert!(a.is_closed());
    let err = a
        .request::<_, Value>("connector.main.echo", &json!(1))
        .await
        .unwrap_err();
    assert!(err.is_closed(), "{err}");
    assert!(matches!(
        a_chat.recv_timeout(WAIT).await,
        Err(Error::Closed(_))
    ));
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_frontend_fails_waiting_requests_with_closed() {
    let cluster = Cluster::start_with(1, 0, 1).expect("cluster boots");
    cluster.wait_meshed(WAIT).unwrap();
    let c = Client::connect(cluster.client_addr(0)).await.unwrap();
    login_join(&c, 7, 1).await;
    let mut pushes = c.subscribe("chat.main.onChat").unwrap();
    // A request nobody answers is waiting when the frontend dies.
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { c.request::<_, Value>("chat.main.send", &json!({})).await })
    };
    // Make sure the request is on the wire before the kill: a push after it comes back.
    assert_eq!(
        pushes.recv_json::<Value>(WAIT).await.unwrap(),
        json!({"u": 7})
    );
    let pid = cluster.server_pids()["connector-server-1"];
    let started = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();

    // Closed by the server's FIN or reset: either way a reason, and the handle says closed.
    let reason = tokio::time::timeout(WAIT, c.closed()).await.unwrap();
    assert!(!reason.is_empty() && c.is_closed(), "{reason}");
    let err = tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(err.is_closed(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "noticed late");
    let err = c
        .request::<_, Value>("connector.main.echo", &json!(1))
        .await
        .unwrap_err();
    assert!(err.is_closed(), "{err}");
    assert!(pushes.recv().await.is_none(), "the push stream ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_quiet_client_connected() {
    // Frontends with a 1 s heartbeat close a connection silent for 2 s.
    let opts = ClusterOptions::new(1, 1, 1).connector_key("heartbeat", json!(1));
    let cluster = Cluster::start_opts(&opts).expect("cluster boots");

    // Control: a raw connection that never sends a heartbeat is closed by the server.
    let raw = Client::builder(cluster.client_addr(0))
        .no_route_cache()
        .connect_raw()
        .await
        .unwrap();
    assert_eq!(raw.handshake.reply.heartbeat, 1);
    let mut rd = raw.reader;
    let started = Instant::now();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match rd.next().await {
                Ok(Frame::Heartbeat) | Ok(Frame::Message { .. }) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the server closes a silent connection");
    assert!(end.is_err(), "{end:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // The client sends heartbeats on its own: idle for 3.5 s (past the server's 2 s limit),
    // it is still connected and answers, over TCP and WebSocket.
    let tcp = Client::connect(cluster.client_addr(0)).await.unwrap();
    let ws = Client::connect_ws(cluster.client_addr(1)).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(3500), tcp.closed()).await;
    assert!(
        quiet.is_err(),
        "closed while idle: {:?}",
        tcp.closed_reason()
    );
    for c in [&tcp, &ws] {
        assert!(!c.is_closed(), "{:?}", c.closed_reason());
        let v: Value = c
            .request("connector.main.echo", &json!("alive"))
            .await
            .unwrap();
        assert_eq!(v, json!("alive"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_detected_dead_and_the_client_sends_heartbeats() {
    // A server that handshakes (heartbeat 1 s), then reads everything and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut codec = ClientCodec::default();
        let mut buf = BytesMut::new();
        let mut heartbeats = 0;
        let mut handshaken = false;
        loop {
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                match f {
                    Frame::Handshake(_) if !handshaken => {
                        handshaken = true;
                        let mut out = BytesMut::new();
                        let body = json!({"md5": "m", "route": ["a.b.c"], "heartbeat": 1});
                        put_frame(&mut out, TYPE_HANDSHAKE, body.to_string().as_bytes());
                        s.write_all(&out).await.unwrap();
                    }
                    Frame::Heartbeat => heartbeats += 1,
                    _ => {}
                }
            }
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return heartbeats;
            }
        }
    });

    let c = Client::builder(&addr)
        .no_route_cache()
        .request_timeout(WAIT)
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let err = c
        .request::<_, Value>("a.b.c", &json!({}))
        .await
        .unwrap_err();
    let after = started.elapsed();
    assert!(err.is_closed(), "{err}");
    assert!(err.to_string().contains("heartbeat"), "{err}");
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(10),
        "dead after {after:?}"
    );
    // The client closed its side; the server saw at least one heartbeat before that.
    let heartbeats = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert!(heartbeats >= 1, "no heartbeat sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_are_handshake_errors() {
    // A server that answers the handshake with a message frame, and one with junk JSON, and one
    // that omits the route list for a client with nothing cached.
    for reply in [
        kennel_proto::client::message_frame(0, b"{}").to_vec(),
        {
            let mut b = BytesMut::new();
            put_frame(&mut b, TYPE_HANDSHAKE, b"not json");
            b.to_vec()
        },
        {
            let mut b = BytesMut::new();
            put_frame(&mut b, TYPE_HANDSHAKE, br#"{"md5":"x","heartbeat":0}"#);
            b.to_vec()
        },
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            s.write_all(&reply).await.unwrap();
            let _ = s.read(&mut buf).await;
        });
        let err = Client::builder(&addr)
            .no_route_cache()
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Handshake(_)), "{err}");
    }

    // Nobody listening: an Io error; a listener that never answers: a Timeout.
    let port = integration_tests::cluster::free_port();
    let err = Client::connect(&format!("127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let err = Client::builder(&addr)
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    drop(listener);
}
