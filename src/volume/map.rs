//! A volume's mapping table: one atomic slot per virtual extent (`0` = unmapped, else a pool
//! slot, see [`crate::pool::encode_slot`]). Translating an I/O is one atomic load per extent it
//! touches; a new mapping is published with a compare-and-swap.
//!
//! The slots live in fixed chunks shared by `Arc`. Growing a volume builds a new table that
//! holds the same chunks plus new ones and publishes it RCU-style (`arc-swap`): a reactor still
//! reading the old table sees, and races on, the very same atomics, so no update is lost.

use crate::constants::MAP_CHUNK_SLOTS;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

type Chunk = Box<[AtomicU64]>;

pub struct MapTable {
    chunks: Vec<Arc<Chunk>>,
    extent_count: u64,
}

fn new_chunk() -> Arc<Chunk> {
    Arc::new((0..MAP_CHUNK_SLOTS).map(|_| AtomicU64::new(0)).collect())
}

impl MapTable {
    /// A table of `extent_count` unmapped extents.
    pub fn new(extent_count: u64) -> Self {
        let chunk_count = (extent_count as usize).div_ceil(MAP_CHUNK_SLOTS);
        Self {
            chunks: (0..chunk_count).map(|_| new_chunk()).collect(),
            extent_count,
        }
    }

    /// A table of `extent_count` extents sharing this one's chunks (grow only).
    pub fn grown(&self, extent_count: u64) -> Self {
        assert!(extent_count >= self.extent_count);
        let chunk_count = (extent_count as usize).div_ceil(MAP_CHUNK_SLOTS);
        let mut chunks = self.chunks.clone();
        chunks.resize_with(chunk_count, new_chunk);
        Self {
            chunks,
            extent_count,
        }
    }

    pub fn extent_count(&self) -> u64 {
        self.extent_count
    }

    #[inline]
    fn slot(&self, extent: u64) -> &AtomicU64 {
        debug_assert!(extent < self.extent_count);
        let index = extent as usize;
        &self.chunks[index / MAP_CHUNK_SLOTS][index % MAP_CHUNK_SLOTS]
    }

    /// The slot of `extent`: 0 when unmapped.
    #[inline]
    pub fn get(&self, extent: u64) -> u64 {
        self.slot(extent).load(Ordering::Acquire)
    }

    /// Publishes `slot` for an unmapped `extent`. Fails with the current slot if it was
    /// mapped meanwhile.
    pub fn publish(&self, extent: u64, slot: u64) -> Result<(), u64> {
        assert_ne!(slot, 0);
        self.slot(extent)
            .compare_exchange(0, slot, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
    }

    /// Unmaps `extent`, returning what it held.
    pub fn clear(&self, extent: u64) -> u64 {
        self.slot(extent).swap(0, Ordering::AcqRel)
    }

    /// Every mapped extent and its slot.
    pub fn mapped(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.extent_count).filter_map(|extent| {
            let slot = self.get(extent);
            (slot != 0).then_some((extent, slot))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_once_and_grow_shares_slots() {
        let table = MapTable::new(5000);
        assert_eq!(table.get(4999), 0);
        assert_eq!(table.publish(4999, 7), Ok(()));
        assert_eq!(table.publish(4999, 8), Err(7));
        let grown = table.grown(9000);
        assert_eq!(grown.get(4999), 7);
        // An update through the old table is seen through the new one.
        assert_eq!(table.publish(10, 3), Ok(()));
        assert_eq!(grown.get(10), 3);
        assert_eq!(grown.publish(8999, 1), Ok(()));
        assert_eq!(grown.mapped().count(), 3);
        assert_eq!(grown.clear(10), 3);
        assert_eq!(table.get(10), 0);
    }
}
