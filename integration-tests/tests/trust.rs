//! Who may stop a cluster, over real processes.
//!
//! - A refusal from someone who has not proven the secret is not a verdict: with the master
//!   SIGKILLed and a fake listener on its port refusing every `Hello` (no MAC, anyone can send
//!   that), every server keeps running with the same pid, players keep chatting, and a real
//!   master started afterwards adopts the same pids.
//! - The master survives losing its terminal: its stdout and stderr go to a pipe whose reader
//!   exits (`kennel start |& head`), then a server is SIGKILLed (the master must restart it,
//!   writing to the dead pipe all along), then SIGINT or SIGHUP stops the whole cluster: the
//!   master exits 0, no server survives, and `logs/master.log` has the stop.
//! - Secrets that are hard to leak: the CLI takes its secret from a private file
//!   (`--token-file`, `KENNEL_CLI_SECRET_FILE`) and refuses one others may read; every log
//!   file is created 0640.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use integration_tests::TIMEOUT;
use integration_tests::cluster::{Cluster, KENNEL_ENV, ROUTES, bin, free_port, servers_in};
use integration_tests::load::Witness;
use kennel_proto::frame::{AUTH_MAX_FRAME, length_codec};
use kennel_proto::msg::{Challenge, Hello};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prost::Message;
use serde_json::json;
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

/// Polls `cond` every 20 ms until it holds; panics with `what()` after [`TIMEOUT`].
fn wait_until(what: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < TIMEOUT, "timed out waiting until {}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A master whose stdout and stderr are a pipe read only until the cluster is ready, then
/// closed (the `| head`, or the `tee` that a Ctrl-C killed first). Kills whatever is left
/// when dropped.
struct Headless {
    dir: tempfile::TempDir,
    master: Child,
}

impl Headless {
    /// One TCP frontend and one chat server; returns once both registered and the pipe's
    /// reader has exited.
    fn start() -> Headless {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("config/sys");
        std::fs::create_dir_all(&sys).unwrap();
        let master =
            json!({"test": {"id": "master-server-1", "host": "127.0.0.1", "port": free_port()}});
        let servers = json!({"test": {
            "connector": [{"id": "connector-server-1", "host": "127.0.0.1", "port": free_port(),
                           "frontend": true, "clientPort": free_port()}],
            "chat": [{"id": "chat-server-1", "host": "127.0.0.1", "port": free_port()}],
        }});
        std::fs::write(sys.join("master.json"), master.to_string()).unwrap();
        std::fs::write(sys.join("servers.json"), servers.to_string()).unwrap();
        std::fs::write(sys.join("route.json"), json!(ROUTES).to_string()).unwrap();

        let (reader, writer) = std::io::pipe().unwrap();
        let master = Command::new(bin("chat-demo"))
            .args(["start", "-e", "test", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(writer.try_clone().unwrap())
            .stderr(writer)
            .spawn()
            .unwrap();
        // The reader: echoes lines until the cluster is ready, then exits, closing the pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if line.contains("kennel: cluster ready") {
                    let _ = tx.send(());
                    return;
                }
            }
        });
        let h = Headless { dir, master };
        rx.recv_timeout(TIMEOUT)
            .expect("the master never printed `kennel: cluster ready`");
        for id in ["connector-server-1", "chat-server-1"] {
            wait_until(
                || format!("{id} knows every server:\n{}", h.log(id)),
                || h.log(id).contains("every configured server has registered"),
            );
        }
        h
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("logs/{id}.log"))).unwrap_or_default()
    }

    /// Panics (with its exit status and log) if the master has exited.
    fn assert_master_alive(&mut self, when: &str) {
        if let Some(status) = self.master.try_wait().unwrap() {
            panic!(
                "the master died {when} ({status}) with its output pipe closed; servers left \
                 running: {:?}; logs/master.log:\n{}",
                servers_in(self.dir.path()),
                self.log("master")
            );
        }
    }

    /// SIGKILLs chat-server-1 and waits until the master has started a new one that
    /// registered: the master logs all along, into the closed pipe.
    fn crash_and_wait_for_restart(&mut self) {
        let old = servers_in(self.dir.path())["chat-server-1"];
        kill(Pid::from_raw(old), Signal::SIGKILL).unwrap();
        let t0 = Instant::now();
        loop {
            self.assert_master_alive("after a server crash");
            let restarted = servers_in(self.dir.path())
                .get("chat-server-1")
                .is_some_and(|p| *p != old)
                && self
                    .log("chat-server-1")
                    .matches("registered with the master")
                    .count()
                    >= 2;
            if restarted {
                return;
            }
            assert!(
                t0.elapsed() < TIMEOUT,
                "chat-server-1 was not restarted:\n{}",
                self.log("chat-server-1")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the master and checks it stops the cluster in order and exits 0.
    fn stop_with(&mut self, sig: Signal) {
        kill(Pid::from_raw(self.master.id() as i32), sig).unwrap();
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.master.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < TIMEOUT,
                "the master did not exit within {TIMEOUT:?} of {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let left = servers_in(self.dir.path());
        assert!(
            left.is_empty(),
            "{sig}: the master exited ({status}) leaving servers running: {left:?}; \
             logs/master.log:\n{}",
            self.log("master")
        );
        assert!(
            status.success(),
            "{sig}: the master exited with {status}; logs/master.log:\n{}",
            self.log("master")
        );
        let log = self.log("master");
        for needle in [
            format!("{sig} received: stopping the cluster"),
            "server exited server=chat-server-1".to_string(),
            "kennel: cluster stopped".to_string(),
        ] {
            assert!(
                log.contains(&needle),
                "logs/master.log lacks {needle:?}:\n{log}"
            );
        }
        println!(
            "{sig} with the output pipe closed: cluster stopped in {:?}, no server left",
            t0.elapsed()
        );
    }
}

impl Drop for Headless {
    fn drop(&mut self) {
        for pid in servers_in(self.dir.path()).values() {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

#[test]
fn sigint_stops_the_cluster_after_the_masters_output_pipe_closed() {
    let mut h = Headless::start();
    h.crash_and_wait_for_restart();
    h.stop_with(Signal::SIGINT);
}

#[test]
fn sighup_stops_the_cluster_after_the_masters_output_pipe_closed() {
    let mut h = Headless::start();
    h.crash_and_wait_for_restart();
    h.stop_with(Signal::SIGHUP);
}

/// Runs the `kennel` CLI in `cwd` (no project there) with no secret or master address from the
/// test's environment.
fn kennel(cwd: &Path, args: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = Command::new(bin("kennel"));
    cmd.args(args).current_dir(cwd).stdin(Stdio::null());
    for var in KENNEL_ENV {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Writes `text` to `path` with `mode`.
fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_cli_reads_its_secret_from_a_private_file_and_logs_are_0640() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::start(1, 1).unwrap();
    let stored: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.dir.path().join(".kennel/secrets.json")).unwrap(),
    )
    .unwrap();
    let cli = stored["cli"].as_str().unwrap();
    // Somewhere else, with no project: the address by flags, the secret from a file.
    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("cli-secret");
    write_mode(&file, &format!("{cli}\n"), 0o600);
    let port = cluster.master_port.to_string();
    let target = [
        "list",
        "--json",
        "--host",
        "127.0.0.1",
        "--port",
        port.as_str(),
    ];
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    let by_flag = kennel(
        elsewhere.path(),
        &[&target[..], &["--token-file", file.to_str().unwrap()]].concat(),
        &[],
    );
    let by_env = kennel(
        elsewhere.path(),
        &target,
        &[("KENNEL_CLI_SECRET_FILE", file.as_path())],
    );
    for (how, out) in [
        ("--token-file", &by_flag),
        ("KENNEL_CLI_SECRET_FILE", &by_env),
    ] {
        assert!(
            out.status.success(),
            "{how}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut ids: Vec<&str> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["id"].as_str())
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            ["chat-server-1", "connector-server-1"],
            "{how}: {rows}"
        );
    }

    // A wrong secret in the file, a file others may read, the secret given twice: one clear
    // line each, exit 1.
    let wrong = elsewhere.path().join("wrong");
    write_mode(&wrong, "not-the-secret\n", 0o600);
    let open = elsewhere.path().join("open");
    write_mode(&open, &format!("{cli}\n"), 0o644);
    let chmod = format!("chmod 600 {}", open.display());
    for (args, needle) in [
        (
            vec!["--token-file", wrong.to_str().unwrap()],
            "does not accept this CLI secret",
        ),
        (vec!["--token-file", open.to_str().unwrap()], chmod.as_str()),
        (
            vec!["--token-file", file.to_str().unwrap(), "--token", cli],
            "given twice",
        ),
    ] {
        let out = kennel(elsewhere.path(), &[&target[..], &args[..]].concat(), &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("kennel: ") && err.contains(needle) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }

    // Every log file (the master's own included) is readable by owner and group only.
    let logs = cluster.dir.path().join("logs");
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&logs).unwrap().flatten() {
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        let name = e.file_name().into_string().unwrap();
        assert!(
            mode & 0o007 == 0 && mode & 0o600 == 0o600 && mode & !0o640 == 0,
            "logs/{name} has mode {mode:04o}, want 0640"
        );
        seen.push(name);
    }
    seen.sort();
    assert_eq!(
        seen,
        ["chat-server-1.log", "connector-server-1.log", "master.log"]
    );
}
