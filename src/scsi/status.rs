//! SCSI status codes (SAM-5 5.3) and the residual of a task's data transfer: what a
//! transport sends back with each command, in no transport's terms.

pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;
pub const CONDITION_MET: u8 = 0x04;
pub const BUSY: u8 = 0x08;
pub const RESERVATION_CONFLICT: u8 = 0x18;
pub const TASK_SET_FULL: u8 = 0x28;
pub const TASK_ABORTED: u8 = 0x40;

/// How the data a command moved compares with what the initiator said it expected
/// (SAM-5 5.4: the transport reports it, e.g. iSCSI's residual count and O/U flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Residual {
    #[default]
    None,
    /// The command moved this many bytes fewer than expected.
    Underflow(u32),
    /// The command would have moved this many bytes more than expected.
    Overflow(u32),
}

impl Residual {
    /// The residual of a command that needed `needed_bytes` where `expected_bytes` were
    /// expected.
    pub fn of(needed_bytes: u64, expected_bytes: u32) -> Self {
        let expected = u64::from(expected_bytes);
        if needed_bytes > expected {
            Self::Overflow(u32::try_from(needed_bytes - expected).unwrap_or(u32::MAX))
        } else if needed_bytes < expected {
            Self::Underflow((expected - needed_bytes) as u32)
        } else {
            Self::None
        }
    }
}
