//! `sds-sys`: raw bindings to the C interfaces the sds data plane drives directly.
//!
//! Today that is libiscsi's asynchronous initiator API, for the remote-LUN driver. `build.rs`
//! generates the bindings with bindgen from Debian's libiscsi-dev headers (`<iscsi/iscsi.h>`,
//! `<iscsi/scsi-lowlevel.h>`) and links `libiscsi` found by pkg-config, so building this crate
//! needs libiscsi-dev and libclang-dev (`scripts/setup.sh` installs both).
//!
//! Only raw FFI lives here: every item is a plain binding, and the safe wrapper that owns a
//! context and its buffers is `sds::backend::iscsi_context`. Only the functions listed in
//! `build.rs` (`FUNCTIONS`) are bound, with the types they need; to call another libiscsi
//! function, add it there.
#![no_std]

/// The generated bindings, in a module of their own so that the lint exceptions below cover
/// bindgen's output and nothing written by hand.
mod bindings {
    #![allow(
        non_camel_case_types,
        non_upper_case_globals,
        non_snake_case,
        reason = "the generated bindings keep libiscsi's C names"
    )]
    #![allow(
        clippy::all,
        clippy::undocumented_unsafe_blocks,
        reason = "the generated file is bindgen's output, not sds code"
    )]

    include!(concat!(env!("OUT_DIR"), "/libiscsi.rs"));
}

pub use bindings::*;
