//! The master as a supervisor of the real chat-demo cluster, driven through the operator CLI
//! (`chat-demo <subcommand>` is the `kennel` CLI) while game clients play:
//!
//! - a SIGKILLed server is restarted within 2 s and its peers are told; `restart` of one
//!   chat server while clients chat changes only its pid; `send` reaches the servers'
//!   handlers; `list --json` and the table show clients; `stop` leaves no process and every
//!   before-exit hook ran;
//! - SIGKILL of the master under 50 clients disconnects nobody, and `start --daemon` re-adopts
//!   every server (same pids);
//! - `start --daemon` fails with the reason when a server crash-loops (it exits at once);
//! - external servers: started by hand, shown as `external`, never restarted; a hand-started
//!   duplicate of a managed server is refused;
//! - remote hosts: a server on another host (127.0.0.2, on no interface) is started and
//!   signalled through the launcher (`ssh` on PATH is a stub that records its argv).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use integration_tests::TIMEOUT;
use integration_tests::client::Client;
use integration_tests::cluster::{
    KENNEL_ENV, ROUTES, bin, free_port, processes_in, secs_between, times_of,
};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

const ENV: &str = "test";

/// A chat project in a temp dir; every process left running in it is killed on drop.
struct Project {
    dir: tempfile::TempDir,
    /// Client address per frontend.
    frontends: Vec<String>,
    /// Extra environment for every command (e.g. PATH with a stub `ssh`).
    envs: Vec<(String, String)>,
}

/// Writes a project: `connectors` TCP frontends and `chats` chat servers on free ports;
/// `master_extra` is merged into the master entry, `chat_extra(i)` into chat server `i`'s.
fn project(
    connectors: u16,
    chats: u16,
    master_extra: Value,
    chat_extra: impl Fn(u16) -> Value,
) -> Project {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("config/sys");
    std::fs::create_dir_all(&sys).unwrap();
    let mut master = json!({"id": "master-server-1", "host": "127.0.0.1", "port": free_port()});
    merge(&mut master, master_extra);
    let mut frontends = Vec::new();
    let connector: Vec<Value> = (1..=connectors)
        .map(|i| {
            let client = free_port();
            frontends.push(format!("127.0.0.1:{client}"));
            json!({"id": format!("connector-server-{i}"), "host": "127.0.0.1",
                   "port": free_port(), "frontend": true, "clientPort": client})
        })
        .collect();
    let chat: Vec<Value> = (1..=chats)
        .map(|i| {
            let mut s =
                json!({"id": format!("chat-server-{i}"), "host": "127.0.0.1", "port": free_port()});
            merge(&mut s, chat_extra(i));
            s
        })
        .collect();
    std::fs::write(sys.join("master.json"), json!({ENV: master}).to_string()).unwrap();
    std::fs::write(
        sys.join("servers.json"),
        json!({ENV: {"connector": connector, "chat": chat}}).to_string(),
    )
    .unwrap();
    std::fs::write(sys.join("route.json"), json!(ROUTES).to_string()).unwrap();
    Project {
        dir,
        frontends,
        envs: Vec::new(),
    }
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(o), Value::Object(e)) = (into.as_object_mut(), extra) {
        o.extend(e);
    }
}

impl Project {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `chat-demo <subcommand> --dir <dir> -e test <args...>`, with a clean kennel
    /// environment.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("chat-demo"));
        cmd.arg(args[0])
            .arg("--dir")
            .arg(self.path())
            .args(["-e", ENV])
            .args(&args[1..]);
        for var in KENNEL_ENV {
            cmd.env_remove(var);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a CLI command to completion (bounded).
    fn run(&self, args: &[&str]) -> Output {
        run_bounded(self.cmd(args))
    }

    /// `list --json`, parsed.
    fn list(&self) -> Vec<Value> {
        let out = self.run(&["list", "--json"]);
        assert!(out.status.success(), "list: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("list --json parses")
    }

    fn row(&self, id: &str) -> Value {
        self.list()
            .into_iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in the list"))
    }

    /// The foreground master (`chat-demo start`), its stdout collected.
    fn start(&self) -> Master {
        let mut child = self
            .cmd(&["start"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Master { child, lines }
    }

    /// Live processes whose working directory is this project, by `--id` (servers) or
    /// `master` / `other`.
    fn processes(&self) -> Vec<(String, i32)> {
        processes_in(self.path())
            .into_iter()
            .map(|(pid, args)| {
                let name = match args.iter().position(|a| a == "--id") {
                    Some(i) => args.get(i + 1).cloned().unwrap_or_default(),
                    None if args.iter().any(|a| a == "--detached") => "master".to_owned(),
                    None => "other".to_owned(),
                };
                (name, pid)
            })
            .collect()
    }

    /// Server pids by id (processes running `chat-demo --id <id>` in this project).
    fn server_pids(&self) -> HashMap<String, i32> {
        self.processes()
            .into_iter()
            .filter(|(n, _)| n != "master" && n != "other")
            .collect()
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.path().join(format!("logs/{id}.log"))).unwrap_or_default()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        for (_, pid) in self.processes() {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// A foreground master.
struct Master {
    child: Child,
    /// Its stdout and stderr lines so far.
    lines: Arc<Mutex<Vec<String>>>,
}

impl Master {
    fn wait_line(&self, needle: &str) -> String {
        wait_until(&format!("the master to print {needle:?}"), || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
                .cloned()
        })
    }

    /// The times of its log lines containing `needle`.
    fn times(&self, needle: &str) -> Vec<SystemTime> {
        times_of(&self.lines.lock().unwrap().join("\n"), needle)
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_until("the master to exit", || self.child.try_wait().unwrap())
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- master output ---");
            for l in self.lines.lock().unwrap().iter() {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_bounded(cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    integration_tests::mydog::run_bounded(cmd, &what, TIMEOUT * 2).unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `f` every 50 ms until it returns `Some` (panics after [`TIMEOUT`]).
fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Runs blocking test code (CLI calls, polling) off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Logs in `uid` with `room` and joins it; returns the chat server it was given.
async fn login_join(c: &mut Client, uid: u64, room: i64) -> String {
    let r = integration_tests::load::login_join(c, uid, room)
        .await
        .unwrap();
    r["chatServerId"].as_str().unwrap().to_owned()
}

/// `from` says `t` in its room; every client of `to` receives it.
async fn chat(from: &mut Client, to: &mut [&mut Client], t: &str) {
    from.send("chat.main.send", &json!({"t": t})).await.unwrap();
    for c in to.iter_mut() {
        let got = c.expect_push("chat.main.onChat").await.unwrap();
        assert_eq!(got["t"], t, "{got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_restart_send_list_and_stop() {
    let p = Arc::new(project(2, 2, json!({}), |_| json!({})));
    let mut master = p.start();
    master.wait_line("kennel: cluster ready: 4 servers");

    // Room 2 is on chat-server-1, room 3 on chat-server-2 (room % 2 over the sorted ids).
    let mut a = Client::connect(&p.frontends[0]).await.unwrap();
    let mut b = Client::connect(&p.frontends[1]).await.unwrap();
    let mut c = Client::connect(&p.frontends[0]).await.unwrap();
    let mut d = Client::connect(&p.frontends[1]).await.unwrap();
    assert_eq!(login_join(&mut a, 1, 2).await, "chat-server-1");
    assert_eq!(login_join(&mut b, 2, 2).await, "chat-server-1");
    assert_eq!(login_join(&mut c, 3, 3).await, "chat-server-2");
    assert_eq!(login_join(&mut d, 4, 3).await, "chat-server-2");

    // list --json: every server running, frontends report their clients.
    let q = p.clone();
    let rows = blocking(move || {
        wait_until("the frontends to report 2 clients each", || {
            let rows = q.list();
            rows.iter()
                .filter(|r| r["frontend"] == true)
                .all(|r| r["clients"] == 2)
                .then_some(rows)
        })
    })
    .await;
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r["state"], "running", "{r}");
        assert!(r["pid"].as_u64().is_some(), "{r}");
        assert_eq!(r["external"], false);
        assert_eq!(r["remote"], false);
    }
    let q = p.clone();
    let table = blocking(move || text(&q.run(&["list"]).stdout)).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header[..9],
        [
            "ID", "TYPE", "STATE", "PID", "RSS", "CPU%", "UPTIME", "RESTARTS", "CLIENTS"
        ]
    );
    // Then the chat demo's own columns (once the chat servers have reported).
    assert!(
        header[9..].iter().all(|h| ["PLAYERS", "ROOMS"].contains(h)),
        "{table}"
    );
    let conn1: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("connector-server-1 "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(conn1.get(8), Some(&"2"), "{table}");

    // send: every server's handler answers; by type; errors and unknown names.
    let q = p.clone();
    let (all, chats, bad, unknown, wrong) = blocking(move || {
        (
            q.run(&["send", "echo", "hello", "--not-a-flag"]),
            q.run(&["send", "--type", "chat", "status"]),
            q.run(&["send", "--id", "connector-server-1~2", "nonsense"]),
            q.run(&["send", "--id", "chat-server-9", "status"]),
            q.run(&["send", "--token", "wrong", "status"]),
        )
    })
    .await;
    assert!(all.status.success(), "{}", text(&all.stderr));
    let said = text(&all.stdout);
    for id in [
        "connector-server-1",
        "connector-server-2",
        "chat-server-1",
        "chat-server-2",
    ] {
        assert!(
            said.contains(&format!("{id}: hello --not-a-flag\n")),
            "{said}"
        );
    }
    assert_eq!(
        text(&chats.stdout),
        "chat-server-1: rooms=1 players=2\nchat-server-2: rooms=1 players=2\n"
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stdout).contains("connector-server-2: error: unknown command"),
        "{}{}",
        text(&bad.stdout),
        text(&bad.stderr)
    );
    assert!(text(&bad.stderr).contains("2 of 2 servers did not answer"));
    for (out, what) in [
        (&unknown, "unknown server id"),
        (&wrong, "does not accept this CLI secret"),
    ] {
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("kennel: ") && err.contains(what), "{err}");
    }

    // SIGKILL chat-server-1: a new process within 2 s; every peer hears it leave and return.
    let before = p.server_pids();
    assert_eq!(before.len(), 4, "{before:?}");
    let old = before["chat-server-1"];
    let peers = ["connector-server-1", "connector-server-2", "chat-server-2"];
    let seen: Vec<usize> = peers
        .iter()
        .map(|id| {
            p.log(id)
                .matches("server added server=chat-server-1")
                .count()
        })
        .collect();
    let killed_at = SystemTime::now();
    kill(Pid::from_raw(old), Signal::SIGKILL).unwrap();
    let q = p.clone();
    blocking(move || {
        wait_until("chat-server-1 to be restarted", || {
            let r = q.row("chat-server-1");
            r["pid"].as_i64().filter(|pid| *pid != i64::from(old))
        })
    })
    .await;
    // Back = registered again, by the master's own log line (the CLI polling above adds its
    // process spawns); the master's restart backoff (0.5 s the first time) is part of it.
    let registered = wait_until("chat-server-1 to register again", || {
        let t = master.times("server registered server=chat-server-1 ");
        (t.len() >= 2).then_some(t)
    });
    assert_eq!(
        registered.len(),
        2,
        "registered at boot and after the restart"
    );
    let back = secs_between(killed_at, registered[1]);
    println!("chat-server-1 registered again {back:.3} s after SIGKILL");
    assert!(back < 2.0, "restart took {back:.3} s");
    for (id, n) in peers.iter().zip(seen) {
        let q = p.clone();
        let id = id.to_string();
        blocking(move || {
            wait_until("the peer to hear chat-server-1 leave and come back", || {
                let log = q.log(&id);
                (log.contains("server removed server=chat-server-1")
                    && log.matches("server added server=chat-server-1").count() > n)
                    .then_some(())
            })
        })
        .await;
    }
    // Its room state died with it: its players join again and chat.
    login_again(&mut a).await;
    login_again(&mut b).await;
    chat(&mut a, &mut [&mut b], "after the crash").await;

    // restart chat-server-2 while room 2 (on chat-server-1) keeps chatting.
    let pids = p.server_pids();
    let q = p.clone();
    let restart = tokio::task::spawn_blocking(move || q.run(&["restart", "chat-server-2"]));
    let mut n = 0;
    while !restart.is_finished() {
        chat(&mut a, &mut [&mut b], &format!("during restart {n}")).await;
        n += 1;
    }
    let out = restart.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("kennel: chat-server-2 restarted and registered"),
        "{}",
        text(&out.stdout)
    );
    println!("{n} chat messages went round during the restart");
    let after = p.server_pids();
    for (id, pid) in &pids {
        assert_eq!(
            after[id] != *pid,
            id == "chat-server-2",
            "{id}: {pid} -> {}",
            after[id]
        );
    }
    // Clients of the restarted server kept their connections: they join again and chat.
    login_again(&mut c).await;
    login_again(&mut d).await;
    chat(&mut c, &mut [&mut d], "after the restart").await;
    assert_eq!(p.row("chat-server-2")["restarts"], 1);

    // stop: frontends then backends, every before-exit hook ran, nothing is left.
    let all: Vec<i32> = p.server_pids().into_values().collect();
    let q = p.clone();
    let out = blocking(move || q.run(&["stop", "-y"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("kennel: cluster stopped"));
    assert!(master.wait_exit().success());
    for pid in all {
        assert!(!alive(pid), "pid {pid} survived the stop");
    }
    assert!(p.processes().is_empty(), "{:?}", p.processes());
    for id in [
        "connector-server-1",
        "connector-server-2",
        "chat-server-1",
        "chat-server-2",
    ] {
        assert!(
            p.log(id).contains("before exit"),
            "{id} ran no before-exit hook"
        );
    }
    for cl in [&mut a, &mut b, &mut c, &mut d] {
        closed(cl).await;
    }
}

/// Reads (and drops) what the server still sends until it closes the connection.
async fn closed(c: &mut Client) {
    loop {
        match c.next_message().await {
            Ok(_) => {}
            Err(e) => {
                let e = format!("{e:#}");
                assert!(!e.contains("timed out"), "still connected: {e}");
                return;
            }
        }
    }
}

/// Joins the session's room again (after its chat server restarted).
async fn login_again(c: &mut Client) {
    let j = c.request("chat.main.join", &json!({})).await.unwrap();
    assert_eq!(j["code"], 0, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_sigkill_under_50_clients_then_daemon_readopts() {
    let p = Arc::new(project(2, 2, json!({}), |_| json!({})));
    let mut master = p.start();
    master.wait_line("kennel: cluster ready: 4 servers");

    let mut clients = Vec::new();
    for i in 0..50u64 {
        let mut c = Client::connect(&p.frontends[i as usize % 2]).await.unwrap();
        login_join(&mut c, 1000 + i, (i % 5) as i64).await;
        clients.push(c);
    }
    let before = p.server_pids();
    assert_eq!(before.len(), 4);

    master.child.kill().unwrap();
    master.child.wait().unwrap();
    // Every client is still connected and served: frontends, backends and the mesh.
    for (i, c) in clients.iter_mut().enumerate() {
        let body = json!({"i": i});
        assert_eq!(c.request("chat.main.echo", &body).await.unwrap(), body);
    }

    // A new master, in the background, adopts every server instead of starting duplicates.
    let q = p.clone();
    let out = blocking(move || q.run(&["start", "--daemon", "--wait", "60"])).await;
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    assert!(said.contains("starting in the background (pid "), "{said}");
    assert!(said.contains("kennel: cluster ready: 4 servers"), "{said}");
    let master_log = std::fs::read_to_string(p.path().join("logs/master.log")).unwrap();
    assert!(
        master_log.contains("kennel: adopted 4 running servers left by an earlier master"),
        "{master_log}"
    );
    let q = p.clone();
    let rows = blocking(move || q.list()).await;
    for r in &rows {
        let id = r["id"].as_str().unwrap();
        assert_eq!(r["pid"], before[id], "{r}");
        assert_eq!(r["adopted"], true, "{r}");
        assert_eq!(r["state"], "running", "{r}");
    }
    assert_eq!(p.server_pids(), before, "duplicates were started");
    let master_pid = p
        .processes()
        .into_iter()
        .find(|(n, _)| n == "master")
        .expect("the daemon master runs in the project")
        .1;

    // Still nobody disconnected; chat across both frontends works.
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.request("connector.main.echo", &json!(i)).await.unwrap(),
            json!(i)
        );
    }
    let (first, rest) = clients.split_at_mut(1);
    let mut room0: Vec<&mut Client> = rest.iter_mut().skip(4).step_by(5).collect();
    chat(&mut first[0], &mut room0, "still here").await;

    let q = p.clone();
    let out = blocking(move || q.run(&["stop", "-y"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let q = p.clone();
    blocking(move || {
        wait_until("every process of the project to exit", || {
            (q.processes().is_empty() && !alive(master_pid)).then_some(())
        })
    })
    .await;
    for c in clients.iter_mut() {
        closed(c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_fails_with_the_reason_when_a_server_crash_loops() {
    // chat-server-2's port is taken: it exits at once, every time.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let p = Arc::new(project(
        1,
        2,
        json!({"crashLoop": {"restarts": 2, "windowSecs": 60}}),
        move |i| {
            if i == 2 {
                json!({"port": taken})
            } else {
                json!({})
            }
        },
    ));
    let q = p.clone();
    let out = blocking(move || q.run(&["start", "--daemon"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kennel: chat-server-2 is crash-looping")
            && err.contains("the master keeps running"),
        "{err}"
    );
    let q = p.clone();
    let row = blocking(move || q.row("chat-server-2")).await;
    assert_eq!(row["state"], "crashloop");
    assert_eq!(row["restarts"], 2);
    assert_eq!(row["pid"], Value::Null);
    // Started three times (the first start and two restarts), then left alone.
    let log = p.log("chat-server-2");
    assert_eq!(
        log.matches("chat-demo: cannot listen on").count(),
        3,
        "{log}"
    );
    let master_log = std::fs::read_to_string(p.path().join("logs/master.log")).unwrap();
    assert!(
        master_log.contains("crash-looping (2 restarts within 60 s)"),
        "{master_log}"
    );

    // A second daemon on the same project is refused: the port is the running master's.
    let q = p.clone();
    let again = blocking(move || q.run(&["start", "--daemon"])).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already listens on the master port"));

    let q = p.clone();
    let out = blocking(move || q.run(&["stop", "-y"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let q = p.clone();
    blocking(move || {
        wait_until("every process to exit", || {
            q.processes().is_empty().then_some(())
        })
    })
    .await;
    drop(squatter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_servers_register_and_are_left_alone() {
    let p = Arc::new(project(1, 2, json!({}), |i| {
        if i == 2 {
            json!({"external": true})
        } else {
            json!({})
        }
    }));
    let master = p.start();
    let ready = master.wait_line("kennel: cluster ready");
    assert!(
        ready.contains("2 servers registered")
            && ready.contains("external, not registered yet: chat-server-2"),
        "{ready}"
    );
    let q = p.clone();
    assert_eq!(
        blocking(move || q.row("chat-server-2")).await["state"],
        "down"
    );

    // Started by hand, the way the master would start it.
    let by_hand = |id: &str| {
        let mut cmd = Command::new(bin("chat-demo"));
        cmd.args(["--id", id, "--env", ENV, "--dir"])
            .arg(p.path())
            .current_dir(p.path());
        for var in KENNEL_ENV {
            cmd.env_remove(var);
        }
        cmd
    };
    let own_log = std::fs::File::create(p.path().join("by-hand.log")).unwrap();
    let mut ext = by_hand("chat-server-2")
        .stdin(Stdio::null())
        .stdout(own_log.try_clone().unwrap())
        .stderr(own_log)
        .spawn()
        .unwrap();
    let q = p.clone();
    let pid = ext.id();
    let row = blocking(move || {
        wait_until("the external server to register", || {
            let r = q.row("chat-server-2");
            (r["state"] == "external").then_some(r)
        })
    })
    .await;
    assert_eq!(row["pid"], pid, "{row}");
    assert_eq!(row["external"], true);
    // The others are told about it: a client chats on it.
    let mut c = Client::connect(&p.frontends[0]).await.unwrap();
    let mut d = Client::connect(&p.frontends[0]).await.unwrap();
    assert_eq!(login_join(&mut c, 5, 3).await, "chat-server-2");
    assert_eq!(login_join(&mut d, 6, 3).await, "chat-server-2");
    chat(&mut c, &mut [&mut d], "on an external server").await;

    // The master neither restarts nor starts it.
    let q = p.clone();
    let refused = blocking(move || q.run(&["restart", "chat-server-2"])).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("chat-server-2 is external"),
        "{}",
        text(&refused.stderr)
    );
    ext.kill().unwrap();
    ext.wait().unwrap();
    let q = p.clone();
    blocking(move || {
        wait_until("the external server to be down", || {
            (q.row("chat-server-2")["state"] == "down").then_some(())
        })
    })
    .await;
    std::thread::sleep(Duration::from_secs(1)); // a restart would come after 0.5 s
    let q = p.clone();
    let row = blocking(move || q.row("chat-server-2")).await;
    assert_eq!(
        (row["state"].as_str(), row["restarts"].as_u64()),
        (Some("down"), Some(0))
    );
    assert!(!p.processes().iter().any(|(n, _)| n == "chat-server-2"));

    // A server the master starts may not be run by hand: removed, then started by hand, it
    // is refused registration with the way out, and exits.
    let q = p.clone();
    let out = blocking(move || q.run(&["remove", "chat-server-1"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dup = run_bounded(by_hand("chat-server-1"));
    assert!(!dup.status.success());
    let err = text(&dup.stderr);
    assert!(
        err.contains("chat-server-1 is started by this master and is not running now (removed)")
            && err.contains("\"external\": true"),
        "{err}"
    );
    assert!(!p.server_pids().contains_key("chat-server-1"));

    let q = p.clone();
    let out = blocking(move || q.run(&["stop", "-y"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A stand-in for `ssh host command`: records its argv, then runs the command here.
const FAKE_SSH: &str = r#"#!/bin/sh
printf '%s\n' "$*" >> "$FAKE_SSH_LOG"
shift
exec sh -c "$*"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_hosts_go_through_the_launcher() {
    let mut p = project(1, 2, json!({}), |i| {
        if i == 2 {
            json!({"host": "127.0.0.2"})
        } else {
            json!({})
        }
    });
    let stubs = p.path().join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let ssh = stubs.join("ssh");
    std::fs::write(&ssh, FAKE_SSH).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let calls: PathBuf = p.path().join("ssh-calls.log");
    p.envs = vec![
        (
            "PATH".into(),
            format!(
                "{}:{}",
                stubs.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
        ("FAKE_SSH_LOG".into(), calls.display().to_string()),
    ];
    let p = Arc::new(p);
    let config = p.run(&["config"]);
    let config = text(&config.stdout);
    let line = config
        .lines()
        .find(|l| l.starts_with("chat-server-2 "))
        .unwrap();
    assert!(line.contains(" remote "), "{config}");

    let master = p.start();
    master.wait_line("kennel: cluster ready: 3 servers");
    let dir = p.path().canonicalize().unwrap();
    let recorded = std::fs::read_to_string(&calls).unwrap();
    let launched = format!(
        "127.0.0.2 cd {} && {} --id chat-server-2 --env test",
        dir.display(),
        bin("chat-demo").display()
    );
    assert_eq!(
        recorded.lines().collect::<Vec<_>>(),
        [launched.as_str()],
        "{recorded}"
    );
    let q = p.clone();
    let row = blocking(move || q.row("chat-server-2")).await;
    assert_eq!(row["remote"], true, "{row}");
    assert_eq!(row["host"], "127.0.0.2");
    let remote_pid = row["pid"].as_i64().unwrap() as i32;
    assert_eq!(p.server_pids()["chat-server-2"], remote_pid);

    // Clients chat on it through the mesh.
    let mut c = Client::connect(&p.frontends[0]).await.unwrap();
    let mut d = Client::connect(&p.frontends[0]).await.unwrap();
    assert_eq!(login_join(&mut c, 7, 3).await, "chat-server-2");
    assert_eq!(login_join(&mut d, 8, 3).await, "chat-server-2");
    chat(&mut c, &mut [&mut d], "far away").await;

    // restart: stopped through the remote signal command, launched again.
    let q = p.clone();
    let out = blocking(move || q.run(&["restart", "chat-server-2"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let recorded = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = recorded.lines().collect();
    assert_eq!(
        lines,
        [
            launched.as_str(),
            &format!("127.0.0.2 kill -TERM {remote_pid}"),
            launched.as_str()
        ],
        "{recorded}"
    );
    assert!(
        p.log("chat-server-2").contains("before exit"),
        "the remote server was not stopped gracefully"
    );
    let q = p.clone();
    let row = blocking(move || q.row("chat-server-2")).await;
    assert_ne!(row["pid"].as_i64().unwrap() as i32, remote_pid);
    assert_eq!(row["restarts"], 1);

    let new_pid = row["pid"].as_i64().unwrap();
    let q = p.clone();
    let out = blocking(move || q.run(&["stop", "-y"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let recorded = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        recorded.lines().last(),
        Some(format!("127.0.0.2 kill -TERM {new_pid}").as_str()),
        "{recorded}"
    );
    let q = p.clone();
    blocking(move || {
        wait_until("every process to exit", || {
            q.processes().is_empty().then_some(())
        })
    })
    .await;
    drop(master);
}

/// `start <id>`, `logs` (with `-f`), `remove` and `config` against real chat-demo servers (the
/// master's own tests drive them against shell-script stand-ins): a chat server added to the
/// config file is started by `start <id>`, announced, and routed to; `logs` prints the tail
/// of its real log and follows what it appends; `config --json` is the cluster as running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_logs_and_config_run_against_chat_demo() {
    let p = Arc::new(project(1, 2, json!({}), |_| json!({})));
    let master = p.start();
    master.wait_line("kennel: cluster ready: 3 servers");
    let config = |q: &Project| -> Vec<Value> {
        let out = q.run(&["config", "--json"]);
        assert!(out.status.success(), "config: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("config --json parses")
    };
    let q = p.clone();
    let rows = blocking(move || config(&q)).await;
    let servers: Value =
        serde_json::from_slice(&std::fs::read(p.path().join("config/sys/servers.json")).unwrap())
            .unwrap();
    // In the file's order of types (the fixture writes "chat" first), then of entries.
    let written: Vec<(String, u64)> = ["chat", "connector"]
        .iter()
        .flat_map(|t| servers[ENV][t].as_array().unwrap().clone())
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["port"].as_u64().unwrap(),
            )
        })
        .collect();
    let shown: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, written, "{rows:?}");
    for r in &rows {
        assert!(
            r["bin"].as_str().is_some_and(|b| b.ends_with("chat-demo")),
            "{r}"
        );
    }

    // A third chat server, new in the config file: `start chat-server-3` runs it, the frontend
    // hears of it, and room 2 (2 % 3 over the sorted chat ids) is routed to it.
    let mut servers = servers;
    let port = free_port();
    servers[ENV]["chat"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "chat-server-3", "host": "127.0.0.1", "port": port}));
    std::fs::write(
        p.path().join("config/sys/servers.json"),
        servers.to_string(),
    )
    .unwrap();
    let q = p.clone();
    let out = blocking(move || q.run(&["start", "chat-server-3"])).await;
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    let q = p.clone();
    blocking(move || {
        wait_until("the frontend to hear of chat-server-3", || {
            q.log("connector-server-1")
                .contains("server added server=chat-server-3")
                .then_some(())
        })
    })
    .await;
    let mut c = Client::connect(&p.frontends[0]).await.unwrap();
    assert_eq!(login_join(&mut c, 7, 2).await, "chat-server-3");
    let j = c.request("chat.main.join", &json!({})).await.unwrap();
    assert_eq!(j["chat"], "chat-server-3", "{j}");
    let pid3 = p.server_pids()["chat-server-3"];
    let q = p.clone();
    let rows = blocking(move || config(&q)).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[2]["id"], "chat-server-3", "{rows:?}");
    assert_eq!(rows[2]["port"], port);

    // logs: the end of its real log file; an unknown id is one clear line.
    let q = p.clone();
    let (tail, one, unknown) = blocking(move || {
        (
            q.run(&["logs", "chat-server-3", "-n", "1000"]),
            q.run(&["logs", "chat-server-3", "-n", "1"]),
            q.run(&["logs", "chat-server-9"]),
        )
    })
    .await;
    assert!(tail.status.success(), "{}", text(&tail.stderr));
    let file = p.log("chat-server-3");
    let tail = text(&tail.stdout);
    for needle in ["server started", "every configured server has registered"] {
        assert!(tail.contains(needle), "no {needle:?} in:\n{tail}");
    }
    assert!(
        tail.lines().all(|l| file.lines().any(|f| f == l)),
        "logs printed lines the file does not hold:\n{tail}\nfile:\n{file}"
    );
    let one = text(&one.stdout);
    assert_eq!(one.lines().count(), 1, "{one}");
    assert!(file.lines().any(|f| f == one.trim_end()), "{one}");
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr).contains("unknown server id"),
        "{}",
        text(&unknown.stderr)
    );

    // logs -f follows what the server appends: `remove` makes it log its stop, and it is not
    // restarted.
    let mut follow = p
        .cmd(&["logs", "chat-server-3", "-f", "-n", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let followed = Arc::new(Mutex::new(String::new()));
    let sink = followed.clone();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    // -f notes the file's length, prints its last line, then follows from that length: once
    // that line is out, whatever the server appends is followed.
    let seen = followed.clone();
    let q = p.clone();
    blocking(move || {
        wait_until("logs -f to print the last line", || {
            seen.lock().unwrap().contains('\n').then_some(())
        });
        let out = q.run(&["remove", "chat-server-3"]);
        assert!(out.status.success(), "remove: {}", text(&out.stderr));
    })
    .await;
    let seen = followed.clone();
    let got = blocking(move || {
        wait_until("logs -f to print the stop", || {
            let s = seen.lock().unwrap().clone();
            s.contains("before exit").then_some(s)
        })
    })
    .await;
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        got.lines()
            .all(|l| p.log("chat-server-3").lines().any(|f| f == l)),
        "{got}"
    );
    assert!(!alive(pid3), "removed chat-server-3 still runs");
    assert_eq!(p.row("chat-server-3")["state"], "removed");

    // start: a removed server runs again.
    let q = p.clone();
    let out = blocking(move || q.run(&["start", "chat-server-3"])).await;
    assert!(out.status.success(), "start again: {}", text(&out.stderr));
    let q = p.clone();
    let again = blocking(move || {
        wait_until("chat-server-3 to run again", || {
            let r = q.row("chat-server-3");
            (r["state"] == "running").then_some(r)
        })
    })
    .await;
    assert_ne!(again["pid"], json!(pid3), "{again}");
    drop(master);
}

/// A misspelt key is warned about by `start` (the master's output) and by the servers it
/// concerns, at start (their log files): a server entry's key by that server only, a master
/// entry's key by every server. The cluster runs all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misspelt_keys_are_warned_about_by_the_master_and_the_servers_they_concern() {
    let p = Arc::new(project(1, 2, json!({"crashloop": {"restarts": 3}}), |i| {
        if i == 1 {
            json!({"threds": 2})
        } else {
            json!({})
        }
    }));
    let master = p.start();
    master.wait_line("kennel: cluster ready: 3 servers");
    let own = "`threds` is not a kennel setting: did you mean `threads`?";
    let shared = "`crashloop` is not a kennel setting: did you mean `crashLoop`?";
    for needle in [own, shared] {
        let line = master.wait_line(needle);
        assert!(line.starts_with("kennel: warning: "), "{line}");
    }
    // Logged in App::new, before the server registered (so before "cluster ready").
    let (one, two) = (p.log("chat-server-1"), p.log("chat-server-2"));
    for needle in [own, shared, "WARN", "entry chat[0] (\"chat-server-1\")"] {
        assert!(
            one.contains(needle),
            "{needle:?} not in chat-server-1's log:\n{one}"
        );
    }
    assert!(two.contains(shared), "chat-server-2's log:\n{two}");
    assert!(
        !two.contains("threds"),
        "chat-server-2 warned about another entry:\n{two}"
    );
    let q = p.clone();
    let out = blocking(move || q.run(&["stop", "-y"])).await;
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    drop(master);
}
