//! Bounded soak: boots the chat-demo cluster (2 TCP frontends, 2 chat servers), runs players
//! that chat, echo and call RPCs for `--secs` seconds (default 120), and SIGKILLs a server every
//! `--every` seconds (default 20: chat-server-1, connector-server-1, chat-server-2,
//! chat-server-1, chat-server-2; connector-server-2 lives throughout, for its RSS). Players whose frontend dies reconnect and log in again; players whose chat server
//! dies join again once it is back.
//!
//! Afterwards it checks that every delivered broadcast was complete: each room member saw
//! every message sent while both it and the sender were joined and no server they depend on
//! (sender's and receiver's frontends, the room's chat server) was killed between the send and
//! one second later. It prints the figures (sends, expected and missing deliveries, restart
//! times, frontend RSS at start and end) and exits 1 if anything expected is missing.
//!
//! `cargo run --release -p integration-tests --bin soak [-- --secs 120 --every 20 --players 40]`

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::client::Client;
use integration_tests::cluster::Cluster;
use integration_tests::load::rss_kib;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::sync::watch;

/// Everything that happened, with times since the start.
#[derive(Default)]
struct Record {
    /// (server id, killed at).
    kills: Vec<(String, Duration)>,
    /// uid -> times its join reply arrived.
    joins: HashMap<u64, Vec<Duration>>,
    /// (sender, seq, sent at, room).
    sends: Vec<(u64, u64, Duration, i64)>,
    /// (receiver, sender, seq).
    receipts: HashSet<(u64, u64, u64)>,
    /// Requests (echo, rpc echo) sent and answered.
    requests: (u64, u64),
    /// Reconnections after a frontend died.
    reconnects: u64,
}

struct Setup {
    secs: u64,
    every: u64,
    players: usize,
}

fn args() -> Result<Setup> {
    let mut s = Setup {
        secs: 120,
        every: 20,
        players: 40,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v: u64 = it
            .next()
            .with_context(|| format!("{a} needs a value"))?
            .parse()
            .with_context(|| format!("{a} takes a number"))?;
        match a.as_str() {
            "--secs" => s.secs = v,
            "--every" => s.every = v.max(1),
            "--players" => s.players = v as usize,
            other => anyhow::bail!("unknown flag {other} (flags: --secs, --every, --players)"),
        }
    }
    Ok(s)
}

const ROOMS: i64 = 8;

fn chat_of(room: i64) -> &'static str {
    if room % 2 == 0 {
        "chat-server-1"
    } else {
        "chat-server-2"
    }
}

/// One player's life: connect, log in, join, then chat/echo every 250 ms while reading
/// everything; reconnect when its frontend dies; re-join when told its chat server is back.
async fn player(
    addr: String,
    uid: u64,
    room: i64,
    start: Instant,
    end: Instant,
    rec: Arc<Mutex<Record>>,
    mut rejoin: watch::Receiver<u64>,
) {
    let mut seq = 0u64;
    'connect: loop {
        let mut c = loop {
            if Instant::now() > end {
                return;
            }
            match Client::connect(&addr).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let cmd = |r: &str| c.cmd(r).expect("route");
        let (login, join, on_chat) = (
            cmd("connector.main.login"),
            cmd("chat.main.join"),
            cmd("chat.main.onChat"),
        );
        let echoes = [
            cmd("connector.main.echo"),
            cmd("chat.main.echo"),
            cmd("chat.main.rpcEcho"),
        ];
        if c.send("connector.main.login", &json!({"uid": uid, "room": room}))
            .await
            .is_err()
        {
            continue;
        }
        let mut joined = false;
        let mut next = Instant::now();
        rejoin.mark_unchanged();
        loop {
            let now = Instant::now();
            if now > end + Duration::from_secs(3) {
                return;
            }
            if rejoin.has_changed().unwrap_or(false) {
                rejoin.mark_unchanged();
                joined = false;
                if c.send("chat.main.join", &json!({})).await.is_err() {
                    rec.lock().unwrap().reconnects += 1;
                    continue 'connect;
                }
            }
            if joined && now >= next && now < end {
                next = now + Duration::from_millis(250);
                seq += 1;
                let at = start.elapsed();
                let ok = c
                    .send("chat.main.send", &json!({"t": "soak", "s": uid, "n": seq}))
                    .await
                    .is_ok();
                if ok {
                    rec.lock().unwrap().sends.push((uid, seq, at, room));
                    let route = ["connector.main.echo", "chat.main.echo", "chat.main.rpcEcho"]
                        [(seq % 3) as usize];
                    if seq.is_multiple_of(4) && c.send(route, &json!({"n": seq})).await.is_ok() {
                        rec.lock().unwrap().requests.0 += 1;
                    }
                }
            }
            match tokio::time::timeout(Duration::from_millis(50), c.next_message()).await {
                Err(_) => {}
                Ok(Err(_)) => {
                    // The frontend went away: reconnect and log in again.
                    rec.lock().unwrap().reconnects += 1;
                    continue 'connect;
                }
                Ok(Ok((m, v))) => {
                    if m == login {
                        if v["code"] == 0 {
                            let _ = c.send("chat.main.join", &json!({})).await;
                        }
                    } else if m == join {
                        if v["code"] == 0 && v["room"] == json!(room) {
                            joined = true;
                            let at = start.elapsed();
                            rec.lock().unwrap().joins.entry(uid).or_default().push(at);
                        }
                    } else if m == on_chat {
                        if let (Some(s), Some(n)) = (v["s"].as_u64(), v["n"].as_u64()) {
                            rec.lock().unwrap().receipts.insert((uid, s, n));
                        }
                    } else if echoes.contains(&m) && v["n"].is_u64() {
                        rec.lock().unwrap().requests.1 += 1;
                    }
                }
            }
        }
    }
}

/// How many times `needle` appears in server `id`'s log.
fn count(cluster: &Cluster, id: &str, needle: &str) -> usize {
    cluster.log(id).matches(needle).count()
}

/// How many times the two frontends announced that `server` was added, together.
fn added(cluster: &Cluster, server: &str) -> usize {
    let needle = format!("server added server={server}");
    ["connector-server-1", "connector-server-2"]
        .iter()
        .map(|f| count(cluster, f, &needle))
        .sum()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let setup = args()?;
    eprintln!("soak: booting the cluster (2 TCP frontends, 2 chat servers)");
    let cluster = Cluster::start(2, 2)?;
    let start = Instant::now();
    let end = start + Duration::from_secs(setup.secs);
    let rec = Arc::new(Mutex::new(Record::default()));
    let chats: HashMap<&str, watch::Sender<u64>> = ["chat-server-1", "chat-server-2"]
        .into_iter()
        .map(|id| (id, watch::channel(0).0))
        .collect();

    // Players: uid 1..=n, room = uid % ROOMS, frontend alternating.
    let mut tasks = Vec::new();
    for i in 0..setup.players {
        let uid = 1 + i as u64;
        let room = uid as i64 % ROOMS;
        let f = i % 2;
        tasks.push(tokio::spawn(player(
            cluster.client_addr(f).to_string(),
            uid,
            room,
            start,
            end,
            rec.clone(),
            chats[chat_of(room)].subscribe(),
        )));
    }
    let frontend_of = |uid: u64| format!("connector-server-{}", 1 + (uid - 1) % 2);

    // Frontend RSS once everyone is in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids0 = cluster.server_pids();
    let rss0: Vec<(String, i32, Option<u64>)> = ["connector-server-1", "connector-server-2"]
        .iter()
        .map(|id| (id.to_string(), pids0[*id], rss_kib(pids0[*id])))
        .collect();

    // The killer.
    // connector-server-2 is never killed, so its RSS start/end shows whether a long-lived
    // frontend leaks through the others' crashes.
    let rotation = [
        "chat-server-1",
        "connector-server-1",
        "chat-server-2",
        "chat-server-1",
        "chat-server-2",
    ];
    let mut restarts = Vec::new();
    let mut k = 0;
    loop {
        let at = start + Duration::from_secs(setup.every * (k as u64 + 1));
        if at + Duration::from_secs(5) > end {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let victim = rotation[k % rotation.len()];
        k += 1;
        let pid = cluster.server_pids()[victim];
        let before_added = added(&cluster, victim);
        let registered = count(&cluster, victim, "every configured server has registered");
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        let killed = Instant::now();
        rec.lock()
            .unwrap()
            .kills
            .push((victim.to_string(), start.elapsed()));
        // Back: a chat server when both frontends re-announce it, a frontend when it has
        // registered again and knows everyone.
        let back = loop {
            let done = if victim.starts_with("chat") {
                added(&cluster, victim) >= before_added + 2
            } else {
                count(&cluster, victim, "every configured server has registered") > registered
            };
            if done {
                break Some(killed.elapsed());
            }
            if killed.elapsed() > Duration::from_secs(30) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!(
            "soak: SIGKILL {victim} (pid {pid}) at {:?}: back in {back:?}",
            start.elapsed()
        );
        restarts.push((victim, back));
        if let Some(tx) = chats.get(victim) {
            tx.send_modify(|g| *g += 1);
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let pids1 = cluster.server_pids();
    let rss1: Vec<(String, i32, Option<u64>)> = ["connector-server-1", "connector-server-2"]
        .iter()
        .map(|id| (id.to_string(), pids1[*id], rss_kib(pids1[*id])))
        .collect();

    // The check.
    let rec = rec.lock().unwrap();
    let depends = |s: u64, r: u64, room: i64| -> [String; 3] {
        [frontend_of(s), frontend_of(r), chat_of(room).to_string()]
    };
    let last_kill_before = |ids: &[String; 3], t: Duration| -> Option<Duration> {
        rec.kills
            .iter()
            .filter(|(id, at)| ids.contains(id) && *at <= t)
            .map(|(_, at)| *at)
            .max()
    };
    let kill_within = |ids: &[String; 3], t: Duration| {
        rec.kills
            .iter()
            .any(|(id, at)| ids.contains(id) && *at > t && *at <= t + Duration::from_secs(1))
    };
    let joined_since = |uid: u64, after: Option<Duration>, t: Duration| {
        rec.joins
            .get(&uid)
            .is_some_and(|js| js.iter().any(|j| *j <= t && after.is_none_or(|k| *j > k)))
    };
    let members: HashMap<i64, Vec<u64>> =
        (1..=setup.players as u64).fold(HashMap::new(), |mut m, u| {
            m.entry(u as i64 % ROOMS).or_default().push(u);
            m
        });
    let (mut expected, mut delivered, mut missing, mut extra) = (0u64, 0u64, 0u64, 0u64);
    let mut examples = Vec::new();
    for (s, n, t, room) in &rec.sends {
        for r in &members[room] {
            let ids = depends(*s, *r, *room);
            let since = last_kill_before(&ids, *t);
            let covered = joined_since(*s, since, *t)
                && joined_since(*r, since, *t)
                && !kill_within(&ids, *t);
            let got = rec.receipts.contains(&(*r, *s, *n));
            match (covered, got) {
                (true, true) => {
                    expected += 1;
                    delivered += 1;
                }
                (true, false) => {
                    expected += 1;
                    missing += 1;
                    if examples.len() < 5 {
                        examples.push(format!("{s}#{n} at {t:?} to {r} (room {room})"));
                    }
                }
                (false, true) => extra += 1,
                (false, false) => {}
            }
        }
    }
    println!(
        "soak: {} s, {} players, a server SIGKILLed every {} s",
        setup.secs, setup.players, setup.every
    );
    for (victim, back) in &restarts {
        println!("soak: killed {victim}: back in {back:?}");
    }
    println!(
        "soak: {} broadcasts sent; {expected} deliveries expected (both joined, no dependency killed), \
         {delivered} delivered, {missing} missing; {extra} more delivered around kills",
        rec.sends.len()
    );
    // Players joined at the end: a join after the last kill of anything they depend on.
    let rejoined = (1..=setup.players as u64)
        .filter(|u| {
            let ids = depends(*u, *u, *u as i64 % ROOMS);
            let last = last_kill_before(&ids, Duration::MAX);
            joined_since(*u, last, Duration::MAX)
        })
        .count();
    println!(
        "soak: requests (echo/rpc) {} sent, {} answered; {} connection losses seen by players; \
         {rejoined}/{} players joined at the end",
        rec.requests.0, rec.requests.1, rec.reconnects, setup.players
    );
    for ((id, p0, r0), (_, p1, r1)) in rss0.iter().zip(&rss1) {
        let note = if p0 == p1 {
            "same process"
        } else {
            "restarted during the run"
        };
        println!("soak: {id} RSS start {r0:?} KiB (pid {p0}), end {r1:?} KiB (pid {p1}, {note})");
    }
    drop(cluster);
    if missing > 0 || rejoined < setup.players || restarts.iter().any(|(_, b)| b.is_none()) {
        eprintln!(
            "soak: FAILED: {missing} missing deliveries (e.g. {examples:?}), {} players not joined at the end",
            setup.players - rejoined
        );
        std::process::exit(1);
    }
    println!("soak: ok");
    Ok(())
}
