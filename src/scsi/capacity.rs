//! READ CAPACITY(10) and (16) parameter data (SBC-3 5.15, 5.16).

use super::geometry::Geometry;

/// READ CAPACITY(10): the last LBA (FFFFFFFFh when it does not fit: the initiator must use
/// READ CAPACITY(16)) and the block length.
pub fn read_capacity_10(geometry: &Geometry, out: &mut Vec<u8>) {
    out.clear();
    let last = geometry.capacity_blocks.saturating_sub(1);
    let last = u32::try_from(last).unwrap_or(u32::MAX);
    out.extend_from_slice(&last.to_be_bytes());
    out.extend_from_slice(&geometry.block_bytes.to_be_bytes());
}

/// READ CAPACITY(16): last LBA, block length, physical block exponent, and for thin
/// volumes LBPME (logical block provisioning management: UNMAP works) and LBPRZ (unmapped
/// blocks read zeroes).
pub fn read_capacity_16(geometry: &Geometry, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&geometry.capacity_blocks.saturating_sub(1).to_be_bytes());
    out.extend_from_slice(&geometry.block_bytes.to_be_bytes());
    out.push(0); // no protection information
    out.push(geometry.physical_exponent & 0x0F);
    out.push(if geometry.thin { 0x80 | 0x40 } else { 0 });
    out.push(0);
    out.resize(32, 0);
}
