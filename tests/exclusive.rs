//! What a server owns, it owns alone: its state directory (one server per state dir, refused
//! with the holder's pid), its management socket (never taken over), and every LUN it opens
//! (a file LUN is claimed with qemu's image locks, so neither a second sds nor qemu can write
//! under it). A LUN is known by what it is, not by how its path is spelled, and its path is
//! stored absolute.

mod common;
use common::*;
use serde_json::json;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

/// The pattern tests write and read back: 1 MiB at 0 and 1 MiB at 3 MiB.
const PATTERN: &[(u8, u64, u64)] = &[(0x3c, 0, MIB), (0xa5, 3 * MIB, MIB)];

#[test]
fn a_second_server_on_the_same_state_dir_is_refused_naming_the_first() {
    let server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 8 * MIB}),
    );
    let url = server.url("v");
    write_and_verify(&url, PATTERN);
    let pid = server.pid().expect("pid").to_string();

    let text = serve_must_fail(
        &["--state-dir".as_ref(), server.state_dir.as_os_str()],
        "a second server started where the first one runs",
    );
    assert!(
        text.contains(&pid),
        "the refusal does not name the running server's pid {pid}:\n{text}"
    );
    assert!(
        text.contains(&server.state_dir.display().to_string()),
        "the refusal does not name the state dir:\n{text}"
    );

    // Another state dir but the first server's management socket: refused too, and the
    // socket is left alone.
    let other = server.dir.path().join("other-state");
    let text = serve_must_fail(
        &[
            "--state-dir".as_ref(),
            other.as_os_str(),
            "--rpc-socket".as_ref(),
            server.socket.as_os_str(),
        ],
        "a server took over another server's RPC socket",
    );
    assert!(
        text.contains(&server.socket.display().to_string()),
        "the refusal does not name the socket:\n{text}"
    );

    // The first server still answers on its socket, and its data is intact.
    assert_eq!(
        server.ok("volume_get_volumes", json!({"name": "v"}))[0]["name"],
        "v"
    );
    verify(&url, PATTERN);
}

#[test]
fn a_server_killed_with_sigkill_restarts_on_its_state_dir() {
    let mut server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 8 * MIB}),
    );
    write_and_verify(&server.url("v"), PATTERN);
    server.kill();
    server.spawn();
    let pid = server.pid().expect("pid");
    let holder = std::fs::read_to_string(server.state_dir.join("sds.lock")).unwrap_or_default();
    assert_eq!(
        holder.trim(),
        pid.to_string(),
        "the lock file does not name the restarted server"
    );
    verify(&server.url("v"), PATTERN);
}

#[test]
fn a_file_claimed_by_one_server_is_refused_to_another_and_to_qemu() {
    let first = Server::start();
    let second = Server::start();
    let shared = first.dir.path().join("shared.img");
    first.ok(
        "lun_create",
        json!({"name": "l1", "kind": "file", "path": shared, "size": 32 * MIB}),
    );
    match second.call(
        "lun_create",
        json!({"name": "l1", "kind": "file", "path": shared}),
    ) {
        Err((code, message)) => {
            assert_eq!(code, -32602, "{message}");
            assert!(message.contains("in use"), "{message}");
        }
        Ok(result) => panic!("a second server took a LUN the first one holds: {result}"),
    }
    assert_eq!(
        second
            .ok("lun_get_luns", json!({}))
            .as_array()
            .map(Vec::len),
        Some(0),
        "the refused LUN was recorded"
    );
    // qemu's own image locking sees the claim: qemu-io cannot open the file.
    require_tool("qemu-io");
    let output = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 512"])
        .arg(&shared)
        .output()
        .expect("qemu-io");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("lock"),
        "qemu-io opened a file sds holds:\n{text}"
    );

    // Released with the LUN: the second server may take it then.
    first.ok("lun_delete", json!({"name": "l1"}));
    second.ok(
        "lun_create",
        json!({"name": "l1", "kind": "file", "path": shared}),
    );
}

#[test]
fn a_lun_claimed_elsewhere_is_failed_at_start_up() {
    let first = Server::start();
    let mut second = Server::start();
    let shared = first.dir.path().join("shared.img");
    second.ok(
        "lun_create",
        json!({"name": "l1", "kind": "file", "path": shared, "size": 32 * MIB}),
    );
    assert!(second.stop(), "the second server did not stop cleanly");
    first.ok(
        "lun_create",
        json!({"name": "l1", "kind": "file", "path": shared}),
    );
    second.spawn();
    let lun = &second.ok("lun_get_luns", json!({"name": "l1"}))[0];
    assert_eq!(lun["state"], "failed", "{lun}");
    assert!(
        lun["reason"].as_str().unwrap_or("").contains("in use"),
        "{lun}"
    );
}

#[test]
fn one_file_by_two_spellings_a_symlink_or_a_hard_link_is_one_lun() {
    let server = Server::start();
    let dir = server.dir.path();
    std::fs::create_dir(dir.join("sub")).expect("mkdir");
    server.ok(
        "lun_create",
        json!({"name": "l1", "kind": "file", "path": dir.join("l1.img"), "size": 32 * MIB}),
    );
    std::os::unix::fs::symlink(dir.join("l1.img"), dir.join("link.img")).expect("symlink");
    std::fs::hard_link(dir.join("l1.img"), dir.join("hard.img")).expect("hard link");
    for (name, path) in [
        ("l2", dir.join("sub/../l1.img")),
        ("l3", dir.join("./sub/.././l1.img")),
        ("l4", dir.join("link.img")),
        ("l5", dir.join("hard.img")),
    ] {
        match server.call(
            "lun_create",
            json!({"name": name, "kind": "file", "path": path}),
        ) {
            Err((code, message)) => {
                assert_eq!(code, -32602, "{message}");
                assert!(
                    message.contains("is already LUN l1"),
                    "{}: {message}",
                    path.display()
                );
            }
            Ok(result) => panic!("{} became a second LUN: {result}", path.display()),
        }
    }
    assert_eq!(
        server
            .ok("lun_get_luns", json!({}))
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).expect("canonicalize")
}

#[test]
fn a_relative_lun_path_is_stored_absolute_and_survives_a_restart_from_elsewhere() {
    let mut server = Server::start();
    let (here, there) = (server.dir.path().join("a"), server.dir.path().join("b"));
    std::fs::create_dir_all(here.join("disks")).expect("mkdir");
    std::fs::create_dir_all(&there).expect("mkdir");
    assert!(server.stop(), "the server did not stop cleanly");
    server.cwd = Some(here.clone());
    server.spawn();
    let lun = server.ok(
        "lun_create",
        json!({"name": "rel", "kind": "file", "path": "disks/../disks/rel.img", "size": 32 * MIB}),
    );
    let absolute = canonical(&here).join("disks/rel.img");
    assert_eq!(lun["path"], json!(absolute), "{lun}");
    assert_eq!(
        server.ok("lun_get_luns", json!({"name": "rel"}))[0]["path"],
        json!(absolute)
    );
    server.ok("pool_create", json!({"name": "p", "luns": ["rel"]}));
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 8 * MIB}),
    );
    write_and_verify(&server.url("v"), PATTERN);
    assert!(server.stop(), "the server did not stop cleanly");

    server.cwd = Some(there);
    server.spawn();
    let lun = &server.ok("lun_get_luns", json!({"name": "rel"}))[0];
    assert_eq!(lun["state"], "online", "{lun}");
    verify(&server.url("v"), PATTERN);
}

#[test]
fn a_block_device_claimed_by_one_server_is_refused_to_another() {
    let first = Server::start();
    let second = Server::start();
    let loop_device = LoopDevice::attach(first.dir.path(), 48 * MIB);
    let device = loop_device.path.clone();
    first.ok(
        "lun_create",
        json!({"name": "loop", "kind": "blockdev", "path": device}),
    );
    match second.call(
        "lun_create",
        json!({"name": "loop", "kind": "blockdev", "path": device}),
    ) {
        Err((code, message)) => {
            assert_eq!(code, -32602, "{message}");
            assert!(message.contains("in use"), "{message}");
        }
        Ok(result) => panic!("a second server took a device the first one holds: {result}"),
    }
    // The kernel's claim: an O_EXCL open by anyone else is refused with EBUSY.
    let exclusive = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&device);
    assert_eq!(
        exclusive.map(|_| ()).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EBUSY)),
        "{device} is not held exclusively"
    );
}
