//! What a front end asks of the engine: one block operation on a range of its volume.
//!
//! [`BlockOp`] is the one name of an operation everywhere in sds: the engine, the volume's and
//! the VP's statistics, a domain's allowed operations and the RPC names
//! (`read`, `write`, `flush`, `trim`, `write_zeroes`). A front end translates its wire
//! commands (NBD command codes, SCSI opcodes, NVMe opcodes) to it in one place.

/// A block operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockOp {
    Read = 0,
    Write = 1,
    Flush = 2,
    /// Deallocate a range (NBD TRIM, SCSI UNMAP, NVMe deallocate); it then reads as zeroes.
    Trim = 3,
    WriteZeroes = 4,
}

impl BlockOp {
    pub const COUNT: usize = 5;
    pub const ALL: [BlockOp; BlockOp::COUNT] = [
        BlockOp::Read,
        BlockOp::Write,
        BlockOp::Flush,
        BlockOp::Trim,
        BlockOp::WriteZeroes,
    ];

    /// The name the README, the RPC methods and the statistics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Flush => "flush",
            Self::Trim => "trim",
            Self::WriteZeroes => "write_zeroes",
        }
    }

    /// The position of this operation in per-operation counter arrays.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// The three classes a LUN counts its errors and injects its faults in (`lun_get_luns`
    /// `errors`, `lun_inject_fault io_type`): TRIM and WRITE_ZEROES zero, so on a LUN they
    /// are writes.
    pub const LUN_CLASSES: [BlockOp; 3] = [BlockOp::Read, BlockOp::Write, BlockOp::Flush];

    /// This operation's LUN class (one of [`Self::LUN_CLASSES`]).
    #[inline]
    pub fn lun_class(self) -> BlockOp {
        match self {
            Self::Trim | Self::WriteZeroes => Self::Write,
            other => other,
        }
    }

    /// The position of this operation's LUN class in per-class counter arrays (0..3).
    #[inline]
    pub fn class_index(self) -> usize {
        match self {
            Self::Read => 0,
            Self::Write | Self::Trim | Self::WriteZeroes => 1,
            Self::Flush => 2,
        }
    }

    /// Whether the request carries data in the slot's buffer (a read fills it, a write
    /// brings it).
    #[inline]
    pub fn moves_data(self) -> bool {
        matches!(self, Self::Read | Self::Write)
    }

    /// Whether the operation changes what the volume holds.
    #[inline]
    pub fn modifies(self) -> bool {
        matches!(self, Self::Write | Self::Trim | Self::WriteZeroes)
    }
}

/// One request. The data of a read or write is the slot's buffer
/// ([`super::BlockEngine::buffer_mut`]), sized when the request is reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    pub op: BlockOp,
    pub offset_bytes: u64,
    pub length_bytes: u32,
    /// Force unit access: the data is durable when the request completes.
    pub fua: bool,
}

impl BlockRequest {
    /// Bytes of buffer the request needs (0 for the operations that move no data).
    #[inline]
    pub fn buffer_bytes(&self) -> usize {
        if self.op.moves_data() {
            self.length_bytes as usize
        } else {
            0
        }
    }
}
