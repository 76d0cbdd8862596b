//! One `sds perf` job: a reactor [`Session`] that keeps its queue depth of I/Os going to a
//! volume, through the same steps as an NBD session's requests, with no socket.
//!
//! ```text
//!  pump ─▶ pick op and unit ─▶ domain layer: VP view, allowed ops, token bucket (unless --no-domain)
//!                                 │
//!                                 ▼
//!          volume.segment ─▶ lun.submit on the reactor's ring ─▶ Done at once (null, mem)
//!                 │ unmapped write                              └▶ ring completion (file)
//!                 ▼                                                          │
//!          provisioner ──wake──▶ resubmit                                    ▼
//!                                     complete: volume and VP counters, latency histogram ─▶ pump
//! ```
//!
//! Slots and their buffers are allocated when the job is built; the I/O path allocates
//! nothing and takes no lock. I/Os that complete inside their submission (null and mem LUNs)
//! would let a job run forever inside one call, so a job issues at most [`PUMP_BATCH_IOS`]
//! I/Os per call, then posts a NOP to the ring to be called again on the reactor's next turn
//! (after its mailbox and the other sessions).
//!
//! A job goes through stages: `Fill` (only `--verify` with a read workload: write the pattern
//! over its region once), `Run` (the workload; the shared phase says when the measured window
//! opens and closes), `Quiesce` (let the workload's I/O finish), `ReadBack` (only `--verify`
//! with writes: read the whole region back and check it), then `Finish`: it sends its
//! [`JobResult`] to the coordinating thread and leaves the reactor.

use super::clock::{thread_cpu_ns, TickClock};
use super::options::Workload;
use super::pattern::{self, Mismatch, UNKNOWN_STAMP};
use crate::backend::aligned_buf::AlignedBuf;
use crate::backend::{completion_result, split_tag, IoType, LunIo, Started};
use crate::constants::{MAX_LUNS_PER_POOL, MAX_RING_ENTRIES_PER_ROUND};
use crate::domain::decision::DecisionCache;
use crate::domain::qos::{Admit, TokenBucket};
use crate::domain::snapshot::Published;
use crate::domain::stats::OpKind;
use crate::domain::vpath::{AccessMode, Vpath};
use crate::pool::Pool;
use crate::reactor::session::{Session, SessionContext};
use crate::volume::provisioner::{Provisioner, Reply, Request};
use crate::volume::stats::IoKind;
use crate::volume::{Segment, Volume};
use crossbeam::channel::Sender;
use hdrhistogram::Histogram;
use io_uring::opcode;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

/// I/Os a job issues in one call before it yields the reactor.
pub const PUMP_BATCH_IOS: u32 = 1024;
/// Tries at drawing a random unit that no in-flight I/O of the job covers (`--verify`).
const VERIFY_DRAWS: u32 = 8;
/// Latencies above this are recorded as this (the histogram's range), in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Session-local ring tags: kind in bits 44..48, slot in 32..44, the pool-LUN index of a LUN
/// I/O in 24..32, expected bytes in 0..24 (as the NBD session lays out its own).
const TAG_IO: u64 = 1;
const TAG_NOP: u64 = 2;
const TAG_KIND_SHIFT: u32 = 44;
const TAG_SLOT_SHIFT: u32 = 32;
const TAG_LUN_SHIFT: u32 = 24;
const TAG_EXPECTED_MASK: u64 = (1 << TAG_LUN_SHIFT) - 1;

const _: () = assert!((crate::constants::MAX_IO_BYTES as u64) <= TAG_EXPECTED_MASK);
const _: () = assert!(MAX_LUNS_PER_POOL <= 1 << 8);
// Kinds stay below the bit a LUN driver marks its own timer entries with.
const _: () = assert!((TAG_NOP << TAG_KIND_SHIFT) < crate::backend::DRIVER_TIMER_TAG);
const _: () = assert!(super::options::MAX_PERF_QUEUE_DEPTH <= 1 << 12);

fn tag_of(kind: u64, slot: usize, lun_index: usize, expected_bytes: u32) -> u64 {
    debug_assert!(slot < 1 << 12 && lun_index < 1 << 8);
    (kind << TAG_KIND_SHIFT)
        | ((slot as u64) << TAG_SLOT_SHIFT)
        | ((lun_index as u64) << TAG_LUN_SHIFT)
        | u64::from(expected_bytes)
}

/// Where a run is, as the coordinating thread sets it. Jobs only read it.
pub const PHASE_PREPARE: u8 = 0;
pub const PHASE_RAMP: u8 = 1;
pub const PHASE_MEASURE: u8 = 2;
pub const PHASE_STOP: u8 = 3;

/// What every job of a run shares: the phase and the count of jobs ready to be measured.
pub struct RunControl {
    pub phase: AtomicU8,
    /// Jobs past their fill stage.
    pub ready: AtomicUsize,
}

impl Default for RunControl {
    fn default() -> Self {
        Self {
            phase: AtomicU8::new(PHASE_PREPARE),
            ready: AtomicUsize::new(0),
        }
    }
}

/// How one job is set up.
pub struct JobSpec {
    /// Global job number (also its random seed).
    pub job: usize,
    pub workload: Workload,
    pub read_percent: u32,
    pub io_bytes: u32,
    pub queue_depth: usize,
    /// The job's slice of the volume: `units` I/Os of `io_bytes` from `region_start_bytes`.
    pub region_start_bytes: u64,
    pub units: u64,
    pub domain: bool,
    pub verify: bool,
    /// Whether this job reads its reactor's thread CPU time at the window's ends (one job per
    /// reactor does).
    pub report_cpu: bool,
}

/// What a job counted in the measured window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub ios: u64,
    pub bytes: u64,
    pub read_ios: u64,
    pub write_ios: u64,
    pub errors: u64,
}

/// A job's report, sent when it finishes.
pub struct JobResult {
    pub job: usize,
    pub reactor_index: usize,
    pub measured: Counts,
    /// Length of the measured window as the job saw it; 0 if it never opened.
    pub window_ns: u64,
    /// The reactor thread's CPU time over the window (the job that reports it).
    pub cpu_ns: Option<u64>,
    /// Every I/O the job completed, in every stage (what the volume and VP counters saw).
    pub completed_ios: u64,
    pub failed_ios: u64,
    pub verify_checked: u64,
    pub verify_errors: u64,
    pub first_mismatch: Option<Mismatch>,
    /// I/Os the token bucket asked to wait (none expected: the run sets no limit).
    pub throttled_ios: u64,
    /// Latency of the measured I/Os, in nanoseconds (`None` only if it could not be built).
    pub histogram: Option<Histogram<u64>>,
    /// Why the job stopped early, if it did.
    pub fatal: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Fill,
    Run,
    Quiesce,
    ReadBack,
    Finish,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

struct Slot {
    busy: bool,
    op: Op,
    /// Unit of the job's region, and its byte offset in the volume.
    unit: u64,
    offset_bytes: u64,
    started_ticks: u64,
    /// Ring completions and provisioner answers still to come.
    pending: u32,
    waiting: u32,
    /// First error, a positive errno; 0 if none.
    error: i32,
    record_latency: bool,
    /// A write's stamp, or the stamp a read expects (`--verify`).
    stamp: u32,
    buf: AlignedBuf,
}

pub struct PerfSession {
    spec: JobSpec,
    control: Arc<RunControl>,
    clock: TickClock,
    results: Sender<JobResult>,
    volume: Arc<Volume>,
    vpath: Arc<Vpath>,
    published: Arc<Published>,
    provisioner: Provisioner,
    decisions: DecisionCache,
    bucket: TokenBucket,
    read_only: bool,
    reactor_index: usize,
    slots: Vec<Slot>,
    free: Vec<usize>,
    in_flight: usize,
    /// Ring entries outstanding (LUN I/O and the NOP).
    ring_pending: u32,
    nop_armed: bool,
    /// Provisioned writes waiting for ring credit to start, oldest first; while any wait (or
    /// the ring is short of credit) the job starts no new I/O.
    ring_deferred: std::collections::VecDeque<usize>,
    stage: Stage,
    /// Next unit of a fill, a sequential workload or a read-back.
    cursor: u64,
    rng: u64,
    /// The stamp each unit was last written with (`--verify` only; else empty).
    stamps: Vec<u32>,
    next_stamp: u32,
    measuring: bool,
    measure_start_ticks: u64,
    window_ns: u64,
    cpu_start_ns: Option<u64>,
    cpu_ns: Option<u64>,
    measured: Counts,
    completed_ios: u64,
    failed_ios: u64,
    verify_checked: u64,
    verify_errors: u64,
    first_mismatch: Option<Mismatch>,
    throttled_ios: u64,
    histogram: Option<Histogram<u64>>,
    fatal: Option<String>,
    finished: bool,
}

impl PerfSession {
    /// Builds a job: every slot and buffer, the latency histogram and (for `--verify`) the
    /// stamp table are allocated here, not on the I/O path.
    pub fn new(
        spec: JobSpec,
        control: Arc<RunControl>,
        clock: TickClock,
        results: Sender<JobResult>,
        vpath: Arc<Vpath>,
        published: Arc<Published>,
        provisioner: Provisioner,
    ) -> Self {
        let volume = vpath.volume.clone();
        let read_only = vpath.mode == AccessMode::ReadOnly;
        let slots = (0..spec.queue_depth)
            .map(|_| Slot {
                busy: false,
                op: Op::Read,
                unit: 0,
                offset_bytes: 0,
                started_ticks: 0,
                pending: 0,
                waiting: 0,
                error: 0,
                record_latency: true,
                stamp: 0,
                buf: AlignedBuf::new(spec.io_bytes as usize),
            })
            .collect();
        let free = (0..spec.queue_depth).rev().collect();
        let ring_deferred = std::collections::VecDeque::with_capacity(spec.queue_depth);
        let stamps = if spec.verify {
            vec![0; spec.units as usize]
        } else {
            Vec::new()
        };
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).ok();
        // A seed per job; splitmix64 of the job number so neighbours do not walk together.
        let mut seed = (spec.job as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        seed = (seed ^ (seed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        seed = (seed ^ (seed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let decisions = DecisionCache::new(vpath.clone(), 0);
        Self {
            spec,
            control,
            clock,
            results,
            volume,
            vpath,
            published,
            provisioner,
            decisions,
            bucket: TokenBucket::default(),
            read_only,
            reactor_index: 0,
            slots,
            free,
            in_flight: 0,
            ring_pending: 0,
            nop_armed: false,
            ring_deferred,
            stage: Stage::Run,
            cursor: 0,
            rng: seed | 1,
            stamps,
            next_stamp: 1,
            measuring: false,
            measure_start_ticks: 0,
            window_ns: 0,
            cpu_start_ns: None,
            cpu_ns: None,
            measured: Counts::default(),
            completed_ios: 0,
            failed_ios: 0,
            verify_checked: 0,
            verify_errors: 0,
            first_mismatch: None,
            throttled_ios: 0,
            histogram,
            fatal: None,
            finished: false,
        }
    }

    /// xorshift64*: a few cycles, no state beyond one word.
    #[inline]
    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A uniform unit of the region (multiply-shift, no division).
    #[inline]
    fn random_unit(&mut self) -> u64 {
        ((u128::from(self.random()) * u128::from(self.spec.units)) >> 64) as u64
    }

    // ---- stages ----------------------------------------------------------------------------

    /// Moves through the stages as far as the phase and the job's in-flight I/O allow.
    fn advance(&mut self) {
        loop {
            match self.stage {
                Stage::Fill => {
                    if self.cursor < self.spec.units || self.in_flight > 0 {
                        return;
                    }
                    self.enter_run();
                }
                Stage::Run => {
                    let phase = self.control.phase.load(Ordering::Relaxed);
                    if phase == PHASE_MEASURE && !self.measuring && self.window_ns == 0 {
                        self.open_window();
                    }
                    if phase < PHASE_STOP {
                        return;
                    }
                    self.close_window();
                    self.stage = Stage::Quiesce;
                }
                Stage::Quiesce => {
                    if self.in_flight > 0 {
                        return;
                    }
                    self.cursor = 0;
                    self.stage = if self.spec.verify && self.spec.workload.has_writes() {
                        Stage::ReadBack
                    } else {
                        Stage::Finish
                    };
                }
                Stage::ReadBack => {
                    if self.cursor < self.spec.units || self.in_flight > 0 {
                        return;
                    }
                    self.stage = Stage::Finish;
                }
                Stage::Finish => {
                    if self.in_flight > 0 || self.ring_pending > 0 {
                        return;
                    }
                    self.finish();
                }
                Stage::Done => return,
            }
        }
    }

    fn enter_run(&mut self) {
        self.stage = Stage::Run;
        self.cursor = 0;
        self.control.ready.fetch_add(1, Ordering::AcqRel);
    }

    fn open_window(&mut self) {
        self.measuring = true;
        self.measure_start_ticks = self.clock.now();
        if self.spec.report_cpu {
            self.cpu_start_ns = thread_cpu_ns();
        }
    }

    fn close_window(&mut self) {
        if !self.measuring {
            return;
        }
        self.measuring = false;
        let ticks = self.clock.now().wrapping_sub(self.measure_start_ticks);
        self.window_ns = self.clock.to_ns(ticks).max(1);
        if self.spec.report_cpu {
            self.cpu_ns = self
                .cpu_start_ns
                .zip(thread_cpu_ns())
                .map(|(start, end)| end.saturating_sub(start));
        }
    }

    /// Stops the job where it is (shutdown, or a fault of the job itself).
    fn abandon(&mut self, why: Option<String>) {
        if self.fatal.is_none() {
            self.fatal = why;
        }
        self.close_window();
        if self.stage != Stage::Done {
            self.stage = Stage::Finish;
        }
    }

    fn finish(&mut self) {
        self.stage = Stage::Done;
        self.finished = true;
        if self.spec.domain {
            self.vpath
                .stats
                .reactor(self.reactor_index)
                .sessions
                .fetch_sub(1, Ordering::Relaxed);
        }
        let histogram = self.histogram.take();
        let result = JobResult {
            job: self.spec.job,
            reactor_index: self.reactor_index,
            measured: self.measured,
            window_ns: self.window_ns,
            cpu_ns: self.cpu_ns,
            completed_ios: self.completed_ios,
            failed_ios: self.failed_ios,
            verify_checked: self.verify_checked,
            verify_errors: self.verify_errors,
            first_mismatch: self.first_mismatch.take(),
            throttled_ios: self.throttled_ios,
            histogram,
            fatal: self.fatal.take(),
        };
        // The channel holds one result per job: this never blocks. If the coordinator is gone
        // there is no one to tell.
        let _ = self.results.try_send(result);
    }

    // ---- issuing ---------------------------------------------------------------------------

    /// Whether the current stage has an I/O to start.
    #[inline]
    fn has_work(&self) -> bool {
        match self.stage {
            Stage::Fill | Stage::ReadBack => self.cursor < self.spec.units,
            Stage::Run => true,
            _ => false,
        }
    }

    /// Starts I/Os on free slots until the stage has no more, the slots are all busy or the
    /// batch is used up (then a NOP brings the job back on the reactor's next turn).
    fn pump(&mut self, ctx: &mut SessionContext) {
        let mut budget = PUMP_BATCH_IOS;
        loop {
            self.advance();
            if !self.has_work() || self.free.is_empty() {
                break;
            }
            if budget == 0 {
                self.arm_nop(ctx);
                break;
            }
            if !self.ring_deferred.is_empty() || ctx.ring_credit() < MAX_RING_ENTRIES_PER_ROUND {
                // Back-pressure: the reactor calls on_ring_credit when entries are free.
                ctx.wait_for_ring_credit();
                break;
            }
            budget -= 1;
            let Some(index) = self.free.pop() else {
                break;
            };
            if !self.start_io(index, ctx) {
                self.free.push(index);
                break;
            }
        }
        self.advance();
    }

    fn arm_nop(&mut self, ctx: &mut SessionContext) {
        if self.nop_armed {
            return;
        }
        let entry = opcode::Nop::new()
            .build()
            .user_data(ctx.tag(tag_of(TAG_NOP, 0, 0, 0)));
        // SAFETY: a NOP refers to no memory.
        match unsafe { ctx.ring.push(&entry) } {
            Ok(()) => {
                self.nop_armed = true;
                self.ring_pending += 1;
            }
            Err(error) => self.abandon(Some(format!("cannot post a NOP: {error}"))),
        }
    }

    /// Whether an in-flight I/O of this job covers `unit` (`--verify` keeps them apart, so
    /// what a read expects is never racing a write).
    fn unit_busy(&self, unit: u64) -> bool {
        self.slots.iter().any(|s| s.busy && s.unit == unit)
    }

    /// Picks the next I/O of the stage: its operation and unit. `None` when the only units
    /// left are busy (`--verify`); an in-flight I/O's completion pumps again.
    fn pick(&mut self) -> Option<(Op, u64)> {
        let units = self.spec.units;
        match self.stage {
            Stage::Fill => {
                let unit = self.cursor;
                self.cursor += 1;
                Some((Op::Write, unit))
            }
            Stage::ReadBack => {
                let unit = self.cursor;
                self.cursor += 1;
                Some((Op::Read, unit))
            }
            _ => {
                let op = match self.spec.workload {
                    Workload::RandRead | Workload::Read => Op::Read,
                    Workload::RandWrite | Workload::Write => Op::Write,
                    Workload::RandRw => {
                        if (self.random() % 100) < u64::from(self.spec.read_percent) {
                            Op::Read
                        } else {
                            Op::Write
                        }
                    }
                };
                if !self.spec.workload.is_random() {
                    for _ in 0..units.min(2 * self.slots.len() as u64) {
                        let unit = self.cursor;
                        self.cursor = if self.cursor + 1 == units {
                            0
                        } else {
                            self.cursor + 1
                        };
                        if !self.spec.verify || !self.unit_busy(unit) {
                            return Some((op, unit));
                        }
                    }
                    return None;
                }
                if !self.spec.verify {
                    return Some((op, self.random_unit()));
                }
                for _ in 0..VERIFY_DRAWS {
                    let unit = self.random_unit();
                    if !self.unit_busy(unit) {
                        return Some((op, unit));
                    }
                }
                None
            }
        }
    }

    /// Starts one I/O on slot `index`. Returns false (the slot stays free) when there is
    /// nothing to start right now.
    fn start_io(&mut self, index: usize, ctx: &mut SessionContext) -> bool {
        let Some((op, unit)) = self.pick() else {
            return false;
        };
        let io_bytes = self.spec.io_bytes;
        let offset_bytes = self.spec.region_start_bytes + unit * u64::from(io_bytes);
        let started_ticks = self.clock.now();
        let mut stamp = 0;
        if self.spec.verify {
            match op {
                Op::Write => {
                    stamp = self.next_stamp;
                    self.next_stamp = match self.next_stamp.wrapping_add(1) {
                        0 | UNKNOWN_STAMP => 1,
                        next => next,
                    };
                    self.stamps[unit as usize] = stamp;
                }
                Op::Read => stamp = self.stamps[unit as usize],
            }
        }
        {
            let slot = &mut self.slots[index];
            slot.busy = true;
            slot.op = op;
            slot.unit = unit;
            slot.offset_bytes = offset_bytes;
            slot.started_ticks = started_ticks;
            slot.pending = 0;
            slot.waiting = 0;
            slot.error = 0;
            slot.record_latency = true;
            slot.stamp = stamp;
            if self.spec.verify && op == Op::Write {
                pattern::fill(
                    &mut slot.buf.as_mut_slice()[..io_bytes as usize],
                    offset_bytes,
                    stamp,
                );
            }
        }
        self.in_flight += 1;
        if self.spec.domain {
            if let Some(errno) = self.domain_check(index, ctx) {
                self.slots[index].error = errno;
                self.complete(index);
                return true;
            }
        }
        if self.volume.is_deleted() {
            self.slots[index].error = libc::ESHUTDOWN;
            self.complete(index);
            return true;
        }
        self.run_segments(index, ctx);
        true
    }

    /// The domain layer's work for one I/O, as the NBD session does it per request: the VP's
    /// current view (one snapshot load), its access mode and allowed operations, then the
    /// token bucket at the VP's rate on this reactor. Returns the errno the I/O is refused
    /// with, if it is.
    fn domain_check(&mut self, index: usize, ctx: &SessionContext) -> Option<i32> {
        let op = self.slots[index].op;
        let Some(decision) = self.decisions.decide(&self.published, ctx.reactor_index) else {
            return Some(libc::EPERM);
        };
        let ops = decision.allowed_ops;
        self.slots[index].record_latency = decision.record_latency;
        let allowed = match op {
            Op::Read => ops.read,
            Op::Write => ops.write && !self.read_only,
        };
        if !allowed {
            return Some(libc::EPERM);
        }
        let bytes = u64::from(self.spec.io_bytes);
        let (read_bytes, write_bytes) = match op {
            Op::Read => (bytes, 0),
            Op::Write => (0, bytes),
        };
        let now_ns = self.clock.to_ns(self.slots[index].started_ticks);
        // NBD skips the bucket when the rate is unlimited; perf takes from it anyway, so what
        // is measured is the most the domain layer can cost.
        if let Admit::Wait(_) =
            self.bucket
                .take(&decision.rate, now_ns, true, read_bytes, write_bytes)
        {
            // The run publishes no limit, so the bucket never asks to wait; if it did, the
            // I/O goes ahead and the report shows it.
            self.throttled_ios += 1;
        }
        None
    }

    /// Translates the I/O through the volume's map and starts it on the LUN(s); an I/O that
    /// completes at once is completed here. A write to an unmapped extent (a thin volume)
    /// first waits for the provisioning thread.
    fn run_segments(&mut self, index: usize, ctx: &mut SessionContext) {
        let volume = &*self.volume;
        let map = volume.map();
        let slot = &mut self.slots[index];
        let start = slot.offset_bytes;
        let total = u64::from(self.spec.io_bytes);
        if slot.op == Op::Write {
            let mut at = 0;
            while at < total {
                let (len, extent) = match volume.segment(map, start + at, total - at) {
                    Segment::Unmapped { extent, len_bytes } => (len_bytes, Some(extent)),
                    Segment::Mapped { len_bytes, .. } => (len_bytes, None),
                };
                if let Some(extent) = extent {
                    let request = Request::Provision {
                        volume: self.volume.clone(),
                        extent,
                        reply: Reply {
                            reactor: ctx.reactor.clone(),
                            session: ctx.id,
                            token: index as u64,
                        },
                    };
                    if self.provisioner.post(request).is_ok() {
                        slot.waiting += 1;
                    } else if slot.error == 0 {
                        slot.error = libc::EIO;
                    }
                }
                at += len;
            }
            if slot.waiting > 0 {
                return;
            }
            if slot.error != 0 {
                self.complete(index);
                return;
            }
        }
        let buf = slot.buf.as_mut_ptr();
        let mut at = 0;
        while at < total {
            let len = match volume.segment(map, start + at, total - at) {
                Segment::Unmapped { len_bytes, .. } => {
                    // Only reads get here (writes were mapped above): never-written data
                    // reads as zeroes, as the NBD session answers.
                    // SAFETY: at + len_bytes <= total, the buffer's length.
                    unsafe { std::ptr::write_bytes(buf.add(at as usize), 0, len_bytes as usize) };
                    len_bytes
                }
                Segment::Mapped {
                    lun,
                    lun_index,
                    offset_bytes,
                    len_bytes,
                } => {
                    // at + len_bytes <= total <= the buffer's length.
                    let io = match slot.op {
                        Op::Read => LunIo::Read {
                            offset_bytes,
                            buf: buf.wrapping_add(at as usize),
                            len_bytes: len_bytes as u32,
                        },
                        Op::Write => LunIo::Write {
                            offset_bytes,
                            buf: buf.wrapping_add(at as usize),
                            len_bytes: len_bytes as u32,
                            fua: false,
                        },
                    };
                    let tag = ctx.tag(tag_of(TAG_IO, index, lun_index, len_bytes as u32));
                    // SAFETY: the slot's buffer stays put and untouched until every completion
                    // of this I/O is reaped: the slot is not reused before it completes, and
                    // the session (owner of the buffer) is dropped only when nothing of it is
                    // left on the ring.
                    match unsafe { lun.lun.submit(&io, tag, ctx.ring) } {
                        Started::Queued(count) => {
                            slot.pending += count;
                            self.ring_pending += count;
                        }
                        Started::Done(Ok(())) => {}
                        Started::Done(Err(errno)) => {
                            note_error(&volume.pool, lun_index, slot.op, errno);
                            if slot.error == 0 {
                                slot.error = errno;
                            }
                        }
                    }
                    len_bytes
                }
            };
            at += len;
        }
        if slot.pending == 0 {
            self.complete(index);
        }
    }

    // ---- completing ------------------------------------------------------------------------

    /// Accounts a finished I/O (volume and VP counters, the job's own counters and latency
    /// histogram, the data check) and frees its slot.
    fn complete(&mut self, index: usize) {
        let now = self.clock.now();
        let slot = &mut self.slots[index];
        debug_assert!(slot.busy && slot.pending == 0 && slot.waiting == 0);
        let latency_ns = self.clock.to_ns(now.wrapping_sub(slot.started_ticks));
        let bytes = u64::from(self.spec.io_bytes);
        let failed = slot.error != 0;
        let (volume_kind, vp_kind) = match slot.op {
            Op::Read => (IoKind::Read, OpKind::Read),
            Op::Write => (IoKind::Write, OpKind::Write),
        };
        self.volume
            .stats
            .record(self.reactor_index, volume_kind, bytes, latency_ns, failed);
        if self.spec.domain {
            self.vpath.stats.reactor(self.reactor_index).record(
                vp_kind,
                bytes,
                slot.record_latency.then_some(latency_ns),
                failed,
            );
        }
        self.completed_ios += 1;
        if failed {
            self.failed_ios += 1;
            if self.spec.verify && slot.op == Op::Write {
                // What the unit holds now is anyone's guess.
                self.stamps[slot.unit as usize] = UNKNOWN_STAMP;
            }
        } else if self.spec.verify && slot.op == Op::Read && slot.stamp != UNKNOWN_STAMP {
            self.verify_checked += 1;
            let data = &slot.buf.as_slice()[..self.spec.io_bytes as usize];
            if let Err(mismatch) = pattern::check(data, slot.offset_bytes, slot.stamp) {
                self.verify_errors += 1;
                if self.first_mismatch.is_none() {
                    self.first_mismatch = Some(mismatch);
                }
            }
        }
        if self.measuring {
            let counts = &mut self.measured;
            counts.ios += 1;
            counts.bytes += bytes;
            match slot.op {
                Op::Read => counts.read_ios += 1,
                Op::Write => counts.write_ios += 1,
            }
            if failed {
                counts.errors += 1;
            }
            if let Some(histogram) = self.histogram.as_mut() {
                histogram.saturating_record(latency_ns.max(1));
            }
        }
        slot.busy = false;
        self.in_flight -= 1;
        self.free.push(index);
    }
}

/// Counts a LUN I/O error on the LUN (which fails itself if its device is gone), as the NBD
/// session does.
fn note_error(pool: &Pool, lun_index: usize, op: Op, errno: i32) {
    if let Some(member) = pool.luns.get(lun_index) {
        let io_type = match op {
            Op::Read => IoType::Read,
            Op::Write => IoType::Write,
        };
        member.lun.note_error(io_type, errno);
    }
}

impl Session for PerfSession {
    fn start(&mut self, ctx: &mut SessionContext) {
        self.reactor_index = ctx.reactor_index;
        if self.spec.domain {
            self.vpath
                .stats
                .reactor(ctx.reactor_index)
                .sessions
                .fetch_add(1, Ordering::Relaxed);
        }
        if self.histogram.is_none() {
            self.abandon(Some("cannot allocate a latency histogram".into()));
        } else if self.spec.verify && !self.spec.workload.has_writes() {
            self.stage = Stage::Fill;
        } else {
            self.enter_run();
        }
        self.pump(ctx);
    }

    fn on_completion(&mut self, local_tag: u64, result: i32, ctx: &mut SessionContext) {
        self.ring_pending -= 1;
        let (local_tag, driver_timer) = split_tag(local_tag);
        let kind = local_tag >> TAG_KIND_SHIFT;
        match kind {
            TAG_NOP => self.nop_armed = false,
            TAG_IO => {
                let index = ((local_tag >> TAG_SLOT_SHIFT) & 0xfff) as usize;
                let lun_index = ((local_tag >> TAG_LUN_SHIFT) & 0xff) as usize;
                let expected = (local_tag & TAG_EXPECTED_MASK) as u32;
                let Some(slot) = self.slots.get_mut(index) else {
                    return;
                };
                slot.pending -= 1;
                if let Err(errno) = completion_result(result, expected, driver_timer) {
                    note_error(&self.volume.pool, lun_index, slot.op, errno);
                    if slot.error == 0 {
                        slot.error = errno;
                    }
                }
                if slot.pending == 0 && slot.waiting == 0 {
                    self.complete(index);
                }
            }
            _ => log::error!(
                "perf job {}: completion with unknown tag {local_tag:#x}",
                self.spec.job
            ),
        }
        self.pump(ctx);
    }

    fn on_wake(&mut self, token: u64, result: i32, ctx: &mut SessionContext) {
        let index = token as usize;
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        slot.waiting = slot.waiting.saturating_sub(1);
        if result != 0 && slot.error == 0 {
            slot.error = result;
        }
        if slot.waiting == 0 && slot.pending == 0 {
            if slot.error != 0 {
                self.complete(index);
            } else if !self.ring_deferred.is_empty()
                || ctx.ring_credit() < MAX_RING_ENTRIES_PER_ROUND
            {
                self.ring_deferred.push_back(index);
                ctx.wait_for_ring_credit();
            } else {
                self.run_segments(index, ctx);
            }
        }
        self.pump(ctx);
    }

    fn on_ring_credit(&mut self, ctx: &mut SessionContext) {
        while let Some(&index) = self.ring_deferred.front() {
            if ctx.ring_credit() < MAX_RING_ENTRIES_PER_ROUND {
                ctx.wait_for_ring_credit();
                return;
            }
            self.ring_deferred.pop_front();
            self.run_segments(index, ctx);
        }
        self.pump(ctx);
    }

    fn begin_shutdown(&mut self, ctx: &mut SessionContext) {
        self.abandon(Some("the reactor is shutting down".into()));
        self.pump(ctx);
    }

    fn is_finished(&self) -> bool {
        self.finished
    }
}
