//! Sizes an administrator types on the command line (`--size 10G`): `parse_size` on any
//! text. An accepted size must survive a round trip through its exact byte count.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::units::{format_size, parse_size};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = parse_size(text) {
        assert_eq!(parse_size(&bytes.to_string()), Ok(bytes));
        assert!(!format_size(bytes).is_empty());
    }
});
