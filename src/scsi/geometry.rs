//! The volume as the block commands see it: logical block size, capacity in blocks, the
//! physical block (the largest LUN block under it), thin or fully provisioned, and the
//! limits the block-limits page reports. Read from the volume when a command needs it (its
//! size is one atomic load, so a resize shows at once).

use crate::constants::{
    MAX_IO_BYTES, SCSI_MAX_COMPARE_AND_WRITE_BYTES, SCSI_MAX_UNMAP_BLOCKS,
    SCSI_MAX_UNMAP_DESCRIPTORS,
};
use crate::volume::Volume;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub block_bytes: u32,
    pub capacity_blocks: u64,
    /// log2(physical block / logical block): READ CAPACITY(16)'s LOGICAL BLOCKS PER
    /// PHYSICAL BLOCK EXPONENT.
    pub physical_exponent: u8,
    pub thin: bool,
    /// Blocks per extent: the granularity at which UNMAP gives space back.
    pub extent_blocks: u64,
}

impl Geometry {
    pub fn of(volume: &Volume) -> Self {
        let block_bytes = volume.block_size_bytes.max(1);
        let lun_block = volume.max_lun_block_bytes().max(block_bytes);
        Self {
            block_bytes,
            capacity_blocks: volume.size_bytes() / u64::from(block_bytes),
            physical_exponent: (lun_block / block_bytes).trailing_zeros() as u8,
            thin: volume.thin,
            extent_blocks: (volume.extent_bytes() / u64::from(block_bytes)).max(1),
        }
    }

    /// Largest READ or WRITE, in blocks (VPD B0 MAXIMUM TRANSFER LENGTH).
    pub fn max_transfer_blocks(&self) -> u32 {
        (MAX_IO_BYTES / self.block_bytes as usize) as u32
    }

    /// Largest COMPARE AND WRITE, in blocks (at most 255: the CDB's field is a byte).
    pub fn max_compare_and_write_blocks(&self) -> u32 {
        ((SCSI_MAX_COMPARE_AND_WRITE_BYTES / 2 / self.block_bytes as usize) as u32).min(255)
    }

    /// Largest WRITE SAME, in blocks (VPD B0 MAXIMUM WRITE SAME LENGTH): what one block
    /// request may cover, as for a READ or WRITE. Initiators cut longer ranges to it (Linux
    /// does), and libiscsi checks that a longer one is refused.
    pub fn max_write_same_blocks(&self) -> u32 {
        self.max_transfer_blocks()
    }

    pub fn max_unmap_blocks(&self) -> u32 {
        SCSI_MAX_UNMAP_BLOCKS as u32
    }

    pub fn max_unmap_descriptors(&self) -> u32 {
        SCSI_MAX_UNMAP_DESCRIPTORS as u32
    }

    /// Whether `[lba, lba + blocks)` lies inside the volume.
    pub fn in_range(&self, lba: u64, blocks: u64) -> bool {
        lba.checked_add(blocks)
            .is_some_and(|end| end <= self.capacity_blocks)
            && lba <= self.capacity_blocks
    }
}
