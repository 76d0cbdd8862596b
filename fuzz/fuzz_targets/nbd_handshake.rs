//! The whole fixed-newstyle option negotiation, driven by arbitrary client bytes over an
//! in-memory stream against a fake export catalogue (see `sds_fuzz` for the checks).
//!
//! Input: byte 0 caps how many bytes one `read` returns (0: no cap), byte 1 makes the Nth
//! `write` fail (0: never); the rest is what the client sends, starting with its flags.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::target::nbd::handshake::negotiate;
use sds_fuzz::{check_handshake, Catalog, ClientStream};

fuzz_target!(|data: &[u8]| {
    let [read_cap, failing_write, client @ ..] = data else {
        return;
    };
    let mut stream = ClientStream::new(client, *read_cap, *failing_write);
    let result = negotiate(&mut stream, &Catalog);
    check_handshake(&result, &stream.output);
});
