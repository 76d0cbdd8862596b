//! sds's NVMe/TCP controller as Linux's own initiator sees it, in the QEMU guest
//! (tests/common/guest.rs; built by scripts/build-nvme-guest.sh): what the controller
//! announces, as sysfs shows it (model, firmware, subsystem NQN), and keep-alive holding the
//! controller past its timeout. The namespaces (only the host's own VPs, sizes, NGUID = the
//! volume's uuid), data, resize and disconnect are tests/nvmf_kernel.rs; a VP made or deleted
//! while the host is connected is tests/nvmf_kernel_paths.rs.

mod common;

use common::guest::{Guest, GuestOptions, GUEST_DEADLINE};
use common::kernel_nvme::{connect_to_sds, say_function, wait_for_block, DISCONNECT};
use common::Server;
use serde_json::json;

const HOSTNQN: &str = "nqn.2014-08.org.example:guest";

#[test]
fn the_kernel_initiator_sees_what_the_controller_announces_and_keep_alive_holds_it() {
    let server = Server::start();
    server.ram_pool("p", 64 << 20);
    server.ok(
        "volume_create",
        json!({"name": "v0", "pool": "p", "size": 16u64 << 20, "block_size": 512}),
    );
    server.ok("host_create", json!({"name": "g", "nqn": HOSTNQN}));
    server.ok(
        "vpath_create",
        json!({"host": "g", "volume": "v0", "lun": 0}),
    );
    let subnqn = server.nvmf_subnqn("g");
    let say = say_function();
    let connect = connect_to_sds(server.nvmf_port(), &subnqn, HOSTNQN, "");
    let wait_ns1 = wait_for_block("nvme0n1", 30);
    let script = format!(
        r#"
{say}
{connect}
{wait_ns1}
for f in model firmware_rev subsysnqn; do say "$f $(cat /sys/class/nvme/nvme0/$f)"; done
sleep 12
say "after 12 s $(cat /sys/class/nvme/nvme0/state)"
{DISCONNECT}
exit 0
"#
    );
    let output = Guest::boot(&script, GuestOptions::default()).wait_end(GUEST_DEADLINE);
    let results = output.results();
    let firmware = format!("firmware_rev {}", env!("CARGO_PKG_VERSION"));
    let subsysnqn = format!("subsysnqn {subnqn}");
    for want in [
        "model sds",
        firmware.as_str(),
        subsysnqn.as_str(),
        // KATO is 5 s by default: keep-alive kept it.
        "after 12 s live",
    ] {
        assert!(
            results.contains(&want),
            "missing {want:?}:\n{}\nserver log:\n{}",
            output.text(),
            server.log()
        );
    }
}
