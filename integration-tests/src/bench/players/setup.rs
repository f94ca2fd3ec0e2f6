//! Opening the players' connections before a run: TCP connect, handshake (route list from the
//! reply), and, when the scenario needs it, `connector.main.login` (a fresh uid; room `i` for
//! the echo routes, `i / room size` for chat) and `chat.main.join`, on kennel-client's raw
//! connection, which then hands the bare TCP socket (and any bytes read past the last reply) to
//! the players' I/O back ends. At most 256 connections in setup at a time; each exchange has a
//! deadline. Setup is not measured, so it may allocate freely.

use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kennel_client::ClientBuilder;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::{Kind, Spec};
use crate::bench::load::login_as;

/// How long one setup exchange (connect, handshake, login, join) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Connections in setup at once.
const SETUP_PARALLEL: usize = 256;

/// The cmds a run uses, from the handshake's route list.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cmds {
    /// The echo route of the scenario (request and reply).
    pub request: u16,
    /// `chat.main.send`.
    pub send: u16,
    /// `chat.main.onChat`.
    pub push: u16,
}

/// One connection after setup.
pub struct Ready {
    /// The socket (nodelay).
    pub stream: TcpStream,
    /// Bytes read past the last setup reply.
    pub leftover: Vec<u8>,
}

/// Opens `spec.players` connections over `addrs` (round robin) with uids `uid_base..`; returns
/// them in index order with the cmds. Must run inside a `LocalSet`.
pub async fn open(addrs: &[String], spec: &Spec, uid_base: u64) -> Result<(Vec<Ready>, Cmds)> {
    let gate = Rc::new(Semaphore::new(SETUP_PARALLEL));
    let mut tasks = Vec::with_capacity(spec.players);
    for i in 0..spec.players {
        let addr = addrs[i % addrs.len()].clone();
        let (gate, kind, room_size) = (gate.clone(), spec.kind, spec.room_size);
        tasks.push(tokio::task::spawn_local(async move {
            let _permit = gate.acquire().await;
            tokio::time::timeout(
                SETUP_TIMEOUT,
                one(&addr, kind, i, room_size, uid_base + i as u64),
            )
            .await
            .unwrap_or_else(|_| bail!("setup of connection {i} took over {SETUP_TIMEOUT:?}"))
            .with_context(|| format!("connection {i} to {addr}"))
        }));
    }
    let mut out = Vec::with_capacity(spec.players);
    let mut cmds = Cmds::default();
    for t in tasks {
        let (ready, c) = t.await??;
        out.push(ready);
        cmds = c;
    }
    Ok((out, cmds))
}

/// Connection `i`: connect and handshake (kennel-client, empty md5), login and join as `kind`
/// needs, then the bare socket.
async fn one(
    addr: &str,
    kind: Kind,
    i: usize,
    room_size: usize,
    uid: u64,
) -> Result<(Ready, Cmds)> {
    let mut c = match ClientBuilder::new(addr)
        .no_route_cache()
        .connect_timeout(SETUP_TIMEOUT)
        .connect_raw()
        .await
    {
        Ok(c) => c,
        Err(e) => {
            // The server's end of the socket is still there (closing): its queues say
            // whether the handshake was read.
            dump_unanswered(i);
            return Err(e.into());
        }
    };
    let routes = &c.handshake.routes;
    let cmds = Cmds {
        request: routes.cmd(kind.route())?,
        send: routes.cmd("chat.main.send")?,
        push: routes.cmd("chat.main.onChat")?,
    };
    let room = if kind.is_chat() { i / room_size } else { i };
    if kind.logs_in()
        && let Err(e) = login_as(&mut c, uid, room as u64, kind.is_chat()).await
    {
        // The connection is still open: what its sockets and the connectors' rings hold says
        // on which side the exchange stopped.
        dump_unanswered(i);
        return Err(e);
    }
    let (stream, leftover) = c
        .into_tcp()
        .await?
        .context("a TCP connection gave back no socket")?;
    Ok((
        Ready {
            stream,
            leftover: leftover.to_vec(),
        },
        cmds,
    ))
}

/// Prints, for the first setup exchange left unanswered (connection `i`), the sockets with
/// bytes queued and, for every connector process on the machine, its open files, rings and
/// epoll sets (once per bench process: later failures usually follow from the first).
fn dump_unanswered(i: usize) {
    static ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if ONCE.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    for l in super::ramp::queued_sockets() {
        eprintln!("bench: unanswered {i}: socket with bytes queued: {l}");
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmd.contains("connector-server") {
            continue;
        }
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        eprintln!("bench: unanswered {i}: pid {pid}: {fds} open files");
        for l in super::ramp::io_fdinfo(pid) {
            eprintln!("bench: unanswered {i}: pid {pid}: {l}");
        }
    }
}
