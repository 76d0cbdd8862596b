//! The iSCSI login and discovery, end to end against the real server: libiscsi's `iscsi-ls`
//! (Debian's libiscsi-bin) discovers the target only when its initiator name is a host with a
//! virtual path, CHAP is enforced for a host that has it (one-way and mutual), and raw
//! sockets sending malformed login PDUs lose only their own connection.

mod common;

use common::{require_tool, Server};
use sds::target::iscsi::params;
use sds::target::iscsi::pdu::{self, login_status, stage, LoginRequest, TargetPdu, BHS_BYTES};
use sds::target::iscsi::pdu_io::{read_pdu, write_pdu, Digests};
use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

const H1: &str = "iqn.2026-11.org.example:h1";
const H2: &str = "iqn.2026-11.org.example:h2";
const STRANGER: &str = "iqn.2026-11.org.example:stranger";
const MIB: u64 = 1 << 20;

/// A server with a RAM volume, host h1 (a VP to it) and host h2 (no VP), both by initiator
/// name.
fn server() -> Server {
    require_tool("iscsi-ls");
    let server = Server::start();
    server.ram_pool("p", 64 * MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 16 * MIB}),
    );
    server.ok("host_create", json!({"name": "h1", "iqn": H1}));
    server.ok("host_create", json!({"name": "h2", "iqn": H2}));
    server.ok("vpath_create", json!({"host": "h1", "volume": "v"}));
    server
}

/// `iscsi-ls` as `initiator` against the server's portal (with `credentials` as
/// `user%secret@` and URL `arguments`): its exit status and output.
fn iscsi_ls(
    server: &Server,
    initiator: &str,
    credentials: &str,
    arguments: &str,
) -> (bool, String) {
    let url = format!(
        "iscsi://{credentials}127.0.0.1:{}{arguments}",
        server.iscsi_port()
    );
    let output = Command::new("timeout")
        .args(["20", "iscsi-ls", "-i", initiator, &url])
        .output()
        .expect("run iscsi-ls");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn target_line(server: &Server) -> String {
    format!(
        "Target:{} Portal:127.0.0.1:{},1",
        server.iscsi_target(),
        server.iscsi_port()
    )
}

#[test]
fn discovery_shows_the_target_only_to_hosts_with_a_virtual_path() {
    let server = server();
    let (ok, text) = iscsi_ls(&server, H1, "", "");
    assert!(ok, "{text}");
    assert!(text.contains(&target_line(&server)), "{text}");
    // With header digests (libiscsi's URL argument): the text exchange is digested.
    let (ok, text) = iscsi_ls(&server, H1, "", "?header_digest=crc32c");
    assert!(ok && text.contains(&target_line(&server)), "{text}");
    for initiator in [H2, STRANGER] {
        let (_, text) = iscsi_ls(&server, initiator, "", "");
        assert!(!text.contains("Target:"), "{initiator} sees: {text}");
    }
    // The name is the one stored at the first start, and stays across a restart.
    let name = server.iscsi_target();
    assert!(name.starts_with("iqn.2026-11.org.sds:"), "{name}");
    let mut server = server;
    assert!(server.stop());
    server.spawn();
    assert_eq!(server.iscsi_target(), name);
}

/// Gives host `name` CHAP credentials: `host_set_chap` where the server has it, else through
/// its record and a restart (the record is what that method writes).
fn set_chap(
    server: &mut Server,
    name: &str,
    user: &str,
    secret: &str,
    mutual: Option<(&str, &str)>,
) {
    let mut params = json!({"name": name, "user": user, "secret": secret});
    if let Some((mutual_user, mutual_secret)) = mutual {
        params["mutual_user"] = json!(mutual_user);
        params["mutual_secret"] = json!(mutual_secret);
    }
    match server.call("host_set_chap", params.clone()) {
        Ok(_) => return,
        Err((-32601, _)) => {}
        Err((code, message)) => panic!("host_set_chap: {message} ({code})"),
    }
    assert!(server.stop());
    let path = server
        .state_dir
        .join("config")
        .join(format!("host-{name}.json"));
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("host record")).expect("json");
    params.as_object_mut().expect("object").remove("name");
    record["chap"] = params;
    std::fs::write(&path, record.to_string()).expect("write the host record");
    server.spawn();
}

#[test]
fn chap_is_required_of_a_host_that_has_it() {
    let mut server = server();
    set_chap(&mut server, "h1", "h1-user", "h1-secret-0123", None);
    let (_, text) = iscsi_ls(&server, H1, "", "");
    assert!(!text.contains("Target:"), "no credentials: {text}");
    let (_, text) = iscsi_ls(&server, H1, "h1-user%wrong-secret-99@", "");
    assert!(!text.contains("Target:"), "wrong secret: {text}");
    let (_, text) = iscsi_ls(&server, H1, "someone%h1-secret-0123@", "");
    assert!(!text.contains("Target:"), "wrong user: {text}");
    let (ok, text) = iscsi_ls(&server, H1, "h1-user%h1-secret-0123@", "");
    assert!(ok && text.contains(&target_line(&server)), "{text}");
    assert!(
        server.log().contains("(02/01)"),
        "refusals are authentication failures"
    );

    // Mutual: the target proves the host's mutual secret; an initiator expecting another
    // one refuses the target.
    set_chap(
        &mut server,
        "h1",
        "h1-user",
        "h1-secret-0123",
        Some(("target-user", "target-secret-42")),
    );
    let (ok, text) = iscsi_ls(
        &server,
        H1,
        "h1-user%h1-secret-0123@",
        "?target_user=target-user&target_password=target-secret-42",
    );
    assert!(ok && text.contains(&target_line(&server)), "{text}");
    let (_, text) = iscsi_ls(
        &server,
        H1,
        "h1-user%h1-secret-0123@",
        "?target_user=target-user&target_password=not-the-secret",
    );
    assert!(
        !text.contains("Target:"),
        "a target with the wrong secret: {text}"
    );
}

/// A raw login connection to the portal.
fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", server.iscsi_port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
}

/// Sends one Login Request with `pairs` and returns the response's status and TSIH.
fn login(stream: &mut TcpStream, current: u8, next: u8, pairs: &[(&str, &str)]) -> (u8, u8, u16) {
    let mut data = Vec::new();
    for (key, value) in pairs {
        params::push_pair(&mut data, key, value);
    }
    let request = LoginRequest {
        transit: true,
        continue_: false,
        current_stage: current,
        next_stage: next,
        version_max: 0,
        version_min: 0,
        data_segment_length: data.len() as u32,
        isid: [0x40, 0, 0, 0x12, 0x34, 0],
        tsih: 0,
        initiator_task_tag: 1,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
    };
    let mut bhs = [0u8; BHS_BYTES];
    pdu::write_login_request(&request, &mut bhs);
    write_pdu(stream, &bhs, &data, Digests::default()).expect("send the login");
    let reply = read_pdu(stream, Digests::default(), 1 << 20).expect("a login response");
    let TargetPdu::Login(response) = TargetPdu::parse(&reply.bhs).expect("a target PDU") else {
        panic!("not a Login Response");
    };
    (response.status_class, response.status_detail, response.tsih)
}

/// Whether the server closed `stream` (after any answer it sent).
fn closed(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 4096];
    loop {
        match std::io::Read::read(stream, &mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(error) => panic!("the server kept the connection open: {error}"),
        }
    }
}

#[test]
fn normal_logins_are_authorized_by_host_and_virtual_path() {
    let server = server();
    let target = server.iscsi_target();
    let operational = [("HeaderDigest", "None"), ("DataDigest", "None")];
    let mut stream = connect(&server);
    let (class, detail, tsih) = login(
        &mut stream,
        stage::OPERATIONAL,
        stage::FULL_FEATURE,
        &[
            ("InitiatorName", H1),
            ("TargetName", &target),
            operational[0],
            operational[1],
        ],
    );
    assert_eq!((class, detail), login_status::SUCCESS);
    assert_ne!(tsih, 0);
    for (initiator, target_name, status) in [
        (H2, target.as_str(), login_status::AUTHORIZATION_FAILURE),
        (
            STRANGER,
            target.as_str(),
            login_status::AUTHORIZATION_FAILURE,
        ),
        (H1, "iqn.2026-11.org.sds:elsewhere", login_status::NOT_FOUND),
    ] {
        let mut stream = connect(&server);
        let (class, detail, _) = login(
            &mut stream,
            stage::OPERATIONAL,
            stage::FULL_FEATURE,
            &[("InitiatorName", initiator), ("TargetName", target_name)],
        );
        assert_eq!((class, detail), status, "{initiator} to {target_name}");
        assert!(closed(&mut stream), "a refused login is closed");
    }
}

#[test]
fn malformed_login_pdus_end_only_their_own_connection() {
    let server = server();
    // A connection left mid-PDU stays open (until its deadline) while others log in.
    let mut truncated = connect(&server);
    truncated.write_all(&[0x43, 0x81, 0, 0, 0]).expect("send");

    // An opcode that is not a login.
    let mut bad_opcode = connect(&server);
    let mut bhs = [0u8; BHS_BYTES];
    bhs[0] = 0x3d;
    bad_opcode.write_all(&bhs).expect("send");
    assert!(closed(&mut bad_opcode));

    // A data segment far larger than a login may carry: refused before it is read.
    let mut huge = connect(&server);
    let mut bhs = [0u8; BHS_BYTES];
    bhs[0] = 0x43;
    bhs[1] = 0x81;
    bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    huge.write_all(&bhs).expect("send");
    let reply = read_pdu(&mut huge, Digests::default(), 1 << 20).expect("an answer");
    let Ok(TargetPdu::Login(response)) = TargetPdu::parse(&reply.bhs) else {
        panic!("not a login response");
    };
    assert_eq!(
        (response.status_class, response.status_detail),
        login_status::INITIATOR_ERROR_GENERIC
    );
    assert!(closed(&mut huge));

    // Garbage text.
    let mut garbage = connect(&server);
    let mut bhs = [0u8; BHS_BYTES];
    bhs[0] = 0x43;
    bhs[7] = 12;
    garbage.write_all(&bhs).expect("send");
    garbage.write_all(b"no equals\0\xff\xfe").expect("send");
    assert!(closed(&mut garbage));

    // Meanwhile a real initiator logs in and discovers the target.
    let (ok, text) = iscsi_ls(&server, H1, "", "");
    assert!(ok && text.contains(&target_line(&server)), "{text}");
    // Ending the truncated one mid-PDU hurts no one either.
    truncated.write_all(&[0u8; 10]).expect("send");
    drop(truncated);
    let (ok, text) = iscsi_ls(&server, H1, "", "");
    assert!(ok && text.contains(&target_line(&server)), "{text}");
}

#[test]
fn an_invalid_target_name_stops_the_server_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let output = common::serve_must_fail(
        &[
            "--state-dir".as_ref(),
            state.as_os_str(),
            "--iscsi-target-name".as_ref(),
            "Not An IQN".as_ref(),
        ],
        "a target name RFC 7143 does not allow was accepted",
    );
    assert!(
        output.contains("is not a valid iSCSI target name"),
        "{output}"
    );
}
