//! GET LBA STATUS (SBC-3 5.6): which blocks from an LBA on are mapped and which are
//! deallocated (read as zeroes), from the volume's extent map. Consecutive extents in the
//! same state make one descriptor; the walk stops after `SCSI_MAX_LBA_STATUS_EXTENTS`
//! extents or as many descriptors as the allocation length holds, and the initiator asks
//! again from where the last descriptor ends.

use super::geometry::Geometry;
use crate::constants::SCSI_MAX_LBA_STATUS_EXTENTS;
use crate::volume::{Segment, Volume};

const MAPPED: u8 = 0;
const DEALLOCATED: u8 = 1;

/// The parameter data for `lba` (which the caller checked is below the capacity).
pub fn describe(
    volume: &Volume,
    geometry: &Geometry,
    lba: u64,
    allocation_length: u32,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&[0; 8]);
    let block = u64::from(geometry.block_bytes);
    let end = geometry.capacity_blocks * block;
    let max_descriptors = ((allocation_length as usize).saturating_sub(8) / 16).max(1);
    // A mirror's own map is empty: its healthy leg says what is mapped.
    let leg = volume
        .mirror
        .as_ref()
        .and_then(|m| m.healthy_leg().and_then(|p| m.leg_volume(p)));
    let volume = leg.as_deref().unwrap_or(volume);
    let map = volume.map();
    let mut at = lba * block;
    let mut run: Option<(u64, u64, u8)> = None; // (start, bytes, state)
    let mut descriptors = 0;
    let mut extents = 0;
    while at < end && extents < SCSI_MAX_LBA_STATUS_EXTENTS {
        let (len, state) = match volume.segment(map, at, end - at) {
            Segment::Unmapped { len_bytes, .. } => (len_bytes, DEALLOCATED),
            Segment::Mapped { len_bytes, .. } => (len_bytes, MAPPED),
        };
        extents += 1;
        match &mut run {
            Some((_, bytes, s)) if *s == state && (*bytes + len) / block <= u64::from(u32::MAX) => {
                *bytes += len
            }
            _ => {
                if let Some(done) = run.take() {
                    push(out, done, block);
                    descriptors += 1;
                    if descriptors == max_descriptors {
                        break;
                    }
                }
                run = Some((at, len, state));
            }
        }
        at += len;
    }
    if let Some(done) = run {
        if descriptors < max_descriptors {
            push(out, done, block);
        }
    }
    let len = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
}

fn push(out: &mut Vec<u8>, (start, bytes, state): (u64, u64, u8), block: u64) {
    out.extend_from_slice(&(start / block).to_be_bytes());
    let blocks = u32::try_from(bytes / block).unwrap_or(u32::MAX);
    out.extend_from_slice(&blocks.to_be_bytes());
    out.push(state);
    out.extend_from_slice(&[0; 3]);
}
