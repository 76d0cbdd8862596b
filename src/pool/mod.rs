//! Pools: LUNs cut into fixed-size extents, with a lock-free free-extent allocator per LUN and
//! the extent records that make volume maps durable ([`on_disk`]).
//!
//! A pool joins LUNs of any kind and block size; each LUN keeps its own layout. A physical
//! extent is named by its LUN's index in the pool and its index on that LUN, packed into one
//! non-zero `u64` ([`encode_slot`]) so a volume's mapping slot is a single atomic word.

pub mod bitmap;
pub mod on_disk;

use crate::backend::aligned_buf::AlignedBuf;
use crate::backend::{Lun, LunError};
use bitmap::ExtentBitmap;
use on_disk::{ExtentRecord, FormatError, Layout, RecordState, Superblock, SUPERBLOCK_BYTES};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Bits of a mapping slot that hold the extent index; the LUN index (plus one) sits above.
const SLOT_EXTENT_BITS: u32 = 48;

/// Packs (LUN index in pool, extent on that LUN) into a non-zero mapping slot value.
pub fn encode_slot(lun_index: usize, extent: u64) -> u64 {
    debug_assert!(extent < (1 << SLOT_EXTENT_BITS));
    ((lun_index as u64 + 1) << SLOT_EXTENT_BITS) | extent
}

/// Unpacks a mapping slot; `None` for 0, the unmapped slot.
pub fn decode_slot(slot: u64) -> Option<(usize, u64)> {
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
    #[error("pool {pool}: extent records could not be made durable: {detail}")]
    Durability { pool: String, detail: String },
    #[error("pool {pool}: no free extent")]
    Full { pool: String },
}

/// One LUN of a pool.
pub struct PoolLun {
    pub lun: Arc<dyn Lun>,
    pub layout: Layout,
    pub bitmap: ExtentBitmap,
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
    sequence: AtomicU64,
    /// Where round-robin placement of the next extent starts.
    next_lun: AtomicUsize,
}

impl Pool {
    /// Formats `luns` as a new pool: writes each LUN's superblock and clears its records.
    pub fn create(
        name: &str,
        uuid: [u8; 16],
        extent_bytes: u64,
        luns: Vec<Arc<dyn Lun>>,
    ) -> Result<Self, PoolError> {
        let mut members = Vec::with_capacity(luns.len());
        for (index, lun) in luns.into_iter().enumerate() {
            members.push(Self::format_lun(name, uuid, extent_bytes, index, lun)?);
        }
        Ok(Self::assemble(name, uuid, extent_bytes, members, 1))
    }

    fn format_lun(
        name: &str,
        uuid: [u8; 16],
        extent_bytes: u64,
        index: usize,
        lun: Arc<dyn Lun>,
    ) -> Result<PoolLun, PoolError> {
        let info = lun.info().clone();
        let lun_error = |source| PoolError::Lun {
            pool: name.to_string(),
            lun: info.name.clone(),
            source,
        };
        let layout = Layout::compute(info.size_bytes, info.block_size_bytes, extent_bytes)
            .map_err(|source| PoolError::Format {
                pool: name.to_string(),
                lun: info.name.clone(),
                source,
            })?;
        lun.write_zeroes_at(
            layout.records_offset_bytes,
            layout.data_offset_bytes - layout.records_offset_bytes,
        )
        .map_err(lun_error)?;
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
        if !lun.is_persistent() {
            log::warn!(
                "pool {name}: LUN {} is RAM: what is stored on it is lost when the server stops",
                info.name
            );
        }
        Ok(PoolLun {
            lun,
            layout,
            bitmap: ExtentBitmap::new(layout.extent_count),
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
        for (index, lun) in luns.into_iter().enumerate() {
            if !lun.is_persistent() {
                members.push(Self::format_lun(name, uuid, extent_bytes, index, lun)?);
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
            let bitmap = ExtentBitmap::new(layout.extent_count);
            let record_bytes = u64::from(layout.block_size_bytes);
            const SCAN_BYTES: u64 = 1024 * 1024;
            let mut scan = AlignedBuf::new(SCAN_BYTES as usize);
            let mut extent = 0u64;
            let mut corrupt = 0u64;
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
                            let pext = extent + i as u64;
                            bitmap.mark_used(pext);
                            max_sequence = max_sequence.max(record.sequence);
                            found.push(FoundRecord {
                                slot: encode_slot(index, pext),
                                record,
                            });
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
            members.push(PoolLun {
                lun,
                layout,
                bitmap,
            });
        }
        Ok((
            Self::assemble(name, uuid, extent_bytes, members, max_sequence + 1),
            found,
        ))
    }

    fn assemble(
        name: &str,
        uuid: [u8; 16],
        extent_bytes: u64,
        luns: Vec<PoolLun>,
        sequence: u64,
    ) -> Self {
        Self {
            name: name.to_string(),
            uuid,
            extent_bytes,
            luns,
            sequence: AtomicU64::new(sequence),
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
        let (member, extent) = self.member(slot);
        member
            .lun
            .write_zeroes_at(member.layout.extent_offset_bytes(extent), self.extent_bytes)
            .map_err(|source| self.lun_error(member, source))
    }

    /// Writes the record of `slot` (`None` clears it). Durable only after [`Pool::flush_slots`].
    pub fn write_record(
        &self,
        slot: u64,
        record: Option<ExtentRecord>,
        block: &mut AlignedBuf,
    ) -> Result<(), PoolError> {
        let (member, extent) = self.member(slot);
        let bytes = &mut block.as_mut_slice()[..member.layout.block_size_bytes as usize];
        match record {
            Some(record) => record.encode(bytes),
            None => bytes.fill(0),
        }
        member
            .lun
            .write_at(bytes, member.layout.record_offset_bytes(extent), false)
            .map_err(|source| self.lun_error(member, source))
    }

    /// Makes durable every write to the LUNs the given slots live on, each LUN once.
    pub fn flush_slots(&self, slots: impl IntoIterator<Item = u64>) -> Result<(), PoolError> {
        let mut touched = [false; crate::constants::MAX_LUNS_PER_POOL];
        for slot in slots {
            if let Some((lun, _)) = decode_slot(slot) {
                touched[lun] = true;
            }
        }
        for (index, member) in self.luns.iter().enumerate() {
            if touched[index] {
                member
                    .lun
                    .flush()
                    .map_err(|source| self.lun_error(member, source))?;
            }
        }
        Ok(())
    }

    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// The LUN and byte offset on it of `offset_in_extent` within the extent of `slot`.
    #[inline]
    pub fn locate(&self, slot: u64, offset_in_extent: u64) -> (&PoolLun, u64) {
        let (member, extent) = self.member(slot);
        (
            member,
            member.layout.extent_offset_bytes(extent) + offset_in_extent,
        )
    }

    /// Erases the superblocks, so the LUNs no longer claim to belong to this pool.
    pub fn wipe(&self) -> Result<(), PoolError> {
        let block = AlignedBuf::new(SUPERBLOCK_BYTES as usize);
        for member in &self.luns {
            member
                .lun
                .write_at(&block.as_slice()[..SUPERBLOCK_BYTES as usize], 0, true)
                .map_err(|source| self.lun_error(member, source))?;
        }
        Ok(())
    }

    #[inline]
    fn member(&self, slot: u64) -> (&PoolLun, u64) {
        let (lun, extent) = decode_slot(slot).unwrap_or((usize::MAX, 0));
        (&self.luns[lun], extent)
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
