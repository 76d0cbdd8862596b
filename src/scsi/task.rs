//! A task: one command of one initiator to one logical unit, from submission to the
//! transport's release. The transport-facing types ([`Submit`], [`TaskDone`],
//! [`DataDirection`]) and the task table entry the layer keeps per command.
//!
//! A task's data lives either in its block-engine slot (READ and WRITE data, straight from
//! and to the volume) or in the task's own buffer (the answers of the non-I/O commands,
//! parameter lists, COMPARE AND WRITE and VERIFY data). The own buffer grows when a command
//! needs more than it has and is kept across commands (up to
//! `SCSI_RETAINED_TASK_BUFFER_BYTES`), so steady-state traffic does not allocate.

use super::cdb::Command;
use super::sense::Sense;
use super::status::{self, Residual};
use crate::constants::SCSI_SENSE_BYTES;

/// Which way the command's data goes, as the transport was told (iSCSI's R and W bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    None,
    /// Data-In: target to initiator.
    Read,
    /// Data-Out: initiator to target.
    Write,
}

/// What [`super::ScsiLun::submit`] did with a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submit {
    /// The command needs `len` bytes of Data-Out in `data_out_buffer(task)` first; then
    /// the transport calls `data_out_done(task)` (once). Data-Out the initiator sends past
    /// `len` (it expected to send more) is read and dropped; the residual says so.
    NeedData { task: usize, len: u32 },
    /// The command runs (or is already done): it comes out of `pop_done`. Any Data-Out
    /// the initiator sends for it (unsolicited or immediate data of a command that was
    /// refused, or one flagged as a write that is not) is read and dropped.
    Started { task: usize },
    /// Every task is in use: answer TASK SET FULL (or hold the command and retry).
    Busy,
}

/// A finished task: send its status (with `sense(task)` for CHECK CONDITION) and
/// `data_in(task)`, then `release(task)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskDone {
    pub task: usize,
    pub itt: u32,
    pub status: u8,
    pub data_in_len: u32,
    pub residual: Residual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskState {
    Free,
    /// Waiting for the transport's Data-Out.
    WaitingForData,
    Running,
    /// In the done queue or handed out; the transport releases it.
    Done,
}

/// Where `data_in` and `data_out_buffer` point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataSource {
    None,
    /// The task's own buffer.
    Own,
    /// A block-engine slot's buffer.
    Slot(usize),
}

/// The step a multi-step command is at (what the next engine completion means).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// One engine request; its end is the command's end.
    Single,
    /// Reading `[cursor, end)` piece by piece, comparing with the own buffer if `compare`
    /// (VERIFY, and the read-back of WRITE AND VERIFY from `compare_base`).
    Verify {
        cursor: u64,
        end: u64,
        compare: bool,
    },
    /// WRITE AND VERIFY: the write is running in the slot.
    WriteThenVerify { byte_check: bool },
    /// WRITE AND VERIFY: the read-back runs in `second`; the write's data is in the slot.
    ReadBack { second: usize, byte_check: bool },
    /// COMPARE AND WRITE: reading the blocks to compare.
    CawRead,
    /// COMPARE AND WRITE: writing.
    CawWrite,
    /// WRITE SAME / UNMAP: zeroing, trimming or pattern writes over `[cursor, end)` (bytes);
    /// UNMAP walks its descriptors (`descriptor`) from the own buffer.
    Fill {
        cursor: u64,
        end: u64,
        kind: FillKind,
        descriptor: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FillKind {
    Trim,
    Zeroes,
    /// The block in the own buffer, repeated.
    Pattern,
    /// UNMAP's descriptors, each trimmed.
    Unmap,
}

/// One entry of a LUN's task table.
pub(crate) struct Task {
    pub state: TaskState,
    pub itt: u32,
    pub command: Command,
    /// The Data-In the initiator expects (0 unless the transport said Read).
    pub expected_in_bytes: u32,
    /// Bytes of Data-Out the command takes (NeedData's len).
    pub data_out_bytes: u32,
    pub status: u8,
    pub sense: [u8; SCSI_SENSE_BYTES],
    pub sense_len: u8,
    pub data: DataSource,
    pub data_in_len: u32,
    pub residual: Residual,
    pub own: Vec<u8>,
    pub own_len: usize,
    /// The engine slot the task holds.
    pub slot: Option<usize>,
    pub step: Step,
    /// Aborted by task management: it ends without a response.
    pub aborted: bool,
    /// Holds a range of the logical unit's COMPARE AND WRITE interlock.
    pub interlocked: bool,
}

impl Task {
    pub fn new() -> Self {
        Self {
            state: TaskState::Free,
            itt: 0,
            command: Command::TestUnitReady,
            expected_in_bytes: 0,
            data_out_bytes: 0,
            status: status::GOOD,
            sense: [0; SCSI_SENSE_BYTES],
            sense_len: 0,
            data: DataSource::None,
            data_in_len: 0,
            residual: Residual::None,
            own: Vec::new(),
            own_len: 0,
            slot: None,
            step: Step::Single,
            aborted: false,
            interlocked: false,
        }
    }

    /// Ends the task with CHECK CONDITION and `sense`, no data.
    pub fn check_condition(&mut self, sense: Sense) {
        self.status = status::CHECK_CONDITION;
        self.sense_len = sense.write_fixed(&mut self.sense) as u8;
        self.data = DataSource::None;
        self.data_in_len = 0;
    }

    /// Makes the own buffer `len` bytes long, zeroed; grows it if needed.
    pub fn own_buffer(&mut self, len: usize) -> &mut [u8] {
        if self.own.len() < len {
            self.own.resize(len, 0);
        }
        self.own_len = len;
        let buf = &mut self.own[..len];
        buf.fill(0);
        buf
    }
}
