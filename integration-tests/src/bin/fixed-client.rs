//! fixed-client: the fixed-count client of `scripts/callgrind-ab.sh`, on kennel-client's raw
//! connection. Logs in (a uid from its pid, room 1), sends 100 warm-up requests of `route` one
//! at a time, zeroes callgrind's counters in every server (`callgrind_control -z`), waits a
//! second, sends `n` requests one at a time, then dumps the counters (`callgrind_control -d`).
//! Every reply has a deadline. Before each request it waits a think time (default 2 ms), so
//! the server waits for every request as it would for a player's: without one, whether a
//! server slowed down by callgrind finds the next request already read decides its cost, and
//! the counts of one binary came out 7,400 or 11,000 instructions per request run to run.
//!
//! `fixed-client <port> <route> <n> [think ms]`
//!
//! A route written `raw:<route>` skips the login: for the raw echo floor (`bench raw-echo`),
//! which echoes every message and knows no login.
//!
//! With the route `room-chat`, 20 players log in to one room and join it, and the first sends
//! `n` `chat.main.send` messages, each awaited at every player (20 pushes per message).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration_tests::bench::load::login_as;
use kennel_client::{ClientBuilder, Connection, Frame};

/// The request payload (Python's `json.dumps` spacing, as the published figures used).
const PAYLOAD: &[u8] = br#"{"m": "hello", "n": 12345}"#;
/// How long one reply may take (the servers run under callgrind: slow).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// `k` requests on `cmd`, one in flight.
async fn requests(c: &mut Connection, cmd: u16, k: usize, think: Duration) -> Result<()> {
    for i in 0..k {
        tokio::time::sleep(think).await;
        c.writer.push_message(cmd, PAYLOAD);
        c.writer.flush().await?;
        loop {
            let f = tokio::time::timeout(REPLY_TIMEOUT, c.reader.next())
                .await
                .with_context(|| format!("no reply to request {i} within {REPLY_TIMEOUT:?}"))??;
            if matches!(f, Frame::Message { cmd: got, .. } if got == cmd) {
                break;
            }
        }
    }
    Ok(())
}

/// `callgrind_control <flag>` in every traced process (its failure is not ours).
fn callgrind_control(flag: &str) {
    let _ = Command::new("callgrind_control")
        .arg(flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Players in the `room-chat` room.
const ROOM: usize = 20;

/// A connection, handshaken.
async fn connect(port: &str) -> Result<Connection> {
    Ok(ClientBuilder::new(format!("127.0.0.1:{port}"))
        .no_route_cache()
        .connect_timeout(REPLY_TIMEOUT)
        .connect_raw()
        .await?)
}

/// One player: connected and logged in to room 7, joined when `join`.
async fn player(port: &str, uid: u64, join: bool) -> Result<Connection> {
    let mut c = connect(port).await?;
    login_as(&mut c, uid, 7, join).await?;
    Ok(c)
}

/// `k` chat messages from the first player, each awaited at every player.
async fn chat(room: &mut [Connection], k: usize, think: Duration) -> Result<()> {
    let send = room[0].handshake.routes.cmd("chat.main.send")?;
    let on_chat = room[0].handshake.routes.cmd("chat.main.onChat")?;
    for i in 0..k {
        tokio::time::sleep(think).await;
        room[0]
            .writer
            .push_message(send, br#"{"msg": "hello there, room"}"#);
        room[0].writer.flush().await?;
        for p in room.iter_mut() {
            loop {
                let f = tokio::time::timeout(REPLY_TIMEOUT, p.reader.next())
                    .await
                    .with_context(|| {
                        format!("no push of message {i} within {REPLY_TIMEOUT:?}")
                    })??;
                if matches!(f, Frame::Message { cmd, .. } if cmd == on_chat) {
                    break;
                }
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (port, route, n, think) = match &args[..] {
        [port, route, n] => (port, route, n, "2"),
        [port, route, n, think] => (port, route, n, think.as_str()),
        _ => bail!("usage: fixed-client <port> <route> <n> [think ms]"),
    };
    let n: usize = n.parse().context("<n> takes a number")?;
    let think = Duration::from_secs_f64(
        think.parse::<f64>().context("[think ms] takes a number")? / 1000.0,
    );
    let base = u64::from(std::process::id() % 10_000) * 100 + 1;
    if route == "room-chat" {
        let mut room = Vec::new();
        for i in 0..ROOM {
            room.push(player(port, base + i as u64, true).await?);
        }
        chat(&mut room, 50, think).await?;
        callgrind_control("-z");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t0 = Instant::now();
        chat(&mut room, n, think).await?;
        let dt = t0.elapsed();
        callgrind_control("-d");
        println!("{route}: {n} messages in {:.1}s", dt.as_secs_f64());
        return Ok(());
    }
    let (mut c, route) = match route.strip_prefix("raw:") {
        Some(route) => (connect(port).await?, route),
        None => (player(port, base, false).await?, route.as_str()),
    };
    let cmd = c.handshake.routes.cmd(route)?;
    requests(&mut c, cmd, 100, think).await?;
    callgrind_control("-z");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    requests(&mut c, cmd, n, think).await?;
    let dt = t0.elapsed();
    callgrind_control("-d");
    println!("{route}: {n} requests in {:.1}s", dt.as_secs_f64());
    Ok(())
}
