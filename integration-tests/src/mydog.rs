//! Boots the original Node.js mydog 2.3.0 chat peer (`shared/peer-mydog-chat`) for a test, so
//! the same game client can be pointed at mydog and at kennel: the peer is copied into a temp
//! dir, its `node_modules` installed once per `package.json` (cached under
//! `<target>/mydog-peer-cache/`), its layout replaced by an env `test` on free ports, and
//! `node app.js env=test` started in its own process group. Readiness is every server's
//! `MDREADY rpc <id>` line; dropping a [`MydogPeer`] kills the whole group.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;

use crate::cluster::free_port;

/// Env var naming the peer's directory when `shared/` is not beside the clone.
pub const PEER_ENV: &str = "KENNEL_MYDOG_PEER";
/// Env var that, set to `1`, lets mydog tests skip (instead of fail) without node/npm.
pub const SKIP_ENV: &str = "KENNEL_SKIP_MYDOG";
/// How long the peer may take from `node app.js` to every server's `MDREADY rpc`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `npm install` may take.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Heartbeat the peer's connectors announce (`MD_HEARTBEAT`): kennel's connector default, so
/// both handshakes carry the same value.
pub const HEARTBEAT_SECS: u64 = 60;

/// `Ok` when `node` and `npm` both run; otherwise why not.
pub fn node_and_npm() -> std::result::Result<(), String> {
    for tool in ["node", "npm"] {
        match Command::new(tool)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(format!("`{tool} --version` failed: {}", o.status)),
            Err(e) => return Err(format!("`{tool}` is not runnable from PATH: {e}")),
        }
    }
    Ok(())
}

/// The mydog chat peer's source dir: `<repo>/../shared/peer-mydog-chat`, else `$KENNEL_MYDOG_PEER`.
pub fn peer_source() -> Result<PathBuf> {
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peer-mydog-chat");
    if beside.join("package.json").is_file() {
        return Ok(beside);
    }
    if let Some(dir) = std::env::var_os(PEER_ENV) {
        let dir = PathBuf::from(dir);
        if dir.join("package.json").is_file() {
            return Ok(dir);
        }
        bail!("${PEER_ENV}={} holds no package.json", dir.display());
    }
    bail!(
        "the mydog peer is neither at {} nor named by ${PEER_ENV}",
        beside.display()
    )
}

/// The workspace target dir (tests run from `<target>/<profile>/deps/`, binaries from
/// `<target>/<profile>/`).
pub fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("exe has no dir")?.to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.parent()
        .map(Path::to_path_buf)
        .context("exe is not under <target>/<profile>")
}

/// Copies `src` into `dst` recursively (symlinks recreated), skipping top-level `skip` names.
fn copy_dir(src: &Path, dst: &Path, skip: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let (from, to) = (entry.path(), dst.join(&name));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if kind.is_dir() {
            copy_dir(&from, &to, &[])?;
        } else {
            std::fs::copy(&from, &to)
                .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

/// Runs `cmd` in its own process group with a deadline; kills the group when it expires.
pub fn run_bounded(mut cmd: Command, what: &str, limit: Duration) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("spawn {what}"))?;
    let pgid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = killpg(pgid, Signal::SIGKILL);
            bail!("{what} did not finish within {limit:?}")
        }
    }
}

/// Gives `app_root` (a copy of the peer) a `node_modules`: from the cache keyed by the
/// `package.json` contents, or by `npm install` (whose result then fills the cache).
fn install_node_modules(app_root: &Path) -> Result<()> {
    let package_json = std::fs::read_to_string(app_root.join("package.json"))?;
    let key = kennel_proto::client::route_md5(&[package_json]);
    let cache_root = target_dir()?.join("mydog-peer-cache");
    let cached = cache_root.join(&key);
    if cached.join("node_modules/mydog/package.json").is_file() {
        return copy_dir(
            &cached.join("node_modules"),
            &app_root.join("node_modules"),
            &[],
        );
    }
    let mut npm = Command::new("npm");
    npm.args(["install", "--no-audit", "--no-fund"])
        .current_dir(app_root)
        .env("npm_config_update_notifier", "false");
    let out = run_bounded(npm, "npm install", INSTALL_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "npm install in {} failed ({}):\n{}\n{}",
            app_root.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Fill the cache atomically: copy beside it, then rename (a concurrent run may win).
    std::fs::create_dir_all(&cache_root)?;
    let staging = tempfile::tempdir_in(&cache_root)?;
    copy_dir(
        &app_root.join("node_modules"),
        &staging.path().join("node_modules"),
        &[],
    )?;
    let _ = std::fs::rename(staging.path(), &cached);
    Ok(())
}

/// Installs the peer's `node_modules` into the cache (`npm install` on first use), so a later
/// [`MydogPeer::start`] only copies them: lets a test keep the install out of what it times.
pub fn prepare() -> Result<()> {
    let dir = tempfile::tempdir()?;
    copy_dir(&peer_source()?, dir.path(), &["node_modules"])?;
    install_node_modules(dir.path())
}

/// A running mydog chat peer (master plus every server, one process group).
pub struct MydogPeer {
    /// The scratch copy of the peer.
    pub dir: tempfile::TempDir,
    master: Option<Child>,
    /// Every stdout line of the master (which relays its servers') so far, `!`-prefixed for
    /// stderr.
    pub lines: Arc<Mutex<Vec<String>>>,
    /// Client address per frontend id.
    pub frontends: Vec<(String, String)>,
    /// Master port.
    pub master_port: u16,
    /// When `node app.js` was spawned.
    pub spawned_at: Instant,
    /// When the last server printed `MDREADY view` (knows every server: all registered).
    pub all_view_at: Instant,
    /// When the last server printed `MDREADY rpc` (a link to every other server: meshed).
    pub all_rpc_at: Instant,
}

/// One line from the master's stdout or stderr, or the end of its stdout.
enum Event {
    Out(String),
    Eof,
}

impl MydogPeer {
    /// Boots `connectors` frontends and `chats` chat servers (ids `connector-server-1..`,
    /// `chat-server-1..`) and waits until every server has printed `MDREADY rpc`.
    pub fn start(connectors: u16, chats: u16) -> Result<MydogPeer> {
        let src = peer_source()?;
        let dir = tempfile::tempdir()?;
        copy_dir(&src, dir.path(), &["node_modules"])?;
        install_node_modules(dir.path())?;

        let master_port = free_port();
        let mut connector = Vec::new();
        let mut frontends = Vec::new();
        let mut expected = HashSet::new();
        for i in 1..=connectors {
            let (port, client) = (free_port(), free_port());
            let id = format!("connector-server-{i}");
            connector.push(json!({"id": id, "host": "127.0.0.1", "port": port, "frontend": true, "clientPort": client}));
            frontends.push((id.clone(), format!("127.0.0.1:{client}")));
            expected.insert(id);
        }
        let mut chat = Vec::new();
        for i in 1..=chats {
            let id = format!("chat-server-{i}");
            chat.push(json!({"id": id, "host": "127.0.0.1", "port": free_port()}));
            expected.insert(id);
        }
        // The peer's master.js serves every env of envs.js's ENV_NAMES on $MD_MASTER_PORT.
        let sys = dir.path().join("app/config/sys");
        std::fs::write(
            sys.join("envs.js"),
            "\"use strict\";\n// Written by kennel's integration tests: the one env they run.\n\
             exports.ENV_NAMES = [\"test\"];\n",
        )?;
        let servers = json!({"test": {"connector": connector, "chat": chat}});
        std::fs::write(
            sys.join("servers.js"),
            format!(
                "\"use strict\";\n// Written by kennel's integration tests: free ports.\n\
                 Object.defineProperty(exports, \"__esModule\", {{ value: true }});\n\
                 exports.default = {servers:#};\n"
            ),
        )?;

        let spawned_at = Instant::now();
        let mut child = Command::new("node")
            .args(["app.js", "env=test"])
            .current_dir(dir.path().join("app"))
            .env("MD_MASTER_PORT", master_port.to_string())
            .env("MD_HEARTBEAT", HEARTBEAT_SECS.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("spawn `node app.js env=test`")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let (l, t) = (lines.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line.clone());
                let _ = t.send(Event::Out(line));
            }
            let _ = t.send(Event::Eof);
        });
        let err = child.stderr.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(format!("!{line}"));
            }
        });
        let mut peer = MydogPeer {
            dir,
            master: Some(child),
            lines,
            frontends,
            master_port,
            spawned_at,
            all_view_at: spawned_at,
            all_rpc_at: spawned_at,
        };

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut expected_view = expected.clone();
        while !expected.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Event::Out(line)) => {
                    let mut words = line.split_whitespace();
                    match (words.next(), words.next(), words.next()) {
                        (Some("MDREADY"), Some("rpc"), Some(id))
                            if expected.remove(id) && expected.is_empty() =>
                        {
                            peer.all_rpc_at = Instant::now();
                        }
                        (Some("MDREADY"), Some("view"), Some(id))
                            if expected_view.remove(id) && expected_view.is_empty() =>
                        {
                            peer.all_view_at = Instant::now();
                        }
                        _ => {}
                    }
                }
                Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "the mydog master exited before {expected:?} were ready; it printed:\n{}",
                    peer.output()
                ),
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "{expected:?} never printed MDREADY rpc within {READY_TIMEOUT:?}; the master \
                     printed:\n{}",
                    peer.output()
                ),
            }
        }
        Ok(peer)
    }

    /// Client address of the `i`-th frontend.
    pub fn client_addr(&self, i: usize) -> &str {
        &self.frontends[i % self.frontends.len()].1
    }

    /// Every process of the peer (its process group): the master and each server.
    pub fn pids(&self) -> Vec<i32> {
        let Some(pgid) = self.master.as_ref().map(|m| m.id() as i32) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if nix::unistd::getpgid(Some(Pid::from_raw(pid))).ok() == Some(Pid::from_raw(pgid)) {
                out.push(pid);
            }
        }
        out
    }

    /// Server processes (id -> pid), from the `id=<id>` argument the master gives each.
    pub fn server_pids(&self) -> std::collections::HashMap<String, i32> {
        let mut out = std::collections::HashMap::new();
        for pid in self.pids() {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            for arg in cmdline.split(|b| *b == 0) {
                if let Some(id) = arg.strip_prefix(b"id=") {
                    out.insert(String::from_utf8_lossy(id).into_owned(), pid);
                }
            }
        }
        out
    }

    /// Everything the master printed so far (stderr lines prefixed with `!`).
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for MydogPeer {
    fn drop(&mut self) {
        if let Some(mut m) = self.master.take() {
            let _ = killpg(Pid::from_raw(m.id() as i32), Signal::SIGKILL);
            let _ = m.wait();
        }
        if std::thread::panicking() {
            eprintln!("mydog peer output:\n{}", self.output());
        }
    }
}
