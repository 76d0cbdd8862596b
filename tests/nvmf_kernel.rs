//! sds's NVMe/TCP target against the Linux kernel's own initiator (nvme-tcp, in a QEMU guest:
//! tests/common/guest.rs, built by scripts/build-nvme-guest.sh). The guest connects by writing
//! a connect string to /dev/nvme-fabrics, as nvme-cli would, and reaches this machine's
//! loopback through QEMU's user-mode gateway.

mod common;

use common::guest::{Guest, GuestOptions, GUEST_DEADLINE};
use common::kernel_nvme::{connect_to_sds, say_function, DISCONNECT};
use common::{require_tool, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:5d0c3f8e-1b7a-4c55-9a51-0c3d2f6e7a10";
const OTHER_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:0a6f58a3-7c1e-4f2b-8e0d-5b9c1d2e3f40";
const MIB: u64 = 1 << 20;

/// The bytes the guest writes at block 256 of namespace 1: `sds-nvme-kernel ` over and over,
/// so this side can make them too and compare them with what NBD reads back.
fn pattern(len: usize) -> Vec<u8> {
    b"sds-nvme-kernel "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// The guest's script: connect, list the namespaces, write and read back, report each step
/// on a `SDS-GUEST:` line; then wait for the host to grow the volume, see the new size, and
/// disconnect.
fn initiator_script(port: u16, subnqn: &str, foreign_subnqn: &str) -> String {
    format!(
        r#"
{say}
connect() {{ {connect}; }}
if connect {foreign} 2>/dev/null; then say "foreign connected"; else say "foreign refused"; fi
connect {subnqn} || {{ say "connect failed"; exit 1; }}
for i in $(seq 100); do [ -b /dev/nvme0n2 ] && break; sleep 0.1; done
for ns in /sys/block/nvme0n*; do
  say "ns $(cat $ns/nsid) $(cat $ns/size) $(cat $ns/queue/logical_block_size) $(cat $ns/nguid 2>/dev/null || cat $ns/wwid)"
done
yes sds-nvme-kernel | tr '\n' ' ' | head -c 1048576 > /tmp/pattern
dd if=/tmp/pattern of=/dev/nvme0n1 bs=4096 seek=256 oflag=direct 2>/dev/null || say "write failed"
dd if=/dev/nvme0n1 of=/tmp/back bs=4096 skip=256 count=256 iflag=direct 2>/dev/null || say "read failed"
cmp /tmp/pattern /tmp/back && say "data ok"
before=$(cat /sys/block/nvme0n1/size)
say "resize me $before"
for i in $(seq 600); do
  now=$(cat /sys/block/nvme0n1/size)
  [ "$now" != "$before" ] && break
  sleep 0.1
done
say "resized $(cat /sys/block/nvme0n1/size)"
{DISCONNECT} && say "disconnected"
exit 0
"#,
        say = say_function(),
        connect = connect_to_sds(port, "$1", HOST_NQN, ""),
        foreign = foreign_subnqn,
    )
}

fn volume_uuid(created: &Value) -> String {
    created["uuid"]
        .as_str()
        .expect("the volume's uuid")
        .to_lowercase()
}

/// The kernel connects to its host's subsystem only (another host's is refused), sees exactly
/// its VPs as namespaces with their sizes, block size and the volume's uuid as NGUID, writes
/// and reads back through /dev/nvme0n1 with O_DIRECT (and the bytes are on the volume: NBD
/// reads them back here), sees the volume grow, and disconnects; the server then has no
/// queue left for it.
#[test]
fn the_linux_initiator_connects_writes_reads_sees_a_resize_and_disconnects() {
    require_tool("nbdcopy");
    let server = Server::start();
    server.ram_pool("p", 256 * MIB);
    let v1 = server.ok(
        "volume_create",
        json!({"name": "v1", "pool": "p", "size": 64 * MIB}),
    );
    let v2 = server.ok(
        "volume_create",
        json!({"name": "v2", "pool": "p", "size": 32 * MIB}),
    );
    server.ok(
        "volume_create",
        json!({"name": "theirs", "pool": "p", "size": 16 * MIB}),
    );
    server.ok("host_create", json!({"name": "guest", "nqn": HOST_NQN}));
    server.ok("host_create", json!({"name": "other", "nqn": OTHER_NQN}));
    server.ok(
        "vpath_create",
        json!({"host": "guest", "volume": "v1", "lun": 0}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "guest", "volume": "v2", "lun": 1}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "other", "volume": "theirs", "lun": 0}),
    );
    let subnqn = server.nvmf_subnqn("guest");
    let foreign = server.nvmf_subnqn("other");

    let guest = Guest::boot(
        &initiator_script(server.nvmf_port(), &subnqn, &foreign),
        GuestOptions::default(),
    );
    let resize_me = guest.wait_for_line("resize me", GUEST_DEADLINE);
    assert!(
        resize_me.is_some(),
        "the guest never got to the resize:\n{}",
        guest.lines().join("\n")
    );
    server.ok("volume_resize", json!({"name": "v1", "size": 96 * MIB}));
    let output = guest.wait_end(GUEST_DEADLINE);
    let results = output.results();
    let text = output.text();

    assert!(
        results.contains(&"foreign refused"),
        "another host's subsystem let the guest in:\n{text}"
    );
    let namespaces: Vec<&str> = results
        .iter()
        .copied()
        .filter(|l| l.starts_with("ns "))
        .collect();
    let sectors = |bytes: u64| bytes / 512;
    let expect = [
        format!("ns 1 {} 4096 {}", sectors(64 * MIB), volume_uuid(&v1)),
        format!("ns 2 {} 4096 {}", sectors(32 * MIB), volume_uuid(&v2)),
    ];
    assert_eq!(
        namespaces,
        expect.iter().map(String::as_str).collect::<Vec<_>>(),
        "{text}"
    );
    assert!(
        results.contains(&"data ok"),
        "the data read back differs:\n{text}"
    );
    let resized = format!("resized {}", sectors(96 * MIB));
    assert!(
        results.contains(&resized.as_str()),
        "the guest did not see the volume grow:\n{text}"
    );
    assert!(results.contains(&"disconnected"), "{text}");
    assert_eq!(output.exit_status, Some(0), "{text}");

    // The bytes are on the volume: NBD reads them back.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("v1.img");
    let status = std::process::Command::new("nbdcopy")
        .arg(server.url("v1"))
        .arg(&copy)
        .status()
        .expect("run nbdcopy");
    assert!(status.success(), "nbdcopy failed");
    let image = std::fs::read(&copy).expect("read the copy");
    let at = 256 * 4096;
    assert!(
        image[at..at + (1 << 20)] == pattern(1 << 20)[..],
        "the volume does not hold what the guest wrote"
    );

    // Disconnected: the server keeps no queue of the guest's.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let qpairs = server.ok("nvmf_get_qpairs", json!({}));
        if qpairs.as_array().is_some_and(|q| q.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queues left after the disconnect: {qpairs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
