//! Answering: finished tasks become Data-In (with the status collapsed into the last) or
//! SCSI Response PDUs, built in the session's pool and gathered into one `sendmsg`; a task
//! is released once its last PDU has gone out.

use super::*;

/// Where an outgoing PDU's data segment comes from.
pub(super) enum OutData {
    None,
    /// Part of a task's Data-In.
    Task {
        lun: u16,
        task: u16,
        offset: u32,
        len: u32,
    },
    /// `inline[..len]` of the PDU itself (sense with its length, a rejected header).
    Inline(usize),
    /// A control answer's own bytes (REPORT LUNS to an absent LUN, a NOP-In echo, text).
    Owned(Vec<u8>),
}

/// An outgoing PDU, built in the session's pool.
pub(super) struct OutPdu {
    /// BHS and, if negotiated, its digest.
    pub(super) header: [u8; BHS_BYTES + DIGEST_BYTES],
    pub(super) header_len: usize,
    pub(super) data: OutData,
    pub(super) inline: [u8; INLINE_BYTES],
    /// Padding and, if negotiated, the data digest.
    pub(super) trailer: [u8; 3 + DIGEST_BYTES],
    pub(super) trailer_len: usize,
    /// The task whose answer this PDU ends: released once it has gone out.
    pub(super) release: Option<(u16, u16)>,
    /// The connection ends once this PDU has gone out (Logout Response, fatal Reject).
    pub(super) close_after: bool,
}

impl OutPdu {
    pub(super) fn new() -> Self {
        Self {
            header: [0; BHS_BYTES + DIGEST_BYTES],
            header_len: BHS_BYTES,
            data: OutData::None,
            inline: [0; INLINE_BYTES],
            trailer: [0; 3 + DIGEST_BYTES],
            trailer_len: 0,
            release: None,
            close_after: false,
        }
    }
}

/// A finished task whose answer is still to be built (Data-In first, then status).
#[derive(Clone, Copy)]
pub(super) struct Answer {
    pub(super) lun: u16,
    pub(super) done: TaskDone,
    pub(super) lun_wire: u64,
    /// Data-In bytes to send: the task's data, cut to what the initiator expects.
    pub(super) data_len: u32,
    pub(super) sent: u32,
    pub(super) data_sn: u32,
    pub(super) residual: Residual,
    /// The status goes in the last Data-In (GOOD, no sense, some data).
    pub(super) collapsed: bool,
}

impl IscsiSession {
    /// Queues the answers of every task the LUNs have finished.
    pub(super) fn drain_done(&mut self, ctx: &mut SessionContext) {
        for index in 0..self.luns.len() {
            while let Some(done) = self.luns[index].scsi.pop_done() {
                let wire = scsi::encode_lun(self.luns[index].number);
                let lun_wire = u64::from_be_bytes(wire);
                let available = done.data_in_len;
                let data_len = available;
                let collapsed = done.status == scsi::status::GOOD && data_len > 0;
                self.answers.push_back(Answer {
                    lun: index as u16,
                    done,
                    lun_wire,
                    data_len,
                    sent: 0,
                    data_sn: 0,
                    residual: scsi_residual(done.residual),
                    collapsed,
                });
            }
        }
        self.build_answers(ctx);
        if self.stalled {
            self.stalled = false;
            self.process_input(ctx);
        }
    }

    /// Turns queued answers into PDUs while the pool has room.
    pub(super) fn build_answers(&mut self, ctx: &mut SessionContext) {
        let chunk = self
            .params
            .max_xmit_data_segment_length
            .min(self.params.max_burst_length)
            .max(512);
        while let Some(answer) = self.answers.front().copied() {
            // Keep some PDUs for control answers (R2T, NOP-In, Reject, task management).
            if self.free_out.len() <= ISCSI_CONTROL_PDUS {
                break;
            }
            let mut answer = answer;
            if answer.sent < answer.data_len {
                let len = (answer.data_len - answer.sent).min(chunk);
                let last = answer.sent + len == answer.data_len;
                let burst_end = (answer.sent + len) % self.params.max_burst_length == 0;
                let status = (last && answer.collapsed).then_some(answer.done.status);
                let sequence = if status.is_some() {
                    self.status_sequence()
                } else {
                    self.plain_sequence()
                };
                let data_in = DataIn {
                    final_: last || burst_end,
                    acknowledge: false,
                    status,
                    residual: answer.residual,
                    data_segment_length: len,
                    lun: answer.lun_wire,
                    initiator_task_tag: answer.done.itt,
                    target_transfer_tag: RESERVED_TAG,
                    sequence,
                    data_sn: answer.data_sn,
                    buffer_offset: answer.sent,
                };
                let release =
                    (last && answer.collapsed).then_some((answer.lun, answer.done.task as u16));
                let data = OutData::Task {
                    lun: answer.lun,
                    task: answer.done.task as u16,
                    offset: answer.sent,
                    len,
                };
                self.queue_pdu(|bhs| data_in.write(bhs), data, release, false, ctx);
                answer.sent += len;
                answer.data_sn += 1;
                if last && answer.collapsed {
                    self.answers.pop_front();
                } else if let Some(front) = self.answers.front_mut() {
                    *front = answer;
                }
                continue;
            }
            // The status, in its own PDU.
            self.answers.pop_front();
            let lun = usize::from(answer.lun);
            let task = answer.done.task;
            let segment = sense_segment(self.luns[lun].scsi.sense(task));
            self.queue_scsi_response(
                answer.done.itt,
                answer.done.status,
                answer.residual,
                answer.data_sn,
                segment,
                Some((answer.lun, task as u16)),
            );
        }
        self.post_send(ctx);
    }

    /// An answer from no task: REPORT LUNS or INQUIRY to a LUN the host has no VP at.
    pub(super) fn queue_control_answer(
        &mut self,
        command: &ScsiCommand,
        status: u8,
        data: Vec<u8>,
        sense: &[u8],
        residual: Residual,
    ) {
        if !data.is_empty() && status == scsi::status::GOOD {
            let data_in = DataIn {
                final_: true,
                acknowledge: false,
                status: Some(status),
                residual,
                data_segment_length: data.len() as u32,
                lun: command.lun,
                initiator_task_tag: command.initiator_task_tag,
                target_transfer_tag: RESERVED_TAG,
                sequence: self.status_sequence(),
                data_sn: 0,
                buffer_offset: 0,
            };
            self.queue_pdu_no_ctx(|bhs| data_in.write(bhs), OutData::Owned(data), false);
            return;
        }
        let segment = sense_segment(sense);
        self.queue_scsi_response(
            command.initiator_task_tag,
            status,
            residual,
            0,
            segment,
            None,
        );
    }

    /// Queues a SCSI Response carrying `segment` (see [`sense_segment`]); `release` is the
    /// task it ends.
    fn queue_scsi_response(
        &mut self,
        itt: u32,
        status: u8,
        residual: Residual,
        exp_data_sn: u32,
        (inline, len): ([u8; INLINE_BYTES], usize),
        release: Option<(u16, u16)>,
    ) {
        let response = ScsiResponse {
            response: 0,
            status,
            residual,
            data_segment_length: len as u32,
            initiator_task_tag: itt,
            sequence: self.status_sequence(),
            exp_data_sn,
        };
        if let Some(index) =
            self.queue_pdu_no_ctx(|bhs| response.write(bhs), OutData::Inline(len), false)
        {
            self.out[index].inline = inline;
            self.out[index].release = release;
            self.finish_trailer(index);
        }
    }

    pub(super) fn queue_reject(&mut self, bhs: &Bhs, reason: u8, close_after: bool) {
        let answer = Reject {
            reason,
            sequence: self.status_sequence(),
            data_sn: 0,
        };
        if let Some(index) = self.queue_pdu_no_ctx(
            |out| answer.write(out),
            OutData::Inline(BHS_BYTES),
            close_after,
        ) {
            self.out[index].inline[..BHS_BYTES].copy_from_slice(bhs);
            self.finish_trailer(index);
        }
    }

    /// A PDU the initiator may not send here: Reject, then the connection ends (RFC 7143
    /// ErrorRecoveryLevel 0). Nothing more is read.
    pub(super) fn reject_and_close(&mut self, bhs: &Bhs, reason: u8, why: &str) {
        log::debug!("iscsi {}: {why}: rejected, closing", self.peer);
        self.queue_reject(bhs, reason, true);
        self.stalled = true;
        self.inbound = Inbound::Discard {
            remaining: usize::MAX,
        };
    }

    pub(super) fn queue_pdu(
        &mut self,
        write: impl FnOnce(&mut Bhs),
        data: OutData,
        release: Option<(u16, u16)>,
        close_after: bool,
        _ctx: &mut SessionContext,
    ) -> Option<usize> {
        let index = self.queue_pdu_no_ctx(write, data, close_after)?;
        self.out[index].release = release;
        self.finish_trailer(index);
        Some(index)
    }

    /// Builds a PDU in the pool and queues it to send. `None` (and the connection closes)
    /// when the pool is exhausted by PDUs no answer is waiting on, which only an initiator
    /// that never reads can cause.
    pub(super) fn queue_pdu_no_ctx(
        &mut self,
        write: impl FnOnce(&mut Bhs),
        data: OutData,
        close_after: bool,
    ) -> Option<usize> {
        let Some(index) = self.free_out.pop() else {
            self.close("outgoing PDUs not being read");
            return None;
        };
        let header_digest = self.params.header_digest;
        let out = &mut self.out[index];
        let mut bhs = [0u8; BHS_BYTES];
        write(&mut bhs);
        out.header[..BHS_BYTES].copy_from_slice(&bhs);
        out.header_len = BHS_BYTES;
        if header_digest {
            out.header[BHS_BYTES..].copy_from_slice(&digest::digest(&bhs));
            out.header_len = BHS_BYTES + DIGEST_BYTES;
        }
        out.data = data;
        out.release = None;
        out.close_after = close_after;
        out.trailer_len = 0;
        self.out_queue.push_back(index);
        Some(index)
    }

    /// Fills a queued PDU's padding and data digest, once its data is in place.
    pub(super) fn finish_trailer(&mut self, index: usize) {
        let data_digest = self.params.data_digest;
        let data = data_of(&self.luns, &self.out[index]);
        let padding = pdu::padding(data.len() as u32);
        let mut trailer = [0u8; 3 + DIGEST_BYTES];
        let mut trailer_len = padding;
        if data_digest && !data.is_empty() {
            let zeros = [0u8; 3];
            trailer[padding..padding + DIGEST_BYTES]
                .copy_from_slice(&digest::digest_of(&[data, &zeros[..padding]]));
            trailer_len += DIGEST_BYTES;
        }
        let out = &mut self.out[index];
        out.trailer = trailer;
        out.trailer_len = trailer_len;
    }

    pub(super) fn post_send(&mut self, ctx: &mut SessionContext) {
        if self.send.is_posted() || self.defer_send || self.out_queue.is_empty() {
            return;
        }
        self.sending.clear();
        self.send.clear();
        while let Some(&index) = self.out_queue.front() {
            if self.send.room() < 3 {
                break;
            }
            self.out_queue.pop_front();
            let out = &self.out[index];
            self.send.push(&out.header[..out.header_len]);
            self.send.push(data_of(&self.luns, out));
            self.send.push(&out.trailer[..out.trailer_len]);
            self.sending.push(index);
        }
        self.submit_send(ctx);
    }

    pub(super) fn submit_send(&mut self, ctx: &mut SessionContext) {
        let fd = self.fd();
        // SAFETY: the pieces gathered (PDUs of the pool, task buffers not released before
        // their last PDU is sent) belong to this session and stay untouched until the send
        // completes.
        let submitted = unsafe { self.send.submit(ctx, fd, TAG_SEND, &mut self.ring_pending) };
        if let Err(error) = submitted {
            self.close(&format!("cannot post a send: {error}"));
        }
    }

    pub(super) fn on_sent(&mut self, result: i32, ctx: &mut SessionContext) {
        if result <= 0 {
            self.send.failed();
            self.close("send failed");
            self.release_sending();
            return;
        }
        if self.send.complete(result as usize) == Sent::Partial {
            self.submit_send(ctx);
            return;
        }
        let close_after = self.release_sending();
        if close_after {
            self.close("logged out");
            return;
        }
        self.build_answers(ctx);
        self.maybe_logout(ctx);
        self.post_send(ctx);
        if self.stalled {
            self.stalled = false;
            self.process_input(ctx);
        }
    }

    /// Gives back the PDUs that went out and the tasks they ended. Whether one of them
    /// ends the connection.
    pub(super) fn release_sending(&mut self) -> bool {
        let mut close_after = false;
        for i in 0..self.sending.len() {
            let index = self.sending[i];
            let out = &mut self.out[index];
            close_after |= out.close_after;
            out.data = OutData::None;
            if let Some((lun, task)) = out.release.take() {
                let (lun, task) = (usize::from(lun), usize::from(task));
                self.luns[lun].scsi.release(task);
                self.uncharge(lun, task);
            }
            self.free_out.push(index);
        }
        self.sending.clear();
        close_after
    }
}

/// The data segment of a SCSI Response: SenseLength and the sense bytes, or nothing when there
/// is no sense.
fn sense_segment(sense: &[u8]) -> ([u8; INLINE_BYTES], usize) {
    let mut inline = [0u8; INLINE_BYTES];
    let len = sense.len().min(INLINE_BYTES - 2);
    if len == 0 {
        return (inline, 0);
    }
    inline[..2].copy_from_slice(&(len as u16).to_be_bytes());
    inline[2..2 + len].copy_from_slice(&sense[..len]);
    (inline, 2 + len)
}

/// The data segment of an outgoing PDU, wherever it lies.
fn data_of<'a>(luns: &'a [Lun], out: &'a OutPdu) -> &'a [u8] {
    match &out.data {
        OutData::None => &[],
        OutData::Task {
            lun,
            task,
            offset,
            len,
        } => {
            let all = luns[usize::from(*lun)].scsi.data_in(usize::from(*task));
            &all[*offset as usize..(*offset + *len) as usize]
        }
        OutData::Inline(len) => &out.inline[..*len],
        OutData::Owned(bytes) => bytes,
    }
}
