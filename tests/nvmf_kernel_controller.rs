//! sds's NVMe/TCP controllers as Linux's own initiator sees them, in the QEMU guest
//! (tests/common/guest.rs; built by scripts/build-nvme-guest.sh): what the controller
//! announces, as sysfs shows it (model, firmware, subsystem NQN, the namespace's size and
//! NGUID = the volume's uuid), only the host's own VPs as namespaces, a VP made while the host
//! is connected appearing through the asynchronous event, and keep-alive holding the
//! controller past its timeout. (Data, resize and disconnect through the kernel:
//! tests/nvmf_kernel.rs.)

mod common;

use common::guest::{Guest, GuestOptions, GUEST_DEADLINE};
use common::kernel_nvme::{connect_to_sds, say_function, wait_for_block, DISCONNECT};
use common::Server;
use serde_json::json;

const HOSTNQN: &str = "nqn.2014-08.org.example:guest";

#[test]
fn the_kernel_initiator_sees_its_namespaces_a_new_one_and_keeps_its_controller() {
    let server = Server::start();
    server.ram_pool("p", 64 << 20);
    for (name, size, block) in [
        ("v0", 16u64 << 20, 512),
        ("v1", 8 << 20, 4096),
        ("other", 4 << 20, 512),
    ] {
        server.ok(
            "volume_create",
            json!({"name": name, "pool": "p", "size": size, "block_size": block}),
        );
    }
    server.ok("host_create", json!({"name": "g", "nqn": HOSTNQN}));
    server.ok(
        "host_create",
        json!({"name": "o", "nqn": "nqn.2014-08.org.example:other"}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "g", "volume": "v0", "lun": 0}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "o", "volume": "other", "lun": 0}),
    );
    let subnqn = server.nvmf_subnqn("g");
    let uuid = server.ok("volume_get_volumes", json!({"name": "v0"}))[0]["uuid"]
        .as_str()
        .expect("uuid")
        .to_string();
    let say = say_function();
    let connect = connect_to_sds(server.nvmf_port(), &subnqn, HOSTNQN, "");
    let wait_ns1 = wait_for_block("nvme0n1", 30);
    let wait_ns2 = wait_for_block("nvme0n2", 60);
    let script = format!(
        r#"
{say}
{connect}
{wait_ns1}
say "namespaces $(ls /dev | grep -c '^nvme0n[0-9]*$')"
say "size $(cat /sys/block/nvme0n1/size)"
for f in model firmware_rev subsysnqn; do say "$f $(cat /sys/class/nvme/nvme0/$f)"; done
say "nguid $(cat /sys/block/nvme0n1/nguid)"
say "connected"
{wait_ns2}
[ -b /dev/nvme0n2 ] && say "second namespace $(cat /sys/block/nvme0n2/size)"
sleep 12
say "after 12 s $(cat /sys/class/nvme/nvme0/state)"
{DISCONNECT}
sleep 1
[ -e /dev/nvme0n1 ] || say "disconnected"
exit 0
"#
    );
    let guest = Guest::boot(&script, GuestOptions::default());
    let connected = guest.wait_for_line("SDS-GUEST: connected", GUEST_DEADLINE);
    assert!(
        connected.is_some(),
        "{}\nserver log:\n{}",
        guest.lines().join("\n"),
        server.log()
    );
    server.ok(
        "vpath_create",
        json!({"host": "g", "volume": "v1", "lun": 1}),
    );
    let output = guest.wait_end(GUEST_DEADLINE);
    let results = output.results();
    let firmware = format!("firmware_rev {}", env!("CARGO_PKG_VERSION"));
    let subsysnqn = format!("subsysnqn {subnqn}");
    let nguid = format!("nguid {uuid}");
    for want in [
        // Only its own VP: host o's volume is not a namespace of g's subsystem.
        "namespaces 1",
        // 16 MiB in 512-byte sectors.
        "size 32768",
        "model sds",
        firmware.as_str(),
        subsysnqn.as_str(),
        nguid.as_str(),
        // The VP made while connected, announced by the event: 8 MiB.
        "second namespace 16384",
        // KATO is 5 s by default: keep-alive kept it.
        "after 12 s live",
        "disconnected",
    ] {
        assert!(
            results.contains(&want),
            "missing {want:?}:\n{}\nserver log:\n{}",
            output.text(),
            server.log()
        );
    }
}
