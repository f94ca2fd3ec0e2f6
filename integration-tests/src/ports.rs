//! Free TCP ports for servers a test starts in other processes (which must bind the port
//! themselves, so the test cannot hold the listener for them).
//!
//! "Bind port 0, read the port, release it" hands out ports from the kernel's ephemeral range,
//! which every outgoing connection on the machine also draws its local port from: between the
//! release and the server's bind, a client socket (of this test, of another test binary, of a
//! parallel build) can take it. So ports come from outside the ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), where no outgoing connection and no bind-0 lands,
//! and each one is reserved for the life of this process by an exclusive `flock` on
//! `$TMPDIR/kennel-test-ports/<port>`: every process using this allocator (the master's tests
//! carry a copy of it) skips ports another one holds. A port is handed out only if it can be
//! bound right now, and never twice by one process. Left: a foreign process binding the port
//! explicitly, which [`crate::cluster`] detects and retries.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

/// Lowest port handed out (above the well-known and most registered service ports).
const LOWEST: u32 = 20_000;

/// The kernel's ephemeral port range (inclusive), 32768-60999 if it cannot be read.
fn ephemeral_range() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|w| w.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// A TCP port on 127.0.0.1 that nothing listens on, outside the ephemeral range, reserved
/// for this process (see the module docs). Panics when none is left.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive ports, each as [`free_port`] gives them (for a config entry
/// with a port range).
pub fn free_ports(n: u16) -> u16 {
    /// The locks held: one per port handed out, kept until the process exits.
    static HELD: Mutex<Vec<(u16, Flock<File>)>> = Mutex::new(Vec::new());
    let (eph_lo, eph_hi) = ephemeral_range();
    let usable = |p: u32| (LOWEST..=65_535).contains(&p) && (p < eph_lo || p > eph_hi);
    let n = u32::from(n.max(1));
    let candidates: Vec<u32> = (LOWEST..=65_535)
        .filter(|p| (*p..*p + n).all(usable))
        .collect();
    assert!(
        !candidates.is_empty(),
        "no {n} ports outside the ephemeral range {eph_lo}-{eph_hi}"
    );
    let dir = std::env::temp_dir().join("kennel-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port lock dir");
    // Start somewhere different in every process, so parallel test binaries rarely meet.
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let mut held = HELD.lock().unwrap();
    let start = seed as usize % candidates.len();
    'next: for k in 0..candidates.len() {
        let first = candidates[(start + k) % candidates.len()];
        let mut locks = Vec::new();
        for port in (first..first + n).map(|p| p as u16) {
            if held.iter().any(|(p, _)| *p == port) {
                continue 'next;
            }
            let Some(lock) = try_reserve(&dir, port) else {
                continue 'next;
            };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue 'next; // someone outside the scheme uses it; the locks drop here
            }
            locks.push((port, lock));
        }
        held.extend(locks);
        return first as u16;
    }
    panic!("no {n} free ports left in {LOWEST}-65535 outside {eph_lo}-{eph_hi}");
}

/// The exclusive lock on `dir/<port>`, unless another process holds it.
fn try_reserve(dir: &std::path::Path, port: u16) -> Option<Flock<File>> {
    let path: PathBuf = dir.join(port.to_string());
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ok()?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_distinct_and_reserved() {
        let (lo, hi) = ephemeral_range();
        let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
        for p in &ports {
            assert!(u32::from(*p) < lo || u32::from(*p) > hi, "{p} is ephemeral");
            // Held by this process: a second lock on it (another open file) is refused.
            let dir = std::env::temp_dir().join("kennel-test-ports");
            assert!(try_reserve(&dir, *p).is_none(), "{p} is not reserved");
        }
        let run = free_ports(3);
        let dir = std::env::temp_dir().join("kennel-test-ports");
        for p in run..run + 3 {
            assert!(!ports.contains(&p), "{p} handed out twice");
            assert!(
                try_reserve(&dir, p).is_none(),
                "{p} of the run is not reserved"
            );
        }
        let mut sorted = ports.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "{ports:?}");
    }
}
