//! The NVMe/TCP controllers through the real server and a test initiator on `sds::nvmf`:
//! the subsystem model (one subsystem per host, its VPs as namespaces at NSID = LUN + 1),
//! the discovery log per host, Connect refusals, Identify values, properties, keep-alive
//! expiry, asynchronous events on configuration changes, and the `nvmf_*` RPCs and hosts'
//! `nqn`.

mod common;

use common::nvmf_initiator::{
    text_field, u16_at, u32_at, u64_at, Identity, NvmfConnection, DISCOVERY_NQN,
};
use common::Server;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const INVALID_PARAMS: i64 = -32602;
const HOST_A: &str = "nqn.2014-08.org.example:host-a";
const HOST_B: &str = "nqn.2014-08.org.example:host-b";
const STRANGER: &str = "nqn.2014-08.org.example:stranger";
// Connect status CONNECT_INVALID_HOST: command specific (SCT 1), SC 84h.
const SCT_COMMAND_SPECIFIC: u8 = 1;
const SC_CONNECT_INVALID_HOST: u8 = 0x84;
const SC_COMMAND_SEQUENCE_ERROR: u8 = 0x0c;
const SC_CONNECT_INVALID_PARAMETERS: u8 = 0x82;

fn identity(hostnqn: &str) -> Identity {
    Identity {
        hostnqn: hostnqn.into(),
        hostid: [0x11; 16],
    }
}

/// A server with host `a` (nqn HOST_A; VPs at LUN 0 to `va0`, 1 MiB of 512-byte blocks, and
/// at LUN 3 to `va3`, 2 MiB of 4096-byte blocks, read-only), host `b` (nqn HOST_B, no VP) and
/// host `c` (no nqn; a VP to `vc`).
fn server() -> Server {
    let server = Server::start();
    server.ram_pool("p", 64 << 20);
    server.ok(
        "volume_create",
        json!({"name": "va0", "pool": "p", "size": 1u64 << 20, "block_size": 512}),
    );
    server.ok(
        "volume_create",
        json!({"name": "va3", "pool": "p", "size": 2u64 << 20, "block_size": 4096}),
    );
    server.ok(
        "volume_create",
        json!({"name": "vc", "pool": "p", "size": 1u64 << 20}),
    );
    server.ok("host_create", json!({"name": "a", "nqn": HOST_A}));
    server.ok("host_create", json!({"name": "b", "nqn": HOST_B}));
    server.ok(
        "host_create",
        json!({"name": "c", "iqn": "iqn.2014-08.org.example:c"}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "a", "volume": "va0", "lun": 0}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "a", "volume": "va3", "lun": 3, "mode": "ro"}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "c", "volume": "vc", "lun": 0}),
    );
    server
}

fn connected(server: &Server, hostnqn: &str, subnqn: &str, kato_ms: u32) -> (NvmfConnection, u16) {
    let (connection, answer) =
        NvmfConnection::admin(server.nvmf_port(), &identity(hostnqn), subnqn, kato_ms)
            .expect("connect");
    assert!(
        answer.status().is_success(),
        "Connect of {hostnqn} to {subnqn}: {}; log:\n{}",
        answer.status(),
        server.log()
    );
    (connection, answer.completion.result as u16)
}

fn uuid_bytes(text: &str) -> Vec<u8> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// The number of records and the subsystem NQNs of a discovery log.
fn discovery_records(log: &[u8]) -> (u64, Vec<(String, String, String)>) {
    let records = u64_at(log, 8);
    let entries = (0..records as usize)
        .map(|i| {
            let entry = &log[1024 + i * 1024..2048 + i * 1024];
            assert_eq!(entry[0], 3, "TRTYPE TCP");
            assert_eq!(entry[2], 2, "SUBTYPE NVM subsystem");
            (
                text_field(&entry[256..512]),
                text_field(&entry[512..768]),
                text_field(&entry[32..64]),
            )
        })
        .collect();
    (records, entries)
}

#[test]
fn the_discovery_log_shows_each_host_only_its_own_subsystem() {
    let server = server();
    let a_subnqn = server.nvmf_subnqn("a");
    for (hostnqn, expected) in [
        (HOST_A, vec![a_subnqn.clone()]),
        (HOST_B, Vec::new()),
        (STRANGER, Vec::new()),
    ] {
        let (mut discovery, _) = connected(&server, hostnqn, DISCOVERY_NQN, 0);
        discovery.enable().expect("enable");
        let qpairs = server.ok("nvmf_get_qpairs", json!({"nqn": DISCOVERY_NQN}));
        assert_eq!(
            qpairs[0]["kato_ms"], 120_000,
            "a discovery controller without KATO still ends when forgotten"
        );
        let controller = discovery.identify(1, 0).expect("identify");
        assert_eq!(controller.data[111], 2, "a discovery controller");
        let log = discovery.log_page(0x70, 4096).expect("discovery log");
        assert!(log.status().is_success(), "{}", log.status());
        let (records, entries) = discovery_records(&log.data);
        assert_eq!(records as usize, expected.len(), "{hostnqn}");
        let subnqns: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
        assert_eq!(subnqns, expected, "{hostnqn}");
        for (_, address, port) in &entries {
            assert_eq!(address, "127.0.0.1");
            assert_eq!(port, &server.nvmf_port().to_string());
        }
    }
}

#[test]
fn only_the_owner_with_a_vp_may_connect_to_a_subsystem() {
    let server = server();
    let a_subnqn = server.nvmf_subnqn("a");
    let b_subnqn = server.nvmf_subnqn("b");
    for (hostnqn, subnqn, why) in [
        (STRANGER, a_subnqn.as_str(), "a stranger"),
        (HOST_B, a_subnqn.as_str(), "another host"),
        (HOST_B, b_subnqn.as_str(), "its own subsystem, but no VP"),
    ] {
        let (_, answer) = NvmfConnection::admin(server.nvmf_port(), &identity(hostnqn), subnqn, 0)
            .expect("connect");
        let status = answer.status();
        assert_eq!(
            (status.sct, status.sc),
            (SCT_COMMAND_SPECIFIC, SC_CONNECT_INVALID_HOST),
            "{why}: {status}"
        );
    }
    let qpairs = server.ok("nvmf_get_qpairs", json!({}));
    assert_eq!(qpairs, json!([]), "no controller was made");
}

#[test]
fn identify_tells_the_host_its_namespaces_and_their_volumes() {
    let server = server();
    let a_subnqn = server.nvmf_subnqn("a");
    let (mut admin, cntlid) = connected(&server, HOST_A, &a_subnqn, 0);

    // Nothing but fabrics commands before CC.EN.
    let csts = admin.property_get(0x1c, false).expect("CSTS");
    assert_eq!(csts.completion.result & 1, 0, "not ready before CC.EN");
    let early = admin.identify(1, 0).expect("identify");
    assert_eq!(early.status().sc, SC_COMMAND_SEQUENCE_ERROR);
    let cap = admin
        .property_get(0x00, true)
        .expect("CAP")
        .completion
        .result;
    assert_eq!(cap & 0xffff, 127, "MQES");
    assert_eq!(
        admin.property_get(0x08, false).unwrap().completion.result,
        0x0001_0300
    );
    let csts = admin.enable().expect("enable");
    assert_eq!(csts & 1, 1, "CSTS.RDY after CC.EN");

    let controller = admin.identify(1, 0).expect("identify controller");
    assert!(controller.status().is_success());
    let id = &controller.data;
    assert_eq!(id.len(), 4096);
    assert_eq!(u16_at(id, 78), cntlid, "CNTLID");
    assert_eq!(text_field(&id[24..64]), "sds", "MN");
    assert_eq!(text_field(&id[768..1024]), a_subnqn, "SUBNQN");
    assert_eq!(u32_at(id, 80), 0x0001_0300, "VER");
    assert_eq!(id[111], 1, "an I/O controller");

    let list = admin.identify(2, 0).expect("active namespaces");
    let nsids: Vec<u32> = (0..4)
        .map(|i| u32_at(&list.data, i * 4))
        .take_while(|&nsid| nsid != 0)
        .collect();
    assert_eq!(
        nsids,
        vec![1, 4],
        "the host's VPs at LUN 0 and 3, nothing of host c"
    );

    let volumes = server.ok("volume_get_volumes", json!({}));
    let uuid_of = |name: &str| -> Vec<u8> {
        let volume = volumes
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .expect("volume");
        uuid_bytes(volume["uuid"].as_str().expect("uuid"))
    };
    for (nsid, volume, bytes, block, read_only) in [
        (1u32, "va0", 1u64 << 20, 512u64, 0u8),
        (4, "va3", 2 << 20, 4096, 1),
    ] {
        let namespace = admin.identify(0, nsid).expect("identify namespace");
        let ns = &namespace.data;
        assert_eq!(u64_at(ns, 0), bytes / block, "NSZE of {volume}");
        assert_eq!(u64_at(ns, 8), bytes / block, "NCAP of {volume}");
        let lbads = (u32_at(ns, 128) >> 16) & 0xff;
        assert_eq!(1u64 << lbads, block, "LBA format 0 of {volume}");
        assert_eq!(&ns[104..120], uuid_of(volume).as_slice(), "NGUID = uuid");
        assert_eq!(ns[99] & 1, read_only, "NSATTR write protect of {volume}");
        let descriptors = admin.identify(3, nsid).expect("descriptors");
        assert_eq!(&descriptors.data[0..2], &[2, 16], "NGUID descriptor");
        assert_eq!(&descriptors.data[4..20], uuid_of(volume).as_slice());
        assert_eq!(&descriptors.data[20..22], &[3, 16], "UUID descriptor");
        assert_eq!(&descriptors.data[24..40], uuid_of(volume).as_slice());
    }
    let inactive = admin.identify(0, 2).expect("inactive namespace");
    assert!(inactive.status().is_success());
    assert!(
        inactive.data.iter().all(|&b| b == 0),
        "an inactive NSID: zeroes"
    );

    // The controller shows in the RPCs.
    let qpairs = server.ok("nvmf_get_qpairs", json!({"nqn": a_subnqn}));
    assert_eq!(qpairs[0]["cntlid"], cntlid);
    assert_eq!(qpairs[0]["host"], "a");
    assert_eq!(qpairs[0]["hostnqn"], HOST_A);
    assert_eq!(qpairs[0]["state"], "active");
    let subsystem = server.ok("nvmf_get_subsystems", json!({"nqn": a_subnqn}));
    assert_eq!(subsystem[0]["controllers"], 1);
    assert_eq!(subsystem[0]["hosts"], json!([{"nqn": HOST_A}]));
    let namespaces: Vec<(u64, String)> = subsystem[0]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["nsid"].as_u64().unwrap(),
                n["volume"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(namespaces, vec![(1, "va0".into()), (4, "va3".into())]);
}

#[test]
fn a_silent_host_loses_its_controller_when_keep_alive_expires() {
    let server = server();
    let a_subnqn = server.nvmf_subnqn("a");
    let (mut admin, cntlid) = connected(&server, HOST_A, &a_subnqn, 1000);
    admin.enable().expect("enable");
    assert_eq!(server.ok("nvmf_get_qpairs", json!({}))[0]["kato_ms"], 1000);
    // KATO 1 s and the 1 s grace: well within 20 s the controller must be gone.
    assert!(
        admin.closed_within(Duration::from_secs(20)),
        "the controller outlived its keep-alive timeout; log:\n{}",
        server.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.ok("nvmf_get_qpairs", json!({})) != json!([]) {
        assert!(
            Instant::now() < deadline,
            "controller {cntlid} still listed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.log().contains("keep-alive"), "the log says why");

    // A host that keeps it alive keeps it.
    let (mut admin, _) = connected(&server, HOST_A, &a_subnqn, 1000);
    admin.enable().expect("enable");
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(300));
        let cid = admin.cid();
        let keep_alive = sds::nvmf::command::CommandBuilder::new(0x18, cid).build();
        let answer = admin.command(keep_alive, &[]).expect("keep alive");
        assert!(answer.status().is_success());
    }
}

#[test]
fn a_new_vp_is_an_event_and_a_deleted_one_ends_the_controller() {
    let server = server();
    let a_subnqn = server.nvmf_subnqn("a");
    let (mut admin, _) = connected(&server, HOST_A, &a_subnqn, 0);
    admin.enable().expect("enable");
    // Namespace attribute notices on, and one Asynchronous Event Request held.
    let cid = admin.cid();
    let aec = sds::nvmf::command::CommandBuilder::new(0x09, cid)
        .cdw(10, 0x0b)
        .cdw(11, 1 << 8)
        .build();
    assert!(admin.command(aec, &[]).unwrap().status().is_success());
    let aer_cid = admin.cid();
    admin
        .submit(sds::nvmf::command::CommandBuilder::new(0x0c, aer_cid).build())
        .expect("AER");
    server.ok(
        "volume_create",
        json!({"name": "va7", "pool": "p", "size": 1u64 << 20}),
    );
    let vpath = server.ok(
        "vpath_create",
        json!({"host": "a", "volume": "va7", "lun": 7}),
    );
    let event = admin.answer(aer_cid).expect("the event");
    assert!(event.status().is_success());
    assert_eq!(
        event.completion.result & 0xff_ffff,
        0x04_0002,
        "Notice, namespace attribute changed, log page 04h"
    );
    let changed = admin.log_page(0x04, 4096).expect("changed namespaces");
    assert_eq!(u32_at(&changed.data, 0), 8, "NSID of LUN 7");
    assert_eq!(u32_at(&changed.data, 4), 0);
    let list = admin.identify(2, 0).expect("active namespaces");
    assert_eq!(
        (
            u32_at(&list.data, 0),
            u32_at(&list.data, 4),
            u32_at(&list.data, 8)
        ),
        (1, 4, 8)
    );
    // A resize is an event too.
    let aer_cid = admin.cid();
    admin
        .submit(sds::nvmf::command::CommandBuilder::new(0x0c, aer_cid).build())
        .expect("AER");
    server.ok("volume_resize", json!({"name": "va0", "size": 2u64 << 20}));
    let event = admin.answer(aer_cid).expect("the resize event");
    assert_eq!(event.completion.result & 0xff_ffff, 0x04_0002);
    let namespace = admin.identify(0, 1).expect("identify namespace");
    assert_eq!(u64_at(&namespace.data, 0), 4096, "the new size in blocks");

    // Deleting a VP ends the host's controllers; it connects again and sees the rest.
    server.ok("vpath_delete", json!({"id": vpath["id"]}));
    assert!(
        admin.closed_within(Duration::from_secs(20)),
        "the controller survived vpath_delete"
    );
    let (mut again, _) = connected(&server, HOST_A, &a_subnqn, 0);
    again.enable().expect("enable");
    let list = again.identify(2, 0).expect("active namespaces");
    assert_eq!(
        (
            u32_at(&list.data, 0),
            u32_at(&list.data, 4),
            u32_at(&list.data, 8)
        ),
        (1, 4, 0)
    );
}

#[test]
fn hosts_nqn_is_checked_and_unique_and_the_rpcs_say_what_is_wrong() {
    let server = server();
    for bad in [
        "host-a",
        "nqn.14-08.org.example:x",
        "nqn.2014-08.org..example",
        "nqn.2014-08.org.nvmexpress:uuid:1234",
        "nqn.2014-08.org.example:a b",
    ] {
        let (code, message) = server
            .call("host_create", json!({"name": "x", "nqn": bad}))
            .expect_err(bad);
        assert_eq!(code, INVALID_PARAMS, "{bad}: {message}");
        assert!(message.starts_with("nqn: "), "{bad}: {message}");
    }
    let (code, message) = server
        .call("host_create", json!({"name": "x", "nqn": HOST_A}))
        .expect_err("a taken nqn");
    assert_eq!(code, INVALID_PARAMS);
    assert!(message.contains("host a"), "{message}");
    let created = server.ok(
        "host_create",
        json!({"name": "u", "nqn": "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"}),
    );
    assert_eq!(
        created["nqn"],
        "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    );

    for (method, params, wanted) in [
        ("nvmf_get_subsystems", json!({"bogus": 1}), "bogus"),
        ("nvmf_get_subsystems", json!({"nqn": 7}), "nqn"),
        (
            "nvmf_get_subsystems",
            json!({"nqn": "nqn.2014-08.org.example:none"}),
            "nqn: no subsystem",
        ),
        (
            "nvmf_get_qpairs",
            json!({"nqn": "nqn.2014-08.org.example:none"}),
            "nqn: no subsystem",
        ),
        ("nvmf_get_qpairs", json!({"cntlid": 1}), "cntlid"),
    ] {
        let (code, message) = server.call(method, params.clone()).expect_err(method);
        assert_eq!(code, INVALID_PARAMS, "{method} {params}: {message}");
        assert!(message.contains(wanted), "{method} {params}: {message}");
    }
    let subsystems = server.ok("nvmf_get_subsystems", json!({}));
    let nqns: Vec<&str> = subsystems
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["nqn"].as_str().unwrap())
        .collect();
    assert_eq!(nqns[0], DISCOVERY_NQN);
    assert_eq!(
        nqns.len(),
        4,
        "discovery, then a, b and u (c has no nqn): {nqns:?}"
    );
    let base = nqns[1].strip_suffix(":a").expect("<base>:a");
    assert!(base.starts_with("nqn.2026-11.org.sds:"), "{base}");
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(server.state_dir.join("nvmf.json")).expect("nvmf.json"),
    )
    .unwrap();
    assert_eq!(
        stored["nqn_base"], base,
        "the base is kept in STATE/nvmf.json"
    );

    // The CLI shows the same as tables.
    let output = server.cli(&["nvmf", "subsystems"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(&format!("{base}:a")) && text.contains("va3"),
        "{text}"
    );
    let output = server.cli(&["nvmf", "qpairs", "--json"]);
    assert!(output.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&output.stdout).expect("json"),
        json!([])
    );
}

#[test]
fn an_io_queue_joins_its_controller_and_carries_io() {
    let server = server();
    let a_subnqn = server.nvmf_subnqn("a");
    let port = server.nvmf_port();
    let (mut admin, cntlid) = connected(&server, HOST_A, &a_subnqn, 0);
    let io = |hostnqn: &str, qid: u16, cntlid: u16| {
        NvmfConnection::io_queue(port, &identity(hostnqn), &a_subnqn, qid, cntlid)
            .expect("connect an I/O queue")
    };
    let (_, early) = io(HOST_A, 1, cntlid);
    assert_eq!(
        early.status().sc,
        SC_COMMAND_SEQUENCE_ERROR,
        "no I/O queue before CC.EN"
    );
    admin.enable().expect("enable");
    let (_, wrong_controller) = io(HOST_A, 1, cntlid.wrapping_add(1));
    assert_eq!(
        (
            wrong_controller.status().sc,
            wrong_controller.completion.result
        ),
        (SC_CONNECT_INVALID_PARAMETERS, 16 | (1 << 16)),
        "invalid CNTLID, at offset 16 of the Connect data"
    );
    let (_, stranger) = io(STRANGER, 1, cntlid);
    assert_eq!(stranger.status().sc, SC_CONNECT_INVALID_HOST);
    let (_, too_many) = io(HOST_A, 99, cntlid);
    assert_eq!(
        (too_many.status().sc, too_many.completion.result),
        (SC_CONNECT_INVALID_PARAMETERS, 42),
        "QID past the queues granted, at offset 42 of the command"
    );

    let (mut queue, answer) = io(HOST_A, 1, cntlid);
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(answer.completion.result as u16, cntlid);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let written = queue.write(1, 16, 8, &pattern).expect("write");
    assert!(written.status().is_success(), "{}", written.status());
    let read = queue.read(1, 16, 8, 4096).expect("read");
    assert!(read.status().is_success(), "{}", read.status());
    assert_eq!(read.data, pattern, "read back what was written");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.ok("nvmf_get_qpairs", json!({}))[0]["io_queues"] != 1 {
        assert!(Instant::now() < deadline, "the I/O queue is not counted");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The admin queue's end ends the I/O queues.
    drop(admin);
    assert!(
        queue.closed_within(Duration::from_secs(20)),
        "the I/O queue outlived its controller; log:\n{}",
        server.log()
    );
}

#[test]
fn a_malformed_pdu_ends_only_its_own_connection() {
    use sds::nvmf::pdu::Header;
    let server = server();
    let a_subnqn = server.nvmf_subnqn("a");
    let (mut healthy, _) = connected(&server, HOST_A, &a_subnqn, 0);
    healthy.enable().expect("enable");

    // An admin queue that sends a capsule whose header length is wrong.
    let (mut broken, _) = connected(&server, HOST_A, &a_subnqn, 0);
    let mut bad = [0u8; 72];
    bad[0] = 0x04; // CapsuleCmd
    bad[2] = 24; // HLEN: a capsule's is 72
    bad[4..8].copy_from_slice(&72u32.to_le_bytes());
    std::io::Write::write_all(&mut broken.stream, &bad).expect("send");
    match broken.next_header() {
        Ok(Header::C2HTermReq(term)) => assert_eq!(term.fes, 1, "invalid header field"),
        other => panic!("expected a C2HTermReq, got {other:?}"),
    }
    assert!(broken.closed_within(Duration::from_secs(20)));

    // A first capsule that is not a Connect.
    let mut early = NvmfConnection::open(server.nvmf_port(), false).expect("open");
    let answer = early.identify(1, 0).expect("an answer");
    assert_eq!(answer.status().sc, SC_COMMAND_SEQUENCE_ERROR);
    assert!(early.closed_within(Duration::from_secs(20)));

    // A connection whose first PDU is not an ICReq.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", server.nvmf_port())).expect("tcp");
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    std::io::Write::write_all(&mut raw, &bad).expect("send");
    let mut reply = [0u8; 8];
    std::io::Read::read_exact(&mut raw, &mut reply).expect("a termination request");
    assert_eq!(reply[0], 0x03, "C2HTermReq");

    // The healthy controller goes on.
    let answer = healthy.identify(1, 0).expect("identify");
    assert!(answer.status().is_success());
    let qpairs = server.ok("nvmf_get_qpairs", json!({}));
    assert_eq!(qpairs.as_array().map(Vec::len), Some(1), "{qpairs}");
}

#[test]
fn the_nqn_base_can_be_given_for_a_run_and_a_bad_one_stops_the_server() {
    let server = Server::start_with(|_| {
        vec![
            "--nvmf-nqn-base".into(),
            "nqn.2026-11.com.example:lab".into(),
        ]
    });
    server.ok("host_create", json!({"name": "a", "nqn": HOST_A}));
    let subsystems = server.ok("nvmf_get_subsystems", json!({}));
    assert_eq!(subsystems[1]["nqn"], "nqn.2026-11.com.example:lab:a");
    assert!(
        !server.state_dir.join("nvmf.json").exists()
            || !std::fs::read_to_string(server.state_dir.join("nvmf.json"))
                .unwrap()
                .contains("com.example"),
        "an override is not stored"
    );
    let output = common::serve_must_fail(
        &[
            std::ffi::OsStr::new("--state-dir"),
            server.dir.path().join("other").as_os_str(),
            std::ffi::OsStr::new("--nvmf-nqn-base"),
            std::ffi::OsStr::new("not an nqn"),
        ],
        "an NQN base that is not an NQN",
    );
    assert!(output.contains("NQN base"), "{output}");
    let output = server.cli(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("--nvmf-listen") && help.contains("127.0.0.1:4420"),
        "{help}"
    );
}
