//! `sds perf --target nvme-tcp://…` against sds's own NVMe/TCP target: the initiator (built on
//! the shared codec only, and checked against Linux's nvmet in tests/nvmf_guest.rs) drives a
//! host's subsystem over several I/O queues with every unit read back; the virtual path's own
//! counters must have seen exactly the I/Os the jobs completed. A host that is not the
//! subsystem's owner is refused with the status named.

mod common;

use common::{sds_binary, sds_perf_json, Server};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const HOSTNQN: &str = "nqn.2026-11.org.sds:perf-host";
const STRANGER: &str = "nqn.2026-11.org.sds:stranger";

/// A server with host `perf` (nqn HOSTNQN), a VP at LUN 0 (NSID 1) to a 32 MiB RAM volume of
/// 4096-byte blocks and one at LUN 1 (NSID 2) to an 8 MiB volume of 512-byte blocks; the first
/// VP's id and the host's subsystem NQN.
fn served() -> (Server, u64, String) {
    let server = Server::start();
    server.ram_pool("p", 64 * MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 32 * MIB}),
    );
    server.ok(
        "volume_create",
        json!({"name": "small", "pool": "p", "size": 8 * MIB, "block_size": 512}),
    );
    server.ok("host_create", json!({"name": "perf", "nqn": HOSTNQN}));
    server.ok(
        "vpath_create",
        json!({"host": "perf", "volume": "small", "lun": 1}),
    );
    let id = server.ok(
        "vpath_create",
        json!({"host": "perf", "volume": "v", "lun": 0}),
    )["id"]
        .as_u64()
        .expect("a path id");
    let subnqn = server.nvmf_subnqn("perf");
    (server, id, subnqn)
}

fn vp_ops(server: &Server, id: u64) -> u64 {
    let stats = server.ok("vpath_get_stats", json!({"id": id}));
    let total = &stats["vpaths"][0]["total"];
    ["read", "write"]
        .iter()
        .map(|op| total["ops"][op].as_u64().unwrap_or(0))
        .sum::<u64>()
        + total["errors"].as_u64().unwrap_or(0)
}

#[test]
fn perf_drives_sds_target_and_the_vp_counts_every_io() {
    let (server, id, subnqn) = served();
    let url = format!("nvme-tcp://127.0.0.1:{}/{subnqn}", server.nvmf_port());
    let runs: [&[&str]; 3] = [
        // In-capsule writes and reads over two queues.
        &["--rw", "randrw", "--bs", "4k", "--qd", "8", "--queues", "2"],
        // Writes past the in-capsule size (R2T, H2CData) and reads, with both digests.
        &[
            "--rw", "randrw", "--bs", "64k", "--qd", "4", "--digest", "both",
        ],
        // 512-byte I/Os on the second namespace, of 512-byte blocks.
        &["--rw", "randrw", "--bs", "512", "--qd", "8", "--nsid", "2"],
    ];
    let mut completed = 0;
    let mut completed_nsid1 = 0;
    for workload in runs {
        let mut args = vec!["--target", &url, "--hostnqn", HOSTNQN, "--verify"];
        args.extend_from_slice(workload);
        args.extend_from_slice(&["--volume-size", "16M", "--time", "1", "--ramp", "0.1"]);
        let (ok, report, text) = sds_perf_json(&args);
        assert!(
            ok,
            "sds perf {args:?} failed:\n{text}\nserver log:\n{}",
            server.log()
        );
        let report = report.unwrap_or_else(|| panic!("no JSON report:\n{text}"));
        assert!(report["ios"].as_u64().unwrap_or(0) > 0, "{report}");
        assert_eq!(report["failed_ios"], 0, "{report}");
        assert_eq!(report["verify"]["errors"], 0, "{report}");
        assert!(
            report["verify"]["checked_ios"].as_u64().unwrap_or(0) > 0,
            "{report}"
        );
        let ios = report["completed_ios"].as_u64().expect("completed_ios");
        completed += ios;
        if report["config"]["nsid"] == 1 {
            completed_nsid1 += ios;
            assert_eq!(report["config"]["block_size"], 4096, "{report}");
        } else {
            assert_eq!(report["config"]["block_size"], 512, "{report}");
        }
    }
    // The reactors publish their counters each cycle: wait until the VP shows them all.
    let deadline = Instant::now() + Duration::from_secs(20);
    assert!(
        completed > completed_nsid1,
        "the second namespace saw no I/O"
    );
    // The first VP counts the I/Os of namespace 1 only.
    let completed = completed_nsid1;
    while vp_ops(&server, id) < completed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        vp_ops(&server, id),
        completed,
        "the VP counted other I/Os than the jobs completed"
    );

    let (ok, _, text) = sds_perf_json(&["--target", &url, "--hostnqn", STRANGER, "--time", "1"]);
    assert!(!ok, "a stranger was let in:\n{text}");
    assert!(
        text.contains(&format!("refused Connect to {subnqn} as {STRANGER}"))
            && text.contains("may not connect"),
        "the refusal does not say who was refused and why:\n{text}"
    );
}

/// The target ends the queues mid-run (`vpath_delete` cuts the host's controller): every job
/// stops with the reason and sds perf fails saying so, without hanging.
#[test]
fn perf_fails_clearly_when_the_target_cuts_the_queues() {
    let (server, id, subnqn) = served();
    let url = format!("nvme-tcp://127.0.0.1:{}/{subnqn}", server.nvmf_port());
    let child = Command::new("timeout")
        .args([
            "120",
            sds_binary(),
            "perf",
            "--poll",
            "adaptive",
            "--target",
            &url,
        ])
        .args(["--hostnqn", HOSTNQN, "--queues", "2", "--qd", "4"])
        .args(["--volume-size", "16M", "--time", "30", "--ramp", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sds perf");
    // Wait until both I/O queues are connected, then delete the path.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let qpairs = server.ok("nvmf_get_qpairs", json!({"nqn": subnqn}));
        let io_queues = qpairs
            .as_array()
            .and_then(|controllers| controllers.first())
            .and_then(|controller| controller["io_queues"].as_u64())
            .unwrap_or(0);
        if io_queues >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the I/O queues never showed: {qpairs}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    server.ok("vpath_delete", json!({"id": id}));
    let started = Instant::now();
    let output = child.wait_with_output().expect("sds perf ends");
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "sds perf did not fail:\n{text}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "sds perf took {:?} to notice:\n{text}",
        started.elapsed()
    );
    assert!(
        text.contains("stopped: the target closed the connection")
            || text.contains("stopped: receive failed"),
        "the error does not say the target ended the queue:\n{text}"
    );
}
