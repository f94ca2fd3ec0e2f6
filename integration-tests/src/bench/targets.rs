//! The systems under test, booted and torn down by the bench: kennel's chat-demo cluster (plain,
//! its frontends over TLS or on io_uring, or its internal links encrypted), the mydog peer, and
//! the raw echo server (tokio multi- or single-threaded, or one io_uring ring). Each exposes its client addresses and the pids
//! whose CPU and memory are measured; dropping one kills only what it started.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::cluster::{Cluster, ClusterOptions, free_port};
use crate::mydog::MydogPeer;

/// Which system a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum System {
    /// kennel's chat-demo.
    Kennel,
    /// The mydog 2.3.0 peer.
    Mydog,
    /// The raw tokio echo server (multi-threaded runtime).
    Raw,
    /// The raw echo server on a current-thread runtime: the epoll floor of one core.
    RawSt,
    /// kennel's chat-demo with its frontends over TLS.
    KennelTls,
    /// kennel's chat-demo with every internal link encrypted (`encryptLinks`).
    KennelEncrypted,
    /// kennel's chat-demo with its frontends on the io_uring connector (`"io": "uring"`).
    KennelUring,
    /// The raw echo server on one thread and one io_uring ring: the io_uring floor of one core.
    RawUring,
}

impl System {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            System::Kennel => "kennel",
            System::Mydog => "mydog",
            System::Raw => "raw",
            System::RawSt => "raw-1t",
            System::KennelTls => "kennel-tls",
            System::KennelEncrypted => "kennel-encrypted",
            System::KennelUring => "kennel-uring",
            System::RawUring => "raw-uring",
        }
    }
}

enum Handle {
    Kennel(Box<Cluster>),
    Mydog(Box<MydogPeer>),
    Raw(Child),
}

/// A running system under test.
pub struct Target {
    /// Which system.
    pub system: System,
    /// Client addresses of its frontends (`host:port`), in id order.
    pub addrs: Vec<String>,
    /// Every process of it (master and servers), for CPU and RSS sums.
    pub pids: Vec<i32>,
    /// What a client needs to connect over TLS (kennel-tls), else `None`.
    pub tls: Option<kennel_client::TlsOptions>,
    handle: Handle,
    /// The certificate files of kennel-tls.
    _certs: Option<tempfile::TempDir>,
}

/// How long a booted cluster may take to mesh.
const MESH_TIMEOUT: Duration = Duration::from_secs(60);

/// Boot times of a cluster.
#[derive(Debug, Clone, Copy)]
pub struct BootTimes {
    /// From spawning the master to every server registered.
    pub registered: Duration,
    /// From spawning the master to every server linked to every other.
    pub meshed: Duration,
}

impl Target {
    /// kennel's chat-demo with `connectors` TCP frontends and `chats` chat servers, meshed.
    /// `release` picks the binaries' profile (`None` = this executable's).
    ///
    /// The connectors' rate limit is off (see below). Every server runs on the default single
    /// thread, like a Node process (on these 2 cores a second thread per frontend did not
    /// raise throughput and cost CPU per request). The environment variables
    /// `KENNEL_BENCH_FRONTEND_THREADS` and `KENNEL_BENCH_CHAT_THREADS` set `"threads"` on the
    /// frontends and the chat servers.
    pub fn kennel(
        connectors: u16,
        chats: u16,
        release: Option<bool>,
    ) -> Result<(Target, BootTimes)> {
        Target::kennel_with(connectors, chats, release, System::Kennel)
    }

    /// [`Target::kennel`] as `system`: [`System::KennelTls`], every frontend over TLS (a
    /// certificate of a CA made for the run; its clients connect with [`Target::tls`]);
    /// [`System::KennelEncrypted`], every internal link encrypted (`encryptLinks`).
    pub fn kennel_with(
        connectors: u16,
        chats: u16,
        release: Option<bool>,
        system: System,
    ) -> Result<(Target, BootTimes)> {
        let tls = system == System::KennelTls;
        let threads = |var: &str, default: u64| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        // The per-client rate limit (on by default: 1000 messages/s, burst 2000) is off: one
        // bench connection sends up to ~25,000 requests a second, and mydog has none.
        let mut opts = ClusterOptions::new(connectors, 0, chats)
            .connector_key(
                "threads",
                json!(threads("KENNEL_BENCH_FRONTEND_THREADS", 1)),
            )
            .connector_key("rateLimit", json!(false));
        opts.chat_extra = json!({"threads": threads("KENNEL_BENCH_CHAT_THREADS", 1)});
        opts.release = release;
        if system == System::KennelEncrypted {
            opts = opts.encrypted();
        }
        if system == System::KennelUring {
            opts = opts.connector_key("io", json!("uring"));
        }
        let (mut certs, mut client_tls) = (None, None);
        if tls {
            let ca = crate::tls::TestCa::new("kennel bench CA")?;
            let dir = tempfile::tempdir()?;
            let keys = ca.server_cert("kennel bench")?.write(dir.path())?;
            for (k, v) in keys.as_object().into_iter().flatten() {
                opts = opts.connector_key(k, v.clone());
            }
            client_tls = Some(ca.client_tls()?);
            certs = Some(dir);
        }
        let cluster = Cluster::start_opts(&opts)?;
        let registered = cluster.spawned_at().elapsed();
        let meshed = cluster.wait_meshed(MESH_TIMEOUT)? - cluster.spawned_at();
        let mut pids: Vec<i32> = cluster.server_pids().into_values().collect();
        pids.extend(cluster.master_pid());
        let addrs = cluster.frontends.iter().map(|f| f.1.clone()).collect();
        Ok((
            Target {
                system,
                addrs,
                pids,
                tls: client_tls,
                handle: Handle::Kennel(Box::new(cluster)),
                _certs: certs,
            },
            BootTimes { registered, meshed },
        ))
    }

    /// The mydog peer with `connectors` frontends and `chats` chat servers, meshed.
    pub fn mydog(connectors: u16, chats: u16) -> Result<(Target, BootTimes)> {
        let peer = MydogPeer::start(connectors, chats)?;
        let times = BootTimes {
            registered: peer.all_view_at - peer.spawned_at,
            meshed: peer.all_rpc_at - peer.spawned_at,
        };
        let addrs = peer.frontends.iter().map(|f| f.1.clone()).collect();
        let pids = peer.pids();
        Ok((
            Target {
                system: System::Mydog,
                addrs,
                pids,
                tls: None,
                handle: Handle::Mydog(Box::new(peer)),
                _certs: None,
            },
            times,
        ))
    }

    /// The raw echo server, as a subprocess of this executable (`<exe> raw-echo <port>`).
    pub fn raw() -> Result<Target> {
        Target::raw_echo(System::Raw)
    }

    /// The raw echo server on one thread (`<exe> raw-echo <port> 1`): a current-thread
    /// runtime, as kennel's servers run by default.
    pub fn raw_single() -> Result<Target> {
        Target::raw_echo(System::RawSt)
    }

    /// The raw echo server on one io_uring ring (`<exe> raw-echo <port> uring`).
    pub fn raw_uring() -> Result<Target> {
        Target::raw_echo(System::RawUring)
    }

    fn raw_echo(system: System) -> Result<Target> {
        let port = free_port();
        let mut args = vec!["raw-echo".to_string(), port.to_string()];
        match system {
            System::RawSt => args.push("1".into()),
            System::RawUring => args.push("uring".into()),
            _ => {}
        }
        let mut child = Command::new(std::env::current_exe()?)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn the raw echo server")?;
        let out = child.stdout.take().context("raw echo stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.starts_with("raw-echo listening") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("the raw echo server did not start");
                }
            }
        }
        Ok(Target {
            system,
            addrs: vec![format!("127.0.0.1:{port}")],
            pids: vec![child.id() as i32],
            tls: None,
            handle: Handle::Raw(child),
            _certs: None,
        })
    }

    /// The pid of server `id` (`connector-server-1`, ...).
    pub fn server_pid(&self, id: &str) -> Option<i32> {
        match &self.handle {
            Handle::Kennel(c) => c.server_pids().get(id).copied(),
            Handle::Mydog(p) => p.server_pids().get(id).copied(),
            Handle::Raw(c) => Some(c.id() as i32),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Handle::Raw(child) = &mut self.handle {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Cluster and MydogPeer kill what they started when dropped.
    }
}
