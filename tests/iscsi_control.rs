//! The iSCSI control plane through the real server: hosts' iSCSI names (checked, normalised,
//! unique), CHAP credentials (set, replaced, cleared, persisted, and never shown back), and
//! `iscsi_get_targets`.

mod common;

use common::Server;
use serde_json::json;

const INVALID_PARAMS: i64 = -32602;

#[test]
fn host_iqn_is_checked_normalised_and_unique() {
    let server = Server::start();
    for bad in [
        "host1",
        "iqn.2001-13.com.example",
        "iqn.2001-04",
        "iqn.2001-04.com..example",
        "iqn.2001-04.com.example:a b",
        "eui.0123",
        "naa.0123456789abcdef01",
    ] {
        let (code, message) = server
            .call("host_create", json!({"name": "h", "iqn": bad}))
            .expect_err(bad);
        assert_eq!(code, INVALID_PARAMS, "{bad}: {message}");
        assert!(message.starts_with("iqn: "), "{bad}: {message}");
        assert!(
            message.contains(bad),
            "the message names the name: {message}"
        );
    }
    assert!(
        server
            .ok("host_get_hosts", json!({}))
            .as_array()
            .unwrap()
            .len()
            == 1
    );

    let created = server.ok(
        "host_create",
        json!({"name": "h1", "iqn": "IQN.2001-04.com.Example:Host1"}),
    );
    assert_eq!(created["iqn"], "iqn.2001-04.com.example:host1");
    server.ok(
        "host_create",
        json!({"name": "h2", "iqn": "eui.02004567A425678D"}),
    );
    let listed = server.ok("host_get_hosts", json!({"name": "h2"}));
    assert_eq!(listed[0]["iqn"], "eui.02004567a425678d");

    // The same name in another case is the same initiator.
    let (code, message) = server
        .call(
            "host_create",
            json!({"name": "h3", "iqn": "iqn.2001-04.com.example:HOST1"}),
        )
        .expect_err("duplicate iqn");
    assert_eq!(code, INVALID_PARAMS);
    assert!(message.contains("h1"), "{message}");

    // Kept across a restart, as given after normalisation.
    let mut server = server;
    assert!(server.stop());
    server.spawn();
    let listed = server.ok("host_get_hosts", json!({"name": "h1"}));
    assert_eq!(listed[0]["iqn"], "iqn.2001-04.com.example:host1");
}

const SECRET: &str = "initiator-secret-7f3a";
const MUTUAL_SECRET: &str = "target-secret-c91e";

/// Fails if `text` holds either secret.
fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET) && !text.contains(MUTUAL_SECRET),
        "{what} shows a CHAP secret:\n{text}"
    );
}

#[test]
fn chap_is_set_cleared_persisted_and_never_shown() {
    let mut server = Server::start();
    server.ok(
        "host_create",
        json!({"name": "esx1", "iqn": "iqn.1998-01.com.vmware:esx1"}),
    );
    let host = |server: &Server| server.ok("host_get_hosts", json!({"name": "esx1"}))[0].clone();
    assert!(host(&server)["chap"].is_null());

    // Refusals: too short a secret, half a mutual pair, one secret both ways, unknown host.
    for (params, field) in [
        (
            json!({"name": "esx1", "user": "u", "secret": "short-11byt"}),
            "secret",
        ),
        (json!({"name": "esx1", "user": "u"}), "secret"),
        (json!({"name": "esx1", "secret": SECRET}), "user"),
        (
            json!({"name": "esx1", "user": "", "secret": SECRET}),
            "user",
        ),
        (
            json!({"name": "esx1", "user": "u", "secret": "x".repeat(256)}),
            "secret",
        ),
        (
            json!({"name": "esx1", "user": "u", "secret": SECRET, "mutual_user": "t"}),
            "mutual_user",
        ),
        (
            json!({"name": "esx1", "user": "u", "secret": SECRET, "mutual_user": "t", "mutual_secret": SECRET}),
            "mutual_secret",
        ),
        (
            json!({"name": "esx1", "user": "u", "secret": SECRET, "mutual_user": "t", "mutual_secret": "short"}),
            "mutual_secret",
        ),
        (
            json!({"name": "nobody", "user": "u", "secret": SECRET}),
            "name",
        ),
    ] {
        let (code, message) = server
            .call("host_set_chap", params.clone())
            .expect_err(&params.to_string());
        assert_eq!(code, INVALID_PARAMS, "{params}: {message}");
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{params}: {message}"
        );
        assert_no_secret("an error", &message);
    }
    assert!(
        host(&server)["chap"].is_null(),
        "a refused call changed nothing"
    );

    // One-way, then mutual: the answer and the listing show the users, never the secrets.
    let answer = server.ok(
        "host_set_chap",
        json!({"name": "esx1", "user": "esx1-user", "secret": SECRET}),
    );
    assert_eq!(
        answer["chap"],
        json!({"user": "esx1-user", "mutual_user": null})
    );
    assert_no_secret("host_set_chap", &answer.to_string());
    let answer = server.ok(
        "host_set_chap",
        json!({"name": "esx1", "user": "esx1-user", "secret": SECRET,
               "mutual_user": "sds-target", "mutual_secret": MUTUAL_SECRET}),
    );
    assert_eq!(
        answer["chap"],
        json!({"user": "esx1-user", "mutual_user": "sds-target"})
    );
    for method in ["host_get_hosts", "vpath_get_vpaths", "domain_get_domains"] {
        let text = server.ok(method, json!({})).to_string();
        assert_no_secret(method, &text);
    }
    let cli = server.cli(&["host", "list", "--json"]);
    assert!(cli.status.success());
    assert_no_secret("sds host list", &String::from_utf8_lossy(&cli.stdout));

    // Logins that prove them, and ones that do not, log nothing of them either.
    server.ram_pool("p", 32 << 20);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 4u64 << 20}),
    );
    server.ok("vpath_create", json!({"host": "esx1", "volume": "v"}));
    let portal = |credentials: &str, arguments: &str| {
        format!(
            "iscsi://{credentials}127.0.0.1:{}{arguments}",
            server.iscsi_port()
        )
    };
    let mutual = format!("?target_user=sds-target&target_password={MUTUAL_SECRET}");
    let (ok, text) = common::iscsi_ls(
        &portal(&format!("esx1-user%{SECRET}@"), &mutual),
        "iqn.1998-01.com.vmware:esx1",
    );
    assert!(ok && text.contains(&server.iscsi_target()), "{text}");
    let (ok, text) = common::iscsi_ls(
        &portal("esx1-user%not-the-secret-0@", ""),
        "iqn.1998-01.com.vmware:esx1",
    );
    assert!(!ok, "a wrong secret logged in:\n{text}");

    // Persisted, in a record only the server's user can read.
    assert!(server.stop());
    let record = server.state_dir.join("config/host-esx1.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&record).unwrap().permissions());
    assert_eq!(
        mode & 0o077,
        0,
        "{} is readable by others",
        record.display()
    );
    server.spawn();
    assert_eq!(
        host(&server)["chap"],
        json!({"user": "esx1-user", "mutual_user": "sds-target"})
    );

    // Cleared: gone from the listing and, after a restart, from the record.
    let answer = server.ok("host_clear_chap", json!({"name": "esx1"}));
    assert!(answer["chap"].is_null());
    assert!(server.stop());
    let text = std::fs::read_to_string(&record).unwrap();
    assert_no_secret("the cleared record", &text);
    server.spawn();
    assert!(host(&server)["chap"].is_null());
    assert!(server.stop());
    assert_no_secret("the server log", &server.log());
}

/// The harness's reading of iscsi-test-cu logs (what the lead's conformance test counts by):
/// a skip CUnit calls a pass, a tolerated "[FAILED]" step, a message after the verdict, a real
/// failure with its reason, and a run cut off mid-test.
#[test]
fn test_cu_logs_are_read_test_by_test() {
    let log = "\
Suite: iSCSIdatasn
  Test: iSCSIDataSnInvalid ...FAILED
    1. test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)
Suite: CompareAndWrite
  Test: Simple ...    [SKIPPED] COMPAREANDWRITE is not implemented.
    [SKIPPED] COMPAREANDWRITE is not implemented.
passed
Suite: Reserve6
  Test: Simple ...passed
  Test: 2Initiators ...    Take out a RESERVE6 from the first initiator
    [FAILED] MODESENSE6 successful but should have failed
    RELEASE6 from the second initiator
FAILED
    1. test_reserve6_2initiators.c:70  - CU_ASSERT_EQUAL(_r,0)
  Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense.

Suite: Read10
  Test: Simple ...
";
    let results = common::parse_test_cu(log.to_string());
    assert_eq!(results.passed, ["Reserve6.Simple", "Reserve6.LUNReset"]);
    assert_eq!(
        results.skipped,
        [(
            "CompareAndWrite.Simple".to_string(),
            "COMPAREANDWRITE is not implemented.".to_string()
        )]
    );
    let failed: Vec<&str> = results.failed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        failed,
        [
            "iSCSIdatasn.iSCSIDataSnInvalid",
            "Reserve6.2Initiators",
            "Read10.Simple"
        ]
    );
    assert_eq!(
        results.failed[1].1,
        "MODESENSE6 successful but should have failed"
    );
}

#[test]
fn iscsi_get_targets_lists_each_hosts_luns() {
    let server = Server::start();
    server.ram_pool("p", 64 << 20);
    for volume in ["a", "b"] {
        server.ok(
            "volume_create",
            json!({"name": volume, "pool": "p", "size": 8u64 << 20}),
        );
    }
    server.ok(
        "host_create",
        json!({"name": "esx1", "iqn": "iqn.1998-01.com.vmware:esx1"}),
    );
    server.ok(
        "host_create",
        json!({"name": "linux1", "iqn": "iqn.1993-08.org.debian:01:abc"}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "esx1", "volume": "b", "lun": 3}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "esx1", "volume": "a", "lun": 0}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "linux1", "volume": "a", "lun": 7, "mode": "ro"}),
    );
    // A host with no iSCSI name has no LUNs on the target (it reaches its VP over NBD).
    server.grant("b");

    let targets = server.ok("iscsi_get_targets", json!({}));
    assert_eq!(
        targets,
        json!([{
            "name": server.iscsi_target(),
            "portals": [format!("127.0.0.1:{}", server.iscsi_port())],
            "luns": [
                {"host": "esx1", "iqn": "iqn.1998-01.com.vmware:esx1", "lun": 0, "volume": "a", "mode": "rw"},
                {"host": "esx1", "iqn": "iqn.1998-01.com.vmware:esx1", "lun": 3, "volume": "b", "mode": "rw"},
                {"host": "linux1", "iqn": "iqn.1993-08.org.debian:01:abc", "lun": 7, "volume": "a", "mode": "ro"},
            ],
        }])
    );
    let (code, _) = server
        .call("iscsi_get_targets", json!({"name": "x"}))
        .expect_err("no parameters");
    assert_eq!(code, INVALID_PARAMS);
    assert_eq!(server.ok("iscsi_get_sessions", json!({})), json!([]));

    let cli = server.cli(&["iscsi", "targets"]);
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{text}");
    assert!(text.contains(&server.iscsi_target()), "{text}");
    assert!(text.contains("iqn.1993-08.org.debian:01:abc"), "{text}");
    let cli = server.cli(&["iscsi", "sessions"]);
    assert!(cli.status.success());
}

#[test]
fn cli_sets_chap_from_stdin_or_the_environment() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let server = Server::start();
    server.ok(
        "host_create",
        json!({"name": "h", "iqn": "iqn.2001-04.com.example:h"}),
    );
    let mut child = Command::new(common::sds_binary())
        .arg("--socket")
        .arg(&server.socket)
        .args(["host", "chap", "h", "--user", "u1", "--secret-file", "-"])
        .args(["--mutual-user", "t1", "--mutual-secret-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{SECRET}\n{MUTUAL_SECRET}").unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("u1 (mutual: t1)"), "{text}");
    assert_no_secret("sds host chap", &text);
    let host = server.ok("host_get_hosts", json!({"name": "h"}));
    assert_eq!(host[0]["chap"], json!({"user": "u1", "mutual_user": "t1"}));

    // From the environment; a short one is refused by the server with its reason.
    let output = Command::new(common::sds_binary())
        .arg("--socket")
        .arg(&server.socket)
        .args(["host", "chap", "h", "--user", "u2"])
        .env("SDS_CHAP_SECRET", "too-short")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("at least 12 bytes"), "{text}");
    let output = Command::new(common::sds_binary())
        .arg("--socket")
        .arg(&server.socket)
        .args(["host", "chap", "h", "--user", "u2"])
        .env("SDS_CHAP_SECRET", SECRET)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let host = server.ok("host_get_hosts", json!({"name": "h"}));
    assert_eq!(host[0]["chap"], json!({"user": "u2", "mutual_user": null}));

    // No secret from anywhere and no terminal to ask on: a clear error, nothing sent.
    let output = server.cli(&["host", "chap", "h", "--user", "u3"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--secret-file"));

    let output = server.cli(&["host", "chap", "h", "--clear"]);
    assert!(output.status.success());
    assert!(server.ok("host_get_hosts", json!({"name": "h"}))[0]["chap"].is_null());
}

/// A live session as `iscsi_get_sessions` and `sds iscsi sessions` show it, gone once the
/// initiator leaves. qemu-io holds the session open with its `sleep` command.
#[test]
fn iscsi_get_sessions_shows_a_live_session_until_it_ends() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    common::require_tool("qemu-io");
    let server = Server::start();
    server.ram_pool("p", 32 << 20);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 4u64 << 20}),
    );
    let iqn = "iqn.2026-11.org.example:holder";
    server.ok("host_create", json!({"name": "holder", "iqn": iqn}));
    server.ok(
        "vpath_create",
        json!({"host": "holder", "volume": "v", "lun": 5}),
    );
    let mut holder = Command::new("qemu-io")
        .args(["-c", "read 0 4096", "-c", "sleep 60000"])
        .arg(common::qemu_iscsi_image(&server.iscsi_url(5), iqn))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io");
    let normal = |sessions: &serde_json::Value| -> Vec<serde_json::Value> {
        sessions
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "normal")
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let session = loop {
        let found = normal(&server.ok("iscsi_get_sessions", json!({})));
        // The LUN list is filled in when the session reaches full-feature phase.
        if let Some(session) = found.into_iter().find(|s| s["luns"] == json!([5])) {
            break session;
        }
        assert!(Instant::now() < deadline, "no session showed up");
        assert!(holder.try_wait().unwrap().is_none(), "qemu-io ended early");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(session["initiator"], iqn);
    assert_eq!(session["host"], "holder");
    assert_eq!(session["target"], server.iscsi_target());
    assert!(session["tsih"].as_u64().is_some_and(|t| t > 0), "{session}");
    assert_eq!(
        session["isid"].as_str().map(str::len),
        Some(12),
        "{session}"
    );
    assert!(session["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(session["header_digest"].is_boolean() && session["data_digest"].is_boolean());
    assert!(
        session["negotiated"]["MaxBurstLength"].is_string(),
        "{session}"
    );
    let cli = server.cli(&["iscsi", "sessions"]);
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success() && text.contains(iqn) && text.contains("holder"),
        "{text}"
    );

    holder.kill().expect("stop qemu-io");
    holder.wait().expect("reap qemu-io");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !normal(&server.ok("iscsi_get_sessions", json!({}))).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the session outlived its connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
