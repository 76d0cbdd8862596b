//! Data through NBD with real clients: qemu-io patterns at many offsets and sizes, across
//! extent and LUN boundaries, on volumes of both block sizes over a pool of mixed LUNs.

mod common;
use common::*;
use serde_json::json;

const MIB: u64 = 1 << 20;
const EXTENT: u64 = 64 * 1024;

/// Writes that start and end on odd places: inside an extent, across one extent boundary,
/// across many (and so across LUNs, which take extents in turn), and near the end.
fn pattern_writes(size: u64, block: u64) -> Vec<(u8, u64, u64)> {
    vec![
        (0x11, 0, block),
        (0x22, EXTENT - block, 2 * block),
        (0x33, 3 * EXTENT - 4096, 4 * EXTENT + 8192),
        (0x44, 10 * EXTENT + block, 7 * block),
        (0x55, 2 * MIB - 8 * block, MIB + 16 * block),
        (0x66, 17 * MIB + 3 * block, 300 * 1024),
        (0x77, size - 2 * EXTENT - block, 2 * EXTENT + block),
    ]
}

#[test]
fn patterns_across_extents_and_luns_4096_volume() {
    let server = Server::start();
    server.mixed_pool("mix", EXTENT);
    let size = 40 * MIB;
    server.ok(
        "volume_create",
        json!({"name": "v4k", "pool": "mix", "size": size}),
    );
    let writes = pattern_writes(size, 4096);
    write_and_verify(&server.url("v4k"), &writes);
    // Again on a second connection: the data is on the LUNs, not in a connection.
    verify(&server.url("v4k"), &writes);
    // Never-written ranges read as zeroes.
    verify(
        &server.url("v4k"),
        &[(0, 30 * MIB, 256 * 1024), (0, 4096, EXTENT - 8192)],
    );
    let volume = &server.ok("volume_get_volumes", json!({"name": "v4k"}))[0];
    assert!(
        volume["allocated_extents"].as_u64().expect("count") >= 20,
        "{volume}"
    );
    // Extents went to every LUN of the pool: the pool's free count fell on each.
    let pool = &server.ok("pool_get_pools", json!({"name": "mix"}))[0];
    assert!(pool["free_extents"].as_u64() < pool["total_extents"].as_u64());
}

#[test]
fn patterns_on_a_512_byte_volume_over_4096_byte_luns() {
    let server = Server::start();
    server.mixed_pool("mix", EXTENT);
    let size = 24 * MIB;
    server.ok(
        "volume_create",
        json!({"name": "v512", "pool": "mix", "size": size, "block_size": 512}),
    );
    let writes = pattern_writes(size, 512);
    write_and_verify(&server.url("v512"), &writes);
    // 512-byte writes side by side in one 4096-byte LUN block keep each other.
    let neighbours: Vec<(u8, u64, u64)> = (0..8)
        .map(|i| (0x80 + i as u8, 5 * MIB + i * 512, 512))
        .collect();
    write_and_verify(&server.url("v512"), &neighbours);
}

#[test]
fn io_past_the_end_fails_and_the_server_keeps_serving() {
    let server = Server::start();
    server.mixed_pool("mix", EXTENT);
    server.ok(
        "volume_create",
        json!({"name": "small", "pool": "mix", "size": 4 * MIB}),
    );
    // qemu-io itself refuses I/O past the size it was told, so the NBD request is made by
    // libnbd's Python binding (Debian's python3), which lets it through with strict mode off.
    require_tool("nbdsh");
    let script = format!(
        "import nbd\nh = nbd.NBD()\nh.set_strict_mode(0)\nh.connect_uri('{}')\ntry:\n    h.pread(4096, {})\n    print('NO ERROR')\nexcept nbd.Error as e:\n    print('ERRNO', e.errno)\n",
        server.url("small"),
        4 * MIB
    );
    let output = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .expect("nbdsh");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("ERRNO 22") || text.contains("ERRNO EINVAL"),
        "expected EINVAL for a read past the end:\n{text}"
    );
    write_and_verify(&server.url("small"), &[(0x5a, 4 * MIB - 8192, 8192)]);
}

#[test]
fn nbdinfo_lists_the_exports() {
    require_tool("nbdinfo");
    let server = Server::start();
    server.mixed_pool("mix", EXTENT);
    server.ok(
        "volume_create",
        json!({"name": "alpha", "pool": "mix", "size": 8 * MIB}),
    );
    server.ok(
        "volume_create",
        json!({"name": "beta", "pool": "mix", "size": 16 * MIB, "block_size": 512}),
    );
    // A third volume with no virtual path: no host sees it.
    server.ok(
        "volume_create",
        json!({"name": "gamma", "pool": "mix", "size": 4 * MIB}),
    );
    server.grant("alpha");
    server.ok(
        "vpath_create",
        json!({"host": TEST_HOST, "volume": "beta", "mode": "ro"}),
    );
    let output = std::process::Command::new("nbdinfo")
        .args([
            "--list",
            "--json",
            &format!("nbd://127.0.0.1:{}", server.port),
        ])
        .output()
        .expect("nbdinfo");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing: serde_json::Value = serde_json::from_slice(&output.stdout).expect("nbdinfo json");
    let exports = listing["exports"].as_array().expect("exports");
    let find = |name: &str| {
        exports
            .iter()
            .find(|e| e["export-name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed: {listing}"))
    };
    assert_eq!(find("alpha")["export-size"], 8 * MIB);
    assert_eq!(find("beta")["export-size"], 16 * MIB);
    assert_eq!(find("beta")["block_size_minimum"], 512);
    assert_eq!(find("alpha")["block_size_minimum"], 4096);
    assert_eq!(find("alpha")["can_multi_conn"], true);
    assert_eq!(find("alpha")["is_read_only"], false);
    assert_eq!(
        find("beta")["is_read_only"],
        true,
        "a read-only VP exports read-only"
    );
    assert_eq!(exports.len(), 2, "gamma has no virtual path: {listing}");
}
