//! Running a decoded command: the non-I/O commands answered from the task's own buffer,
//! the block commands turned into engine requests (or into a wait for their Data-Out).

use super::*;

impl ScsiLun {
    /// Runs `command`: Ok(Some(len)) when it needs Data-Out first, Ok(None) when it runs
    /// (or already finished).
    pub(super) fn execute(
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
                if parameter_list_length as usize
                    != crate::scsi::reservations::PR_OUT_PARAMETER_BYTES
                {
                    return Err(Failure::Check(sense::PARAMETER_LIST_LENGTH_ERROR));
                }
                return self.parameter_list(t, parameter_list_length, expected_out);
            }
        }
        Ok(None)
    }

    /// A parameter list of `len` bytes into the task's own buffer.
    pub(super) fn parameter_list(
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

    pub(super) fn own_buffer(&mut self, t: usize, len: usize) {
        let before = self.tasks[t].own.capacity();
        self.tasks[t].own_buffer(len);
        self.own_bytes += self.tasks[t].own.capacity().saturating_sub(before);
    }

    pub(super) fn mode_state(&self) -> ModeState {
        ModeState {
            write_cache: self.lu.write_cache_enabled(),
            write_protected: self.read_only,
        }
    }
}
