//! The load generator, on kennel-client's raw connections: closed-loop request/reply load
//! (N connections x K in flight, replies matched in order), room broadcast with a send
//! timestamp in every message, and idle handshaken connections. Every run ends with a drain
//! so that every request sent is accounted for (replied, or reported lost).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use kennel_client::{ClientBuilder, Connection, Frame, FrameReader, FrameWriter, TlsOptions};
use serde_json::json;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use super::procfs::CpuSnapshot;
use super::report::Counts;

/// Load phases, in order.
const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// How long any single reply may take before the run reports it lost.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Warm-up and measurement durations of one run.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Load before measuring (connections are already open and logged in).
    pub warmup: Duration,
    /// Measured span.
    pub measure: Duration,
}

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Latencies (µs) of the operations completed inside the window.
    pub latencies_us: Vec<u32>,
    /// What the run sent and got back (`completed`: operations inside the measured window;
    /// `errors`: the first three).
    pub counts: Counts,
    /// Server CPU seconds inside the window.
    pub server_cpu: f64,
    /// This process's CPU seconds inside the window.
    pub loadgen_cpu: f64,
    /// The window's wall seconds.
    pub wall: f64,
}

impl LoadResult {
    /// Completed operations per second.
    pub fn rate(&self) -> f64 {
        self.counts.completed as f64 / self.wall.max(1e-9)
    }

    /// The `q` quantile (0..1) of latencies in µs.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        self.latencies_us[i] as f64
    }

    /// Server CPU µs per completed operation.
    pub fn server_cpu_per_op_us(&self) -> f64 {
        self.server_cpu * 1e6 / (self.counts.completed.max(1) as f64)
    }

    /// Server CPU as % of one core.
    pub fn server_cpu_pct(&self) -> f64 {
        self.server_cpu * 100.0 / self.wall.max(1e-9)
    }

    /// Load generator CPU as % of one core.
    pub fn loadgen_cpu_pct(&self) -> f64 {
        self.loadgen_cpu * 100.0 / self.wall.max(1e-9)
    }

    /// Why this run does not account for every reply, if it does not.
    pub fn accounting_problem(&self) -> Option<String> {
        self.counts.problem()
    }

    /// The run's result: the window's (server CPU, load generator CPU, wall) seconds and what
    /// every connection task counted, latencies sorted.
    async fn gather(
        (server_cpu, loadgen_cpu, wall): (f64, f64, f64),
        tasks: Vec<JoinHandle<ConnStats>>,
    ) -> Result<LoadResult> {
        let mut result = LoadResult {
            server_cpu,
            loadgen_cpu,
            wall,
            ..Default::default()
        };
        for t in tasks {
            result.merge(t.await?);
        }
        result.latencies_us.sort_unstable();
        Ok(result)
    }

    fn merge(&mut self, o: ConnStats) {
        let c = &mut self.counts;
        c.completed += o.completed;
        c.sent += o.sent;
        c.expected += o.expected;
        c.received += o.received;
        c.mismatched += o.mismatched;
        c.unexpected += o.unexpected;
        if c.errors.len() < 3 {
            c.errors.extend(o.error);
        }
        self.latencies_us.extend(o.latencies_us);
    }
}

#[derive(Default)]
struct ConnStats {
    completed: u64,
    latencies_us: Vec<u32>,
    sent: u64,
    expected: u64,
    received: u64,
    mismatched: u64,
    unexpected: u64,
    error: Option<String>,
}

/// Microseconds since the bench's epoch (timestamps in chat messages).
fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Fresh player uids (mydog's contract: u32, unique per cluster).
fn next_uid() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Opens `n` handshaken raw connections spread round-robin over `addrs` (over TLS with `tls`),
/// at most 256 handshakes at a time.
pub async fn connect_many(
    addrs: &[String],
    n: usize,
    tls: Option<&TlsOptions>,
) -> Result<Vec<Connection>> {
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let addr = addrs[i % addrs.len()].clone();
        let gate = gate.clone();
        let mut builder = ClientBuilder::new(addr);
        if let Some(tls) = tls {
            builder = builder.tls(tls.clone());
        }
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            builder.connect_raw().await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for (i, t) in tasks.into_iter().enumerate() {
        out.push(t.await?.with_context(|| format!("connection {i} of {n}"))?);
    }
    Ok(out)
}

/// Reads frames until a message on `cmd` arrives (within [`REPLY_TIMEOUT`]).
async fn reply_on(rd: &mut FrameReader, cmd: u16) -> Result<Bytes> {
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, rd.next()).await {
            Err(_) => bail!("no reply on cmd {cmd} within {REPLY_TIMEOUT:?}"),
            Ok(Ok(Frame::Message { cmd: c, payload })) if c == cmd => return Ok(payload),
            Ok(Ok(Frame::Message { cmd: c, payload })) => {
                // Nothing else is sent to a connection during a login or join: a message on
                // another cmd here was meant for someone else.
                let head = String::from_utf8_lossy(&payload[..payload.len().min(120)]);
                eprintln!("bench: a message on cmd {c} while waiting for cmd {cmd}: {head}");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// A request/reply exchange on a raw connection.
async fn exchange(
    c: &mut Connection,
    route: &str,
    msg: &serde_json::Value,
) -> Result<serde_json::Value> {
    let cmd = c.handshake.routes.cmd(route)?;
    c.writer.push_json(cmd, route, msg)?;
    c.writer.flush().await?;
    let payload = reply_on(&mut c.reader, cmd).await?;
    Ok(serde_json::from_slice(&payload)?)
}

/// Logs connection `conn` in as a fresh uid in `room` (and joins it when `join`); returns the
/// uid.
async fn login(c: &mut Connection, room: u64, join: bool) -> Result<u64> {
    let uid = next_uid();
    login_as(c, uid, room, join).await?;
    Ok(uid)
}

/// Logs connection `c` in as `uid` in `room` (`connector.main.login`), and joins the room
/// (`chat.main.join`) when `join`.
pub async fn login_as(c: &mut Connection, uid: u64, room: u64, join: bool) -> Result<()> {
    let r = exchange(
        c,
        "connector.main.login",
        &json!({"uid": uid, "room": room}),
    )
    .await?;
    if r["code"] != 0 {
        bail!("login of uid {uid} refused: {r}");
    }
    if r["uid"] != uid {
        bail!("login of uid {uid} answered with another player's reply: {r}");
    }
    if join {
        let j = exchange(c, "chat.main.join", &json!({"room": room})).await?;
        if j["code"] != 0 {
            bail!("join of uid {uid} to room {room} refused: {j}");
        }
        if j["room"] != room {
            bail!("join of uid {uid} to room {room} answered with another room's reply: {j}");
        }
    }
    Ok(())
}

/// Runs the phases: warm-up, measure (CPU snapshots of `pids` around it), stop; returns the
/// window's (server CPU, load generator CPU, wall) seconds.
async fn drive_phases(phase: &AtomicU8, window: Window, pids: &[i32]) -> (f64, f64, f64) {
    tokio::time::sleep(window.warmup).await;
    let before = CpuSnapshot::take(pids);
    phase.store(MEASURE, Ordering::Relaxed);
    tokio::time::sleep(window.measure).await;
    phase.store(STOP, Ordering::Relaxed);
    let after = CpuSnapshot::take(pids);
    before.delta(&after)
}

/// Closed-loop request/reply load: `conns` connections over `t`'s frontends (over TLS with
/// its `tls`), each keeping `inflight` requests of `route` outstanding; CPU measured on its
/// processes. `login` logs each connection in first (backend routes need a chat server;
/// connection `i` gets room `i`, spreading them over the chat servers).
pub async fn request_load(
    t: &super::targets::Target,
    route: &str,
    conns: usize,
    inflight: usize,
    login_first: bool,
    window: Window,
) -> Result<LoadResult> {
    let pids = &t.pids;
    let mut connections = connect_many(&t.addrs, conns, t.tls.as_ref()).await?;
    if login_first {
        for (i, c) in connections.iter_mut().enumerate() {
            login(c, i as u64, false).await?;
        }
    }
    // Keys in sorted order: serde_json (kennel) and JSON.stringify (mydog) echo the same text.
    let payload = Bytes::from_static(br#"{"n":12345,"t":"kennel bench payload"}"#);
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let mut tasks = Vec::new();
    for c in connections {
        let cmd = c.handshake.routes.cmd(route)?;
        let (phase, payload) = (phase.clone(), payload.clone());
        tasks.push(tokio::spawn(echo_conn(
            c.reader, c.writer, cmd, payload, inflight, phase,
        )));
    }
    let cpu = drive_phases(&phase, window, pids).await;
    LoadResult::gather(cpu, tasks).await
}

async fn echo_conn(
    mut rd: FrameReader,
    mut wr: FrameWriter,
    cmd: u16,
    payload: Bytes,
    inflight: usize,
    phase: Arc<AtomicU8>,
) -> ConnStats {
    let mut st = ConnStats::default();
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(inflight);
    loop {
        if phase.load(Ordering::Relaxed) < STOP {
            while sent_at.len() < inflight {
                wr.push_message(cmd, &payload);
                sent_at.push_back(Instant::now());
                st.sent += 1;
                st.expected += 1;
            }
        } else if sent_at.is_empty() {
            break;
        }
        if let Err(e) = wr.flush().await {
            st.error = Some(format!("write: {e}"));
            break;
        }
        let first = match tokio::time::timeout(REPLY_TIMEOUT, rd.next()).await {
            Ok(r) => r,
            Err(_) => {
                st.error = Some(format!(
                    "{} replies missing after {REPLY_TIMEOUT:?}",
                    sent_at.len()
                ));
                break;
            }
        };
        let mut next = Some(first);
        while let Some(frame) = next {
            match frame {
                Ok(Frame::Message { cmd: c, payload: p }) if c == cmd => {
                    let Some(t) = sent_at.pop_front() else {
                        st.unexpected += 1;
                        next = rd.try_next();
                        continue;
                    };
                    st.received += 1;
                    if p != payload {
                        st.mismatched += 1;
                    }
                    if phase.load(Ordering::Relaxed) == MEASURE {
                        st.completed += 1;
                        st.latencies_us
                            .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                }
                Ok(Frame::Heartbeat) => {}
                Ok(_) => st.unexpected += 1,
                Err(e) => {
                    st.error = Some(e.to_string());
                    return st;
                }
            }
            next = rd.try_next();
        }
    }
    st
}

/// Room broadcast: `conns` connections over `addrs` log in, join rooms of `room_size`
/// (connection `i` in room `i / room_size`), and each keeps at most `window_msgs` of its own
/// chat messages not yet delivered to every member of its room (so no member's backlog grows
/// without bound: at most members x window messages are in flight to it). Every delivery to
/// every member counts; latency is delivery time minus the send timestamp the message
/// carries.
pub async fn broadcast_load(
    addrs: &[String],
    conns: usize,
    room_size: usize,
    window_msgs: usize,
    window: Window,
    pids: &[i32],
) -> Result<LoadResult> {
    let mut connections = connect_many(addrs, conns, None).await?;
    let mut uids = Vec::with_capacity(conns);
    for (i, c) in connections.iter_mut().enumerate() {
        uids.push(login(c, (i / room_size) as u64, true).await?);
    }
    // uids are handed out in order, so a delivery's sender is `u - uids[0]`.
    let first_uid = uids[0];
    if uids
        .iter()
        .enumerate()
        .any(|(i, u)| *u != first_uid + i as u64)
    {
        bail!("uids of one run are not consecutive");
    }
    // Members per room (the last room may be smaller).
    let members = |i: usize| {
        let room = i / room_size;
        (conns - room * room_size).min(room_size) as u64
    };
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let stopped = Arc::new(AtomicU64::new(0));
    let expected = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let senders: Arc<Vec<SenderSlot>> = Arc::new(
        (0..conns)
            .map(|i| SenderSlot {
                delivered: AtomicU64::new(0),
                members: members(i),
                wake: Notify::new(),
            })
            .collect(),
    );
    let (done_tx, done_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (i, c) in connections.into_iter().enumerate() {
        let send = c.handshake.routes.cmd("chat.main.send")?;
        let push = c.handshake.routes.cmd("chat.main.onChat")?;
        let shared = ChatShared {
            phase: phase.clone(),
            stopped: stopped.clone(),
            expected: expected.clone(),
            delivered: delivered.clone(),
            done: done_rx.clone(),
            senders: senders.clone(),
            first_uid,
            me: i,
        };
        tasks.push(tokio::spawn(chat_conn(
            c.reader,
            c.writer,
            members(i),
            (send, push),
            window_msgs,
            shared,
        )));
    }
    let cpu = drive_phases(&phase, window, pids).await;
    // Drain: once every sender stopped, wait until every delivery arrived.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while Instant::now() < deadline
        && !(stopped.load(Ordering::Acquire) == conns as u64
            && delivered.load(Ordering::Acquire) >= expected.load(Ordering::Acquire))
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = done_tx.send(true);
    let mut result = LoadResult::gather(cpu, tasks).await?;
    result.counts.expected = expected.load(Ordering::Acquire);
    Ok(result)
}

struct ChatShared {
    phase: Arc<AtomicU8>,
    /// Connections that stopped sending for good.
    stopped: Arc<AtomicU64>,
    /// Deliveries the messages sent so far will make.
    expected: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    /// True once every delivery arrived (or the drain gave up).
    done: watch::Receiver<bool>,
    /// Per sender (by connection index): deliveries of its messages so far.
    senders: Arc<Vec<SenderSlot>>,
    /// uid of connection 0.
    first_uid: u64,
    /// This connection's index.
    me: usize,
}

/// Flow control of one broadcast sender.
struct SenderSlot {
    /// Deliveries of this sender's messages (to any member).
    delivered: AtomicU64,
    /// Members of its room.
    members: u64,
    /// Woken when a multiple of `members` deliveries is reached (a window slot may be free).
    wake: Notify,
}

#[derive(serde::Deserialize)]
struct ChatMsg {
    ts: u64,
    u: u64,
}

async fn chat_conn(
    mut rd: FrameReader,
    mut wr: FrameWriter,
    room_members: u64,
    (send, push): (u16, u16),
    window_msgs: usize,
    mut sh: ChatShared,
) -> ConnStats {
    let mut st = ConnStats::default();
    let mut seq = 0u64;
    let mut stopped = false;
    let me = &sh.senders[sh.me];
    loop {
        // Messages of mine not yet delivered to every member of my room.
        let in_flight = |seq: u64| {
            (seq * room_members)
                .saturating_sub(me.delivered.load(Ordering::Acquire))
                .div_ceil(room_members) as usize
        };
        if !stopped {
            if sh.phase.load(Ordering::Relaxed) < STOP {
                let before = seq;
                while in_flight(seq) < window_msgs {
                    let msg = json!({"s": seq, "ts": now_us()});
                    if let Err(e) = wr.push_json(send, "chat.main.send", &msg) {
                        st.error = Some(e.to_string());
                    }
                    seq += 1;
                }
                let n = seq - before;
                st.sent += n;
                sh.expected.fetch_add(n * room_members, Ordering::AcqRel);
            } else {
                stopped = true;
                sh.stopped.fetch_add(1, Ordering::AcqRel);
            }
        }
        if let Err(e) = wr.flush().await {
            st.error = Some(format!("write: {e}"));
            break;
        }
        let first = tokio::select! {
            r = tokio::time::timeout(REPLY_TIMEOUT, rd.next()) => r.ok(),
            _ = me.wake.notified(), if !stopped => continue,
            _ = sh.done.wait_for(|d| *d) => break,
        };
        let Some(first) = first else {
            if !*sh.done.borrow() {
                st.error = Some(format!("no delivery for {REPLY_TIMEOUT:?}"));
            }
            break;
        };
        let mut next = Some(first);
        let mut got = 0u64;
        while let Some(frame) = next {
            match frame {
                Ok(Frame::Message { cmd, payload }) if cmd == push => {
                    got += 1;
                    match serde_json::from_slice::<ChatMsg>(&payload) {
                        Ok(m) => {
                            let from = m.u.wrapping_sub(sh.first_uid) as usize;
                            match sh.senders.get(from) {
                                Some(slot) => {
                                    let d = slot.delivered.fetch_add(1, Ordering::AcqRel) + 1;
                                    if d % slot.members == 0 {
                                        slot.wake.notify_one();
                                    }
                                }
                                None => st.unexpected += 1,
                            }
                            if sh.phase.load(Ordering::Relaxed) == MEASURE {
                                st.completed += 1;
                                let lat = now_us().saturating_sub(m.ts);
                                st.latencies_us.push(lat.min(u32::MAX as u64) as u32);
                            }
                        }
                        Err(_) => st.mismatched += 1,
                    }
                }
                Ok(Frame::Heartbeat) => {}
                Ok(_) => st.unexpected += 1,
                Err(e) => {
                    st.error = Some(e.to_string());
                    break;
                }
            }
            next = rd.try_next();
        }
        st.received += got;
        sh.delivered.fetch_add(got, Ordering::AcqRel);
        if st.error.is_some() {
            break;
        }
    }
    if !stopped {
        sh.stopped.fetch_add(1, Ordering::AcqRel);
    }
    st
}
