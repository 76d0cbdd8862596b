//! The clear-text part of a TLS-required negotiation, the only part a client reaches before it
//! proves anything: arbitrary client bytes through `Negotiation::start` with TLS required and
//! `until_starttls`. Nothing but NBD_OPT_ABORT and NBD_OPT_STARTTLS may get anything but
//! NBD_REP_ERR_TLS_REQD (or ERR_INVALID / ERR_POLICY for STARTTLS itself), no export is ever
//! named, and STARTTLS is acknowledged only with TLS available.
//!
//! Input: byte 0 caps how many bytes one `read` returns (0: no cap), byte 1 is whether a TLS
//! slot is free (low bit); the rest is what the client sends, starting with its flags.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::target::nbd::handshake::{Negotiation, TlsPolicy};
use sds::target::nbd::protocol::{NBD_OPT_ABORT, NBD_REP_ACK, OPTION_REPLY_MAGIC};
use sds_fuzz::ClientStream;

const NBD_OPT_STARTTLS: u32 = 5;

fuzz_target!(|data: &[u8]| {
    let [read_cap, available, client @ ..] = data else {
        return;
    };
    let tls_available = available & 1 == 1;
    let mut stream = ClientStream::new(client, *read_cap, 0);
    let Ok(mut negotiation) = Negotiation::start(&mut stream, TlsPolicy::Required) else {
        return;
    };
    let greeting = stream.output.len();
    let result = negotiation.until_starttls(&mut stream, tls_available);
    let mut rest = &stream.output[greeting..];
    let mut acknowledged = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 20, "a partial reply in the clear");
        assert_eq!(rest[0..8], OPTION_REPLY_MAGIC.to_be_bytes());
        let option = u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let kind = u32::from_be_bytes([rest[12], rest[13], rest[14], rest[15]]);
        let length = u32::from_be_bytes([rest[16], rest[17], rest[18], rest[19]]) as usize;
        assert!(
            length <= 128,
            "a clear-text reply carries only a short message"
        );
        if kind == NBD_REP_ACK {
            assert!(
                option == NBD_OPT_ABORT || option == NBD_OPT_STARTTLS,
                "option {option} acknowledged before TLS"
            );
            acknowledged.push(option);
        } else {
            assert!(
                kind & (1 << 31) != 0,
                "option {option} answered {kind:#x} before TLS"
            );
        }
        rest = &rest[20 + length..];
    }
    if let Ok(true) = result {
        assert!(tls_available, "STARTTLS acknowledged with no TLS slot free");
        assert_eq!(acknowledged.last(), Some(&NBD_OPT_STARTTLS));
    }
});
