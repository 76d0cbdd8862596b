//! Volumes: virtual disks carved out of a pool.
//!
//! A volume is an array of virtual extents, each unmapped (reads as zeroes) or mapped to a
//! pool extent through the lock-free [`map::MapTable`]. A write that reaches an unmapped extent
//! asks the [`provisioner`] thread for one: it claims a free extent, zeroes it, makes its
//! record durable, publishes the mapping and wakes the waiting session. Thick volumes are
//! fully provisioned when created or grown.
//!
//! [`Volume::segment`] is the whole of translation on the data path: one atomic load of the
//! table pointer per request ([`Volume::map`]) and one slot load per extent the request touches.

pub mod map;
pub mod provisioner;
pub mod stats;

use crate::pool::{decode_slot, Pool, PoolLun};
use arc_swap::{ArcSwap, Guard};
use map::MapTable;
use stats::VolumeStats;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub struct Volume {
    pub name: String,
    pub uuid: [u8; 16],
    pub pool: Arc<Pool>,
    pub block_size_bytes: u32,
    pub thin: bool,
    size_bytes: AtomicU64,
    map: ArcSwap<MapTable>,
    /// Front-end connections that have the volume open.
    pub connections: AtomicU32,
    /// Set when the volume is deleted; open sessions fail their I/O and close.
    deleted: AtomicBool,
    pub stats: VolumeStats,
}

/// One piece of a request, inside one virtual extent.
pub enum Segment<'a> {
    /// Stored at `offset_bytes` on `lun`, the pool's LUN number `lun_index`.
    Mapped {
        lun: &'a PoolLun,
        lun_index: usize,
        offset_bytes: u64,
        len_bytes: u64,
    },
    /// Never written: reads as zeroes; a write must first provision `extent`.
    Unmapped { extent: u64, len_bytes: u64 },
}

impl Volume {
    /// A volume of `size_bytes` with an empty map.
    pub fn new(
        name: &str,
        uuid: [u8; 16],
        pool: Arc<Pool>,
        size_bytes: u64,
        block_size_bytes: u32,
        thin: bool,
    ) -> Self {
        let extents = size_bytes.div_ceil(pool.extent_bytes);
        Self {
            name: name.to_string(),
            uuid,
            pool,
            block_size_bytes,
            thin,
            size_bytes: AtomicU64::new(size_bytes),
            map: ArcSwap::from_pointee(MapTable::new(extents)),
            connections: AtomicU32::new(0),
            deleted: AtomicBool::new(false),
            stats: VolumeStats::default(),
        }
    }

    #[inline]
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    pub fn extent_bytes(&self) -> u64 {
        self.pool.extent_bytes
    }

    /// The current mapping table; hold it for the whole request.
    #[inline]
    pub fn map(&self) -> Guard<Arc<MapTable>> {
        self.map.load()
    }

    /// Grows the volume: publishes a larger table sharing the current slots, then the size.
    /// Only the control thread calls this.
    pub fn grow(&self, new_size_bytes: u64) {
        let extents = new_size_bytes.div_ceil(self.pool.extent_bytes);
        let current = self.map.load_full();
        if extents > current.extent_count() {
            self.map.store(Arc::new(current.grown(extents)));
        }
        self.size_bytes.store(new_size_bytes, Ordering::Release);
    }

    /// The segment of a request at `offset_bytes` with `remaining_bytes` left, cut at the end
    /// of its extent.
    #[inline]
    pub fn segment<'a>(
        &'a self,
        map: &MapTable,
        offset_bytes: u64,
        remaining_bytes: u64,
    ) -> Segment<'a> {
        let extent_bytes = self.pool.extent_bytes;
        let extent = offset_bytes / extent_bytes;
        let within = offset_bytes % extent_bytes;
        let len_bytes = remaining_bytes.min(extent_bytes - within);
        match map.get(extent) {
            0 => Segment::Unmapped { extent, len_bytes },
            slot => {
                let (lun, lun_index, offset_bytes) = self.pool.locate(slot, within);
                Segment::Mapped {
                    lun,
                    lun_index,
                    offset_bytes,
                    len_bytes,
                }
            }
        }
    }

    pub fn allocated_extents(&self) -> u64 {
        self.map().mapped().count() as u64
    }

    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    #[inline]
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The block size of the LUN holding `slot`: a write narrower than it needs the slow path.
    pub fn lun_block_bytes(&self, slot: u64) -> u32 {
        decode_slot(slot).map_or(512, |(lun, _)| self.pool.luns[lun].layout.block_size_bytes)
    }

    /// Whether some LUN of the pool has a larger block size than the volume: writes to it that
    /// are not aligned to its block size take the read-modify-write slow path.
    pub fn needs_read_modify_write(&self) -> bool {
        self.pool
            .luns
            .iter()
            .any(|l| l.layout.block_size_bytes > self.block_size_bytes)
    }
}
