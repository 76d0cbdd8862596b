//! The UNMAP parameter list (SBC-3 5.28.2): an 8-byte header and 16-byte block
//! descriptors (LBA, block count). The list is checked whole before anything is unmapped,
//! so a bad descriptor leaves the volume untouched; then the executor walks the descriptors
//! one engine TRIM request at a time (each cut to `SCSI_MAX_ZEROING_REQUEST_BYTES`).

use super::geometry::Geometry;
use super::sense::{self, Sense};

/// Descriptor `index` of an UNMAP parameter list: (lba, blocks), or None past the last.
pub fn descriptor(list: &[u8], index: usize) -> Option<(u64, u64)> {
    let count = descriptor_count(list);
    if index >= count {
        return None;
    }
    let at = 8 + 16 * index;
    let d = list.get(at..at + 16)?;
    let lba = u64::from_be_bytes(d[0..8].try_into().ok()?);
    let blocks = u64::from(u32::from_be_bytes(d[8..12].try_into().ok()?));
    Some((lba, blocks))
}

pub fn descriptor_count(list: &[u8]) -> usize {
    if list.len() < 8 {
        return 0;
    }
    let declared = usize::from(u16::from_be_bytes([list[2], list[3]]));
    declared.min(list.len() - 8) / 16
}

/// Checks an UNMAP parameter list (SBC-3 5.28.2) before anything is unmapped.
pub fn check(list: &[u8], geometry: &Geometry) -> Result<(), Sense> {
    if list.len() < 8 {
        return Err(sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let data_length = usize::from(u16::from_be_bytes([list[0], list[1]]));
    let descriptor_length = usize::from(u16::from_be_bytes([list[2], list[3]]));
    if data_length + 2 > list.len() && data_length != 0 {
        return Err(Sense::invalid_field_in_parameter_list(0, None));
    }
    if descriptor_length > list.len() - 8 {
        return Err(Sense::invalid_field_in_parameter_list(2, None));
    }
    let count = descriptor_length / 16;
    if count > geometry.max_unmap_descriptors() as usize {
        return Err(Sense::invalid_field_in_parameter_list(2, None));
    }
    for index in 0..count {
        let Some((lba, blocks)) = descriptor(list, index) else {
            break;
        };
        if !geometry.in_range(lba, blocks) {
            return Err(sense::LBA_OUT_OF_RANGE);
        }
        if blocks > u64::from(geometry.max_unmap_blocks()) {
            return Err(Sense::invalid_field_in_parameter_list(
                (8 + 16 * index + 8) as u16,
                None,
            ));
        }
    }
    Ok(())
}
