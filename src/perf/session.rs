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
//! The workload, its stages, the `--verify` check and the accounting are the [`Job`]'s
//! ([`super::job`]), shared with the NVMe/TCP job; this file is what the block engine adds.

use super::job::{Job, JobResult, JobSpec, RunControl};
use super::pattern;
use crossbeam::channel::Sender;
use io_uring::opcode;
use sds::blockio::tag::{self, KIND_FRONT_END_FIRST};
use sds::blockio::{BlockEngine, BlockOp, BlockRequest, BlockStatus, EngineConfig, Finished};
use sds::domain::snapshot::Published;
use sds::domain::vpath::Vpath;
use sds::reactor::session::{Session, SessionContext};
use sds::volume::provisioner::Provisioner;
use std::sync::Arc;

/// I/Os a job issues in one call before it yields the reactor.
pub const PUMP_BATCH_IOS: u32 = 1024;

/// The job's own ring entry: the NOP that brings it back on the reactor's next turn.
const TAG_NOP: u64 = KIND_FRONT_END_FIRST;
const _: () = assert!(super::options::MAX_PERF_QUEUE_DEPTH as usize <= tag::MAX_SLOTS);

pub struct PerfSession {
    job: Job,
    engine: BlockEngine,
    /// The job's own ring entries outstanding (the NOP).
    ring_pending: u32,
    nop_armed: bool,
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
        let job = Job::new(spec, control, results, engine.clock());
        Self {
            job,
            engine,
            ring_pending: 0,
            nop_armed: false,
        }
    }

    /// Stops the job where it is (shutdown, or a fault of the job itself).
    fn abandon(&mut self, why: Option<String>) {
        self.job.abandon(why);
    }

    /// Finishes the job once it and its engine have nothing outstanding.
    fn maybe_finish(&mut self) {
        if self.job.ready_to_finish() && self.ring_pending == 0 && self.engine.is_idle() {
            self.engine.detach();
            let throttled = self.engine.throttled_requests();
            self.job.finish(throttled);
        }
    }

    // ---- issuing ---------------------------------------------------------------------------

    /// Starts I/Os on free slots until the stage has no more, the slots are all busy or the
    /// batch is used up (then a NOP brings the job back on the reactor's next turn).
    ///
    /// What finished is accounted when the job runs out of free slots or of work, not after
    /// every start: requests on LUNs that complete at once (null, mem) finish inside `start`,
    /// and taking them a queue depth at a time keeps the accounting out of the issue loop.
    fn pump(&mut self, ctx: &mut SessionContext) {
        let mut budget = PUMP_BATCH_IOS;
        loop {
            self.job.advance();
            if self.job.has_work() && self.engine.has_free_slot() {
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
        self.job.advance();
        self.maybe_finish();
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

    /// Starts one I/O. Returns false when there is nothing to start right now.
    fn start_io(&mut self, ctx: &mut SessionContext) -> bool {
        let Some((op, unit, offset_bytes)) = self.job.pick() else {
            return false;
        };
        let request = BlockRequest {
            op,
            offset_bytes,
            length_bytes: self.job.spec.io_bytes,
            fua: false,
        };
        let stamp = self.job.stamp_for(op, unit);
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
        self.job.issue(index, op, unit, offset_bytes, stamp);
        if admitted.is_ok() {
            if self.job.spec.verify && op == BlockOp::Write {
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

    /// Accounts a finished I/O (the job's own counters, latency and data check; the engine
    /// counted it on the volume and the VP) and frees its slot.
    fn complete(&mut self, done: Finished) {
        let index = done.slot;
        self.job.complete(
            index,
            done.status.is_ok(),
            done.latency_ns,
            self.engine.buffer(index),
        );
        self.engine.release(index);
    }
}

impl Session for PerfSession {
    fn start(&mut self, ctx: &mut SessionContext) {
        self.engine.attach(ctx.reactor_index);
        self.job.start(ctx.reactor_index);
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
                self.job.spec.job
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
        self.job.finished
    }
}
