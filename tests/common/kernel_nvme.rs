//! The guest-side shell pieces the tests that drive the guest kernel's NVMe/TCP initiator
//! against sds share (tests/nvmf_kernel.rs, tests/nvmf_kernel_controller.rs,
//! tests/nvmf_kernel_paths.rs): reporting a result line, connecting to sds on this machine,
//! waiting for a namespace's block device and disconnecting. Each test's own steps and checks
//! stay in its file.

use super::guest::{fabrics_connect_line, GUEST_LINE_PREFIX, HOST_FROM_GUEST};

/// Defines `say WORDS`: one result line the host parses (see [`GUEST_LINE_PREFIX`]).
pub fn say_function() -> String {
    format!("say() {{ echo \"{GUEST_LINE_PREFIX}$*\"; }}")
}

/// Connects the guest's initiator to sds's NVMe/TCP listener on this machine's `port`, to
/// `subnqn` as `hostnqn`, with `options` added to the fabrics options (`",hdr_digest"`, or ""
/// for none). Fails (non-zero status) when the target refuses the Connect.
pub fn connect_to_sds(port: u16, subnqn: &str, hostnqn: &str, options: &str) -> String {
    fabrics_connect_line(HOST_FROM_GUEST, port, subnqn, hostnqn).replace(
        "\" > /dev/nvme-fabrics",
        &format!("{options}\" > /dev/nvme-fabrics"),
    )
}

/// Waits up to `seconds` for block device /dev/`device` (a namespace appears some time after
/// Connect, once the kernel has scanned it).
pub fn wait_for_block(device: &str, seconds: u32) -> String {
    format!(
        "i=0; while [ ! -b /dev/{device} ] && [ $i -lt {seconds} ]; do sleep 1; i=$((i+1)); done"
    )
}

/// Disconnects the guest's first controller (nvme-cli's `disconnect`, without nvme-cli).
pub const DISCONNECT: &str = "echo 1 > /sys/class/nvme/nvme0/delete_controller";
