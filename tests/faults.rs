//! LUN faults: a fault LUN (`kind: "fault"`) under a pool fails or delays I/O on command, and
//! real clients (qemu-io, fio) see NBD's EIO while a volume of another pool on the same server
//! keeps serving the right data; error counters show in `lun_get_luns` and `bdev_get_iostat`;
//! `lun_clear_fault` restores service. Faults hit both the reactor path (I/O to a mapped
//! extent) and the provisioning thread's synchronous path (the first write to an extent).
//! A LUN whose file is gone at start-up is failed, with its pool and volumes, and the rest of
//! the server serves.

mod common;
use common::*;
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// A server with a fault pool (file LUN `base` under fault LUN `fl`, pool `fp`, volume `v`) and
/// a healthy pool of file LUNs (`good`, volume `g`).
fn server_with_fault_pool() -> Server {
    let server = Server::start();
    server.ok(
        "lun_create",
        json!({"name": "base", "kind": "file", "size": 32 * MIB, "block_size": 4096}),
    );
    let fault = server.ok(
        "lun_create",
        json!({"name": "fl", "kind": "fault", "base": "base"}),
    );
    assert_eq!(fault["kind"], "fault");
    assert_eq!(fault["base"], "base");
    assert_eq!(fault["size"], 32 * MIB);
    assert_eq!(fault["block_size"], 4096);
    server.ok(
        "pool_create",
        json!({"name": "fp", "luns": ["fl"], "extent_size": MIB}),
    );
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "fp", "size": 16 * MIB}),
    );
    server.file_pool("good", MIB);
    server.ok(
        "volume_create",
        json!({"name": "g", "pool": "good", "size": 16 * MIB}),
    );
    server
}

fn lun(server: &Server, name: &str) -> Value {
    server.ok("lun_get_luns", json!({"name": name}))[0].clone()
}

fn iostat(server: &Server, name: &str) -> Value {
    let stats = server.ok("bdev_get_iostat", json!({"name": name}));
    stats["bdevs"][0].clone()
}

fn count(value: &Value, path: &[&str]) -> u64 {
    let mut at = value;
    for key in path {
        at = &at[*key];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("no count at {path:?} in {value}"))
}

fn io(url: &str, commands: &[&str]) -> (bool, String) {
    let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    qemu_io(url, &commands)
}

/// Runs one qemu-io command that must fail with an I/O error.
fn expect_eio(url: &str, command: &str) {
    let (clean, text) = io(url, &[command]);
    assert!(
        !clean && text.contains("Input/output error"),
        "{command} did not fail with EIO:\n{text}"
    );
}

/// The healthy volume still writes and reads its own data.
fn second_volume_serves(server: &Server, pattern: u8) {
    let offset = u64::from(pattern) * 64 * KIB;
    write_and_verify(
        &server.url("g"),
        &[
            (pattern, offset, 64 * KIB),
            (pattern, 9 * MIB + offset, 4096),
        ],
    );
}

#[test]
fn injected_read_write_and_flush_failures_reach_the_host_as_eio() {
    let server = server_with_fault_pool();
    let url = server.url("v");
    // Map extents 0 and 2 (through the provisioning thread) before any fault.
    write_and_verify(&url, &[(0x11, 0, 64 * KIB), (0x12, 2 * MIB, 64 * KIB)]);

    // Reads fail, every one, until cleared; the other pool's volume does not notice.
    let injected = server.ok(
        "lun_inject_fault",
        json!({"name": "fl", "io_type": "read", "mode": "fail"}),
    );
    assert_eq!(injected["fault"]["mode"], "fail");
    assert_eq!(injected["fault"]["io_type"], "read");
    expect_eio(&url, "read -P 0x11 0 4k");
    expect_eio(&url, "read -P 0x12 2M 64k");
    second_volume_serves(&server, 1);
    let fl = lun(&server, "fl");
    assert_eq!(fl["state"], "online", "{fl}");
    assert!(count(&fl, &["errors", "read"]) >= 2, "{fl}");
    assert!(count(&fl, &["injected", "failed", "read"]) >= 2, "{fl}");
    assert_eq!(count(&fl, &["errors", "write"]), 0, "{fl}");
    // Injected errors are the fault LUN's, not its base's.
    assert_eq!(count(&lun(&server, "base"), &["errors", "read"]), 0);
    let stat = iostat(&server, "fl");
    assert_eq!(stat["product_name"], "sds LUN", "{stat}");
    assert!(count(&stat, &["io_error", "read"]) >= 2, "{stat}");
    assert!(count(&stat, &["num_errors"]) >= 2, "{stat}");
    assert!(count(&iostat(&server, "v"), &["io_error", "read"]) >= 2);
    assert_eq!(count(&iostat(&server, "g"), &["num_errors"]), 0);

    // A write fault replaces the read fault: the next write (to a mapped extent, the reactor
    // path) fails, the one after succeeds.
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl", "io_type": "write", "mode": "fail", "count": 1}),
    );
    verify(&url, &[(0x11, 0, 64 * KIB)]);
    expect_eio(&url, "write -P 0x13 0 4k");
    let (clean, text) = io(&url, &["write -P 0x14 0 4k"]);
    assert!(clean, "the count was spent, yet the write failed:\n{text}");
    verify(&url, &[(0x14, 0, 4096), (0x11, 4096, 60 * KIB)]);
    let fl = lun(&server, "fl");
    assert_eq!(fl["fault"]["remaining"], 0, "{fl}");
    assert_eq!(count(&fl, &["injected", "failed", "write"]), 1, "{fl}");
    assert!(count(&iostat(&server, "v"), &["io_error", "write"]) >= 1);
    second_volume_serves(&server, 2);

    // Flushes fail.
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl", "io_type": "flush", "mode": "fail"}),
    );
    // qemu-io prints nothing for a failed flush; its exit status says it.
    let (clean, text) = io(&url, &["write -P 0x15 8k 4k", "flush"]);
    assert!(!clean && text.contains("wrote 4096/4096"), "{text}");
    assert!(count(&lun(&server, "fl"), &["errors", "flush"]) >= 1);
    assert!(count(&iostat(&server, "v"), &["io_error", "flush"]) >= 1);
    let (clean, text) = io(&server.url("g"), &["write -P 0x16 0 4k", "flush"]);
    assert!(clean, "the healthy volume's flush failed:\n{text}");

    // Cleared: everything works again and the data is what was acknowledged.
    let cleared = server.ok("lun_clear_fault", json!({"name": "fl"}));
    assert!(cleared["fault"].is_null(), "{cleared}");
    let (clean, text) = io(
        &url,
        &["write -P 0x17 12k 4k", "flush", "read -P 0x17 12k 4k"],
    );
    assert!(clean, "{text}");
    verify(
        &url,
        &[
            (0x14, 0, 4096),
            (0x11, 4096, 4096),
            (0x15, 8 * KIB, 4096),
            (0x17, 12 * KIB, 4096),
            (0x12, 2 * MIB, 64 * KIB),
        ],
    );
    second_volume_serves(&server, 3);
    verify(&server.url("g"), &[(0x16, 0, 4096)]);
}

#[test]
fn a_write_fault_on_a_first_write_fails_its_provisioning() {
    let server = server_with_fault_pool();
    let url = server.url("v");
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl", "io_type": "write", "mode": "fail"}),
    );
    // Extent 5 was never written: the provisioning thread zeroes it and records it with
    // synchronous writes, which fail.
    expect_eio(&url, "write -P 0x21 5M 4k");
    let volume = &server.ok("volume_get_volumes", json!({"name": "v"}))[0];
    assert_eq!(volume["allocated_extents"], 0, "{volume}");
    let fl = lun(&server, "fl");
    assert!(count(&fl, &["errors", "write"]) >= 1, "{fl}");
    assert!(count(&fl, &["injected", "failed", "write"]) >= 1, "{fl}");
    assert!(count(&iostat(&server, "v"), &["io_error", "write"]) >= 1);
    // Reads of the unmapped extent still work (they never reach the LUN).
    verify(&url, &[(0, 5 * MIB, 4096)]);
    second_volume_serves(&server, 4);

    server.ok("lun_clear_fault", json!({"name": "fl"}));
    write_and_verify(&url, &[(0x22, 5 * MIB, 4096)]);
    verify(&url, &[(0, 5 * MIB + 4096, MIB - 4096)]);
    second_volume_serves(&server, 5);
}

#[test]
fn fail_after_lets_count_writes_through_then_fails_every_one() {
    let server = server_with_fault_pool();
    let url = server.url("v");
    write_and_verify(&url, &[(0x31, 0, 4096)]);
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl", "io_type": "write", "mode": "fail_after", "count": 2}),
    );
    // Reads are not faulted.
    verify(&url, &[(0x31, 0, 4096)]);
    for (pattern, offset) in [(0x32, "4k"), (0x33, "8k")] {
        let (clean, text) = io(&url, &[&format!("write -P {pattern} {offset} 4k")]);
        assert!(
            clean,
            "write {pattern:#x} should have gone through:\n{text}"
        );
    }
    expect_eio(&url, "write -P 0x34 12k 4k");
    expect_eio(&url, "write -P 0x35 16k 4k");
    // A first write (synchronous path) fails too.
    expect_eio(&url, "write -P 0x36 3M 4k");
    second_volume_serves(&server, 6);
    let fl = lun(&server, "fl");
    assert_eq!(fl["fault"]["mode"], "fail_after", "{fl}");
    assert_eq!(fl["fault"]["remaining"], 0, "{fl}");
    assert!(count(&fl, &["injected", "failed", "write"]) >= 3, "{fl}");
    assert!(count(&iostat(&server, "fl"), &["io_error", "write"]) >= 3);

    server.ok("lun_clear_fault", json!({"name": "fl"}));
    verify(
        &url,
        &[
            (0x31, 0, 4096),
            (0x32, 4 * KIB, 4096),
            (0x33, 8 * KIB, 4096),
            (0, 12 * KIB, 8192),
            (0, 3 * MIB, 4096),
        ],
    );
    write_and_verify(&url, &[(0x37, 12 * KIB, 4096), (0x38, 3 * MIB, 4096)]);
}

#[test]
fn delayed_io_completes_with_the_right_data() {
    let server = server_with_fault_pool();
    let url = server.url("v");
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl", "io_type": "all", "mode": "delay", "delay_us": 20_000}),
    );
    // First writes (provisioning, synchronous) and later I/O (reactor) are delayed, not failed.
    write_and_verify(&url, &[(0x41, 0, 64 * KIB), (0x42, 3 * MIB - 4096, 8192)]);
    let (clean, text) = io(&url, &["write -P 0x43 64k 4k", "flush"]);
    assert!(clean, "{text}");
    // fio verifies through the delay while qemu-io keeps the other volume busy.
    let other = {
        let url = server.url("g");
        std::thread::spawn(move || {
            for pattern in 0x50..0x54u8 {
                write_and_verify(&url, &[(pattern, u64::from(pattern) * MIB / 8, 64 * KIB)]);
            }
        })
    };
    let (ok, text) = fio(
        server.dir.path(),
        &[
            "--name=delayed".into(),
            "--ioengine=nbd".into(),
            format!("--uri={url}"),
            "--rw=randwrite".into(),
            "--bs=64k".into(),
            "--iodepth=4".into(),
            "--offset=4M".into(),
            "--size=2M".into(),
            "--verify=crc32c".into(),
            "--do_verify=1".into(),
            "--verify_fatal=1".into(),
        ],
    );
    assert!(ok, "fio through a delay failed:\n{text}");
    other.join().expect("the other volume's client");
    let fl = lun(&server, "fl");
    assert_eq!(fl["fault"]["delay_us"], 20_000, "{fl}");
    assert!(count(&fl, &["injected", "delayed", "read"]) >= 1, "{fl}");
    assert!(count(&fl, &["injected", "delayed", "write"]) >= 1, "{fl}");
    assert!(count(&fl, &["injected", "delayed", "flush"]) >= 1, "{fl}");
    assert_eq!(
        count(&fl, &["errors", "read"]),
        0,
        "a delay is not an error: {fl}"
    );
    assert_eq!(count(&fl, &["errors", "write"]), 0, "{fl}");
    assert_eq!(count(&iostat(&server, "v"), &["num_errors"]), 0);

    // A limited delay runs out; clearing is then a no-op that still answers.
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl", "io_type": "read", "mode": "delay", "delay_us": 1000, "count": 1}),
    );
    verify(&url, &[(0x41, 0, 64 * KIB), (0x43, 64 * KIB, 4096)]);
    assert_eq!(lun(&server, "fl")["fault"]["remaining"], 0);
    server.ok("lun_clear_fault", json!({"name": "fl"}));
    verify(&url, &[(0x42, 3 * MIB - 4096, 8192)]);
}

#[test]
fn fio_sees_eio_while_fio_on_the_other_volume_verifies() {
    let server = server_with_fault_pool();
    let url = server.url("v");
    write_and_verify(&url, &[(0x61, 0, 4 * MIB)]);
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl", "io_type": "read", "mode": "fail", "count": 5}),
    );
    let dir = server.dir.path().to_path_buf();
    let good = server.url("g");
    let verifier = std::thread::spawn(move || {
        fio(
            &dir,
            &[
                "--name=healthy".into(),
                "--ioengine=nbd".into(),
                format!("--uri={good}"),
                "--rw=randwrite".into(),
                "--bs=4k".into(),
                "--bsrange=4k-64k".into(),
                "--iodepth=8".into(),
                "--size=8M".into(),
                "--verify=crc32c".into(),
                "--do_verify=1".into(),
                "--verify_fatal=1".into(),
            ],
        )
    });
    let (ok, text) = fio(
        server.dir.path(),
        &[
            "--name=faulted".into(),
            "--ioengine=nbd".into(),
            format!("--uri={url}"),
            "--rw=read".into(),
            "--bs=64k".into(),
            "--size=4M".into(),
        ],
    );
    assert!(
        !ok && (text.contains("Input/output error") || text.contains("err= 5")),
        "fio did not see EIO:\n{text}"
    );
    let (ok, text) = verifier.join().expect("fio thread");
    assert!(ok, "fio on the healthy volume failed:\n{text}");
    assert_eq!(count(&iostat(&server, "g"), &["num_errors"]), 0);
    assert!(count(&iostat(&server, "fl"), &["io_error", "read"]) >= 1);
    // The count runs out, after which reads work again without clearing.
    for _ in 0..5 {
        let _ = io(&url, &["read -P 0x61 0 64k"]);
    }
    verify(&url, &[(0x61, 0, 4 * MIB)]);
}

#[test]
fn bad_fault_parameters_are_refused_and_change_nothing() {
    let server = Server::start();
    server.ok(
        "lun_create",
        json!({"name": "base", "kind": "file", "size": 16 * MIB}),
    );
    server.ok(
        "lun_create",
        json!({"name": "fl", "kind": "fault", "base": "base"}),
    );
    server.ok(
        "lun_create",
        json!({"name": "pooled", "kind": "mem", "size": 16 * MIB}),
    );
    server.ok("pool_create", json!({"name": "p", "luns": ["pooled"]}));
    let listing = |server: &Server| {
        (
            server.ok("lun_get_luns", json!({})),
            server.ok("pool_get_pools", json!({})),
        )
    };
    let before = listing(&server);
    let cases = [
        ("lun_create", json!({"name": "x", "kind": "fault"}), "base"),
        (
            "lun_create",
            json!({"name": "x", "kind": "fault", "base": "nope"}),
            "base",
        ),
        (
            "lun_create",
            json!({"name": "x", "kind": "fault", "base": "pooled"}),
            "base",
        ),
        (
            "lun_create",
            json!({"name": "x", "kind": "fault", "base": "base"}),
            "base",
        ),
        (
            "lun_create",
            json!({"name": "x", "kind": "fault", "base": "x"}),
            "base",
        ),
        (
            "lun_create",
            json!({"name": "x", "kind": "fault", "base": "fl", "size": 4096}),
            "size",
        ),
        (
            "lun_create",
            json!({"name": "x", "kind": "mem", "size": 4096, "base": "fl"}),
            "base",
        ),
        (
            "lun_create",
            json!({"name": "fl", "kind": "fault", "base": "base"}),
            "name",
        ),
        ("lun_create", json!({"name": "x", "kind": "faulty"}), "kind"),
        (
            "lun_inject_fault",
            json!({"name": "fl", "io_type": "trim", "mode": "fail"}),
            "io_type",
        ),
        (
            "lun_inject_fault",
            json!({"name": "fl", "mode": "fail"}),
            "io_type",
        ),
        (
            "lun_inject_fault",
            json!({"name": "fl", "io_type": "read", "mode": "corrupt"}),
            "mode",
        ),
        (
            "lun_inject_fault",
            json!({"name": "fl", "io_type": "read"}),
            "mode",
        ),
        (
            "lun_inject_fault",
            json!({"name": "fl", "io_type": "read", "mode": "fail_after"}),
            "count",
        ),
        (
            "lun_inject_fault",
            json!({"name": "fl", "io_type": "read", "mode": "fail", "count": 0}),
            "count",
        ),
        (
            "lun_inject_fault",
            json!({"name": "fl", "io_type": "read", "mode": "fail", "count": -1}),
            "count",
        ),
        (
            "lun_inject_fault",
            json!({"name": "fl", "io_type": "all", "mode": "delay"}),
            "delay_us",
        ),
        (
            "lun_inject_fault",
            json!({"name": "fl", "io_type": "all", "mode": "delay", "delay_us": 60_000_000}),
            "delay_us",
        ),
        (
            "lun_inject_fault",
            json!({"name": "fl", "io_type": "all", "mode": "fail", "delay_us": 10}),
            "delay_us",
        ),
        (
            "lun_inject_fault",
            json!({"name": "base", "io_type": "read", "mode": "fail"}),
            "name",
        ),
        (
            "lun_inject_fault",
            json!({"name": "nope", "io_type": "read", "mode": "fail"}),
            "name",
        ),
        (
            "lun_inject_fault",
            json!({"name": "fl", "io_type": "read", "mode": "fail", "colour": "red"}),
            "colour",
        ),
        ("lun_clear_fault", json!({"name": "base"}), "name"),
        ("lun_clear_fault", json!({}), "name"),
        (
            "pool_create",
            json!({"name": "q", "luns": ["base"]}),
            "luns",
        ),
        ("lun_delete", json!({"name": "base"}), "name"),
    ];
    for (method, params, parameter) in cases {
        match server.call(method, params.clone()) {
            Err((code, message)) => {
                assert_eq!(code, -32602, "{method} {params}: {message}");
                assert!(
                    message.starts_with(&format!("{parameter}:")),
                    "{method} {params}: message {message:?} does not name {parameter}"
                );
            }
            Ok(result) => panic!("{method} {params} succeeded: {result}"),
        }
    }
    assert_eq!(listing(&server), before, "a failed call changed something");
    assert!(lun(&server, "fl")["fault"].is_null());

    // The command line: create, inject, list, clear.
    let sds = |args: &[&str]| {
        let output = server.cli(args);
        assert!(
            output.status.success(),
            "sds {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    sds(&["lun", "create", "b2", "--kind", "mem", "--size", "8M"]);
    let table = sds(&["lun", "create", "f2", "--kind", "fault", "--base", "b2"]);
    assert!(table.contains("f2") && table.contains("base b2"), "{table}");
    let table = sds(&[
        "lun",
        "inject-fault",
        "f2",
        "--io-type",
        "write",
        "--mode",
        "fail",
        "--count",
        "3",
    ]);
    assert!(table.contains("fault fail write"), "{table}");
    let listed: Value = serde_json::from_str(&sds(&["--json", "lun", "list"])).expect("json");
    let f2 = listed
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "f2"))
        .expect("f2 listed");
    assert_eq!(f2["fault"]["count"], 3, "{f2}");
    assert!(sds(&["lun", "list"]).contains("STATE"));
    let table = sds(&["lun", "clear-fault", "f2"]);
    assert!(!table.contains("fault fail"), "{table}");
    let output = server.cli(&[
        "lun",
        "inject-fault",
        "f2",
        "--io-type",
        "write",
        "--mode",
        "fail_after",
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("count:"));

    // Deleting the fault LUN frees its base for a pool.
    server.ok("lun_delete", json!({"name": "fl"}));
    server.ok("pool_create", json!({"name": "q", "luns": ["base"]}));
}

#[test]
fn a_fault_lun_comes_back_after_a_restart_without_its_fault() {
    let mut server = server_with_fault_pool();
    let url = server.url("v");
    write_and_verify(&url, &[(0x71, 0, 64 * KIB), (0x72, 7 * MIB, 4096)]);
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl", "io_type": "read", "mode": "fail"}),
    );
    assert!(server.stop(), "the server did not stop cleanly");
    server.spawn();
    let fl = lun(&server, "fl");
    assert_eq!(fl["kind"], "fault", "{fl}");
    assert_eq!(fl["base"], "base", "{fl}");
    assert_eq!(fl["pool"], "fp", "{fl}");
    assert!(fl["fault"].is_null(), "faults are not persisted: {fl}");
    assert_eq!(lun(&server, "base")["wrapped_by"], "fl");
    verify(&url, &[(0x71, 0, 64 * KIB), (0x72, 7 * MIB, 4096)]);
    expect_eio_after_inject(&server, &url);
}

fn expect_eio_after_inject(server: &Server, url: &str) {
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl", "io_type": "read", "mode": "fail", "count": 1}),
    );
    expect_eio(url, "read 0 4k");
    verify(url, &[(0x71, 0, 64 * KIB)]);
}

#[test]
fn a_lun_whose_file_is_gone_fails_with_its_pool_and_the_rest_serves() {
    let mut server = Server::start();
    let gone = server.dir.path().join("gone.img");
    let gone_too = server.dir.path().join("gone-too.img");
    server.ok(
        "lun_create",
        json!({"name": "gone", "kind": "file", "path": gone, "size": 32 * MIB, "block_size": 4096}),
    );
    server.ok(
        "pool_create",
        json!({"name": "pg", "luns": ["gone"], "extent_size": MIB}),
    );
    server.ok(
        "volume_create",
        json!({"name": "vg", "pool": "pg", "size": 16 * MIB}),
    );
    // A fault LUN whose base goes away fails with it.
    server.ok(
        "lun_create",
        json!({"name": "gone2", "kind": "file", "path": gone_too, "size": 16 * MIB}),
    );
    server.ok(
        "lun_create",
        json!({"name": "fgone", "kind": "fault", "base": "gone2"}),
    );
    server.ok("pool_create", json!({"name": "pf", "luns": ["fgone"]}));
    server.ok(
        "volume_create",
        json!({"name": "vf", "pool": "pf", "size": 8 * MIB}),
    );
    server.file_pool("ok", MIB);
    server.ok(
        "volume_create",
        json!({"name": "vo", "pool": "ok", "size": 16 * MIB}),
    );
    let kept = [(0x81u8, 0u64, 64 * KIB), (0x82, 9 * MIB, 8192)];
    write_and_verify(&server.url("vg"), &[(0x80, 0, 64 * KIB)]);
    write_and_verify(&server.url("vf"), &[(0x80, 0, 64 * KIB)]);
    write_and_verify(&server.url("vo"), &kept);
    assert!(server.stop(), "the server did not stop cleanly");
    std::fs::remove_file(&gone).expect("remove the LUN's file");
    std::fs::remove_file(&gone_too).expect("remove the other LUN's file");
    server.spawn();

    // Everything else serves.
    verify(&server.url("vo"), &kept);
    write_and_verify(&server.url("vo"), &[(0x83, 4 * MIB, 4096)]);

    let lun_gone = lun(&server, "gone");
    assert_eq!(lun_gone["state"], "failed", "{lun_gone}");
    let reason = lun_gone["reason"].as_str().expect("reason");
    assert!(
        reason.contains(&gone.display().to_string()),
        "the reason does not name the file: {lun_gone}"
    );
    let fgone = lun(&server, "fgone");
    assert_eq!(fgone["state"], "failed", "{fgone}");
    assert!(
        fgone["reason"].as_str().expect("reason").contains("gone2"),
        "{fgone}"
    );
    assert_eq!(lun(&server, "ok-a")["state"], "online");
    assert_eq!(iostat(&server, "gone")["state"], "failed");

    let pools = server.ok("pool_get_pools", json!({}));
    let state_of = |listing: &Value, name: &str| {
        listing
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("{name} is not listed: {listing}"))
            .clone()
    };
    let pg = state_of(&pools, "pg");
    assert_eq!(pg["state"], "failed", "{pg}");
    assert!(
        pg["reason"].as_str().expect("reason").contains("gone"),
        "{pg}"
    );
    assert_eq!(state_of(&pools, "pf")["state"], "failed");
    assert_eq!(state_of(&pools, "ok")["state"], "online");
    let volumes = server.ok("volume_get_volumes", json!({}));
    assert_eq!(state_of(&volumes, "vg")["state"], "failed");
    assert_eq!(state_of(&volumes, "vf")["state"], "failed");
    assert_eq!(state_of(&volumes, "vo")["state"], "online");

    // Hosts cannot open a failed volume, nor see it in the export list.
    let (clean, text) = io(&server.url_without_grant("vg"), &["read 0 4k"]);
    assert!(!clean, "a failed volume was opened:\n{text}");
    require_tool("nbdinfo");
    let output = std::process::Command::new("nbdinfo")
        .args(["--list", &format!("nbd://127.0.0.1:{}", server.port)])
        .output()
        .expect("nbdinfo");
    let exports = String::from_utf8_lossy(&output.stdout);
    assert!(
        exports.contains("vo") && !exports.contains("vg") && !exports.contains("vf"),
        "{exports}"
    );

    // Names stay taken and failed pools take no volumes; a failed LUN joins no pool.
    for (method, params, parameter) in [
        (
            "volume_create",
            json!({"name": "vg", "pool": "ok", "size": MIB}),
            "name",
        ),
        (
            "volume_create",
            json!({"name": "new", "pool": "pg", "size": MIB}),
            "pool",
        ),
        (
            "volume_resize",
            json!({"name": "vg", "size": 32 * MIB}),
            "name",
        ),
        (
            "pool_create",
            json!({"name": "pg", "luns": ["ok-a"]}),
            "name",
        ),
        ("pool_delete", json!({"name": "pg"}), "name"),
        ("lun_delete", json!({"name": "gone"}), "name"),
    ] {
        let (code, message) = server
            .call(method, params.clone())
            .expect_err("must be refused");
        assert_eq!(code, -32602, "{method} {params}: {message}");
        assert!(
            message.starts_with(&format!("{parameter}:")),
            "{method}: {message}"
        );
    }

    // The administrator removes what is gone for good; the rest still serves after a restart.
    server.ok("volume_delete", json!({"name": "vg"}));
    server.ok("pool_delete", json!({"name": "pg"}));
    server.ok("lun_delete", json!({"name": "gone"}));
    assert!(server.stop(), "the server did not stop cleanly");
    server.spawn();
    assert!(server
        .call("lun_get_luns", json!({"name": "gone"}))
        .is_err());
    assert_eq!(lun(&server, "fgone")["state"], "failed");
    verify(&server.url("vo"), &kept);
    verify(&server.url("vo"), &[(0x83, 4 * MIB, 4096)]);
}

/// A LUN that fails every I/O under load does not flood the log (every line a locked,
/// blocking write on a reactor): its errors are summarised, at most about one line per second
/// per I/O type, with the count of errors each line stands for, while every failed I/O still
/// reaches the client as EIO.
#[test]
fn a_lun_failing_every_io_under_load_logs_a_bounded_summary() {
    let server = server_with_fault_pool();
    let url = server.url("v");
    // Map the first 4 MiB, so reads go to the LUN on the reactor path.
    write_and_verify(&url, &[(0x71, 0, 4 * MIB)]);
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl", "io_type": "read", "mode": "fail"}),
    );
    let lines_before = server.log().lines().count();
    let started = std::time::Instant::now();
    let (_, text) = fio(
        server.dir.path(),
        &[
            "--name=failing".into(),
            "--ioengine=nbd".into(),
            format!("--uri={url}"),
            "--rw=randread".into(),
            "--bs=4k".into(),
            "--iodepth=16".into(),
            "--numjobs=2".into(),
            "--size=4M".into(),
            "--time_based=1".into(),
            "--runtime=3".into(),
            "--continue_on_error=all".into(),
            "--group_reporting=1".into(),
        ],
    );
    let elapsed_s = started.elapsed().as_secs();
    assert!(
        text.contains("Input/output error") || text.contains("error=5"),
        "fio did not see EIO:\n{text}"
    );
    let failed = count(&lun(&server, "fl"), &["errors", "read"]);
    assert!(failed >= 100, "only {failed} reads failed:\n{text}");
    // The summary lines reach the log within a control cycle or two.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let lines = loop {
        let log = server.log();
        let lines: Vec<String> = log
            .lines()
            .skip(lines_before)
            .filter(|l| l.contains("LUN fl") && l.contains("error"))
            .map(str::to_string)
            .collect();
        let counted: u64 = lines.iter().filter_map(|l| summarised_count(l)).sum();
        if counted + 1 >= failed || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let bound = 3 * (elapsed_s + 3) as usize;
    assert!(
        !lines.is_empty() && lines.len() <= bound,
        "{} log lines about LUN fl for {failed} failed reads in {elapsed_s} s (at most {bound}); first:\n{}",
        lines.len(),
        lines.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
    let counted: u64 = lines.iter().filter_map(|l| summarised_count(l)).sum();
    eprintln!(
        "{failed} failed reads in {elapsed_s} s, {} log lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        counted + 1 >= failed,
        "the log accounts for {counted} of {failed} failed reads:\n{}",
        lines.join("\n")
    );
}

/// How many errors a log line stands for: the N of "N read error(s)".
fn summarised_count(line: &str) -> Option<u64> {
    let (before, _) = line.split_once(" read error")?;
    before.rsplit(' ').next()?.parse().ok()
}
