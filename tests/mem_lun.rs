//! RAM LUNs that cannot be had: `lun_create` of a `mem` LUN larger than the memory the machine
//! can give is refused with a JSON-RPC error, creates nothing, and the server keeps serving
//! the volumes it has (read back through qemu-io).

mod common;
use common::*;
use serde_json::json;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
const TIB: u64 = 1 << 40;

/// MemAvailable from /proc/meminfo, in bytes.
fn mem_available_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let line = text
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .expect("MemAvailable in /proc/meminfo");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

#[test]
fn a_mem_lun_larger_than_memory_is_refused_and_the_server_keeps_serving() {
    let server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 16 * MIB}),
    );
    let url = server.url("v");
    write_and_verify(&url, &[(0x5a, 0, 64 * KIB), (0x5b, 3 * MIB, 4096)]);

    let twice_available = (mem_available_bytes() * 2).next_multiple_of(4096);
    for size in [100 * TIB, twice_available] {
        let refused = server.call(
            "lun_create",
            json!({"name": "big", "kind": "mem", "size": size, "block_size": 4096}),
        );
        let Err((code, message)) = refused else {
            panic!("a mem LUN of {size} bytes was created: {refused:?}");
        };
        eprintln!("lun_create mem of {size} bytes: {code} {message}");
        assert_eq!(code, -32602, "{message}");
        assert!(message.contains("size"), "{message}");
        let luns = server.ok("lun_get_luns", json!({}));
        assert!(
            luns.as_array()
                .is_some_and(|l| l.iter().all(|lun| lun["name"] != "big")),
            "a refused LUN was kept: {luns}"
        );
        // The server still serves, with the data it had.
        verify(&url, &[(0x5a, 0, 64 * KIB), (0x5b, 3 * MIB, 4096)]);
    }
    write_and_verify(&url, &[(0x5c, 5 * MIB, 64 * KIB)]);
    // What fits is still granted.
    server.ok(
        "lun_create",
        json!({"name": "small", "kind": "mem", "size": 16 * MIB, "block_size": 4096}),
    );
}
