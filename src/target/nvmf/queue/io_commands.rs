//! The NVM command set as the block engine runs it: which [`BlockRequest`] an NVMe I/O
//! command is, where its data comes from, and which NVMe status an engine outcome is. Pure
//! functions of the command and the namespace's block size, so every rule is tested here
//! without a socket.
//!
//! | opcode | engine operation | data |
//! |---|---|---|
//! | Read (02h) | `read` | C2HData of NLB × block size bytes |
//! | Write (01h), FUA in CDW12 bit 30 | `write` | in the capsule, or H2CData after an R2T |
//! | Flush (00h) | `flush` | none |
//! | Write Zeroes (08h) | `write_zeroes` | none |
//! | Dataset Management (09h), AD set | one `trim` per range | the ranges, in the capsule |
//! | Compare (05h) | `read`, then compared with the host's data | like a write's |
//!
//! Anything else on an I/O queue answers Invalid Command Opcode; a fused command Invalid
//! Field (sds does not run fused Compare and Write).

use crate::blockio::{BlockOp, BlockRequest, BlockStatus};
use crate::constants::NVMF_MAX_DSM_RANGES;
use crate::nvmf::command::{
    Command, IO_COMPARE, IO_DATASET_MANAGEMENT, IO_FLUSH, IO_READ, IO_WRITE, IO_WRITE_ZEROES,
};
use crate::nvmf::pdu::DataLocation;
use crate::nvmf::status::{self, Status};

/// Bytes of one Dataset Management range (context attributes, length in blocks, start).
pub const DSM_RANGE_BYTES: usize = 16;
/// CDW11 bit 2 of Dataset Management: deallocate the ranges.
const DSM_ATTRIBUTE_DEALLOCATE: u32 = 1 << 2;

/// Where a command's data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFlow {
    None,
    /// A write's data, in the capsule.
    InCapsule,
    /// A write's data, solicited with an R2T.
    Solicit,
    /// A read's data, sent in C2HData.
    Send,
}

/// What an I/O command asks of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// One engine request.
    Block {
        request: BlockRequest,
        data: DataFlow,
    },
    /// Dataset Management with deallocate: `ranges` ranges in the capsule's data, each a
    /// `trim` (see [`dsm_range`]).
    Deallocate { ranges: usize },
    /// Nothing to do, successfully (Dataset Management without deallocate: hints only).
    Nothing,
    /// Compare: `request` reads the range, whose bytes must equal the host's data, which
    /// arrives as a write's does (`data`).
    Compare {
        request: BlockRequest,
        data: DataFlow,
    },
}

/// The byte range of `blocks` blocks from `slba`, or LBA Out of Range when it cannot be a
/// byte offset at all (the engine checks it against the volume's size).
fn byte_range(slba: u64, blocks: u64, block_bytes: u32) -> Result<(u64, u32), Status> {
    let offset = slba
        .checked_mul(u64::from(block_bytes))
        .ok_or(status::LBA_OUT_OF_RANGE)?;
    let length = blocks
        .checked_mul(u64::from(block_bytes))
        .and_then(|length| u32::try_from(length).ok())
        .ok_or(status::INVALID_FIELD)?;
    offset
        .checked_add(u64::from(length))
        .ok_or(status::LBA_OUT_OF_RANGE)?;
    Ok((offset, length))
}

/// The length the SGL names, which a data-moving command's must equal.
fn sgl_bytes(location: DataLocation) -> u32 {
    match location {
        DataLocation::None => 0,
        DataLocation::InCapsule { length_bytes } | DataLocation::Transport { length_bytes } => {
            length_bytes
        }
    }
}

/// What `command` asks of a namespace of `block_bytes` blocks, its data at `location`.
pub fn plan(command: &Command, location: DataLocation, block_bytes: u32) -> Result<Plan, Status> {
    if command.fuse() != 0 {
        return Err(status::INVALID_FIELD);
    }
    let opcode = command.opcode();
    match opcode {
        IO_READ | IO_WRITE => {
            let (offset_bytes, length_bytes) =
                byte_range(command.slba(), u64::from(command.blocks()), block_bytes)?;
            if sgl_bytes(location) != length_bytes {
                return Err(status::DATA_SGL_LENGTH_INVALID);
            }
            let data = match (opcode, location) {
                (IO_READ, DataLocation::Transport { .. }) => DataFlow::Send,
                (IO_WRITE, DataLocation::Transport { .. }) => DataFlow::Solicit,
                (IO_WRITE, DataLocation::InCapsule { .. }) => DataFlow::InCapsule,
                // A read's data never comes in the capsule; no command moves none.
                _ => return Err(status::INVALID_FIELD),
            };
            let op = if opcode == IO_READ {
                BlockOp::Read
            } else {
                BlockOp::Write
            };
            Ok(Plan::Block {
                request: BlockRequest {
                    op,
                    offset_bytes,
                    length_bytes,
                    fua: command.fua() && op == BlockOp::Write,
                },
                data,
            })
        }
        IO_COMPARE => {
            let (offset_bytes, length_bytes) =
                byte_range(command.slba(), u64::from(command.blocks()), block_bytes)?;
            if sgl_bytes(location) != length_bytes {
                return Err(status::DATA_SGL_LENGTH_INVALID);
            }
            let data = match location {
                DataLocation::InCapsule { .. } => DataFlow::InCapsule,
                DataLocation::Transport { .. } => DataFlow::Solicit,
                DataLocation::None => return Err(status::INVALID_FIELD),
            };
            Ok(Plan::Compare {
                request: BlockRequest {
                    op: BlockOp::Read,
                    offset_bytes,
                    length_bytes,
                    fua: false,
                },
                data,
            })
        }
        IO_FLUSH | IO_WRITE_ZEROES => {
            if location != DataLocation::None {
                return Err(status::INVALID_FIELD);
            }
            if opcode == IO_FLUSH {
                return Ok(Plan::Block {
                    request: BlockRequest {
                        op: BlockOp::Flush,
                        offset_bytes: 0,
                        length_bytes: 0,
                        fua: false,
                    },
                    data: DataFlow::None,
                });
            }
            let (offset_bytes, length_bytes) =
                byte_range(command.slba(), u64::from(command.blocks()), block_bytes)?;
            Ok(Plan::Block {
                request: BlockRequest {
                    op: BlockOp::WriteZeroes,
                    offset_bytes,
                    length_bytes,
                    fua: command.fua(),
                },
                data: DataFlow::None,
            })
        }
        IO_DATASET_MANAGEMENT => {
            let ranges = (command.cdw(10) & 0xff) as usize + 1;
            debug_assert!(ranges <= NVMF_MAX_DSM_RANGES);
            let bytes = ranges * DSM_RANGE_BYTES;
            if command.cdw(11) & DSM_ATTRIBUTE_DEALLOCATE == 0 {
                return Ok(Plan::Nothing);
            }
            match location {
                DataLocation::InCapsule { length_bytes } if length_bytes as usize >= bytes => {
                    Ok(Plan::Deallocate { ranges })
                }
                // sds takes the ranges in the capsule only (they always fit in it; Linux and
                // SPDK send them there).
                DataLocation::Transport { .. } => Err(status::INVALID_FIELD),
                _ => Err(status::DATA_SGL_LENGTH_INVALID),
            }
        }
        _ => Err(status::INVALID_OPCODE),
    }
}

/// Range `index` of a Dataset Management command's data as a `trim`; `None` for an empty
/// range (nothing to deallocate).
pub fn dsm_range(
    data: &[u8],
    index: usize,
    block_bytes: u32,
) -> Result<Option<BlockRequest>, Status> {
    let at = index * DSM_RANGE_BYTES;
    let Some(range) = data.get(at..at + DSM_RANGE_BYTES) else {
        return Err(status::DATA_SGL_LENGTH_INVALID);
    };
    let blocks = u32::from_le_bytes([range[4], range[5], range[6], range[7]]);
    let mut start = [0u8; 8];
    start.copy_from_slice(&range[8..16]);
    let slba = u64::from_le_bytes(start);
    if blocks == 0 {
        return Ok(None);
    }
    let (offset_bytes, length_bytes) = byte_range(slba, u64::from(blocks), block_bytes)?;
    Ok(Some(BlockRequest {
        op: BlockOp::Trim,
        offset_bytes,
        length_bytes,
        fua: false,
    }))
}

/// The NVMe status of an engine outcome for operation `op`.
pub fn nvme_status(outcome: BlockStatus, op: BlockOp) -> Status {
    match outcome {
        BlockStatus::Ok => status::SUCCESS,
        BlockStatus::Invalid | BlockStatus::TooLarge => status::INVALID_FIELD,
        BlockStatus::OutOfRange => status::LBA_OUT_OF_RANGE,
        BlockStatus::NotPermitted if op.modifies() => status::NAMESPACE_WRITE_PROTECTED,
        BlockStatus::NotPermitted => status::ACCESS_DENIED,
        BlockStatus::NoSpace => status::CAPACITY_EXCEEDED,
        BlockStatus::IoError => status::INTERNAL_ERROR,
        // The volume is being deleted (its VP goes next, and the queue with it), or the queue
        // is closing: the host may retry elsewhere.
        BlockStatus::ShutDown => status::NAMESPACE_NOT_READY.retryable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::command::{CommandBuilder, IO_COMPARE, SGL_TRANSPORT_DATA_BLOCK};

    fn transport(bytes: u32) -> DataLocation {
        DataLocation::Transport {
            length_bytes: bytes,
        }
    }

    #[test]
    fn reads_and_writes_become_block_requests_in_bytes() {
        let read = CommandBuilder::new(IO_READ, 1).range(10, 8).build();
        assert_eq!(
            plan(&read, transport(4096), 512),
            Ok(Plan::Block {
                request: BlockRequest {
                    op: BlockOp::Read,
                    offset_bytes: 5120,
                    length_bytes: 4096,
                    fua: false,
                },
                data: DataFlow::Send,
            })
        );
        let write = CommandBuilder::new(IO_WRITE, 1)
            .range(1, 2)
            .cdw(12, 1 | 1 << 30)
            .build();
        let Ok(Plan::Block { request, data }) =
            plan(&write, DataLocation::InCapsule { length_bytes: 8192 }, 4096)
        else {
            panic!("a write plans");
        };
        assert_eq!((request.offset_bytes, request.length_bytes), (4096, 8192));
        assert!(request.fua);
        assert_eq!(data, DataFlow::InCapsule);
        assert_eq!(
            plan(&write, transport(8192), 4096).map(|p| match p {
                Plan::Block { data, .. } => data,
                _ => DataFlow::None,
            }),
            Ok(DataFlow::Solicit)
        );
    }

    #[test]
    fn the_sgl_must_name_exactly_the_blocks_moved() {
        let read = CommandBuilder::new(IO_READ, 1).range(0, 8).build();
        assert_eq!(
            plan(&read, transport(4095), 512),
            Err(status::DATA_SGL_LENGTH_INVALID)
        );
        assert_eq!(
            plan(&read, DataLocation::None, 512),
            Err(status::DATA_SGL_LENGTH_INVALID)
        );
        // A read whose data would come in the capsule.
        let in_capsule = DataLocation::InCapsule { length_bytes: 4096 };
        assert_eq!(plan(&read, in_capsule, 512), Err(status::INVALID_FIELD));
        let flush = CommandBuilder::new(IO_FLUSH, 1).build();
        assert_eq!(
            plan(&flush, transport(512), 512),
            Err(status::INVALID_FIELD)
        );
    }

    #[test]
    fn an_lba_that_overflows_a_byte_offset_is_out_of_range() {
        let read = CommandBuilder::new(IO_READ, 1)
            .range(u64::MAX / 256, 1)
            .sgl(0, 512, SGL_TRANSPORT_DATA_BLOCK)
            .build();
        assert_eq!(
            plan(&read, transport(512), 512),
            Err(status::LBA_OUT_OF_RANGE)
        );
        let zeroes = CommandBuilder::new(IO_WRITE_ZEROES, 1)
            .range(u64::MAX - 1, 0x1_0000)
            .build();
        assert_eq!(
            plan(&zeroes, DataLocation::None, 4096),
            Err(status::LBA_OUT_OF_RANGE)
        );
    }

    #[test]
    fn flush_write_zeroes_and_unknown_opcodes() {
        let flush = CommandBuilder::new(IO_FLUSH, 1).build();
        assert!(matches!(
            plan(&flush, DataLocation::None, 512),
            Ok(Plan::Block {
                request: BlockRequest {
                    op: BlockOp::Flush,
                    ..
                },
                ..
            })
        ));
        let zeroes = CommandBuilder::new(IO_WRITE_ZEROES, 1)
            .range(8, 0x1_0000)
            .build();
        let Ok(Plan::Block { request, .. }) = plan(&zeroes, DataLocation::None, 4096) else {
            panic!("write zeroes plans");
        };
        assert_eq!(request.op, BlockOp::WriteZeroes);
        assert_eq!(request.length_bytes, 0x1_0000 * 4096);
        let unknown = CommandBuilder::new(0x7e, 1).build();
        assert_eq!(
            plan(&unknown, DataLocation::None, 512),
            Err(status::INVALID_OPCODE)
        );
        let compare = CommandBuilder::new(IO_COMPARE, 1).range(4, 2).build();
        assert_eq!(
            plan(&compare, transport(1024), 512),
            Ok(Plan::Compare {
                request: BlockRequest {
                    op: BlockOp::Read,
                    offset_bytes: 2048,
                    length_bytes: 1024,
                    fua: false,
                },
                data: DataFlow::Solicit,
            })
        );
        assert_eq!(
            plan(&compare, transport(512), 512),
            Err(status::DATA_SGL_LENGTH_INVALID)
        );
        let fused = CommandBuilder::new(IO_WRITE, 1).fuse(2).build();
        assert_eq!(
            plan(&fused, transport(512), 512),
            Err(status::INVALID_FIELD)
        );
    }

    #[test]
    fn dataset_management_deallocates_each_range_in_the_capsule() {
        let dsm = CommandBuilder::new(IO_DATASET_MANAGEMENT, 1)
            .cdw(10, 1)
            .cdw(11, DSM_ATTRIBUTE_DEALLOCATE)
            .build();
        let in_capsule = DataLocation::InCapsule { length_bytes: 32 };
        assert_eq!(
            plan(&dsm, in_capsule, 512),
            Ok(Plan::Deallocate { ranges: 2 })
        );
        assert_eq!(
            plan(&dsm, DataLocation::InCapsule { length_bytes: 16 }, 512),
            Err(status::DATA_SGL_LENGTH_INVALID)
        );
        let hint = CommandBuilder::new(IO_DATASET_MANAGEMENT, 1).build();
        assert_eq!(plan(&hint, in_capsule, 512), Ok(Plan::Nothing));

        let mut data = [0u8; 32];
        data[4..8].copy_from_slice(&8u32.to_le_bytes());
        data[8..16].copy_from_slice(&100u64.to_le_bytes());
        assert_eq!(
            dsm_range(&data, 0, 512),
            Ok(Some(BlockRequest {
                op: BlockOp::Trim,
                offset_bytes: 51200,
                length_bytes: 4096,
                fua: false,
            }))
        );
        assert_eq!(dsm_range(&data, 1, 512), Ok(None), "an empty range");
        assert_eq!(
            dsm_range(&data, 2, 512),
            Err(status::DATA_SGL_LENGTH_INVALID)
        );
    }

    #[test]
    fn engine_outcomes_map_to_nvme_statuses() {
        assert_eq!(
            nvme_status(BlockStatus::NotPermitted, BlockOp::Write),
            status::NAMESPACE_WRITE_PROTECTED
        );
        assert_eq!(
            nvme_status(BlockStatus::NotPermitted, BlockOp::Trim),
            status::NAMESPACE_WRITE_PROTECTED
        );
        assert_eq!(
            nvme_status(BlockStatus::NotPermitted, BlockOp::Read),
            status::ACCESS_DENIED
        );
        assert_eq!(
            nvme_status(BlockStatus::NoSpace, BlockOp::Write),
            status::CAPACITY_EXCEEDED
        );
        assert_eq!(
            nvme_status(BlockStatus::OutOfRange, BlockOp::Read),
            status::LBA_OUT_OF_RANGE
        );
        assert_eq!(
            nvme_status(BlockStatus::IoError, BlockOp::Read),
            status::INTERNAL_ERROR
        );
        assert!(nvme_status(BlockStatus::Ok, BlockOp::Flush).is_success());
    }
}
