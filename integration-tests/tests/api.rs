//! The game-server API over real sockets, in one process: an in-process master (spawning
//! nothing) and in-process servers built on the `kennel` library, with TCP game clients.
//! Covers sessions (local settings, `apply`), push (`send_all`, `"*"` notify), filters
//! (`before`, `after`, `global_before`), RPC errors, and the server events.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use integration_tests::TIMEOUT;
use integration_tests::client::Client;
use integration_tests::cluster::{free_port, uring_all};
use kennel::{App, Args, RpcError, Session};
use kennel_config::{Project, Secrets};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long "no reply" is watched for, after a later request on the same connection was
/// answered (a reply to the earlier message would have come first).
const QUIET: Duration = Duration::from_millis(500);

const ROUTES: &[&str] = &[
    "gate.main.set",
    "gate.main.get",
    "game.main.get",
    "game.main.apply",
    "gate.main.all",
    "game.main.star",
    "gate.main.blocked",
    "game.main.echo",
    "onPush",
    "game.main.rpc",
    "game.main.typed",
    "gate.main.store",
    "gate.main.session",
];

/// The typed remote of the tests: adds two numbers, refuses negative ones.
#[derive(serde::Serialize, serde::Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

kennel::remote_route!(
    /// `game.remote.add(Add) -> i64`
    GameAdd = "game.remote.add", fn(Add) -> i64
);

struct Rig {
    _dir: tempfile::TempDir,
    master: CancellationToken,
    apps: Vec<App>,
    client_addr: String,
    removed: mpsc::UnboundedReceiver<(String, String)>,
    exits: mpsc::UnboundedReceiver<String>,
    after_count: Arc<AtomicUsize>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for a in &self.apps {
            a.shutdown();
        }
        self.master.cancel();
    }
}

fn handlers(
    app: &App,
    removed: mpsc::UnboundedSender<(String, String)>,
    after_count: Arc<AtomicUsize>,
) {
    app.route("game", |_app: &App, s: &Session| s.get::<String>("game"));
    app.handler("gate.main.set", |_: App, s: Session, v: Value| async move {
        s.set_local("secret", &v["secret"]);
        s.set("shared", &v["shared"]).unwrap();
        s.set("game", &v["game"]).unwrap();
        Some(json!({"ok": s.bind(v["uid"].as_u64().unwrap_or(0))}))
    });
    app.handler("gate.main.get", |_: App, s: Session, _: Value| async move {
        Some(json!({"secret": s.get_local::<Value>("secret"), "shared": s.get::<Value>("shared"), "fromBackend": s.get::<Value>("fromBackend")}))
    });
    app.handler("game.main.get", |app: App, s: Session, _: Value| async move {
        Some(json!({"server": app.id(), "secret": s.get_local::<Value>("secret"), "shared": s.get::<Value>("shared"), "fromBackend": s.get::<Value>("fromBackend"), "live": s.is_live()}))
    });
    app.handler(
        "game.main.apply",
        |_: App, s: Session, v: Value| async move {
            s.set("fromBackend", v).unwrap();
            s.apply().await;
            Some(json!({"applied": true}))
        },
    );
    app.handler(
        "gate.main.all",
        |app: App, _: Session, v: Value| async move {
            app.send_all("onPush", &json!({"all": v})).unwrap();
        },
    );
    app.handler(
        "game.main.star",
        |app: App, s: Session, _: Value| async move {
            app.rpc("*")
                .notify("game.remote.hello", &(s.uid(), s.sid().to_string()))
                .await
                .unwrap();
        },
    );
    app.remote(
        "game.remote.hello",
        |app: App, (uid, sid): (Option<u64>, String)| async move {
            let target = [(uid.unwrap_or(0), sid)];
            app.send_by_uid_sid("onPush", &json!({"hello from": app.id()}), &target)
                .await
                .unwrap();
        },
    );
    app.remote("game.remote.echo", |_: App, v: Value| async move { v });
    app.remote("game.remote.slow", |_: App, ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    });
    app.handler(
        "gate.main.blocked",
        |_: App, _: Session, _: Value| async move { Some(json!("must not run")) },
    );
    app.handler(
        "game.main.echo",
        |_: App, _: Session, v: Value| async move { Some(v) },
    );
    // One awaited RPC per request, reporting how it failed.
    app.handler(
        "game.main.rpc",
        |app: App, _: Session, v: Value| async move {
            let target = v["target"].as_str().unwrap_or_default().to_string();
            let r: Result<Value, RpcError> = if v["badArgs"] == json!(true) {
                app.rpc(&target)
                    .call("game.remote.hello", &"not a tuple")
                    .await
            } else if let Some(ms) = v["timeoutMs"].as_u64() {
                app.rpc(&target)
                    .timeout(Duration::from_millis(ms))
                    .call("game.remote.slow", &v["slowMs"])
                    .await
            } else {
                app.rpc(&target).call("game.remote.echo", &v["body"]).await
            };
            Some(match r {
                Ok(v) => json!({"ok": v}),
                Err(RpcError::UnknownServer(s)) => json!({"unknown": s}),
                Err(RpcError::Remote { message, .. }) => json!({"remote": message}),
                Err(RpcError::Timeout { server, route }) => {
                    json!({"timeout": {"server": server, "route": route}})
                }
                Err(e) => json!({"other": e.to_string()}),
            })
        },
    );
    // Typed stubs: the route, argument and result types are checked at compile time.
    app.remote_typed(GameAdd, |_: App, x: Add| async move {
        if x.a < 0 || x.b < 0 {
            return Err(format!("negative operand {}", x.a.min(x.b)));
        }
        Ok(x.a + x.b)
    });
    app.handler(
        "game.main.typed",
        |app: App, _: Session, v: Value| async move {
            let args = Add {
                a: v["a"].as_i64().unwrap_or(0),
                b: v["b"].as_i64().unwrap_or(0),
            };
            let target = v["target"].as_str().unwrap_or_default().to_string();
            Some(match app.rpc(&target).call_typed(GameAdd, &args).await {
                Ok(sum) => json!({"sum": sum}),
                Err(RpcError::Remote { route, message, .. }) => {
                    json!({"remote": message, "route": route})
                }
                Err(e) => json!({"other": e.to_string()}),
            })
        },
    );
    // Session odds and ends on the frontend: ip, push before bind, lookup by uid, kick.
    app.handler(
        "gate.main.session",
        |app: App, s: Session, v: Value| async move {
            match v["op"].as_str() {
                Some("ip") => Some(json!({"ip": s.ip(), "uid": s.uid()})),
                Some("push") => {
                    s.send("onPush", &json!({"before bind": s.uid().is_none()}))
                        .await
                        .unwrap();
                    Some(json!({"pushed": true}))
                }
                Some("lookup") => {
                    let other = app.session_by_uid(v["uid"].as_u64().unwrap_or(0));
                    Some(json!({"found": other.map(|o| o.uid())}))
                }
                Some("kick") => {
                    let other = app.session_by_uid(v["uid"].as_u64().unwrap_or(0));
                    Some(json!({"kicked": other.map(|o| o.close()).is_some()}))
                }
                _ => None,
            }
        },
    );
    // Per-type setup and the app's key/value store.
    app.configure("gate", |app| {
        app.set("greeting", format!("hello from {}", app.id()));
    });
    app.configure("game|other", |app| {
        app.set("greeting", 42u32);
    });
    app.handler(
        "gate.main.store",
        |app: App, _: Session, _: Value| async move {
            Some(json!({
                "greeting": app.get::<String>("greeting").map(|g| g.to_string()),
                "wrongType": app.get::<u32>("greeting").is_some(),
            }))
        },
    );
    app.global_before(|app: &App, _: &Session, cmd: u16, _: &[u8]| {
        app.routes()[cmd as usize] != "gate.main.blocked"
    });
    app.before(|_: &App, _: &Session, route: &str, payload: &[u8]| {
        !(route == "game.main.echo" && String::from_utf8_lossy(payload).contains("deny"))
    });
    app.after(
        move |_: &App, _: &Session, route: &str, reply: Option<&[u8]>| {
            if route == "game.main.echo" && reply.is_some() {
                after_count.fetch_add(1, Ordering::SeqCst);
            }
        },
    );
    app.on_remove_server(move |app: App, s| {
        let _ = removed.send((app.id().to_string(), s.id));
    });
}

async fn rig() -> Rig {
    rig_with(|_| {}).await
}

/// Boots the rig, running `extra` on every app before it runs.
async fn rig_with(extra: fn(&App)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("config/sys");
    std::fs::create_dir_all(&sys).unwrap();
    // The master's listener is bound first (port 0), so its port cannot be taken meanwhile.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let master_port = listener.local_addr().unwrap().port();
    let client_port = free_port();
    std::fs::write(
        sys.join("master.json"),
        json!({"test": {"id": "master-server-1", "host": "127.0.0.1", "port": master_port}})
            .to_string(),
    )
    .unwrap();
    std::fs::write(
        sys.join("servers.json"),
        json!({"test": {
            "gate": [{"id": "gate-1", "host": "127.0.0.1", "port": free_port(), "frontend": true, "clientPort": client_port, "io": if uring_all() { "uring" } else { "epoll" }}],
            "game": [{"id": "game-1", "host": "127.0.0.1", "port": free_port()}, {"id": "game-2", "host": "127.0.0.1", "port": free_port()}],
        }})
        .to_string(),
    )
    .unwrap();
    std::fs::write(sys.join("route.json"), json!(ROUTES).to_string()).unwrap();

    let project = Project::load(dir.path(), "test").unwrap();
    let secrets = Secrets::resolve(&project, true).unwrap();
    let mut opts = kennel_master::StartOptions::new(project, secrets);
    opts.spawn = false;
    opts.echo_logs = false;
    let master = CancellationToken::new();
    tokio::spawn(kennel_master::run(opts, listener, master.clone()));

    let (removed_tx, removed) = mpsc::unbounded_channel();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (exits_tx, exits) = mpsc::unbounded_channel();
    let after_count = Arc::new(AtomicUsize::new(0));
    let mut apps = Vec::new();
    for id in ["gate-1", "game-1", "game-2"] {
        let args = Args {
            id: id.into(),
            env: "test".into(),
            dir: dir.path().to_path_buf(),
            rest: vec![],
        };
        let app = App::new(args).unwrap();
        handlers(&app, removed_tx.clone(), after_count.clone());
        extra(&app);
        let tx = exits_tx.clone();
        app.on_before_exit(move |app| {
            let tx = tx.clone();
            async move {
                // Still serving: the server knows its peers while the hook runs.
                let _ = tx.send(format!("{} sees {} servers", app.id(), app.servers().len()));
            }
        });
        let tx = started_tx.clone();
        app.on_start_all(move |app| {
            let _ = tx.send(app.id().to_string());
        });
        let a = app.clone();
        tokio::spawn(async move { a.run().await });
        apps.push(app);
    }
    // on_start_all fires once on every server.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(
            tokio::time::timeout(TIMEOUT, started.recv())
                .await
                .expect("on_start_all on every server")
                .unwrap(),
        );
    }
    seen.sort();
    assert_eq!(seen, ["game-1", "game-2", "gate-1"]);
    Rig {
        _dir: dir,
        master,
        apps,
        client_addr: format!("127.0.0.1:{client_port}"),
        removed,
        exits,
        after_count,
    }
}

async fn client(rig: &Rig, game: &str) -> Client {
    static UID: AtomicUsize = AtomicUsize::new(1);
    let uid = UID.fetch_add(1, Ordering::SeqCst);
    let mut c = Client::connect(&rig.client_addr).await.unwrap();
    let set = json!({"secret": "s3", "shared": "sh", "game": game, "uid": uid});
    let r = c.request("gate.main.set", &set).await.unwrap();
    assert_eq!(r, json!({"ok": true}), "bind uid {uid}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_local_and_apply() {
    let rig = rig().await;
    let mut c = client(&rig, "game-2").await;
    // Settings travel to the backend; local settings do not.
    let b = c.request("game.main.get", &json!({})).await.unwrap();
    assert_eq!(
        b,
        json!({"server": "game-2", "secret": null, "shared": "sh", "fromBackend": null, "live": false})
    );
    let f = c.request("gate.main.get", &json!({})).await.unwrap();
    assert_eq!(
        f,
        json!({"secret": "s3", "shared": "sh", "fromBackend": null})
    );
    // apply() from the backend updates the frontend's copy, and the next forward carries it.
    assert_eq!(
        c.request("game.main.apply", &json!([1, 2])).await.unwrap(),
        json!({"applied": true})
    );
    let f = c.request("gate.main.get", &json!({})).await.unwrap();
    assert_eq!(f["fromBackend"], json!([1, 2]));
    assert_eq!(
        f["secret"],
        json!("s3"),
        "apply must not touch local settings"
    );
    let b = c.request("game.main.get", &json!({})).await.unwrap();
    assert_eq!(b["fromBackend"], json!([1, 2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_all_and_notify_every_server_of_a_type() {
    let rig = rig().await;
    let mut a = client(&rig, "game-1").await;
    let mut b = client(&rig, "game-2").await;
    a.send("gate.main.all", &json!("x")).await.unwrap();
    for c in [&mut a, &mut b] {
        assert_eq!(c.expect_push("onPush").await.unwrap(), json!({"all": "x"}));
    }
    // "*" reaches game-1 and game-2, each pushes back to the caller.
    b.send("game.main.star", &json!({})).await.unwrap();
    let mut from = vec![
        b.expect_push("onPush").await.unwrap(),
        b.expect_push("onPush").await.unwrap(),
    ];
    from.sort_by_key(|v| v.to_string());
    assert_eq!(
        from,
        vec![
            json!({"hello from": "game-1"}),
            json!({"hello from": "game-2"})
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_run_and_can_stop_messages() {
    let rig = rig().await;
    let mut c = client(&rig, "game-1").await;
    // global_before drops the blocked route on the frontend; the next request is answered first.
    c.send("gate.main.blocked", &json!({})).await.unwrap();
    assert_eq!(
        c.request("game.main.echo", &json!("first")).await.unwrap(),
        json!("first")
    );
    // before (on the backend) stops a denied message: no handler, no reply, no after.
    c.send("game.main.echo", &json!("deny me")).await.unwrap();
    assert_eq!(
        c.request("game.main.echo", &json!("second")).await.unwrap(),
        json!("second")
    );
    assert_eq!(rig.after_count.load(Ordering::SeqCst), 2);
    // Neither dropped message produced a reply, before or after the answered ones.
    for route in ["gate.main.blocked", "game.main.echo"] {
        c.expect_none(route, QUIET).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_results_and_errors() {
    let rig = rig().await;
    let mut c = client(&rig, "game-1").await;
    let body = json!({"deep": [1, {"x": null}]});
    for target in ["game-2", "game-1"] {
        // game-1 -> game-2 over the mesh; game-1 -> game-1 without the network.
        let r = c
            .request("game.main.rpc", &json!({"target": target, "body": body}))
            .await
            .unwrap();
        assert_eq!(r, json!({"ok": body}), "{target}");
    }
    let r = c
        .request("game.main.rpc", &json!({"target": "nobody"}))
        .await
        .unwrap();
    assert_eq!(r, json!({"unknown": "nobody"}));
    // A remote that fails (arguments it cannot decode) is an error, at once, not a timeout.
    let started = std::time::Instant::now();
    let r = c
        .request(
            "game.main.rpc",
            &json!({"target": "game-2", "badArgs": true}),
        )
        .await
        .unwrap();
    assert!(
        r["remote"].as_str().unwrap().contains("cannot decode"),
        "{r}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A remote slower than the call's timeout: the call fails with a timeout naming the server
    // and the route, not before the timeout and soon after it.
    let started = std::time::Instant::now();
    let r = c
        .request(
            "game.main.rpc",
            &json!({"target": "game-2", "timeoutMs": 300, "slowMs": 3000}),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(
        r,
        json!({"timeout": {"server": "game-2", "route": "game.remote.slow"}})
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // Within its timeout the same remote answers; the late reply of the first call is
    // ignored, and the link keeps working.
    let r = c
        .request(
            "game.main.rpc",
            &json!({"target": "game-2", "timeoutMs": 5000, "slowMs": 10}),
        )
        .await
        .unwrap();
    assert_eq!(r, json!({"ok": 10}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_server_is_announced() {
    let mut rig = rig().await;
    // The shared id list per type is the ids of servers_of_type, and follows membership.
    let ids_of = |app: &App, t: &str| -> (Vec<String>, Vec<String>) {
        let shared = app.server_ids_of_type(t).to_vec();
        let full = app.servers_of_type(t).into_iter().map(|s| s.id).collect();
        (shared, full)
    };
    let (shared, full) = ids_of(&rig.apps[0], "game");
    assert_eq!(shared, ["game-1", "game-2"]);
    assert_eq!(shared, full);
    assert_eq!(rig.apps[0].server_ids_of_type("gate").to_vec(), ["gate-1"]);
    assert!(rig.apps[0].server_ids_of_type("nosuchtype").is_empty());
    rig.apps[2].shutdown(); // game-2
    let mut told = Vec::new();
    while told.len() < 2 {
        let (on, gone) = tokio::time::timeout(TIMEOUT, rig.removed.recv())
            .await
            .expect("on_remove_server")
            .unwrap();
        assert_eq!(gone, "game-2");
        told.push(on);
    }
    told.sort();
    assert_eq!(told, ["game-1", "gate-1"]);
    let (shared, full) = ids_of(&rig.apps[0], "game");
    assert_eq!(shared, ["game-1"]);
    assert_eq!(shared, full);
    // Its before-exit hook ran, while it still knew the cluster.
    let exit = tokio::time::timeout(TIMEOUT, rig.exits.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit, "game-2 sees 3 servers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_remotes_fallible_remotes_configure_and_store() {
    let rig = rig().await;
    let mut c = client(&rig, "game-1").await;
    for target in ["game-2", "game-1"] {
        let r = c
            .request(
                "game.main.typed",
                &json!({"target": target, "a": 2, "b": 40}),
            )
            .await
            .unwrap();
        assert_eq!(r, json!({"sum": 42}), "{target}");
        // The remote's own error reaches the caller at once, with the route.
        let started = std::time::Instant::now();
        let r = c
            .request(
                "game.main.typed",
                &json!({"target": target, "a": -3, "b": 1}),
            )
            .await
            .unwrap();
        assert_eq!(
            r,
            json!({"remote": "negative operand -3", "route": "game.remote.add"}),
            "{target}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // configure ran the gate block on the gate only; get checks the stored type.
    let r = c.request("gate.main.store", &json!({})).await.unwrap();
    assert_eq!(
        r,
        json!({"greeting": "hello from gate-1", "wrongType": false})
    );
}

/// A message codec for the test: on the wire every body is wrapped as `{"v": body}`.
struct Envelope;

impl kennel::codec::MessageCodec for Envelope {
    fn decode(&self, _cmd: u16, wire: bytes::Bytes) -> Result<bytes::Bytes, String> {
        let v: Value = serde_json::from_slice(&wire).map_err(|e| e.to_string())?;
        let inner = v.get("v").ok_or("no envelope")?;
        Ok(serde_json::to_vec(inner).unwrap().into())
    }

    fn encode(&self, _cmd: u16, json: bytes::Bytes) -> Result<bytes::Bytes, String> {
        let v: Value = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
        Ok(serde_json::to_vec(&json!({ "v": v })).unwrap().into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_codec_translates_the_client_wire() {
    let rig = rig_with(|app| {
        app.set_message_codec(Envelope);
    })
    .await;
    let mut c = Client::connect(&rig.client_addr).await.unwrap();
    let set = json!({"v": {"secret": "s", "shared": "x", "game": "game-2", "uid": 9001}});
    assert_eq!(
        c.request("gate.main.set", &set).await.unwrap(),
        json!({"v": {"ok": true}})
    );
    // Forwarded to a backend: it sees the inner JSON, its reply is wrapped at the frontend.
    assert_eq!(
        c.request("game.main.echo", &json!({"v": [1, "two"]}))
            .await
            .unwrap(),
        json!({"v": [1, "two"]})
    );
    // A body the codec cannot decode is dropped (logged); the connection carries on.
    c.send("game.main.echo", &json!("bare")).await.unwrap();
    assert_eq!(
        c.request("game.main.echo", &json!({"v": "next"}))
            .await
            .unwrap(),
        json!({"v": "next"})
    );
    c.expect_none("game.main.echo", QUIET).await.unwrap();
    // Pushes are wrapped too.
    c.send("gate.main.all", &json!({"v": 5})).await.unwrap();
    assert_eq!(
        c.expect_push("onPush").await.unwrap(),
        json!({"v": {"all": 5}})
    );
}

/// A protocol codec for the test: like PROTOCOL.md but with a 2-byte length.
struct ShortLen;

impl kennel::codec::ProtocolCodec for ShortLen {
    fn decode(
        &self,
        buf: &mut bytes::BytesMut,
        max_len: usize,
    ) -> Result<Option<kennel_proto::client::Frame>, String> {
        use bytes::Buf;
        use kennel_proto::client::Frame;
        if buf.len() < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
        if len == 0 || len > max_len {
            return Err(format!("bad length {len}"));
        }
        if buf.len() < 2 + len {
            return Ok(None);
        }
        buf.advance(2);
        let mut body = buf.split_to(len).freeze();
        match body.get_u8() {
            1 if body.len() >= 2 => {
                let cmd = body.get_u16();
                Ok(Some(Frame::Message { cmd, payload: body }))
            }
            2 => Ok(Some(Frame::Handshake(body))),
            3 => Ok(Some(Frame::Heartbeat)),
            t => Err(format!("bad type {t}")),
        }
    }

    fn encode(&self, frame: kennel::codec::OutFrame<'_>, out: &mut bytes::BytesMut) {
        use kennel::codec::OutFrame;
        let (kind, cmd, body): (u8, Option<u16>, &[u8]) = match frame {
            OutFrame::Handshake(b) => (2, None, b),
            OutFrame::Heartbeat => (3, None, &[]),
            OutFrame::Message { cmd, body } => (1, Some(cmd), body),
        };
        let len = 1 + cmd.map_or(0, |_| 2) + body.len();
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&[kind]);
        if let Some(cmd) = cmd {
            out.extend_from_slice(&cmd.to_be_bytes());
        }
        out.extend_from_slice(body);
    }
}

/// Writes one ShortLen frame.
fn short_frame(kind: u8, cmd: Option<u16>, body: &[u8]) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    let f = match cmd {
        Some(cmd) => kennel::codec::OutFrame::Message { cmd, body },
        None => kennel::codec::OutFrame::Handshake(body),
    };
    assert!(kind == 1 || kind == 2);
    kennel::codec::ProtocolCodec::encode(&ShortLen, f, &mut b);
    b.to_vec()
}

/// Reads one ShortLen frame: (type, cmd, body).
async fn read_short(s: &mut tokio::net::TcpStream) -> (u8, u16, Value) {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 2];
    tokio::time::timeout(TIMEOUT, s.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    let (kind, rest) = (body[0], &body[1..]);
    if kind == 1 {
        let cmd = u16::from_be_bytes([rest[0], rest[1]]);
        (kind, cmd, serde_json::from_slice(&rest[2..]).unwrap())
    } else {
        (kind, 0, serde_json::from_slice(rest).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_codec_replaces_the_framing() {
    use tokio::io::AsyncWriteExt;
    let rig = rig_with(|app| {
        app.set_protocol(ShortLen);
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(&rig.client_addr)
        .await
        .unwrap();
    s.write_all(&short_frame(2, None, br#"{"md5":""}"#))
        .await
        .unwrap();
    let (kind, _, hs) = read_short(&mut s).await;
    assert_eq!(kind, 2);
    let routes: Vec<String> = serde_json::from_value(hs["route"].clone()).unwrap();
    let store = routes.iter().position(|r| r == "gate.main.store").unwrap() as u16;
    s.write_all(&short_frame(1, Some(store), b"{}"))
        .await
        .unwrap();
    assert_eq!(
        read_short(&mut s).await,
        (
            1,
            store,
            json!({"greeting": "hello from gate-1", "wrongType": false})
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ip_push_before_bind_lookup_and_close() {
    let rig = rig().await;
    let mut a = Client::connect(&rig.client_addr).await.unwrap();
    assert_eq!(
        a.request("gate.main.session", &json!({"op": "ip"}))
            .await
            .unwrap(),
        json!({"ip": "127.0.0.1", "uid": null})
    );
    // session.send reaches a client that has not bound a uid yet.
    assert_eq!(
        a.request("gate.main.session", &json!({"op": "push"}))
            .await
            .unwrap(),
        json!({"pushed": true})
    );
    assert_eq!(
        a.expect_push("onPush").await.unwrap(),
        json!({"before bind": true})
    );
    let set = json!({"secret": "s", "shared": "x", "game": "game-1", "uid": 7001});
    assert_eq!(
        a.request("gate.main.set", &set).await.unwrap(),
        json!({"ok": true})
    );
    // A second client cannot bind the same uid on this frontend, but can find and kick it.
    let mut b = Client::connect(&rig.client_addr).await.unwrap();
    assert_eq!(
        b.request("gate.main.set", &set).await.unwrap(),
        json!({"ok": false})
    );
    assert_eq!(
        b.request("gate.main.session", &json!({"op": "lookup", "uid": 7001}))
            .await
            .unwrap(),
        json!({"found": 7001})
    );
    assert_eq!(
        b.request("gate.main.session", &json!({"op": "kick", "uid": 7001}))
            .await
            .unwrap(),
        json!({"kicked": true})
    );
    a.expect_closed().await.unwrap();
    // Once closed, the uid is free again.
    let mut c = Client::connect(&rig.client_addr).await.unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let r = c
            .request("gate.main.session", &json!({"op": "lookup", "uid": 7001}))
            .await
            .unwrap();
        if r == json!({"found": null}) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "uid never unbound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        c.request("gate.main.set", &set).await.unwrap(),
        json!({"ok": true})
    );
}

/// `App::runtime` follows the entry's `threads`: single-threaded by default, N workers when
/// asked, and a clear error naming the server and the key for a bad value.
#[test]
fn runtime_follows_the_threads_key() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("config/sys");
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::write(
        sys.join("master.json"),
        json!({"test": {"id": "master-server-1", "host": "127.0.0.1", "port": free_port()}})
            .to_string(),
    )
    .unwrap();
    std::fs::write(
        sys.join("servers.json"),
        json!({"test": {"gate": [
            {"id": "gate-1", "host": "127.0.0.1", "port": free_port(), "frontend": true, "clientPort": free_port()},
        ], "game": [
            {"id": "game-1", "host": "127.0.0.1", "port": free_port()},
            {"id": "game-2", "host": "127.0.0.1", "port": free_port(), "threads": 3},
        ]}})
        .to_string(),
    )
    .unwrap();
    std::fs::write(sys.join("route.json"), json!(ROUTES).to_string()).unwrap();
    let project = Project::load(dir.path(), "test").unwrap();
    Secrets::resolve(&project, true).unwrap();
    let app = |id: &str| {
        App::new(Args {
            id: id.into(),
            env: "test".into(),
            dir: dir.path().to_path_buf(),
            rest: vec![],
        })
        .unwrap()
    };
    let workers = |id: &str| {
        let rt = app(id).runtime().unwrap();
        (rt.metrics().num_workers(), rt.handle().runtime_flavor())
    };
    assert_eq!(
        workers("game-1"),
        (1, tokio::runtime::RuntimeFlavor::CurrentThread)
    );
    assert_eq!(
        workers("game-2"),
        (3, tokio::runtime::RuntimeFlavor::MultiThread)
    );
    // A bad `threads` is refused when the project loads, naming the entry and the key, before
    // any server starts.
    for (bad, why) in [(json!(0), "found 0"), (json!("many"), "many")] {
        let text = std::fs::read_to_string(sys.join("servers.json")).unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
        cfg["test"]["game"][1]["threads"] = bad;
        std::fs::write(sys.join("servers.json"), cfg.to_string()).unwrap();
        let err = Project::load(dir.path(), "test").unwrap_err().to_string();
        assert!(
            err.contains("game-2") && err.contains("threads") && err.contains(why),
            "{err}"
        );
    }
}
