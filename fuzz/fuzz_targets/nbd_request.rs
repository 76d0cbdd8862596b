//! The transmission-phase request header: the input is cut into 28-byte headers, as a
//! connection reads them back to back, and each goes through `parse_request`. A header that
//! parses must encode back to the same bytes; one that does not must name its magic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::target::nbd::protocol::{
    encode_simple_reply, parse_request, Command, ProtocolError, REQUEST_MAGIC,
};

const HEADER_BYTES: usize = 28;

fn wire(command: Command) -> u16 {
    match command {
        Command::Read => 0,
        Command::Write => 1,
        Command::Disconnect => 2,
        Command::Flush => 3,
        Command::Trim => 4,
        Command::WriteZeroes => 6,
        Command::Other(value) => {
            assert!(
                !matches!(value, 0..=4 | 6),
                "known command {value} parsed as Other"
            );
            value
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for chunk in data.chunks_exact(HEADER_BYTES) {
        let mut raw = [0u8; HEADER_BYTES];
        raw.copy_from_slice(chunk);
        match parse_request(&raw) {
            Ok(header) => {
                let mut again = [0u8; HEADER_BYTES];
                again[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
                again[4..6].copy_from_slice(&header.flags.to_be_bytes());
                again[6..8].copy_from_slice(&wire(header.command).to_be_bytes());
                again[8..16].copy_from_slice(&header.cookie.to_be_bytes());
                again[16..24].copy_from_slice(&header.offset_bytes.to_be_bytes());
                again[24..28].copy_from_slice(&header.length_bytes.to_be_bytes());
                assert_eq!(again, raw, "header does not encode back to its bytes");
                assert!(!header.command.name().is_empty());
                let reply = encode_simple_reply(0, header.cookie);
                assert_eq!(reply[8..16], raw[8..16], "reply must echo the cookie");
            }
            Err(ProtocolError::BadMagic(magic)) => {
                assert_ne!(magic, REQUEST_MAGIC);
                assert_eq!(magic.to_be_bytes(), raw[0..4]);
            }
        }
    }
});
