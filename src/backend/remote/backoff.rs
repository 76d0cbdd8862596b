//! Reconnect backoff of a link: exponential, from [`REMOTE_RECONNECT_MIN_MS`] doubling to
//! [`REMOTE_RECONNECT_MAX_MS`], back to the minimum once a connect succeeds. No jitter: each
//! LUN has one link per reactor, and an array that comes back takes a few dozen logins at once
//! without trouble.

use crate::constants::{REMOTE_RECONNECT_MAX_MS, REMOTE_RECONNECT_MIN_MS};
use std::time::Duration;

/// The delay before the next reconnect attempt.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    next_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next_ms: REMOTE_RECONNECT_MIN_MS,
        }
    }
}

impl Backoff {
    /// The delay before this attempt; the next one waits twice as long, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(REMOTE_RECONNECT_MAX_MS);
        Duration::from_millis(delay)
    }

    /// A connect succeeded: the next loss retries after the minimum again.
    pub fn reset(&mut self) {
        self.next_ms = REMOTE_RECONNECT_MIN_MS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..10)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(&delays[..4], &[100, 200, 400, 800]);
        assert!(delays.windows(2).all(|pair| pair[1] >= pair[0]));
        assert_eq!(*delays.last().unwrap(), REMOTE_RECONNECT_MAX_MS);
        backoff.reset();
        assert_eq!(
            backoff.next_delay().as_millis() as u64,
            REMOTE_RECONNECT_MIN_MS
        );
    }
}
