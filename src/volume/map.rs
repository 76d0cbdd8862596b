//! A volume's mapping table: one atomic slot per virtual extent (`0` = unmapped, else a pool
//! slot, see [`crate::pool::encode_slot`]). Translating an I/O is one atomic load of a chunk
//! pointer and one of the slot per extent it touches; a new mapping is published with a
//! compare-and-swap. Readers never block.
//!
//! The slots live in chunks of [`MAP_CHUNK_SLOTS`], allocated on the first write into them, so
//! a thin volume costs memory in proportion to what was written, not to its size (a 64 TiB
//! volume on an empty pool costs its top level, not 512 MiB of slots). The top level is one
//! fixed array of chunk pointers covering [`MAX_VOLUME_EXTENTS`], allocated zeroed (so its
//! untouched pages are never made resident); a null pointer means "every extent of this
//! chunk is unmapped". Because the top level never moves, growing a volume only raises
//! [`MapTable::extent_count`]: no table is copied, and no chunk a writer publishes while a
//! volume grows can be lost.
//!
//! A chunk is published with a compare-and-swap on its top-level pointer; a writer that loses
//! frees its own and uses the winner's. Chunks are freed only when the table is dropped (with
//! its volume, when no session holds it any more).

use crate::constants::{MAP_CHUNK_SLOTS, MAP_TOP_CHUNKS, MAX_VOLUME_EXTENTS};
use std::alloc::Layout;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

type Chunk = [AtomicU64; MAP_CHUNK_SLOTS];

pub struct MapTable {
    /// [`MAP_TOP_CHUNKS`] pointers, each null or owning a `Box<Chunk>`.
    chunks: Box<[AtomicPtr<Chunk>]>,
    extent_count: AtomicU64,
    /// Chunks published so far (a count kept beside the pointers, so asking costs no scan).
    chunk_count: AtomicUsize,
}

/// The top level, all null, from zeroed memory: large zeroed allocations come straight from
/// the kernel, and their pages stay unbacked until a chunk pointer in them is written.
fn new_top() -> Box<[AtomicPtr<Chunk>]> {
    let layout = match Layout::array::<AtomicPtr<Chunk>>(MAP_TOP_CHUNKS) {
        Ok(layout) => layout,
        Err(_) => unreachable!("MAP_TOP_CHUNKS pointers fit in memory (a compile-time constant)"),
    };
    // SAFETY: the layout is non-zero in size (MAP_TOP_CHUNKS > 0, checked in constants.rs).
    let raw = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<AtomicPtr<Chunk>>();
    if raw.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `raw` is a fresh allocation of MAP_TOP_CHUNKS pointers with the global
    // allocator and the layout of that array; all-zero bytes are a valid null AtomicPtr; the
    // box takes sole ownership and frees it with the same layout.
    unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(raw, MAP_TOP_CHUNKS)) }
}

fn new_chunk() -> Box<Chunk> {
    let slots: Box<[AtomicU64]> = (0..MAP_CHUNK_SLOTS).map(|_| AtomicU64::new(0)).collect();
    match slots.try_into() {
        Ok(chunk) => chunk,
        Err(_) => unreachable!("the iterator yields exactly MAP_CHUNK_SLOTS slots"),
    }
}

impl MapTable {
    /// A table of `extent_count` unmapped extents; it holds no chunk yet.
    pub fn new(extent_count: u64) -> Self {
        assert!(extent_count <= MAX_VOLUME_EXTENTS);
        Self {
            chunks: new_top(),
            extent_count: AtomicU64::new(extent_count),
            chunk_count: AtomicUsize::new(0),
        }
    }

    /// Grows the table to `extent_count` extents (never shrinks). Only the control thread
    /// calls this, before it publishes the volume's new size.
    pub fn grow(&self, extent_count: u64) {
        assert!(extent_count <= MAX_VOLUME_EXTENTS);
        self.extent_count.fetch_max(extent_count, Ordering::AcqRel);
    }

    pub fn extent_count(&self) -> u64 {
        self.extent_count.load(Ordering::Acquire)
    }

    /// The chunk holding `extent` and the extent's index in it; `None` while nothing in the
    /// chunk was ever written.
    #[inline]
    fn chunk(&self, extent: u64) -> (Option<&Chunk>, usize) {
        debug_assert!(extent < self.extent_count());
        let index = extent as usize;
        let pointer = self.chunks[index / MAP_CHUNK_SLOTS].load(Ordering::Acquire);
        // SAFETY: a non-null pointer was published from a live `Box<Chunk>` (Release, seen by
        // the Acquire load above, so its zeroed slots are visible) and is freed only in Drop,
        // which `&self` excludes.
        (unsafe { pointer.as_ref() }, index % MAP_CHUNK_SLOTS)
    }

    /// The chunk holding `extent`, allocated and published first if absent.
    fn chunk_or_insert(&self, extent: u64) -> (&Chunk, usize) {
        if let (Some(chunk), within) = self.chunk(extent) {
            return (chunk, within);
        }
        let index = extent as usize;
        let top = &self.chunks[index / MAP_CHUNK_SLOTS];
        let fresh = Box::into_raw(new_chunk());
        let pointer = match top.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.chunk_count.fetch_add(1, Ordering::Relaxed);
                fresh
            }
            Err(winner) => {
                // SAFETY: `fresh` came from Box::into_raw above and was never published.
                drop(unsafe { Box::from_raw(fresh) });
                winner
            }
        };
        // SAFETY: `pointer` is non-null and published (ours or the winner's); chunks are
        // freed only in Drop, which `&self` excludes.
        (unsafe { &*pointer }, index % MAP_CHUNK_SLOTS)
    }

    /// The slot of `extent`: 0 when unmapped. Sequentially consistent, as the volume's write
    /// gate needs (an I/O's slot loads after its entry; see `volume::write_gate`): on x86-64
    /// and aarch64 that costs what an Acquire load does.
    #[inline]
    pub fn get(&self, extent: u64) -> u64 {
        match self.chunk(extent) {
            (Some(chunk), within) => chunk[within].load(Ordering::SeqCst),
            (None, _) => 0,
        }
    }

    /// Publishes `slot` for an unmapped `extent`. Fails with the current slot if it was
    /// mapped meanwhile.
    pub fn publish(&self, extent: u64, slot: u64) -> Result<(), u64> {
        assert_ne!(slot, 0);
        let (chunk, within) = self.chunk_or_insert(extent);
        chunk[within]
            .compare_exchange(0, slot, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
    }

    /// Replaces the slot of a mapped `extent` if it still holds `current`; fails with what it
    /// holds otherwise (copy-on-write publishes its copy this way).
    pub fn replace(&self, extent: u64, current: u64, new: u64) -> Result<(), u64> {
        match self.chunk(extent) {
            (Some(chunk), within) => chunk[within]
                .compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
                .map(|_| ()),
            (None, _) => Err(0),
        }
    }

    /// Sets `bits` in the slot of `extent` if it is mapped.
    pub fn set_bits(&self, extent: u64, bits: u64) {
        if let (Some(chunk), within) = self.chunk(extent) {
            // SeqCst: before the write gate's flip (see `write_gate`).
            let _ = chunk[within].fetch_update(Ordering::SeqCst, Ordering::SeqCst, |slot| {
                (slot != 0).then_some(slot | bits)
            });
        }
    }

    /// Unmaps `extent`, returning what it held (SeqCst: before the write gate's flip).
    pub fn clear(&self, extent: u64) -> u64 {
        match self.chunk(extent) {
            (Some(chunk), within) => chunk[within].swap(0, Ordering::SeqCst),
            (None, _) => 0,
        }
    }

    /// Every mapped extent and its slot, skipping chunks never written.
    pub fn mapped(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let extent_count = self.extent_count();
        let chunk_count = (extent_count as usize).div_ceil(MAP_CHUNK_SLOTS);
        (0..chunk_count)
            .filter(move |&c| !self.chunks[c].load(Ordering::Acquire).is_null())
            .flat_map(move |c| {
                let first = (c * MAP_CHUNK_SLOTS) as u64;
                let last = (first + MAP_CHUNK_SLOTS as u64).min(extent_count);
                (first..last).filter_map(move |extent| {
                    let slot = self.get(extent);
                    (slot != 0).then_some((extent, slot))
                })
            })
    }

    /// Chunks allocated so far (what the table costs beyond its top level).
    pub fn allocated_chunks(&self) -> usize {
        self.chunk_count.load(Ordering::Relaxed)
    }
}

impl Drop for MapTable {
    fn drop(&mut self) {
        for top in self.chunks.iter_mut() {
            let pointer = *top.get_mut();
            if !pointer.is_null() {
                // SAFETY: a non-null pointer owns the Box<Chunk> it was made from; `&mut self`
                // means no reader is left, and the pointer is nulled below so it is freed once.
                drop(unsafe { Box::from_raw(pointer) });
                *top.get_mut() = std::ptr::null_mut();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn publish_once_and_grow_keeps_slots() {
        let table = MapTable::new(5000);
        assert_eq!(table.get(4999), 0);
        assert_eq!(table.allocated_chunks(), 0);
        assert_eq!(table.publish(4999, 7), Ok(()));
        assert_eq!(table.publish(4999, 8), Err(7));
        assert_eq!(table.allocated_chunks(), 1);
        table.grow(9000);
        assert_eq!(table.extent_count(), 9000);
        assert_eq!(table.get(4999), 7);
        assert_eq!(table.publish(10, 3), Ok(()));
        assert_eq!(table.publish(8999, 1), Ok(()));
        assert_eq!(table.mapped().count(), 3);
        assert_eq!(table.clear(10), 3);
        assert_eq!(table.get(10), 0);
        // Chunks 0, 1 and 2 were written; clearing in chunk 3, never written, allocates nothing.
        assert_eq!(table.allocated_chunks(), 3);
        table.grow(4 * MAP_CHUNK_SLOTS as u64);
        assert_eq!(table.clear(3 * MAP_CHUNK_SLOTS as u64 + 1), 0);
        assert_eq!(table.get(3 * MAP_CHUNK_SLOTS as u64 + 1), 0);
        assert_eq!(table.allocated_chunks(), 3);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "scans 16384 chunk pointers, each atomic load emulated: minutes under Miri"
    )]
    fn a_huge_empty_table_holds_no_chunk_and_maps_its_last_extent() {
        let table = MapTable::new(MAX_VOLUME_EXTENTS);
        let last = MAX_VOLUME_EXTENTS - 1;
        assert_eq!(table.get(last), 0);
        assert_eq!(table.mapped().count(), 0);
        assert_eq!(table.publish(last, 42), Ok(()));
        assert_eq!(table.get(last), 42);
        assert_eq!(table.allocated_chunks(), 1);
        assert_eq!(table.mapped().collect::<Vec<_>>(), vec![(last, 42)]);
    }

    #[test]
    fn racing_writers_share_one_chunk_and_lose_nothing() {
        // Under Miri (scripts/sanitize.sh), a few extents of each chunk: every atomic access
        // is emulated there, and the race is on the chunk pointers, not on the slots.
        let per_chunk = if cfg!(miri) {
            16
        } else {
            MAP_CHUNK_SLOTS as u64
        };
        let extents = move || {
            (0..4u64).flat_map(move |c| (0..per_chunk).map(move |k| c * MAP_CHUNK_SLOTS as u64 + k))
        };
        let table = Arc::new(MapTable::new(4 * MAP_CHUNK_SLOTS as u64));
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let table = table.clone();
                std::thread::spawn(move || {
                    // Every writer touches every chunk, on its own extents.
                    for extent in extents().filter(|extent| extent % 4 == w) {
                        assert_eq!(table.publish(extent, extent + 1), Ok(()));
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        assert_eq!(table.allocated_chunks(), 4);
        for extent in extents() {
            assert_eq!(table.get(extent), extent + 1);
        }
    }

    /// The chunked table behaves as a plain array of slots, over a seeded random sequence of
    /// publishes, clears and reads spread across several chunks.
    #[test]
    fn matches_a_plain_array() {
        let size = 3 * MAP_CHUNK_SLOTS as u64;
        let table = MapTable::new(size);
        let mut model = std::collections::BTreeMap::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            // xorshift64: deterministic, so a failure reproduces.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Fewer rounds under Miri (scripts/sanitize.sh), where each costs thousands of times
        // more; the hot extents still collide there.
        let rounds = if cfg!(miri) { 600 } else { 20_000 };
        for _ in 0..rounds {
            // A few hot extents make publish collisions and clears of mapped slots common.
            let extent = if next() % 2 == 0 {
                next() % 8
            } else {
                next() % size
            };
            match next() % 3 {
                0 => {
                    let slot = next() % 1000 + 1;
                    let expected = model.get(&extent).map_or(Ok(()), |&current| Err(current));
                    assert_eq!(table.publish(extent, slot), expected);
                    model.entry(extent).or_insert(slot);
                }
                1 => assert_eq!(table.clear(extent), model.remove(&extent).unwrap_or(0)),
                _ => assert_eq!(table.get(extent), model.get(&extent).copied().unwrap_or(0)),
            }
        }
        let mapped: Vec<(u64, u64)> = table.mapped().collect();
        let expected: Vec<(u64, u64)> = model.into_iter().collect();
        assert_eq!(mapped, expected);
    }
}
