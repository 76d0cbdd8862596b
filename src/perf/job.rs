//! What every `sds perf` job does, whatever carries its I/O: the workload (which operation on
//! which unit next), the stages a job goes through, the `--verify` stamps, the counters and
//! the latency histogram of the measured window, and the result it reports. No I/O here: a job
//! over the block engine ([`super::session`]) and a job over an NVMe/TCP queue
//! ([`super::nvmf_job`]) each own a [`Job`] and tell it what they started and what finished.
//!
//! Stages: `Fill` (only `--verify` with a read workload: write the pattern over the region
//! once), `Run` (the workload; the shared phase says when the measured window opens and
//! closes), `Quiesce` (let the workload's I/O finish), `ReadBack` (only `--verify` with writes:
//! read the whole region back and check it), then `Finish`: once the carrier has nothing on
//! the ring, it calls [`Job::finish`], which sends the [`JobResult`] to the coordinating thread.
//!
//! Slots: a job has `queue_depth` slots, numbered as its carrier numbers them (the engine's
//! slot, the NVMe command identifier); [`Job::issue`] fills one, [`Job::complete`] frees it.

use super::clock::thread_cpu_ns;
use super::options::Workload;
use super::pattern::{self, Mismatch, UNKNOWN_STAMP};
use crossbeam::channel::Sender;
use hdrhistogram::Histogram;
use sds::blockio::clock::TickClock;
use sds::blockio::BlockOp;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

/// Tries at drawing a random unit that no in-flight I/O of the job covers (`--verify`).
const VERIFY_DRAWS: u32 = 8;
/// Latencies above this are recorded as this (the histogram's range), in nanoseconds.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;

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
    /// Whether the region reads as zeroes before the job writes it (a volume this run made).
    /// A remote namespace holds whatever it held: its units are not checked until written.
    pub starts_zeroed: bool,
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
pub enum Stage {
    Fill,
    Run,
    Quiesce,
    ReadBack,
    Finish,
    Done,
}

/// What the job keeps per slot.
#[derive(Clone, Copy)]
pub struct JobSlot {
    pub busy: bool,
    pub op: BlockOp,
    /// Unit of the job's region, and its byte offset in the volume.
    pub unit: u64,
    pub offset_bytes: u64,
    /// A write's stamp, or the stamp a read expects (`--verify`).
    pub stamp: u32,
}

/// One job's workload and accounting (see the module doc).
pub struct Job {
    pub spec: JobSpec,
    control: Arc<RunControl>,
    pub clock: TickClock,
    results: Sender<JobResult>,
    pub reactor_index: usize,
    pub slots: Vec<JobSlot>,
    pub in_flight: usize,
    pub stage: Stage,
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
    pub finished: bool,
}

impl Job {
    /// Builds a job: the latency histogram, the slots and (for `--verify`) the stamp table
    /// are allocated here, not on the I/O path.
    pub fn new(
        spec: JobSpec,
        control: Arc<RunControl>,
        results: Sender<JobResult>,
        clock: TickClock,
    ) -> Self {
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
            let initial = if spec.starts_zeroed { 0 } else { UNKNOWN_STAMP };
            vec![initial; spec.units as usize]
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
            clock,
            results,
            reactor_index: 0,
            slots,
            in_flight: 0,
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

    /// The job starts on reactor `reactor_index`: its first stage.
    pub fn start(&mut self, reactor_index: usize) {
        self.reactor_index = reactor_index;
        if self.histogram.is_none() {
            self.abandon(Some("cannot allocate a latency histogram".into()));
        } else if self.spec.verify && !self.spec.workload.has_writes() {
            self.stage = Stage::Fill;
        } else {
            self.enter_run();
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

    /// Moves through the stages as far as the phase and the job's in-flight I/O allow, up to
    /// `Finish` (the carrier calls [`Self::finish`] once its own work is done too). Called
    /// before every I/O: the common case, a running job whose window is as the phase says,
    /// is one load and a compare here, without a call.
    #[inline(always)]
    pub fn advance(&mut self) {
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
                Stage::Finish | Stage::Done => return,
            }
        }
    }

    /// Whether the job has reached `Finish` with none of its I/O in flight: its carrier
    /// finishes it once its own ring entries are back.
    pub fn ready_to_finish(&self) -> bool {
        self.stage == Stage::Finish && self.in_flight == 0
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
    pub fn abandon(&mut self, why: Option<String>) {
        if self.fatal.is_none() {
            self.fatal = why;
        }
        self.close_window();
        if self.stage != Stage::Done {
            self.stage = Stage::Finish;
        }
    }

    /// Sends the result; `throttled_ios`: what the carrier's token bucket made wait.
    pub fn finish(&mut self, throttled_ios: u64) {
        self.stage = Stage::Done;
        self.finished = true;
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
            throttled_ios,
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
    pub fn has_work(&self) -> bool {
        match self.stage {
            Stage::Fill | Stage::ReadBack => self.cursor < self.spec.units,
            Stage::Run => true,
            _ => false,
        }
    }

    /// Whether an in-flight I/O of this job covers `unit` (`--verify` keeps them apart, so
    /// what a read expects is never racing a write).
    #[inline]
    fn unit_busy(&self, unit: u64) -> bool {
        self.slots.iter().any(|s| s.busy && s.unit == unit)
    }

    /// Picks the next I/O of the stage: its operation, unit and byte offset. `None` when the
    /// only units left are busy (`--verify`); an in-flight I/O's completion pumps again.
    #[inline]
    pub fn pick(&mut self) -> Option<(BlockOp, u64, u64)> {
        let picked = self.pick_unit()?;
        let offset_bytes = self.spec.region_start_bytes + picked.1 * u64::from(self.spec.io_bytes);
        Some((picked.0, picked.1, offset_bytes))
    }

    #[inline]
    fn pick_unit(&mut self) -> Option<(BlockOp, u64)> {
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

    /// The stamp an I/O of `op` on `unit` carries (a write: a new one, recorded as the
    /// unit's; a read: the one it expects). 0 without `--verify`.
    #[inline]
    pub fn stamp_for(&mut self, op: BlockOp, unit: u64) -> u32 {
        if !self.spec.verify {
            return 0;
        }
        match op {
            BlockOp::Write => {
                let stamp = self.next_stamp;
                self.next_stamp = match self.next_stamp.wrapping_add(1) {
                    0 | UNKNOWN_STAMP => 1,
                    next => next,
                };
                self.stamps[unit as usize] = stamp;
                stamp
            }
            _ => self.stamps[unit as usize],
        }
    }

    /// An I/O picked with [`Self::pick`] is in slot `slot` now.
    #[inline]
    pub fn issue(&mut self, slot: usize, op: BlockOp, unit: u64, offset_bytes: u64, stamp: u32) {
        self.slots[slot] = JobSlot {
            busy: true,
            op,
            unit,
            offset_bytes,
            stamp,
        };
        self.in_flight += 1;
    }

    // ---- completing ------------------------------------------------------------------------

    /// Accounts the I/O in `slot` (the job's counters and latency histogram, the data check
    /// of a read against `data`) and frees the slot.
    #[inline]
    pub fn complete(&mut self, slot: usize, ok: bool, latency_ns: u64, data: &[u8]) {
        let done = self.slots[slot];
        debug_assert!(done.busy);
        let bytes = u64::from(self.spec.io_bytes);
        self.completed_ios += 1;
        if !ok {
            self.failed_ios += 1;
            if self.spec.verify && done.op == BlockOp::Write {
                // What the unit holds now is anyone's guess.
                self.stamps[done.unit as usize] = UNKNOWN_STAMP;
            }
        } else if self.spec.verify && done.op == BlockOp::Read && done.stamp != UNKNOWN_STAMP {
            self.verify_checked += 1;
            if let Err(mismatch) = pattern::check(data, done.offset_bytes, done.stamp) {
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
            match done.op {
                BlockOp::Read => counts.read_ios += 1,
                _ => counts.write_ios += 1,
            }
            if !ok {
                counts.errors += 1;
            }
            if let Some(histogram) = self.histogram.as_mut() {
                histogram.saturating_record(latency_ns.max(1));
            }
        }
        self.slots[slot].busy = false;
        self.in_flight -= 1;
    }
}
