//! Chat load for abuse, fault and soak tests: logging players into rooms, a [`Witness`] pair
//! that keeps heartbeating and proves on demand that chat still works, and helpers to read a
//! process's resident memory (now and peak), open fds, unread TCP bytes and listening ports.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::client::Client;

/// Logs `uid` in (room `room`) and joins the room; returns the login reply.
pub async fn login_join(c: &mut Client, uid: u64, room: i64) -> Result<Value> {
    let r = c
        .request("connector.main.login", &json!({"uid": uid, "room": room}))
        .await?;
    ensure!(r["code"] == 0, "login {uid}: {r}");
    let j = c.request("chat.main.join", &json!({})).await?;
    ensure!(j["code"] == 0, "join {uid}: {j}");
    ensure!(j["room"] == json!(room), "join {uid}: {j}");
    Ok(r)
}

type Check = (String, oneshot::Sender<Result<()>>);

/// Two logged-in players in one room, driven by a background task that sends heartbeats
/// every 300 ms (so short heartbeat settings do not close them) and, on [`Witness::check`],
/// has one say something and waits until both hear it.
pub struct Witness {
    tx: mpsc::Sender<Check>,
}

impl Witness {
    /// Two TCP players `uid` and `uid + 1` on frontend `addr`, in room `room`.
    pub async fn tcp(addr: &str, uid: u64, room: i64) -> Result<Witness> {
        let a = Client::connect(addr).await?;
        let b = Client::connect(addr).await?;
        Witness::start(a, b, uid, room).await
    }

    /// Logs connected clients `a` and `b` in as players `uid` and `uid + 1`, in room `room`.
    pub async fn start(mut a: Client, mut b: Client, uid: u64, room: i64) -> Result<Witness> {
        login_join(&mut a, uid, room).await.context("witness a")?;
        login_join(&mut b, uid + 1, room)
            .await
            .context("witness b")?;
        let (tx, mut rx) = mpsc::channel::<Check>(1);
        tokio::spawn(async move {
            let hb = kennel_proto::client::heartbeat_frame();
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let _ = a.send_raw(&hb).await;
                        let _ = b.send_raw(&hb).await;
                    }
                    cmd = rx.recv() => {
                        let Some((label, reply)) = cmd else { break };
                        let r = round(&mut a, &mut b, uid, &label).await;
                        let _ = reply.send(r);
                    }
                }
            }
        });
        Ok(Witness { tx })
    }

    /// One chat round: player `uid` says `label`; both players must receive it.
    pub async fn check(&self, label: &str) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((label.to_string(), reply))
            .await
            .context("witness task ended")?;
        rx.await.context("witness task ended")?
    }
}

async fn round(a: &mut Client, b: &mut Client, uid: u64, label: &str) -> Result<()> {
    a.send("chat.main.send", &json!({"t": label})).await?;
    for (name, c) in [("a", a), ("b", b)] {
        loop {
            let got = c
                .expect_push("chat.main.onChat")
                .await
                .with_context(|| format!("witness {name} waiting for {label:?}"))?;
            if got["t"] == json!(label) {
                if got["u"] != json!(uid) {
                    bail!("witness {name}: {label:?} from the wrong sender: {got}");
                }
                break;
            }
        }
    }
    Ok(())
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// The `key` line (e.g. `VmRSS:`) of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Opens `n` raw TCP connections to `addr` that never handshake.
pub async fn raw_connections(addr: &str, n: usize) -> Result<Vec<tokio::net::TcpStream>> {
    let mut raw = Vec::with_capacity(n);
    for _ in 0..n {
        raw.push(tokio::net::TcpStream::connect(addr).await?);
    }
    Ok(raw)
}

/// Per socket: still open after `wait` (true: the read timed out), or closed by the server
/// (EOF or reset: false). All waited at once.
pub async fn still_open(raw: &mut [tokio::net::TcpStream], wait: Duration) -> Vec<bool> {
    use tokio::io::AsyncReadExt;
    let probes = raw.iter_mut().map(|s| async move {
        let mut b = [0u8; 8];
        tokio::time::timeout(wait, s.read(&mut b)).await.is_err()
    });
    futures_util::future::join_all(probes).await
}

/// Number of open file descriptors of process `pid` (entries of `/proc/<pid>/fd`).
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Peak resident memory of process `pid` in KiB (`VmHWM` of `/proc/<pid>/status`), since it
/// started or since [`reset_peak_rss`].
pub fn peak_rss_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resets the peak resident memory of `pid` to its current RSS (writes `5` to
/// `/proc/<pid>/clear_refs`; Linux 4.0+, needs the right to ptrace the process).
pub fn reset_peak_rss(pid: i32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// One TCP socket of a process, from `/proc/<pid>/net/tcp{,6}`.
#[derive(Debug, Clone)]
struct TcpSocket {
    /// Local address as the kernel prints it (hex `ip:port`).
    local: String,
    /// Remote address, likewise.
    remote: String,
    /// Bytes received and not yet read by the process.
    rx_queue: u64,
    /// Listening (state `0A`).
    listening: bool,
}

/// The TCP sockets process `pid` holds (its fds matched to the kernel's socket table).
fn tcp_sockets(pid: i32) -> Vec<TcpSocket> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let l = link.to_string_lossy();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || !inodes.contains(f[9]) {
                continue;
            }
            let rx = f[4]
                .split_once(':')
                .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
                .unwrap_or(0);
            out.push(TcpSocket {
                local: f[1].to_string(),
                remote: f[2].to_string(),
                rx_queue: rx,
                listening: f[3] == "0A",
            });
        }
    }
    out
}

/// The ports process `pid` listens on over TCP (IPv4 and IPv6), in the kernel's table order.
pub fn listening_ports(pid: i32) -> Vec<u16> {
    tcp_sockets(pid)
        .into_iter()
        .filter(|s| s.listening)
        .filter_map(|s| u16::from_str_radix(s.local.rsplit(':').next()?, 16).ok())
        .collect()
}

/// Bytes that process `reader` has received from process `peer` over TCP and not read yet
/// (e.g. RPCs sent to a SIGSTOPped server): the receive queues of `reader`'s sockets whose
/// other end is one of `peer`'s.
pub fn unread_from(reader: i32, peer: i32) -> u64 {
    let theirs: std::collections::HashSet<String> =
        tcp_sockets(peer).into_iter().map(|s| s.local).collect();
    tcp_sockets(reader)
        .into_iter()
        .filter(|s| theirs.contains(&s.remote))
        .map(|s| s.rx_queue)
        .sum()
}
