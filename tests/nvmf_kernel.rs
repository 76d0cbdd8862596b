//! The Linux kernel's own NVMe/TCP initiator (nvme-tcp, in a QEMU guest: tests/common/guest.rs)
//! against sds's NVMe/TCP target: the reference initiator sees exactly its host's VPs as
//! namespaces (NSID = VP lun + 1, the volume's uuid as UUID and NGUID), writes with dd that
//! read back the same there and over NBD here, sees a volume grow and a VP appear through
//! asynchronous events, loses a namespace when its VP is deleted (the queues are cut and the
//! kernel reconnects to the new list), and disconnects.

mod common;

use common::guest::{fabrics_connect_line, Guest, GuestOptions, GUEST_DEADLINE, HOST_FROM_GUEST};
use common::{verify, Server};
use serde_json::json;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const GUEST_NQN: &str = "nqn.2026-11.org.sds:kernel-guest";
/// How long one step of the guest (a reconnect under TCG on a loaded machine) may take.
const STEP: Duration = Duration::from_secs(120);

fn uuid_of(server: &Server, volume: &str) -> String {
    server.ok("volume_get_volumes", json!({"name": volume}))[0]["uuid"]
        .as_str()
        .expect("a uuid")
        .to_string()
}

#[test]
fn kernel_initiator_sees_its_vps_reads_back_and_follows_domain_changes() {
    let server = Server::start();
    server.ram_pool("p", 128 * MIB);
    for (name, size) in [("v0", 16 * MIB), ("v2", 8 * MIB), ("v1", 4 * MIB)] {
        server.ok(
            "volume_create",
            json!({"name": name, "pool": "p", "size": size}),
        );
    }
    server.ok("host_create", json!({"name": "g", "nqn": GUEST_NQN}));
    server.ok(
        "vpath_create",
        json!({"host": "g", "volume": "v0", "lun": 0}),
    );
    let lun2 = server.ok(
        "vpath_create",
        json!({"host": "g", "volume": "v2", "lun": 2}),
    )["id"]
        .as_u64()
        .expect("a path id");
    let subnqn = server
        .ok("nvmf_get_subsystems", json!({}))
        .as_array()
        .expect("a list")
        .iter()
        .find(|s| s["host"] == "g")
        .and_then(|s| s["nqn"].as_str())
        .expect("the host's subsystem")
        .to_string();
    // reconnect_delay=1: after the cut, the kernel reconnects within a second, not ten.
    let connect = fabrics_connect_line(HOST_FROM_GUEST, server.nvmf_port(), &subnqn, GUEST_NQN)
        .replace(
            "\" > /dev/nvme-fabrics",
            ",reconnect_delay=1\" > /dev/nvme-fabrics",
        );
    let script = format!(
        r#"
say() {{ echo "SDS-GUEST: $*"; }}
# The block device of namespace $1, if the controller has it.
dev_of() {{ for d in /sys/block/nvme0n[0-9]*; do [ "$(cat $d/nsid 2>/dev/null)" = "$1" ] && echo ${{d##*/}}; done; }}
wait_for() {{ i=0; while [ $i -lt 120 ]; do eval "$1" && return 0; sleep 1; i=$((i+1)); done; return 1; }}
{connect} || say "connect failed"
wait_for '[ -n "$(dev_of 1)" ]'
for d in /sys/block/nvme0n[0-9]*; do say "ns $(cat $d/nsid) $(cat $d/size) $(cat $d/uuid) $(cat $d/nguid)"; done
for pair in 1:A 3:C; do
    ns=${{pair%%:*}}; byte=${{pair##*:}}
    dd if=/dev/zero bs=4096 count=2 2>/dev/null | tr '\000' "$byte" > /tmp/w$ns
    dd if=/tmp/w$ns of=/dev/$(dev_of $ns) bs=4096 seek=3 oflag=direct 2>/dev/null
    dd if=/dev/$(dev_of $ns) of=/tmp/r$ns bs=4096 skip=3 count=2 iflag=direct 2>/dev/null
    cmp /tmp/w$ns /tmp/r$ns && say "ns $ns equal"
done
sync
say "waiting for resize"
wait_for '[ "$(cat /sys/block/$(dev_of 1)/size)" != 32768 ]' && say "ns 1 resized $(cat /sys/block/$(dev_of 1)/size)"
say "waiting for a new namespace"
wait_for '[ -n "$(dev_of 2)" ]' && say "ns 2 appeared $(cat /sys/block/$(dev_of 2)/size)"
say "waiting for the cut"
wait_for '[ -z "$(dev_of 3)" ] && [ "$(cat /sys/class/nvme/nvme0/state)" = live ]' && say "ns 3 gone, controller $(cat /sys/class/nvme/nvme0/state)"
say "namespaces now $(for d in /sys/block/nvme0n[0-9]*; do cat $d/nsid; done | sort | tr '\n' ' ')"
echo 1 > /sys/class/nvme/nvme0/delete_controller
[ -e /sys/class/nvme/nvme0 ] || say "disconnected"
exit 0
"#
    );
    let guest = Guest::boot(&script, GuestOptions::default());
    let step = |line: &str| {
        assert!(
            guest.wait_for_line(line, STEP).is_some(),
            "the guest never got to {line:?}:\n{}\nserver log:\n{}",
            guest.lines().join("\n"),
            server.log()
        );
    };
    step("SDS-GUEST: waiting for resize");
    server.ok("volume_resize", json!({"name": "v0", "size": 32 * MIB}));
    step("SDS-GUEST: waiting for a new namespace");
    server.ok(
        "vpath_create",
        json!({"host": "g", "volume": "v1", "lun": 1}),
    );
    step("SDS-GUEST: waiting for the cut");
    server.ok("vpath_delete", json!({"id": lun2}));
    let output = guest.wait_end(GUEST_DEADLINE);
    let results = output.results();
    let (uuid0, uuid2) = (uuid_of(&server, "v0"), uuid_of(&server, "v2"));
    // Sizes in 512-byte sectors, as the block layer counts them.
    for want in [
        format!("ns 1 32768 {uuid0} {uuid0}"),
        format!("ns 3 16384 {uuid2} {uuid2}"),
        "ns 1 equal".into(),
        "ns 3 equal".into(),
        "ns 1 resized 65536".into(),
        "ns 2 appeared 8192".into(),
        "ns 3 gone, controller live".into(),
        "namespaces now 1 2".into(),
        "disconnected".into(),
    ] {
        assert!(
            results.contains(&want.as_str()),
            "missing {want:?}:\n{}\nserver log:\n{}",
            output.text(),
            server.log()
        );
    }
    assert_eq!(output.exit_status, Some(0), "{}", output.text());
    // What the kernel wrote is in the volumes, as NBD reads them here.
    verify(&server.url("v0"), &[(0x41, 3 * 4096, 2 * 4096)]);
    verify(&server.url("v2"), &[(0x43, 3 * 4096, 2 * 4096)]);
}
