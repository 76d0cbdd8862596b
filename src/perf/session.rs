//! One `sds perf` job: a reactor [`Session`] that keeps its queue depth of requests going to
//! a volume through the block engine (`sds::blockio`) an NBD session uses, with no socket:
//! its figures are the host path's minus the wire.
//!
//! ```text
//!  pump ─▶ pick op and unit ─▶ BlockEngine: decide, admit, reserve slot k, (pattern), start
//!                                 (VP view, QoS, map, provisioner, RMW, LUN I/O on the ring)
//!                                                                      │
//!  pump ◀── job counters, latency histogram, --verify check ◀── finished (k, status)
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

use super::clock::thread_cpu_ns;
use super::options::Workload;
use super::pattern::{self, Mismatch, UNKNOWN_STAMP};
use crossbeam::channel::Sender;
use hdrhistogram::Histogram;
use io_uring::opcode;
use sds::blockio::clock::TickClock;
use sds::blockio::tag::{self, KIND_FRONT_END_FIRST};
use sds::blockio::{BlockEngine, BlockOp, BlockRequest, BlockStatus, EngineConfig, Finished};
use sds::domain::snapshot::Published;
use sds::domain::vpath::Vpath;
use sds::reactor::session::{Session, SessionContext};
use sds::volume::provisioner::Provisioner;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

/// I/Os a job issues in one call before it yields the reactor.
pub const PUMP_BATCH_IOS: u32 = 1024;
/// Tries at drawing a random unit that no in-flight I/O of the job covers (`--verify`).
const VERIFY_DRAWS: u32 = 8;
/// Latencies above this are recorded as this (the histogram's range), in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// The job's own ring entry: the NOP that brings it back on the reactor's next turn.
const TAG_NOP: u64 = KIND_FRONT_END_FIRST;
const _: () = assert!(super::options::MAX_PERF_QUEUE_DEPTH as usize <= tag::MAX_SLOTS);

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

/// What the job keeps per engine slot.
#[derive(Clone, Copy)]
struct JobSlot {
    busy: bool,
    op: BlockOp,
    /// Unit of the job's region, and its byte offset in the volume.
    unit: u64,
    offset_bytes: u64,
    /// A write's stamp, or the stamp a read expects (`--verify`).
    stamp: u32,
}

pub struct PerfSession {
    spec: JobSpec,
    control: Arc<RunControl>,
    clock: TickClock,
    results: Sender<JobResult>,
    engine: BlockEngine,
    reactor_index: usize,
    slots: Vec<JobSlot>,
    in_flight: usize,
    /// The job's own ring entries outstanding (the NOP).
    ring_pending: u32,
    nop_armed: bool,
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
    histogram: Option<Histogram<u64>>,
    fatal: Option<String>,
    finished: bool,
}

impl PerfSession {
    /// Builds a job: its engine with every slot and buffer, the latency histogram and (for
    /// `--verify`) the stamp table are allocated here, not on the I/O path.
    pub fn new(
        spec: JobSpec,
        control: Arc<RunControl>,
        results: Sender<JobResult>,
        vpath: Arc<Vpath>,
        published: Arc<Published>,
        provisioner: Provisioner,
    ) -> Self {
        let engine = BlockEngine::new(
            vpath,
            0,
            published,
            provisioner,
            EngineConfig {
                slot_base: 0,
                slots: spec.queue_depth,
                max_io_bytes: spec.io_bytes as usize,
                initial_buffer_bytes: spec.io_bytes as usize,
                retained_buffer_bytes: spec.queue_depth * spec.io_bytes as usize,
                domain: spec.domain,
            },
        );
        let slots = vec![
            JobSlot {
                busy: false,
                op: BlockOp::Read,
                unit: 0,
                offset_bytes: 0,
                stamp: 0,
            };
            spec.queue_depth
        ];
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
        Self {
            spec,
            control,
            clock: engine.clock(),
            results,
            engine,
            reactor_index: 0,
            slots,
            in_flight: 0,
            ring_pending: 0,
            nop_armed: false,
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

    /// Moves through the stages as far as the phase and the job's in-flight I/O allow. Called
    /// before every I/O: the common case, a running job whose window is as the phase says,
    /// is one load and a compare here, without a call.
    #[inline(always)]
    fn advance(&mut self) {
        if self.stage == Stage::Run {
            let phase = self.control.phase.load(Ordering::Relaxed);
            let window_due = phase == PHASE_MEASURE && !self.measuring && self.window_ns == 0;
            if phase < PHASE_STOP && !window_due {
                return;
            }
        }
        self.advance_stages();
    }

    fn advance_stages(&mut self) {
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
                    if self.in_flight > 0 || self.ring_pending > 0 || !self.engine.is_idle() {
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
        self.engine.detach();
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
            throttled_ios: self.engine.throttled_requests(),
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
    ///
    /// What finished is accounted when the job runs out of free slots or of work, not after
    /// every start: requests on LUNs that complete at once (null, mem) finish inside `start`,
    /// and taking them a queue depth at a time keeps the accounting out of the issue loop.
    fn pump(&mut self, ctx: &mut SessionContext) {
        let mut budget = PUMP_BATCH_IOS;
        loop {
            self.advance();
            if self.has_work() && self.engine.has_free_slot() {
                if budget == 0 {
                    self.arm_nop(ctx);
                    break;
                }
                if self.engine.ring_blocked(ctx) {
                    // Back-pressure: the reactor calls on_ring_credit when entries are free.
                    break;
                }
                budget -= 1;
                if self.start_io(ctx) {
                    continue;
                }
            }
            // Nothing to start now: take what finished, and go on if that freed slots or
            // moved the stage on.
            if !self.drain_finished() {
                break;
            }
        }
        self.drain_finished();
        self.advance();
    }

    fn arm_nop(&mut self, ctx: &mut SessionContext) {
        if self.nop_armed {
            return;
        }
        let nop = opcode::Nop::new().build();
        let tagged = nop.user_data(ctx.tag(tag::encode(TAG_NOP, 0, 0, 0)));
        // SAFETY: a NOP refers to no memory.
        if let Err(error) = unsafe { ctx.ring.push(&tagged) } {
            self.abandon(Some(format!("cannot post a NOP: {error}")));
            return;
        }
        self.nop_armed = true;
        self.ring_pending += 1;
    }

    /// Whether an in-flight I/O of this job covers `unit` (`--verify` keeps them apart, so
    /// what a read expects is never racing a write).
    fn unit_busy(&self, unit: u64) -> bool {
        self.slots.iter().any(|s| s.busy && s.unit == unit)
    }

    /// Picks the next I/O of the stage: its operation and unit. `None` when the only units
    /// left are busy (`--verify`); an in-flight I/O's completion pumps again.
    fn pick(&mut self) -> Option<(BlockOp, u64)> {
        let units = self.spec.units;
        match self.stage {
            Stage::Fill => {
                let unit = self.cursor;
                self.cursor += 1;
                Some((BlockOp::Write, unit))
            }
            Stage::ReadBack => {
                let unit = self.cursor;
                self.cursor += 1;
                Some((BlockOp::Read, unit))
            }
            _ => {
                let op = match self.spec.workload {
                    Workload::RandRead | Workload::Read => BlockOp::Read,
                    Workload::RandWrite | Workload::Write => BlockOp::Write,
                    Workload::RandRw => {
                        if (self.random() % 100) < u64::from(self.spec.read_percent) {
                            BlockOp::Read
                        } else {
                            BlockOp::Write
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

    /// Starts one I/O. Returns false when there is nothing to start right now.
    fn start_io(&mut self, ctx: &mut SessionContext) -> bool {
        let Some((op, unit)) = self.pick() else {
            return false;
        };
        let io_bytes = self.spec.io_bytes;
        let offset_bytes = self.spec.region_start_bytes + unit * u64::from(io_bytes);
        let request = BlockRequest {
            op,
            offset_bytes,
            length_bytes: io_bytes,
            fua: false,
        };
        let mut stamp = 0;
        if self.spec.verify {
            match op {
                BlockOp::Write => {
                    stamp = self.next_stamp;
                    self.next_stamp = match self.next_stamp.wrapping_add(1) {
                        0 | UNKNOWN_STAMP => 1,
                        next => next,
                    };
                    self.stamps[unit as usize] = stamp;
                }
                _ => stamp = self.stamps[unit as usize],
            }
        }
        // The domain layer's work, as for a host's request: the VP's current view (one
        // snapshot load), its access mode and allowed operations, range and alignment.
        let admitted = match self.engine.decide() {
            Some(decision) => self.engine.admit(&request, &decision),
            None => Err(BlockStatus::NotPermitted),
        };
        let reserved = match admitted {
            Ok(admission) => self.engine.reserve(request, admission),
            Err(status) => self.engine.refuse(request, status),
        };
        let Some(index) = reserved else {
            return false;
        };
        self.slots[index] = JobSlot {
            busy: true,
            op,
            unit,
            offset_bytes,
            stamp,
        };
        self.in_flight += 1;
        if admitted.is_ok() {
            if self.spec.verify && op == BlockOp::Write {
                pattern::fill(self.engine.buffer_mut(index), offset_bytes, stamp);
            }
            self.engine.start(index, ctx);
        }
        true
    }

    // ---- completing ------------------------------------------------------------------------

    /// Takes every request the engine has finished; whether there was any.
    fn drain_finished(&mut self) -> bool {
        let mut any = false;
        while let Some(done) = self.engine.pop_finished() {
            self.complete(done);
            any = true;
        }
        any
    }

    /// Accounts a finished I/O (the job's own counters and latency histogram, the data
    /// check; the engine counted it on the volume and the VP) and frees its slot.
    fn complete(&mut self, done: Finished) {
        let index = done.slot;
        let slot = self.slots[index];
        debug_assert!(slot.busy);
        let latency_ns = done.latency_ns;
        let bytes = u64::from(self.spec.io_bytes);
        let failed = !done.status.is_ok();
        self.completed_ios += 1;
        if failed {
            self.failed_ios += 1;
            if self.spec.verify && slot.op == BlockOp::Write {
                // What the unit holds now is anyone's guess.
                self.stamps[slot.unit as usize] = UNKNOWN_STAMP;
            }
        } else if self.spec.verify && slot.op == BlockOp::Read && slot.stamp != UNKNOWN_STAMP {
            self.verify_checked += 1;
            let data = self.engine.buffer(index);
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
                BlockOp::Read => counts.read_ios += 1,
                _ => counts.write_ios += 1,
            }
            if failed {
                counts.errors += 1;
            }
            if let Some(histogram) = self.histogram.as_mut() {
                histogram.saturating_record(latency_ns.max(1));
            }
        }
        self.slots[index].busy = false;
        self.in_flight -= 1;
        self.engine.release(index);
    }
}

impl Session for PerfSession {
    fn start(&mut self, ctx: &mut SessionContext) {
        self.reactor_index = ctx.reactor_index;
        self.engine.attach(ctx.reactor_index);
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
        if tag::is_engine(local_tag) {
            self.engine.on_completion(local_tag, result, ctx);
            self.drain_finished();
        } else if tag::kind_of(local_tag) == TAG_NOP {
            self.ring_pending -= 1;
            self.nop_armed = false;
        } else {
            log::error!(
                "perf job {}: completion with unknown tag {local_tag:#x}",
                self.spec.job
            );
        }
        self.pump(ctx);
    }

    fn on_wake(&mut self, token: u64, result: i32, ctx: &mut SessionContext) {
        self.engine.on_wake(token, result, ctx);
        self.drain_finished();
        self.pump(ctx);
    }

    fn on_ring_credit(&mut self, ctx: &mut SessionContext) {
        self.engine.on_ring_credit(ctx);
        self.drain_finished();
        self.pump(ctx);
    }

    fn begin_shutdown(&mut self, ctx: &mut SessionContext) {
        self.abandon(Some("the reactor is shutting down".into()));
        self.engine.shut_down();
        self.drain_finished();
        self.pump(ctx);
    }

    fn is_finished(&self) -> bool {
        self.finished
    }
}
