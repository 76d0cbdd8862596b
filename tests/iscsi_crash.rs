//! Crash consistency under `kill -9` over iSCSI, as tests/crash.rs is for NBD: qemu-io (its
//! iscsi driver, libiscsi) writes a pattern per region, each region its own and never written
//! twice; a write is acknowledged when qemu-io prints `wrote` (the target answered GOOD). The
//! server is SIGKILLed at a random moment, the client killed too, the server restarted on the
//! same state dir (a file pool), and every region acknowledged in any cycle so far must read
//! back its pattern, over iSCSI and over NBD. Cycles: `SDS_CRASH_CYCLES` (default 8);
//! `SDS_CRASH_SEED` replays the regions and kill moments.

mod common;

use common::{require_tool, Rng, Server, ISCSI_TOOL_DEADLINE};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

const INITIATOR: &str = "iqn.2026-11.org.sds.test:crash";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Each write lands in its own slot of this size (so no two writes overlap, ever).
const SLOT_BYTES: u64 = 64 * KIB;
const VOLUME_BYTES: u64 = 256 * MIB;
/// Small extents: writes allocate all the time.
const EXTENT_BYTES: u64 = 64 * KIB;
/// Write commands given to one qemu-io (it is killed long before it could run them all).
const WRITES_PER_CYCLE: usize = 800;
/// When the server is killed, after the first acknowledged write of the cycle.
const KILL_AFTER_MS: std::ops::Range<u64> = 50..600;

/// One write: a pattern byte over [offset, offset + length).
#[derive(Clone, Copy, Debug)]
struct Region {
    pattern: u8,
    offset: u64,
    length: u64,
}

/// qemu-io's `--image-opts` for LUN 0 of the server's target.
fn image_opts(server: &Server) -> String {
    format!(
        "driver=iscsi,transport=tcp,portal=127.0.0.1:{},target={},lun=0,initiator-name={INITIATOR}",
        server.iscsi_port(),
        server.iscsi_target()
    )
}

/// Runs qemu-io writing `regions` in order until the server is killed at a random moment;
/// returns the regions it acknowledged (printed `wrote` for) and the kill delay.
fn write_until_killed(
    server: &mut Server,
    regions: &[Region],
    rng: &mut Rng,
) -> (Vec<Region>, u64) {
    let mut command = Command::new("stdbuf");
    // Line-buffered, so each `wrote` line reaches the pipe when the write completes.
    command.args(["-oL", "qemu-io", "--image-opts", &image_opts(server)]);
    for r in regions {
        command.args([
            "-c",
            &format!("write -P {} {} {}", r.pattern, r.offset, r.length),
        ]);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-io");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, lines) = channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let mut acknowledged_offsets = Vec::new();
    let note = |line: &str, acked: &mut Vec<u64>| {
        // "wrote 4096/4096 bytes at offset 65536"
        if let Some(rest) = line.strip_prefix("wrote ") {
            if let Some(offset) = rest
                .split_once(" at offset ")
                .and_then(|(_, o)| o.trim().parse::<u64>().ok())
            {
                acked.push(offset);
            }
        }
    };
    // Wait for the first acknowledgement (the client is logged in and writing).
    let started = Instant::now();
    loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                note(&line, &mut acknowledged_offsets);
                if !acknowledged_offsets.is_empty() {
                    break;
                }
            }
            Err(_) => {
                if let Some(status) = child.try_wait().expect("wait") {
                    panic!(
                        "qemu-io ended ({status}) before writing: {}\nserver log:\n{}",
                        errors.join().unwrap_or_default(),
                        server.log()
                    );
                }
                assert!(
                    started.elapsed() < ISCSI_TOOL_DEADLINE,
                    "qemu-io wrote nothing in {ISCSI_TOOL_DEADLINE:?}"
                );
            }
        }
    }
    let kill_after = rng.range(KILL_AFTER_MS);
    std::thread::sleep(Duration::from_millis(kill_after));
    server.kill();
    // The client goes too, before the server comes back: it must not re-send anything.
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    while let Ok(line) = lines.try_recv() {
        note(&line, &mut acknowledged_offsets);
    }
    let _ = errors.join();
    let acknowledged = regions
        .iter()
        .filter(|r| acknowledged_offsets.contains(&r.offset))
        .copied()
        .collect();
    (acknowledged, kill_after)
}

/// Reads every region back through `check` (qemu-io on one URL); returns how many regions did
/// not read back their pattern, and the output.
fn lost_regions(
    check: impl Fn(&[String]) -> (bool, String),
    regions: &[Region],
) -> (usize, String) {
    let mut lost = 0;
    let mut text = String::new();
    // A few hundred commands per qemu-io, to stay far from argument limits.
    for chunk in regions.chunks(400) {
        let commands: Vec<String> = chunk
            .iter()
            .map(|r| format!("read -P {} {} {}", r.pattern, r.offset, r.length))
            .collect();
        let (_, out) = check(&commands);
        let read = out.lines().filter(|l| l.starts_with("read ")).count();
        let failed = out.matches("Pattern verification failed").count();
        // A command that printed neither (an I/O error) counts as lost too.
        lost += failed + chunk.len().saturating_sub(read);
        if failed > 0 || read != chunk.len() {
            text += &out;
        }
    }
    (lost, text)
}

#[test]
fn writes_acknowledged_over_iscsi_survive_kill_9() {
    require_tool("qemu-io");
    require_tool("stdbuf");
    let cycles = common::crash_cycles(8);
    let seed = common::crash_seed();
    println!("iscsi crash: {cycles} cycles, seed {seed} (SDS_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    let mut server = Server::start();
    // 512-byte blocks throughout: qemu 10.0's iscsi driver asserts
    // (`iscsi_co_block_status: QEMU_IS_ALIGNED(offset | bytes, block_size)`) reading back
    // a thin volume of 4096-byte blocks.
    for name in ["crash-a", "crash-b"] {
        server.ok(
            "lun_create",
            json!({"name": name, "kind": "file", "size": VOLUME_BYTES / 2 + 64 * MIB,
                   "block_size": 512,
                   "path": server.dir.path().join(format!("{name}.img"))}),
        );
    }
    server.ok(
        "pool_create",
        json!({"name": "crash", "luns": ["crash-a", "crash-b"], "extent_size": EXTENT_BYTES}),
    );
    server.ok(
        "volume_create",
        json!({"name": "vol", "pool": "crash", "size": VOLUME_BYTES, "block_size": 512}),
    );
    server.ok("host_create", json!({"name": "ini", "iqn": INITIATOR}));
    server.ok(
        "vpath_create",
        json!({"host": "ini", "volume": "vol", "lun": 0}),
    );
    let nbd_url = server.url("vol");

    // Every slot once, in a random order: no region is ever written twice.
    let mut slots: Vec<u64> = (0..VOLUME_BYTES / SLOT_BYTES).collect();
    for i in (1..slots.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        slots.swap(i, j);
    }
    // Slots are used up to the write that was in flight at the kill (qemu-io runs its
    // commands one at a time); those after it were never sent and are used again.
    let mut cursor = 0usize;
    let mut acknowledged: Vec<Region> = Vec::new();
    let mut next_pattern = 0u64;
    for cycle in 1..=cycles {
        let regions: Vec<Region> = slots[cursor.min(slots.len())..]
            .iter()
            .take(WRITES_PER_CYCLE)
            .map(|&slot| {
                let length = 4 * KIB * rng.range(1..17);
                let offset = slot * SLOT_BYTES
                    + 4 * KIB * rng.range(0..(SLOT_BYTES - length) / (4 * KIB) + 1);
                next_pattern += 1;
                Region {
                    pattern: (next_pattern % 255 + 1) as u8,
                    offset,
                    length,
                }
            })
            .collect();
        assert!(
            !regions.is_empty(),
            "the volume ran out of slots: fewer cycles"
        );
        let (acked, kill_after) = write_until_killed(&mut server, &regions, &mut rng);
        cursor += acked.len() + 1;
        acknowledged.extend(&acked);
        server.spawn();
        let url = server.iscsi_url(0);
        let (lost, text) =
            lost_regions(|c| common::qemu_io_iscsi(&url, INITIATOR, c), &acknowledged);
        println!(
            "cycle {cycle}: killed {kill_after} ms after the first write; {} writes acknowledged \
             ({} so far); {} checked over iSCSI, {lost} lost",
            acked.len(),
            acknowledged.len(),
            acknowledged.len()
        );
        assert_eq!(
            lost, 0,
            "cycle {cycle} (seed {seed}): acknowledged writes lost after kill -9:\n{text}\nserver log:\n{}",
            server.log()
        );
    }
    // Everything once more over NBD.
    let (lost, text) = lost_regions(|c| common::qemu_io(&nbd_url, c), &acknowledged);
    println!(
        "iscsi crash summary (seed {seed}): {} writes acknowledged over {cycles} cycles, {} checked \
         over iSCSI after each restart and over NBD at the end, {lost} lost",
        acknowledged.len(),
        acknowledged.len()
    );
    assert_eq!(lost, 0, "over NBD, acknowledged writes lost:\n{text}");
    // The check can fail: a region read back expecting another pattern is counted lost.
    if let Some(&first) = acknowledged.first() {
        let wrong = Region {
            pattern: first.pattern.wrapping_add(1).max(1),
            ..first
        };
        let url = server.iscsi_url(0);
        let (lost, _) = lost_regions(|c| common::qemu_io_iscsi(&url, INITIATOR, c), &[wrong]);
        assert_eq!(
            lost, 1,
            "the read-back check does not notice a wrong pattern"
        );
    }
    assert!(
        acknowledged.len() >= cycles,
        "too few writes acknowledged ({}) for the test to prove anything",
        acknowledged.len()
    );
}
