//! Volumes: virtual disks carved out of a pool.
//!
//! A volume is an array of virtual extents, each unmapped (reads as zeroes) or mapped to a
//! pool extent through the lock-free [`map::MapTable`]. A write that reaches an unmapped extent
//! asks the [`provisioner`] thread for one: it claims a free extent, zeroes it, makes its
//! record durable, publishes the mapping and wakes the waiting session. Thick volumes are
//! fully provisioned when created or grown.
//!
//! [`Volume::segment`] is the whole of translation on the data path: per extent the request
//! touches, one load of the chunk pointer and one of the slot (see [`map`]).

pub mod map;
pub mod open_state;
pub mod provisioner;
pub mod reclaim;
pub mod stats;
pub mod write_gate;

use crate::pool::{decode_slot, encode_slot, Pool, PoolLun};
use map::MapTable;
use open_state::OpenState;
use stats::VolumeStats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use write_gate::WriteGate;

pub struct Volume {
    pub name: String,
    pub uuid: [u8; 16],
    pub pool: Arc<Pool>,
    pub block_size_bytes: u32,
    pub thin: bool,
    size_bytes: AtomicU64,
    map: MapTable,
    /// Front-end sessions that have the volume open, and whether it is being deleted (then
    /// no session can open it: see [`open_state`]).
    pub open_state: OpenState,
    pub stats: VolumeStats,
    /// I/O that loaded mapping slots and has not completed: what a thread that takes an
    /// extent away from the volume (TRIM's release) waits for (see [`write_gate`]).
    pub write_gate: WriteGate,
    /// Set when the volume was restored from a pool whose volatile LUN lost its content (see
    /// [`Volume::restored`]): the pool member its unmapped ranges are routed to.
    lost_member: Option<usize>,
    /// Restored at start-up in a volatile pool: it started empty.
    pub started_empty: bool,
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
            map: MapTable::new(extents),
            open_state: OpenState::default(),
            stats: VolumeStats::default(),
            write_gate: WriteGate::new(),
            lost_member: None,
            started_empty: false,
        }
    }

    /// Marks a volume restored from its record at start-up. In a volatile pool it started
    /// empty. In a pool whose volatile LUN lost what it held, any of its extents that no
    /// surviving record maps may have been on that LUN, and sds cannot tell which were never
    /// written: every unmapped range is routed to the pool's lost member and fails with EIO,
    /// never reading as zeroes.
    pub fn restored(mut self) -> Self {
        self.lost_member = self.pool.lost_member();
        self.started_empty = self.pool.started_empty;
        self
    }

    /// Whether part of what the volume held is gone (see [`Volume::restored`]).
    pub fn data_lost(&self) -> bool {
        self.lost_member.is_some()
    }

    #[inline]
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    pub fn extent_bytes(&self) -> u64 {
        self.pool.extent_bytes
    }

    /// The mapping table.
    #[inline]
    pub fn map(&self) -> &MapTable {
        &self.map
    }

    /// Grows the volume: the table first, then the size, so a request checked against the new
    /// size finds its extents. Only the control thread calls this.
    pub fn grow(&self, new_size_bytes: u64) {
        self.map
            .grow(new_size_bytes.div_ceil(self.pool.extent_bytes));
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
        let slot = match (map.get(extent), self.lost_member) {
            (0, None) => return Segment::Unmapped { extent, len_bytes },
            // Possibly lost: the LUN standing in for the lost one fails the I/O.
            (0, Some(member)) => encode_slot(member, 0),
            (slot, _) => slot,
        };
        let (lun, lun_index, offset_bytes) = self.pool.locate(slot, within);
        Segment::Mapped {
            lun,
            lun_index,
            offset_bytes,
            len_bytes,
        }
    }

    /// Whether a TRIM that covers the whole of virtual `extent` may unmap it and give its pool
    /// extent back (else the extent is zeroed and stays mapped). Always today; snapshots will
    /// refuse extents that another table shares (refcount > 1) or whose lineage holds an older
    /// record for the same virtual extent (freeing would resurrect it at restart).
    pub fn trim_may_free(&self, _extent: u64) -> bool {
        true
    }

    pub fn allocated_extents(&self) -> u64 {
        self.map().mapped().count() as u64
    }

    /// Whether the volume is deleted (or being deleted): no session has it open, and none can.
    #[inline]
    pub fn is_deleted(&self) -> bool {
        self.open_state.is_deleting()
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
