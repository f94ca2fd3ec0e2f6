//! The guide (`docs/guide.md`) works as written, and `kennel init` makes that project: the
//! scaffold's program and config are the page's, it builds as a new Cargo package on the
//! `kennel` library, `kennel cmd` reads its routes, the real `kennel` master starts it, and a
//! game client plays it: login, join, push to the room, a typed RPC with a reply across both room
//! servers, and a notify on leave.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::TIMEOUT;
use integration_tests::client::Client;
use integration_tests::cluster::{
    Cluster, MasterCommand, PORT_ATTEMPTS, bin, bin_dir, free_port, free_ports, is_port_taken,
    uring_all,
};
use integration_tests::mydog::run_bounded;
use serde_json::{Value, json};

/// The code blocks of the guide that follow a `<!-- file: PATH -->` line: (path, text).
fn guide_files(guide: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = guide.lines();
    while let Some(l) = lines.next() {
        let Some(path) = l
            .trim()
            .strip_prefix("<!-- file: ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().expect("a code block after the file marker");
        assert!(fence.starts_with("```"), "{path}: {fence}");
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        out.push((path.to_string(), body.join("\n") + "\n"));
    }
    out
}

/// Runs `kennel <args> <path>` (bounded by [`TIMEOUT`]), asserts that it succeeded (showing
/// its stderr otherwise) and returns its stdout.
fn kennel(args: &[&str], path: &Path) -> String {
    let mut cmd = Command::new(bin("kennel"));
    cmd.args(args).arg(path);
    let out = run_bounded(cmd, "kennel", TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "kennel {args:?} {path:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Creates the project with `kennel init` (under target/, so cargo can reuse the workspace's
/// lock file and build dir and compile only the program), checks it is the guide's program, and
/// builds it. Returns the binary.
fn init_and_build(guide_main: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = bin_dir().parent().unwrap();
    let pkg = target.join("guide-game");
    let out = kennel(&["init", "--name", "hello-game", "--force"], &pkg);
    assert!(out.contains("cargo build && kennel start"), "{out}");
    let main_rs = std::fs::read_to_string(pkg.join("src/main.rs")).unwrap();
    assert_eq!(
        main_rs, guide_main,
        "kennel init writes the guide's program"
    );
    if !pkg.join("Cargo.lock").exists() {
        std::fs::copy(root.join("Cargo.lock"), pkg.join("Cargo.lock")).unwrap();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--manifest-path"])
        .arg(pkg.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "the scaffolded project does not build");
    target.join("debug/hello-game")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guide_program_runs_as_written() {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/guide.md"))
            .unwrap();
    let files = guide_files(&guide);
    let file = |name: &str| {
        files
            .iter()
            .find(|(p, _)| p == name)
            .unwrap_or_else(|| panic!("guide has no {name}"))
            .1
            .clone()
    };
    let game = init_and_build(&file("src/main.rs"));
    // The scaffold's config is the guide's (development; it adds production).
    let scaffold = bin_dir().parent().unwrap().join("guide-game/config/sys");
    for name in ["master.json", "servers.json", "route.json"] {
        let ours: Value =
            serde_json::from_slice(&std::fs::read(scaffold.join(name)).unwrap()).unwrap();
        let guide: Value = serde_json::from_str(&file(&format!("config/sys/{name}"))).unwrap();
        let pick = |v: &Value| v.get("development").cloned().unwrap_or(v.clone());
        let mut ours = pick(&ours);
        if name == "master.json" {
            ours["bin"] = json!("target/debug/hello-game");
        }
        assert_eq!(ours, pick(&guide), "{name}");
    }
    // `kennel cmd` turns the route list into client constants.
    let project = scaffold.parent().unwrap().parent().unwrap();
    let ts = kennel(&["cmd", "ts", "-e", "development", "--dir"], project);
    assert!(
        ts.contains("    room_main_say = \"room.main.say\",\n"),
        "{ts}"
    );

    // The guide's config, on free ports, with the freshly built binary (booted again on fresh
    // ports if another process took one meanwhile).
    let mut attempt = 1;
    let (mut cluster, addr) = loop {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("config/sys");
        std::fs::create_dir_all(&sys).unwrap();
        let mut master: Value = serde_json::from_str(&file("config/sys/master.json")).unwrap();
        let master_port = free_port();
        master["development"]["port"] = json!(master_port);
        master["development"]["bin"] = json!(game);
        let mut servers: Value = serde_json::from_str(&file("config/sys/servers.json")).unwrap();
        let client_port = free_port();
        let gate = &mut servers["development"]["gate"][0];
        gate["port"] = json!(free_port());
        gate["clientPort"] = json!(client_port);
        if uring_all() {
            gate["io"] = json!("uring");
        }
        let p = free_ports(2);
        servers["development"]["room"][0]["port"] = json!([p, p + 1]);
        std::fs::write(sys.join("master.json"), master.to_string()).unwrap();
        std::fs::write(sys.join("servers.json"), servers.to_string()).unwrap();
        std::fs::write(sys.join("route.json"), file("config/sys/route.json")).unwrap();

        let kennel = MasterCommand {
            program: bin("kennel"),
            args: vec![
                "start".into(),
                "-e".into(),
                "development".into(),
                "--dir".into(),
                dir.path().into(),
            ],
        };
        let addr = format!("127.0.0.1:{client_port}");
        let ids = ["gate-server-1", "room-server-1", "room-server-2"].map(String::from);
        match Cluster::launch(
            dir,
            kennel,
            vec![("gate-server-1".into(), addr.clone())],
            master_port,
            ids.to_vec(),
        ) {
            Ok(c) => break (c, addr),
            Err(e) if is_port_taken(&e) && attempt < PORT_ATTEMPTS => attempt += 1,
            Err(e) => panic!("the guide's cluster boots: {e:#}"),
        }
    };
    let ready = cluster.wait_line("kennel: cluster ready").unwrap();
    assert!(ready.contains("3 servers"), "{ready}");

    // Two players in room 7 (room-server-2), one in room 8 (room-server-1).
    let mut players = Vec::new();
    for (uid, room) in [(1u64, 7), (2, 7), (3, 8)] {
        let mut c = Client::connect(&addr).await.unwrap();
        let r = c
            .request("gate.main.login", &json!({"uid": uid, "room": room}))
            .await
            .unwrap();
        assert_eq!(r, json!({"code": 0}));
        let j = c.request("room.main.join", &json!({})).await.unwrap();
        let server = if room == 7 {
            "room-server-2"
        } else {
            "room-server-1"
        };
        assert_eq!(j["server"], server, "{j}");
        assert_eq!(j["room"], room);
        players.push(c);
    }
    // A uid already online is refused.
    let mut dup = Client::connect(&addr).await.unwrap();
    let r = dup
        .request("gate.main.login", &json!({"uid": 1, "room": 7}))
        .await
        .unwrap();
    assert_eq!(r, json!({"code": 1}));
    // Anonymous clients get nothing from the room routes (no room to route by; the room
    // servers' filter and the handler refuse them too): the next request (to the gate) is
    // answered, and no join reply comes, then or later.
    let mut anon = Client::connect(&addr).await.unwrap();
    anon.send("room.main.join", &json!({})).await.unwrap();
    let s = anon.request("gate.main.stats", &json!({})).await.unwrap();
    assert_eq!(s, json!({"code": 0, "players": 3}));
    anon.expect_none("room.main.join", std::time::Duration::from_millis(500))
        .await
        .unwrap();

    // A message to room 7 reaches both its members, not the player in room 8.
    players[0]
        .send("room.main.say", &json!({"text": "hi"}))
        .await
        .unwrap();
    for c in &mut players[..2] {
        assert_eq!(
            c.expect_push("onSay").await.unwrap(),
            json!({"from": 1, "text": "hi"})
        );
    }
    players[2]
        .send("room.main.say", &json!({"text": "own room"}))
        .await
        .unwrap();
    assert_eq!(
        players[2].expect_push("onSay").await.unwrap(),
        json!({"from": 3, "text": "own room"}),
        "room 8's own message comes first: room 7's never reached it"
    );

    // Leaving notifies every room server; the typed RPC count follows.
    drop(players.remove(0));
    let deadline = std::time::Instant::now() + integration_tests::TIMEOUT;
    loop {
        let s = anon.request("gate.main.stats", &json!({})).await.unwrap();
        if s == json!({"code": 0, "players": 2}) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leave never counted: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(cluster.stop().unwrap(), Some(0));
}
