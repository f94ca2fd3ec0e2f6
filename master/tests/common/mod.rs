//! Helpers for the master's tests: throwaway projects whose "server binary" is a small shell
//! script, a handle on a running `kennel start`, deadlines instead of sleeps.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Every wait in these tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The stand-in server: logs who it is, then waits; on SIGTERM it logs, lingers `$6` seconds
/// (`args: ["--linger", "0.3"]`) and exits. `sleep` runs in the background so the group
/// signal and the group sweep are both exercised.
pub const SERVER_SCRIPT: &str = r#"#!/bin/sh
echo "hello from $2 args: $*"
echo "cli=${KENNEL_CLI_SECRET:-none} server=${KENNEL_SERVER_SECRET:+set} master_port=$KENNEL_MASTER_PORT"
echo "oops on stderr" >&2
linger=${6:-0}
trap 'echo "TERM at $(date +%s%N)"; sleep $linger; echo "exit at $(date +%s%N)"; exit 0' TERM
sleep 1000 &
wait $!
"#;

/// Ports for the master (which binds them itself), outside the ephemeral range and reserved
/// across processes: the integration tests' allocator, shared as source.
#[path = "../../../integration-tests/src/ports.rs"]
mod ports;
pub use ports::{free_port, free_ports};

/// A project in a temp dir: master on `master_port`, servers `servers` (the JSON object of
/// the development environment), route list with one route per type, `bin/server.sh`.
pub fn project(master_port: u16, servers: &str) -> TempDir {
    project_with(master_port, servers, "")
}

/// Like [`project`], with `master_extra` (e.g. `, "crashLoop": {...}`) appended to the
/// master entry.
pub fn project_with(master_port: u16, servers: &str, master_extra: &str) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("config/sys");
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::write(
        sys.join("master.json"),
        format!(
            r#"{{"development": {{"id": "master-server-1", "host": "127.0.0.1", "port": {master_port}, "bin": "bin/server.sh"{master_extra}}}}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        sys.join("servers.json"),
        format!(r#"{{"development": {servers}}}"#),
    )
    .unwrap();
    let types: Vec<String> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(servers)
            .unwrap()
            .keys()
            .map(|t| format!("\"{t}.main.hello\""))
            .collect();
    std::fs::write(sys.join("route.json"), format!("[{}]", types.join(","))).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    write_script(&bin.join("server.sh"), SERVER_SCRIPT);
    dir
}

/// One frontend (`connector-server-1`) and two backends (`chat-server-1`, `chat-server-2`).
pub fn three_servers() -> String {
    // The stand-in servers listen on nothing: the ports only need to be distinct.
    let (c, cp, a) = (free_port(), free_port(), free_ports(2));
    format!(
        r#"{{"connector": [{{"id": "connector-server-1", "host": "127.0.0.1", "port": {c}, "frontend": true, "clientPort": {cp}}}],
            "chat": [{{"id": "chat-server-", "idStart": 1, "host": "127.0.0.1", "port": [{a}, {}]}}]}}"#,
        a + 1
    )
}

pub fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The `kennel` binary under test.
pub fn kennel() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kennel"));
    for var in kennel_config::ENV_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd` to completion (bounded by [`TIMEOUT`]).
pub fn output(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("command {cmd:?} did not finish within {TIMEOUT:?}");
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `f` every 50 ms until it returns `Some`, panicking after [`TIMEOUT`].
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of live processes running in `dir` whose command line holds `--id <id>`.
pub fn processes_running_as(dir: &Path, id: &str) -> Vec<u32> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if std::fs::read_link(entry.path().join("cwd")).ok().as_deref() != Some(dir.as_path()) {
            continue;
        }
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// A running `kennel start`; killed (with every server group it reported) when dropped.
pub struct Cluster {
    pub dir: TempDir,
    pub port: u16,
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// The master's stderr (its log), printed when a test fails.
    errors: Arc<Mutex<Vec<String>>>,
    /// Server pids seen, swept on drop in case the test failed half-way.
    pub seen_pids: Vec<u32>,
    envs: Vec<(String, String)>,
}

impl Cluster {
    /// Starts `kennel start --dir <dir>` with extra environment `envs`.
    pub fn start(dir: TempDir, port: u16, envs: &[(&str, &str)]) -> Cluster {
        let mut cmd = kennel();
        cmd.arg("start")
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let cluster = Cluster {
            dir,
            port,
            child,
            lines,
            errors,
            seen_pids: Vec::new(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        cluster.wait_line("the listening line", |l| l.contains(" listening on "));
        cluster
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// SIGKILLs the master (servers keep running) and starts a new one on the same project.
    pub fn restart_master(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let envs: Vec<(String, String)> = self.envs.clone();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut next = Cluster::start(dir, self.port, &envs);
        std::mem::swap(&mut self.dir, &mut next.dir);
        std::mem::swap(&mut self.child, &mut next.child);
        std::mem::swap(&mut self.lines, &mut next.lines);
        std::mem::swap(&mut self.errors, &mut next.errors);
        // `next` now holds the dead master and a throwaway dir.
    }

    /// Every stderr line (the master's log) so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a stdout line matching `pred` and returns it.
    pub fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_until(what, || self.lines().into_iter().find(|l| pred(l)))
    }

    /// A `kennel <sub> --dir <dir>` command with this cluster's environment.
    pub fn cli(&self, sub: &str) -> Command {
        let mut cmd = kennel();
        cmd.arg(sub).arg("--dir").arg(self.dir.path());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// `kennel list --json`, parsed; records the pids it shows.
    pub fn list(&mut self) -> Vec<serde_json::Value> {
        let out = output(self.cli("list").arg("--json"));
        assert!(
            out.status.success(),
            "kennel list failed: {}",
            text(&out.stderr)
        );
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        for r in &rows {
            if let Some(pid) = r["pid"].as_u64()
                && !self.seen_pids.contains(&(pid as u32))
            {
                self.seen_pids.push(pid as u32);
            }
        }
        rows
    }

    /// Polls `kennel list --json` until every server has a pid; returns id -> pid.
    pub fn wait_all_running(&mut self) -> Vec<(String, u32)> {
        wait_until("every server to have a pid", || {
            let rows = self.list();
            rows.iter()
                .map(|r| {
                    Some((
                        r["id"].as_str().unwrap().to_owned(),
                        r["pid"].as_u64()? as u32,
                    ))
                })
                .collect::<Option<Vec<_>>>()
        })
    }

    /// Waits for the master to exit; returns its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_until("the master to exit", || self.child.try_wait().unwrap())
    }

    pub fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{id}.log")))
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- master stdout ---");
            for l in self.lines() {
                eprintln!("{l}");
            }
            eprintln!("--- master stderr ---");
            for l in self.errors.lock().unwrap().iter() {
                eprintln!("{l}");
            }
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for &pid in &self.seen_pids {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}
