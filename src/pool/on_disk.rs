//! The on-disk format of a pool LUN.
//!
//! ```text
//!  0            4096         +1 block     +2 blocks                  records end   data_offset
//!  | superblock | checkpoint | checkpoint | journal: ring of         | extent      | extent 0 |
//!  | (4096 B)   | slot 0     | slot 1     | journal_blocks blocks    | records     | ...      |
//! ```
//!
//! The superblock says which pool the LUN belongs to and how it is cut; it is written once, when
//! the pool is made. Extent record `i` (one LUN block each) says which volume's virtual extent
//! physical extent `i` holds; an all-zero record is a free extent. The records are the
//! *checkpoint*: the state up to the journal sequence named by the newer valid checkpoint slot.
//!
//! Every later change of an extent's owner is first appended to the *journal*, a ring of LUN
//! blocks each holding a batch of entries under one crc32c and one sequence number (journal
//! block `s` lives at ring index `(s - 1) % journal_blocks`); the blocks of one group commit
//! are written, then the LUN is flushed once, and only then are the changes acknowledged.
//! A checkpoint writes the changed records, flushes, then writes the other checkpoint slot (one
//! block, so never half-written) with the last journal sequence it covers, and flushes again.
//! Opening a LUN reads the records, then replays the journal from the checkpoint on, stopping at
//! the first block that is torn, corrupt or older than the one expected. Each open starts a new
//! *epoch*, recorded in the checkpoint it writes and in every journal block of that run: a block
//! left whole by a batch that crashed half-written has an older epoch than the blocks written
//! after the restart, so replay never runs past the point where that batch was torn.
//!
//! All integers are little-endian.

use crate::constants::MAX_VOLUME_EXTENTS;

pub const SUPERBLOCK_BYTES: u64 = 4096;
const SUPERBLOCK_MAGIC: [u8; 8] = *b"SDSPOOL1";
const RECORD_MAGIC: u32 = 0x5344_5245; // "SDRE"
const CHECKPOINT_MAGIC: u32 = 0x5344_4350; // "SDCP"
const JOURNAL_MAGIC: u32 = 0x5344_4a42; // "SDJB"
pub const FORMAT_VERSION: u32 = 2;
/// Checkpoint slots: written alternately, so one is always whole.
pub const CHECKPOINT_SLOTS: u64 = 2;
/// Journal size bounds, in LUN blocks.
pub const MIN_JOURNAL_BLOCKS: u64 = 16;
pub const MAX_JOURNAL_BLOCKS: u64 = 1 << 16;
/// The default journal: 1024 blocks, or a 64th of the LUN if that is smaller.
pub const DEFAULT_JOURNAL_BLOCKS: u64 = 1024;
/// Bytes of a journal block's header.
const JOURNAL_HEADER_BYTES: usize = 32;
/// Bytes of one journal entry.
const JOURNAL_ENTRY_BYTES: usize = 48;
/// The data area starts on this boundary (or the extent size if smaller).
const DATA_ALIGN_BYTES: u64 = 1024 * 1024;
/// Bytes of a record that carry meaning; the rest of its block is zero.
pub const RECORD_BYTES: usize = 40;
/// Bound on the counters the metadata carries (journal and pool sequences, checkpoint
/// generations, epochs): each grows by one per commit, checkpoint or start, so a real pool
/// never comes near it, and a decoded value past it is damage (adding one to it must not
/// overflow).
pub const MAX_METADATA_COUNTER: u64 = 1 << 62;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("no sds superblock (bad magic)")]
    NotFormatted,
    #[error("superblock checksum mismatch")]
    BadChecksum,
    #[error("unsupported format version {0}")]
    Version(u32),
    #[error("LUN of {size_bytes} bytes is too small for one {extent_bytes}-byte extent")]
    TooSmall { size_bytes: u64, extent_bytes: u64 },
    #[error("journal of {0} blocks is outside {MIN_JOURNAL_BLOCKS}..={MAX_JOURNAL_BLOCKS}")]
    JournalSize(u64),
    #[error("superblock (LUN block 0) does not fit the LUN")]
    Geometry(#[source] GeometryError),
}

/// A decoded field that passed its checksum but does not fit the pool's geometry: damage (or
/// a bug that wrote it), never something to act on.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum GeometryError {
    #[error("field {field} is {value}, not below {limit}")]
    TooLarge {
        field: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("field {field} is {value}, below its minimum {minimum}")]
    TooSmall {
        field: &'static str,
        value: u64,
        minimum: u64,
    },
    #[error("field {field} is {value}, expected {expected}")]
    Mismatch {
        field: &'static str,
        value: u64,
        expected: u64,
    },
}

/// `value` must be below `limit`.
fn below(field: &'static str, value: u64, limit: u64) -> Result<(), GeometryError> {
    if value < limit {
        Ok(())
    } else {
        Err(GeometryError::TooLarge {
            field,
            value,
            limit,
        })
    }
}

/// `value` must be at least `minimum`.
fn at_least(field: &'static str, value: u64, minimum: u64) -> Result<(), GeometryError> {
    if value >= minimum {
        Ok(())
    } else {
        Err(GeometryError::TooSmall {
            field,
            value,
            minimum,
        })
    }
}

/// `value` must be `expected`.
fn equal(field: &'static str, value: u64, expected: u64) -> Result<(), GeometryError> {
    if value == expected {
        Ok(())
    } else {
        Err(GeometryError::Mismatch {
            field,
            value,
            expected,
        })
    }
}

/// How a pool LUN is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub block_size_bytes: u32,
    pub extent_bytes: u64,
    pub extent_count: u64,
    pub journal_offset_bytes: u64,
    pub journal_blocks: u64,
    pub records_offset_bytes: u64,
    pub data_offset_bytes: u64,
}

impl Layout {
    /// The largest layout that fits a LUN of `size_bytes`, with a journal of `journal_blocks`
    /// LUN blocks, or the default size when `None`.
    pub fn compute(
        size_bytes: u64,
        block_size_bytes: u32,
        extent_bytes: u64,
        journal_blocks: Option<u64>,
    ) -> Result<Self, FormatError> {
        let block = u64::from(block_size_bytes);
        let journal_blocks = match journal_blocks {
            Some(blocks) => blocks,
            None => (size_bytes / 64 / block).clamp(MIN_JOURNAL_BLOCKS, DEFAULT_JOURNAL_BLOCKS),
        };
        if !(MIN_JOURNAL_BLOCKS..=MAX_JOURNAL_BLOCKS).contains(&journal_blocks) {
            return Err(FormatError::JournalSize(journal_blocks));
        }
        let journal_offset_bytes = SUPERBLOCK_BYTES + CHECKPOINT_SLOTS * block;
        let records_offset_bytes = journal_offset_bytes + journal_blocks * block;
        let align = DATA_ALIGN_BYTES.min(extent_bytes);
        let data_offset_for =
            |count: u64| (records_offset_bytes + count * block).next_multiple_of(align);
        let mut extent_count =
            size_bytes.saturating_sub(records_offset_bytes) / (extent_bytes + block);
        while extent_count > 0
            && data_offset_for(extent_count) + extent_count * extent_bytes > size_bytes
        {
            extent_count -= 1;
        }
        if extent_count == 0 {
            return Err(FormatError::TooSmall {
                size_bytes,
                extent_bytes,
            });
        }
        Ok(Self {
            block_size_bytes,
            extent_bytes,
            extent_count,
            journal_offset_bytes,
            journal_blocks,
            records_offset_bytes,
            data_offset_bytes: data_offset_for(extent_count),
        })
    }

    pub fn checkpoint_offset_bytes(&self, slot: u64) -> u64 {
        SUPERBLOCK_BYTES + (slot % CHECKPOINT_SLOTS) * u64::from(self.block_size_bytes)
    }

    /// Where journal block `sequence` (1, 2, …) lives.
    pub fn journal_block_offset_bytes(&self, sequence: u64) -> u64 {
        self.journal_offset_bytes
            + ((sequence.max(1) - 1) % self.journal_blocks) * u64::from(self.block_size_bytes)
    }

    /// Journal entries one block holds.
    pub fn journal_entries_per_block(&self) -> usize {
        (self.block_size_bytes as usize - JOURNAL_HEADER_BYTES) / JOURNAL_ENTRY_BYTES
    }

    pub fn record_offset_bytes(&self, extent: u64) -> u64 {
        self.records_offset_bytes + extent * u64::from(self.block_size_bytes)
    }

    pub fn extent_offset_bytes(&self, extent: u64) -> u64 {
        self.data_offset_bytes + extent * self.extent_bytes
    }

    /// Checks a layout read from a superblock against the LUN it was read from (its size and
    /// block size) and against itself: every offset the pool derives from it must land inside
    /// the LUN, in the region it names.
    pub fn validate(&self, lun_size_bytes: u64, lun_block_bytes: u32) -> Result<(), GeometryError> {
        let block = u64::from(lun_block_bytes);
        equal(
            "block_size",
            u64::from(self.block_size_bytes),
            u64::from(lun_block_bytes),
        )?;
        // Every division and multiple below is by the block size.
        if !lun_block_bytes.is_power_of_two() || lun_block_bytes < 512 {
            return Err(GeometryError::Mismatch {
                field: "block_size",
                value: block,
                expected: 512,
            });
        }
        below(
            "journal_blocks",
            self.journal_blocks,
            MAX_JOURNAL_BLOCKS + 1,
        )?;
        at_least("journal_blocks", self.journal_blocks, MIN_JOURNAL_BLOCKS)?;
        if !self.extent_bytes.is_power_of_two() || self.extent_bytes % block != 0 {
            return Err(GeometryError::Mismatch {
                field: "extent_size",
                value: self.extent_bytes,
                expected: self.extent_bytes.next_power_of_two().max(block),
            });
        }
        equal(
            "journal_offset",
            self.journal_offset_bytes,
            SUPERBLOCK_BYTES + CHECKPOINT_SLOTS * block,
        )?;
        equal(
            "records_offset",
            self.records_offset_bytes,
            self.journal_offset_bytes + self.journal_blocks * block,
        )?;
        // Extent records end at or before the data area; the data area ends inside the LUN.
        // Each bound is checked before it is used in the next, so nothing overflows.
        below(
            "extent_count",
            self.extent_count,
            lun_size_bytes / self.extent_bytes + 1,
        )?;
        at_least("extent_count", self.extent_count, 1)?;
        let records_end = self.records_offset_bytes + self.extent_count * block;
        at_least("data_offset", self.data_offset_bytes, records_end)?;
        below("data_offset", self.data_offset_bytes, lun_size_bytes)?;
        below(
            "extent_count",
            self.extent_count,
            (lun_size_bytes - self.data_offset_bytes) / self.extent_bytes + 1,
        )
    }
}

/// The first 4096 bytes of a pool LUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub pool_uuid: [u8; 16],
    pub lun_uuid: [u8; 16],
    /// The LUN's position in its pool.
    pub lun_index: u32,
    pub layout: Layout,
}

impl Superblock {
    pub fn encode(&self, out: &mut [u8]) {
        out[..SUPERBLOCK_BYTES as usize].fill(0);
        out[0..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..32].copy_from_slice(&self.pool_uuid);
        out[32..48].copy_from_slice(&self.lun_uuid);
        out[48..52].copy_from_slice(&self.lun_index.to_le_bytes());
        out[52..56].copy_from_slice(&self.layout.block_size_bytes.to_le_bytes());
        out[56..64].copy_from_slice(&self.layout.extent_bytes.to_le_bytes());
        out[64..72].copy_from_slice(&self.layout.extent_count.to_le_bytes());
        out[72..80].copy_from_slice(&self.layout.records_offset_bytes.to_le_bytes());
        out[80..88].copy_from_slice(&self.layout.data_offset_bytes.to_le_bytes());
        out[88..96].copy_from_slice(&self.layout.journal_offset_bytes.to_le_bytes());
        out[96..104].copy_from_slice(&self.layout.journal_blocks.to_le_bytes());
        let crc = crc32c::crc32c(&out[..SUPERBLOCK_BYTES as usize]);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let block = &bytes[..SUPERBLOCK_BYTES as usize];
        if block[0..8] != SUPERBLOCK_MAGIC {
            return Err(FormatError::NotFormatted);
        }
        let version = u32_at(block, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        let mut copy = [0u8; SUPERBLOCK_BYTES as usize];
        copy.copy_from_slice(block);
        copy[12..16].fill(0);
        if crc32c::crc32c(&copy) != u32_at(block, 12) {
            return Err(FormatError::BadChecksum);
        }
        Ok(Self {
            pool_uuid: block[16..32].try_into().unwrap_or_default(),
            lun_uuid: block[32..48].try_into().unwrap_or_default(),
            lun_index: u32_at(block, 48),
            layout: Layout {
                block_size_bytes: u32_at(block, 52),
                extent_bytes: u64_at(block, 56),
                extent_count: u64_at(block, 64),
                records_offset_bytes: u64_at(block, 72),
                data_offset_bytes: u64_at(block, 80),
                journal_offset_bytes: u64_at(block, 88),
                journal_blocks: u64_at(block, 96),
            },
        })
    }
}

/// Which virtual extent of which volume a physical extent holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentRecord {
    pub volume_uuid: [u8; 16],
    pub virtual_extent: u64,
    /// Pool-wide write sequence: of two records claiming one virtual extent, the later wins.
    pub sequence: u64,
}

/// What a record block holds.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordState {
    Free,
    Used(ExtentRecord),
    /// Neither zero nor a valid record: a torn or corrupt write. Treated as free, and reported.
    Corrupt,
}

impl ExtentRecord {
    /// Encodes into the first RECORD_BYTES of `out` and zeroes the rest of the block.
    pub fn encode(&self, out: &mut [u8]) {
        out.fill(0);
        out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        out[8..24].copy_from_slice(&self.volume_uuid);
        out[24..32].copy_from_slice(&self.virtual_extent.to_le_bytes());
        out[32..40].copy_from_slice(&self.sequence.to_le_bytes());
        let crc = crc32c::crc32c(&out[8..RECORD_BYTES]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Checks a decoded record against what any volume can hold.
    pub fn validate(&self) -> Result<(), GeometryError> {
        below("virtual_extent", self.virtual_extent, MAX_VOLUME_EXTENTS)?;
        below("sequence", self.sequence, MAX_METADATA_COUNTER)
    }

    pub fn decode(block: &[u8]) -> RecordState {
        if block[..RECORD_BYTES].iter().all(|&b| b == 0) {
            return RecordState::Free;
        }
        if u32_at(block, 0) != RECORD_MAGIC
            || crc32c::crc32c(&block[8..RECORD_BYTES]) != u32_at(block, 4)
        {
            return RecordState::Corrupt;
        }
        RecordState::Used(Self {
            volume_uuid: block[8..24].try_into().unwrap_or_default(),
            virtual_extent: u64_at(block, 24),
            sequence: u64_at(block, 32),
        })
    }
}

/// One checkpoint slot: the journal is folded into the extent records up to `sequence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last journal block whose entries the records hold (0: none yet).
    pub sequence: u64,
    /// Which checkpoint this is; the valid slot with the larger one is current.
    pub generation: u64,
    /// The run (one per open of the pool) that wrote it.
    pub epoch: u64,
}

impl Checkpoint {
    /// Encodes into `out`, one LUN block.
    pub fn encode(&self, out: &mut [u8]) {
        out.fill(0);
        out[0..4].copy_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
        out[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        out[16..24].copy_from_slice(&self.generation.to_le_bytes());
        out[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        let crc = crc32c::crc32c(&out[8..32]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Checks a decoded checkpoint: its counters are incremented from.
    pub fn validate(&self) -> Result<(), GeometryError> {
        below("sequence", self.sequence, MAX_METADATA_COUNTER)?;
        below("generation", self.generation, MAX_METADATA_COUNTER)?;
        below("epoch", self.epoch, MAX_METADATA_COUNTER)
    }

    /// `None` for a slot never written, torn or corrupt.
    pub fn decode(block: &[u8]) -> Option<Self> {
        if block.len() < 32
            || u32_at(block, 0) != CHECKPOINT_MAGIC
            || crc32c::crc32c(&block[8..32]) != u32_at(block, 4)
        {
            return None;
        }
        Some(Self {
            sequence: u64_at(block, 8),
            generation: u64_at(block, 16),
            epoch: u64_at(block, 24),
        })
    }
}

/// One journal entry: physical extent `extent` now holds `record`, or is free (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub extent: u64,
    pub record: Option<ExtentRecord>,
}

impl JournalEntry {
    /// Checks a decoded entry against the layout of the LUN whose journal held it.
    pub fn validate(&self, layout: &Layout) -> Result<(), GeometryError> {
        below("extent", self.extent, layout.extent_count)?;
        match &self.record {
            Some(record) => record.validate(),
            None => Ok(()),
        }
    }
}

/// Why reading the journal stopped at a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalEnd {
    /// A block written before the one expected: the journal ends here (the normal case).
    Older { found: u64 },
    /// Never written since the pool was made.
    Empty,
    /// Bad magic, bad checksum or impossible contents: a torn or corrupt write.
    Torn,
    /// Whole, but from an earlier run than the block before it: left by a batch that a crash
    /// cut short (see the module notes on epochs).
    Stale { epoch: u64 },
}

impl std::fmt::Display for JournalEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Older { found } => write!(f, "next block is an older one (sequence {found})"),
            Self::Empty => write!(f, "next block was never written"),
            Self::Torn => write!(f, "next block is torn or corrupt"),
            Self::Stale { epoch } => write!(f, "next block is stale (from run {epoch})"),
        }
    }
}

/// Encodes journal block `sequence` of run `epoch` with `entries` (at most
/// [`Layout::journal_entries_per_block`]) into `out`, one LUN block.
pub fn encode_journal_block(sequence: u64, epoch: u64, entries: &[JournalEntry], out: &mut [u8]) {
    debug_assert!(JOURNAL_HEADER_BYTES + entries.len() * JOURNAL_ENTRY_BYTES <= out.len());
    out.fill(0);
    out[0..4].copy_from_slice(&JOURNAL_MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&sequence.to_le_bytes());
    out[16..20].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    out[24..32].copy_from_slice(&epoch.to_le_bytes());
    for (i, entry) in entries.iter().enumerate() {
        let at = JOURNAL_HEADER_BYTES + i * JOURNAL_ENTRY_BYTES;
        out[at..at + 8].copy_from_slice(&entry.extent.to_le_bytes());
        if let Some(record) = entry.record {
            out[at + 8..at + 24].copy_from_slice(&record.volume_uuid);
            out[at + 24..at + 32].copy_from_slice(&record.virtual_extent.to_le_bytes());
            out[at + 32..at + 40].copy_from_slice(&record.sequence.to_le_bytes());
            out[at + 40] = 1;
        }
    }
    let crc = crc32c::crc32c(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the journal block that should carry sequence `expected` into `entries` (cleared
/// first); it must be of run `min_epoch` or later. Returns the block's epoch.
pub fn decode_journal_block(
    block: &[u8],
    expected: u64,
    min_epoch: u64,
    entries: &mut Vec<JournalEntry>,
) -> Result<u64, JournalEnd> {
    entries.clear();
    if block.iter().all(|&b| b == 0) {
        return Err(JournalEnd::Empty);
    }
    if block.len() < JOURNAL_HEADER_BYTES
        || u32_at(block, 0) != JOURNAL_MAGIC
        || crc32c::crc32c(&block[8..]) != u32_at(block, 4)
    {
        return Err(JournalEnd::Torn);
    }
    let sequence = u64_at(block, 8);
    if sequence != expected {
        return if sequence < expected {
            Err(JournalEnd::Older { found: sequence })
        } else {
            Err(JournalEnd::Torn)
        };
    }
    let epoch = u64_at(block, 24);
    if epoch < min_epoch {
        return Err(JournalEnd::Stale { epoch });
    }
    let count = u32_at(block, 16) as usize;
    if JOURNAL_HEADER_BYTES + count * JOURNAL_ENTRY_BYTES > block.len() {
        return Err(JournalEnd::Torn);
    }
    for i in 0..count {
        let at = JOURNAL_HEADER_BYTES + i * JOURNAL_ENTRY_BYTES;
        let record = (block[at + 40] == 1).then(|| ExtentRecord {
            volume_uuid: block[at + 8..at + 24].try_into().unwrap_or_default(),
            virtual_extent: u64_at(block, at + 24),
            sequence: u64_at(block, at + 32),
        });
        entries.push(JournalEntry {
            extent: u64_at(block, at),
            record,
        });
    }
    Ok(epoch)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_and_aligns() {
        for (size, block, extent) in [
            (64 << 20, 512, 1 << 20),
            (64 << 20, 4096, 1 << 20),
            (3 << 20, 4096, 64 << 10),
            (1 << 30, 512, 1 << 20),
        ] {
            let layout = Layout::compute(size, block, extent, None).expect("fits");
            assert!(layout.data_offset_bytes + layout.extent_count * extent <= size);
            assert!(layout.record_offset_bytes(layout.extent_count) <= layout.data_offset_bytes);
            assert_eq!(layout.data_offset_bytes % extent.min(1 << 20), 0);
            assert!(layout.checkpoint_offset_bytes(1) < layout.journal_offset_bytes);
            assert_eq!(
                layout.journal_block_offset_bytes(layout.journal_blocks + 1),
                layout.journal_offset_bytes
            );
            assert_eq!(
                layout.journal_block_offset_bytes(layout.journal_blocks) + u64::from(block),
                layout.records_offset_bytes
            );
            // One more extent would not fit.
            let bigger = (layout.records_offset_bytes
                + (layout.extent_count + 1) * u64::from(block))
            .next_multiple_of(extent.min(1 << 20));
            assert!(bigger + (layout.extent_count + 1) * extent > size);
        }
        assert!(Layout::compute(1 << 20, 512, 1 << 20, None).is_err());
        assert!(Layout::compute(64 << 20, 512, 1 << 20, Some(8)).is_err());
    }

    #[test]
    fn superblock_round_trip_and_corruption() {
        let sb = Superblock {
            pool_uuid: [1; 16],
            lun_uuid: [2; 16],
            lun_index: 3,
            layout: Layout::compute(64 << 20, 4096, 1 << 20, Some(64)).expect("fits"),
        };
        let mut block = vec![0u8; 4096];
        sb.encode(&mut block);
        assert_eq!(Superblock::decode(&block), Ok(sb));
        block[100] ^= 1;
        assert_eq!(Superblock::decode(&block), Err(FormatError::BadChecksum));
        assert_eq!(
            Superblock::decode(&[0u8; 4096]),
            Err(FormatError::NotFormatted)
        );
    }

    #[test]
    fn record_round_trip_and_corruption() {
        let record = ExtentRecord {
            volume_uuid: [9; 16],
            virtual_extent: 77,
            sequence: 5,
        };
        let mut block = vec![0xffu8; 512];
        record.encode(&mut block);
        assert_eq!(ExtentRecord::decode(&block), RecordState::Used(record));
        block[30] ^= 4;
        assert_eq!(ExtentRecord::decode(&block), RecordState::Corrupt);
        assert_eq!(ExtentRecord::decode(&[0u8; 512]), RecordState::Free);
    }

    #[test]
    fn checkpoint_round_trip_and_corruption() {
        let checkpoint = Checkpoint {
            sequence: 41,
            generation: 7,
            epoch: 3,
        };
        let mut block = vec![0u8; 512];
        checkpoint.encode(&mut block);
        assert_eq!(Checkpoint::decode(&block), Some(checkpoint));
        block[9] ^= 1;
        assert_eq!(Checkpoint::decode(&block), None);
        assert_eq!(Checkpoint::decode(&[0u8; 512]), None);
    }

    #[test]
    fn journal_block_round_trip_and_ends() {
        let layout = Layout::compute(64 << 20, 512, 1 << 20, Some(16)).expect("fits");
        let capacity = layout.journal_entries_per_block();
        assert_eq!(capacity, 10);
        let entries: Vec<JournalEntry> = (0..capacity as u64)
            .map(|i| JournalEntry {
                extent: i * 3,
                record: (i % 2 == 0).then_some(ExtentRecord {
                    volume_uuid: [i as u8 + 1; 16],
                    virtual_extent: i + 100,
                    sequence: i + 1000,
                }),
            })
            .collect();
        let mut block = vec![0u8; 512];
        encode_journal_block(9, 4, &entries, &mut block);
        let mut decoded = Vec::new();
        assert_eq!(decode_journal_block(&block, 9, 4, &mut decoded), Ok(4));
        assert_eq!(decoded, entries);
        assert_eq!(
            decode_journal_block(&block, 10, 4, &mut decoded),
            Err(JournalEnd::Older { found: 9 })
        );
        assert_eq!(
            decode_journal_block(&block, 8, 4, &mut decoded),
            Err(JournalEnd::Torn)
        );
        assert_eq!(
            decode_journal_block(&block, 9, 5, &mut decoded),
            Err(JournalEnd::Stale { epoch: 4 })
        );
        block[200] ^= 0x10;
        assert_eq!(
            decode_journal_block(&block, 9, 4, &mut decoded),
            Err(JournalEnd::Torn)
        );
        assert_eq!(
            decode_journal_block(&[0u8; 512], 1, 0, &mut decoded),
            Err(JournalEnd::Empty)
        );
    }

    #[test]
    fn a_computed_layout_validates_and_each_damaged_field_is_named() {
        let size = 64 << 20;
        let layout = Layout::compute(size, 4096, 1 << 20, Some(64)).expect("fits");
        assert_eq!(layout.validate(size, 4096), Ok(()));
        let field_of = |error: GeometryError| match error {
            GeometryError::TooLarge { field, .. }
            | GeometryError::TooSmall { field, .. }
            | GeometryError::Mismatch { field, .. } => field,
        };
        let damaged: [(&str, Layout); 9] = [
            (
                "block_size",
                Layout {
                    block_size_bytes: 512,
                    ..layout
                },
            ),
            (
                "journal_blocks",
                Layout {
                    journal_blocks: 3,
                    ..layout
                },
            ),
            (
                "journal_blocks",
                Layout {
                    journal_blocks: u64::MAX,
                    ..layout
                },
            ),
            (
                "extent_size",
                Layout {
                    extent_bytes: 3 << 20,
                    ..layout
                },
            ),
            (
                "journal_offset",
                Layout {
                    journal_offset_bytes: 0,
                    ..layout
                },
            ),
            (
                "records_offset",
                Layout {
                    records_offset_bytes: size * 2,
                    ..layout
                },
            ),
            (
                "extent_count",
                Layout {
                    extent_count: layout.extent_count + 1,
                    ..layout
                },
            ),
            (
                "extent_count",
                Layout {
                    extent_count: u64::MAX,
                    ..layout
                },
            ),
            (
                "data_offset",
                Layout {
                    data_offset_bytes: u64::MAX,
                    ..layout
                },
            ),
        ];
        for (field, bad) in damaged {
            let error = bad.validate(size, 4096).expect_err(field);
            assert_eq!(field_of(error), field, "{error}");
        }
        // Zero sizes are refused before anything divides by them.
        let zero = Layout {
            block_size_bytes: 0,
            extent_bytes: 0,
            ..layout
        };
        assert_eq!(
            field_of(zero.validate(size, 0).expect_err("zero")),
            "block_size"
        );
        let zero = Layout {
            extent_bytes: 0,
            ..layout
        };
        assert_eq!(
            field_of(zero.validate(size, 4096).expect_err("zero")),
            "extent_size"
        );
        // The same layout does not fit a LUN that shrank.
        assert!(layout.validate(size / 2, 4096).is_err());
    }

    #[test]
    fn journal_entries_and_records_are_checked_against_the_geometry() {
        let layout = Layout::compute(64 << 20, 512, 1 << 20, Some(16)).expect("fits");
        let record = ExtentRecord {
            volume_uuid: [1; 16],
            virtual_extent: MAX_VOLUME_EXTENTS - 1,
            sequence: 1,
        };
        let last = JournalEntry {
            extent: layout.extent_count - 1,
            record: Some(record),
        };
        assert_eq!(last.validate(&layout), Ok(()));
        let past = JournalEntry {
            extent: layout.extent_count,
            record: None,
        };
        assert_eq!(
            past.validate(&layout),
            Err(GeometryError::TooLarge {
                field: "extent",
                value: layout.extent_count,
                limit: layout.extent_count
            })
        );
        let far = ExtentRecord {
            virtual_extent: MAX_VOLUME_EXTENTS,
            ..record
        };
        let late = ExtentRecord {
            sequence: MAX_METADATA_COUNTER,
            ..record
        };
        assert!(late.validate().is_err());
        let checkpoint = Checkpoint {
            sequence: 1,
            generation: 2,
            epoch: 3,
        };
        assert_eq!(checkpoint.validate(), Ok(()));
        for bad in [
            Checkpoint {
                sequence: u64::MAX,
                ..checkpoint
            },
            Checkpoint {
                generation: u64::MAX,
                ..checkpoint
            },
            Checkpoint {
                epoch: MAX_METADATA_COUNTER,
                ..checkpoint
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let error = JournalEntry {
            extent: 0,
            record: Some(far),
        }
        .validate(&layout)
        .expect_err("virtual extent past any volume");
        assert!(error.to_string().contains("virtual_extent"), "{error}");
        assert!(far.validate().is_err() && record.validate().is_ok());
        // A valid checksum does not make an entry valid: what decodes is checked separately.
        let mut block = vec![0u8; 512];
        encode_journal_block(2, 1, &[past], &mut block);
        let mut decoded = Vec::new();
        assert_eq!(decode_journal_block(&block, 2, 1, &mut decoded), Ok(1));
        assert!(decoded[0].validate(&layout).is_err());
    }
}
