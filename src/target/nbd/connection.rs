//! The NBD transmission phase of one connection, run by a reactor as a [`Session`]: framing,
//! payload receive and replies around the block engine (`crate::blockio`), which does the
//! request itself (domain decision, QoS, mapping, provisioning, LUN I/O, statistics).
//!
//! ```text
//!  recv (ring) ──▶ parse 28-byte headers, flags ──▶ engine: check, reserve slot k
//!                      │ write payload: straight into slot k's buffer
//!                      ▼
//!                 engine.start(k) ─ ─ ─ ▶ (LUN I/O on the ring, provisioner wakes)
//!                                                         │ finished (k, status)
//!  sendmsg (ring) ◀── replies gathered into one iovec batch ◀┘  status → NBD errno
//! ```
//!
//! Requests run concurrently; replies go out in completion order, batched into one
//! `sendmsg`. Each request that takes a buffer is charged once to the connection's and the
//! server's buffer budgets (`buffer_budget`) and given back when its slot is released. A
//! request the server cannot accept (out of range, misaligned, too large, unknown flags, a
//! write on a read-only export) gets NBD's errno and the connection goes on; a malformed
//! header (bad magic) closes only this connection.

use super::protocol::{self, Command, RequestHeader};
use super::session_slots::SessionTicket;
use crate::blockio::tag::{self, KIND_FRONT_END_FIRST};
use crate::blockio::{Admission, BlockEngine, BlockOp, BlockRequest, BlockStatus, EngineConfig};
use crate::constants::{
    MAX_BUFFER_BYTES_PER_CONNECTION, MAX_INFLIGHT_PER_CONNECTION,
    MAX_RETAINED_BUFFER_BYTES_PER_CONNECTION, NBD_RECV_BUFFER_BYTES,
};
use crate::domain::snapshot::Published;
use crate::domain::vpath::Vpath;
use crate::reactor::session::{Session, SessionContext};
use crate::target::buffer_budget::{BufferBudget, BUFFER_BUDGET};
use crate::target::gather_send::{GatherSend, Sent};
use crate::target::recv_buffer::RecvBuffer;
use crate::volume::provisioner::Provisioner;
use io_uring::types;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

const REQUEST_HEADER_BYTES: usize = 28;
const REPLY_HEADER_BYTES: usize = 16;

/// The session's own ring entries (the engine's are told apart by `tag::is_engine`).
const TAG_RECV: u64 = KIND_FRONT_END_FIRST;
const TAG_PAYLOAD: u64 = KIND_FRONT_END_FIRST + 1;
const TAG_SEND: u64 = KIND_FRONT_END_FIRST + 2;
const _: () = assert!(TAG_SEND <= tag::KIND_LAST);

/// What the NBD side keeps per engine slot.
#[derive(Clone, Copy)]
struct ReplySlot {
    cookie: u64,
    /// Bytes this request took from the connection's and the server's buffer budgets, given
    /// back exactly when the slot is released (0 for a refused request or one without data).
    charged_bytes: usize,
    reply: [u8; REPLY_HEADER_BYTES],
    /// Data bytes that follow the reply header (a successful read).
    data_bytes: usize,
}

/// What incoming bytes are for right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inbound {
    Headers,
    /// A write payload going straight into a slot's buffer: `got` of `need` bytes so far.
    Payload {
        slot: usize,
        got: usize,
        need: usize,
    },
    /// A payload the server refused; `remaining` bytes to read and drop.
    Discard {
        remaining: usize,
    },
}

pub struct NbdSession {
    socket: OwnedFd,
    /// The request engine: slots and buffers, VP decision, QoS, mapping, LUN I/O.
    engine: BlockEngine,
    recv: RecvBuffer,
    inbound: Inbound,
    replies: Vec<ReplySlot>,
    /// Bytes charged by this connection's requests in flight or replying (the sum of their
    /// slots' `charged_bytes`), at most MAX_BUFFER_BYTES_PER_CONNECTION.
    buffer_bytes: usize,
    /// The server-wide budget the same bytes are charged to.
    budget: &'static BufferBudget,
    /// A parsed request waiting for a slot or buffer budget, or for ring credit.
    stalled: bool,
    send_queue: VecDeque<usize>,
    sending: Vec<usize>,
    send: GatherSend,
    /// The session's own ring entries outstanding (receive and send).
    ring_pending: u32,
    closing: bool,
    finished: bool,
    peer: String,
    /// Its host's session, its place on the reactor and its open of the volume, given back
    /// when the session is dropped: a session a reactor refuses, or one that fails, never
    /// leaves the volume undeletable or the host's count high.
    _ticket: SessionTicket,
}

/// The engine's operation for an NBD command (`None`: one this server does not implement).
fn block_op(command: Command) -> Option<BlockOp> {
    match command {
        Command::Read => Some(BlockOp::Read),
        Command::Write => Some(BlockOp::Write),
        Command::Flush => Some(BlockOp::Flush),
        Command::Trim => Some(BlockOp::Trim),
        Command::WriteZeroes => Some(BlockOp::WriteZeroes),
        Command::Disconnect | Command::Other(_) => None,
    }
}

impl NbdSession {
    /// A session on `socket` through `vpath`, holding `ticket` (granted at NBD_OPT_GO) until
    /// it is dropped, whatever drops it.
    #[expect(
        clippy::too_many_arguments,
        reason = "each is a distinct part of the session"
    )]
    pub fn new(
        socket: OwnedFd,
        ticket: SessionTicket,
        vpath: Arc<Vpath>,
        path_hint: usize,
        published: Arc<Published>,
        provisioner: Provisioner,
        max_io_bytes: usize,
        peer: String,
    ) -> Self {
        let engine = BlockEngine::new(
            vpath,
            path_hint,
            published,
            provisioner,
            EngineConfig::front_end(
                0,
                MAX_INFLIGHT_PER_CONNECTION,
                max_io_bytes,
                MAX_RETAINED_BUFFER_BYTES_PER_CONNECTION,
            ),
        );
        Self {
            socket,
            engine,
            recv: RecvBuffer::new(NBD_RECV_BUFFER_BYTES),
            inbound: Inbound::Headers,
            replies: vec![
                ReplySlot {
                    cookie: 0,
                    charged_bytes: 0,
                    reply: [0; REPLY_HEADER_BYTES],
                    data_bytes: 0,
                };
                MAX_INFLIGHT_PER_CONNECTION
            ],
            buffer_bytes: 0,
            budget: &BUFFER_BUDGET,
            stalled: false,
            send_queue: VecDeque::with_capacity(MAX_INFLIGHT_PER_CONNECTION),
            sending: Vec::with_capacity(MAX_INFLIGHT_PER_CONNECTION),
            send: GatherSend::with_capacity(2 * MAX_INFLIGHT_PER_CONNECTION),
            ring_pending: 0,
            closing: false,
            finished: false,
            peer,
            _ticket: ticket,
        }
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.socket.as_raw_fd())
    }

    fn close(&mut self, why: &str) {
        if !self.closing {
            log::debug!("nbd {}: closing: {why}", self.peer);
            self.closing = true;
            self.engine.shut_down();
            // Wake a posted receive so it completes and the session can finish.
            // SAFETY: shutdown on a descriptor we own, plain integer arguments.
            unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RD) };
        }
    }

    fn maybe_finish(&mut self) {
        if !self.closing || self.finished {
            return;
        }
        if self.ring_pending == 0 && self.engine.is_idle() {
            self.finished = true;
            self.engine.detach();
            // SAFETY: shutdown on a descriptor we own; the peer sees the connection end.
            unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    // ---- receiving -------------------------------------------------------------------------

    fn post_recv(&mut self, ctx: &mut SessionContext) {
        if self.recv.is_posted() || self.closing {
            return;
        }
        let (direct, kind) = match self.inbound {
            Inbound::Payload { slot, got, need } => {
                let buf = self.engine.buffer_mut(slot);
                debug_assert!(got < need && need <= buf.len());
                // SAFETY: got < need <= the slot buffer's length.
                (
                    Some((unsafe { buf.as_mut_ptr().add(got) }, need - got)),
                    TAG_PAYLOAD,
                )
            }
            Inbound::Headers | Inbound::Discard { .. } => (None, TAG_RECV),
        };
        let fd = self.fd();
        // SAFETY: the buffer is owned by this session, which outlives the completion: the
        // reactor drops a session only when is_finished(), i.e. with nothing on the ring.
        let posted = unsafe {
            self.recv
                .post(ctx, fd, direct, kind, &mut self.ring_pending)
        };
        if let Err(error) = posted {
            self.close(&error.to_string());
        }
    }

    /// Handles every complete request in the receive buffer.
    fn process_input(&mut self, ctx: &mut SessionContext) {
        loop {
            if self.closing {
                return;
            }
            match self.inbound {
                Inbound::Payload { .. } => return,
                Inbound::Discard { remaining } => {
                    let left = self.recv.discard(remaining);
                    if left > 0 {
                        self.inbound = Inbound::Discard { remaining: left };
                        break;
                    }
                    self.inbound = Inbound::Headers;
                }
                Inbound::Headers => {
                    if self.recv.len() < REQUEST_HEADER_BYTES {
                        break;
                    }
                    if !self.take_request(ctx) {
                        break;
                    }
                }
            }
        }
        self.recv.tidy(REQUEST_HEADER_BYTES);
        if !self.stalled {
            self.post_recv(ctx);
        }
    }

    /// Parses one request header and starts it. Returns false when it must wait (no slot or
    /// buffer budget, ring credit, or its payload is still arriving).
    fn take_request(&mut self, ctx: &mut SessionContext) -> bool {
        if self.engine.ring_blocked(ctx) {
            // Back-pressure: requests already taken wait for ring credit.
            self.stalled = true;
            return false;
        }
        let mut raw = [0u8; REQUEST_HEADER_BYTES];
        raw.copy_from_slice(&self.recv.pending()[..REQUEST_HEADER_BYTES]);
        let header = match protocol::parse_request(&raw) {
            Ok(header) => header,
            Err(error) => {
                self.close(&format!("malformed request: {error}"));
                return false;
            }
        };
        if header.command == Command::Disconnect {
            self.recv.consume(REQUEST_HEADER_BYTES);
            self.close("client disconnected");
            return false;
        }
        // The VP decides, per request, from the current snapshot: one atomic load.
        let Some(decision) = self.engine.decide() else {
            self.close("its virtual path was deleted");
            return false;
        };
        let op = block_op(header.command);
        let request = BlockRequest {
            // A command this server does not implement is refused; it is counted as a flush.
            op: op.unwrap_or(BlockOp::Flush),
            offset_bytes: header.offset_bytes,
            length_bytes: header.length_bytes,
            fua: header.flags & protocol::NBD_CMD_FLAG_FUA != 0,
        };
        let admitted = self.check(&header, op, &request, &decision);
        let payload_bytes = if header.command == Command::Write {
            header.length_bytes as usize
        } else {
            0
        };
        // Only a request that will run takes a buffer. Past the connection's budget it waits
        // for this connection's own replies to drain; past the server's too, unless the
        // connection holds nothing (then it always gets this one request, so that others
        // holding everything cannot starve it).
        let charge_bytes = if admitted.is_ok() {
            request.buffer_bytes()
        } else {
            0
        };
        if !self.engine.has_free_slot()
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
        self.recv.consume(REQUEST_HEADER_BYTES);
        let reserved = match admitted {
            Ok(admission) => self.engine.reserve(request, admission),
            Err(status) => self.engine.refuse(request, status),
        };
        let Some(index) = reserved else {
            // Unreachable (a free slot was checked above); give the charge back, not leak it.
            self.budget.release(charge_bytes);
            self.close("no request slot");
            return false;
        };
        self.buffer_bytes += charge_bytes;
        let reply = &mut self.replies[index];
        debug_assert_eq!(reply.charged_bytes, 0, "a free slot holds no charge");
        reply.charged_bytes = charge_bytes;
        reply.cookie = header.cookie;
        if admitted.is_err() {
            if payload_bytes > 0 {
                self.inbound = Inbound::Discard {
                    remaining: payload_bytes,
                };
            }
            self.drain_finished(ctx);
            return true;
        }
        if payload_bytes > 0 {
            let have = self.recv.len().min(payload_bytes);
            self.engine.buffer_mut(index)[..have].copy_from_slice(&self.recv.pending()[..have]);
            self.recv.consume(have);
            if have < payload_bytes {
                self.inbound = Inbound::Payload {
                    slot: index,
                    got: have,
                    need: payload_bytes,
                };
                return false;
            }
        }
        self.engine.start(index, ctx);
        self.drain_finished(ctx);
        true
    }

    /// Whether the request may run: the engine's checks (the VP's allowed operations and
    /// access mode, then size, range and alignment), with NBD's own in between: the flags
    /// the command may carry, and commands this server does not implement.
    fn check(
        &self,
        header: &RequestHeader,
        op: Option<BlockOp>,
        request: &BlockRequest,
        decision: &crate::domain::decision::PathDecision,
    ) -> Result<Admission, BlockStatus> {
        if let Some(op) = op {
            self.engine.check_permitted(op, decision)?;
        }
        if header.flags & !header.command.known_flags() != 0 || op.is_none() {
            return Err(BlockStatus::Invalid);
        }
        self.engine.admit(request, decision)
    }

    /// Queues the replies of every request the engine has finished.
    fn drain_finished(&mut self, ctx: &mut SessionContext) {
        let mut any = false;
        while let Some(done) = self.engine.pop_finished() {
            let request = *self.engine.request(done.slot);
            let reply = &mut self.replies[done.slot];
            reply.reply =
                protocol::encode_simple_reply(protocol::nbd_errno(done.status), reply.cookie);
            reply.data_bytes = if request.op == BlockOp::Read && done.status.is_ok() {
                request.length_bytes as usize
            } else {
                0
            };
            self.send_queue.push_back(done.slot);
            any = true;
        }
        if any {
            self.post_send(ctx);
        }
    }

    // ---- replying ----------------------------------------------------------------------------

    fn post_send(&mut self, ctx: &mut SessionContext) {
        if self.send.is_posted() || self.send_queue.is_empty() {
            return;
        }
        self.sending.clear();
        self.send.clear();
        while let Some(index) = self.send_queue.pop_front() {
            let reply = &self.replies[index];
            self.send.push(&reply.reply);
            if reply.data_bytes > 0 {
                self.send
                    .push(&self.engine.buffer(index)[..reply.data_bytes]);
            }
            self.sending.push(index);
            if self.send.room() < 2 {
                break;
            }
        }
        self.submit_send(ctx);
    }

    fn submit_send(&mut self, ctx: &mut SessionContext) {
        let fd = self.fd();
        // SAFETY: the reply headers and the slot buffers gathered belong to this session and
        // stay untouched until the send completes (slots in `sending` are not reused before).
        let submitted = unsafe { self.send.submit(ctx, fd, TAG_SEND, &mut self.ring_pending) };
        if let Err(error) = submitted {
            self.close(&format!("cannot post a send: {error}"));
        }
    }

    fn on_sent(&mut self, result: i32, ctx: &mut SessionContext) {
        if result <= 0 {
            self.send.failed();
            self.close("send failed");
            self.release_sending();
            return;
        }
        // Resend the rest of a partial send.
        if self.send.complete(result as usize) == Sent::Partial {
            self.submit_send(ctx);
            return;
        }
        self.release_sending();
        self.post_send(ctx);
        if self.stalled {
            self.stalled = false;
            self.process_input(ctx);
        }
    }

    fn release_sending(&mut self) {
        for i in 0..self.sending.len() {
            let index = self.sending[i];
            self.release_slot(index);
        }
        self.sending.clear();
    }

    /// Frees a replied slot, giving back exactly what its request charged.
    fn release_slot(&mut self, index: usize) {
        let charged = std::mem::take(&mut self.replies[index].charged_bytes);
        debug_assert!(
            charged <= self.buffer_bytes,
            "buffer accounting underflow: releasing {charged} bytes of {}",
            self.buffer_bytes
        );
        self.buffer_bytes = self.buffer_bytes.checked_sub(charged).unwrap_or_else(|| {
            log::error!(
                "nbd {}: buffer accounting: releasing {charged} bytes of {}",
                self.peer,
                self.buffer_bytes
            );
            0
        });
        self.budget.release(charged);
        self.engine.release(index);
    }
}

impl Drop for NbdSession {
    /// A session can end with replies it never sent (the client went away): their charge goes
    /// back to the server's budget.
    fn drop(&mut self) {
        let charged: usize = self.replies.iter().map(|r| r.charged_bytes).sum();
        debug_assert_eq!(charged, self.buffer_bytes, "buffer accounting out of step");
        self.budget.release(charged);
    }
}

impl Session for NbdSession {
    fn start(&mut self, ctx: &mut SessionContext) {
        self.engine.attach(ctx.reactor_index);
        self.post_recv(ctx);
    }

    fn on_ring_credit(&mut self, ctx: &mut SessionContext) {
        self.engine.on_ring_credit(ctx);
        self.drain_finished(ctx);
        if self.stalled {
            self.stalled = false;
            self.process_input(ctx);
        }
        self.maybe_finish();
    }

    fn revoke(&mut self, vpath_id: u64, _ctx: &mut SessionContext) {
        if vpath_id == self.engine.vpath().id {
            self.close("its virtual path was deleted");
            self.maybe_finish();
        }
    }

    fn on_completion(&mut self, local_tag: u64, result: i32, ctx: &mut SessionContext) {
        if tag::is_engine(local_tag) {
            self.engine.on_completion(local_tag, result, ctx);
            self.drain_finished(ctx);
            self.maybe_finish();
            return;
        }
        self.ring_pending -= 1;
        let kind = tag::kind_of(local_tag);
        match kind {
            TAG_RECV | TAG_PAYLOAD => {
                self.recv.received();
                if result <= 0 {
                    if result < 0 && result != -libc::ECONNRESET {
                        log::debug!("nbd {}: receive failed: errno {}", self.peer, -result);
                    }
                    self.close("connection closed by the client");
                } else if kind == TAG_RECV {
                    self.recv.filled(result as usize);
                    self.process_input(ctx);
                } else if let Inbound::Payload { slot, got, need } = self.inbound {
                    let got = got + result as usize;
                    if got < need {
                        self.inbound = Inbound::Payload { slot, got, need };
                        self.post_recv(ctx);
                    } else {
                        self.inbound = Inbound::Headers;
                        self.engine.start(slot, ctx);
                        self.drain_finished(ctx);
                        self.process_input(ctx);
                    }
                }
            }
            TAG_SEND => self.on_sent(result, ctx),
            _ => log::error!(
                "nbd {}: completion with unknown tag {local_tag:#x}",
                self.peer
            ),
        }
        self.maybe_finish();
    }

    fn on_wake(&mut self, token: u64, result: i32, ctx: &mut SessionContext) {
        self.engine.on_wake(token, result, ctx);
        self.drain_finished(ctx);
        self.maybe_finish();
    }

    fn begin_shutdown(&mut self, ctx: &mut SessionContext) {
        self.close("server shutting down");
        self.drain_finished(ctx);
        self.maybe_finish();
    }

    fn is_finished(&self) -> bool {
        self.finished
    }
}
