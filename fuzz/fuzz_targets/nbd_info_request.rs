//! The NBD_OPT_INFO / NBD_OPT_GO payload: `parse_info_request` on arbitrary option data. A
//! payload it accepts must encode back to exactly the bytes it came from (no byte ignored,
//! none read twice).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::constants::MAX_NBD_OPTION_BYTES;
use sds::target::nbd::handshake::parse_info_request;

fuzz_target!(|data: &[u8]| {
    // The handshake never hands the parser more than one option's payload.
    if data.len() > MAX_NBD_OPTION_BYTES {
        return;
    }
    let Some(request) = parse_info_request(data) else {
        return;
    };
    let mut again = Vec::with_capacity(data.len());
    again.extend_from_slice(&(request.name.len() as u32).to_be_bytes());
    again.extend_from_slice(request.name.as_bytes());
    again.extend_from_slice(&(request.info_types.len() as u16).to_be_bytes());
    for info in &request.info_types {
        again.extend_from_slice(&info.to_be_bytes());
    }
    assert_eq!(
        again, data,
        "info request does not encode back to its bytes"
    );
});
