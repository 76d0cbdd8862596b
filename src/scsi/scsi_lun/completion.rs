//! Completions: engine completions and provisioner wakes routed to their tasks, each task's
//! next step (the multi-step commands) and its status.

use super::*;

impl ScsiLun {
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
    pub(super) fn drain(&mut self, ctx: &mut SessionContext) {
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
    pub(super) fn step(
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
    pub(super) fn complete(&mut self, t: usize) {
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
    pub(super) fn fail(&mut self, t: usize, failure: Failure) {
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
    pub(super) fn free(&mut self, t: usize) {
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
}
