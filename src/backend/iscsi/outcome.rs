//! What the end of one SCSI task means for the command that sent it: done, try again, failed
//! with an errno, or the connection is gone. Pure, so the rules are tested here.

/// libiscsi's task statuses (`enum scsi_status`), as the numbers its callbacks carry.
pub mod status {
    pub const GOOD: i32 = 0;
    pub const CHECK_CONDITION: i32 = 2;
    pub const BUSY: i32 = 8;
    pub const RESERVATION_CONFLICT: i32 = 0x18;
    pub const TASK_SET_FULL: i32 = 0x28;
    pub const TASK_ABORTED: i32 = 0x40;
    pub const CANCELLED: i32 = 0x0f00_0000;
    pub const ERROR: i32 = 0x0f00_0001;
    pub const TIMEOUT: i32 = 0x0f00_0002;
}

/// SCSI sense keys sds tells apart.
const SENSE_NOT_READY: u32 = 0x02;
const SENSE_MEDIUM_ERROR: u32 = 0x03;
const SENSE_ILLEGAL_REQUEST: u32 = 0x05;
const SENSE_UNIT_ATTENTION: u32 = 0x06;
const SENSE_DATA_PROTECT: u32 = 0x07;
const SENSE_ABORTED_COMMAND: u32 = 0x0b;
/// ASC/ASCQ 2A/09: CAPACITY DATA HAS CHANGED.
const ASCQ_CAPACITY_CHANGED: i32 = 0x2a09;
/// ASC 04/xx with ASCQ 01: LOGICAL UNIT IS IN PROCESS OF BECOMING READY.
const ASCQ_BECOMING_READY: i32 = 0x0401;

/// The meaning of a finished task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Good,
    /// Send it again: a unit attention (a reset, a login, a mode change), a busy array, an
    /// aborted command. `capacity_changed` says the unit attention was 2A/09.
    Retry {
        capacity_changed: bool,
    },
    /// The command failed: the errno the engine sees.
    Failed(i32),
    /// The connection failed under it (libiscsi cancelled it, or reports a transport error):
    /// the link reconnects and issues it again.
    ConnectionLost,
}

/// Classifies a task by its status, its sense key and ASC/ASCQ (for CHECK CONDITION), and
/// whether less data moved than asked (`short`).
pub fn classify(status: i32, sense_key: u32, ascq: i32, short: bool) -> Outcome {
    match status {
        status::GOOD if short => Outcome::Failed(libc::EIO),
        status::GOOD => Outcome::Good,
        status::BUSY | status::TASK_SET_FULL | status::TASK_ABORTED => Outcome::Retry {
            capacity_changed: false,
        },
        status::RESERVATION_CONFLICT => Outcome::Failed(libc::EBADE),
        status::CANCELLED | status::ERROR | status::TIMEOUT => Outcome::ConnectionLost,
        status::CHECK_CONDITION => match sense_key {
            SENSE_UNIT_ATTENTION => Outcome::Retry {
                capacity_changed: ascq == ASCQ_CAPACITY_CHANGED,
            },
            SENSE_ABORTED_COMMAND => Outcome::Retry {
                capacity_changed: false,
            },
            SENSE_NOT_READY if ascq == ASCQ_BECOMING_READY => Outcome::Retry {
                capacity_changed: false,
            },
            SENSE_NOT_READY => Outcome::Failed(libc::EIO),
            SENSE_MEDIUM_ERROR => Outcome::Failed(libc::EIO),
            SENSE_ILLEGAL_REQUEST => Outcome::Failed(libc::EINVAL),
            SENSE_DATA_PROTECT => Outcome::Failed(libc::EROFS),
            _ => Outcome::Failed(libc::EIO),
        },
        _ => Outcome::Failed(libc::EIO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_senses() {
        assert_eq!(classify(status::GOOD, 0, 0, false), Outcome::Good);
        assert_eq!(
            classify(status::GOOD, 0, 0, true),
            Outcome::Failed(libc::EIO),
            "a short read is an error"
        );
        assert_eq!(
            classify(status::CHECK_CONDITION, SENSE_UNIT_ATTENTION, 0x2900, false),
            Outcome::Retry {
                capacity_changed: false
            }
        );
        assert_eq!(
            classify(status::CHECK_CONDITION, SENSE_UNIT_ATTENTION, 0x2a09, false),
            Outcome::Retry {
                capacity_changed: true
            }
        );
        assert_eq!(
            classify(status::CHECK_CONDITION, SENSE_MEDIUM_ERROR, 0x1100, false),
            Outcome::Failed(libc::EIO)
        );
        assert_eq!(
            classify(
                status::CHECK_CONDITION,
                SENSE_ILLEGAL_REQUEST,
                0x2100,
                false
            ),
            Outcome::Failed(libc::EINVAL)
        );
        assert_eq!(
            classify(status::CHECK_CONDITION, SENSE_DATA_PROTECT, 0x2700, false),
            Outcome::Failed(libc::EROFS)
        );
        assert_eq!(
            classify(status::CANCELLED, 0, 0, false),
            Outcome::ConnectionLost
        );
        assert_eq!(
            classify(status::ERROR, 0, 0, false),
            Outcome::ConnectionLost
        );
        assert_eq!(
            classify(status::TASK_SET_FULL, 0, 0, false),
            Outcome::Retry {
                capacity_changed: false
            }
        );
        assert_eq!(classify(0x7777, 0, 0, false), Outcome::Failed(libc::EIO));
    }
}
