//! The iSCSI PDU parser: any 48 bytes as a BHS (framing, initiator and target views), and a
//! byte stream read as whole PDUs with or without digests.
//!
//! Input: byte 0 picks the digests (bit 0 header, bit 1 data); the rest is the wire.
//! Checks: an initiator PDU is only ever an initiator opcode; a target PDU built from what
//! was parsed parses back to itself; framing never allows more than the limits it was given;
//! a read PDU's data is never longer than the limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::target::iscsi::pdu::{self, Framing, InitiatorPdu, Opcode, TargetPdu};
use sds::target::iscsi::pdu_io::{read_pdu, Digests};

const MAX_DATA_BYTES: u32 = 8192;
const MAX_AHS_BYTES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let [flags, wire @ ..] = data else {
        return;
    };
    let digests = Digests {
        header: flags & 1 != 0,
        data: flags & 2 != 0,
    };
    if let Ok(bhs) = pdu::bhs_from(wire) {
        if InitiatorPdu::parse(&bhs).is_ok() {
            assert!(Opcode::from_byte(bhs[0]).is_ok_and(Opcode::is_initiator));
        }
        if let Ok(parsed) = TargetPdu::parse(&bhs) {
            // Built once, the fields are normal (reserved bits zero): from then on building
            // and parsing are each other's inverse.
            let mut first = [0u8; 48];
            parsed.write(&mut first);
            let normal = TargetPdu::parse(&first).expect("a built target PDU parses");
            let mut second = [0u8; 48];
            normal.write(&mut second);
            assert_eq!(first, second);
            assert_eq!(TargetPdu::parse(&second), Ok(normal));
        }
        if let Ok(framing) = Framing::of(
            &bhs,
            digests.header,
            digests.data,
            MAX_DATA_BYTES,
            MAX_AHS_BYTES,
        ) {
            assert!(framing.data_bytes <= MAX_DATA_BYTES as usize);
            assert!(framing.ahs_bytes <= MAX_AHS_BYTES);
            assert!(
                framing.padding_bytes < 4 && (framing.data_bytes + framing.padding_bytes) % 4 == 0
            );
        }
    }
    let mut stream = wire;
    for _ in 0..16 {
        match read_pdu(&mut stream, digests, MAX_DATA_BYTES) {
            Ok(received) => assert!(received.data.len() <= MAX_DATA_BYTES as usize),
            Err(_) => break,
        }
    }
});
