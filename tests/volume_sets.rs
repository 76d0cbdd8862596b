//! Volume sets through the real server and real clients: concat and stripe sets put their
//! members' bytes where the layout says (checked from both sides: through the set, and
//! through the members once the set is gone), a concatenation grows under a writing client and
//! hosts see the new size (new NBD and iSCSI connections; a live iSCSI session's unit
//! attention and a live NVMe controller's event), a restart keeps sets and data, and bad input
//! changes nothing.

mod common;
use common::*;
use serde_json::{json, Value};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A persistent pool `name` of one 64 MiB file LUN with 4 KiB blocks and 1 MiB extents.
fn pool(server: &Server, name: &str) {
    let lun = format!("{name}-lun");
    server.ok(
        "lun_create",
        json!({"name": lun, "kind": "file", "size": 64 * MIB, "block_size": 4096}),
    );
    server.ok(
        "pool_create",
        json!({"name": name, "luns": [lun], "extent_size": MIB}),
    );
}

fn volume(server: &Server, name: &str, pool: &str, size: u64) {
    server.ok(
        "volume_create",
        json!({"name": name, "pool": pool, "size": size}),
    );
}

/// Removes the test host's virtual path to `volume` (made by `Server::url`).
fn ungrant(server: &Server, volume: &str) {
    let id = server.grant(volume);
    server.ok("vpath_delete", json!({"id": id}));
}

fn sets(server: &Server) -> Value {
    server.ok("volume_set_get_sets", json!({}))
}

#[test]
fn concat_and_stripe_sets_put_data_where_their_layout_says() {
    let server = Server::start();
    pool(&server, "p1");
    pool(&server, "p2");
    volume(&server, "a", "p1", 8 * MIB);
    volume(&server, "b", "p2", 4 * MIB);
    // Data the member held before the set is kept, at the same addresses (a is first).
    write_and_verify(
        &server.url("a"),
        &[(0x11, 0, 64 * KIB), (0x12, 8 * MIB - 64 * KIB, 64 * KIB)],
    );
    ungrant(&server, "a");
    let set = server.ok(
        "volume_set_create",
        json!({"name": "cat", "members": ["a", "b"], "layout": "concat"}),
    );
    assert_eq!(set["size"], 12 * MIB, "{set}");
    assert_eq!(set["layout"], "concat");
    assert_eq!(set["members"], json!(["a", "b"]));
    // The set is a volume: listed, and reachable through a virtual path.
    let listed = server.ok("volume_get_volumes", json!({"name": "cat"}));
    assert_eq!(listed[0]["size"], 12 * MIB, "{listed}");
    let url = server.url("cat");
    verify(
        &url,
        &[(0x11, 0, 64 * KIB), (0x12, 8 * MIB - 64 * KIB, 32 * KIB)],
    );
    // Across the boundary between a and b, and at the very end.
    write_and_verify(
        &url,
        &[
            (0x21, 8 * MIB - 32 * KIB, 64 * KIB),
            (0x22, 12 * MIB - 4 * KIB, 4 * KIB),
        ],
    );
    server.ok("volume_set_delete", json!({"name": "cat"}));
    assert_eq!(sets(&server), json!([]));
    // The members again, each with its own part of what was written through the set.
    verify(
        &server.url("a"),
        &[(0x11, 0, 64 * KIB), (0x21, 8 * MIB - 32 * KIB, 32 * KIB)],
    );
    verify(
        &server.url("b"),
        &[
            (0x21, 0, 32 * KIB),
            (0x22, 4 * MIB - 4 * KIB, 4 * KIB),
            (0, 32 * KIB, 64 * KIB),
        ],
    );

    // A stripe of three over two pools: stripe k is on member k % 3 at (k / 3) * 64 KiB.
    volume(&server, "s0", "p1", 4 * MIB);
    volume(&server, "s1", "p2", 4 * MIB);
    volume(&server, "s2", "p1", 4 * MIB + 4 * KIB);
    let set = server.ok(
        "volume_set_create",
        json!({"name": "stripe", "members": ["s0", "s1", "s2"], "layout": "stripe", "stripe_size": 64 * KIB}),
    );
    // Whole stripes of the smallest member, times three.
    assert_eq!(set["size"], 12 * MIB, "{set}");
    assert_eq!(set["stripe_size"], 64 * KIB);
    let url = server.url("stripe");
    let mut writes: Vec<(u8, u64, u64)> = (0..6u64)
        .map(|k| (0x31 + k as u8, k * 64 * KIB, 64 * KIB))
        .collect();
    // One write over four stripes (16..19), and one inside a stripe.
    writes.push((0x40, MIB, 256 * KIB));
    writes.push((0x41, 12 * MIB - 8 * KIB, 4 * KIB));
    write_and_verify(&url, &writes);
    server.ok("volume_set_delete", json!({"name": "stripe"}));
    let row = 64 * KIB;
    verify(
        &server.url("s0"),
        &[(0x31, 0, row), (0x34, row, row), (0x40, 6 * row, row)],
    );
    verify(
        &server.url("s1"),
        &[
            (0x32, 0, row),
            (0x35, row, row),
            (0x40, 5 * row, row),
            (0x40, 6 * row, row),
        ],
    );
    // Stripe 191 (the last) is on s2 (191 % 3 = 2), row 63.
    verify(
        &server.url("s2"),
        &[
            (0x33, 0, row),
            (0x36, row, row),
            (0x40, 5 * row, row),
            (0x41, 63 * row + 56 * KIB, 4 * KIB),
        ],
    );
}

/// fio's job over the first `size` bytes of `url`: random 16 KiB writes, each block once,
/// checked with crc32c (then, or with `verify_only`, later).
fn fio_job(url: &str, size: u64, verify_only: bool) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--name=set".into(),
        "--ioengine=nbd".into(),
        format!("--uri={url}"),
        "--rw=randwrite".into(),
        "--bs=16k".into(),
        "--iodepth=8".into(),
        format!("--size={size}"),
        "--verify=crc32c".into(),
        "--do_verify=1".into(),
        "--verify_fatal=1".into(),
        "--randseed=1111".into(),
    ];
    if verify_only {
        args.push("--verify_only".into());
    } else {
        // At most 1000 writes a second: the 1024 writes take a second at least, so the set
        // grows while they run, however fast the machine.
        args.push("--rate_iops=1000".into());
    }
    args
}

#[test]
fn a_concat_set_grows_while_a_client_writes_and_hosts_see_the_new_size() {
    const INITIATOR: &str = "iqn.2026-11.org.sds.test:sets";
    let mut server = Server::start();
    pool(&server, "p1");
    pool(&server, "p2");
    volume(&server, "g0", "p1", 8 * MIB);
    volume(&server, "g1", "p2", 8 * MIB);
    volume(&server, "g2", "p1", 8 * MIB);
    server.ok(
        "volume_set_create",
        json!({"name": "grow", "members": ["g0", "g1"]}),
    );
    server.ok("host_create", json!({"name": "ih", "iqn": INITIATOR}));
    server.ok(
        "vpath_create",
        json!({"host": "ih", "volume": "grow", "lun": 0}),
    );
    let url = server.url("grow");
    let fio_dir = server.dir.path().to_path_buf();
    let job = fio_job(&url, 16 * MIB, false);
    let writer = std::thread::spawn(move || fio(&fio_dir, &job));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let grown = server.ok(
        "volume_set_add_member",
        json!({"set": "grow", "volume": "g2"}),
    );
    assert_eq!(grown["size"], 24 * MIB, "{grown}");
    assert_eq!(grown["members"], json!(["g0", "g1", "g2"]));
    assert!(
        !writer.is_finished(),
        "the set grew after the writes, not during them"
    );
    let (ok, text) = writer.join().expect("fio thread");
    assert!(ok, "I/O while the set grew failed:\n{text}");

    // New connections see the new size: NBD and iSCSI.
    require_tool("nbdinfo");
    let output = std::process::Command::new("nbdinfo")
        .args(["--size", &url])
        .output()
        .expect("nbdinfo");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        (24 * MIB).to_string()
    );
    let (ok, text, size) = iscsi_readcapacity16(&server.iscsi_url(0), INITIATOR);
    assert!(ok, "{text}");
    assert_eq!(size, Some(24 * MIB), "{text}");

    // Everything fio wrote still verifies, and the new space takes data at once.
    let (ok, text) = fio(server.dir.path(), &fio_job(&url, 16 * MIB, true));
    assert!(ok, "fio verify after growing:\n{text}");
    write_and_verify(&url, &[(0x52, 24 * MIB - 64 * KIB, 64 * KIB)]);

    // A restart keeps the grown set, its members and its data.
    assert!(server.stop(), "clean stop");
    server.spawn();
    let after = &sets(&server)[0];
    assert_eq!(after["size"], 24 * MIB, "{after}");
    assert_eq!(after["members"], json!(["g0", "g1", "g2"]));
    let (ok, text) = fio(server.dir.path(), &fio_job(&url, 16 * MIB, true));
    assert!(ok, "fio verify after a restart:\n{text}");
    verify(&url, &[(0x52, 24 * MIB - 64 * KIB, 64 * KIB)]);
    // And a kill -9 too.
    write_and_verify(&url, &[(0x53, 16 * MIB + 4 * KIB, 8 * KIB)]);
    server.kill();
    server.spawn();
    verify(
        &url,
        &[
            (0x52, 24 * MIB - 64 * KIB, 64 * KIB),
            (0x53, 16 * MIB + 4 * KIB, 8 * KIB),
        ],
    );
}

#[test]
fn a_stripe_set_survives_a_restart() {
    let mut server = Server::start();
    pool(&server, "p1");
    pool(&server, "p2");
    volume(&server, "t0", "p1", 4 * MIB);
    volume(&server, "t1", "p2", 4 * MIB);
    let created = server.ok(
        "volume_set_create",
        json!({"name": "st", "members": ["t0", "t1"], "layout": "stripe", "stripe_size": 4 * KIB}),
    );
    let url = server.url("st");
    let writes = [(0x61, 0, 12 * KIB), (0x62, 3 * MIB + 2 * KIB * 2, 20 * KIB)];
    write_and_verify(&url, &writes);
    // A set's QoS limits are kept in its own record.
    server.ok(
        "bdev_set_qos_limit",
        json!({"name": "st", "rw_ios_per_sec": 5000}),
    );
    let before = sets(&server);
    let volume_before = server.ok("volume_get_volumes", json!({"name": "st"}));
    assert!(server.stop(), "clean stop");
    server.spawn();
    assert_eq!(sets(&server), before);
    assert_eq!(before[0]["uuid"], created["uuid"]);
    let volume_after = server.ok("volume_get_volumes", json!({"name": "st"}));
    assert_eq!(volume_after[0]["qos"], volume_before[0]["qos"]);
    assert_eq!(
        volume_after[0]["qos"]["rw_ios_per_sec"], 5000,
        "{volume_after}"
    );
    verify(&url, &writes);
}

/// Asserts `method` with `params` is refused with invalid params naming `parameter`.
fn refused(server: &Server, method: &str, params: Value, parameter: &str) {
    let (code, message) = server
        .call(method, params.clone())
        .expect_err(&format!("{method} {params} must be refused"));
    assert_eq!(code, -32602, "{message}");
    assert!(
        message.starts_with(&format!("{parameter}:")),
        "{method} {params}: {message}"
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let server = Server::start();
    pool(&server, "p1");
    volume(&server, "m0", "p1", 4 * MIB);
    volume(&server, "m1", "p1", 4 * MIB);
    volume(&server, "m2", "p1", 4 * MIB);
    server.ok(
        "volume_create",
        json!({"name": "small", "pool": "p1", "size": 4 * MIB, "block_size": 512}),
    );
    volume(&server, "used", "p1", 4 * MIB);
    server.grant("used");
    server.ok(
        "volume_set_create",
        json!({"name": "set", "members": ["m0", "m1"]}),
    );
    server.ok(
        "volume_set_create",
        json!({"name": "str", "members": ["m2"], "layout": "stripe"}),
    );
    let files_before = records(&server);
    assert!(
        files_before.iter().any(|(n, _)| n == "volume_set-set.json"),
        "{files_before:?}"
    );
    let sets_before = sets(&server);
    let volumes_before = server.ok("volume_get_volumes", json!({}));

    let create = |members: Value, extra: Value| {
        let mut params = json!({"name": "new", "members": members});
        for (key, value) in extra.as_object().into_iter().flatten() {
            params[key] = value.clone();
        }
        params
    };
    // Members: in use by a VP, in another set, unknown, twice, of another block size, a set.
    refused(
        &server,
        "volume_set_create",
        create(json!(["used"]), json!({})),
        "members",
    );
    refused(
        &server,
        "volume_set_create",
        create(json!(["m0"]), json!({})),
        "members",
    );
    refused(
        &server,
        "volume_set_create",
        create(json!(["nope"]), json!({})),
        "members",
    );
    refused(
        &server,
        "volume_set_create",
        create(json!(["small", "small"]), json!({})),
        "members",
    );
    refused(
        &server,
        "volume_set_create",
        create(json!(["small", "used"]), json!({})),
        "members",
    );
    refused(
        &server,
        "volume_set_create",
        create(json!(["set"]), json!({})),
        "members",
    );
    refused(
        &server,
        "volume_set_create",
        create(json!([]), json!({})),
        "members",
    );
    // Layouts and stripe sizes.
    refused(
        &server,
        "volume_set_create",
        create(json!(["small"]), json!({"layout": "raid5"})),
        "layout",
    );
    for stripe in [3 * 4096, 0, 256, 1u64 << 40, 8 * MIB] {
        refused(
            &server,
            "volume_set_create",
            create(
                json!(["small"]),
                json!({"layout": "stripe", "stripe_size": stripe}),
            ),
            "stripe_size",
        );
    }
    refused(
        &server,
        "volume_set_create",
        create(json!(["small"]), json!({"stripe_size": 65536})),
        "stripe_size",
    );
    // Names taken.
    refused(
        &server,
        "volume_set_create",
        json!({"name": "m0", "members": ["small"]}),
        "name",
    );
    refused(
        &server,
        "volume_set_create",
        json!({"name": "set", "members": ["small"]}),
        "name",
    );
    // Growing: a stripe does not; a member must be free and match.
    refused(
        &server,
        "volume_set_add_member",
        json!({"set": "str", "volume": "small"}),
        "set",
    );
    refused(
        &server,
        "volume_set_add_member",
        json!({"set": "nope", "volume": "small"}),
        "set",
    );
    refused(
        &server,
        "volume_set_add_member",
        json!({"set": "set", "volume": "small"}),
        "volume",
    );
    refused(
        &server,
        "volume_set_add_member",
        json!({"set": "set", "volume": "used"}),
        "volume",
    );
    refused(
        &server,
        "volume_set_add_member",
        json!({"set": "set", "volume": "m2"}),
        "volume",
    );
    refused(
        &server,
        "volume_set_add_member",
        json!({"set": "set", "volume": "set"}),
        "volume",
    );
    // Members are reserved; a set is not a plain volume.
    refused(
        &server,
        "vpath_create",
        json!({"host": TEST_HOST, "volume": "m0"}),
        "volume",
    );
    refused(&server, "volume_delete", json!({"name": "m1"}), "name");
    refused(
        &server,
        "volume_resize",
        json!({"name": "m1", "size": 8 * MIB}),
        "name",
    );
    refused(&server, "volume_delete", json!({"name": "set"}), "name");
    refused(
        &server,
        "volume_resize",
        json!({"name": "set", "size": 16 * MIB}),
        "name",
    );
    refused(&server, "volume_set_delete", json!({"name": "m0"}), "name");
    refused(&server, "pool_delete", json!({"name": "p1"}), "name");

    assert_eq!(sets(&server), sets_before);
    assert_eq!(server.ok("volume_get_volumes", json!({})), volumes_before);
    assert_eq!(records(&server), files_before);
    // The refused ones are still usable as they were.
    write_and_verify(&server.url("small"), &[(0x71, 0, 4 * KIB)]);
    write_and_verify(&server.url("set"), &[(0x72, 4 * MIB - 4 * KIB, 8 * KIB)]);
}

/// The server's record files: names and contents.
fn records(server: &Server) -> Vec<(String, String)> {
    let dir = server.state_dir.join("config");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("config dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(&n)).unwrap_or_default();
            (n, text)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn the_cli_makes_lists_grows_and_deletes_sets() {
    let server = Server::start();
    pool(&server, "p1");
    for name in ["c0", "c1", "c2"] {
        volume(&server, name, "p1", 4 * MIB);
    }
    let run = |args: &[&str]| {
        let output = server.cli(args);
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "sds {args:?}:\n{text}");
        text
    };
    let table = run(&["volume-set", "create", "cs", "--members", "c0,c1"]);
    assert!(
        table.contains("LAYOUT") && table.contains("concat"),
        "{table}"
    );
    let table = run(&["volume-set", "add-member", "cs", "c2"]);
    assert!(
        table.contains("c0,c1,c2") && table.contains("12.0 MiB"),
        "{table}"
    );
    let listed: Value =
        serde_json::from_str(&run(&["--json", "volume-set", "list"])).expect("json");
    assert_eq!(listed[0]["size"], 12 * MIB, "{listed}");
    assert_eq!(listed[0]["members"], json!(["c0", "c1", "c2"]));
    let output = server.cli(&["volume-set", "create", "bad", "--members", "c0"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("already a member"),
        "{output:?}"
    );
    let said = run(&["volume-set", "delete", "cs"]);
    assert!(said.contains("deleted"), "{said}");
    let listed: Value =
        serde_json::from_str(&run(&["--json", "volume-set", "list"])).expect("json");
    assert_eq!(listed, json!([]));
}

#[test]
fn live_iscsi_and_nvme_sessions_hear_that_a_set_grew() {
    use common::initiator::{Initiator, CHECK_CONDITION};
    use common::nvmf_initiator::{u64_at, Identity, NvmfConnection};
    use sds::nvmf::command::CommandBuilder;
    use sds::target::iscsi::pdu_io::Digests;
    use std::time::{Duration, Instant};
    const IQN: &str = "iqn.2026-11.org.sds.test:sets-live";
    const NQN: &str = "nqn.2014-08.org.example:sets-live";
    let server = Server::start();
    server.ram_pool("p", 64 * MIB);
    for name in ["l0", "l1", "l2"] {
        volume(&server, name, "p", 2 * MIB);
    }
    server.ok(
        "volume_set_create",
        json!({"name": "live", "members": ["l0", "l1"]}),
    );
    server.ok("host_create", json!({"name": "h", "iqn": IQN, "nqn": NQN}));
    server.ok(
        "vpath_create",
        json!({"host": "h", "volume": "live", "lun": 0}),
    );

    // NVMe: namespace attribute notices on, one Asynchronous Event Request held.
    let subnqn = server.nvmf_subnqn("h");
    let identity = Identity {
        hostnqn: NQN.into(),
        hostid: [0x22; 16],
    };
    let (mut admin, answer) =
        NvmfConnection::admin(server.nvmf_port(), &identity, &subnqn, 0).expect("connect");
    assert!(answer.status().is_success(), "{}", answer.status());
    admin.enable().expect("enable");
    let cid = admin.cid();
    let aec = CommandBuilder::new(0x09, cid)
        .cdw(10, 0x0b)
        .cdw(11, 1 << 8)
        .build();
    assert!(admin.command(aec, &[]).expect("AEC").status().is_success());
    let aer = admin.cid();
    admin
        .submit(CommandBuilder::new(0x0c, aer).build())
        .expect("AER");
    let namespace = admin.identify(0, 1).expect("identify namespace");
    assert_eq!(u64_at(&namespace.data, 0), 4 * MIB / 4096);

    // iSCSI: a live session that has read the capacity.
    let mut session = Initiator::login(
        server.iscsi_port(),
        IQN,
        &server.iscsi_target(),
        Digests::default(),
    )
    .expect("iSCSI login");
    let mut first = session.read_capacity16(0).expect("READ CAPACITY");
    if first.is_err() {
        // The unit attention of a new nexus first.
        first = session.read_capacity16(0).expect("READ CAPACITY");
    }
    assert_eq!(first.ok().map(|(last, _)| last + 1), Some(4 * MIB / 4096));

    server.ok(
        "volume_set_add_member",
        json!({"set": "live", "volume": "l2"}),
    );
    let event = admin.answer(aer).expect("the event");
    assert_eq!(
        event.completion.result & 0xff_ffff,
        0x04_0002,
        "Notice, namespace attribute changed, log page 04h"
    );
    let namespace = admin.identify(0, 1).expect("identify namespace");
    assert_eq!(u64_at(&namespace.data, 0), 6 * MIB / 4096, "the new size");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let outcome = session.test_unit_ready(0).expect("TEST UNIT READY");
        if outcome.status == CHECK_CONDITION {
            assert_eq!(
                outcome.sense_triple(),
                Some((0x06, 0x2a, 0x09)),
                "UNIT ATTENTION, CAPACITY DATA HAS CHANGED"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no unit attention after growing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (last, _) = session
        .read_capacity16(0)
        .expect("READ CAPACITY")
        .expect("GOOD");
    assert_eq!(last + 1, 6 * MIB / 4096);
}

#[test]
fn a_set_whose_member_failed_at_start_up_is_listed_failed_and_can_be_deleted() {
    let mut server = Server::start();
    pool(&server, "p1");
    pool(&server, "p2");
    volume(&server, "a", "p1", 4 * MIB);
    volume(&server, "b", "p2", 4 * MIB);
    server.ok(
        "volume_set_create",
        json!({"name": "fs", "members": ["a", "b"]}),
    );
    server.grant("fs");
    let lun = &server.ok("lun_get_luns", json!({"name": "p2-lun"}))[0];
    let path = lun["path"].as_str().expect("a file LUN's path").to_string();
    assert!(server.stop(), "clean stop");
    std::fs::remove_file(&path).expect("remove the LUN's file");
    server.spawn();
    // b's pool is failed, so b is, so the set is: listed with the reason, not served.
    let set = &sets(&server)[0];
    assert_eq!(set["state"], "failed", "{set}");
    assert!(
        set["reason"].as_str().unwrap_or("").contains("member b"),
        "{set}"
    );
    let volume = &server.ok("volume_get_volumes", json!({}));
    let listed = volume
        .as_array()
        .and_then(|all| all.iter().find(|v| v["name"] == "fs"))
        .expect("the set among the volumes");
    assert_eq!(listed["state"], "failed", "{listed}");
    let (clean, text) = qemu_io(&server.url_without_grant("fs"), &["read 0 4k".into()]);
    assert!(!clean, "a failed set was served:\n{text}");
    // Members stay reserved while the set exists; deleting it frees them.
    refused(&server, "volume_delete", json!({"name": "a"}), "name");
    refused(&server, "volume_delete", json!({"name": "b"}), "name");
    server.ok("volume_set_delete", json!({"name": "fs"}));
    assert_eq!(sets(&server), json!([]));
    server.ok("volume_delete", json!({"name": "b"}));
    // Nothing of the set is left to trip the next start.
    assert!(server.stop(), "clean stop");
    server.spawn();
    assert_eq!(sets(&server), json!([]));
    write_and_verify(&server.url("a"), &[(0x81, 0, 4 * KIB)]);
}
