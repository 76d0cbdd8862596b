//! One NVMe/TCP I/O queue (a connection whose Connect named a queue id above 0), run by a
//! reactor as a [`Session`]: PDU framing, R2T and H2CData, C2HData and response capsules
//! around the block engines, one per namespace: the host's VPs when the queue began, and one
//! made later the first time a command names the NSID of a VP created since.
//!
//! ```text
//!  recv (ring) ─▶ common header checked (pdu::parse_header) ─▶ CapsuleCmd ─▶ namespace NSID:
//!                   │ in-capsule data / H2CData: straight into the request's buffer   engine
//!                   │ R2T for a write's data that is not in the capsule                 │
//!                   ▼                                                                   ▼
//!                 engine.start(slot) ─ ─ ─▶ (LUN I/O on the ring, provisioner wakes) finished
//!                                                                                       │
//!  sendmsg (ring) ◀── R2T, C2HData (+SUCCESS) from the engine's buffer, CapsuleResp ◀──┘
//! ```
//!
//! Namespace k (in the order the queue made them) owns engine slots
//! `k * NVMF_SLOTS_PER_NAMESPACE ..`; a completion or a provisioner wake finds its namespace
//! by its slot, and an R2T's transfer tag is the same number. Everything a command sends is
//! built in its slot's own buffers, made with the namespace, and a round's answers go out in
//! one `sendmsg` at the end of what one receive brought (`defer_send`): no allocation and no
//! lock per command. A read's data is sent from the engine's buffer without a copy; when the
//! host disabled SQ flow control, its C2HData carries SUCCESS and no response capsule follows
//! (TP 8000).
//!
//! Errors: a command the target cannot carry out gets an NVMe status and the queue goes on (a
//! write whose data digest does not match included: Transient Transport Error); a PDU that
//! breaks the transport's rules (a header field, a header digest, data outside its R2T) gets a
//! C2HTermReq naming the field, and this connection — only it — ends. The
//! queue also ends when its controller does (`ControllerShared::closed`, polled on a 1 s
//! tick), when a VP of its host is deleted, and when the server stops.
//!
//! Here: the queue and the reactor's callbacks. `attach`: the hand-over from the handshake
//! thread, and making a namespace's engine; `receive`: PDUs in, commands to their engine,
//! a write's (or a Compare's) data; `answers`: everything out; [`io_commands`]: NVMe commands
//! as engine requests, engine outcomes as NVMe statuses.

mod answers;
mod attach;
pub mod io_commands;
mod receive;

pub use attach::{attach, IoQueueTicket};

use super::controller::{ControllerShared, IoQueueCount};
use crate::blockio::tag::{self, KIND_FRONT_END_FIRST};
use crate::blockio::{BlockEngine, BlockOp};
use crate::constants::{
    NVMF_COMPARE_COMMANDS, NVMF_DSM_COMMANDS, NVMF_MAX_DSM_RANGES, NVMF_SLOTS_PER_NAMESPACE,
};
use crate::domain::snapshot::Published;
use crate::nvmf::pdu::{
    Negotiated, CAPSULE_RESP_HEADER_BYTES, DIGEST_BYTES, SHORT_HEADER_BYTES,
    TERM_REQ_MAX_DATA_BYTES,
};
use crate::nvmf::status::Status;
use crate::reactor::session::{Session, SessionContext};
use crate::target::buffer_budget::BufferBudget;
use crate::target::gather_send::GatherSend;
use crate::target::reactor_load::ReactorPlace;
use crate::target::recv_buffer::RecvBuffer;
use crate::target::session_tick::SessionTick;
use crate::volume::open_state::OpenGuard;
use crate::volume::provisioner::Provisioner;
use io_uring::types;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// The queue's own ring entries (the engines' are told apart by `tag::is_engine`).
const TAG_RECV: u64 = KIND_FRONT_END_FIRST;
const TAG_DATA: u64 = KIND_FRONT_END_FIRST + 1;
const TAG_SEND: u64 = KIND_FRONT_END_FIRST + 2;
const TAG_TICK: u64 = KIND_FRONT_END_FIRST + 3;
const _: () = assert!(TAG_TICK <= tag::KIND_LAST);
// A global slot (namespace position × slots + slot) is an R2T's 16-bit transfer tag.
const _: () = assert!(tag::MAX_SLOTS <= 1 << 16);

/// Iovecs of one `sendmsg` at most (the kernel's UIO_MAXIOV is 1024).
const MAX_SEND_IOVECS: usize = 1020;
/// Bytes before a C2HData PDU's data at most: header, digest, and padding to the host's
/// alignment (HPDA up to 31: 128 bytes).
const DATA_HEAD_BYTES: usize = 128;
/// A response capsule with its header digest.
const RESP_BYTES: usize = CAPSULE_RESP_HEADER_BYTES + DIGEST_BYTES;
/// A termination request: its header and the header in error it carries.
const TERM_BYTES: usize = SHORT_HEADER_BYTES + TERM_REQ_MAX_DATA_BYTES;
/// Answers of commands no engine slot holds (an unknown namespace or opcode, a malformed
/// SGL, Disconnect): as many as the host may have commands outstanding, and one more.
const CONTROL_ANSWERS: usize = crate::constants::NVMF_MAX_QUEUE_ENTRIES + 1;

/// Dataset Management's range buffers, a few per queue, made with it.
struct DsmBuffers {
    data: Box<[[u8; DSM_BUFFER_BYTES]]>,
    free: Vec<u8>,
}

const DSM_BUFFER_BYTES: usize = NVMF_MAX_DSM_RANGES * io_commands::DSM_RANGE_BYTES;

impl DsmBuffers {
    fn new() -> Self {
        Self {
            data: vec![[0u8; DSM_BUFFER_BYTES]; NVMF_DSM_COMMANDS].into_boxed_slice(),
            free: (0..NVMF_DSM_COMMANDS as u8).rev().collect(),
        }
    }
}

/// The host's data of Compare commands, a few per queue: each grows to the largest compare
/// it has held (a new size, not the steady state) and is kept.
struct CompareBuffers {
    data: Box<[Vec<u8>]>,
    free: Vec<u8>,
}

impl CompareBuffers {
    fn new() -> Self {
        Self {
            data: (0..NVMF_COMPARE_COMMANDS).map(|_| Vec::new()).collect(),
            free: (0..NVMF_COMPARE_COMMANDS as u8).rev().collect(),
        }
    }
}

/// A Dataset Management command in progress: its ranges run one after the other through one
/// engine slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DsmState {
    buffer: u8,
    next: u16,
    ranges: u16,
}

/// What the queue keeps per engine slot: the command it runs and what it sends.
struct CommandSlot {
    cid: u16,
    op: BlockOp,
    /// Bytes taken from the queue's and the server's buffer budgets, given back when the slot
    /// is released.
    charged_bytes: usize,
    /// A write waiting for H2CData: bytes solicited and bytes received so far.
    solicited_bytes: u32,
    received_bytes: u32,
    /// A status that overrides the engine's (a data digest error on the write's data).
    status_override: Option<Status>,
    dsm: Option<DsmState>,
    /// A Compare: the buffer holding the host's data (the slot's own reads the range).
    compare: Option<u8>,
    /// R2T, or C2HData's header, digest and padding.
    head: [u8; DATA_HEAD_BYTES],
    head_len: usize,
    /// Bytes of the engine's buffer sent after `head` (a read's data).
    data_len: usize,
    ddgst: [u8; DIGEST_BYTES],
    ddgst_len: usize,
    resp: [u8; RESP_BYTES],
    resp_len: usize,
}

impl CommandSlot {
    fn new() -> Self {
        Self {
            cid: 0,
            op: BlockOp::Read,
            charged_bytes: 0,
            solicited_bytes: 0,
            received_bytes: 0,
            status_override: None,
            dsm: None,
            compare: None,
            head: [0; DATA_HEAD_BYTES],
            head_len: 0,
            data_len: 0,
            ddgst: [0; DIGEST_BYTES],
            ddgst_len: 0,
            resp: [0; RESP_BYTES],
            resp_len: 0,
        }
    }
}

/// One namespace of the queue: a VP of the host, NSID = its LUN + 1.
struct Namespace {
    nsid: u32,
    vpath_id: u64,
    block_bytes: u32,
    engine: BlockEngine,
    commands: Box<[CommandSlot]>,
    _open: OpenGuard,
}

/// An answer that no engine slot holds.
struct ControlAnswer {
    resp: [u8; RESP_BYTES],
    len: usize,
    /// The connection ends once it has gone out (Disconnect).
    close_after: bool,
}

/// Something to send, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutItem {
    /// The R2T of the write in global slot `g`.
    R2t(u16),
    /// The answer (data and/or response) of global slot `g`; the slot is released once it
    /// has gone out.
    Answer(u16),
    Control(u16),
    /// The C2HTermReq; the connection ends once it has gone out.
    Term,
}

/// What incoming bytes are for right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inbound {
    /// PDU headers (and small PDUs whole), out of the receive buffer.
    Headers,
    /// Data going straight into global slot `g`'s buffer: `got` of `len` bytes at `offset`.
    Data {
        g: u16,
        offset: u32,
        len: u32,
        got: u32,
    },
    /// The data digest after data that went into a slot's buffer.
    Trailer { g: u16, offset: u32, len: u32 },
    /// Bytes to read and drop (the data of a refused command).
    Discard { remaining: usize },
}

pub struct IoQueue {
    socket: OwnedFd,
    peer: String,
    controller: Arc<ControllerShared>,
    qid: u16,
    /// Entries of the submission queue (SQSIZE + 1).
    sq_entries: u16,
    /// The submission queue head: capsules taken, modulo the queue's entries.
    sq_head: u16,
    /// The host disabled SQ flow control (Connect CATTR): SQHD is not reported, and a read's
    /// C2HData carries SUCCESS in place of a response capsule.
    sq_flow_control_disabled: bool,
    negotiated: Negotiated,

    host: String,
    published: Arc<Published>,
    provisioner: Provisioner,
    namespaces: Vec<Namespace>,
    /// The reactor the queue runs on, once started (a namespace made later attaches there).
    reactor_index: Option<usize>,

    recv: RecvBuffer,
    inbound: Inbound,
    /// A command waiting for an engine slot, buffer budget, ring credit or a control answer
    /// (its capsule is still in the receive buffer), or a termination in progress.
    stalled: bool,
    /// Nothing more is read: a termination request is on its way.
    terminating: bool,
    /// Ticks since then.
    terminating_ticks: u32,
    buffer_bytes: usize,
    budget: &'static BufferBudget,
    dsm: DsmBuffers,
    compare: CompareBuffers,

    control: Box<[ControlAnswer]>,
    free_control: Vec<u16>,
    term: [u8; TERM_BYTES],
    term_len: usize,
    out_queue: VecDeque<OutItem>,
    sending: Vec<OutItem>,
    send: GatherSend,
    /// Set while the queue handles what one receive brought: its answers go out together.
    defer_send: bool,

    tick: SessionTick,

    ring_pending: u32,
    closing: bool,
    finished: bool,
    _count: IoQueueCount,
    /// Its place on the reactor, given back when the queue is dropped.
    place: ReactorPlace,
}

impl IoQueue {
    fn fd(&self) -> types::Fd {
        types::Fd(self.socket.as_raw_fd())
    }

    /// The namespace of global slot `g` and the slot within its engine.
    fn split(g: u16) -> (usize, usize) {
        let g = usize::from(g);
        (g / NVMF_SLOTS_PER_NAMESPACE, g % NVMF_SLOTS_PER_NAMESPACE)
    }

    fn global(position: usize, slot: usize) -> u16 {
        (position * NVMF_SLOTS_PER_NAMESPACE + slot) as u16
    }

    /// Where the host's data for global slot `g` goes: its engine buffer (a write), or its
    /// compare buffer (a Compare, whose engine buffer the read fills). Takes the two fields,
    /// not the queue, so the receive buffer can be read at the same time.
    fn data_buffer<'a>(
        namespaces: &'a mut [Namespace],
        compare: &'a mut CompareBuffers,
        g: u16,
    ) -> Option<&'a mut [u8]> {
        let (position, slot) = Self::split(g);
        let namespace = namespaces.get_mut(position)?;
        match namespace.commands[slot].compare {
            Some(index) => {
                let len = namespace.engine.request(slot).length_bytes as usize;
                compare.data.get_mut(usize::from(index))?.get_mut(..len)
            }
            None => Some(namespace.engine.buffer_mut(slot)),
        }
    }

    fn close(&mut self, why: &str) {
        if !self.closing {
            log::debug!("nvmf {} (qid {}): closing: {why}", self.peer, self.qid);
            self.closing = true;
            for namespace in &mut self.namespaces {
                namespace.engine.shut_down();
            }
            // Wake a posted receive so it completes and the queue can finish.
            // SAFETY: shutdown on a descriptor we own, plain integer arguments.
            unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RD) };
        }
    }

    fn maybe_finish(&mut self) {
        if !self.closing || self.finished {
            return;
        }
        let idle = self.namespaces.iter().all(|n| n.engine.is_idle());
        if self.ring_pending == 0 && idle {
            self.finished = true;
            for namespace in &mut self.namespaces {
                namespace.engine.detach();
            }
            // SAFETY: shutdown on a descriptor we own; the host sees the connection end.
            unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    fn post_tick(&mut self, ctx: &mut SessionContext) {
        if self.tick.is_posted() || self.closing {
            return;
        }
        // SAFETY: the tick is this queue's, and the queue outlives the entry: the reactor
        // drops a session only when is_finished(), with nothing on the ring.
        let posted = unsafe { self.tick.post(ctx, TAG_TICK, &mut self.ring_pending) };
        if let Err(error) = posted {
            self.close(&format!("cannot post the tick: {error}"));
        }
    }

    /// Once a second: the controller may have ended (admin queue gone, reset, keep-alive
    /// expiry, the host's VPs changed).
    fn on_tick(&mut self, ctx: &mut SessionContext) {
        self.tick.fired();
        if self.controller.is_closed() {
            self.close("its controller ended");
            return;
        }
        if self.terminating && self.terminating_ticks >= 1 {
            // The termination request had a whole tick to go out; a host that does not read
            // it does not keep the queue.
            self.close("terminated after a transport error");
            // SAFETY: shutdown on a descriptor we own: a send the host never drains fails.
            unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
            return;
        }
        if self.terminating {
            self.terminating_ticks += 1;
        }
        self.post_tick(ctx);
    }
}

impl Drop for IoQueue {
    /// A queue can end with answers it never sent: what they were charged goes back to the
    /// server's budget.
    fn drop(&mut self) {
        self.budget.release(self.buffer_bytes);
    }
}

impl Session for IoQueue {
    fn start(&mut self, ctx: &mut SessionContext) {
        self.reactor_index = Some(ctx.reactor_index);
        for namespace in &mut self.namespaces {
            namespace.engine.attach(ctx.reactor_index);
        }
        self.post_tick(ctx);
        self.process_input(ctx);
    }

    fn on_ring_credit(&mut self, ctx: &mut SessionContext) {
        for namespace in &mut self.namespaces {
            namespace.engine.on_ring_credit(ctx);
        }
        self.drain_finished(ctx);
        self.unstall(ctx);
        self.maybe_finish();
    }

    fn revoke(&mut self, vpath_id: u64, _ctx: &mut SessionContext) {
        if self.namespaces.iter().any(|n| n.vpath_id == vpath_id) {
            self.close("a virtual path of its host was deleted");
            self.maybe_finish();
        }
    }

    fn on_completion(&mut self, local_tag: u64, result: i32, ctx: &mut SessionContext) {
        if tag::is_engine(local_tag) {
            let position = tag::decode(local_tag).slot / NVMF_SLOTS_PER_NAMESPACE;
            if let Some(namespace) = self.namespaces.get_mut(position) {
                namespace.engine.on_completion(local_tag, result, ctx);
            }
            self.drain_finished(ctx);
            self.maybe_finish();
            return;
        }
        self.ring_pending -= 1;
        match tag::kind_of(local_tag) {
            TAG_RECV => {
                self.recv.received();
                if result <= 0 {
                    self.close("connection closed by the host");
                } else {
                    self.recv.filled(result as usize);
                    self.process_input(ctx);
                }
            }
            TAG_DATA => {
                self.recv.received();
                if result <= 0 {
                    self.close("connection closed by the host");
                } else {
                    self.data_received(result as u32, ctx);
                }
            }
            TAG_SEND => self.on_sent(result, ctx),
            TAG_TICK => self.on_tick(ctx),
            _ => log::error!(
                "nvmf {}: completion with unknown tag {local_tag:#x}",
                self.peer
            ),
        }
        self.maybe_finish();
    }

    fn on_wake(&mut self, token: u64, result: i32, ctx: &mut SessionContext) {
        let position = crate::blockio::tag::token_slot(token) / NVMF_SLOTS_PER_NAMESPACE;
        if let Some(namespace) = self.namespaces.get_mut(position) {
            namespace.engine.on_wake(token, result, ctx);
        }
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
