//! The per-session block engine: everything between "a front end has a block request" and
//! "the request finished, with this status".
//!
//! A front end owns one [`BlockEngine`] per session and drives it from its reactor callbacks:
//!
//! ```text
//!  front end                          BlockEngine
//!  ─────────                          ───────────
//!  decide() / check_*()  ──────────▶  VP decision (one Acquire load), allowed ops, range
//!  reserve(request) ─▶ slot k ──────▶ slot k: request, buffer (grown once, reused)
//!  buffer_mut(k): payload in
//!  start(k) ────────────────────────▶ QoS tokens ─ short ─▶ throttled queue + ring timer
//!                                      │ go
//!                                      ▼
//!                                     ring credit? ─ short ─▶ deferred until on_ring_credit
//!                                      │
//!                                      ▼
//!                                     write gate entered (left when the round's I/O is done)
//!                                     Volume::segment ─▶ unmapped write ─▶ provisioner ─wake─┐
//!                                      │                 slow write (RMW) ▶ provisioner ─wake─┤
//!                                      │                 TRIM, whole extent ▶ Release ─wake─┤
//!                                      ▼                                                     │
//!                                     Lun::submit on the ring (tag: slot, LUN, bytes) ◀───────┘
//!  on_completion(tag) ──────────────▶ completion_result, LUN error counters
//!  on_wake / on_ring_credit ─────────▶ …
//!  pop_finished() ◀────────────────── (slot, status, latency): volume and VP counters done
//!  release(k) ──────────────────────▶ slot free, buffer kept (up to the retention limit)
//! ```
//!
//! Nothing here allocates per request or takes a lock: slots are made when the session is
//! built, a slot's buffer grows only when a request is larger than any before it, and the
//! finished queue holds at most one entry per slot. Every request that is started finishes
//! exactly once, through [`BlockEngine::pop_finished`] — also when the session closes: a
//! throttled or deferred request then finishes with [`BlockStatus::ShutDown`], one in flight
//! with what its LUN I/O returns.

use super::clock::TickClock;
use super::request::{BlockOp, BlockRequest};
use super::status::BlockStatus;
use super::tag::{self, KIND_LUN_IO, KIND_QOS_TIMER};
use crate::backend::aligned_buf::{AlignedBuf, BUFFER_ALIGN_BYTES};
use crate::backend::{completion_result, Lun, LunIo, Started};
use crate::constants::{MAX_QOS_TIMER_NS, MAX_RING_ENTRIES_PER_ROUND, MAX_SEGMENTS_PER_IO};
use crate::domain::capabilities::AllowedOps;
use crate::domain::decision::{DecisionCache, PathDecision};
use crate::domain::qos::{Admit, RateLimit, TokenBucket};
use crate::domain::snapshot::Published;
use crate::domain::vpath::{AccessMode, Vpath};
use crate::reactor::session::SessionContext;
use crate::volume::mirror::Mirror;
use crate::volume::provisioner::{Provisioner, Reply, Request, SessionBuffer};
use crate::volume::reclaim::covers_whole_extent;
use crate::volume::write_gate::GateTicket;
use crate::volume::{Segment, Volume};
use io_uring::{opcode, types};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How a session's engine is sized and what it does per request.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Requests in flight at once (the session's slots), at most [`tag::MAX_SLOTS`].
    pub slots: usize,
    /// The number of the engine's first slot in ring tags and provisioner tokens: a session
    /// with several engines (one per SCSI LUN) gives each its own range,
    /// `slot_base..slot_base + slots`, and routes a completion by its slot. 0 for one engine.
    pub slot_base: usize,
    /// Largest request, in bytes.
    pub max_io_bytes: usize,
    /// Buffer each slot gets when the engine is built (0: grown when first needed).
    pub initial_buffer_bytes: usize,
    /// Slot buffer bytes kept for reuse once their requests are released.
    pub retained_buffer_bytes: usize,
    /// Whether requests go through the domain layer: VP decision, allowed operations, QoS
    /// and the VP's statistics. Only `sds perf --no-domain` turns it off, to measure it.
    pub domain: bool,
}

impl EngineConfig {
    /// A front end's engine (NBD connection, iSCSI LUN, NVMe/TCP namespace): `slots` from
    /// `slot_base`, requests up to `max_io_bytes`, slot buffers grown when first needed and
    /// `retained_buffer_bytes` of them kept, every request through the domain layer.
    pub fn front_end(
        slot_base: usize,
        slots: usize,
        max_io_bytes: usize,
        retained_buffer_bytes: usize,
    ) -> Self {
        Self {
            slots,
            slot_base,
            max_io_bytes,
            initial_buffer_bytes: 0,
            retained_buffer_bytes,
            domain: true,
        }
    }
}

/// What the domain layer decided for a request when it was reserved.
#[derive(Clone, Copy, Debug)]
pub struct Admission {
    pub record_latency: bool,
    pub rate: RateLimit,
}

impl Admission {
    /// No domain layer: nothing limited, latency recorded.
    const UNLIMITED: Admission = Admission {
        record_latency: true,
        rate: RateLimit::UNLIMITED,
    };
}

/// A request that finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    pub slot: usize,
    pub status: BlockStatus,
    /// From [`BlockEngine::reserve`] to the end, on the engine's clock.
    pub latency_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Reserved; the front end is filling its buffer (a write's payload arriving).
    Reserved,
    Running,
    /// Waiting for the provisioner (extent mapping or slow-path write).
    Waiting,
    /// Waiting for QoS tokens.
    Throttled,
    /// Waiting for ring credit.
    Deferred,
    /// Finished; the front end has it until it releases it.
    Finished,
}

struct Slot {
    state: SlotState,
    request: BlockRequest,
    buf: AlignedBuf,
    /// Bytes of the request handled by completed rounds.
    cursor_bytes: u64,
    /// Ring completions still to come for the current round.
    pending: u32,
    /// Provisioner answers still to come.
    waiting: u32,
    /// The volume's write gate, entered when the round loaded its mapping slots and held
    /// until its LUN I/O completed (see [`crate::volume::write_gate`]).
    gate: Option<GateTicket>,
    /// The first failure, `Ok` if none.
    status: BlockStatus,
    started_ticks: u64,
    /// When it started waiting for QoS tokens.
    throttled_ticks: u64,
    /// Whether this request went to the slow path (answered by one wake).
    slow_path: bool,
    /// From reserve to finish, once finished.
    latency_ns: u64,
    admission: Admission,
    /// A mirror volume's request: see `engine_mirror`.
    mirror: engine_mirror::MirrorSlot,
}

/// The finished requests' slots, oldest first: a ring as large as the slots (a slot is in
/// it at most once, from its finish to its release), so pushing never grows it.
struct FinishedQueue {
    ring: Box<[u32]>,
    head: usize,
    len: usize,
}

impl FinishedQueue {
    fn new(slots: usize) -> Self {
        Self {
            ring: vec![0; slots.next_power_of_two()].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    #[inline]
    fn push(&mut self, index: usize) {
        debug_assert!(self.len < self.ring.len(), "a slot finished twice");
        let mask = self.ring.len() - 1;
        self.ring[(self.head + self.len) & mask] = index as u32;
        self.len += 1;
    }

    #[inline]
    fn pop(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let index = self.ring[self.head & (self.ring.len() - 1)];
        self.head = (self.head + 1) & (self.ring.len() - 1);
        self.len -= 1;
        Some(index as usize)
    }
}

/// The engine of one session. See the module documentation.
pub struct BlockEngine {
    vpath: Arc<Vpath>,
    volume: Arc<Volume>,
    /// The volume's mirror body, when it is a mirror (its rounds: `engine_mirror`).
    mirror: Option<Arc<Mirror>>,
    published: Arc<Published>,
    provisioner: Provisioner,
    decisions: DecisionCache,
    config: EngineConfig,
    read_only: bool,
    /// Writes, TRIM and WRITE_ZEROES go to the provisioner's read-modify-write path: the
    /// volume's blocks are smaller than some LUN's.
    slow_writes: bool,
    /// The largest block size of the volume's LUNs (all parts' for a composite).
    max_lun_block_bytes: u32,
    clock: TickClock,
    bucket: TokenBucket,
    /// Requests waiting for QoS tokens, oldest first.
    throttled: VecDeque<usize>,
    timer_armed: bool,
    /// The QoS timer's timeout; the ring reads it when the entry is submitted.
    timer_spec: Box<types::Timespec>,
    /// Requests whose next round waits for ring credit, oldest first.
    ring_deferred: VecDeque<usize>,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    finished: FinishedQueue,
    /// Bytes of all slot buffers kept allocated, in use or not.
    retained_bytes: usize,
    /// Ring entries of the engine still to complete (LUN I/O and the timer).
    ring_pending: u32,
    /// Provisioner answers still to come, over all slots.
    wakes_pending: u32,
    /// The reactor serving the session, once attached.
    reactor_index: Option<usize>,
    /// The reactor whose counters the engine writes: `reactor_index`, 0 before attaching.
    counters_reactor: usize,
    /// While a ring completion is being handled: the ticks read for it, which the request it
    /// finishes reuses (one clock read per completion).
    completion_ticks: Option<u64>,
    closing: bool,
    /// Requests the token bucket made wait (what `sds perf` reports).
    throttled_requests: u64,
}

// SAFETY: the engine holds raw pointers only inside requests it has handed to the ring or the
// provisioner (slot buffers it owns) and the timer's timespec (a box it owns); a session moves
// between threads only before it is attached, with nothing in flight.
unsafe impl Send for BlockEngine {}

impl BlockEngine {
    /// An engine for requests through `vpath` to its volume. Every slot (and, with
    /// `initial_buffer_bytes`, its buffer) is made here, not on the I/O path.
    pub fn new(
        vpath: Arc<Vpath>,
        path_hint: usize,
        published: Arc<Published>,
        provisioner: Provisioner,
        config: EngineConfig,
    ) -> Self {
        assert!(
            config.slots > 0 && config.slot_base + config.slots <= tag::MAX_SLOTS,
            "slots within the tag layout"
        );
        let volume = vpath.volume.clone();
        let slots: Vec<Slot> = (0..config.slots)
            .map(|_| Slot {
                state: SlotState::Free,
                request: BlockRequest {
                    op: BlockOp::Read,
                    offset_bytes: 0,
                    length_bytes: 0,
                    fua: false,
                },
                buf: AlignedBuf::new(config.initial_buffer_bytes),
                cursor_bytes: 0,
                pending: 0,
                waiting: 0,
                gate: None,
                status: BlockStatus::Ok,
                started_ticks: 0,
                throttled_ticks: 0,
                slow_path: false,
                latency_ns: 0,
                admission: Admission::UNLIMITED,
                mirror: Default::default(),
            })
            .collect();
        let retained_bytes = slots.iter().map(|s| s.buf.len()).sum();
        Self {
            decisions: DecisionCache::new(vpath.clone(), path_hint),
            // A snapshot takes no write, whatever the path says.
            read_only: vpath.mode == AccessMode::ReadOnly || volume.read_only,
            slow_writes: volume.needs_read_modify_write(),
            max_lun_block_bytes: volume.max_lun_block_bytes(),
            mirror: volume.mirror.clone(),
            vpath,
            volume,
            published,
            provisioner,
            config,
            clock: TickClock::shared(),
            bucket: TokenBucket::default(),
            throttled: VecDeque::with_capacity(config.slots),
            timer_armed: false,
            timer_spec: Box::new(types::Timespec::new()),
            ring_deferred: VecDeque::with_capacity(config.slots),
            slots,
            free_slots: (0..config.slots).rev().collect(),
            finished: FinishedQueue::new(config.slots),
            retained_bytes,
            ring_pending: 0,
            wakes_pending: 0,
            reactor_index: None,
            counters_reactor: 0,
            completion_ticks: None,
            closing: false,
            throttled_requests: 0,
        }
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    pub fn vpath(&self) -> &Arc<Vpath> {
        &self.vpath
    }

    pub fn clock(&self) -> TickClock {
        self.clock
    }

    /// Requests the token bucket has made wait so far.
    pub fn throttled_requests(&self) -> u64 {
        self.throttled_requests
    }

    // ---- life of the session -----------------------------------------------------------

    /// The session started on reactor `reactor_index`: it counts as one of the VP's sessions
    /// there (its QoS rate is shared among them).
    pub fn attach(&mut self, reactor_index: usize) {
        if self.reactor_index.is_none() && self.config.domain {
            self.vpath
                .stats
                .reactor(reactor_index)
                .sessions
                .fetch_add(1, Ordering::Relaxed);
        }
        self.reactor_index = Some(reactor_index);
        self.counters_reactor = reactor_index;
    }

    /// The session is closing: throttled and deferred requests finish now with
    /// [`BlockStatus::ShutDown`]; requests on the ring or at the provisioner finish when
    /// their answers come. Nothing new may start.
    pub fn shut_down(&mut self) {
        if self.closing {
            return;
        }
        self.closing = true;
        while let Some(index) = self.throttled.pop_front() {
            self.fail(index, BlockStatus::ShutDown);
        }
        while let Some(index) = self.ring_deferred.pop_front() {
            self.fail(index, BlockStatus::ShutDown);
        }
    }

    /// Whether nothing of the engine is on the ring or at the provisioner: the session may be
    /// dropped (its buffers are no longer referenced).
    pub fn is_idle(&self) -> bool {
        self.ring_pending == 0 && self.wakes_pending == 0
    }

    /// The session is done: it no longer counts among the VP's sessions.
    pub fn detach(&mut self) {
        if let Some(reactor_index) = self.reactor_index.take() {
            if self.config.domain {
                self.vpath
                    .stats
                    .reactor(reactor_index)
                    .sessions
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    // ---- admitting a request -----------------------------------------------------------

    /// The VP's current decision (one Acquire load while nothing changed); `None` once the VP
    /// is gone. Without the domain layer: nothing forbidden, nothing limited.
    #[inline]
    pub fn decide(&mut self) -> Option<PathDecision> {
        if !self.config.domain {
            return Some(PathDecision {
                allowed_ops: AllowedOps::default(),
                record_latency: true,
                rate: RateLimit::UNLIMITED,
            });
        }
        self.decisions
            .decide(&self.published, self.counters_reactor)
    }

    /// Whether the path may send `op`: the domain's allowed operations and the path's access
    /// mode.
    #[inline]
    pub fn check_permitted(&self, op: BlockOp, decision: &PathDecision) -> Result<(), BlockStatus> {
        if !decision.allowed_ops.allows(op) || (self.read_only && op.modifies()) {
            return Err(BlockStatus::NotPermitted);
        }
        Ok(())
    }

    /// Whether the request fits: size, range, alignment to the volume's blocks, and a volume
    /// that is not being deleted.
    #[inline]
    pub fn check_range(&self, request: &BlockRequest) -> Result<(), BlockStatus> {
        if request.op == BlockOp::Flush {
            return Ok(());
        }
        if request.buffer_bytes() > self.config.max_io_bytes {
            return Err(BlockStatus::TooLarge);
        }
        let block = u64::from(self.volume.block_size_bytes);
        let (offset, length) = (request.offset_bytes, u64::from(request.length_bytes));
        let in_range = offset
            .checked_add(length)
            .is_some_and(|end| end <= self.volume.size_bytes());
        if !in_range {
            return Err(BlockStatus::OutOfRange);
        }
        // Block sizes are powers of two (512 or 4096): a mask, not a division.
        debug_assert!(block.is_power_of_two());
        if (offset | length) & (block - 1) != 0 {
            return Err(BlockStatus::Invalid);
        }
        if self.volume.is_deleted() {
            return Err(BlockStatus::ShutDown);
        }
        Ok(())
    }

    /// Both checks, with the decision's admission for [`Self::reserve`].
    #[inline]
    pub fn admit(
        &self,
        request: &BlockRequest,
        decision: &PathDecision,
    ) -> Result<Admission, BlockStatus> {
        self.check_permitted(request.op, decision)?;
        self.check_range(request)?;
        Ok(Admission {
            record_latency: decision.record_latency,
            rate: decision.rate,
        })
    }

    // ---- slots -------------------------------------------------------------------------

    #[inline]
    pub fn has_free_slot(&self) -> bool {
        !self.free_slots.is_empty()
    }

    /// Takes a free slot for `request`, its buffer grown to the request's data if it is
    /// smaller (the only allocation, and only until the slot has seen its largest request).
    /// The clock of its latency starts here. `None` when every slot is in use.
    #[inline]
    pub fn reserve(&mut self, request: BlockRequest, admission: Admission) -> Option<usize> {
        let index = self.free_slots.pop()?;
        let now = self.clock.now();
        let slot = &mut self.slots[index];
        debug_assert_eq!(slot.state, SlotState::Free);
        let need = request.buffer_bytes();
        if slot.buf.len() < need {
            let old_bytes = slot.buf.len();
            slot.buf = AlignedBuf::new(need.next_power_of_two().max(BUFFER_ALIGN_BYTES));
            self.retained_bytes += slot.buf.len() - old_bytes;
        }
        slot.state = SlotState::Reserved;
        slot.request = request;
        slot.cursor_bytes = 0;
        slot.pending = 0;
        slot.waiting = 0;
        slot.status = BlockStatus::Ok;
        slot.started_ticks = now;
        slot.slow_path = false;
        slot.admission = admission;
        slot.mirror = Default::default();
        Some(index)
    }

    /// Takes a free slot for a request refused before it touched the volume, and finishes it
    /// at once with `status` (counted like any other; its buffer is not grown). `None` when
    /// every slot is in use.
    pub fn refuse(&mut self, request: BlockRequest, status: BlockStatus) -> Option<usize> {
        let index = self.free_slots.pop()?;
        let now = self.clock.now();
        let slot = &mut self.slots[index];
        debug_assert_eq!(slot.state, SlotState::Free);
        slot.request = request;
        slot.pending = 0;
        slot.waiting = 0;
        slot.status = status;
        slot.started_ticks = now;
        slot.admission = Admission::UNLIMITED;
        self.finish(index);
        Some(index)
    }

    /// The request's data: what a write sends, what a read returned.
    #[inline]
    pub fn buffer(&self, index: usize) -> &[u8] {
        let slot = &self.slots[index];
        &slot.buf.as_slice()[..slot.request.buffer_bytes()]
    }

    #[inline]
    pub fn buffer_mut(&mut self, index: usize) -> &mut [u8] {
        let slot = &mut self.slots[index];
        let len = slot.request.buffer_bytes();
        &mut slot.buf.as_mut_slice()[..len]
    }

    pub fn request(&self, index: usize) -> &BlockRequest {
        &self.slots[index].request
    }

    /// Finishes a reserved request at once with `status` (refused before it touched the
    /// volume); it is counted like any other.
    pub fn fail(&mut self, index: usize, status: BlockStatus) {
        let slot = &mut self.slots[index];
        if slot.status.is_ok() {
            slot.status = status;
        }
        self.finish(index);
    }

    /// The next finished request, oldest first.
    #[inline]
    pub fn pop_finished(&mut self) -> Option<Finished> {
        let index = self.finished.pop()?;
        let slot = &self.slots[index];
        Some(Finished {
            slot: index,
            status: slot.status,
            latency_ns: slot.latency_ns,
        })
    }

    /// Gives a finished request's slot back. Its buffer is kept for reuse, but not past the
    /// retention limit: a session that once had many large requests does not pin them.
    #[inline]
    pub fn release(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        debug_assert_eq!(slot.state, SlotState::Finished, "released twice or early");
        if self.retained_bytes > self.config.retained_buffer_bytes
            && slot.buf.len() > BUFFER_ALIGN_BYTES
        {
            let old_bytes = slot.buf.len();
            slot.buf = AlignedBuf::new(0);
            self.retained_bytes -= old_bytes - slot.buf.len();
        }
        slot.state = SlotState::Free;
        self.free_slots.push(index);
    }

    // ---- running a request -------------------------------------------------------------

    /// Starts a reserved request (its data in the buffer): QoS first, then its first round.
    #[inline]
    pub fn start(&mut self, index: usize, ctx: &mut SessionContext) {
        debug_assert_eq!(self.slots[index].state, SlotState::Reserved);
        if self.closing {
            self.fail(index, BlockStatus::ShutDown);
            return;
        }
        if !self.throttled.is_empty() {
            // Behind the ones already waiting, in order.
            self.throttle(index, None, ctx);
            return;
        }
        // Without the domain layer, or at an unlimited rate, no tokens are taken: no call, no
        // clock read.
        if !self.config.domain || self.slots[index].admission.rate.is_unlimited() {
            self.run(index, ctx);
            return;
        }
        match self.take_tokens(index) {
            Admit::Go => self.run(index, ctx),
            Admit::Wait(wait_ns) => self.throttle(index, Some(wait_ns), ctx),
        }
    }

    /// Whether new requests should wait: earlier ones are waiting for ring credit, or the
    /// ring is short of it. Asks the reactor for a callback ([`Self::on_ring_credit`]) then.
    #[inline]
    pub fn ring_blocked(&self, ctx: &mut SessionContext) -> bool {
        if !self.ring_deferred.is_empty() || ctx.ring_credit() < MAX_RING_ENTRIES_PER_ROUND {
            ctx.wait_for_ring_credit();
            return true;
        }
        false
    }

    /// Takes the request's tokens at the rate it was admitted at (or, for a throttled one, the
    /// rate when the QoS timer last fired). An unlimited rate takes none.
    #[inline]
    fn take_tokens(&mut self, index: usize) -> Admit {
        let slot = &self.slots[index];
        if slot.admission.rate.is_unlimited() {
            return Admit::Go;
        }
        let request = slot.request;
        let length = u64::from(request.length_bytes);
        let (counts, read_bytes, write_bytes) = match request.op {
            BlockOp::Read => (true, length, 0),
            BlockOp::Write => (true, 0, length),
            BlockOp::Trim | BlockOp::WriteZeroes => (true, 0, 0),
            BlockOp::Flush => (false, 0, 0),
        };
        let now_ns = self.clock.to_ns(self.clock.now());
        let rate = slot.admission.rate;
        self.bucket
            .take(&rate, now_ns, counts, read_bytes, write_bytes)
    }

    fn throttle(&mut self, index: usize, wait_ns: Option<u64>, ctx: &mut SessionContext) {
        let now = self.clock.now();
        let slot = &mut self.slots[index];
        slot.state = SlotState::Throttled;
        slot.throttled_ticks = now;
        self.throttled.push_back(index);
        self.throttled_requests += 1;
        if !self.timer_armed {
            self.arm_timer(wait_ns.unwrap_or(1_000_000), ctx);
        }
    }

    fn arm_timer(&mut self, wait_ns: u64, ctx: &mut SessionContext) {
        let wait_ns = wait_ns.clamp(1_000, MAX_QOS_TIMER_NS);
        *self.timer_spec = types::Timespec::new()
            .sec(wait_ns / 1_000_000_000)
            .nsec((wait_ns % 1_000_000_000) as u32);
        let entry = opcode::Timeout::new(&*self.timer_spec)
            .build()
            .user_data(ctx.tag(tag::encode(KIND_QOS_TIMER, self.config.slot_base, 0, 0)));
        // SAFETY: the timespec is a box this engine owns and does not touch until the timer
        // completes (timer_armed); the session outlives every entry it has on the ring.
        if unsafe { ctx.ring.push(&entry) }.is_err() {
            // No timer, no retry: the throttled requests fail rather than hang.
            while let Some(index) = self.throttled.pop_front() {
                self.fail(index, BlockStatus::IoError);
            }
            return;
        }
        self.timer_armed = true;
        self.ring_pending += 1;
    }

    /// The QoS timer fired: run the throttled requests that now have tokens, in order.
    fn on_timer(&mut self, ctx: &mut SessionContext) {
        self.timer_armed = false;
        if self.closing {
            return;
        }
        // The rate may have changed while they waited: one fresh decision for all of them.
        if let Some(decision) = self.decide() {
            for &index in &self.throttled {
                self.slots[index].admission.rate = decision.rate;
            }
        }
        while let Some(&index) = self.throttled.front() {
            match self.take_tokens(index) {
                Admit::Go => {
                    self.throttled.pop_front();
                    let waited_ns = self.clock.to_ns(
                        self.clock
                            .now()
                            .wrapping_sub(self.slots[index].throttled_ticks),
                    );
                    if let (true, Some(reactor_index)) = (self.config.domain, self.reactor_index) {
                        self.vpath
                            .stats
                            .reactor(reactor_index)
                            .record_throttled(waited_ns);
                    }
                    self.run(index, ctx);
                }
                Admit::Wait(wait_ns) => {
                    self.arm_timer(wait_ns, ctx);
                    break;
                }
            }
        }
    }

    /// Starts the next round of a request, or queues it until the reactor's ring has credit
    /// for a round (then [`Self::on_ring_credit`] starts it).
    #[inline]
    fn run(&mut self, index: usize, ctx: &mut SessionContext) {
        if !self.ring_deferred.is_empty() || ctx.ring_credit() < MAX_RING_ENTRIES_PER_ROUND {
            self.defer(index, ctx);
            return;
        }
        self.run_rounds(index, ctx);
    }

    fn defer(&mut self, index: usize, ctx: &mut SessionContext) {
        self.slots[index].state = SlotState::Deferred;
        self.ring_deferred.push_back(index);
        ctx.wait_for_ring_credit();
    }

    /// Ring entries were freed: start the deferred rounds the credit covers, in order.
    pub fn on_ring_credit(&mut self, ctx: &mut SessionContext) {
        while let Some(&index) = self.ring_deferred.front() {
            if ctx.ring_credit() < MAX_RING_ENTRIES_PER_ROUND {
                ctx.wait_for_ring_credit();
                return;
            }
            self.ring_deferred.pop_front();
            self.run_rounds(index, ctx);
        }
    }

    /// Runs rounds of a request (the ring has credit for the first): one round after the
    /// other while each completes at once (null and mem LUNs), until one waits for the ring
    /// or the provisioner, the request finishes, or the next round must wait for credit. A
    /// loop, not a recursion through [`Self::finish_round`], so the one-round case is inlined.
    #[inline]
    fn run_rounds(&mut self, index: usize, ctx: &mut SessionContext) {
        loop {
            self.slots[index].state = SlotState::Running;
            let op = self.slots[index].request.op;
            if self.mirror.is_some() {
                self.run_mirror_round(index, ctx);
            } else if !self.slow_writes && matches!(op, BlockOp::Read | BlockOp::Write) {
                // The common case first: no read-modify-write volume, data to move.
                self.run_segments(index, ctx);
            } else {
                self.run_other_round(index, op, ctx);
            }
            let slot = &self.slots[index];
            if slot.state != SlotState::Running || slot.pending != 0 || slot.waiting != 0 {
                return;
            }
            // The round completed at once.
            if self.mirror.is_some() && self.mirror_round_end(index, ctx) {
                return;
            }
            if !self.has_next_round(index) {
                self.finish(index);
                return;
            }
            if self.closing {
                self.fail(index, BlockStatus::ShutDown);
                return;
            }
            if !self.ring_deferred.is_empty() || ctx.ring_credit() < MAX_RING_ENTRIES_PER_ROUND {
                self.defer(index, ctx);
                return;
            }
        }
    }

    /// A round of a flush, a TRIM or WRITE_ZEROES, or of any request on a volume whose
    /// blocks are smaller than its LUNs'.
    fn run_other_round(&mut self, index: usize, op: BlockOp, ctx: &mut SessionContext) {
        match op {
            BlockOp::Flush => self.run_flush(index, ctx),
            BlockOp::Write | BlockOp::Trim | BlockOp::WriteZeroes if self.slow_writes => {
                self.run_slow(index, ctx)
            }
            BlockOp::Read if self.needs_slow_read(index) => self.run_slow(index, ctx),
            // A composite zeroes: its parts' extents are given back only through the parts.
            BlockOp::Trim if self.volume.thin && self.volume.composite().is_none() => {
                self.run_trim(index, ctx)
            }
            _ => self.run_segments(index, ctx),
        }
    }

    /// Whether a request whose round has ended has more to do: no failure, not on the slow
    /// path (one wake answers all of it), bytes left.
    #[inline]
    fn has_next_round(&self, index: usize) -> bool {
        let slot = &self.slots[index];
        slot.status.is_ok()
            && !slot.slow_path
            && slot.cursor_bytes < u64::from(slot.request.length_bytes)
    }

    /// Whether a read is narrower than a LUN block it may touch: a LUN reads whole blocks of
    /// its own, so such a read goes through the provisioning thread's bounce buffer.
    #[inline]
    fn needs_slow_read(&self, index: usize) -> bool {
        let request = &self.slots[index].request;
        let block = u64::from(self.max_lun_block_bytes);
        self.slow_writes
            && (request.offset_bytes % block != 0 || u64::from(request.length_bytes) % block != 0)
    }

    /// The ring tag of a LUN I/O of slot `index`, numbered from the engine's slot base.
    #[inline]
    fn lun_io_tag(&self, index: usize, lun_index: usize, expected_bytes: u32) -> u64 {
        tag::encode(
            KIND_LUN_IO,
            self.config.slot_base + index,
            lun_index,
            expected_bytes,
        )
    }

    fn run_flush(&mut self, index: usize, ctx: &mut SessionContext) {
        let volume = self.volume.clone();
        // Every distinct LUN under the volume (all parts' for a composite).
        for (lun_index, member) in volume.flush_luns() {
            let tag = ctx.tag(self.lun_io_tag(index, lun_index, 0));
            // SAFETY: a flush refers to no buffer.
            let started = unsafe { submit_lun(&*member.lun, &LunIo::Flush, tag, ctx) };
            self.account_start(index, lun_index, started);
        }
        self.slots[index].cursor_bytes = u64::from(self.slots[index].request.length_bytes);
    }

    /// The read-modify-write path: the provisioning thread does the whole request.
    fn run_slow(&mut self, index: usize, ctx: &mut SessionContext) {
        let slot = &mut self.slots[index];
        let request = slot.request;
        let data = request.op.moves_data().then(|| SessionBuffer {
            ptr: slot.buf.as_mut_ptr(),
            len_bytes: request.length_bytes as usize,
        });
        let reply = self.reply_for(index, ctx);
        let volume = self.volume.clone();
        let (offset_bytes, len_bytes) = (request.offset_bytes, u64::from(request.length_bytes));
        let request = match (request.op, data) {
            (BlockOp::Read, Some(data)) => Request::SlowRead {
                volume,
                offset_bytes,
                len_bytes,
                data,
                reply,
            },
            (_, data) => Request::SlowWrite {
                volume,
                offset_bytes,
                len_bytes,
                data,
                fua: request.fua,
                trim: request.op == BlockOp::Trim,
                reply,
            },
        };
        if self.provisioner.post(request).is_ok() {
            let slot = &mut self.slots[index];
            slot.slow_path = true;
            slot.waiting += 1;
            slot.state = SlotState::Waiting;
            self.wakes_pending += 1;
        } else {
            self.note_status(index, BlockStatus::IoError);
        }
    }

    /// Where the provisioning thread answers a request of slot `index`: this session, the
    /// slot numbered from the engine's slot base.
    fn reply_for(&self, index: usize, ctx: &SessionContext) -> Reply {
        Reply {
            reactor: ctx.reactor.clone(),
            session: ctx.id,
            token: (self.config.slot_base + index) as u64,
        }
    }

    /// Posts `request` to the provisioning thread; request `index` waits for its answer (or
    /// fails if the provisioning thread does not take it).
    fn post_and_wait(&mut self, index: usize, request: Request) {
        if self.provisioner.post(request).is_ok() {
            let slot = &mut self.slots[index];
            slot.waiting += 1;
            slot.state = SlotState::Waiting;
            self.wakes_pending += 1;
        } else {
            self.note_status(index, BlockStatus::IoError);
        }
    }

    /// Asks the provisioner to map `extent` of `volume` (the engine's, or a composite's part).
    fn request_provision(
        &mut self,
        index: usize,
        volume: Arc<Volume>,
        extent: u64,
        ctx: &mut SessionContext,
    ) {
        let request = Request::Provision {
            volume,
            extent,
            reply: self.reply_for(index, ctx),
        };
        self.post_and_wait(index, request);
    }

    #[inline]
    fn run_segments(&mut self, index: usize, ctx: &mut SessionContext) {
        // Split borrows: the volume is read while the slot and the counters change, without
        // an Arc clone (two atomic read-modify-writes) per request.
        let Self {
            volume,
            slots,
            ring_pending,
            config,
            clock,
            counters_reactor,
            ..
        } = self;
        let volume: &Volume = volume;
        let map = volume.map();
        let slot = &mut slots[index];
        let request = slot.request;
        let start = request.offset_bytes;
        let total = u64::from(request.length_bytes);
        // Before any slot is loaded: a release (TRIM), or a snapshot marking slots shared,
        // waits for this round's LUN I/O.
        let ticket = volume.write_gate.enter();
        // A round that changes data first makes sure every extent it touches is mapped
        // (writes) and its own (not shared with a snapshot or a clone: those are copied first).
        if request.op.modifies() {
            let mut at = slot.cursor_bytes;
            let mut provide = false;
            while at < total {
                at += match volume.segment(map, start + at, total - at) {
                    Segment::Unmapped { len_bytes, .. } => {
                        provide |= request.op == BlockOp::Write;
                        len_bytes
                    }
                    Segment::Mapped {
                        len_bytes, shared, ..
                    } => {
                        // Only a plain volume's own slots are copied on write: a composite's
                        // members never share extents (refused when they join), and a mark
                        // left on one by a deleted snapshot means nothing any more.
                        provide |= shared && volume.composite().is_none();
                        len_bytes
                    }
                };
            }
            if provide {
                // Never wait for the provisioning thread inside the gate: it may be draining it.
                volume.write_gate.leave(ticket);
                self.provision_unmapped(index, ctx);
                return;
            }
        }
        let buf = slot.buf.as_mut_ptr();
        let mut segments = 0;
        let mut at = slot.cursor_bytes;
        while at < total && segments < MAX_SEGMENTS_PER_IO {
            let len = match volume.segment(map, start + at, total - at) {
                Segment::Unmapped { len_bytes, .. } => {
                    if request.op == BlockOp::Read {
                        // Never written: reads as zeroes, no I/O.
                        // SAFETY: at + len_bytes <= total <= the buffer's length.
                        unsafe {
                            std::ptr::write_bytes(buf.add(at as usize), 0, len_bytes as usize)
                        };
                    }
                    // TRIM and WRITE_ZEROES skip it: it already reads as zeroes.
                    len_bytes
                }
                Segment::Mapped {
                    lun,
                    lun_index,
                    offset_bytes,
                    len_bytes,
                    ..
                } => {
                    // at + len_bytes <= total <= the buffer's length (reads and writes).
                    let (io, expected) = segment_io(
                        request.op,
                        request.fua,
                        offset_bytes,
                        buf.wrapping_add(at as usize),
                        len_bytes,
                    );
                    let tag = ctx.tag(tag::encode(
                        KIND_LUN_IO,
                        config.slot_base + index,
                        lun_index,
                        expected,
                    ));
                    // SAFETY: the slot's buffer stays put and untouched until every completion
                    // of this round is reaped: the slot is not released before it finishes,
                    // and the session is dropped only when the engine is idle.
                    match unsafe { submit_lun(&*lun.lun, &io, tag, ctx) } {
                        Started::Queued(count) => {
                            slot.pending += count;
                            *ring_pending += count;
                        }
                        Started::Done(result) => {
                            let io = LunIoNote {
                                reactor: *counters_reactor,
                                bytes: u64::from(expected),
                                now: clock.now(),
                                clock: *clock,
                            };
                            note_lun_result(volume, slot, lun_index, result, io)
                        }
                    }
                    segments += 1;
                    len_bytes
                }
            };
            at += len;
        }
        slot.cursor_bytes = at;
        if slot.pending == 0 {
            volume.write_gate.leave(ticket);
        } else {
            slot.gate = Some(ticket);
        }
    }

    /// A round of a TRIM on a thin volume: each mapped extent it covers whole is unmapped and
    /// given back to the pool by the provisioning thread (durable before its wake, see
    /// [`crate::volume::reclaim`]); the parts of extents it covers in part are zeroed, as
    /// WRITE_ZEROES does; unmapped extents already read as zeroes and are skipped.
    fn run_trim(&mut self, index: usize, ctx: &mut SessionContext) {
        // Not the per-I/O fast path: one Arc clone keeps the borrows simple.
        let volume = self.volume.clone();
        let map = volume.map();
        let extent_bytes = volume.extent_bytes();
        let size_bytes = volume.size_bytes();
        let request = self.slots[index].request;
        let (start, total) = (request.offset_bytes, u64::from(request.length_bytes));
        let ticket = volume.write_gate.enter();
        // Part of an extent a snapshot or a clone shares cannot be zeroed in place: it is
        // copied first (a whole one is handled by the release: see `reclaim`).
        let mut at = self.slots[index].cursor_bytes;
        let mut copy_first = false;
        while at < total {
            let offset = start + at;
            at += match volume.segment(map, offset, total - at) {
                Segment::Unmapped { len_bytes, .. } => len_bytes,
                Segment::Mapped {
                    len_bytes, shared, ..
                } => {
                    copy_first |= shared
                        && volume.composite().is_none()
                        && !covers_whole_extent(offset, len_bytes, extent_bytes, size_bytes);
                    len_bytes
                }
            };
        }
        if copy_first {
            volume.write_gate.leave(ticket);
            self.provision_unmapped(index, ctx);
            return;
        }
        let mut at = self.slots[index].cursor_bytes;
        let mut segments = 0;
        while at < total && segments < MAX_SEGMENTS_PER_IO {
            let offset = start + at;
            at += match volume.segment(map, offset, total - at) {
                Segment::Unmapped { len_bytes, .. } => len_bytes,
                Segment::Mapped {
                    lun,
                    lun_index,
                    offset_bytes,
                    len_bytes,
                    ..
                } => {
                    if covers_whole_extent(offset, len_bytes, extent_bytes, size_bytes) {
                        self.request_release(index, offset / extent_bytes, ctx);
                    } else {
                        let io = LunIo::WriteZeroes {
                            offset_bytes,
                            len_bytes,
                            fua: request.fua,
                        };
                        let tag = ctx.tag(self.lun_io_tag(index, lun_index, 0));
                        // SAFETY: zeroing refers to no buffer.
                        let started = unsafe { submit_lun(&*lun.lun, &io, tag, ctx) };
                        self.account_start(index, lun_index, started);
                    }
                    segments += 1;
                    len_bytes
                }
            };
        }
        let slot = &mut self.slots[index];
        slot.cursor_bytes = at;
        if slot.pending == 0 {
            volume.write_gate.leave(ticket);
        } else {
            slot.gate = Some(ticket);
        }
    }

    /// Asks the provisioning thread to unmap and free whole virtual `extent`; the request
    /// waits for its answer.
    fn request_release(&mut self, index: usize, extent: u64, ctx: &mut SessionContext) {
        let request = Request::Release {
            volume: self.volume.clone(),
            extent,
            reply: self.reply_for(index, ctx),
        };
        self.post_and_wait(index, request);
    }

    /// A write found unmapped extents: ask the provisioner for each; the request waits.
    #[cold]
    fn provision_unmapped(&mut self, index: usize, ctx: &mut SessionContext) {
        let volume = self.volume.clone();
        let map = volume.map();
        let request = self.slots[index].request;
        let (start, total) = (request.offset_bytes, u64::from(request.length_bytes));
        let mut at = self.slots[index].cursor_bytes;
        while at < total {
            at += match volume.segment(map, start + at, total - at) {
                Segment::Unmapped {
                    part,
                    extent,
                    len_bytes,
                } => {
                    // TRIM and WRITE_ZEROES need nothing mapped where nothing is.
                    if request.op == BlockOp::Write {
                        // A composite's part, or the volume itself.
                        let target = part.unwrap_or(&volume).clone();
                        self.request_provision(index, target, extent, ctx);
                    }
                    len_bytes
                }
                Segment::Mapped {
                    len_bytes,
                    shared: true,
                    ..
                } if volume.composite().is_none() => {
                    // Shared with a snapshot or a clone: copied first.
                    let extent = (start + at) / volume.extent_bytes();
                    self.request_provision(index, volume.clone(), extent, ctx);
                    len_bytes
                }
                Segment::Mapped { len_bytes, .. } => len_bytes,
            };
        }
    }

    fn account_start(&mut self, index: usize, lun_index: usize, started: Started) {
        match started {
            Started::Queued(count) => {
                self.slots[index].pending += count;
                self.ring_pending += count;
            }
            Started::Done(result) => {
                let io = self.lun_io_note(0, self.clock.now());
                self.note_result(index, lun_index, result, io)
            }
        }
    }

    /// Takes the result of one LUN I/O of request `index` on the volume's LUN `lun_index`. An
    /// error is counted on that LUN (which fails itself if its device is gone) and fails the
    /// request. Counted, not logged: a log line is a blocking write, and the control thread
    /// logs the LUN's errors, rate-limited (`control::lun_errors`).
    fn note_result(
        &mut self,
        index: usize,
        lun_index: usize,
        result: Result<(), i32>,
        io: LunIoNote,
    ) {
        note_lun_result(&self.volume, &mut self.slots[index], lun_index, result, io);
    }

    /// What a LUN I/O completing now (`now` ticks) adds to its LUN's counters.
    #[inline]
    fn lun_io_note(&self, bytes: u64, now: u64) -> LunIoNote {
        LunIoNote {
            reactor: self.counters_reactor,
            bytes,
            now,
            clock: self.clock,
        }
    }

    /// Records a failure of the request; the first one is what it finishes with.
    #[inline]
    fn note_status(&mut self, index: usize, status: BlockStatus) {
        let slot = &mut self.slots[index];
        if slot.status.is_ok() {
            slot.status = status;
        }
    }

    /// A round ended with its last ring completion: start the next one or finish the request.
    fn finish_round(&mut self, index: usize, ctx: &mut SessionContext) {
        if !self.has_next_round(index) {
            self.finish(index);
        } else if self.closing {
            self.fail(index, BlockStatus::ShutDown);
        } else {
            self.run(index, ctx);
        }
    }

    /// The request is over: the volume's and the VP's counters, then the finished queue.
    #[inline(always)]
    fn finish(&mut self, index: usize) {
        if self.mirror.is_some() {
            self.mirror_finish(index);
        }
        // The clock read for the LUN completion that ends the request, if it is one.
        let now = self.completion_ticks.unwrap_or_else(|| self.clock.now());
        let slot = &mut self.slots[index];
        debug_assert!(slot.pending == 0 && slot.waiting == 0);
        slot.state = SlotState::Finished;
        let latency_ns = self.clock.to_ns(now.wrapping_sub(slot.started_ticks));
        let failed = !slot.status.is_ok();
        let bytes = u64::from(slot.request.length_bytes);
        let reactor_index = self.counters_reactor;
        self.volume
            .stats
            .record(reactor_index, slot.request.op, bytes, latency_ns, failed);
        if self.config.domain {
            self.vpath.stats.reactor(reactor_index).record(
                slot.request.op,
                bytes,
                slot.admission.record_latency.then_some(latency_ns),
                failed,
            );
        }
        slot.latency_ns = latency_ns;
        self.finished.push(index);
    }

    // ---- events the front end forwards -----------------------------------------------------

    /// A ring completion of the engine's (see [`tag::is_engine`]).
    pub fn on_completion(&mut self, local_tag: u64, result: i32, ctx: &mut SessionContext) {
        let decoded = tag::decode(local_tag);
        match decoded.kind {
            KIND_QOS_TIMER => {
                self.ring_pending = self.ring_pending.saturating_sub(1);
                self.on_timer(ctx);
            }
            KIND_LUN_IO => {
                // A slot outside this engine's range is not one of its entries: ignored, and
                // not counted off what the engine has on the ring.
                let Some(index) = decoded.slot.checked_sub(self.config.slot_base) else {
                    return;
                };
                let Some(slot) = self.slots.get_mut(index) else {
                    return;
                };
                self.ring_pending = self.ring_pending.saturating_sub(1);
                ctx.ring.device_finished();
                slot.pending = slot.pending.saturating_sub(1);
                if slot.pending == 0 {
                    // The round's LUN I/O is over: it no longer uses the slots it loaded.
                    if let Some(ticket) = slot.gate.take() {
                        self.volume.write_gate.leave(ticket);
                    }
                }
                let result =
                    completion_result(result, decoded.expected_bytes, decoded.driver_timer);
                // One clock read per LUN completion: the LUN's time, and the request's if
                // this completion finishes it.
                let now = self.clock.now();
                let io = self.lun_io_note(u64::from(decoded.expected_bytes), now);
                if self.mirror.is_some() {
                    self.note_mirror_result(index, decoded.lun_index, result, io);
                } else {
                    self.note_result(index, decoded.lun_index, result, io);
                }
                let slot = &self.slots[index];
                if slot.pending == 0 && slot.waiting == 0 {
                    if self.mirror.is_some() && self.mirror_round_end(index, ctx) {
                        return;
                    }
                    self.completion_ticks = Some(now);
                    self.finish_round(index, ctx);
                    self.completion_ticks = None;
                }
            }
            _ => debug_assert!(false, "not an engine tag: {local_tag:#x}"),
        }
    }

    /// The provisioner answered request `token` (0 or a positive errno).
    pub fn on_wake(&mut self, token: u64, result: i32, ctx: &mut SessionContext) {
        let (token, result) = if self.mirror.is_some() {
            self.mirror_wake(token, result)
        } else {
            (token, result)
        };
        let Some(index) = (token as usize).checked_sub(self.config.slot_base) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if slot.waiting == 0 {
            return;
        }
        slot.waiting -= 1;
        self.wakes_pending = self.wakes_pending.saturating_sub(1);
        if result != 0 {
            self.note_status(index, BlockStatus::from_errno(result));
        }
        let slot = &mut self.slots[index];
        if slot.waiting > 0 || slot.pending > 0 {
            return;
        }
        slot.state = SlotState::Running;
        if slot.slow_path || !slot.status.is_ok() {
            self.finish(index);
        } else if self.closing {
            self.fail(index, BlockStatus::ShutDown);
        } else {
            self.run(index, ctx);
        }
    }
}

/// The LUN I/O that carries one mapped segment of a request (`op`, `fua`) to `offset_bytes`
/// of its LUN, `buf` being the request buffer at that segment, and the bytes its completion
/// must report. TRIM and WRITE_ZEROES both zero the range and report none; a flush never
/// reaches a segment.
#[inline]
fn segment_io(
    op: BlockOp,
    fua: bool,
    offset_bytes: u64,
    buf: *mut u8,
    len_bytes: u64,
) -> (LunIo, u32) {
    match op {
        BlockOp::Read => (
            LunIo::Read {
                offset_bytes,
                buf,
                len_bytes: len_bytes as u32,
            },
            len_bytes as u32,
        ),
        BlockOp::Write => (
            LunIo::Write {
                offset_bytes,
                buf,
                len_bytes: len_bytes as u32,
                fua,
            },
            len_bytes as u32,
        ),
        _ => (
            LunIo::WriteZeroes {
                offset_bytes,
                len_bytes,
                fua,
            },
            0,
        ),
    }
}

/// Takes the result of one LUN I/O of `slot`'s request on LUN `lun_index` of the volume's LUN
/// table (its pool's LUNs, or a composite's table). An
/// error is counted on that LUN (which fails itself if its device is gone) and fails the
/// request (its first failure is what it finishes with). Counted, not logged: a log line is a
/// blocking write, and the control thread logs the LUN's errors, rate-limited
/// (`control::lun_errors`).
///
/// A success is counted on the LUN's own I/O counters (`io`: the reactor, the bytes it moved,
/// the time since the request started, `now` ticks already read by the caller).
#[inline]
fn note_lun_result(
    volume: &Volume,
    slot: &mut Slot,
    lun_index: usize,
    result: Result<(), i32>,
    io: LunIoNote,
) {
    let Some(member) = volume.lun(lun_index) else {
        if let Err(errno) = result {
            if slot.status.is_ok() {
                slot.status = BlockStatus::from_errno(errno);
            }
        }
        return;
    };
    let Err(errno) = result else {
        io.record(&*member.lun, slot);
        return;
    };
    member.lun.note_error(slot.request.op.lun_class(), errno);
    if slot.status.is_ok() {
        slot.status = BlockStatus::from_errno(errno);
    }
}

/// What a completed LUN I/O adds to its LUN's counters: on which reactor, the bytes it moved,
/// and the clock (ticks) read at its completion, converted with `clock`.
#[derive(Clone, Copy)]
struct LunIoNote {
    reactor: usize,
    bytes: u64,
    now: u64,
    clock: TickClock,
}

impl LunIoNote {
    #[inline]
    fn record(&self, lun: &dyn Lun, slot: &Slot) {
        if let Some(health) = lun.health() {
            let latency_ns = self.clock.to_ns(self.now.wrapping_sub(slot.started_ticks));
            health.io.record(
                self.reactor,
                slot.request.op.lun_class(),
                self.bytes,
                latency_ns,
            );
        }
    }
}

/// Starts LUN I/O on the session's ring and counts what it queued as the reactor's wait on a
/// device (`IoRing::device_started`; the engine counts each completion off in
/// `on_completion`), which sets how long the reactor polls before it sleeps.
///
/// # Safety
/// As for [`Lun::submit`]: every buffer `io` refers to stays in place until its completions
/// are reaped.
pub(super) unsafe fn submit_lun(
    lun: &dyn Lun,
    io: &LunIo,
    tag: u64,
    ctx: &mut SessionContext,
) -> Started {
    // SAFETY: the caller keeps `io`'s buffers in place until the completions are reaped.
    let started = unsafe { lun.submit(io, tag, ctx.ring) };
    if let Started::Queued(count) = started {
        ctx.ring.device_started(count as usize);
    }
    started
}

#[path = "engine_mirror.rs"]
mod engine_mirror;

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
