//! Receiving: PDUs out of the receive buffer, each common header checked before anything it
//! announces is trusted; a command capsule to its namespace's engine; a write's data —
//! in the capsule or in H2CData after an R2T — straight into its request's buffer, with the
//! buffer budgets charged per request.

use super::io_commands::{self, DataFlow, Plan};
use super::*;
use crate::blockio::{BlockOp, BlockRequest, BlockStatus};
use crate::constants::{
    MAX_BUFFER_BYTES_PER_CONNECTION, NVMF_IN_CAPSULE_DATA_BYTES, NVMF_MAX_H2C_DATA_BYTES,
};
use crate::nvmf::command::{Command, FABRICS, FCTYPE_CONNECT, FCTYPE_DISCONNECT};
use crate::nvmf::pdu::{
    self, DataHeader, Direction, Framing, Header, PduError, PduType, COMMON_HEADER_BYTES,
};
use crate::nvmf::status;
use crate::target::recv_buffer;

impl IoQueue {
    pub(super) fn post_recv(&mut self, ctx: &mut SessionContext) {
        if self.recv.is_posted() || self.closing || self.terminating {
            return;
        }
        let (direct, kind) = match self.inbound {
            Inbound::Data {
                g,
                offset,
                len,
                got,
            } => {
                let Some(buf) = Self::data_buffer(&mut self.namespaces, &mut self.compare, g)
                else {
                    self.close("data for a command that is gone");
                    return;
                };
                let Some(window) =
                    recv_buffer::data_window(buf, (offset + got) as usize, (offset + len) as usize)
                else {
                    self.close("data past the request's buffer");
                    return;
                };
                (Some(window), TAG_DATA)
            }
            Inbound::Headers | Inbound::Trailer { .. } | Inbound::Discard { .. } => {
                (None, TAG_RECV)
            }
        };
        let fd = self.fd();
        // SAFETY: the buffer is this queue's (or its engine slot's, which is not released
        // while its data is arriving), and the queue outlives the completion: the reactor
        // drops a session only when is_finished(), with nothing on the ring.
        let posted = unsafe {
            self.recv
                .post(ctx, fd, direct, kind, &mut self.ring_pending)
        };
        if let Err(error) = posted {
            self.close(&error.to_string());
        }
    }

    /// A receive straight into a slot's buffer brought `bytes`.
    pub(super) fn data_received(&mut self, bytes: u32, ctx: &mut SessionContext) {
        if let Inbound::Data {
            g,
            offset,
            len,
            got,
        } = self.inbound
        {
            let got = got + bytes;
            self.inbound = if got < len {
                Inbound::Data {
                    g,
                    offset,
                    len,
                    got,
                }
            } else {
                Inbound::Trailer { g, offset, len }
            };
        }
        self.process_input(ctx);
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
            if self.closing || self.terminating {
                return;
            }
            match self.inbound {
                Inbound::Data { .. } => break,
                Inbound::Discard { remaining } => {
                    let left = self.recv.discard(remaining);
                    if left > 0 {
                        self.inbound = Inbound::Discard { remaining: left };
                        break;
                    }
                    self.inbound = Inbound::Headers;
                }
                Inbound::Trailer { g, offset, len } => {
                    if !self.take_trailer(g, offset, len, ctx) {
                        break;
                    }
                }
                Inbound::Headers => {
                    if self.stalled || !self.take_pdu(ctx) {
                        break;
                    }
                }
            }
        }
        self.recv.tidy(COMMON_HEADER_BYTES + 256);
        // A command waiting for a slot or buffers holds the rest back: TCP's flow control
        // stops the host, rather than the receive buffer filling up.
        if !self.stalled {
            self.post_recv(ctx);
        }
    }

    /// A stalled command may go on: its resources came back.
    pub(super) fn unstall(&mut self, ctx: &mut SessionContext) {
        if self.stalled && !self.terminating {
            self.stalled = false;
            self.process_input(ctx);
        }
    }

    /// Parses and handles one PDU. Returns false when it must wait for more bytes (or for a
    /// resource to free up).
    fn take_pdu(&mut self, ctx: &mut SessionContext) -> bool {
        let pending = self.recv.pending();
        if pending.len() < COMMON_HEADER_BYTES {
            return false;
        }
        let framing =
            match pdu::parse_header(pending, Direction::HostToController, &self.negotiated) {
                Ok(framing) => framing,
                Err(error) => {
                    // The header in error, as long as it says it is (within reason).
                    let claimed = usize::from(pending[2]).max(COMMON_HEADER_BYTES);
                    self.terminate(&error, claimed);
                    return false;
                }
            };
        // Each type's own limit on its data (parse_header checked the larger of the two).
        let limit = match framing.pdu_type {
            PduType::CapsuleCmd => NVMF_IN_CAPSULE_DATA_BYTES,
            _ => NVMF_MAX_H2C_DATA_BYTES as usize,
        };
        if framing.data_bytes > limit {
            let error = PduError::DataTooLong {
                pdu_type: framing.pdu_type,
                data_bytes: framing.data_bytes,
                max_bytes: limit,
            };
            self.terminate(&error, framing.header_bytes);
            return false;
        }
        let header_bytes = framing.data_offset_bytes;
        if self.recv.len() < header_bytes {
            return false;
        }
        let header = match pdu::decode_header(self.recv.pending(), &framing) {
            Ok(header) => header,
            Err(error) => {
                self.terminate(&error, framing.header_bytes);
                return false;
            }
        };
        match header {
            Header::CapsuleCmd(command) => self.take_capsule(&command, &framing, ctx),
            Header::H2CData(data) => self.take_h2c_data(&data, &framing),
            Header::H2CTermReq(term) => {
                log::debug!(
                    "nvmf {} (qid {}): the host ended the connection (FES {:#x}, FEI {:#x})",
                    self.peer,
                    self.qid,
                    term.fes,
                    term.fei
                );
                self.close("termination request from the host");
                false
            }
            // ICReq was the handshake's; anything else travels the other way.
            _ => {
                self.terminate(
                    &PduError::WrongDirection(framing.pdu_type),
                    framing.header_bytes,
                );
                false
            }
        }
    }

    /// Ends the connection over a PDU that breaks the transport's rules: a C2HTermReq that
    /// says why (with up to 128 bytes of the header in error), sent after what is queued,
    /// then the connection closes. Nothing more is read.
    pub(super) fn terminate(&mut self, error: &PduError, header_bytes: usize) {
        log::debug!(
            "nvmf {} (qid {}): {error}: terminating the connection",
            self.peer,
            self.qid
        );
        let copy = header_bytes
            .min(self.recv.len())
            .min(pdu::TERM_REQ_MAX_DATA_BYTES);
        let mut offending = [0u8; pdu::TERM_REQ_MAX_DATA_BYTES];
        offending[..copy].copy_from_slice(&self.recv.pending()[..copy]);
        let header = Header::C2HTermReq(pdu::TermReq::for_error(error));
        match pdu::encode_header(&header, copy, &self.negotiated, &mut self.term) {
            Ok(layout) => {
                self.term[layout.header_bytes..layout.header_bytes + copy]
                    .copy_from_slice(&offending[..copy]);
                self.term_len = layout.total_bytes;
                self.out_queue.push_back(OutItem::Term);
            }
            Err(_) => {
                self.close("cannot build the termination request");
                return;
            }
        }
        self.terminating = true;
        self.stalled = true;
    }

    /// A command capsule: its command to its namespace's engine (or answered at once), its
    /// in-capsule data into the request's buffer. Returns false when it must wait.
    fn take_capsule(
        &mut self,
        command: &Command,
        framing: &Framing,
        ctx: &mut SessionContext,
    ) -> bool {
        let header_bytes = framing.data_offset_bytes;
        let rest_bytes = framing.data_bytes + framing.data_digest_bytes;
        let location = match pdu::data_location(
            command,
            framing.data_bytes,
            NVMF_IN_CAPSULE_DATA_BYTES as u32,
        ) {
            Ok(location) => location,
            Err(status) => return self.answer_at_once(command, status, framing, false),
        };
        if command.opcode() == FABRICS {
            return match command.fctype() {
                // NVMe-oF 1.1: Disconnect ends this queue (only it).
                FCTYPE_DISCONNECT => self.answer_at_once(command, status::SUCCESS, framing, true),
                FCTYPE_CONNECT => {
                    self.answer_at_once(command, status::COMMAND_SEQUENCE_ERROR, framing, false)
                }
                _ => self.answer_at_once(command, status::INVALID_OPCODE, framing, false),
            };
        }
        let Some(position) = self.namespace(command.nsid()) else {
            // Broadcast (FFFFFFFFh) included: flushing every namespace at once is not
            // supported (Identify's VWC says so).
            return self.answer_at_once(
                command,
                status::INVALID_NAMESPACE_OR_FORMAT,
                framing,
                false,
            );
        };
        let block_bytes = self.namespaces[position].block_bytes;
        let plan = match io_commands::plan(command, location, block_bytes) {
            Ok(plan) => plan,
            Err(status) => return self.answer_at_once(command, status, framing, false),
        };
        let (request, flow, compare) = match plan {
            Plan::Nothing => return self.answer_at_once(command, status::SUCCESS, framing, false),
            Plan::Deallocate { ranges } => {
                return self.take_deallocate(command, framing, position, ranges, ctx)
            }
            Plan::Block { request, data } => (request, data, false),
            Plan::Compare { request, data } => (request, data, true),
        };
        if compare && self.compare.free.is_empty() {
            self.stalled = true;
            return false;
        }
        if self.namespaces[position].engine.ring_blocked(ctx) {
            // Back-pressure: requests already taken wait for ring credit.
            self.stalled = true;
            return false;
        }
        let namespace = &mut self.namespaces[position];
        let Some(decision) = namespace.engine.decide() else {
            self.close("a virtual path of its host was deleted");
            return false;
        };
        let admitted = namespace.engine.admit(&request, &decision);
        // A Compare holds the host's data too: twice the read's bytes.
        let charge_bytes = match (admitted.is_ok(), compare) {
            (false, _) => 0,
            (true, false) => request.buffer_bytes(),
            (true, true) => 2 * request.buffer_bytes(),
        };
        // Past this queue's share of buffers it waits for its own answers to drain; past the
        // server's too, unless it holds nothing (then it always gets this one request).
        if !namespace.engine.has_free_slot()
            || (charge_bytes > 0
                && self.buffer_bytes > 0
                && self.buffer_bytes + charge_bytes > MAX_BUFFER_BYTES_PER_CONNECTION)
        {
            self.stalled = true;
            return false;
        }
        if charge_bytes > 0 && !self.budget.try_charge(charge_bytes, self.buffer_bytes == 0) {
            self.stalled = true;
            return false;
        }
        let reserved = match admitted {
            Ok(admission) => namespace.engine.reserve(request, admission),
            Err(outcome) => namespace.engine.refuse(request, outcome),
        };
        let Some(slot) = reserved else {
            self.budget.release(charge_bytes);
            self.close("no request slot");
            return false;
        };
        self.buffer_bytes += charge_bytes;
        let state = &mut namespace.commands[slot];
        state.cid = command.cid();
        state.op = request.op;
        state.charged_bytes = charge_bytes;
        state.solicited_bytes = 0;
        state.received_bytes = 0;
        state.status_override = None;
        state.dsm = None;
        state.compare = None;
        if compare && admitted.is_ok() {
            // Its buffer grows to this compare's length if it is the largest yet.
            if let Some(index) = self.compare.free.pop() {
                let buffer = &mut self.compare.data[usize::from(index)];
                if buffer.len() < request.length_bytes as usize {
                    buffer.resize(request.length_bytes as usize, 0);
                }
                self.namespaces[position].commands[slot].compare = Some(index);
            }
        }
        self.take_sq_entry();
        self.recv.consume(header_bytes);
        let g = Self::global(position, slot);
        if admitted.is_err() {
            // Refused: finished already; what it brought is dropped.
            if rest_bytes > 0 {
                self.inbound = Inbound::Discard {
                    remaining: rest_bytes,
                };
            }
            self.drain_finished(ctx);
            return true;
        }
        match flow {
            DataFlow::InCapsule => {
                self.copy_buffered(g, 0, request.length_bytes);
            }
            DataFlow::Solicit => {
                self.namespaces[position].commands[slot].solicited_bytes = request.length_bytes;
                self.queue_r2t(g, request.length_bytes);
            }
            DataFlow::None | DataFlow::Send => {
                self.namespaces[position].engine.start(slot, ctx);
                self.drain_finished(ctx);
            }
        }
        true
    }

    /// The submission queue's head moves past one capsule.
    fn take_sq_entry(&mut self) {
        self.sq_head = (self.sq_head + 1) % self.sq_entries.max(1);
    }

    /// Answers `command` with `status` without running it (the whole capsule is dropped);
    /// with `close_after`, the connection ends once the answer has gone out. Returns false
    /// when no control answer is free (the command waits).
    fn answer_at_once(
        &mut self,
        command: &Command,
        status: Status,
        framing: &Framing,
        close_after: bool,
    ) -> bool {
        let Some(index) = self.free_control.pop() else {
            self.stalled = true;
            return false;
        };
        self.take_sq_entry();
        self.recv.consume(framing.data_offset_bytes);
        let rest = framing.data_bytes + framing.data_digest_bytes;
        if rest > 0 {
            self.inbound = Inbound::Discard { remaining: rest };
        }
        let completion = self.completion(command.cid(), status);
        let negotiated = self.negotiated;
        let answer = &mut self.control[usize::from(index)];
        match pdu::encode_header(
            &Header::CapsuleResp(completion),
            0,
            &negotiated,
            &mut answer.resp,
        ) {
            Ok(layout) => {
                answer.len = layout.header_bytes;
                answer.close_after = close_after;
                self.out_queue.push_back(OutItem::Control(index));
            }
            Err(_) => {
                self.free_control.push(index);
                self.close("cannot build a response capsule");
                return false;
            }
        }
        true
    }

    /// Dataset Management with deallocate: the ranges (in the capsule) are kept in one of the
    /// queue's range buffers and run one after the other through one engine slot.
    fn take_deallocate(
        &mut self,
        command: &Command,
        framing: &Framing,
        position: usize,
        ranges: usize,
        ctx: &mut SessionContext,
    ) -> bool {
        let total = framing.total_bytes;
        if self.recv.len() < total {
            // The ranges (at most 4 KiB) are taken whole from the receive buffer.
            return false;
        }
        if self.dsm.free.is_empty() || !self.namespaces[position].engine.has_free_slot() {
            self.stalled = true;
            return false;
        }
        let data_range = framing.data_offset_bytes..framing.data_end();
        if framing.data_digest_bytes > 0 {
            let raw = self.recv.pending();
            let digest = &raw[framing.data_end()..framing.data_end() + DIGEST_BYTES];
            if pdu::check_data_digest(&[&raw[data_range.clone()]], digest).is_err() {
                return self.answer_at_once(
                    command,
                    status::TRANSIENT_TRANSPORT_ERROR,
                    framing,
                    false,
                );
            }
        }
        let Some(buffer) = self.dsm.free.pop() else {
            return false;
        };
        let bytes = (ranges * io_commands::DSM_RANGE_BYTES).min(data_range.len());
        self.dsm.data[usize::from(buffer)][..bytes]
            .copy_from_slice(&self.recv.pending()[data_range.start..data_range.start + bytes]);
        self.take_sq_entry();
        self.recv.consume(total);
        let state = DsmState {
            buffer,
            next: 0,
            ranges: ranges as u16,
        };
        self.next_dsm_range(position, command.cid(), state, ctx);
        true
    }

    /// Runs the next non-empty range of a Dataset Management command in a slot of its
    /// namespace's engine (one is free: the caller checked, or just released one). When none
    /// is left, or a range is refused, the slot finishes with the command's status.
    pub(super) fn next_dsm_range(
        &mut self,
        position: usize,
        cid: u16,
        mut state: DsmState,
        ctx: &mut SessionContext,
    ) {
        let namespace = &mut self.namespaces[position];
        let data = &self.dsm.data[usize::from(state.buffer)];
        let mut request = None;
        let mut refused = None;
        while state.next < state.ranges && request.is_none() {
            match io_commands::dsm_range(data, usize::from(state.next), namespace.block_bytes) {
                Ok(Some(range)) => request = Some(range),
                Ok(None) => {}
                Err(status) => {
                    refused = Some(status);
                    break;
                }
            }
            state.next += 1;
        }
        let decision = namespace.engine.decide();
        let placeholder = BlockRequest {
            op: BlockOp::Trim,
            offset_bytes: 0,
            length_bytes: 0,
            fua: false,
        };
        let (reserved, run, status_override) = match (request, refused, decision) {
            (_, _, None) => (
                namespace.engine.refuse(placeholder, BlockStatus::ShutDown),
                false,
                None,
            ),
            (_, Some(status), _) => (
                namespace.engine.refuse(placeholder, BlockStatus::Invalid),
                false,
                Some(status),
            ),
            (Some(range), None, Some(decision)) => {
                match namespace.engine.admit(&range, &decision) {
                    Ok(admission) => (namespace.engine.reserve(range, admission), true, None),
                    Err(outcome) => (namespace.engine.refuse(range, outcome), false, None),
                }
            }
            // Every range left was empty: the command is done, successfully.
            (None, None, Some(_)) => (
                namespace.engine.refuse(placeholder, BlockStatus::Ok),
                false,
                None,
            ),
        };
        let Some(slot) = reserved else {
            self.dsm.free.push(state.buffer);
            self.close("no request slot for a range");
            return;
        };
        let command = &mut namespace.commands[slot];
        command.cid = cid;
        command.op = BlockOp::Trim;
        command.charged_bytes = 0;
        command.solicited_bytes = 0;
        command.received_bytes = 0;
        command.status_override = status_override;
        command.dsm = Some(state);
        if run {
            namespace.engine.start(slot, ctx);
        }
        self.drain_finished(ctx);
    }

    /// An H2CData PDU: the next piece of a write's solicited data, straight into its buffer.
    fn take_h2c_data(&mut self, data: &DataHeader, framing: &Framing) -> bool {
        let g = data.transfer_tag;
        let (position, slot) = Self::split(g);
        let waiting = self
            .namespaces
            .get(position)
            .map(|n| &n.commands[slot])
            .filter(|c| c.solicited_bytes > 0 && c.cid == data.command_id);
        let Some(command) = waiting else {
            // Data no R2T asked for.
            self.terminate(
                &PduError::Unexpected(PduType::H2CData),
                framing.header_bytes,
            );
            return false;
        };
        let end = u64::from(data.offset_bytes) + u64::from(data.length_bytes);
        if data.offset_bytes != command.received_bytes || end > u64::from(command.solicited_bytes) {
            // Data outside what the R2T asked for, or out of order.
            self.terminate(&PduError::DataOutOfRange, framing.header_bytes);
            return false;
        }
        if data.last != (end == u64::from(command.solicited_bytes)) {
            self.terminate(
                &PduError::Flags {
                    pdu_type: PduType::H2CData,
                    flags: framing.flags,
                },
                framing.header_bytes,
            );
            return false;
        }
        self.recv.consume(framing.data_offset_bytes);
        self.copy_buffered(g, data.offset_bytes, data.length_bytes);
        true
    }

    /// Takes `len` bytes of a write's data at `offset` of its buffer: what the receive buffer
    /// already has is copied, the rest is received straight into it ([`Inbound::Data`]).
    fn copy_buffered(&mut self, g: u16, offset: u32, len: u32) {
        let have = self.recv.len().min(len as usize);
        let end = offset as usize + have;
        let copied = match Self::data_buffer(&mut self.namespaces, &mut self.compare, g) {
            Some(buf) if offset as usize + len as usize <= buf.len() => {
                buf[offset as usize..end].copy_from_slice(&self.recv.pending()[..have]);
                true
            }
            _ => false,
        };
        if !copied {
            self.close("data past the request's buffer");
            return;
        }
        self.recv.consume(have);
        self.inbound = if have < len as usize {
            Inbound::Data {
                g,
                offset,
                len,
                got: have as u32,
            }
        } else {
            Inbound::Trailer { g, offset, len }
        };
    }

    /// After a piece of a write's data: its digest checked, then the write runs once it has
    /// all its data.
    fn take_trailer(&mut self, g: u16, offset: u32, len: u32, ctx: &mut SessionContext) -> bool {
        let (position, slot) = Self::split(g);
        if self.negotiated.data_digest {
            if self.recv.len() < DIGEST_BYTES {
                return false;
            }
            let mut received = [0u8; DIGEST_BYTES];
            received.copy_from_slice(&self.recv.pending()[..DIGEST_BYTES]);
            self.recv.consume(DIGEST_BYTES);
            let matches = match Self::data_buffer(&mut self.namespaces, &mut self.compare, g) {
                Some(buf) => {
                    let data = &buf[offset as usize..(offset + len) as usize];
                    pdu::check_data_digest(&[data], &received).is_ok()
                }
                None => false,
            };
            if !matches {
                // TP 8000: the command fails with a transient transport error; the
                // connection goes on.
                self.namespaces[position].commands[slot].status_override =
                    Some(status::TRANSIENT_TRANSPORT_ERROR);
            }
        }
        self.inbound = Inbound::Headers;
        let namespace = &mut self.namespaces[position];
        let command = &mut namespace.commands[slot];
        command.received_bytes += len;
        let all = command.solicited_bytes == 0 || command.received_bytes >= command.solicited_bytes;
        if !all {
            return true;
        }
        command.solicited_bytes = 0;
        if command.status_override.is_some() {
            namespace.engine.fail(slot, BlockStatus::Invalid);
        } else {
            namespace.engine.start(slot, ctx);
        }
        self.drain_finished(ctx);
        true
    }
}
