//! Pools: LUNs cut into fixed-size extents, with a lock-free free-extent allocator per LUN and
//! the extent records and journal that make volume maps durable ([`on_disk`], [`journal`]).
//! Every change of an extent's owner goes through [`Pool::commit`]: journaled on the LUN that
//! holds the extent, one flush per LUN per group, and durable when it returns.
//!
//! A pool joins LUNs of any kind and block size; each LUN keeps its own layout. A physical
//! extent is named by its LUN's index in the pool and its index on that LUN, packed into one
//! non-zero `u64` ([`encode_slot`]) so a volume's mapping slot is a single atomic word.

pub mod bitmap;
pub mod journal;
pub mod lost_lun;
pub mod on_disk;
pub mod refcount;
pub mod threshold;

use crate::backend::aligned_buf::AlignedBuf;
use crate::backend::{Lun, LunError};
use bitmap::ExtentBitmap;
use journal::{Journal, JournalError, Recovery};
use lost_lun::LostLun;
use on_disk::{
    ExtentRecord, FormatError, GeometryError, JournalEntry, Layout, RecordState, Superblock,
    SUPERBLOCK_BYTES,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Bits of a mapping slot that hold the extent index; the LUN index (plus one) sits above.
const SLOT_EXTENT_BITS: u32 = 48;

/// The bit of a volume's mapping slot that says another table (a snapshot's, a clone's) maps
/// the same extent: a write must copy it first (see `volume::lineage`). Never part of what
/// [`decode_slot`] decodes.
pub const SLOT_SHARED: u64 = 1 << 63;

/// Packs (LUN index in pool, extent on that LUN) into a non-zero mapping slot value.
pub fn encode_slot(lun_index: usize, extent: u64) -> u64 {
    debug_assert!(extent < (1 << SLOT_EXTENT_BITS));
    ((lun_index as u64 + 1) << SLOT_EXTENT_BITS) | extent
}

/// Unpacks a mapping slot; `None` for 0, the unmapped slot.
pub fn decode_slot(slot: u64) -> Option<(usize, u64)> {
    let slot = slot & !SLOT_SHARED;
    if slot == 0 {
        return None;
    }
    Some((
        (slot >> SLOT_EXTENT_BITS) as usize - 1,
        slot & ((1 << SLOT_EXTENT_BITS) - 1),
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool {pool}: LUN {lun}")]
    Lun {
        pool: String,
        lun: String,
        #[source]
        source: LunError,
    },
    #[error("pool {pool}: LUN {lun}: {source}")]
    Format {
        pool: String,
        lun: String,
        #[source]
        source: FormatError,
    },
    #[error("pool {pool}: LUN {lun} belongs to another pool or position (superblock mismatch)")]
    Foreign { pool: String, lun: String },
    #[error("pool {pool}: LUN {lun}: journal")]
    Journal {
        pool: String,
        lun: String,
        /// Shared: one failed group commit fails every change in it.
        #[source]
        source: Arc<JournalError>,
    },
    #[error("pool {pool}: no free extent")]
    Full { pool: String },
    /// A request to map an extent the volume's own map does not have (a composite volume
    /// has none: its parts are provisioned). Never sent by a correct caller; refused, not
    /// published.
    #[error("volume {volume}: extent {extent} is not in its own map")]
    OutsideMap { volume: String, extent: u64 },
    #[error("pool {pool}: LUN {lun}: extent record {extent} (LUN block {lun_block}): damaged")]
    DamagedRecord {
        pool: String,
        lun: String,
        extent: u64,
        lun_block: u64,
        #[source]
        source: GeometryError,
    },
}

/// One LUN of a pool.
pub struct PoolLun {
    pub lun: Arc<dyn Lun>,
    pub layout: Layout,
    pub bitmap: ExtentBitmap,
    pub journal: Journal,
    /// What replaying its journal found when the pool was opened (`None`: formatted anew).
    pub recovery: Option<Recovery>,
    /// A volatile LUN of a pool that also has persistent ones, found at open: what it held is
    /// gone. `lun` is then a [`LostLun`]; nothing is placed on it, and the ranges of the pool's
    /// volumes that may have been on it fail with EIO.
    pub content_lost: bool,
}

/// A mapping record found on disk when a pool is opened.
#[derive(Clone, Copy, Debug)]
pub struct FoundRecord {
    pub slot: u64,
    pub record: ExtentRecord,
}

pub struct Pool {
    pub name: String,
    pub uuid: [u8; 16],
    pub extent_bytes: u64,
    pub luns: Vec<PoolLun>,
    /// Every LUN is volatile (mem, null): the pool and its volumes start empty at every start
    /// of the server. A pool is either volatile or persistent (see `pool_create`).
    pub volatile: bool,
    /// A volatile pool opened from its records at start-up: it started empty, and what its
    /// volumes held before is gone.
    pub started_empty: bool,
    sequence: AtomicU64,
    /// How many tables map each extent (snapshots and clones share them).
    pub refcounts: refcount::RefCounts,
    /// Where round-robin placement of the next extent starts.
    next_lun: AtomicUsize,
}

impl Pool {
    /// Formats `luns` as a new pool: writes each LUN's superblock and clears its records.
    /// `journal_blocks`: each LUN's journal size in LUN blocks (`None`: the default).
    pub fn create(
        name: &str,
        uuid: [u8; 16],
        extent_bytes: u64,
        journal_blocks: Option<u64>,
        luns: Vec<Arc<dyn Lun>>,
    ) -> Result<Self, PoolError> {
        let mut members = Vec::with_capacity(luns.len());
        for (index, lun) in luns.into_iter().enumerate() {
            members.push(Self::format_lun(
                name,
                uuid,
                extent_bytes,
                journal_blocks,
                index,
                lun,
            )?);
        }
        Ok(Self::assemble(name, uuid, extent_bytes, members, 1))
    }

    fn format_lun(
        name: &str,
        uuid: [u8; 16],
        extent_bytes: u64,
        journal_blocks: Option<u64>,
        index: usize,
        lun: Arc<dyn Lun>,
    ) -> Result<PoolLun, PoolError> {
        let info = lun.info().clone();
        let lun_error = |source| PoolError::Lun {
            pool: name.to_string(),
            lun: info.name.clone(),
            source,
        };
        let layout = Layout::compute(
            info.size_bytes,
            info.block_size_bytes,
            extent_bytes,
            journal_blocks,
        )
        .map_err(|source| PoolError::Format {
            pool: name.to_string(),
            lun: info.name.clone(),
            source,
        })?;
        // Checkpoint slots, journal and records: all zero before the superblock says "pool".
        lun.write_zeroes_at(
            SUPERBLOCK_BYTES,
            layout.data_offset_bytes - SUPERBLOCK_BYTES,
        )
        .map_err(lun_error)?;
        let journal =
            Journal::format(lun.as_ref(), layout).map_err(|source| PoolError::Journal {
                pool: name.to_string(),
                lun: info.name.clone(),
                source: Arc::new(source),
            })?;
        let superblock = Superblock {
            pool_uuid: uuid,
            lun_uuid: uuid_of_lun(uuid, index),
            lun_index: index as u32,
            layout,
        };
        let mut block = AlignedBuf::new(SUPERBLOCK_BYTES as usize);
        superblock.encode(block.as_mut_slice());
        lun.write_at(&block.as_slice()[..SUPERBLOCK_BYTES as usize], 0, true)
            .map_err(lun_error)?;
        Ok(PoolLun {
            lun,
            layout,
            bitmap: ExtentBitmap::new(layout.extent_count),
            journal,
            recovery: None,
            content_lost: false,
        })
    }

    /// Opens an existing pool from its LUNs' superblocks and records. RAM LUNs come back empty
    /// and are formatted again. Returns the pool and every mapping record found.
    pub fn open(
        name: &str,
        uuid: [u8; 16],
        extent_bytes: u64,
        luns: Vec<Arc<dyn Lun>>,
    ) -> Result<(Self, Vec<FoundRecord>), PoolError> {
        let mut members = Vec::with_capacity(luns.len());
        let mut found = Vec::new();
        let mut max_sequence = 0;
        let volatile = luns.iter().all(|lun| !lun.is_persistent());
        for (index, lun) in luns.into_iter().enumerate() {
            if !lun.is_persistent() {
                let journal_blocks = members.first().map(|m: &PoolLun| m.layout.journal_blocks);
                let mut member =
                    Self::format_lun(name, uuid, extent_bytes, journal_blocks, index, lun)?;
                if !volatile {
                    member = Self::into_lost_member(name, member);
                }
                members.push(member);
                continue;
            }
            let info = lun.info().clone();
            let lun_error = |source| PoolError::Lun {
                pool: name.to_string(),
                lun: info.name.clone(),
                source,
            };
            let format_error = |source| PoolError::Format {
                pool: name.to_string(),
                lun: info.name.clone(),
                source,
            };
            let mut block = AlignedBuf::new(SUPERBLOCK_BYTES as usize);
            lun.read_at(block.as_mut_slice(), 0).map_err(lun_error)?;
            let superblock = Superblock::decode(block.as_slice()).map_err(format_error)?;
            if superblock.pool_uuid != uuid
                || superblock.lun_index as usize != index
                || superblock.layout.extent_bytes != extent_bytes
            {
                return Err(PoolError::Foreign {
                    pool: name.to_string(),
                    lun: info.name.clone(),
                });
            }
            let layout = superblock.layout;
            // Everything below derives offsets from these fields: they must fit this LUN.
            layout
                .validate(info.size_bytes, info.block_size_bytes)
                .map_err(|source| format_error(FormatError::Geometry(source)))?;
            let bitmap = ExtentBitmap::new(layout.extent_count);
            let record_bytes = u64::from(layout.block_size_bytes);
            const SCAN_BYTES: u64 = 1024 * 1024;
            let mut scan = AlignedBuf::new(SCAN_BYTES as usize);
            let mut extent = 0u64;
            let mut corrupt = 0u64;
            let mut records: HashMap<u64, ExtentRecord> = HashMap::new();
            while extent < layout.extent_count {
                let batch = (layout.extent_count - extent).min(SCAN_BYTES / record_bytes);
                let bytes = &mut scan.as_mut_slice()[..(batch * record_bytes) as usize];
                lun.read_at(bytes, layout.record_offset_bytes(extent))
                    .map_err(lun_error)?;
                for (i, chunk) in bytes.chunks_exact(record_bytes as usize).enumerate() {
                    match ExtentRecord::decode(chunk) {
                        RecordState::Free => {}
                        RecordState::Corrupt => corrupt += 1,
                        RecordState::Used(record) => {
                            let at = extent + i as u64;
                            record
                                .validate()
                                .map_err(|source| PoolError::DamagedRecord {
                                    pool: name.to_string(),
                                    lun: info.name.clone(),
                                    extent: at,
                                    lun_block: layout.record_offset_bytes(at)
                                        / u64::from(layout.block_size_bytes),
                                    source,
                                })?;
                            records.insert(at, record);
                        }
                    }
                }
                extent += batch;
            }
            if corrupt > 0 {
                log::warn!(
                    "pool {name}: LUN {}: {corrupt} torn or corrupt extent records treated as free",
                    info.name
                );
            }
            let (journal, recovery) =
                Journal::open(lun.as_ref(), layout, &mut records).map_err(|source| {
                    PoolError::Journal {
                        pool: name.to_string(),
                        lun: info.name.clone(),
                        source: Arc::new(source),
                    }
                })?;
            log::info!(
                "pool {name}: LUN {}: journal replayed {} blocks ({} entries) after checkpoint {} in {} us; {}",
                info.name,
                recovery.replayed_blocks,
                recovery.replayed_entries,
                recovery.checkpoint_sequence,
                recovery.elapsed_us,
                recovery.end
            );
            for (&pext, &record) in &records {
                bitmap.mark_used(pext);
                max_sequence = max_sequence.max(record.sequence);
                found.push(FoundRecord {
                    slot: encode_slot(index, pext),
                    record,
                });
            }
            members.push(PoolLun {
                lun,
                layout,
                bitmap,
                journal,
                recovery: Some(recovery),
                content_lost: false,
            });
        }
        let mut pool = Self::assemble(name, uuid, extent_bytes, members, max_sequence + 1);
        pool.started_empty = pool.volatile;
        Ok((pool, found))
    }

    /// The member a volatile LUN becomes in a persistent pool at open (a pool made before the
    /// rule that forbids mixing): its content is gone, so no extent may be placed on it again
    /// (every one is marked used) and its I/O fails, flushes aside.
    fn into_lost_member(name: &str, member: PoolLun) -> PoolLun {
        let info = member.lun.info().clone();
        let reason = format!(
            "volatile LUN in persistent pool {name}: what it held was lost when the server stopped"
        );
        log::error!(
            "pool {name}: LUN {} is volatile but the pool's other LUNs are persistent (a pool \
             made before mixing was refused): what it held was lost when the server stopped; \
             the pool's volumes report data_lost, and their ranges no surviving record maps \
             fail with EIO",
            info.name
        );
        for extent in 0..member.layout.extent_count {
            member.bitmap.mark_used(extent);
        }
        PoolLun {
            lun: Arc::new(LostLun::new(info, reason)),
            content_lost: true,
            ..member
        }
    }

    /// The member standing in for a volatile LUN whose content was lost, if the pool has one.
    pub fn lost_member(&self) -> Option<usize> {
        self.luns.iter().position(|member| member.content_lost)
    }

    fn assemble(
        name: &str,
        uuid: [u8; 16],
        extent_bytes: u64,
        luns: Vec<PoolLun>,
        sequence: u64,
    ) -> Self {
        let refcounts = refcount::RefCounts::new(luns.iter().map(|l| l.layout.extent_count));
        Self {
            name: name.to_string(),
            uuid,
            extent_bytes,
            volatile: !luns.is_empty() && luns.iter().all(|m| !m.lun.is_persistent()),
            started_empty: false,
            luns,
            sequence: AtomicU64::new(sequence),
            refcounts,
            next_lun: AtomicUsize::new(0),
        }
    }

    pub fn total_extents(&self) -> u64 {
        self.luns.iter().map(|l| l.bitmap.extent_count()).sum()
    }

    pub fn free_extents(&self) -> u64 {
        self.luns.iter().map(|l| l.bitmap.free_count()).sum()
    }

    /// Claims a free extent, placing consecutive claims on successive LUNs. Returns its slot.
    pub fn claim_extent(&self) -> Result<u64, PoolError> {
        let count = self.luns.len();
        let start = self.next_lun.fetch_add(1, Ordering::Relaxed);
        for step in 0..count {
            let index = (start + step) % count;
            if let Some(extent) = self.luns[index].bitmap.allocate() {
                return Ok(encode_slot(index, extent));
            }
        }
        Err(PoolError::Full {
            pool: self.name.clone(),
        })
    }

    /// Returns a claimed extent to the free set (its record must already be cleared).
    pub fn release_extent(&self, slot: u64) {
        if let Some((lun, extent)) = decode_slot(slot) {
            self.luns[lun].bitmap.release(extent);
        }
    }

    /// Zeroes the data of a freshly claimed extent, so a volume never reads what a previous
    /// owner left there.
    pub fn zero_extent(&self, slot: u64) -> Result<(), PoolError> {
        let (member, _, extent) = self.member(slot);
        member
            .lun
            .write_zeroes_at(member.layout.extent_offset_bytes(extent), self.extent_bytes)
            .map_err(|source| self.lun_error(member, source))
    }

    /// Makes every change durable (slot → its new record, or `None`: free) through the
    /// journal of the LUN each slot lives on: one group of journal blocks and one flush per LUN.
    /// Returns one result per change: a change succeeds or fails with its LUN's group.
    pub fn commit(&self, changes: &[(u64, Option<ExtentRecord>)]) -> Vec<Result<(), PoolError>> {
        let mut per_lun: Vec<Vec<JournalEntry>> = vec![Vec::new(); self.luns.len()];
        for &(slot, record) in changes {
            if let Some((lun, extent)) = decode_slot(slot) {
                if let Some(entries) = per_lun.get_mut(lun) {
                    entries.push(JournalEntry { extent, record });
                }
            }
        }
        let outcomes: Vec<Result<(), Arc<JournalError>>> = per_lun
            .iter()
            .zip(&self.luns)
            .map(|(entries, member)| {
                if entries.is_empty() {
                    return Ok(());
                }
                member
                    .journal
                    .commit(member.lun.as_ref(), entries)
                    .map_err(Arc::new)
            })
            .collect();
        changes
            .iter()
            .map(|&(slot, _)| {
                let (lun, _) = decode_slot(slot).ok_or_else(|| self.no_such_slot(slot))?;
                match outcomes.get(lun) {
                    Some(Ok(())) => Ok(()),
                    Some(Err(source)) => Err(PoolError::Journal {
                        pool: self.name.clone(),
                        lun: self.luns[lun].lun.info().name.clone(),
                        source: source.clone(),
                    }),
                    None => Err(self.no_such_slot(slot)),
                }
            })
            .collect()
    }

    /// Folds every LUN's journal into its extent records (a clean shutdown does this, so the
    /// next start replays nothing).
    pub fn checkpoint(&self) -> Result<(), PoolError> {
        for member in &self.luns {
            member
                .journal
                .checkpoint(member.lun.as_ref())
                .map_err(|source| PoolError::Journal {
                    pool: self.name.clone(),
                    lun: member.lun.info().name.clone(),
                    source: Arc::new(source),
                })?;
        }
        Ok(())
    }

    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes every later sequence greater than `sequence` (start-up: a snapshot taken at a
    /// sequence no record carries must still see nothing written after it).
    pub fn advance_sequence_past(&self, sequence: u64) {
        self.sequence
            .fetch_max(sequence.saturating_add(1), Ordering::Relaxed);
    }

    /// The LUN, its index in this pool (what the I/O path tags LUN I/O with, so its errors
    /// are counted on it without a lookup), and the byte offset on it of `offset_in_extent`
    /// within the extent of `slot`.
    #[inline]
    pub fn locate(&self, slot: u64, offset_in_extent: u64) -> (&PoolLun, usize, u64) {
        let (member, index, extent) = self.member(slot);
        (
            member,
            index,
            member.layout.extent_offset_bytes(extent) + offset_in_extent,
        )
    }

    /// Erases the superblocks, so the LUNs no longer claim to belong to this pool.
    pub fn wipe(&self) -> Result<(), PoolError> {
        let block = AlignedBuf::new(SUPERBLOCK_BYTES as usize);
        for member in self.luns.iter().filter(|m| !m.content_lost) {
            member
                .lun
                .write_at(&block.as_slice()[..SUPERBLOCK_BYTES as usize], 0, true)
                .map_err(|source| self.lun_error(member, source))?;
        }
        Ok(())
    }

    /// The member holding `slot`, its index in `self.luns`, and the extent on it.
    #[inline]
    fn member(&self, slot: u64) -> (&PoolLun, usize, u64) {
        let (lun, extent) = decode_slot(slot).unwrap_or((usize::MAX, 0));
        (&self.luns[lun], lun, extent)
    }

    fn no_such_slot(&self, slot: u64) -> PoolError {
        PoolError::Lun {
            pool: self.name.clone(),
            lun: String::new(),
            source: LunError::Invalid {
                lun: String::new(),
                what: format!("no extent {slot:#x} in this pool"),
            },
        }
    }

    fn lun_error(&self, member: &PoolLun, source: LunError) -> PoolError {
        PoolError::Lun {
            pool: self.name.clone(),
            lun: member.lun.info().name.clone(),
            source,
        }
    }
}

/// A LUN's identity inside its pool: the pool's UUID with the LUN index folded in. Stable
/// across restarts without storing anything more.
fn uuid_of_lun(pool_uuid: [u8; 16], index: usize) -> [u8; 16] {
    let mut uuid = pool_uuid;
    uuid[15] ^= index as u8;
    uuid[14] ^= (index >> 8) as u8;
    uuid
}
