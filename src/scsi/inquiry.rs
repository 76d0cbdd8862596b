//! INQUIRY data (SPC-4 6.6, 7.8): the standard data and the vital product data pages
//! 00h (supported pages), 80h (unit serial number), 83h (device identification), B0h
//! (block limits), B1h (block device characteristics), B2h (logical block provisioning).
//!
//! Adding a page: its code in [`SUPPORTED_PAGES`] (in order) and a builder in
//! [`vpd_page`].

use super::geometry::Geometry;
use super::nexus::{LunIdentity, Nexus};
use super::sense::Sense;

pub const PAGE_SUPPORTED: u8 = 0x00;
pub const PAGE_UNIT_SERIAL: u8 = 0x80;
pub const PAGE_DEVICE_IDENTIFICATION: u8 = 0x83;
pub const PAGE_BLOCK_LIMITS: u8 = 0xB0;
pub const PAGE_BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
pub const PAGE_LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;

pub const SUPPORTED_PAGES: [u8; 6] = [
    PAGE_SUPPORTED,
    PAGE_UNIT_SERIAL,
    PAGE_DEVICE_IDENTIFICATION,
    PAGE_BLOCK_LIMITS,
    PAGE_BLOCK_DEVICE_CHARACTERISTICS,
    PAGE_LOGICAL_BLOCK_PROVISIONING,
];

/// Peripheral device type: direct access block device.
const DEVICE_TYPE_DISK: u8 = 0x00;

fn ascii_field(out: &mut Vec<u8>, text: &str, len: usize) {
    let mut n = 0;
    for b in text.bytes().filter(|b| (0x20..0x7F).contains(b)).take(len) {
        out.push(b);
        n += 1;
    }
    out.resize(out.len() + (len - n), b' ');
}

/// Standard INQUIRY data (SPC-4 6.6.2) with `peripheral` as byte 0 (qualifier and type).
pub fn standard(identity: &LunIdentity, peripheral: u8, out: &mut Vec<u8>) {
    out.clear();
    out.push(peripheral);
    out.push(0); // RMB 0
    out.push(0x06); // VERSION: SPC-4
    out.push(0x12); // HISUP 1, RESPONSE DATA FORMAT 2
    out.push(0); // ADDITIONAL LENGTH, below
    out.push(0); // SCCS, ACC, TPGS 0, 3PC 0, PROTECT 0
    out.push(0);
    out.push(0x02); // CMDQUE
    ascii_field(out, &identity.vendor, 8);
    ascii_field(out, &identity.product, 16);
    ascii_field(out, &identity.revision, 4);
    // Vendor specific (36..56), CLOCKING/QAS/IUS (56), reserved (57).
    out.resize(58, 0);
    // Version descriptors: SAM-5, SPC-4, SBC-3.
    for descriptor in [0x00A0u16, 0x0460, 0x04C0] {
        out.extend_from_slice(&descriptor.to_be_bytes());
    }
    out.resize(74, 0);
    out[4] = (out.len() - 5) as u8;
}

/// The standard data of a LUN the initiator has no logical unit at (SPC-4 6.6.2: qualifier
/// 011b, device type 1Fh).
pub fn standard_no_unit(out: &mut Vec<u8>) {
    out.clear();
    out.push(0x7F);
    out.extend_from_slice(&[0, 0x06, 0x12, 31, 0, 0, 0]);
    out.resize(36, b' ');
}

fn designator(out: &mut Vec<u8>, code_set: u8, association_type: u8, piv_proto: u8, id: &[u8]) {
    out.push(piv_proto << 4 | code_set);
    out.push(association_type);
    out.push(0);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
}

fn name_string(text: &str) -> Vec<u8> {
    // SCSI name string: UTF-8, null-terminated, padded to a multiple of 4, at most 256.
    let bytes = &text.as_bytes()[..text.len().min(251)];
    let mut v = bytes.to_vec();
    v.push(0);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// VPD page `page`, or INVALID FIELD IN CDB for a page this layer does not have.
pub fn vpd_page(
    page: u8,
    identity: &LunIdentity,
    nexus: &Nexus,
    geometry: &Geometry,
    out: &mut Vec<u8>,
) -> Result<(), Sense> {
    out.clear();
    out.extend_from_slice(&[DEVICE_TYPE_DISK, page, 0, 0]);
    match page {
        PAGE_SUPPORTED => out.extend_from_slice(&SUPPORTED_PAGES),
        PAGE_UNIT_SERIAL => out.extend_from_slice(&identity.serial()),
        PAGE_DEVICE_IDENTIFICATION => {
            let proto = 0x80 | (identity.protocol_identifier & 0x0F); // PIV 1
                                                                      // The logical unit: NAA (binary), T10 vendor ID (ASCII).
            designator(out, 1, 0x03, 0, &identity.naa());
            let mut t10 = Vec::with_capacity(40);
            ascii_field(&mut t10, &identity.vendor, 8);
            t10.extend_from_slice(&identity.serial());
            designator(out, 2, 0x01, 0, &t10);
            // The target port: relative port (binary), its name (UTF-8).
            let mut port = [0u8; 4];
            port[2..].copy_from_slice(&identity.relative_target_port.to_be_bytes());
            designator(out, 1, 0x10 | 0x04, proto >> 4, &port);
            designator(
                out,
                3,
                0x10 | 0x08,
                proto >> 4,
                &name_string(&nexus.target_port),
            );
            // The target device: its name.
            designator(
                out,
                3,
                0x20 | 0x08,
                proto >> 4,
                &name_string(&identity.target_name),
            );
        }
        PAGE_BLOCK_LIMITS => {
            out.resize(64, 0);
            out[4] = 0x01; // WSNZ: WRITE SAME with 0 blocks is refused.
            out[5] = geometry.max_compare_and_write_blocks() as u8;
            // OPTIMAL TRANSFER LENGTH GRANULARITY: the physical block.
            out[6..8].copy_from_slice(&(1u16 << geometry.physical_exponent).to_be_bytes());
            out[8..12].copy_from_slice(&geometry.max_transfer_blocks().to_be_bytes());
            out[12..16].copy_from_slice(&geometry.max_transfer_blocks().to_be_bytes());
            if geometry.thin {
                out[20..24].copy_from_slice(&geometry.max_unmap_blocks().to_be_bytes());
                out[24..28].copy_from_slice(&geometry.max_unmap_descriptors().to_be_bytes());
                let granularity = u32::try_from(geometry.extent_blocks).unwrap_or(u32::MAX);
                out[28..32].copy_from_slice(&granularity.to_be_bytes());
                // UGAVALID with alignment 0: extents start at LBA 0.
                out[32] = 0x80;
            }
            out[36..44].copy_from_slice(&u64::from(geometry.max_write_same_blocks()).to_be_bytes());
        }
        PAGE_BLOCK_DEVICE_CHARACTERISTICS => {
            out.resize(64, 0);
            out[4..6].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
        }
        PAGE_LOGICAL_BLOCK_PROVISIONING => {
            out.resize(8, 0);
            if geometry.thin {
                // LBPU, LBPWS, LBPWS10; LBPRZ (an unmapped block reads zeroes).
                out[5] = 0x80 | 0x40 | 0x20 | 0x04;
                out[6] = 0x02; // PROVISIONING TYPE: thin
            }
        }
        _ => return Err(Sense::invalid_field_in_cdb(2, None)),
    }
    let len = (out.len() - 4) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}
