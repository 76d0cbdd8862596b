//! Generates the libiscsi bindings with bindgen and links the library found by pkg-config.
//!
//! Only the asynchronous API the remote-LUN driver uses is allow-listed (`FUNCTIONS` below), so
//! the generated file stays small and a libiscsi symbol sds does not call cannot be used by
//! accident. To use another libiscsi function, add it to `FUNCTIONS`; the types it needs follow.
use std::env;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process;

/// The Debian packages a build of this crate needs, named in every failure message.
const PACKAGES_HINT: &str = "install Debian's libiscsi-dev (headers and libiscsi.pc) and \
     libclang-dev (bindgen loads libclang), e.g. `apt-get install libiscsi-dev libclang-dev`, \
     or run scripts/setup.sh";

/// The libiscsi functions the driver calls: context life cycle and settings, the asynchronous
/// connect/login/logout, the event-loop hooks (fd, events, service, queue lengths), the
/// asynchronous SCSI tasks, and the task and error accessors.
const FUNCTIONS: &[&str] = &[
    "iscsi_create_context",
    "iscsi_destroy_context",
    "iscsi_set_targetname",
    "iscsi_set_alias",
    "iscsi_set_session_type",
    "iscsi_set_header_digest",
    "iscsi_set_initiator_username_pwd",
    "iscsi_set_timeout",
    "iscsi_set_noautoreconnect",
    "iscsi_get_error",
    "iscsi_parse_full_url",
    "iscsi_destroy_url",
    "iscsi_connect_async",
    "iscsi_full_connect_async",
    "iscsi_login_async",
    "iscsi_logout_async",
    "iscsi_disconnect",
    "iscsi_get_fd",
    "iscsi_which_events",
    "iscsi_service",
    "iscsi_queue_length",
    "iscsi_out_queue_length",
    "iscsi_scsi_command_async",
    "iscsi_read16_task",
    "iscsi_write16_task",
    "iscsi_synchronizecache16_task",
    "iscsi_readcapacity16_task",
    "iscsi_testunitready_task",
    "iscsi_read16_iov_task",
    "iscsi_write16_iov_task",
    "iscsi_writesame16_task",
    "iscsi_inquiry_task",
    "iscsi_nop_out_async",
    "iscsi_set_log_level",
    "iscsi_set_log_fn",
    "scsi_free_scsi_task",
    "scsi_datain_unmarshall",
];

/// Types whose fields the driver reads (task status and sense, the parsed URL, the capacity).
const TYPES: &[&str] = &[
    "scsi_task",
    "scsi_sense",
    "scsi_status",
    "scsi_xfer_dir",
    "iscsi_url",
    "scsi_readcapacity16",
    "scsi_iovec",
    "scsi_residual",
    "scsi_sense_key",
    "scsi_inquiry_logical_block_provisioning",
];

/// Constants the driver passes or compares against (the SCSI statuses come with `scsi_status`).
const VARS: &[&str] = &["MAX_STRING_SIZE", "LIBISCSI_API_VERSION"];

fn fail(what: &str) -> ! {
    eprintln!("error: sds-sys: {what}; {PACKAGES_HINT}");
    process::exit(1);
}

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=build.rs");

    let library = pkg_config::Config::new()
        .atleast_version("1.19")
        .probe("libiscsi")
        .unwrap_or_else(|error| fail(&format!("libiscsi not found by pkg-config ({error})")));

    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .use_core()
        .wrap_unsafe_ops(true)
        .allowlist_recursively(true)
        .default_enum_style(bindgen::EnumVariation::ModuleConsts)
        .derive_default(false)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for path in &library.include_paths {
        builder = builder.clang_arg(format!("-I{}", path.display()));
    }
    for function in FUNCTIONS {
        builder = builder.allowlist_function(function);
    }
    for type_name in TYPES {
        builder = builder.allowlist_type(type_name);
    }
    for var in VARS {
        builder = builder.allowlist_var(var);
    }
    // bindgen panics, rather than returning an error, when it cannot load libclang; turn that
    // into the same message as every other missing piece (the panic's text, printed first,
    // names the cause).
    let generated = panic::catch_unwind(AssertUnwindSafe(|| builder.generate()))
        .unwrap_or_else(|_| fail("bindgen could not load libclang"));
    let bindings = generated.unwrap_or_else(|error| {
        fail(&format!(
            "bindgen could not generate the libiscsi bindings from <iscsi/iscsi.h> and \
             <iscsi/scsi-lowlevel.h> ({error})"
        ))
    });

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out_dir.join("libiscsi.rs"))
        .unwrap_or_else(|error| fail(&format!("could not write the bindings ({error})")));
}
