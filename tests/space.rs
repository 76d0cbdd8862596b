//! Space given back, and a pool that runs out of it, with real clients: qemu-io over NBD and
//! over iSCSI (qemu's iscsi driver), fio's NBD engine, `sds perf`'s NVMe/TCP initiator and the
//! tests' own NVMe/TCP initiator (tests/common/nvmf_initiator.rs) for Dataset Management.
//!
//! A TRIM that covers whole extents of a thin volume returns them to the pool, durably: the
//! pool's free count comes back to where it started, after a clean restart and after a
//! `kill -9` right after the client saw the TRIM complete. A TRIM of part of an extent zeroes
//! that part. A full pool fails only the writes that need a new extent, each protocol with
//! its no-space error; reads and overwrites go on. The space threshold's crossings show in
//! `pool_get_pools` and in the log, once each way.

mod common;

use common::{qemu_io, qemu_io_iscsi, qemu_io_read_only, require_tool, sds_perf_json, Server};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const INITIATOR: &str = "iqn.2026-11.org.sds.test:space";
const HOSTNQN: &str = "nqn.2026-11.org.sds:space";

fn pool(server: &Server, name: &str) -> Value {
    server.ok("pool_get_pools", json!({"name": name}))[0].clone()
}

fn free_extents(server: &Server, name: &str) -> u64 {
    pool(server, name)["free_extents"]
        .as_u64()
        .expect("free_extents")
}

fn allocated_extents(server: &Server, volume: &str) -> u64 {
    server.ok("volume_get_volumes", json!({"name": volume}))[0]["allocated_extents"]
        .as_u64()
        .expect("allocated_extents")
}

/// qemu-io over NBD that must succeed with every command.
fn nbd_clean(url: &str, commands: &[&str]) -> String {
    let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    let (clean, text) = qemu_io(url, &commands);
    assert!(clean, "qemu-io {commands:?} failed:\n{text}");
    text
}

/// qemu-io over a read-only NBD path that must succeed with every command.
fn nbd_read_only(url: &str, commands: &[&str]) {
    let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    let (clean, text) = qemu_io_read_only(url, &commands);
    assert!(clean, "qemu-io -r {commands:?} failed:\n{text}");
}

/// qemu-io over NBD whose commands may fail: its output.
fn nbd_any(url: &str, commands: &[&str]) -> String {
    let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    qemu_io(url, &commands).1
}

/// Waits until `what` holds, for up to 20 s (the control cycle runs every 100 ms).
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A volatile pool `name` of one RAM LUN of `lun_bytes` with 1 MiB extents; its extent count.
fn small_pool(server: &Server, name: &str, lun_bytes: u64) -> u64 {
    server.ram_pool(name, lun_bytes);
    pool(server, name)["total_extents"]
        .as_u64()
        .expect("total_extents")
}

#[test]
fn trimming_a_whole_volume_returns_every_extent_across_restart_and_kill_9() {
    let mut server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 16 * MIB}),
    );
    let url = server.url("v");
    let start = free_extents(&server, "p");

    nbd_clean(&url, &["write -P 0x5a 0 16M", "read -P 0x5a 0 16M"]);
    assert_eq!(free_extents(&server, "p"), start - 16);
    assert_eq!(allocated_extents(&server, "v"), 16);

    nbd_clean(&url, &["discard 0 16M", "read -P 0 0 16M"]);
    assert_eq!(free_extents(&server, "p"), start, "every extent back");
    assert_eq!(allocated_extents(&server, "v"), 0);
    let listed = pool(&server, "p");
    assert_eq!(listed["allocated"], 0, "{listed}");
    assert_eq!(listed["provisioned"], 16 * MIB, "{listed}");

    // Written again, the volume gets new extents and keeps what it is given.
    nbd_clean(&url, &["write -P 0x6b 0 8M", "read -P 0x6b 0 8M"]);
    assert_eq!(free_extents(&server, "p"), start - 8);
    nbd_clean(&url, &["discard 0 16M"]);
    assert!(server.stop(), "clean stop:\n{}", server.log());
    server.spawn();
    assert_eq!(free_extents(&server, "p"), start, "after a clean restart");
    assert_eq!(allocated_extents(&server, "v"), 0);
    nbd_clean(&url, &["read -P 0 0 16M"]);

    // kill -9 the moment the client has seen the TRIM complete: the release was durable.
    nbd_clean(&url, &["write -P 0x7c 0 12M"]);
    assert_eq!(free_extents(&server, "p"), start - 12);
    nbd_clean(&url, &["discard 0 16M"]);
    server.kill();
    server.spawn();
    assert_eq!(free_extents(&server, "p"), start, "after kill -9");
    assert_eq!(allocated_extents(&server, "v"), 0);
    nbd_clean(&url, &["read -P 0 0 16M"]);
}

#[test]
fn a_partial_trim_zeroes_what_it_covers_and_keeps_its_extents() {
    let mut server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 4 * MIB}),
    );
    let url = server.url("v");
    let start = free_extents(&server, "p");
    nbd_clean(&url, &["write -P 0x11 0 4M"]);
    // From inside extent 0 to inside extent 2: extent 1 whole, 0 and 2 in part.
    nbd_clean(
        &url,
        &[
            "discard 512k 2M",
            "read -P 0x11 0 512k",
            "read -P 0 512k 2M",
            "read -P 0x11 2560k 1536k",
        ],
    );
    assert_eq!(
        allocated_extents(&server, "v"),
        3,
        "only extent 1 given back"
    );
    assert_eq!(free_extents(&server, "p"), start - 3);
    // A TRIM inside one extent gives nothing back.
    nbd_clean(
        &url,
        &[
            "discard 3M 4k",
            "read -P 0 3M 4k",
            "read -P 0x11 3076k 1020k",
        ],
    );
    assert_eq!(allocated_extents(&server, "v"), 3);
    // The zeroes and the data stay what they were across a restart.
    server.kill();
    server.spawn();
    nbd_clean(
        &url,
        &[
            "read -P 0x11 0 512k",
            "read -P 0 512k 2M",
            "read -P 0x11 2560k 512k",
            "read -P 0 3M 4k",
            "read -P 0x11 3076k 1020k",
        ],
    );
    assert_eq!(free_extents(&server, "p"), start - 3);
}

#[test]
fn a_512_byte_volume_on_4096_byte_luns_gives_extents_back_through_the_slow_path() {
    let server = Server::start();
    server.ok(
        "lun_create",
        json!({"name": "big", "kind": "file", "size": 32 * MIB, "block_size": 4096}),
    );
    server.ok("pool_create", json!({"name": "p", "luns": ["big"]}));
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 4 * MIB, "block_size": 512}),
    );
    let url = server.url("v");
    let start = free_extents(&server, "p");
    nbd_clean(&url, &["write -P 0x55 0 4M"]);
    assert_eq!(free_extents(&server, "p"), start - 4);
    // Unaligned to the LUN's blocks at both ends: extents 1 and 2 whole, 0 and 3 in part.
    nbd_clean(
        &url,
        &[
            "discard 1048064 2098176",
            "read -P 0x55 0 1048064",
            "read -P 0 1048064 2098176",
            "read -P 0x55 3146240 1048064",
        ],
    );
    assert_eq!(free_extents(&server, "p"), start - 2);
    assert_eq!(allocated_extents(&server, "v"), 2);
    nbd_clean(&url, &["discard 0 4M", "read -P 0 0 4M"]);
    assert_eq!(free_extents(&server, "p"), start);
}

#[test]
fn a_trim_gives_a_file_luns_space_back_to_its_file_system() {
    use std::os::unix::fs::MetadataExt;
    let server = Server::start();
    let path = server.dir.path().join("sparse.img");
    server.ok(
        "lun_create",
        json!({"name": "f", "kind": "file", "path": path, "size": 64 * MIB}),
    );
    server.ok("pool_create", json!({"name": "p", "luns": ["f"]}));
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 32 * MIB}),
    );
    let url = server.url("v");
    // Bytes the file occupies on its file system (st_blocks counts 512-byte units).
    let used = || std::fs::metadata(&path).expect("the LUN's file").blocks() * 512;
    let before = used();
    nbd_clean(&url, &["write -P 0x66 0 32M"]);
    let written = used();
    assert!(
        written >= before + 32 * MIB,
        "the file did not grow by what was written: {before} -> {written}"
    );
    nbd_clean(&url, &["discard 0 32M"]);
    let trimmed = used();
    assert!(
        trimmed <= before + MIB,
        "the file kept the trimmed extents: {before} -> {written} -> {trimmed}"
    );
}

#[test]
fn a_thick_volume_is_zeroed_by_trim_and_keeps_its_extents() {
    let server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "t", "pool": "p", "size": 4 * MIB, "thin": false}),
    );
    let url = server.url("t");
    let start = free_extents(&server, "p");
    nbd_clean(
        &url,
        &["write -P 0x33 0 4M", "discard 0 4M", "read -P 0 0 4M"],
    );
    assert_eq!(free_extents(&server, "p"), start);
    assert_eq!(allocated_extents(&server, "t"), 4);
}

#[test]
fn a_full_pool_fails_only_writes_that_need_a_new_extent_over_nbd() {
    let server = Server::start();
    let extents = small_pool(&server, "p", 8 * MIB);
    assert!(extents >= 2, "a pool of {extents} extents");
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 64 * MIB}),
    );
    let url = server.url("v");
    let fill = format!("write -P 0x21 0 {}", extents * MIB);
    nbd_clean(&url, &[&fill]);
    assert_eq!(free_extents(&server, "p"), 0);
    let beyond = format!("write -P 0x22 {} 4k", extents * MIB);
    let text = nbd_any(
        &url,
        &[
            &beyond,
            "write -P 0x23 0 4k",
            "read -P 0x23 0 4k",
            "read -P 0x21 4k 1M",
        ],
    );
    assert!(
        text.contains("write failed: No space left on device"),
        "the first write to a new extent must fail with ENOSPC:\n{text}"
    );
    assert_eq!(
        text.matches("failed").count(),
        1,
        "only the write that needed a new extent fails:\n{text}"
    );
    assert!(text.contains("wrote 4096/4096 bytes at offset 0"), "{text}");
    assert_eq!(text.matches("read ").count(), 2, "{text}");
    // Space given back is space to write again.
    nbd_clean(&url, &["discard 0 1M", &beyond]);
    assert_eq!(free_extents(&server, "p"), 0);
}

#[test]
fn the_threshold_is_kept_and_each_crossing_is_logged_once() {
    let mut server = Server::start();
    server.file_pool("p", MIB);
    let total = pool(&server, "p")["total_extents"]
        .as_u64()
        .expect("total_extents");
    assert_eq!(pool(&server, "p")["threshold"], 80);
    for bad in [0, 101] {
        let refused = server.call("pool_set_threshold", json!({"pool": "p", "percent": bad}));
        assert!(refused.is_err(), "percent {bad} accepted");
    }
    let output = server.cli(&["pool", "set-threshold", "p", "10"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        table.contains("THRESHOLD") && table.contains("10%"),
        "{table}"
    );
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 64 * MIB}),
    );
    let url = server.url("v");
    // Just past 10% of the pool's extents.
    let over = (total * 10).div_ceil(100);
    let write = format!("write -P 0x44 0 {}", over * MIB);
    let warnings = |server: &Server| server.log().matches("past its 10% threshold").count();
    nbd_clean(&url, &[&write]);
    assert_eq!(pool(&server, "p")["over_threshold"], true);
    wait_for("the warning", || warnings(&server) == 1);
    let listed = String::from_utf8_lossy(&server.cli(&["pool", "list"]).stdout).into_owned();
    assert!(listed.contains("10% (over)"), "{listed}");
    // More writes while over: no second warning.
    nbd_clean(&url, &[&format!("write -P 0x45 {} 1M", over * MIB)]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(warnings(&server), 1, "warned again while still over");
    // Below again, then over again: a second warning.
    nbd_clean(&url, &["discard 0 64M"]);
    assert_eq!(pool(&server, "p")["over_threshold"], false);
    wait_for("the note that it fell below", || {
        server.log().contains("back below its 10% threshold")
    });
    nbd_clean(&url, &[&write]);
    wait_for("the second warning", || warnings(&server) == 2);
    // The threshold is in the pool's record.
    server.kill();
    server.spawn();
    let listed = pool(&server, "p");
    assert_eq!(listed["threshold"], 10, "{listed}");
    assert_eq!(listed["over_threshold"], true, "{listed}");
    assert_eq!(listed["allocated"], over * MIB, "{listed}");
    assert_eq!(listed["shared"], 0, "{listed}");
}

#[test]
fn concurrent_writes_and_trims_of_the_same_extents_lose_no_extent() {
    require_tool("fio");
    let server = Server::start();
    server.ok(
        "lun_create",
        json!({"name": "r", "kind": "mem", "size": 64 * MIB}),
    );
    server.ok(
        "pool_create",
        json!({"name": "p", "luns": ["r"], "extent_size": 64 * 1024}),
    );
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 4 * MIB}),
    );
    let url = server.url("v");
    let start = free_extents(&server, "p");
    // Writes and TRIMs of 64 KiB (one extent) and 128 KiB over 64 extents, at once.
    let run = |rw: &str, seed: &str| {
        Command::new("timeout")
            .arg("60")
            .arg("fio")
            .args([
                "--name=race",
                "--ioengine=nbd",
                &format!("--uri={url}"),
                &format!("--rw={rw}"),
                "--bsrange=4k-128k",
                "--iodepth=8",
                "--time_based",
                "--runtime=3",
                &format!("--randseed={seed}"),
                "--size=4M",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("fio")
    };
    let mut writers = run("randwrite", "1");
    let trimmers = run("randtrim", "2");
    // While they run, the free count must go up at times: extents are given back.
    let (mut previous, mut given_back) = (free_extents(&server, "p"), false);
    while writers.try_wait().expect("fio").is_none() {
        let free = free_extents(&server, "p");
        given_back |= free > previous;
        previous = free;
        std::thread::sleep(Duration::from_millis(20));
    }
    for child in [writers, trimmers] {
        let output = child.wait_with_output().expect("fio ends");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && text.contains("err= 0"),
            "fio failed:\n{text}\nlog:\n{}",
            server.log()
        );
    }
    assert!(given_back, "no extent was given back while the TRIMs ran");
    // Every extent is either free or mapped by the volume: none lost, none freed twice.
    let mapped = allocated_extents(&server, "v");
    assert_eq!(free_extents(&server, "p") + mapped, start, "extents lost");
    nbd_clean(&url, &["discard 0 4M", "read -P 0 0 4M"]);
    assert_eq!(free_extents(&server, "p"), start);
}

/// A server with a host that has an IQN and an NQN and a VP (LUN 0) to a 64 MiB thin volume
/// in a pool of one 8 MiB RAM LUN; the pool's extent count.
fn served_small(server: &Server) -> u64 {
    let extents = small_pool(server, "p", 8 * MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 64 * MIB}),
    );
    server.ok(
        "host_create",
        json!({"name": "h", "iqn": INITIATOR, "nqn": HOSTNQN}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "h", "volume": "v", "lun": 0}),
    );
    extents
}

#[test]
fn over_iscsi_unmap_gives_extents_back_and_a_full_pool_reports_space_allocation_failed() {
    let server = Server::start();
    let extents = served_small(&server);
    let url = server.iscsi_url(0);
    let fill = format!("write -P 0x31 0 {}", extents * MIB);
    let beyond = format!("write -P 0x32 {} 4k", extents * MIB);
    let commands: Vec<String> = [
        fill.as_str(),
        &beyond,
        "write -P 0x33 0 4k",
        "read -P 0x33 0 4k",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let (_, text) = qemu_io_iscsi(&url, INITIATOR, &commands);
    // DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h), which qemu turns into
    // ENOSPC.
    assert!(
        text.contains("DATA PROTECTION") && text.contains("0x2707"),
        "no DATA PROTECT 27/07 sense:\n{text}"
    );
    assert!(
        text.contains("write failed: No space left on device"),
        "{text}"
    );
    assert_eq!(text.matches("write failed").count(), 1, "{text}");
    assert!(text.contains("read 4096/4096 bytes at offset 0"), "{text}");
    assert_eq!(free_extents(&server, "p"), 0);
    // UNMAP of the whole LUN gives every extent back.
    let (clean, text) = qemu_io_iscsi(&url, INITIATOR, &["discard 0 64M".to_string()]);
    assert!(clean, "{text}");
    assert_eq!(free_extents(&server, "p"), extents);
    assert_eq!(allocated_extents(&server, "v"), 0);
    // Read back over NBD: qemu's iscsi driver asserts on reading deallocated ranges of a LUN
    // of 4096-byte blocks (it asks for block status of a length not a multiple of them).
    nbd_clean(&server.url("v"), &["read -P 0 0 8M"]);
}

#[test]
fn over_nvme_tcp_a_full_pool_answers_capacity_exceeded() {
    let server = Server::start();
    let extents = served_small(&server);
    nbd_clean(
        &server.url("v"),
        &[&format!("write -P 0x41 0 {}", extents * MIB)],
    );
    let subnqn = server.nvmf_subnqn("h");
    let target = format!("nvme-tcp://127.0.0.1:{}/{subnqn}", server.nvmf_port());
    // Sequential writes over twice the pool: the mapped half is overwritten, the rest needs
    // new extents.
    let size = format!("{}M", 2 * extents);
    let (ok, report, text) = sds_perf_json(&[
        "--target",
        &target,
        "--hostnqn",
        HOSTNQN,
        "--rw",
        "write",
        "--bs",
        "64k",
        "--qd",
        "4",
        "--volume-size",
        &size,
        "--time",
        "0.5",
        "--ramp",
        "0",
        "--log-level",
        "debug",
    ]);
    assert!(!ok, "writes to a full pool all succeeded:\n{text}");
    let report = report.unwrap_or_else(|| panic!("no report:\n{text}"));
    let failed = report["failed_ios"].as_u64().expect("failed_ios");
    let completed = report["completed_ios"].as_u64().expect("completed_ios");
    assert!(failed > 0 && failed < completed, "{report}");
    // Capacity Exceeded: generic status 81h.
    assert!(text.contains("failed: sct 0x0 sc 0x81"), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.contains("failed: sct") && !l.contains("sc 0x81")),
        "another status than Capacity Exceeded:\n{text}"
    );
    assert_eq!(free_extents(&server, "p"), 0);
}

/// Over NVMe/TCP with the tests' own initiator: a write needing a new extent of a full pool
/// gets exactly Capacity Exceeded, an overwrite succeeds, and Dataset Management deallocate of
/// the whole namespace gives every extent back (after which the write succeeds).
#[test]
fn over_nvme_tcp_deallocate_gives_extents_back_and_a_full_pool_refuses_only_new_extents() {
    use common::nvmf_initiator::{Identity, NvmfConnection};
    use sds::nvmf::command::{CommandBuilder, IO_DATASET_MANAGEMENT};
    use sds::nvmf::status;
    const BLOCK: u64 = 4096;
    let server = Server::start();
    let extents = served_small(&server);
    let subnqn = server.nvmf_subnqn("h");
    let identity = Identity {
        hostnqn: HOSTNQN.into(),
        hostid: [0x5b; 16],
    };
    let port = server.nvmf_port();
    let (mut admin, answer) =
        NvmfConnection::admin(port, &identity, &subnqn, 30_000).expect("admin Connect");
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(admin.enable().expect("CC.EN") & 1, 1, "CSTS.RDY");
    let cntlid = answer.completion.result as u16;
    let (mut queue, answer) =
        NvmfConnection::io_queue(port, &identity, &subnqn, 1, cntlid).expect("I/O Connect");
    assert!(answer.status().is_success(), "{}", answer.status());
    let block = vec![0x61u8; BLOCK as usize];
    let lba_of = |extent: u64| extent * MIB / BLOCK;
    for extent in 0..extents {
        let answer = queue.write(1, lba_of(extent), 1, &block).expect("write");
        assert!(
            answer.status().is_success(),
            "extent {extent}: {}",
            answer.status()
        );
    }
    assert_eq!(free_extents(&server, "p"), 0);
    let answer = queue.write(1, lba_of(extents), 1, &block).expect("write");
    assert_eq!(
        answer.status(),
        status::CAPACITY_EXCEEDED,
        "{}",
        answer.status()
    );
    let answer = queue.write(1, 1, 1, &block).expect("overwrite");
    assert!(answer.status().is_success(), "{}", answer.status());
    let answer = queue.read(1, 1, 1, BLOCK as u32).expect("read");
    assert!(answer.status().is_success() && answer.data == block);
    // One range: the whole 64 MiB namespace.
    let mut range = vec![0u8; 16];
    range[4..8].copy_from_slice(&((64 * MIB / BLOCK) as u32).to_le_bytes());
    let dsm = CommandBuilder::new(IO_DATASET_MANAGEMENT, 0x300)
        .nsid(1)
        .cdw(10, 0)
        .cdw(11, 1 << 2)
        .build();
    let answer = queue
        .exchange(dsm, &range, 0, 128 << 10)
        .expect("deallocate answered");
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(free_extents(&server, "p"), extents);
    assert_eq!(allocated_extents(&server, "v"), 0);
    let answer = queue.read(1, 1, 1, BLOCK as u32).expect("read");
    assert!(answer.status().is_success() && answer.data.iter().all(|&b| b == 0));
    let answer = queue.write(1, lba_of(extents), 1, &block).expect("write");
    assert!(answer.status().is_success(), "{}", answer.status());
}

/// Random whole-extent writes and TRIMs, each acknowledged before the next, then `kill -9` at
/// once: after every restart each extent holds exactly its last acknowledged state (its
/// pattern, or zeroes once trimmed) and the pool's free count is what the mapped extents
/// leave. `SDS_CRASH_SEED` replays a run, `SDS_CRASH_CYCLES` sets the cycles (default 3).
#[test]
fn kill_9_after_random_writes_and_trims_keeps_exactly_what_was_acknowledged() {
    const EXTENTS: u64 = 16;
    const OPS_PER_CYCLE: usize = 12;
    let seed = common::crash_seed();
    println!("SDS_CRASH_SEED={seed}");
    let mut rng = common::Rng(seed);
    let mut server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": EXTENTS * MIB}),
    );
    let url = server.url("v");
    let start = free_extents(&server, "p");
    // Per extent: the pattern it holds, or None (never written, or trimmed).
    let mut model: Vec<Option<u64>> = vec![None; EXTENTS as usize];
    for cycle in 0..common::crash_cycles(3) {
        let mut commands = Vec::new();
        for _ in 0..OPS_PER_CYCLE {
            let extent = rng.range(0..EXTENTS);
            if rng.range(0..3) == 0 {
                // Sometimes a run of extents at once.
                let count = rng.range(1..EXTENTS - extent + 1);
                commands.push(format!("discard {} {}", extent * MIB, count * MIB));
                for e in extent..extent + count {
                    model[e as usize] = None;
                }
            } else {
                let pattern = rng.range(1..256);
                commands.push(format!("write -P {pattern} {} 1M", extent * MIB));
                model[extent as usize] = Some(pattern);
            }
        }
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        nbd_clean(&url, &commands);
        server.kill();
        server.spawn();
        let reads: Vec<String> = model
            .iter()
            .enumerate()
            .map(|(e, p)| format!("read -P {} {} 1M", p.unwrap_or(0), e as u64 * MIB))
            .collect();
        let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
        let (clean, text) = qemu_io(
            &url,
            &reads.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        );
        assert!(
            clean,
            "cycle {cycle} (SDS_CRASH_SEED={seed}): an extent is not as acknowledged:\n{text}"
        );
        let mapped = model.iter().filter(|p| p.is_some()).count() as u64;
        assert_eq!(
            allocated_extents(&server, "v"),
            mapped,
            "cycle {cycle} (SDS_CRASH_SEED={seed})"
        );
        assert_eq!(
            free_extents(&server, "p"),
            start - mapped,
            "cycle {cycle} (SDS_CRASH_SEED={seed})"
        );
    }
}

/// A TRIM of a volume that has a snapshot: the volume reads zeroes, the snapshot keeps every
/// byte (its extents are shared, so they are neither zeroed in place nor freed), and the
/// volume's extents go back to the pool only when nothing shares them any more. After a
/// restart both read the same, and deleting the snapshot returns every extent.
#[test]
fn a_trim_leaves_a_snapshot_of_the_volume_untouched() {
    let mut server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 8 * MIB}),
    );
    let start = free_extents(&server, "p");
    let url = server.url("v");
    nbd_clean(&url, &["write -P 0x3c 0 8M"]);
    server.ok("snapshot_create", json!({"volume": "v", "name": "s"}));
    server.ok(
        "vpath_create",
        json!({"host": common::TEST_HOST, "volume": "s", "mode": "ro"}),
    );
    let snapshot_url = server.url_without_grant("s");
    assert_eq!(
        free_extents(&server, "p"),
        start - 8,
        "a snapshot copies nothing"
    );

    // A whole-volume TRIM and a partial one over shared extents.
    nbd_clean(
        &url,
        &["discard 0 6M", "write -z 6M 512k", "read -P 0 0 6656k"],
    );
    nbd_clean(&url, &["read -P 0x3c 6656k 1536k"]);
    nbd_read_only(&snapshot_url, &["read -P 0x3c 0 8M"]);

    assert!(server.stop(), "clean stop:\n{}", server.log());
    server.spawn();
    nbd_clean(&url, &["read -P 0 0 6656k", "read -P 0x3c 6656k 1536k"]);
    nbd_read_only(&snapshot_url, &["read -P 0x3c 0 8M"]);

    // Without the snapshot, a TRIM of the whole volume gives back everything.
    let id = server.ok("vpath_get_vpaths", json!({"volume": "s"}))[0]["id"].clone();
    server.ok("vpath_delete", json!({"id": id}));
    server.ok("snapshot_delete", json!({"name": "s"}));
    nbd_clean(&url, &["discard 0 8M", "read -P 0 0 8M"]);
    let listed = pool(&server, "p");
    assert_eq!(listed["shared"], 0, "{listed}");
    assert_eq!(
        free_extents(&server, "p"),
        start,
        "every extent came back: {listed}"
    );
}
