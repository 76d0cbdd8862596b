//! CDB decoding: every opcode's fields, the refused fields, and totality.

use super::*;
use crate::scsi::sense::Sense;

fn cdb16(bytes: &[u8]) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[..bytes.len()].copy_from_slice(bytes);
    cdb
}

#[test]
fn every_opcode_decodes_its_fields() {
    let cases: Vec<(Vec<u8>, Command)> = vec![
        (vec![0x00], Command::TestUnitReady),
        (
            vec![0x03, 0x01, 0, 0, 0xFC],
            Command::RequestSense {
                descriptor_format: true,
                allocation_length: 252,
            },
        ),
        (
            vec![0x12, 0x01, 0x83, 0x01, 0x00],
            Command::Inquiry {
                evpd: true,
                page: 0x83,
                allocation_length: 256,
            },
        ),
        (vec![0x25], Command::ReadCapacity10),
        (
            vec![0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32],
            Command::ReadCapacity16 {
                allocation_length: 32,
            },
        ),
        (
            vec![0x08, 0x1F, 0xFF, 0xFE, 0],
            Command::Read {
                lba: 0x1F_FFFE,
                blocks: 256,
                fua: false,
            },
        ),
        (
            vec![0x0A, 0, 0, 7, 3],
            Command::Write {
                lba: 7,
                blocks: 3,
                fua: false,
            },
        ),
        (
            vec![0x28, 0x18, 0, 0, 1, 0, 0, 0, 9],
            Command::Read {
                lba: 256,
                blocks: 9,
                fua: true,
            },
        ),
        (
            vec![0xAA, 0x08, 0, 0, 0, 5, 0, 1, 0, 0],
            Command::Write {
                lba: 5,
                blocks: 65536,
                fua: true,
            },
        ),
        (
            vec![0x88, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2],
            Command::Read {
                lba: 1 << 32,
                blocks: 2,
                fua: false,
            },
        ),
        (
            vec![0x2F, 0x02, 0, 0, 0, 1, 0, 0, 4],
            Command::Verify {
                lba: 1,
                blocks: 4,
                byte_check: true,
            },
        ),
        (
            vec![0x8E, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1],
            Command::WriteAndVerify {
                lba: 3,
                blocks: 1,
                byte_check: false,
            },
        ),
        (
            vec![0x89, 0x08, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1],
            Command::CompareAndWrite {
                lba: 9,
                blocks: 1,
                fua: true,
            },
        ),
        (
            vec![0x35, 0x02, 0, 0, 0, 4, 0, 0, 8],
            Command::SynchronizeCache { lba: 4, blocks: 8 },
        ),
        (
            vec![0x93, 0x09, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 5],
            Command::WriteSame {
                lba: 2,
                blocks: 5,
                unmap: true,
                no_data_out: true,
            },
        ),
        (
            vec![0x42, 0, 0, 0, 0, 0, 0, 0, 24],
            Command::Unmap {
                parameter_list_length: 24,
            },
        ),
        (
            vec![0x5A, 0x18, 0x48, 0, 0, 0, 0, 1, 0],
            Command::ModeSense {
                ten: true,
                disable_block_descriptors: true,
                long_lba: true,
                page_control: 1,
                page: 8,
                subpage: 0,
                allocation_length: 256,
            },
        ),
        (
            vec![0x15, 0x11, 0, 0, 20],
            Command::ModeSelect {
                ten: false,
                page_format: true,
                save_pages: true,
                parameter_list_length: 20,
            },
        ),
        (
            vec![0xA0, 0, 2, 0, 0, 0, 0, 0, 1, 0],
            Command::ReportLuns {
                select_report: 2,
                allocation_length: 256,
            },
        ),
        (
            vec![0xA3, 0x0C, 0x82, 0x5E, 0, 1, 0, 0, 2, 0],
            Command::ReportSupportedOperationCodes {
                rctd: true,
                options: 2,
                opcode: 0x5E,
                service_action: 1,
                allocation_length: 512,
            },
        ),
        (vec![0x16], Command::Reserve),
        (vec![0x57], Command::Release),
        (
            vec![0x5E, 0x03, 0, 0, 0, 0, 0, 0x10, 0],
            Command::PersistentReserveIn {
                service_action: 3,
                allocation_length: 4096,
            },
        ),
        (
            vec![0x5F, 0x01, 0x03, 0, 0, 0, 0, 0, 24],
            Command::PersistentReserveOut {
                service_action: 1,
                scope: 0,
                pr_type: 3,
                parameter_list_length: 24,
            },
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(decode(&cdb16(&bytes)), Ok(want), "{bytes:02x?}");
    }
}

#[test]
fn unsupported_fields_are_refused_with_a_pointer() {
    let refused: Vec<(Vec<u8>, Sense)> = vec![
        (vec![0x12, 0x02], Sense::invalid_field_in_cdb(1, Some(1))),
        (vec![0x12, 0x00, 0x80], Sense::invalid_field_in_cdb(2, None)),
        (
            vec![0x25, 0, 0, 0, 0, 1],
            Sense::invalid_field_in_cdb(2, None),
        ),
        (vec![0x9E, 0x11], Sense::invalid_field_in_cdb(1, Some(4))),
        (vec![0x2A, 0x40], Sense::invalid_field_in_cdb(1, Some(7))),
        (vec![0x8F, 0x04], Sense::invalid_field_in_cdb(1, Some(2))),
        (vec![0x89, 0x20], Sense::invalid_field_in_cdb(1, Some(7))),
        (vec![0x41, 0x10], Sense::invalid_field_in_cdb(1, Some(4))),
        (vec![0x42, 0x01], Sense::invalid_field_in_cdb(1, Some(0))),
        (
            vec![0xA3, 0x0C, 0x04],
            Sense::invalid_field_in_cdb(2, Some(2)),
        ),
        (vec![0xA3, 0x0D], Sense::invalid_field_in_cdb(1, Some(4))),
        (vec![0x56, 0x10], Sense::invalid_field_in_cdb(1, Some(4))),
        (vec![0x16, 0x01], Sense::invalid_field_in_cdb(1, Some(0))),
        (vec![0x5E, 0x04], Sense::invalid_field_in_cdb(1, Some(4))),
        (vec![0x5F, 0x07], Sense::invalid_field_in_cdb(1, Some(4))),
        // NACA in the control byte of a 10-byte CDB.
        (
            vec![0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0x04],
            Sense::invalid_field_in_cdb(9, Some(2)),
        ),
    ];
    for (bytes, want) in refused {
        assert_eq!(decode(&cdb16(&bytes)), Err(want), "{bytes:02x?}");
    }
    for opcode in [0x01u8, 0x1D, 0x3B, 0x7F, 0x9F, 0xC0, 0xFF] {
        assert_eq!(
            decode(&cdb16(&[opcode])),
            Err(crate::scsi::sense::INVALID_COMMAND_OPERATION_CODE),
            "{opcode:#x}"
        );
    }
    // Shorter than the opcode's group needs, and empty.
    assert_eq!(
        decode(&[0x88, 0, 0]),
        Err(crate::scsi::sense::INVALID_COMMAND_OPERATION_CODE)
    );
    assert_eq!(
        decode(&[]),
        Err(crate::scsi::sense::INVALID_COMMAND_OPERATION_CODE)
    );
}

/// Every opcode with pseudo-random bytes and every length: a command or a sense, never a
/// panic (the fuzz target does this at scale).
#[test]
fn decoding_is_total() {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for opcode in 0..=255u8 {
        for len in 0..=16 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut cdb = x.to_le_bytes().repeat(2);
            cdb[0] = opcode;
            let _ = decode(&cdb[..len]);
        }
    }
}
