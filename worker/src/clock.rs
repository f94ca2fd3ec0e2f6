//! The coarse clock of heartbeat checks, rate limits, link down times and log throttles:
//! milliseconds since the first call, one read of the monotonic clock.

use std::sync::LazyLock;
use std::time::Instant;

/// Milliseconds since the first call.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}
