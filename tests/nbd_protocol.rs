//! The NBD commands beyond read and write (FLUSH, FUA, TRIM, WRITE_ZEROES), a raw client
//! throwing malformed requests, NBD over a Unix socket, several reactors, and a LUN on a real
//! block device (a loop device).

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};

const MIB: u64 = 1 << 20;

#[test]
fn flush_fua_trim_and_write_zeroes() {
    let server = Server::start();
    server.file_pool("files", 64 * 1024);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "files", "size": 16 * MIB}),
    );
    let url = server.url("v");
    let commands: Vec<String> = [
        "write -P 0x71 0 1M",
        "write -f -P 0x72 1M 64k",
        "flush",
        "write -z 4096 8192",
        "discard 512k 128k",
        "read -P 0x71 0 4096",
        "read -P 0 4096 8192",
        "read -P 0x71 12288 503808",
        "read -P 0x72 1M 64k",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let (clean, text) = qemu_io(&url, &commands);
    assert!(clean, "{text}");
    // After TRIM the range holds no stale pattern: zeroes (the server zeroes trimmed ranges).
    verify(
        &url,
        &[(0, 512 * 1024, 128 * 1024), (0x71, 640 * 1024, 384 * 1024)],
    );
    // Zeroing a never-written range allocates nothing.
    let before =
        server.ok("volume_get_volumes", json!({"name": "v"}))[0]["allocated_extents"].clone();
    let (clean, text) = qemu_io(&url, &["write -z 8M 2M".to_string()]);
    assert!(clean, "{text}");
    assert_eq!(
        server.ok("volume_get_volumes", json!({"name": "v"}))[0]["allocated_extents"],
        before
    );
    let stats = &server.ok("bdev_get_iostat", json!({"name": "v"}))["bdevs"][0];
    assert!(
        stats["num_flush_ops"].as_u64().expect("flushes") >= 1,
        "{stats}"
    );
    assert!(
        stats["num_unmap_ops"].as_u64().expect("unmaps") >= 1,
        "{stats}"
    );
}

#[test]
fn malformed_and_oversized_requests_close_only_their_connection() {
    let server = Server::start();
    server.mixed_pool("mix", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "mix", "size": 16 * MIB}),
    );
    write_and_verify(&server.url("v"), &[(0x3c, 0, 65536)]);
    let mut healthy = nbd_raw_connect(server.port, "v");

    // A request with a bad magic: the server closes that connection.
    let mut bad = nbd_raw_connect(server.port, "v");
    bad.write_all(&[0xde; 28]).expect("garbage");
    assert!(
        peer_closed(&mut bad),
        "the server kept a connection that sent garbage"
    );

    // A read larger than the advertised maximum: EINVAL, nothing allocated, connection goes on.
    healthy
        .write_all(&nbd_request(0, 1, 0, 64 << 20))
        .expect("oversized read");
    assert_eq!(nbd_reply(&mut healthy), (22, 1));
    // A write larger than the maximum: EINVAL; its payload is skipped, the stream stays in step.
    let payload_bytes = 5 << 20;
    let mut oversized = nbd_request(1, 2, 0, payload_bytes);
    oversized.extend(std::iter::repeat_n(0xeeu8, payload_bytes as usize));
    healthy.write_all(&oversized).expect("oversized write");
    assert_eq!(nbd_reply(&mut healthy), (22, 2));
    // Past the end, misaligned, unknown command: EINVAL each.
    healthy
        .write_all(&nbd_request(0, 3, 16 * MIB, 4096))
        .expect("past the end");
    assert_eq!(nbd_reply(&mut healthy), (22, 3));
    healthy
        .write_all(&nbd_request(0, 4, 100, 4096))
        .expect("misaligned");
    assert_eq!(nbd_reply(&mut healthy), (22, 4));
    healthy
        .write_all(&nbd_request(42, 5, 0, 0))
        .expect("unknown command");
    assert_eq!(nbd_reply(&mut healthy), (22, 5));
    // And a good read on the same connection returns the data written before.
    healthy
        .write_all(&nbd_request(0, 6, 0, 4096))
        .expect("read");
    assert_eq!(nbd_reply(&mut healthy), (0, 6));
    let mut data = vec![0u8; 4096];
    healthy.read_exact(&mut data).expect("data");
    assert!(data.iter().all(|&b| b == 0x3c), "read back the wrong bytes");
    // A truncated header followed by a disconnect does not disturb other clients.
    let mut truncated = nbd_raw_connect(server.port, "v");
    truncated
        .write_all(&nbd_request(0, 7, 0, 4096)[..10])
        .expect("partial");
    drop(truncated);
    verify(&server.url("v"), &[(0x3c, 0, 65536)]);
    healthy
        .write_all(&nbd_request(2, 8, 0, 0))
        .expect("disconnect");
}

#[test]
fn nbd_over_a_unix_socket_and_several_reactors() {
    let mut server = Server::start_with(|dir| {
        vec![
            "--cores".into(),
            "0,1".into(),
            "--nbd-socket".into(),
            dir.join("nbd.sock").display().to_string(),
        ]
    });
    let nbd_socket = server.dir.path().join("nbd.sock");
    let sds = |args: &[&str]| {
        let output = server.cli(args);
        assert!(
            output.status.success(),
            "sds {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    sds(&["lun", "create", "m", "--kind", "mem", "--size", "64M"]);
    sds(&["pool", "create", "p", "--lun", "m"]);
    sds(&["volume", "create", "u", "--pool", "p", "--size", "32M"]);
    let reactors = sds(&["rpc", "framework_get_reactors"]);
    let reactors: serde_json::Value = serde_json::from_str(&reactors).expect("json");
    assert_eq!(reactors["reactors"].as_array().map(Vec::len), Some(2));
    server.grant("u");
    let url = format!("nbd+unix:///u?socket={}", nbd_socket.display());
    // Two connections at once land on both reactors; each verifies its own half.
    let jobs: Vec<_> = (0..2u64)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let base = i * 16 * MIB;
                // Each write straddles an extent boundary (extents are 1 MiB).
                let writes: Vec<(u8, u64, u64)> = (0..8)
                    .map(|k| {
                        (
                            0x40 + (i * 8 + k) as u8,
                            base + k * 2 * MIB + MIB - 4096,
                            8192,
                        )
                    })
                    .collect();
                write_and_verify(&url, &writes);
            })
        })
        .collect();
    for job in jobs {
        job.join().expect("client thread");
    }
    assert!(server.stop(), "the server did not exit cleanly");
}

#[test]
fn blockdev_lun_on_a_loop_device() {
    let server = Server::start();
    let loop_device = LoopDevice::attach(server.dir.path(), 48 * MIB);
    let device = loop_device.path.clone();
    let lun = server.ok(
        "lun_create",
        json!({"name": "loop", "kind": "blockdev", "path": device}),
    );
    assert_eq!(lun["size"], 48 * MIB);
    server.ok("pool_create", json!({"name": "dev", "luns": ["loop"]}));
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "dev", "size": 32 * MIB}),
    );
    write_and_verify(
        &server.url("v"),
        &[(0x2b, 0, MIB + 8192), (0x2c, 20 * MIB - 4096, 12288)],
    );
    let (clean, text) = qemu_io(
        &server.url("v"),
        &[
            "write -z 0 4096".into(),
            "read -P 0 0 4096".into(),
            "read -P 0x2b 4096 4096".into(),
        ],
    );
    assert!(clean, "{text}");
}

/// A request header with command flags (the harness's `nbd_request` sends none).
fn request_with_flags(flags: u16, command: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut out = nbd_request(command, cookie, offset, length);
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out
}

#[test]
fn unknown_command_flags_are_refused_with_einval() {
    let server = Server::start();
    server.mixed_pool("mix", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "mix", "size": 16 * MIB}),
    );
    write_and_verify(&server.url("v"), &[(0x5a, 0, 65536)]);
    let mut client = nbd_raw_connect(server.port, "v");
    // A flag no version of the protocol defines, on a read: EINVAL.
    client
        .write_all(&request_with_flags(1 << 15, 0, 1, 0, 4096))
        .expect("read with an unknown flag");
    assert_eq!(nbd_reply(&mut client), (22, 1));
    // DF only means something with structured replies, which this server does not negotiate.
    client
        .write_all(&request_with_flags(1 << 2, 0, 2, 0, 4096))
        .expect("read with DF");
    assert_eq!(nbd_reply(&mut client), (22, 2));
    // NO_HOLE is for WRITE_ZEROES only; on a write it is refused and the payload skipped, the
    // stream staying in step; nothing is written.
    let mut write = request_with_flags(1 << 1, 1, 3, 0, 4096);
    write.extend(std::iter::repeat_n(0xeeu8, 4096));
    client.write_all(&write).expect("write with NO_HOLE");
    assert_eq!(nbd_reply(&mut client), (22, 3));
    let mut write = request_with_flags(1 << 7, 1, 4, 4096, 4096);
    write.extend(std::iter::repeat_n(0xeeu8, 4096));
    client
        .write_all(&write)
        .expect("write with an unknown flag");
    assert_eq!(nbd_reply(&mut client), (22, 4));
    // The flags the server knows still work: FUA on a read (the spec lets it be sent on any
    // command), NO_HOLE on WRITE_ZEROES.
    client
        .write_all(&request_with_flags(1, 0, 5, 0, 8192))
        .expect("read with FUA");
    assert_eq!(nbd_reply(&mut client), (0, 5));
    let mut data = vec![0u8; 8192];
    client.read_exact(&mut data).expect("data");
    assert!(
        data.iter().all(|&b| b == 0x5a),
        "a refused write changed the volume"
    );
    client
        .write_all(&request_with_flags(1 << 1, 6, 6, 65536, 4096))
        .expect("write zeroes with NO_HOLE");
    assert_eq!(nbd_reply(&mut client), (0, 6));
    client
        .write_all(&nbd_request(2, 7, 0, 0))
        .expect("disconnect");
}
