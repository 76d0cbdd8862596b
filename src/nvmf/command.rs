//! The submission queue entry (64 bytes) and completion queue entry (16 bytes), as NVMe/TCP
//! carries them in command and response capsules, and the opcodes sds speaks. All fields are
//! little endian. A [`Command`] is a view over the received bytes: reading a field never fails
//! and never allocates; whether a field's value is acceptable is the handler's decision.
//!
//! ```text
//!  byte 0 opcode | 1 FUSE (bits 1:0), PSDT (7:6) | 2-3 CID | 4-7 NSID (fabrics: 4 = FCTYPE)
//!  8-15 CDW2-3 | 16-23 MPTR | 24-39 DPTR: SGL descriptor 1 (address 8, length 4, id at 39)
//!  40-63 CDW10-15
//! ```

use super::status::Status;

/// Bytes of a submission queue entry.
pub const COMMAND_BYTES: usize = 64;
/// Bytes of a completion queue entry.
pub const COMPLETION_BYTES: usize = 16;

// Admin command set opcodes (NVMe base 2.0 figure 139) that sds answers.
pub const ADMIN_GET_LOG_PAGE: u8 = 0x02;
pub const ADMIN_IDENTIFY: u8 = 0x06;
pub const ADMIN_ABORT: u8 = 0x08;
pub const ADMIN_SET_FEATURES: u8 = 0x09;
pub const ADMIN_GET_FEATURES: u8 = 0x0a;
pub const ADMIN_ASYNC_EVENT_REQUEST: u8 = 0x0c;
pub const ADMIN_KEEP_ALIVE: u8 = 0x18;
/// Fabrics commands share one opcode; the type is byte 4 ([`Command::fctype`]).
pub const FABRICS: u8 = 0x7f;

/// CNTLID FFFFh (in an admin Connect, and in a discovery log entry): any controller, the
/// dynamic controller model.
pub const CNTLID_DYNAMIC: u16 = 0xffff;

// Fabrics command types (NVMe-oF 1.1 figure 13).
pub const FCTYPE_PROPERTY_SET: u8 = 0x00;
pub const FCTYPE_CONNECT: u8 = 0x01;
pub const FCTYPE_PROPERTY_GET: u8 = 0x04;
pub const FCTYPE_AUTHENTICATION_SEND: u8 = 0x05;
pub const FCTYPE_AUTHENTICATION_RECEIVE: u8 = 0x06;
pub const FCTYPE_DISCONNECT: u8 = 0x08;

// NVM command set opcodes (NVM command set 1.0 figure 18).
pub const IO_FLUSH: u8 = 0x00;
pub const IO_WRITE: u8 = 0x01;
pub const IO_READ: u8 = 0x02;
pub const IO_WRITE_UNCORRECTABLE: u8 = 0x04;
pub const IO_COMPARE: u8 = 0x05;
pub const IO_WRITE_ZEROES: u8 = 0x08;
pub const IO_DATASET_MANAGEMENT: u8 = 0x09;

/// FUSE values: the first and second command of a fused pair (Compare then Write).
pub const FUSE_NONE: u8 = 0;
pub const FUSE_FIRST: u8 = 1;
pub const FUSE_SECOND: u8 = 2;

// SGL descriptor identifiers NVMe/TCP uses (NVMe-oF 1.1 §7.4.5 / TP 8000): in-capsule data is
// a Data Block descriptor with the Offset subtype; data moved by H2CData/C2HData is a
// Transport Data Block descriptor.
pub const SGL_DATA_BLOCK_OFFSET: u8 = 0x01;
pub const SGL_TRANSPORT_DATA_BLOCK: u8 = 0x5a;

/// One submission queue entry, as received.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Command(pub [u8; COMMAND_BYTES]);

impl Command {
    /// The entry in the first 64 bytes of `bytes`, or `None` if there are fewer.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let entry: [u8; COMMAND_BYTES] = bytes.get(..COMMAND_BYTES)?.try_into().ok()?;
        Some(Command(entry))
    }
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }
    pub fn fuse(&self) -> u8 {
        self.0[1] & 0x3
    }
    /// PRP or SGL for Data Transfer: fabrics require SGLs (01b or 10b).
    pub fn psdt(&self) -> u8 {
        self.0[1] >> 6
    }
    pub fn cid(&self) -> u16 {
        self.u16_at(2)
    }
    pub fn nsid(&self) -> u32 {
        self.u32_at(4)
    }
    /// The fabrics command type; meaningful only when the opcode is [`FABRICS`].
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }
    /// SGL descriptor 1: address (or offset into the capsule's data).
    pub fn sgl_address(&self) -> u64 {
        self.u64_at(24)
    }
    pub fn sgl_length(&self) -> u32 {
        self.u32_at(32)
    }
    /// SGL descriptor 1's identifier byte: type in bits 7:4, subtype in 3:0.
    pub fn sgl_identifier(&self) -> u8 {
        self.0[39]
    }
    /// Command dword `n` (10..=15).
    pub fn cdw(&self, n: usize) -> u32 {
        debug_assert!((10..=15).contains(&n));
        self.u32_at(40 + (n - 10) * 4)
    }
    /// For Read, Write, Compare, Write Zeroes: the starting LBA (CDW10-11).
    pub fn slba(&self) -> u64 {
        self.u64_at(40)
    }
    /// For Read, Write, Compare, Write Zeroes: the number of blocks, which the entry holds
    /// zero-based (CDW12 bits 15:0).
    pub fn blocks(&self) -> u32 {
        (self.cdw(12) & 0xffff) + 1
    }
    /// Force Unit Access (CDW12 bit 30).
    pub fn fua(&self) -> bool {
        self.cdw(12) & (1 << 30) != 0
    }
    pub fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }
    pub fn u32_at(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(b)
    }
    pub fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(b)
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Command {{ opcode {:#04x}, cid {}, nsid {} }}",
            self.opcode(),
            self.cid(),
            self.nsid()
        )
    }
}

/// Builds a submission queue entry (the initiator's side, and tests').
#[derive(Clone, Copy)]
pub struct CommandBuilder(pub [u8; COMMAND_BYTES]);

impl CommandBuilder {
    /// An entry with `opcode` and `cid`, PSDT set to SGL (as fabrics require), the rest zero.
    pub fn new(opcode: u8, cid: u16) -> Self {
        let mut entry = [0u8; COMMAND_BYTES];
        entry[0] = opcode;
        entry[1] = 0x40;
        entry[2..4].copy_from_slice(&cid.to_le_bytes());
        CommandBuilder(entry)
    }
    /// A fabrics command of type `fctype`.
    pub fn fabrics(fctype: u8, cid: u16) -> Self {
        let mut builder = Self::new(FABRICS, cid);
        builder.0[4] = fctype;
        builder
    }
    pub fn nsid(mut self, nsid: u32) -> Self {
        self.0[4..8].copy_from_slice(&nsid.to_le_bytes());
        self
    }
    pub fn fuse(mut self, fuse: u8) -> Self {
        self.0[1] = (self.0[1] & !0x3) | (fuse & 0x3);
        self
    }
    /// SGL descriptor 1: `address`, `length`, identifier (type << 4 | subtype).
    pub fn sgl(mut self, address: u64, length: u32, identifier: u8) -> Self {
        self.0[24..32].copy_from_slice(&address.to_le_bytes());
        self.0[32..36].copy_from_slice(&length.to_le_bytes());
        self.0[39] = identifier;
        self
    }
    pub fn cdw(mut self, n: usize, value: u32) -> Self {
        debug_assert!((10..=15).contains(&n));
        let at = 40 + (n - 10) * 4;
        self.0[at..at + 4].copy_from_slice(&value.to_le_bytes());
        self
    }
    /// Read, Write, Compare, Write Zeroes: starting LBA and number of blocks (1-based here).
    pub fn range(self, slba: u64, blocks: u32) -> Self {
        debug_assert!((1..=0x1_0000).contains(&blocks));
        self.cdw(10, slba as u32)
            .cdw(11, (slba >> 32) as u32)
            .cdw(12, blocks - 1)
    }
    pub fn bytes_at(mut self, at: usize, bytes: &[u8]) -> Self {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }
    pub fn build(self) -> Command {
        Command(self.0)
    }
}

/// One completion queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Command specific dword 0 (and dword 1, for the few commands that use it).
    pub result: u64,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    pub status: Status,
}

impl Completion {
    pub fn new(cid: u16, status: Status) -> Self {
        Completion {
            result: 0,
            sq_head: 0,
            sq_id: 0,
            cid,
            status,
        }
    }
    pub fn with_result(mut self, result: u64) -> Self {
        self.result = result;
        self
    }
    pub fn to_bytes(&self) -> [u8; COMPLETION_BYTES] {
        let mut bytes = [0u8; COMPLETION_BYTES];
        bytes[0..8].copy_from_slice(&self.result.to_le_bytes());
        bytes[8..10].copy_from_slice(&self.sq_head.to_le_bytes());
        bytes[10..12].copy_from_slice(&self.sq_id.to_le_bytes());
        bytes[12..14].copy_from_slice(&self.cid.to_le_bytes());
        bytes[14..16].copy_from_slice(&self.status.to_field().to_le_bytes());
        bytes
    }
    /// The entry in the first 16 bytes of `bytes`, or `None` if there are fewer.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; COMPLETION_BYTES] = bytes.get(..COMPLETION_BYTES)?.try_into().ok()?;
        let mut result = [0u8; 8];
        result.copy_from_slice(&b[0..8]);
        Some(Completion {
            result: u64::from_le_bytes(result),
            sq_head: u16::from_le_bytes([b[8], b[9]]),
            sq_id: u16::from_le_bytes([b[10], b[11]]),
            cid: u16::from_le_bytes([b[12], b[13]]),
            status: Status::from_field(u16::from_le_bytes([b[14], b[15]])),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::status;

    #[test]
    fn a_read_command_reads_back_what_the_builder_wrote() {
        let command = CommandBuilder::new(IO_READ, 0xbeef)
            .nsid(3)
            .range(0x1_2345_6789, 8)
            .sgl(0, 4096, SGL_TRANSPORT_DATA_BLOCK)
            .build();
        assert_eq!(command.opcode(), IO_READ);
        assert_eq!(command.cid(), 0xbeef);
        assert_eq!(command.nsid(), 3);
        assert_eq!(command.slba(), 0x1_2345_6789);
        assert_eq!(command.blocks(), 8);
        assert!(!command.fua());
        assert_eq!(command.psdt(), 1);
        assert_eq!(command.sgl_length(), 4096);
        assert_eq!(command.sgl_identifier(), SGL_TRANSPORT_DATA_BLOCK);
        assert!(Command::from_bytes(&command.0[..63]).is_none());
    }

    #[test]
    fn a_completion_round_trips_through_its_sixteen_bytes() {
        let completion = Completion {
            result: 0x1234,
            sq_head: 7,
            sq_id: 1,
            cid: 42,
            status: status::LBA_OUT_OF_RANGE,
        };
        let bytes = completion.to_bytes();
        assert_eq!(&bytes[12..14], &42u16.to_le_bytes());
        assert_eq!(Completion::from_bytes(&bytes), Some(completion));
    }
}
