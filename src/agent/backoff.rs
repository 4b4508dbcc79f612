//! Reconnect delays: exponential backoff with full jitter (a random delay between
//! zero and the ceiling), so that agents cut off together do not come back in
//! step; a connection that lived long enough starts over from the base.

use std::time::Duration;

/// First reconnect delay (before jitter).
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A connection that lived this long resets the backoff.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);

/// Full jitter: a random delay between 0 and `min(cap, base * 2^failures)`.
pub fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_CAP);
    let nanos = ceiling.as_nanos() as u64;
    Duration::from_nanos(rand::random_range(0..=nanos))
}

/// Failures in a row, and the delay they call for.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt; counts one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Attempts that failed in a row so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// A connection lived for `lived`: long enough, and the next delay starts
    /// from the base again.
    pub(crate) fn connected_for(&mut self, lived: Duration) {
        if lived >= BACKOFF_RESET_AFTER {
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        for f in 0..40 {
            assert!(backoff(f) <= BACKOFF_CAP);
        }
        assert!(backoff(0) <= BACKOFF_BASE);
    }

    #[test]
    fn ceilings_double_then_reset_after_a_long_connection() {
        let mut b = Backoff::default();
        for n in 0..8u32 {
            assert_eq!(b.failures(), n);
            let ceiling = BACKOFF_BASE.saturating_mul(1 << n).min(BACKOFF_CAP);
            assert!(b.next_delay() <= ceiling);
        }
        b.connected_for(BACKOFF_RESET_AFTER / 2);
        assert_eq!(b.failures(), 8);
        b.connected_for(BACKOFF_RESET_AFTER);
        assert_eq!(b.failures(), 0);
    }
}
