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
//!
//! A volume's body is plain (its own map in its pool) or composite: made of other volumes
//! (see [`composite`]), which `segment` resolves through. The LUN index a segment carries is
//! an index into the volume's LUN table ([`Volume::lun`]): its pool's LUNs for a plain
//! volume, the composite's flat table otherwise.

pub mod composite;
pub mod dirty_log;
pub mod lineage;
pub mod map;
pub mod mirror;
pub mod open_state;
pub mod provisioner;
pub mod reclaim;
pub mod resync;
pub mod set;
pub mod stats;
pub mod write_gate;

use crate::pool::{decode_slot, encode_slot, Pool, PoolLun, SLOT_SHARED};
use composite::{Composite, CompositeError, Layout};
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
    /// A plain volume's pool. A composite's is its first part's (reported as where it lives;
    /// its data is in its parts' pools).
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
    /// A snapshot: its table never changes, and no write reaches it.
    pub read_only: bool,
    /// What its table is a view of; read and changed only off the I/O path (provisioning and
    /// control threads).
    lineage: Mutex<Lineage>,
    /// Its lineage has snapshots or sources: a record it frees could uncover an older one at
    /// the next start (see [`Volume::trim_may_free`]).
    keeps_history: AtomicBool,
    /// `Some` for a composite volume: its parts (its own map is then empty and unused).
    composite: Option<Box<Composite>>,
    /// A mirror's volume: its body is the mirror's legs (its own map stays empty).
    pub mirror: Option<Arc<mirror::Mirror>>,
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
    /// Never written: reads as zeroes; a write must first provision `extent` of `part` (of
    /// the volume `segment` was called on when `None`: a plain volume).
    Unmapped {
        part: Option<&'a Arc<Volume>>,
        extent: u64,
        len_bytes: u64,
    },
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
            read_only: false,
            lineage: Mutex::new(Lineage::own(uuid)),
            keeps_history: AtomicBool::new(false),
            mirror: None,
            composite: None,
        }
    }

    /// A composite volume of `parts` (plain volumes with `block_size_bytes` blocks) laid out
    /// as `layout`. Its pool is the first part's; it is thin if every part is.
    pub fn new_composite(
        name: &str,
        uuid: [u8; 16],
        layout: Layout,
        block_size_bytes: u32,
        parts: &[Arc<Volume>],
    ) -> Result<Self, CompositeError> {
        let first = parts.first().ok_or(CompositeError::NoParts)?;
        let (composite, size_bytes) = Composite::new(layout, block_size_bytes, parts)?;
        Ok(Self {
            name: name.to_string(),
            uuid,
            pool: first.pool.clone(),
            block_size_bytes,
            thin: parts.iter().all(|p| p.thin),
            size_bytes: AtomicU64::new(size_bytes),
            map: MapTable::new(0),
            open_state: OpenState::default(),
            stats: VolumeStats::default(),
            write_gate: WriteGate::new(),
            lost_member: None,
            started_empty: parts.iter().any(|p| p.started_empty),
            composite: Some(Box::new(composite)),
            read_only: false,
            lineage: Mutex::new(Lineage::own(uuid)),
            keeps_history: AtomicBool::new(false),
            mirror: None,
        })
    }

    /// The composite body, `None` for a plain volume.
    #[inline]
    pub fn composite(&self) -> Option<&Composite> {
        self.composite.as_deref()
    }

    /// Appends `part` to a composite concatenation and publishes the grown size (the part
    /// first, then the size: see [`composite`]). Only the control thread calls this.
    pub fn append_part(&self, part: &Arc<Volume>) -> Result<u64, CompositeError> {
        let composite = self.composite().ok_or(CompositeError::CannotGrow)?;
        let size = composite.append(part, self.block_size_bytes, self.size_bytes())?;
        self.size_bytes.store(size, Ordering::Release);
        Ok(size)
    }

    /// LUN table entry `index` (see the module documentation).
    #[inline]
    pub fn lun(&self, index: usize) -> Option<&PoolLun> {
        match &self.composite {
            None => self.pool.luns.get(index),
            Some(composite) => composite.lun(index),
        }
    }

    /// Every distinct LUN under the volume once, with its LUN table index: where a flush goes.
    pub fn flush_luns(&self) -> impl Iterator<Item = (usize, &PoolLun)> + '_ {
        let plain = self
            .composite
            .is_none()
            .then(|| self.pool.luns.iter().enumerate())
            .into_iter()
            .flatten();
        let composite = self
            .composite()
            .into_iter()
            .flat_map(|c| c.lun_entries().enumerate())
            .filter(|(_, e)| e.flush)
            .map(|(i, e)| (i, e.lun()));
        plain.chain(composite)
    }

    /// The largest LUN block size under the volume (at least 512).
    pub fn max_lun_block_bytes(&self) -> u32 {
        match &self.composite {
            None => self
                .pool
                .luns
                .iter()
                .map(|l| l.layout.block_size_bytes)
                .max()
                .unwrap_or(512),
            Some(composite) => composite.max_lun_block_bytes(),
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

    /// Whether its lineage has snapshots or sources: it shares extents, or may again.
    pub fn keeps_history(&self) -> bool {
        self.keeps_history.load(Ordering::Acquire)
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

    /// The volume hosts see of `mirror`: the size and blocks of its legs, `pool` the first
    /// leg's (what listings name), its body the legs.
    pub fn of_mirror(mirror: Arc<mirror::Mirror>, pool: Arc<Pool>) -> Self {
        let mut volume = Self::new(
            &mirror.name,
            mirror.uuid,
            pool,
            mirror.size_bytes,
            mirror.block_size_bytes,
            true,
        );
        volume.mirror = Some(mirror);
        volume
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

    /// Whether part of what the volume held is gone (see [`Volume::restored`]); for a
    /// composite, whether it is for one of its parts.
    pub fn data_lost(&self) -> bool {
        self.lost_member.is_some()
            || self
                .composite()
                .is_some_and(|c| c.parts().any(|p| p.volume.data_lost()))
    }

    #[inline]
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    /// The pool's extent size (a composite's: its first part's pool's).
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
    /// of its extent (and, for a composite, of its part or stripe). `map` is the volume's own
    /// ([`Self::map`], loaded once per request by the caller); a composite ignores it.
    #[inline]
    pub fn segment<'a>(
        &'a self,
        map: &MapTable,
        offset_bytes: u64,
        remaining_bytes: u64,
    ) -> Segment<'a> {
        match &self.composite {
            None => self.plain_segment(map, offset_bytes, remaining_bytes, 0, None),
            Some(composite) => composite.segment(offset_bytes, remaining_bytes),
        }
    }

    /// The segment in this plain volume's own map; its LUN index is offset by `lun_base` (the
    /// volume's first LUN in a composite's table) and an unmapped one names `part`.
    #[inline(always)]
    fn plain_segment<'a>(
        &'a self,
        map: &MapTable,
        offset_bytes: u64,
        remaining_bytes: u64,
        lun_base: usize,
        part: Option<&'a Arc<Volume>>,
    ) -> Segment<'a> {
        let extent_bytes = self.pool.extent_bytes;
        let extent = offset_bytes / extent_bytes;
        let within = offset_bytes % extent_bytes;
        let len_bytes = remaining_bytes.min(extent_bytes - within);
        let raw = map.get(extent);
        let slot = match (raw & !SLOT_SHARED, self.lost_member) {
            (0, None) => {
                return Segment::Unmapped {
                    part,
                    extent,
                    len_bytes,
                }
            }
            // Possibly lost: the LUN standing in for the lost one fails the I/O.
            (0, Some(member)) => encode_slot(member, 0),
            (slot, _) => slot,
        };
        let (lun, lun_index, offset_bytes) = self.pool.locate(slot, within);
        Segment::Mapped {
            lun,
            lun_index: lun_base + lun_index,
            offset_bytes,
            len_bytes,
            shared: raw & SLOT_SHARED != 0,
        }
    }

    /// Extents mapped (a composite's: its parts', in units of [`Self::extent_bytes`]).
    pub fn allocated_extents(&self) -> u64 {
        match (&self.composite, &self.mirror) {
            (None, None) => self.map().mapped().count() as u64,
            _ => self.allocated_bytes() / self.extent_bytes(),
        }
    }

    /// Bytes of extents mapped (a composite's: the sum over its parts; a mirror's: over its
    /// legs, every copy counted).
    pub fn allocated_bytes(&self) -> u64 {
        if let Some(mirror) = &self.mirror {
            return mirror
                .positions()
                .filter_map(|p| mirror.leg_volume(p))
                .map(|leg| leg.allocated_bytes())
                .sum();
        }
        match &self.composite {
            None => self.map().mapped().count() as u64 * self.extent_bytes(),
            Some(composite) => composite.parts().map(|p| p.volume.allocated_bytes()).sum(),
        }
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
        self.max_lun_block_bytes() > self.block_size_bytes
    }
}
