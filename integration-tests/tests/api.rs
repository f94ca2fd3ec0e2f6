//! The game-server API over real sockets, in one process: an in-process master (spawning
//! nothing) and in-process servers built on the `kennel` library, with TCP game clients.
//! Covers sessions (local settings, `apply`), push (`send_all`, `"*"` notify), filters
//! (`before`, `after`, `global_before`), RPC errors, and the server events.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use integration_tests::TIMEOUT;
use integration_tests::client::Client;
use integration_tests::cluster::free_port;
use kennel::{App, Args, RpcError, Session};
use kennel_config::{Project, Secrets};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
];

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
        s.set("shared", &v["shared"]);
        s.set("game", &v["game"]);
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
            s.set("fromBackend", v);
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
            } else {
                app.rpc(&target).call("game.remote.echo", &v["body"]).await
            };
            Some(match r {
                Ok(v) => json!({"ok": v}),
                Err(RpcError::UnknownServer(s)) => json!({"unknown": s}),
                Err(RpcError::Remote { message, .. }) => json!({"remote": message}),
                Err(e) => json!({"other": e.to_string()}),
            })
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
            "gate": [{"id": "gate-1", "host": "127.0.0.1", "port": free_port(), "frontend": true, "clientPort": client_port}],
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
    // Neither dropped message produced a reply later.
    c.send("gate.main.get", &json!({})).await.unwrap();
    let (cmd, _) = c.next_message().await.unwrap();
    assert_eq!(cmd, c.cmd("gate.main.get").unwrap());
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_server_is_announced() {
    let mut rig = rig().await;
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
    // Its before-exit hook ran, while it still knew the cluster.
    let exit = tokio::time::timeout(TIMEOUT, rig.exits.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit, "game-2 sees 3 servers");
}
