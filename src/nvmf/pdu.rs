//! The NVMe/TCP PDU codec (NVMe/TCP transport specification, TP 8000): every PDU both sides
//! send, parsed from received bytes and encoded into a caller's buffer. No I/O, no state, no
//! allocation: the target's reactor sessions, the blocking admin and handshake threads and the
//! initiator all frame their PDUs here.
//!
//! A PDU on the wire:
//!
//! ```text
//!  0 type | 1 flags | 2 HLEN | 3 PDO | 4-7 PLEN (LE)      common header, 8 bytes
//!  8 .. HLEN        PDU-specific header                  (HLEN is fixed per type)
//!  [HDGST 4]        CRC32C of bytes 0..HLEN               (flag HDGSTF; negotiated)
//!  [PAD]            up to PDO, the receiver's alignment  (PDA: (value + 1) * 4 bytes)
//!  PDO .. DATA      PDU data                             (capsule data, H2C/C2H data)
//!  [DDGST 4]        CRC32C of the data, padding excluded  (flag DDGSTF; negotiated)
//! ```
//!
//! Reading is two steps so a receiver can put data straight where it belongs: [`parse_header`]
//! takes the first 8 bytes and the connection's [`Negotiated`] terms and checks every length
//! rule (HLEN for the type, PDO and PLEN bounds, digest flags against what was negotiated, the
//! data the receiver accepts); [`decode_header`] then checks the header digest and decodes the
//! type's fields into a [`Header`]; [`check_data_digest`] checks the data. [`decode`] does all
//! three over a whole PDU in memory. Errors say which fatal error status (FES) and field
//! offset (FEI) a C2HTermReq/H2CTermReq reports ([`PduError::fes`], [`PduError::fei`]).
//!
//! Writing: [`encode_header`] writes the common header, the type's fields, the header digest
//! and the padding up to PDO for `data_bytes` of data, and returns the [`Layout`]; the
//! caller sends the data after it, then the data's digest ([`digest::digest_of`]) if the layout says so.
//!
//! Digests are CRC32C (Castagnoli) sent least significant byte first, as Linux's nvme-tcp host
//! and nvmet-tcp target put them (`put_unaligned_le32(~crc32c(~0, ...))`): the header digest
//! covers bytes 0..HLEN (the common header included, no padding), the data digest the PDU data
//! only. ICReq, ICResp and the termination requests never carry digests.
//!
//! To add a PDU type: its [`PduType`] value, header length, direction and whether it carries
//! data in the `PduType` methods, its fields in a struct, a [`Header`] variant, and a line each
//! in [`decode_header`] and `write_fields`.

use super::command::{Command, Completion, COMMAND_BYTES, COMPLETION_BYTES};
use crate::digest;

/// Bytes of the common header every PDU begins with.
pub const COMMON_HEADER_BYTES: usize = 8;
/// Bytes of a header or data digest (CRC32C, `crate::digest`).
pub use crate::digest::DIGEST_BYTES;
/// HLEN (and PLEN) of ICReq and ICResp.
pub const IC_PDU_BYTES: usize = 128;
/// HLEN of a command capsule: the common header and a submission queue entry.
pub const CAPSULE_CMD_HEADER_BYTES: usize = COMMON_HEADER_BYTES + COMMAND_BYTES;
/// HLEN of a response capsule: the common header and a completion queue entry.
pub const CAPSULE_RESP_HEADER_BYTES: usize = COMMON_HEADER_BYTES + COMPLETION_BYTES;
/// HLEN of H2CData, C2HData, R2T, H2CTermReq and C2HTermReq.
pub const SHORT_HEADER_BYTES: usize = 24;
/// A termination request carries at most this much of the PDU header in error (PLEN <= 152).
pub const TERM_REQ_MAX_DATA_BYTES: usize = 128;
/// The most bytes before a PDU's data: PDO is one byte.
pub const MAX_DATA_OFFSET_BYTES: usize = u8::MAX as usize;
/// The largest PDA either side may ask for (0's based dwords: 128 bytes).
pub const MAX_PDA: u8 = 31;
/// The smallest MAXH2CDATA a controller may announce.
pub const MIN_MAXH2CDATA: u32 = 4096;

// Common header flags.
pub const FLAG_HEADER_DIGEST: u8 = 1 << 0;
pub const FLAG_DATA_DIGEST: u8 = 1 << 1;
/// H2CData/C2HData: the last data PDU of the command (or of the R2T's transfer).
pub const FLAG_LAST_PDU: u8 = 1 << 2;
/// C2HData: the command succeeded and no CapsuleResp follows (only with LAST_PDU, and only
/// when the host disabled SQ flow control in Connect).
pub const FLAG_SUCCESS: u8 = 1 << 3;

// ICReq/ICResp DGST field bits.
pub const DIGEST_ENABLE_HEADER: u8 = 1 << 0;
pub const DIGEST_ENABLE_DATA: u8 = 1 << 1;

// Fatal error status of a termination request.
pub const FES_INVALID_HEADER_FIELD: u16 = 0x01;
pub const FES_PDU_SEQUENCE_ERROR: u16 = 0x02;
pub const FES_HEADER_DIGEST_ERROR: u16 = 0x03;
pub const FES_DATA_OUT_OF_RANGE: u16 = 0x04;
pub const FES_DATA_LIMIT_EXCEEDED: u16 = 0x05;
pub const FES_UNSUPPORTED_PARAMETER: u16 = 0x06;

/// Which way a PDU travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    HostToController,
    ControllerToHost,
}

/// The PDU types of NVMe/TCP 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PduType {
    IcReq = 0x00,
    IcResp = 0x01,
    H2CTermReq = 0x02,
    C2HTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2CData = 0x06,
    C2HData = 0x07,
    R2T = 0x09,
}

impl PduType {
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2CTermReq,
            0x03 => PduType::C2HTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2CData,
            0x07 => PduType::C2HData,
            0x09 => PduType::R2T,
            _ => return None,
        })
    }
    /// HLEN: fixed per type.
    pub const fn header_bytes(self) -> usize {
        match self {
            PduType::IcReq | PduType::IcResp => IC_PDU_BYTES,
            PduType::CapsuleCmd => CAPSULE_CMD_HEADER_BYTES,
            PduType::CapsuleResp => CAPSULE_RESP_HEADER_BYTES,
            PduType::H2CTermReq
            | PduType::C2HTermReq
            | PduType::H2CData
            | PduType::C2HData
            | PduType::R2T => SHORT_HEADER_BYTES,
        }
    }
    pub const fn direction(self) -> Direction {
        match self {
            PduType::IcReq | PduType::H2CTermReq | PduType::CapsuleCmd | PduType::H2CData => {
                Direction::HostToController
            }
            PduType::IcResp
            | PduType::C2HTermReq
            | PduType::CapsuleResp
            | PduType::C2HData
            | PduType::R2T => Direction::ControllerToHost,
        }
    }
    /// Whether digests apply to this type once negotiated (never to the connection set-up and
    /// termination PDUs, whose receiver may not share the terms, or may be reporting a digest
    /// error).
    pub const fn takes_digests(self) -> bool {
        !matches!(
            self,
            PduType::IcReq | PduType::IcResp | PduType::H2CTermReq | PduType::C2HTermReq
        )
    }
    /// Whether PDU data may follow the header.
    pub const fn carries_data(self) -> bool {
        matches!(
            self,
            PduType::CapsuleCmd
                | PduType::H2CData
                | PduType::C2HData
                | PduType::H2CTermReq
                | PduType::C2HTermReq
        )
    }
    /// Whether data is required (a data PDU without data says nothing).
    const fn requires_data(self) -> bool {
        matches!(self, PduType::H2CData | PduType::C2HData)
    }
    /// The flags this type may carry besides the digest flags.
    const fn other_flags(self) -> u8 {
        match self {
            PduType::H2CData => FLAG_LAST_PDU,
            PduType::C2HData => FLAG_LAST_PDU | FLAG_SUCCESS,
            _ => 0,
        }
    }
}

/// What the two ends agreed in ICReq/ICResp, and what this end accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    /// HPDA: the alignment of PDU data in PDUs the controller sends (0's based dwords).
    pub host_pda: u8,
    /// CPDA: the alignment of PDU data in PDUs the host sends (0's based dwords).
    pub controller_pda: u8,
    /// The most PDU data this end accepts in one received PDU.
    pub max_data_bytes: u32,
}

impl Negotiated {
    /// Before ICReq/ICResp: no digests, no alignment.
    pub const fn initial(max_data_bytes: u32) -> Self {
        Negotiated {
            header_digest: false,
            data_digest: false,
            host_pda: 0,
            controller_pda: 0,
            max_data_bytes,
        }
    }
    /// Bytes PDU data of a PDU travelling `direction` is aligned to.
    pub const fn alignment_bytes(&self, direction: Direction) -> usize {
        let pda = match direction {
            Direction::HostToController => self.controller_pda,
            Direction::ControllerToHost => self.host_pda,
        };
        (pda as usize + 1) * 4
    }
}

/// A received PDU's layout, from its common header: where its parts are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub pdu_type: PduType,
    pub flags: u8,
    /// HLEN.
    pub header_bytes: usize,
    /// 4 if a header digest follows the header, else 0.
    pub header_digest_bytes: usize,
    /// Where the data begins (PDO), or where it would (the end of the header) if none.
    pub data_offset_bytes: usize,
    pub data_bytes: usize,
    /// 4 if a data digest follows the data, else 0.
    pub data_digest_bytes: usize,
    /// PLEN: the whole PDU.
    pub total_bytes: usize,
}

impl Framing {
    /// The header and its digest: what [`decode_header`] needs.
    pub const fn header_end(&self) -> usize {
        self.header_bytes + self.header_digest_bytes
    }
    /// Where the data digest begins.
    pub const fn data_end(&self) -> usize {
        self.data_offset_bytes + self.data_bytes
    }
}

/// Why a PDU is not acceptable. Every one of these is fatal for the connection: the receiver
/// sends a termination request with [`PduError::fes`] and [`PduError::fei`] and closes,
/// except [`PduError::DataDigest`], which a controller may report as a command error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("{have} bytes do not hold the {need} the PDU needs")]
    Truncated { need: usize, have: usize },
    #[error("unknown PDU type {0:#04x}")]
    UnknownType(u8),
    #[error("a {0:?} PDU does not travel this way")]
    WrongDirection(PduType),
    #[error("a {pdu_type:?} PDU with header length {hlen}, not {expected}")]
    HeaderLength {
        pdu_type: PduType,
        hlen: u8,
        expected: usize,
    },
    #[error("flags {flags:#04x} are wrong on a {pdu_type:?} PDU here")]
    Flags { pdu_type: PduType, flags: u8 },
    #[error("a {pdu_type:?} PDU with data offset {pdo} (header ends at {header_end}, PDU length {plen})")]
    DataOffset {
        pdu_type: PduType,
        pdo: u8,
        header_end: usize,
        plen: u32,
    },
    #[error("a {pdu_type:?} PDU with length {plen} (header and digests take {least})")]
    PduLength {
        pdu_type: PduType,
        plen: u32,
        least: usize,
    },
    #[error("a {pdu_type:?} PDU with {data_bytes} data bytes, more than the {max_bytes} accepted")]
    DataTooLong {
        pdu_type: PduType,
        data_bytes: usize,
        max_bytes: usize,
    },
    #[error("a {0:?} PDU the receiver did not expect now")]
    Unexpected(PduType),
    #[error("data outside the range the command or its R2T allows")]
    DataOutOfRange,
    #[error("header digest {received:#010x} does not match the header")]
    HeaderDigest { received: u32 },
    #[error("data digest does not match the data")]
    DataDigest,
    #[error("invalid value in the header field at byte {offset}")]
    InvalidField { offset: u32 },
    #[error("unsupported parameter at byte {offset}")]
    UnsupportedParameter { offset: u32 },
    #[error("{have} bytes of buffer are too few to encode {need}")]
    BufferTooSmall { need: usize, have: usize },
}

impl PduError {
    /// The fatal error status a termination request reports for this error.
    pub const fn fes(&self) -> u16 {
        match self {
            PduError::HeaderDigest { .. } => FES_HEADER_DIGEST_ERROR,
            PduError::DataTooLong { .. } => FES_DATA_LIMIT_EXCEEDED,
            PduError::UnsupportedParameter { .. } => FES_UNSUPPORTED_PARAMETER,
            PduError::WrongDirection(_) | PduError::Unexpected(_) => FES_PDU_SEQUENCE_ERROR,
            PduError::DataOutOfRange => FES_DATA_OUT_OF_RANGE,
            _ => FES_INVALID_HEADER_FIELD,
        }
    }
    /// The fatal error information: the offset of the header field in error, or the header
    /// digest received for a header digest error.
    pub const fn fei(&self) -> u32 {
        match self {
            PduError::HeaderDigest { received } => *received,
            PduError::UnknownType(_)
            | PduError::WrongDirection(_)
            | PduError::Unexpected(_)
            | PduError::DataOutOfRange => 0,
            PduError::Flags { .. } => 1,
            PduError::HeaderLength { .. } => 2,
            PduError::DataOffset { .. } => 3,
            PduError::PduLength { .. } | PduError::DataTooLong { .. } => 4,
            PduError::InvalidField { offset } | PduError::UnsupportedParameter { offset } => {
                *offset
            }
            PduError::Truncated { .. } | PduError::DataDigest | PduError::BufferTooSmall { .. } => {
                0
            }
        }
    }
}

/// Checks a received common header (the first [`COMMON_HEADER_BYTES`] of `bytes`) against the
/// type's rules and the connection's terms, and says where the PDU's parts are. `expected` is
/// the direction this end receives.
pub fn parse_header(
    bytes: &[u8],
    expected: Direction,
    negotiated: &Negotiated,
) -> Result<Framing, PduError> {
    let Some(common) = bytes.get(..COMMON_HEADER_BYTES) else {
        return Err(PduError::Truncated {
            need: COMMON_HEADER_BYTES,
            have: bytes.len(),
        });
    };
    let pdu_type = PduType::from_byte(common[0]).ok_or(PduError::UnknownType(common[0]))?;
    if pdu_type.direction() != expected {
        return Err(PduError::WrongDirection(pdu_type));
    }
    let flags = common[1];
    let hlen = common[2];
    let pdo = common[3];
    let plen = u32::from_le_bytes([common[4], common[5], common[6], common[7]]);
    let header_bytes = pdu_type.header_bytes();
    if usize::from(hlen) != header_bytes {
        return Err(PduError::HeaderLength {
            pdu_type,
            hlen,
            expected: header_bytes,
        });
    }
    let flags_error = PduError::Flags { pdu_type, flags };
    let digest_flags = flags & (FLAG_HEADER_DIGEST | FLAG_DATA_DIGEST);
    if flags & !(FLAG_HEADER_DIGEST | FLAG_DATA_DIGEST | pdu_type.other_flags()) != 0 {
        return Err(flags_error);
    }
    if flags & FLAG_SUCCESS != 0 && flags & FLAG_LAST_PDU == 0 {
        return Err(flags_error);
    }
    let plen_bytes = plen as usize;
    if !pdu_type.takes_digests() {
        if digest_flags != 0 {
            return Err(flags_error);
        }
        // Set-up and termination PDUs: data (a termination request's copy of the header in
        // error) follows the header directly; PDO is not used.
        let least = header_bytes;
        let most = match pdu_type {
            PduType::H2CTermReq | PduType::C2HTermReq => header_bytes + TERM_REQ_MAX_DATA_BYTES,
            _ => header_bytes,
        };
        if plen_bytes < least || plen_bytes > most {
            return Err(PduError::PduLength {
                pdu_type,
                plen,
                least,
            });
        }
        return Ok(Framing {
            pdu_type,
            flags,
            header_bytes,
            header_digest_bytes: 0,
            data_offset_bytes: header_bytes,
            data_bytes: plen_bytes - header_bytes,
            data_digest_bytes: 0,
            total_bytes: plen_bytes,
        });
    }
    let header_digest = flags & FLAG_HEADER_DIGEST != 0;
    if header_digest != negotiated.header_digest {
        return Err(flags_error);
    }
    let data_digest = flags & FLAG_DATA_DIGEST != 0;
    if data_digest && !negotiated.data_digest {
        return Err(flags_error);
    }
    let header_digest_bytes = if header_digest { DIGEST_BYTES } else { 0 };
    let header_end = header_bytes + header_digest_bytes;
    if plen_bytes < header_end {
        return Err(PduError::PduLength {
            pdu_type,
            plen,
            least: header_end,
        });
    }
    if plen_bytes == header_end {
        // No data: no data digest, and PDO either unused (0) or pointing at the end.
        if data_digest || pdu_type.requires_data() {
            return Err(if data_digest {
                flags_error
            } else {
                PduError::PduLength {
                    pdu_type,
                    plen,
                    least: header_end + 1,
                }
            });
        }
        if pdo != 0 && usize::from(pdo) != header_end {
            return Err(PduError::DataOffset {
                pdu_type,
                pdo,
                header_end,
                plen,
            });
        }
        return Ok(Framing {
            pdu_type,
            flags,
            header_bytes,
            header_digest_bytes,
            data_offset_bytes: header_end,
            data_bytes: 0,
            data_digest_bytes: 0,
            total_bytes: plen_bytes,
        });
    }
    if !pdu_type.carries_data() {
        return Err(PduError::PduLength {
            pdu_type,
            plen,
            least: header_end,
        });
    }
    // Data follows: the sender must digest it if data digests were negotiated.
    if negotiated.data_digest != data_digest {
        return Err(flags_error);
    }
    let data_digest_bytes = if data_digest { DIGEST_BYTES } else { 0 };
    let data_offset_bytes = usize::from(pdo);
    let alignment = negotiated.alignment_bytes(pdu_type.direction());
    // The padding before the data is there only to align it: shorter than one alignment unit.
    if data_offset_bytes < header_end
        || data_offset_bytes - header_end >= alignment
        || data_offset_bytes + data_digest_bytes >= plen_bytes
    {
        return Err(PduError::DataOffset {
            pdu_type,
            pdo,
            header_end,
            plen,
        });
    }
    let data_bytes = plen_bytes - data_offset_bytes - data_digest_bytes;
    if data_bytes > negotiated.max_data_bytes as usize {
        return Err(PduError::DataTooLong {
            pdu_type,
            data_bytes,
            max_bytes: negotiated.max_data_bytes as usize,
        });
    }
    Ok(Framing {
        pdu_type,
        flags,
        header_bytes,
        header_digest_bytes,
        data_offset_bytes,
        data_bytes,
        data_digest_bytes,
        total_bytes: plen_bytes,
    })
}

/// ICReq: the host's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcReq {
    /// HPDA: how the host wants C2H PDU data aligned (0's based dwords, at most [`MAX_PDA`]).
    pub host_pda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    /// MAXR2T: R2Ts the host accepts outstanding per command, 0's based.
    pub max_r2t: u32,
}

/// ICResp: the controller's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcResp {
    /// CPDA: how the controller wants H2C PDU data aligned.
    pub controller_pda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    /// MAXH2CDATA: the most data in one H2CData PDU.
    pub max_h2c_data_bytes: u32,
}

/// H2CTermReq or C2HTermReq: why the sender ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermReq {
    pub fes: u16,
    pub fei: u32,
}

impl TermReq {
    /// The termination request that reports `error`.
    pub const fn for_error(error: &PduError) -> Self {
        TermReq {
            fes: error.fes(),
            fei: error.fei(),
        }
    }
}

/// H2CData or C2HData: a piece of a command's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// CCCID: the command's CID.
    pub command_id: u16,
    /// TTAG: the R2T's transfer tag (H2CData); reserved in C2HData.
    pub transfer_tag: u16,
    /// DATAO: where this piece lies in the command's data.
    pub offset_bytes: u32,
    /// DATAL: the piece's length, equal to the PDU's data.
    pub length_bytes: u32,
    pub last: bool,
    /// C2HData only: the command succeeded; no CapsuleResp follows.
    pub success: bool,
}

/// R2T: the controller is ready for a range of a command's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct R2t {
    pub command_id: u16,
    pub transfer_tag: u16,
    pub offset_bytes: u32,
    pub length_bytes: u32,
}

/// A PDU's header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    IcReq(IcReq),
    IcResp(IcResp),
    H2CTermReq(TermReq),
    C2HTermReq(TermReq),
    CapsuleCmd(Command),
    CapsuleResp(Completion),
    H2CData(DataHeader),
    C2HData(DataHeader),
    R2T(R2t),
}

impl Header {
    pub const fn pdu_type(&self) -> PduType {
        match self {
            Header::IcReq(_) => PduType::IcReq,
            Header::IcResp(_) => PduType::IcResp,
            Header::H2CTermReq(_) => PduType::H2CTermReq,
            Header::C2HTermReq(_) => PduType::C2HTermReq,
            Header::CapsuleCmd(_) => PduType::CapsuleCmd,
            Header::CapsuleResp(_) => PduType::CapsuleResp,
            Header::H2CData(_) => PduType::H2CData,
            Header::C2HData(_) => PduType::C2HData,
            Header::R2T(_) => PduType::R2T,
        }
    }
}

/// A whole received PDU: its header and its data (digests checked and removed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pdu<'a> {
    pub header: Header,
    pub data: &'a [u8],
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Decodes the header of a PDU whose framing [`parse_header`] gave: `bytes` holds at least
/// [`Framing::header_end`] bytes. Checks the header digest and each field's own rules.
pub fn decode_header(bytes: &[u8], framing: &Framing) -> Result<Header, PduError> {
    let header_end = framing.header_end();
    let Some(bytes) = bytes.get(..header_end) else {
        return Err(PduError::Truncated {
            need: header_end,
            have: bytes.len(),
        });
    };
    let header = &bytes[..framing.header_bytes];
    if framing.header_digest_bytes > 0 {
        let received = &bytes[framing.header_bytes..header_end];
        if received != digest::digest(header) {
            return Err(PduError::HeaderDigest {
                received: u32_at(received, 0),
            });
        }
    }
    let data_header = |flags: u8| -> Result<DataHeader, PduError> {
        let length_bytes = u32_at(header, 16);
        if length_bytes as usize != framing.data_bytes {
            return Err(PduError::InvalidField { offset: 16 });
        }
        Ok(DataHeader {
            command_id: u16_at(header, 8),
            transfer_tag: u16_at(header, 10),
            offset_bytes: u32_at(header, 12),
            length_bytes,
            last: flags & FLAG_LAST_PDU != 0,
            success: flags & FLAG_SUCCESS != 0,
        })
    };
    Ok(match framing.pdu_type {
        PduType::IcReq | PduType::IcResp => {
            if u16_at(header, 8) != 0 {
                return Err(PduError::UnsupportedParameter { offset: 8 });
            }
            let pda = header[10];
            if pda > MAX_PDA {
                return Err(PduError::UnsupportedParameter { offset: 10 });
            }
            let digests = header[11];
            let header_digest = digests & DIGEST_ENABLE_HEADER != 0;
            let data_digest = digests & DIGEST_ENABLE_DATA != 0;
            let value = u32_at(header, 12);
            if framing.pdu_type == PduType::IcReq {
                Header::IcReq(IcReq {
                    host_pda: pda,
                    header_digest,
                    data_digest,
                    max_r2t: value,
                })
            } else {
                if value < MIN_MAXH2CDATA || value % 4 != 0 {
                    return Err(PduError::InvalidField { offset: 12 });
                }
                Header::IcResp(IcResp {
                    controller_pda: pda,
                    header_digest,
                    data_digest,
                    max_h2c_data_bytes: value,
                })
            }
        }
        PduType::H2CTermReq | PduType::C2HTermReq => {
            let term = TermReq {
                fes: u16_at(header, 8),
                fei: u32_at(header, 10),
            };
            if framing.pdu_type == PduType::H2CTermReq {
                Header::H2CTermReq(term)
            } else {
                Header::C2HTermReq(term)
            }
        }
        PduType::CapsuleCmd => {
            let command =
                Command::from_bytes(&header[COMMON_HEADER_BYTES..]).ok_or(PduError::Truncated {
                    need: CAPSULE_CMD_HEADER_BYTES,
                    have: header.len(),
                })?;
            Header::CapsuleCmd(command)
        }
        PduType::CapsuleResp => {
            let completion = Completion::from_bytes(&header[COMMON_HEADER_BYTES..]).ok_or(
                PduError::Truncated {
                    need: CAPSULE_RESP_HEADER_BYTES,
                    have: header.len(),
                },
            )?;
            Header::CapsuleResp(completion)
        }
        PduType::H2CData => Header::H2CData(data_header(framing.flags)?),
        PduType::C2HData => Header::C2HData(data_header(framing.flags)?),
        PduType::R2T => {
            let length_bytes = u32_at(header, 16);
            if length_bytes == 0 {
                return Err(PduError::InvalidField { offset: 16 });
            }
            Header::R2T(R2t {
                command_id: u16_at(header, 8),
                transfer_tag: u16_at(header, 10),
                offset_bytes: u32_at(header, 12),
                length_bytes,
            })
        }
    })
}

/// Checks the data digest of a received PDU's data, given the digest bytes that followed it.
pub fn check_data_digest(data: &[&[u8]], received: &[u8]) -> Result<(), PduError> {
    if digest::matches(data, received) {
        Ok(())
    } else {
        Err(PduError::DataDigest)
    }
}

/// Decodes a whole PDU in `bytes` (at least [`Framing::total_bytes`] of them).
pub fn decode<'a>(bytes: &'a [u8], framing: &Framing) -> Result<Pdu<'a>, PduError> {
    let Some(bytes) = bytes.get(..framing.total_bytes) else {
        return Err(PduError::Truncated {
            need: framing.total_bytes,
            have: bytes.len(),
        });
    };
    let header = decode_header(bytes, framing)?;
    let data = &bytes[framing.data_offset_bytes..framing.data_end()];
    if framing.data_digest_bytes > 0 {
        check_data_digest(&[data], &bytes[framing.data_end()..])?;
    }
    Ok(Pdu { header, data })
}

/// Parses and decodes the PDU at the start of `bytes`: `Ok(None)` if `bytes` does not hold all
/// of it yet, else the PDU and how many bytes it took.
pub fn decode_from<'a>(
    bytes: &'a [u8],
    expected: Direction,
    negotiated: &Negotiated,
) -> Result<Option<(Pdu<'a>, usize)>, PduError> {
    if bytes.len() < COMMON_HEADER_BYTES {
        return Ok(None);
    }
    let framing = parse_header(bytes, expected, negotiated)?;
    if bytes.len() < framing.total_bytes {
        return Ok(None);
    }
    Ok(Some((decode(bytes, &framing)?, framing.total_bytes)))
}

/// Where an encoded PDU's parts go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes [`encode_header`] wrote: header, header digest, padding (PDO, when data follows).
    pub header_bytes: usize,
    pub data_bytes: usize,
    /// Whether the sender appends the data's digest ([`digest::digest_of`]).
    pub data_digest: bool,
    /// PLEN.
    pub total_bytes: usize,
}

/// Encodes `header` for a PDU carrying `data_bytes` of data into the start of `out`, with the
/// digests and the receiver's alignment `negotiated` gives; the data (then its digest, if
/// [`Layout::data_digest`]) is the caller's to send after it.
pub fn encode_header(
    header: &Header,
    data_bytes: usize,
    negotiated: &Negotiated,
    out: &mut [u8],
) -> Result<Layout, PduError> {
    let pdu_type = header.pdu_type();
    let hlen = pdu_type.header_bytes();
    let digests = pdu_type.takes_digests();
    let with_header_digest = digests && negotiated.header_digest;
    let data_digest = digests && negotiated.data_digest && data_bytes > 0;
    let header_end = hlen + if with_header_digest { DIGEST_BYTES } else { 0 };
    if data_bytes > 0 && !pdu_type.carries_data() {
        return Err(PduError::PduLength {
            pdu_type,
            plen: (header_end + data_bytes).try_into().unwrap_or(u32::MAX),
            least: header_end,
        });
    }
    let (header_bytes, pdo) = if !digests {
        if matches!(pdu_type, PduType::H2CTermReq | PduType::C2HTermReq)
            && data_bytes > TERM_REQ_MAX_DATA_BYTES
        {
            return Err(PduError::DataTooLong {
                pdu_type,
                data_bytes,
                max_bytes: TERM_REQ_MAX_DATA_BYTES,
            });
        }
        (header_end, 0)
    } else if data_bytes > 0 {
        let alignment = negotiated.alignment_bytes(pdu_type.direction());
        let offset = header_end.div_ceil(alignment) * alignment;
        if offset > MAX_DATA_OFFSET_BYTES {
            return Err(PduError::DataOffset {
                pdu_type,
                pdo: u8::MAX,
                header_end,
                plen: 0,
            });
        }
        (offset, offset)
    } else {
        (header_end, 0)
    };
    let total_bytes = header_bytes + data_bytes + if data_digest { DIGEST_BYTES } else { 0 };
    let plen = u32::try_from(total_bytes).map_err(|_| PduError::DataTooLong {
        pdu_type,
        data_bytes,
        max_bytes: u32::MAX as usize - header_bytes - DIGEST_BYTES,
    })?;
    let have = out.len();
    let Some(out) = out.get_mut(..header_bytes) else {
        return Err(PduError::BufferTooSmall {
            need: header_bytes,
            have,
        });
    };
    out.fill(0);
    let mut flags = 0u8;
    if with_header_digest {
        flags |= FLAG_HEADER_DIGEST;
    }
    if data_digest {
        flags |= FLAG_DATA_DIGEST;
    }
    if let Header::H2CData(data) | Header::C2HData(data) = header {
        if data.last {
            flags |= FLAG_LAST_PDU;
        }
        if data.success && pdu_type == PduType::C2HData {
            flags |= FLAG_SUCCESS;
        }
    }
    out[0] = pdu_type as u8;
    out[1] = flags;
    out[2] = hlen as u8;
    out[3] = pdo as u8;
    out[4..8].copy_from_slice(&plen.to_le_bytes());
    write_fields(header, data_bytes, &mut out[..hlen]);
    if with_header_digest {
        let digest = digest::digest(&out[..hlen]);
        out[hlen..header_end].copy_from_slice(&digest);
    }
    Ok(Layout {
        header_bytes,
        data_bytes,
        data_digest,
        total_bytes,
    })
}

/// The type's own fields, after the common header (already zeroed).
fn write_fields(header: &Header, data_bytes: usize, out: &mut [u8]) {
    let put_u16 = |out: &mut [u8], at: usize, value: u16| {
        out[at..at + 2].copy_from_slice(&value.to_le_bytes());
    };
    let put_u32 = |out: &mut [u8], at: usize, value: u32| {
        out[at..at + 4].copy_from_slice(&value.to_le_bytes());
    };
    let digest_bits = |header: bool, data: bool| {
        (if header { DIGEST_ENABLE_HEADER } else { 0 }) | if data { DIGEST_ENABLE_DATA } else { 0 }
    };
    match header {
        Header::IcReq(ic) => {
            out[10] = ic.host_pda;
            out[11] = digest_bits(ic.header_digest, ic.data_digest);
            put_u32(out, 12, ic.max_r2t);
        }
        Header::IcResp(ic) => {
            out[10] = ic.controller_pda;
            out[11] = digest_bits(ic.header_digest, ic.data_digest);
            put_u32(out, 12, ic.max_h2c_data_bytes);
        }
        Header::H2CTermReq(term) | Header::C2HTermReq(term) => {
            put_u16(out, 8, term.fes);
            put_u32(out, 10, term.fei);
        }
        Header::CapsuleCmd(command) => out[COMMON_HEADER_BYTES..].copy_from_slice(&command.0),
        Header::CapsuleResp(completion) => {
            out[COMMON_HEADER_BYTES..].copy_from_slice(&completion.to_bytes())
        }
        Header::H2CData(data) | Header::C2HData(data) => {
            put_u16(out, 8, data.command_id);
            put_u16(out, 10, data.transfer_tag);
            put_u32(out, 12, data.offset_bytes);
            // DATAL is the PDU's data, whatever the caller put in the struct.
            put_u32(out, 16, data_bytes as u32);
        }
        Header::R2T(r2t) => {
            put_u16(out, 8, r2t.command_id);
            put_u16(out, 10, r2t.transfer_tag);
            put_u32(out, 12, r2t.offset_bytes);
            put_u32(out, 16, r2t.length_bytes);
        }
    }
}

/// Encodes a whole PDU (header, data, digest) into `out`, replacing what it held: for the
/// blocking users, whose PDUs are few and small.
pub fn encode_pdu(
    header: &Header,
    data: &[u8],
    negotiated: &Negotiated,
    out: &mut Vec<u8>,
) -> Result<Layout, PduError> {
    let mut head = [0u8; MAX_DATA_OFFSET_BYTES + 1];
    let layout = encode_header(header, data.len(), negotiated, &mut head)?;
    out.clear();
    out.extend_from_slice(&head[..layout.header_bytes]);
    out.extend_from_slice(data);
    if layout.data_digest {
        out.extend_from_slice(&digest::digest_of(&[data]));
    }
    debug_assert_eq!(out.len(), layout.total_bytes);
    Ok(layout)
}

/// Where a command's data is, from its SGL descriptor 1 (NVMe/TCP uses exactly one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataLocation {
    /// The command moves no data (SGL length 0).
    None,
    /// In the capsule: the first `length_bytes` of its data (ICDOFF is 0).
    InCapsule { length_bytes: u32 },
    /// Moved by H2CData (after R2T) or C2HData PDUs.
    Transport { length_bytes: u32 },
}

/// Where `command`'s data is, checked against the capsule it came in: `in_capsule_bytes` of
/// capsule data arrived and at most `max_in_capsule_bytes` are allowed. A command whose SGL
/// the transport cannot honour gets the NVMe status to complete it with.
pub fn data_location(
    command: &Command,
    in_capsule_bytes: usize,
    max_in_capsule_bytes: u32,
) -> Result<DataLocation, super::status::Status> {
    use super::command::{SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK};
    use super::status;
    // Fabrics require SGLs: PSDT 01b or 10b.
    if !matches!(command.psdt(), 1 | 2) {
        return Err(status::INVALID_FIELD);
    }
    let length_bytes = command.sgl_length();
    match command.sgl_identifier() {
        // A Data Block descriptor with the Offset subtype: the data is in the capsule.
        SGL_DATA_BLOCK_OFFSET => {
            if command.sgl_address() != 0 {
                return Err(status::SGL_OFFSET_INVALID);
            }
            if length_bytes > max_in_capsule_bytes {
                return Err(status::DATA_SGL_LENGTH_INVALID);
            }
            if length_bytes as usize != in_capsule_bytes {
                return Err(status::DATA_SGL_LENGTH_INVALID);
            }
            if length_bytes == 0 {
                Ok(DataLocation::None)
            } else {
                Ok(DataLocation::InCapsule { length_bytes })
            }
        }
        SGL_TRANSPORT_DATA_BLOCK => {
            if in_capsule_bytes != 0 {
                return Err(status::DATA_SGL_LENGTH_INVALID);
            }
            if length_bytes == 0 {
                Ok(DataLocation::None)
            } else {
                Ok(DataLocation::Transport { length_bytes })
            }
        }
        _ if length_bytes == 0 && in_capsule_bytes == 0 => Ok(DataLocation::None),
        _ => Err(status::SGL_DESCRIPTOR_TYPE_INVALID),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::command::{
        CommandBuilder, IO_READ, IO_WRITE, SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK,
    };
    use crate::nvmf::status;

    const MAX_DATA: u32 = 128 * 1024;

    fn terms(header: bool, data: bool) -> Negotiated {
        Negotiated {
            header_digest: header,
            data_digest: data,
            ..Negotiated::initial(MAX_DATA)
        }
    }

    fn round_trip(header: Header, data: &[u8], negotiated: &Negotiated) -> Vec<u8> {
        let mut wire = Vec::new();
        let layout = encode_pdu(&header, data, negotiated, &mut wire).unwrap();
        assert_eq!(wire.len(), layout.total_bytes);
        let (pdu, used) = decode_from(&wire, header.pdu_type().direction(), negotiated)
            .unwrap()
            .unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(pdu.data, data);
        let expected = match header {
            Header::H2CData(mut d) | Header::C2HData(mut d) => {
                d.length_bytes = data.len() as u32;
                if header.pdu_type() == PduType::H2CData {
                    d.success = false;
                    Header::H2CData(d)
                } else {
                    Header::C2HData(d)
                }
            }
            other => other,
        };
        assert_eq!(pdu.header, expected);
        // Every shorter prefix is "not yet".
        for cut in [0, 7, 8, wire.len() - 1] {
            assert_eq!(
                decode_from(&wire[..cut], header.pdu_type().direction(), negotiated),
                Ok(None)
            );
        }
        wire
    }

    fn all_headers() -> Vec<(Header, Vec<u8>)> {
        let write = CommandBuilder::new(IO_WRITE, 7)
            .nsid(1)
            .range(100, 2)
            .sgl(0, 1024, SGL_DATA_BLOCK_OFFSET)
            .build();
        let data = DataHeader {
            command_id: 7,
            transfer_tag: 3,
            offset_bytes: 4096,
            length_bytes: 5,
            last: true,
            success: false,
        };
        vec![
            (
                Header::IcReq(IcReq {
                    host_pda: 0,
                    header_digest: true,
                    data_digest: false,
                    max_r2t: 0,
                }),
                vec![],
            ),
            (
                Header::IcResp(IcResp {
                    controller_pda: 0,
                    header_digest: true,
                    data_digest: true,
                    max_h2c_data_bytes: 131072,
                }),
                vec![],
            ),
            (
                Header::H2CTermReq(TermReq { fes: 1, fei: 3 }),
                vec![9u8; 24],
            ),
            (
                Header::C2HTermReq(TermReq {
                    fes: FES_HEADER_DIGEST_ERROR,
                    fei: 0xdead_beef,
                }),
                vec![1u8; 72],
            ),
            (Header::CapsuleCmd(write), vec![0xa5; 1024]),
            (
                Header::CapsuleCmd(
                    CommandBuilder::new(IO_READ, 8)
                        .sgl(0, 4096, SGL_TRANSPORT_DATA_BLOCK)
                        .build(),
                ),
                vec![],
            ),
            (
                Header::CapsuleResp(Completion::new(7, status::LBA_OUT_OF_RANGE).with_result(0x55)),
                vec![],
            ),
            (Header::H2CData(data), b"hello".to_vec()),
            (
                Header::C2HData(DataHeader {
                    success: true,
                    transfer_tag: 0,
                    ..data
                }),
                vec![0x5a; 4096],
            ),
            (
                Header::R2T(R2t {
                    command_id: 9,
                    transfer_tag: 2,
                    offset_bytes: 8192,
                    length_bytes: 65536,
                }),
                vec![],
            ),
        ]
    }

    #[test]
    fn every_pdu_type_round_trips_with_every_digest_combination() {
        for (header_digest, data_digest) in
            [(false, false), (true, false), (false, true), (true, true)]
        {
            for (header, data) in all_headers() {
                let negotiated = terms(header_digest, data_digest);
                let wire = round_trip(header, &data, &negotiated);
                let digests = header.pdu_type().takes_digests();
                assert_eq!(wire[1] & FLAG_HEADER_DIGEST != 0, digests && header_digest);
                assert_eq!(
                    wire[1] & FLAG_DATA_DIGEST != 0,
                    digests && data_digest && !data.is_empty()
                );
            }
        }
    }

    #[test]
    fn the_header_digest_is_crc32c_of_the_header_least_significant_byte_first() {
        // A CapsuleResp with header digest: the digest at byte 24 is CRC32C of bytes 0..24.
        let mut wire = Vec::new();
        encode_pdu(
            &Header::CapsuleResp(Completion::new(1, status::SUCCESS)),
            &[],
            &terms(true, true),
            &mut wire,
        )
        .unwrap();
        assert_eq!(wire.len(), 28);
        assert_eq!(&wire[4..8], &28u32.to_le_bytes());
        assert_eq!(&wire[24..28], &crc32c::crc32c(&wire[..24]).to_le_bytes());
        // CRC32C's check value: "123456789" gives 0xe3069283, sent 83 92 06 e3.
        assert_eq!(
            digest::digest_of(&[b"1234", b"56789"]),
            [0x83, 0x92, 0x06, 0xe3]
        );
        // iSCSI's test vector (the same CRC, the same byte order): 32 zero bytes.
        assert_eq!(digest::digest(&[0u8; 32]), [0xaa, 0x36, 0x91, 0x8a]);
    }

    #[test]
    fn a_c2h_data_pdu_is_laid_out_as_linux_expects() {
        let mut wire = Vec::new();
        let data = [7u8; 512];
        encode_pdu(
            &Header::C2HData(DataHeader {
                command_id: 0x1234,
                transfer_tag: 0,
                offset_bytes: 0,
                length_bytes: 512,
                last: true,
                success: false,
            }),
            &data,
            &terms(true, true),
            &mut wire,
        )
        .unwrap();
        assert_eq!(wire[0], 0x07);
        assert_eq!(
            wire[1],
            FLAG_HEADER_DIGEST | FLAG_DATA_DIGEST | FLAG_LAST_PDU
        );
        assert_eq!(wire[2], 24);
        assert_eq!(wire[3], 28, "PDO = HLEN + header digest");
        assert_eq!(wire.len(), 28 + 512 + 4);
        assert_eq!(&wire[8..10], &0x1234u16.to_le_bytes());
        assert_eq!(&wire[16..20], &512u32.to_le_bytes());
        assert_eq!(&wire[540..], &crc32c::crc32c(&data).to_le_bytes());
    }

    #[test]
    fn a_host_pda_aligns_c2h_data_and_pads_with_zeros() {
        let negotiated = Negotiated {
            host_pda: 7, // 32 bytes
            ..terms(true, false)
        };
        let wire = round_trip(
            Header::C2HData(DataHeader {
                command_id: 1,
                transfer_tag: 0,
                offset_bytes: 0,
                length_bytes: 3,
                last: true,
                success: false,
            }),
            b"abc",
            &negotiated,
        );
        assert_eq!(wire[3], 32);
        assert_eq!(&wire[28..32], &[0, 0, 0, 0]);
        assert_eq!(&wire[32..], b"abc");
    }

    fn capsule_wire(negotiated: &Negotiated, data: &[u8]) -> Vec<u8> {
        let command = CommandBuilder::new(IO_WRITE, 1)
            .sgl(0, data.len() as u32, SGL_DATA_BLOCK_OFFSET)
            .build();
        let mut wire = Vec::new();
        encode_pdu(&Header::CapsuleCmd(command), data, negotiated, &mut wire).unwrap();
        wire
    }

    fn parse(wire: &[u8], negotiated: &Negotiated) -> Result<Framing, PduError> {
        parse_header(wire, Direction::HostToController, negotiated)
    }

    #[test]
    fn malformed_common_headers_are_refused_with_the_field_in_error() {
        let plain = terms(false, false);
        let good = capsule_wire(&plain, &[1u8; 16]);
        assert!(parse(&good, &plain).is_ok());

        let mut wire = good.clone();
        wire[0] = 0x08;
        assert_eq!(parse(&wire, &plain), Err(PduError::UnknownType(8)));
        wire[0] = PduType::CapsuleResp as u8;
        let error = parse(&wire, &plain).unwrap_err();
        assert_eq!(error, PduError::WrongDirection(PduType::CapsuleResp));

        let mut wire = good.clone();
        wire[2] = 64;
        let error = parse(&wire, &plain).unwrap_err();
        assert!(matches!(error, PduError::HeaderLength { hlen: 64, .. }));
        assert_eq!((error.fes(), error.fei()), (FES_INVALID_HEADER_FIELD, 2));

        // PLEN shorter than the header, or data past the limit.
        let mut wire = good.clone();
        wire[4..8].copy_from_slice(&71u32.to_le_bytes());
        let error = parse(&wire, &plain).unwrap_err();
        assert_eq!(error.fei(), 4);
        let mut wire = good.clone();
        wire[4..8].copy_from_slice(&(72 + MAX_DATA + 1).to_le_bytes());
        let error = parse(&wire, &plain).unwrap_err();
        assert!(matches!(error, PduError::DataTooLong { .. }));
        assert_eq!(error.fes(), FES_DATA_LIMIT_EXCEEDED);

        // PDO inside the header, past the end, or padded past one alignment unit.
        for pdo in [0u8, 71, 76, 88] {
            let mut wire = good.clone();
            wire[3] = pdo;
            let error = parse(&wire, &plain).unwrap_err();
            assert!(matches!(error, PduError::DataOffset { .. }), "pdo {pdo}");
            assert_eq!(error.fei(), 3);
        }

        // Digest flags that disagree with what was negotiated.
        let mut wire = good.clone();
        wire[1] |= FLAG_HEADER_DIGEST;
        assert!(matches!(parse(&wire, &plain), Err(PduError::Flags { .. })));
        let digested = terms(true, true);
        assert!(matches!(
            parse(&good, &digested),
            Err(PduError::Flags { .. })
        ));
        let with_both = capsule_wire(&digested, &[1u8; 16]);
        assert!(parse(&with_both, &digested).is_ok());
        let mut wire = with_both.clone();
        wire[1] &= !FLAG_DATA_DIGEST;
        assert!(matches!(
            parse(&wire, &digested),
            Err(PduError::Flags { .. })
        ));
        // LAST_PDU means nothing on a capsule.
        let mut wire = good.clone();
        wire[1] |= FLAG_LAST_PDU;
        assert!(matches!(parse(&wire, &plain), Err(PduError::Flags { .. })));

        assert_eq!(
            parse(&good[..7], &plain),
            Err(PduError::Truncated { need: 8, have: 7 })
        );
    }

    #[test]
    fn pdus_that_carry_no_data_refuse_data_and_data_pdus_require_it() {
        let plain = terms(false, false);
        let mut wire = Vec::new();
        encode_pdu(
            &Header::CapsuleResp(Completion::new(1, status::SUCCESS)),
            &[],
            &plain,
            &mut wire,
        )
        .unwrap();
        wire.extend_from_slice(&[0u8; 4]);
        wire[4..8].copy_from_slice(&28u32.to_le_bytes());
        wire[3] = 24;
        assert!(matches!(
            parse_header(&wire, Direction::ControllerToHost, &plain),
            Err(PduError::PduLength { .. })
        ));
        // An H2CData PDU without data.
        let mut head = [0u8; 24];
        head[0] = PduType::H2CData as u8;
        head[2] = 24;
        head[4..8].copy_from_slice(&24u32.to_le_bytes());
        assert!(matches!(
            parse(&head, &plain),
            Err(PduError::PduLength { .. })
        ));
        assert!(encode_header(
            &Header::R2T(R2t {
                command_id: 0,
                transfer_tag: 0,
                offset_bytes: 0,
                length_bytes: 1
            }),
            1,
            &plain,
            &mut [0u8; 64]
        )
        .is_err());
    }

    #[test]
    fn a_data_pdu_whose_length_field_disagrees_with_its_data_is_refused() {
        let plain = terms(false, false);
        let mut wire = Vec::new();
        let data = DataHeader {
            command_id: 1,
            transfer_tag: 1,
            offset_bytes: 0,
            length_bytes: 4,
            last: true,
            success: false,
        };
        encode_pdu(&Header::H2CData(data), b"abcd", &plain, &mut wire).unwrap();
        wire[16..20].copy_from_slice(&5u32.to_le_bytes());
        let framing = parse(&wire, &plain).unwrap();
        assert_eq!(
            decode(&wire, &framing),
            Err(PduError::InvalidField { offset: 16 })
        );
    }

    #[test]
    fn success_without_last_pdu_is_refused() {
        let plain = terms(false, false);
        let mut wire = Vec::new();
        let data = DataHeader {
            command_id: 1,
            transfer_tag: 0,
            offset_bytes: 0,
            length_bytes: 4,
            last: true,
            success: true,
        };
        encode_pdu(&Header::C2HData(data), b"abcd", &plain, &mut wire).unwrap();
        assert!(parse_header(&wire, Direction::ControllerToHost, &plain).is_ok());
        wire[1] &= !FLAG_LAST_PDU;
        assert!(matches!(
            parse_header(&wire, Direction::ControllerToHost, &plain),
            Err(PduError::Flags { .. })
        ));
    }

    #[test]
    fn digest_errors_are_caught_and_report_what_was_received() {
        let digested = terms(true, true);
        let wire = capsule_wire(&digested, &[3u8; 64]);
        let framing = parse(&wire, &digested).unwrap();
        assert!(decode(&wire, &framing).is_ok());
        let mut corrupt = wire.clone();
        corrupt[72] ^= 0xff;
        let error = decode(&corrupt, &framing).unwrap_err();
        assert!(matches!(error, PduError::HeaderDigest { .. }));
        assert_eq!(error.fes(), FES_HEADER_DIGEST_ERROR);
        assert_eq!(
            error.fei(),
            u32::from_le_bytes(corrupt[72..76].try_into().unwrap())
        );
        let mut corrupt = wire.clone();
        corrupt[80] ^= 1;
        assert_eq!(decode(&corrupt, &framing), Err(PduError::DataDigest));
    }

    #[test]
    fn connection_set_up_pdus_are_checked() {
        let plain = terms(false, false);
        let mut wire = Vec::new();
        let icreq = IcReq {
            host_pda: 0,
            header_digest: false,
            data_digest: false,
            max_r2t: 0,
        };
        encode_pdu(&Header::IcReq(icreq), &[], &plain, &mut wire).unwrap();
        assert_eq!(wire.len(), 128);
        let mut bad = wire.clone();
        bad[8] = 1;
        let error = decode_from(&bad, Direction::HostToController, &plain).unwrap_err();
        assert_eq!((error.fes(), error.fei()), (FES_UNSUPPORTED_PARAMETER, 8));
        let mut bad = wire.clone();
        bad[10] = 32;
        let error = decode_from(&bad, Direction::HostToController, &plain).unwrap_err();
        assert_eq!(error.fei(), 10);
        // Digest flags on an ICReq, even when digests are in use.
        let mut bad = wire.clone();
        bad[1] = FLAG_HEADER_DIGEST;
        assert!(decode_from(&bad, Direction::HostToController, &terms(true, true)).is_err());
        // A MAXH2CDATA under 4096 or not a multiple of four.
        for max in [0u32, 4095, 4098] {
            let mut wire = Vec::new();
            let icresp = IcResp {
                controller_pda: 0,
                header_digest: false,
                data_digest: false,
                max_h2c_data_bytes: max,
            };
            encode_pdu(&Header::IcResp(icresp), &[], &plain, &mut wire).unwrap();
            assert!(decode_from(&wire, Direction::ControllerToHost, &plain).is_err());
        }
        // A termination request longer than 152 bytes.
        let mut head = [0u8; 24];
        head[0] = PduType::H2CTermReq as u8;
        head[2] = 24;
        head[4..8].copy_from_slice(&153u32.to_le_bytes());
        assert!(parse(&head, &plain).is_err());
        assert!(encode_header(
            &Header::C2HTermReq(TermReq { fes: 1, fei: 0 }),
            129,
            &plain,
            &mut [0u8; 64]
        )
        .is_err());
    }

    #[test]
    fn a_too_small_buffer_is_an_error_not_a_panic() {
        let error = encode_header(
            &Header::CapsuleResp(Completion::new(1, status::SUCCESS)),
            0,
            &terms(true, false),
            &mut [0u8; 27],
        )
        .unwrap_err();
        assert_eq!(error, PduError::BufferTooSmall { need: 28, have: 27 });
    }

    #[test]
    fn data_location_follows_the_sgl_descriptor() {
        let in_capsule = CommandBuilder::new(IO_WRITE, 1)
            .sgl(0, 512, SGL_DATA_BLOCK_OFFSET)
            .build();
        assert_eq!(
            data_location(&in_capsule, 512, 8192),
            Ok(DataLocation::InCapsule { length_bytes: 512 })
        );
        assert_eq!(
            data_location(&in_capsule, 511, 8192),
            Err(status::DATA_SGL_LENGTH_INVALID)
        );
        assert_eq!(
            data_location(&in_capsule, 512, 256),
            Err(status::DATA_SGL_LENGTH_INVALID)
        );
        let offset = CommandBuilder::new(IO_WRITE, 1)
            .sgl(8, 512, SGL_DATA_BLOCK_OFFSET)
            .build();
        assert_eq!(
            data_location(&offset, 512, 8192),
            Err(status::SGL_OFFSET_INVALID)
        );
        let transport = CommandBuilder::new(IO_READ, 1)
            .sgl(0, 65536, SGL_TRANSPORT_DATA_BLOCK)
            .build();
        assert_eq!(
            data_location(&transport, 0, 8192),
            Ok(DataLocation::Transport {
                length_bytes: 65536
            })
        );
        assert_eq!(
            data_location(&transport, 4, 8192),
            Err(status::DATA_SGL_LENGTH_INVALID)
        );
        let keyed = CommandBuilder::new(IO_READ, 1).sgl(0, 4096, 0x40).build();
        assert_eq!(
            data_location(&keyed, 0, 8192),
            Err(status::SGL_DESCRIPTOR_TYPE_INVALID)
        );
        let mut prp = CommandBuilder::new(IO_READ, 1).build();
        prp.0[1] = 0;
        assert_eq!(data_location(&prp, 0, 8192), Err(status::INVALID_FIELD));
    }
}
