//! CDB decoding: the bytes of a command descriptor block into a [`Command`], or the sense
//! that refuses it. Pure, allocation-free, and total: any byte string a host can send gives
//! a command or an error, never a panic (the fuzz target `scsi_cdb` holds it to that).
//!
//! Decoding checks what a CDB alone can tell: the opcode, the CDB's length, fields this
//! layer does not implement (protection information, NACA, third-party reservations,
//! obsolete bits that must be zero) and impossible combinations. What needs the logical
//! unit (capacity, block size, reservations) is checked when the command runs.

use super::opcodes as op;
use super::sense::{self, Sense};

/// A decoded command. Block counts are in logical blocks; lengths in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        descriptor_format: bool,
        allocation_length: u32,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        allocation_length: u32,
    },
    ReadCapacity10,
    ReadCapacity16 {
        allocation_length: u32,
    },
    Read {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    Write {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    /// VERIFY: `byte_check` 0 checks the medium only; 1 compares with the data-out.
    Verify {
        lba: u64,
        blocks: u32,
        byte_check: bool,
    },
    WriteAndVerify {
        lba: u64,
        blocks: u32,
        byte_check: bool,
    },
    CompareAndWrite {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    /// ORWRITE(16): the blocks become their OR with the Data-Out, atomically (the same
    /// interlock as COMPARE AND WRITE).
    OrWrite {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    SynchronizeCache {
        lba: u64,
        blocks: u32,
    },
    /// PRE-FETCH: sds has no cache to load, so only the range is checked.
    PreFetch {
        lba: u64,
        blocks: u32,
    },
    /// START STOP UNIT without LOEJ (a non-removable medium cannot be loaded or ejected):
    /// nothing to do.
    StartStopUnit,
    GetLbaStatus {
        lba: u64,
        allocation_length: u32,
    },
    /// READ DEFECT DATA(10)/(12): a volume has no defect list; the header echoes the
    /// requested lists and format with a length of zero.
    ReadDefectData {
        twelve: bool,
        /// REQ_PLIST, REQ_GLIST and the DEFECT LIST FORMAT as the CDB had them.
        lists_and_format: u8,
        allocation_length: u32,
    },
    WriteSame {
        lba: u64,
        blocks: u32,
        unmap: bool,
        /// No data-out: the block is zeroes (WRITE SAME(16) NDOB).
        no_data_out: bool,
    },
    Unmap {
        parameter_list_length: u32,
    },
    ModeSense {
        ten: bool,
        disable_block_descriptors: bool,
        long_lba: bool,
        page_control: u8,
        page: u8,
        subpage: u8,
        allocation_length: u32,
    },
    ModeSelect {
        ten: bool,
        page_format: bool,
        save_pages: bool,
        parameter_list_length: u32,
    },
    ReportLuns {
        select_report: u8,
        allocation_length: u32,
    },
    ReportSupportedOperationCodes {
        rctd: bool,
        options: u8,
        opcode: u8,
        service_action: u16,
        allocation_length: u32,
    },
    /// RESERVE(6)/(10): an SPC-2 reservation of the whole logical unit.
    Reserve,
    Release,
    PersistentReserveIn {
        service_action: u8,
        allocation_length: u32,
    },
    PersistentReserveOut {
        service_action: u8,
        scope: u8,
        pr_type: u8,
        parameter_list_length: u32,
    },
}

/// The length of a CDB with this opcode, from its group code (SPC-4 4.2.5.1); `None` for
/// the groups without a fixed length (variable length, reserved, vendor specific).
pub fn cdb_length(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Refuses a set (protection-information) field in bits 7..5 of byte 1.
fn no_protection(cdb: &[u8]) -> Result<(), Sense> {
    if cdb[1] & 0xE0 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(7)));
    }
    Ok(())
}

/// Decodes `cdb` (as long as the transport's CDB field, e.g. 16 bytes for iSCSI without an
/// extended-CDB AHS; bytes past the command's length are ignored).
pub fn decode(cdb: &[u8]) -> Result<Command, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(sense::INVALID_COMMAND_OPERATION_CODE);
    };
    let Some(length) = cdb_length(opcode) else {
        return Err(sense::INVALID_COMMAND_OPERATION_CODE);
    };
    if cdb.len() < length {
        return Err(sense::INVALID_COMMAND_OPERATION_CODE);
    }
    let cdb = &cdb[..length];
    // CONTROL: NACA (bit 2) asks for auto contingent allegiance, which this layer does not
    // implement (INQUIRY NORMACA is 0), so SAM-5 5.9.1.2 wants it refused.
    if cdb[length - 1] & 0x04 != 0 {
        return Err(Sense::invalid_field_in_cdb(length as u16 - 1, Some(2)));
    }
    let command = match opcode {
        op::TEST_UNIT_READY => Command::TestUnitReady,
        op::REQUEST_SENSE => Command::RequestSense {
            descriptor_format: cdb[1] & 0x01 != 0,
            allocation_length: u32::from(cdb[4]),
        },
        op::INQUIRY => {
            if cdb[1] & 0x02 != 0 {
                // CMDDT is obsolete and must be refused.
                return Err(Sense::invalid_field_in_cdb(1, Some(1)));
            }
            let evpd = cdb[1] & 0x01 != 0;
            if !evpd && cdb[2] != 0 {
                return Err(Sense::invalid_field_in_cdb(2, None));
            }
            Command::Inquiry {
                evpd,
                page: cdb[2],
                allocation_length: u32::from(be16(cdb, 3)),
            }
        }
        op::READ_CAPACITY_10 => {
            // PMI is obsolete in SBC-3: with it clear the LBA must be zero.
            if cdb[8] & 0x01 == 0 && be32(cdb, 2) != 0 {
                return Err(Sense::invalid_field_in_cdb(2, None));
            }
            Command::ReadCapacity10
        }
        op::SERVICE_ACTION_IN_16 => match cdb[1] & 0x1F {
            op::SA_READ_CAPACITY_16 => {
                if cdb[14] & 0x01 == 0 && be64(cdb, 2) != 0 {
                    return Err(Sense::invalid_field_in_cdb(2, None));
                }
                Command::ReadCapacity16 {
                    allocation_length: be32(cdb, 10),
                }
            }
            op::SA_GET_LBA_STATUS => Command::GetLbaStatus {
                lba: be64(cdb, 2),
                allocation_length: be32(cdb, 10),
            },
            _ => return Err(Sense::invalid_field_in_cdb(1, Some(4))),
        },
        op::START_STOP_UNIT => {
            if cdb[4] & 0x02 != 0 {
                return Err(Sense::invalid_field_in_cdb(4, Some(1)));
            }
            Command::StartStopUnit
        }
        op::READ_DEFECT_DATA_10 => Command::ReadDefectData {
            twelve: false,
            lists_and_format: cdb[2] & 0x1F,
            allocation_length: u32::from(be16(cdb, 7)),
        },
        op::READ_DEFECT_DATA_12 => Command::ReadDefectData {
            twelve: true,
            lists_and_format: cdb[1] & 0x1F,
            allocation_length: be32(cdb, 6),
        },
        op::PRE_FETCH_10 => Command::PreFetch {
            lba: u64::from(be32(cdb, 2)),
            blocks: u32::from(be16(cdb, 7)),
        },
        op::PRE_FETCH_16 => Command::PreFetch {
            lba: be64(cdb, 2),
            blocks: be32(cdb, 10),
        },
        op::READ_6 | op::WRITE_6 => {
            let lba = u64::from(be32(cdb, 0) & 0x001F_FFFF);
            // A transfer length of 0 means 256 blocks in the 6-byte commands.
            let blocks = match cdb[4] {
                0 => 256,
                n => u32::from(n),
            };
            if opcode == op::READ_6 {
                Command::Read {
                    lba,
                    blocks,
                    fua: false,
                }
            } else {
                Command::Write {
                    lba,
                    blocks,
                    fua: false,
                }
            }
        }
        op::READ_10 | op::WRITE_10 | op::READ_12 | op::WRITE_12 | op::READ_16 | op::WRITE_16 => {
            no_protection(cdb)?;
            let (lba, blocks) = match opcode {
                op::READ_10 | op::WRITE_10 => (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7))),
                op::READ_12 | op::WRITE_12 => (u64::from(be32(cdb, 2)), be32(cdb, 6)),
                _ => (be64(cdb, 2), be32(cdb, 10)),
            };
            // DPO (bit 4) is a cache hint sds has no cache to apply to: accepted, ignored.
            let fua = cdb[1] & 0x08 != 0;
            if matches!(opcode, op::READ_10 | op::READ_12 | op::READ_16) {
                Command::Read { lba, blocks, fua }
            } else {
                Command::Write { lba, blocks, fua }
            }
        }
        op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::WRITE_AND_VERIFY_10
        | op::WRITE_AND_VERIFY_12
        | op::WRITE_AND_VERIFY_16 => {
            no_protection(cdb)?;
            let (lba, blocks) = match opcode {
                op::VERIFY_10 | op::WRITE_AND_VERIFY_10 => {
                    (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7)))
                }
                op::VERIFY_12 | op::WRITE_AND_VERIFY_12 => (u64::from(be32(cdb, 2)), be32(cdb, 6)),
                _ => (be64(cdb, 2), be32(cdb, 10)),
            };
            // BYTCHK (bits 2..1): 00b medium only, 01b compare; 10b reserved; 11b (one
            // block compared with every block) is not implemented.
            let byte_check = match (cdb[1] >> 1) & 0x03 {
                0 => false,
                1 => true,
                _ => return Err(Sense::invalid_field_in_cdb(1, Some(2))),
            };
            if matches!(opcode, op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16) {
                Command::Verify {
                    lba,
                    blocks,
                    byte_check,
                }
            } else {
                Command::WriteAndVerify {
                    lba,
                    blocks,
                    byte_check,
                }
            }
        }
        op::COMPARE_AND_WRITE => {
            no_protection(cdb)?;
            Command::CompareAndWrite {
                lba: be64(cdb, 2),
                blocks: u32::from(cdb[13]),
                fua: cdb[1] & 0x08 != 0,
            }
        }
        op::ORWRITE_16 => {
            no_protection(cdb)?;
            Command::OrWrite {
                lba: be64(cdb, 2),
                blocks: be32(cdb, 10),
                fua: cdb[1] & 0x08 != 0,
            }
        }
        op::SYNCHRONIZE_CACHE_10 => Command::SynchronizeCache {
            lba: u64::from(be32(cdb, 2)),
            blocks: u32::from(be16(cdb, 7)),
        },
        op::SYNCHRONIZE_CACHE_16 => Command::SynchronizeCache {
            lba: be64(cdb, 2),
            blocks: be32(cdb, 10),
        },
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
            no_protection(cdb)?;
            // ANCHOR (bit 4) needs anchored-LBA support (VPD B2 ANC_SUP 0).
            if cdb[1] & 0x10 != 0 {
                return Err(Sense::invalid_field_in_cdb(1, Some(4)));
            }
            let unmap = cdb[1] & 0x08 != 0;
            let (lba, blocks, no_data_out) = if opcode == op::WRITE_SAME_10 {
                (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7)), false)
            } else {
                (be64(cdb, 2), be32(cdb, 10), cdb[1] & 0x01 != 0)
            };
            Command::WriteSame {
                lba,
                blocks,
                unmap,
                no_data_out,
            }
        }
        op::UNMAP => {
            if cdb[1] & 0x01 != 0 {
                return Err(Sense::invalid_field_in_cdb(1, Some(0)));
            }
            Command::Unmap {
                parameter_list_length: u32::from(be16(cdb, 7)),
            }
        }
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
            let ten = opcode == op::MODE_SENSE_10;
            Command::ModeSense {
                ten,
                disable_block_descriptors: cdb[1] & 0x08 != 0,
                long_lba: ten && cdb[1] & 0x10 != 0,
                page_control: cdb[2] >> 6,
                page: cdb[2] & 0x3F,
                subpage: cdb[3],
                allocation_length: if ten {
                    u32::from(be16(cdb, 7))
                } else {
                    u32::from(cdb[4])
                },
            }
        }
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
            let ten = opcode == op::MODE_SELECT_10;
            Command::ModeSelect {
                ten,
                page_format: cdb[1] & 0x10 != 0,
                save_pages: cdb[1] & 0x01 != 0,
                parameter_list_length: if ten {
                    u32::from(be16(cdb, 7))
                } else {
                    u32::from(cdb[4])
                },
            }
        }
        op::REPORT_LUNS => Command::ReportLuns {
            select_report: cdb[2],
            allocation_length: be32(cdb, 6),
        },
        op::MAINTENANCE_IN => match cdb[1] & 0x1F {
            op::SA_REPORT_SUPPORTED_OPERATION_CODES => {
                let options = cdb[2] & 0x07;
                if options > 3 {
                    return Err(Sense::invalid_field_in_cdb(2, Some(2)));
                }
                Command::ReportSupportedOperationCodes {
                    rctd: cdb[2] & 0x80 != 0,
                    options,
                    opcode: cdb[3],
                    service_action: be16(cdb, 4),
                    allocation_length: be32(cdb, 6),
                }
            }
            _ => return Err(Sense::invalid_field_in_cdb(1, Some(4))),
        },
        op::RESERVE_6 | op::RELEASE_6 | op::RESERVE_10 | op::RELEASE_10 => {
            // Third-party reservations (and the long IDs they use) are not implemented.
            if cdb[1] & 0x12 != 0 && (opcode == op::RESERVE_10 || opcode == op::RELEASE_10) {
                return Err(Sense::invalid_field_in_cdb(1, Some(4)));
            }
            if cdb[1] & 0x01 != 0 {
                // Extents (obsolete) are not implemented.
                return Err(Sense::invalid_field_in_cdb(1, Some(0)));
            }
            if opcode == op::RESERVE_6 || opcode == op::RESERVE_10 {
                Command::Reserve
            } else {
                Command::Release
            }
        }
        op::PERSISTENT_RESERVE_IN => {
            let service_action = cdb[1] & 0x1F;
            if service_action > 3 {
                return Err(Sense::invalid_field_in_cdb(1, Some(4)));
            }
            Command::PersistentReserveIn {
                service_action,
                allocation_length: u32::from(be16(cdb, 7)),
            }
        }
        op::PERSISTENT_RESERVE_OUT => {
            let service_action = cdb[1] & 0x1F;
            if service_action > 6 {
                return Err(Sense::invalid_field_in_cdb(1, Some(4)));
            }
            Command::PersistentReserveOut {
                service_action,
                scope: cdb[2] >> 4,
                pr_type: cdb[2] & 0x0F,
                parameter_list_length: be32(cdb, 5),
            }
        }
        _ => return Err(sense::INVALID_COMMAND_OPERATION_CODE),
    };
    Ok(command)
}

#[cfg(test)]
#[path = "cdb_tests.rs"]
mod tests;
