//! Operation codes (SPC-4, SBC-3) this layer knows, and what REPORT SUPPORTED OPERATION
//! CODES says of each: its CDB length and the CDB usage data (which bits of each CDB byte
//! the command looks at).
//!
//! Adding a command: its opcode here, its entry in [`SUPPORTED`], its decoding in
//! `cdb.rs`, its execution in `scsi_lun/execute.rs` (and whether reservations let it through in
//! `reservations.rs`).

pub const TEST_UNIT_READY: u8 = 0x00;
pub const REQUEST_SENSE: u8 = 0x03;
pub const READ_6: u8 = 0x08;
pub const WRITE_6: u8 = 0x0A;
pub const INQUIRY: u8 = 0x12;
pub const MODE_SELECT_6: u8 = 0x15;
pub const START_STOP_UNIT: u8 = 0x1B;
pub const RESERVE_6: u8 = 0x16;
pub const RELEASE_6: u8 = 0x17;
pub const MODE_SENSE_6: u8 = 0x1A;
pub const READ_CAPACITY_10: u8 = 0x25;
pub const READ_10: u8 = 0x28;
pub const WRITE_10: u8 = 0x2A;
pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
pub const VERIFY_10: u8 = 0x2F;
pub const PRE_FETCH_10: u8 = 0x34;
pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
pub const READ_DEFECT_DATA_10: u8 = 0x37;
pub const WRITE_SAME_10: u8 = 0x41;
pub const UNMAP: u8 = 0x42;
pub const MODE_SELECT_10: u8 = 0x55;
pub const RESERVE_10: u8 = 0x56;
pub const RELEASE_10: u8 = 0x57;
pub const MODE_SENSE_10: u8 = 0x5A;
pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
pub const READ_16: u8 = 0x88;
pub const COMPARE_AND_WRITE: u8 = 0x89;
pub const WRITE_16: u8 = 0x8A;
pub const ORWRITE_16: u8 = 0x8B;
pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
pub const VERIFY_16: u8 = 0x8F;
pub const PRE_FETCH_16: u8 = 0x90;
pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
pub const WRITE_SAME_16: u8 = 0x93;
/// SERVICE ACTION IN(16): READ CAPACITY(16) is its service action 10h.
pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
pub const SA_READ_CAPACITY_16: u8 = 0x10;
pub const SA_GET_LBA_STATUS: u8 = 0x12;
pub const REPORT_LUNS: u8 = 0xA0;
/// MAINTENANCE IN: REPORT SUPPORTED OPERATION CODES is its service action 0Ch.
pub const MAINTENANCE_IN: u8 = 0xA3;
pub const SA_REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0C;
pub const READ_12: u8 = 0xA8;
pub const WRITE_12: u8 = 0xAA;
pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
pub const VERIFY_12: u8 = 0xAF;
pub const READ_DEFECT_DATA_12: u8 = 0xB7;

/// One supported command: opcode, service action (if the opcode has them) and the CDB
/// usage data (its first byte is the opcode; its length is the CDB's).
pub struct Supported {
    pub opcode: u8,
    pub service_action: Option<u16>,
    pub usage: &'static [u8],
}

/// Every command this layer executes, in opcode order.
pub const SUPPORTED: &[Supported] = &[
    s(TEST_UNIT_READY, None, &[0x00, 0, 0, 0, 0, 0x07]),
    s(REQUEST_SENSE, None, &[0x03, 0x01, 0, 0, 0xFF, 0x07]),
    s(READ_6, None, &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x07]),
    s(WRITE_6, None, &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0x07]),
    s(INQUIRY, None, &[0x12, 0x01, 0xFF, 0xFF, 0xFF, 0x07]),
    s(MODE_SELECT_6, None, &[0x15, 0x11, 0, 0, 0xFF, 0x07]),
    s(RESERVE_6, None, &[0x16, 0, 0, 0, 0, 0x07]),
    s(RELEASE_6, None, &[0x17, 0, 0, 0, 0, 0x07]),
    s(MODE_SENSE_6, None, &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x07]),
    s(START_STOP_UNIT, None, &[0x1B, 0x01, 0, 0x0F, 0xF7, 0x07]),
    s(
        READ_CAPACITY_10,
        None,
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0x07],
    ),
    s(
        READ_10,
        None,
        &[0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x07],
    ),
    s(
        WRITE_10,
        None,
        &[0x2A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x07],
    ),
    s(
        WRITE_AND_VERIFY_10,
        None,
        &[0x2E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x07],
    ),
    s(
        VERIFY_10,
        None,
        &[0x2F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x07],
    ),
    s(
        PRE_FETCH_10,
        None,
        &[0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x07],
    ),
    s(
        SYNCHRONIZE_CACHE_10,
        None,
        &[0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x07],
    ),
    s(
        READ_DEFECT_DATA_10,
        None,
        &[0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0x07],
    ),
    s(
        WRITE_SAME_10,
        None,
        &[0x41, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x07],
    ),
    s(UNMAP, None, &[0x42, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07]),
    s(
        MODE_SELECT_10,
        None,
        &[0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07],
    ),
    s(RESERVE_10, None, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0x07]),
    s(RELEASE_10, None, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0x07]),
    s(
        MODE_SENSE_10,
        None,
        &[0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x07],
    ),
    s(PERSISTENT_RESERVE_IN, Some(0x00), PR_IN_USAGE),
    s(PERSISTENT_RESERVE_IN, Some(0x01), PR_IN_USAGE),
    s(PERSISTENT_RESERVE_IN, Some(0x02), PR_IN_USAGE),
    s(PERSISTENT_RESERVE_IN, Some(0x03), PR_IN_USAGE),
    s(PERSISTENT_RESERVE_OUT, Some(0x00), PR_OUT_USAGE),
    s(PERSISTENT_RESERVE_OUT, Some(0x01), PR_OUT_USAGE),
    s(PERSISTENT_RESERVE_OUT, Some(0x02), PR_OUT_USAGE),
    s(PERSISTENT_RESERVE_OUT, Some(0x03), PR_OUT_USAGE),
    s(PERSISTENT_RESERVE_OUT, Some(0x04), PR_OUT_USAGE),
    s(PERSISTENT_RESERVE_OUT, Some(0x05), PR_OUT_USAGE),
    s(PERSISTENT_RESERVE_OUT, Some(0x06), PR_OUT_USAGE),
    s(READ_16, None, RW16_USAGE),
    s(
        COMPARE_AND_WRITE,
        None,
        &[
            0x89, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0, 0x07,
        ],
    ),
    s(WRITE_16, None, W16_USAGE),
    s(
        ORWRITE_16,
        None,
        &[
            0x8B, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0,
            0x07,
        ],
    ),
    s(
        WRITE_AND_VERIFY_16,
        None,
        &[
            0x8E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0,
            0x07,
        ],
    ),
    s(
        VERIFY_16,
        None,
        &[
            0x8F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0,
            0x07,
        ],
    ),
    s(
        PRE_FETCH_16,
        None,
        &[
            0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x3F, 0x07,
        ],
    ),
    s(
        SYNCHRONIZE_CACHE_16,
        None,
        &[
            0x91, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0,
            0x07,
        ],
    ),
    s(
        WRITE_SAME_16,
        None,
        &[
            0x93, 0x09, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0,
            0x07,
        ],
    ),
    s(
        SERVICE_ACTION_IN_16,
        Some(SA_READ_CAPACITY_16 as u16),
        &[
            0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07,
        ],
    ),
    s(
        SERVICE_ACTION_IN_16,
        Some(SA_GET_LBA_STATUS as u16),
        &[
            0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0,
            0x07,
        ],
    ),
    s(
        REPORT_LUNS,
        None,
        &[0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07],
    ),
    s(
        MAINTENANCE_IN,
        Some(SA_REPORT_SUPPORTED_OPERATION_CODES as u16),
        &[
            0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07,
        ],
    ),
    s(
        READ_12,
        None,
        &[
            0xA8, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07,
        ],
    ),
    s(
        WRITE_12,
        None,
        &[
            0xAA, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07,
        ],
    ),
    s(
        WRITE_AND_VERIFY_12,
        None,
        &[
            0xAE, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07,
        ],
    ),
    s(
        VERIFY_12,
        None,
        &[
            0xAF, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07,
        ],
    ),
    s(
        READ_DEFECT_DATA_12,
        None,
        &[
            0xB7, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07,
        ],
    ),
];

const PR_IN_USAGE: &[u8] = &[0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07];
const PR_OUT_USAGE: &[u8] = &[0x5F, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07];
const W16_USAGE: &[u8] = &[
    0x8A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07,
];
const RW16_USAGE: &[u8] = &[
    0x88, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07,
];

const fn s(opcode: u8, service_action: Option<u16>, usage: &'static [u8]) -> Supported {
    Supported {
        opcode,
        service_action,
        usage,
    }
}

/// Whether `opcode` has service actions (REPORT SUPPORTED OPERATION CODES reporting option
/// 1 must refuse those, option 2 must refuse the others).
pub fn has_service_actions(opcode: u8) -> bool {
    SUPPORTED
        .iter()
        .any(|c| c.opcode == opcode && c.service_action.is_some())
}

/// The entry for `opcode` (and `service_action`, for opcodes that have them).
pub fn find(opcode: u8, service_action: Option<u16>) -> Option<&'static Supported> {
    SUPPORTED
        .iter()
        .find(|c| c.opcode == opcode && c.service_action == service_action)
}

/// Whether the unit executes `opcode`: UNMAP only on a thin volume (a fully provisioned
/// one has nothing to deallocate, and VPD B2 says so: LBPU clear).
pub fn executes(opcode: u8, thin: bool) -> bool {
    opcode != UNMAP || thin
}

/// REPORT SUPPORTED OPERATION CODES parameter data (SPC-4 6.35) into `out`, for a unit
/// that is `thin` or not.
/// `options` 0: all commands; 1: `opcode` (which must have no service actions); 2:
/// `opcode` and `service_action` (it must have them); 3: either, as the opcode has them.
pub fn report(
    rctd: bool,
    options: u8,
    opcode: u8,
    service_action: u16,
    thin: bool,
    out: &mut Vec<u8>,
) -> Result<(), super::sense::Sense> {
    use super::sense::Sense;
    // The command timeouts descriptor (all zero: no timeouts reported).
    const TIMEOUTS: [u8; 12] = [0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    out.clear();
    if options == 0 {
        out.extend_from_slice(&[0; 4]);
        for c in SUPPORTED.iter().filter(|c| executes(c.opcode, thin)) {
            out.push(c.opcode);
            out.push(0);
            out.extend_from_slice(&c.service_action.unwrap_or(0).to_be_bytes());
            out.push(0);
            out.push(if rctd { 0x02 } else { 0 } | u8::from(c.service_action.is_some()));
            out.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
            if rctd {
                out.extend_from_slice(&TIMEOUTS);
            }
        }
        let len = (out.len() - 4) as u32;
        out[0..4].copy_from_slice(&len.to_be_bytes());
        return Ok(());
    }
    let with_actions = has_service_actions(opcode);
    let action = match options {
        1 if with_actions => return Err(Sense::invalid_field_in_cdb(2, Some(2))),
        1 => None,
        2 if !with_actions => return Err(Sense::invalid_field_in_cdb(2, Some(2))),
        2 => Some(service_action),
        _ => with_actions.then_some(service_action),
    };
    match find(opcode, action).filter(|c| executes(c.opcode, thin)) {
        Some(c) => {
            out.push(0);
            // CTDP (with timeouts), SUPPORT 011b: supported as the standard says.
            out.push(if rctd { 0x80 } else { 0 } | 0x03);
            out.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
            out.extend_from_slice(c.usage);
            if rctd {
                out.extend_from_slice(&TIMEOUTS);
            }
        }
        None => {
            // SUPPORT 001b: not supported; no usage data.
            out.extend_from_slice(&[0, 0x01, 0, 0]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_data_starts_with_the_opcode_and_has_a_cdb_length() {
        for c in SUPPORTED {
            assert_eq!(c.usage[0], c.opcode, "{:#x}", c.opcode);
            assert_eq!(
                Some(c.usage.len()),
                crate::scsi::cdb::cdb_length(c.opcode),
                "{:#x}: {}",
                c.opcode,
                c.usage.len()
            );
        }
    }
}
