//! Faults under client load, over real processes: SIGKILL a backend while 100 players chat,
//! SIGKILL a frontend, SIGKILL / SIGSTOP the master, and SIGSTOP a server past the heartbeat
//! timeout (a peer link cut without a FIN). Each test counts what was delivered and lost in
//! every phase and prints it (`cargo test --test faults -- --nocapture`).

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::join_all;
use integration_tests::TIMEOUT;
use integration_tests::client::Client;
use integration_tests::cluster::{Cluster, ClusterOptions, secs_between, times_of};
use integration_tests::load::{login_join, unread_from};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// How soon an RPC is answered when its target is dead (the RPC timeout is 10 s): an error
/// from the link dropping, or an answer from the survivor.
const FAST: Duration = Duration::from_secs(2);

/// How long a restart may take past the master's backoff, from the kill to the frontends
/// hearing of the new process (spawn, bind, register, announce on a loaded 2-core machine).
const RESTART_SLACK: f64 = 1.5;

/// The longest a server waits between two dials of a lost master (`master_link`).
const REDIAL_CAP_MS: u64 = 2000;

/// The backoff (s) the master logged for restarting `id` (`server exited; restarting in 0.5 s`).
fn restart_delay(cluster: &Cluster, id: &str) -> f64 {
    let lines = cluster.lines.lock().unwrap();
    let line = lines
        .iter()
        .rev()
        .find(|l| {
            l.contains("server exited; restarting in") && l.contains(&format!("server={id} "))
        })
        .unwrap_or_else(|| panic!("the master logged no restart of {id}"));
    line.split("restarting in ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no delay in {line:?}"))
}

/// One logged-in player.
struct Player {
    c: Client,
    uid: u64,
    room: i64,
    frontend: usize,
}

/// `n` players spread over the frontends `fronts`, in `rooms` rooms (room = index % rooms).
async fn players(
    cluster: &Cluster,
    n: usize,
    fronts: &[usize],
    rooms: i64,
    uid0: u64,
) -> Vec<Player> {
    let mut out = Vec::new();
    for i in 0..n {
        let frontend = fronts[i % fronts.len()];
        let mut c = Client::connect(cluster.client_addr(frontend))
            .await
            .unwrap();
        let uid = uid0 + i as u64;
        let room = i as i64 % rooms;
        login_join(&mut c, uid, room).await.unwrap();
        out.push(Player {
            c,
            uid,
            room,
            frontend,
        });
    }
    out
}

/// Outcome of one chat round.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    delivered: usize,
    lost: usize,
}

/// Every player for which `speaks` holds says `label`; every player for which `listens` holds
/// waits (up to `wait`) to hear each speaker of its room. Counts deliveries and losses.
async fn round(
    ps: &mut [Player],
    label: &str,
    speaks: impl Fn(&Player) -> bool,
    listens: impl Fn(&Player) -> bool,
    wait: Duration,
) -> Tally {
    let mut speakers: Vec<(u64, i64)> = Vec::new();
    for p in ps.iter_mut().filter(|p| speaks(p)) {
        p.c.send("chat.main.send", &json!({"t": label, "s": p.uid}))
            .await
            .unwrap();
        speakers.push((p.uid, p.room));
    }
    let deadline = tokio::time::Instant::now() + wait;
    let waits = ps.iter_mut().filter(|p| listens(p)).map(|p| {
        let mut want: HashSet<u64> = speakers
            .iter()
            .filter(|(_, r)| *r == p.room)
            .map(|(u, _)| *u)
            .collect();
        async move {
            let total = want.len();
            while !want.is_empty() {
                match tokio::time::timeout_at(deadline, p.c.expect_push("chat.main.onChat")).await {
                    Ok(Ok(v)) if v["t"] == json!(label) => {
                        want.remove(&v["s"].as_u64().unwrap_or(0));
                    }
                    Ok(Ok(_)) => {}
                    _ => break,
                }
            }
            (total - want.len(), want.len())
        }
    });
    let mut t = Tally::default();
    for (d, l) in join_all(waits).await {
        t.delivered += d;
        t.lost += l;
    }
    t
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after [`TIMEOUT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < TIMEOUT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_a_backend_while_100_players_chat() {
    // The calls in flight at the kill must fail for the drop, not for their timeout (10 s by
    // default, which the freeze below may outlast on a loaded machine).
    let cluster = Cluster::start_opts(&ClusterOptions {
        master_extra: json!({"rpc": {"timeout": 60}}),
        ..ClusterOptions::new(2, 0, 2)
    })
    .unwrap();
    // Rooms 0..10: even rooms on chat-server-1, odd rooms on chat-server-2.
    let mut ps = players(&cluster, 100, &[0, 1], 10, 1000).await;
    let all = |_: &Player| true;
    let before = round(&mut ps, "before", all, all, TIMEOUT).await;
    assert_eq!(before.lost, 0, "{before:?}");

    let pids = cluster.server_pids();
    let frontends = (pids["connector-server-1"], pids["connector-server-2"]);
    let victim = pids["chat-server-1"];
    let caller = pids["chat-server-2"];
    // Players of chat-server-2 call chat.main.rpcEcho, which chat-server-2 forwards to
    // chat-server-1.
    let odd: Vec<usize> = (0..ps.len())
        .filter(|i| ps[*i].room % 2 == 1)
        .take(10)
        .collect();
    // RPCs in flight when their target dies fail fast with a clear error. To have them in
    // flight, the victim is frozen a moment first: each call is sent once the previous one
    // has reached the victim's socket (the link is idle otherwise: one answered call just
    // before means no heartbeat ping is due on it for a whole period).
    let warm = ps[odd[0]]
        .c
        .request("chat.main.rpcEcho", &json!({"warm": 1}))
        .await
        .unwrap();
    assert_eq!(warm, json!({"warm": 1}));
    kill(Pid::from_raw(victim), Signal::SIGSTOP).unwrap();
    for i in &odd {
        let unread = unread_from(victim, caller);
        ps[*i]
            .c
            .send("chat.main.rpcEcho", &json!({"n": i}))
            .await
            .unwrap();
        until("the call reaches the frozen chat-server-1", || {
            unread_from(victim, caller) > unread
        })
        .await;
    }
    let killed_at = SystemTime::now();
    let killed = Instant::now();
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let mut in_flight_slowest = Duration::ZERO;
    for i in &odd {
        let r = ps[*i].c.expect_push("chat.main.rpcEcho").await.unwrap();
        let took = killed.elapsed();
        assert_eq!(r["code"], 1, "call {i} in flight at the kill: {r}");
        let err = r["err"].as_str().unwrap_or_default();
        assert!(
            err.contains("chat-server-1") && err.contains("dropped"),
            "unclear error: {r}"
        );
        assert!(
            took < FAST,
            "in-flight call {i} failed {took:?} after the kill"
        );
        in_flight_slowest = in_flight_slowest.max(took);
    }

    // Calls made after the kill are answered as fast: by the survivor (once chat-server-2
    // knows chat-server-1 is gone, rpcEcho targets itself) or with the same clear error.
    let mut errors = 0;
    let mut slowest = Duration::ZERO;
    for i in &odd {
        let t0 = Instant::now();
        let r = ps[*i]
            .c
            .request("chat.main.rpcEcho", &json!({"n": i}))
            .await
            .unwrap();
        let took = t0.elapsed();
        assert!(took < FAST, "rpc answered after {took:?}");
        slowest = slowest.max(took);
        if r != json!({"n": i}) {
            errors += 1;
            let err = r["err"].as_str().unwrap_or_default();
            assert_eq!(r["code"], 1, "{r}");
            assert!(err.contains("chat-server-1"), "unclear error: {r}");
        }
    }

    // Players on the surviving backend chat on, undisturbed.
    let odd_room = |p: &Player| p.room % 2 == 1;
    let during = round(&mut ps, "during", odd_room, odd_room, TIMEOUT).await;
    assert_eq!(during.lost, 0, "{during:?}");

    // The master restarts it after its backoff; both frontends learn it is back. Timed from
    // the frontends' log lines (when each heard), not from this test's polling.
    until("chat-server-1 is back on both frontends", || {
        ["connector-server-1", "connector-server-2"]
            .iter()
            .all(|id| count(&cluster.log(id), "server added server=chat-server-1") >= 2)
    })
    .await;
    let back = ["connector-server-1", "connector-server-2"]
        .iter()
        .map(|id| {
            let added = times_of(&cluster.log(id), "server added server=chat-server-1");
            secs_between(killed_at, added[1])
        })
        .fold(0.0, f64::max);
    let backoff = restart_delay(&cluster, "chat-server-1");
    assert!(
        back >= backoff && back < backoff + RESTART_SLACK,
        "chat-server-1 back on both frontends {back:.3} s after the kill (backoff {backoff} s)"
    );
    assert_ne!(cluster.server_pids().get("chat-server-1"), Some(&victim));

    // Its rooms were in its memory: players re-join, then messages reach it again.
    for p in ps.iter_mut().filter(|p| p.room % 2 == 0) {
        let j = p.c.request("chat.main.join", &json!({})).await.unwrap();
        assert_eq!(j["code"], 0, "{j}");
        assert_eq!(j["chat"], "chat-server-1", "{j}");
    }
    let after = round(&mut ps, "after", all, all, TIMEOUT).await;
    assert_eq!(after.lost, 0, "{after:?}");

    // No frontend dropped a player, and no frontend process changed.
    for p in ps.iter_mut() {
        assert_eq!(
            p.c.request("connector.main.echo", &json!(p.uid))
                .await
                .unwrap(),
            json!(p.uid)
        );
    }
    let now = cluster.server_pids();
    assert_eq!(
        (now["connector-server-1"], now["connector-server-2"]),
        frontends
    );
    println!(
        "backend SIGKILL, 100 players: before {before:?}; {n} rpcs in flight at the kill: {n}/{n} failed with a clear error, \
         slowest {in_flight_slowest:?} after the kill; {n} rpcs after it: {errors}/{n} a clear error, the rest answered by \
         the survivor, slowest {slowest:?}; during (surviving rooms) {during:?}; back on both frontends {back:.3} s after \
         the kill (backoff {backoff} s); after re-join {after:?}",
        n = odd.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_a_frontend_while_players_chat() {
    let mut cluster = Cluster::start(2, 1).unwrap();
    let mut ps = players(&cluster, 60, &[0, 1], 6, 2000).await;
    let all = |_: &Player| true;
    let before = round(&mut ps, "before", all, all, TIMEOUT).await;
    assert_eq!(before.lost, 0, "{before:?}");

    let pids = cluster.server_pids();
    let victim = pids["connector-server-1"];
    let killed_at = SystemTime::now();
    let killed = Instant::now();
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();

    // Its players are disconnected; the others chat on among themselves.
    let (gone, mut kept): (Vec<Player>, Vec<Player>) =
        ps.into_iter().partition(|p| p.frontend == 0);
    for mut p in gone {
        p.c.expect_closed().await.unwrap();
    }
    let during = round(&mut kept, "during", all, all, TIMEOUT).await;
    assert_eq!(during.lost, 0, "{during:?}");

    // Restarted, it accepts players again, and they reach the others.
    cluster.wait_line("server exited; restarting").unwrap();
    let addr = cluster.client_addr(0).to_string();
    let mut back = loop {
        match Client::connect(&addr).await {
            Ok(c) => break c,
            Err(_) => {
                assert!(
                    killed.elapsed() < TIMEOUT,
                    "connector-server-1 never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Timed from its own log: when the new process started accepting (the test's connect
    // retries would add their polling).
    let accepting = times_of(&cluster.log("connector-server-1"), "accepting game clients");
    assert_eq!(accepting.len(), 2, "one listening line per process");
    let restart = secs_between(killed_at, accepting[1]);
    let backoff = restart_delay(&cluster, "connector-server-1");
    assert!(
        restart >= backoff && restart < backoff + RESTART_SLACK,
        "connector-server-1 accepting again {restart:.3} s after the kill (backoff {backoff} s)"
    );
    // Wait until the restarted frontend knows the chat server (it registers, then hears).
    until("the restarted frontend knows chat-server-1", || {
        count(
            &cluster.log("connector-server-1"),
            "every configured server has registered",
        ) >= 2
    })
    .await;
    login_join(&mut back, 2000, 0).await.unwrap();
    kept.push(Player {
        c: back,
        uid: 2000,
        room: 0,
        frontend: 0,
    });
    let after = round(&mut kept, "after", all, all, TIMEOUT).await;
    assert_eq!(after.lost, 0, "{after:?}");
    assert_eq!(
        cluster.server_pids()["connector-server-2"],
        pids["connector-server-2"]
    );
    println!(
        "frontend SIGKILL: before {before:?}; 30 players disconnected, the other 30 during {during:?}; \
         accepting again {restart:.3} s after the kill (backoff {backoff} s); after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_and_sigkill_the_master_while_players_chat() {
    let mut cluster = Cluster::start(2, 2).unwrap();
    let mut ps = players(&cluster, 40, &[0, 1], 4, 3000).await;
    let all = |_: &Player| true;
    let master = Pid::from_raw(cluster.master_pid().unwrap());

    // SIGSTOP: servers keep serving.
    kill(master, Signal::SIGSTOP).unwrap();
    let stopped = round(&mut ps, "master stopped", all, all, TIMEOUT).await;
    kill(master, Signal::SIGCONT).unwrap();
    assert_eq!(stopped.lost, 0, "{stopped:?}");
    let resumed = round(&mut ps, "master resumed", all, all, TIMEOUT).await;
    assert_eq!(resumed.lost, 0, "{resumed:?}");

    // SIGKILL: servers keep serving, and keep their peers.
    let pids = cluster.server_pids();
    cluster.kill_master().unwrap();
    let dead = round(&mut ps, "master dead", all, all, TIMEOUT).await;
    assert_eq!(dead.lost, 0, "{dead:?}");

    // A new master adopts the running servers; they re-register and reconcile.
    let mark = cluster.lines.lock().unwrap().len();
    cluster.restart_master().unwrap();
    cluster
        .wait_line_after(mark, "adopted 4 running servers")
        .unwrap();
    // "registered in N ms", by the new master's clock from its start (no spawn time): the
    // servers redial a lost master with a backoff capped at 2 s, so all are back within it.
    let ready_line = cluster
        .wait_line_after(mark, "kennel: cluster ready")
        .unwrap();
    let ready_ms: u64 = ready_line
        .split("registered in ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no time in {ready_line:?}"));
    assert!(
        ready_ms < REDIAL_CAP_MS + 1000,
        "the new master was ready {ready_ms} ms after its start: {ready_line}"
    );
    assert_eq!(
        cluster.server_pids(),
        pids,
        "servers were replaced, not adopted"
    );
    let back = round(&mut ps, "master back", all, all, TIMEOUT).await;
    assert_eq!(back.lost, 0, "{back:?}");

    // It supervises again: a killed backend is restarted by the new master, its players
    // re-join, and everyone chats.
    let mark = cluster.lines.lock().unwrap().len();
    kill(Pid::from_raw(pids["chat-server-2"]), Signal::SIGKILL).unwrap();
    cluster
        .wait_line_after(mark, "server registered server=chat-server-2")
        .unwrap();
    until("both frontends know the restarted chat-server-2", || {
        ["connector-server-1", "connector-server-2"]
            .iter()
            .all(|id| count(&cluster.log(id), "server added server=chat-server-2") >= 2)
    })
    .await;
    for p in ps.iter_mut().filter(|p| p.room % 2 == 1) {
        let j = p.c.request("chat.main.join", &json!({})).await.unwrap();
        assert_eq!(j["chat"], "chat-server-2", "{j}");
    }
    let supervised = round(&mut ps, "supervised again", all, all, TIMEOUT).await;
    assert_eq!(supervised.lost, 0, "{supervised:?}");
    // chat-server-1 lived through it all: nobody ever dropped it.
    for id in ["connector-server-1", "connector-server-2", "chat-server-2"] {
        assert!(
            !cluster
                .log(id)
                .contains("server removed server=chat-server-1"),
            "{id} dropped chat-server-1"
        );
    }
    println!(
        "master SIGSTOP: {stopped:?}, resumed {resumed:?}; master SIGKILL: {dead:?}; new master adopted \
         4 servers and was ready {ready_ms} ms after its start; then {back:?}; after a backend restart under it {supervised:?}"
    );
}

/// `rpc.heartbeat` (s) of the SIGSTOP test.
const PERIOD: f64 = 1.0;
/// `rpc.heartbeatTimeout` (s) of the SIGSTOP test.
const SILENCE: f64 = 3.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_a_server_past_the_heartbeat_timeout() {
    let cluster = Cluster::start_opts(&ClusterOptions {
        tcp: 1,
        chats: 2,
        master_extra: serde_json::json!({"rpc": {"heartbeat": PERIOD, "heartbeatTimeout": SILENCE}}),
        ..ClusterOptions::default()
    })
    .unwrap();
    let mut ps = players(&cluster, 10, &[0], 2, 4000).await;
    let all = |_: &Player| true;
    let before = round(&mut ps, "before", all, all, TIMEOUT).await;
    assert_eq!(before.lost, 0, "{before:?}");
    let pids = cluster.server_pids();
    let frozen = Pid::from_raw(pids["chat-server-1"]);

    // Frozen: its sockets stay open (no FIN), so only heartbeats can tell it is gone.
    let stopped_at = SystemTime::now();
    kill(frozen, Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    until("the frontend drops the frozen chat-server-1", || {
        count(
            &cluster.log("connector-server-1"),
            "peer link down peer=chat-server-1",
        ) >= 1
    })
    .await;
    // By the heartbeat, timed from the frontend's log line: the link is silent from the stop
    // (or up to one period before it, the last ping), the silence is checked once per period,
    // so the line comes after timeout - period and by timeout + 2 periods (load allowance).
    let timeouts = times_of(
        &cluster.log("connector-server-1"),
        "(heartbeat timeout): closing it peer=chat-server-1",
    );
    assert_eq!(timeouts.len(), 1, "the heartbeat-timeout line, once");
    let detect = secs_between(stopped_at, timeouts[0]);
    let (timeout, period) = (SILENCE, PERIOD);
    assert!(
        detect > timeout - period && detect <= timeout + 2.0 * period + 0.5,
        "frozen chat-server-1 dropped {detect:.3} s after the stop (timeout {timeout} s, period {period} s)"
    );
    // Players of the other backend chat on meanwhile.
    let odd = |p: &Player| p.room == 1;
    let during = round(&mut ps, "during", odd, odd, TIMEOUT).await;
    kill(frozen, Signal::SIGCONT).unwrap();
    assert_eq!(during.lost, 0, "{during:?}");

    // Back after SIGCONT: its link comes up again and messages reach it.
    until("chat-server-1 is linked again", || {
        count(
            &cluster.log("connector-server-1"),
            "peer link up peer=chat-server-1",
        ) >= 2
    })
    .await;
    for p in ps.iter_mut() {
        let j: Value = p.c.request("chat.main.join", &json!({})).await.unwrap();
        assert_eq!(j["code"], 0, "{j}");
    }
    let after = round(&mut ps, "after", all, all, TIMEOUT).await;
    assert_eq!(after.lost, 0, "{after:?}");
    println!(
        "SIGSTOP past the heartbeat: heartbeat-timeout line {detect:.3} s after the stop (test saw it after {:?}); \
         during {during:?}; after {after:?}",
        t0.elapsed()
    );
}
