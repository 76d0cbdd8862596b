//! The NBD wire format: constants, the 28-byte request header and the 16-byte simple reply.
//! Nothing here allocates: it runs for every request.

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Options.
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
pub const NBD_OPT_ABORT: u32 = 2;
pub const NBD_OPT_LIST: u32 = 3;
pub const NBD_OPT_INFO: u32 = 6;
pub const NBD_OPT_GO: u32 = 7;

// Option replies.
pub const NBD_REP_ACK: u32 = 1;
pub const NBD_REP_SERVER: u32 = 2;
pub const NBD_REP_INFO: u32 = 3;
pub const NBD_REP_ERR_UNSUP: u32 = (1 << 31) | 1;
pub const NBD_REP_ERR_INVALID: u32 = (1 << 31) | 3;
pub const NBD_REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
pub const NBD_REP_ERR_TOO_BIG: u32 = (1 << 31) | 9;

// Info types.
pub const NBD_INFO_EXPORT: u16 = 0;
pub const NBD_INFO_NAME: u16 = 1;
pub const NBD_INFO_DESCRIPTION: u16 = 2;
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

// Command flags.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;

impl Command {
    /// The command flags this server understands on this command. The spec lets FUA be sent
    /// with any command once NBD_FLAG_SEND_FUA is advertised; NO_HOLE belongs to WRITE_ZEROES.
    /// Every other flag (DF and REQ_ONE need structured replies, FAST_ZERO and PAYLOAD_LEN
    /// features this server does not advertise) is refused with EINVAL, as the spec asks.
    pub fn known_flags(self) -> u16 {
        match self {
            Self::WriteZeroes => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE,
            _ => NBD_CMD_FLAG_FUA,
        }
    }
}

// Errors, as NBD numbers them.
pub const NBD_EPERM: u32 = 1;
pub const NBD_EIO: u32 = 5;
pub const NBD_ENOMEM: u32 = 12;
pub const NBD_EINVAL: u32 = 22;
pub const NBD_ENOSPC: u32 = 28;
pub const NBD_EOVERFLOW: u32 = 75;
pub const NBD_ENOTSUP: u32 = 95;
pub const NBD_ESHUTDOWN: u32 = 108;

/// The NBD errno of a block request's status: the one place the engine's outcomes become
/// NBD's numbers (0 for success).
pub fn nbd_errno(status: crate::blockio::BlockStatus) -> u32 {
    use crate::blockio::BlockStatus;
    match status {
        BlockStatus::Ok => 0,
        BlockStatus::Invalid | BlockStatus::OutOfRange | BlockStatus::TooLarge => NBD_EINVAL,
        BlockStatus::NotPermitted => NBD_EPERM,
        BlockStatus::NoSpace => NBD_ENOSPC,
        BlockStatus::IoError => NBD_EIO,
        BlockStatus::ShutDown => NBD_ESHUTDOWN,
    }
}

/// A transmission-phase command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Command {
    #[default]
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    WriteZeroes,
    /// A command this server does not implement (answered with EINVAL).
    Other(u16),
}

impl Command {
    /// The command's number on the wire (what [`Command::from_wire`] reads back).
    pub fn wire(self) -> u16 {
        match self {
            Self::Read => 0,
            Self::Write => 1,
            Self::Disconnect => 2,
            Self::Flush => 3,
            Self::Trim => 4,
            Self::WriteZeroes => 6,
            Self::Other(value) => value,
        }
    }

    pub fn from_wire(value: u16) -> Self {
        match value {
            0 => Self::Read,
            1 => Self::Write,
            2 => Self::Disconnect,
            3 => Self::Flush,
            4 => Self::Trim,
            6 => Self::WriteZeroes,
            other => Self::Other(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Disconnect => "disconnect",
            Self::Flush => "flush",
            Self::Trim => "trim",
            Self::WriteZeroes => "write_zeroes",
            Self::Other(_) => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset_bytes: u64,
    pub length_bytes: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("bad request magic {0:#010x}")]
    BadMagic(u32),
}

/// Parses a request header: magic, flags, type, cookie, offset, length (big-endian).
pub fn parse_request(raw: &[u8; 28]) -> Result<RequestHeader, ProtocolError> {
    let magic = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    if magic != REQUEST_MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let mut cookie = [0u8; 8];
    cookie.copy_from_slice(&raw[8..16]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&raw[16..24]);
    Ok(RequestHeader {
        flags: u16::from_be_bytes([raw[4], raw[5]]),
        command: Command::from_wire(u16::from_be_bytes([raw[6], raw[7]])),
        cookie: u64::from_be_bytes(cookie),
        offset_bytes: u64::from_be_bytes(offset),
        length_bytes: u32::from_be_bytes([raw[24], raw[25], raw[26], raw[27]]),
    })
}

/// The simple reply: magic, error, cookie.
pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_request(
        magic: u32,
        flags: u16,
        command: u16,
        cookie: u64,
        offset: u64,
        length: u32,
    ) -> [u8; 28] {
        let mut raw = [0u8; 28];
        raw[0..4].copy_from_slice(&magic.to_be_bytes());
        raw[4..6].copy_from_slice(&flags.to_be_bytes());
        raw[6..8].copy_from_slice(&command.to_be_bytes());
        raw[8..16].copy_from_slice(&cookie.to_be_bytes());
        raw[16..24].copy_from_slice(&offset.to_be_bytes());
        raw[24..28].copy_from_slice(&length.to_be_bytes());
        raw
    }

    #[test]
    fn parses_each_command() {
        for (wire, command) in [
            (0, Command::Read),
            (1, Command::Write),
            (2, Command::Disconnect),
            (3, Command::Flush),
            (4, Command::Trim),
            (6, Command::WriteZeroes),
            (9, Command::Other(9)),
        ] {
            assert_eq!(command.wire(), wire, "{command:?} is {wire} on the wire");
            let header = parse_request(&raw_request(
                REQUEST_MAGIC,
                NBD_CMD_FLAG_FUA,
                wire,
                0xdead_beef,
                4096,
                512,
            ))
            .expect("valid");
            assert_eq!(
                header,
                RequestHeader {
                    flags: 1,
                    command,
                    cookie: 0xdead_beef,
                    offset_bytes: 4096,
                    length_bytes: 512
                }
            );
        }
    }

    #[test]
    fn knows_fua_everywhere_and_no_hole_only_on_write_zeroes() {
        assert_eq!(Command::Read.known_flags(), NBD_CMD_FLAG_FUA);
        assert_eq!(Command::Write.known_flags() & NBD_CMD_FLAG_NO_HOLE, 0);
        assert_ne!(Command::WriteZeroes.known_flags() & NBD_CMD_FLAG_NO_HOLE, 0);
    }

    #[test]
    fn refuses_bad_magic() {
        assert_eq!(
            parse_request(&raw_request(0x1234_5678, 0, 0, 0, 0, 0)),
            Err(ProtocolError::BadMagic(0x1234_5678))
        );
    }

    #[test]
    fn encodes_reply() {
        let reply = encode_simple_reply(NBD_EIO, 7);
        assert_eq!(&reply[0..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&reply[4..8], &5u32.to_be_bytes());
        assert_eq!(&reply[8..16], &7u64.to_be_bytes());
    }
}
