//! The NVMe/TCP PDU parser (`sds::nvmf::pdu`): a byte stream read as PDUs in either
//! direction, with or without digests and alignment, and the blocking reader over it.
//!
//! Input: byte 0 picks the terms (bit 0 header digest, bit 1 data digest, bit 2 the
//! host-to-controller direction, bits 3-7 the PDA); the rest is the wire.
//! Checks: framing never announces more data than the limit; a decoded PDU's data is what the
//! framing said; a decoded PDU re-encoded with the same terms decodes to the same header and
//! data; the blocking reader never returns more data than the limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::nvmf::pdu::{self, Direction, Header, Negotiated};
use sds::nvmf::pdu_io;

const MAX_DATA_BYTES: u32 = 8192;

fuzz_target!(|data: &[u8]| {
    let [flags, wire @ ..] = data else {
        return;
    };
    let pda = flags >> 3;
    let negotiated = Negotiated {
        header_digest: flags & 1 != 0,
        data_digest: flags & 2 != 0,
        host_pda: pda,
        controller_pda: pda,
        max_data_bytes: MAX_DATA_BYTES,
    };
    let direction = if flags & 4 != 0 {
        Direction::HostToController
    } else {
        Direction::ControllerToHost
    };
    let mut rest = wire;
    for _ in 0..16 {
        let Ok(framing) = pdu::parse_header(rest, direction, &negotiated) else {
            break;
        };
        assert!(framing.data_bytes <= MAX_DATA_BYTES as usize);
        assert!(framing.header_end() <= framing.data_offset_bytes);
        assert!(framing.data_end() + framing.data_digest_bytes == framing.total_bytes);
        let Ok(decoded) = pdu::decode(rest, &framing) else {
            break;
        };
        assert_eq!(decoded.data.len(), framing.data_bytes);
        let mut again = Vec::new();
        if pdu::encode_pdu(&decoded.header, decoded.data, &negotiated, &mut again).is_ok() {
            let (back, used) = pdu::decode_from(&again, direction, &negotiated)
                .expect("a PDU built from a decoded one decodes")
                .expect("whole");
            assert_eq!(used, again.len());
            assert_eq!(back.data, decoded.data);
            let normal = |header: Header| match header {
                // DATAL is the data's length whatever the struct says; SUCCESS is C2H only.
                Header::H2CData(mut d) => {
                    d.success = false;
                    Header::H2CData(d)
                }
                other => other,
            };
            assert_eq!(normal(back.header), normal(decoded.header));
        }
        rest = &rest[framing.total_bytes..];
    }
    let mut stream = wire;
    let mut buffer = Vec::new();
    for _ in 0..16 {
        match pdu_io::read_pdu(&mut stream, &mut buffer, direction, &negotiated) {
            Ok(read) => assert!(read.data.len() <= MAX_DATA_BYTES as usize),
            Err(_) => break,
        }
    }
});
