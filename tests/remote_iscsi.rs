//! LUNs of other arrays, over iSCSI: tgtd (Debian's tgt, tests/common/tgtd.rs) is the foreign
//! array, killed (`kill -9`) and restarted while sds uses it.
//!
//! First the harness itself, proven with libiscsi's own tools (iscsi-inq,
//! iscsi-readcapacity16) and qemu-io: several arrays at once, each its own size and block
//! size; data written before a `kill -9` reads back after the restart on the same port; a
//! resized backing file shows after a restart; a CHAP account keeps out an initiator without
//! the secret.
//!
//! Then the `iscsi` LUN driver: a pool over one tgtd LUN and one local file, a volume spanning
//! both, fio writing and verifying it over NBD and over sds's iSCSI target while tgtd is killed
//! and restarted (no error at all with the default timeouts; every byte verifies, also after
//! sds restarts); an outage past `timeout_ms` and `fail_after_ms` (I/O fails only while the
//! array is down, the LUN comes back by itself); a mirror onto a local leg that hides the
//! outage completely and ends with byte-identical legs; what `lun_create` refuses (bad URLs,
//! an unreachable portal, unknown target or LUN, a wrong block size, wrong CHAP) creating
//! nothing; the CHAP secret never shown; a size change on the array reported (grown across a
//! restart; shrunk below the LUN while running, which fails it until it is large enough again).

mod common;
use common::tgtd::{Tgtd, TgtdConfig};
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Any name: tgtd's target is bound to ALL initiators.
const INITIATOR: &str = "iqn.2026-11.org.sds.test:initiator";
/// The array's LUN and the local file LUN of the mixed pool.
const REMOTE_LUN_BYTES: u64 = 40 * MIB;
const LOCAL_LUN_BYTES: u64 = 40 * MIB;
/// A volume larger than either LUN's share: its extents (placed round-robin) land on both.
const VOLUME_BYTES: u64 = 48 * MIB;
const EXTENT_BYTES: u64 = MIB;
/// How long a state the tests wait for may take to show (reconnect backoff is at most 5 s;
/// a loaded 2-core machine is slow).
const STATE_DEADLINE: Duration = Duration::from_secs(90);
/// fio's libiscsi engine logs in with this name unless told otherwise.
const FIO_INITIATOR: &str = "iqn.2019-04.org.fio:fio";

#[test]
fn tgtd_harness_runs_parallel_arrays_that_survive_kill_9() {
    // Three arrays started at once from threads, as parallel tests would: each must get its
    // own portal and control port and serve its own file (told apart by size and block size).
    let configs = [(16 * MIB, 512u32), (24 * MIB, 4096), (32 * MIB, 512)];
    let dirs: Vec<tempfile::TempDir> = configs
        .iter()
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut arrays: Vec<Tgtd> = std::thread::scope(|scope| {
        let started: Vec<_> = configs
            .iter()
            .zip(&dirs)
            .map(|(&(size_bytes, block_size), dir)| {
                scope.spawn(move || {
                    Tgtd::start_with(
                        dir.path(),
                        TgtdConfig {
                            size_bytes,
                            block_size,
                            chap: None,
                        },
                    )
                })
            })
            .collect();
        started
            .into_iter()
            .map(|handle| handle.join().expect("start tgtd"))
            .collect()
    });
    let mut controls: Vec<u16> = arrays.iter().map(|a| a.control).collect();
    controls.sort_unstable();
    controls.dedup();
    assert_eq!(controls.len(), arrays.len(), "control ports shared");
    for (array, &(size_bytes, block_size)) in arrays.iter().zip(&configs) {
        let (ok, text) = iscsi_inq(&array.url(), INITIATOR, None);
        assert!(
            ok && text.contains("DIRECT_ACCESS"),
            "{}: {text}",
            array.url()
        );
        let (ok, text, size) = iscsi_readcapacity16(&array.url(), INITIATOR);
        assert!(ok, "{}: {text}", array.url());
        assert_eq!(size, Some(size_bytes), "{}: {text}", array.url());
        assert!(
            text.contains(&format!("LOGICAL BLOCK LENGTH IN BYTES:{block_size}")),
            "{text}"
        );
    }

    // Data written through the array outlives a kill -9 and a restart on the same port.
    let array = &mut arrays[0];
    let writes = [(0x5au8, 0u64, 64 * 1024u64), (0xa5, 5 * MIB, 4096)];
    let commands: Vec<String> = writes
        .iter()
        .map(|&(p, o, l)| format!("write -P {p} {o} {l}"))
        .collect();
    let (ok, text) = qemu_io_iscsi(&array.url(), INITIATOR, &commands);
    assert!(ok, "{text}");
    let port = array.port;
    array.kill();
    assert!(!array.is_running());
    let (ok, text, _) = iscsi_readcapacity16(&array.url(), INITIATOR);
    assert!(!ok, "the killed array still answers: {text}");
    array.restart();
    assert_eq!(array.port, port);
    assert_eq!(array.starts, 2);
    let commands: Vec<String> = writes
        .iter()
        .map(|&(p, o, l)| format!("read -P {p} {o} {l}"))
        .collect();
    let (ok, text) = qemu_io_iscsi(&array.url(), INITIATOR, &commands);
    assert!(ok, "data lost across the array's restart: {text}");

    // A resized backing file shows after a restart.
    array.resize_backing(20 * MIB);
    array.restart();
    let (ok, text, size) = iscsi_readcapacity16(&array.url(), INITIATOR);
    assert!(ok, "{text}");
    assert_eq!(size, Some(20 * MIB), "{text}");

    // The others never noticed.
    for (array, &(size_bytes, _)) in arrays.iter().zip(&configs).skip(1) {
        let (ok, text, size) = iscsi_readcapacity16(&array.url(), INITIATOR);
        assert!(ok && size == Some(size_bytes), "{}: {text}", array.url());
    }
}

#[test]
fn tgtd_harness_chap_keeps_out_an_initiator_without_the_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let array = Tgtd::start_with(
        dir.path(),
        TgtdConfig {
            chap: Some(("sdsuser".into(), "sdssecret12345".into())),
            ..TgtdConfig::new(8 * MIB)
        },
    );
    let (ok, text) = iscsi_inq(&array.url(), INITIATOR, None);
    assert!(!ok, "logged in without CHAP: {text}");
    let wrong = array
        .url()
        .replacen("iscsi://", "iscsi://sdsuser%wrongsecret99@", 1);
    let (ok, text) = iscsi_inq(&wrong, INITIATOR, None);
    assert!(!ok, "logged in with a wrong secret: {text}");
    let right = array
        .url()
        .replacen("iscsi://", "iscsi://sdsuser%sdssecret12345@", 1);
    let (ok, text, size) = iscsi_readcapacity16(&right, INITIATOR);
    assert!(ok && size == Some(8 * MIB), "{text}");
}

// ---- helpers ----------------------------------------------------------------------------

fn remote_state(lun: &Value) -> &str {
    lun["remote"]["state"].as_str().unwrap_or("none")
}

/// Bytes a file holds on disk (a sparse file's written part).
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Pool `p` over remote LUN `arr` (the array) and local file LUN `loc`, volume `vol` on it.
fn mixed_pool(server: &Server, array: &Tgtd, extra: Value) -> PathBuf {
    let mut params = json!({"name": "arr", "kind": "iscsi", "url": array.url()});
    if let (Some(params), Some(extra)) = (params.as_object_mut(), extra.as_object()) {
        params.extend(extra.clone());
    }
    server.ok("lun_create", params);
    let local = server.dir.path().join("loc.img");
    server.ok(
        "lun_create",
        json!({"name": "loc", "kind": "file", "path": local, "size": LOCAL_LUN_BYTES, "block_size": 512}),
    );
    server.ok(
        "pool_create",
        json!({"name": "p", "luns": ["arr", "loc"], "extent_size": EXTENT_BYTES}),
    );
    server.ok(
        "volume_create",
        json!({"name": "vol", "pool": "p", "size": VOLUME_BYTES}),
    );
    local
}

/// How a host reaches the volume under test.
#[derive(Clone, Copy, Debug)]
enum Front {
    Nbd,
    Iscsi,
}

/// fio with the libiscsi engine (scripts/build-fio-libiscsi.sh, run by scripts/setup.sh).
fn fio_libiscsi() -> PathBuf {
    let fio = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/fio");
    assert!(
        fio.exists(),
        "{} is missing: run scripts/setup.sh (it builds a fio with the libiscsi engine)",
        fio.display()
    );
    fio
}

/// The fio command line of a write-and-verify job on `volume` through `front`; `verify_only`
/// reads back and checks what the same job wrote (same offsets, same seed).
fn fio_job(
    server: &Server,
    front: Front,
    volume: &str,
    verify_only: bool,
) -> (PathBuf, Vec<String>) {
    let mut args = vec![
        "--name=remote".to_string(),
        "--rw=randwrite".into(),
        "--bsrange=4k-64k".into(),
        "--iodepth=8".into(),
        format!("--size={VOLUME_BYTES}"),
        "--verify=crc32c".into(),
        "--do_verify=1".into(),
        "--verify_fatal=1".into(),
    ];
    if verify_only {
        args.push("--verify_only=1".into());
    }
    match front {
        Front::Nbd => {
            args.push("--ioengine=nbd".into());
            args.push(format!("--uri={}", server.url(volume)));
            (PathBuf::from("fio"), args)
        }
        Front::Iscsi => {
            if server.ok("vpath_get_vpaths", json!({"host": "fio", "volume": volume}))[0]["id"]
                .is_null()
            {
                // Refused only when an earlier call made it already.
                let _ = server.call("host_create", json!({"name": "fio", "iqn": FIO_INITIATOR}));
                server.ok(
                    "vpath_create",
                    json!({"host": "fio", "volume": volume, "lun": 0}),
                );
            }
            let url = server.iscsi_url(0).replace(':', "\\:");
            args.push("--ioengine=libiscsi".into());
            args.push(format!("--filename={url}"));
            args.push(format!("--initiator={FIO_INITIATOR}"));
            (fio_libiscsi(), args)
        }
    }
}

/// Runs a fio job to its end in `dir`; (clean: status 0 and err=0, output).
fn run_fio(dir: &Path, binary: &Path, args: &[String]) -> (bool, String) {
    let (ok, text) = run_bounded(
        std::process::Command::new(binary)
            .current_dir(dir)
            .args(args),
        Duration::from_secs(300),
    );
    (ok && text.contains("err= 0"), text)
}

// ---- the array goes away and comes back under load ----------------------------------------

/// A pool over one tgtd LUN and one local file; fio writes and verifies a volume spanning both
/// through `front` while tgtd is killed (`kill -9`) and restarted: with the default timeouts
/// the host sees no error at all (commands wait through the reconnect and are reissued), every
/// byte verifies, and still does after sds restarts (the remote LUN is in its records).
fn array_restart_under_fio(front: Front) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut array = Tgtd::start(dir.path(), REMOTE_LUN_BYTES);
    let mut server = Server::start();
    let local = mixed_pool(&server, &array, json!({}));

    // The remote LUN as lun_get_luns shows it.
    let arr = server.wait_lun("arr", "connected", |l| remote_state(l) == "connected");
    assert_eq!(arr["kind"], "iscsi", "{arr}");
    assert_eq!(arr["size"], REMOTE_LUN_BYTES, "{arr}");
    assert_eq!(arr["block_size"], 512, "{arr}");
    assert_eq!(arr["persistent"], true, "{arr}");
    assert_eq!(arr["pool"], "p", "{arr}");
    assert_eq!(arr["remote"]["url"], array.url(), "{arr}");
    assert_eq!(arr["remote"]["reconnects"], 0, "{arr}");
    assert!(
        arr["remote"]["links"].as_u64().is_some_and(|n| n >= 1),
        "{arr}"
    );
    assert!(arr["remote"]["rtt_us"].is_u64(), "{arr}");
    assert!(arr["remote"]["in_flight"].is_u64(), "{arr}");
    let array_before = allocated_bytes(&array.backing);
    let local_before = allocated_bytes(&local);

    let (binary, args) = fio_job(&server, front, "vol", false);
    let fio_dir = dir.path().to_path_buf();
    let load = std::thread::spawn(move || run_fio(&fio_dir, &binary, &args));
    // Mid-run: once fio has made the volume allocate a few extents.
    let deadline = Instant::now() + STATE_DEADLINE;
    while server.allocated_extents("vol") < 4 {
        assert!(Instant::now() < deadline, "fio wrote nothing");
        assert!(!load.is_finished(), "fio ended early: {:?}", load.join());
        std::thread::sleep(Duration::from_millis(10));
    }
    array.kill();
    assert!(!load.is_finished(), "fio ended before the array was killed");
    let down = server.wait_lun("arr", "reconnecting", |l| remote_state(l) != "connected");
    assert!(
        matches!(remote_state(&down), "reconnecting" | "connecting"),
        "{down}"
    );
    array.restart();
    let back = server.wait_lun("arr", "connected again", |l| {
        remote_state(l) == "connected" && l["remote"]["reconnects"].as_u64() >= Some(1)
    });
    assert_eq!(back["state"], "online", "{back}");
    let (clean, text) = load.join().expect("fio thread");
    assert!(
        clean,
        "fio saw errors or a verify failure across the array's restart:\n{text}\nsds log:\n{}",
        tail(&server.log(), 80)
    );
    let arr = server.lun("arr");
    assert!(arr["remote"]["rtt_us"].as_u64() > Some(0), "{arr}");
    assert_eq!(
        arr["errors"],
        json!({"read": 0, "write": 0, "flush": 0}),
        "the LUN counted errors across the reconnect: {arr}"
    );
    let listed = server.cli(&["lun", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("RECONNECTS") && listed.contains(&array.url()),
        "sds lun list shows no link columns: {listed}"
    );
    // The volume spans both LUNs: each holds megabytes of fio's data.
    assert!(
        allocated_bytes(&array.backing) >= array_before + 4 * MIB,
        "the array's LUN got little of the volume"
    );
    assert!(
        allocated_bytes(&local) >= local_before + 4 * MIB,
        "the local LUN got little of the volume"
    );

    // sds restarts with the remote LUN in its records; every byte still verifies.
    assert!(server.stop(), "sds did not stop cleanly");
    server.spawn();
    server.wait_lun("arr", "connected after sds restarted", |l| {
        remote_state(l) == "connected"
    });
    let (binary, args) = fio_job(&server, front, "vol", true);
    let (clean, text) = run_fio(dir.path(), &binary, &args);
    assert!(clean, "read-back after sds restarted:\n{text}");
}

#[test]
fn fio_verify_over_nbd_survives_the_array_killed_and_restarted() {
    array_restart_under_fio(Front::Nbd);
}

#[test]
fn fio_verify_over_iscsi_survives_the_array_killed_and_restarted() {
    array_restart_under_fio(Front::Iscsi);
}

/// An outage longer than the LUN's `timeout_ms` and `fail_after_ms`: I/O fails while the array
/// is down (first once it waited `timeout_ms`, then at once when the LUN is marked failed), the
/// LUN comes back online by itself when the array returns, and every acknowledged write reads
/// back.
#[test]
fn an_outage_past_the_timeout_fails_io_only_while_the_array_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut array = Tgtd::start(dir.path(), REMOTE_LUN_BYTES);
    let server = Server::start();
    mixed_pool(
        &server,
        &array,
        json!({"timeout_ms": 1000, "fail_after_ms": 2000}),
    );
    let url = server.url("vol");
    // One pattern per extent: half of them on the array's LUN.
    let writes: Vec<(u8, u64, u64)> = (0..VOLUME_BYTES / EXTENT_BYTES)
        .map(|i| ((i % 250 + 1) as u8, i * EXTENT_BYTES + 4096, 64 * 1024))
        .collect();
    write_and_verify(&url, &writes);

    array.kill();
    // Writes while the array is down, beside the patterns (256 KiB into each extent): those to
    // the array's extents wait out timeout_ms and fail, until the LUN is failed.
    let (clean, text) = qemu_io(
        &url,
        &writes
            .iter()
            .map(|&(_, offset, _)| format!("write -P 238 {} 4096", offset + 256 * 1024))
            .collect::<Vec<_>>(),
    );
    assert!(
        !clean,
        "writes to the array's extents succeeded with the array down:\n{text}"
    );
    let failed = server.wait_lun("arr", "failed", |l| remote_state(l) == "failed");
    assert_eq!(failed["state"], "failed", "{failed}");
    let started = Instant::now();
    let (clean, text) = qemu_io(
        &url,
        &writes
            .iter()
            .map(|&(p, o, l)| format!("read -P {p} {o} {l}"))
            .collect::<Vec<_>>(),
    );
    assert!(
        !clean,
        "reads of the array's extents succeeded with the array down:\n{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "I/O to a failed remote LUN must fail at once, not wait"
    );

    array.restart();
    let back = server.wait_lun("arr", "online again", |l| {
        remote_state(l) == "connected" && l["state"] == "online"
    });
    assert!(back["remote"]["reconnects"].as_u64() >= Some(1), "{back}");
    assert!(back["remote"]["timeouts"].as_u64() >= Some(1), "{back}");
    verify(&url, &writes);
    write_and_verify(&url, &[(0x77, 8 * MIB, 128 * 1024)]);
}

/// A mirror with one leg on the array and one on a local file: fio over NBD sees no error at
/// all while the array is killed and restarted; the leg degrades, resyncs once the array is
/// back, and both legs are then byte-identical.
#[test]
fn a_mirror_onto_a_local_leg_hides_the_array_going_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut array = Tgtd::start(dir.path(), REMOTE_LUN_BYTES);
    let server = Server::start();
    server.ok(
        "lun_create",
        json!({"name": "arr", "kind": "iscsi", "url": array.url(), "timeout_ms": 2000, "fail_after_ms": 3000}),
    );
    server.ok(
        "lun_create",
        json!({"name": "loc", "kind": "file", "size": LOCAL_LUN_BYTES, "block_size": 512}),
    );
    server.ok(
        "pool_create",
        json!({"name": "pr", "luns": ["arr"], "extent_size": EXTENT_BYTES}),
    );
    server.ok(
        "pool_create",
        json!({"name": "pl", "luns": ["loc"], "extent_size": EXTENT_BYTES}),
    );
    const LEG_BYTES: u64 = 24 * MIB;
    for (leg, pool) in [("leg-r", "pr"), ("leg-l", "pl")] {
        server.ok(
            "volume_create",
            json!({"name": leg, "pool": pool, "size": LEG_BYTES}),
        );
    }
    server.ok(
        "mirror_create",
        json!({"name": "m", "legs": ["leg-r", "leg-l"]}),
    );
    let url = server.url("m");
    let fio_dir = dir.path().to_path_buf();
    let load = std::thread::spawn(move || {
        fio_nbd_verified_writes(&fio_dir, "mirror", &url, &LEG_BYTES.to_string(), &[])
    });
    let deadline = Instant::now() + STATE_DEADLINE;
    while server.allocated_extents("leg-r") < 4 {
        assert!(
            Instant::now() < deadline && !load.is_finished(),
            "fio wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    array.kill();
    let mirror = |server: &Server| server.ok("mirror_get_mirrors", json!({"name": "m"}))[0].clone();
    let leg_state = |m: &Value, leg: &str| {
        m["legs"]
            .as_array()
            .and_then(|legs| legs.iter().find(|l| l["volume"] == leg))
            .and_then(|l| l["state"].as_str())
            .unwrap_or("none")
            .to_string()
    };
    let deadline = Instant::now() + STATE_DEADLINE;
    loop {
        let m = mirror(&server);
        if leg_state(&m, "leg-r") == "degraded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the array's leg never degraded: {m}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    array.restart();
    let deadline = Instant::now() + STATE_DEADLINE;
    loop {
        let m = mirror(&server);
        if m["state"] == "healthy" && leg_state(&m, "leg-r") == "healthy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror never became healthy again: {m}\nlog:\n{}",
            tail(&server.log(), 60)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (clean, text) = load.join().expect("fio thread");
    assert!(clean, "fio saw an error through the mirror:\n{text}");
    // Both legs byte for byte: split the array's leg off and compare it with the mirror.
    server.ok("mirror_split_leg", json!({"mirror": "m", "leg": "leg-r"}));
    let mut images = Vec::new();
    for volume in ["m", "leg-r"] {
        let image = dir.path().join(format!("{volume}.img"));
        let (ok, text) = run_bounded(
            std::process::Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw", &server.url(volume)])
                .arg(&image),
            Duration::from_secs(120),
        );
        assert!(ok, "qemu-img convert {volume}: {text}");
        images.push(std::fs::read(&image).expect("image"));
    }
    assert_eq!(images[0].len() as u64, LEG_BYTES);
    assert!(images[0] == images[1], "the legs differ after the resync");
}

// ---- what lun_create refuses ---------------------------------------------------------------

/// Whether the server has no LUN `name` (in lun_get_luns).
fn no_lun(server: &Server, name: &str) -> bool {
    server
        .call("lun_get_luns", json!({ "name": name }))
        .is_err()
}

/// A bad URL, an unreachable array, an unknown target or LUN, a block size the array does not
/// have: each a clear RPC error that creates nothing (the name stays free).
#[test]
fn bad_urls_and_unreachable_arrays_are_refused_and_create_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let array = Tgtd::start(dir.path(), 16 * MIB);
    let server = Server::start();
    let nobody = free_port();
    let portal = format!("127.0.0.1:{}", array.port);
    let target = common::tgtd::TGTD_TARGET;
    let nobody_portal = format!("127.0.0.1:{nobody}");
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({"url": "http://127.0.0.1/x/1"}), vec!["url"]),
        (json!({"url": format!("iscsi://{portal}")}), vec!["url"]),
        (
            json!({"url": format!("iscsi://{portal}/{target}")}),
            vec!["url"],
        ),
        (
            json!({"url": format!("iscsi://{portal}/{target}/lun")}),
            vec!["url"],
        ),
        (json!({}), vec!["url"]),
        (
            json!({"url": array.url(), "chap_user": "only-the-user"}),
            vec!["chap"],
        ),
        (json!({"url": array.url(), "size": 4096}), vec!["size:"]),
        (
            json!({"url": format!("iscsi://127.0.0.1:{nobody}/{target}/1")}),
            vec![nobody_portal.as_str(), "connection refused"],
        ),
        (
            json!({"url": format!("iscsi://{portal}/iqn.2026-11.org.sds.test:nosuch/1")}),
            vec!["nosuch", "target not found"],
        ),
        (
            json!({"url": format!("iscsi://{portal}/{target}/5")}),
            vec!["/5", "logical_unit_not_supported"],
        ),
        (
            json!({"url": array.url(), "block_size": 4096}),
            vec!["block_size 4096", "512"],
        ),
    ];
    for (extra, words) in cases {
        let mut params = json!({"name": "r", "kind": "iscsi"});
        if let (Some(params), Some(extra)) = (params.as_object_mut(), extra.as_object()) {
            params.extend(extra.clone());
        }
        let started = Instant::now();
        let (code, message) = server
            .call("lun_create", params.clone())
            .expect_err(&format!("lun_create {params} must be refused"));
        assert_eq!(code, -32602, "lun_create {params}: {message}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "lun_create {params} took {:?} to fail",
            started.elapsed()
        );
        println!("refused: {params}\n    {message}");
        for word in words {
            assert!(
                message.to_lowercase().contains(&word.to_lowercase()),
                "lun_create {params}: the error does not say {word:?}: {message}"
            );
        }
        assert!(
            no_lun(&server, "r"),
            "lun_create {params} left a LUN behind"
        );
    }
    assert_eq!(server.ok("lun_get_luns", json!({})), json!([]));
    // The name is still free: the right URL makes the LUN.
    server.ok(
        "lun_create",
        json!({"name": "r", "kind": "iscsi", "url": array.url()}),
    );
    assert_eq!(server.lun("r")["size"], 16 * MIB);
}

/// CHAP: the right secret logs in and is never shown; a wrong or missing one is a clear error
/// that creates nothing.
#[test]
fn chap_secrets_log_in_are_refused_when_wrong_and_never_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "sdssecret12345";
    let array = Tgtd::start_with(
        dir.path(),
        TgtdConfig {
            chap: Some(("sdsuser".into(), secret.into())),
            ..TgtdConfig::new(16 * MIB)
        },
    );
    let server = Server::start();
    for (extra, what) in [
        (json!({}), "no CHAP"),
        (
            json!({"chap_user": "sdsuser", "chap_secret": "wrongsecret99"}),
            "a wrong secret",
        ),
        (
            json!({"chap_user": "someone", "chap_secret": secret}),
            "a wrong user",
        ),
    ] {
        let mut params = json!({"name": "r", "kind": "iscsi", "url": array.url()});
        if let (Some(params), Some(extra)) = (params.as_object_mut(), extra.as_object()) {
            params.extend(extra.clone());
        }
        let (_, message) = server
            .call("lun_create", params.clone())
            .expect_err(&format!("lun_create with {what} must be refused"));
        println!("refused with {what}: {message}");
        let lower = message.to_lowercase();
        assert!(
            lower.contains("authentication failure"),
            "with {what}, the error does not say the login was refused: {message}"
        );
        assert!(
            !message.contains(secret),
            "the error shows the secret: {message}"
        );
        assert!(
            no_lun(&server, "r"),
            "lun_create with {what} left a LUN behind"
        );
    }
    server.ok(
        "lun_create",
        json!({"name": "r", "kind": "iscsi", "url": array.url(), "chap_user": "sdsuser", "chap_secret": secret,
               "initiator_iqn": "iqn.2026-11.org.sds.test:sds"}),
    );
    let described = server.ok("lun_get_luns", json!({}));
    assert_eq!(described[0]["size"], 16 * MIB, "{described}");
    assert!(
        !described.to_string().contains(secret),
        "lun_get_luns shows the secret: {described}"
    );
    let listed = server.cli(&["lun", "list"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(secret));
}

// ---- the array changes size -------------------------------------------------------------------

/// The array's LUN grows (here: tgtd restarted on a larger file): sds notices, shows the new
/// size as `array_size`, and keeps the LUN's own size (the pool does not grow by itself).
#[test]
fn a_size_change_on_the_array_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut array = Tgtd::start_with(
        dir.path(),
        TgtdConfig {
            block_size: 4096,
            ..TgtdConfig::new(32 * MIB)
        },
    );
    let server = Server::start();
    server.ok(
        "lun_create",
        json!({"name": "arr", "kind": "iscsi", "url": array.url()}),
    );
    let arr = server.wait_lun("arr", "connected", |l| remote_state(l) == "connected");
    assert_eq!(arr["block_size"], 4096, "the array's block size: {arr}");
    assert_eq!(arr["size"], 32 * MIB, "{arr}");
    server.ok(
        "pool_create",
        json!({"name": "p", "luns": ["arr"], "extent_size": EXTENT_BYTES}),
    );
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 16 * MIB}),
    );
    let url = server.url("v");
    write_and_verify(&url, &[(0x3c, 0, 1 << 20)]);

    array.kill();
    array.resize_backing(48 * MIB);
    array.restart();
    let grown = server.wait_lun("arr", "reporting the array's new size", |l| {
        l["remote"]["array_size"] == 48 * MIB
    });
    assert_eq!(grown["size"], 32 * MIB, "the LUN grew by itself: {grown}");
    let new_size = (48 * MIB).to_string();
    assert!(
        server
            .log()
            .lines()
            .any(|line| line.contains("WARN") && line.contains(&new_size)),
        "the size change is not logged as a warning:\n{}",
        tail(&server.log(), 30)
    );
    verify(&url, &[(0x3c, 0, 1 << 20)]);

    // The array's LUN shrinks below the LUN while both run (noticed by the periodic READ
    // CAPACITY, or the unit attention): the LUN is failed. The array keeps the data aside meanwhile, as an array
    // whose LUN was shrunk by mistake and grown back would; once it is large enough again the
    // LUN is back online by itself and the data is there.
    let kept = dir.path().join("kept.img");
    std::fs::copy(&array.backing, &kept).expect("keep the array's data");
    array.resize_backing(24 * MIB);
    array.reload_lun();
    let shrunk = server.wait_lun("arr", "failed (the array shrank)", |l| {
        l["state"] == "failed"
    });
    assert_eq!(shrunk["remote"]["array_size"], 24 * MIB, "{shrunk}");
    std::fs::copy(&kept, &array.backing).expect("give the array its data back");
    array.reload_lun();
    let back = server.wait_lun("arr", "online again", |l| {
        l["state"] == "online" && l["remote"]["array_size"] == 48 * MIB
    });
    assert_eq!(back["size"], 32 * MIB, "{back}");
    verify(&url, &[(0x3c, 0, 1 << 20)]);
}
