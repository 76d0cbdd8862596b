//! Answers that need no logical unit: REPORT LUNS (SPC-4 6.33) from the LUN list the
//! transport gives (the host's VPs), and the well-known answer to a command addressed to a
//! LUN with nothing behind it (SPC-4 6.6.2 and SAM-5 5.8.4.2: INQUIRY with peripheral
//! qualifier 011b, REQUEST SENSE with LOGICAL UNIT NOT SUPPORTED as its data, anything else
//! CHECK CONDITION / LOGICAL UNIT NOT SUPPORTED).
//!
//! These are rare (a scan), so they return an owned [`Answer`].

use super::cdb::{decode, Command};
use super::inquiry;
use super::sense::{self, Sense};
use super::status::{self, Residual};
use crate::constants::SCSI_SENSE_BYTES;

/// A complete answer to one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u8,
    /// Data-In, already cut to the allocation length.
    pub data: Vec<u8>,
    pub sense: [u8; SCSI_SENSE_BYTES],
    pub sense_len: usize,
}

impl Answer {
    fn good(mut data: Vec<u8>, allocation_length: u32) -> Self {
        data.truncate(allocation_length as usize);
        Self {
            status: status::GOOD,
            data,
            sense: [0; SCSI_SENSE_BYTES],
            sense_len: 0,
        }
    }

    fn check(condition: Sense) -> Self {
        let mut sense = [0; SCSI_SENSE_BYTES];
        let sense_len = condition.write_fixed(&mut sense);
        Self {
            status: status::CHECK_CONDITION,
            data: Vec::new(),
            sense,
            sense_len,
        }
    }

    /// The sense bytes (empty unless CHECK CONDITION).
    pub fn sense(&self) -> &[u8] {
        &self.sense[..self.sense_len]
    }

    /// The data to send when the initiator expected `expected_bytes`, and the residual.
    pub fn data_in(&self, expected_bytes: u32) -> (&[u8], Residual) {
        let len = self.data.len().min(expected_bytes as usize);
        (
            &self.data[..len],
            Residual::of(self.data.len() as u64, expected_bytes),
        )
    }
}

/// The 8-byte LUN of SAM-5 4.6.4: peripheral addressing below 256, flat space addressing up
/// to 16383; larger numbers are not representable in single-level addressing and are given
/// as the extended flat format is not used by sds (VP LUN numbers stay below 16384).
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut out = [0u8; 8];
    if lun < 256 {
        out[1] = lun as u8;
    } else {
        let lun = lun.min(0x3FFF);
        out[0] = 0x40 | (lun >> 8) as u8;
        out[1] = (lun & 0xFF) as u8;
    }
    out
}

/// The LUN number from the 8 bytes of a transport's LUN field (peripheral or flat space
/// addressing of the first level).
pub fn decode_lun(bytes: &[u8; 8]) -> u64 {
    match bytes[0] >> 6 {
        0b00 => u64::from(bytes[1]),
        0b01 => (u64::from(bytes[0] & 0x3F) << 8) | u64::from(bytes[1]),
        _ => u64::MAX,
    }
}

/// REPORT LUNS over `luns`.
pub fn report_luns(luns: &[u64], cdb: &[u8]) -> Answer {
    let (select_report, allocation_length) = match decode(cdb) {
        Ok(Command::ReportLuns {
            select_report,
            allocation_length,
        }) => (select_report, allocation_length),
        Ok(_) => return Answer::check(sense::INVALID_COMMAND_OPERATION_CODE),
        Err(sense) => return Answer::check(sense),
    };
    if allocation_length < 16 {
        return Answer::check(Sense::invalid_field_in_cdb(6, None));
    }
    let listed: &[u64] = match select_report {
        0x00 | 0x02 => luns,
        // Well-known logical units only: sds has none.
        0x01 => &[],
        _ => return Answer::check(Sense::invalid_field_in_cdb(2, None)),
    };
    let mut data = Vec::with_capacity(8 + 8 * listed.len());
    data.extend_from_slice(&((listed.len() * 8) as u32).to_be_bytes());
    data.extend_from_slice(&[0; 4]);
    for &lun in listed {
        data.extend_from_slice(&encode_lun(lun));
    }
    Answer::good(data, allocation_length)
}

/// The answer to `cdb` sent to a LUN with no logical unit behind it.
pub fn no_such_lun(cdb: &[u8]) -> Answer {
    match decode(cdb) {
        Ok(Command::Inquiry {
            evpd: false,
            allocation_length,
            ..
        }) => {
            let mut data = Vec::with_capacity(36);
            inquiry::standard_no_unit(&mut data);
            Answer::good(data, allocation_length)
        }
        Ok(Command::RequestSense {
            allocation_length, ..
        }) => {
            let mut sense = [0; SCSI_SENSE_BYTES];
            let len = sense::LOGICAL_UNIT_NOT_SUPPORTED.write_fixed(&mut sense);
            Answer::good(sense[..len].to_vec(), allocation_length)
        }
        _ => Answer::check(sense::LOGICAL_UNIT_NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_luns_cdb(select: u8, allocation_length: u32) -> [u8; 12] {
        let mut cdb = [0u8; 12];
        cdb[0] = 0xA0;
        cdb[2] = select;
        cdb[6..10].copy_from_slice(&allocation_length.to_be_bytes());
        cdb
    }

    #[test]
    fn report_luns_lists_the_given_luns_in_sam_format() {
        let answer = report_luns(&[0, 3, 300], &report_luns_cdb(0, 4096));
        assert_eq!(answer.status, status::GOOD);
        assert_eq!(&answer.data[..8], &[0, 0, 0, 24, 0, 0, 0, 0]);
        assert_eq!(&answer.data[8..16], &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&answer.data[16..24], &[0, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&answer.data[24..32], &[0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_lun(&encode_lun(300)), 300);
        // Cut to the allocation length; the list length still says the whole.
        let short = report_luns(&[0, 3, 300], &report_luns_cdb(0, 16));
        assert_eq!(short.data.len(), 16);
        assert_eq!(short.data_in(8).1, Residual::Overflow(8));
        // Well-known only: none.
        assert_eq!(report_luns(&[1], &report_luns_cdb(1, 64)).data, vec![0; 8]);
        for (select, len, byte) in [(0x03, 64, 2), (0, 15, 6)] {
            let bad = report_luns(&[1], &report_luns_cdb(select, len));
            assert_eq!(bad.status, status::CHECK_CONDITION);
            assert_eq!(
                Sense::parse_fixed(bad.sense()),
                Some(Sense::invalid_field_in_cdb(byte, None))
            );
        }
    }

    #[test]
    fn a_lun_with_no_unit_answers_inquiry_and_refuses_the_rest() {
        let inquiry = no_such_lun(&[0x12, 0, 0, 0, 96, 0]);
        assert_eq!(inquiry.status, status::GOOD);
        assert_eq!(inquiry.data[0], 0x7F);
        let read = no_such_lun(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(read.status, status::CHECK_CONDITION);
        let sense = Sense::parse_fixed(read.sense()).expect("sense");
        assert_eq!((sense.key, sense.asc, sense.ascq), (0x05, 0x25, 0x00));
        let request_sense = no_such_lun(&[0x03, 0, 0, 0, 18, 0]);
        assert_eq!(request_sense.status, status::GOOD);
        assert_eq!(request_sense.data[12], 0x25);
    }
}
