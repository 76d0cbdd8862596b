//! The Linux kernel's own NVMe/TCP initiator (nvme-tcp, in a QEMU guest: tests/common/guest.rs)
//! against sds's NVMe/TCP target while the host's virtual paths change, and with digests
//! (tests/nvmf_kernel.rs has the connect, namespaces, data and resize): a host with no VP is
//! refused; the initiator sees its VPs as namespaces (NSID = VP lun + 1, the volume's uuid as
//! UUID and NGUID), a new VP appear through an asynchronous event, and loses a namespace when
//! its VP is deleted (the queues are cut and the kernel reconnects to the new list); with
//! header and data digests, large I/Os of pseudo-random data come back byte for byte.

mod common;

use common::guest::{run_guest, Guest, GuestOptions, GUEST_DEADLINE};
use common::kernel_nvme::{connect_to_sds, say_function, wait_for_block, DISCONNECT};
use common::{verify, Server};
use serde_json::json;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const GUEST_NQN: &str = "nqn.2026-11.org.sds:kernel-guest";
const STRANGER: &str = "nqn.2026-11.org.sds:kernel-stranger";
/// How long one step of the guest (a reconnect under TCG on a loaded machine) may take.
const STEP: Duration = Duration::from_secs(120);

fn uuid_of(server: &Server, volume: &str) -> String {
    server.ok("volume_get_volumes", json!({"name": volume}))[0]["uuid"]
        .as_str()
        .expect("a uuid")
        .to_string()
}

#[test]
fn kernel_initiator_follows_vp_changes() {
    let server = Server::start();
    server.ram_pool("p", 128 * MIB);
    for (name, size) in [("v0", 16 * MIB), ("v2", 8 * MIB), ("v1", 4 * MIB)] {
        server.ok(
            "volume_create",
            json!({"name": name, "pool": "p", "size": size}),
        );
    }
    server.ok("host_create", json!({"name": "g", "nqn": GUEST_NQN}));
    server.ok("host_create", json!({"name": "s", "nqn": STRANGER}));
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
    let subnqn = server.nvmf_subnqn("g");
    // reconnect_delay=1: after the cut, the kernel reconnects within a second, not ten.
    let connect = connect_to_sds(server.nvmf_port(), &subnqn, GUEST_NQN, ",reconnect_delay=1");
    // A host with no VP: its Connect to the subsystem is refused, so the write fails.
    let stranger = connect_to_sds(server.nvmf_port(), &subnqn, STRANGER, "");
    let say = say_function();
    let script = format!(
        r#"
{say}
# The block device of namespace $1, if the controller has it.
dev_of() {{ for d in /sys/block/nvme0n[0-9]*; do [ "$(cat $d/nsid 2>/dev/null)" = "$1" ] && echo ${{d##*/}}; done; }}
wait_for() {{ i=0; while [ $i -lt 120 ]; do eval "$1" && return 0; sleep 1; i=$((i+1)); done; return 1; }}
{stranger} 2>/dev/null || say "stranger refused"
{connect} || say "connect failed"
wait_for '[ -n "$(dev_of 1)" ]'
for d in /sys/block/nvme0n[0-9]*; do say "ns $(cat $d/nsid) $(cat $d/size) $(cat $d/uuid) $(cat $d/nguid)"; done
# The namespace of LUN 2 (not the first): what is written there is in its volume.
for pair in 1:A 3:C; do
    ns=${{pair%%:*}}; byte=${{pair##*:}}
    dd if=/dev/zero bs=4096 count=2 2>/dev/null | tr '\000' "$byte" > /tmp/w$ns
    dd if=/tmp/w$ns of=/dev/$(dev_of $ns) bs=4096 seek=3 oflag=direct 2>/dev/null
    dd if=/dev/$(dev_of $ns) of=/tmp/r$ns bs=4096 skip=3 count=2 iflag=direct 2>/dev/null
    cmp /tmp/w$ns /tmp/r$ns && say "ns $ns equal"
done
sync
say "waiting for a new namespace"
wait_for '[ -n "$(dev_of 2)" ]' && say "ns 2 appeared $(cat /sys/block/$(dev_of 2)/size)"
say "waiting for the cut"
wait_for '[ -z "$(dev_of 3)" ] && [ "$(cat /sys/class/nvme/nvme0/state)" = live ]' && say "ns 3 gone, controller $(cat /sys/class/nvme/nvme0/state)"
say "namespaces now $(for d in /sys/block/nvme0n[0-9]*; do cat $d/nsid; done | sort | tr '\n' ' ')"
{DISCONNECT}
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
        "stranger refused".into(),
        format!("ns 1 32768 {uuid0} {uuid0}"),
        format!("ns 3 16384 {uuid2} {uuid2}"),
        "ns 1 equal".into(),
        "ns 3 equal".into(),
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

/// The kernel initiator with header and data digests (CRC32C both ways, checked by Linux on
/// what sds sends and by sds on what Linux sends) moving large I/Os: 4 MiB of pseudo-random
/// data in 1 MiB direct writes (R2T and H2CData) and reads (C2HData) reads back equal in the
/// guest, and byte for byte equal over NBD here.
#[test]
fn kernel_initiator_with_digests_moves_large_io() {
    let server = Server::start();
    server.ram_pool("p", 64 * MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 16 * MIB}),
    );
    server.ok("host_create", json!({"name": "g", "nqn": GUEST_NQN}));
    server.ok(
        "vpath_create",
        json!({"host": "g", "volume": "v", "lun": 0}),
    );
    let subnqn = server.nvmf_subnqn("g");
    let connect = connect_to_sds(
        server.nvmf_port(),
        &subnqn,
        GUEST_NQN,
        ",hdr_digest,data_digest",
    );
    let say = say_function();
    let wait_ns1 = wait_for_block("nvme0n1", 60);
    // xorshift64: data no digest or pattern check could pass by accident.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..4 * MIB / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    let script = format!(
        r#"
{say}
{connect} || say "connect failed"
{wait_ns1}
dd if=/data of=/dev/nvme0n1 bs=1M seek=2 oflag=direct 2>/dev/null && say "written"
dd if=/dev/nvme0n1 of=/tmp/back bs=1M skip=2 count=4 iflag=direct 2>/dev/null
cmp /data /tmp/back && say "read back equal"
{DISCONNECT}
exit 0
"#
    );
    let output = run_guest(&script, GuestOptions::default().file("data", data.clone()));
    let results = output.results();
    for want in ["written", "read back equal"] {
        assert!(
            results.contains(&want),
            "missing {want:?}:\n{}\nserver log:\n{}",
            output.text(),
            server.log()
        );
    }
    // The same bytes through NBD here.
    common::require_tool("nbdcopy");
    let copy = tempfile::NamedTempFile::new().expect("temp file");
    let status = std::process::Command::new("nbdcopy")
        .arg(server.url("v"))
        .arg(copy.path())
        .status()
        .expect("run nbdcopy");
    assert!(status.success(), "nbdcopy failed");
    let volume = std::fs::read(copy.path()).expect("read the copy");
    let at = (2 * MIB) as usize;
    assert!(
        volume[at..at + data.len()] == data[..],
        "the volume over NBD holds other bytes than the guest wrote"
    );
}
