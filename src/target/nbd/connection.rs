//! The NBD transmission phase of one connection, run by a reactor as a [`Session`].
//!
//! ```text
//!  recv (ring) ──▶ parse 28-byte headers ──▶ slot ──▶ volume segments ──▶ LUN I/O (ring)
//!                      │ write payload: straight into the slot's buffer       │
//!                      ▼                                                       ▼
//!              provisioner (unmapped extent, read-modify-write) ──wake──▶ complete
//!                                                                              │
//!  sendmsg (ring) ◀── replies gathered into one iovec batch ◀──────────────────┘
//! ```
//!
//! Every request takes a slot (its own buffer, sized when first needed and reused after), so
//! nothing is allocated once a connection is warm. Requests run concurrently; replies go out
//! in completion order, batched into one `sendmsg`. A request the server cannot accept (out of
//! range, misaligned, too large, a write on a read-only export) gets NBD's errno and the
//! connection goes on; a malformed header (bad magic) closes only this connection.

use super::buffer_budget::{BufferBudget, NBD_BUFFER_BUDGET};
use super::protocol::{self, Command, RequestHeader};
use super::session_slots::SessionTicket;
use crate::backend::aligned_buf::{AlignedBuf, BUFFER_ALIGN_BYTES};
use crate::backend::{completion_result, split_tag, IoType, LunIo, Started};
use crate::constants::{
    MAX_BUFFER_BYTES_PER_CONNECTION, MAX_INFLIGHT_PER_CONNECTION, MAX_IO_BYTES, MAX_LUNS_PER_POOL,
    MAX_RETAINED_BUFFER_BYTES_PER_CONNECTION, MAX_RING_ENTRIES_PER_ROUND, MAX_SEGMENTS_PER_IO,
    NBD_RECV_BUFFER_BYTES,
};
use crate::domain::capabilities::AllowedOps;
use crate::domain::decision::DecisionCache;
use crate::domain::qos::{Admit, RateLimit, TokenBucket};
use crate::domain::snapshot::Published;
use crate::domain::stats::OpKind;
use crate::domain::vpath::{AccessMode, Vpath};
use crate::reactor::session::{Session, SessionContext};
use crate::volume::provisioner::{Provisioner, Reply, Request, SessionBuffer};
use crate::volume::stats::IoKind;
use crate::volume::{Segment, Volume};
use io_uring::{opcode, types};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

const REQUEST_HEADER_BYTES: usize = 28;
const REPLY_HEADER_BYTES: usize = 16;

/// Session-local tag layout: kind in bits 40..44, slot in 32..40, the pool-LUN index of a LUN
/// I/O in 24..32 (so its errors are counted on that LUN without a lookup), expected bytes in
/// 0..24.
const TAG_RECV: u64 = 1;
const TAG_PAYLOAD: u64 = 2;
const TAG_SEND: u64 = 3;
const TAG_IO: u64 = 4;
/// The QoS timer: throttled requests are retried when it fires.
const TAG_TIMER: u64 = 5;
/// Longest single QoS timer: a session that is closing never waits longer than this for it.
const MAX_TIMER_NS: u64 = 50_000_000;
const TAG_LUN_SHIFT: u32 = 24;
const TAG_EXPECTED_MASK: u64 = (1 << TAG_LUN_SHIFT) - 1;

const _: () = assert!((MAX_IO_BYTES as u64) <= TAG_EXPECTED_MASK);
const _: () = assert!(MAX_LUNS_PER_POOL <= 1 << 8);
const _: () = assert!(MAX_INFLIGHT_PER_CONNECTION <= 1 << 8);
// Kinds stay below the bit a LUN driver marks its own timer entries with.
const _: () = assert!((TAG_TIMER << 40) < crate::backend::DRIVER_TIMER_TAG);

fn tag_of(kind: u64, slot: usize, lun_index: usize, expected_bytes: u32) -> u64 {
    debug_assert!(u64::from(expected_bytes) <= TAG_EXPECTED_MASK && lun_index < 1 << 8);
    (kind << 40)
        | ((slot as u64) << 32)
        | ((lun_index as u64) << TAG_LUN_SHIFT)
        | u64::from(expected_bytes)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// A write whose payload is still arriving.
    Receiving,
    Running,
    /// Waiting for the provisioner (extent mapping or slow-path write).
    Waiting,
    /// Waiting for QoS tokens.
    Throttled,
    /// Reply queued or being sent.
    Replying,
}

struct Slot {
    state: SlotState,
    header: RequestHeader,
    buf: AlignedBuf,
    /// Bytes this request took from the connection's and the server's buffer budgets, given
    /// back exactly when the slot is released (0 for a request that was refused or needs no
    /// buffer).
    charged_bytes: usize,
    /// Bytes of the request handled by completed rounds.
    cursor_bytes: u64,
    /// Ring completions still to come for the current round.
    pending: u32,
    /// Provisioner answers still to come.
    waiting: u32,
    /// First error (an NBD errno), 0 if none.
    error: u32,
    started: Instant,
    reply: [u8; REPLY_HEADER_BYTES],
    /// Whether this request went to the slow path (answered by one wake).
    slow_path: bool,
    /// Whether its latency goes into the VP's histogram (the domain's statistics detail).
    record_latency: bool,
    /// When it started waiting for QoS tokens, if it had to.
    throttled_at: Option<Instant>,
    /// The QoS rate it is admitted at.
    rate: RateLimit,
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
    /// The virtual path this connection reached its volume by: checked and accounted on
    /// every request.
    vpath: Arc<Vpath>,
    /// The VP's current decisions (allowed operations, QoS rate), refreshed when the
    /// published snapshot changes.
    decisions: DecisionCache,
    published: Arc<Published>,
    volume: Arc<Volume>,
    provisioner: Provisioner,
    read_only: bool,
    bucket: TokenBucket,
    /// Requests waiting for QoS tokens, oldest first.
    throttled: VecDeque<usize>,
    timer_armed: bool,
    /// The QoS timer's timeout; the ring reads it when the entry is submitted.
    timer_spec: Box<types::Timespec>,
    /// Where the session's nanosecond clock starts.
    clock: Instant,
    /// The reactor serving it (set when it starts).
    reactor_index: usize,
    max_io_bytes: usize,
    slow_writes: bool,
    recv_buf: AlignedBuf,
    recv_start: usize,
    recv_end: usize,
    recv_posted: bool,
    inbound: Inbound,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    /// Bytes charged by this connection's requests in flight or replying (the sum of their
    /// slots' `charged_bytes`), at most MAX_BUFFER_BYTES_PER_CONNECTION.
    buffer_bytes: usize,
    /// The server-wide budget the same bytes are charged to.
    budget: &'static BufferBudget,
    /// Bytes of all slot buffers this connection keeps allocated, in use or not.
    retained_bytes: usize,
    /// A parsed request waiting for a slot or buffer budget, or for ring credit.
    stalled: bool,
    /// Requests whose next round waits for ring credit (the reactor's ring is near its
    /// in-flight limit), oldest first; while any wait, no new request is read.
    ring_deferred: VecDeque<usize>,
    send_queue: VecDeque<usize>,
    sending: Vec<usize>,
    send_iov: Vec<libc::iovec>,
    send_msg: Box<libc::msghdr>,
    send_posted: bool,
    /// Ring completions outstanding for this session (all kinds).
    ring_pending: u32,
    closing: bool,
    finished: bool,
    peer: String,
    /// Its host's session, its place on the reactor and its open of the volume, given back
    /// when the session is dropped: a session a reactor refuses, or one that fails, never
    /// leaves the volume undeletable or the host's count high.
    _ticket: SessionTicket,
}

// SAFETY: the raw pointers inside (iovecs and the msghdr) point into buffers this session owns;
// the session moves between threads only before it is attached, while nothing is in flight.
unsafe impl Send for NbdSession {}

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
        let volume = vpath.volume.clone();
        let read_only = vpath.mode == AccessMode::ReadOnly;
        let slow_writes = volume.needs_read_modify_write();
        let slots: Vec<Slot> = (0..MAX_INFLIGHT_PER_CONNECTION)
            .map(|_| Slot {
                state: SlotState::Free,
                header: RequestHeader::default(),
                buf: AlignedBuf::new(0),
                charged_bytes: 0,
                cursor_bytes: 0,
                pending: 0,
                waiting: 0,
                error: 0,
                started: Instant::now(),
                reply: [0; REPLY_HEADER_BYTES],
                slow_path: false,
                record_latency: true,
                throttled_at: None,
                rate: RateLimit::default(),
            })
            .collect();
        let retained_bytes = slots.iter().map(|s: &Slot| s.buf.len()).sum();
        let decisions = DecisionCache::new(vpath.clone(), path_hint);
        Self {
            socket,
            vpath,
            decisions,
            published,
            volume,
            provisioner,
            read_only,
            bucket: TokenBucket::default(),
            throttled: VecDeque::with_capacity(MAX_INFLIGHT_PER_CONNECTION),
            timer_armed: false,
            timer_spec: Box::new(types::Timespec::new()),
            clock: Instant::now(),
            reactor_index: 0,
            max_io_bytes,
            slow_writes,
            recv_buf: AlignedBuf::new(NBD_RECV_BUFFER_BYTES),
            recv_start: 0,
            recv_end: 0,
            recv_posted: false,
            inbound: Inbound::Headers,
            slots,
            free_slots: (0..MAX_INFLIGHT_PER_CONNECTION).rev().collect(),
            buffer_bytes: 0,
            budget: &NBD_BUFFER_BUDGET,
            retained_bytes,
            stalled: false,
            ring_deferred: VecDeque::with_capacity(MAX_INFLIGHT_PER_CONNECTION),
            send_queue: VecDeque::with_capacity(MAX_INFLIGHT_PER_CONNECTION),
            sending: Vec::with_capacity(MAX_INFLIGHT_PER_CONNECTION),
            send_iov: Vec::with_capacity(2 * MAX_INFLIGHT_PER_CONNECTION),
            // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
            send_msg: Box::new(unsafe { std::mem::zeroed() }),
            send_posted: false,
            ring_pending: 0,
            closing: false,
            finished: false,
            peer,
            _ticket: ticket,
        }
    }

    /// Keeps the session's grant (see `session_slots`) for as long as the session lives.
    fn fd(&self) -> types::Fd {
        types::Fd(self.socket.as_raw_fd())
    }

    fn close(&mut self, why: &str) {
        if !self.closing {
            log::debug!("nbd {}: closing: {why}", self.peer);
            self.closing = true;
            // Wake a posted receive so it completes and the session can finish.
            // SAFETY: shutdown on a descriptor we own, plain integer arguments.
            unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RD) };
        }
    }

    fn maybe_finish(&mut self) {
        if !self.closing || self.finished {
            return;
        }
        let busy = self.ring_pending > 0 || self.slots.iter().any(|s| s.waiting > 0);
        if !busy {
            self.finished = true;
            self.vpath
                .stats
                .reactor(self.reactor_index)
                .sessions
                .fetch_sub(1, Ordering::Relaxed);
            self.throttled.clear();
            // SAFETY: shutdown on a descriptor we own; the peer sees the connection end.
            unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    // ---- receiving -------------------------------------------------------------------------

    fn post_recv(&mut self, ctx: &mut SessionContext) {
        if self.recv_posted || self.closing {
            return;
        }
        let (ptr, len, kind) = match self.inbound {
            Inbound::Payload { slot, got, need } => {
                // SAFETY: got < need <= the slot buffer's length.
                (
                    unsafe { self.slots[slot].buf.as_mut_ptr().add(got) },
                    need - got,
                    TAG_PAYLOAD,
                )
            }
            Inbound::Headers | Inbound::Discard { .. } => {
                if self.recv_end == self.recv_buf.len() {
                    if self.recv_start == 0 {
                        self.close("receive buffer full");
                        return;
                    }
                    self.compact();
                }
                // SAFETY: recv_end < the buffer's length, checked above.
                (
                    unsafe { self.recv_buf.as_mut_ptr().add(self.recv_end) },
                    self.recv_buf.len() - self.recv_end,
                    TAG_RECV,
                )
            }
        };
        let entry = opcode::Recv::new(self.fd(), ptr, len as u32)
            .build()
            .user_data(ctx.tag(tag_of(kind, 0, 0, 0)));
        // SAFETY: the buffer is owned by this session, which outlives the completion: the
        // reactor drops a session only when is_finished(), i.e. with nothing on the ring.
        match unsafe { ctx.ring.push(&entry) } {
            Ok(()) => {
                self.recv_posted = true;
                self.ring_pending += 1;
            }
            Err(error) => self.close(&format!("cannot post a receive: {error}")),
        }
    }

    fn compact(&mut self) {
        let live = self.recv_end - self.recv_start;
        self.recv_buf
            .as_mut_slice()
            .copy_within(self.recv_start..self.recv_end, 0);
        self.recv_start = 0;
        self.recv_end = live;
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
                    let take = remaining.min(self.recv_end - self.recv_start);
                    self.recv_start += take;
                    if take < remaining {
                        self.inbound = Inbound::Discard {
                            remaining: remaining - take,
                        };
                        break;
                    }
                    self.inbound = Inbound::Headers;
                }
                Inbound::Headers => {
                    if self.recv_end - self.recv_start < REQUEST_HEADER_BYTES {
                        break;
                    }
                    if !self.take_request(ctx) {
                        break;
                    }
                }
            }
        }
        if self.recv_start == self.recv_end {
            self.recv_start = 0;
            self.recv_end = 0;
        } else if self.recv_buf.len() - self.recv_end < REQUEST_HEADER_BYTES {
            self.compact();
        }
        if !self.stalled {
            self.post_recv(ctx);
        }
    }

    /// Parses one request header and starts it. Returns false when it must wait (no slot or
    /// buffer budget, or its payload is still arriving).
    fn take_request(&mut self, ctx: &mut SessionContext) -> bool {
        if !self.ring_deferred.is_empty() {
            // Back-pressure: requests already taken wait for ring credit.
            self.stalled = true;
            return false;
        }
        let mut raw = [0u8; REQUEST_HEADER_BYTES];
        raw.copy_from_slice(
            &self.recv_buf.as_slice()[self.recv_start..self.recv_start + REQUEST_HEADER_BYTES],
        );
        let header = match protocol::parse_request(&raw) {
            Ok(header) => header,
            Err(error) => {
                self.close(&format!("malformed request: {error}"));
                return false;
            }
        };
        // The VP decides, per request, from the current snapshot: one atomic load.
        let Some(decision) = self.decisions.decide(&self.published, self.reactor_index) else {
            self.close("its virtual path was deleted");
            return false;
        };
        let ops = decision.allowed_ops;
        let payload_bytes = if header.command == Command::Write {
            header.length_bytes as usize
        } else {
            0
        };
        let buffer_bytes = match header.command {
            Command::Read | Command::Write => header.length_bytes as usize,
            _ => 0,
        };
        let fits = buffer_bytes <= self.max_io_bytes;
        let refused = match header.command {
            Command::Disconnect => None,
            _ => self.refuse(&header, fits, ops),
        };
        // Only a request that will run takes a buffer. Past the connection's budget it waits
        // for this connection's own replies to drain; past the server's too, unless the
        // connection holds nothing (then it always gets this one request, so that others
        // holding everything cannot starve it).
        let charge_bytes = if refused.is_none() { buffer_bytes } else { 0 };
        if self.free_slots.is_empty()
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
        self.buffer_bytes += charge_bytes;
        self.recv_start += REQUEST_HEADER_BYTES;
        let Some(index) = self.free_slots.pop() else {
            // Unreachable (checked above); give the charge back rather than leak it.
            self.buffer_bytes -= charge_bytes;
            self.budget.release(charge_bytes);
            return false;
        };
        let slot = &mut self.slots[index];
        debug_assert_eq!(slot.charged_bytes, 0, "a free slot holds no charge");
        slot.charged_bytes = charge_bytes;
        slot.header = header;
        slot.cursor_bytes = 0;
        slot.pending = 0;
        slot.waiting = 0;
        slot.error = 0;
        slot.slow_path = false;
        slot.record_latency = decision.record_latency;
        slot.rate = decision.rate;
        slot.throttled_at = None;
        slot.started = Instant::now();

        if header.command == Command::Disconnect {
            self.free_slots.push(index);
            self.close("client disconnected");
            return false;
        }
        if let Some(errno) = refused {
            let slot = &mut self.slots[index];
            slot.state = SlotState::Running;
            slot.error = errno;
            if payload_bytes > 0 {
                self.inbound = Inbound::Discard {
                    remaining: payload_bytes,
                };
            }
            self.complete(index, ctx);
            return true;
        }
        if charge_bytes > 0 {
            let slot = &mut self.slots[index];
            if slot.buf.len() < charge_bytes {
                let old_bytes = slot.buf.len();
                slot.buf = AlignedBuf::new(charge_bytes.next_power_of_two());
                self.retained_bytes += slot.buf.len() - old_bytes;
            }
        }
        if payload_bytes > 0 {
            let have = (self.recv_end - self.recv_start).min(payload_bytes);
            let slot = &mut self.slots[index];
            slot.buf.as_mut_slice()[..have].copy_from_slice(
                &self.recv_buf.as_slice()[self.recv_start..self.recv_start + have],
            );
            self.recv_start += have;
            if have < payload_bytes {
                slot.state = SlotState::Receiving;
                self.inbound = Inbound::Payload {
                    slot: index,
                    got: have,
                    need: payload_bytes,
                };
                return false;
            }
        }
        self.start_request(index, ctx);
        true
    }

    // ---- quality of service ------------------------------------------------------------------

    /// A request is ready (header and payload in): run it, or queue it behind the throttled
    /// ones, or throttle it.
    fn start_request(&mut self, index: usize, ctx: &mut SessionContext) {
        if !self.throttled.is_empty() {
            self.throttle(index, None, ctx);
            return;
        }
        match self.admit(index) {
            Admit::Go => {
                self.slots[index].state = SlotState::Running;
                self.run(index, ctx);
            }
            Admit::Wait(wait_ns) => self.throttle(index, Some(wait_ns), ctx),
        }
    }

    /// Takes the request's tokens from this session's bucket at the rate decided when its
    /// header arrived (or, for a throttled one, when the QoS timer last fired).
    fn admit(&mut self, index: usize) -> Admit {
        let slot = &self.slots[index];
        if slot.rate.is_unlimited() {
            return Admit::Go;
        }
        let length = u64::from(slot.header.length_bytes);
        let (counts, read_bytes, write_bytes) = match slot.header.command {
            Command::Read => (true, length, 0),
            Command::Write => (true, 0, length),
            Command::Trim | Command::WriteZeroes => (true, 0, 0),
            _ => (false, 0, 0),
        };
        let now_ns = self.clock.elapsed().as_nanos() as u64;
        self.bucket
            .take(&slot.rate, now_ns, counts, read_bytes, write_bytes)
    }

    fn throttle(&mut self, index: usize, wait_ns: Option<u64>, ctx: &mut SessionContext) {
        let slot = &mut self.slots[index];
        slot.state = SlotState::Throttled;
        slot.throttled_at = Some(Instant::now());
        self.throttled.push_back(index);
        if !self.timer_armed {
            self.arm_timer(wait_ns.unwrap_or(1_000_000), ctx);
        }
    }

    fn arm_timer(&mut self, wait_ns: u64, ctx: &mut SessionContext) {
        let wait_ns = wait_ns.clamp(1_000, MAX_TIMER_NS);
        *self.timer_spec = types::Timespec::new()
            .sec(wait_ns / 1_000_000_000)
            .nsec((wait_ns % 1_000_000_000) as u32);
        let entry = opcode::Timeout::new(&*self.timer_spec)
            .build()
            .user_data(ctx.tag(tag_of(TAG_TIMER, 0, 0, 0)));
        // SAFETY: the timespec is a box this session owns and does not touch until the timer
        // completes (timer_armed); the session outlives every entry it has on the ring.
        match unsafe { ctx.ring.push(&entry) } {
            Ok(()) => {
                self.timer_armed = true;
                self.ring_pending += 1;
            }
            Err(error) => self.close(&format!("cannot arm the QoS timer: {error}")),
        }
    }

    /// The QoS timer fired: run the throttled requests that now have tokens, in order.
    fn on_timer(&mut self, ctx: &mut SessionContext) {
        self.timer_armed = false;
        if self.closing {
            self.throttled.clear();
            return;
        }
        // The rate may have changed while they waited: one fresh decision for all of them.
        if let Some(decision) = self.decisions.decide(&self.published, ctx.reactor_index) {
            for &index in &self.throttled {
                self.slots[index].rate = decision.rate;
            }
        }
        while let Some(&index) = self.throttled.front() {
            match self.admit(index) {
                Admit::Go => {
                    self.throttled.pop_front();
                    let slot = &mut self.slots[index];
                    let waited_ns = slot
                        .throttled_at
                        .take()
                        .map_or(0, |at| at.elapsed().as_nanos() as u64);
                    slot.state = SlotState::Running;
                    self.vpath
                        .stats
                        .reactor(ctx.reactor_index)
                        .record_throttled(waited_ns);
                    self.run(index, ctx);
                }
                Admit::Wait(wait_ns) => {
                    self.arm_timer(wait_ns, ctx);
                    break;
                }
            }
        }
    }

    /// The NBD errno a request is refused with before it touches the volume, if any.
    fn refuse(&self, header: &RequestHeader, fits: bool, ops: AllowedOps) -> Option<u32> {
        let allowed = match header.command {
            Command::Read => ops.read,
            Command::Write => ops.write,
            Command::Flush => ops.flush,
            Command::Trim => ops.trim,
            Command::WriteZeroes => ops.write_zeroes,
            _ => true,
        };
        if !allowed {
            return Some(protocol::NBD_EPERM);
        }
        if header.flags & !header.command.known_flags() != 0 {
            return Some(protocol::NBD_EINVAL);
        }
        let block = u64::from(self.volume.block_size_bytes);
        let (offset, length) = (header.offset_bytes, u64::from(header.length_bytes));
        match header.command {
            Command::Read | Command::Write | Command::Trim | Command::WriteZeroes => {}
            Command::Flush => return None,
            _ => return Some(protocol::NBD_EINVAL),
        }
        if self.read_only && header.command != Command::Read {
            return Some(protocol::NBD_EPERM);
        }
        if !fits {
            return Some(protocol::NBD_EINVAL);
        }
        let in_range = offset
            .checked_add(length)
            .is_some_and(|end| end <= self.volume.size_bytes());
        if !in_range || offset % block != 0 || length % block != 0 {
            return Some(protocol::NBD_EINVAL);
        }
        if self.volume.is_deleted() {
            return Some(protocol::NBD_ESHUTDOWN);
        }
        None
    }

    // ---- running requests --------------------------------------------------------------------

    /// Starts the next round of a request, or queues it until the reactor's ring has credit
    /// for a round (then `on_ring_credit` starts it).
    fn run(&mut self, index: usize, ctx: &mut SessionContext) {
        if !self.ring_deferred.is_empty() || ctx.ring_credit() < MAX_RING_ENTRIES_PER_ROUND {
            self.ring_deferred.push_back(index);
            ctx.wait_for_ring_credit();
            return;
        }
        self.run_round(index, ctx);
    }

    /// Starts the next round of a request: as many segments as fit in one round.
    fn run_round(&mut self, index: usize, ctx: &mut SessionContext) {
        let header = self.slots[index].header;
        match header.command {
            Command::Flush => self.run_flush(index, ctx),
            Command::Write | Command::Trim | Command::WriteZeroes if self.slow_writes => {
                self.run_slow(index, ctx)
            }
            _ => self.run_segments(index, ctx),
        }
        if self.slots[index].state == SlotState::Running
            && self.slots[index].pending == 0
            && self.slots[index].waiting == 0
        {
            self.finish_round(index, ctx);
        }
    }

    fn run_flush(&mut self, index: usize, ctx: &mut SessionContext) {
        let volume = self.volume.clone();
        for (lun_index, member) in volume.pool.luns.iter().enumerate() {
            let tag = ctx.tag(tag_of(TAG_IO, index, lun_index, 0));
            // SAFETY: a flush refers to no buffer.
            let started = unsafe { member.lun.submit(&LunIo::Flush, tag, ctx.ring) };
            self.account_start(index, lun_index, started);
        }
        self.slots[index].cursor_bytes = u64::from(self.slots[index].header.length_bytes);
    }

    fn run_slow(&mut self, index: usize, ctx: &mut SessionContext) {
        let slot = &mut self.slots[index];
        let header = slot.header;
        let data = (header.command == Command::Write).then(|| SessionBuffer {
            ptr: slot.buf.as_ptr(),
            len_bytes: header.length_bytes as usize,
        });
        slot.slow_path = true;
        slot.waiting += 1;
        slot.state = SlotState::Waiting;
        let request = Request::SlowWrite {
            volume: self.volume.clone(),
            offset_bytes: header.offset_bytes,
            len_bytes: u64::from(header.length_bytes),
            data,
            fua: header.flags & protocol::NBD_CMD_FLAG_FUA != 0,
            reply: Reply {
                reactor: ctx.reactor.clone(),
                session: ctx.id,
                token: index as u64,
            },
        };
        if self.provisioner.post(request).is_err() {
            let slot = &mut self.slots[index];
            slot.waiting -= 1;
            slot.state = SlotState::Running;
            slot.error = protocol::NBD_EIO;
        }
    }

    fn run_segments(&mut self, index: usize, ctx: &mut SessionContext) {
        let volume = self.volume.clone();
        let map = volume.map();
        let header = self.slots[index].header;
        let start = header.offset_bytes;
        let total = u64::from(header.length_bytes);
        let fua = header.flags & protocol::NBD_CMD_FLAG_FUA != 0;
        let is_write = header.command == Command::Write;
        // Writes first make sure every extent they touch is mapped.
        if is_write {
            let mut at = self.slots[index].cursor_bytes;
            while at < total {
                let segment = volume.segment(map, start + at, total - at);
                let (len, extent) = match segment {
                    Segment::Unmapped { extent, len_bytes } => (len_bytes, Some(extent)),
                    Segment::Mapped { len_bytes, .. } => (len_bytes, None),
                };
                if let Some(extent) = extent {
                    self.request_provision(index, extent, ctx);
                }
                at += len;
            }
            if self.slots[index].waiting > 0 || self.slots[index].error != 0 {
                return;
            }
        }
        let mut segments = 0;
        let mut at = self.slots[index].cursor_bytes;
        while at < total && segments < MAX_SEGMENTS_PER_IO {
            let segment = volume.segment(map, start + at, total - at);
            let buf = self.slots[index].buf.as_mut_ptr();
            let len = match segment {
                Segment::Unmapped { len_bytes, .. } => {
                    if header.command == Command::Read {
                        // SAFETY: at + len_bytes <= total <= the buffer's length.
                        unsafe {
                            std::ptr::write_bytes(buf.add(at as usize), 0, len_bytes as usize)
                        };
                    }
                    len_bytes
                }
                Segment::Mapped {
                    lun,
                    lun_index,
                    offset_bytes,
                    len_bytes,
                } => {
                    // at + len_bytes <= total <= the buffer's length (reads and writes).
                    let io = match header.command {
                        Command::Read => LunIo::Read {
                            offset_bytes,
                            buf: buf.wrapping_add(at as usize),
                            len_bytes: len_bytes as u32,
                        },
                        Command::Write => LunIo::Write {
                            offset_bytes,
                            buf: buf.wrapping_add(at as usize),
                            len_bytes: len_bytes as u32,
                            fua,
                        },
                        _ => LunIo::WriteZeroes {
                            offset_bytes,
                            len_bytes,
                            fua,
                        },
                    };
                    let expected = if matches!(header.command, Command::Read | Command::Write) {
                        len_bytes as u32
                    } else {
                        0
                    };
                    let tag = ctx.tag(tag_of(TAG_IO, index, lun_index, expected));
                    // SAFETY: the slot's buffer stays put and untouched until every completion
                    // of this round is reaped: the slot is not reused before it is replied to.
                    let started = unsafe { lun.lun.submit(&io, tag, ctx.ring) };
                    self.account_start(index, lun_index, started);
                    segments += 1;
                    len_bytes
                }
            };
            at += len;
        }
        self.slots[index].cursor_bytes = at;
    }

    fn account_start(&mut self, index: usize, lun_index: usize, started: Started) {
        match started {
            Started::Queued(count) => {
                self.slots[index].pending += count;
                self.ring_pending += count;
            }
            Started::Done(result) => self.note_result(index, lun_index, result),
        }
    }

    /// Takes the result of one LUN I/O of request `index` on the pool's LUN `lun_index`. An
    /// error is counted on that LUN (which fails itself if its device is gone) and the request
    /// answers the host with EIO (ENOSPC for a full pool).
    fn note_result(&mut self, index: usize, lun_index: usize, result: Result<(), i32>) {
        let Err(errno) = result else {
            return;
        };
        let slot = &mut self.slots[index];
        let io_type = match slot.header.command {
            Command::Read => IoType::Read,
            Command::Flush => IoType::Flush,
            _ => IoType::Write,
        };
        let lun = self
            .volume
            .pool
            .luns
            .get(lun_index)
            .map(|member| &member.lun);
        if let Some(lun) = lun {
            lun.note_error(io_type, errno);
        }
        // Counted on the LUN, not logged here: a log line is a blocking write, and the control
        // thread logs the LUN's errors, rate-limited (control::lun_errors).
        if slot.error == 0 {
            slot.error = if errno == libc::ENOSPC {
                protocol::NBD_ENOSPC
            } else {
                protocol::NBD_EIO
            };
        }
    }

    fn request_provision(&mut self, index: usize, extent: u64, ctx: &mut SessionContext) {
        let request = Request::Provision {
            volume: self.volume.clone(),
            extent,
            reply: Reply {
                reactor: ctx.reactor.clone(),
                session: ctx.id,
                token: index as u64,
            },
        };
        let slot = &mut self.slots[index];
        if self.provisioner.post(request).is_ok() {
            slot.waiting += 1;
            slot.state = SlotState::Waiting;
        } else {
            slot.error = protocol::NBD_EIO;
        }
    }

    /// A round ended (all its completions in): start the next one or complete the request.
    fn finish_round(&mut self, index: usize, ctx: &mut SessionContext) {
        let slot = &self.slots[index];
        let total = u64::from(slot.header.length_bytes);
        if slot.error == 0 && !slot.slow_path && slot.cursor_bytes < total {
            self.run(index, ctx);
            return;
        }
        self.complete(index, ctx);
    }

    // ---- replying ----------------------------------------------------------------------------

    fn complete(&mut self, index: usize, ctx: &mut SessionContext) {
        let slot = &mut self.slots[index];
        let header = slot.header;
        let kind = match header.command {
            Command::Read => IoKind::Read,
            Command::Write => IoKind::Write,
            Command::Trim => IoKind::Unmap,
            Command::WriteZeroes => IoKind::WriteZeroes,
            _ => IoKind::Flush,
        };
        let latency_ns = slot.started.elapsed().as_nanos() as u64;
        self.volume.stats.record(
            ctx.reactor_index,
            kind,
            u64::from(header.length_bytes),
            latency_ns,
            slot.error != 0,
        );
        let op = match header.command {
            Command::Read => OpKind::Read,
            Command::Write => OpKind::Write,
            Command::Trim => OpKind::Trim,
            Command::WriteZeroes => OpKind::WriteZeroes,
            _ => OpKind::Flush,
        };
        self.vpath.stats.reactor(ctx.reactor_index).record(
            op,
            u64::from(header.length_bytes),
            slot.record_latency.then_some(latency_ns),
            slot.error != 0,
        );
        slot.reply = protocol::encode_simple_reply(slot.error, header.cookie);
        slot.state = SlotState::Replying;
        self.send_queue.push_back(index);
        self.post_send(ctx);
    }

    fn post_send(&mut self, ctx: &mut SessionContext) {
        if self.send_posted || self.send_queue.is_empty() {
            return;
        }
        self.sending.clear();
        self.send_iov.clear();
        while let Some(index) = self.send_queue.pop_front() {
            let slot = &self.slots[index];
            self.send_iov.push(libc::iovec {
                iov_base: slot.reply.as_ptr() as *mut _,
                iov_len: REPLY_HEADER_BYTES,
            });
            if slot.header.command == Command::Read
                && slot.error == 0
                && slot.header.length_bytes > 0
            {
                self.send_iov.push(libc::iovec {
                    iov_base: slot.buf.as_ptr() as *mut _,
                    iov_len: slot.header.length_bytes as usize,
                });
            }
            self.sending.push(index);
            if self.send_iov.len() + 2 > self.send_iov.capacity() || self.send_iov.len() >= 1000 {
                break;
            }
        }
        self.submit_send(ctx);
    }

    fn submit_send(&mut self, ctx: &mut SessionContext) {
        self.send_msg.msg_iov = self.send_iov.as_mut_ptr();
        self.send_msg.msg_iovlen = self.send_iov.len();
        let entry = opcode::SendMsg::new(self.fd(), &*self.send_msg as *const libc::msghdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(ctx.tag(tag_of(TAG_SEND, 0, 0, 0)));
        // SAFETY: the msghdr, the iovecs and the buffers they point at belong to this session and
        // stay untouched until the send completes (slots in `sending` are not reused before).
        match unsafe { ctx.ring.push(&entry) } {
            Ok(()) => {
                self.send_posted = true;
                self.ring_pending += 1;
            }
            Err(error) => self.close(&format!("cannot post a send: {error}")),
        }
    }

    fn on_sent(&mut self, result: i32, ctx: &mut SessionContext) {
        self.send_posted = false;
        if result <= 0 {
            self.close("send failed");
            self.release_sending();
            return;
        }
        // Drop the iovecs that went out; resend the rest of a partial send.
        let mut sent = result as usize;
        let mut first = 0;
        while first < self.send_iov.len() && sent >= self.send_iov[first].iov_len {
            sent -= self.send_iov[first].iov_len;
            first += 1;
        }
        if first < self.send_iov.len() {
            self.send_iov.drain(..first);
            let iov = &mut self.send_iov[0];
            // SAFETY: sent < iov_len, so the advanced pointer stays inside the same buffer.
            iov.iov_base = unsafe { (iov.iov_base as *mut u8).add(sent) }.cast();
            iov.iov_len -= sent;
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
        let slot = &mut self.slots[index];
        let charged = std::mem::take(&mut slot.charged_bytes);
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
        // Buffers are kept for reuse (a warm connection allocates nothing), but not past the
        // retention limit: a client that once had many large requests does not pin them.
        if self.retained_bytes > MAX_RETAINED_BUFFER_BYTES_PER_CONNECTION
            && slot.buf.len() > BUFFER_ALIGN_BYTES
        {
            let old_bytes = slot.buf.len();
            slot.buf = AlignedBuf::new(0);
            self.retained_bytes -= old_bytes - slot.buf.len();
        }
        slot.state = SlotState::Free;
        self.free_slots.push(index);
    }
}

impl Drop for NbdSession {
    /// A session can end with replies it never sent (the client went away): their charge goes
    /// back to the server's budget.
    fn drop(&mut self) {
        let charged: usize = self.slots.iter().map(|s| s.charged_bytes).sum();
        debug_assert_eq!(charged, self.buffer_bytes, "buffer accounting out of step");
        self.budget.release(charged);
    }
}

impl Session for NbdSession {
    fn start(&mut self, ctx: &mut SessionContext) {
        self.reactor_index = ctx.reactor_index;
        self.vpath
            .stats
            .reactor(ctx.reactor_index)
            .sessions
            .fetch_add(1, Ordering::Relaxed);
        self.post_recv(ctx);
    }

    fn on_ring_credit(&mut self, ctx: &mut SessionContext) {
        while let Some(&index) = self.ring_deferred.front() {
            if self.closing {
                self.ring_deferred.clear();
                break;
            }
            if ctx.ring_credit() < MAX_RING_ENTRIES_PER_ROUND {
                ctx.wait_for_ring_credit();
                return;
            }
            self.ring_deferred.pop_front();
            self.run_round(index, ctx);
        }
        if self.stalled {
            self.stalled = false;
            self.process_input(ctx);
        }
        self.maybe_finish();
    }

    fn revoke(&mut self, tag: u64, _ctx: &mut SessionContext) {
        if tag == self.vpath.id {
            self.close("its virtual path was deleted");
            self.maybe_finish();
        }
    }

    fn on_completion(&mut self, local_tag: u64, result: i32, ctx: &mut SessionContext) {
        self.ring_pending -= 1;
        let (local_tag, driver_timer) = split_tag(local_tag);
        let kind = local_tag >> 40;
        let index = ((local_tag >> 32) & 0xff) as usize;
        let lun_index = ((local_tag >> TAG_LUN_SHIFT) & 0xff) as usize;
        let expected = (local_tag & TAG_EXPECTED_MASK) as u32;
        match kind {
            TAG_RECV | TAG_PAYLOAD => {
                self.recv_posted = false;
                if result <= 0 {
                    if result < 0 && result != -libc::ECONNRESET {
                        log::debug!("nbd {}: receive failed: errno {}", self.peer, -result);
                    }
                    self.close("connection closed by the client");
                } else if kind == TAG_RECV {
                    self.recv_end += result as usize;
                    self.process_input(ctx);
                } else if let Inbound::Payload { slot, got, need } = self.inbound {
                    let got = got + result as usize;
                    if got < need {
                        self.inbound = Inbound::Payload { slot, got, need };
                        self.post_recv(ctx);
                    } else {
                        self.inbound = Inbound::Headers;
                        self.start_request(slot, ctx);
                        self.process_input(ctx);
                    }
                }
            }
            TAG_SEND => self.on_sent(result, ctx),
            TAG_TIMER => self.on_timer(ctx),
            TAG_IO => {
                self.slots[index].pending -= 1;
                self.note_result(
                    index,
                    lun_index,
                    completion_result(result, expected, driver_timer),
                );
                let slot = &self.slots[index];
                if slot.pending == 0 && slot.waiting == 0 {
                    self.finish_round(index, ctx);
                }
            }
            _ => log::error!(
                "nbd {}: completion with unknown tag {local_tag:#x}",
                self.peer
            ),
        }
        self.maybe_finish();
    }

    fn on_wake(&mut self, token: u64, result: i32, ctx: &mut SessionContext) {
        let index = token as usize;
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        slot.waiting = slot.waiting.saturating_sub(1);
        if result != 0 && slot.error == 0 {
            slot.error = if result == libc::ENOSPC {
                protocol::NBD_ENOSPC
            } else {
                protocol::NBD_EIO
            };
        }
        if slot.waiting == 0 {
            slot.state = SlotState::Running;
            if slot.slow_path || slot.error != 0 {
                self.complete(index, ctx);
            } else {
                self.run(index, ctx);
            }
        }
        self.maybe_finish();
    }

    fn begin_shutdown(&mut self, _ctx: &mut SessionContext) {
        self.close("server shutting down");
        self.maybe_finish();
    }

    fn is_finished(&self) -> bool {
        self.finished
    }
}
