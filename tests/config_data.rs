//! `save_config` / `load_config` (`sds config save|load`): a configuration saved from one
//! server and loaded into an empty one serves the same data through the same virtual paths;
//! a second load changes nothing; a load that fails half way leaves the server as it was;
//! secrets only when asked.

mod common;

use common::{qemu_io_read_only, verify, write_and_verify, Server, TEST_HOST};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const SECRET: &str = "a-chap-secret-of-16";
const LATE_IQN: &str = "iqn.2026-01.org.example:late";
const MIRROR_DATA: [(u8, u64, u64); 2] = [(0x55, 0, 8192), (0x56, 3 * MIB, 4096)];
/// The second write lands in the set's second member.
const SET_DATA: [(u8, u64, u64); 2] = [(0x66, 4096, 4096), (0x67, 5 * MIB, 65536)];

/// A server with a file pool, a volume with data, a snapshot and a clone of it, a domain,
/// hosts (one with CHAP) and VPs. Returns it with the data written: (pattern, offset, len).
/// Data written to a volume: (pattern, offset, length).
type Writes = Vec<(u8, u64, u64)>;

fn configured() -> (Server, Writes, Writes) {
    let server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "vol", "pool": "p", "size": 16 * MIB}),
    );
    let before = vec![(0x11u8, 0u64, 65536u64), (0x22, 3 * MIB, 4096)];
    write_and_verify(&server.url("vol"), &before);
    server.ok("snapshot_create", json!({"volume": "vol", "name": "snap"}));
    let after = vec![(0x33u8, 0u64, 4096u64), (0x44, 9 * MIB, 8192)];
    write_and_verify(&server.url("vol"), &after);
    server.ok("clone_create", json!({"snapshot": "snap", "name": "cl"}));
    server.ok(
        "domain_create",
        json!({"name": "gold", "capabilities": {"rw_ios_per_sec": 50000, "priority": "high"}}),
    );
    server.ok("host_create", json!({"name": "late", "iqn": LATE_IQN}));
    server.ok(
        "host_set_chap",
        json!({"name": "late", "user": "late-user", "secret": SECRET}),
    );
    server.ok(
        "vpath_create",
        json!({"host": TEST_HOST, "volume": "snap", "mode": "ro", "lun": 7, "domain": "gold"}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "late", "volume": "cl", "lun": 2}),
    );
    // A mirror with a leg in each of two pools, and a set of a volume from each.
    server.file_pool("q", MIB);
    for (name, pool) in [("m1", "p"), ("m2", "q"), ("s1", "p"), ("s2", "q")] {
        server.ok(
            "volume_create",
            json!({"name": name, "pool": pool, "size": 4 * MIB}),
        );
    }
    server.ok(
        "mirror_create",
        json!({"name": "mir", "legs": ["m1", "m2"]}),
    );
    server.ok(
        "volume_set_create",
        json!({"name": "set", "layout": "concat", "members": ["s1", "s2"]}),
    );
    write_and_verify(&server.url("mir"), &MIRROR_DATA);
    write_and_verify(&server.url("set"), &SET_DATA);
    (server, before, after)
}

/// The records of one section of a saved document.
fn section<'a>(document: &'a Value, kind: &str) -> &'a Vec<Value> {
    document["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .find(|s| s["kind"] == kind)
        .and_then(|s| s["records"].as_array())
        .unwrap_or_else(|| panic!("no section {kind}"))
}

/// The VPs as (host, volume, domain, mode, lun), sorted: what a host sees.
fn paths(server: &Server) -> Vec<(String, String, String, String, u64)> {
    let mut paths: Vec<_> = server
        .ok("vpath_get_vpaths", json!({}))
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| {
            (
                v["host"].as_str().unwrap_or_default().to_string(),
                v["volume"].as_str().unwrap_or_default().to_string(),
                v["domain"].as_str().unwrap_or_default().to_string(),
                v["mode"].as_str().unwrap_or_default().to_string(),
                v["lun"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    paths.sort();
    paths
}

fn names(server: &Server, method: &str) -> Vec<String> {
    let mut names: Vec<String> = server
        .ok(method, json!({}))
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Everything a client or an administrator sees of a server's configuration.
fn state(server: &Server) -> Value {
    json!({
        "luns": names(server, "lun_get_luns"),
        "pools": names(server, "pool_get_pools"),
        "volumes": names(server, "volume_get_volumes"),
        "hosts": hosts_without_sessions(server),
        "domains": server.ok("domain_get_domains", json!({})),
        "vpaths": format!("{:?}", paths(server)),
        "records": files_in(server, "config"),
        "mirror_logs": files_in(server, "mirrors"),
    })
}

/// `host_get_hosts` less the live session counts (a client that just left may still be
/// counted for a moment).
fn hosts_without_sessions(server: &Server) -> Value {
    let mut hosts = server.ok("host_get_hosts", json!({}));
    for host in hosts.as_array_mut().expect("a list") {
        if let Some(object) = host.as_object_mut() {
            object.remove("sessions");
        }
    }
    hosts
}

fn files_in(server: &Server, dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(server.state_dir.join(dir))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn a_saved_configuration_loaded_into_an_empty_server_serves_the_same_data() {
    let (mut old, before, after) = configured();
    let file = old.dir.path().join("sds-config.json");
    let output = old.cli(&[
        "config",
        "save",
        file.to_str().expect("path"),
        "--include-secrets",
    ]);
    assert!(output.status.success(), "{output:?}");
    let text = std::fs::read_to_string(&file).expect("saved");
    let document: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(document["sds_config"], 1);
    // Dependency order: each kind after what it names, each volume before its snapshot
    // before its clone.
    // Dependency order: the sections in the order a server needs them, each volume before
    // its snapshot before its clone.
    let kinds: Vec<&str> = document["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .filter_map(|s| s["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "luns",
            "pools",
            "volumes",
            "volume_sets",
            "mirrors",
            "hosts",
            "domains",
            "vpaths"
        ]
    );
    let volumes: Vec<&str> = section(&document, "volumes")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(volumes, ["m1", "m2", "s1", "s2", "vol", "snap", "cl"]);
    let wanted = paths(&old);
    assert!(old.stop(), "the old server stops cleanly");

    // A new, empty server (its own state dir) takes the document: the LUN files stay where
    // they were, and their pool, with its data, comes up here.
    let new = Server::start();
    let output = new.cli(&["config", "load", file.to_str().expect("path")]);
    assert!(output.status.success(), "{output:?}\n{}", new.log());
    assert_eq!(paths(&new), wanted);
    verify(&new.url("vol"), &after);
    verify(
        &new.url("vol"),
        &[(0x11, 4096, 61440), (0x22, 3 * MIB, 4096)],
    );
    let snap_url = new.url_without_grant("snap");
    let reads: Vec<String> = before
        .iter()
        .map(|&(p, o, l)| format!("read -P {p} {o} {l}"))
        .collect();
    let (clean, said) = qemu_io_read_only(&snap_url, &reads);
    assert!(clean, "the snapshot reads as it was taken: {said}");
    verify(&new.url("mir"), &MIRROR_DATA);
    verify(&new.url("set"), &SET_DATA);
    assert_eq!(section(&document, "mirrors").len(), 1);
    assert_eq!(section(&document, "volume_sets").len(), 1);
    let domain = new.ok("domain_get_domains", json!({"name": "gold"}));
    assert_eq!(domain[0]["capabilities"]["priority"], "high", "{domain}");
    let hosts = new.ok("host_get_hosts", json!({"name": "late"}));
    assert_eq!(hosts[0]["chap"]["user"], "late-user", "{hosts}");

    // Loading it again changes nothing.
    let before_second = state(&new);
    let again = new.ok("load_config", document.clone());
    assert_eq!(again["created"]["luns"], 0, "{again}");
    assert_eq!(again["created"]["vpaths"], 0, "{again}");
    assert!(again["unchanged"].as_u64().unwrap_or(0) >= 20, "{again}");
    assert_eq!(state(&new), before_second);

    // What was loaded was recorded: a restart serves it all again.
    let mut new = new;
    assert!(new.stop());
    new.spawn();
    assert_eq!(paths(&new), wanted);
    verify(&new.url("vol"), &after);
    drop(old);
}

#[test]
fn a_load_that_fails_half_way_leaves_the_server_unchanged() {
    let (mut old, _, after) = configured();
    let document = old.ok("save_config", json!({"include_secrets": true}));
    assert!(old.stop());

    let mut new = Server::start();
    // A host already here with the iSCSI name of the document's host `late`: found only when
    // `late` is created, after the pool, its LUNs and its volumes came up and were committed.
    new.ok("host_create", json!({"name": "intruder", "iqn": LATE_IQN}));
    let unchanged = state(&new);
    let (_, message) = new
        .call("load_config", document.clone())
        .expect_err("the load must fail");
    assert!(message.contains("iqn"), "{message}");
    assert_eq!(state(&new), unchanged, "{}", new.log());
    assert!(!new.state_dir.join("load-staging").exists());
    // The LUNs were let go: with the clash gone, the same document loads whole.
    new.ok("host_delete", json!({"name": "intruder"}));
    new.ok("load_config", document.clone());
    verify(&new.url("vol"), &after);

    // A failure while staging (a pool LUN that holds no pool) changes nothing either, and a
    // restart finds nothing of it.
    assert!(new.stop());
    let mut broken = document.clone();
    let blank = old.dir.path().join("blank.img");
    std::fs::write(&blank, vec![0u8; 32 * MIB as usize]).expect("blank file");
    let luns = broken["sections"][0]["records"]
        .as_array_mut()
        .expect("luns");
    luns[1]["path"] = json!(blank);
    let other = Server::start();
    let unchanged = state(&other);
    let (_, message) = other
        .call("load_config", broken)
        .expect_err("a pool that cannot open fails the load");
    assert!(message.contains("nothing was changed"), "{message}");
    assert_eq!(state(&other), unchanged);
    let mut other = other;
    assert!(other.stop());
    other.spawn();
    assert_eq!(state(&other), unchanged);
    new.spawn();
    drop(old);
}

#[test]
fn secrets_are_saved_only_when_asked() {
    let (old, _, _) = configured();
    let bare = old.ok("save_config", json!({}));
    assert!(!bare.to_string().contains(SECRET), "{bare}");
    assert_eq!(bare["secrets"], false);
    let late = section(&bare, "hosts")
        .iter()
        .find(|h| h["name"] == "late")
        .expect("host late");
    assert_eq!(late["chap"]["user"], "late-user");
    let full = old.ok("save_config", json!({"include_secrets": true}));
    assert!(full.to_string().contains(SECRET));

    // A document without them cannot create a host with CHAP, and says why.
    let empty = Server::start();
    let mut hosts_only = bare.clone();
    let sections = hosts_only["sections"].as_array_mut().expect("sections");
    sections.retain(|s| s["kind"] == "hosts");
    let (_, message) = empty
        .call("load_config", hosts_only)
        .expect_err("no secret");
    assert!(
        message.contains("chap.secret") && message.contains("include_secrets"),
        "{message}"
    );
    // ... but it loads onto the server it came from (everything there already).
    let again = old.ok("load_config", bare);
    assert_eq!(again["created"]["hosts"], 0, "{again}");
}

/// Records of `kind` in a document, to edit.
fn section_mut<'a>(document: &'a mut Value, kind: &str) -> &'a mut Vec<Value> {
    document["sections"]
        .as_array_mut()
        .expect("sections")
        .iter_mut()
        .find(|s| s["kind"] == kind)
        .and_then(|s| s["records"].as_array_mut())
        .unwrap_or_else(|| panic!("no section {kind}"))
}

#[test]
fn a_load_onto_a_configured_server_sets_domains_and_refuses_what_differs() {
    let server = Server::start();
    server.ram_pool("p", 32 * MIB);
    server.ok(
        "volume_create",
        json!({"name": "vol", "pool": "p", "size": 4 * MIB}),
    );
    server.ok(
        "domain_create",
        json!({"name": "gold", "capabilities": {"priority": "high"}}),
    );
    server.ok(
        "vpath_create",
        json!({"host": TEST_HOST, "volume": "vol", "domain": "gold", "lun": 1}),
    );
    let document = server.ok("save_config", json!({}));

    // A domain's capabilities are policy: a load sets them.
    let mut edited = document.clone();
    for domain in section_mut(&mut edited, "domains").iter_mut() {
        if domain["name"] == "gold" {
            domain["capabilities"]["priority"] = json!("low");
        }
    }
    let answer = server.ok("load_config", edited);
    assert_eq!(answer["domains_set"], 1, "{answer}");
    let gold = server.ok("domain_get_domains", json!({"name": "gold"}));
    assert_eq!(gold[0]["capabilities"]["priority"], "low", "{gold}");

    // A plain volume new to a pool the server has is made (empty), with the document's UUID;
    // a VP to it too. Loading the same again changes nothing.
    let mut grown = document.clone();
    let mut extra = section(&document, "volumes")[0].clone();
    extra["name"] = json!("extra");
    extra["uuid"] = json!("6f1c2a4e-0b7d-4c3e-9a85-2d4f6b8e1a30");
    section_mut(&mut grown, "volumes").push(extra);
    let mut path = section(&document, "vpaths")[0].clone();
    path["volume"] = json!("extra");
    path["lun"] = json!(2);
    section_mut(&mut grown, "vpaths").push(path);
    let answer = server.ok("load_config", grown.clone());
    assert_eq!(answer["created"]["volumes"], 1, "{answer}");
    assert_eq!(answer["created"]["vpaths"], 1, "{answer}");
    let extra = server.ok("volume_get_volumes", json!({"name": "extra"}));
    assert_eq!(
        extra[0]["uuid"], "6f1c2a4e-0b7d-4c3e-9a85-2d4f6b8e1a30",
        "{extra}"
    );
    write_and_verify(&server.url_without_grant("extra"), &[(0x77, 0, 4096)]);
    let again = server.ok("load_config", grown.clone());
    assert_eq!(again["created"]["volumes"], 0, "{again}");
    // A snapshot cannot be made that way: its data is its pool's.
    let mut snapshot = grown.clone();
    let mut snap = section(&document, "volumes")[0].clone();
    snap["name"] = json!("snap");
    snap["uuid"] = json!("7f1c2a4e-0b7d-4c3e-9a85-2d4f6b8e1a31");
    snap["snapshot_of"] = json!("vol");
    snap["as_of"] = json!(1);
    section_mut(&mut snapshot, "volumes").push(snap);
    let (_, message) = server
        .call("load_config", snapshot)
        .expect_err("a snapshot without its pool");
    assert!(message.contains("snapshot or clone"), "{message}");

    // Anything else that differs is refused, naming it, and nothing changes.
    let unchanged = state(&server);
    let mut other_lun = document.clone();
    section_mut(&mut other_lun, "vpaths")[0]["lun"] = json!(5);
    let (_, message) = server
        .call("load_config", other_lun)
        .expect_err("a VP with another LUN number");
    assert!(message.contains("differs"), "{message}");
    let mut bigger = document.clone();
    section_mut(&mut bigger, "volumes")[0]["size"] = json!(8 * MIB);
    let (_, message) = server
        .call("load_config", bigger)
        .expect_err("a volume of another size");
    assert!(
        message.contains("volume vol exists here and differs"),
        "{message}"
    );
    let (_, message) = server
        .call("load_config", json!({"sds_config": 2, "sections": []}))
        .expect_err("another format");
    assert!(message.contains("sds_config"), "{message}");
    assert_eq!(state(&server), unchanged);
}
