//! A thin volume's mapping table costs memory for what was written, not for its size: a
//! 64 TiB thin volume on a small pool, read and written at its far end with qemu-io.

mod common;

use common::{qemu_io, Server};
use serde_json::json;
use std::path::Path;

/// The resident memory of the `sds serve` process whose command line names `state_dir`.
fn server_rss_bytes(state_dir: &Path) -> u64 {
    let wanted = state_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "serve") && args.contains(&wanted) {
            let status =
                std::fs::read_to_string(entry.path().join("status")).expect("/proc/PID/status");
            let kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("VmRSS in /proc/PID/status");
            return kib * 1024;
        }
    }
    panic!("no sds serve process for {wanted}");
}

#[test]
fn a_64_tib_thin_volume_costs_little_memory_and_serves_its_far_end() {
    const TIB: u64 = 1 << 40;
    const MIB: u64 = 1 << 20;
    let server = Server::start();
    server.ok(
        "lun_create",
        json!({"name": "small", "kind": "file", "size": 64 * MIB, "block_size": 4096}),
    );
    server.ok(
        "pool_create",
        json!({"name": "p", "luns": ["small"], "extent_size": 4 * MIB}),
    );
    let before = server_rss_bytes(&server.state_dir);
    server.ok(
        "volume_create",
        json!({"name": "huge", "pool": "p", "size": 64 * TIB}),
    );
    let after_create = server_rss_bytes(&server.state_dir);
    let grown = after_create.saturating_sub(before);
    println!(
        "RSS before {before} B, after creating a 64 TiB thin volume {after_create} B (+{grown} B)"
    );
    // The whole map at 4 MiB extents would be 16 Mi slots of 8 bytes: 128 MiB.
    assert!(
        grown < 4 * MIB,
        "creating an empty 64 TiB thin volume grew the server by {grown} bytes"
    );

    // Its far end works: the last extent, and one in the middle, written and read back; a
    // range never written reads as zeroes.
    let url = server.url("huge");
    let last = 64 * TIB - MIB;
    let middle = 37 * TIB + 3 * MIB;
    let (clean, text) = qemu_io(
        &url,
        &[
            format!("write -P 0x5a {last} {MIB}"),
            format!("write -P 0xa5 {middle} 65536"),
            format!("read -P 0x5a {last} {MIB}"),
            format!("read -P 0xa5 {middle} 65536"),
            format!("read -P 0 {} 65536", 20 * TIB),
        ],
    );
    assert!(clean, "qemu-io failed:\n{text}");
    assert_eq!(
        text.matches("read ").count(),
        3,
        "not every read ran:\n{text}"
    );
    let after_io = server_rss_bytes(&server.state_dir);
    println!("RSS after writing two extents {after_io} B");
    let volume = &server.ok("volume_get_volumes", json!({"name": "huge"}))[0];
    assert_eq!(volume["allocated_extents"], 2, "{volume}");
}
