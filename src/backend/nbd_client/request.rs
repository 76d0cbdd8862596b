//! The client's side of a transmission-phase request: the 28-byte header it sends (a write's
//! data follows it straight from the caller's buffer). The commands and the wire constants
//! are the server's, in `target::nbd::protocol`.

use crate::target::nbd::protocol::{
    Command, NBD_CMD_FLAG_FUA, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM,
    NBD_FLAG_SEND_WRITE_ZEROES, REQUEST_MAGIC,
};

/// Bytes of a request header.
pub const REQUEST_HEADER_BYTES: usize = 28;

/// One request header, big-endian: magic, flags, type, cookie, offset, length.
pub fn encode_request(
    command: Command,
    flags: u16,
    cookie: u64,
    offset_bytes: u64,
    length_bytes: u32,
) -> [u8; REQUEST_HEADER_BYTES] {
    let mut out = [0u8; REQUEST_HEADER_BYTES];
    out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&command.wire().to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..24].copy_from_slice(&offset_bytes.to_be_bytes());
    out[24..28].copy_from_slice(&length_bytes.to_be_bytes());
    out
}

/// What the export lets the client send, from its transmission flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub flush: bool,
    pub fua: bool,
    pub write_zeroes: bool,
    pub trim: bool,
}

impl Capabilities {
    pub fn from_flags(flags: u16) -> Self {
        Self {
            flush: flags & NBD_FLAG_SEND_FLUSH != 0,
            fua: flags & NBD_FLAG_SEND_FUA != 0,
            write_zeroes: flags & NBD_FLAG_SEND_WRITE_ZEROES != 0,
            trim: flags & NBD_FLAG_SEND_TRIM != 0,
        }
    }

    /// The command flags of a write (or zeroing) that must be durable when it completes: FUA
    /// when the export takes it; otherwise the caller follows the write with a flush
    /// ([`Capabilities::fua_needs_flush`]).
    pub fn fua_flags(&self, fua: bool) -> u16 {
        if fua && self.fua {
            NBD_CMD_FLAG_FUA
        } else {
            0
        }
    }

    /// Whether a FUA write needs a flush after it: the export has no FUA but has a flush. (An
    /// export with neither writes through: nothing is cached to make durable.)
    pub fn fua_needs_flush(&self, fua: bool) -> bool {
        fua && !self.fua && self.flush
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::nbd::protocol::parse_request;

    /// The client's header is what the server's parser reads.
    #[test]
    fn encodes_what_the_server_parses() {
        for command in [
            Command::Read,
            Command::Write,
            Command::Disconnect,
            Command::Flush,
            Command::Trim,
            Command::WriteZeroes,
        ] {
            let raw = encode_request(command, NBD_CMD_FLAG_FUA, 77, 1 << 40, 4096);
            let header = parse_request(&raw).expect("parses");
            assert_eq!(header.command, command);
            assert_eq!(header.flags, NBD_CMD_FLAG_FUA);
            assert_eq!(header.cookie, 77);
            assert_eq!(header.offset_bytes, 1 << 40);
            assert_eq!(header.length_bytes, 4096);
        }
    }

    #[test]
    fn capabilities_from_flags() {
        let caps = Capabilities::from_flags(NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_WRITE_ZEROES);
        assert!(caps.flush && caps.write_zeroes && !caps.fua && !caps.trim);
        assert_eq!(caps.fua_flags(true), 0);
        assert!(caps.fua_needs_flush(true));
        assert!(!caps.fua_needs_flush(false));
        let caps = Capabilities::from_flags(NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_FLUSH);
        assert_eq!(caps.fua_flags(true), NBD_CMD_FLAG_FUA);
        assert!(!caps.fua_needs_flush(true));
    }
}
