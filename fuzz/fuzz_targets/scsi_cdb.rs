//! The SCSI layer's parsers a host reaches: the CDB decoder (with REPORT LUNS and the
//! no-such-LUN answer built on it), and the parameter lists of MODE SELECT, UNMAP and
//! PERSISTENT RESERVE OUT. The first byte picks which; the rest is the input. Every input
//! must give a command or a sense, never a panic; a decoded CDB decodes the same way twice,
//! and every sense built encodes to fixed format and parses back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::scsi::cdb::{cdb_length, decode};
use sds::scsi::geometry::Geometry;
use sds::scsi::mode_pages::{mode_select, ModeState};
use sds::scsi::reservations::Reservations;
use sds::scsi::sense::Sense;
use sds::scsi::unit_attention::Mailbox;
use sds::scsi::{no_such_lun, report_luns, unmap, Nexus};

const GEOMETRY: Geometry = Geometry {
    block_bytes: 512,
    capacity_blocks: 1 << 21,
    physical_exponent: 3,
    thin: true,
    extent_blocks: 2048,
};

fn round_trip(sense: &Sense) {
    let mut bytes = [0u8; 18];
    sense.write_fixed(&mut bytes);
    assert_eq!(Sense::parse_fixed(&bytes).as_ref(), Some(sense));
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            for cdb in input.chunks(16) {
                match decode(cdb) {
                    Ok(command) => {
                        assert_eq!(decode(cdb), Ok(command));
                        assert!(cdb_length(cdb[0]).is_some_and(|n| n <= cdb.len()));
                    }
                    Err(sense) => round_trip(&sense),
                }
                let answer = no_such_lun(cdb);
                assert_eq!(answer.sense().is_empty(), answer.status == 0);
                let listed = report_luns(&[0, 1, 255, 256, 16383], cdb);
                let (sent, _) = listed.data_in(u32::MAX);
                assert!(sent.len() <= 8 + 5 * 8);
            }
        }
        1 => {
            let state = ModeState {
                write_cache: selector & 0x10 != 0,
                write_protected: false,
            };
            if let Err(sense) = mode_select(selector & 0x20 != 0, input, &GEOMETRY, &state) {
                round_trip(&sense);
            }
        }
        2 => {
            if let Err(sense) = unmap::check(input, &GEOMETRY) {
                round_trip(&sense);
            } else {
                let mut index = 0;
                while let Some((lba, blocks)) = unmap::descriptor(input, index) {
                    assert!(GEOMETRY.in_range(lba, blocks));
                    index += 1;
                }
            }
        }
        _ => {
            // A few PERSISTENT RESERVE OUT commands in a row from two nexuses: the service
            // action, scope and type from one byte each, then a parameter list.
            let reservations = Reservations::empty();
            let mailbox = Mailbox::default();
            let nexuses = [
                Nexus {
                    initiator_port: "iqn.a,i,0x01".into(),
                    target_port: "t,t,0x0001".into(),
                    host: "a".into(),
                },
                Nexus {
                    initiator_port: "iqn.b,i,0x02".into(),
                    target_port: "t,t,0x0001".into(),
                    host: "b".into(),
                },
            ];
            for (i, chunk) in input.chunks(27).enumerate() {
                if chunk.len() < 3 {
                    break;
                }
                let nexus = &nexuses[i % 2];
                let _ = reservations.out(
                    nexus,
                    chunk[0] % 8,
                    chunk[1] >> 4,
                    chunk[1] & 0x0F,
                    &chunk[3..],
                    &mailbox,
                );
                let mut out = Vec::new();
                reservations.read(chunk[2] % 4, 5, &mut out);
            }
        }
    }
});
