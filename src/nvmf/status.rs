//! NVMe completion status: a status code type (SCT) and a status code (SC), packed with the
//! Do Not Retry bit into the upper half of a completion's dword 3 (see
//! [`super::command::Completion`]). Values from the NVMe base specification 2.0, §4.6.1 and
//! NVMe-oF 1.1 §3.3 (fabrics command-specific codes).

/// A completion status: SCT, SC and whether the host should not retry the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

impl Status {
    pub const fn generic(sc: u8) -> Self {
        Status {
            sct: SCT_GENERIC,
            sc,
            dnr: sc != 0,
        }
    }
    pub const fn command_specific(sc: u8) -> Self {
        Status {
            sct: SCT_COMMAND_SPECIFIC,
            sc,
            dnr: true,
        }
    }
    pub const fn media(sc: u8) -> Self {
        Status {
            sct: SCT_MEDIA,
            sc,
            dnr: true,
        }
    }
    /// The same status, but the host may retry it (a transient condition).
    pub const fn retryable(self) -> Self {
        Status { dnr: false, ..self }
    }
    pub const fn is_success(self) -> bool {
        self.sct == SCT_GENERIC && self.sc == 0
    }
    /// The status field of a completion (dword 3 bits 31:17, phase bit clear): SC in bits
    /// 8:1, SCT in 11:9, DNR in 15 of the 16-bit field.
    pub const fn to_field(self) -> u16 {
        ((self.sc as u16) << 1) | (((self.sct & 0x7) as u16) << 9) | ((self.dnr as u16) << 15)
    }
    pub const fn from_field(field: u16) -> Self {
        Status {
            sc: ((field >> 1) & 0xff) as u8,
            sct: ((field >> 9) & 0x7) as u8,
            dnr: field & (1 << 15) != 0,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sct {:#x} sc {:#04x}{}",
            self.sct,
            self.sc,
            if self.dnr { " dnr" } else { "" }
        )
    }
}

pub const SCT_GENERIC: u8 = 0;
pub const SCT_COMMAND_SPECIFIC: u8 = 1;
pub const SCT_MEDIA: u8 = 2;
pub const SCT_PATH: u8 = 3;

// Generic command status (SCT 0).
pub const SUCCESS: Status = Status::generic(0x00);
pub const INVALID_OPCODE: Status = Status::generic(0x01);
pub const INVALID_FIELD: Status = Status::generic(0x02);
pub const COMMAND_ID_CONFLICT: Status = Status::generic(0x03);
pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
pub const INTERNAL_ERROR: Status = Status::generic(0x06);
pub const ABORT_REQUESTED: Status = Status::generic(0x07);
pub const ABORTED_SQ_DELETION: Status = Status::generic(0x08);
pub const ABORTED_FAILED_FUSED: Status = Status::generic(0x09);
pub const ABORTED_MISSING_FUSED: Status = Status::generic(0x0a);
pub const INVALID_NAMESPACE_OR_FORMAT: Status = Status::generic(0x0b);
pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0c);
pub const INVALID_SGL_DESCRIPTOR: Status = Status::generic(0x0d);
pub const DATA_SGL_LENGTH_INVALID: Status = Status::generic(0x0f);
pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = Status::generic(0x11);
pub const SGL_OFFSET_INVALID: Status = Status::generic(0x16);
pub const NAMESPACE_WRITE_PROTECTED: Status = Status::generic(0x20);
/// A transport error the host may retry (a data digest that did not match).
pub const TRANSIENT_TRANSPORT_ERROR: Status = Status::generic(0x22).retryable();
pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80);
pub const CAPACITY_EXCEEDED: Status = Status::generic(0x81);
pub const NAMESPACE_NOT_READY: Status = Status::generic(0x82);
pub const RESERVATION_CONFLICT: Status = Status::generic(0x83);

// Command specific status (SCT 1).
pub const INVALID_QUEUE_IDENTIFIER: Status = Status::command_specific(0x01);
pub const INVALID_QUEUE_SIZE: Status = Status::command_specific(0x02);
pub const ASYNC_EVENT_LIMIT_EXCEEDED: Status = Status::command_specific(0x05);
pub const INVALID_LOG_PAGE: Status = Status::command_specific(0x09);
pub const FEATURE_NOT_SAVEABLE: Status = Status::command_specific(0x0d);
pub const FEATURE_NOT_CHANGEABLE: Status = Status::command_specific(0x0e);
pub const CONFLICTING_ATTRIBUTES: Status = Status::command_specific(0x80);
// Fabrics Connect (NVMe-oF 1.1 figure 22).
pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::command_specific(0x80);
pub const CONNECT_CONTROLLER_BUSY: Status = Status::command_specific(0x81);
pub const CONNECT_INVALID_PARAMETERS: Status = Status::command_specific(0x82);
pub const CONNECT_RESTART_DISCOVERY: Status = Status::command_specific(0x83);
pub const CONNECT_INVALID_HOST: Status = Status::command_specific(0x84);

// Media and data integrity errors (SCT 2).
pub const WRITE_FAULT: Status = Status::media(0x80);
pub const UNRECOVERED_READ_ERROR: Status = Status::media(0x81);
pub const COMPARE_FAILURE: Status = Status::media(0x85);
pub const ACCESS_DENIED: Status = Status::media(0x86);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_packs_and_unpacks_as_the_specification_lays_it_out() {
        assert_eq!(SUCCESS.to_field(), 0);
        // LBA out of range: SC 0x80 in bits 8:1, DNR bit 15.
        assert_eq!(LBA_OUT_OF_RANGE.to_field(), 0x8100);
        // Connect invalid host: SCT 1 (bits 11:9), SC 0x84, DNR.
        assert_eq!(CONNECT_INVALID_HOST.to_field(), 0x8000 | 0x0200 | 0x0108);
        for status in [
            INVALID_FIELD,
            COMPARE_FAILURE,
            CONNECT_INVALID_PARAMETERS,
            INTERNAL_ERROR.retryable(),
        ] {
            assert_eq!(Status::from_field(status.to_field()), status);
        }
    }
}
