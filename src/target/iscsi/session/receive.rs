//! Receiving: PDU framing out of the receive buffer, SCSI commands to their LUN, and a
//! write's data — immediate, unsolicited or asked for with R2T — straight into its task's
//! buffer, with the buffer budgets charged per task.

use super::*;
use crate::target::recv_buffer;

/// A write waiting for its data: immediate, unsolicited Data-Out, then bursts asked for
/// with R2T.
#[derive(Clone, Copy, Debug)]
pub(super) struct DataWait {
    pub(super) itt: u32,
    pub(super) lun: u16,
    pub(super) task: u16,
    pub(super) lun_wire: u64,
    /// Bytes the command takes (its transfer length); the task's buffer holds them.
    pub(super) expected: u32,
    /// The next buffer offset expected (Data-Out comes in order).
    pub(super) received: u32,
    /// End of what the initiator may send now: the first burst, or the current R2T's.
    pub(super) burst_end: u32,
    /// The current R2T's transfer tag, [`RESERVED_TAG`] for unsolicited data.
    pub(super) ttt: u32,
    r2t_sn: u32,
    /// The DataSN the next Data-Out of the current sequence must carry.
    pub(super) data_sn: u32,
    /// A Data-Out came with the wrong DataSN: what follows is dropped and the task ends with
    /// CHECK CONDITION once the sequence's last Data-Out (F bit) is in.
    pub(super) lost: bool,
}

/// What incoming bytes are for right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Inbound {
    /// PDU headers, parsed out of the receive buffer.
    Headers,
    /// A data segment going straight into a task's buffer: `got` of `len` bytes so far at
    /// `offset`, then `trailer` bytes (padding, data digest) from the receive buffer.
    Data {
        wait: u32,
        offset: u32,
        len: u32,
        got: u32,
        skip: u32,
        final_: bool,
    },
    /// What follows a data segment that went into a task's buffer: `skip` bytes of it past
    /// what the command takes (dropped), then padding and data digest.
    Trailer {
        wait: u32,
        offset: u32,
        len: u32,
        skip: u32,
        final_: bool,
    },
    /// Bytes to read and drop (the data of a command that was refused or aborted).
    Discard { remaining: usize },
}

impl IscsiSession {
    pub(super) fn post_recv(&mut self, ctx: &mut SessionContext) {
        if self.recv.is_posted() || self.closing {
            return;
        }
        let (direct, kind) = match self.inbound {
            Inbound::Data {
                wait,
                offset,
                len,
                got,
                ..
            } => {
                let Some(w) = self.waits.get(wait as usize).copied() else {
                    self.close("data for a task that is gone");
                    return;
                };
                let buf = self.luns[usize::from(w.lun)]
                    .scsi
                    .data_out_buffer(usize::from(w.task));
                let Some(window) =
                    recv_buffer::data_window(buf, (offset + got) as usize, (offset + len) as usize)
                else {
                    self.close("data past the task's buffer");
                    return;
                };
                (Some(window), TAG_DATA)
            }
            Inbound::Headers | Inbound::Trailer { .. } | Inbound::Discard { .. } => {
                (None, TAG_RECV)
            }
        };
        let fd = self.fd();
        // SAFETY: the buffer is owned by this session (or by its LUN's task, which is not
        // released while its data is arriving), and the session outlives the completion: the
        // reactor drops a session only when is_finished(), with nothing on the ring.
        let posted = unsafe {
            self.recv
                .post(ctx, fd, direct, kind, &mut self.ring_pending)
        };
        if let Err(error) = posted {
            self.close(&error.to_string());
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.recv.len()
    }

    /// Handles everything complete in the receive buffer, then sends the answers that made
    /// ready together.
    pub(super) fn process_input(&mut self, ctx: &mut SessionContext) {
        let outer = std::mem::replace(&mut self.defer_send, true);
        self.process_input_batch(ctx);
        self.defer_send = outer;
        self.post_send(ctx);
    }

    fn process_input_batch(&mut self, ctx: &mut SessionContext) {
        loop {
            if self.closing {
                return;
            }
            match self.inbound {
                // Arriving straight into a task's buffer: the receive below is for it.
                Inbound::Data { .. } => break,
                Inbound::Discard { remaining } => {
                    let left = self.recv.discard(remaining);
                    if left > 0 {
                        self.inbound = Inbound::Discard { remaining: left };
                        break;
                    }
                    self.inbound = Inbound::Headers;
                }
                Inbound::Trailer {
                    wait,
                    offset,
                    len,
                    skip,
                    final_,
                } => {
                    if !self.take_trailer(wait, offset, len, skip, final_, ctx) {
                        break;
                    }
                }
                Inbound::Headers => {
                    if self.stalled || self.logout.is_some() || !self.take_pdu(ctx) {
                        break;
                    }
                }
            }
        }
        self.recv.tidy(BHS_BYTES);
        // A command waiting for a task or for buffers holds the rest back: TCP's flow control
        // stops the initiator, rather than the receive buffer filling up.
        if !self.stalled {
            self.post_recv(ctx);
        }
        self.post_send(ctx);
    }

    /// Parses and handles one PDU. Returns false when it must wait for more bytes (or for a
    /// task to free up).
    pub(super) fn take_pdu(&mut self, ctx: &mut SessionContext) -> bool {
        if self.buffered() < BHS_BYTES {
            return false;
        }
        let Ok(bhs) = pdu::bhs_from(self.recv.pending()) else {
            return false;
        };
        let framing = match Framing::of(
            &bhs,
            self.params.header_digest,
            self.params.data_digest,
            self.params.max_recv_data_segment_length,
            ISCSI_MAX_AHS_BYTES,
        ) {
            Ok(framing) => framing,
            Err(error) => {
                self.reject_and_close(&bhs, reject::PROTOCOL_ERROR, &error.to_string());
                return false;
            }
        };
        let header_bytes = BHS_BYTES + framing.ahs_bytes + framing.header_digest_bytes;
        if self.buffered() < header_bytes {
            return false;
        }
        if framing.header_digest_bytes > 0 {
            let raw = self.recv.pending();
            let header = &raw[..BHS_BYTES + framing.ahs_bytes];
            let received = &raw[BHS_BYTES + framing.ahs_bytes..header_bytes];
            if !digest::matches(&[header], received) {
                // The header cannot be trusted, not even its lengths: the connection ends.
                self.close("header digest error");
                return false;
            }
        }
        self.idle_ticks = 0;
        let pdu = match InitiatorPdu::parse(&bhs) {
            Ok(pdu) => pdu,
            Err(error) => {
                self.reject_and_close(&bhs, reject::PROTOCOL_ERROR, &error.to_string());
                return false;
            }
        };
        match pdu {
            InitiatorPdu::ScsiCommand(command) => {
                self.take_command(&bhs, &command, &framing, header_bytes, ctx)
            }
            InitiatorPdu::DataOut(data) => self.take_data_out(&data, &framing, header_bytes, ctx),
            other => {
                // Everything else is small and handled whole from the receive buffer.
                let total = header_bytes + framing.rest_bytes()
                    - framing.ahs_bytes
                    - framing.header_digest_bytes;
                if total > self.recv.capacity() {
                    self.reject_and_close(&bhs, reject::PROTOCOL_ERROR, "PDU too large");
                    return false;
                }
                if self.buffered() < total {
                    return false;
                }
                let data = header_bytes..header_bytes + framing.data_bytes;
                if framing.data_digest_bytes > 0 {
                    let raw = self.recv.pending();
                    let padded = data.start..data.end + framing.padding_bytes;
                    let received = &raw[padded.end..padded.end + DIGEST_BYTES];
                    if !digest::matches(&[&raw[padded]], received) {
                        self.recv.consume(total);
                        self.queue_reject(&bhs, reject::DATA_DIGEST_ERROR, false);
                        return true;
                    }
                }
                let payload = self.recv.pending()[data].to_vec();
                self.recv.consume(total);
                self.take_other(&bhs, other, payload, ctx);
                true
            }
        }
    }

    /// Whether a command's CmdSN is one to carry out; advances ExpCmdSN past it. A command
    /// outside the window is dropped, as RFC 7143 says.
    pub(super) fn accept_cmd_sn(&mut self, immediate: bool, cmd_sn: u32) -> bool {
        if immediate {
            return true;
        }
        let max_cmd_sn = self.max_cmd_sn;
        if serial_lt(cmd_sn, self.exp_cmd_sn) || serial_lt(max_cmd_sn, cmd_sn) {
            log::debug!(
                "iscsi {}: CmdSN {cmd_sn} outside [{}, {max_cmd_sn}]: dropped",
                self.peer,
                self.exp_cmd_sn
            );
            return false;
        }
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        }
        true
    }

    pub(super) fn lun_index(&self, wire: u64) -> Option<usize> {
        let number = lun_number(wire)?;
        self.luns.iter().position(|lun| lun.number == number)
    }

    pub(super) fn take_command(
        &mut self,
        bhs: &Bhs,
        command: &ScsiCommand,
        framing: &Framing,
        header_bytes: usize,
        ctx: &mut SessionContext,
    ) -> bool {
        let data_bytes = framing.data_bytes;
        let trailer_bytes = framing.padding_bytes + framing.data_digest_bytes;
        let lun = self
            .lun_index(command.lun)
            .filter(|_| command.cdb[0] != REPORT_LUNS);
        let Some(index) = lun else {
            // REPORT LUNS lists the session's LUNs, whichever LUN it is sent to; a command to
            // a LUN with no VP gets SAM's answer (INQUIRY still answers, with no unit).
            if !self.accept_cmd_sn(command.immediate, command.cmd_sn) {
                self.skip(header_bytes + data_bytes + trailer_bytes);
                return true;
            }
            let answer = if command.cdb[0] == REPORT_LUNS {
                scsi::report_luns(&self.lun_numbers, &command.cdb)
            } else {
                scsi::no_such_lun(&command.cdb)
            };
            self.skip(header_bytes + data_bytes + trailer_bytes);
            let (data, residual) = answer.data_in(command.expected_data_transfer_length);
            let data = data.to_vec();
            let sense = answer.sense().to_vec();
            self.queue_control_answer(
                command,
                answer.status,
                data,
                &sense,
                scsi_residual(residual),
            );
            return true;
        };
        if self.closing {
            return false;
        }
        let direction = match (command.read, command.write) {
            (_, true) => DataDirection::Write,
            (true, false) => DataDirection::Read,
            (false, false) => DataDirection::None,
        };
        if data_bytes > 0 && direction != DataDirection::Write {
            self.reject_and_close(bhs, reject::PROTOCOL_ERROR, "data with a non-write command");
            return false;
        }
        if data_bytes > 0 && !self.params.immediate_data {
            self.reject_and_close(bhs, reject::PROTOCOL_ERROR, "immediate data not negotiated");
            return false;
        }
        // Peek the window before taking a task: a dropped command takes none.
        let max_cmd_sn = self.max_cmd_sn;
        if !command.immediate
            && (serial_lt(command.cmd_sn, self.exp_cmd_sn) || serial_lt(max_cmd_sn, command.cmd_sn))
        {
            self.accept_cmd_sn(command.immediate, command.cmd_sn);
            self.skip(header_bytes + data_bytes + trailer_bytes);
            return true;
        }
        // Buffers: past this session's share or the server's, the command waits for this
        // session's own answers to drain; a session holding nothing always gets one.
        if self.buffer_bytes > 0
            && (self.buffer_bytes >= MAX_BUFFER_BYTES_PER_CONNECTION
                || self.budget.used_bytes() >= MAX_BUFFER_BYTES_TOTAL)
        {
            self.stalled = true;
            return false;
        }
        let submitted = self.luns[index].scsi.submit(
            command.initiator_task_tag,
            &command.cdb,
            command.expected_data_transfer_length,
            direction,
            ctx,
        );
        let (task, len) = match submitted {
            Submit::Busy => {
                // Every task of the LUN is in use: the command waits in the receive buffer
                // until one is released.
                self.stalled = true;
                return false;
            }
            Submit::Started { task } => {
                self.charge(index, task);
                (task, 0)
            }
            Submit::NeedData { task, len: 0 } => {
                self.charge(index, task);
                // Nothing to wait for: the command runs now.
                self.luns[index].scsi.data_out_done(task, ctx);
                (task, 0)
            }
            Submit::NeedData { task, len } => {
                self.charge(index, task);
                (task, len)
            }
        };
        self.accept_cmd_sn(command.immediate, command.cmd_sn);
        self.recv.consume(header_bytes);
        if len == 0 {
            if data_bytes + trailer_bytes > 0 {
                self.inbound = Inbound::Discard {
                    remaining: data_bytes + trailer_bytes,
                };
            }
            self.drain_done(ctx);
            return true;
        }
        let limit = command.expected_data_transfer_length;
        // What the initiator may send before any R2T: its immediate data, and with
        // InitialR2T=No unsolicited Data-Out up to FirstBurstLength (both within EDTL).
        let first_burst = if self.params.initial_r2t {
            data_bytes as u32
        } else {
            self.params.first_burst_length.max(data_bytes as u32)
        }
        .min(limit);
        if data_bytes as u32 > first_burst {
            self.reject_and_close(bhs, reject::PROTOCOL_ERROR, "immediate data past EDTL");
            return false;
        }
        self.waits.push(DataWait {
            itt: command.initiator_task_tag,
            lun: index as u16,
            task: task as u16,
            lun_wire: command.lun,
            expected: len,
            received: 0,
            burst_end: first_burst,
            ttt: RESERVED_TAG,
            r2t_sn: 0,
            data_sn: 0,
            lost: false,
        });
        let wait_index = (self.waits.len() - 1) as u32;
        if data_bytes == 0 {
            self.after_data(wait_index, command.final_, ctx);
            return true;
        }
        self.copy_buffered(wait_index, 0, data_bytes as u32, command.final_);
        true
    }

    pub(super) fn take_data_out(
        &mut self,
        data: &DataOut,
        framing: &Framing,
        header_bytes: usize,
        ctx: &mut SessionContext,
    ) -> bool {
        let trailer_bytes = framing.padding_bytes + framing.data_digest_bytes;
        let Some(wait_index) = self
            .waits
            .iter()
            .position(|w| w.itt == data.initiator_task_tag)
        else {
            // Data for a task that was aborted (or never was): dropped.
            self.skip(header_bytes + framing.data_bytes + trailer_bytes);
            return true;
        };
        let wait = self.waits[wait_index];
        let len = data.data_segment_length;
        let in_burst = u64::from(data.buffer_offset) + u64::from(len) <= u64::from(wait.burst_end);
        let right_tag = data.target_transfer_tag == wait.ttt;
        if right_tag && in_burst && len > 0 && (wait.lost || data.data_sn != wait.data_sn) {
            // A Data-Out out of DataSN order means an earlier one was lost to a digest error
            // (RFC 7143, sequence errors). At ErrorRecoveryLevel 0 the target does not ask
            // for it again: the task ends with CHECK CONDITION, protocol service CRC error,
            // once the initiator has sent what it was asked for (the F bit), as for a data
            // digest error the target does not recover; its data is dropped.
            self.waits[wait_index].lost = true;
            self.skip(header_bytes + framing.data_bytes + trailer_bytes);
            if data.final_ {
                self.waits.swap_remove(wait_index);
                self.luns[usize::from(wait.lun)].scsi.data_out_failed(
                    usize::from(wait.task),
                    crate::scsi::sense::PROTOCOL_SERVICE_CRC_ERROR,
                    ctx,
                );
                self.drain_done(ctx);
            }
            return true;
        }
        let in_order = data.buffer_offset == wait.received;
        if !(in_order && in_burst && right_tag) || len == 0 {
            log::debug!(
                "iscsi {}: Data-Out for ITT {:#x} at {} (+{len}, TTT {:#x}) outside what was \
                 asked (received {}, burst to {}, TTT {:#x})",
                self.peer,
                wait.itt,
                data.buffer_offset,
                data.target_transfer_tag,
                wait.received,
                wait.burst_end,
                wait.ttt
            );
            self.close("Data-Out outside the burst");
            return false;
        }
        self.recv.consume(header_bytes);
        self.waits[wait_index].data_sn = wait.data_sn.wrapping_add(1);
        self.copy_buffered(wait_index as u32, data.buffer_offset, len, data.final_);
        true
    }

    /// Takes a data segment of `len` bytes at buffer offset `offset` of a write: what the
    /// command takes goes into the task's buffer (what the receive buffer already has is
    /// copied, the rest is received straight into it, [`Inbound::Data`]); bytes past it are
    /// dropped.
    pub(super) fn copy_buffered(&mut self, wait: u32, offset: u32, len: u32, final_: bool) {
        let w = self.waits[wait as usize];
        let keep = len.min(w.expected.saturating_sub(offset));
        let skip = len - keep;
        let have = self.buffered().min(keep as usize);
        let buf = self.luns[usize::from(w.lun)]
            .scsi
            .data_out_buffer(usize::from(w.task));
        let end = offset as usize + have;
        if end > buf.len() {
            self.close("data past the task's buffer");
            return;
        }
        buf[offset as usize..end].copy_from_slice(&self.recv.pending()[..have]);
        self.recv.consume(have);
        self.inbound = if have < keep as usize {
            Inbound::Data {
                wait,
                offset,
                len: keep,
                got: have as u32,
                skip,
                final_,
            }
        } else {
            Inbound::Trailer {
                wait,
                offset,
                len: keep,
                skip,
                final_,
            }
        };
    }

    /// Checks the padding and data digest after a data segment in a task's buffer, then
    /// moves the write on.
    pub(super) fn take_trailer(
        &mut self,
        wait: u32,
        offset: u32,
        len: u32,
        skip: u32,
        final_: bool,
        ctx: &mut SessionContext,
    ) -> bool {
        if skip > 0 {
            // The dropped part of the segment, its padding and its digest (which covers what
            // is dropped, so it is not checked): taken like any other bytes to drop.
            let padding = pdu::padding(len + skip);
            let digest_bytes = if self.params.data_digest {
                DIGEST_BYTES
            } else {
                0
            };
            self.waits[wait as usize].received += len + skip;
            self.inbound = Inbound::Headers;
            self.skip(skip as usize + padding + digest_bytes);
            self.after_data(wait, final_, ctx);
            return true;
        }
        let padding = pdu::padding(len);
        let digest_bytes = if self.params.data_digest {
            DIGEST_BYTES
        } else {
            0
        };
        if self.buffered() < padding + digest_bytes {
            return false;
        }
        let mut pad = [0u8; 3];
        pad[..padding].copy_from_slice(&self.recv.pending()[..padding]);
        let mut received = [0u8; DIGEST_BYTES];
        if digest_bytes > 0 {
            received.copy_from_slice(&self.recv.pending()[padding..padding + DIGEST_BYTES]);
        }
        self.recv.consume(padding + digest_bytes);
        self.inbound = Inbound::Headers;
        if digest_bytes > 0 {
            let w = self.waits[wait as usize];
            let buf = self.luns[usize::from(w.lun)]
                .scsi
                .data_out_buffer(usize::from(w.task));
            let data = &buf[offset as usize..(offset + len) as usize];
            if !digest::matches(&[data, &pad[..padding]], &received) {
                // ErrorRecoveryLevel 0: a data digest error on Data-Out ends the connection.
                self.close("data digest error");
                return false;
            }
        }
        self.waits[wait as usize].received += len;
        self.after_data(wait, final_, ctx);
        true
    }

    /// Data of a write arrived: run the command when it has all, or ask for the next burst.
    pub(super) fn after_data(&mut self, wait: u32, final_: bool, ctx: &mut SessionContext) {
        let w = self.waits[wait as usize];
        if w.received >= w.expected {
            self.waits.swap_remove(wait as usize);
            self.luns[usize::from(w.lun)]
                .scsi
                .data_out_done(usize::from(w.task), ctx);
            self.drain_done(ctx);
            return;
        }
        if w.received < w.burst_end && !final_ {
            // More of this burst is on its way.
            return;
        }
        // The burst ended (or the first burst was cut short): solicit the next one.
        let burst = (w.expected - w.received).min(self.params.max_burst_length);
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        let w = &mut self.waits[wait as usize];
        w.burst_end = w.received + burst;
        w.ttt = ttt;
        w.data_sn = 0;
        let r2t = ReadyToTransfer {
            lun: w.lun_wire,
            initiator_task_tag: w.itt,
            target_transfer_tag: ttt,
            sequence: Sequence::default(),
            r2t_sn: w.r2t_sn,
            buffer_offset: w.received,
            desired_data_transfer_length: burst,
        };
        w.r2t_sn = w.r2t_sn.wrapping_add(1);
        let mut r2t = r2t;
        r2t.sequence = self.plain_sequence();
        self.queue_pdu(|bhs| r2t.write(bhs), OutData::None, None, false, ctx);
    }

    /// Charges what a task just taken holds to the budgets. A charge still standing on the
    /// same task belonged to one the layer gave back itself (aborted): it is returned first.
    pub(super) fn charge(&mut self, lun: usize, task: usize) {
        self.uncharge(lun, task);
        let bytes = self.luns[lun].scsi.buffer_bytes(task);
        if bytes > 0 && self.budget.try_charge(bytes, true) {
            self.charged[lun * SCSI_TASKS_PER_LUN + task] = bytes;
            self.buffer_bytes += bytes;
        }
    }

    pub(super) fn uncharge(&mut self, lun: usize, task: usize) {
        if let Some(charged) = self.charged.get_mut(lun * SCSI_TASKS_PER_LUN + task) {
            let bytes = std::mem::take(charged);
            self.buffer_bytes -= bytes;
            self.budget.release(bytes);
        }
    }

    /// Returns the charges of tasks the layer gave back itself (aborted).
    pub(super) fn uncharge_freed(&mut self) {
        for lun in 0..self.luns.len() {
            for task in 0..SCSI_TASKS_PER_LUN {
                if self.charged[lun * SCSI_TASKS_PER_LUN + task] > 0
                    && !self.luns[lun].scsi.task_in_use(task)
                {
                    self.uncharge(lun, task);
                }
            }
        }
    }

    pub(super) fn skip(&mut self, bytes: usize) {
        let left = self.recv.discard(bytes);
        if left > 0 {
            self.inbound = Inbound::Discard { remaining: left };
        }
    }
}
