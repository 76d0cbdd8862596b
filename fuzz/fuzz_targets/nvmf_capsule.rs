//! The NVMe/TCP command capsule decoder: any 64-byte submission queue entry with any amount
//! of in-capsule data, as the I/O queue takes it (`pdu::data_location`, then
//! `io_commands::plan`, then each Dataset Management range).
//!
//! Input: byte 0 picks the block size (bit 0: 4096, else 512), bytes 1..65 are the entry, the
//! rest is the capsule's data.
//! Checks: nothing panics; a planned request's length is a whole number of blocks and its
//! range does not overflow; a read or write moves exactly what its SGL names.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::constants::NVMF_IN_CAPSULE_DATA_BYTES;
use sds::nvmf::command::{Command, COMMAND_BYTES};
use sds::nvmf::pdu::{self, DataLocation};
use sds::target::nvmf::queue::io_commands::{self, Plan};

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else {
        return;
    };
    let Some(command) = Command::from_bytes(rest) else {
        return;
    };
    let capsule_data = &rest[COMMAND_BYTES..];
    let block_bytes = if flags & 1 != 0 { 4096 } else { 512 };
    let Ok(location) = pdu::data_location(
        &command,
        capsule_data.len(),
        NVMF_IN_CAPSULE_DATA_BYTES as u32,
    ) else {
        return;
    };
    match io_commands::plan(&command, location, block_bytes) {
        Ok(Plan::Block { request, .. }) => {
            assert_eq!(request.length_bytes % block_bytes, 0);
            assert!(request
                .offset_bytes
                .checked_add(u64::from(request.length_bytes))
                .is_some());
            if request.op.moves_data() {
                let named = match location {
                    DataLocation::InCapsule { length_bytes }
                    | DataLocation::Transport { length_bytes } => length_bytes,
                    DataLocation::None => 0,
                };
                assert_eq!(named, request.length_bytes);
            }
        }
        Ok(Plan::Compare { request, .. }) => {
            // A compare reads exactly the blocks the host's data covers.
            assert_eq!(request.length_bytes % block_bytes, 0);
            let named = match location {
                DataLocation::InCapsule { length_bytes }
                | DataLocation::Transport { length_bytes } => length_bytes,
                DataLocation::None => 0,
            };
            assert_eq!(named, request.length_bytes);
        }
        Ok(Plan::Deallocate { ranges }) => {
            for index in 0..ranges {
                if let Ok(Some(range)) = io_commands::dsm_range(capsule_data, index, block_bytes) {
                    assert!(range.length_bytes > 0);
                    assert_eq!(range.length_bytes % block_bytes, 0);
                }
            }
        }
        Ok(Plan::Nothing) | Err(_) => {}
    }
});
