//! `sds perf`: the real binary drives a null and a RAM volume in-process through the reactors,
//! the domain layer and the LUN driver; its JSON report must show I/O done, and the I/Os the
//! jobs completed must be what the volume and the virtual path counted on their own. With
//! `--verify`, data written must read back. Bad options must fail with a message that names
//! them.

mod common;

use common::{qemu_io, require_tool, sds_binary, Server};
use serde_json::{json, Value};
use std::process::{Command, Output};

/// Runs `sds perf ARGS --json` on the machine's last core (the default): one second measured
/// after a short ramp, on a volume small enough for a test, unless ARGS say otherwise.
fn perf(args: &[&str]) -> (Output, Option<Value>) {
    let mut command = Command::new(sds_binary());
    command.args(["perf", "--json"]).args(args);
    for (option, value) in [("--time", "1"), ("--ramp", "0.2"), ("--volume-size", "64M")] {
        if !args.contains(&option) {
            command.args([option, value]);
        }
    }
    let output = command.output().expect("run sds perf");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&stdout).ok();
    (output, report)
}

fn ok(args: &[&str]) -> Value {
    let (output, report) = perf(args);
    assert!(
        output.status.success(),
        "sds perf {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    report.unwrap_or_else(|| {
        panic!(
            "sds perf {args:?}: stdout is not JSON: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn u64_of(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing in {report}"))
}

fn f64_of(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing in {report}"))
}

/// The checks every run must pass: I/O measured, and the jobs' count of completed I/Os equal
/// to the volume's and (with the domain layer) the VP's own counters.
fn check_counts(report: &Value, domain: bool) {
    assert!(f64_of(report, "/iops") > 0.0, "{report}");
    let measured = u64_of(report, "/ios");
    let completed = u64_of(report, "/counters/completed_ios");
    assert!(
        measured > 0 && measured <= completed,
        "measured {measured} of {completed} completed"
    );
    assert_eq!(
        u64_of(report, "/counters/volume_ios"),
        completed,
        "{report}"
    );
    if domain {
        assert_eq!(u64_of(report, "/counters/vpath_ios"), completed, "{report}");
    } else {
        assert!(report
            .pointer("/counters/vpath_ios")
            .is_some_and(Value::is_null));
    }
    assert_eq!(report.pointer("/counters/match"), Some(&Value::Bool(true)));
    assert_eq!(u64_of(report, "/failed_ios"), 0);
    let p50 = f64_of(report, "/latency_us/p50");
    let p99 = f64_of(report, "/latency_us/p99");
    assert!(p50 > 0.0 && p99 >= p50, "p50 {p50} p99 {p99}");
    assert!(f64_of(report, "/iops_per_core") > 0.0, "{report}");
    // Busy polling: the reactor's CPU time is about its wall time.
    let cores = f64_of(report, "/cores_used");
    assert!((0.05..=1.1).contains(&cores), "cores used {cores}");
}

#[test]
fn null_lun_through_the_full_stack_and_bypassing_the_domain_layer() {
    let full = ok(&["--lun", "null"]);
    check_counts(&full, true);
    assert_eq!(full["config"]["rw"], "randread");
    assert_eq!(u64_of(&full, "/config/qd"), 32);
    let bypassed = ok(&[
        "--lun",
        "null",
        "--no-domain",
        "--rw",
        "randwrite",
        "--qd",
        "8",
    ]);
    check_counts(&bypassed, false);
    assert_eq!(
        u64_of(&bypassed, "/ios"),
        u64_of(&bypassed, "/jobs/0/ios"),
        "one job"
    );
    assert!(f64_of(&bypassed, "/write_iops") > 0.0);
    assert_eq!(f64_of(&bypassed, "/read_iops"), 0.0);
}

#[test]
fn mem_lun_mixed_with_two_jobs_and_a_thin_volume() {
    let report = ok(&[
        "--lun",
        "mem",
        "--rw",
        "randrw",
        "--rwmixread",
        "70",
        "--jobs",
        "2",
        "--bs",
        "8k",
        "--thin",
    ]);
    check_counts(&report, true);
    let reads = f64_of(&report, "/read_iops");
    let writes = f64_of(&report, "/write_iops");
    let share = reads / (reads + writes);
    assert!((0.6..0.8).contains(&share), "read share {share}");
    assert_eq!(report["jobs"].as_array().map(Vec::len), Some(2));
}

#[test]
fn verify_reads_back_what_was_written() {
    // Random writes, then every block read back and compared.
    let written = ok(&["--lun", "mem", "--rw", "randwrite", "--verify"]);
    check_counts(&written, true);
    let checked = u64_of(&written, "/verify/checked_ios");
    assert_eq!(
        checked,
        64 << 20 >> 12,
        "the whole volume read back: {written}"
    );
    assert_eq!(u64_of(&written, "/verify/errors"), 0);
    // The volume filled with the pattern, then read sequentially and checked.
    let read = ok(&["--lun", "mem", "--rw", "read", "--verify", "--bs", "64k"]);
    check_counts(&read, true);
    assert!(u64_of(&read, "/verify/checked_ios") > 0);
    assert_eq!(u64_of(&read, "/verify/errors"), 0);
    // Both at once, checked as they go, on a thin volume (first writes are provisioned).
    let mixed = ok(&[
        "--lun", "mem", "--rw", "randrw", "--verify", "--thin", "--qd", "16",
    ]);
    check_counts(&mixed, true);
    assert!(u64_of(&mixed, "/verify/checked_ios") > 0);
    assert_eq!(u64_of(&mixed, "/verify/errors"), 0);
}

/// A 512-byte volume on a 4096-byte LUN: every write is a read-modify-write on the
/// provisioning thread and every read narrower than a LUN block goes through its bounce
/// buffer, as for a host's requests. Written data must read back, neighbours in one LUN block
/// must not lose each other (random writes at 512-byte units do that all the time), and the
/// counters must agree. Before the block engine, `sds perf` had no such path (no
/// `--volume-block-size`).
#[test]
fn read_modify_write_volume_verifies() {
    let args = [
        "--block-size",
        "4096",
        "--volume-block-size",
        "512",
        "--bs",
        "512",
        "--verify",
        "--qd",
        "8",
        "--volume-size",
        "2M",
        "--time",
        "0.5",
    ];
    for rw in ["randwrite", "randrw"] {
        let mut run_args = args.to_vec();
        run_args.extend(["--rw", rw]);
        let report = ok(&run_args);
        check_counts(&report, true);
        assert_eq!(
            u64_of(&report, "/config/volume_block_size"),
            512,
            "{report}"
        );
        assert_eq!(u64_of(&report, "/config/block_size"), 4096, "{report}");
        assert!(u64_of(&report, "/verify/checked_ios") > 0, "{report}");
        assert_eq!(u64_of(&report, "/verify/errors"), 0, "{report}");
        assert_eq!(u64_of(&report, "/failed_ios"), 0, "{report}");
    }
    // The volume's blocks cannot be larger than the LUN's.
    let (output, _) = perf(&["--block-size", "512", "--volume-block-size", "4096"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--volume-block-size"));
}

#[test]
fn file_lun_through_io_uring() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("perf.img");
    let path_text = path.to_str().expect("utf-8 path");
    let report = ok(&[
        "--lun",
        "file",
        "--lun-path",
        path_text,
        "--rw",
        "randrw",
        "--verify",
        "--qd",
        "8",
        "--volume-size",
        "16M",
    ]);
    check_counts(&report, true);
    assert_eq!(u64_of(&report, "/verify/errors"), 0);
    assert!(path.exists(), "a file the user named is kept");
}

#[test]
fn bad_options_fail_with_a_clear_message() {
    for (args, expected) in [
        (&["--qd", "0"][..], "--qd: 0 is not a queue depth"),
        (
            &["--bs", "1000"][..],
            "--bs: 1000 is not a multiple of the block size 4096",
        ),
        (
            &["--rw", "sideways"][..],
            "invalid value 'sideways' for '--rw <RW>'",
        ),
        (
            &["--lun", "null", "--verify"][..],
            "--verify: a null LUN stores nothing",
        ),
        (&["--time", "0"][..], "--time: 0 is not a number of seconds"),
    ] {
        let (output, report) = perf(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must fail");
        assert!(report.is_none(), "{args:?}: no report");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn help_explains_every_option() {
    let output = Command::new(sds_binary())
        .args(["perf", "--help"])
        .output()
        .expect("run sds perf --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--lun ",
        "--lun-size",
        "--lun-path",
        "--block-size",
        "--volume-block-size",
        "--volume-size",
        "--extent-size",
        "--thin",
        "--rw",
        "--rwmixread",
        "--bs",
        "--qd",
        "--jobs",
        "--cores",
        "--poll",
        "--time",
        "--ramp",
        "--no-domain",
        "--verify",
        "--log-level",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}

#[test]
fn human_report_has_the_table() {
    let output = Command::new(sds_binary())
        .args([
            "perf",
            "--time",
            "0.3",
            "--ramp",
            "0",
            "--volume-size",
            "16M",
        ])
        .output()
        .expect("run sds perf");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "IOPS",
        "P99 us",
        "total",
        "IOPS per core",
        "CLOCK_THREAD_CPUTIME_ID",
        "match",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}

#[test]
fn a_running_server_pools_a_null_lun() {
    require_tool("qemu-io");
    let mut server = Server::start();
    let size = 1u64 << 30;
    for (params, bad) in [
        (json!({"name": "n", "kind": "null"}), "size:"),
        (
            json!({"name": "n", "kind": "null", "size": size, "path": "/tmp/x"}),
            "path:",
        ),
        (json!({"name": "n", "kind": "tape", "size": size}), "kind:"),
    ] {
        let (code, message) = server.call("lun_create", params).expect_err("refused");
        assert_eq!(code, -32602);
        assert!(message.starts_with(bad), "{message}");
    }
    let lun = server.ok(
        "lun_create",
        json!({"name": "n", "kind": "null", "size": size, "block_size": 4096}),
    );
    assert_eq!(lun["kind"], "null");
    assert_eq!(lun["persistent"], false);
    server.ok("pool_create", json!({"name": "p", "luns": ["n"]}));
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 256u64 << 20}),
    );
    let url = server.url("v");
    let (ok, output) = qemu_io(&url, &["write -P 0x5a 0 1M".into(), "read 0 1M".into()]);
    assert!(ok, "{output}");
    // Not persistent: after a restart the pool is formatted anew and the volume serves again.
    assert!(server.stop(), "clean stop");
    server.spawn();
    let luns = server.ok("lun_get_luns", json!({"name": "n"}));
    assert_eq!(luns[0]["state"], "online", "{luns}");
    let (ok, output) = qemu_io(
        &server.url("v"),
        &["write 0 64k".into(), "read 0 64k".into()],
    );
    assert!(ok, "{output}");
}
