//! The Linux kernel's own NVMe/TCP initiator and target, in a QEMU guest (tests/common/guest.rs,
//! built by scripts/build-nvme-guest.sh): the peers sds is checked against.

mod common;

use common::guest::{
    nvmet_target_script, run_guest, Guest, GuestOptions, GUEST_DEADLINE, GUEST_NVMET_PORT,
};
use common::{free_port, sds_perf_json};

/// The subsystem Linux's target serves in the guest, and the host NQN sds perf connects as.
const GUEST_SUBNQN: &str = "nqn.2026-11.org.sds:guest-target";
const PERF_HOSTNQN: &str = "nqn.2026-11.org.sds:perf-initiator";

/// Boots the guest as Linux's NVMe/TCP target with a `size_mib` namespace, reachable from here
/// on the returned port; waits until it is configured.
fn guest_target(size_mib: u32) -> (Guest, u16) {
    let port = free_port();
    let guest = Guest::boot(
        &nvmet_target_script(GUEST_SUBNQN, size_mib, None),
        GuestOptions::default().forward(port, GUEST_NVMET_PORT),
    );
    let ready = guest.wait_for_line("SDS-GUEST: target ready", GUEST_DEADLINE);
    assert!(ready.is_some(), "{}", guest.lines().join("\n"));
    (guest, port)
}

/// The rig itself: the guest boots, loads nvme-tcp and nvmet-tcp, and has what the other tests
/// rely on: the fabrics control device (the kernel initiator's connect), nvmet's configfs tree
/// (the kernel target's configuration) and the user-mode network.
#[test]
fn guest_has_the_kernel_initiator_and_target() {
    let output = run_guest(
        r#"
[ -c /dev/nvme-fabrics ] && echo "SDS-GUEST: fabrics"
[ -d /sys/kernel/config/nvmet/subsystems ] && echo "SDS-GUEST: nvmet"
[ -d /sys/module/nvme_tcp ] && echo "SDS-GUEST: nvme_tcp"
[ -d /sys/module/nvmet_tcp ] && echo "SDS-GUEST: nvmet_tcp"
[ -d /sys/module/nbd ] && [ -b /dev/nbd0 ] && echo "SDS-GUEST: nbd"
ip -4 addr show eth0 | grep -q 10.0.2.15 && echo "SDS-GUEST: network"
exit 0
"#,
        GuestOptions::default(),
    );
    let results = output.results();
    for want in [
        "fabrics",
        "nvmet",
        "nvme_tcp",
        "nvmet_tcp",
        "nbd",
        "network",
    ] {
        assert!(
            results.contains(&want),
            "the guest lacks {want}:\n{}",
            output.text()
        );
    }
    assert_eq!(output.exit_status, Some(0), "{}", output.text());
}

/// Linux's target comes up in the guest and is reachable from this machine through the
/// forwarded port: an ICReq sent here gets the kernel's ICResp.
#[test]
fn guest_target_answers_icreq_through_the_forwarded_port() {
    use std::io::{Read, Write};
    let port = common::free_port();
    let guest = Guest::boot(
        &nvmet_target_script("nqn.2026-11.org.sds:guest-target", 16, None),
        GuestOptions::default().forward(port, GUEST_NVMET_PORT),
    );
    let ready = guest.wait_for_line("SDS-GUEST: target ready", GUEST_DEADLINE);
    assert!(ready.is_some(), "{}", guest.lines().join("\n"));
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("timeout");
    // ICReq: type 0, hlen 128, plen 128, PFV 0, HPDA 0, no digests, MAXR2T 0.
    let mut icreq = [0u8; 128];
    icreq[2] = 128;
    icreq[4..8].copy_from_slice(&128u32.to_le_bytes());
    stream.write_all(&icreq).expect("send ICReq");
    let mut icresp = [0u8; 128];
    stream.read_exact(&mut icresp).expect("ICResp");
    assert_eq!(icresp[0], 0x01, "ICResp type: {icresp:?}");
    assert_eq!(icresp[2], 128, "ICResp hlen");
}

/// sds perf's NVMe/TCP initiator against Linux's target: two I/O queues of mixed 4 KiB reads
/// and writes (the writes' data in the capsule), then 64 KiB writes (too large for the
/// capsule: the target asks for the data with R2T and gets H2CData) with data digests, then
/// mixed 16 KiB reads and writes with header and data digests (CRC32C both ways, checked by
/// Linux on what we send and by us on what it sends), each with every unit read back and
/// compared with what was written. A wrong subsystem NQN is refused with the
/// target's Connect status, named.
#[test]
fn perf_initiator_verifies_against_linux_nvmet() {
    let (_guest, port) = guest_target(16);
    let url = format!("nvme-tcp://127.0.0.1:{port}/{GUEST_SUBNQN}");
    let runs: [&[&str]; 3] = [
        &["--rw", "randrw", "--bs", "4k", "--qd", "8", "--queues", "2"],
        &[
            "--rw",
            "randwrite",
            "--bs",
            "64k",
            "--qd",
            "4",
            "--digest",
            "data",
        ],
        &[
            "--rw", "randrw", "--bs", "16k", "--qd", "4", "--digest", "both",
        ],
    ];
    for workload in runs {
        let mut args = vec!["--target", &url, "--hostnqn", PERF_HOSTNQN, "--verify"];
        args.extend_from_slice(workload);
        args.extend_from_slice(&["--volume-size", "8M", "--time", "2", "--ramp", "0.2"]);
        let (ok, report, text) = sds_perf_json(&args);
        assert!(ok, "sds perf {args:?} failed:\n{text}");
        let report = report.unwrap_or_else(|| panic!("no JSON report:\n{text}"));
        assert!(
            report["ios"].as_u64().unwrap_or(0) > 0,
            "no I/O measured: {report}"
        );
        assert_eq!(report["failed_ios"], 0, "{report}");
        let verify = &report["verify"];
        assert_eq!(verify["errors"], 0, "{report}");
        assert!(
            verify["checked_ios"].as_u64().unwrap_or(0) > 0,
            "nothing was read back and compared: {report}"
        );
        assert_eq!(report["config"]["target"], url.as_str());
        let digest = match workload.iter().position(|a| *a == "--digest") {
            Some(at) => workload[at + 1],
            None => "none",
        };
        let expected = match digest {
            "data" => "data",
            "both" => "header and data",
            _ => "no",
        };
        assert_eq!(report["config"]["digest"], expected, "{report}");
    }

    let wrong = format!("nvme-tcp://127.0.0.1:{port}/nqn.2026-11.org.sds:no-such-subsystem");
    let (ok, _, text) =
        sds_perf_json(&["--target", &wrong, "--hostnqn", PERF_HOSTNQN, "--time", "1"]);
    assert!(
        !ok,
        "a subsystem the target does not have was accepted:\n{text}"
    );
    assert!(
        text.contains("refused Connect to nqn.2026-11.org.sds:no-such-subsystem"),
        "the error does not say the target refused the Connect:\n{text}"
    );
}

/// The kernel initiator in the rig, against Linux's own target in the same guest: the connect
/// string written to /dev/nvme-fabrics makes /dev/nvme0n1, a pattern written with dd reads
/// back the same, and the controller goes away on delete_controller. (The tests of sds's
/// target use the same steps through `fabrics_connect_line` with `HOST_FROM_GUEST`.)
#[test]
fn kernel_initiator_reads_back_through_linux_nvmet_in_the_guest() {
    let target = nvmet_target_script(GUEST_SUBNQN, 8, None);
    // The target script ends waiting forever: take its set-up, then use it.
    let setup = target
        .split("while true")
        .next()
        .expect("the target script has a set-up part");
    let connect = common::guest::fabrics_connect_line(
        "127.0.0.1",
        GUEST_NVMET_PORT,
        GUEST_SUBNQN,
        PERF_HOSTNQN,
    );
    let script = format!(
        r#"{setup}
{connect}
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/nvme0n1 ] && break; sleep 1; done
[ -b /dev/nvme0n1 ] && echo "SDS-GUEST: namespace $(cat /sys/block/nvme0n1/size) sectors"
cat /sys/class/nvme/nvme0/subsysnqn | sed 's/^/SDS-GUEST: subsysnqn /'
i=0; while [ $i -lt 256 ]; do echo "block $i of the pattern"; i=$((i+1)); done > /tmp/pattern
dd if=/tmp/pattern of=/dev/nvme0n1 bs=4096 seek=3 oflag=direct conv=fsync 2>/dev/null
size=$(wc -c < /tmp/pattern)
dd if=/dev/nvme0n1 bs=4096 skip=3 count=2 iflag=direct 2>/dev/null | head -c $size > /tmp/back
cmp /tmp/pattern /tmp/back && echo "SDS-GUEST: read back equal"
echo 1 > /sys/class/nvme/nvme0/delete_controller
[ -e /dev/nvme0n1 ] || echo "SDS-GUEST: disconnected"
exit 0
"#
    );
    let output = run_guest(&script, GuestOptions::default());
    let results = output.results();
    // 8 MiB in 512-byte sectors, as the block layer counts them.
    for want in [
        "namespace 16384 sectors",
        &format!("subsysnqn {GUEST_SUBNQN}") as &str,
        "read back equal",
        "disconnected",
    ] {
        assert!(
            results.contains(&want),
            "missing {want:?}:\n{}",
            output.text()
        );
    }
}
