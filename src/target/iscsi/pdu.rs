//! The iSCSI PDU wire format (RFC 7143 §11): the 48-byte Basic Header Segment (BHS) of every
//! opcode, the Additional Header Segment length, the data segment length and its padding to
//! four bytes, and where the optional digests sit.
//!
//! A PDU on the wire is `BHS (48) | AHS (TotalAHSLength × 4) | header digest (0 or 4) |
//! data segment (DataSegmentLength) | padding to 4 | data digest (0 or 4, only with data)`.
//! [`Framing`] computes those sizes from a BHS and the negotiated digests, so a reader knows
//! how much more to read before it looks at anything else.
//!
//! Parsing never allocates: [`Bhs`] is a plain 48-byte array, [`InitiatorPdu::parse`] turns
//! it into a Copy struct of the opcode's fields, and every target PDU is built by a Copy
//! struct's `write` into the caller's `[u8; 48]`. All integers are big-endian. Fields a
//! target never reads (the reserved bytes) are ignored on parse and zero on build.
//!
//! Adding an opcode: its number in [`Opcode`], a struct with `parse` (initiator PDUs) or
//! `write` (target PDUs) reading and writing the offsets of its RFC figure, a variant in
//! [`InitiatorPdu`] or [`TargetPdu`], and a test with bytes laid out by hand.

use crate::digest::DIGEST_BYTES;

/// Bytes of the Basic Header Segment.
pub const BHS_BYTES: usize = 48;
/// The largest DataSegmentLength the 24-bit field can carry.
pub const MAX_DATA_SEGMENT_FIELD: u32 = (1 << 24) - 1;
/// The Initiator Task Tag that means "no task" (unsolicited NOP-In, Reject, Async Message).
pub const RESERVED_TAG: u32 = 0xffff_ffff;
/// The iSCSI version this target speaks (RFC 7143 §11.12.4: 0x00).
pub const ISCSI_VERSION: u8 = 0x00;

/// A BHS as it came off (or goes onto) the wire.
pub type Bhs = [u8; BHS_BYTES];

/// Why a PDU could not be taken apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("a BHS is {BHS_BYTES} bytes, got {0}")]
    Short(usize),
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("opcode {0:#04x} is a target's, not an initiator's")]
    NotInitiatorOpcode(u8),
    #[error("data segment of {length} bytes, more than the {limit} allowed")]
    DataSegmentTooLong { length: u32, limit: u32 },
    #[error("additional header segments of {length} bytes, more than the {limit} allowed")]
    AhsTooLong { length: usize, limit: usize },
    #[error("header digest mismatch")]
    HeaderDigest,
    #[error("data digest mismatch")]
    DataDigest,
}

/// Every opcode of RFC 7143 §11.1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskManagementRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    Snack = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskManagementResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    ReadyToTransfer = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_byte(byte: u8) -> Result<Self, PduError> {
        Ok(match byte & 0x3f {
            0x00 => Self::NopOut,
            0x01 => Self::ScsiCommand,
            0x02 => Self::TaskManagementRequest,
            0x03 => Self::LoginRequest,
            0x04 => Self::TextRequest,
            0x05 => Self::DataOut,
            0x06 => Self::LogoutRequest,
            0x10 => Self::Snack,
            0x20 => Self::NopIn,
            0x21 => Self::ScsiResponse,
            0x22 => Self::TaskManagementResponse,
            0x23 => Self::LoginResponse,
            0x24 => Self::TextResponse,
            0x25 => Self::DataIn,
            0x26 => Self::LogoutResponse,
            0x31 => Self::ReadyToTransfer,
            0x32 => Self::AsyncMessage,
            0x3f => Self::Reject,
            other => return Err(PduError::UnknownOpcode(other)),
        })
    }

    /// Whether an initiator sends this opcode (bit 5 clear).
    pub fn is_initiator(self) -> bool {
        (self as u8) & 0x20 == 0
    }
}

/// Flag bits of byte 1 shared by several opcodes.
pub const FLAG_FINAL: u8 = 0x80;
/// Text Request/Response and Login: more text follows in the next PDU.
pub const FLAG_CONTINUE: u8 = 0x40;
/// Login: the sender wants to move to the next stage.
pub const FLAG_TRANSIT: u8 = 0x80;
/// Byte 0: an immediate command (delivered at once, CmdSN not advanced).
pub const FLAG_IMMEDIATE: u8 = 0x40;

fn be16(bhs: &Bhs, at: usize) -> u16 {
    u16::from_be_bytes([bhs[at], bhs[at + 1]])
}
fn be32(bhs: &Bhs, at: usize) -> u32 {
    u32::from_be_bytes([bhs[at], bhs[at + 1], bhs[at + 2], bhs[at + 3]])
}
fn be64(bhs: &Bhs, at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&bhs[at..at + 8]);
    u64::from_be_bytes(bytes)
}
fn put16(bhs: &mut Bhs, at: usize, value: u16) {
    bhs[at..at + 2].copy_from_slice(&value.to_be_bytes());
}
fn put32(bhs: &mut Bhs, at: usize, value: u32) {
    bhs[at..at + 4].copy_from_slice(&value.to_be_bytes());
}
fn put64(bhs: &mut Bhs, at: usize, value: u64) {
    bhs[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

/// Copies the first 48 bytes of `bytes` into a BHS.
pub fn bhs_from(bytes: &[u8]) -> Result<Bhs, PduError> {
    let head = bytes.get(..BHS_BYTES).ok_or(PduError::Short(bytes.len()))?;
    let mut bhs = [0u8; BHS_BYTES];
    bhs.copy_from_slice(head);
    Ok(bhs)
}

/// The fields every BHS has in the same place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Common {
    pub opcode: Opcode,
    pub immediate: bool,
    /// Byte 1 as sent: the F bit and the opcode's own flags.
    pub flags: u8,
    /// TotalAHSLength in bytes (the field counts 4-byte words).
    pub ahs_bytes: usize,
    pub data_segment_length: u32,
    pub initiator_task_tag: u32,
}

impl Common {
    pub fn parse(bhs: &Bhs) -> Result<Self, PduError> {
        Ok(Self {
            opcode: Opcode::from_byte(bhs[0])?,
            immediate: bhs[0] & FLAG_IMMEDIATE != 0,
            flags: bhs[1],
            ahs_bytes: usize::from(bhs[4]) * 4,
            data_segment_length: u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]),
            initiator_task_tag: be32(bhs, 16),
        })
    }
}

/// Writes the opcode, flags, AHS length (none) and data segment length of a target PDU.
fn write_common(bhs: &mut Bhs, opcode: Opcode, flags: u8, data_segment_length: u32) {
    *bhs = [0u8; BHS_BYTES];
    bhs[0] = opcode as u8;
    bhs[1] = flags;
    let length = data_segment_length
        .min(MAX_DATA_SEGMENT_FIELD)
        .to_be_bytes();
    bhs[5..8].copy_from_slice(&length[1..]);
}

/// Bytes of padding after a data segment of `length` bytes.
pub fn padding(length: u32) -> usize {
    (4 - (length as usize % 4)) % 4
}

/// How many bytes follow a BHS on the wire, piece by piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub ahs_bytes: usize,
    pub header_digest_bytes: usize,
    pub data_bytes: usize,
    pub padding_bytes: usize,
    pub data_digest_bytes: usize,
}

impl Framing {
    /// The framing of the PDU behind `bhs`, refusing a data segment longer than
    /// `max_data_bytes` (the MaxRecvDataSegmentLength this side declared) or AHS longer than
    /// `max_ahs_bytes`, before anything past the BHS is read.
    pub fn of(
        bhs: &Bhs,
        header_digest: bool,
        data_digest: bool,
        max_data_bytes: u32,
        max_ahs_bytes: usize,
    ) -> Result<Self, PduError> {
        let common = Common::parse(bhs)?;
        if common.data_segment_length > max_data_bytes {
            return Err(PduError::DataSegmentTooLong {
                length: common.data_segment_length,
                limit: max_data_bytes,
            });
        }
        if common.ahs_bytes > max_ahs_bytes {
            return Err(PduError::AhsTooLong {
                length: common.ahs_bytes,
                limit: max_ahs_bytes,
            });
        }
        let data_bytes = common.data_segment_length as usize;
        Ok(Self {
            ahs_bytes: common.ahs_bytes,
            header_digest_bytes: if header_digest { DIGEST_BYTES } else { 0 },
            data_bytes,
            padding_bytes: padding(common.data_segment_length),
            data_digest_bytes: if data_digest && data_bytes > 0 {
                DIGEST_BYTES
            } else {
                0
            },
        })
    }

    /// Everything after the BHS.
    pub fn rest_bytes(&self) -> usize {
        self.ahs_bytes
            + self.header_digest_bytes
            + self.data_bytes
            + self.padding_bytes
            + self.data_digest_bytes
    }
}

// ---- Initiator PDUs: parsed ----

/// NOP-Out (§11.18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub initiator_task_tag: u32,
    pub target_transfer_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data_segment_length: u32,
}

impl NopOut {
    fn parse(bhs: &Bhs) -> Self {
        Self {
            immediate: bhs[0] & FLAG_IMMEDIATE != 0,
            lun: be64(bhs, 8),
            initiator_task_tag: be32(bhs, 16),
            target_transfer_tag: be32(bhs, 20),
            cmd_sn: be32(bhs, 24),
            exp_stat_sn: be32(bhs, 28),
            data_segment_length: data_segment_length(bhs),
        }
    }
}

/// SCSI Command (§11.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    /// Task attribute (0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA).
    pub attributes: u8,
    pub ahs_bytes: usize,
    pub data_segment_length: u32,
    pub lun: u64,
    pub initiator_task_tag: u32,
    pub expected_data_transfer_length: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

impl ScsiCommand {
    fn parse(bhs: &Bhs) -> Self {
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(&bhs[32..48]);
        Self {
            immediate: bhs[0] & FLAG_IMMEDIATE != 0,
            final_: bhs[1] & FLAG_FINAL != 0,
            read: bhs[1] & 0x40 != 0,
            write: bhs[1] & 0x20 != 0,
            attributes: bhs[1] & 0x07,
            ahs_bytes: usize::from(bhs[4]) * 4,
            data_segment_length: data_segment_length(bhs),
            lun: be64(bhs, 8),
            initiator_task_tag: be32(bhs, 16),
            expected_data_transfer_length: be32(bhs, 20),
            cmd_sn: be32(bhs, 24),
            exp_stat_sn: be32(bhs, 28),
            cdb,
        }
    }
}

/// Task management functions (§11.5.1).
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
    /// Responses (§11.6.1).
    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const FUNCTION_NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const FUNCTION_REJECTED: u8 = 255;
}

/// Task Management Function Request (§11.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskManagementRequest {
    pub immediate: bool,
    /// One of [`tmf`]'s functions.
    pub function: u8,
    pub lun: u64,
    pub initiator_task_tag: u32,
    pub referenced_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

impl TaskManagementRequest {
    fn parse(bhs: &Bhs) -> Self {
        Self {
            immediate: bhs[0] & FLAG_IMMEDIATE != 0,
            function: bhs[1] & 0x7f,
            lun: be64(bhs, 8),
            initiator_task_tag: be32(bhs, 16),
            referenced_task_tag: be32(bhs, 20),
            cmd_sn: be32(bhs, 24),
            exp_stat_sn: be32(bhs, 28),
            ref_cmd_sn: be32(bhs, 32),
            exp_data_sn: be32(bhs, 36),
        }
    }
}

/// Login stages (CSG/NSG, §11.12.3).
pub mod stage {
    pub const SECURITY: u8 = 0;
    pub const OPERATIONAL: u8 = 1;
    pub const FULL_FEATURE: u8 = 3;
}

/// Login Request (§11.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub continue_: bool,
    pub current_stage: u8,
    pub next_stage: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub data_segment_length: u32,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub initiator_task_tag: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl LoginRequest {
    fn parse(bhs: &Bhs) -> Self {
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&bhs[8..14]);
        Self {
            transit: bhs[1] & FLAG_TRANSIT != 0,
            continue_: bhs[1] & FLAG_CONTINUE != 0,
            current_stage: (bhs[1] >> 2) & 0x03,
            next_stage: bhs[1] & 0x03,
            version_max: bhs[2],
            version_min: bhs[3],
            data_segment_length: data_segment_length(bhs),
            isid,
            tsih: be16(bhs, 14),
            initiator_task_tag: be32(bhs, 16),
            cid: be16(bhs, 20),
            cmd_sn: be32(bhs, 24),
            exp_stat_sn: be32(bhs, 28),
        }
    }
}

/// Text Request (§11.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_: bool,
    pub continue_: bool,
    pub data_segment_length: u32,
    pub lun: u64,
    pub initiator_task_tag: u32,
    pub target_transfer_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl TextRequest {
    fn parse(bhs: &Bhs) -> Self {
        Self {
            immediate: bhs[0] & FLAG_IMMEDIATE != 0,
            final_: bhs[1] & FLAG_FINAL != 0,
            continue_: bhs[1] & FLAG_CONTINUE != 0,
            data_segment_length: data_segment_length(bhs),
            lun: be64(bhs, 8),
            initiator_task_tag: be32(bhs, 16),
            target_transfer_tag: be32(bhs, 20),
            cmd_sn: be32(bhs, 24),
            exp_stat_sn: be32(bhs, 28),
        }
    }
}

/// SCSI Data-Out (§11.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataOut {
    pub final_: bool,
    pub data_segment_length: u32,
    pub lun: u64,
    pub initiator_task_tag: u32,
    pub target_transfer_tag: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

impl DataOut {
    fn parse(bhs: &Bhs) -> Self {
        Self {
            final_: bhs[1] & FLAG_FINAL != 0,
            data_segment_length: data_segment_length(bhs),
            lun: be64(bhs, 8),
            initiator_task_tag: be32(bhs, 16),
            target_transfer_tag: be32(bhs, 20),
            exp_stat_sn: be32(bhs, 28),
            data_sn: be32(bhs, 36),
            buffer_offset: be32(bhs, 40),
        }
    }
}

/// Logout reasons (§11.14.1).
pub mod logout {
    pub const CLOSE_SESSION: u8 = 0;
    pub const CLOSE_CONNECTION: u8 = 1;
    pub const REMOVE_CONNECTION_FOR_RECOVERY: u8 = 2;
    /// Responses (§11.15.1).
    pub const CLOSED: u8 = 0;
    pub const CID_NOT_FOUND: u8 = 1;
    pub const RECOVERY_NOT_SUPPORTED: u8 = 2;
    pub const CLEANUP_FAILED: u8 = 3;
}

/// Logout Request (§11.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    /// One of [`logout`]'s reasons.
    pub reason: u8,
    pub initiator_task_tag: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl LogoutRequest {
    fn parse(bhs: &Bhs) -> Self {
        Self {
            immediate: bhs[0] & FLAG_IMMEDIATE != 0,
            reason: bhs[1] & 0x7f,
            initiator_task_tag: be32(bhs, 16),
            cid: be16(bhs, 20),
            cmd_sn: be32(bhs, 24),
            exp_stat_sn: be32(bhs, 28),
        }
    }
}

/// SNACK Request (§11.16): parsed only to be refused, since ErrorRecoveryLevel is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snack {
    pub kind: u8,
    pub lun: u64,
    pub initiator_task_tag: u32,
    pub target_transfer_tag: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

impl Snack {
    fn parse(bhs: &Bhs) -> Self {
        Self {
            kind: bhs[1] & 0x0f,
            lun: be64(bhs, 8),
            initiator_task_tag: be32(bhs, 16),
            target_transfer_tag: be32(bhs, 20),
            exp_stat_sn: be32(bhs, 28),
            beg_run: be32(bhs, 40),
            run_length: be32(bhs, 44),
        }
    }
}

fn data_segment_length(bhs: &Bhs) -> u32 {
    u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]])
}

/// Any PDU an initiator may send, parsed from its BHS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitiatorPdu {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskManagement(TaskManagementRequest),
    Login(LoginRequest),
    Text(TextRequest),
    DataOut(DataOut),
    Logout(LogoutRequest),
    Snack(Snack),
}

impl InitiatorPdu {
    /// Takes an initiator's BHS apart; a target opcode or an unknown one is an error.
    pub fn parse(bhs: &Bhs) -> Result<Self, PduError> {
        let opcode = Opcode::from_byte(bhs[0])?;
        Ok(match opcode {
            Opcode::NopOut => Self::NopOut(NopOut::parse(bhs)),
            Opcode::ScsiCommand => Self::ScsiCommand(ScsiCommand::parse(bhs)),
            Opcode::TaskManagementRequest => {
                Self::TaskManagement(TaskManagementRequest::parse(bhs))
            }
            Opcode::LoginRequest => Self::Login(LoginRequest::parse(bhs)),
            Opcode::TextRequest => Self::Text(TextRequest::parse(bhs)),
            Opcode::DataOut => Self::DataOut(DataOut::parse(bhs)),
            Opcode::LogoutRequest => Self::Logout(LogoutRequest::parse(bhs)),
            Opcode::Snack => Self::Snack(Snack::parse(bhs)),
            target => return Err(PduError::NotInitiatorOpcode(target as u8)),
        })
    }
}

// ---- Target PDUs: built ----

/// The three sequence numbers every target PDU but Data-In without status and R2T's StatSN
/// carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sequence {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

impl Sequence {
    fn write(&self, bhs: &mut Bhs) {
        put32(bhs, 24, self.stat_sn);
        put32(bhs, 28, self.exp_cmd_sn);
        put32(bhs, 32, self.max_cmd_sn);
    }

    fn parse(bhs: &Bhs) -> Self {
        Self {
            stat_sn: be32(bhs, 24),
            exp_cmd_sn: be32(bhs, 28),
            max_cmd_sn: be32(bhs, 32),
        }
    }
}

/// NOP-In (§11.19): an answer to a NOP-Out (its ITT, TTT 0xffffffff) or a target's ping
/// (ITT 0xffffffff, a TTT the initiator echoes back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NopIn {
    pub data_segment_length: u32,
    pub lun: u64,
    pub initiator_task_tag: u32,
    pub target_transfer_tag: u32,
    pub sequence: Sequence,
}

impl NopIn {
    pub fn write(&self, bhs: &mut Bhs) {
        write_common(bhs, Opcode::NopIn, FLAG_FINAL, self.data_segment_length);
        put64(bhs, 8, self.lun);
        put32(bhs, 16, self.initiator_task_tag);
        put32(bhs, 20, self.target_transfer_tag);
        self.sequence.write(bhs);
    }

    pub fn parse(bhs: &Bhs) -> Self {
        Self {
            data_segment_length: data_segment_length(bhs),
            lun: be64(bhs, 8),
            initiator_task_tag: be32(bhs, 16),
            target_transfer_tag: be32(bhs, 20),
            sequence: Sequence::parse(bhs),
        }
    }
}

/// Residual flags and count of a SCSI Response or a Data-In with status (§11.4.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Residual {
    #[default]
    None,
    /// The initiator expected more than the command transferred.
    Underflow(u32),
    /// The command would have transferred more than the initiator expected.
    Overflow(u32),
}

impl Residual {
    fn flags(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Underflow(_) => 0x02,
            Self::Overflow(_) => 0x04,
        }
    }

    fn count(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Underflow(count) | Self::Overflow(count) => count,
        }
    }

    fn parse(flags: u8, count: u32) -> Self {
        if flags & 0x04 != 0 {
            Self::Overflow(count)
        } else if flags & 0x02 != 0 {
            Self::Underflow(count)
        } else {
            Self::None
        }
    }
}

/// SCSI Response (§11.4). The data segment, when present, is the sense data preceded by its
/// two-byte length (§11.4.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiResponse {
    /// 0x00 command completed at target, 0x01 target failure.
    pub response: u8,
    pub status: u8,
    pub residual: Residual,
    pub data_segment_length: u32,
    pub initiator_task_tag: u32,
    pub sequence: Sequence,
    pub exp_data_sn: u32,
}

impl ScsiResponse {
    pub fn write(&self, bhs: &mut Bhs) {
        write_common(
            bhs,
            Opcode::ScsiResponse,
            FLAG_FINAL | self.residual.flags(),
            self.data_segment_length,
        );
        bhs[2] = self.response;
        bhs[3] = self.status;
        put32(bhs, 16, self.initiator_task_tag);
        self.sequence.write(bhs);
        put32(bhs, 36, self.exp_data_sn);
        put32(bhs, 44, self.residual.count());
    }

    pub fn parse(bhs: &Bhs) -> Self {
        Self {
            response: bhs[2],
            status: bhs[3],
            residual: Residual::parse(bhs[1], be32(bhs, 44)),
            data_segment_length: data_segment_length(bhs),
            initiator_task_tag: be32(bhs, 16),
            sequence: Sequence::parse(bhs),
            exp_data_sn: be32(bhs, 36),
        }
    }
}

/// Task Management Function Response (§11.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskManagementResponse {
    /// One of [`tmf`]'s responses.
    pub response: u8,
    pub initiator_task_tag: u32,
    pub sequence: Sequence,
}

impl TaskManagementResponse {
    pub fn write(&self, bhs: &mut Bhs) {
        write_common(bhs, Opcode::TaskManagementResponse, FLAG_FINAL, 0);
        bhs[2] = self.response;
        put32(bhs, 16, self.initiator_task_tag);
        self.sequence.write(bhs);
    }

    pub fn parse(bhs: &Bhs) -> Self {
        Self {
            response: bhs[2],
            initiator_task_tag: be32(bhs, 16),
            sequence: Sequence::parse(bhs),
        }
    }
}

/// Login status classes and details (§11.13.5).
pub mod login_status {
    pub const SUCCESS: (u8, u8) = (0x00, 0x00);
    pub const INITIATOR_ERROR: u8 = 0x02;
    pub const AUTHENTICATION_FAILURE: (u8, u8) = (0x02, 0x01);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (0x02, 0x02);
    pub const NOT_FOUND: (u8, u8) = (0x02, 0x03);
    pub const TARGET_REMOVED: (u8, u8) = (0x02, 0x04);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (0x02, 0x05);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (0x02, 0x06);
    pub const MISSING_PARAMETER: (u8, u8) = (0x02, 0x07);
    pub const CANT_INCLUDE_IN_SESSION: (u8, u8) = (0x02, 0x08);
    pub const SESSION_TYPE_NOT_SUPPORTED: (u8, u8) = (0x02, 0x09);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (0x02, 0x0a);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (0x02, 0x0b);
    pub const INITIATOR_ERROR_GENERIC: (u8, u8) = (0x02, 0x00);
    pub const TARGET_ERROR: (u8, u8) = (0x03, 0x00);
    pub const SERVICE_UNAVAILABLE: (u8, u8) = (0x03, 0x01);
    pub const OUT_OF_RESOURCES: (u8, u8) = (0x03, 0x02);
}

/// Login Response (§11.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_: bool,
    pub current_stage: u8,
    pub next_stage: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub data_segment_length: u32,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub initiator_task_tag: u32,
    pub sequence: Sequence,
    pub status_class: u8,
    pub status_detail: u8,
}

impl LoginResponse {
    pub fn write(&self, bhs: &mut Bhs) {
        let mut flags = (self.current_stage & 0x03) << 2 | (self.next_stage & 0x03);
        if self.transit {
            flags |= FLAG_TRANSIT;
        }
        if self.continue_ {
            flags |= FLAG_CONTINUE;
        }
        write_common(bhs, Opcode::LoginResponse, flags, self.data_segment_length);
        bhs[2] = self.version_max;
        bhs[3] = self.version_active;
        bhs[8..14].copy_from_slice(&self.isid);
        put16(bhs, 14, self.tsih);
        put32(bhs, 16, self.initiator_task_tag);
        self.sequence.write(bhs);
        bhs[36] = self.status_class;
        bhs[37] = self.status_detail;
    }

    pub fn parse(bhs: &Bhs) -> Self {
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&bhs[8..14]);
        Self {
            transit: bhs[1] & FLAG_TRANSIT != 0,
            continue_: bhs[1] & FLAG_CONTINUE != 0,
            current_stage: (bhs[1] >> 2) & 0x03,
            next_stage: bhs[1] & 0x03,
            version_max: bhs[2],
            version_active: bhs[3],
            data_segment_length: data_segment_length(bhs),
            isid,
            tsih: be16(bhs, 14),
            initiator_task_tag: be32(bhs, 16),
            sequence: Sequence::parse(bhs),
            status_class: bhs[36],
            status_detail: bhs[37],
        }
    }
}

/// Text Response (§11.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextResponse {
    pub final_: bool,
    pub continue_: bool,
    pub data_segment_length: u32,
    pub lun: u64,
    pub initiator_task_tag: u32,
    /// 0xffffffff on the final response; otherwise a tag the initiator returns to ask for
    /// the rest.
    pub target_transfer_tag: u32,
    pub sequence: Sequence,
}

impl TextResponse {
    pub fn write(&self, bhs: &mut Bhs) {
        let mut flags = 0;
        if self.final_ {
            flags |= FLAG_FINAL;
        }
        if self.continue_ {
            flags |= FLAG_CONTINUE;
        }
        write_common(bhs, Opcode::TextResponse, flags, self.data_segment_length);
        put64(bhs, 8, self.lun);
        put32(bhs, 16, self.initiator_task_tag);
        put32(bhs, 20, self.target_transfer_tag);
        self.sequence.write(bhs);
    }

    pub fn parse(bhs: &Bhs) -> Self {
        Self {
            final_: bhs[1] & FLAG_FINAL != 0,
            continue_: bhs[1] & FLAG_CONTINUE != 0,
            data_segment_length: data_segment_length(bhs),
            lun: be64(bhs, 8),
            initiator_task_tag: be32(bhs, 16),
            target_transfer_tag: be32(bhs, 20),
            sequence: Sequence::parse(bhs),
        }
    }
}

/// SCSI Data-In (§11.7). With `status` set, the last Data-In carries the command's status
/// (phase collapse, S bit) and then `sequence.stat_sn` is meaningful; otherwise StatSN is
/// zero on the wire and only ExpCmdSN/MaxCmdSN are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataIn {
    pub final_: bool,
    /// A-bit: the target asks for a DataACK SNACK (never at ErrorRecoveryLevel 0).
    pub acknowledge: bool,
    /// The SCSI status, when this PDU carries it.
    pub status: Option<u8>,
    pub residual: Residual,
    pub data_segment_length: u32,
    pub lun: u64,
    pub initiator_task_tag: u32,
    pub target_transfer_tag: u32,
    pub sequence: Sequence,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

impl DataIn {
    pub fn write(&self, bhs: &mut Bhs) {
        let mut flags = 0;
        if self.final_ {
            flags |= FLAG_FINAL;
        }
        if self.acknowledge {
            flags |= 0x40;
        }
        if self.status.is_some() {
            flags |= 0x01 | self.residual.flags();
        }
        write_common(bhs, Opcode::DataIn, flags, self.data_segment_length);
        put64(bhs, 8, self.lun);
        put32(bhs, 16, self.initiator_task_tag);
        put32(bhs, 20, self.target_transfer_tag);
        self.sequence.write(bhs);
        if let Some(status) = self.status {
            bhs[3] = status;
            put32(bhs, 44, self.residual.count());
        } else {
            put32(bhs, 24, 0);
        }
        put32(bhs, 36, self.data_sn);
        put32(bhs, 40, self.buffer_offset);
    }

    pub fn parse(bhs: &Bhs) -> Self {
        let has_status = bhs[1] & 0x01 != 0;
        Self {
            final_: bhs[1] & FLAG_FINAL != 0,
            acknowledge: bhs[1] & 0x40 != 0,
            status: has_status.then_some(bhs[3]),
            residual: if has_status {
                Residual::parse(bhs[1], be32(bhs, 44))
            } else {
                Residual::None
            },
            data_segment_length: data_segment_length(bhs),
            lun: be64(bhs, 8),
            initiator_task_tag: be32(bhs, 16),
            target_transfer_tag: be32(bhs, 20),
            sequence: Sequence::parse(bhs),
            data_sn: be32(bhs, 36),
            buffer_offset: be32(bhs, 40),
        }
    }
}

/// Logout Response (§11.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogoutResponse {
    /// One of [`logout`]'s responses.
    pub response: u8,
    pub initiator_task_tag: u32,
    pub sequence: Sequence,
    pub time2wait: u16,
    pub time2retain: u16,
}

impl LogoutResponse {
    pub fn write(&self, bhs: &mut Bhs) {
        write_common(bhs, Opcode::LogoutResponse, FLAG_FINAL, 0);
        bhs[2] = self.response;
        put32(bhs, 16, self.initiator_task_tag);
        self.sequence.write(bhs);
        put16(bhs, 40, self.time2wait);
        put16(bhs, 42, self.time2retain);
    }

    pub fn parse(bhs: &Bhs) -> Self {
        Self {
            response: bhs[2],
            initiator_task_tag: be32(bhs, 16),
            sequence: Sequence::parse(bhs),
            time2wait: be16(bhs, 40),
            time2retain: be16(bhs, 42),
        }
    }
}

/// Ready To Transfer (§11.8): asks for `desired_data_transfer_length` bytes of Data-Out at
/// `buffer_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyToTransfer {
    pub lun: u64,
    pub initiator_task_tag: u32,
    pub target_transfer_tag: u32,
    pub sequence: Sequence,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_data_transfer_length: u32,
}

impl ReadyToTransfer {
    pub fn write(&self, bhs: &mut Bhs) {
        write_common(bhs, Opcode::ReadyToTransfer, FLAG_FINAL, 0);
        put64(bhs, 8, self.lun);
        put32(bhs, 16, self.initiator_task_tag);
        put32(bhs, 20, self.target_transfer_tag);
        self.sequence.write(bhs);
        put32(bhs, 36, self.r2t_sn);
        put32(bhs, 40, self.buffer_offset);
        put32(bhs, 44, self.desired_data_transfer_length);
    }

    pub fn parse(bhs: &Bhs) -> Self {
        Self {
            lun: be64(bhs, 8),
            initiator_task_tag: be32(bhs, 16),
            target_transfer_tag: be32(bhs, 20),
            sequence: Sequence::parse(bhs),
            r2t_sn: be32(bhs, 36),
            buffer_offset: be32(bhs, 40),
            desired_data_transfer_length: be32(bhs, 44),
        }
    }
}

/// Asynchronous events (§11.9.1).
pub mod async_event {
    pub const SCSI_ASYNC_EVENT: u8 = 0;
    pub const LOGOUT_REQUESTED: u8 = 1;
    pub const CONNECTION_DROP: u8 = 2;
    pub const SESSION_DROP: u8 = 3;
    pub const NEGOTIATION_REQUESTED: u8 = 4;
    pub const TASK_TERMINATION: u8 = 5;
}

/// Asynchronous Message (§11.9). Event 0 carries sense data in its data segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncMessage {
    pub data_segment_length: u32,
    pub lun: u64,
    pub sequence: Sequence,
    /// One of [`async_event`]'s events.
    pub event: u8,
    pub vendor_code: u8,
    pub parameters: [u16; 3],
}

impl AsyncMessage {
    pub fn write(&self, bhs: &mut Bhs) {
        write_common(
            bhs,
            Opcode::AsyncMessage,
            FLAG_FINAL,
            self.data_segment_length,
        );
        put64(bhs, 8, self.lun);
        put32(bhs, 16, RESERVED_TAG);
        self.sequence.write(bhs);
        bhs[36] = self.event;
        bhs[37] = self.vendor_code;
        put16(bhs, 38, self.parameters[0]);
        put16(bhs, 40, self.parameters[1]);
        put16(bhs, 42, self.parameters[2]);
    }

    pub fn parse(bhs: &Bhs) -> Self {
        Self {
            data_segment_length: data_segment_length(bhs),
            lun: be64(bhs, 8),
            sequence: Sequence::parse(bhs),
            event: bhs[36],
            vendor_code: bhs[37],
            parameters: [be16(bhs, 38), be16(bhs, 40), be16(bhs, 42)],
        }
    }
}

/// Reject reasons (§11.17.1).
pub mod reject {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OPERATION_REJECT: u8 = 0x0a;
    pub const DEPRECATED: u8 = 0x0b;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Reject (§11.17). Its data segment is the rejected PDU's BHS, so `data_segment_length` is
/// 48 as [`Reject::write`] sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    /// One of [`reject`]'s reasons.
    pub reason: u8,
    pub sequence: Sequence,
    pub data_sn: u32,
}

impl Reject {
    pub fn write(&self, bhs: &mut Bhs) {
        write_common(bhs, Opcode::Reject, FLAG_FINAL, BHS_BYTES as u32);
        bhs[2] = self.reason;
        put32(bhs, 16, RESERVED_TAG);
        self.sequence.write(bhs);
        put32(bhs, 36, self.data_sn);
    }

    pub fn parse(bhs: &Bhs) -> Self {
        Self {
            reason: bhs[2],
            sequence: Sequence::parse(bhs),
            data_sn: be32(bhs, 36),
        }
    }
}

/// Any PDU a target sends, parsed back from its BHS (for tests, fuzzing and a test
/// initiator; the target itself only builds these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetPdu {
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskManagement(TaskManagementResponse),
    Login(LoginResponse),
    Text(TextResponse),
    DataIn(DataIn),
    Logout(LogoutResponse),
    ReadyToTransfer(ReadyToTransfer),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

impl TargetPdu {
    pub fn parse(bhs: &Bhs) -> Result<Self, PduError> {
        let opcode = Opcode::from_byte(bhs[0])?;
        Ok(match opcode {
            Opcode::NopIn => Self::NopIn(NopIn::parse(bhs)),
            Opcode::ScsiResponse => Self::ScsiResponse(ScsiResponse::parse(bhs)),
            Opcode::TaskManagementResponse => {
                Self::TaskManagement(TaskManagementResponse::parse(bhs))
            }
            Opcode::LoginResponse => Self::Login(LoginResponse::parse(bhs)),
            Opcode::TextResponse => Self::Text(TextResponse::parse(bhs)),
            Opcode::DataIn => Self::DataIn(DataIn::parse(bhs)),
            Opcode::LogoutResponse => Self::Logout(LogoutResponse::parse(bhs)),
            Opcode::ReadyToTransfer => Self::ReadyToTransfer(ReadyToTransfer::parse(bhs)),
            Opcode::AsyncMessage => Self::AsyncMessage(AsyncMessage::parse(bhs)),
            Opcode::Reject => Self::Reject(Reject::parse(bhs)),
            initiator => return Err(PduError::UnknownOpcode(initiator as u8)),
        })
    }

    /// Builds this PDU's BHS.
    pub fn write(&self, bhs: &mut Bhs) {
        match self {
            Self::NopIn(p) => p.write(bhs),
            Self::ScsiResponse(p) => p.write(bhs),
            Self::TaskManagement(p) => p.write(bhs),
            Self::Login(p) => p.write(bhs),
            Self::Text(p) => p.write(bhs),
            Self::DataIn(p) => p.write(bhs),
            Self::Logout(p) => p.write(bhs),
            Self::ReadyToTransfer(p) => p.write(bhs),
            Self::AsyncMessage(p) => p.write(bhs),
            Self::Reject(p) => p.write(bhs),
        }
    }
}

/// Builds an initiator's Login Request BHS (for tests and a test initiator).
pub fn write_login_request(request: &LoginRequest, bhs: &mut Bhs) {
    let mut flags = (request.current_stage & 0x03) << 2 | (request.next_stage & 0x03);
    if request.transit {
        flags |= FLAG_TRANSIT;
    }
    if request.continue_ {
        flags |= FLAG_CONTINUE;
    }
    write_common(
        bhs,
        Opcode::LoginRequest,
        flags,
        request.data_segment_length,
    );
    bhs[0] |= FLAG_IMMEDIATE;
    bhs[2] = request.version_max;
    bhs[3] = request.version_min;
    bhs[8..14].copy_from_slice(&request.isid);
    put16(bhs, 14, request.tsih);
    put32(bhs, 16, request.initiator_task_tag);
    put16(bhs, 20, request.cid);
    put32(bhs, 24, request.cmd_sn);
    put32(bhs, 28, request.exp_stat_sn);
}

/// Builds an initiator's Text Request BHS (tests).
pub fn write_text_request(request: &TextRequest, bhs: &mut Bhs) {
    let mut flags = 0;
    if request.final_ {
        flags |= FLAG_FINAL;
    }
    if request.continue_ {
        flags |= FLAG_CONTINUE;
    }
    write_common(bhs, Opcode::TextRequest, flags, request.data_segment_length);
    if request.immediate {
        bhs[0] |= FLAG_IMMEDIATE;
    }
    put64(bhs, 8, request.lun);
    put32(bhs, 16, request.initiator_task_tag);
    put32(bhs, 20, request.target_transfer_tag);
    put32(bhs, 24, request.cmd_sn);
    put32(bhs, 28, request.exp_stat_sn);
}

/// Builds an initiator's Logout Request BHS (tests).
pub fn write_logout_request(request: &LogoutRequest, bhs: &mut Bhs) {
    write_common(bhs, Opcode::LogoutRequest, FLAG_FINAL | request.reason, 0);
    if request.immediate {
        bhs[0] |= FLAG_IMMEDIATE;
    }
    put32(bhs, 16, request.initiator_task_tag);
    put16(bhs, 20, request.cid);
    put32(bhs, 24, request.cmd_sn);
    put32(bhs, 28, request.exp_stat_sn);
}

/// Builds an initiator's NOP-Out BHS (tests).
pub fn write_nop_out(request: &NopOut, bhs: &mut Bhs) {
    write_common(bhs, Opcode::NopOut, FLAG_FINAL, request.data_segment_length);
    if request.immediate {
        bhs[0] |= FLAG_IMMEDIATE;
    }
    put64(bhs, 8, request.lun);
    put32(bhs, 16, request.initiator_task_tag);
    put32(bhs, 20, request.target_transfer_tag);
    put32(bhs, 24, request.cmd_sn);
    put32(bhs, 28, request.exp_stat_sn);
}

/// Builds an initiator's SCSI Command BHS (tests and a test initiator). AHS is not written:
/// `ahs_bytes` must be 0.
pub fn write_scsi_command(command: &ScsiCommand, bhs: &mut Bhs) {
    let mut flags = command.attributes & 0x07;
    if command.final_ {
        flags |= FLAG_FINAL;
    }
    if command.read {
        flags |= 0x40;
    }
    if command.write {
        flags |= 0x20;
    }
    write_common(bhs, Opcode::ScsiCommand, flags, command.data_segment_length);
    if command.immediate {
        bhs[0] |= FLAG_IMMEDIATE;
    }
    put64(bhs, 8, command.lun);
    put32(bhs, 16, command.initiator_task_tag);
    put32(bhs, 20, command.expected_data_transfer_length);
    put32(bhs, 24, command.cmd_sn);
    put32(bhs, 28, command.exp_stat_sn);
    bhs[32..48].copy_from_slice(&command.cdb);
}

/// Builds an initiator's SCSI Data-Out BHS (tests and a test initiator).
pub fn write_data_out(data_out: &DataOut, bhs: &mut Bhs) {
    let flags = if data_out.final_ { FLAG_FINAL } else { 0 };
    write_common(bhs, Opcode::DataOut, flags, data_out.data_segment_length);
    put64(bhs, 8, data_out.lun);
    put32(bhs, 16, data_out.initiator_task_tag);
    put32(bhs, 20, data_out.target_transfer_tag);
    put32(bhs, 28, data_out.exp_stat_sn);
    put32(bhs, 36, data_out.data_sn);
    put32(bhs, 40, data_out.buffer_offset);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first Login Request of a libiscsi initiator (iscsi-ls), laid out by hand from RFC
    /// 7143 §11.12: immediate, T=1, CSG=0 (security), NSG=1 (operational), version 0/0, an
    /// ISID of type 01 (random), TSIH 0, ITT 0, CID 0, CmdSN 0, ExpStatSN 0.
    const LIBISCSI_LOGIN: [u8; 48] = [
        0x43, 0x81, 0x00, 0x00, 0x00, 0x00, 0x01, 0x0b, // opcode, flags, versions, DSL 267
        0x40, 0x00, 0x01, 0x37, 0x00, 0x00, 0x00, 0x00, // ISID 400001370000, TSIH 0
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // ITT, CID, reserved
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // CmdSN, ExpStatSN
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn scsi_commands_and_data_outs_built_for_a_test_initiator_parse_back() {
        let command = ScsiCommand {
            immediate: false,
            final_: true,
            read: false,
            write: true,
            attributes: 1,
            ahs_bytes: 0,
            data_segment_length: 512,
            lun: 3 << 48,
            initiator_task_tag: 7,
            expected_data_transfer_length: 4096,
            cmd_sn: 9,
            exp_stat_sn: 11,
            cdb: [0x2a, 0, 0, 0, 0, 8, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
        };
        let mut bhs = [0u8; BHS_BYTES];
        write_scsi_command(&command, &mut bhs);
        assert_eq!(
            InitiatorPdu::parse(&bhs).unwrap(),
            InitiatorPdu::ScsiCommand(command)
        );
        let data_out = DataOut {
            final_: true,
            data_segment_length: 1024,
            lun: 3 << 48,
            initiator_task_tag: 7,
            target_transfer_tag: 0x1234,
            exp_stat_sn: 12,
            data_sn: 2,
            buffer_offset: 2048,
        };
        write_data_out(&data_out, &mut bhs);
        assert_eq!(
            InitiatorPdu::parse(&bhs).unwrap(),
            InitiatorPdu::DataOut(data_out)
        );
    }

    #[test]
    fn a_libiscsi_login_request_parses() {
        let common = Common::parse(&LIBISCSI_LOGIN).unwrap();
        assert_eq!(common.opcode, Opcode::LoginRequest);
        assert!(common.immediate);
        assert_eq!(common.data_segment_length, 267);
        let InitiatorPdu::Login(login) = InitiatorPdu::parse(&LIBISCSI_LOGIN).unwrap() else {
            panic!("not a login");
        };
        assert!(login.transit && !login.continue_);
        assert_eq!((login.current_stage, login.next_stage), (0, 1));
        assert_eq!(login.isid, [0x40, 0x00, 0x01, 0x37, 0x00, 0x00]);
        assert_eq!(login.tsih, 0);
        let framing = Framing::of(&LIBISCSI_LOGIN, false, false, 8192, 0).unwrap();
        assert_eq!(framing.padding_bytes, 1);
        assert_eq!(framing.rest_bytes(), 268);
        let digests = Framing::of(&LIBISCSI_LOGIN, true, true, 8192, 0).unwrap();
        assert_eq!(digests.rest_bytes(), 268 + 8);
        // Built back, it is the same bytes.
        let mut built = [0u8; 48];
        write_login_request(&login, &mut built);
        assert_eq!(built, LIBISCSI_LOGIN);
    }

    #[test]
    fn a_scsi_read_10_command_parses() {
        let mut bhs = [0u8; 48];
        bhs[0] = 0x01;
        bhs[1] = 0x80 | 0x40 | 0x01; // F, R, simple
        bhs[8..16].copy_from_slice(&[0x00, 0x03, 0, 0, 0, 0, 0, 0]); // LUN 3
        bhs[16..20].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        bhs[20..24].copy_from_slice(&4096u32.to_be_bytes());
        bhs[24..28].copy_from_slice(&7u32.to_be_bytes());
        bhs[28..32].copy_from_slice(&9u32.to_be_bytes());
        bhs[32..42].copy_from_slice(&[0x28, 0, 0, 0, 0, 0x10, 0, 0, 8, 0]);
        let InitiatorPdu::ScsiCommand(command) = InitiatorPdu::parse(&bhs).unwrap() else {
            panic!("not a command");
        };
        assert!(command.final_ && command.read && !command.write && !command.immediate);
        assert_eq!(command.attributes, 1);
        assert_eq!(command.lun, 0x0003_0000_0000_0000);
        assert_eq!(command.initiator_task_tag, 0x1234_5678);
        assert_eq!(command.expected_data_transfer_length, 4096);
        assert_eq!((command.cmd_sn, command.exp_stat_sn), (7, 9));
        assert_eq!(command.cdb[0], 0x28);
        assert_eq!(command.cdb[8], 8);
    }

    #[test]
    fn initiator_pdus_parse_their_fields() {
        let mut bhs = [0u8; 48];
        bhs[0] = 0x05; // Data-Out
        bhs[1] = 0x80;
        bhs[5..8].copy_from_slice(&[0, 0x20, 0]); // 8192
        bhs[20..24].copy_from_slice(&77u32.to_be_bytes());
        bhs[36..40].copy_from_slice(&2u32.to_be_bytes());
        bhs[40..44].copy_from_slice(&16384u32.to_be_bytes());
        let InitiatorPdu::DataOut(data) = InitiatorPdu::parse(&bhs).unwrap() else {
            panic!("not a Data-Out");
        };
        assert_eq!(
            (
                data.final_,
                data.data_segment_length,
                data.target_transfer_tag,
                data.data_sn,
                data.buffer_offset
            ),
            (true, 8192, 77, 2, 16384)
        );

        let mut bhs = [0u8; 48];
        bhs[0] = 0x42; // immediate TMF
        bhs[1] = 0x80 | tmf::LOGICAL_UNIT_RESET;
        bhs[20..24].copy_from_slice(&RESERVED_TAG.to_be_bytes());
        let InitiatorPdu::TaskManagement(request) = InitiatorPdu::parse(&bhs).unwrap() else {
            panic!("not a TMF");
        };
        assert!(request.immediate);
        assert_eq!(request.function, tmf::LOGICAL_UNIT_RESET);
        assert_eq!(request.referenced_task_tag, RESERVED_TAG);

        let mut bhs = [0u8; 48];
        let logout = LogoutRequest {
            immediate: true,
            reason: logout::CLOSE_SESSION,
            initiator_task_tag: 5,
            cid: 1,
            cmd_sn: 10,
            exp_stat_sn: 11,
        };
        write_logout_request(&logout, &mut bhs);
        assert_eq!(bhs[0], 0x46);
        assert_eq!(bhs[1], 0x80);
        assert_eq!(InitiatorPdu::parse(&bhs), Ok(InitiatorPdu::Logout(logout)));

        let mut bhs = [0u8; 48];
        let text = TextRequest {
            immediate: true,
            final_: true,
            continue_: false,
            data_segment_length: 16,
            lun: 0,
            initiator_task_tag: 1,
            target_transfer_tag: RESERVED_TAG,
            cmd_sn: 1,
            exp_stat_sn: 2,
        };
        write_text_request(&text, &mut bhs);
        assert_eq!(InitiatorPdu::parse(&bhs), Ok(InitiatorPdu::Text(text)));

        let mut bhs = [0u8; 48];
        let nop = NopOut {
            immediate: true,
            lun: 0,
            initiator_task_tag: 9,
            target_transfer_tag: RESERVED_TAG,
            cmd_sn: 3,
            exp_stat_sn: 4,
            data_segment_length: 0,
        };
        write_nop_out(&nop, &mut bhs);
        assert_eq!(InitiatorPdu::parse(&bhs), Ok(InitiatorPdu::NopOut(nop)));

        let mut bhs = [0u8; 48];
        bhs[0] = 0x10;
        bhs[1] = 0x80 | 0x01;
        assert!(matches!(
            InitiatorPdu::parse(&bhs),
            Ok(InitiatorPdu::Snack(Snack { kind: 1, .. }))
        ));
    }

    #[test]
    fn bad_opcodes_are_errors() {
        let mut bhs = [0u8; 48];
        bhs[0] = 0x07;
        assert_eq!(
            InitiatorPdu::parse(&bhs),
            Err(PduError::UnknownOpcode(0x07))
        );
        bhs[0] = 0x21;
        assert_eq!(
            InitiatorPdu::parse(&bhs),
            Err(PduError::NotInitiatorOpcode(0x21))
        );
        assert_eq!(bhs_from(&[0u8; 47]), Err(PduError::Short(47)));
    }

    #[test]
    fn framing_refuses_oversized_segments() {
        let mut bhs = LIBISCSI_LOGIN;
        bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(
            Framing::of(&bhs, false, false, 8192, 0),
            Err(PduError::DataSegmentTooLong {
                length: MAX_DATA_SEGMENT_FIELD,
                limit: 8192
            })
        );
        let mut bhs = LIBISCSI_LOGIN;
        bhs[4] = 2;
        assert_eq!(
            Framing::of(&bhs, false, false, 8192, 4),
            Err(PduError::AhsTooLong {
                length: 8,
                limit: 4
            })
        );
        assert_eq!(
            (padding(0), padding(1), padding(4), padding(7)),
            (0, 3, 0, 1)
        );
    }

    #[test]
    fn a_login_response_is_laid_out_as_rfc_7143_says() {
        let response = LoginResponse {
            transit: true,
            continue_: false,
            current_stage: stage::OPERATIONAL,
            next_stage: stage::FULL_FEATURE,
            version_max: 0,
            version_active: 0,
            data_segment_length: 5,
            isid: [0x40, 0, 1, 0x37, 0, 0],
            tsih: 0x0102,
            initiator_task_tag: 0xa0b0_c0d0,
            sequence: Sequence {
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
            },
            status_class: 0x02,
            status_detail: 0x01,
        };
        let mut bhs = [0u8; 48];
        response.write(&mut bhs);
        let mut expected = [0u8; 48];
        expected[..8].copy_from_slice(&[0x23, 0x87, 0, 0, 0, 0, 0, 5]);
        expected[8..16].copy_from_slice(&[0x40, 0, 1, 0x37, 0, 0, 0x01, 0x02]);
        expected[16..20].copy_from_slice(&[0xa0, 0xb0, 0xc0, 0xd0]);
        expected[24..36].copy_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
        expected[36] = 0x02;
        expected[37] = 0x01;
        assert_eq!(bhs, expected);
        assert_eq!(TargetPdu::parse(&bhs), Ok(TargetPdu::Login(response)));
    }

    #[test]
    fn target_pdus_round_trip() {
        let sequence = Sequence {
            stat_sn: 100,
            exp_cmd_sn: 200,
            max_cmd_sn: 263,
        };
        let pdus = [
            TargetPdu::NopIn(NopIn {
                data_segment_length: 0,
                lun: 0,
                initiator_task_tag: RESERVED_TAG,
                target_transfer_tag: 42,
                sequence,
            }),
            TargetPdu::ScsiResponse(ScsiResponse {
                response: 0,
                status: 0x02,
                residual: Residual::Underflow(512),
                data_segment_length: 20,
                initiator_task_tag: 8,
                sequence,
                exp_data_sn: 0,
            }),
            TargetPdu::TaskManagement(TaskManagementResponse {
                response: tmf::TASK_DOES_NOT_EXIST,
                initiator_task_tag: 3,
                sequence,
            }),
            TargetPdu::Text(TextResponse {
                final_: false,
                continue_: true,
                data_segment_length: 8192,
                lun: 0,
                initiator_task_tag: 1,
                target_transfer_tag: 1,
                sequence,
            }),
            TargetPdu::DataIn(DataIn {
                final_: true,
                acknowledge: false,
                status: Some(0),
                residual: Residual::Overflow(4096),
                data_segment_length: 4096,
                lun: 0x0001_0000_0000_0000,
                initiator_task_tag: 4,
                target_transfer_tag: RESERVED_TAG,
                sequence,
                data_sn: 3,
                buffer_offset: 12288,
            }),
            TargetPdu::DataIn(DataIn {
                final_: false,
                acknowledge: false,
                status: None,
                residual: Residual::None,
                data_segment_length: 4096,
                lun: 0,
                initiator_task_tag: 4,
                target_transfer_tag: RESERVED_TAG,
                sequence: Sequence {
                    stat_sn: 0,
                    ..sequence
                },
                data_sn: 0,
                buffer_offset: 0,
            }),
            TargetPdu::Logout(LogoutResponse {
                response: logout::CLOSED,
                initiator_task_tag: 6,
                sequence,
                time2wait: 2,
                time2retain: 0,
            }),
            TargetPdu::ReadyToTransfer(ReadyToTransfer {
                lun: 0,
                initiator_task_tag: 7,
                target_transfer_tag: 0x10,
                sequence,
                r2t_sn: 1,
                buffer_offset: 65536,
                desired_data_transfer_length: 65536,
            }),
            TargetPdu::AsyncMessage(AsyncMessage {
                data_segment_length: 0,
                lun: 0,
                sequence,
                event: async_event::LOGOUT_REQUESTED,
                vendor_code: 0,
                parameters: [0, 0, 2],
            }),
            TargetPdu::Reject(Reject {
                reason: reject::PROTOCOL_ERROR,
                sequence,
                data_sn: 0,
            }),
        ];
        for pdu in pdus {
            let mut bhs = [0u8; 48];
            pdu.write(&mut bhs);
            assert_eq!(TargetPdu::parse(&bhs), Ok(pdu), "{pdu:?}");
            let common = Common::parse(&bhs).unwrap();
            assert!(!common.opcode.is_initiator());
            assert!(!common.immediate);
        }
    }

    #[test]
    fn scsi_response_bytes() {
        let mut bhs = [0u8; 48];
        ScsiResponse {
            response: 0,
            status: 0x02,
            residual: Residual::Underflow(0x200),
            data_segment_length: 20,
            initiator_task_tag: 0x11,
            sequence: Sequence {
                stat_sn: 5,
                exp_cmd_sn: 6,
                max_cmd_sn: 7,
            },
            exp_data_sn: 1,
        }
        .write(&mut bhs);
        assert_eq!(&bhs[..8], &[0x21, 0x82, 0x00, 0x02, 0, 0, 0, 20]);
        assert_eq!(&bhs[16..20], &[0, 0, 0, 0x11]);
        assert_eq!(&bhs[36..40], &[0, 0, 0, 1]);
        assert_eq!(&bhs[44..48], &[0, 0, 2, 0]);
        // A Data-In with status sets S and the residual bit, and carries StatSN; one without
        // carries neither.
        DataIn {
            final_: true,
            acknowledge: false,
            status: Some(0),
            residual: Residual::Underflow(1),
            data_segment_length: 512,
            lun: 0,
            initiator_task_tag: 1,
            target_transfer_tag: RESERVED_TAG,
            sequence: Sequence {
                stat_sn: 9,
                exp_cmd_sn: 10,
                max_cmd_sn: 11,
            },
            data_sn: 0,
            buffer_offset: 0,
        }
        .write(&mut bhs);
        assert_eq!(&bhs[..4], &[0x25, 0x83, 0, 0]);
        assert_eq!(&bhs[24..28], &[0, 0, 0, 9]);
        assert_eq!(&bhs[44..48], &[0, 0, 0, 1]);
    }

    #[test]
    fn reject_carries_the_bhs_length() {
        let mut bhs = [0u8; 48];
        Reject {
            reason: reject::COMMAND_NOT_SUPPORTED,
            sequence: Sequence::default(),
            data_sn: 0,
        }
        .write(&mut bhs);
        assert_eq!(&bhs[..8], &[0x3f, 0x80, 0x05, 0, 0, 0, 0, 48]);
        assert_eq!(&bhs[16..20], &[0xff; 4]);
    }
}
