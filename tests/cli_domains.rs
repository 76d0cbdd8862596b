//! The command line for hosts, storage domains, virtual paths and `sds top`, driven through
//! the real binary against a real server: tables for people, `--json` for scripts, and bad
//! input refused with a message naming the bad parameter.

mod common;

use common::{write_and_verify, Server, TEST_HOST};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Runs `sds ARGS` against `server`: (success, stdout, stderr).
fn run(server: &Server, args: &[&str]) -> (bool, String, String) {
    let output = server.cli(args);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `sds ARGS`, which must succeed; returns its stdout.
fn ok(server: &Server, args: &[&str]) -> String {
    let (success, stdout, stderr) = run(server, args);
    assert!(success, "sds {args:?} failed:\n{stderr}\n{stdout}");
    stdout
}

/// Runs `sds --json ARGS`, which must succeed and print JSON.
fn json(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let stdout = ok(server, &all);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("sds {all:?}: not JSON ({e}):\n{stdout}"))
}

/// Runs `sds ARGS`, which must fail with a non-zero exit and a message containing every one
/// of `expected`.
fn refused(server: &Server, args: &[&str], expected: &[&str]) {
    let (success, stdout, stderr) = run(server, args);
    assert!(!success, "sds {args:?} should have failed:\n{stdout}");
    for text in expected {
        assert!(
            stderr.contains(text),
            "sds {args:?}: the error should name {text:?}:\n{stderr}"
        );
    }
}

/// The line of a table whose first column is `key`, split into columns.
fn row(table: &str, key: &str) -> Vec<String> {
    table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no row {key:?} in:\n{table}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A pool and a volume, made with the command line.
fn volume(server: &Server, name: &str) {
    ok(
        server,
        &["lun", "create", "m", "--kind", "mem", "--size", "64M"],
    );
    ok(server, &["pool", "create", "p", "--lun", "m"]);
    ok(
        server,
        &["volume", "create", name, "--pool", "p", "--size", "16M"],
    );
}

#[test]
fn hosts_domains_and_virtual_paths() {
    let server = Server::start();

    // Hosts: a table with every identity, and --json.
    let table = ok(
        &server,
        &[
            "host",
            "create",
            "h1",
            "--address",
            "10.1.0.0/16",
            "--address",
            "unix:4242",
            "--tls-subject",
            "CN=h1,O=lab",
            "--iqn",
            "iqn.2024-01.lab:h1",
        ],
    );
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(
        row(&table, "h1"),
        [
            "h1",
            "10.1.0.0/16,unix:4242",
            "CN=h1,O=lab",
            "iqn.2024-01.lab:h1",
            "-",
            "-",
            "0",
            "0/64"
        ]
    );
    let hosts = json(&server, &["host", "list"]);
    let names: Vec<&str> = hosts
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert!(
        names.contains(&"h1") && names.contains(&TEST_HOST),
        "{hosts}"
    );
    let h1 = json(&server, &["host", "list", "h1"]);
    assert_eq!(h1[0]["addresses"][1], "unix:4242");
    assert_eq!(h1[0]["nbd_tls_subject"], "CN=h1,O=lab");

    // A domain with limits: the table shows each one, - where there is none.
    let table = ok(
        &server,
        &[
            "domain",
            "create",
            "gold",
            "--rw-ios-per-sec",
            "2000",
            "--w-mbytes-per-sec",
            "50",
            "--vpath-max-ios-per-sec",
            "1500",
            "--priority",
            "high",
            "--allow",
            "read,write",
            "--allow",
            "flush",
            "--statistics",
            "basic",
        ],
    );
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(
        row(&table, "gold"),
        [
            "gold",
            "high",
            "2000",
            "-",
            "-",
            "50",
            "-",
            "1500",
            "read,write,flush",
            "basic",
            "-"
        ]
    );
    let default = row(&ok(&server, &["domain", "list"]), "default");
    assert_eq!(default[1], "normal");
    assert_eq!(default[8], "all");

    // `domain set` changes only what it is given.
    let before = json(&server, &["domain", "list", "gold"])[0]["capabilities"].clone();
    // `domain set` answers with the domain itself, not a list.
    let after = json(
        &server,
        &["domain", "set", "gold", "--r-mbytes-per-sec", "10"],
    )["capabilities"]
        .clone();
    let mut expected = before.clone();
    expected["r_mbytes_per_sec"] = 10.into();
    assert_eq!(after, expected, "only r_mbytes_per_sec may change");
    let after = json(&server, &["domain", "set", "gold", "--allow", "all"])["capabilities"].clone();
    expected["allowed_ops"] = serde_json::json!(["read", "write", "flush", "trim", "write_zeroes"]);
    assert_eq!(after, expected, "only allowed_ops may change");
    let stored = json(&server, &["domain", "list", "gold"])[0]["capabilities"].clone();
    assert_eq!(stored, expected);
    refused(
        &server,
        &["domain", "set", "gold"],
        &["at least one capability"],
    );

    // Virtual paths.
    volume(&server, "disk1");
    let table = ok(
        &server,
        &[
            "vpath", "create", "--host", TEST_HOST, "--volume", "disk1", "--domain", "gold",
            "--lun", "5",
        ],
    );
    let first = table
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no row in:\n{table}"))
        .to_string();
    let created = row(&table, &first);
    assert_eq!(
        created,
        [&first, TEST_HOST, "disk1", "gold", "rw", "5", "0"]
    );
    let second = json(
        &server,
        &[
            "vpath", "create", "--host", "h1", "--volume", "disk1", "--mode", "ro",
        ],
    );
    let second_id = second["id"].as_u64().expect("an id");
    assert_eq!(second["mode"], "ro");
    assert_eq!(second["domain"], "default");
    let id = second_id.to_string();
    let table = ok(&server, &["vpath", "list", "--host", "h1"]);
    assert_eq!(
        row(&table, &id),
        [&id, "h1", "disk1", "default", "ro", "0", "0"]
    );
    assert!(!table.contains(TEST_HOST), "{table}");
    let listed = json(&server, &["vpath", "list", "--volume", "disk1"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    let moved = ok(&server, &["vpath", "set-domain", &id, "gold"]);
    assert_eq!(row(&moved, &id)[3], "gold");
    let gold = row(&ok(&server, &["domain", "list", "gold"]), "gold");
    assert_eq!(
        gold.last().map(String::as_str),
        Some(format!("{first},{id}").as_str())
    );

    // A volume's own limit.
    let said = ok(
        &server,
        &[
            "volume",
            "qos",
            "disk1",
            "--rw-ios-per-sec",
            "5000",
            "--w-mbytes-per-sec",
            "0",
        ],
    );
    assert!(
        said.contains("rw_ios_per_sec 5000") && said.contains("w_mbytes_per_sec 0 (no limit)"),
        "{said}"
    );
    refused(
        &server,
        &["volume", "qos", "nope", "--rw-ios-per-sec", "1"],
        &["name: no volume nope"],
    );
    refused(&server, &["volume", "qos", "disk1"], &["--rw-ios-per-sec"]);

    // Statistics, as tables and as JSON.
    let table = ok(&server, &["domain", "stats"]);
    assert!(table.starts_with("DOMAIN"), "{table}");
    assert_eq!(row(&table, "gold")[1], "2", "gold has two VPs:\n{table}");
    let stats = json(&server, &["domain", "stats", "gold"]);
    assert_eq!(stats["domains"][0]["name"], "gold");
    let table = ok(&server, &["vpath", "stats", &first]);
    let stat = row(&table, &first);
    assert_eq!(&stat[..4], [first.as_str(), TEST_HOST, "disk1", "gold"]);
    // The VP's limit is its share of its domain's 2000 IOPS, which two VPs share.
    assert!(
        stat[11] != "-",
        "the VP gets a limit from its domain:\n{table}"
    );
    let stats = json(&server, &["vpath", "stats", &first]);
    let share = stats["vpaths"][0]["limit"]["rw_ios_per_sec"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(share > 0.0 && share <= 2000.0, "{stats}");
    let stats = json(&server, &["vpath", "stats"]);
    assert_eq!(stats["vpaths"].as_array().map(Vec::len), Some(2), "{stats}");

    // Deleting: what is in use is refused, then everything goes in order.
    refused(
        &server,
        &["host", "delete", "h1"],
        &["name:", "virtual paths"],
    );
    refused(
        &server,
        &["domain", "delete", "gold"],
        &["name:", "virtual paths"],
    );
    assert!(ok(&server, &["vpath", "delete", &id]).contains(&format!("virtual path {id} deleted")));
    assert!(ok(&server, &["host", "delete", "h1"]).contains("host h1 deleted"));
    ok(&server, &["vpath", "delete", &first]);
    assert!(ok(&server, &["domain", "delete", "gold"]).contains("domain gold deleted"));
    assert_eq!(json(&server, &["vpath", "list"]), serde_json::json!([]));
    assert!(ok(&server, &["vpath", "list"]).contains("(none)"));
}

#[test]
fn bad_input_is_refused_naming_the_parameter() {
    let server = Server::start();
    volume(&server, "disk1");
    refused(
        &server,
        &["domain", "create", "d1", "--allow", "read,erase"],
        &["--allow", "erase"],
    );
    refused(
        &server,
        &["domain", "create", "d2", "--priority", "urgent"],
        &["--priority", "urgent"],
    );
    refused(
        &server,
        &["domain", "create", "d3", "--rw-ios-per-sec", "lots"],
        &["--rw-ios-per-sec"],
    );
    refused(
        &server,
        &[
            "domain",
            "create",
            "d4",
            "--rw-ios-per-sec",
            "100",
            "--vpath-min-ios-per-sec",
            "500",
        ],
        &["capabilities.vpath_min_ios_per_sec", "-32602"],
    );
    refused(
        &server,
        &["domain", "set", "nope", "--rw-ios-per-sec", "1"],
        &["name: no domain nope"],
    );
    refused(
        &server,
        &[
            "vpath", "create", "--host", TEST_HOST, "--volume", "disk1", "--mode", "rw2",
        ],
        &["--mode", "rw2"],
    );
    refused(
        &server,
        &["vpath", "create", "--host", "nobody", "--volume", "disk1"],
        &["host: no host nobody", "-32602"],
    );
    refused(
        &server,
        &["vpath", "create", "--host", TEST_HOST, "--volume", "nope"],
        &["volume: no volume nope"],
    );
    refused(
        &server,
        &[
            "vpath", "create", "--host", TEST_HOST, "--volume", "disk1", "--domain", "nope",
        ],
        &["domain: no domain nope"],
    );
    refused(&server, &["vpath", "delete", "x"], &["<ID>"]);
    refused(
        &server,
        &["vpath", "set-domain", "99", "default"],
        &["id: no virtual path 99"],
    );
    refused(&server, &["host", "create", "h9"], &["--address"]);
    refused(
        &server,
        &["host", "create", "h9", "--address", "300.1.1.1"],
        &["addresses:", "300.1.1.1"],
    );
    refused(&server, &["host", "list", "nope"], &["name: no host nope"]);
    refused(&server, &["top", "--interval", "0"], &["--interval"]);
    refused(&server, &["top", "--iterations", "0"], &["--iterations"]);
    // Nothing of the above was made.
    let domains = json(&server, &["domain", "list"]);
    assert_eq!(domains.as_array().map(Vec::len), Some(1), "{domains}");
    assert_eq!(json(&server, &["vpath", "list"]), serde_json::json!([]));
    let hosts = json(&server, &["host", "list"]);
    assert_eq!(hosts.as_array().map(Vec::len), Some(1), "{hosts}");
}

#[test]
fn top_prints_frames_of_domains_and_virtual_paths() {
    let server = Server::start();
    volume(&server, "disk1");
    ok(
        &server,
        &["domain", "create", "silver", "--rw-ios-per-sec", "4000"],
    );
    let vp = json(
        &server,
        &[
            "vpath", "create", "--host", TEST_HOST, "--volume", "disk1", "--domain", "silver",
        ],
    );
    let id = vp["id"].as_u64().expect("an id").to_string();
    // Some I/O through the VP, so its counters move; the rates are not asserted (they depend
    // on timing), only that the VP counted what it did.
    write_and_verify(
        &server.url("disk1"),
        &[(0x5a, 0, 1 << 20), (0x3c, 2 << 20, 8192)],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = json(&server, &["vpath", "stats", &id]);
        if stats["vpaths"][0]["total"]["ops"]["write"].as_u64() >= Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the VP counted no writes: {stats}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Tables: two frames one after the other (stdout is not a terminal: no escapes).
    let text = ok(&server, &["top", "--iterations", "2", "--interval", "0.2"]);
    assert!(
        !text.contains('\x1b'),
        "no screen clearing into a pipe:\n{text}"
    );
    let frames: Vec<&str> = text.split("sds top - frame ").skip(1).collect();
    assert_eq!(frames.len(), 2, "two frames:\n{text}");
    for (n, frame) in frames.iter().enumerate() {
        assert!(frame.starts_with(&format!("{} ", n + 1)), "{frame}");
        // The tables, below the frame's title line.
        let (_, tables) = frame.split_once('\n').expect("a title line");
        let silver = row(tables, "silver");
        assert_eq!(silver[1], "1", "silver has one VP:\n{frame}");
        assert!(frame.contains("4000 IOPS"), "the domain's limit:\n{frame}");
        assert!(row(tables, "default").len() >= 8, "{frame}");
        let vp = row(tables, &id);
        assert_eq!(&vp[..5], [id.as_str(), TEST_HOST, "disk1", "silver", "rw"]);
        for header in [
            "DOMAIN",
            "VPS",
            "P99 µs",
            "THROTTLED",
            "LIMIT",
            "P99.9 µs",
            "CONNS",
        ] {
            assert!(frame.contains(header), "{header} in:\n{frame}");
        }
    }
    assert!(frames[0].contains("the server's last"), "{}", frames[0]);
    assert!(
        frames[1].contains("rates over the last 0."),
        "{}",
        frames[1]
    );

    // JSON: one object per frame, one per line.
    let text = ok(
        &server,
        &["--json", "top", "--iterations", "2", "--interval", "0.2"],
    );
    let frames: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(frames.len(), 2, "{text}");
    for (n, frame) in frames.iter().enumerate() {
        assert_eq!(frame["frame"], n as u64 + 1);
        let silver = frame["domains"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["name"] == "silver"))
            .unwrap_or_else(|| panic!("silver in {frame}"));
        assert_eq!(silver["vpaths"], 1);
        assert_eq!(silver["limit"]["rw_ios_per_sec"], 4000);
        assert!(silver["iops"].is_number() && silver["throttled_ios"].is_u64());
        let vp = &frame["vpaths"][0];
        assert_eq!(vp["id"].to_string(), id);
        assert_eq!(vp["host"], TEST_HOST);
        assert_eq!(vp["domain"], "silver");
        assert_eq!(vp["limit"]["rw_ios_per_sec"], 4000.0);
        for key in [
            "iops",
            "read_iops",
            "write_iops",
            "mbytes_per_sec",
            "throttled_ms",
        ] {
            assert!(vp[key].is_number(), "{key} in {vp}");
        }
        assert!(vp["latency_us"].is_null() || vp["latency_us"]["p99_9"].is_number());
    }
    assert_eq!(frames[0]["window"], "cycle");
    assert_eq!(frames[1]["window"], "interval");
}
