//! What one NBD client may take from the others, driven from outside with real clients: the
//! NBD Unix socket's mode (a `unix:UID` host that is not root can connect), handshake slots
//! (a peer that is nobody cannot lock hosts out), sessions per host, and memory held by
//! replies a client never reads.

mod common;
use common::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const MIB: u64 = 1 << 20;

/// `qemu-io` as user `uid` (through `setpriv`): writes a pattern then reads it back.
fn write_and_verify_as(uid: u32, url: &str) -> (bool, String) {
    require_tool("setpriv");
    require_tool("qemu-io");
    let output = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "qemu-io",
            "-f",
            "raw",
            url,
            "-c",
            "write -P 0x3e 0 64k",
            "-c",
            "read -P 0x3e 0 64k",
        ])
        .current_dir("/")
        .output()
        .expect("setpriv qemu-io");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let clean =
        output.status.success() && !text.contains("failed") && text.contains("read 65536/65536");
    (clean, text)
}

#[test]
fn a_unix_host_that_is_not_root_reaches_the_nbd_socket() {
    let server = Server::start_with(|dir| {
        vec![
            "--nbd-socket".into(),
            dir.join("nbd.sock").display().to_string(),
        ]
    });
    // Only the socket's own mode may stand in the way: the directory lets anyone through.
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    let socket = server.dir.path().join("nbd.sock");
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666, "the NBD socket's default mode");
    server.ok(
        "lun_create",
        json!({"name": "m", "kind": "mem", "size": 32 * MIB}),
    );
    server.ok("pool_create", json!({"name": "p", "luns": ["m"]}));
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 8 * MIB}),
    );
    server.ok(
        "host_create",
        json!({"name": "nobody", "addresses": ["unix:65534"]}),
    );
    server.ok("vpath_create", json!({"host": "nobody", "volume": "v"}));
    let url = format!("nbd+unix:///v?socket={}", socket.display());
    let (clean, text) = write_and_verify_as(65534, &url);
    assert!(clean, "uid 65534 could not use its volume:\n{text}");
}

#[test]
fn the_nbd_socket_mode_is_a_setting() {
    let server = Server::start_with(|dir| {
        vec![
            "--nbd-socket".into(),
            dir.join("nbd.sock").display().to_string(),
            "--nbd-unix-mode".into(),
            "0600".into(),
        ]
    });
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    let socket = server.dir.path().join("nbd.sock");
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    server.ok(
        "lun_create",
        json!({"name": "m", "kind": "mem", "size": 32 * MIB}),
    );
    server.ok("pool_create", json!({"name": "p", "luns": ["m"]}));
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 8 * MIB}),
    );
    server.ok(
        "host_create",
        json!({"name": "nobody", "addresses": ["unix:65534"]}),
    );
    server.ok("vpath_create", json!({"host": "nobody", "volume": "v"}));
    let url = format!("nbd+unix:///v?socket={}", socket.display());
    let (clean, text) = write_and_verify_as(65534, &url);
    assert!(!clean, "a 0600 socket let uid 65534 in:\n{text}");
    // Root (the test host's unix:0) still gets in.
    server.grant("v");
    write_and_verify(&url, &[(0x4f, 0, 65536)]);
}
