//! The server-wide budget of request buffers (NBD and iSCSI): bytes held by requests in flight or by
//! replies waiting to be sent, across every connection on every reactor.
//!
//! Each connection already keeps its own requests under `MAX_BUFFER_BYTES_PER_CONNECTION`;
//! this bounds their sum, so that many connections that pipeline large reads and never read
//! the replies cannot take the machine's memory. A connection over either bound stops reading
//! requests until its own replies drain (back-pressure); it never waits on another
//! connection, because a connection with nothing charged may always take one request, even
//! past the budget. That keeps every client served (a connection holding nothing cannot be
//! starved by others that hold everything) and bounds the total at
//! `MAX_BUFFER_BYTES_TOTAL + connections × MAX_IO_BYTES`.
//!
//! One atomic add and compare per request: no lock on the data path.

use crate::constants::MAX_BUFFER_BYTES_TOTAL;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The budget every NBD connection of this server charges (one server per process).
pub static BUFFER_BUDGET: BufferBudget = BufferBudget::new(MAX_BUFFER_BYTES_TOTAL);

pub struct BufferBudget {
    used_bytes: AtomicUsize,
    limit_bytes: usize,
}

impl BufferBudget {
    pub const fn new(limit_bytes: usize) -> Self {
        Self {
            used_bytes: AtomicUsize::new(0),
            limit_bytes,
        }
    }

    /// Takes `bytes` from the budget if they fit, or unconditionally when `always` (the
    /// caller holds nothing yet). Returns whether they were taken.
    pub fn try_charge(&self, bytes: usize, always: bool) -> bool {
        let before = self.used_bytes.fetch_add(bytes, Ordering::AcqRel);
        if always || before + bytes <= self.limit_bytes {
            return true;
        }
        self.release(bytes);
        false
    }

    /// Gives back `bytes` taken by [`Self::try_charge`].
    pub fn release(&self, bytes: usize) {
        let before = self.used_bytes.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(
            before >= bytes,
            "buffer budget underflow: releasing {bytes} of {before}"
        );
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_up_to_the_limit_then_only_the_floor() {
        let budget = BufferBudget::new(8);
        assert!(budget.try_charge(5, false));
        assert!(!budget.try_charge(4, false), "past the limit");
        assert_eq!(budget.used_bytes(), 5, "a refused charge takes nothing");
        assert!(budget.try_charge(4, true), "the floor goes past it");
        assert_eq!(budget.used_bytes(), 9);
        budget.release(9);
        assert_eq!(budget.used_bytes(), 0);
        assert!(budget.try_charge(8, false));
    }

    #[test]
    #[should_panic(expected = "underflow")]
    #[cfg(debug_assertions)]
    fn releasing_more_than_was_charged_is_caught() {
        let budget = BufferBudget::new(8);
        assert!(budget.try_charge(4, false));
        budget.release(8);
    }
}
