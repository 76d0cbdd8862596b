//! Malformed PDUs in the full-feature phase, against the real server: an unknown opcode, a
//! data segment longer than the negotiated MaxRecvDataSegmentLength, a header digest that does
//! not match, a Data-Out for a task that does not exist, a SNACK (ErrorRecoveryLevel 0). Each
//! ends only its own connection or gets a Reject, while another initiator's session keeps
//! writing and reading correct data. A write whose Data-Out comes out of DataSN order fails
//! alone, with CHECK CONDITION, and none of its data lands. An initiator that sends READs and never reads the
//! answers holds a bounded amount of server memory, and others are still served.

mod common;

use common::initiator::{lun_field, rw16, Initiator, InitiatorError, CHECK_CONDITION, GOOD};
use common::Server;
use sds::digest;
use sds::target::iscsi::pdu::{
    self, reject, DataOut, NopOut, ScsiCommand, TargetPdu, BHS_BYTES, RESERVED_TAG,
};
use sds::target::iscsi::pdu_io::Digests;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

const GOOD_HOST: &str = "iqn.2026-11.org.sds.test:well-behaved";
const BAD_HOST: &str = "iqn.2026-11.org.sds.test:malformed";
const MIB: u64 = 1 << 20;
/// How long the server may take to answer or close after a malformed PDU.
const ANSWER_DEADLINE: Duration = Duration::from_secs(15);
/// How long a PDU the server may drop silently waits for an answer before the session is
/// checked instead.
const IGNORED_AFTER: Duration = Duration::from_secs(2);

/// A server with a file-pool volume `v` that both hosts reach at LUN 0.
fn served() -> Server {
    let server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 48 * MIB}),
    );
    for (name, iqn) in [("good", GOOD_HOST), ("bad", BAD_HOST)] {
        server.ok("host_create", json!({"name": name, "iqn": iqn}));
        server.ok(
            "vpath_create",
            json!({"host": name, "volume": "v", "lun": 0}),
        );
    }
    server
}

fn login(server: &Server, initiator: &str, digests: Digests) -> Initiator {
    let mut session = Initiator::login(
        server.iscsi_port(),
        initiator,
        &server.iscsi_target(),
        digests,
    )
    .unwrap_or_else(|e| panic!("{initiator} could not log in: {e:?}"));
    // The first command may meet a unit attention (power on); clear it.
    let _ = session.test_unit_ready(0);
    session
}

/// The well-behaved initiator: each round writes its own blocks and reads them back, then
/// checks every earlier round's blocks.
struct Witness {
    session: Initiator,
    block: u32,
    written: Vec<(u64, Vec<u8>)>,
}

impl Witness {
    fn new(server: &Server) -> Self {
        let mut session = login(server, GOOD_HOST, Digests::default());
        let (_, block) = session
            .read_capacity16(0)
            .expect("READ CAPACITY")
            .expect("GOOD");
        Self {
            session,
            block,
            written: Vec::new(),
        }
    }

    fn round(&mut self, what: &str) {
        let round = self.written.len() as u64;
        let lba = round * 64;
        let data: Vec<u8> = (0..8 * self.block as usize)
            .map(|i| (round as u8).wrapping_mul(31) ^ (i as u8) ^ (i >> 9) as u8)
            .collect();
        let outcome = self
            .session
            .write16(0, lba, &data, self.block)
            .unwrap_or_else(|e| panic!("after {what}: the other session's write failed: {e:?}"));
        assert_eq!(outcome.status, GOOD, "after {what}: write {outcome:?}");
        self.written.push((lba, data));
        for (lba, data) in &self.written {
            let read = self
                .session
                .read16(0, *lba, 8, self.block)
                .unwrap_or_else(|e| panic!("after {what}: the other session's read failed: {e:?}"));
            assert_eq!(read.status, GOOD, "after {what}: read {read:?}");
            assert!(
                &read.data == data,
                "after {what}: LBA {lba} does not read back what was written"
            );
        }
    }
}

/// What the server did after a malformed PDU: "closed", or "reject 0xNN, " and whether the
/// session went on (then its next command must get GOOD) or the connection was closed. With
/// `may_ignore`, a PDU the server drops without a word is allowed too ("ignored, session goes
/// on", checked the same way).
fn rejected_or_closed(session: &mut Initiator, what: &str, may_ignore: bool) -> String {
    let limit = if may_ignore {
        IGNORED_AFTER
    } else {
        ANSWER_DEADLINE
    };
    match session.receive_within(limit) {
        Err(InitiatorError::Connection(_)) => "closed".into(),
        Err(InitiatorError::TimedOut) if may_ignore => {
            let outcome = session
                .test_unit_ready(0)
                .unwrap_or_else(|e| panic!("{what}: ignored, then the session failed: {e:?}"));
            assert_eq!(outcome.status, GOOD, "{what}: ignored, then {outcome:?}");
            "ignored, session goes on".into()
        }
        Err(other) => panic!("{what}: neither a Reject nor a close in {limit:?}: {other:?}"),
        Ok(pdu) => match TargetPdu::parse(&pdu.bhs) {
            Ok(TargetPdu::Reject(r)) => {
                // The target may go on or end the connection after its Reject; if it goes
                // on, the session must work.
                let after = match session.test_unit_ready(0) {
                    Err(InitiatorError::Connection(_)) => "then closed",
                    Err(other) => panic!("{what}: rejected, then {other:?}"),
                    Ok(outcome) => {
                        assert_eq!(
                            outcome.status, GOOD,
                            "{what}: after the Reject: {outcome:?}"
                        );
                        "session goes on"
                    }
                };
                format!("reject {:#04x}, {after}", r.reason)
            }
            other => panic!("{what}: neither a Reject nor a close, but {other:?}"),
        },
    }
}

/// A BHS with `opcode` and the session's numbering, nothing else.
fn bare_bhs(session: &mut Initiator, opcode: u8) -> [u8; BHS_BYTES] {
    let (cmd_sn, itt) = session.take_sn_and_tag();
    let mut bhs = [0u8; BHS_BYTES];
    bhs[0] = opcode;
    bhs[1] = 0x80;
    bhs[16..20].copy_from_slice(&itt.to_be_bytes());
    bhs[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
    bhs[28..32].copy_from_slice(&session.exp_stat_sn().to_be_bytes());
    bhs
}

#[test]
fn malformed_pdus_end_only_their_own_connection() {
    let server = served();
    let mut witness = Witness::new(&server);
    witness.round("the start");
    let mut outcomes = Vec::new();

    // An opcode RFC 7143 does not define for an initiator.
    let mut bad = login(&server, BAD_HOST, Digests::default());
    let bhs = bare_bhs(&mut bad, 0x0f);
    bad.send(&bhs, &[]).expect("send");
    outcomes.push((
        "unknown opcode 0x0f",
        rejected_or_closed(&mut bad, "unknown opcode", false),
    ));
    witness.round("an unknown opcode");

    // A NOP-Out announcing 1 MiB of data, four times the target's MaxRecvDataSegmentLength;
    // only part of it follows.
    let mut bad = login(&server, BAD_HOST, Digests::default());
    let (cmd_sn, itt) = bad.take_sn_and_tag();
    let nop = NopOut {
        immediate: false,
        lun: 0,
        initiator_task_tag: itt,
        target_transfer_tag: RESERVED_TAG,
        cmd_sn,
        exp_stat_sn: bad.exp_stat_sn(),
        data_segment_length: 1 << 20,
    };
    let mut bhs = [0u8; BHS_BYTES];
    pdu::write_nop_out(&nop, &mut bhs);
    bad.stream.write_all(&bhs).expect("send");
    let _ = bad.stream.write_all(&vec![0x55u8; 64 * 1024]);
    outcomes.push((
        "DataSegmentLength 1 MiB > MaxRecvDataSegmentLength",
        rejected_or_closed(&mut bad, "an oversized data segment", false),
    ));
    witness.round("an oversized data segment");

    // With digests negotiated: a good command first (they work), then a NOP-Out whose header
    // digest is wrong.
    let digests = Digests {
        header: true,
        data: true,
    };
    let mut bad = login(&server, BAD_HOST, digests);
    let blk = witness.block;
    let data: Vec<u8> = (0..8 * blk).map(|i| (i * 7) as u8).collect();
    let outcome = bad
        .write16(0, 4096, &data, blk)
        .expect("WRITE with digests");
    assert_eq!(outcome.status, GOOD, "a write with digests: {outcome:?}");
    let read = bad.read16(0, 4096, 8, blk).expect("READ with digests");
    assert!(
        read.status == GOOD && read.data == data,
        "a read with digests: {read:?}"
    );
    let (cmd_sn, itt) = bad.take_sn_and_tag();
    let nop = NopOut {
        immediate: false,
        lun: 0,
        initiator_task_tag: itt,
        target_transfer_tag: RESERVED_TAG,
        cmd_sn,
        exp_stat_sn: bad.exp_stat_sn(),
        data_segment_length: 0,
    };
    pdu::write_nop_out(&nop, &mut bhs);
    let mut wire = bhs.to_vec();
    let mut sum = digest::digest(&bhs);
    sum[0] ^= 0x01;
    wire.extend_from_slice(&sum);
    bad.stream.write_all(&wire).expect("send");
    outcomes.push((
        "header digest mismatch",
        rejected_or_closed(&mut bad, "a header digest mismatch", false),
    ));
    witness.round("a header digest mismatch");

    // A Data-Out for a task that does not exist. The server drops Data-Out for a task it does
    // not know (data for an aborted task may still arrive after the abort, RFC 7143 11.5.1),
    // so that is allowed here beside a Reject or a close, as long as the session goes on.
    let mut bad = login(&server, BAD_HOST, Digests::default());
    let out = DataOut {
        final_: true,
        data_segment_length: 512,
        lun: lun_field(0),
        initiator_task_tag: 0xdead_beef,
        target_transfer_tag: 0x1234_5678,
        exp_stat_sn: bad.exp_stat_sn(),
        data_sn: 0,
        buffer_offset: 0,
    };
    pdu::write_data_out(&out, &mut bhs);
    bad.send(&bhs, &[0xaa; 512]).expect("send");
    outcomes.push((
        "Data-Out for an unknown task",
        rejected_or_closed(&mut bad, "a Data-Out for an unknown task", true),
    ));
    witness.round("a Data-Out for an unknown task");

    // A SNACK (there is no error recovery at level 0 to ask for).
    let mut bad = login(&server, BAD_HOST, Digests::default());
    let mut bhs = bare_bhs(&mut bad, 0x10);
    bhs[24..28].fill(0); // a SNACK has no CmdSN; the field is reserved
    bad.send(&bhs, &[]).expect("send");
    outcomes.push(("SNACK", rejected_or_closed(&mut bad, "a SNACK", false)));
    witness.round("a SNACK");

    for (what, outcome) in &outcomes {
        eprintln!("{what:50} -> {outcome}");
    }
    // A header digest error leaves nothing to trust in the PDU: no Reject can name it.
    assert_eq!(outcomes[2].1, "closed", "header digest mismatch");
    // What a Reject may say.
    for (what, outcome) in &outcomes {
        if let Some(rest) = outcome.strip_prefix("reject 0x") {
            let reason = u8::from_str_radix(&rest[..2], 16).expect("hex");
            assert!(
                [
                    reject::PROTOCOL_ERROR,
                    reject::COMMAND_NOT_SUPPORTED,
                    reject::INVALID_PDU_FIELD,
                    reject::SNACK_REJECT
                ]
                .contains(&reason),
                "{what}: reject reason {reason:#x}"
            );
        }
    }
    // The server still takes new sessions.
    let mut fresh = login(&server, BAD_HOST, Digests::default());
    let outcome = fresh.test_unit_ready(0).expect("TEST UNIT READY");
    assert_eq!(outcome.status, GOOD);
}

/// The server's resident memory, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// READs sent: 1 MiB each, never read back by the initiator.
const UNREAD_READS: u32 = 200;
/// How much the server's resident memory may grow while they are pending: one connection's
/// buffer cap (constants::MAX_BUFFER_BYTES_PER_CONNECTION, 64 MiB) and slack for the
/// allocator and the other session. Unbounded, it would grow by UNREAD_READS MiB.
const RSS_GROWTH_BOUND_KIB: u64 = 96 * 1024;

#[test]
fn an_initiator_that_never_reads_its_answers_holds_bounded_memory() {
    let server = served();
    let pid = server.pid().expect("the server runs");
    let mut witness = Witness::new(&server);
    witness.round("the start");
    // The volume's blocks are all allocated (written once), so reads move real data.
    let mut filler = login(&server, BAD_HOST, Digests::default());
    let block = witness.block;
    let chunk = vec![0x6bu8; MIB as usize];
    for i in 0..16u64 {
        let lba = 16 * MIB / u64::from(block) + i * MIB / u64::from(block);
        let outcome = filler.write16(0, lba, &chunk, block).expect("fill");
        assert_eq!(outcome.status, GOOD);
    }
    drop(filler);
    let before = vm_rss_kib(pid);

    let mut flood = login(&server, BAD_HOST, Digests::default());
    let blocks = (MIB / u64::from(block)) as u32;
    let mut bhs = [0u8; BHS_BYTES];
    let mut first_itt = None;
    for i in 0..UNREAD_READS {
        let (cmd_sn, itt) = flood.take_sn_and_tag();
        first_itt.get_or_insert(itt);
        let lba = 16 * MIB / u64::from(block) + u64::from(i % 16) * u64::from(blocks);
        let command = ScsiCommand {
            immediate: false,
            final_: true,
            read: true,
            write: false,
            attributes: 1,
            ahs_bytes: 0,
            data_segment_length: 0,
            lun: lun_field(0),
            initiator_task_tag: itt,
            expected_data_transfer_length: blocks * block,
            cmd_sn,
            exp_stat_sn: flood.exp_stat_sn(),
            cdb: rw16(0x88, lba, blocks),
        };
        pdu::write_scsi_command(&command, &mut bhs);
        flood.stream.write_all(&bhs).expect("send a READ");
    }
    // While they are pending, the server's memory stays bounded and the other session works.
    let mut peak = before;
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(3) {
        witness.round("the unread READs");
        rounds += 1;
        peak = peak.max(vm_rss_kib(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "VmRSS before {before} KiB, peak {peak} KiB (+{} KiB) with {UNREAD_READS} unread 1 MiB \
         READs pending; the other session ran {rounds} rounds",
        peak - before
    );
    assert!(
        peak - before < RSS_GROWTH_BOUND_KIB,
        "the server grew by {} KiB holding unread answers (bound {RSS_GROWTH_BOUND_KIB} KiB)",
        peak - before
    );
    // The flood's answers are real: its first Data-In is for its first READ.
    let first = flood
        .receive_within(ANSWER_DEADLINE)
        .expect("the first answer");
    assert!(
        matches!(TargetPdu::parse(&first.bhs), Ok(TargetPdu::DataIn(d)) if Some(d.initiator_task_tag) == first_itt),
        "not the first READ's Data-In: {:?}",
        TargetPdu::parse(&first.bhs)
    );
    assert!(
        first.data.iter().all(|&b| b == 0x6b),
        "the Data-In carries other data"
    );
    drop(flood);
    witness.round("the flood's end");
}

/// ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR: iSCSI's sense for a task whose Data-Out was
/// lost and not recovered (RFC 7143).
const PROTOCOL_SERVICE_CRC_ERROR: (u8, u8, u8) = (0x0B, 0x47, 0x05);

#[test]
fn a_write_whose_data_out_comes_out_of_datasn_order_fails_alone_and_lands_nothing() {
    let server = served();
    let mut session = login(&server, BAD_HOST, Digests::default());
    let (_, block) = session
        .read_capacity16(0)
        .expect("READ CAPACITY")
        .expect("GOOD");
    let pattern = |seed: u8, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| seed ^ (i as u8) ^ (i >> 9) as u8)
            .collect()
    };
    let first = pattern(0x11, 8 * block as usize);
    let outcome = session.write16(0, 1000, &first, block).expect("write");
    assert_eq!(outcome.status, GOOD, "{outcome:?}");

    // One Data-Out numbered 27 where 0 was due: the write fails, the blocks keep what they had.
    let second = pattern(0x22, first.len());
    let blocks = (second.len() / block as usize) as u32;
    let outcome = session
        .command_with_data_sn(0, &rw16(0x8A, 1000, blocks), &second, 0, |_| 27)
        .expect("the session answers a write with a wrong DataSN");
    assert_eq!(outcome.status, CHECK_CONDITION, "{outcome:?}");
    assert_eq!(outcome.sense_triple(), Some(PROTOCOL_SERVICE_CRC_ERROR));
    let read = session.read16(0, 1000, 8, block).expect("read");
    assert_eq!(read.status, GOOD);
    assert!(read.data == first, "a failed write changed the blocks");

    // Two Data-Outs of one burst in reverse DataSN order (1, 0): the first is already out of
    // order, the second is dropped too, and the task fails once the burst's last one is in.
    let big = pattern(0x33, 512 * 1024);
    let blocks = (big.len() / block as usize) as u32;
    let outcome = session
        .command_with_data_sn(0, &rw16(0x8A, 4096, blocks), &big, 0, |n| n ^ 1)
        .expect("the session answers a write with swapped DataSNs");
    assert_eq!(outcome.status, CHECK_CONDITION, "{outcome:?}");
    assert_eq!(outcome.sense_triple(), Some(PROTOCOL_SERVICE_CRC_ERROR));
    let read = session.read16(0, 4096, blocks, block).expect("read");
    assert_eq!(read.status, GOOD);
    assert!(
        read.data.iter().all(|&b| b == 0),
        "a failed write landed data on blocks never written"
    );

    // The session goes on: the same write in order lands.
    let outcome = session.write16(0, 4096, &big, block).expect("write");
    assert_eq!(outcome.status, GOOD, "{outcome:?}");
    let read = session.read16(0, 4096, blocks, block).expect("read");
    assert!(
        read.data == big,
        "the write after the failed ones did not land"
    );
}
