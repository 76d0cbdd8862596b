//! Data-Out: where the transport puts a task's data, and the commands that run once it came
//! (writes, COMPARE AND WRITE, parameter lists).

use super::*;

impl ScsiLun {
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

    /// The transport lost some of the task's Data-Out and does not recover it: the task ends
    /// with CHECK CONDITION, `sense`, and nothing of its data is used.
    pub fn data_out_failed(&mut self, task: usize, sense: Sense, ctx: &mut SessionContext) {
        let Some(entry) = self.tasks.get(task) else {
            return;
        };
        if entry.state != TaskState::WaitingForData {
            return;
        }
        self.tasks[task].state = TaskState::Running;
        self.fail(task, Failure::Check(sense));
        self.drain(ctx);
    }

    pub(super) fn run_with_data(
        &mut self,
        t: usize,
        ctx: &mut SessionContext,
    ) -> Result<(), Failure> {
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
}
