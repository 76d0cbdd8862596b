//! Sense data: why a command ended in CHECK CONDITION (SPC-4 4.5). One [`Sense`] value per
//! condition, built into fixed-format bytes (response code 70h) for the transport to send.
//!
//! Every condition this layer reports has a constructor here, so the sense key, additional
//! sense code and qualifier of each are written down in one place.

use crate::constants::SCSI_SENSE_BYTES;

pub const KEY_NO_SENSE: u8 = 0x0;
pub const KEY_NOT_READY: u8 = 0x2;
pub const KEY_MEDIUM_ERROR: u8 = 0x3;
pub const KEY_HARDWARE_ERROR: u8 = 0x4;
pub const KEY_ILLEGAL_REQUEST: u8 = 0x5;
pub const KEY_UNIT_ATTENTION: u8 = 0x6;
pub const KEY_DATA_PROTECT: u8 = 0x7;
pub const KEY_ABORTED_COMMAND: u8 = 0xB;
pub const KEY_MISCOMPARE: u8 = 0xE;

/// Where a field the initiator sent is wrong (the sense-key specific field pointer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// In the CDB (true) or in the parameter list (false).
    pub in_cdb: bool,
    pub byte: u16,
    /// The bit within the byte, if one is meant.
    pub bit: Option<u8>,
}

/// One condition: sense key, additional sense code and qualifier, and the optional
/// INFORMATION field and field pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub information: Option<u32>,
    pub field: Option<FieldPointer>,
}

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Self {
            key,
            asc,
            ascq,
            information: None,
            field: None,
        }
    }

    pub const fn with_information(mut self, information: u32) -> Self {
        self.information = Some(information);
        self
    }

    /// INVALID FIELD IN CDB (24/00), pointing at `byte` (and `bit`) of the CDB.
    pub const fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Self {
        let mut sense = Self::new(KEY_ILLEGAL_REQUEST, 0x24, 0x00);
        sense.field = Some(FieldPointer {
            in_cdb: true,
            byte,
            bit,
        });
        sense
    }

    /// INVALID FIELD IN PARAMETER LIST (26/00), pointing at `byte` of the list.
    pub const fn invalid_field_in_parameter_list(byte: u16, bit: Option<u8>) -> Self {
        let mut sense = Self::new(KEY_ILLEGAL_REQUEST, 0x26, 0x00);
        sense.field = Some(FieldPointer {
            in_cdb: false,
            byte,
            bit,
        });
        sense
    }

    /// The fixed-format sense bytes (SPC-4 4.5.3). Returns the bytes written.
    pub fn write_fixed(&self, out: &mut [u8; SCSI_SENSE_BYTES]) -> usize {
        *out = [0; SCSI_SENSE_BYTES];
        // Current error; VALID set when INFORMATION means something.
        out[0] = 0x70 | if self.information.is_some() { 0x80 } else { 0 };
        out[2] = self.key & 0x0F;
        if let Some(information) = self.information {
            out[3..7].copy_from_slice(&information.to_be_bytes());
        }
        out[7] = (SCSI_SENSE_BYTES - 8) as u8;
        out[12] = self.asc;
        out[13] = self.ascq;
        if let Some(field) = self.field {
            let mut b = 0x80; // SKSV
            if field.in_cdb {
                b |= 0x40;
            }
            if let Some(bit) = field.bit {
                b |= 0x08 | (bit & 0x07);
            }
            out[15] = b;
            out[16..18].copy_from_slice(&field.byte.to_be_bytes());
        }
        SCSI_SENSE_BYTES
    }

    /// The same condition from fixed-format bytes (what the tests and REQUEST SENSE read
    /// back).
    pub fn parse_fixed(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 14 || bytes[0] & 0x7F != 0x70 {
            return None;
        }
        let information = (bytes[0] & 0x80 != 0)
            .then(|| u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]));
        let field = (bytes.len() >= 18 && bytes[15] & 0x80 != 0).then(|| FieldPointer {
            in_cdb: bytes[15] & 0x40 != 0,
            byte: u16::from_be_bytes([bytes[16], bytes[17]]),
            bit: (bytes[15] & 0x08 != 0).then_some(bytes[15] & 0x07),
        });
        Some(Self {
            key: bytes[2] & 0x0F,
            asc: bytes[12],
            ascq: bytes[13],
            information,
            field,
        })
    }
}

// ---- the conditions this layer reports --------------------------------------------------

pub const NO_SENSE: Sense = Sense::new(KEY_NO_SENSE, 0x00, 0x00);
pub const INVALID_COMMAND_OPERATION_CODE: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x20, 0x00);
/// The transport's expected data length is shorter than the command's data: refused
/// before any data moves (FCP-4 9.4.2 / what libiscsi's residual tests accept).
pub const INVALID_FIELD_IN_INFORMATION_UNIT: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x0E, 0x03);
pub const LBA_OUT_OF_RANGE: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x21, 0x00);
pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x24, 0x00);
pub const LOGICAL_UNIT_NOT_SUPPORTED: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x25, 0x00);
pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x1A, 0x00);
pub const INVALID_FIELD_IN_PARAMETER_LIST: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x26, 0x00);
pub const SAVING_PARAMETERS_NOT_SUPPORTED: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x39, 0x00);
pub const INSUFFICIENT_REGISTRATION_RESOURCES: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x55, 0x04);
pub const WRITE_PROTECTED: Sense = Sense::new(KEY_DATA_PROTECT, 0x27, 0x00);
pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: Sense = Sense::new(KEY_DATA_PROTECT, 0x27, 0x07);
/// An I/O error of a LUN: the medium could not be read or written (SBC-3 maps unrecovered
/// read and write errors to MEDIUM ERROR).
pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(KEY_MEDIUM_ERROR, 0x11, 0x00);
pub const WRITE_ERROR: Sense = Sense::new(KEY_MEDIUM_ERROR, 0x0C, 0x00);
/// A failure that is not the medium's (the provisioning thread gone, a flush failing).
pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(KEY_HARDWARE_ERROR, 0x44, 0x00);
pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(KEY_MISCOMPARE, 0x1D, 0x00);
pub const NOT_READY_BEING_REMOVED: Sense = Sense::new(KEY_NOT_READY, 0x04, 0x00);
pub const COMMAND_ABORTED_SHUTDOWN: Sense = Sense::new(KEY_ABORTED_COMMAND, 0x00, 0x00);
/// iSCSI's "protocol service CRC error" (RFC 7143 11.4.7.2): a task whose Data-Out was lost
/// to a digest or sequence error and is not recovered.
pub const PROTOCOL_SERVICE_CRC_ERROR: Sense = Sense::new(KEY_ABORTED_COMMAND, 0x47, 0x05);
pub const POWER_ON_OCCURRED: Sense = Sense::new(KEY_UNIT_ATTENTION, 0x29, 0x00);
pub const BUS_DEVICE_RESET_OCCURRED: Sense = Sense::new(KEY_UNIT_ATTENTION, 0x29, 0x03);
pub const MODE_PARAMETERS_CHANGED: Sense = Sense::new(KEY_UNIT_ATTENTION, 0x2A, 0x01);
pub const RESERVATIONS_PREEMPTED: Sense = Sense::new(KEY_UNIT_ATTENTION, 0x2A, 0x03);
pub const RESERVATIONS_RELEASED: Sense = Sense::new(KEY_UNIT_ATTENTION, 0x2A, 0x04);
pub const REGISTRATIONS_PREEMPTED: Sense = Sense::new(KEY_UNIT_ATTENTION, 0x2A, 0x05);
pub const CAPACITY_DATA_HAS_CHANGED: Sense = Sense::new(KEY_UNIT_ATTENTION, 0x2A, 0x09);
pub const REPORTED_LUNS_DATA_HAS_CHANGED: Sense = Sense::new(KEY_UNIT_ATTENTION, 0x3F, 0x0E);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_bytes_are_as_spc_lays_them_out() {
        let mut out = [0xFF; SCSI_SENSE_BYTES];
        let n = MISCOMPARE_DURING_VERIFY
            .with_information(0x0102_0304)
            .write_fixed(&mut out);
        assert_eq!(n, 18);
        assert_eq!(
            out,
            [0xF0, 0, 0x0E, 1, 2, 3, 4, 10, 0, 0, 0, 0, 0x1D, 0, 0, 0, 0, 0]
        );
        let pointer = Sense::invalid_field_in_cdb(2, Some(5)).write_fixed(&mut out);
        assert_eq!(pointer, 18);
        assert_eq!(&out[..3], &[0x70, 0, 0x05]);
        assert_eq!(&out[12..18], &[0x24, 0, 0, 0xC8 | 5, 0, 2]);
        assert_eq!(
            Sense::parse_fixed(&out),
            Some(Sense::invalid_field_in_cdb(2, Some(5)))
        );
    }
}
