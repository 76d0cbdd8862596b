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

    /// Runs `command`: Ok(Some(len)) when it needs Data-Out first, Ok(None) when it runs
    /// (or already finished).
    fn execute(
        &mut self,
        t: usize,
        command: Command,
        expected_in: u32,
        expected_out: u32,
        ctx: &mut SessionContext,
    ) -> Result<Option<u32>, Failure> {
        let block = u64::from(self.geometry.block_bytes);
        match command {
            Command::TestUnitReady => {
                if self.engine.volume().is_deleted() {
                    return Err(Failure::Check(sense::NOT_READY_BEING_REMOVED));
                }
                self.complete(t);
            }
            Command::RequestSense {
                descriptor_format,
                allocation_length,
            } => {
                if descriptor_format {
                    return Err(Failure::Check(Sense::invalid_field_in_cdb(1, Some(0))));
                }
                let condition = self
                    .unit_attentions
                    .take()
                    .map(|c| c.sense())
                    .unwrap_or(sense::NO_SENSE);
                self.build(t, |_, out| {
                    let mut bytes = [0u8; crate::constants::SCSI_SENSE_BYTES];
                    let n = condition.write_fixed(&mut bytes);
                    out.clear();
                    out.extend_from_slice(&bytes[..n]);
                });
                self.answer_own(t, allocation_length, expected_in);
            }
            Command::Inquiry {
                evpd,
                page,
                allocation_length,
            } => {
                self.build(t, |me, out| {
                    if evpd {
                        inquiry::vpd_page(page, &me.identity, &me.nexus, &me.geometry, out)
                    } else {
                        inquiry::standard(&me.identity, 0x00, out);
                        Ok(())
                    }
                })?;
                self.answer_own(t, allocation_length, expected_in);
            }
            Command::ReadCapacity10 => {
                self.build(t, |me, out| capacity::read_capacity_10(&me.geometry, out));
                self.answer_own(t, 8, expected_in);
            }
            Command::ReadCapacity16 { allocation_length } => {
                self.build(t, |me, out| capacity::read_capacity_16(&me.geometry, out));
                self.answer_own(t, allocation_length, expected_in);
            }
            Command::Read { lba, blocks, fua } => {
                self.check_transfer(blocks, 7)?;
                self.check_range(lba, u64::from(blocks))?;
                let bytes = u64::from(blocks) * block;
                if blocks == 0 {
                    self.tasks[t].residual = Residual::of(0, expected_in);
                    self.complete(t);
                    return Ok(None);
                }
                let slot = self.engine_request(t, BlockOp::Read, lba * block, bytes, fua)?;
                let task = &mut self.tasks[t];
                task.data_in_len = bytes.min(u64::from(expected_in)) as u32;
                task.residual = Residual::of(bytes, expected_in);
                self.engine.start(slot, ctx);
            }
            Command::Write { lba, blocks, .. } | Command::WriteAndVerify { lba, blocks, .. } => {
                let fua = match command {
                    Command::Write { fua, .. } => fua,
                    _ => true,
                };
                self.check_transfer(blocks, 7)?;
                self.check_range(lba, u64::from(blocks))?;
                let bytes = u64::from(blocks) * block;
                if blocks == 0 {
                    self.tasks[t].residual = Residual::of(0, expected_out);
                    self.complete(t);
                    return Ok(None);
                }
                // Less Data-Out than the CDB asks for (EDTL < transfer length): the
                // command runs on the whole blocks that come, and reports the rest as
                // overflow (FCP-4 9.4.2, which iSCSI follows; libiscsi checks it).
                let bytes = if u64::from(expected_out) < bytes {
                    let whole = u64::from(expected_out) / block * block;
                    if whole == 0 {
                        self.tasks[t].residual = Residual::of(bytes, expected_out);
                        self.complete(t);
                        return Ok(None);
                    }
                    whole
                } else {
                    bytes
                };
                self.check_interlock(lba, bytes / block)?;
                let len = self.data_out(t, bytes, expected_out)?;
                self.tasks[t].residual = Residual::of(u64::from(blocks) * block, expected_out);
                let fua = self.fua(fua);
                self.engine_request(t, BlockOp::Write, lba * block, bytes, fua)?;
                if let Command::WriteAndVerify { byte_check, .. } = command {
                    self.tasks[t].step = Step::WriteThenVerify { byte_check };
                }
                return Ok(len);
            }
            Command::Verify {
                lba,
                blocks,
                byte_check,
            } => {
                self.check_range(lba, u64::from(blocks))?;
                if blocks == 0 {
                    self.complete(t);
                    return Ok(None);
                }
                let (start, end) = (lba * block, (lba + u64::from(blocks)) * block);
                self.tasks[t].step = Step::Verify {
                    cursor: start,
                    end,
                    compare: byte_check,
                };
                if byte_check {
                    self.check_transfer(blocks, 7)?;
                    let len = self.data_out(t, end - start, expected_out)?;
                    self.tasks[t].data = DataSource::Own;
                    let n = (end - start) as usize;
                    self.own_buffer(t, n);
                    return Ok(len);
                }
                self.next_verify_piece(t, ctx)?;
            }
            Command::CompareAndWrite { lba, blocks, .. } => {
                if blocks == 0 {
                    if expected_out > 0 {
                        // Data-Out the CDB does not describe (a length past the one-byte
                        // field, wrapped to 0): refused, not silently dropped.
                        return Err(Failure::Check(Sense::invalid_field_in_cdb(13, None)));
                    }
                    self.complete(t);
                    return Ok(None);
                }
                if blocks > self.geometry.max_compare_and_write_blocks() {
                    return Err(Failure::Check(Sense::invalid_field_in_cdb(13, None)));
                }
                self.check_range(lba, u64::from(blocks))?;
                if self.read_only {
                    return Err(Failure::Check(sense::WRITE_PROTECTED));
                }
                let bytes = 2 * u64::from(blocks) * block;
                if u64::from(expected_out) > bytes {
                    // The verify and write halves are exactly the command's length.
                    self.tasks[t].residual = Residual::of(bytes, expected_out);
                    return Err(Failure::Check(sense::INVALID_FIELD_IN_INFORMATION_UNIT));
                }
                let len = self.data_out(t, bytes, expected_out)?;
                self.tasks[t].data = DataSource::Own;
                self.own_buffer(t, bytes as usize);
                return Ok(len);
            }
            Command::OrWrite { lba, blocks, .. } => {
                self.check_transfer(blocks, 10)?;
                self.check_range(lba, u64::from(blocks))?;
                if blocks == 0 {
                    self.complete(t);
                    return Ok(None);
                }
                if self.read_only {
                    return Err(Failure::Check(sense::WRITE_PROTECTED));
                }
                let bytes = u64::from(blocks) * block;
                let len = self.data_out(t, bytes, expected_out)?;
                self.tasks[t].data = DataSource::Own;
                self.own_buffer(t, bytes as usize);
                return Ok(len);
            }
            Command::PreFetch { lba, blocks } => {
                self.check_range(lba, u64::from(blocks))?;
                self.complete(t);
            }
            Command::StartStopUnit => self.complete(t),
            Command::ReadDefectData {
                twelve,
                lists_and_format,
                allocation_length,
            } => {
                self.build(t, |_, out| {
                    out.clear();
                    out.extend_from_slice(&[0, lists_and_format, 0, 0]);
                    if twelve {
                        out.extend_from_slice(&[0; 4]);
                    }
                });
                self.answer_own(t, allocation_length, expected_in);
            }
            Command::GetLbaStatus {
                lba,
                allocation_length,
            } => {
                if lba >= self.geometry.capacity_blocks {
                    return Err(Failure::Check(sense::LBA_OUT_OF_RANGE));
                }
                self.build(t, |me, out| {
                    lba_status::describe(
                        me.engine.volume(),
                        &me.geometry,
                        lba,
                        allocation_length,
                        out,
                    )
                });
                self.answer_own(t, allocation_length, expected_in);
            }
            Command::SynchronizeCache { lba, blocks } => {
                self.check_range(lba, u64::from(blocks))?;
                let slot = self.engine_request(t, BlockOp::Flush, 0, 0, false)?;
                self.engine.start(slot, ctx);
            }
            Command::WriteSame {
                lba,
                blocks,
                unmap,
                no_data_out,
            } => {
                if unmap && !self.geometry.thin {
                    // VPD B2 LBPWS/LBPWS10 are clear on a fully provisioned volume.
                    return Err(Failure::Check(Sense::invalid_field_in_cdb(1, Some(3))));
                }
                if blocks == 0 {
                    // WSNZ: a zero count (the whole medium) is not supported.
                    return Err(Failure::Check(Sense::invalid_field_in_cdb(7, None)));
                }
                if blocks > self.geometry.max_write_same_blocks() {
                    return Err(Failure::Check(Sense::invalid_field_in_cdb(7, None)));
                }
                self.check_range(lba, u64::from(blocks))?;
                self.check_interlock(lba, u64::from(blocks))?;
                if self.read_only {
                    return Err(Failure::Check(sense::WRITE_PROTECTED));
                }
                let (start, end) = (lba * block, (lba + u64::from(blocks)) * block);
                let kind = if unmap {
                    FillKind::Trim
                } else {
                    FillKind::Zeroes
                };
                self.tasks[t].step = Step::Fill {
                    cursor: start,
                    end,
                    kind,
                    descriptor: 0,
                };
                if no_data_out {
                    self.next_fill_piece(t, ctx)?;
                    return Ok(None);
                }
                if u64::from(expected_out) > block {
                    // WRITE SAME takes exactly one block: more Data-Out is a malformed
                    // command, not data to ignore.
                    self.tasks[t].residual = Residual::of(block, expected_out);
                    return Err(Failure::Check(sense::INVALID_FIELD_IN_INFORMATION_UNIT));
                }
                let len = self.data_out(t, block, expected_out)?;
                self.tasks[t].data = DataSource::Own;
                self.own_buffer(t, block as usize);
                return Ok(len);
            }
            Command::Unmap {
                parameter_list_length,
            } => {
                if !opcodes::executes(opcodes::UNMAP, self.geometry.thin) {
                    return Err(Failure::Check(sense::INVALID_COMMAND_OPERATION_CODE));
                }
                if self.read_only {
                    return Err(Failure::Check(sense::WRITE_PROTECTED));
                }
                if parameter_list_length == 0 {
                    self.complete(t);
                    return Ok(None);
                }
                if parameter_list_length < 8 {
                    return Err(Failure::Check(sense::PARAMETER_LIST_LENGTH_ERROR));
                }
                if parameter_list_length as usize > SCSI_MAX_PARAMETER_LIST_BYTES {
                    return Err(Failure::Check(Sense::invalid_field_in_cdb(7, None)));
                }
                return self.parameter_list(t, parameter_list_length, expected_out);
            }
            Command::ModeSense {
                ten,
                disable_block_descriptors,
                long_lba,
                page_control,
                page,
                subpage,
                allocation_length,
            } => {
                let state = self.mode_state();
                self.build(t, |me, out| {
                    mode_pages::mode_sense(
                        ten,
                        disable_block_descriptors,
                        long_lba,
                        page_control,
                        page,
                        subpage,
                        &me.geometry,
                        &state,
                        out,
                    )
                })?;
                self.answer_own(t, allocation_length, expected_in);
            }
            Command::ModeSelect {
                page_format,
                save_pages,
                parameter_list_length,
                ..
            } => {
                if !page_format && parameter_list_length > 0 {
                    return Err(Failure::Check(Sense::invalid_field_in_cdb(1, Some(4))));
                }
                if save_pages {
                    return Err(Failure::Check(Sense::invalid_field_in_cdb(1, Some(0))));
                }
                if parameter_list_length == 0 {
                    self.complete(t);
                    return Ok(None);
                }
                if parameter_list_length as usize > SCSI_MAX_PARAMETER_LIST_BYTES {
                    return Err(Failure::Check(sense::PARAMETER_LIST_LENGTH_ERROR));
                }
                return self.parameter_list(t, parameter_list_length, expected_out);
            }
            Command::ReportLuns {
                select_report,
                allocation_length,
            } => {
                // The transport answers REPORT LUNS with the host's whole list
                // (`scsi::report_luns`); sent here, this LUN is the list.
                if allocation_length < 16 {
                    return Err(Failure::Check(Sense::invalid_field_in_cdb(6, None)));
                }
                if select_report > 2 {
                    return Err(Failure::Check(Sense::invalid_field_in_cdb(2, None)));
                }
                let lun = self.lun;
                self.build(t, |_, out| {
                    out.clear();
                    let n: u32 = if select_report == 1 { 0 } else { 8 };
                    out.extend_from_slice(&n.to_be_bytes());
                    out.extend_from_slice(&[0; 4]);
                    if n > 0 {
                        out.extend_from_slice(&encode_lun(lun));
                    }
                });
                self.answer_own(t, allocation_length, expected_in);
            }
            Command::ReportSupportedOperationCodes {
                rctd,
                options,
                opcode,
                service_action,
                allocation_length,
            } => {
                self.build(t, |me, out| {
                    opcodes::report(rctd, options, opcode, service_action, me.geometry.thin, out)
                })?;
                self.answer_own(t, allocation_length, expected_in);
            }
            Command::Reserve => {
                match self.lu.reservations.reserve_spc2(&self.nexus) {
                    Ok(()) => {}
                    Err(Refusal::Conflict) => {
                        return Err(Failure::Status(status::RESERVATION_CONFLICT))
                    }
                    Err(Refusal::Check(sense)) => return Err(Failure::Check(sense)),
                }
                self.complete(t);
            }
            Command::Release => {
                self.lu.reservations.release_spc2(&self.nexus);
                self.complete(t);
            }
            Command::PersistentReserveIn {
                service_action,
                allocation_length,
            } => {
                self.build(t, |me, out| {
                    me.lu
                        .reservations
                        .read(service_action, me.identity.protocol_identifier, out)
                });
                self.answer_own(t, allocation_length, expected_in);
            }
            Command::PersistentReserveOut {
                parameter_list_length,
                ..
            } => {
                if parameter_list_length as usize != super::reservations::PR_OUT_PARAMETER_BYTES {
                    return Err(Failure::Check(sense::PARAMETER_LIST_LENGTH_ERROR));
                }
                return self.parameter_list(t, parameter_list_length, expected_out);
            }
        }
        Ok(None)
    }

    /// A parameter list of `len` bytes into the task's own buffer.
    fn parameter_list(
        &mut self,
        t: usize,
        len: u32,
        expected_out: u32,
    ) -> Result<Option<u32>, Failure> {
        let need = self.data_out(t, u64::from(len), expected_out)?;
        self.tasks[t].data = DataSource::Own;
        self.own_buffer(t, len as usize);
        Ok(need)
    }

    fn own_buffer(&mut self, t: usize, len: usize) {
        let before = self.tasks[t].own.capacity();
        self.tasks[t].own_buffer(len);
        self.own_bytes += self.tasks[t].own.capacity().saturating_sub(before);
    }

    fn mode_state(&self) -> ModeState {
        ModeState {
            write_cache: self.lu.write_cache_enabled(),
            write_protected: self.read_only,
        }
    }

    // ---- engine requests ---------------------------------------------------------------

    /// Decides, admits and reserves an engine request for task `t`; the caller fills the
    /// buffer (if any) and starts it.
    fn engine_request(
        &mut self,
        t: usize,
        op: BlockOp,
        offset_bytes: u64,
        length_bytes: u64,
        fua: bool,
    ) -> Result<usize, Failure> {
        let Ok(length_bytes) = u32::try_from(length_bytes) else {
            return Err(Failure::Check(sense::INVALID_FIELD_IN_CDB));
        };
        let request = BlockRequest {
            op,
            offset_bytes,
            length_bytes,
            fua,
        };
        let deleted = self.engine.volume().is_deleted();
        let Some(decision) = self.engine.decide() else {
            return Err(Failure::Check(sense::NOT_READY_BEING_REMOVED));
        };
        let admission = self
            .engine
            .admit(&request, &decision)
            .map_err(|status| block_failure(op, status, deleted))?;
        let Some(slot) = self.engine.reserve(request, admission) else {
            return Err(Failure::Status(status::TASK_SET_FULL));
        };
        if slot >= self.slot_task.len() {
            // An engine with more slots than tasks: the table grows once to its size.
            self.slot_task.resize(slot + 1, NO_TASK);
        }
        self.slot_task[slot] = t as u16;
        self.tasks[t].slot = Some(slot);
        Ok(slot)
    }

    /// Starts the next VERIFY read piece of task `t`, or completes it.
    fn next_verify_piece(&mut self, t: usize, ctx: &mut SessionContext) -> Result<(), Failure> {
        let Step::Verify { cursor, end, .. } = self.tasks[t].step else {
            return Ok(());
        };
        if cursor >= end {
            self.complete(t);
            return Ok(());
        }
        let piece = (end - cursor).min(self.max_io_bytes());
        let slot = self.engine_request(t, BlockOp::Read, cursor, piece, false)?;
        self.engine.start(slot, ctx);
        Ok(())
    }

    /// The largest engine request with data, whole blocks.
    fn max_io_bytes(&self) -> u64 {
        let block = u64::from(self.geometry.block_bytes);
        (MAX_IO_BYTES as u64 / block) * block
    }

    /// Starts the next WRITE SAME or UNMAP piece of task `t`, or completes it.
    fn next_fill_piece(&mut self, t: usize, ctx: &mut SessionContext) -> Result<(), Failure> {
        let Step::Fill {
            mut cursor,
            mut end,
            kind,
            mut descriptor,
        } = self.tasks[t].step
        else {
            return Ok(());
        };
        let block = u64::from(self.geometry.block_bytes);
        if kind == FillKind::Unmap {
            // The next descriptor with blocks left (they were all checked on arrival).
            while cursor >= end {
                let Some((lba, blocks)) = unmap::descriptor(
                    &self.tasks[t].own[..self.tasks[t].own_len],
                    descriptor as usize,
                ) else {
                    self.complete(t);
                    return Ok(());
                };
                descriptor += 1;
                cursor = lba * block;
                end = cursor + blocks * block;
            }
        } else if cursor >= end {
            self.complete(t);
            return Ok(());
        }
        let (op, limit) = match kind {
            FillKind::Trim | FillKind::Unmap => (BlockOp::Trim, SCSI_MAX_ZEROING_REQUEST_BYTES),
            FillKind::Zeroes => (BlockOp::WriteZeroes, SCSI_MAX_ZEROING_REQUEST_BYTES),
            FillKind::Pattern => (BlockOp::Write, self.max_io_bytes()),
        };
        let limit = (limit / block) * block;
        let piece = (end - cursor).min(limit);
        let fua = self.fua(false);
        let slot = self.engine_request(t, op, cursor, piece, fua)?;
        if kind == FillKind::Pattern {
            let task = &self.tasks[t];
            let pattern = &task.own[..block as usize];
            for chunk in self.engine.buffer_mut(slot).chunks_mut(block as usize) {
                chunk.copy_from_slice(&pattern[..chunk.len()]);
            }
        }
        self.tasks[t].step = Step::Fill {
            cursor: cursor + piece,
            end,
            kind,
            descriptor,
        };
        self.engine.start(slot, ctx);
        Ok(())
    }

    // ---- Data-Out ----------------------------------------------------------------------

    /// Where the transport puts the task's Data-Out (`NeedData.len` bytes).
    pub fn data_out_buffer(&mut self, task: usize) -> &mut [u8] {
        let Some(entry) = self.tasks.get_mut(task) else {
            return &mut [];
        };
        let len = entry.data_out_bytes as usize;
        match (entry.data, entry.slot) {
            (DataSource::Own, _) => &mut entry.own[..len.min(entry.own_len)],
            (_, Some(slot)) => {
                let buf = self.engine.buffer_mut(slot);
                let n = len.min(buf.len());
                &mut buf[..n]
            }
            _ => &mut [],
        }
    }

    /// The task's Data-Out is all there: run it.
    pub fn data_out_done(&mut self, task: usize, ctx: &mut SessionContext) {
        let Some(entry) = self.tasks.get(task) else {
            return;
        };
        if entry.state != TaskState::WaitingForData {
            return;
        }
        self.tasks[task].state = TaskState::Running;
        if let Err(failure) = self.run_with_data(task, ctx) {
            self.fail(task, failure);
        }
        self.drain(ctx);
    }

    fn run_with_data(&mut self, t: usize, ctx: &mut SessionContext) -> Result<(), Failure> {
        let block = u64::from(self.geometry.block_bytes);
        match self.tasks[t].command {
            Command::Write { lba, blocks, .. } | Command::WriteAndVerify { lba, blocks, .. } => {
                // Again now: a CAW may have taken the blocks while the data came.
                self.check_interlock(lba, u64::from(blocks))?;
                if let Some(slot) = self.tasks[t].slot {
                    self.engine.start(slot, ctx);
                }
            }
            Command::Verify { .. } => {
                self.next_verify_piece(t, ctx)?;
            }
            Command::CompareAndWrite { lba, blocks, .. } | Command::OrWrite { lba, blocks, .. } => {
                if !self
                    .lu
                    .interlock
                    .try_take(lba, u64::from(blocks), self.owner)
                {
                    return Err(Failure::Status(status::BUSY));
                }
                self.tasks[t].interlocked = true;
                self.tasks[t].step = Step::CawRead;
                let slot = self.engine_request(
                    t,
                    BlockOp::Read,
                    lba * block,
                    u64::from(blocks) * block,
                    false,
                )?;
                self.engine.start(slot, ctx);
            }
            Command::WriteSame { lba, blocks, .. } => {
                self.check_interlock(lba, u64::from(blocks))?;
                let pattern = &self.tasks[t].own[..block as usize];
                let zero = pattern.iter().all(|&b| b == 0);
                if let Step::Fill { kind, .. } = &mut self.tasks[t].step {
                    // UNMAP of a zero block deallocates (unmapped blocks read zeroes,
                    // LBPRZ); any other block is written as it is, even with UNMAP set.
                    *kind = match (*kind, zero) {
                        (FillKind::Trim, true) => FillKind::Trim,
                        (_, true) => FillKind::Zeroes,
                        (_, false) => FillKind::Pattern,
                    };
                }
                self.next_fill_piece(t, ctx)?;
            }
            Command::Unmap { .. } => {
                let list = &self.tasks[t].own[..self.tasks[t].own_len];
                unmap::check(list, &self.geometry)?;
                if !self.lu.interlock.is_empty() {
                    let mut index = 0;
                    while let Some((lba, blocks)) = unmap::descriptor(list, index) {
                        self.check_interlock(lba, blocks)?;
                        index += 1;
                    }
                }
                self.tasks[t].step = Step::Fill {
                    cursor: 0,
                    end: 0,
                    kind: FillKind::Unmap,
                    descriptor: 0,
                };
                self.next_fill_piece(t, ctx)?;
            }
            Command::ModeSelect { ten, .. } => {
                let state = self.mode_state();
                let list = &self.tasks[t].own[..self.tasks[t].own_len];
                let selected = mode_pages::mode_select(ten, list, &self.geometry, &state)?;
                if let Some(write_cache) = selected.write_cache {
                    if write_cache != self.lu.write_cache_enabled() {
                        self.lu.set_write_cache(write_cache);
                        // Heard by the other nexuses, not by this one.
                        self.mode_changes_seen =
                            self.lu.mode_changes.fetch_add(1, Ordering::AcqRel) + 1;
                    }
                }
                self.tasks[t].data = DataSource::None;
                self.complete(t);
            }
            Command::PersistentReserveOut {
                service_action,
                scope,
                pr_type,
                ..
            } => {
                let list = &self.tasks[t].own[..self.tasks[t].own_len];
                let result = self.lu.reservations.out(
                    &self.nexus,
                    service_action,
                    scope,
                    pr_type,
                    list,
                    &self.lu.unit_attentions,
                );
                self.tasks[t].data = DataSource::None;
                match result {
                    Ok(()) => self.complete(t),
                    Err(Refusal::Conflict) => {
                        return Err(Failure::Status(status::RESERVATION_CONFLICT))
                    }
                    Err(Refusal::Check(sense)) => return Err(Failure::Check(sense)),
                }
            }
            _ => self.complete(t),
        }
        Ok(())
    }

    // ---- completions -------------------------------------------------------------------

    /// A ring completion of the engine's.
    pub fn on_completion(&mut self, local_tag: u64, result: i32, ctx: &mut SessionContext) {
        self.engine.on_completion(local_tag, result, ctx);
        self.drain(ctx);
    }

    /// The provisioner answered.
    pub fn on_wake(&mut self, token: u64, result: i32, ctx: &mut SessionContext) {
        self.engine.on_wake(token, result, ctx);
        self.drain(ctx);
    }

    /// Ring entries were freed.
    pub fn on_ring_credit(&mut self, ctx: &mut SessionContext) {
        self.engine.on_ring_credit(ctx);
        self.drain(ctx);
    }

    /// Takes every finished engine request and moves its task on.
    fn drain(&mut self, ctx: &mut SessionContext) {
        while let Some(finished) = self.engine.pop_finished() {
            let slot = finished.slot;
            let owner = self.slot_task.get(slot).copied().unwrap_or(NO_TASK);
            if let Some(s) = self.slot_task.get_mut(slot) {
                *s = NO_TASK;
            }
            let t = owner as usize;
            let expected = owner != NO_TASK
                && self.tasks[t].state == TaskState::Running
                && self.tasks[t].slot == Some(slot);
            if !expected {
                self.engine.release(slot);
                continue;
            }
            if self.tasks[t].aborted {
                self.engine.release(slot);
                if let Step::ReadBack {
                    second: written, ..
                } = self.tasks[t].step
                {
                    self.engine.release(written);
                }
                self.tasks[t].slot = None;
                self.free(t);
                continue;
            }
            if let Err(failure) = self.step(t, slot, finished.status, ctx) {
                self.fail(t, failure);
            }
        }
    }

    /// Engine request `slot` of task `t` ended with `status`: the task's next step.
    fn step(
        &mut self,
        t: usize,
        slot: usize,
        block_status: BlockStatus,
        ctx: &mut SessionContext,
    ) -> Result<(), Failure> {
        let op = self.engine.request(slot).op;
        if !block_status.is_ok() {
            self.engine.release(slot);
            if let Step::ReadBack {
                second: written, ..
            } = self.tasks[t].step
            {
                self.engine.release(written);
            }
            self.tasks[t].slot = None;
            let deleted = self.engine.volume().is_deleted();
            return Err(block_failure(op, block_status, deleted));
        }
        match self.tasks[t].step {
            Step::Single => {
                if op == BlockOp::Read {
                    // The data stays in the slot until the transport releases the task.
                    self.tasks[t].data = DataSource::Slot(slot);
                } else {
                    self.engine.release(slot);
                    self.tasks[t].slot = None;
                }
                self.complete(t);
            }
            Step::Verify {
                cursor,
                end,
                compare,
            } => {
                let request = *self.engine.request(slot);
                if compare {
                    let start = match self.tasks[t].command {
                        Command::Verify { lba, .. } => lba * u64::from(self.geometry.block_bytes),
                        _ => cursor,
                    };
                    let at = (request.offset_bytes - start) as usize;
                    let own = &self.tasks[t].own[..self.tasks[t].own_len];
                    let expected = own
                        .get(at..at + request.length_bytes as usize)
                        .unwrap_or(&[]);
                    if let Some(i) = first_difference(expected, self.engine.buffer(slot)) {
                        self.engine.release(slot);
                        self.tasks[t].slot = None;
                        return Err(Failure::Check(
                            sense::MISCOMPARE_DURING_VERIFY
                                .with_information((at + i).try_into().unwrap_or(u32::MAX)),
                        ));
                    }
                }
                self.engine.release(slot);
                self.tasks[t].slot = None;
                self.tasks[t].step = Step::Verify {
                    cursor: cursor + u64::from(request.length_bytes),
                    end,
                    compare,
                };
                self.tasks[t].data = DataSource::None;
                self.next_verify_piece(t, ctx)?;
            }
            Step::WriteThenVerify { byte_check } => {
                // Read back what was written into a second slot; the first keeps the data.
                let request = *self.engine.request(slot);
                let second = self.engine_request(
                    t,
                    BlockOp::Read,
                    request.offset_bytes,
                    u64::from(request.length_bytes),
                    false,
                );
                let second = match second {
                    Ok(second) => second,
                    Err(failure) => {
                        self.engine.release(slot);
                        self.tasks[t].slot = None;
                        return Err(failure);
                    }
                };
                // engine_request recorded the second slot as the task's; keep the first.
                self.tasks[t].slot = Some(second);
                self.tasks[t].step = Step::ReadBack {
                    second: slot,
                    byte_check,
                };
                self.engine.start(second, ctx);
            }
            Step::ReadBack {
                second: written,
                byte_check,
            } => {
                let differs = byte_check
                    && first_difference(self.engine.buffer(written), self.engine.buffer(slot))
                        .is_some();
                self.engine.release(written);
                self.engine.release(slot);
                self.tasks[t].slot = None;
                if differs {
                    return Err(Failure::Check(sense::MISCOMPARE_DURING_VERIFY));
                }
                self.complete(t);
            }
            Step::CawRead => {
                let block = u64::from(self.geometry.block_bytes);
                let (lba, blocks, fua, or) = match self.tasks[t].command {
                    Command::CompareAndWrite { lba, blocks, fua } => (lba, blocks, fua, false),
                    Command::OrWrite { lba, blocks, fua } => (lba, blocks, fua, true),
                    _ => return Err(Failure::Check(sense::INTERNAL_TARGET_FAILURE)),
                };
                let n = (u64::from(blocks) * block) as usize;
                if or {
                    // The new blocks: what is there, OR the Data-Out (kept in the task
                    // buffer, then written from it below).
                    let (own, engine) = (&mut self.tasks[t].own, &self.engine);
                    for (new, old) in own[..n].iter_mut().zip(engine.buffer(slot)) {
                        *new |= *old;
                    }
                } else if let Some(i) =
                    first_difference(&self.tasks[t].own[..n], self.engine.buffer(slot))
                {
                    self.engine.release(slot);
                    self.tasks[t].slot = None;
                    return Err(Failure::Check(
                        sense::MISCOMPARE_DURING_VERIFY.with_information(i as u32),
                    ));
                }
                self.engine.release(slot);
                self.tasks[t].slot = None;
                let fua = self.fua(fua);
                let write = self.engine_request(t, BlockOp::Write, lba * block, n as u64, fua)?;
                let (own, engine) = (&self.tasks[t].own, &mut self.engine);
                let data = if or { &own[..n] } else { &own[n..2 * n] };
                engine.buffer_mut(write).copy_from_slice(data);
                self.tasks[t].step = Step::CawWrite;
                self.engine.start(write, ctx);
            }
            Step::CawWrite => {
                self.engine.release(slot);
                self.tasks[t].slot = None;
                self.complete(t);
            }
            Step::Fill { .. } => {
                self.engine.release(slot);
                self.tasks[t].slot = None;
                self.next_fill_piece(t, ctx)?;
            }
        }
        Ok(())
    }

    /// Ends the task with its status (GOOD unless set): into the done queue.
    fn complete(&mut self, t: usize) {
        let task = &mut self.tasks[t];
        if task.interlocked {
            if let Command::CompareAndWrite { lba, .. } | Command::OrWrite { lba, .. } =
                task.command
            {
                self.lu.interlock.give_back(lba, self.owner);
            }
            task.interlocked = false;
        }
        if task.aborted {
            self.free(t);
            return;
        }
        task.state = TaskState::Done;
        if task.data == DataSource::None || task.status != status::GOOD {
            task.data_in_len = 0;
        }
        if task.status != status::GOOD && task.expected_in_bytes > 0 {
            // A failed command sends no Data-In: all the initiator expected is residual.
            task.residual = Residual::Underflow(task.expected_in_bytes);
        }
        self.done.push_back(TaskDone {
            task: t,
            itt: task.itt,
            status: task.status,
            data_in_len: task.data_in_len,
            residual: task.residual,
        });
    }

    /// Ends the task with `failure`.
    fn fail(&mut self, t: usize, failure: Failure) {
        let task = &mut self.tasks[t];
        match failure {
            Failure::Check(sense) => task.check_condition(sense),
            Failure::Status(code) => {
                task.status = code;
                task.sense_len = 0;
                task.data = DataSource::None;
            }
        }
        if let Some(slot) = task.slot.take() {
            // A slot reserved but never started (refused before its data was used).
            self.engine.fail(slot, BlockStatus::ShutDown);
        }
        self.complete(t);
    }

    /// Puts task `t` back in the free list.
    fn free(&mut self, t: usize) {
        let task = &mut self.tasks[t];
        if task.interlocked {
            if let Command::CompareAndWrite { lba, .. } | Command::OrWrite { lba, .. } =
                task.command
            {
                self.lu.interlock.give_back(lba, self.owner);
            }
            task.interlocked = false;
        }
        if self.own_bytes > SCSI_RETAINED_TASK_BUFFER_BYTES && task.own.capacity() > 4096 {
            self.own_bytes -= task.own.capacity();
            task.own = Vec::new();
        }
        task.state = TaskState::Free;
        task.slot = None;
        task.data = DataSource::None;
        self.free_tasks.push(t);
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
#[path = "scsi_lun_tests.rs"]
mod tests;
