//! The free-extent allocator of one pool LUN: a bitmap of atomic words. Claiming an extent is
//! one compare-and-swap on its word; no lock, so reactors, the provisioning thread and the
//! control thread can all allocate and free at once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub struct ExtentBitmap {
    words: Box<[AtomicU64]>,
    extent_count: u64,
    free: AtomicU64,
    /// Word where the next search starts, so allocations do not all contend on word 0.
    hint: AtomicUsize,
}

impl ExtentBitmap {
    /// All `extent_count` extents free.
    pub fn new(extent_count: u64) -> Self {
        let word_count = extent_count.div_ceil(64) as usize;
        let words: Box<[AtomicU64]> = (0..word_count).map(|_| AtomicU64::new(0)).collect();
        // Bits past the end are permanently "used".
        let tail = extent_count % 64;
        if tail != 0 {
            words[word_count - 1].store(!0u64 << tail, Ordering::Relaxed);
        }
        Self {
            words,
            extent_count,
            free: AtomicU64::new(extent_count),
            hint: AtomicUsize::new(0),
        }
    }

    pub fn extent_count(&self) -> u64 {
        self.extent_count
    }

    pub fn free_count(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Claims a free extent, or `None` when all are used.
    pub fn allocate(&self) -> Option<u64> {
        let word_count = self.words.len();
        let start = self.hint.load(Ordering::Relaxed) % word_count.max(1);
        for step in 0..word_count {
            let index = (start + step) % word_count;
            let word = &self.words[index];
            let mut current = word.load(Ordering::Acquire);
            while current != u64::MAX {
                let bit = (!current).trailing_zeros();
                match word.compare_exchange_weak(
                    current,
                    current | (1 << bit),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        self.free.fetch_sub(1, Ordering::Relaxed);
                        self.hint.store(index, Ordering::Relaxed);
                        return Some(index as u64 * 64 + u64::from(bit));
                    }
                    Err(actual) => current = actual,
                }
            }
        }
        None
    }

    /// Marks `extent` used (loading the map at start-up). Returns false if it already was.
    pub fn mark_used(&self, extent: u64) -> bool {
        assert!(extent < self.extent_count);
        let previous =
            self.words[(extent / 64) as usize].fetch_or(1 << (extent % 64), Ordering::AcqRel);
        let was_free = previous & (1 << (extent % 64)) == 0;
        if was_free {
            self.free.fetch_sub(1, Ordering::Relaxed);
        }
        was_free
    }

    /// Returns `extent` to the free set.
    pub fn release(&self, extent: u64) {
        assert!(extent < self.extent_count);
        let previous =
            self.words[(extent / 64) as usize].fetch_and(!(1 << (extent % 64)), Ordering::AcqRel);
        assert!(
            previous & (1 << (extent % 64)) != 0,
            "extent {extent} freed twice"
        );
        self.free.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn allocates_each_extent_once_then_runs_out() {
        let bitmap = ExtentBitmap::new(130);
        let mut seen = HashSet::new();
        while let Some(extent) = bitmap.allocate() {
            assert!(extent < 130);
            assert!(seen.insert(extent));
        }
        assert_eq!(seen.len(), 130);
        assert_eq!(bitmap.free_count(), 0);
        bitmap.release(64);
        assert_eq!(bitmap.allocate(), Some(64));
    }

    #[test]
    fn concurrent_allocation_never_hands_out_twice() {
        // Miri interprets every atomic step: fewer extents keep it to seconds.
        let extents = if cfg!(miri) { 200 } else { 4000 };
        let bitmap = Arc::new(ExtentBitmap::new(extents));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let bitmap = bitmap.clone();
                std::thread::spawn(move || {
                    std::iter::from_fn(|| bitmap.allocate()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = HashSet::new();
        for thread in threads {
            for extent in thread.join().expect("thread") {
                assert!(all.insert(extent));
            }
        }
        assert_eq!(all.len() as u64, extents);
    }

    #[test]
    fn mark_used_counts() {
        let bitmap = ExtentBitmap::new(10);
        assert!(bitmap.mark_used(3));
        assert!(!bitmap.mark_used(3));
        assert_eq!(bitmap.free_count(), 9);
    }
}
