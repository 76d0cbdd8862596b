//! Answering: R2Ts for writes, finished requests as C2HData (a read's data, from the engine's
//! buffer) and response capsules, built in their slot's own buffers and gathered into one
//! `sendmsg`; a slot is released once its answer has gone out.

use super::io_commands;
use super::*;
use crate::blockio::BlockStatus;
use crate::nvmf::command::Completion;
use crate::nvmf::pdu::{self, DataHeader, Header, R2t};
use crate::nvmf::status;
use crate::target::gather_send::Sent;

impl IoQueue {
    /// The completion of command `cid` with `status`, as this queue reports it.
    pub(super) fn completion(&self, cid: u16, status: Status) -> Completion {
        Completion {
            result: 0,
            // With SQ flow control disabled the field is reserved.
            sq_head: if self.sq_flow_control_disabled {
                0
            } else {
                self.sq_head
            },
            sq_id: self.qid,
            cid,
            status,
        }
    }

    /// Queues the R2T that asks for all `length_bytes` of global slot `g`'s write (one R2T
    /// per command: the host splits the data into H2CData PDUs of at most MAXH2CDATA).
    pub(super) fn queue_r2t(&mut self, g: u16, length_bytes: u32) {
        let (position, slot) = Self::split(g);
        let negotiated = self.negotiated;
        let command = &mut self.namespaces[position].commands[slot];
        let r2t = Header::R2T(R2t {
            command_id: command.cid,
            transfer_tag: g,
            offset_bytes: 0,
            length_bytes,
        });
        match pdu::encode_header(&r2t, 0, &negotiated, &mut command.head) {
            Ok(layout) => {
                command.head_len = layout.header_bytes;
                self.out_queue.push_back(OutItem::R2t(g));
            }
            Err(_) => self.close("cannot build an R2T"),
        }
    }

    /// Queues the answers of every request the engines have finished; a Dataset Management
    /// command whose range succeeded goes on with its next one instead.
    pub(super) fn drain_finished(&mut self, ctx: &mut SessionContext) {
        for position in 0..self.namespaces.len() {
            while let Some(done) = self.namespaces[position].engine.pop_finished() {
                let slot = done.slot;
                let command = &self.namespaces[position].commands[slot];
                if let Some(state) = command.dsm {
                    if done.status.is_ok()
                        && command.status_override.is_none()
                        && state.next < state.ranges
                        && !self.closing
                    {
                        let cid = command.cid;
                        self.namespaces[position].engine.release(slot);
                        self.next_dsm_range(position, cid, state, ctx);
                        continue;
                    }
                    self.dsm.free.push(state.buffer);
                    self.namespaces[position].commands[slot].dsm = None;
                }
                self.build_answer(position, slot, done.status);
            }
        }
        self.post_send(ctx);
    }

    /// Builds the answer of a finished request in its slot: a read's data in one C2HData PDU
    /// (with SUCCESS, and then no response capsule, when SQ flow control is disabled), and
    /// the response capsule.
    fn build_answer(&mut self, position: usize, slot: usize, outcome: BlockStatus) {
        let negotiated = self.negotiated;
        let sq_flow_control_disabled = self.sq_flow_control_disabled;
        let (cid, op, status_override, compare) = {
            let command = &self.namespaces[position].commands[slot];
            (
                command.cid,
                command.op,
                command.status_override,
                command.compare,
            )
        };
        let mut status = status_override.unwrap_or_else(|| io_commands::nvme_status(outcome, op));
        if let Some(index) = compare {
            // A Compare: the range read, then the host's data beside it; no data goes back.
            self.namespaces[position].commands[slot].compare = None;
            self.compare.free.push(index);
            let namespace = &self.namespaces[position];
            let read = namespace.engine.buffer(slot);
            let host = self.compare.data[usize::from(index)].get(..read.len());
            if status.is_success() && host != Some(read) {
                status = status::COMPARE_FAILURE;
            }
        }
        let completion = self.completion(cid, status);
        let namespace = &mut self.namespaces[position];
        let command = &mut namespace.commands[slot];
        command.head_len = 0;
        command.data_len = 0;
        command.ddgst_len = 0;
        command.resp_len = 0;
        let read_data = op == BlockOp::Read && compare.is_none() && status.is_success();
        if read_data {
            let data = namespace.engine.buffer(slot);
            let header = Header::C2HData(DataHeader {
                command_id: cid,
                transfer_tag: 0,
                offset_bytes: 0,
                length_bytes: data.len() as u32,
                last: true,
                success: sq_flow_control_disabled,
            });
            match pdu::encode_header(&header, data.len(), &negotiated, &mut command.head) {
                Ok(layout) => {
                    command.head_len = layout.header_bytes;
                    command.data_len = data.len();
                    if layout.data_digest {
                        command.ddgst = crate::digest::digest_of(&[data]);
                        command.ddgst_len = DIGEST_BYTES;
                    }
                }
                Err(_) => {
                    self.close("cannot build a C2HData PDU");
                    return;
                }
            }
        }
        if !(read_data && sq_flow_control_disabled) {
            match pdu::encode_header(
                &Header::CapsuleResp(completion),
                0,
                &negotiated,
                &mut command.resp,
            ) {
                Ok(layout) => command.resp_len = layout.header_bytes,
                Err(_) => {
                    self.close("cannot build a response capsule");
                    return;
                }
            }
        }
        self.out_queue
            .push_back(OutItem::Answer(Self::global(position, slot)));
    }

    pub(super) fn post_send(&mut self, ctx: &mut SessionContext) {
        if self.send.is_posted() || self.defer_send || self.out_queue.is_empty() {
            return;
        }
        self.sending.clear();
        self.send.clear();
        let Self {
            out_queue,
            send,
            sending,
            namespaces,
            control,
            term,
            term_len,
            ..
        } = self;
        while let Some(&item) = out_queue.front() {
            if send.room() < 4 {
                break;
            }
            out_queue.pop_front();
            match item {
                OutItem::R2t(g) => {
                    let (position, slot) = Self::split(g);
                    let command = &namespaces[position].commands[slot];
                    send.push(&command.head[..command.head_len]);
                }
                OutItem::Answer(g) => {
                    let (position, slot) = Self::split(g);
                    let namespace = &namespaces[position];
                    let command = &namespace.commands[slot];
                    send.push(&command.head[..command.head_len]);
                    if command.data_len > 0 {
                        send.push(&namespace.engine.buffer(slot)[..command.data_len]);
                    }
                    send.push(&command.ddgst[..command.ddgst_len]);
                    send.push(&command.resp[..command.resp_len]);
                }
                OutItem::Control(index) => {
                    let answer = &control[usize::from(index)];
                    send.push(&answer.resp[..answer.len]);
                }
                OutItem::Term => send.push(&term[..*term_len]),
            }
            sending.push(item);
        }
        self.submit_send(ctx);
    }

    fn submit_send(&mut self, ctx: &mut SessionContext) {
        let fd = self.fd();
        // SAFETY: the pieces gathered (the slots' and the queue's own buffers, engine buffers
        // of slots not released before their answer has gone out) belong to this queue and
        // stay untouched until the send completes.
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
        if self.release_sending() {
            return;
        }
        self.post_send(ctx);
        self.unstall(ctx);
    }

    /// Gives back what went out: slots of answered commands, control answers. Whether the
    /// connection ends now (a termination request or a Disconnect's answer went out).
    fn release_sending(&mut self) -> bool {
        let mut close = None;
        for i in 0..self.sending.len() {
            match self.sending[i] {
                OutItem::R2t(_) => {}
                OutItem::Answer(g) => {
                    let (position, slot) = Self::split(g);
                    let namespace = &mut self.namespaces[position];
                    let charged = std::mem::take(&mut namespace.commands[slot].charged_bytes);
                    namespace.engine.release(slot);
                    self.buffer_bytes -= charged;
                    self.budget.release(charged);
                }
                OutItem::Control(index) => {
                    if self.control[usize::from(index)].close_after {
                        close = Some("disconnected by the host");
                    }
                    self.free_control.push(index);
                }
                OutItem::Term => close = Some("terminated after a transport error"),
            }
        }
        self.sending.clear();
        if let Some(why) = close {
            self.close(why);
            return true;
        }
        false
    }
}
