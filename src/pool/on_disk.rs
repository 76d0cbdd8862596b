//! The on-disk format of a pool LUN.
//!
//! ```text
//!  0              4096                          data_offset (1 MiB aligned)
//!  | superblock   | extent records, one per      | extent 0 | extent 1 | ...
//!  | (4096 bytes) | LUN block (512 or 4096)      |
//! ```
//!
//! The superblock says which pool the LUN belongs to and how it is cut. Extent record `i` says
//! which volume's virtual extent physical extent `i` holds; an all-zero record is a free
//! extent. Each record fills a whole LUN block, so writing one is one atomic sector write that
//! never touches a neighbour; each carries a crc32c and a sequence number.
//! All integers are little-endian.

pub const SUPERBLOCK_BYTES: u64 = 4096;
const SUPERBLOCK_MAGIC: [u8; 8] = *b"SDSPOOL1";
const RECORD_MAGIC: u32 = 0x5344_5245; // "SDRE"
pub const FORMAT_VERSION: u32 = 1;
/// The data area starts on this boundary (or the extent size if smaller).
const DATA_ALIGN_BYTES: u64 = 1024 * 1024;
/// Bytes of a record that carry meaning; the rest of its block is zero.
pub const RECORD_BYTES: usize = 40;

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
}

/// How a pool LUN is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub block_size_bytes: u32,
    pub extent_bytes: u64,
    pub extent_count: u64,
    pub records_offset_bytes: u64,
    pub data_offset_bytes: u64,
}

impl Layout {
    /// The largest layout that fits a LUN of `size_bytes`.
    pub fn compute(
        size_bytes: u64,
        block_size_bytes: u32,
        extent_bytes: u64,
    ) -> Result<Self, FormatError> {
        let block = u64::from(block_size_bytes);
        let align = DATA_ALIGN_BYTES.min(extent_bytes);
        let data_offset_for =
            |count: u64| (SUPERBLOCK_BYTES + count * block).next_multiple_of(align);
        let mut extent_count = size_bytes.saturating_sub(SUPERBLOCK_BYTES) / (extent_bytes + block);
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
            records_offset_bytes: SUPERBLOCK_BYTES,
            data_offset_bytes: data_offset_for(extent_count),
        })
    }

    pub fn record_offset_bytes(&self, extent: u64) -> u64 {
        self.records_offset_bytes + extent * u64::from(self.block_size_bytes)
    }

    pub fn extent_offset_bytes(&self, extent: u64) -> u64 {
        self.data_offset_bytes + extent * self.extent_bytes
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
            let layout = Layout::compute(size, block, extent).expect("fits");
            assert!(layout.data_offset_bytes + layout.extent_count * extent <= size);
            assert!(layout.record_offset_bytes(layout.extent_count) <= layout.data_offset_bytes);
            assert_eq!(layout.data_offset_bytes % extent.min(1 << 20), 0);
            // One more extent would not fit.
            let bigger = (SUPERBLOCK_BYTES + (layout.extent_count + 1) * u64::from(block))
                .next_multiple_of(extent.min(1 << 20));
            assert!(bigger + (layout.extent_count + 1) * extent > size);
        }
        assert!(Layout::compute(1 << 20, 512, 1 << 20).is_err());
    }

    #[test]
    fn superblock_round_trip_and_corruption() {
        let sb = Superblock {
            pool_uuid: [1; 16],
            lun_uuid: [2; 16],
            lun_index: 3,
            layout: Layout::compute(64 << 20, 4096, 1 << 20).expect("fits"),
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
}
