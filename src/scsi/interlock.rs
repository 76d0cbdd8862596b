//! The COMPARE AND WRITE interlock of one logical unit: the block ranges of the CAW commands
//! in flight, over every session of the volume on every reactor.
//!
//! COMPARE AND WRITE must be atomic against other writes to its blocks (VMware's ATS locking
//! relies on it): nothing may change the blocks between its read and its write. A CAW takes
//! its range here before it reads and gives it back after its write. ORWRITE (read, OR,
//! write) takes it the same way, and "CAW" below means either. While it holds it:
//! - another CAW overlapping the range is refused with BUSY (the initiator retries; ATS
//!   traffic is a few commands at a time, so a retry is rare and cheap);
//! - a write, WRITE SAME, UNMAP or WRITE AND VERIFY overlapping the range that *starts* is
//!   refused with BUSY too.
//!
//! The common case costs one atomic load per write: [`Interlock::is_empty`] is a relaxed
//! counter read, and only when a CAW is in flight does a write take the mutex to compare
//! ranges. The mutex is held for a scan of at most `SCSI_MAX_INTERLOCKED_RANGES` entries
//! and never across I/O.
//!
//! What it does not cover: a plain write that started before the CAW and is still in flight
//! when the CAW reads. Waiting for those would need every write to register its range (a
//! lock or shared atomics per I/O on every reactor); hosts that use ATS serialise their
//! metadata writes through ATS itself, which this interlock does make atomic.

use crate::constants::SCSI_MAX_INTERLOCKED_RANGES;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A range of blocks `[lba, lba + blocks)` and who holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    lba: u64,
    blocks: u64,
    owner: u64,
}

#[derive(Default)]
pub struct Interlock {
    held: AtomicUsize,
    ranges: Mutex<Vec<Held>>,
}

fn overlaps(a_lba: u64, a_blocks: u64, b: &Held) -> bool {
    a_lba < b.lba.saturating_add(b.blocks) && b.lba < a_lba.saturating_add(a_blocks)
}

impl Interlock {
    /// Whether no CAW holds a range (the fast path of every write).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.held.load(Ordering::Acquire) == 0
    }

    /// Takes `[lba, lba + blocks)` for `owner`; false if it overlaps a held range or the
    /// table is full.
    pub fn try_take(&self, lba: u64, blocks: u64, owner: u64) -> bool {
        let Ok(mut ranges) = self.ranges.lock() else {
            return false;
        };
        if ranges.len() >= SCSI_MAX_INTERLOCKED_RANGES
            || ranges.iter().any(|h| overlaps(lba, blocks, h))
        {
            return false;
        }
        if ranges.capacity() == 0 {
            ranges.reserve_exact(SCSI_MAX_INTERLOCKED_RANGES);
        }
        ranges.push(Held { lba, blocks, owner });
        self.held.store(ranges.len(), Ordering::Release);
        true
    }

    /// Gives back the range `owner` holds at `lba`.
    pub fn give_back(&self, lba: u64, owner: u64) {
        let Ok(mut ranges) = self.ranges.lock() else {
            return;
        };
        if let Some(at) = ranges.iter().position(|h| h.lba == lba && h.owner == owner) {
            ranges.swap_remove(at);
        }
        self.held.store(ranges.len(), Ordering::Release);
    }

    /// Whether a write of `[lba, lba + blocks)` must wait (a CAW holds part of it).
    #[inline]
    pub fn blocks_write(&self, lba: u64, blocks: u64) -> bool {
        if self.is_empty() {
            return false;
        }
        match self.ranges.lock() {
            Ok(ranges) => ranges.iter().any(|h| overlaps(lba, blocks, h)),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_ranges_are_refused_until_given_back() {
        let lock = Interlock::default();
        assert!(lock.is_empty());
        assert!(lock.try_take(10, 2, 1));
        assert!(!lock.is_empty());
        assert!(!lock.try_take(11, 1, 2), "overlaps");
        assert!(lock.try_take(12, 1, 2), "adjacent is fine");
        assert!(lock.blocks_write(0, 11));
        assert!(!lock.blocks_write(0, 10));
        assert!(!lock.blocks_write(13, u64::MAX), "no overflow at the end");
        lock.give_back(10, 1);
        lock.give_back(12, 2);
        assert!(lock.is_empty());
        assert!(lock.try_take(11, 1, 3));
    }
}
