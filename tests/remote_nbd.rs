//! Remote NBD LUNs (`lun_create {kind: "nbd", uri}`): a pool over an export of another NBD
//! server, driven from the reactors. The remote arrays are qemu-nbd, and a second sds process
//! whose volume is the export (killed with SIGKILL and restarted while fio verifies through
//! the first).

mod common;

use common::{fio_nbd_verified_writes, qemu_io, require_tool, verify, write_and_verify, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// qemu-nbd serving a raw file on a Unix socket; killed when dropped.
struct QemuNbd {
    child: Child,
    socket: std::path::PathBuf,
}

impl QemuNbd {
    fn start(dir: &Path, size_bytes: u64) -> Self {
        require_tool("qemu-nbd");
        let image = dir.join("remote.raw");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size_bytes))
            .expect("image");
        let socket = dir.join("qemu-nbd.sock");
        Self::serve(&image, socket)
    }

    /// The same image served again on the same socket (after the old process is gone).
    fn restart(old: Self) -> Self {
        let dir = old.socket.parent().expect("dir").to_path_buf();
        let image = dir.join("remote.raw");
        let socket = old.socket.clone();
        drop(old);
        Self::serve(&image, socket)
    }

    /// qemu-nbd serving `image` on `socket`, once the socket exists (start and restart both).
    fn serve(image: &Path, socket: std::path::PathBuf) -> Self {
        let child = Command::new("qemu-nbd")
            .args([
                "--format",
                "raw",
                "--persistent",
                "--export-name",
                "disk",
                "--shared",
                "8",
                "--socket",
            ])
            .arg(&socket)
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-nbd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "qemu-nbd did not open its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, socket }
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///disk?socket={}", self.socket.display())
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until LUN `name`'s remote state (its `remote` object) satisfies `done`.
fn wait_remote(server: &Server, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    server.wait_lun(name, what, |lun| done(&lun["remote"]))
}

/// A pool over a qemu-nbd export (structured replies, holes, FUA, WRITE_ZEROES), on a server
/// with two reactors (a link each): data written through the first server's volume reads
/// back, `lun_get_luns` shows the links, and after a restart of the server (the LUN opened
/// again from its record) the data is still there; the server stops cleanly with its links.
#[test]
fn nbd_lun_over_qemu_nbd() {
    let mut server = Server::start_with(|_| vec!["--cores".into(), "0,1".into()]);
    let remote = QemuNbd::start(server.dir.path(), 64 * MIB);
    let created = server.ok(
        "lun_create",
        json!({"name": "q", "kind": "nbd", "uri": remote.uri()}),
    );
    assert_eq!(created["size"], 64 * MIB, "{created}");
    assert_eq!(created["block_size"], 512, "{created}");
    server.ok("pool_create", json!({"name": "p", "luns": ["q"]}));
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 32 * MIB}),
    );
    let url = server.url("v");
    write_and_verify(
        &url,
        &[
            (0x11, 0, 64 * 1024),
            (0x22, 5 * MIB, MIB),
            (0x33, 31 * MIB, 4096),
        ],
    );
    // Zeroes through the remote's WRITE_ZEROES read back as zeroes; the rest stays.
    let (clean, text) = qemu_io(&url, &["write -z 5M 64k".into(), "read -P 0 5M 64k".into()]);
    assert!(clean, "{text}");
    verify(&url, &[(0x22, 5 * MIB + 64 * 1024, MIB - 64 * 1024)]);
    let shown = wait_remote(&server, "q", "connected", |r| r["state"] == "connected");
    let remote_fields = &shown["remote"];
    assert_eq!(remote_fields["url"], remote.uri(), "{shown}");
    assert_eq!(remote_fields["links"], 2, "{shown}");
    assert_eq!(shown["kind"], "nbd", "{shown}");

    assert!(
        server.stop(),
        "the server did not stop cleanly:\n{}",
        server.log()
    );
    server.spawn();
    let shown = wait_remote(&server, "q", "connected after a restart", |r| {
        r["state"] == "connected" && r["links_connected"] == 2
    });
    assert_eq!(shown["pool"], "p", "{shown}");
    verify(
        &url,
        &[
            (0x11, 0, 64 * 1024),
            (0x22, 5 * MIB + 64 * 1024, 64 * 1024),
            (0x33, 31 * MIB, 4096),
        ],
    );
    assert!(
        server.stop(),
        "the server did not stop cleanly:\n{}",
        server.log()
    );
}

/// An array that stays away longer than `fail_after_ms` fails the LUN (its I/O fails at once,
/// no host waits for `timeout_ms`); when it comes back the LUN is online again by itself and
/// what was written before reads back.
#[test]
fn nbd_lun_fails_while_its_array_is_away_and_comes_back() {
    let server = Server::start();
    let mut remote = QemuNbd::start(server.dir.path(), 32 * MIB);
    server.ok(
        "lun_create",
        json!({"name": "q", "kind": "nbd", "uri": remote.uri(), "timeout_ms": 1000, "fail_after_ms": 1500}),
    );
    server.ok("pool_create", json!({"name": "p", "luns": ["q"]}));
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 16 * MIB}),
    );
    let url = server.url("v");
    write_and_verify(&url, &[(0x44, MIB, MIB)]);
    let (clean, text) = qemu_io(&url, &["flush".into()]);
    assert!(clean, "{text}");

    let _ = remote.child.kill();
    let _ = remote.child.wait();
    let failed = wait_remote(&server, "q", "failed", |r| r["state"] == "failed");
    assert_eq!(failed["state"], "failed", "{failed}");
    let started = Instant::now();
    let (clean, text) = qemu_io(&url, &["read 1M 4k".into()]);
    assert!(!clean, "a read of a failed LUN succeeded:\n{text}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a failed LUN's I/O must fail at once, not wait"
    );

    let _ = std::fs::remove_file(&remote.socket);
    remote = QemuNbd::restart(remote);
    let back = wait_remote(&server, "q", "connected again", |r| {
        r["state"] == "connected"
    });
    assert_eq!(back["state"], "online", "{back}");
    assert!(
        back["remote"]["reconnects"].as_u64().unwrap_or(0) >= 1,
        "{back}"
    );
    verify(&url, &[(0x44, MIB, MIB)]);

    // A server whose array is away again still stops cleanly (its links give up at once).
    drop(remote);
    wait_remote(&server, "q", "away again", |r| r["state"] != "connected");
    let mut server = server;
    assert!(
        server.stop(),
        "the server did not stop cleanly:\n{}",
        server.log()
    );
}

/// A second sds is the remote array: a pool over its volume; fio verifies through the first
/// sds while the second is killed with SIGKILL and restarted. Commands in flight wait for the
/// link to reconnect and are sent again: fio sees no error, every byte verifies, and the LUN
/// counts the reconnect.
#[test]
fn nbd_lun_over_remote_sds_survives_its_restart() {
    let mut array = Server::start();
    array.file_pool("ap", MIB);
    array.ok(
        "volume_create",
        json!({"name": "exp", "pool": "ap", "size": 40 * MIB}),
    );
    let export = array.url("exp");
    // Every extent of the export allocated and flushed first: a write the array acknowledged
    // but never flushed may be lost when it is killed (NBD's rule), and a write into an
    // allocated extent is not.
    let (clean, text) = qemu_io(&export, &["write -P 0x5a 0 40M".into(), "flush".into()]);
    assert!(clean, "{text}");

    let server = Server::start();
    server.ok(
        "lun_create",
        json!({"name": "r", "kind": "nbd", "uri": export, "timeout_ms": 60_000}),
    );
    server.ok(
        "pool_create",
        json!({"name": "p", "luns": ["r"], "extent_size": MIB}),
    );
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 24 * MIB}),
    );
    let url = server.url("v");
    wait_remote(&server, "r", "connected", |r| r["state"] == "connected");

    let dir = server.dir.path().to_path_buf();
    let fio_run = std::thread::spawn(move || {
        // Slow enough that the array is killed and back while fio writes.
        fio_nbd_verified_writes(&dir, "remote", &url, "16M", &["--rate=4m"])
    });
    // The array is killed once fio's writes are landing through the link (a few extents of
    // the volume allocated), not after a guessed time.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.allocated_extents("v") < 4 {
        assert!(
            Instant::now() < deadline && !fio_run.is_finished(),
            "fio wrote nothing through the remote LUN\nlog:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    array.kill();
    wait_remote(&server, "r", "reconnecting", |r| r["state"] != "connected");
    // The array stays away a moment so that fio's commands queue behind the link while it
    // reconnects: that they wait is the point, and it cannot be observed from outside (the
    // link was seen to notice the loss just above), so this one sleep is deliberate.
    std::thread::sleep(Duration::from_millis(500));
    array.spawn();
    let (ok, text) = fio_run.join().expect("fio thread");
    assert!(
        ok,
        "fio over the restarted array failed:\n{text}\nlog:\n{}",
        server.log()
    );
    let shown = wait_remote(&server, "r", "connected again", |r| {
        r["state"] == "connected"
    });
    assert!(
        shown["remote"]["reconnects"].as_u64().unwrap_or(0) >= 1,
        "{shown}"
    );
    assert_eq!(shown["errors"]["write"], 0, "{shown}");
    assert_eq!(shown["errors"]["read"], 0, "{shown}");
}

/// What `lun_create` refuses, and says why: a malformed uri, nothing listening, an export the
/// server does not have.
#[test]
fn bad_nbd_uris_are_refused_clearly() {
    let server = Server::start();
    let remote = QemuNbd::start(server.dir.path(), 16 * MIB);
    let refused = |uri: &str| {
        let (_, message) = server
            .call(
                "lun_create",
                json!({"name": "x", "kind": "nbd", "uri": uri}),
            )
            .expect_err(uri);
        message
    };
    assert!(
        refused("nbds://h/x").contains("scheme"),
        "{}",
        refused("nbds://h/x")
    );
    assert!(refused("nbd://h:0/x").contains("port"));
    let dead_port = common::free_port();
    let message = refused(&format!("nbd://127.0.0.1:{dead_port}/x"));
    assert!(message.contains("connect"), "{message}");
    let message = refused(&format!(
        "nbd+unix:///nope?socket={}",
        remote.socket.display()
    ));
    assert!(message.contains("nope"), "{message}");
    // Nothing was recorded.
    assert_eq!(server.ok("lun_get_luns", json!({})), json!([]));

    // A block size larger than the export's is the LUN's; iSCSI's parameters are refused.
    let created = server.ok(
        "lun_create",
        json!({"name": "big", "kind": "nbd", "uri": remote.uri(), "block_size": 4096}),
    );
    assert_eq!(created["block_size"], 4096, "{created}");
    let (_, message) = server
        .call(
            "lun_create",
            json!({"name": "y", "kind": "nbd", "uri": remote.uri(), "chap_user": "u"}),
        )
        .expect_err("chap on nbd");
    assert!(message.contains("chap_user"), "{message}");

    // One LUN per export; the command line: `sds lun create --kind nbd --uri`, `lun list`.
    let (_, message) = server
        .call(
            "lun_create",
            json!({"name": "y", "kind": "nbd", "uri": remote.uri()}),
        )
        .expect_err("the same export twice");
    assert!(
        message.contains("uri") && message.contains("big"),
        "{message}"
    );
    server.ok("lun_delete", json!({"name": "big"}));
    let output = server.cli(&[
        "lun",
        "create",
        "cli",
        "--kind",
        "nbd",
        "--uri",
        &remote.uri(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = server.cli(&["lun", "list"]);
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(listed.contains("cli") && listed.contains("nbd"), "{listed}");
}
