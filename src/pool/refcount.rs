//! How many mapping tables hold each physical extent of a pool.
//!
//! Snapshots and clones share extents: the origin's table, its snapshots' and its clones'
//! may map the same physical extent. An extent is freed when the last table that maps it
//! drops it, whatever the order the tables go in, so each extent carries a count of its
//! holders. The count lives in memory only: it is a function of the tables, and the tables
//! are rebuilt from the extent records at start-up (`Control::rebuild_maps`), which recounts.
//!
//! Stored is the number of holders *beyond the first* (0 for an extent one table maps, and
//! for a free one), so provisioning a new extent, which gives it its one holder, touches
//! nothing here; only sharing does. One `AtomicU32` per extent per LUN; every change is one
//! atomic read-modify-write, so a table dropped on the control thread and a copy-on-write on
//! the provisioning thread agree on which of them frees a shared extent (exactly one does).

use super::decode_slot;
use std::sync::atomic::{AtomicU32, Ordering};

/// What dropping one holder of an extent left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Other tables still map it.
    StillShared,
    /// That was the last holder: the caller frees the extent (its record, then its bit).
    Last,
}

/// The extra-holder counts of every extent of a pool, per LUN.
pub struct RefCounts {
    per_lun: Vec<Box<[AtomicU32]>>,
}

impl RefCounts {
    /// Counts for LUNs of `extent_counts[i]` extents each, all zero (one holder or free).
    pub fn new(extent_counts: impl IntoIterator<Item = u64>) -> Self {
        Self {
            per_lun: extent_counts
                .into_iter()
                .map(|count| (0..count).map(|_| AtomicU32::new(0)).collect())
                .collect(),
        }
    }

    fn cell(&self, slot: u64) -> Option<&AtomicU32> {
        let (lun, extent) = decode_slot(slot)?;
        self.per_lun.get(lun)?.get(extent as usize)
    }

    /// Tables mapping the extent of `slot` (1 for an unshared or unknown one).
    pub fn holders(&self, slot: u64) -> u32 {
        self.cell(slot)
            .map_or(1, |cell| cell.load(Ordering::Acquire) + 1)
    }

    /// Whether more than one table maps the extent of `slot`.
    pub fn is_shared(&self, slot: u64) -> bool {
        self.holders(slot) > 1
    }

    /// One more table maps the extent of `slot`.
    pub fn share(&self, slot: u64) {
        if let Some(cell) = self.cell(slot) {
            cell.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// One table stops mapping the extent of `slot`.
    pub fn drop_holder(&self, slot: u64) -> Dropped {
        let Some(cell) = self.cell(slot) else {
            return Dropped::Last;
        };
        match cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |extra| {
            extra.checked_sub(1)
        }) {
            Ok(_) => Dropped::StillShared,
            Err(_) => Dropped::Last,
        }
    }

    /// Sets the extra holders of `slot` (start-up, from the rebuilt tables).
    pub fn set_holders(&self, slot: u64, holders: u32) {
        if let Some(cell) = self.cell(slot) {
            cell.store(holders.saturating_sub(1), Ordering::Release);
        }
    }

    /// Extents more than one table maps.
    pub fn shared_extents(&self) -> u64 {
        self.per_lun
            .iter()
            .flat_map(|cells| cells.iter())
            .filter(|cell| cell.load(Ordering::Relaxed) > 0)
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::encode_slot;

    #[test]
    fn the_last_of_any_order_of_drops_frees() {
        let counts = RefCounts::new([4, 8]);
        let slot = encode_slot(1, 5);
        assert_eq!(counts.holders(slot), 1);
        counts.share(slot);
        counts.share(slot);
        assert_eq!(counts.holders(slot), 3);
        assert!(counts.is_shared(slot));
        assert_eq!(counts.shared_extents(), 1);
        assert_eq!(counts.drop_holder(slot), Dropped::StillShared);
        assert_eq!(counts.drop_holder(slot), Dropped::StillShared);
        assert!(!counts.is_shared(slot));
        assert_eq!(counts.drop_holder(slot), Dropped::Last);
        // Never below zero: a further drop still says "last" and leaves the count at rest.
        assert_eq!(counts.drop_holder(slot), Dropped::Last);
        assert_eq!(counts.holders(slot), 1);
        counts.set_holders(encode_slot(0, 3), 4);
        assert_eq!(counts.holders(encode_slot(0, 3)), 4);
        // A slot outside the pool is nobody's to share.
        assert_eq!(counts.holders(encode_slot(7, 0)), 1);
    }

    #[test]
    fn racing_drops_free_exactly_once() {
        let counts = std::sync::Arc::new(RefCounts::new([1]));
        let slot = encode_slot(0, 0);
        for _ in 0..7 {
            counts.share(slot);
        }
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let counts = counts.clone();
                std::thread::spawn(move || counts.drop_holder(slot) == Dropped::Last)
            })
            .collect();
        let last = threads
            .into_iter()
            .map(|t| t.join().unwrap_or(false))
            .filter(|&last| last)
            .count();
        assert_eq!(last, 1);
    }
}
