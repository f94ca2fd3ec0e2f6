//! Restart backoff for crashed servers: the first restart waits [`INITIAL`], each further one
//! waits twice as long, capped at [`MAX`]; a server that ran at least [`RESET_AFTER`] before
//! exiting starts again from [`INITIAL`].

use std::time::Duration;

/// Delay before the first restart.
pub const INITIAL: Duration = Duration::from_millis(500);
/// Longest delay between restarts.
pub const MAX: Duration = Duration::from_secs(30);
/// A server that ran this long before exiting is considered healthy: its backoff resets.
pub const RESET_AFTER: Duration = Duration::from_secs(60);

/// Per-server restart backoff state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: INITIAL }
    }
}

impl Backoff {
    /// The delay before restarting a server that exited after running `ran_for`; advances the
    /// backoff (doubling, capped at [`MAX`]).
    pub fn on_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= RESET_AFTER {
            self.next = INITIAL;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn doubles_from_half_a_second_and_caps_at_thirty() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| b.on_exit(ms(10))).collect();
        let expected: Vec<_> = [
            500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000,
        ]
        .into_iter()
        .map(ms)
        .collect();
        assert_eq!(delays, expected);
    }

    #[test]
    fn never_exceeds_the_cap() {
        let mut b = Backoff::default();
        for _ in 0..1_000 {
            assert!(b.on_exit(Duration::ZERO) <= MAX);
        }
    }

    #[test]
    fn resets_after_a_long_run() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.on_exit(ms(100));
        }
        assert_eq!(b.on_exit(ms(100)), ms(16_000));
        assert_eq!(b.on_exit(RESET_AFTER), INITIAL);
        assert_eq!(b.on_exit(ms(100)), ms(1_000));
        // Just under the threshold does not reset.
        assert_eq!(b.on_exit(RESET_AFTER - ms(1)), ms(2_000));
    }
}
