//! Volumes over their life: fio verification over mixed LUNs, a clean restart that keeps the
//! map and the data, online growth under I/O, thick provisioning, deletion freeing extents.

mod common;
use common::*;
use serde_json::json;

const MIB: u64 = 1 << 20;

#[test]
fn fio_verifies_crc32c_on_a_volume_over_mixed_block_sizes() {
    let server = Server::start();
    server.mixed_pool("mix", 1 << 20);
    server.ok(
        "volume_create",
        json!({"name": "vol", "pool": "mix", "size": 64 * MIB}),
    );
    let (ok, text) = fio(
        server.dir.path(),
        &[
            "--name=verify".into(),
            "--ioengine=nbd".into(),
            format!("--uri={}", server.url("vol")),
            "--rw=randwrite".into(),
            "--bs=4k".into(),
            "--bsrange=4k-64k".into(),
            "--iodepth=16".into(),
            "--size=48M".into(),
            "--verify=crc32c".into(),
            "--do_verify=1".into(),
            "--verify_fatal=1".into(),
        ],
    );
    assert!(ok, "fio verification failed:\n{text}");
    // The extents it needed came from all three LUNs.
    let luns = server.ok("lun_get_luns", json!({}));
    assert_eq!(luns.as_array().map(Vec::len), Some(3));
    let volume = &server.ok("volume_get_volumes", json!({"name": "vol"}))[0];
    assert!(
        volume["allocated_extents"].as_u64().expect("count") >= 40,
        "{volume}"
    );
    let stats = &server.ok("bdev_get_iostat", json!({"name": "vol"}))["bdevs"][0];
    assert!(
        stats["num_write_ops"].as_u64().expect("writes") > 0
            && stats["num_read_ops"].as_u64().expect("reads") > 0,
        "{stats}"
    );
}

#[test]
fn data_and_configuration_survive_a_clean_restart() {
    let mut server = Server::start();
    server.file_pool("files", 64 * 1024);
    server.ok(
        "volume_create",
        json!({"name": "keep", "pool": "files", "size": 32 * MIB}),
    );
    server.ok(
        "volume_create",
        json!({"name": "keep512", "pool": "files", "size": 8 * MIB, "block_size": 512}),
    );
    let writes = [
        (0x31u8, 0u64, 4096u64),
        (0x32, 65536 - 4096, 8192),
        (0x33, 5 * MIB + 4096, 3 * MIB),
        (0x34, 32 * MIB - 4096, 4096),
    ];
    write_and_verify(&server.url("keep"), &writes);
    write_and_verify(
        &server.url("keep512"),
        &[(0x41, 512, 1024), (0x42, MIB - 512, 1536)],
    );
    let volumes_before = server.ok("volume_get_volumes", json!({}));
    let pools_before = server.ok("pool_get_pools", json!({}));
    assert!(
        server.stop(),
        "SIGTERM did not stop the server cleanly:\n{}",
        server.log()
    );
    server.spawn();
    verify(&server.url("keep"), &writes);
    verify(&server.url("keep"), &[(0, 20 * MIB, MIB)]);
    verify(
        &server.url("keep512"),
        &[(0x41, 512, 1024), (0x42, MIB - 512, 1536), (0, 0, 512)],
    );
    let strip = |mut v: serde_json::Value| {
        for item in v.as_array_mut().expect("array") {
            item.as_object_mut().expect("object").remove("connections");
        }
        v
    };
    assert_eq!(
        strip(server.ok("volume_get_volumes", json!({}))),
        strip(volumes_before)
    );
    let strip_journal = |mut v: serde_json::Value| {
        for item in v.as_array_mut().expect("array") {
            item.as_object_mut().expect("object").remove("journal");
        }
        v
    };
    let pools_after = server.ok("pool_get_pools", json!({}));
    // A clean stop checkpoints every journal: the restart had nothing to replay.
    for lun in pools_after[0]["journal"].as_array().expect("journal") {
        assert_eq!(lun["recovery"]["replayed_blocks"], 0, "{lun}");
    }
    assert_eq!(strip_journal(pools_after), strip_journal(pools_before));
}

#[test]
fn grow_online_while_writing_then_delete_frees_extents() {
    let server = Server::start();
    server.mixed_pool("mix", 1 << 20);
    server.ok(
        "volume_create",
        json!({"name": "grow", "pool": "mix", "size": 16 * MIB}),
    );
    let free_before = server.ok("pool_get_pools", json!({"name": "mix"}))[0]["free_extents"]
        .as_u64()
        .expect("free");
    let url = server.url("grow");
    let fio_dir = server.dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        fio(
            &fio_dir,
            &[
                "--name=load".into(),
                "--ioengine=nbd".into(),
                format!("--uri={url}"),
                "--rw=randrw".into(),
                "--bs=4k".into(),
                "--iodepth=8".into(),
                "--size=16M".into(),
                "--time_based".into(),
                "--runtime=2".into(),
            ],
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let resized = server.ok("volume_resize", json!({"name": "grow", "size": 48 * MIB}));
    assert_eq!(resized["size"], 48 * MIB);
    let (ok, text) = writer.join().expect("fio thread");
    assert!(ok, "I/O during the resize failed:\n{text}");
    // The new space is usable right away, past the old end.
    write_and_verify(
        &server.url("grow"),
        &[(0x61, 16 * MIB - 4096, 8192), (0x62, 48 * MIB - 4096, 4096)],
    );
    let err = server
        .call("volume_resize", json!({"name": "grow", "size": 8 * MIB}))
        .expect_err("shrinking must fail");
    assert_eq!(err.0, -32602);
    assert!(err.1.starts_with("size:"), "{}", err.1);
    server.ok("volume_delete", json!({"name": "grow"}));
    let free_after = server.ok("pool_get_pools", json!({"name": "mix"}))[0]["free_extents"]
        .as_u64()
        .expect("free");
    assert_eq!(
        free_after, free_before,
        "deleting the volume did not free its extents"
    );
}

#[test]
fn thick_volume_allocates_up_front() {
    let server = Server::start();
    server.mixed_pool("mix", 1 << 20);
    let free_before = server.ok("pool_get_pools", json!({"name": "mix"}))[0]["free_extents"]
        .as_u64()
        .expect("free");
    let volume = server.ok(
        "volume_create",
        json!({"name": "thick", "pool": "mix", "size": 10 * MIB, "thin": false}),
    );
    assert_eq!(volume["allocated_extents"], 10);
    let free_after = server.ok("pool_get_pools", json!({"name": "mix"}))[0]["free_extents"]
        .as_u64()
        .expect("free");
    assert_eq!(free_before - free_after, 10);
    // A thick volume still reads zeroes where nothing was written.
    verify(&server.url("thick"), &[(0, 0, MIB), (0, 9 * MIB, MIB)]);
    // Too big for the pool: refused, nothing allocated.
    let err = server
        .call(
            "volume_create",
            json!({"name": "huge", "pool": "mix", "size": 1u64 << 30, "thin": false}),
        )
        .expect_err("too big");
    assert_eq!(err.0, -32602);
    assert_eq!(
        server.ok("pool_get_pools", json!({"name": "mix"}))[0]["free_extents"].as_u64(),
        Some(free_after)
    );
}

#[test]
fn a_full_pool_answers_enospc() {
    let server = Server::start();
    server.ok(
        "lun_create",
        json!({"name": "tiny", "kind": "mem", "size": 8 * MIB}),
    );
    server.ok("pool_create", json!({"name": "tiny", "luns": ["tiny"]}));
    let pool = &server.ok("pool_get_pools", json!({"name": "tiny"}))[0];
    let extents = pool["total_extents"].as_u64().expect("total");
    server.ok(
        "volume_create",
        json!({"name": "over", "pool": "tiny", "size": 64 * MIB}),
    );
    // Fill every extent, then one more write must fail with ENOSPC, not hang or crash.
    let fill: Vec<String> = (0..extents)
        .map(|i| format!("write -P 1 {} 4096", i * MIB))
        .collect();
    let (clean, text) = qemu_io(&server.url("over"), &fill);
    assert!(clean, "{text}");
    let (clean, text) = qemu_io(
        &server.url("over"),
        &[format!("write -P 2 {} 4096", 40 * MIB)],
    );
    assert!(
        !clean,
        "a write beyond the pool's capacity succeeded:\n{text}"
    );
    assert!(text.contains("No space left on device"), "{text}");
    verify(&server.url("over"), &[(1, 0, 4096)]);
}
