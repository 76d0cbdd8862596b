//! What more than one fuzz target needs: an in-memory client stream and a fake export
//! catalogue for the NBD handshake, and the checks every handshake run must pass.

use sds::target::nbd::handshake::{ExportCatalog, ExportInfo, HandshakeError, Negotiated};
use sds::target::nbd::protocol::{
    IHAVEOPT, NBDMAGIC, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, OPTION_REPLY_MAGIC,
};
use std::io::{Read, Write};

/// Longest string the NBD spec requires a peer to accept; no reply may carry a longer one.
pub const NBD_MAX_STRING_BYTES: usize = 4096;

/// The client's side of a handshake: reads come from `input` (at most `read_cap` bytes per
/// read, as a slow client sends them), writes go to `output` until the write that fails.
pub struct ClientStream<'a> {
    pub input: &'a [u8],
    pub read_cap: usize,
    pub writes_before_failure: Option<usize>,
    pub output: Vec<u8>,
}

impl<'a> ClientStream<'a> {
    /// `read_cap` 0 means no cap; `failing_write` N > 0 makes the Nth write fail.
    pub fn new(input: &'a [u8], read_cap: u8, failing_write: u8) -> Self {
        Self {
            input,
            read_cap: if read_cap == 0 {
                usize::MAX
            } else {
                usize::from(read_cap)
            },
            writes_before_failure: (failing_write != 0).then(|| usize::from(failing_write - 1)),
            output: Vec::new(),
        }
    }
}

impl Read for ClientStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.input.len()).min(self.read_cap);
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for ClientStream<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(left) = self.writes_before_failure.as_mut() {
            if *left == 0 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            *left -= 1;
        }
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Three exports; the last has the longest name a volume may have.
pub struct Catalog;

pub const EXPORT_NAMES: [&str; 3] = [
    "a",
    "vol0",
    "a-name-of-sixty-four-bytes.which-is-the-longest-a-volume-may-have",
];

fn export(name: &str) -> ExportInfo {
    ExportInfo {
        name: name.into(),
        description: format!("sds volume {name}"),
        size_bytes: 1 << 30,
        min_block_bytes: 512,
        preferred_block_bytes: 4096,
        max_payload_bytes: 4 << 20,
        read_only: name == "a",
        can_multi_conn: true,
        can_flush: true,
        can_fua: true,
        can_trim: name != "a",
        can_write_zeroes: true,
    }
}

impl ExportCatalog for Catalog {
    fn list_exports(&self) -> Vec<ExportInfo> {
        EXPORT_NAMES.iter().map(|name| export(name)).collect()
    }
    fn find_export(&self, name: &str) -> Option<ExportInfo> {
        EXPORT_NAMES.contains(&name).then(|| export(name))
    }
}

/// Checks one handshake: the greeting comes first, every option reply is whole and carries
/// no string past the spec's limit, a chosen export is one the catalogue has, and only
/// NBD_OPT_EXPORT_NAME's size-and-flags answer may follow the replies.
pub fn check_handshake(result: &Result<Option<Negotiated>, HandshakeError>, output: &[u8]) {
    if output.is_empty() {
        assert!(matches!(result, Err(HandshakeError::Io(_))));
        return;
    }
    assert_eq!(output[0..8], NBDMAGIC.to_be_bytes());
    assert_eq!(output[8..16], IHAVEOPT.to_be_bytes());
    if let Err(HandshakeError::ClientFlags(flags)) = result {
        assert!(
            flags & NBD_FLAG_C_FIXED_NEWSTYLE == 0
                || flags & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) != 0
        );
    }
    let chosen = match result {
        Ok(Some(negotiated)) => {
            let expected = Catalog.find_export(&negotiated.export.name);
            assert_eq!(expected.as_ref(), Some(&negotiated.export));
            assert_eq!(
                negotiated.transmission_flags,
                negotiated.export.transmission_flags()
            );
            Some(negotiated)
        }
        _ => None,
    };
    let mut rest = &output[18..];
    while !rest.is_empty() {
        if rest.len() >= 20 && rest[0..8] == OPTION_REPLY_MAGIC.to_be_bytes() {
            let length = u32::from_be_bytes([rest[16], rest[17], rest[18], rest[19]]) as usize;
            assert!(rest.len() >= 20 + length, "truncated option reply");
            // The largest reply body is NBD_REP_INFO's 2-byte type before a string, or
            // NBD_REP_SERVER's 4-byte length before a name.
            assert!(
                length <= 4 + NBD_MAX_STRING_BYTES,
                "option reply of {length} bytes"
            );
            rest = &rest[20 + length..];
            continue;
        }
        let negotiated = chosen.expect("bytes after the replies without a chosen export");
        assert!(rest.len() == 10 || rest.len() == 134, "export-name tail");
        assert_eq!(rest[0..8], negotiated.export.size_bytes.to_be_bytes());
        assert_eq!(rest[8..10], negotiated.transmission_flags.to_be_bytes());
        assert!(rest[10..].iter().all(|&b| b == 0));
        break;
    }
}
