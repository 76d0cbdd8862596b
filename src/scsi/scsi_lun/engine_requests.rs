//! Engine requests of a task: deciding, admitting and reserving one, and the pieces of the
//! commands that take several (VERIFY's reads, WRITE SAME's and zeroing's writes).

use super::*;

impl ScsiLun {
    /// Decides, admits and reserves an engine request for task `t`; the caller fills the
    /// buffer (if any) and starts it.
    pub(super) fn engine_request(
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
    pub(super) fn next_verify_piece(
        &mut self,
        t: usize,
        ctx: &mut SessionContext,
    ) -> Result<(), Failure> {
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
    pub(super) fn max_io_bytes(&self) -> u64 {
        let block = u64::from(self.geometry.block_bytes);
        (MAX_IO_BYTES as u64 / block) * block
    }

    /// Starts the next WRITE SAME or UNMAP piece of task `t`, or completes it.
    pub(super) fn next_fill_piece(
        &mut self,
        t: usize,
        ctx: &mut SessionContext,
    ) -> Result<(), Failure> {
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
}
