//! Counters each written by one reactor only (per-reactor statistics of VPs, volumes and
//! LUNs), read by the control thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// Adds `by` to a counter that only the calling reactor writes: a plain load and store, no
/// atomic read-modify-write (no locked instruction on the I/O path). Readers on other threads
/// see every value it takes, never a torn one.
#[inline]
pub fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}
