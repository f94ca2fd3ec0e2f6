//! Boots the real chat-demo cluster for a test: a temp project dir with a config on free
//! ports, the master started as `chat-demo start --dir <tmp>` (it spawns the same binary for
//! every server), readiness read from the master's stdout, and helpers to find, kill and reap
//! the servers. Dropping a [`Cluster`] kills whatever is left (by process group).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::TIMEOUT;

/// The chat route list (same order as the mydog peer).
pub const ROUTES: [&str; 7] = [
    "connector.main.login",
    "chat.main.join",
    "chat.main.send",
    "chat.main.onChat",
    "connector.main.echo",
    "chat.main.echo",
    "chat.main.rpcEcho",
];

/// Builds the workspace binaries once per test process and returns the target dir holding them.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // tests live in target/<profile>/deps/
        let exe = std::env::current_exe().expect("test exe path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bins", "-p", "chat-demo", "-p", "kennel-master"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        dir
    })
}

/// Path of a workspace binary (`chat-demo`, `kennel`).
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A free TCP port on 127.0.0.1 (bound, then released), never the same one twice in this
/// process: the OS may hand a just-released port out again, and two servers of one test config
/// on the same port would collide.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// What [`Cluster::start_opts`] boots: server counts, and keys merged into the master's
/// entry, every connector's entry and every chat server's entry (`Value::Null`: none).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// TCP frontends.
    pub tcp: u16,
    /// WebSocket frontends (numbered after the TCP ones).
    pub ws: u16,
    /// Chat servers.
    pub chats: u16,
    /// Extra keys of the master entry (e.g. `{"rpc": {...}}`).
    pub master_extra: Value,
    /// Extra keys of every connector entry (e.g. `{"interval": 50}`).
    pub connector_extra: Value,
    /// Extra keys of every WebSocket connector entry, after `connector_extra` (e.g.
    /// `{"web": 4080}`).
    pub ws_extra: Value,
    /// Extra keys of every chat entry.
    pub chat_extra: Value,
}

/// Copies `extra`'s keys into `entry` (both objects; a null `extra` adds nothing).
fn merge(entry: &mut Value, extra: &Value) {
    if let (Some(e), Some(x)) = (entry.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            e.insert(k.clone(), v.clone());
        }
    }
}

/// A running chat cluster.
pub struct Cluster {
    /// The project dir (config, logs, .kennel).
    pub dir: tempfile::TempDir,
    master: Option<Child>,
    /// Every line the master printed so far.
    pub lines: Arc<Mutex<Vec<String>>>,
    line_rx: mpsc::Receiver<String>,
    /// Client address per frontend id.
    pub frontends: Vec<(String, String)>,
    /// Master port.
    pub master_port: u16,
}

impl Cluster {
    /// Boots `connectors` TCP frontends and `chats` chat servers and waits until all registered.
    pub fn start(connectors: u16, chats: u16) -> Result<Cluster> {
        Cluster::start_with(connectors, 0, chats)
    }

    /// Boots `tcp` TCP frontends, then `ws` WebSocket frontends (ids continue the numbering),
    /// and `chats` chat servers.
    pub fn start_with(tcp: u16, ws: u16, chats: u16) -> Result<Cluster> {
        Cluster::start_opts(Options {
            tcp,
            ws,
            chats,
            ..Options::default()
        })
    }

    /// Boots a cluster as [`Cluster::start_with`] does, with extra config keys.
    pub fn start_opts(o: Options) -> Result<Cluster> {
        let Options {
            tcp,
            ws,
            chats,
            master_extra,
            connector_extra,
            ws_extra,
            chat_extra,
        } = o;
        let connectors = tcp + ws;
        let dir = tempfile::tempdir()?;
        let sys = dir.path().join("config/sys");
        std::fs::create_dir_all(&sys)?;
        let master_port = free_port();
        let mut connector = Vec::new();
        let mut frontends = Vec::new();
        for i in 1..=connectors {
            let (port, client) = (free_port(), free_port());
            let id = format!("connector-server-{i}");
            let transport = if i > tcp { "ws" } else { "tcp" };
            let mut entry = json!({"id": id, "host": "127.0.0.1", "port": port, "frontend": true, "clientPort": client, "connector": transport});
            merge(&mut entry, &connector_extra);
            if transport == "ws" {
                merge(&mut entry, &ws_extra);
            }
            connector.push(entry);
            frontends.push((id, format!("127.0.0.1:{client}")));
        }
        let chat: Vec<_> = (1..=chats)
            .map(|i| {
                let mut e = json!({"id": format!("chat-server-{i}"), "host": "127.0.0.1", "port": free_port()});
                merge(&mut e, &chat_extra);
                e
            })
            .collect();
        let env = "test";
        let mut master = json!({"id": "master-server-1", "host": "127.0.0.1", "port": master_port});
        merge(&mut master, &master_extra);
        std::fs::write(sys.join("master.json"), json!({env: master}).to_string())?;
        std::fs::write(
            sys.join("servers.json"),
            json!({env: {"connector": connector, "chat": chat}}).to_string(),
        )?;
        std::fs::write(sys.join("route.json"), json!(ROUTES).to_string())?;

        let mut master = Command::new(bin("chat-demo"));
        master.args(["start", "-e", env, "--dir"]).arg(dir.path());
        Cluster::launch(dir, master, frontends, master_port)
    }

    /// Runs `master` (a `kennel start`-like command for the project in `dir`), and waits until
    /// it prints that the cluster is ready. `frontends` lists (id, client address).
    pub fn launch(
        dir: tempfile::TempDir,
        mut master: Command,
        frontends: Vec<(String, String)>,
        master_port: u16,
    ) -> Result<Cluster> {
        let mut child = master
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn the master")?;
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, line_rx) = mpsc::channel();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut c = Cluster {
            dir,
            master: Some(child),
            lines,
            line_rx,
            frontends,
            master_port,
        };
        c.wait_line("kennel: cluster ready")?;
        Ok(c)
    }

    /// Waits for a master stdout line containing `needle`.
    pub fn wait_line(&mut self, needle: &str) -> Result<String> {
        if let Some(l) = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
        {
            return Ok(l.clone());
        }
        let deadline = Instant::now() + TIMEOUT * 2;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.line_rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Ok(l),
                Ok(_) => {}
                Err(_) => bail!(
                    "master never printed {needle:?}; it printed:\n{}",
                    self.lines.lock().unwrap().join("\n")
                ),
            }
        }
    }

    /// Client address of the `i`-th frontend.
    pub fn client_addr(&self, i: usize) -> &str {
        &self.frontends[i % self.frontends.len()].1
    }

    /// Server processes of this cluster (id -> pid), found by their working directory.
    pub fn server_pids(&self) -> HashMap<String, i32> {
        let mut out = HashMap::new();
        let me = self
            .dir
            .path()
            .canonicalize()
            .unwrap_or_else(|_| self.dir.path().to_path_buf());
        let master = self.master.as_ref().map(|c| c.id() as i32);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if Some(pid) == master {
                continue;
            }
            let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
                continue;
            };
            if cwd != me {
                continue;
            }
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if let Some(id) = args
                .iter()
                .position(|a| a == "--id")
                .and_then(|i| args.get(i + 1))
            {
                out.insert(id.clone(), pid);
            }
        }
        out
    }

    /// The text of `logs/<id>.log`.
    pub fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{id}.log")))
            .unwrap_or_default()
    }

    /// Polls `logs/<id>.log` until it contains `needle`.
    pub fn wait_log(&self, id: &str, needle: &str) -> Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if self.log(id).contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "logs/{id}.log never contained {needle:?}:\n{}",
            self.log(id)
        )
    }

    /// The pid of the master this fixture started, while it runs.
    pub fn master_pid(&self) -> Option<i32> {
        self.master.as_ref().map(|c| c.id() as i32)
    }

    /// Forgets the master process (after the test killed it), so `stop` and drop leave it be.
    pub fn forget_master(&mut self) -> Option<Child> {
        self.master.take()
    }

    /// Sends SIGTERM to the master alone and waits for it to exit; returns its exit code.
    pub fn stop(&mut self) -> Result<Option<i32>> {
        let mut child = self.master.take().context("already stopped")?;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("master did not exit within {TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for pid in self.server_pids().values() {
            let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        if let Some(mut m) = self.master.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}
