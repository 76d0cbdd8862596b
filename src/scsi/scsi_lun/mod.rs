//! [`ScsiLun`]: one logical unit as one I_T nexus (one session) sees it. It takes CDBs from
//! the transport, answers the non-I/O commands from its own task buffers, and runs the
//! block commands on its [`BlockEngine`] (one per LUN of a session):
//!
//! ```text
//!  transport                        ScsiLun                               BlockEngine
//!  submit(itt, cdb, len, dir) ──▶ decode ─▶ unit attention ─▶ reservation
//!                                  ─▶ non-I/O: answer in the task buffer ─▶ done queue
//!                                  ─▶ READ/VERIFY…: decide, admit, reserve ─▶ start ──▶ …
//!  ◀── NeedData{task, len}         ─▶ WRITE…: reserve; Data-Out into the slot buffer
//!  data_out_done(task) ──────────▶ start ───────────────────────────────────────────▶ …
//!  on_completion / on_wake ──────▶ engine ─▶ pop_finished ─▶ the task's next step
//!                                  (VERIFY pieces, CAW read→compare→write, WRITE SAME
//!                                  pieces, UNMAP descriptors) or its status
//!  pop_done() ◀───────────────── TaskDone {status, data_in_len, residual}
//!  data_in(task) / sense(task), then release(task)
//! ```
//!
//! Nothing here knows the transport: no PDU, no iSCSI field. Tasks are a fixed table
//! (`SCSI_TASKS_PER_LUN`), the done queue is sized once, and the read and write data stay in
//! the engine's slot buffers, so the I/O path does not allocate or lock (the reservation
//! and interlock checks are one atomic load each while nothing is reserved or interlocked).
//!
//! Status of a block request, in SCSI terms (one place: `block_failure`): out of range →
//! LBA OUT OF RANGE; a write on a read-only path → DATA PROTECT / WRITE PROTECTED; a full
//! pool → DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT; a LUN I/O error → MEDIUM
//! ERROR (UNRECOVERED READ ERROR or WRITE ERROR); a deleted volume → NOT READY; a closing
//! session → ABORTED COMMAND.
//!
//! Here: the task table, submission and its checks, what the transport reads, task management.
//! `execute`: each command's own work; `engine_requests`: a task's engine requests and the
//! commands made of several; `data_out`: Data-Out and what runs once it came;
//! `completion`: completions, each task's next step and its status.

use super::capacity;
use super::cdb::{self, Command};
use super::geometry::Geometry;
use super::inquiry;
use super::lba_status;
use super::logical_unit::LogicalUnit;
use super::mode_pages::{self, ModeState};
use super::nexus::{LunIdentity, Nexus};
use super::opcodes;
use super::report_luns::encode_lun;
use super::reservations::{Access, Refusal, Verdict};
use super::sense::{self, Sense};
use super::status::{self, Residual};
use super::task::{DataDirection, DataSource, FillKind, Step, Submit, Task, TaskDone, TaskState};
use super::unit_attention::{Condition, Pending};
use super::unmap;
use crate::blockio::{BlockEngine, BlockOp, BlockRequest, BlockStatus};
use crate::constants::{
    MAX_IO_BYTES, SCSI_MAX_PARAMETER_LIST_BYTES, SCSI_MAX_ZEROING_REQUEST_BYTES,
    SCSI_RETAINED_TASK_BUFFER_BYTES, SCSI_TASKS_PER_LUN,
};
use crate::domain::vpath::AccessMode;
use crate::reactor::session::SessionContext;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod completion;
mod data_out;
mod engine_requests;
mod execute;

/// Interlock owner ids: one per ScsiLun, unique in the process.
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

const NO_TASK: u16 = u16::MAX;

/// Why a command ends before (or instead of) doing its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Check(Sense),
    Status(u8),
}

impl From<Sense> for Failure {
    fn from(sense: Sense) -> Self {
        Self::Check(sense)
    }
}

/// A block request's failure in SCSI terms (SBC-3 4.15 and the sense conditions of the
/// module documentation).
fn block_failure(op: BlockOp, status: BlockStatus, volume_deleted: bool) -> Failure {
    let sense = match status {
        BlockStatus::Ok => return Failure::Status(status::GOOD),
        BlockStatus::Invalid | BlockStatus::TooLarge => sense::INVALID_FIELD_IN_CDB,
        BlockStatus::OutOfRange => sense::LBA_OUT_OF_RANGE,
        BlockStatus::NotPermitted if op.modifies() => sense::WRITE_PROTECTED,
        // The domain forbids the operation on this path.
        BlockStatus::NotPermitted => Sense::new(sense::KEY_ILLEGAL_REQUEST, 0x20, 0x02),
        BlockStatus::NoSpace => sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        BlockStatus::IoError if op == BlockOp::Read => sense::UNRECOVERED_READ_ERROR,
        BlockStatus::IoError => sense::WRITE_ERROR,
        BlockStatus::ShutDown if volume_deleted => sense::NOT_READY_BEING_REMOVED,
        BlockStatus::ShutDown => sense::COMMAND_ABORTED_SHUTDOWN,
    };
    Failure::Check(sense)
}

/// The reservation class of a command (SPC-4 5.13.1).
fn access(command: &Command) -> Access {
    match command {
        Command::Inquiry { .. }
        | Command::ReportLuns { .. }
        | Command::RequestSense { .. }
        | Command::ReportSupportedOperationCodes { .. }
        | Command::ReadCapacity10
        | Command::ReadCapacity16 { .. }
        | Command::GetLbaStatus { .. }
        | Command::PersistentReserveIn { .. }
        | Command::PersistentReserveOut { .. }
        | Command::Reserve
        | Command::Release => Access::Always,
        Command::TestUnitReady => Access::TestUnitReady,
        Command::Read { .. }
        | Command::Verify { .. }
        | Command::PreFetch { .. }
        | Command::ReadDefectData { .. }
        | Command::ModeSense { .. } => Access::Read,
        Command::Write { .. }
        | Command::WriteAndVerify { .. }
        | Command::CompareAndWrite { .. }
        | Command::OrWrite { .. }
        | Command::WriteSame { .. }
        | Command::Unmap { .. }
        | Command::SynchronizeCache { .. }
        | Command::StartStopUnit
        | Command::ModeSelect { .. } => Access::Write,
    }
}

/// The first byte where `a` and `b` differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// One logical unit of one session. See the module documentation.
pub struct ScsiLun {
    lun: u64,
    engine: BlockEngine,
    lu: Arc<LogicalUnit>,
    nexus: Arc<Nexus>,
    identity: LunIdentity,
    owner: u64,
    read_only: bool,
    geometry: Geometry,
    tasks: Vec<Task>,
    free_tasks: Vec<usize>,
    done: VecDeque<TaskDone>,
    /// Engine slot → the task that holds it.
    slot_task: Vec<u16>,
    unit_attentions: Pending,
    mailbox_seen: u64,
    resets_seen: u64,
    mode_changes_seen: u64,
    /// The reservations' verdict for this nexus and the version it was made at.
    reservation_verdict: Option<(u64, Verdict)>,
    /// Task-buffer bytes allocated over all tasks.
    own_bytes: usize,
}

impl ScsiLun {
    /// LUN `lun` of a session, over `engine` (built with at least `SCSI_TASKS_PER_LUN`
    /// slots and `MAX_IO_BYTES` requests), sharing `lu` with the volume's other nexuses.
    /// The nexus starts with a POWER ON unit attention.
    pub fn new(
        lun: u64,
        engine: BlockEngine,
        lu: Arc<LogicalUnit>,
        nexus: Arc<Nexus>,
        identity: LunIdentity,
    ) -> Self {
        let geometry = Geometry::of(engine.volume());
        let mut unit_attentions = Pending::default();
        unit_attentions.raise(Condition::PowerOn);
        let resets_seen = lu.resets.load(Ordering::Acquire);
        let mode_changes_seen = lu.mode_changes.load(Ordering::Acquire);
        Self {
            lun,
            read_only: engine.vpath().mode == AccessMode::ReadOnly,
            engine,
            lu,
            nexus,
            identity,
            owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
            geometry,
            tasks: (0..SCSI_TASKS_PER_LUN).map(|_| Task::new()).collect(),
            free_tasks: (0..SCSI_TASKS_PER_LUN).rev().collect(),
            done: VecDeque::with_capacity(SCSI_TASKS_PER_LUN),
            slot_task: vec![NO_TASK; SCSI_TASKS_PER_LUN],
            unit_attentions,
            // Anything posted for this nexus before it came is superseded by the power-on.
            mailbox_seen: u64::MAX,
            resets_seen,
            mode_changes_seen,
            reservation_verdict: None,
            own_bytes: 0,
        }
    }

    pub fn lun(&self) -> u64 {
        self.lun
    }

    pub fn engine(&self) -> &BlockEngine {
        &self.engine
    }

    pub fn logical_unit(&self) -> &Arc<LogicalUnit> {
        &self.lu
    }

    // ---- submission --------------------------------------------------------------------

    /// Takes one command. See [`Submit`].
    pub fn submit(
        &mut self,
        itt: u32,
        cdb: &[u8],
        expected_data_len: u32,
        dir: DataDirection,
        ctx: &mut SessionContext,
    ) -> Submit {
        let Some(t) = self.free_tasks.pop() else {
            return Submit::Busy;
        };
        let task = &mut self.tasks[t];
        task.state = TaskState::Running;
        task.itt = itt;
        task.expected_in_bytes = if dir == DataDirection::Read {
            expected_data_len
        } else {
            0
        };
        task.data_out_bytes = 0;
        task.status = status::GOOD;
        task.sense_len = 0;
        task.data = DataSource::None;
        task.data_in_len = 0;
        task.residual = Residual::None;
        task.own_len = 0;
        task.slot = None;
        task.step = Step::Single;
        task.aborted = false;
        task.interlocked = false;
        task.command = Command::TestUnitReady;
        // A pending unit attention comes first, before the CDB is even looked at, except
        // for the commands SAM-5 5.14 lets through (they may be malformed themselves).
        let opcode = cdb.first().copied().unwrap_or(0xFF);
        let exempt = matches!(
            opcode,
            opcodes::INQUIRY | opcodes::REPORT_LUNS | opcodes::REQUEST_SENSE
        );
        if let Some(condition) = self.unit_attention(exempt) {
            self.fail(t, Failure::Check(condition.sense()));
            return Submit::Started { task: t };
        }
        let command = match cdb::decode(cdb) {
            Ok(command) => command,
            Err(sense) => {
                self.fail(t, Failure::Check(sense));
                return Submit::Started { task: t };
            }
        };
        self.tasks[t].command = command;
        if let Err(failure) = self.check_reservations(&command) {
            self.fail(t, failure);
            return Submit::Started { task: t };
        }
        let expected_in = if dir == DataDirection::Read {
            expected_data_len
        } else {
            0
        };
        let expected_out = if dir == DataDirection::Write {
            expected_data_len
        } else {
            0
        };
        match self.execute(t, command, expected_in, expected_out, ctx) {
            Ok(Some(len)) => {
                self.tasks[t].state = TaskState::WaitingForData;
                self.tasks[t].data_out_bytes = len;
                Submit::NeedData { task: t, len }
            }
            Ok(None) => {
                self.drain(ctx);
                Submit::Started { task: t }
            }
            Err(failure) => {
                self.fail(t, failure);
                self.drain(ctx);
                Submit::Started { task: t }
            }
        }
    }

    /// Notices what changed since the last command (the volume's size, conditions other
    /// nexuses caused) and takes the unit attention to report, unless the command is
    /// `exempt`.
    fn unit_attention(&mut self, exempt: bool) -> Option<Condition> {
        let blocks = self.engine.volume().size_bytes() / u64::from(self.geometry.block_bytes);
        if blocks != self.geometry.capacity_blocks {
            self.geometry.capacity_blocks = blocks;
            self.unit_attentions.raise(Condition::CapacityChanged);
        }
        let generation = self.lu.unit_attentions.generation();
        if generation != self.mailbox_seen {
            self.mailbox_seen = generation;
            self.lu.unit_attentions.collect(
                &self.nexus.initiator_port,
                &self.nexus.target_port,
                &mut self.unit_attentions,
            );
        }
        let resets = self.lu.resets.load(Ordering::Acquire);
        if resets != self.resets_seen {
            self.resets_seen = resets;
            self.unit_attentions.raise(Condition::LunReset);
        }
        let mode_changes = self.lu.mode_changes.load(Ordering::Acquire);
        if mode_changes != self.mode_changes_seen {
            self.mode_changes_seen = mode_changes;
            self.unit_attentions.raise(Condition::ModeParametersChanged);
        }
        if exempt || self.unit_attentions.is_empty() {
            return None;
        }
        self.unit_attentions.take()
    }

    /// Whether the reservations let the command through (SPC-4 5.13.1).
    fn check_reservations(&mut self, command: &Command) -> Result<(), Failure> {
        let access = access(command);
        let reservations = &self.lu.reservations;
        if access != Access::Always && reservations.is_reserved() {
            let version = reservations.version();
            let verdict = match self.reservation_verdict {
                Some((seen, verdict)) if seen == version => verdict,
                _ => {
                    let (seen, verdict) = reservations.verdict(&self.nexus);
                    self.reservation_verdict = Some((seen, verdict));
                    verdict
                }
            };
            if verdict.conflicts(access) {
                return Err(Failure::Status(status::RESERVATION_CONFLICT));
            }
        }
        Ok(())
    }

    /// Asks for `needed` bytes of Data-Out (None when the command has none).
    fn data_out(
        &mut self,
        t: usize,
        needed: u64,
        expected_out: u32,
    ) -> Result<Option<u32>, Failure> {
        let residual = Residual::of(needed, expected_out);
        self.tasks[t].residual = residual;
        if let Residual::Overflow(_) = residual {
            // Less Data-Out than the command needs: refused before any data moves.
            return Err(Failure::Check(sense::INVALID_FIELD_IN_INFORMATION_UNIT));
        }
        Ok(Some(needed as u32))
    }

    /// Answers from the task's own buffer: `own_len` bytes produced, cut to the allocation
    /// length and to what the initiator expects.
    fn answer_own(&mut self, t: usize, allocation_length: u32, expected_in: u32) {
        let task = &mut self.tasks[t];
        task.own_len = task.own.len();
        let produced = task.own_len.min(allocation_length as usize) as u64;
        task.data = DataSource::Own;
        task.data_in_len = produced.min(u64::from(expected_in)) as u32;
        task.residual = Residual::of(produced, expected_in);
        self.complete(t);
    }

    /// Builds into the task's own buffer with `f`, without moving the buffer's allocation.
    fn build<R>(&mut self, t: usize, f: impl FnOnce(&Self, &mut Vec<u8>) -> R) -> R {
        let mut own = std::mem::take(&mut self.tasks[t].own);
        let before = own.capacity();
        let result = f(self, &mut own);
        self.own_bytes += own.capacity().saturating_sub(before);
        self.tasks[t].own = own;
        result
    }

    /// Checks `[lba, lba + blocks)` against the capacity.
    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Failure> {
        if self.geometry.in_range(lba, blocks) {
            Ok(())
        } else {
            Err(Failure::Check(sense::LBA_OUT_OF_RANGE))
        }
    }

    fn check_transfer(&self, blocks: u32, field_byte: u16) -> Result<(), Failure> {
        if blocks > self.geometry.max_transfer_blocks() {
            return Err(Failure::Check(Sense::invalid_field_in_cdb(
                field_byte, None,
            )));
        }
        Ok(())
    }

    fn check_interlock(&self, lba: u64, blocks: u64) -> Result<(), Failure> {
        if self.lu.interlock.blocks_write(lba, blocks) {
            return Err(Failure::Status(status::BUSY));
        }
        Ok(())
    }

    fn fua(&self, fua: bool) -> bool {
        fua || !self.lu.write_cache_enabled()
    }

    // ---- what the transport reads ------------------------------------------------------

    /// The next finished task, in the order they finished.
    pub fn pop_done(&mut self) -> Option<TaskDone> {
        self.done.pop_front()
    }

    /// The task's Data-In (`TaskDone.data_in_len` bytes).
    pub fn data_in(&self, task: usize) -> &[u8] {
        let Some(entry) = self.tasks.get(task) else {
            return &[];
        };
        let len = entry.data_in_len as usize;
        match entry.data {
            DataSource::Own => &entry.own[..len.min(entry.own_len)],
            DataSource::Slot(slot) => {
                let buf = self.engine.buffer(slot);
                &buf[..len.min(buf.len())]
            }
            DataSource::None => &[],
        }
    }

    /// The task's fixed-format sense data (empty unless CHECK CONDITION).
    pub fn sense(&self, task: usize) -> &[u8] {
        match self.tasks.get(task) {
            Some(entry) => &entry.sense[..entry.sense_len as usize],
            None => &[],
        }
    }

    /// The transport is done with a finished task.
    pub fn release(&mut self, task: usize) {
        let Some(entry) = self.tasks.get_mut(task) else {
            return;
        };
        if entry.state != TaskState::Done {
            return;
        }
        if let DataSource::Slot(slot) = entry.data {
            entry.slot = None;
            self.engine.release(slot);
        }
        self.free(task);
    }

    // ---- task management ---------------------------------------------------------------

    /// ABORT TASK: the task with `itt`, if it has not finished. It ends without a
    /// response; its engine work (if any) is let finish and then dropped.
    pub fn abort_task(&mut self, itt: u32) -> bool {
        let Some(t) = self.tasks.iter().position(|task| {
            task.itt == itt
                && matches!(task.state, TaskState::WaitingForData | TaskState::Running)
                && !task.aborted
        }) else {
            return false;
        };
        self.abort(t);
        true
    }

    fn abort(&mut self, t: usize) {
        let task = &mut self.tasks[t];
        task.aborted = true;
        if task.state == TaskState::WaitingForData {
            task.state = TaskState::Running;
            match task.slot {
                // The reserved slot finishes at once; drain_aborted frees the task.
                Some(slot) => self.engine.fail(slot, BlockStatus::ShutDown),
                None => self.free(t),
            }
        }
        self.drain_aborted();
    }

    /// Takes finished engine requests outside an event (task management): only aborted
    /// tasks can be among them (every event drains the queue).
    fn drain_aborted(&mut self) {
        while let Some(finished) = self.engine.pop_finished() {
            let slot = finished.slot;
            let owner = self.slot_task.get(slot).copied().unwrap_or(NO_TASK);
            if let Some(s) = self.slot_task.get_mut(slot) {
                *s = NO_TASK;
            }
            self.engine.release(slot);
            if owner != NO_TASK {
                let t = owner as usize;
                if self.tasks[t].slot == Some(slot) {
                    self.tasks[t].slot = None;
                    if self.tasks[t].state == TaskState::Running {
                        self.free(t);
                    }
                }
            }
        }
    }

    /// ABORT TASK SET / CLEAR TASK SET: every task not yet finished.
    pub fn abort_all(&mut self) {
        for t in 0..self.tasks.len() {
            let task = &self.tasks[t];
            if matches!(task.state, TaskState::WaitingForData | TaskState::Running) && !task.aborted
            {
                self.abort(t);
            }
        }
    }

    /// LOGICAL UNIT RESET: aborts this nexus's tasks, releases the SPC-2 reservation and
    /// raises BUS DEVICE RESET FUNCTION OCCURRED for every nexus of the unit (the others
    /// notice on their next command). Persistent reservations stay. Other sessions' tasks
    /// are not aborted: a session aborts only its own.
    pub fn reset(&mut self) {
        self.abort_all();
        self.lu.reservations.reset_spc2();
        self.resets_seen = self.lu.resets.fetch_add(1, Ordering::AcqRel) + 1;
        self.unit_attentions.raise(Condition::LunReset);
    }

    /// The host's LUN inventory changed (a VP added or removed): REPORTED LUNS DATA HAS
    /// CHANGED on the next command.
    pub fn luns_changed(&mut self) {
        self.unit_attentions.raise(Condition::ReportedLunsChanged);
    }

    /// The session is closing: nothing new starts; what waits for data is dropped. An
    /// SPC-2 reservation does not survive the nexus (SPC-2 5.5.1).
    pub fn shut_down(&mut self) {
        for t in 0..self.tasks.len() {
            if self.tasks[t].state == TaskState::WaitingForData {
                self.abort(t);
            }
        }
        self.engine.shut_down();
        self.lu.reservations.release_spc2(&self.nexus);
    }

    /// Tasks taken and not yet released (what a transport's command window counts).
    pub fn tasks_in_use(&self) -> usize {
        self.tasks.len() - self.free_tasks.len()
    }

    /// Whether `task` is taken (an aborted task is given back by the layer itself once its
    /// engine work ends).
    pub fn task_in_use(&self, task: usize) -> bool {
        self.tasks
            .get(task)
            .is_some_and(|entry| entry.state != TaskState::Free)
    }

    /// Bytes of buffer `task` holds: its block request's data and its own buffer (what a
    /// transport charges to its buffer budgets).
    pub fn buffer_bytes(&self, task: usize) -> usize {
        let Some(entry) = self.tasks.get(task) else {
            return 0;
        };
        let slot = entry
            .slot
            .map_or(0, |slot| self.engine.request(slot).buffer_bytes());
        slot + entry.own.len()
    }

    /// Nothing on the ring or at the provisioner.
    pub fn is_idle(&self) -> bool {
        self.engine.is_idle()
    }

    pub fn attach(&mut self, reactor_index: usize) {
        self.engine.attach(reactor_index);
    }

    pub fn detach(&mut self) {
        self.engine.detach();
    }
}

#[cfg(test)]
mod tests;
