//! Socket-level guards of the internal links, shared by the master port and the servers' peer
//! ports: the kernel's `TCP_USER_TIMEOUT` on a link, and [`PreAuthGate`], the cap on
//! connections that have not authenticated yet.
//!
//! The gate caps unauthenticated connections globally and per source IP. When a cap is
//! reached, the *oldest* unauthenticated connection (of that IP, or overall) is closed to make
//! room, rather than the new one refused: an honest dialer authenticates within milliseconds,
//! so idle junk (sockets that never send their `Hello`) can never hold the slots that
//! registrations, peer dials and the CLI need, however fast it reconnects.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Sets `TCP_USER_TIMEOUT` (Linux): the kernel closes the connection when data it sent stays
/// unacknowledged this long, or its zero-window probes go unanswered that long. Elsewhere a
/// no-op. Failures are ignored (the link's heartbeat still applies).
pub fn set_user_timeout(stream: &TcpStream, timeout: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    {
        let _ = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout));
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    {
        let _ = (stream, timeout);
    }
}

/// Caps connections that have not authenticated yet: at most `max_total`, at most
/// `max_per_ip` from one source address. Cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct PreAuthGate {
    inner: Arc<Mutex<GateState>>,
    max_total: usize,
    max_per_ip: usize,
}

#[derive(Debug, Default)]
struct GateState {
    next: u64,
    /// Unauthenticated connections by admission order (oldest first).
    slots: BTreeMap<u64, (IpAddr, CancellationToken)>,
    per_ip: HashMap<IpAddr, usize>,
}

/// What [`PreAuthGate::admit`] did to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// There was room.
    None,
    /// The oldest unauthenticated connection from the same address was closed.
    SameIp(IpAddr),
    /// The oldest unauthenticated connection overall was closed.
    Oldest(IpAddr),
}

impl PreAuthGate {
    /// A gate of `max_total` connections, `max_per_ip` from one address (both at least 1).
    pub fn new(max_total: usize, max_per_ip: usize) -> PreAuthGate {
        PreAuthGate {
            inner: Arc::new(Mutex::new(GateState::default())),
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.clamp(1, max_total.max(1)),
        }
    }

    /// Admits a new connection from `ip`, closing the oldest unauthenticated one (of `ip` when
    /// `ip` is at its cap, else overall) when full. The ticket holds the slot until it is
    /// dropped (authenticated or closed); [`Ticket::evicted`] fires if it is closed to make
    /// room for a newer one.
    pub fn admit(&self, ip: IpAddr) -> (Ticket, Eviction) {
        let mut st = self.inner.lock().unwrap();
        let mut eviction = Eviction::None;
        let victim = if st.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            eviction = Eviction::SameIp(ip);
            st.slots
                .iter()
                .find(|(_, (a, _))| *a == ip)
                .map(|(seq, _)| *seq)
        } else if st.slots.len() >= self.max_total {
            let oldest = st.slots.iter().next().map(|(seq, (a, _))| (*seq, *a));
            if let Some((_, a)) = oldest {
                eviction = Eviction::Oldest(a);
            }
            oldest.map(|(seq, _)| seq)
        } else {
            None
        };
        if let Some(seq) = victim {
            st.remove(seq).cancel();
        }
        let seq = st.next;
        st.next += 1;
        let token = CancellationToken::new();
        st.slots.insert(seq, (ip, token.clone()));
        *st.per_ip.entry(ip).or_default() += 1;
        let ticket = Ticket {
            gate: self.inner.clone(),
            seq,
            evicted: token,
        };
        (ticket, eviction)
    }

    /// Unauthenticated connections held now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().slots.len()
    }

    /// Whether no unauthenticated connection is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl GateState {
    /// Frees slot `seq` (its token, to cancel or drop).
    fn remove(&mut self, seq: u64) -> CancellationToken {
        let (ip, token) = self.slots.remove(&seq).expect("a held slot");
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        token
    }
}

/// One unauthenticated connection's slot in a [`PreAuthGate`]; freed on drop.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Mutex<GateState>>,
    seq: u64,
    evicted: CancellationToken,
}

impl Ticket {
    /// Completes when the connection was closed to make room for a newer one.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.gate.lock().unwrap();
        if st.slots.contains_key(&self.seq) {
            st.remove(self.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn full_gate_evicts_the_oldest_of_the_same_ip_then_overall() {
        let gate = PreAuthGate::new(4, 2);
        let (a1, e) = gate.admit(ip(1));
        assert_eq!(e, Eviction::None);
        let (a2, _) = gate.admit(ip(1));
        // ip 1 is at its cap: its oldest goes.
        let (a3, e) = gate.admit(ip(1));
        assert_eq!(e, Eviction::SameIp(ip(1)));
        assert!(a1.evicted.is_cancelled());
        assert!(!a2.evicted.is_cancelled());
        let (b1, _) = gate.admit(ip(2));
        let (b2, e) = gate.admit(ip(3));
        assert_eq!(e, Eviction::None);
        assert_eq!(gate.len(), 4);
        // Full overall: the oldest (a2) goes, whoever it is.
        let (_c, e) = gate.admit(ip(4));
        assert_eq!(e, Eviction::Oldest(ip(1)));
        assert!(a2.evicted.is_cancelled());
        assert!(!a3.evicted.is_cancelled() && !b1.evicted.is_cancelled());
        // Dropping tickets (authenticated, or gone) frees their slots, evicted or not.
        drop((a1, a2, a3, b1, b2));
        assert_eq!(gate.len(), 1);
        let (_d, e) = gate.admit(ip(1));
        assert_eq!(e, Eviction::None);
    }
}
