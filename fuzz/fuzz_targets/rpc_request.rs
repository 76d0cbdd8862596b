//! The management socket's request path: arbitrary bytes go through SPDK's framing
//! (`Decoder::feed` / `next_value`, cut into reads as a client's writes may be), each value
//! through the JSON-RPC 2.0 envelope check (`validate`), and valid params through every
//! `Params` accessor under every parameter name a method knows.
//!
//! Input: byte 0 is the read size (0: everything in one read); the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::control::params::Params;
use sds::rpc::framing::Decoder;
use sds::rpc::server::validate;
use serde_json::Value;

/// Every parameter name some method takes, plus one none does.
const KNOWN: [&str; 13] = [
    "name",
    "kind",
    "path",
    "size",
    "block_size",
    "luns",
    "extent_size",
    "pool",
    "thin",
    "timeout",
    "per_channel",
    "current",
    "include_aliases",
];

fn exercise_params(params: Option<Value>) {
    let Ok(params) = Params::new(params.clone(), &KNOWN) else {
        // Refused params must be refused by a method that takes no parameters too.
        let refused = Params::new(params, &[]);
        assert!(refused.is_err());
        return;
    };
    for key in KNOWN.iter().copied().chain(["unknown"]) {
        let text = params.optional_str(key);
        if let Ok(Some(text)) = text {
            assert_eq!(params.str(key).ok(), Some(text));
        }
        if let Ok(name) = params.name(key) {
            assert!(!name.is_empty() && name.len() <= sds::constants::MAX_NAME_BYTES);
            assert_eq!(params.optional_name(key).ok().flatten(), Some(name));
        }
        let number = params.optional_u64(key);
        if let Ok(Some(number)) = number {
            assert_eq!(params.u64(key).ok(), Some(number));
        }
        let _ = params.optional_bool(key);
        if let Ok(names) = params.name_list(key) {
            assert!(!names.is_empty());
        }
    }
}

fn handle(request: &Value) {
    match validate(request) {
        Ok((id, method, params)) => {
            assert!(matches!(
                id,
                None | Some(Value::Null | Value::Number(_) | Value::String(_))
            ));
            assert!(!method.is_empty() || request["method"] == "");
            exercise_params(params);
        }
        Err((id, error)) => {
            assert_eq!(error.code, sds::rpc::error::INVALID_REQUEST);
            assert!(matches!(
                id,
                Value::Null | Value::Number(_) | Value::String(_)
            ));
            assert!(serde_json::to_vec(&error.to_json()).is_ok());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [read_size, stream @ ..] = data else {
        return;
    };
    let read_size = if *read_size == 0 {
        stream.len().max(1)
    } else {
        usize::from(*read_size)
    };
    let mut decoder = Decoder::default();
    // As the server does: after each read, answer every complete value; an error closes
    // the connection.
    for chunk in stream.chunks(read_size) {
        decoder.feed(chunk);
        loop {
            match decoder.next_value() {
                Ok(Some(request)) => handle(&request),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
