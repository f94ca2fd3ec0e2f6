//! The epoll back end: a current-thread tokio runtime, one small task per connection that
//! waits for its socket to be readable, reads into the player's buffer and (closed loop)
//! writes the next message at once with `try_write`; the open-loop schedule runs in the
//! control task, on tokio's timer (1 ms resolution, so sends leave in 1 ms batches: the send
//! lag figure shows it). One `write` per message; a write the socket cannot take whole fails
//! the connection (a 27-45 byte frame into a loopback socket buffer only fails when the
//! server stopped reading).

use std::cell::RefCell;
use std::io::ErrorKind;
use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::core::{Core, RBUF};

/// Longest sleep of the control task (phase changes are checked at least this often).
const MAX_WAIT: Duration = Duration::from_millis(10);

/// Drives `core` over `streams` until the drain ends. Must run inside a `LocalSet`.
pub async fn run(core: Rc<RefCell<Core>>, streams: Vec<TcpStream>) {
    let streams = Rc::new(streams);
    {
        let mut c = core.borrow_mut();
        c.start();
        let now = c.now();
        for (i, s) in streams.iter().enumerate() {
            c.on_data(i, now);
            if c.closed() {
                send(&mut c, s, i, now, now);
            }
        }
    }
    let readers: Vec<_> = (0..streams.len())
        .map(|i| tokio::task::spawn_local(reader(core.clone(), streams.clone(), i)))
        .collect();
    loop {
        let wait = {
            let mut c = core.borrow_mut();
            let now = c.now();
            c.tick(now);
            if c.done() {
                break;
            }
            while let Some((i, sched)) = c.due(now) {
                send(&mut c, &streams[i], i, sched, now);
            }
            Duration::from_nanos(c.next_event().saturating_sub(c.now()))
        };
        tokio::time::sleep(wait.min(MAX_WAIT)).await;
    }
    for r in readers {
        r.abort();
        // The aborted task (and its handle on `core`) is dropped once awaited.
        let _ = r.await;
    }
}

/// Writes player `i`'s next message (scheduled at `sched`) with one `write`.
fn send(c: &mut Core, s: &TcpStream, i: usize, sched: u64, now: u64) {
    let Some((ptr, len)) = c.prepare_send(i, sched, now) else {
        return;
    };
    // SAFETY: `prepare_send` returns a frame inside `c` that stays valid until this player's
    // next sends; it is only read here, before any other call on `c`.
    let frame = unsafe { std::slice::from_raw_parts(ptr, len) };
    match s.try_write(frame) {
        Ok(n) if n == len => {}
        Ok(n) => c.fail(i, format!("short write: {n} of {len} bytes")),
        Err(e) => c.fail(i, format!("write: {e}")),
    }
}

async fn reader(core: Rc<RefCell<Core>>, streams: Rc<Vec<TcpStream>>, i: usize) {
    let s = &streams[i];
    loop {
        if let Err(e) = s.readable().await {
            core.borrow_mut().fail(i, format!("readable: {e}"));
            return;
        }
        let mut c = core.borrow_mut();
        let p = &mut c.players[i];
        let rlen = p.rlen;
        match s.try_read(&mut p.rbuf[rlen..]) {
            Ok(0) => {
                c.fail(i, "the server closed the connection".into());
                return;
            }
            Ok(n) => {
                p.rlen += n;
                let now = c.now();
                if c.on_data(i, now) && c.sending() {
                    send(&mut c, s, i, now, now);
                }
                if c.players[i].dead {
                    return;
                }
                if c.players[i].rlen == RBUF {
                    c.fail(i, format!("a frame larger than {RBUF} bytes"));
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => {
                c.fail(i, format!("read: {e}"));
                return;
            }
        }
    }
}
