//! Snapshots and clones through the real server and real NBD clients (qemu-io, nbdcopy, fio):
//! point-in-time content under load, clones that diverge, exact space accounting whatever
//! the order of deletion, restart and `kill -9`, and offline revert.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const EXTENT_BYTES: u64 = 64 * KIB;
const VOLUME_BYTES: u64 = 8 * MIB;

fn setup() -> Server {
    let server = Server::start();
    server.file_pool("p", EXTENT_BYTES);
    server
}

fn create_volume(server: &Server, name: &str) {
    server.ok(
        "volume_create",
        json!({"name": name, "pool": "p", "size": VOLUME_BYTES}),
    );
}

/// The NBD URL of `name` through a read-only path (what a snapshot accepts).
fn ro_url(server: &Server, name: &str) -> String {
    let existing = server.ok(
        "vpath_get_vpaths",
        json!({"host": TEST_HOST, "volume": name}),
    );
    if existing[0]["id"].as_u64().is_none() {
        server.ok(
            "vpath_create",
            json!({"host": TEST_HOST, "volume": name, "mode": "ro"}),
        );
    }
    server.url_without_grant(name)
}

/// The whole content of `name`, read with nbdcopy through a read-only path.
fn content(server: &Server, name: &str) -> Vec<u8> {
    require_tool("nbdcopy");
    let url = ro_url(server, name);
    let out = server.dir.path().join(format!("{name}.img"));
    let _ = std::fs::remove_file(&out);
    let output = Command::new("nbdcopy")
        .arg(&url)
        .arg(&out)
        .output()
        .expect("nbdcopy");
    assert!(
        output.status.success(),
        "nbdcopy {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(&out).expect("read the copy")
}

/// Writes `pattern` over `len` bytes at `offset` of writable volume `name` (rw path).
fn fill(server: &Server, name: &str, pattern: u8, offset: u64, len: u64) {
    let (clean, text) = qemu_io(
        &server.url(name),
        &[format!("write -P {pattern} {offset} {len}")],
    );
    assert!(clean, "write to {name}: {text}");
}

fn pattern(bytes: &[u8], offset: u64, len: u64, value: u8) -> bool {
    bytes[offset as usize..(offset + len) as usize]
        .iter()
        .all(|&b| b == value)
}

fn free_extents(server: &Server) -> u64 {
    server.ok("pool_get_pools", json!({"name": "p"}))[0]["free_extents"]
        .as_u64()
        .expect("free_extents")
}

fn volume(server: &Server, name: &str) -> Value {
    server.ok("volume_get_volumes", json!({"name": name}))[0].clone()
}

/// Calls `method` until it stops failing because a client that just left still has the
/// volume open (the server sees the disconnect a moment later).
fn call_when_closed(server: &Server, method: &str, params: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match server.call(method, params.clone()) {
            Ok(result) => return result,
            Err((_, message)) if message.contains("open by") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((code, message)) => panic!("{method} {params}: {message} ({code})"),
        }
    }
}

/// Deletes volume, snapshot or clone `name` (its paths with it).
fn delete(server: &Server, name: &str) {
    call_when_closed(server, "volume_delete", json!({"name": name}));
}

#[test]
fn a_snapshot_taken_under_fio_keeps_its_point_in_time() {
    let server = setup();
    create_volume(&server, "v");
    fill(&server, "v", 0x11, 0, VOLUME_BYTES);
    let url = server.url("v");
    let dir = server.dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        fio(
            &dir,
            &[
                "--name=under-snapshot".into(),
                "--ioengine=nbd".into(),
                format!("--uri={url}"),
                "--rw=randwrite".into(),
                "--bsrange=4k-128k".into(),
                "--iodepth=8".into(),
                format!("--size={VOLUME_BYTES}"),
                "--time_based=1".into(),
                "--runtime=3".into(),
            ],
        )
    });
    // Take the snapshot once fio is writing (its start-up takes a while on a loaded machine).
    let writes = |server: &Server| {
        server.ok("bdev_get_iostat", json!({"name": "v"}))["bdevs"][0]["num_write_ops"]
            .as_u64()
            .expect("num_write_ops")
    };
    let before = writes(&server);
    let deadline = Instant::now() + Duration::from_secs(30);
    while writes(&server) < before + 200 {
        assert!(Instant::now() < deadline, "fio wrote nothing in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let snapshot = server.ok("snapshot_create", json!({"volume": "v", "name": "s1"}));
    assert_eq!(snapshot["volume"], "v", "{snapshot}");
    let listed = volume(&server, "s1");
    assert_eq!(listed["snapshot_of"], "v", "{listed}");
    assert_eq!(listed["read_only"], true, "{listed}");
    // Right after creation, with fio still writing to the origin.
    let first = content(&server, "s1");
    let (ok, text) = writer.join().expect("fio thread");
    assert!(ok, "fio on the origin failed:\n{text}");
    // Everything the origin holds is rewritten: the snapshot must not change.
    fill(&server, "v", 0x22, 0, VOLUME_BYTES);
    let second = content(&server, "s1");
    assert!(first == second, "the snapshot changed after it was taken");
    assert!(
        !pattern(&first, 0, VOLUME_BYTES, 0x22),
        "the snapshot shows writes made after it"
    );
    assert!(
        !pattern(&first, 0, VOLUME_BYTES, 0x11),
        "fio had written nothing when the snapshot was taken: the test proves nothing"
    );

    // A quiet point in time: exactly the origin's content then.
    server.ok("snapshot_create", json!({"volume": "v", "name": "s2"}));
    fill(&server, "v", 0x33, 0, VOLUME_BYTES / 2);
    let s2 = content(&server, "s2");
    assert!(pattern(&s2, 0, VOLUME_BYTES, 0x22), "s2 is not v as it was");
    let v = content(&server, "v");
    assert!(pattern(&v, 0, VOLUME_BYTES / 2, 0x33));
    assert!(pattern(&v, VOLUME_BYTES / 2, VOLUME_BYTES / 2, 0x22));
    // The unwritten half is shared between v and s2 (and nothing of v is shared with s1).
    assert_eq!(volume(&server, "v")["shared"], VOLUME_BYTES / 2);
    assert_eq!(volume(&server, "s2")["shared"], VOLUME_BYTES / 2);
    let listed = server.ok("snapshot_get_snapshots", json!({"volume": "v"}));
    let names: BTreeSet<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["s1", "s2"]), "{listed}");

    // Read-only: no read-write path, and a write through the read-only one fails.
    let refused = server
        .call(
            "vpath_create",
            json!({"host": TEST_HOST, "volume": "s3-none"}),
        )
        .expect_err("no such volume");
    assert!(refused.1.contains("no volume"), "{refused:?}");
    server.ok(
        "vpath_delete",
        json!({"id": server.ok("vpath_get_vpaths", json!({"volume": "s2"}))[0]["id"]}),
    );
    let refused = server
        .call("vpath_create", json!({"host": TEST_HOST, "volume": "s2"}))
        .expect_err("a read-write path to a snapshot");
    assert!(refused.1.contains("read-only"), "{refused:?}");
    let (clean, text) = qemu_io(&ro_url(&server, "s2"), &["write -P 9 0 4k".to_string()]);
    assert!(!clean, "a write to a snapshot succeeded: {text}");
    assert!(pattern(&content(&server, "s2"), 0, 4 * KIB, 0x22));
    // A snapshot of a snapshot is refused (clone it instead); so is resizing one.
    assert!(server
        .call("snapshot_create", json!({"volume": "s2", "name": "s3"}))
        .is_err());
    assert!(server
        .call(
            "volume_resize",
            json!({"name": "s2", "size": 2 * VOLUME_BYTES})
        )
        .is_err());
}

#[test]
fn a_clone_diverges_without_touching_its_snapshot_or_origin() {
    let server = setup();
    create_volume(&server, "v");
    fill(&server, "v", 0x41, 0, VOLUME_BYTES);
    server.ok("snapshot_create", json!({"volume": "v", "name": "s"}));
    let clone = server.ok("clone_create", json!({"snapshot": "s", "name": "c"}));
    assert_eq!(clone["clone_of"], "s", "{clone}");
    assert_eq!(clone["shared"], VOLUME_BYTES, "{clone}");
    fill(&server, "c", 0x42, 0, MIB);
    fill(&server, "v", 0x43, 2 * MIB, MIB);
    let c = content(&server, "c");
    assert!(pattern(&c, 0, MIB, 0x42));
    assert!(
        pattern(&c, MIB, VOLUME_BYTES - MIB, 0x41),
        "the clone sees the origin's write"
    );
    let s = content(&server, "s");
    assert!(pattern(&s, 0, VOLUME_BYTES, 0x41), "the snapshot changed");
    let v = content(&server, "v");
    assert!(
        pattern(&v, 0, 2 * MIB, 0x41),
        "the origin sees the clone's write"
    );
    assert!(pattern(&v, 2 * MIB, MIB, 0x43));
    // A clone of a clone's snapshot looks through both.
    server.ok("snapshot_create", json!({"volume": "c", "name": "cs"}));
    server.ok("clone_create", json!({"snapshot": "cs", "name": "cc"}));
    fill(&server, "cc", 0x44, 4 * MIB, 64 * KIB);
    let cc = content(&server, "cc");
    assert!(pattern(&cc, 0, MIB, 0x42));
    assert!(pattern(&cc, MIB, 3 * MIB, 0x41));
    assert!(pattern(&cc, 4 * MIB, 64 * KIB, 0x44));
    assert!(pattern(&content(&server, "c"), 4 * MIB, 64 * KIB, 0x41));
}

/// The tables of the three volumes below, as sets of physical extents: "e" the origin's
/// first ones, "n" the origin's copies, "m" the clone's copies.
fn model_tables() -> BTreeMap<&'static str, BTreeSet<String>> {
    let extents = |prefix: &str, range: std::ops::Range<u64>| -> BTreeSet<String> {
        range.map(|i| format!("{prefix}{i}")).collect()
    };
    let per_mib = MIB / EXTENT_BYTES;
    let mut origin = extents("n", 0..per_mib);
    origin.extend(extents("e", per_mib..4 * per_mib));
    let snapshot = extents("e", 0..4 * per_mib);
    let mut clone = extents("e", 0..2 * per_mib);
    clone.extend(extents("m", 2 * per_mib..3 * per_mib));
    clone.extend(extents("e", 3 * per_mib..4 * per_mib));
    BTreeMap::from([("origin", origin), ("snapshot", snapshot), ("clone", clone)])
}

#[test]
fn deleting_in_every_order_frees_exactly_the_unshared_extents() {
    let server = setup();
    let orders: [[&str; 3]; 6] = [
        ["origin", "snapshot", "clone"],
        ["origin", "clone", "snapshot"],
        ["snapshot", "origin", "clone"],
        ["snapshot", "clone", "origin"],
        ["clone", "origin", "snapshot"],
        ["clone", "snapshot", "origin"],
    ];
    for (round, order) in orders.iter().enumerate() {
        let start = free_extents(&server);
        let names = BTreeMap::from([
            ("origin", format!("v{round}")),
            ("snapshot", format!("s{round}")),
            ("clone", format!("c{round}")),
        ]);
        let per_mib = MIB / EXTENT_BYTES;
        create_volume(&server, &names["origin"]);
        fill(&server, &names["origin"], 1, 0, 4 * MIB);
        assert_eq!(free_extents(&server), start - 4 * per_mib);
        server.ok(
            "snapshot_create",
            json!({"volume": names["origin"], "name": names["snapshot"]}),
        );
        assert_eq!(
            free_extents(&server),
            start - 4 * per_mib,
            "a snapshot copies nothing"
        );
        fill(&server, &names["origin"], 2, 0, MIB);
        server.ok(
            "clone_create",
            json!({"snapshot": names["snapshot"], "name": names["clone"]}),
        );
        fill(&server, &names["clone"], 3, 2 * MIB, MIB);
        assert_eq!(free_extents(&server), start - 6 * per_mib);
        let mut tables = model_tables();
        let mut free = start - 6 * per_mib;
        for &which in order {
            let dropped = tables.remove(which).expect("table");
            let still: BTreeSet<&String> = tables.values().flatten().collect();
            free += dropped.iter().filter(|e| !still.contains(e)).count() as u64;
            delete(&server, &names[which]);
            assert_eq!(
                free_extents(&server),
                free,
                "order {order:?}: after deleting the {which}"
            );
        }
        assert_eq!(free, start, "order {order:?}: the model frees everything");
    }
}

/// Every table's content and the pool's free count.
fn state(server: &Server, names: &[&str]) -> (Vec<Vec<u8>>, u64) {
    (
        names.iter().map(|n| content(server, n)).collect(),
        free_extents(server),
    )
}

#[test]
fn snapshots_and_clones_survive_restart_and_kill_9() {
    let mut server = setup();
    create_volume(&server, "v");
    fill(&server, "v", 0x51, 0, 4 * MIB);
    server.ok("snapshot_create", json!({"volume": "v", "name": "s1"}));
    fill(&server, "v", 0x52, MIB, MIB);
    server.ok("clone_create", json!({"snapshot": "s1", "name": "c"}));
    fill(&server, "c", 0x53, 3 * MIB, 2 * MIB);
    server.ok("snapshot_create", json!({"volume": "c", "name": "cs"}));
    fill(&server, "c", 0x54, 0, 64 * KIB);
    server.ok("snapshot_create", json!({"volume": "v", "name": "s2"}));
    let names = ["v", "s1", "c", "cs", "s2"];
    let before = state(&server, &names);
    assert!(pattern(&before.0[1], 0, 4 * MIB, 0x51));

    assert!(server.stop(), "clean stop");
    server.spawn();
    let after = state(&server, &names);
    assert!(before.0 == after.0, "content changed across a restart");
    assert_eq!(before.1, after.1, "free extents changed across a restart");
    let listed = volume(&server, "s1");
    assert_eq!(listed["snapshot_of"], "v", "{listed}");
    assert_eq!(volume(&server, "c")["clone_of"], "s1");

    // Shared extents are still copied on write after a restart: s1, s2 and cs keep theirs.
    fill(&server, "v", 0x55, 0, 2 * MIB);
    fill(&server, "c", 0x56, 2 * MIB, 2 * MIB);
    let written = state(&server, &names);
    for (index, name) in names.iter().enumerate() {
        if ["s1", "cs", "s2"].contains(name) {
            assert!(before.0[index] == written.0[index], "{name} changed");
        }
    }
    server.kill();
    server.spawn();
    let killed = state(&server, &names);
    assert!(written.0 == killed.0, "content changed across kill -9");
    assert_eq!(written.1, killed.1, "free extents changed across kill -9");

    // Deleting everything after the restarts gives every extent back.
    for name in ["s1", "v", "cs", "c", "s2"] {
        delete(&server, name);
    }
    let total = server.ok("pool_get_pools", json!({"name": "p"}))[0]["total_extents"]
        .as_u64()
        .expect("total");
    assert_eq!(free_extents(&server), total);
}

#[test]
fn revert_is_refused_while_open_and_gives_the_snapshot_content_offline() {
    let mut server = setup();
    create_volume(&server, "v");
    fill(&server, "v", 0x61, 0, 2 * MIB);
    server.ok("snapshot_create", json!({"volume": "v", "name": "s"}));
    let free_at_snapshot = free_extents(&server);
    fill(&server, "v", 0x62, MIB, 3 * MIB);
    assert!(free_extents(&server) < free_at_snapshot);
    // A host holds the volume open: refused.
    let held = nbd_raw_connect(server.port, "v");
    let refused = server
        .call("volume_revert", json!({"volume": "v", "snapshot": "s"}))
        .expect_err("revert while open");
    assert!(refused.1.contains("open"), "{refused:?}");
    drop(held);
    call_when_closed(
        &server,
        "volume_revert",
        json!({"volume": "v", "snapshot": "s"}),
    );
    let s = content(&server, "s");
    assert!(
        content(&server, "v") == s,
        "the reverted volume is not the snapshot"
    );
    // What v wrote after the snapshot is free again.
    assert_eq!(free_extents(&server), free_at_snapshot);
    // Writes after the revert copy, and the snapshot keeps its content; across a restart too.
    fill(&server, "v", 0x63, 0, 64 * KIB);
    server.kill();
    server.spawn();
    assert!(content(&server, "s") == s);
    let v = content(&server, "v");
    assert!(pattern(&v, 0, 64 * KIB, 0x63));
    assert!(v[64 * KIB as usize..] == s[64 * KIB as usize..]);
}

#[test]
fn the_cli_takes_lists_clones_reverts_and_deletes_snapshots() {
    let server = setup();
    create_volume(&server, "v");
    fill(&server, "v", 0x71, 0, MIB);
    let run = |args: &[&str]| {
        let output = server.cli(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "sds {args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let table = run(&["snapshot", "create", "v", "s"]);
    assert!(
        table.contains("SEQUENCE") && table.contains(" v "),
        "{table}"
    );
    let listed: Value =
        serde_json::from_str(&run(&["--json", "snapshot", "list", "--volume", "v"])).expect("json");
    assert_eq!(listed[0]["name"], "s", "{listed}");
    assert_eq!(listed[0]["shared"], MIB, "{listed}");
    let table = run(&["clone", "create", "s", "c"]);
    assert!(
        table.contains("CLONE OF") && table.contains(" s "),
        "{table}"
    );
    let volumes = run(&["volume", "list"]);
    assert!(volumes.contains("snapshot of v"), "{volumes}");
    assert!(volumes.contains("clone of s"), "{volumes}");
    fill(&server, "v", 0x72, 0, MIB);
    let reverted = (0..200)
        .map(|_| {
            let output = server.cli(&["snapshot", "revert", "v", "s"]);
            if !output.status.success() {
                std::thread::sleep(Duration::from_millis(50));
            }
            output
        })
        .find(|output| output.status.success())
        .expect("sds snapshot revert succeeds once the writer is gone");
    assert!(String::from_utf8_lossy(&reverted.stdout).contains("reverted"));
    assert!(pattern(&content(&server, "v"), 0, MIB, 0x71));
    // A VP to the snapshot (content() makes one) holds it.
    assert!(pattern(&content(&server, "s"), 0, MIB, 0x71));
    let refused = server.cli(&["snapshot", "delete", "s"]);
    assert!(!refused.status.success(), "deleted while a VP points at it");
    let id = server.ok("vpath_get_vpaths", json!({"volume": "s"}))[0]["id"].clone();
    server.ok("vpath_delete", json!({"id": id}));
    let text = run(&["snapshot", "delete", "s"]);
    assert!(text.contains("deleted"), "{text}");
    assert_eq!(
        server.ok("snapshot_get_snapshots", json!({})),
        json!([]),
        "the snapshot is gone"
    );
}

/// Discards `len` bytes at `offset` of `name` (NBD TRIM).
fn discard(server: &Server, name: &str, offset: u64, len: u64) {
    let (clean, text) = qemu_io(&server.url(name), &[format!("discard {offset} {len}")]);
    assert!(clean, "discard on {name}: {text}");
}

#[test]
fn trim_never_changes_a_snapshot_or_a_clone_nor_brings_old_data_back() {
    let mut server = setup();
    create_volume(&server, "v");
    fill(&server, "v", 0x81, 0, 4 * MIB);
    server.ok("snapshot_create", json!({"volume": "v", "name": "s"}));
    // Whole shared extents, then part of a shared one.
    discard(&server, "v", 0, MIB);
    discard(&server, "v", MIB + 4 * KIB, 8 * KIB);
    // Extents v copied after the snapshot, then trimmed whole: zeroed, not freed (freeing
    // would let the snapshot's older record be v's again at the next start).
    fill(&server, "v", 0x82, 2 * MIB, MIB);
    discard(&server, "v", 2 * MIB, MIB);
    let check = |server: &Server| {
        let v = content(server, "v");
        assert!(pattern(&v, 0, MIB, 0), "whole-extent trim of v");
        assert!(pattern(&v, MIB, 4 * KIB, 0x81));
        assert!(pattern(&v, MIB + 4 * KIB, 8 * KIB, 0), "partial trim of v");
        assert!(pattern(&v, MIB + 12 * KIB, MIB - 12 * KIB, 0x81));
        assert!(pattern(&v, 2 * MIB, MIB, 0), "trim of v's own copies");
        assert!(pattern(&v, 3 * MIB, MIB, 0x81));
        assert!(
            pattern(&content(server, "s"), 0, 4 * MIB, 0x81),
            "a trim of the origin changed the snapshot"
        );
    };
    check(&server);
    server.kill();
    server.spawn();
    check(&server);

    // A clone of a snapshot that is gone still holds the origin's older records.
    create_volume(&server, "w");
    fill(&server, "w", 0x91, 0, 2 * MIB);
    server.ok("snapshot_create", json!({"volume": "w", "name": "ws"}));
    server.ok("clone_create", json!({"snapshot": "ws", "name": "wc"}));
    delete(&server, "ws");
    fill(&server, "w", 0x92, 0, MIB);
    discard(&server, "w", 0, 2 * MIB);
    server.kill();
    server.spawn();
    assert!(
        pattern(&content(&server, "w"), 0, 2 * MIB, 0),
        "old data came back"
    );
    assert!(
        pattern(&content(&server, "wc"), 0, 2 * MIB, 0x91),
        "the clone changed"
    );
}

#[test]
fn sets_and_shared_extents_do_not_mix_and_refusals_change_nothing() {
    let server = setup();
    for name in ["m1", "m2", "x"] {
        create_volume(&server, name);
    }
    fill(&server, "x", 0xa1, 0, MIB);
    server.ok("snapshot_create", json!({"volume": "x", "name": "xs"}));
    let refuse = |method: &str, params: Value, why: &str| {
        let (_, message) = server.call(method, params.clone()).expect_err("refused");
        assert!(message.contains(why), "{method} {params}: {message}");
    };
    // A volume with snapshots, a snapshot and a clone may not join a set.
    refuse(
        "volume_set_create",
        json!({"name": "bad", "members": ["m1", "x"]}),
        "snapshots",
    );
    refuse(
        "volume_set_create",
        json!({"name": "bad", "members": ["m1", "xs"]}),
        "snapshot",
    );
    server.ok("clone_create", json!({"snapshot": "xs", "name": "xc"}));
    refuse(
        "volume_set_create",
        json!({"name": "bad", "members": ["m1", "xc"]}),
        "clone",
    );
    // A set's members and the set itself are not snapshotted or reverted.
    server.ok(
        "volume_set_create",
        json!({"name": "set", "members": ["m1", "m2"]}),
    );
    refuse(
        "snapshot_create",
        json!({"volume": "m1", "name": "ms"}),
        "member",
    );
    refuse(
        "snapshot_create",
        json!({"volume": "set", "name": "ss"}),
        "other volumes",
    );
    refuse(
        "volume_revert",
        json!({"volume": "m2", "snapshot": "xs"}),
        "member",
    );
    // Names, kinds and limits.
    refuse(
        "snapshot_create",
        json!({"volume": "x", "name": "m1"}),
        "exists",
    );
    refuse(
        "snapshot_create",
        json!({"volume": "nope", "name": "n"}),
        "no volume",
    );
    refuse(
        "clone_create",
        json!({"snapshot": "x", "name": "n"}),
        "not a snapshot",
    );
    refuse("snapshot_delete", json!({"name": "x"}), "not a snapshot");
    refuse(
        "volume_revert",
        json!({"volume": "xs", "snapshot": "xs"}),
        "snapshot",
    );
    refuse("snapshot_create", json!({"volume": "x"}), "name");
    let snapshots = server.ok("snapshot_get_snapshots", json!({}));
    assert_eq!(snapshots.as_array().map(Vec::len), Some(1), "{snapshots}");
    assert!(pattern(&content(&server, "xc"), 0, MIB, 0xa1));
}
