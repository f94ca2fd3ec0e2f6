//! Chat load for abuse, fault and soak tests: logging players into rooms, a [`Witness`] pair
//! that keeps heartbeating and proves on demand that chat still works, and helpers to read a
//! process's resident memory.

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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Number of open file descriptors of process `pid` (entries of `/proc/<pid>/fd`).
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}
