//! The players' state machine, shared by both I/O back ends ([`super::uring`] and
//! [`super::epoll`]): per connection a fixed read buffer, the start times of its messages in
//! flight and its room; the open-loop schedule; the phases (warm-up, measure, drain) with the
//! CPU snapshots around the measured window; and the counters every run is checked against.
//!
//! Nothing here allocates per message: frames are pre-encoded (echo) or written in place into
//! a per-player slot (chat: only the timestamp digits change), replies are parsed in the read
//! buffer, latencies go into a fixed histogram.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kennel_proto::client::{TYPE_HEARTBEAT, TYPE_MESSAGE};

use super::{Mode, Spec, StepResult, cpu};
use crate::bench::report::Counts;

/// Messages one player may have in flight in the open loop. A player that would exceed it
/// skips the send and counts an overrun: 32 messages at 10/s is 3.2 s of backlog, far past any
/// latency limit, so a run with overruns has failed anyway (and says so) rather than queueing
/// without bound.
pub const MAX_IN_FLIGHT: usize = 32;
/// Read buffer per connection (replies and pushes are tens of bytes; a frame must fit).
pub const RBUF: usize = 4096;
/// Chat message frames per player that may be in the kernel's hands at once (io_uring sends
/// reference them until their completion).
const SLOTS: usize = 8;
/// The echo payload (keys in sorted order: kennel and mydog echo the same text).
pub const PAYLOAD: &[u8] = br#"{"n":12345,"t":"kennel bench payload"}"#;
/// Chat timestamps are µs since the run's base plus this, so they always have 13 digits and
/// a chat frame has a fixed length.
const TS_BASE: u64 = 1_000_000_000_000;
/// Chat payload: `{"ts":` + 13 digits + `}`.
const CHAT_PAYLOAD_LEN: usize = 6 + 13 + 1;
/// A chat frame: header (len, type, cmd) + payload.
pub const CHAT_FRAME: usize = 7 + CHAT_PAYLOAD_LEN;
/// How long the drain waits for the last replies before reporting them lost.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Load phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Sending, not measured.
    Warmup,
    /// Sending, measured.
    Measure,
    /// No more sends; waiting for every reply.
    Drain,
    /// Every reply arrived, or the drain gave up.
    Done,
}

/// One connection's state.
pub struct Player {
    /// Received bytes not yet parsed (a partial frame at most, between reads).
    pub rbuf: Box<[u8; RBUF]>,
    /// Bytes in `rbuf`.
    pub rlen: usize,
    /// Start times (ns since base) of echo requests in flight, oldest first (ring).
    fifo: [u64; MAX_IN_FLIGHT],
    head: usize,
    /// Echo: requests in flight. Chat: own messages not yet delivered back to this player.
    in_flight: usize,
    /// Chat frames (only the timestamp changes).
    slots: Box<[[u8; CHAT_FRAME]; SLOTS]>,
    next_slot: usize,
    /// io_uring sends submitted and not completed.
    pub sends_pending: usize,
    /// The connection failed (its error is in [`Core::errors`]).
    pub dead: bool,
}

/// The run's state and counters.
pub struct Core {
    /// Every connection, by index.
    pub players: Vec<Player>,
    spec: Spec,
    chat: bool,
    closed: bool,
    echo_frame: Vec<u8>,
    /// cmd of replies (echo) or pushes (chat) this run expects.
    reply_cmd: u16,
    uid_base: u64,
    base: Instant,
    /// Current phase.
    pub phase: Phase,
    t_measure: u64,
    t_stop: u64,
    t_measured_end: u64,
    t_give_up: u64,
    // Open loop: message `k` is due at `t0 + k * step` from player `k % players`.
    t0: u64,
    step_ns: f64,
    next_k: u64,
    // Figures.
    hist: Histogram<u64>,
    lag: Histogram<u64>,
    completed: u64,
    sent_in_window: u64,
    sent: u64,
    expected: u64,
    received: u64,
    mismatched: u64,
    unexpected: u64,
    overruns: u64,
    /// Connection errors (the first few are reported).
    pub errors: Vec<String>,
    error_count: u64,
    pids: Vec<i32>,
    snap: Option<cpu::Snapshot>,
    window_figures: Option<(f64, f64, f64)>,
}

impl Core {
    /// State for `spec` over `players` connections whose uids are `uid_base..`; `leftover[i]`
    /// holds bytes connection `i` read past its setup replies. CPU is measured over `pids`.
    pub fn new(spec: &Spec, cmds: &super::setup::Cmds, uid_base: u64, pids: &[i32]) -> Core {
        let chat = spec.kind.is_chat();
        let (send_cmd, reply_cmd) = if chat {
            (cmds.send, cmds.push)
        } else {
            (cmds.request, cmds.request)
        };
        let mut echo_frame = Vec::with_capacity(7 + PAYLOAD.len());
        echo_frame.extend_from_slice(&(3 + PAYLOAD.len() as u32).to_be_bytes());
        echo_frame.push(TYPE_MESSAGE);
        echo_frame.extend_from_slice(&reply_cmd.to_be_bytes());
        echo_frame.extend_from_slice(PAYLOAD);
        let mut chat_frame = [0u8; CHAT_FRAME];
        chat_frame[..4].copy_from_slice(&(3 + CHAT_PAYLOAD_LEN as u32).to_be_bytes());
        chat_frame[4] = TYPE_MESSAGE;
        chat_frame[5..7].copy_from_slice(&send_cmd.to_be_bytes());
        chat_frame[7..13].copy_from_slice(br#"{"ts":"#);
        chat_frame[CHAT_FRAME - 1] = b'}';
        let players = (0..spec.players)
            .map(|_| Player {
                rbuf: Box::new([0; RBUF]),
                rlen: 0,
                fifo: [0; MAX_IN_FLIGHT],
                head: 0,
                in_flight: 0,
                slots: Box::new([chat_frame; SLOTS]),
                next_slot: 0,
                sends_pending: 0,
                dead: false,
            })
            .collect();
        let (closed, step_ns) = match spec.mode {
            Mode::Closed => (true, 0.0),
            Mode::Open { rate } => (false, 1e9 / rate / spec.players as f64),
        };
        let max_us = 3_600_000_000u64;
        Core {
            players,
            spec: spec.clone(),
            chat,
            closed,
            echo_frame,
            reply_cmd,
            uid_base,
            base: Instant::now(),
            phase: Phase::Warmup,
            t_measure: 0,
            t_stop: 0,
            t_measured_end: 0,
            t_give_up: u64::MAX,
            t0: 0,
            step_ns,
            next_k: 0,
            hist: Histogram::new_with_bounds(1, max_us, 3).expect("histogram bounds"),
            lag: Histogram::new_with_bounds(1, max_us, 3).expect("histogram bounds"),
            completed: 0,
            sent_in_window: 0,
            sent: 0,
            expected: 0,
            received: 0,
            mismatched: 0,
            unexpected: 0,
            overruns: 0,
            errors: Vec::new(),
            error_count: 0,
            pids: pids.to_vec(),
            snap: None,
            window_figures: None,
        }
    }

    /// Copies bytes read past the setup replies into player `i`'s buffer.
    pub fn preload(&mut self, i: usize, bytes: &[u8]) {
        let p = &mut self.players[i];
        let n = bytes.len().min(RBUF);
        p.rbuf[..n].copy_from_slice(&bytes[..n]);
        p.rlen = n;
    }

    /// Nanoseconds since this run's base.
    #[inline]
    pub fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Starts the schedule: warm-up from now.
    pub fn start(&mut self) {
        let now = self.now();
        let w = self.spec.window;
        self.t0 = now;
        self.t_measure = now + w.warmup.as_nanos() as u64;
        self.t_stop = self.t_measure + w.measure.as_nanos() as u64;
    }

    /// Whether messages are still being sent.
    #[inline]
    pub fn sending(&self) -> bool {
        self.phase < Phase::Drain
    }

    /// The open loop's wake-up tick, ns.
    pub fn tick_ns(&self) -> u64 {
        self.spec.tick.as_nanos() as u64
    }

    /// Whether the loop is closed (a reply triggers the next send).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Advances the phase at `now` (taking the CPU snapshots around the measured window).
    pub fn tick(&mut self, now: u64) {
        match self.phase {
            Phase::Warmup if now >= self.t_measure => {
                self.snap = Some(cpu::Snapshot::take(&self.pids));
                self.phase = Phase::Measure;
            }
            Phase::Measure if now >= self.t_stop => {
                let after = cpu::Snapshot::take(&self.pids);
                self.window_figures = self.snap.take().map(|b| b.delta(&after));
                self.t_measured_end = now;
                self.t_give_up = now + DRAIN_TIMEOUT.as_nanos() as u64;
                self.phase = Phase::Drain;
            }
            _ => {}
        }
        if self.phase == Phase::Drain && (self.received >= self.expected || now >= self.t_give_up) {
            self.phase = Phase::Done;
        }
    }

    /// When the next phase change is due (ns since base).
    pub fn next_phase(&self) -> u64 {
        match self.phase {
            Phase::Warmup => self.t_measure,
            Phase::Measure => self.t_stop,
            Phase::Drain => self.t_give_up,
            Phase::Done => 0,
        }
    }

    /// When the next phase change or open-loop send is due (ns since base).
    pub fn next_event(&self) -> u64 {
        let phase = self.next_phase();
        if self.closed || !self.sending() {
            return phase;
        }
        phase.min(self.due_at(self.next_k))
    }

    #[inline]
    fn due_at(&self, k: u64) -> u64 {
        self.t0 + (k as f64 * self.step_ns) as u64
    }

    /// The next open-loop send due by `now`: (player, scheduled time).
    #[inline]
    pub fn due(&mut self, now: u64) -> Option<(usize, u64)> {
        if self.closed || !self.sending() {
            return None;
        }
        let at = self.due_at(self.next_k);
        if at > now {
            return None;
        }
        let i = (self.next_k % self.players.len() as u64) as usize;
        self.next_k += 1;
        Some((i, at))
    }

    fn members(&self, i: usize) -> u64 {
        let room = i / self.spec.room_size;
        (self.players.len() - room * self.spec.room_size).min(self.spec.room_size) as u64
    }

    /// Registers player `i`'s next message, scheduled at `sched` and sent at `now`; returns
    /// the frame to write (`None`: the player is dead or has [`MAX_IN_FLIGHT`] in flight, an
    /// overrun). The bytes stay valid until [`SLOTS`] more messages of this player.
    #[inline]
    pub fn prepare_send(&mut self, i: usize, sched: u64, now: u64) -> Option<(*const u8, usize)> {
        let members = if self.chat { self.members(i) } else { 1 };
        let measuring = self.phase == Phase::Measure;
        let p = &mut self.players[i];
        if p.dead {
            return None;
        }
        if p.in_flight >= MAX_IN_FLIGHT || (self.chat && p.sends_pending >= SLOTS) {
            self.overruns += 1;
            return None;
        }
        p.in_flight += 1;
        self.sent += 1;
        self.expected += members;
        if measuring {
            self.sent_in_window += 1;
            if !self.closed {
                let _ = self.lag.record((now.saturating_sub(sched) / 1000).max(1));
            }
        }
        if self.chat {
            let slot = &mut p.slots[p.next_slot];
            p.next_slot = (p.next_slot + 1) % SLOTS;
            write_digits(&mut slot[13..26], TS_BASE + sched / 1000);
            Some((slot.as_ptr(), CHAT_FRAME))
        } else {
            let tail = (p.head + p.in_flight - 1) % MAX_IN_FLIGHT;
            p.fifo[tail] = sched;
            Some((self.echo_frame.as_ptr(), self.echo_frame.len()))
        }
    }

    /// Parses the frames in player `i`'s buffer at `now`; returns whether a closed-loop player
    /// got the reply (or its own chat message) it was waiting for.
    pub fn on_data(&mut self, i: usize, now: u64) -> bool {
        let measuring = self.phase == Phase::Measure;
        let mut pos = 0;
        let mut freed = false;
        let rlen = self.players[i].rlen;
        loop {
            let buf = &self.players[i].rbuf[..rlen];
            if rlen - pos < 4 {
                break;
            }
            let len = u32::from_be_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
            if len == 0 || len + 4 > RBUF {
                self.fail(i, format!("bad frame length {len}"));
                return false;
            }
            if rlen - pos < 4 + len {
                break;
            }
            let kind = buf[pos + 4];
            let body = pos + 5..pos + 4 + len;
            pos += 4 + len;
            if kind == TYPE_HEARTBEAT {
                continue;
            }
            if kind != TYPE_MESSAGE || body.len() < 2 {
                self.unexpected += 1;
                continue;
            }
            let body = &buf[body];
            let cmd = u16::from_be_bytes([body[0], body[1]]);
            let payload = &body[2..];
            if cmd != self.reply_cmd {
                self.unexpected += 1;
                continue;
            }
            if self.chat {
                let (Some(ts), Some(u)) = (
                    number_after(payload, b"\"ts\":"),
                    number_after(payload, b"\"u\":"),
                ) else {
                    self.mismatched += 1;
                    self.received += 1;
                    continue;
                };
                let from = u.wrapping_sub(self.uid_base) as usize;
                if from >= self.players.len()
                    || from / self.spec.room_size != i / self.spec.room_size
                {
                    // From outside this player's room: a routing error.
                    self.unexpected += 1;
                    continue;
                }
                self.received += 1;
                if from == i {
                    let p = &mut self.players[i];
                    p.in_flight = p.in_flight.saturating_sub(1);
                    freed = true;
                }
                if measuring {
                    self.completed += 1;
                    let lat = (now / 1000 + TS_BASE).saturating_sub(ts);
                    let _ = self.hist.record(lat.max(1));
                }
            } else {
                let ok = payload == PAYLOAD;
                let p = &mut self.players[i];
                if p.in_flight == 0 {
                    self.unexpected += 1;
                    continue;
                }
                let start = p.fifo[p.head];
                p.head = (p.head + 1) % MAX_IN_FLIGHT;
                p.in_flight -= 1;
                self.received += 1;
                if !ok {
                    self.mismatched += 1;
                }
                freed = true;
                if measuring {
                    self.completed += 1;
                    let _ = self.hist.record((now.saturating_sub(start) / 1000).max(1));
                }
            }
        }
        let p = &mut self.players[i];
        if pos > 0 {
            p.rbuf.copy_within(pos..rlen, 0);
            p.rlen = rlen - pos;
        }
        // A closed-loop chat player waits for its own message; an echo player for its reply.
        self.closed && freed && p.in_flight == 0
    }

    /// Marks player `i` failed with `why` (its replies still due are reported lost).
    pub fn fail(&mut self, i: usize, why: String) {
        let p = &mut self.players[i];
        if p.dead {
            return;
        }
        p.dead = true;
        self.error_count += 1;
        if self.errors.len() < 5 {
            self.errors.push(format!("player {i}: {why}"));
        }
    }

    /// Leaks every buffer an I/O operation may still refer to (after a failed cancellation).
    pub fn leak_buffers(&mut self) {
        std::mem::forget(std::mem::take(&mut self.players));
        std::mem::forget(std::mem::take(&mut self.echo_frame));
    }

    /// Whether the drain has ended.
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The run's figures.
    pub fn finish(self) -> StepResult {
        let (server_cpu, gen_cpu, wall) = self.window_figures.unwrap_or((0.0, 0.0, 1e-9));
        let q = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                f64::NAN
            } else {
                h.value_at_quantile(q) as f64 / 1e3
            }
        };
        let drain_s = self.now().saturating_sub(self.t_measured_end) as f64 / 1e9;
        let mut errors = self.errors;
        if self.error_count > errors.len() as u64 {
            errors.push(format!("... {} connection errors in all", self.error_count));
        }
        StepResult {
            players: self.spec.players,
            offered: match self.spec.mode {
                Mode::Closed => f64::NAN,
                Mode::Open { rate } => rate * self.spec.players as f64,
            },
            sent_in_window: self.sent_in_window,
            p50_ms: q(&self.hist, 0.5),
            p99_ms: q(&self.hist, 0.99),
            max_ms: if self.hist.is_empty() {
                f64::NAN
            } else {
                self.hist.max() as f64 / 1e3
            },
            lag_p99_ms: q(&self.lag, 0.99),
            overruns: self.overruns,
            counts: Counts {
                sent: self.sent,
                expected: self.expected,
                received: self.received,
                completed: self.completed,
                mismatched: self.mismatched,
                unexpected: self.unexpected,
                errors,
            },
            server_cpu,
            gen_cpu,
            wall,
            drain_s,
        }
    }
}

/// Writes `v` as exactly `out.len()` decimal digits (leading digits of larger numbers lost).
#[inline]
fn write_digits(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// The unsigned integer right after `key` in `s`, if any.
#[inline]
fn number_after(s: &[u8], key: &[u8]) -> Option<u64> {
    let at = s.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = s[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut v = 0u64;
    let mut n = 0;
    for d in digits {
        v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
        n += 1;
    }
    (n > 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_and_numbers() {
        let mut b = [0u8; 13];
        write_digits(&mut b, TS_BASE + 42);
        assert_eq!(&b, b"1000000000042");
        assert_eq!(
            number_after(br#"{"ts":1000000000042,"u":7}"#, b"\"u\":"),
            Some(7)
        );
        assert_eq!(
            number_after(br#"{"ts":1000000000042,"u":7}"#, b"\"ts\":"),
            Some(1000000000042)
        );
        assert_eq!(number_after(br#"{"ts":x}"#, b"\"ts\":"), None);
        assert_eq!(number_after(br#"{}"#, b"\"u\":"), None);
    }
}
