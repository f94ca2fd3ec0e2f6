//! The io_uring back end: one ring for every connection, one `recv` in flight per connection
//! (re-armed after each completion), one `send` per message, and every submission of a loop
//! turn (across all connections) handed to the kernel by one `io_uring_enter`, which also
//! waits for the next completion or the next scheduled send. The ring runs with
//! `SINGLE_ISSUER | DEFER_TASKRUN` (completion work runs only when this thread enters the
//! kernel, in one batch) when the kernel has it.

use std::os::fd::RawFd;

use anyhow::{Context, Result};
use io_uring::{IoUring, opcode, squeue, types};

use super::core::{Core, RBUF};

const OP_RECV: u64 = 0;
const OP_SEND: u64 = 1;
/// `MSG_NOSIGNAL`: a send to a closed socket fails with EPIPE instead of raising SIGPIPE.
const MSG_NOSIGNAL: i32 = 0x4000;
/// Submission queue entries (a loop turn with more submits in batches of this many).
const SQ_ENTRIES: u32 = 4096;
/// Longest wait in one `io_uring_enter` (phase changes are checked at least this often).
const MAX_WAIT_NS: u64 = 10_000_000;

fn recv_entry(core: &mut Core, i: usize, fd: RawFd) -> squeue::Entry {
    let p = &mut core.players[i];
    // SAFETY (of the pointer's use by the kernel): `rbuf` is a boxed array that lives as long
    // as `core`, which outlives the ring's operations (the loop only returns once the drain
    // ended or after dropping the ring); no other code touches `rbuf[rlen..]` while this recv
    // is in flight.
    let ptr = unsafe { p.rbuf.as_mut_ptr().add(p.rlen) };
    opcode::Recv::new(types::Fd(fd), ptr, (RBUF - p.rlen) as u32)
        .build()
        .user_data(((i as u64) << 1) | OP_RECV)
}

fn send_entry(i: usize, fd: RawFd, frame: (*const u8, usize)) -> squeue::Entry {
    opcode::Send::new(types::Fd(fd), frame.0, frame.1 as u32)
        .flags(MSG_NOSIGNAL)
        .build()
        .user_data(((i as u64) << 1) | OP_SEND | ((frame.1 as u64) << 32))
}

/// Builds the ring: deferred task work when the kernel has it, else plain.
fn ring(players: usize) -> Result<IoUring> {
    // The completion queue must hold at least the submission queue.
    let cq = (4 * players)
        .next_power_of_two()
        .max(2 * SQ_ENTRIES as usize) as u32;
    match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(cq)
        .build(SQ_ENTRIES)
    {
        Ok(r) => Ok(r),
        Err(deferred) => IoUring::builder()
            .setup_cqsize(cq)
            .build(SQ_ENTRIES)
            .with_context(|| {
                format!(
                    "io_uring_setup (with DEFER_TASKRUN: {deferred}; is io_uring disabled? /proc/sys/kernel/io_uring_disabled)"
                )
            }),
    }
}

/// Drives `core` over the blocking-mode sockets `fds` until the drain ends.
pub fn run(core: &mut Core, fds: &[RawFd]) -> Result<()> {
    let mut ring = ring(fds.len())?;
    let (submitter, mut sq, mut cq) = ring.split();
    // Operations in flight (each completes exactly once).
    let mut ops = 0u64;
    // Pushes one entry, submitting first when the queue is full.
    macro_rules! push {
        ($e:expr) => {{
            let e = $e;
            // SAFETY: every buffer an entry points at lives in `core` (a player's boxed read
            // buffer or chat slots, or the echo frame), which outlives every operation: this
            // function reaps every completion before it returns (or leaks the buffers).
            while unsafe { sq.push(&e) }.is_err() {
                sq.sync();
                submitter.submit().context("io_uring submit")?;
                sq.sync();
            }
            ops += 1;
        }};
    }
    macro_rules! send {
        ($i:expr, $sched:expr, $now:expr) => {{
            let i = $i;
            if let Some(f) = core.prepare_send(i, $sched, $now) {
                core.players[i].sends_pending += 1;
                push!(send_entry(i, fds[i], f));
            }
        }};
    }
    let tick_ns = core.tick_ns().max(1);
    let mut next_tick = 0;
    core.start();
    let now = core.now();
    for i in 0..fds.len() {
        // Bytes read past the setup replies are parsed before the first recv.
        core.on_data(i, now);
        push!(recv_entry(core, i, fds[i]));
        if core.closed() {
            send!(i, now, now);
        }
    }
    loop {
        let now = core.now();
        core.tick(now);
        if core.done() {
            break;
        }
        // Open loop: the messages due leave once per tick (every turn with a zero tick).
        if now >= next_tick {
            while let Some((i, sched)) = core.due(now) {
                send!(i, sched, now);
            }
            next_tick = (now / tick_ns + 1) * tick_ns;
        }
        // Wake on the first completion (its latency is read at once), at the next phase
        // change, or when the next message is due (not before the next tick).
        let now = core.now();
        let mut wake = core.next_event();
        if !core.closed() && core.sending() {
            wake = wake.max(next_tick.min(core.next_phase()));
        }
        enter(
            &submitter,
            &mut sq,
            1,
            wake.saturating_sub(now).clamp(1, MAX_WAIT_NS),
        )?;
        cq.sync();
        let now = core.now();
        for cqe in &mut cq {
            ops -= 1;
            let ud = cqe.user_data();
            let i = ((ud & 0xffff_ffff) >> 1) as usize;
            let res = cqe.result();
            if ud & 1 == OP_SEND {
                core.players[i].sends_pending -= 1;
                let len = (ud >> 32) as i32;
                if res != len {
                    let why = if res < 0 {
                        format!("send: {}", std::io::Error::from_raw_os_error(-res))
                    } else {
                        format!("short send: {res} of {len} bytes")
                    };
                    core.fail(i, why);
                }
                continue;
            }
            if res <= 0 {
                let why = if res == 0 {
                    "the server closed the connection".to_string()
                } else {
                    format!("recv: {}", std::io::Error::from_raw_os_error(-res))
                };
                core.fail(i, why);
                continue;
            }
            core.players[i].rlen += res as usize;
            if core.on_data(i, now) && core.sending() {
                send!(i, now, now);
            }
            if core.players[i].dead {
            } else if core.players[i].rlen == RBUF {
                core.fail(i, format!("a frame larger than {RBUF} bytes"));
            } else {
                push!(recv_entry(core, i, fds[i]));
            }
        }
    }
    // Cancel the recvs still in flight and reap every completion, so that no operation
    // refers to `core`'s buffers once this returns.
    if ops > 0 {
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(CANCEL);
        push!(cancel);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while ops > 0 && std::time::Instant::now() < deadline {
            enter(&submitter, &mut sq, 1, MAX_WAIT_NS)?;
            cq.sync();
            ops -= (&mut cq).count() as u64;
        }
        if ops > 0 {
            // The kernel may still write into them: keep them alive for good.
            core.leak_buffers();
            anyhow::bail!("{ops} io_uring operations did not complete after cancellation");
        }
    }
    Ok(())
}

/// user_data of the final cancellation.
const CANCEL: u64 = u64::MAX - 1;

/// Submits what is queued and waits up to `wait_ns` for `want` completions.
fn enter(
    submitter: &io_uring::Submitter<'_>,
    sq: &mut io_uring::SubmissionQueue<'_>,
    want: usize,
    wait_ns: u64,
) -> Result<()> {
    let ts = types::Timespec::new()
        .sec(wait_ns / 1_000_000_000)
        .nsec((wait_ns % 1_000_000_000) as u32);
    let args = types::SubmitArgs::new().timespec(&ts);
    sq.sync();
    match submitter.submit_with_args(want, &args) {
        Ok(_) => Ok(()),
        // ETIME: the wait timed out; EINTR: a signal; EBUSY: completions to reap first.
        Err(e) if matches!(e.raw_os_error(), Some(62) | Some(4) | Some(16)) => Ok(()),
        Err(e) => Err(e).context("io_uring_enter"),
    }
}
