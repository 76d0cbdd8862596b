//! What a virtual path's life does to the iSCSI sessions through it, against the real server:
//! deleting the path ends its host's sessions (and only those), growing the volume gives a
//! live session CAPACITY DATA HAS CHANGED then the new size, a read-only path and a domain
//! that does not allow writes refuse WRITE with DATA PROTECT / WRITE PROTECTED while reads
//! work, and the path's statistics count iSCSI I/O. Sessions are kept open across the changes
//! by the test initiator in tests/common/initiator.rs.

mod common;

use common::initiator::{Initiator, InitiatorError, Outcome, CHECK_CONDITION, GOOD};
use common::Server;
use sds::target::iscsi::pdu_io::Digests;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const H1: &str = "iqn.2026-11.org.sds.test:paths-h1";
const H2: &str = "iqn.2026-11.org.sds.test:paths-h2";
const MIB: u64 = 1 << 20;
/// How long an administrative change may take to reach a live session.
const CHANGE_DEADLINE: Duration = Duration::from_secs(20);

/// SENSE KEY DATA PROTECT.
const DATA_PROTECT: u8 = 0x07;
/// SENSE KEY UNIT ATTENTION.
const UNIT_ATTENTION: u8 = 0x06;

/// A server with a RAM volume `v` of `size` bytes, hosts h1 and h2 (by initiator name), and a
/// path from h1 to `v` at LUN 0 with `mode`; returns the server and that path's id.
fn served(size: u64, mode: &str) -> (Server, u64) {
    let server = Server::start();
    server.ram_pool("p", 128 * MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": size}),
    );
    server.ok("host_create", json!({"name": "h1", "iqn": H1}));
    server.ok("host_create", json!({"name": "h2", "iqn": H2}));
    let id = server.ok(
        "vpath_create",
        json!({"host": "h1", "volume": "v", "mode": mode, "lun": 0}),
    )["id"]
        .as_u64()
        .expect("a path id");
    (server, id)
}

fn login(server: &Server, initiator: &str) -> Initiator {
    Initiator::login(
        server.iscsi_port(),
        initiator,
        &server.iscsi_target(),
        Digests::default(),
    )
    .unwrap_or_else(|error| panic!("{initiator} could not log in: {error:?}"))
}

/// The volume's block length, from READ CAPACITY(16) (a unit attention first is tolerated).
fn block_bytes(session: &mut Initiator) -> u32 {
    for _ in 0..3 {
        if let Ok((_, block)) = session.read_capacity16(0).expect("READ CAPACITY") {
            return block;
        }
    }
    panic!("READ CAPACITY(16) kept failing");
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8) ^ (i as u8))
        .collect()
}

fn assert_good(outcome: &Outcome, what: &str) {
    assert_eq!(
        outcome.status,
        GOOD,
        "{what}: status {:#x}, sense {:?}",
        outcome.status,
        outcome.sense_triple()
    );
}

/// Writes `data` at `lba` and reads it back through `session`, comparing bytes.
fn write_read(session: &mut Initiator, lba: u64, data: &[u8], block: u32, what: &str) {
    assert_good(
        &session.write16(0, lba, data, block).expect("WRITE"),
        &format!("{what}: write"),
    );
    let read = session
        .read16(0, lba, (data.len() / block as usize) as u32, block)
        .expect("READ");
    assert_good(&read, &format!("{what}: read"));
    assert!(
        read.data == data,
        "{what}: the data read differs from the data written"
    );
}

#[test]
fn deleting_a_path_ends_its_hosts_sessions_and_no_other() {
    let (server, h1_path) = served(16 * MIB, "rw");
    server.ok(
        "vpath_create",
        json!({"host": "h2", "volume": "v", "lun": 0}),
    );
    let mut s1 = login(&server, H1);
    let mut s2 = login(&server, H2);
    let block = block_bytes(&mut s1);
    block_bytes(&mut s2);
    let one = pattern(1, 8 * block as usize);
    let two = pattern(2, 8 * block as usize);
    write_read(&mut s1, 0, &one, block, "h1 before");
    write_read(&mut s2, 64, &two, block, "h2 before");

    server.ok("vpath_delete", json!({"id": h1_path}));
    // h1's next command fails (an error status or a closed connection), within the deadline.
    let deadline = Instant::now() + CHANGE_DEADLINE;
    let ended = loop {
        match s1.read16(0, 0, 8, block) {
            Err(InitiatorError::Connection(why)) => break format!("connection ended: {why}"),
            Err(other) => break format!("{other:?}"),
            Ok(outcome) if outcome.status != GOOD => {
                break format!(
                    "status {:#x} sense {:?}",
                    outcome.status,
                    outcome.sense_triple()
                )
            }
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "h1 still reads through its deleted path after {CHANGE_DEADLINE:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    eprintln!("h1 after its path was deleted: {ended}");
    // ... and it cannot come back.
    assert!(
        Initiator::login(
            server.iscsi_port(),
            H1,
            &server.iscsi_target(),
            Digests::default()
        )
        .is_err(),
        "h1 logged in again without a path"
    );
    // h2's session goes on, its data and h1's intact.
    write_read(
        &mut s2,
        128,
        &pattern(3, 8 * block as usize),
        block,
        "h2 after",
    );
    let read = s2.read16(0, 0, 8, block).expect("READ");
    assert_good(&read, "h2 reads h1's blocks");
    assert!(read.data == one, "h1's acknowledged write is gone");
    let read = s2.read16(0, 64, 8, block).expect("READ");
    assert!(read.data == two, "h2's earlier write is gone");
}

#[test]
fn growing_a_volume_gives_a_live_session_capacity_changed_then_the_new_size() {
    let (server, _) = served(16 * MIB, "rw");
    let mut session = login(&server, H1);
    let block = block_bytes(&mut session);
    let (last, _) = session
        .read_capacity16(0)
        .expect("READ CAPACITY")
        .expect("GOOD");
    assert_eq!(last + 1, 16 * MIB / u64::from(block));
    let data = pattern(7, 4 * block as usize);
    write_read(&mut session, 10, &data, block, "before the resize");

    server.ok("volume_resize", json!({"name": "v", "size": 48 * MIB}));
    // The next command gets the unit attention (once the change has reached the session);
    // until then commands go on normally.
    let deadline = Instant::now() + CHANGE_DEADLINE;
    loop {
        let outcome = session.test_unit_ready(0).expect("TEST UNIT READY");
        if outcome.status == CHECK_CONDITION {
            assert_eq!(
                outcome.sense_triple(),
                Some((UNIT_ATTENTION, 0x2a, 0x09)),
                "not CAPACITY DATA HAS CHANGED: {:?}",
                outcome.sense
            );
            break;
        }
        assert_good(&outcome, "TEST UNIT READY before the unit attention");
        assert!(
            Instant::now() < deadline,
            "no unit attention {CHANGE_DEADLINE:?} after the resize"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Reported once: the next READ CAPACITY succeeds with the new size.
    let (last, length) = session
        .read_capacity16(0)
        .expect("READ CAPACITY")
        .unwrap_or_else(|o| panic!("READ CAPACITY after the unit attention: {o:?}"));
    assert_eq!((last + 1, length), (48 * MIB / u64::from(block), block));
    // The new blocks are usable at once, the old ones kept their data.
    let tail = 48 * MIB / u64::from(block) - 4;
    write_read(
        &mut session,
        tail,
        &pattern(9, 4 * block as usize),
        block,
        "past the old end",
    );
    let read = session.read16(0, 10, 4, block).expect("READ");
    assert_good(&read, "old blocks");
    assert!(read.data == data, "the resize changed written data");
}

/// WRITE is refused with DATA PROTECT / WRITE PROTECTED (27/00) and leaves the blocks as
/// they were; READ works.
fn assert_write_protected(session: &mut Initiator, block: u32, expected: &[u8], why: &str) {
    let outcome = session
        .write16(0, 0, &pattern(0x5a, 4 * block as usize), block)
        .expect("WRITE");
    assert_eq!(
        outcome.status, CHECK_CONDITION,
        "{why}: the write was not refused"
    );
    assert_eq!(
        outcome.sense_triple(),
        Some((DATA_PROTECT, 0x27, 0x00)),
        "{why}: not DATA PROTECT / WRITE PROTECTED: {:?}",
        outcome.sense
    );
    let read = session.read16(0, 0, 4, block).expect("READ");
    assert_good(&read, why);
    assert!(
        read.data == expected,
        "{why}: the refused write changed the blocks"
    );
}

#[test]
fn a_read_only_path_refuses_writes_with_write_protected_and_serves_reads() {
    let (server, _) = served(16 * MIB, "ro");
    // Data put there through another (read-write) path.
    server.ok(
        "vpath_create",
        json!({"host": "h2", "volume": "v", "lun": 0}),
    );
    let mut writer = login(&server, H2);
    let block = block_bytes(&mut writer);
    let data = pattern(4, 4 * block as usize);
    write_read(&mut writer, 0, &data, block, "the read-write path");
    let mut reader = login(&server, H1);
    block_bytes(&mut reader);
    assert_write_protected(&mut reader, block, &data, "read-only path");
}

#[test]
fn a_domain_without_writes_refuses_them_with_write_protected() {
    let (server, path) = served(16 * MIB, "rw");
    let mut session = login(&server, H1);
    let block = block_bytes(&mut session);
    let data = pattern(5, 4 * block as usize);
    write_read(&mut session, 0, &data, block, "default domain");
    server.ok(
        "domain_create",
        json!({"name": "readers", "capabilities": {"allowed_ops": ["read", "flush"]}}),
    );
    server.ok("vpath_set_domain", json!({"id": path, "domain": "readers"}));
    // The move reaches the live session without ending it.
    let deadline = Instant::now() + CHANGE_DEADLINE;
    loop {
        let outcome = session.write16(0, 0, &data, block).expect("WRITE");
        if outcome.status != GOOD {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes still allowed {CHANGE_DEADLINE:?} after the domain move"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_write_protected(&mut session, block, &data, "domain without writes");
    // A new session through the same path is refused the same way.
    let mut fresh = login(&server, H1);
    block_bytes(&mut fresh);
    assert_write_protected(
        &mut fresh,
        block,
        &data,
        "domain without writes, new session",
    );
    // Moving back allows writes again, on the same session.
    server.ok("vpath_set_domain", json!({"id": path, "domain": "default"}));
    let deadline = Instant::now() + CHANGE_DEADLINE;
    let other = pattern(6, 4 * block as usize);
    loop {
        let outcome = session.write16(0, 0, &other, block).expect("WRITE");
        if outcome.status == GOOD {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes still refused {CHANGE_DEADLINE:?} after moving back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let read = session.read16(0, 0, 4, block).expect("READ");
    assert!(read.data == other, "the allowed write did not land");
}

fn stat(stats: &Value, field: &str, op: &str) -> u64 {
    stats["vpaths"][0]["total"][field][op].as_u64().unwrap_or(0)
}

#[test]
fn path_statistics_count_iscsi_io() {
    let (server, path) = served(16 * MIB, "rw");
    let url = server.iscsi_url(0);
    // 3 writes of 64 KiB and 5 reads of 64 KiB (each one SCSI command), verified.
    let mut commands = Vec::new();
    for i in 0..3u64 {
        commands.push(format!("write -P {} {} 65536", 0x30 + i, i * 65536));
    }
    for i in 0..5u64 {
        commands.push(format!(
            "read -P {} {} 65536",
            0x30 + i % 3,
            (i % 3) * 65536
        ));
    }
    let (clean, text) = common::qemu_io_iscsi(&url, H1, &commands);
    assert!(clean, "qemu-io over iSCSI:\n{text}");
    // Totals are published by the reactors each cycle: wait until they show all of it.
    let deadline = Instant::now() + CHANGE_DEADLINE;
    let stats = loop {
        let stats = server.ok("vpath_get_stats", json!({"id": path}));
        if stat(&stats, "bytes", "write") >= 3 * 65536 && stat(&stats, "bytes", "read") >= 5 * 65536
        {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "the path's statistics never counted the I/O: {stats:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "vpath_get_stats after qemu-io: {:#}",
        stats["vpaths"][0]["total"]
    );
    assert_eq!(stat(&stats, "bytes", "write"), 3 * 65536, "{stats:#}");
    assert!(stat(&stats, "ops", "write") >= 3, "{stats:#}");
    // qemu-io may read a little more than asked (probing the first blocks at open).
    assert!(stat(&stats, "bytes", "read") >= 5 * 65536, "{stats:#}");
    assert!(stat(&stats, "ops", "read") >= 5, "{stats:#}");
}
