//! The NVMe/TCP I/O queues against the real `sds serve`, driven by the tests' own blocking
//! initiator (tests/common/nvmf_initiator.rs, built on `sds::nvmf::{pdu, command}`): patterns written
//! in the capsule and after R2Ts (several H2CData PDUs) read back byte for byte, with and
//! without digests; NVMe statuses for what the target refuses; and a malformed PDU that ends
//! its own connection with a C2HTermReq and nothing else.

mod common;

use common::nvmf_initiator::{Ended, Identity, NvmfConnection};
use common::Server;
use sds::nvmf::command::{
    CommandBuilder, IO_COMPARE, IO_DATASET_MANAGEMENT, IO_FLUSH, IO_READ, IO_WRITE, IO_WRITE_ZEROES,
};
use sds::nvmf::command::{SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK};
use sds::nvmf::pdu::{self, DataHeader, Header, FES_DATA_OUT_OF_RANGE, FES_INVALID_HEADER_FIELD};
use sds::nvmf::status;
use serde_json::json;

const HOSTNQN: &str = "nqn.2026-11.org.sds.test:nvme-host";
const BLOCK: usize = 512;
/// H2CData pieces the tests send: the MAXH2CDATA sds announces.
const MAX_H2C_DATA: usize = sds::constants::NVMF_MAX_H2C_DATA_BYTES as usize;

fn identity() -> Identity {
    Identity {
        hostnqn: HOSTNQN.into(),
        hostid: [0x5a; 16],
    }
}

/// A server listening for NVMe/TCP on a free port, with a RAM pool, volume `a` (64 MiB) and
/// host `h` (HOSTNQN) with a VP to it at LUN 0 (NSID 1), read-write; `ro` (8 MiB) at LUN 2
/// (NSID 3), read-only.
fn served() -> (Server, u16) {
    let server = Server::start();
    let port = server.nvmf_port();
    server.ram_pool("p", 256 << 20);
    server.ok(
        "volume_create",
        json!({"name": "a", "pool": "p", "size": 64u64 << 20, "block_size": BLOCK}),
    );
    server.ok(
        "volume_create",
        json!({"name": "ro", "pool": "p", "size": 8u64 << 20, "block_size": BLOCK}),
    );
    server.ok("host_create", json!({"name": "h", "nqn": HOSTNQN}));
    server.ok(
        "vpath_create",
        json!({"host": "h", "volume": "a", "lun": 0}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "h", "volume": "ro", "lun": 2, "mode": "ro"}),
    );
    (server, port)
}

/// The subsystem NQN of host `h`: the base the server keeps in STATE/nvmf.json.
fn subnqn(server: &Server) -> String {
    let text = std::fs::read_to_string(server.state_dir.join("nvmf.json"))
        .expect("the server keeps its NQN base");
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    format!("{}:h", value["nqn_base"].as_str().expect("nqn_base"))
}

/// An enabled controller (its admin queue) and its CNTLID.
fn admin(server: &Server, port: u16) -> (NvmfConnection, u16) {
    let (mut admin, answer) =
        NvmfConnection::admin(port, &identity(), &subnqn(server), 30_000).expect("admin Connect");
    assert!(
        answer.status().is_success(),
        "admin Connect: {}",
        answer.status()
    );
    let csts = admin.enable().expect("CC.EN");
    assert_eq!(csts & 1, 1, "CSTS.RDY");
    (admin, answer.completion.result as u16)
}

/// I/O queue `qid` of controller `cntlid`, with both digests or none.
fn io_queue(server: &Server, port: u16, cntlid: u16, qid: u16, digests: bool) -> NvmfConnection {
    let mut queue = NvmfConnection::open(port, digests).expect("ICReq");
    assert_eq!(queue.negotiated().header_digest, digests);
    assert_eq!(queue.negotiated().data_digest, digests);
    let answer = queue
        .connect(&identity(), &subnqn(server), qid, cntlid, 0)
        .expect("I/O Connect");
    assert!(
        answer.status().is_success(),
        "I/O Connect: {}",
        answer.status()
    );
    queue
}

/// A served server, an enabled controller (its admin queue, which must stay open) and its
/// I/O queue 1, with both digests or none.
fn one_queue(digests: bool) -> (Server, NvmfConnection, NvmfConnection) {
    let (server, port) = served();
    let (admin, cntlid) = admin(&server, port);
    let queue = io_queue(&server, port, cntlid, 1, digests);
    (server, admin, queue)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8))
        .collect()
}

fn write(queue: &mut NvmfConnection, nsid: u32, offset: usize, data: &[u8]) -> status::Status {
    let command = CommandBuilder::new(IO_WRITE, 0x100)
        .nsid(nsid)
        .range((offset / BLOCK) as u64, (data.len() / BLOCK) as u32)
        .build();
    queue
        .exchange(command, data, 0, MAX_H2C_DATA)
        .expect("write answered")
        .status()
}

fn read(
    queue: &mut NvmfConnection,
    nsid: u32,
    offset: usize,
    len: usize,
) -> (status::Status, Vec<u8>) {
    let command = CommandBuilder::new(IO_READ, 0x200)
        .nsid(nsid)
        .range((offset / BLOCK) as u64, (len / BLOCK) as u32)
        .build();
    let answer = queue
        .exchange(command, &[], len, MAX_H2C_DATA)
        .expect("read answered");
    (answer.status(), answer.data)
}

fn write_and_read_back(queue: &mut NvmfConnection) {
    // In the capsule (4 KiB), after one R2T (64 KiB), and after an R2T answered with several
    // H2CData PDUs (300 KiB > MAXH2CDATA), across 1 MiB.
    let pieces = [
        (0usize, 4096usize, 1u8),
        ((1 << 20) - 512, 65536, 2),
        (5 << 20, 300 << 10, 3),
    ];
    for &(offset, len, seed) in &pieces {
        let data = pattern(seed, len);
        let status = write(queue, 1, offset, &data);
        assert!(status.is_success(), "write {len} at {offset}: {status}");
    }
    for &(offset, len, seed) in &pieces {
        let (status, data) = read(queue, 1, offset, len);
        assert!(status.is_success(), "read {len} at {offset}: {status}");
        assert!(
            data == pattern(seed, len),
            "the bytes read at {offset} are the bytes written"
        );
    }
}

#[test]
fn patterns_written_in_the_capsule_and_after_r2ts_read_back_with_and_without_digests() {
    let (server, port) = served();
    let (_admin, cntlid) = admin(&server, port);
    let mut plain = io_queue(&server, port, cntlid, 1, false);
    write_and_read_back(&mut plain);
    let mut digested = io_queue(&server, port, cntlid, 2, true);
    write_and_read_back(&mut digested);
    // What one queue wrote, the other reads.
    let (status, data) = read(&mut plain, 1, 5 << 20, 300 << 10);
    assert!(status.is_success());
    assert!(data == pattern(3, 300 << 10));
}

#[test]
fn refused_commands_get_their_nvme_status_and_the_queue_goes_on() {
    let (_server, _admin, mut queue) = one_queue(false);
    // Past the end of the 64 MiB namespace.
    let (status, _) = read(&mut queue, 1, 64 << 20, 4096);
    assert_eq!(status, status::LBA_OUT_OF_RANGE);
    let status = write(&mut queue, 1, (64 << 20) - 512, &pattern(9, 1024));
    assert_eq!(status, status::LBA_OUT_OF_RANGE);
    // The read-only VP: reads go, writes (in the capsule and after an R2T) do not.
    let (status, _) = read(&mut queue, 3, 0, 4096);
    assert!(
        status.is_success(),
        "read of the read-only namespace: {status}"
    );
    assert_eq!(
        write(&mut queue, 3, 0, &pattern(1, 4096)),
        status::NAMESPACE_WRITE_PROTECTED
    );
    assert_eq!(
        write(&mut queue, 3, 0, &pattern(1, 65536)),
        status::NAMESPACE_WRITE_PROTECTED
    );
    // A namespace the host has no VP at, and an opcode sds does not run.
    let (status, _) = read(&mut queue, 2, 0, 512);
    assert_eq!(status, status::INVALID_NAMESPACE_OR_FORMAT);
    let unknown = CommandBuilder::new(0x7e, 9).nsid(1).build();
    let answer = queue
        .exchange(unknown, &[], 0, MAX_H2C_DATA)
        .expect("answered");
    assert_eq!(answer.status(), status::INVALID_OPCODE);
    // And the queue still works.
    write_and_read_back(&mut queue);
}

#[test]
fn flush_write_zeroes_and_deallocate_leave_zeroes_where_they_say() {
    let (_server, _admin, mut queue) = one_queue(false);
    let data = pattern(7, 64 << 10);
    assert!(write(&mut queue, 1, 0, &data).is_success());
    assert!(write(&mut queue, 1, 1 << 20, &data).is_success());
    let flush = CommandBuilder::new(IO_FLUSH, 5).nsid(1).build();
    assert!(queue
        .exchange(flush, &[], 0, MAX_H2C_DATA)
        .expect("flush")
        .status()
        .is_success());
    // Write Zeroes over the second 4 KiB of the first piece.
    let zeroes = CommandBuilder::new(IO_WRITE_ZEROES, 6)
        .nsid(1)
        .range(8, 8)
        .build();
    assert!(queue
        .exchange(zeroes, &[], 0, MAX_H2C_DATA)
        .expect("zeroes")
        .status()
        .is_success());
    // Deallocate the whole second piece, in two ranges (and an empty one).
    let mut ranges = vec![0u8; 48];
    ranges[4..8].copy_from_slice(&64u32.to_le_bytes());
    ranges[8..16].copy_from_slice(&((1u64 << 20) / 512).to_le_bytes());
    ranges[36..40].copy_from_slice(&64u32.to_le_bytes());
    ranges[40..48].copy_from_slice(&((1u64 << 20) / 512 + 64).to_le_bytes());
    let dsm = CommandBuilder::new(IO_DATASET_MANAGEMENT, 7)
        .nsid(1)
        .cdw(10, 2)
        .cdw(11, 1 << 2)
        .build();
    let answer = queue
        .exchange(dsm, &ranges, 0, MAX_H2C_DATA)
        .expect("deallocate");
    assert!(
        answer.status().is_success(),
        "deallocate: {}",
        answer.status()
    );
    let (status, first) = read(&mut queue, 1, 0, 64 << 10);
    assert!(status.is_success());
    let mut expected = data.clone();
    expected[4096..8192].fill(0);
    assert!(
        first == expected,
        "write zeroes zeroed its 4 KiB and nothing else"
    );
    let (status, second) = read(&mut queue, 1, 1 << 20, 64 << 10);
    assert!(status.is_success());
    assert!(
        second.iter().all(|&b| b == 0),
        "the deallocated range reads as zeroes"
    );
}

#[test]
fn compare_says_whether_the_blocks_hold_the_hosts_data() {
    let (_server, _admin, mut queue) = one_queue(true);
    let data = pattern(5, 64 << 10);
    assert!(write(&mut queue, 1, 8192, &data).is_success());
    let compare = |queue: &mut NvmfConnection, bytes: &[u8]| {
        let command = CommandBuilder::new(IO_COMPARE, 0x300)
            .nsid(1)
            .range(16, (bytes.len() / BLOCK) as u32)
            .build();
        queue
            .exchange(command, bytes, 0, MAX_H2C_DATA)
            .expect("compare answered")
            .status()
    };
    // In the capsule (4 KiB) and after an R2T (64 KiB).
    assert!(compare(&mut queue, &data[..4096]).is_success());
    assert!(compare(&mut queue, &data).is_success());
    let mut other = data.clone();
    other[40_000] ^= 1;
    assert_eq!(compare(&mut queue, &other), status::COMPARE_FAILURE);
    assert_eq!(compare(&mut queue, &other[..4096]), status::SUCCESS);
    other[100] ^= 1;
    assert_eq!(compare(&mut queue, &other[..4096]), status::COMPARE_FAILURE);
}

#[test]
fn a_malformed_pdu_gets_a_termination_request_and_only_its_connection_ends() {
    let (server, port) = served();
    let (mut admin, cntlid) = admin(&server, port);
    let mut good = io_queue(&server, port, cntlid, 1, false);
    let mut bad = io_queue(&server, port, cntlid, 2, false);
    // A command capsule whose header length is not 72.
    let mut capsule = vec![0u8; 72];
    capsule[0] = 0x04;
    capsule[2] = 64;
    capsule[4..8].copy_from_slice(&72u32.to_le_bytes());
    bad.send_raw(&capsule).expect("send");
    match bad.expect_termination() {
        Ended::Terminated(term, header) => {
            assert_eq!(term.fes, FES_INVALID_HEADER_FIELD);
            assert_eq!(term.fei, 2, "the field in error is HLEN, at byte 2");
            assert!(!header.is_empty() && header.len() <= 128);
            assert_eq!(header[..8], capsule[..8], "the header in error comes back");
        }
        Ended::Closed(why) => panic!("no C2HTermReq before the close: {why}"),
    }
    // Then the connection closes.
    assert!(matches!(bad.expect_termination(), Ended::Closed(_)));
    // The other I/O queue and the admin queue go on.
    write_and_read_back(&mut good);
    let csts = admin.property_get(0x1c, false).expect("Property Get CSTS");
    assert_eq!(
        csts.completion.result & 1,
        1,
        "the controller is still ready"
    );
}

#[test]
fn a_data_digest_error_fails_its_write_and_data_outside_the_r2t_ends_the_connection() {
    let (_server, _admin, mut queue) = one_queue(true);
    let data = pattern(8, 4096);
    assert!(write(&mut queue, 1, 0, &data).is_success());
    // A write whose in-capsule data does not match its data digest: that command fails with
    // a retryable transport error, nothing is written, and the queue goes on.
    let command = CommandBuilder::new(IO_WRITE, 0x401)
        .nsid(1)
        .range(0, 8)
        .sgl(0, 4096, SGL_DATA_BLOCK_OFFSET)
        .build();
    let mut wire = Vec::new();
    pdu::encode_pdu(
        &Header::CapsuleCmd(command),
        &pattern(9, 4096),
        &queue.negotiated(),
        &mut wire,
    )
    .expect("encode");
    let last = wire.len() - 1;
    wire[last] ^= 0xff;
    queue.send_raw(&wire).expect("send");
    let answer = queue.answer(0x401).expect("answered");
    assert_eq!(answer.status(), status::TRANSIENT_TRANSPORT_ERROR);
    assert!(!answer.status().dnr, "the host may retry it");
    let (status, back) = read(&mut queue, 1, 0, 4096);
    assert!(status.is_success());
    assert!(back == data, "the failed write changed nothing");

    // A write solicited with an R2T, answered with data past what the R2T asked for.
    let command = CommandBuilder::new(IO_WRITE, 0x402)
        .nsid(1)
        .range(0, 128)
        .sgl(0, 65536, SGL_TRANSPORT_DATA_BLOCK)
        .build();
    queue.submit(command).expect("send");
    let r2t = match queue.next_pdu().expect("R2T").header {
        Header::R2T(r2t) => r2t,
        other => panic!("not an R2T: {other:?}"),
    };
    assert_eq!(
        (r2t.command_id, r2t.offset_bytes, r2t.length_bytes),
        (0x402, 0, 65536)
    );
    let h2c = Header::H2CData(DataHeader {
        command_id: 0x402,
        transfer_tag: r2t.transfer_tag,
        offset_bytes: 65536 - 512,
        length_bytes: 1024,
        last: true,
        success: false,
    });
    let mut wire = Vec::new();
    pdu::encode_pdu(&h2c, &[7u8; 1024], &queue.negotiated(), &mut wire).expect("encode");
    queue.send_raw(&wire).expect("send");
    match queue.expect_termination() {
        Ended::Terminated(term, _) => assert_eq!(term.fes, FES_DATA_OUT_OF_RANGE),
        Ended::Closed(why) => panic!("no C2HTermReq before the close: {why}"),
    }
    assert!(matches!(queue.expect_termination(), Ended::Closed(_)));
}

#[test]
fn a_vp_made_while_a_queue_lives_is_served_on_it_and_a_deleted_one_ends_it() {
    let (server, _admin, mut queue) = one_queue(false);
    write_and_read_back(&mut queue);
    server.ok(
        "volume_create",
        json!({"name": "late", "pool": "p", "size": 16u64 << 20, "block_size": BLOCK}),
    );
    let vpath = server.ok(
        "vpath_create",
        json!({"host": "h", "volume": "late", "lun": 5}),
    );
    // NSID 6 on the queue that was there before it.
    let data = pattern(11, 20 << 10);
    assert!(write(&mut queue, 6, 4096, &data).is_success());
    let (status, back) = read(&mut queue, 6, 4096, data.len());
    assert!(status.is_success());
    assert!(back == data, "the new namespace keeps what was written");
    let (status, _) = read(&mut queue, 1, 0, 4096);
    assert!(status.is_success(), "the first namespace is still served");
    server.ok("vpath_delete", json!({"id": vpath["id"]}));
    assert!(
        queue.closed_within(std::time::Duration::from_secs(20)),
        "vpath_delete ends the host's I/O queues"
    );
}

#[test]
fn without_sq_flow_control_a_read_ends_with_c2hdata_success_and_no_response_capsule() {
    let (server, port) = served();
    let (_admin, cntlid) = admin(&server, port);
    let mut queue = NvmfConnection::open(port, false).expect("ICReq");
    let answer = queue
        .connect_with_attributes(&identity(), &subnqn(&server), 1, cntlid, 0, 1 << 2)
        .expect("I/O Connect");
    assert!(
        answer.status().is_success(),
        "I/O Connect: {}",
        answer.status()
    );
    let data = pattern(12, 64 << 10);
    assert!(write(&mut queue, 1, 0, &data).is_success());
    // On the wire: the read's C2HData carries LAST_PDU and SUCCESS, and no response capsule
    // of the read follows: after it and the flush's answer (in either order) comes the answer
    // to a second flush sent once both were seen.
    let read_command = CommandBuilder::new(IO_READ, 0x501)
        .nsid(1)
        .range(0, 8)
        .sgl(0, 4096, SGL_TRANSPORT_DATA_BLOCK)
        .build();
    let flush = |cid| CommandBuilder::new(IO_FLUSH, cid).nsid(1).build();
    let send = |queue: &mut NvmfConnection, command| queue.submit(command).expect("send");
    send(&mut queue, read_command);
    send(&mut queue, flush(0x502));
    let (mut read_data, mut flushed) = (false, false);
    for _ in 0..2 {
        match queue.next_pdu().expect("a PDU").header {
            Header::C2HData(header) => {
                assert_eq!(header.command_id, 0x501);
                assert!(
                    header.last && header.success,
                    "LAST_PDU and SUCCESS: {header:?}"
                );
                read_data = true;
            }
            Header::CapsuleResp(completion) => {
                assert_eq!(completion.cid, 0x502, "no response capsule for the read");
                flushed = true;
            }
            other => panic!("unexpected PDU {other:?}"),
        }
    }
    assert!(read_data && flushed);
    send(&mut queue, flush(0x503));
    match queue.next_pdu().expect("CapsuleResp").header {
        Header::CapsuleResp(completion) => assert_eq!(completion.cid, 0x503),
        other => panic!("not the second flush's answer: {other:?}"),
    }
    for _ in 0..3 {
        let (status, back) = read(&mut queue, 1, 0, data.len());
        assert!(status.is_success());
        assert!(back == data);
    }
    // A refused read still gets its response capsule.
    let (status, _) = read(&mut queue, 1, 64 << 20, 4096);
    assert_eq!(status, status::LBA_OUT_OF_RANGE);
    write_and_read_back(&mut queue);
}
