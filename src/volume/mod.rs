//! Volumes: virtual disks carved out of a pool.
//!
//! A volume is an array of virtual extents, each unmapped (reads as zeroes) or mapped to a
//! pool extent through the lock-free [`map::MapTable`]. A write that reaches an unmapped extent
//! asks the [`provisioner`] thread for one: it claims a free extent, zeroes it, makes its
//! record durable, publishes the mapping and wakes the waiting session. Thick volumes are
//! fully provisioned when created or grown.
//!
//! Snapshots and clones share extents: a table is a view of a [`lineage`], an extent more
//! than one table maps carries the SHARED bit in the writable tables' slots, and a write to
//! it goes to the provisioner first, which copies the extent (copy-on-write). The
//! [`write_gate`] lets a snapshot wait for writes that loaded a slot before it was marked.
//!
//! [`Volume::segment`] is the whole of translation on the data path: per extent the request
//! touches, one load of the chunk pointer and one of the slot (see [`map`]).

pub mod lineage;
pub mod map;
pub mod open_state;
pub mod provisioner;
pub mod stats;
pub mod write_gate;

use crate::pool::{decode_slot, encode_slot, Pool, PoolLun, SLOT_SHARED};
use lineage::Lineage;
use map::MapTable;
use open_state::OpenState;
use stats::VolumeStats;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Set when the volume was restored from a pool whose volatile LUN lost its content (see
    /// [`Volume::restored`]): the pool member its unmapped ranges are routed to.
    lost_member: Option<usize>,
    /// Restored at start-up in a volatile pool: it started empty.
    pub started_empty: bool,
    /// A snapshot: its table never changes, and no write reaches it.
    pub read_only: bool,
    /// What its table is a view of; read and changed only off the I/O path (provisioning and
    /// control threads).
    lineage: Mutex<Lineage>,
    /// Write rounds in flight, for a snapshot to wait on (see [`write_gate`]).
    pub write_gate: WriteGate,
    /// Its lineage has snapshots or sources: a record it frees could uncover an older one at
    /// the next start (see [`Volume::trim_may_free`]).
    keeps_history: AtomicBool,
}

/// One piece of a request, inside one virtual extent.
pub enum Segment<'a> {
    /// Stored at `offset_bytes` on `lun`, the pool's LUN number `lun_index`.
    Mapped {
        lun: &'a PoolLun,
        lun_index: usize,
        offset_bytes: u64,
        len_bytes: u64,
        /// Another table maps the extent too: a write must have it copied first.
        shared: bool,
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
            lost_member: None,
            started_empty: false,
            read_only: false,
            lineage: Mutex::new(Lineage::own(uuid)),
            write_gate: WriteGate::default(),
            keeps_history: AtomicBool::new(false),
        }
    }

    /// The volume as a view of `lineage`; a snapshot (`read_only`) never takes writes.
    pub fn with_lineage(mut self, lineage: Lineage, read_only: bool) -> Self {
        self.lineage = Mutex::new(lineage);
        self.read_only = read_only;
        self
    }

    /// What its table is a view of.
    pub fn lineage(&self) -> Lineage {
        match self.lineage.lock() {
            Ok(lineage) => lineage.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The lineage new records of this volume name.
    pub fn lineage_id(&self) -> [u8; 16] {
        self.lineage().id
    }

    /// Moves the volume onto another lineage (a revert, while nobody has it open).
    pub fn set_lineage(&self, lineage: Lineage) {
        match self.lineage.lock() {
            Ok(mut current) => *current = lineage,
            Err(poisoned) => *poisoned.into_inner() = lineage,
        }
    }

    /// Whether its lineage has snapshots or sources (kept up to date by the control thread).
    pub fn set_keeps_history(&self, keeps: bool) {
        self.keeps_history.store(keeps, Ordering::Release);
    }

    /// Whether a whole-extent TRIM may unmap and free `extent` rather than zero it: not when
    /// another table maps it (the slot is SHARED), and not when its lineage keeps history,
    /// since freeing this volume's newest record of the extent would let an older record (a
    /// snapshot's, or the source's) be taken for the volume's content at the next start.
    pub fn trim_may_free(&self, extent: u64) -> bool {
        if extent >= self.map.extent_count() || self.read_only {
            return false;
        }
        self.map.get(extent) & SLOT_SHARED == 0 && !self.keeps_history.load(Ordering::Acquire)
    }

    /// Mapped extents another table maps too.
    pub fn shared_extents(&self) -> u64 {
        self.map
            .mapped()
            .filter(|&(_, slot)| self.pool.refcounts.is_shared(slot))
            .count() as u64
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
        let raw = map.get(extent);
        let slot = match (raw & !SLOT_SHARED, self.lost_member) {
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
            shared: raw & SLOT_SHARED != 0,
        }
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
        decode_slot(slot & !SLOT_SHARED)
            .map_or(512, |(lun, _)| self.pool.luns[lun].layout.block_size_bytes)
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
