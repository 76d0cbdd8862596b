//! Synchronous mirrors through the real `sds` binary: a mirror over two volumes whose pools
//! stand on fault LUNs, written by fio (verify) and qemu-io through NBD while one leg's LUN
//! fails every I/O and then recovers: the host sees no error, the leg is degraded, the resync
//! runs under load and completes, and the legs are then byte-identical (split off and
//! compared over their whole content) — also when the server is killed (`kill -9`) in the
//! middle of the resync. And the control plane's refusals.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
/// The mirror's size (and each leg's).
const SIZE: u64 = 32 * MIB;

/// A file LUN `base{i}` under fault LUN `fl{i}`, pool `p{i}` on it, volume `leg{i}`; for i in
/// 0..legs.
fn legs_on_fault_luns(server: &Server, legs: usize) {
    for i in 0..legs {
        server.ok(
            "lun_create",
            json!({"name": format!("base{i}"), "kind": "file", "size": 64 * MIB, "block_size": 4096}),
        );
        server.ok(
            "lun_create",
            json!({"name": format!("fl{i}"), "kind": "fault", "base": format!("base{i}")}),
        );
        server.ok(
            "pool_create",
            json!({"name": format!("p{i}"), "luns": [format!("fl{i}")], "extent_size": MIB}),
        );
        server.ok(
            "volume_create",
            json!({"name": format!("leg{i}"), "pool": format!("p{i}"), "size": SIZE}),
        );
    }
}

fn mirror(server: &Server, name: &str) -> Value {
    server.ok("mirror_get_mirrors", json!({"name": name}))[0].clone()
}

fn leg_state(mirror: &Value, leg: &str) -> String {
    mirror["legs"]
        .as_array()
        .and_then(|legs| legs.iter().find(|l| l["volume"] == leg))
        .and_then(|l| l["state"].as_str())
        .unwrap_or("none")
        .to_string()
}

/// Waits (generously) until `done` holds for the mirror.
fn wait_for(server: &Server, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = mirror(server, name);
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "mirror {name} never became {what}: {m}\nlog:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fio_verify(dir: &Path, url: &str, name: &str, offset: u64, size: u64) -> (bool, String) {
    fio(
        dir,
        &[
            format!("--name={name}"),
            "--ioengine=nbd".into(),
            format!("--uri={url}"),
            "--rw=randwrite".into(),
            "--bsrange=4k-64k".into(),
            "--iodepth=8".into(),
            format!("--offset={offset}"),
            format!("--size={size}"),
            "--verify=crc32c".into(),
            "--do_verify=1".into(),
            "--verify_fatal=1".into(),
        ],
    )
}

/// Splits `leg` off mirror `name`, then reads the mirror (now its other leg only) and the
/// split leg in full over NBD and compares them byte for byte.
fn assert_legs_identical(server: &Server, name: &str, leg: &str) {
    let split = server.ok("mirror_split_leg", json!({"mirror": name, "leg": leg}));
    assert_eq!(leg_state(&split, leg), "none", "{split}");
    let dir = server.dir.path();
    let mut images = Vec::new();
    for volume in [name, leg] {
        let url = server.url(volume);
        let image = dir.join(format!("{volume}.img"));
        let (ok, text) = run_bounded(
            std::process::Command::new("qemu-img").args([
                "convert",
                "-f",
                "raw",
                "-O",
                "raw",
                &url,
                image.to_str().expect("path"),
            ]),
            Duration::from_secs(120),
        );
        assert!(ok, "qemu-img convert {url}: {text}");
        images.push(std::fs::read(&image).expect("image"));
    }
    assert_eq!(images[0].len() as u64, SIZE);
    assert_eq!(images[1].len() as u64, SIZE);
    if images[0] != images[1] {
        let first = images[0]
            .iter()
            .zip(&images[1])
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!("legs differ, first at byte {first}");
    }
}

/// Regions a dirty-region log file marks (its bitmap follows a 4 KiB header).
fn bits_on_disk(path: &Path) -> u64 {
    let bytes = std::fs::read(path).expect("the dirty-region log");
    bytes[4096..]
        .iter()
        .map(|b| u64::from(b.count_ones()))
        .sum()
}

#[test]
fn refusals_change_nothing() {
    let server = Server::start();
    legs_on_fault_luns(&server, 2);
    // A third volume in the same pool as leg0: shares its LUN.
    server.ok(
        "volume_create",
        json!({"name": "same", "pool": "p0", "size": SIZE}),
    );
    server.ok(
        "volume_create",
        json!({"name": "small", "pool": "p1", "size": SIZE / 2}),
    );
    let refused = |params: Value, why: &str| {
        let (_, message) = server
            .call("mirror_create", params.clone())
            .expect_err(&format!("mirror_create {params} must be refused"));
        assert!(message.contains(why), "{params}: {message}");
    };
    refused(
        json!({"name": "m", "legs": ["leg0", "same"]}),
        "disjoint LUNs",
    );
    refused(json!({"name": "m", "legs": ["leg0", "small"]}), "same size");
    refused(json!({"name": "m", "legs": ["leg0"]}), "2 to 3 legs");
    refused(
        json!({"name": "m", "legs": ["leg0", "nope"]}),
        "no volume nope",
    );
    refused(
        json!({"name": "leg0", "legs": ["leg0", "leg1"]}),
        "already exists",
    );
    // A volume with a snapshot shares its extents: not a leg (nor is the snapshot).
    server.ok(
        "volume_create",
        json!({"name": "snapped", "pool": "p1", "size": SIZE}),
    );
    server.ok(
        "snapshot_create",
        json!({"volume": "snapped", "name": "snap"}),
    );
    refused(json!({"name": "m", "legs": ["leg0", "snapped"]}), "shares");
    refused(json!({"name": "m", "legs": ["leg0", "snap"]}), "snapshot");
    server.grant("leg1");
    refused(
        json!({"name": "m", "legs": ["leg0", "leg1"]}),
        "virtual path",
    );
    assert_eq!(server.ok("mirror_get_mirrors", json!({})), json!([]));
    assert!(
        !server.state_dir.join("mirrors").exists()
            || std::fs::read_dir(server.state_dir.join("mirrors"))
                .expect("dir")
                .count()
                == 0
    );

    // A mirror: its legs are reserved.
    let vp = server.ok("vpath_get_vpaths", json!({"volume": "leg1"}))[0]["id"].clone();
    server.ok("vpath_delete", json!({"id": vp}));
    let m = server.ok(
        "mirror_create",
        json!({"name": "m", "legs": ["leg0", "leg1"]}),
    );
    assert_eq!(m["state"], "healthy", "{m}");
    for (method, params) in [
        ("vpath_create", json!({"host": TEST_HOST, "volume": "leg0"})),
        ("volume_delete", json!({"name": "leg1"})),
        ("volume_resize", json!({"name": "leg0", "size": 2 * SIZE})),
        ("volume_delete", json!({"name": "m"})),
        (
            "mirror_create",
            json!({"name": "m2", "legs": ["leg0", "same"]}),
        ),
        ("mirror_split_leg", json!({"mirror": "m", "leg": "same"})),
        ("mirror_add_leg", json!({"mirror": "m", "volume": "leg1"})),
    ] {
        assert!(
            server.call(method, params.clone()).is_err(),
            "{method} {params} must be refused"
        );
    }
    // The mirror is a volume hosts reach; its legs are listed.
    let volumes = server.ok("volume_get_volumes", json!({"name": "m"}));
    assert_eq!(volumes[0]["size"], SIZE);
    let listed = server.cli(&["mirror", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && text.contains("leg0") && text.contains("healthy"),
        "{text}"
    );
    // Deleting refuses while a VP points at it; then its legs are plain volumes again.
    server.grant("m");
    assert!(server.call("mirror_delete", json!({"name": "m"})).is_err());
    let vp = server.ok("vpath_get_vpaths", json!({"volume": "m"}))[0]["id"].clone();
    server.ok("vpath_delete", json!({"id": vp}));
    server.ok("mirror_delete", json!({"name": "m"}));
    server.ok("volume_delete", json!({"name": "leg1"}));
}

#[test]
fn fio_sees_no_error_through_a_leg_failure_and_the_resync() {
    let server = Server::start();
    legs_on_fault_luns(&server, 2);
    server.ok(
        "mirror_create",
        json!({"name": "m", "legs": ["leg0", "leg1"]}),
    );
    let url = server.url("m");
    write_and_verify(&url, &[(0x11, 0, 4 * MIB)]);

    // leg1's LUN fails every I/O while fio writes and verifies: no error reaches fio.
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl1", "io_type": "all", "mode": "fail"}),
    );
    let (ok, text) = fio_verify(server.dir.path(), &url, "degraded", 4 * MIB, 12 * MIB);
    assert!(ok, "fio on the degraded mirror failed:\n{text}");
    let m = mirror(&server, "m");
    assert_eq!(leg_state(&m, "leg1"), "degraded", "{m}");
    assert_eq!(leg_state(&m, "leg0"), "healthy", "{m}");
    assert!(m["dirty_regions"].as_u64().unwrap_or(0) >= 12, "{m}");
    verify(&url, &[(0x11, 0, 4 * MIB)]);

    // The LUN recovers: the control cycle starts the resync while fio keeps writing.
    let dir = server.dir.path().to_path_buf();
    let load_url = url.clone();
    let load =
        std::thread::spawn(move || fio_verify(&dir, &load_url, "resync", 16 * MIB, 16 * MIB));
    std::thread::sleep(Duration::from_millis(200));
    server.ok("lun_clear_fault", json!({"name": "fl1"}));
    let (ok, text) = load.join().expect("fio thread");
    assert!(ok, "fio during the resync failed:\n{text}");
    let m = wait_for(&server, "m", "healthy", |m| m["state"] == "healthy");
    assert!(m["resync"]["done_bytes"].as_u64().unwrap_or(0) > 0, "{m}");
    assert!(server.log().contains("resync done"), "{}", server.log());
    // `sds mirror wait` returns at once on a healthy mirror.
    let waited = server.cli(&["mirror", "wait", "m", "--timeout", "60"]);
    assert!(waited.status.success(), "{waited:?}");
    verify(&url, &[(0x11, 0, 4 * MIB)]);
    let stats = server.ok("bdev_get_iostat", json!({"name": "m"}));
    assert_eq!(stats["bdevs"][0]["num_errors"], 0, "{stats}");
    // Unplug the VP before splitting: the comparison reads each leg through its own path.
    let vp = server.ok("vpath_get_vpaths", json!({"volume": "m"}))[0]["id"].clone();
    server.ok("vpath_delete", json!({"id": vp}));
    assert_legs_identical(&server, "m", "leg1");
}

#[test]
fn kill_during_resync_resumes_and_the_legs_end_identical() {
    let server = Server::start();
    let mut server = server;
    legs_on_fault_luns(&server, 2);
    server.ok(
        "mirror_create",
        json!({"name": "m", "legs": ["leg0", "leg1"]}),
    );
    let url = server.url("m");
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl1", "io_type": "all", "mode": "fail"}),
    );
    // Every region of the mirror is written while leg1 is out.
    let writes: Vec<(u8, u64, u64)> = (0..SIZE / MIB)
        .map(|i| (0x20 + i as u8, i * MIB + 4 * KIB, 64 * KIB))
        .collect();
    write_and_verify(&url, &writes);
    let m = mirror(&server, "m");
    assert_eq!(leg_state(&m, "leg1"), "degraded", "{m}");
    assert_eq!(m["dirty_regions"], SIZE / MIB, "{m}");
    // The LUN comes back slow: the resync crawls, and is killed in the middle.
    server.ok(
        "lun_inject_fault",
        json!({"name": "fl1", "io_type": "write", "mode": "delay", "delay_us": 100_000}),
    );
    // Killed once the log on disk shows part of the copy done, while it still runs.
    let log = server
        .state_dir
        .join("mirrors")
        .join(format!("{}.dirty", m["uuid"].as_str().expect("uuid")));
    let deadline = Instant::now() + Duration::from_secs(60);
    let left = loop {
        let left = bits_on_disk(&log);
        if left < SIZE / MIB {
            break left;
        }
        assert!(
            Instant::now() < deadline,
            "no resync progress reached {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let m = mirror(&server, "m");
    assert_eq!(m["resync"]["running"], true, "{m}");
    assert!(left > 0, "the resync ended before the kill: {m}");
    server.kill();
    // What the restart starts from: the log as the killed server left it.
    let left = bits_on_disk(&log);
    assert!(left > 0 && left < SIZE / MIB, "{left} regions left");
    server.spawn();
    // Restarted: the resync resumes from the log and completes.
    let dir = server.dir.path().to_path_buf();
    let load_url = url.clone();
    let load = std::thread::spawn(move || fio_verify(&dir, &load_url, "after", 8 * MIB, 8 * MIB));
    // `sds mirror wait` (not on a terminal: plain progress lines) returns once it is healthy.
    let waited = server.cli(&["mirror", "wait", "m", "--timeout", "120"]);
    let said = String::from_utf8_lossy(&waited.stdout);
    assert!(
        waited.status.success() && said.contains("mirror m is healthy"),
        "{said}{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let (ok, text) = load.join().expect("fio thread");
    assert!(ok, "fio after the restart failed:\n{text}");
    wait_for(&server, "m", "healthy", |m| m["state"] == "healthy");
    let untouched: Vec<(u8, u64, u64)> = writes
        .iter()
        .copied()
        .filter(|&(_, offset, _)| !(8 * MIB..16 * MIB).contains(&offset))
        .collect();
    verify(&url, &untouched);
    let vp = server.ok("vpath_get_vpaths", json!({"volume": "m"}))[0]["id"].clone();
    server.ok("vpath_delete", json!({"id": vp}));
    assert_legs_identical(&server, "m", "leg1");
}

#[test]
fn add_leg_and_replace_leg_make_full_copies_under_writes() {
    let server = Server::start();
    legs_on_fault_luns(&server, 4);
    let url = server.url("leg0");
    write_and_verify(&url, &[(0x71, 0, 2 * MIB), (0x72, 20 * MIB, 64 * KIB)]);
    // A VP on the volume is refused; without it, the volume becomes leg 0 of mirror m.
    assert!(server
        .call(
            "mirror_add_leg",
            json!({"mirror": "leg0", "volume": "leg1", "name": "m"})
        )
        .is_err());
    let vp = server.ok("vpath_get_vpaths", json!({"volume": "leg0"}))[0]["id"].clone();
    server.ok("vpath_delete", json!({"id": vp}));
    server.ok(
        "mirror_add_leg",
        json!({"mirror": "leg0", "volume": "leg1", "name": "m"}),
    );
    wait_for(&server, "m", "healthy", |m| m["state"] == "healthy");
    // A third leg, then a replacement of the second: full copies each time.
    server.ok("mirror_add_leg", json!({"mirror": "m", "volume": "leg2"}));
    wait_for(&server, "m", "healthy", |m| m["state"] == "healthy");
    let m = mirror(&server, "m");
    assert_eq!(m["legs"].as_array().map(Vec::len), Some(3), "{m}");
    verify(
        &server.url("m"),
        &[(0x71, 0, 2 * MIB), (0x72, 20 * MIB, 64 * KIB)],
    );
    // leg2 replaced by leg3 while a client writes: leg2 is a plain volume again, leg3 copied.
    let url = server.url("m");
    let writer = std::thread::spawn(move || {
        write_and_verify(
            &url,
            &[(0x73, 8 * MIB, 1024 * KIB), (0x74, 30 * MIB, 4 * KIB)],
        )
    });
    let m = server.ok(
        "mirror_replace_leg",
        json!({"mirror": "m", "leg": "leg2", "volume": "leg3"}),
    );
    assert_eq!(leg_state(&m, "leg2"), "none", "{m}");
    writer.join().expect("writer");
    wait_for(&server, "m", "healthy", |m| m["state"] == "healthy");
    assert!(server
        .call(
            "mirror_replace_leg",
            json!({"mirror": "m", "leg": "leg2", "volume": "leg3"})
        )
        .is_err());
    let all = [
        (0x71, 0, 2 * MIB),
        (0x72, 20 * MIB, 64 * KIB),
        (0x73, 8 * MIB, 1024 * KIB),
        (0x74, 30 * MIB, 4 * KIB),
    ];
    verify(&server.url("m"), &all);
    let vp = server.ok("vpath_get_vpaths", json!({"volume": "m"}))[0]["id"].clone();
    server.ok("vpath_delete", json!({"id": vp}));
    server.ok("mirror_split_leg", json!({"mirror": "m", "leg": "leg1"}));
    assert_legs_identical(&server, "m", "leg3");
    verify(&server.url("leg1"), &all);
}

#[test]
fn kill_during_writes_to_a_healthy_mirror_leaves_legs_that_resync_identical() {
    let mut server = Server::start();
    legs_on_fault_luns(&server, 2);
    server.ok(
        "mirror_create",
        json!({"name": "m", "legs": ["leg0", "leg1"]}),
    );
    let url = server.url("m");
    write_and_verify(&url, &[(0x51, 0, 4 * MIB)]);
    // fio writes at random over the whole mirror; the server dies under it.
    let dir = server.dir.path().to_path_buf();
    let load_url = url.clone();
    let load = std::thread::spawn(move || {
        fio(
            &dir,
            &[
                "--name=crash".into(),
                "--ioengine=nbd".into(),
                format!("--uri={load_url}"),
                "--rw=randwrite".into(),
                "--bsrange=4k-256k".into(),
                "--iodepth=16".into(),
                "--time_based".into(),
                "--runtime=30".into(),
                format!("--offset={}", 4 * MIB),
            ],
        )
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while mirror(&server, "m")["dirty_regions"].as_u64().unwrap_or(0) < 8 {
        assert!(Instant::now() < deadline, "fio never dirtied the log");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    let _ = load.join();
    // The write-intent log names every region a write may have reached one leg only: the
    // restart copies them from the first leg, and the legs end identical.
    server.spawn();
    wait_for(&server, "m", "healthy", |m| {
        m["state"] == "healthy" && m["resync"]["running"] == false
    });
    verify(&url, &[(0x51, 0, 4 * MIB)]);
    let vp = server.ok("vpath_get_vpaths", json!({"volume": "m"}))[0]["id"].clone();
    server.ok("vpath_delete", json!({"id": vp}));
    assert_legs_identical(&server, "m", "leg1");
}
