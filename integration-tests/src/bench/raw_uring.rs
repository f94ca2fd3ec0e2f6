//! The io_uring floor: the raw echo server (`raw_echo.rs`: same framing, same answers) on one
//! thread and one ring, the way an io_uring connector would run at best. A multishot accept,
//! one `recv` in flight per connection (re-armed after each completion), one `send` in flight
//! per connection (what arrives meanwhile is answered in the next one), and every submission
//! of a loop turn, across all connections, handed to the kernel by the one `io_uring_enter`
//! that also waits for the next completion. The ring runs with `SINGLE_ISSUER |
//! DEFER_TASKRUN` (completion work runs only when this thread enters the kernel, in one batch).
//! Run as `bench raw-echo <port> uring`.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use kennel_proto::client::ClientCodec;

use super::raw_echo::{answer, handshake_reply};

/// `MSG_NOSIGNAL`: a send to a closed socket fails with EPIPE instead of raising SIGPIPE.
const MSG_NOSIGNAL: i32 = 0x4000;
const OP_ACCEPT: u64 = 0;
const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
/// Bytes one recv may bring.
const RBUF: usize = 16 * 1024;
const SQ_ENTRIES: u32 = 4096;

/// One client: its socket, read buffer, answers waiting and the send in flight.
struct Conn {
    /// Closed when the `Conn` is dropped, once no operation uses it.
    stream: TcpStream,
    fd: RawFd,
    rbuf: BytesMut,
    codec: ClientCodec,
    /// Answers made while a send is in flight.
    out: BytesMut,
    /// The bytes of the send in flight (from `sent` on).
    sending: BytesMut,
    send_in_flight: bool,
    /// Operations in flight: the slot is freed (and the socket closed) once none is left.
    ops: u32,
    closing: bool,
}

fn user_data(slot: usize, op: u64) -> u64 {
    ((slot as u64) << 2) | op
}

fn recv_entry(slot: usize, c: &mut Conn) -> squeue::Entry {
    c.rbuf.reserve(RBUF);
    let spare = c.rbuf.spare_capacity_mut();
    // SAFETY (of the kernel's use of the pointer): the buffer is `rbuf`'s spare capacity, which
    // is neither moved nor touched until this recv completes (the loop only changes `rbuf` in
    // the recv's completion); a closing connection keeps its `Conn` until `ops` is 0.
    opcode::Recv::new(
        types::Fd(c.fd),
        spare.as_mut_ptr().cast(),
        spare.len() as u32,
    )
    .build()
    .user_data(user_data(slot, OP_RECV))
}

fn send_entry(slot: usize, c: &Conn) -> squeue::Entry {
    // SAFETY (of the pointer's use): `sending` is not touched while its send is in flight.
    opcode::Send::new(types::Fd(c.fd), c.sending.as_ptr(), c.sending.len() as u32)
        .flags(MSG_NOSIGNAL)
        .build()
        .user_data(user_data(slot, OP_SEND))
}

/// Serves on `127.0.0.1:port` until killed; prints `raw-echo listening on <addr>` when ready.
pub fn main(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("raw-echo listening on {}", listener.local_addr()?);
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(4 * SQ_ENTRIES)
        .build(SQ_ENTRIES)
        .context("io_uring_setup (is io_uring disabled? /proc/sys/kernel/io_uring_disabled)")?;
    let (submitter, mut sq, mut cq) = ring.split();
    let reply = handshake_reply();
    let mut conns: Vec<Option<Box<Conn>>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(OP_ACCEPT);
    let mut queued: Vec<squeue::Entry> = vec![accept.clone()];
    loop {
        for e in queued.drain(..) {
            // SAFETY: every buffer an entry points at lives in a boxed `Conn` kept until its
            // operations completed (see `recv_entry`).
            while unsafe { sq.push(&e) }.is_err() {
                sq.sync();
                submitter.submit().context("io_uring submit")?;
                sq.sync();
            }
        }
        sq.sync();
        match submitter.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(4) | Some(16)) => {}
            Err(e) => return Err(e).context("io_uring_enter"),
        }
        cq.sync();
        for cqe in &mut cq {
            let (slot, op, res) = (
                (cqe.user_data() >> 2) as usize,
                cqe.user_data() & 3,
                cqe.result(),
            );
            if op == OP_ACCEPT {
                if res >= 0 {
                    // SAFETY: the accept's result is a new socket this loop now owns.
                    let stream = unsafe { TcpStream::from_raw_fd(res) };
                    let _ = stream.set_nodelay(true);
                    let slot = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    let mut c = Box::new(Conn {
                        fd: stream.as_raw_fd(),
                        stream,
                        rbuf: BytesMut::with_capacity(RBUF),
                        codec: ClientCodec::default(),
                        out: BytesMut::with_capacity(4096),
                        sending: BytesMut::with_capacity(4096),
                        send_in_flight: false,
                        ops: 1,
                        closing: false,
                    });
                    queued.push(recv_entry(slot, &mut c));
                    conns[slot] = Some(c);
                }
                if !cqueue::more(cqe.flags()) {
                    if res < 0 {
                        bail!("accept: {}", std::io::Error::from_raw_os_error(-res));
                    }
                    queued.push(accept.clone());
                }
                continue;
            }
            let Some(c) = conns.get_mut(slot).and_then(Option::as_mut) else {
                bail!("a completion for slot {slot}, which is free");
            };
            c.ops -= 1;
            match op {
                OP_RECV if res > 0 && !c.closing => {
                    // SAFETY: the kernel wrote `res` bytes into the spare capacity.
                    unsafe { c.rbuf.set_len(c.rbuf.len() + res as usize) };
                    let out = if c.send_in_flight {
                        &mut c.out
                    } else {
                        &mut c.sending
                    };
                    if answer(&mut c.codec, &mut c.rbuf, out, &reply).is_err() {
                        c.closing = true;
                    } else {
                        if !c.send_in_flight && !c.sending.is_empty() {
                            c.send_in_flight = true;
                            c.ops += 1;
                            queued.push(send_entry(slot, c));
                        }
                        c.ops += 1;
                        queued.push(recv_entry(slot, c));
                    }
                }
                OP_RECV => c.closing = true,
                OP_SEND if res > 0 && !c.closing => {
                    let _sent = c.sending.split_to(res as usize);
                    if c.sending.is_empty() {
                        std::mem::swap(&mut c.sending, &mut c.out);
                    }
                    if c.sending.is_empty() {
                        c.send_in_flight = false;
                    } else {
                        c.ops += 1;
                        queued.push(send_entry(slot, c));
                    }
                }
                _ => c.closing = true,
            }
            if c.closing && c.ops == 0 {
                // No operation uses the socket or the buffers any more: dropped, closed.
                conns[slot] = None;
                free.push(slot);
            } else if c.closing {
                // Ends the recv still in flight (a send completes on its own).
                let _ = c.stream.shutdown(Shutdown::Both);
            }
        }
    }
}
