//! Boots the real chat-demo cluster for a test: a temp project dir with a config on free
//! ports, the master started as `chat-demo start --dir <tmp>` (it spawns the same binary for
//! every server; or `kennel start` with another game binary as master.json's `bin`, see
//! [`ClusterOptions::game`]), readiness read from the master's stdout, and helpers to find, kill
//! and reap the servers. Dropping a [`Cluster`] kills whatever is left (by process group).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// The routes the `panic-game` test game (`src/bin/panic-game.rs`) adds after [`ROUTES`].
pub const PANIC_GAME_ROUTES: [&str; 7] = [
    "connector.boom.handler",
    "connector.boom.filtered",
    "connector.boom.armRoute",
    "connector.boom.armOff",
    "chat.boom.handler",
    "chat.boom.filtered",
    "chat.boom.rpc",
];

/// Builds the workspace binaries once per test process and returns the target dir holding them
/// (the profile this test or binary was built with).
pub fn bin_dir() -> &'static Path {
    bin_dir_for(own_profile_is_release())
}

/// The `target/<profile>` dir of the running executable (a test in `target/<profile>/deps/`
/// or a binary in `target/<profile>/`).
fn own_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("exe path");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

fn own_profile_is_release() -> bool {
    own_profile_dir()
        .file_name()
        .is_some_and(|n| n == "release")
}

/// Builds `chat-demo` and `kennel-master` once per process in the release or debug profile and
/// returns the dir holding them (`target/release` or `target/debug`).
pub fn bin_dir_for(release: bool) -> &'static Path {
    static DIRS: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
    DIRS[release as usize].get_or_init(|| {
        let target = own_profile_dir()
            .parent()
            .expect("target dir above the profile dir")
            .to_path_buf();
        let dir = target.join(if release { "release" } else { "debug" });
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

pub use crate::ports::{free_port, free_ports};

/// Environment variables that would point a kennel process at another cluster or give it
/// other secrets (kennel-config's list); every process these fixtures start runs without them
/// (the project's own `.kennel/secrets.json` and config decide).
pub use kennel_config::ENV_VARS as KENNEL_ENV;

/// The error [`Cluster::launch`] fails with when the master or a server could not bind its
/// port because another process took it meanwhile: the caller may retry on fresh ports.
#[derive(Debug)]
pub struct PortTaken(pub String);

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a port of the test config was taken: {}", self.0)
    }
}

impl std::error::Error for PortTaken {}

/// Whether `e` is (or wraps) a [`PortTaken`].
pub fn is_port_taken(e: &anyhow::Error) -> bool {
    e.downcast_ref::<PortTaken>().is_some()
}

/// Set to `1`, every cluster these fixtures boot encrypts its internal links
/// (`"encryptLinks": true` in master.json, unless a test sets the key itself), so any test
/// file can be run over the encrypted mesh:
/// `KENNEL_TEST_ENCRYPT_LINKS=1 cargo test -p integration-tests --test chat --test rpc_links`.
pub const ENCRYPT_ENV: &str = "KENNEL_TEST_ENCRYPT_LINKS";

/// Whether [`ENCRYPT_ENV`] asks for encrypted links.
pub fn encrypt_all() -> bool {
    std::env::var(ENCRYPT_ENV).is_ok_and(|v| v == "1")
}

/// Set to `uring`, every plain-TCP frontend these fixtures boot drives its clients on io_uring
/// (`"io": "uring"` in its entry, unless the test sets `io` or `ssl` itself), so the cluster
/// tests can be run on the io_uring connector:
/// `KENNEL_TEST_IO=uring cargo test -p integration-tests --test chat --test push_order`.
pub const IO_ENV: &str = "KENNEL_TEST_IO";

/// Whether [`IO_ENV`] asks for io_uring frontends.
pub fn uring_all() -> bool {
    std::env::var(IO_ENV).is_ok_and(|v| v == "uring")
}

/// How many times [`Cluster::start_opts`] boots a cluster on fresh ports when a port was
/// taken.
pub const PORT_ATTEMPTS: usize = 3;

/// The text a failed bind leaves in a log (`std::io::ErrorKind::AddrInUse`'s message).
const ADDR_IN_USE: &str = "Address already in use";

/// The time at the start of a log line (tracing's `2026-12-01T23:26:44.197155Z ...`, UTC).
pub fn line_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<u64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").get(..9)?.parse().ok()?
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + h * 3600 + min * 60 + sec;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// The times of the lines of `text` that contain `needle`, in order (lines without a
/// timestamp are skipped).
pub fn times_of(text: &str, needle: &str) -> Vec<SystemTime> {
    text.lines()
        .filter(|l| l.contains(needle))
        .filter_map(line_time)
        .collect()
}

/// `later - earlier` as signed seconds (log times and the test's clock are one clock, but a
/// log line may carry a time a moment before an instant the test took after the event).
pub fn secs_between(earlier: SystemTime, later: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// What [`Cluster::start_opts`] boots: server counts, the binaries' profile, and keys merged
/// into the master's entry, every connector's entry and every chat server's entry
/// (`Value::Null`: none).
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// TCP frontends (`connector-server-1..`).
    pub tcp: u16,
    /// How many of the TCP frontends (the first ones) run on io_uring (`"io": "uring"`).
    pub uring: u16,
    /// WebSocket frontends (ids continue after the TCP ones).
    pub ws: u16,
    /// Chat servers (`chat-server-1..`).
    pub chats: u16,
    /// Run release (`Some(true)`) or debug binaries, built on first use; `None`: this
    /// executable's profile.
    pub release: Option<bool>,
    /// Extra keys of the master entry (e.g. `{"rpc": {...}}`).
    pub master_extra: Value,
    /// Extra keys of every connector entry (e.g. `{"interval": 50}`).
    pub connector_extra: Value,
    /// Extra keys of every WebSocket connector entry, after `connector_extra` (e.g.
    /// `{"web": 4080}`).
    pub ws_extra: Value,
    /// Extra keys of every chat entry.
    pub chat_extra: Value,
    /// The server binary (a game on the kennel library playing chat-demo's chat, e.g. the
    /// `panic-game` test game), run by the `kennel` master through master.json's `bin`;
    /// `None`: chat-demo, which is its own master.
    pub game: Option<PathBuf>,
    /// Routes appended to [`ROUTES`] in route.json (the chat routes keep their cmds).
    pub extra_routes: Vec<String>,
}

impl ClusterOptions {
    /// `tcp` TCP frontends, `ws` WebSocket frontends and `chats` chat servers, default binaries.
    pub fn new(tcp: u16, ws: u16, chats: u16) -> ClusterOptions {
        ClusterOptions {
            tcp,
            ws,
            chats,
            ..ClusterOptions::default()
        }
    }

    /// With every internal link encrypted (`"encryptLinks": true` in master.json).
    pub fn encrypted(mut self) -> ClusterOptions {
        if !self.master_extra.is_object() {
            self.master_extra = json!({});
        }
        self.master_extra["encryptLinks"] = json!(true);
        self
    }

    /// Adds `key: value` to every connector entry.
    pub fn connector_key(mut self, key: &str, value: Value) -> ClusterOptions {
        if !self.connector_extra.is_object() {
            self.connector_extra = json!({});
        }
        self.connector_extra[key] = value;
        self
    }
}

/// Copies `extra`'s keys into `entry` (both objects; a null `extra` adds nothing).
fn merge(entry: &mut Value, extra: &Value) {
    if let (Some(e), Some(x)) = (entry.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            e.insert(k.clone(), v.clone());
        }
    }
}

/// How to start the master: program and arguments (e.g. `chat-demo start -e test --dir ..`).
#[derive(Debug, Clone)]
pub struct MasterCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl MasterCommand {
    /// `chat-demo start -e test --dir <dir>`: chat-demo as its own master, env `test`.
    pub fn chat_demo(dir: &Path) -> MasterCommand {
        MasterCommand {
            program: bin("chat-demo"),
            args: vec![
                "start".into(),
                "-e".into(),
                "test".into(),
                "--dir".into(),
                dir.into(),
            ],
        }
    }
}

/// Spawns the master (without [`KENNEL_ENV`]); its stdout and stderr lines go to `lines` and
/// `tx` (stderr is echoed to the test's stderr too).
fn spawn_master(
    cmd: &MasterCommand,
    lines: &Arc<Mutex<Vec<String>>>,
    tx: &mpsc::Sender<String>,
) -> Result<Child> {
    let mut command = Command::new(&cmd.program);
    for var in KENNEL_ENV {
        command.env_remove(var);
    }
    let mut child = command
        .args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn the master {}", cmd.program.display()))?;
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    for (pipe, echo) in [
        (Box::new(stdout) as Box<dyn std::io::Read + Send>, false),
        (Box::new(stderr), true),
    ] {
        let (lines, tx) = (lines.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{line}");
                }
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
    Ok(child)
}

/// A running chat cluster.
pub struct Cluster {
    /// The project dir (config, logs, .kennel).
    pub dir: tempfile::TempDir,
    master: Option<Child>,
    /// Every line the master printed so far.
    pub lines: Arc<Mutex<Vec<String>>>,
    line_rx: mpsc::Receiver<String>,
    line_tx: mpsc::Sender<String>,
    master_cmd: MasterCommand,
    /// Client address per frontend id.
    pub frontends: Vec<(String, String)>,
    /// Master port.
    pub master_port: u16,
    spawned_at: Instant,
    server_ids: Vec<String>,
}

impl Cluster {
    /// Boots `connectors` TCP frontends and `chats` chat servers and waits until all registered.
    pub fn start(connectors: u16, chats: u16) -> Result<Cluster> {
        Cluster::start_with(connectors, 0, chats)
    }

    /// Boots `tcp` TCP frontends, then `ws` WebSocket frontends (ids continue the numbering),
    /// and `chats` chat servers.
    pub fn start_with(tcp: u16, ws: u16, chats: u16) -> Result<Cluster> {
        Cluster::start_custom(tcp, ws, chats, Value::Null)
    }

    /// Like [`Cluster::start_with`], with `frontend_extra` (a JSON object, e.g.
    /// `{"heartbeat": 1, "maxConnectionNum": 10}`) merged into every frontend's entry.
    pub fn start_custom(
        tcp: u16,
        ws: u16,
        chats: u16,
        frontend_extra: serde_json::Value,
    ) -> Result<Cluster> {
        Cluster::start_opts(&ClusterOptions {
            connector_extra: frontend_extra,
            ..ClusterOptions::new(tcp, ws, chats)
        })
    }

    /// Boots the cluster `opts` describes and waits until every server knows the others. A
    /// boot that lost a port to another process ([`PortTaken`]) is retried on fresh ports, up
    /// to [`PORT_ATTEMPTS`] times.
    pub fn start_opts(opts: &ClusterOptions) -> Result<Cluster> {
        let mut attempt = 1;
        loop {
            match Cluster::start_once(opts) {
                Err(e) if is_port_taken(&e) && attempt < PORT_ATTEMPTS => {
                    eprintln!("cluster fixture: {e:#}; booting again on fresh ports");
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// One boot of [`Cluster::start_opts`].
    fn start_once(opts: &ClusterOptions) -> Result<Cluster> {
        let ClusterOptions {
            tcp,
            uring,
            ws,
            chats,
            release,
            master_extra,
            connector_extra,
            ws_extra,
            chat_extra,
            game,
            extra_routes,
        } = opts.clone();
        let bin_dir = match release {
            Some(release) => bin_dir_for(release),
            None => bin_dir(),
        };
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
            if i <= uring || (transport == "tcp" && uring_all()) {
                entry["io"] = json!("uring");
            }
            merge(&mut entry, &connector_extra);
            if entry.get("ssl").is_some_and(|v| v == true) && connector_extra.get("io").is_none() {
                entry.as_object_mut().unwrap().remove("io");
            }
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
        if let Some(game) = &game {
            master["bin"] = json!(game);
        }
        merge(&mut master, &master_extra);
        if encrypt_all() && master.get("encryptLinks").is_none() {
            master["encryptLinks"] = json!(true);
        }
        std::fs::write(sys.join("master.json"), json!({env: master}).to_string())?;
        std::fs::write(
            sys.join("servers.json"),
            json!({env: {"connector": connector, "chat": chat}}).to_string(),
        )?;
        let routes: Vec<&str> = ROUTES
            .iter()
            .copied()
            .chain(extra_routes.iter().map(String::as_str))
            .collect();
        std::fs::write(sys.join("route.json"), json!(routes).to_string())?;
        let ids = frontends
            .iter()
            .map(|(id, _)| id.clone())
            .chain((1..=chats).map(|i| format!("chat-server-{i}")))
            .collect();
        let master_bin = if game.is_some() {
            "kennel"
        } else {
            "chat-demo"
        };
        let cmd = MasterCommand {
            program: bin_dir.join(master_bin),
            args: vec![
                "start".into(),
                "-e".into(),
                env.into(),
                "--dir".into(),
                dir.path().into(),
            ],
        };
        Cluster::launch(dir, cmd, frontends, master_port, ids)
    }

    /// Runs the master of the project in `dir` and waits until it prints that the cluster is
    /// ready and every server in `ids` knows the others. `frontends` lists (id, client address).
    /// Fails at once with [`PortTaken`] when the master or a server logs that its address is in
    /// use (a caller that picked the ports may retry on fresh ones).
    pub fn launch(
        dir: tempfile::TempDir,
        master_cmd: MasterCommand,
        frontends: Vec<(String, String)>,
        master_port: u16,
        ids: Vec<String>,
    ) -> Result<Cluster> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, line_rx) = mpsc::channel();
        let spawned_at = Instant::now();
        let child = spawn_master(&master_cmd, &lines, &tx)?;
        let mut c = Cluster {
            dir,
            master: Some(child),
            lines,
            line_rx,
            line_tx: tx,
            master_cmd,
            frontends,
            master_port,
            spawned_at,
            server_ids: ids,
        };
        c.wait_ready()?;
        // The master is ready once everyone registered; each server learns of the others a
        // moment later (a login in between would see no chat server). Wait for every server.
        for id in c.server_ids.clone() {
            c.wait_log(&id, "every configured server has registered")?;
        }
        Ok(c)
    }

    /// Waits for the master's `kennel: cluster ready` line; fails early (with [`PortTaken`]
    /// when a bind lost its port) if the master exits or a server log shows a taken address.
    fn wait_ready(&mut self) -> Result<()> {
        const READY: &str = "kennel: cluster ready";
        let deadline = Instant::now() + TIMEOUT * 2;
        loop {
            let printed = self.lines.lock().unwrap().join("\n");
            if printed.contains(READY) {
                return Ok(());
            }
            if let Some(l) = printed.lines().find(|l| l.contains(ADDR_IN_USE)) {
                return Err(PortTaken(format!("the master printed: {l}")).into());
            }
            for id in &self.server_ids {
                if let Some(l) = self.log(id).lines().find(|l| l.contains(ADDR_IN_USE)) {
                    return Err(PortTaken(format!("logs/{id}.log: {l}")).into());
                }
            }
            let exited = match self.master.as_mut() {
                Some(m) => m.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                // Its last lines may still be in the pipe readers.
                std::thread::sleep(Duration::from_millis(100));
                let printed = self.lines.lock().unwrap().join("\n");
                if let Some(l) = printed.lines().find(|l| l.contains(ADDR_IN_USE)) {
                    return Err(PortTaken(format!("the master printed: {l}")).into());
                }
                bail!("the master exited ({status}) before {READY:?}; it printed:\n{printed}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("master never printed {READY:?}; it printed:\n{printed}");
            }
            let _ = self
                .line_rx
                .recv_timeout(left.min(Duration::from_millis(100)));
        }
    }

    /// When the master process was spawned.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// Every configured server id.
    pub fn server_ids(&self) -> &[String] {
        &self.server_ids
    }

    /// Waits until every server's log shows a peer link up to every other server (the RPC mesh
    /// is complete, so every server also knows every other), polling the logs every 5 ms.
    /// Returns when that was first seen. Needs the servers' `info` log level (the default).
    pub fn wait_meshed(&self, limit: Duration) -> Result<Instant> {
        let deadline = Instant::now() + limit;
        let mut pending: Vec<&String> = self.server_ids.iter().collect();
        loop {
            pending.retain(|id| {
                let log = self.log(id);
                let linked: std::collections::HashSet<&str> = log
                    .lines()
                    .filter_map(|l| {
                        l.split_once("peer link up")?
                            .1
                            .split_once("peer=")?
                            .1
                            .split_whitespace()
                            .next()
                    })
                    .collect();
                !self
                    .server_ids
                    .iter()
                    .all(|other| other == *id || linked.contains(other.as_str()))
            });
            if pending.is_empty() {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!(
                    "not meshed within {limit:?}: {pending:?} lack links (logs/{}.log:\n{})",
                    pending[0],
                    self.log(pending[0])
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The master's pid, while it runs.
    pub fn master_pid(&self) -> Option<i32> {
        self.master.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILLs the master alone (its servers keep running) and reaps it.
    pub fn kill_master(&mut self) -> Result<()> {
        let mut child = self.master.take().context("no master running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts a new master on the same project (after [`Cluster::kill_master`]); it adopts the
    /// servers still running. Its output joins [`Cluster::lines`]; returns at once.
    pub fn restart_master(&mut self) -> Result<()> {
        if self.master.is_some() {
            bail!("a master is still running");
        }
        self.master = Some(spawn_master(&self.master_cmd, &self.lines, &self.line_tx)?);
        Ok(())
    }

    /// Lines printed since line index `from` that contain `needle`, waiting for one.
    pub fn wait_line_after(&mut self, from: usize, needle: &str) -> Result<String> {
        let deadline = Instant::now() + TIMEOUT * 2;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .skip(from)
                .find(|l| l.contains(needle))
            {
                return Ok(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "master never printed {needle:?} after line {from}; it printed:\n{}",
                    self.lines.lock().unwrap().join("\n")
                );
            }
            let _ = self
                .line_rx
                .recv_timeout(left.min(Duration::from_millis(200)));
        }
    }

    /// Waits for a master output line (stdout or stderr) containing `needle`.
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
        let master = self.master.as_ref().map(|c| c.id() as i32);
        let mut out = servers_in(self.dir.path());
        out.retain(|_, pid| Some(*pid) != master);
        out
    }

    /// Runs the operator CLI against this cluster: `chat-demo <args[0]> --dir <dir> -e test
    /// <args[1..]>`, without the caller's `KENNEL_*` secrets and master address, bounded by
    /// [`TIMEOUT`].
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(bin("chat-demo"));
        cmd.arg(args[0])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["-e", "test"])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in KENNEL_ENV {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().expect("chat-demo runs");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        rx.recv_timeout(TIMEOUT)
            .expect("the CLI answers in time")
            .expect("the CLI's output")
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
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "logs/{id}.log never contained {needle:?}:\n{}",
            self.log(id)
        )
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

/// Server processes (id -> pid) running in project `dir`: every process whose working
/// directory it is and whose command line has `--id <id>`.
pub fn servers_in(dir: &Path) -> HashMap<String, i32> {
    processes_in(dir)
        .into_iter()
        .filter_map(|(pid, args)| {
            let i = args.iter().position(|a| a == "--id")?;
            Some((args.get(i + 1)?.clone(), pid))
        })
        .collect()
}

/// Live processes (zombies left out) whose working directory is `dir`: (pid, command line).
pub fn processes_in(dir: &Path) -> Vec<(i32, Vec<String>)> {
    let mut out = Vec::new();
    let me = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(e.path().join("cwd")).ok().as_deref() != Some(me.as_path()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        });
        if zombie {
            continue;
        }
        let args = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((pid, args));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_line_times_parse() {
        let t = line_time("2026-12-01T23:26:44.197155Z  INFO kennel_master::master: x").unwrap();
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        // date -u -d 2026-12-01T23:26:44Z +%s
        assert_eq!(d.as_secs(), 1_796_167_604);
        assert_eq!(d.subsec_micros(), 197_155);
        assert!(line_time("kennel: cluster ready").is_none());
        let text = "2026-12-01T23:26:44.1Z a\nno time a\n2026-12-01T23:26:45Z a\n";
        let times = times_of(text, " a");
        assert_eq!(times.len(), 2);
        assert!((secs_between(times[0], times[1]) - 0.9).abs() < 1e-6);
        assert!((secs_between(times[1], times[0]) + 0.9).abs() < 1e-6);
    }

    /// A server whose port another process holds: the boot fails at once with [`PortTaken`]
    /// (not after the ready timeout), so callers can boot again on fresh ports.
    #[test]
    fn a_taken_port_fails_the_boot_fast_with_port_taken() {
        let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = squatter.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("config/sys");
        std::fs::create_dir_all(&sys).unwrap();
        let master_port = free_port();
        let connector = json!([{"id": "connector-server-1", "host": "127.0.0.1",
            "port": free_port(), "frontend": true, "clientPort": free_port()}]);
        let chat = json!([{"id": "chat-server-1", "host": "127.0.0.1", "port": taken}]);
        let master = json!({"id": "master-server-1", "host": "127.0.0.1", "port": master_port});
        std::fs::write(sys.join("master.json"), json!({"test": master}).to_string()).unwrap();
        std::fs::write(
            sys.join("servers.json"),
            json!({"test": {"connector": connector, "chat": chat}}).to_string(),
        )
        .unwrap();
        std::fs::write(sys.join("route.json"), json!(ROUTES).to_string()).unwrap();
        let cmd = MasterCommand::chat_demo(dir.path());
        let ids = vec!["connector-server-1".into(), "chat-server-1".into()];
        let t0 = Instant::now();
        let err = Cluster::launch(dir, cmd, vec![], master_port, ids)
            .err()
            .expect("the boot fails");
        assert!(is_port_taken(&err), "{err:#}");
        assert!(err.to_string().contains("chat-server-1"), "{err:#}");
        assert!(t0.elapsed() < TIMEOUT, "took {:?}", t0.elapsed());
        drop(squatter);
    }
}
