//! Storage domains and virtual paths with real clients: who may reach which volume, in which
//! mode and with which operations, and how well each is served (QoS shares of a domain's
//! budget, live changes without disconnecting anyone).
//!
//! Several hosts on one machine are told apart the way the server tells Unix-socket peers
//! apart: by user id. fio runs as uid 1001, 1002, … through `setpriv`, over the server's NBD
//! Unix socket; each uid is a host (`unix:UID`).

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

#[test]
fn a_host_reaches_only_its_volumes_as_its_path_and_domain_allow() {
    let server = Server::start();
    server.file_pool("p", MIB);
    for name in ["mine", "theirs", "readonly"] {
        server.ok(
            "volume_create",
            json!({"name": name, "pool": "p", "size": 8 * MIB}),
        );
    }
    write_and_verify(&server.url("mine"), &[(0x11, 0, 65536)]);

    // No virtual path: opening by guessing the name fails as if the volume did not exist.
    let (clean, text) = qemu_io(
        &server.url_without_grant("theirs"),
        &["read 0 4096".to_string()],
    );
    assert!(!clean, "a host opened a volume it has no path to:\n{text}");

    // A read-only path: reads work, a write (sent by a raw client that ignores the export's
    // read-only flag) gets EPERM and the connection goes on.
    server.ok(
        "vpath_create",
        json!({"host": TEST_HOST, "volume": "readonly", "mode": "ro"}),
    );
    let mut stream = nbd_raw_connect(server.port, "readonly");
    let mut write = nbd_request(1, 1, 0, 4096);
    write.extend(std::iter::repeat_n(0x22u8, 4096));
    stream.write_all(&write).expect("write");
    assert_eq!(
        nbd_reply(&mut stream),
        (1, 1),
        "EPERM for a write on a read-only path"
    );
    stream.write_all(&nbd_request(0, 2, 0, 4096)).expect("read");
    assert_eq!(nbd_reply(&mut stream), (0, 2));
    let mut data = vec![0u8; 4096];
    stream.read_exact(&mut data).expect("data");
    assert!(
        data.iter().all(|&b| b == 0),
        "the refused write changed the volume"
    );

    // A domain that allows no TRIM: moving the path there refuses TRIM on the open connection,
    // moving it back allows it again, and the connection never drops.
    server.ok(
        "domain_create",
        json!({"name": "notrim", "capabilities": {"allowed_ops": ["read", "write", "flush", "write_zeroes"]}}),
    );
    let path = server.grant("mine");
    let mut live = nbd_raw_connect(server.port, "mine");
    server.ok("vpath_set_domain", json!({"id": path, "domain": "notrim"}));
    live.write_all(&nbd_request(4, 3, 0, 4096)).expect("trim");
    assert_eq!(
        nbd_reply(&mut live),
        (1, 3),
        "TRIM allowed by a domain that forbids it"
    );
    server.ok("vpath_set_domain", json!({"id": path, "domain": "default"}));
    live.write_all(&nbd_request(4, 4, 0, 4096)).expect("trim");
    assert_eq!(
        nbd_reply(&mut live),
        (0, 4),
        "TRIM refused after moving back"
    );
    assert_eq!(
        server.ok("domain_get_domains", json!({"name": "notrim"}))[0]["vpaths"],
        json!([])
    );

    // Deleting the path cuts the open connection, and the volume can no longer be opened.
    server.ok("vpath_delete", json!({"id": path}));
    live.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    assert!(
        peer_closed(&mut live),
        "the connection outlived its virtual path"
    );
    let (clean, _) = qemu_io(
        &server.url_without_grant("mine"),
        &["read 0 4096".to_string()],
    );
    assert!(!clean, "opened a volume after its path was deleted");

    // Bad parameters name themselves and change nothing.
    for (method, params, bad) in [
        (
            "vpath_create",
            json!({"host": "nobody", "volume": "mine"}),
            "host",
        ),
        (
            "vpath_create",
            json!({"host": TEST_HOST, "volume": "mine", "mode": "rx"}),
            "mode",
        ),
        (
            "vpath_create",
            json!({"host": TEST_HOST, "volume": "readonly"}),
            "volume",
        ),
        (
            "host_create",
            json!({"name": "h", "addresses": ["300.1.1.1"]}),
            "addresses",
        ),
        ("host_delete", json!({"name": TEST_HOST}), "name"),
        (
            "domain_create",
            json!({"name": "d", "capabilities": {"rw_ios_per_sec": "fast"}}),
            "capabilities.rw_ios_per_sec",
        ),
        ("domain_delete", json!({"name": "default"}), "name"),
        (
            "vpath_set_domain",
            json!({"id": 999, "domain": "notrim"}),
            "id",
        ),
    ] {
        let before = (
            server.ok("vpath_get_vpaths", json!({})),
            server.ok("host_get_hosts", json!({})),
            server.ok("domain_get_domains", json!({})),
        );
        match server.call(method, params.clone()) {
            Err((code, message)) => {
                assert_eq!(code, -32602, "{method} {params}: {message}");
                assert!(message.starts_with(bad), "{method} {params}: {message}");
            }
            Ok(result) => panic!("{method} {params} succeeded: {result}"),
        }
        let after = (
            server.ok("vpath_get_vpaths", json!({})),
            server.ok("host_get_hosts", json!({})),
            server.ok("domain_get_domains", json!({})),
        );
        assert_eq!(before, after, "{method} {params} changed something");
    }
}

/// A server with an NBD Unix socket that other users may connect to.
fn shared_socket_server() -> (Server, PathBuf) {
    let server = Server::start_with(|dir| {
        vec![
            "--nbd-socket".into(),
            dir.join("nbd.sock").display().to_string(),
        ]
    });
    let socket = server.dir.path().join("nbd.sock");
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777))
        .expect("chmod socket");
    (server, socket)
}

/// fio as user `uid`: 4k random reads at QD8 on `volume` over the Unix socket.
fn fio_as(uid: u32, socket: &Path, volume: &str, seconds: u64) -> Child {
    require_tool("fio");
    require_tool("setpriv");
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "fio",
            "--name=qos",
            "--ioengine=nbd",
            &format!("--uri=nbd+unix:///{volume}?socket={}", socket.display()),
            "--rw=randread",
            "--bs=4k",
            "--iodepth=8",
            "--size=16M",
            "--time_based",
            "--ramp_time=1",
            &format!("--runtime={seconds}"),
            "--output-format=json",
        ])
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio")
}

/// Waits for a fio started by `fio_as`; returns its read IOPS, checking it saw no error.
fn fio_iops(child: Child) -> f64 {
    let output = child.wait_with_output().expect("fio");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "fio failed: {text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let start = text.find('{').expect("fio JSON");
    let report: Value = serde_json::from_str(&text[start..]).expect("fio JSON");
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "fio saw an I/O error: {job}");
    job["read"]["iops"].as_f64().expect("iops")
}

fn within(measured: f64, target: f64, tolerance: f64) -> bool {
    (measured - target).abs() <= target * tolerance
}

#[test]
fn gold_is_unthrottled_bronze_holds_its_limit_and_a_raise_takes_effect_live() {
    let (server, socket) = shared_socket_server();
    server.ok(
        "lun_create",
        json!({"name": "ram", "kind": "mem", "size": 64 * MIB}),
    );
    server.ok("pool_create", json!({"name": "p", "luns": ["ram"]}));
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 32 * MIB}),
    );
    server.ok("domain_create", json!({"name": "gold", "capabilities": {}}));
    server.ok(
        "domain_create",
        json!({"name": "bronze", "capabilities": {"rw_ios_per_sec": 2000}}),
    );
    server.ok(
        "host_create",
        json!({"name": "g", "addresses": ["unix:1001"]}),
    );
    server.ok(
        "host_create",
        json!({"name": "b", "addresses": ["unix:1002"]}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "g", "volume": "v", "domain": "gold"}),
    );
    let bronze = server.ok(
        "vpath_create",
        json!({"host": "b", "volume": "v", "domain": "bronze"}),
    )["id"]
        .as_u64()
        .expect("id");

    let gold_run = fio_as(1001, &socket, "v", 4);
    let bronze_run = fio_as(1002, &socket, "v", 4);
    let gold = fio_iops(gold_run);
    let bronze_iops = fio_iops(bronze_run);
    eprintln!("gold {gold:.0} IOPS, bronze {bronze_iops:.0} IOPS (limit 2000)");
    assert!(
        within(bronze_iops, 2000.0, 0.10),
        "bronze ran at {bronze_iops:.0} IOPS, not 2000 ± 10%"
    );
    assert!(
        gold > 2.0 * bronze_iops,
        "gold ({gold:.0} IOPS) was held back like bronze ({bronze_iops:.0})"
    );

    // Raise bronze's limit while it runs: the new rate shows within a second, no I/O error.
    let bronze_run = fio_as(1002, &socket, "v", 5);
    std::thread::sleep(Duration::from_millis(2500));
    server.ok(
        "domain_set_capabilities",
        json!({"name": "bronze", "capabilities": {"rw_ios_per_sec": 4000}}),
    );
    let changed = Instant::now();
    let mut seen = None;
    while changed.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
        let stats = server.ok("vpath_get_stats", json!({"id": bronze}));
        let iops = stats["vpaths"][0]["last_cycle"]["iops"]
            .as_f64()
            .unwrap_or(0.0);
        if iops > 3400.0 {
            seen = Some((changed.elapsed(), iops));
            break;
        }
    }
    let (after, iops) = seen.expect("bronze never reached its new limit");
    eprintln!("bronze raised to 4000: {iops:.0} IOPS after {after:?}");
    assert!(
        after <= Duration::from_secs(1),
        "the new limit took {after:?} to show ({iops:.0} IOPS)"
    );
    assert!(
        iops < 4400.0,
        "bronze overshot its new limit: {iops:.0} IOPS"
    );
    fio_iops(bronze_run);
    let stats = server.ok("domain_get_stats", json!({"name": "bronze"}));
    assert!(
        stats["domains"][0]["total"]["throttled_ios"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "bronze was never throttled: {stats}"
    );
}

#[test]
fn a_domain_budget_goes_to_whoever_is_busy() {
    let (server, socket) = shared_socket_server();
    server.ok(
        "lun_create",
        json!({"name": "ram", "kind": "mem", "size": 128 * MIB}),
    );
    server.ok("pool_create", json!({"name": "p", "luns": ["ram"]}));
    server.ok(
        "domain_create",
        json!({"name": "shared", "capabilities": {"rw_ios_per_sec": 3000}}),
    );
    for i in 1..=3u32 {
        let host = format!("h{i}");
        let volume = format!("v{i}");
        server.ok(
            "host_create",
            json!({"name": host, "addresses": [format!("unix:{}", 1010 + i)]}),
        );
        server.ok(
            "volume_create",
            json!({"name": volume, "pool": "p", "size": 32 * MIB}),
        );
        server.ok(
            "vpath_create",
            json!({"host": host, "volume": volume, "domain": "shared"}),
        );
    }
    // One busy VP gets (nearly) the whole budget.
    let alone = fio_iops(fio_as(1011, &socket, "v1", 4));
    eprintln!("one busy VP of three: {alone:.0} IOPS (budget 3000)");
    // The ceiling is what QoS enforces; the floor only shows the budget went to the one busy
    // VP (more than twice its equal share), allowing for a loaded machine that cannot reach
    // the whole budget.
    assert!(
        (2100.0..=3300.0).contains(&alone),
        "one busy VP ran at {alone:.0} IOPS, not ~3000"
    );
    // Three busy VPs share it evenly.
    let runs: Vec<Child> = (1..=3u32)
        .map(|i| fio_as(1010 + i, &socket, &format!("v{i}"), 4))
        .collect();
    let each: Vec<f64> = runs.into_iter().map(fio_iops).collect();
    let total: f64 = each.iter().sum();
    eprintln!("three busy VPs: {each:.0?} IOPS, {total:.0} together (budget 3000)");
    // Evenly: each within 20% of their mean (and of ~1000 on a machine that reaches the
    // budget); together never past the budget, and most of it used.
    let mean = total / 3.0;
    for (i, iops) in each.iter().enumerate() {
        assert!(
            within(*iops, mean, 0.20) && *iops <= 1150.0,
            "VP {} ran at {iops:.0} IOPS, not an even ~1000 ({each:?})",
            i + 1
        );
    }
    assert!(
        (2100.0..=3300.0).contains(&total),
        "together {total:.0} IOPS"
    );
}

#[test]
fn the_most_specific_host_address_wins_and_overlaps_are_reported() {
    let server = Server::start();
    server.file_pool("p", MIB);
    for name in ["mine", "everyones"] {
        server.ok(
            "volume_create",
            json!({"name": name, "pool": "p", "size": 8 * MIB}),
        );
    }
    // The test host ("tester") is 127.0.0.0/8; a catch-all host sorts before it by name.
    let any = server.ok(
        "host_create",
        json!({"name": "any", "addresses": ["0.0.0.0/0"]}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "any", "volume": "everyones"}),
    );
    // A client from 127.0.0.1 is tester's (a /8 is more specific than a /0): it reaches
    // tester's volume through tester's path, and not the catch-all host's volume.
    write_and_verify(&server.url("mine"), &[(0x6d, 0, 65536)]);
    let (clean, text) = qemu_io(
        &server.url_without_grant("everyones"),
        &["read 0 4096".into()],
    );
    assert!(!clean, "tester reached the catch-all host's volume: {text}");
    let overlaps = any["overlaps"].to_string();
    assert!(
        overlaps.contains("tester") && overlaps.contains("127.0.0.0/8"),
        "host_create did not report the overlap with tester: {any}"
    );
    let listed = server.ok("host_get_hosts", json!({"name": "tester"}));
    assert!(
        listed[0]["overlaps"].to_string().contains("any"),
        "host_get_hosts does not show the overlap: {listed}"
    );
}
