//! RAM LUNs keep nothing across a restart. A pool is either volatile (RAM or null LUNs only;
//! it and its volumes say so in every listing and start empty) or persistent; mixing them is
//! refused. A persistent pool that has a volatile LUN anyway (made before the rule) comes back
//! `data_lost`, and what may have been on that LUN fails with EIO instead of reading as zeroes.

mod common;

use common::{qemu_io, write_and_verify, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

fn file_lun(server: &Server, name: &str, block_size: u32) {
    server.ok(
        "lun_create",
        json!({"name": name, "kind": "file", "size": 32 * MIB, "block_size": block_size}),
    );
}

fn mem_lun(server: &Server, name: &str) {
    server.ok(
        "lun_create",
        json!({"name": name, "kind": "mem", "size": 32 * MIB}),
    );
}

fn one(server: &Server, method: &str, name: &str) -> Value {
    server.ok(method, json!({"name": name}))[0].clone()
}

#[test]
fn a_pool_mixing_ram_and_file_luns_is_refused_and_changes_nothing() {
    let server = Server::start();
    file_lun(&server, "f1", 512);
    file_lun(&server, "f2", 4096);
    mem_lun(&server, "ram");
    let before = server.ok("lun_get_luns", json!({}));
    let (code, message) = server
        .call(
            "pool_create",
            json!({"name": "mix", "luns": ["f1", "f2", "ram"]}),
        )
        .expect_err("a pool mixing a RAM LUN with file LUNs was created");
    assert_eq!(code, -32602, "{message}");
    assert!(
        message.starts_with("luns:") && message.contains("ram") && message.contains("volatile"),
        "{message}"
    );
    assert_eq!(server.ok("pool_get_pools", json!({})), json!([]));
    assert_eq!(server.ok("lun_get_luns", json!({})), before);
    // The command line says the same.
    let output = server.cli(&["pool", "create", "mix", "--lun", "ram", "--lun", "f1"]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && error.contains("ram"), "{error}");
    // Each kind alone is fine.
    server.ok(
        "pool_create",
        json!({"name": "files", "luns": ["f1", "f2"]}),
    );
    server.ok("pool_create", json!({"name": "scratch", "luns": ["ram"]}));
}

#[test]
fn a_volatile_pool_says_so_everywhere_and_comes_back_empty_after_a_restart() {
    let mut server = Server::start();
    mem_lun(&server, "ram");
    server.ok("pool_create", json!({"name": "scratch", "luns": ["ram"]}));
    server.ok(
        "volume_create",
        json!({"name": "sv", "pool": "scratch", "size": 8 * MIB}),
    );
    file_lun(&server, "f1", 4096);
    server.ok("pool_create", json!({"name": "disk", "luns": ["f1"]}));
    server.ok(
        "volume_create",
        json!({"name": "dv", "pool": "disk", "size": 8 * MIB}),
    );
    let listings = |server: &Server| {
        let pool = one(server, "pool_get_pools", "scratch");
        let volume = one(server, "volume_get_volumes", "sv");
        let bdev = one(server, "bdev_get_bdevs", "sv");
        assert_eq!(pool["volatile"], true, "{pool}");
        assert_eq!(volume["volatile"], true, "{volume}");
        assert_eq!(bdev["driver_specific"]["sds"]["volatile"], true, "{bdev}");
        assert_eq!(one(server, "pool_get_pools", "disk")["volatile"], false);
        assert_eq!(one(server, "volume_get_volumes", "dv")["volatile"], false);
        let output = server.cli(&["pool", "list"]);
        let table = String::from_utf8_lossy(&output.stdout).into_owned();
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name}:\n{table}"))
                .to_string()
        };
        assert!(
            table.lines().next().is_some_and(|h| h.contains("VOLATILE")),
            "{table}"
        );
        assert!(row("scratch").trim_end().ends_with("yes"), "{table}");
        assert!(row("disk").trim_end().ends_with("no"), "{table}");
        let output = server.cli(&["volume", "list"]);
        let table = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("sv") && l.trim_end().ends_with("yes")),
            "{table}"
        );
        (pool, volume)
    };
    let (pool, _) = listings(&server);
    assert!(
        pool.get("note").is_none(),
        "a new pool has nothing to note: {pool}"
    );
    write_and_verify(&server.url("sv"), &[(0x61, 0, MIB), (0x62, 3 * MIB, MIB)]);
    assert_eq!(
        one(&server, "volume_get_volumes", "sv")["allocated_extents"],
        2
    );

    assert!(server.stop(), "the server did not stop cleanly");
    server.spawn();
    let (pool, volume) = listings(&server);
    assert_eq!(volume["allocated_extents"], 0, "{volume}");
    assert_eq!(pool["free_extents"], pool["total_extents"], "{pool}");
    for described in [&pool, &volume] {
        let note = described["note"].as_str().unwrap_or_default();
        assert!(note.contains("started empty"), "{described}");
    }
    assert!(
        server
            .log()
            .contains("pool scratch is volatile (RAM LUNs only): it starts empty"),
        "the log does not say the volatile pool starts empty"
    );
    let output = server.cli(&["volume", "list"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("note: sv: volatile: started empty"),
        "{table}"
    );
}

/// The record file of LUN `name` in the (stopped) server's store.
fn lun_record(state_dir: &Path, name: &str) -> PathBuf {
    let wanted = format!("lun-{name}.json");
    let mut dirs = vec![state_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("read the state dir")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == wanted.as_str()) {
                return path;
            }
        }
    }
    panic!("no record {wanted} under {}", state_dir.display());
}

#[test]
fn a_legacy_pool_with_a_ram_lun_reports_data_lost_and_fails_what_was_there() {
    let mut server = Server::start();
    file_lun(&server, "l1", 512);
    file_lun(&server, "l2", 4096);
    file_lun(&server, "l3", 512);
    server.ok(
        "pool_create",
        json!({"name": "legacy", "luns": ["l1", "l2", "l3"], "extent_size": MIB}),
    );
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "legacy", "size": 16 * MIB}),
    );
    // Six extents, one write each: they are spread over the three LUNs.
    let url = server.url("v");
    let writes: Vec<(u8, u64, u64)> = (0..6u64).map(|i| (0x10 + i as u8, i * MIB, MIB)).collect();
    write_and_verify(&url, &writes);
    assert!(server.stop(), "the server did not stop cleanly");

    // The configuration of a pool made before mixing was refused: l3 is a RAM LUN in its
    // record (its data, like a RAM LUN's, is gone at the restart).
    let record = lun_record(&server.state_dir, "l3");
    let mut lun: Value =
        serde_json::from_str(&std::fs::read_to_string(&record).expect("read")).expect("json");
    lun["kind"] = json!("mem");
    lun["path"] = Value::Null;
    std::fs::write(&record, lun.to_string()).expect("rewrite the LUN record");

    server.spawn();
    let volume = one(&server, "volume_get_volumes", "v");
    assert_eq!(volume["state"], "data_lost", "{volume}");
    assert!(
        volume["note"].as_str().is_some_and(|n| n.contains("EIO")),
        "{volume}"
    );
    let pool = one(&server, "pool_get_pools", "legacy");
    assert_eq!(pool["state"], "data_lost", "{pool}");
    assert!(
        pool["note"].as_str().is_some_and(|n| n.contains("l3")),
        "{pool}"
    );
    assert_eq!(
        one(&server, "bdev_get_bdevs", "v")["driver_specific"]["sds"]["state"],
        "data_lost"
    );
    assert!(server
        .log()
        .contains("LUN l3 is volatile but the pool's other LUNs are persistent"));

    // Each extent reads back exactly what was written, or fails with an I/O error: never
    // zeroes. Those on l3 fail; those on l1 and l2 are intact.
    let (mut intact, mut failed) = (0, 0);
    for &(pattern, offset, len) in &writes {
        let (clean, text) = qemu_io(&url, &[format!("read -P {pattern} {offset} {len}")]);
        if clean {
            intact += 1;
        } else {
            assert!(
                text.contains("Input/output error") && !text.contains("Pattern verification"),
                "extent at {offset} neither intact nor an I/O error:\n{text}"
            );
            failed += 1;
        }
    }
    assert_eq!((intact, failed), (4, 2), "expected two extents per LUN");
    // A range no surviving record maps may have been on l3: it fails too, reads and writes.
    let (clean, text) = qemu_io(&url, &[format!("read {} 4096", 12 * MIB)]);
    assert!(!clean && text.contains("Input/output error"), "{text}");
    let (clean, text) = qemu_io(&url, &[format!("write -P 0x77 {} 4096", 12 * MIB)]);
    assert!(!clean && text.contains("Input/output error"), "{text}");
    // A FLUSH still works (the surviving LUNs are flushed).
    let (clean, text) = qemu_io(&url, &["flush".to_string()]);
    assert!(clean, "{text}");
}
