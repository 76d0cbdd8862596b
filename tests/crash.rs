//! Crash consistency under `kill -9`: a writer over a real NBD connection (libnbd, through
//! tests/tools/crash_check.py) logs every write it submits and every acknowledgement; the server
//! is SIGKILLed at a random moment, restarted on the same state dir, and every block ever
//! written must read back as its last acknowledged write (or as a write that was still in
//! flight). Cycles: `SDS_CRASH_CYCLES` (default 25); the long mode is the ignored test
//! (`cargo test --test crash -- --ignored --nocapture`, 100 cycles). `SDS_CRASH_SEED` replays a
//! run's kill moments and the writers' offsets.
//!
//! The snapshot variant takes a snapshot of the volume while the writer writes, a moment
//! before each kill, so kills land while first writes copy shared extents; after each restart
//! the volume and every kept snapshot are verified (a snapshot against the writer's log up to
//! the moment it was taken: `verify-snapshot` in the checker). Its cycles are few by default
//! (`SDS_CRASH_CYCLES` applies to it too).
//!
//! The remote variant puts one of the pool's two LUNs on a foreign array (tgtd, through the
//! iSCSI remote-LUN driver): every restart reconnects to it, replays its part of the journal
//! over the network, and the same check holds.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Small extents: a write of up to 64 KiB touches one or two, so allocations are frequent.
const EXTENT_BYTES: u64 = 64 * KIB;
/// Most writes go to the first 64 MiB of the volume (overwrites once it is mapped)...
const HOT_BYTES: u64 = 64 * MIB;
/// ...and some to anywhere in the rest of this thin volume, nearly each allocating new extents,
/// so every cycle allocates while it writes (not only the first ones).
const VOLUME_BYTES: u64 = 8192 * MIB;
const COLD_PERCENT: &str = "5";
/// A small journal: checkpoints (the journal folded into the extent records) every few dozen
/// group commits, so some kills land in or near one.
const JOURNAL_BLOCKS: u64 = 64;
/// How long a writer may write; the server is always killed well before.
const WRITER_SECONDS: &str = "10";
const KILL_AFTER_MS: std::ops::Range<u64> = 150..700;
/// The snapshot variant: a smaller hot range (each snapshot pins up to all of it), the
/// snapshot taken this long after the writer started, the kill this long after the snapshot,
/// and how many snapshots are kept (older ones are deleted between cycles).
const SNAPSHOT_HOT_BYTES: u64 = 16 * MIB;
const SNAPSHOT_AFTER_MS: std::ops::Range<u64> = 100..300;
const KILL_AFTER_SNAPSHOT_MS: std::ops::Range<u64> = 20..300;
const SNAPSHOTS_KEPT: usize = 2;
/// Cycles of the snapshot variant by default: about 30 s on a loaded 2-core machine.
const SNAPSHOT_CYCLES: usize = 6;

/// Cycles of the remote variant by default (each restart logs in to the array again).
const REMOTE_CYCLES: usize = 10;

/// Where the pool's first LUN (`crash-a`, 512-byte blocks) lives.
#[derive(Clone, Copy, PartialEq)]
enum FirstLun {
    /// A file of the server's own.
    Local,
    /// tgtd's LUN, a remote `iscsi` LUN of the server.
    Remote,
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    crash_loop(common::crash_cycles(25), false, FirstLun::Local);
}

#[test]
fn acknowledged_writes_survive_kill_9_with_a_remote_lun_in_the_pool() {
    crash_loop(common::crash_cycles(REMOTE_CYCLES), false, FirstLun::Remote);
}

#[test]
#[ignore = "long mode: cargo test --test crash -- --ignored --nocapture"]
fn acknowledged_writes_survive_kill_9_long() {
    crash_loop(common::crash_cycles(100), false, FirstLun::Local);
}

#[test]
fn acknowledged_writes_and_snapshots_survive_kill_9_during_copy_on_write() {
    crash_loop(common::crash_cycles(SNAPSHOT_CYCLES), true, FirstLun::Local);
}

fn checker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/crash_check.py")
}

/// Debian's Python with libnbd's binding, which the checker needs.
fn require_python_nbd() {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import nbd"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "/usr/bin/python3 cannot import nbd: install python3-libnbd (scripts/setup.sh)"
    );
}

/// A running checker `write`: its stdout lines arrive on a channel.
struct Writer {
    child: Child,
    lines: Receiver<String>,
}

impl Writer {
    fn spawn(url: &str, log: &Path, seed: u64, hot_bytes: u64) -> Self {
        let mut child = Command::new("/usr/bin/python3")
            .arg(checker())
            .args(["write", "--uri", url, "--log"])
            .arg(log)
            .args(["--seconds", WRITER_SECONDS, "--seed", &seed.to_string()])
            .args(["--hot-bytes", &hot_bytes.to_string()])
            .args(["--cold-percent", COLD_PERCENT])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the crash checker's writer");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for `ready` (connected to the server).
    fn wait_ready(&mut self) {
        match self.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line == "ready" => {}
            other => panic!("the writer did not get ready: {other:?}"),
        }
    }

    /// Waits for the writer to end; returns its exit code and its JSON summary.
    fn finish(mut self) -> (i32, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the writer") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the writer did not end within 30 s of the server's death");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut summary = Value::Null;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            if let Ok(value) = serde_json::from_str::<Value>(&line) {
                summary = value;
            }
        }
        (status.code().unwrap_or(-1), summary)
    }
}

/// Runs the checker's `verify`; returns whether it passed, its JSON summary and its output.
fn verify_log(url: &str, log: &Path) -> (bool, Value, String) {
    verify_with(&["verify", "--uri", url], log)
}

/// Runs the checker's `verify-snapshot` of snapshot `name` (at `url`).
fn verify_snapshot(url: &str, log: &Path, name: &str) -> (bool, Value, String) {
    verify_with(&["verify-snapshot", "--name", name, "--uri", url], log)
}

/// Appends a marker line to the writer's log (one write with O_APPEND: whole, between the
/// writer's lines).
fn mark(log: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .expect("open the writer's log");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("append to the writer's log");
}

fn verify_with(args: &[&str], log: &Path) -> (bool, Value, String) {
    let output = Command::new("/usr/bin/python3")
        .arg(checker())
        .args(args)
        .arg("--log")
        .arg(log)
        .output()
        .expect("run the crash checker's verify");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let summary = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null);
    let ok = output.status.success() && summary["ok"] == json!(true);
    (ok, summary, text)
}

fn u64_of(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or(0)
}

/// min / median / max.
fn spread(values: &[f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "min {:.1} / median {:.1} / max {:.1}",
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    )
}

/// The journal replay time of the last start-up, summed over the pool's LUNs, in µs, as
/// `pool_get_pools` reports it.
fn journal_replay_us(server: &Server) -> u64 {
    let pools = server.ok("pool_get_pools", json!({"name": "crash"}));
    pools[0]["journal"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|lun| u64_of(&lun["recovery"], "replay_us"))
        .sum()
}

/// Milliseconds of the day of a server log line (`HH:MM:SS.mmm LEVEL ...`).
fn log_time_ms(line: &str) -> Option<u64> {
    let stamp = line.get(..12)?;
    let field = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<u64>().ok();
    Some(((field(0..2)? * 60 + field(3..5)?) * 60 + field(6..8)?) * 1000 + field(9..12)?)
}

/// From a start-up's part of the server log: the milliseconds from its first line to the
/// "serving" line, and the lines about recovery (and any warning or error).
fn start_up_from_log(log: &str) -> (Option<u64>, Vec<String>) {
    let first = log.lines().find_map(log_time_ms);
    let serving = log
        .lines()
        .find(|l| l.contains(" serving; "))
        .and_then(log_time_ms);
    let took = first
        .zip(serving)
        .map(|(a, b)| (b + 86_400_000 - a) % 86_400_000);
    let lines = log
        .lines()
        .filter(|l| {
            l.contains("replay")
                || l.contains("restored")
                || l.contains("recover")
                || l.contains("WARN")
                || l.contains("ERROR")
        })
        .map(str::to_string)
        .collect();
    (took, lines)
}

fn crash_loop(cycles: usize, snapshots: bool, first_lun: FirstLun) {
    require_python_nbd();
    let seed = common::crash_seed();
    println!("crash: {cycles} cycles, seed {seed} (SDS_CRASH_SEED={seed} replays the kill moments and the writers' offsets)");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let mut server = Server::start();
    // Sparse files, big enough for the hot range and every cold allocation of the run.
    // (Each cycle allocates a few hundred 64 KiB extents for cold writes.)
    let lun_bytes = (64 * MIB + cycles as u64 * 24 * MIB).min(VOLUME_BYTES / 2 + 64 * MIB);
    // With snapshots, every kept one may pin a whole copy of the hot range.
    let hot_bytes = if snapshots {
        SNAPSHOT_HOT_BYTES
    } else {
        HOT_BYTES
    };
    let lun_bytes = if snapshots {
        lun_bytes + (SNAPSHOTS_KEPT as u64 + 1) * SNAPSHOT_HOT_BYTES
    } else {
        lun_bytes
    };
    // Snapshots taken and kept, oldest first; how many snapshot verifies passed.
    let mut kept: Vec<String> = Vec::new();
    let mut snapshot_verifies = 0usize;
    // The array outlives every kill of the server (it stops when the test ends).
    let array = (first_lun == FirstLun::Remote)
        .then(|| common::tgtd::Tgtd::start(server.dir.path(), lun_bytes));
    for (name, block_size) in [("crash-a", 512u64), ("crash-b", 4096)] {
        if let (Some(tgtd), "crash-a") = (&array, name) {
            server.ok(
                "lun_create",
                json!({"name": name, "kind": "iscsi", "url": tgtd.url()}),
            );
            continue;
        }
        server.ok(
            "lun_create",
            json!({"name": name, "kind": "file", "size": lun_bytes, "block_size": block_size,
                   "path": server.dir.path().join(format!("{name}.img"))}),
        );
    }
    server.ok(
        "pool_create",
        json!({"name": "crash", "luns": ["crash-a", "crash-b"], "extent_size": EXTENT_BYTES,
               "journal_blocks": JOURNAL_BLOCKS}),
    );
    server.ok(
        "volume_create",
        json!({"name": "vol", "pool": "crash", "size": VOLUME_BYTES}),
    );
    let url = server.url("vol");
    let log = server.dir.path().join("writes.log");

    let mut restart_ms = Vec::new();
    let mut start_up_ms = Vec::new();
    let mut replay_ms = Vec::new();
    let mut allocated = Vec::new();
    let mut blocks_verified_total = 0u64;
    let mut verify_s = Vec::new();
    let mut acknowledged_total = 0u64;
    let mut submitted_total = 0u64;
    let mut cycles_with_acks = 0usize;
    let mut last_verify = Value::Null;
    let mut max_blocks = 0u64;
    for cycle in 1..=cycles {
        let extents_before = allocated_extents(&server);
        let writer_seed = rng.next() >> 1;
        let mut writer = Writer::spawn(&url, &log, writer_seed, hot_bytes);
        writer.wait_ready();
        let kill_after = if snapshots {
            let before = rng.range(SNAPSHOT_AFTER_MS);
            std::thread::sleep(Duration::from_millis(before));
            let name = format!("snap{cycle}");
            mark(&log, &format!("P {name}"));
            server.ok("snapshot_create", json!({"volume": "vol", "name": name}));
            mark(&log, &format!("Q {name}"));
            kept.push(name);
            let after = rng.range(KILL_AFTER_SNAPSHOT_MS);
            std::thread::sleep(Duration::from_millis(after));
            before + after
        } else {
            let kill_after = rng.range(KILL_AFTER_MS);
            std::thread::sleep(Duration::from_millis(kill_after));
            kill_after
        };
        let extents_at_kill = allocated_extents(&server);
        server.kill();
        let (code, written) = writer.finish();
        assert_eq!(
            code, 0,
            "cycle {cycle}: the writer failed (a write answered with an error?): {written}\nserver log:\n{}",
            tail(&server.log(), 60)
        );
        let acknowledged = u64_of(&written, "acknowledged");
        acknowledged_total += acknowledged;
        submitted_total += u64_of(&written, "submitted");
        if acknowledged > 0 {
            cycles_with_acks += 1;
        }

        let log_before = server.log().len();
        let restart = Instant::now();
        server.spawn();
        server.ok("spdk_get_version", json!({}));
        let restart_elapsed = restart.elapsed().as_secs_f64() * 1000.0;
        restart_ms.push(restart_elapsed);
        let replay_us = journal_replay_us(&server);
        replay_ms.push(replay_us as f64 / 1000.0);
        let (start_up, start_up_lines) =
            start_up_from_log(server.log().get(log_before..).unwrap_or(""));
        if let Some(ms) = start_up {
            start_up_ms.push(ms as f64);
        }
        allocated.push((extents_at_kill - extents_before) as f64);

        let (ok, verified, text) = verify_log(&url, &log);
        assert!(
            ok,
            "cycle {cycle} (seed {seed}, writer seed {writer_seed}, killed after {kill_after} ms): \
             acknowledged writes did not survive kill -9:\n{text}\nstart-up:\n{}\nserver log:\n{}",
            start_up_lines.join("\n"),
            tail(&server.log(), 80)
        );
        verify_s.push(verified["seconds"].as_f64().unwrap_or(0.0));
        snapshot_verifies += verify_snapshots(&server, &log, &kept, cycle);
        if kept.len() > SNAPSHOTS_KEPT {
            let oldest = kept.remove(0);
            let id = server.ok("vpath_get_vpaths", json!({"volume": oldest}))[0]["id"].clone();
            server.ok("vpath_delete", json!({ "id": id }));
            server.ok("snapshot_delete", json!({ "name": oldest }));
        }
        max_blocks = max_blocks.max(u64_of(&verified, "blocks_checked"));
        blocks_verified_total += u64_of(&verified, "blocks_checked");
        println!(
            "cycle {cycle:3}: killed after {kill_after} ms; writes {} acknowledged / {} submitted; \
             extents {extents_before} -> {extents_at_kill}+; restart {restart_elapsed:.1} ms \
             (log: {} ms to serving; journal replay {:.2} ms); verified {} blocks ({} with \
             unacknowledged writes, {} of those landed) in {:.2} s",
            acknowledged,
            u64_of(&written, "submitted"),
            start_up.map_or("?".into(), |ms| ms.to_string()),
            replay_us as f64 / 1000.0,
            u64_of(&verified, "blocks_checked"),
            u64_of(&verified, "blocks_with_unacknowledged"),
            u64_of(&verified, "unacknowledged_landed"),
            verified["seconds"].as_f64().unwrap_or(0.0),
        );
        for line in &start_up_lines {
            println!("           log: {line}");
        }
        last_verify = verified;
    }

    // A clean stop folds the journal into the records; everything must still be there.
    assert!(server.stop(), "SIGTERM did not stop the server cleanly");
    server.spawn();
    let (ok, clean, text) = verify_log(&url, &log);
    assert!(ok, "after a clean restart, verify failed:\n{text}");
    snapshot_verifies += verify_snapshots(&server, &log, &kept, cycles + 1);
    let extents = allocated_extents(&server);

    println!("crash summary (seed {seed}):");
    println!("  cycles: {cycles}; cycles whose writer got acknowledgements: {cycles_with_acks}");
    println!("  writes: {acknowledged_total} acknowledged of {submitted_total} submitted");
    println!(
        "  blocks verified: {blocks_verified_total} over all cycles; {} in the last verify \
         (+{} never-written blocks read as zeroes), lost {}, corrupt {}",
        u64_of(&clean, "blocks_checked"),
        u64_of(&clean, "unwritten_blocks_checked"),
        u64_of(&last_verify, "lost") + u64_of(&clean, "lost"),
        u64_of(&last_verify, "corrupt") + u64_of(&clean, "corrupt"),
    );
    println!(
        "  restart (spawn to the RPC socket answering), ms: {}",
        spread(&restart_ms)
    );
    println!(
        "  start-up per the server log (first line to serving), ms: {}",
        spread(&start_up_ms)
    );
    println!(
        "  journal replay at start-up (all LUNs, pool_get_pools), ms: {}",
        spread(&replay_ms)
    );
    println!(
        "  extents allocated per cycle before the kill (at least): {}; at the end: {extents}",
        spread(&allocated)
    );
    println!("  verify, s: {}", spread(&verify_s));
    println!("  wall time: {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        cycles_with_acks * 5 >= cycles * 4,
        "only {cycles_with_acks} of {cycles} cycles acknowledged any write: the test proves little"
    );
    assert!(max_blocks > 0, "no block was ever verified");
    if snapshots {
        println!("  snapshot verifies passed: {snapshot_verifies}");
        assert!(
            snapshot_verifies >= cycles,
            "too few snapshots were verified"
        );
    }
}

/// Verifies every kept snapshot against the writer's log (a read-only path made for it the
/// first time); returns how many were verified.
fn verify_snapshots(server: &Server, log: &Path, kept: &[String], cycle: usize) -> usize {
    for name in kept {
        if server.ok("vpath_get_vpaths", json!({ "volume": name }))[0]["id"].is_null() {
            server.ok(
                "vpath_create",
                json!({"host": TEST_HOST, "volume": name, "mode": "ro"}),
            );
        }
        let (ok, verified, text) = verify_snapshot(&server.url_without_grant(name), log, name);
        assert!(
            ok,
            "cycle {cycle}: snapshot {name} is not its point in time:\n{text}\nserver log:\n{}",
            tail(&server.log(), 60)
        );
        println!(
            "           snapshot {name}: verified {} blocks ({} with writes in flight at the \
             snapshot)",
            u64_of(&verified, "blocks_checked"),
            u64_of(&verified, "blocks_with_unacknowledged"),
        );
    }
    kept.len()
}

fn allocated_extents(server: &Server) -> u64 {
    u64_of(
        &server.ok("volume_get_volumes", json!({"name": "vol"}))[0],
        "allocated_extents",
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
