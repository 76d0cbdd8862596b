//! The iSCSI LUN driver against a real foreign array: tgtd (Debian's tgt), started here on a
//! free portal port and its own control port, with a file-backed LUN in the test's temp dir.
//! A pool over a tgtd LUN and a local file, fio verify over NBD while tgtd is killed and
//! restarted, data verifying afterwards and across a restart of sds; an outage past the
//! LUN's timeout and `fail_after_ms`; clear errors for a bad URL, an unreachable portal, an
//! unknown target.

mod common;

use common::{fio, free_port, require_tool, run_bounded, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

const TARGET_IQN: &str = "iqn.2026-11.test.sds:array";
const LUN_BYTES: u64 = 128 * 1024 * 1024;

/// A tgtd serving one file-backed LUN on 127.0.0.1:`port`.
struct Tgtd {
    port: u16,
    control_port: u16,
    image: PathBuf,
    child: Option<Child>,
}

impl Tgtd {
    fn start(dir: &Path) -> Self {
        require_tool("tgtd");
        require_tool("tgtadm");
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let control_port = 1000
            + (std::process::id() % 400) as u16 * 16
            + NEXT.fetch_add(1, Ordering::Relaxed) % 16;
        let image = dir.join("array.img");
        let file = std::fs::File::create(&image).expect("image");
        file.set_len(LUN_BYTES).expect("size the image");
        let mut tgtd = Self {
            port: free_port(),
            control_port,
            image,
            child: None,
        };
        tgtd.spawn();
        tgtd
    }

    fn tgtadm(&self, args: &[&str]) -> (bool, String) {
        let control = self.control_port.to_string();
        let mut command = Command::new("tgtadm");
        command.args(["-C", &control, "--lld", "iscsi"]).args(args);
        run_bounded(&mut command, Duration::from_secs(10))
    }

    /// Starts tgtd (again, on the same port and file) and configures the target and LUN.
    fn spawn(&mut self) {
        let child = Command::new("tgtd")
            .args([
                "-f",
                "--iscsi",
                &format!("portal=127.0.0.1:{}", self.port),
                "-C",
                &self.control_port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tgtd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, _) = self.tgtadm(&["--op", "show", "--mode", "target"]);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "tgtd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let image = self.image.to_string_lossy().into_owned();
        for args in [
            vec![
                "--op", "new", "--mode", "target", "--tid", "1", "-T", TARGET_IQN,
            ],
            vec![
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                "1",
                "-b",
                &image,
            ],
            vec![
                "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
            ],
        ] {
            let (ok, text) = self.tgtadm(&args);
            assert!(ok, "tgtadm {args:?}: {text}");
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("iscsi://127.0.0.1:{}/{TARGET_IQN}/1", self.port)
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn remote(server: &Server, lun: &str) -> Value {
    let luns = server.ok("lun_get_luns", json!({ "name": lun }));
    luns[0]["remote"].clone()
}

/// Waits until `check` holds, for at most `seconds`.
fn wait_until(seconds: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fio_args(url: &str, verify_only: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--name=remote",
        "--ioengine=nbd",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--size=96M",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--randseed=1212",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    args.push(format!("--uri={url}"));
    if verify_only {
        args.push("--verify_only=1".into());
    }
    args
}

/// A volume over a pool of a tgtd LUN and a local file, written and verified by fio over NBD
/// while tgtd is killed and restarted: no error at all (every command in flight is kept and
/// sent again after the reconnect), the reconnects are shown, and the data verifies again
/// after sds itself restarts.
#[test]
fn fio_verify_survives_a_tgtd_restart_mid_run() {
    require_tool("fio");
    let mut server = Server::start();
    let mut tgtd = Tgtd::start(server.dir.path());
    let created = server.ok(
        "lun_create",
        json!({"name": "arr0", "kind": "iscsi", "url": tgtd.url(), "timeout_ms": 20000}),
    );
    assert_eq!(created["size"], LUN_BYTES);
    assert_eq!(created["block_size"], 512);
    assert!(created["remote"].get("chap_secret").is_none());
    // The links connect on the reactors, right after the blocking connection logged in.
    wait_until(20, "the links to connect", || {
        remote(&server, "arr0")["state"] == "connected"
    });
    let local = server.dir.path().join("local.img");
    server.ok(
        "lun_create",
        json!({"name": "local0", "kind": "file", "path": local, "size": LUN_BYTES}),
    );
    server.ok(
        "pool_create",
        json!({"name": "p0", "luns": ["arr0", "local0"], "extent_size": 1048576}),
    );
    server.ok(
        "volume_create",
        json!({"name": "v0", "pool": "p0", "size": 2 * LUN_BYTES - 32 * 1048576}),
    );
    let url = server.url("v0");
    let dir = server.dir.path().to_path_buf();
    let args = fio_args(&url, false);
    let run = std::thread::spawn(move || fio(&dir, &args));
    std::thread::sleep(Duration::from_millis(1500));
    tgtd.kill();
    std::thread::sleep(Duration::from_secs(2));
    tgtd.spawn();
    let (ok, text) = run.join().expect("fio thread");
    assert!(ok, "fio over the restart: {text}");
    let remote_now = remote(&server, "arr0");
    assert!(
        remote_now["reconnects"].as_u64().unwrap_or(0) >= 1,
        "{remote_now}"
    );
    wait_until(20, "the links to connect", || {
        remote(&server, "arr0")["state"] == "connected"
    });
    let luns = server.ok("lun_get_luns", json!({"name": "arr0"}));
    assert_eq!(
        luns[0]["errors"],
        json!({"read": 0, "write": 0, "flush": 0})
    );
    let listed = server.cli(&["lun", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("RECONNECTS") && listed.contains(&tgtd.url()),
        "{listed}"
    );

    // sds restarts: the LUN opens from its record, and every byte verifies.
    assert!(server.stop(), "sds stops cleanly with remote LUNs");
    server.spawn();
    let (ok, text) = fio(server.dir.path(), &fio_args(&url, true));
    assert!(ok, "verify after the sds restart: {text}");
}

/// An array down longer than the LUN's timeout: I/O fails (EIO) once its timeout passes, the
/// LUN is failed after `fail_after_ms`; with the array back it comes online by itself and I/O
/// works again.
#[test]
fn an_outage_past_the_timeout_fails_io_and_the_lun_recovers() {
    require_tool("qemu-io");
    let server = Server::start();
    let mut tgtd = Tgtd::start(server.dir.path());
    server.ok(
        "lun_create",
        json!({"name": "arr0", "kind": "iscsi", "url": tgtd.url(),
               "timeout_ms": 1000, "fail_after_ms": 2000}),
    );
    server.ok("pool_create", json!({"name": "p0", "luns": ["arr0"]}));
    server.ok(
        "volume_create",
        json!({"name": "v0", "pool": "p0", "size": 64 * 1048576}),
    );
    let url = server.url("v0");
    common::write_and_verify(&url, &[(0x5a, 0, 1048576)]);
    tgtd.kill();
    let (ok, text) = common::qemu_io(&url, &["write -P 0x77 0 64k".to_string()]);
    assert!(
        !ok || text.contains("error"),
        "a write with the array down: {text}"
    );
    wait_until(20, "the LUN to fail", || {
        server.ok("lun_get_luns", json!({"name": "arr0"}))[0]["state"] == "failed"
    });
    assert_eq!(remote(&server, "arr0")["state"], "failed");
    tgtd.spawn();
    wait_until(30, "the LUN to come back", || {
        server.ok("lun_get_luns", json!({"name": "arr0"}))[0]["state"] == "online"
    });
    common::write_and_verify(&url, &[(0x6b, 1048576, 1048576)]);
    common::verify(&url, &[(0x5a, 0, 65536)]);
    assert!(remote(&server, "arr0")["timeouts"].as_u64().unwrap_or(0) >= 1);
}

/// The array's LUN resized under sds: a larger one is shown as `array_size` (the LUN keeps its
/// size), a smaller one fails the LUN, and the LUN comes back when the array's is large enough
/// again. (sds asks the array its size every `REMOTE_CAPACITY_CHECK_MS`, 10 s.)
#[test]
fn a_resized_array_lun_is_noticed() {
    let server = Server::start();
    let mut tgtd = Tgtd::start(server.dir.path());
    server.ok(
        "lun_create",
        json!({"name": "arr0", "kind": "iscsi", "url": tgtd.url()}),
    );
    wait_until(20, "the links to connect", || {
        remote(&server, "arr0")["state"] == "connected"
    });
    let resize = |tgtd: &mut Tgtd, size_bytes: u64| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&tgtd.image)
            .expect("image");
        file.set_len(size_bytes).expect("resize");
        // tgtd reads a backing file's size when the LUN is added: add it again.
        let image = tgtd.image.to_string_lossy().into_owned();
        let (ok, text) = tgtd.tgtadm(&[
            "--op",
            "delete",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
        ]);
        assert!(ok, "{text}");
        let (ok, text) = tgtd.tgtadm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            &image,
        ]);
        assert!(ok, "{text}");
    };
    resize(&mut tgtd, 2 * LUN_BYTES);
    wait_until(30, "the larger size to show", || {
        remote(&server, "arr0")["array_size"] == 2 * LUN_BYTES
    });
    let luns = server.ok("lun_get_luns", json!({"name": "arr0"}));
    assert_eq!(luns[0]["size"], LUN_BYTES, "the LUN keeps its size");
    assert_eq!(luns[0]["state"], "online");
    resize(&mut tgtd, LUN_BYTES / 2);
    wait_until(30, "the LUN to fail", || {
        server.ok("lun_get_luns", json!({"name": "arr0"}))[0]["state"] == "failed"
    });
}

/// Creating an iSCSI LUN that cannot be had is a clear -32602 error on `url`.
#[test]
fn bad_urls_and_unreachable_arrays_are_refused_clearly() {
    let server = Server::start();
    let tgtd = Tgtd::start(server.dir.path());
    let refused = |params: Value| {
        server
            .call("lun_create", params)
            .expect_err("must be refused")
    };
    let (code, message) = refused(json!({"name": "a", "kind": "iscsi", "url": "http://x/y/0"}));
    assert_eq!(code, -32602);
    assert!(message.starts_with("url:"), "{message}");
    let closed = free_port();
    let (code, message) = refused(json!({"name": "a", "kind": "iscsi", "timeout_ms": 1000,
        "url": format!("iscsi://127.0.0.1:{closed}/{TARGET_IQN}/1")}));
    assert_eq!(code, -32602);
    assert!(message.contains("cannot reach"), "{message}");
    let (code, message) = refused(json!({"name": "a", "kind": "iscsi", "timeout_ms": 2000,
        "url": format!("iscsi://127.0.0.1:{}/iqn.2026-11.test:nobody/1", tgtd.port)}));
    assert_eq!(code, -32602);
    assert!(message.contains("login"), "{message}");
    let (code, message) = refused(json!({"name": "a", "kind": "iscsi", "url": tgtd.url(),
        "chap_user": "only-the-user"}));
    assert_eq!(code, -32602);
    assert!(message.contains("chap"), "{message}");
    let (_, message) =
        refused(json!({"name": "a", "kind": "iscsi", "url": tgtd.url(), "size": 4096}));
    assert!(message.starts_with("size:"), "{message}");
    let (_, message) = refused(json!({"name": "a", "kind": "iscsi", "url": tgtd.url(),
        "block_size": 4096}));
    assert!(message.contains("block_size"), "{message}");
    assert!(server
        .ok("lun_get_luns", json!({}))
        .as_array()
        .is_some_and(Vec::is_empty));
}
