//! A panic in game code is one failed request, not a frozen server: over real processes, the
//! `panic-game` test game (chat-demo's chat plus routes that panic on demand, see
//! `src/bin/panic-game.rs`) under the `kennel` master, one frontend and two chat servers.
//!
//! Each test has a player panic one piece of game code (a frontend handler, a backend handler,
//! a remote, a `before` filter, the route function, `on_client_off`), then checks that only that
//! request failed: the panicking player's connection keeps working, two witnesses on the same
//! chat server chat on, a new player joins that server and is heard, RPC between the chat
//! servers works, the panicking player can log in again, the panic is in the server's log with
//! its route, uid and message, and `/metrics` counts it in `kennel_panics_total{route}`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use integration_tests::client::Client;
use integration_tests::cluster::{Cluster, ClusterOptions, PANIC_GAME_ROUTES, free_port};
use integration_tests::load::{Witness, login_join};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every wait of these tests (generous: the suite runs in parallel on a loaded 2-core machine).
const WAIT: Duration = Duration::from_secs(15);

/// The room of the witnesses and the panicking player: `chat-server-2` serves it.
const ROOM: i64 = 1;
const CHAT: &str = "chat-server-2";
/// The witnesses' uids (`WITNESS` and `WITNESS + 1`) and the panicking player's.
const WITNESS: u64 = 1;
const PANICKER: u64 = 10;

/// A booted panic-game cluster: `connector-server-1`, `chat-server-1`, `chat-server-2`.
struct Game {
    cluster: Cluster,
    metrics: u16,
    addr: String,
}

fn boot() -> Game {
    let metrics = free_port();
    let cluster = Cluster::start_opts(&ClusterOptions {
        tcp: 1,
        chats: 2,
        game: Some(PathBuf::from(env!("CARGO_BIN_EXE_panic-game"))),
        extra_routes: PANIC_GAME_ROUTES.map(String::from).to_vec(),
        master_extra: json!({"metrics": {"port": metrics, "host": "127.0.0.1"}}),
        ..ClusterOptions::default()
    })
    .expect("the panic game's cluster boots");
    let addr = cluster.client_addr(0).to_owned();
    Game {
        cluster,
        metrics,
        addr,
    }
}

/// `fut` within [`WAIT`].
async fn within<T>(what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .with_context(|| format!("{what}: nothing within {WAIT:?}"))?
}

/// The witnesses and the panicking player, logged in and in [`ROOM`].
async fn players(g: &Game) -> (Witness, Client) {
    let w = Witness::tcp(&g.addr, WITNESS, ROOM).await.unwrap();
    let mut p = Client::connect(&g.addr).await.unwrap();
    let login = login_join(&mut p, PANICKER, ROOM).await.unwrap();
    assert_eq!(login["chatServerId"], CHAT, "{login}");
    (w, p)
}

/// What must hold after any panic: the witnesses chat on, a new player `uid` joins the same
/// chat server and hears them, and RPC between the chat servers answers. Returns the new player.
async fn plays_on(g: &Game, w: &Witness, uid: u64) -> Result<Client> {
    within(
        "the witnesses chat after the panic",
        w.check("after the panic"),
    )
    .await?;
    let mut n = Client::connect(&g.addr).await?;
    let login = within("a new player joins", login_join(&mut n, uid, ROOM)).await?;
    ensure!(login["chatServerId"] == CHAT, "new player: {login}");
    within("the new player hears the witnesses", async {
        w.check("welcome").await?;
        loop {
            let m = n.expect_push("chat.main.onChat").await?;
            if m["t"] == "welcome" {
                return Ok(());
            }
        }
    })
    .await?;
    let echo = json!({"rpc": "between the chat servers"});
    let r = within(
        "rpcEcho between the chat servers",
        n.request("chat.main.rpcEcho", &echo),
    )
    .await?;
    ensure!(
        r == echo,
        "rpcEcho from {CHAT} to the other chat server: {r}"
    );
    Ok(n)
}

/// The panicking player's connection still works: a frontend echo and a backend echo answer.
async fn still_served(p: &mut Client) -> Result<()> {
    let m = json!({"still": "here"});
    let r = within(
        "the panicking player's frontend echo",
        p.request("connector.main.echo", &m),
    )
    .await?;
    ensure!(r == m, "frontend echo: {r}");
    let r = within(
        "the panicking player's backend echo",
        p.request("chat.main.echo", &m),
    )
    .await?;
    ensure!(r == m, "backend echo: {r}");
    Ok(())
}

/// Logs `uid` in on a new connection, retrying while the frontend may still be closing its
/// previous one; a uid still bound after [`WAIT`] is a ghost session.
async fn logs_in_again(g: &Game, uid: u64) -> Result<Client> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = Client::connect(&g.addr).await?;
        let r = within(
            "login again",
            c.request("connector.main.login", &json!({"uid": uid, "room": ROOM})),
        )
        .await?;
        if r["code"] == 0 {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!("uid {uid} still cannot log in {WAIT:?} after it left (a ghost session): {r}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What must hold after a panic that failed only the panicking player's request: its
/// connection still works ([`still_served`]), everyone else plays on ([`plays_on`], a new
/// player 20), and once it left it can log in again ([`logs_in_again`]). Returns the new player.
async fn only_its_request_failed(g: &Game, w: &Witness, mut p: Client) -> Result<Client> {
    still_served(&mut p).await?;
    let n = plays_on(g, w, 20).await?;
    drop(p);
    logs_in_again(g, PANICKER).await?;
    Ok(n)
}

/// Arms a panic for later with `route` (`connector.boom.armRoute`, `connector.boom.armOff`).
async fn arm(p: &mut Client, route: &str) {
    let r = within(route, p.request(route, &json!({}))).await.unwrap();
    assert_eq!(r["code"], 0, "{route}: {r}");
}

/// `GET /metrics` body.
async fn scrape(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    Ok(raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_owned())
}

/// Waits until `/metrics` shows `kennel_panics_total` of `server` for `route` at `n` (servers
/// report once a second; the `type` label is the server id's prefix, `connector` or `chat`).
async fn panics_counted(g: &Game, server: &str, route: &str, n: u64) -> Result<()> {
    let kind = server.split('-').next().unwrap_or(server);
    let series =
        format!("kennel_panics_total{{server=\"{server}\",type=\"{kind}\",route=\"{route}\"}} {n}");
    let deadline = Instant::now() + WAIT;
    loop {
        let text = tokio::time::timeout(WAIT, scrape(g.metrics))
            .await
            .context("scrape timed out")??;
        if text.lines().any(|l| l == series) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let ours: Vec<&str> = text.lines().filter(|l| l.contains("panics")).collect();
            bail!("/metrics never showed {series:?}; its panic lines: {ours:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `logs/<id>.log` has an error line holding every one of `parts`.
fn logged(g: &Game, id: &str, parts: &[&str]) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = g.cluster.log(id);
        if log
            .lines()
            .any(|l| l.contains("ERROR") && parts.iter().all(|p| l.contains(p)))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("logs/{id}.log has no error line with {parts:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `server` reports the panics of `route`: per message in `msgs` an error line
/// in its log with "panicked", the message, the route and (with `uid`) the player's uid; and
/// `/metrics` counting as many panics of `route` on `server`.
async fn reported(
    g: &Game,
    server: &str,
    route: &str,
    msgs: &[&str],
    uid: Option<u64>,
) -> Result<()> {
    let label = format!("route=\"{route}\"");
    let uid = uid.map(|u| format!("uid={u}"));
    for msg in msgs {
        let mut parts = vec!["panicked", *msg, &label];
        parts.extend(uid.as_deref());
        logged(g, server, &parts)?;
    }
    panics_counted(g, server, route, msgs.len() as u64).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_frontend_handler_fails_only_its_request() {
    let g = boot();
    let (w, mut p) = players(&g).await;
    for later in [false, true] {
        p.send("connector.boom.handler", &json!({"later": later}))
            .await
            .unwrap();
    }
    let _n = only_its_request_failed(&g, &w, p).await.unwrap();
    let msgs = [
        "boom in connector.boom.handler (inline)",
        "boom in connector.boom.handler (later)",
    ];
    let route = "connector.boom.handler";
    reported(&g, "connector-server-1", route, &msgs, Some(PANICKER))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_backend_handler_fails_only_its_request() {
    let g = boot();
    let (w, mut p) = players(&g).await;
    for later in [false, true] {
        p.send("chat.boom.handler", &json!({"later": later}))
            .await
            .unwrap();
    }
    let _n = only_its_request_failed(&g, &w, p).await.unwrap();
    let msgs = [
        "boom in chat.boom.handler (inline)",
        "boom in chat.boom.handler (later)",
    ];
    reported(&g, CHAT, "chat.boom.handler", &msgs, Some(PANICKER))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_remote_is_an_rpc_error_at_once_not_a_timeout() {
    let g = boot();
    let (w, mut p) = players(&g).await;
    let started = Instant::now();
    let r = within("chat.boom.rpc", p.request("chat.boom.rpc", &json!({})))
        .await
        .unwrap();
    let took = started.elapsed();
    let calls = r["calls"].as_array().cloned().unwrap_or_default();
    assert_eq!(calls.len(), 3, "{r}");
    for c in &calls {
        let err = c["error"].as_str().unwrap_or_default();
        let when = if c["later"] == true {
            "later"
        } else {
            "inline"
        };
        assert!(
            err.contains("panicked") && err.contains(&format!("boom in chat.boom.remote ({when})")),
            "the caller gets the panic as the error: {c}"
        );
        // The RPC timeout is 10 s: the error arrives long before.
        assert!(
            c["ms"].as_u64().is_some_and(|ms| ms < 3000),
            "the error arrives at once, not at the timeout: {c}"
        );
    }
    eprintln!("panicking remote: the three calls failed in {r} (all in {took:?})");
    let _n = only_its_request_failed(&g, &w, p).await.unwrap();
    // Two calls over the link to chat-server-1 (inline, later), one local on chat-server-2;
    // a remote has no session, so no uid.
    let route = "chat.boom.remote";
    reported(&g, "chat-server-1", route, &["(inline)", "(later)"], None)
        .await
        .unwrap();
    reported(&g, CHAT, route, &["(inline)"], None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_before_filter_fails_only_its_request() {
    let g = boot();
    let (w, mut p) = players(&g).await;
    // The filter runs on the server that handles the route: the frontend, then the chat server.
    for route in ["connector.boom.filtered", "chat.boom.filtered"] {
        p.send(route, &json!({})).await.unwrap();
    }
    let _n = only_its_request_failed(&g, &w, p).await.unwrap();
    for (server, route) in [
        ("connector-server-1", "connector.boom.filtered"),
        (CHAT, "chat.boom.filtered"),
    ] {
        let msg = format!("boom in a before filter on {route}");
        reported(&g, server, route, &[&msg], Some(PANICKER))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_route_function_fails_only_its_message() {
    let g = boot();
    let (w, mut p) = players(&g).await;
    arm(&mut p, "connector.boom.armRoute").await;
    // The first chat message panics in the route function: no reply; the next is answered.
    p.send("chat.main.echo", &json!({"n": 1})).await.unwrap();
    let r = within(
        "the echo after",
        p.request("chat.main.echo", &json!({"n": 2})),
    )
    .await
    .unwrap();
    assert_eq!(
        r,
        json!({"n": 2}),
        "the message whose routing panicked got no reply"
    );
    let _n = only_its_request_failed(&g, &w, p).await.unwrap();
    let msgs = ["boom in the chat route function"];
    reported(
        &g,
        "connector-server-1",
        "chat.main.echo",
        &msgs,
        Some(PANICKER),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_on_client_off_still_ends_the_session() {
    let g = boot();
    let (w, mut p) = players(&g).await;
    arm(&mut p, "connector.boom.armOff").await;
    drop(p);
    // The chat game's own on_client_off (registered after the panicking one) still takes the
    // player out of the room: a new player sees the two witnesses and itself.
    let mut n = plays_on(&g, &w, 20).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let j = n.request("chat.main.join", &json!({})).await.unwrap();
        if j["size"] == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the panicking player is still in the room {WAIT:?} after it left \
             (on_client_off callbacks after the panic never ran): {j}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = logs_in_again(&g, PANICKER).await.unwrap();
    let j = again.request("chat.main.join", &json!({})).await.unwrap();
    assert_eq!(j["size"], 4, "{j}");
    let msgs = ["boom in on_client_off of uid Some(10)"];
    reported(
        &g,
        "connector-server-1",
        "on_client_off",
        &msgs,
        Some(PANICKER),
    )
    .await
    .unwrap();
}
