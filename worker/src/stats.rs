//! What a server counts about itself: its outgoing RPC (calls, notifies, errors by kind, a
//! call latency histogram with fixed buckets), the panics caught in game code by route
//! ([`Stats::panic`], exported as `kennel_panics_total{route}`), and what a limit dropped
//! ([`Drops`]). The master link sends them in every per-second `Report` (with the app's own
//! `kennel list` columns, `app/status.rs`); the master exports them as Prometheus metrics.
//!
//! One [`Stats`] per server, shared by every layer, so counting is a few atomic adds.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kennel_proto::msg::RpcStats;

use crate::RpcError;

/// Upper bounds (seconds) of the call latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// One server's counters and columns.
#[derive(Default)]
pub(crate) struct Stats {
    calls: AtomicU64,
    notifies: AtomicU64,
    /// Per bucket of [`LATENCY_BUCKETS`]: calls that fell in it (not cumulative).
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    /// Sum of call latencies in microseconds.
    sum_us: AtomicU64,
    errors: Mutex<HashMap<&'static str, u64>>,
    /// Panics caught in game code, by route (or callback name); touched only when one happens.
    panics: Mutex<BTreeMap<String, u64>>,
    /// Messages dropped and clients closed by a limit (shared with every peer link).
    pub(crate) drops: Arc<Drops>,
}

/// The metric name of an RPC error's kind.
fn kind(e: &RpcError) -> &'static str {
    match e {
        RpcError::UnknownServer(_) => "unknown_server",
        RpcError::Timeout { .. } => "timeout",
        RpcError::LinkDropped(_) => "link_dropped",
        RpcError::NoRemote { .. } => "no_remote",
        RpcError::Remote { .. } => "remote",
        RpcError::Codec(_) => "codec",
        RpcError::QueueFull { .. } => "queue_full",
        RpcError::NoLink { .. } => "no_link",
        RpcError::Congested(_) => "congested",
    }
}

/// What a limit dropped or closed, counted in [`Drops`] (the label of
/// `kennel_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A client message a frontend could not forward: the backend's link is full, congested
    /// or gone, or the backend has been unreachable for `rpc.timeout`.
    Forward,
    /// A message to a peer (a reply, push or notify queued without waiting) dropped because
    /// its link was congested or gone.
    PeerMessage,
    /// A client message dropped by the rate limit (`rateLimit` with `"action": "drop"`).
    RateLimited,
    /// A client closed by the rate limit (`"action": "close"`).
    RateLimitClose,
    /// A client closed because its send queue was full (frames or bytes).
    SendQueueClose,
}

impl Dropped {
    const ALL: [Dropped; 5] = [
        Dropped::Forward,
        Dropped::PeerMessage,
        Dropped::RateLimited,
        Dropped::RateLimitClose,
        Dropped::SendQueueClose,
    ];

    /// The metric label.
    fn name(self) -> &'static str {
        match self {
            Dropped::Forward => "forward",
            Dropped::PeerMessage => "peer_message",
            Dropped::RateLimited => "rate_limited",
            Dropped::RateLimitClose => "rate_limit_close",
            Dropped::SendQueueClose => "send_queue_close",
        }
    }
}

/// Counters of [`Dropped`] things: one atomic add each, shared with the links.
#[derive(Default)]
pub(crate) struct Drops([AtomicU64; Dropped::ALL.len()]);

impl Drops {
    /// Counts one.
    pub(crate) fn dropped(&self, what: Dropped) {
        self.0[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters by name (the ones above zero), as the `Report` carries them.
    pub(crate) fn snapshot(&self) -> HashMap<String, u64> {
        Dropped::ALL
            .iter()
            .filter_map(|d| {
                let n = self.0[*d as usize].load(Ordering::Relaxed);
                (n > 0).then(|| (d.name().to_owned(), n))
            })
            .collect()
    }
}

/// Lets one log line through per second and counts the ones it holds back, so a flood of
/// refusals costs an atomic add each, not a line each.
pub(crate) struct LogThrottle {
    /// When a line last went through ([`crate::clock::now_ms`]); `u64::MAX`: never.
    last_ms: AtomicU64,
    held_back: AtomicU64,
}

impl Default for LogThrottle {
    fn default() -> LogThrottle {
        LogThrottle::new()
    }
}

impl LogThrottle {
    pub(crate) const fn new() -> LogThrottle {
        LogThrottle {
            last_ms: AtomicU64::new(u64::MAX),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log this one (`n` were held back since the last line); `None`: hold it back.
    pub(crate) fn tick(&self) -> Option<u64> {
        let now = crate::clock::now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if (last != u64::MAX && now.saturating_sub(last) < 1000)
            || self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

impl Stats {
    /// Counts one finished call that took `took`.
    pub(crate) fn call<T>(&self, took: Duration, result: &Result<T, RpcError>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        if let Err(e) = result {
            self.error(e);
        }
    }

    /// Counts one notify sent (or failed with `result`'s error).
    pub(crate) fn notify(&self, result: &Result<(), RpcError>) {
        self.notifies.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            self.error(e);
        }
    }

    fn error(&self, e: &RpcError) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(kind(e)).or_default() += 1;
    }

    /// Counts a panic caught in game code of `route` (a route of the route list, a remote's
    /// route, or a callback's name: a bounded set of labels).
    pub(crate) fn panic(&self, route: &str) {
        let mut panics = self.panics.lock().unwrap_or_else(|e| e.into_inner());
        match panics.get_mut(route) {
            Some(n) => *n += 1,
            None => {
                panics.insert(route.to_owned(), 1);
            }
        }
    }

    /// The cumulative panic counts by route, as the `Report` carries them.
    pub(crate) fn panics(&self) -> HashMap<String, u64> {
        let panics = self.panics.lock().unwrap_or_else(|e| e.into_inner());
        panics.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The cumulative RPC counters, as the `Report` carries them.
    pub(crate) fn rpc(&self) -> RpcStats {
        let mut running = 0;
        let latency_counts = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        let calls = self.calls.load(Ordering::Relaxed);
        RpcStats {
            calls,
            notifies: self.notifies.load(Ordering::Relaxed),
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            latency_bounds: LATENCY_BUCKETS.to_vec(),
            latency_counts,
            latency_count: calls,
            latency_sum: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_errors_by_kind() {
        let s = Stats::default();
        s.call::<()>(Duration::from_micros(300), &Ok(()));
        s.call::<()>(Duration::from_millis(3), &Err(RpcError::Codec("x".into())));
        s.call::<()>(
            Duration::from_secs(9),
            &Err(RpcError::LinkDropped("a".into())),
        );
        s.notify(&Err(RpcError::LinkDropped("a".into())));
        let r = s.rpc();
        assert_eq!(r.calls, 3);
        assert_eq!(r.notifies, 1);
        assert_eq!(r.latency_count, 3);
        assert_eq!(r.latency_bounds.len(), r.latency_counts.len());
        // 0.3 ms is in every bucket; 3 ms from the 5 ms bucket on; 9 s in none (only +Inf).
        assert_eq!(r.latency_counts[0], 1);
        assert_eq!(r.latency_counts[2], 1);
        assert_eq!(r.latency_counts[3], 2);
        assert_eq!(*r.latency_counts.last().unwrap(), 2);
        assert!((r.latency_sum - 9.0033).abs() < 1e-6, "{}", r.latency_sum);
        assert_eq!(r.errors["link_dropped"], 2);
        assert_eq!(r.errors["codec"], 1);
    }

    #[test]
    fn panics_are_counted_by_route() {
        let s = Stats::default();
        assert!(s.panics().is_empty());
        s.panic("chat.main.send");
        s.panic("chat.main.send");
        s.panic("on_client_off");
        let p = s.panics();
        assert_eq!(p.len(), 2);
        assert_eq!(p["chat.main.send"], 2);
        assert_eq!(p["on_client_off"], 1);
    }
}
