//! The engine without sockets or threads: a fake LUN whose ring I/O completes only when the
//! test says so, a provisioner the test answers in person, and a real ring only for the QoS
//! timer. Every case drives the engine as a front end would and checks what finishes, with
//! which status, in which order.

use super::*;
use crate::backend::{open_lun, Lun, LunInfo, LunKind, LunSpec};
use crate::constants::{RING_CQ_ENTRIES, RING_ENTRIES};
use crate::domain::snapshot::Snapshot;
use crate::pool::Pool;
use crate::reactor::mailbox::{Mailbox, SessionId};
use crate::reactor::ring::IoRing;
use crate::reactor::session::{CreditWaiters, SESSION_TAG_MASK};
use crate::reactor::PollMode;
use crate::reactor::ReactorHandle;
use crate::volume::provisioner::provision;
use crossbeam::channel::Receiver;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const EXTENT_BYTES: u64 = 1 << 20;
const VOLUME_BYTES: u64 = 4 << 20;

/// A LUN whose data-path I/O goes nowhere until the test completes it: `submit` records the
/// tag and says one entry is queued. Synchronous I/O (formatting, provisioning) goes to a RAM
/// LUN underneath.
struct FakeLun {
    inner: Arc<dyn Lun>,
    submitted: Mutex<Vec<u64>>,
}

// The fake never touches the buffers it is given, so it keeps the trait's contract.
impl Lun for FakeLun {
    fn info(&self) -> &LunInfo {
        self.inner.info()
    }
    unsafe fn submit(&self, _io: &LunIo, tag: u64, _ring: &mut IoRing) -> Started {
        self.submitted.lock().expect("test lock").push(tag);
        Started::Queued(1)
    }
    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> Result<(), crate::backend::LunError> {
        self.inner.read_at(buf, offset_bytes)
    }
    fn write_at(
        &self,
        buf: &[u8],
        offset_bytes: u64,
        durable: bool,
    ) -> Result<(), crate::backend::LunError> {
        self.inner.write_at(buf, offset_bytes, durable)
    }
    fn write_zeroes_at(
        &self,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> Result<(), crate::backend::LunError> {
        self.inner.write_zeroes_at(offset_bytes, len_bytes)
    }
    fn flush(&self) -> Result<(), crate::backend::LunError> {
        self.inner.flush()
    }
    fn health(&self) -> Option<&crate::backend::LunHealth> {
        self.inner.health()
    }
}

impl FakeLun {
    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.submitted.lock().expect("test lock"))
    }
}

/// One engine and everything around it.
struct Rig {
    engine: BlockEngine,
    luns: Vec<Arc<FakeLun>>,
    volume: Arc<Volume>,
    vpath: Arc<Vpath>,
    published: Arc<Published>,
    provisions: Receiver<Request>,
    ring: IoRing,
    reactor: Arc<ReactorHandle>,
    waiters: CreditWaiters,
}

impl Rig {
    /// A volume over `lun_count` fake LUNs, thin or with every extent mapped; the VP limited
    /// to `rate`.
    fn new(lun_count: usize, thin: bool, rate: RateLimit) -> Self {
        Self::with_blocks(lun_count, thin, rate, 512, 512)
    }

    /// The same with LUN blocks of `lun_block_bytes` under a volume of `volume_block_bytes`.
    fn with_blocks(
        lun_count: usize,
        thin: bool,
        rate: RateLimit,
        lun_block_bytes: u32,
        volume_block_bytes: u32,
    ) -> Self {
        Self::build(
            lun_count,
            thin,
            rate,
            lun_block_bytes,
            volume_block_bytes,
            0,
        )
    }

    /// Everything: the engine's slots numbered from `slot_base` in tags and tokens.
    fn build(
        lun_count: usize,
        thin: bool,
        rate: RateLimit,
        lun_block_bytes: u32,
        volume_block_bytes: u32,
        slot_base: usize,
    ) -> Self {
        let luns = fake_luns(0..lun_count, lun_block_bytes);
        let dyn_luns = luns.iter().map(|l| l.clone() as Arc<dyn Lun>).collect();
        let pool = Pool::create("p", [1; 16], EXTENT_BYTES, None, dyn_luns).expect("pool");
        let volume = Arc::new(Volume::new(
            "v",
            [2; 16],
            Arc::new(pool),
            VOLUME_BYTES,
            volume_block_bytes,
            thin,
        ));
        if !thin {
            let wanted: Vec<(&Volume, u64)> = (0..VOLUME_BYTES / EXTENT_BYTES)
                .map(|e| (volume.as_ref(), e))
                .collect();
            for result in provision(&wanted) {
                result.expect("thick");
            }
        }
        Self::around(volume, luns, rate, slot_base)
    }

    /// An engine over `volume`, whose LUNs (in its LUN table's order) are `luns`.
    fn around(
        volume: Arc<Volume>,
        luns: Vec<Arc<FakeLun>>,
        rate: RateLimit,
        slot_base: usize,
    ) -> Self {
        let vpath = Arc::new(Vpath::new(
            1,
            "h",
            volume.clone(),
            AccessMode::ReadWrite,
            0,
            1,
        ));
        let published = Arc::new(Published::default());
        publish(&published, &vpath, rate);
        let (provisioner, provisions) = Provisioner::detached();
        let engine = BlockEngine::new(
            vpath.clone(),
            0,
            published.clone(),
            provisioner,
            EngineConfig {
                slot_base,
                slots: 8,
                max_io_bytes: 1 << 20,
                initial_buffer_bytes: 0,
                retained_buffer_bytes: 1 << 20,
                domain: true,
            },
        );
        let reactor = Arc::new(ReactorHandle {
            index: 0,
            core: 0,
            mailbox: Mailbox::new(64).expect("mailbox"),
            busy_us: AtomicU64::new(0),
            idle_us: AtomicU64::new(0),
            sessions: AtomicUsize::new(0),
            sleeping: AtomicBool::new(false),
            heartbeat: AtomicU64::new(0),
            poll: PollMode::Busy,
        });
        let mut rig = Self {
            engine,
            luns,
            volume,
            vpath,
            published,
            provisions,
            ring: IoRing::with_sizes(RING_ENTRIES, RING_CQ_ENTRIES).expect("io_uring"),
            reactor,
            waiters: CreditWaiters::default(),
        };
        rig.engine.attach(0);
        rig
    }

    /// Runs `f` with a session context, as the reactor does for each event.
    fn with<T>(&mut self, f: impl FnOnce(&mut BlockEngine, &mut SessionContext) -> T) -> T {
        let mut ctx = SessionContext {
            ring: &mut self.ring,
            reactor_index: 0,
            reactor: &self.reactor,
            id: SessionId {
                index: 0,
                generation: 1,
            },
            credit_waiters: &mut self.waiters,
        };
        f(&mut self.engine, &mut ctx)
    }

    /// Admits, reserves and starts a request as a front end would; its slot.
    fn submit(&mut self, op: BlockOp, offset_bytes: u64, length_bytes: u32) -> usize {
        let request = BlockRequest {
            op,
            offset_bytes,
            length_bytes,
            fua: false,
        };
        let decision = self.engine.decide().expect("the VP is there");
        let admission = self.engine.admit(&request, &decision).expect("admitted");
        let slot = self
            .engine
            .reserve(request, admission)
            .expect("a free slot");
        self.with(|engine, ctx| engine.start(slot, ctx));
        slot
    }

    /// Every LUN I/O submitted since the last call, over all LUNs: (LUN, local tag).
    fn submitted(&self) -> Vec<(usize, u64)> {
        let mut all = Vec::new();
        for (index, lun) in self.luns.iter().enumerate() {
            all.extend(
                lun.take()
                    .into_iter()
                    .map(|tag| (index, tag & SESSION_TAG_MASK)),
            );
        }
        all
    }

    /// Completes one LUN I/O with `result` (bytes, or a negative errno).
    fn complete(&mut self, local_tag: u64, result: i32) {
        self.with(|engine, ctx| engine.on_completion(local_tag, result, ctx));
    }

    fn finished(&mut self) -> Vec<(usize, BlockStatus)> {
        let mut all = Vec::new();
        while let Some(done) = self.engine.pop_finished() {
            all.push((done.slot, done.status));
            self.engine.release(done.slot);
        }
        all
    }
}

/// Fake LUNs named `fake{i}` for each `i` of `range`.
fn fake_luns(range: std::ops::Range<usize>, block_bytes: u32) -> Vec<Arc<FakeLun>> {
    range
        .map(|i| {
            let inner = open_lun(&LunSpec {
                name: format!("fake{i}"),
                kind: LunKind::Mem,
                path: None,
                size_bytes: Some(16 << 20),
                block_size_bytes: block_bytes,
                remote: None,
            })
            .expect("RAM LUN");
            Arc::new(FakeLun {
                inner,
                submitted: Mutex::new(Vec::new()),
            })
        })
        .collect()
}

fn publish(published: &Published, vpath: &Arc<Vpath>, rate: RateLimit) {
    published.publish(Snapshot::one_path(
        "h",
        vpath.clone(),
        "d",
        BTreeMap::new(),
        vec![rate].into_boxed_slice(),
    ));
}

/// The bytes a read or write of `len` expects from its LUN I/O.
fn expected(local_tag: u64) -> i32 {
    tag::decode(local_tag).expected_bytes as i32
}

#[test]
fn requests_finish_in_the_order_their_lun_io_completes() {
    let mut rig = Rig::new(1, false, RateLimit::UNLIMITED);
    let a = rig.submit(BlockOp::Read, 0, 4096);
    let b = rig.submit(BlockOp::Write, 8192, 4096);
    let c = rig.submit(BlockOp::Read, 16384, 512);
    let ios = rig.submitted();
    assert_eq!(ios.len(), 3, "one LUN I/O each");
    assert!(rig.finished().is_empty(), "nothing completes on its own");
    // The reactor sees the LUN I/O in flight (it then waits on a device, not on a host).
    assert_eq!(rig.ring.device_in_flight(), 3);
    // The LUN answers out of order; the requests finish as it answers.
    for &(_, local) in [ios[1], ios[2], ios[0]].iter() {
        rig.complete(local, expected(local));
    }
    assert_eq!(rig.ring.device_in_flight(), 0, "every LUN I/O counted off");
    assert_eq!(
        rig.finished(),
        vec![
            (b, BlockStatus::Ok),
            (c, BlockStatus::Ok),
            (a, BlockStatus::Ok)
        ]
    );
    assert!(rig.engine.is_idle());
    let totals = rig.volume.stats.totals();
    assert_eq!((totals.read_ops, totals.write_ops), (2, 1));
    assert_eq!(rig.vpath.stats.totals().ops[BlockOp::Read.index()], 2);
    // The LUN counts its own I/O: operations and the bytes each moved, per class.
    let io = rig.luns[0].health().expect("health").io.totals();
    let (read, write) = (BlockOp::Read.class_index(), BlockOp::Write.class_index());
    assert_eq!((io.ops[read], io.bytes[read]), (2, 4096 + 512));
    assert_eq!((io.ops[write], io.bytes[write]), (1, 4096));
}

#[test]
fn one_failed_segment_fails_the_request_after_every_segment_is_in() {
    // Two LUNs: consecutive extents land on different ones, so a request across an extent
    // boundary is two LUN I/Os.
    let mut rig = Rig::new(2, false, RateLimit::UNLIMITED);
    let slot = rig.submit(BlockOp::Write, EXTENT_BYTES - 4096, 8192);
    let ios = rig.submitted();
    assert_eq!(ios.len(), 2, "one I/O per extent: {ios:?}");
    let (failing_lun, first) = ios[0];
    rig.complete(first, -libc::EIO);
    assert!(
        rig.finished().is_empty(),
        "the other segment is still on the ring"
    );
    assert!(!rig.engine.is_idle());
    rig.complete(ios[1].1, expected(ios[1].1));
    assert_eq!(rig.finished(), vec![(slot, BlockStatus::IoError)]);
    assert!(rig.engine.is_idle(), "every completion consumed");
    let errors = rig.luns[failing_lun]
        .health()
        .map(|h| h.errors().total())
        .unwrap_or(0);
    assert_eq!(errors, 1, "the error is counted on the LUN that failed");
    assert_eq!(rig.volume.stats.totals().errors, 1);
    // A short transfer is an error too; ENOSPC from a LUN is NoSpace.
    let short = rig.submit(BlockOp::Read, 0, 4096);
    let ios = rig.submitted();
    rig.complete(ios[0].1, 512);
    assert_eq!(rig.finished(), vec![(short, BlockStatus::IoError)]);
    let full = rig.submit(BlockOp::Write, 0, 4096);
    let ios = rig.submitted();
    rig.complete(ios[0].1, -libc::ENOSPC);
    assert_eq!(rig.finished(), vec![(full, BlockStatus::NoSpace)]);
}

#[test]
fn two_writes_to_one_unmapped_extent_both_wait_then_both_land() {
    let mut rig = Rig::new(1, true, RateLimit::UNLIMITED);
    let a = rig.submit(BlockOp::Write, 0, 4096);
    let b = rig.submit(BlockOp::Write, 8192, 4096);
    assert!(
        rig.submitted().is_empty(),
        "no data write before the mapping"
    );
    // Both asked for the same extent; the provisioner maps it for the first and finds it
    // mapped for the second.
    let mut tokens = Vec::new();
    while let Ok(request) = rig.provisions.try_recv() {
        match request {
            Request::Provision {
                volume,
                extent,
                reply,
            } => {
                assert_eq!(extent, 0);
                provision(&[(volume.as_ref(), extent)])
                    .remove(0)
                    .expect("mapped");
                tokens.push(reply.token);
            }
            _ => panic!("only provisioning expected"),
        }
    }
    assert_eq!(tokens.len(), 2, "each write waits for its own answer");
    assert!(!rig.engine.is_idle(), "answers outstanding");
    // The second answer first: order of answers does not matter.
    rig.with(|engine, ctx| engine.on_wake(tokens[1], 0, ctx));
    rig.with(|engine, ctx| engine.on_wake(tokens[0], 0, ctx));
    let ios = rig.submitted();
    assert_eq!(ios.len(), 2, "both data writes go out once mapped");
    for (_, local) in ios {
        rig.complete(local, expected(local));
    }
    let mut done = rig.finished();
    done.sort_by_key(|d| d.0);
    let mut want = vec![(a, BlockStatus::Ok), (b, BlockStatus::Ok)];
    want.sort_by_key(|d| d.0);
    assert_eq!(done, want);
    assert_eq!(rig.volume.allocated_extents(), 1, "one extent for both");
    // A full pool answers ENOSPC: the write finishes with NoSpace, no data write.
    let c = rig.submit(BlockOp::Write, 2 * EXTENT_BYTES, 512);
    let Ok(Request::Provision { reply, .. }) = rig.provisions.try_recv() else {
        panic!("provisioning expected");
    };
    rig.with(|engine, ctx| engine.on_wake(reply.token, libc::ENOSPC, ctx));
    assert!(rig.submitted().is_empty());
    assert_eq!(rig.finished(), vec![(c, BlockStatus::NoSpace)]);
}

/// Reaps the ring's completions for up to `wait`, handing each to the engine.
fn reap(rig: &mut Rig, wait: Duration) {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && !rig.engine.is_idle() {
        rig.ring.poll_kernel().expect("enter the ring");
        while let Some(entry) = rig.ring.pop_completion() {
            let local = entry.user_data() & SESSION_TAG_MASK;
            let result = entry.result();
            rig.with(|engine, ctx| engine.on_completion(local, result, ctx));
        }
        if !rig.submitted().is_empty() {
            panic!("no LUN I/O expected while throttled");
        }
        if rig.engine.is_idle() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_throttled_request_waits_for_tokens_and_unlimited_takes_none() {
    // 10 I/Os per second with a burst of about 1: the first goes, the second waits ~100 ms.
    let rate = RateLimit {
        ios_per_sec: 10.0,
        ..RateLimit::UNLIMITED
    };
    let mut rig = Rig::new(1, false, rate);
    let first = rig.submit(BlockOp::Read, 0, 512);
    let ios = rig.submitted();
    assert_eq!(ios.len(), 1, "the first request has its token");
    let started = Instant::now();
    let second = rig.submit(BlockOp::Read, 512, 512);
    assert!(rig.submitted().is_empty(), "the second waits for a token");
    assert_eq!(rig.engine.throttled_requests(), 1);
    rig.complete(ios[0].1, 512);
    assert_eq!(rig.finished(), vec![(first, BlockStatus::Ok)]);
    // The QoS timer (a real ring timeout) fires; the engine retries and the I/O goes out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ios = loop {
        rig.ring.poll_kernel().expect("enter the ring");
        while let Some(entry) = rig.ring.pop_completion() {
            let local = entry.user_data() & SESSION_TAG_MASK;
            let result = entry.result();
            rig.with(|engine, ctx| engine.on_completion(local, result, ctx));
        }
        let ios = rig.submitted();
        if !ios.is_empty() {
            break ios;
        }
        assert!(Instant::now() < deadline, "the throttled request never ran");
        std::thread::sleep(Duration::from_millis(1));
    };
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(50),
        "it waited for its token ({waited:?})"
    );
    rig.complete(ios[0].1, 512);
    assert_eq!(rig.finished(), vec![(second, BlockStatus::Ok)]);
    assert!(rig.vpath.stats.totals().throttled_ops >= 1);

    // Unlimited: the bucket is never touched, however fast the requests come.
    let mut rig = Rig::new(1, false, RateLimit::UNLIMITED);
    for i in 0..100u64 {
        let slot = rig.submit(BlockOp::Read, (i % 8) * 512, 512);
        let ios = rig.submitted();
        assert_eq!(ios.len(), 1);
        rig.complete(ios[0].1, 512);
        assert_eq!(rig.finished(), vec![(slot, BlockStatus::Ok)]);
    }
    assert_eq!(rig.engine.throttled_requests(), 0);
    assert_eq!(rig.ring.in_flight(), 0, "no timer was armed");
}

#[test]
fn shutdown_finishes_every_request_and_loses_none() {
    let rate = RateLimit {
        ios_per_sec: 1.0,
        ..RateLimit::UNLIMITED
    };
    let mut rig = Rig::new(1, true, rate);
    // In flight on the LUN (extent 0 mapped first), waiting at the provisioner, throttled.
    provision(&[(rig.volume.as_ref(), 0)])
        .remove(0)
        .expect("mapped");
    let on_lun = rig.submit(BlockOp::Read, 0, 512);
    let ios = rig.submitted();
    assert_eq!(ios.len(), 1);
    let throttled = rig.submit(BlockOp::Write, EXTENT_BYTES, 512);
    assert!(
        rig.provisions.try_recv().is_err(),
        "throttled before the map"
    );
    rig.engine.shut_down();
    assert_eq!(
        rig.finished(),
        vec![(throttled, BlockStatus::ShutDown)],
        "a throttled request finishes at once"
    );
    assert!(
        !rig.engine.is_idle(),
        "the LUN I/O and the timer are still out"
    );
    rig.complete(ios[0].1, 512);
    assert_eq!(rig.finished(), vec![(on_lun, BlockStatus::Ok)]);
    // The QoS timer still has to come back before the buffers may go.
    reap(&mut rig, Duration::from_secs(10));
    assert!(rig.engine.is_idle());
    // Nothing new starts once closing.
    let request = BlockRequest {
        op: BlockOp::Read,
        offset_bytes: 0,
        length_bytes: 512,
        fua: false,
    };
    let slot = rig
        .engine
        .reserve(request, Admission::UNLIMITED)
        .expect("slot");
    rig.with(|engine, ctx| engine.start(slot, ctx));
    assert_eq!(rig.finished(), vec![(slot, BlockStatus::ShutDown)]);
    assert!(rig.submitted().is_empty());
    rig.engine.detach();
    assert_eq!(rig.vpath.stats.reactor_sessions(0), 0);
}

#[test]
fn refusals_are_in_the_engines_terms() {
    let mut rig = Rig::new(1, false, RateLimit::UNLIMITED);
    let decision = rig.engine.decide().expect("decision");
    let at = |op, offset_bytes, length_bytes| BlockRequest {
        op,
        offset_bytes,
        length_bytes,
        fua: false,
    };
    let admit = |rig: &Rig, request: BlockRequest| rig.engine.admit(&request, &decision).err();
    assert_eq!(
        admit(&rig, at(BlockOp::Read, VOLUME_BYTES, 512)),
        Some(BlockStatus::OutOfRange)
    );
    assert_eq!(
        admit(&rig, at(BlockOp::Read, 100, 512)),
        Some(BlockStatus::Invalid)
    );
    assert_eq!(
        admit(&rig, at(BlockOp::Read, 0, 2 << 20)),
        Some(BlockStatus::TooLarge)
    );
    assert_eq!(
        admit(&rig, at(BlockOp::Trim, 0, 4 << 20)),
        None,
        "no data, no size limit"
    );
    assert_eq!(admit(&rig, at(BlockOp::Flush, u64::MAX, 0)), None);
    let mut read_only = decision;
    read_only.allowed_ops.write = false;
    assert_eq!(
        rig.engine.check_permitted(BlockOp::Write, &read_only),
        Err(BlockStatus::NotPermitted)
    );
    // A refused request still takes a slot to answer from, and counts as a failure.
    let slot = rig
        .engine
        .refuse(
            at(BlockOp::Read, VOLUME_BYTES, 512),
            BlockStatus::OutOfRange,
        )
        .expect("slot");
    assert_eq!(rig.finished(), vec![(slot, BlockStatus::OutOfRange)]);
    assert_eq!(rig.volume.stats.totals().errors, 1);
    // The VP gone: no decision.
    rig.vpath.revoke();
    publish(&rig.published, &rig.vpath, RateLimit::UNLIMITED);
    assert!(rig.engine.decide().is_none());
}

#[test]
fn small_blocks_on_large_lun_blocks_take_the_provisioners_slow_path() {
    let mut rig = Rig::with_blocks(1, false, RateLimit::UNLIMITED, 4096, 512);
    // A 512-byte write, a TRIM and a read narrower than a LUN block: each is one request to
    // the provisioning thread, answered by one wake; no LUN I/O on the ring.
    let write = rig.submit(BlockOp::Write, 512, 512);
    let trim = rig.submit(BlockOp::Trim, 1024, 1024);
    let read = rig.submit(BlockOp::Read, 512, 512);
    assert!(rig.submitted().is_empty());
    let mut answers = Vec::new();
    while let Ok(request) = rig.provisions.try_recv() {
        let (kind, reply) = match request {
            Request::SlowWrite {
                data: Some(_),
                reply,
                ..
            } => ("write", reply),
            Request::SlowWrite {
                data: None, reply, ..
            } => ("zeroes", reply),
            Request::SlowRead { reply, .. } => ("read", reply),
            _ => panic!("only the slow path expected"),
        };
        answers.push((kind, reply.token));
    }
    let kinds: Vec<&str> = answers.iter().map(|a| a.0).collect();
    assert_eq!(kinds, ["write", "zeroes", "read"]);
    assert!(!rig.engine.is_idle());
    for (_, token) in &answers {
        rig.with(|engine, ctx| engine.on_wake(*token, 0, ctx));
    }
    assert_eq!(
        rig.finished(),
        vec![
            (write, BlockStatus::Ok),
            (trim, BlockStatus::Ok),
            (read, BlockStatus::Ok)
        ]
    );
    // A read of whole LUN blocks needs no bounce: straight to the LUN.
    let aligned = rig.submit(BlockOp::Read, 4096, 4096);
    let ios = rig.submitted();
    assert_eq!(ios.len(), 1);
    rig.complete(ios[0].1, 4096);
    assert_eq!(rig.finished(), vec![(aligned, BlockStatus::Ok)]);
    assert!(rig.engine.is_idle());
}

#[test]
fn an_engine_with_a_slot_base_numbers_its_tags_and_tokens_from_it() {
    // One of several engines in a session (one per SCSI LUN): its slots are 40..48 on the
    // ring and at the provisioner, while the front end still sees slots 0..8.
    const BASE: usize = 40;
    let mut rig = Rig::build(1, true, RateLimit::UNLIMITED, 512, 512, BASE);
    provision(&[(rig.volume.as_ref(), 0)])
        .remove(0)
        .expect("mapped");
    let read = rig.submit(BlockOp::Read, 0, 4096);
    let ios = rig.submitted();
    assert_eq!(ios.len(), 1);
    let local = ios[0].1;
    assert_eq!(
        tag::decode(local).slot,
        BASE + read,
        "the tag carries the based slot"
    );
    // A completion whose slot is below the base is not this engine's: ignored, nothing
    // finishes and the engine still waits for its own entry.
    let stray = tag::encode(KIND_LUN_IO, read, 0, 4096);
    rig.complete(stray, 4096);
    assert!(rig.finished().is_empty());
    assert!(
        !rig.engine.is_idle(),
        "a stray tag does not count off the ring"
    );
    rig.complete(local, expected(local));
    assert_eq!(rig.finished(), vec![(read, BlockStatus::Ok)]);
    assert!(rig.engine.is_idle());

    // A write to an unmapped extent: the provisioner's token carries the based slot too.
    let write = rig.submit(BlockOp::Write, EXTENT_BYTES, 4096);
    let Ok(Request::Provision {
        volume,
        extent,
        reply,
    }) = rig.provisions.try_recv()
    else {
        panic!("provisioning expected");
    };
    assert_eq!(reply.token, (BASE + write) as u64);
    provision(&[(volume.as_ref(), extent)])
        .remove(0)
        .expect("mapped");
    // A wake below the base is ignored: the write still waits.
    rig.with(|engine, ctx| engine.on_wake(write as u64, 0, ctx));
    assert!(rig.submitted().is_empty());
    assert!(!rig.engine.is_idle());
    rig.with(|engine, ctx| engine.on_wake(reply.token, 0, ctx));
    let ios = rig.submitted();
    assert_eq!(ios.len(), 1, "the data write goes out once mapped");
    assert_eq!(tag::decode(ios[0].1).slot, BASE + write);
    rig.complete(ios[0].1, expected(ios[0].1));
    assert_eq!(rig.finished(), vec![(write, BlockStatus::Ok)]);
    assert!(rig.engine.is_idle());
}

#[test]
fn a_composite_provisions_its_parts_and_tags_io_with_its_lun_table() {
    // Two pools of one LUN each, a thin volume in each, concatenated: the composite's LUN
    // table is [a's LUN, b's LUN].
    let luns = fake_luns(0..2, 512);
    let part = |i: usize| {
        let lun = luns[i].clone() as Arc<dyn Lun>;
        let pool = Pool::create(
            &format!("p{i}"),
            [i as u8 + 1; 16],
            EXTENT_BYTES,
            None,
            vec![lun],
        )
        .expect("pool");
        Arc::new(Volume::new(
            &format!("part{i}"),
            [i as u8 + 10; 16],
            Arc::new(pool),
            2 * EXTENT_BYTES,
            512,
            true,
        ))
    };
    let parts = [part(0), part(1)];
    let set = Volume::new_composite(
        "set",
        [30; 16],
        crate::volume::composite::Layout::Concat,
        512,
        &parts,
    )
    .expect("composite");
    let mut rig = Rig::around(Arc::new(set), luns, RateLimit::UNLIMITED, 0);
    // A write across the parts' boundary: both parts' extents are unmapped, and each request
    // names its part.
    let slot = rig.submit(BlockOp::Write, 2 * EXTENT_BYTES - 4096, 8192);
    let mut tokens = Vec::new();
    while let Ok(request) = rig.provisions.try_recv() {
        let Request::Provision {
            volume,
            extent,
            reply,
        } = request
        else {
            panic!("only provisioning expected");
        };
        let which = parts.iter().position(|p| Arc::ptr_eq(p, &volume));
        assert_eq!((which, extent), [(Some(0), 1), (Some(1), 0)][tokens.len()]);
        provision(&[(volume.as_ref(), extent)])
            .remove(0)
            .expect("mapped");
        tokens.push(reply.token);
    }
    assert_eq!(tokens.len(), 2);
    for token in tokens {
        rig.with(|engine, ctx| engine.on_wake(token, 0, ctx));
    }
    // One LUN I/O on each part's LUN, tagged with its LUN table index.
    let ios = rig.submitted();
    let indexes: Vec<(usize, usize)> = ios
        .iter()
        .map(|&(lun, local)| (lun, tag::decode(local).lun_index))
        .collect();
    assert_eq!(indexes, vec![(0, 0), (1, 1)]);
    // An error on the second part's LUN is counted there.
    rig.complete(ios[0].1, expected(ios[0].1));
    rig.complete(ios[1].1, -libc::EIO);
    assert_eq!(rig.finished(), vec![(slot, BlockStatus::IoError)]);
    let errors = |i: usize| rig.luns[i].health().map_or(0, |h| h.errors().total());
    assert_eq!((errors(0), errors(1)), (0, 1));
    // A flush goes to every LUN of the table.
    let flush = rig.submit(BlockOp::Flush, 0, 0);
    let ios = rig.submitted();
    assert_eq!(ios.len(), 2);
    for (_, local) in ios {
        rig.complete(local, 0);
    }
    assert_eq!(rig.finished(), vec![(flush, BlockStatus::Ok)]);
    // Each LUN of the table counted what it did: the first part's LUN its write, the second
    // none (it failed: an error, above); both the flush.
    let io = |i: usize| rig.luns[i].health().expect("health").io.totals();
    let (write, flush) = (BlockOp::Write.class_index(), BlockOp::Flush.class_index());
    assert_eq!((io(0).ops[write], io(0).bytes[write]), (1, 4096));
    assert_eq!(io(1).ops[write], 0);
    assert_eq!((io(0).ops[flush], io(1).ops[flush]), (1, 1));
}

#[test]
fn a_trim_releases_the_extents_it_covers_whole_and_zeroes_the_parts_it_does_not() {
    let mut rig = Rig::new(1, true, RateLimit::UNLIMITED);
    for extent in 0..3 {
        provision(&[(rig.volume.as_ref(), extent)])
            .remove(0)
            .expect("mapped");
    }
    // From the middle of extent 0 to the middle of extent 2: only extent 1 is whole.
    let trim = rig.submit(BlockOp::Trim, EXTENT_BYTES / 2, 2 * EXTENT_BYTES as u32);
    let ios = rig.submitted();
    assert_eq!(ios.len(), 2, "zeroes for the two parts");
    assert_eq!(
        rig.volume.write_gate.in_flight(),
        1,
        "the round holds the write gate while its zeroing runs"
    );
    let Ok(Request::Release {
        volume,
        extent,
        reply,
    }) = rig.provisions.try_recv()
    else {
        panic!("a release of the whole extent expected");
    };
    assert_eq!(extent, 1);
    assert!(rig.provisions.try_recv().is_err(), "one release only");
    for (_, local) in ios {
        rig.complete(local, expected(local));
    }
    assert_eq!(rig.volume.write_gate.in_flight(), 0);
    assert!(rig.finished().is_empty(), "the TRIM waits for its release");
    let free = rig.volume.pool.free_extents();
    crate::volume::reclaim::release(&[(volume.as_ref(), extent)])
        .remove(0)
        .expect("released");
    assert_eq!(rig.volume.pool.free_extents(), free + 1);
    assert_eq!(rig.volume.map().get(1), 0, "unmapped");
    assert_ne!(rig.volume.map().get(0), 0, "a part stays mapped");
    rig.with(|engine, ctx| engine.on_wake(reply.token, 0, ctx));
    assert_eq!(rig.finished(), vec![(trim, BlockStatus::Ok)]);
}

#[test]
fn a_trim_of_a_thick_volume_zeroes_and_releases_nothing() {
    let mut rig = Rig::new(1, false, RateLimit::UNLIMITED);
    let trim = rig.submit(BlockOp::Trim, 0, 2 * EXTENT_BYTES as u32);
    assert!(rig.provisions.try_recv().is_err(), "no release");
    let ios = rig.submitted();
    assert_eq!(ios.len(), 2, "each extent zeroed");
    for (_, local) in ios {
        rig.complete(local, expected(local));
    }
    assert_eq!(rig.finished(), vec![(trim, BlockStatus::Ok)]);
    assert_eq!(rig.volume.allocated_extents(), VOLUME_BYTES / EXTENT_BYTES);
}

#[test]
fn a_write_holds_the_gate_only_while_its_lun_io_runs_never_while_it_waits_for_an_extent() {
    let mut rig = Rig::new(1, true, RateLimit::UNLIMITED);
    let write = rig.submit(BlockOp::Write, 0, 4096);
    let Ok(Request::Provision {
        volume,
        extent,
        reply,
    }) = rig.provisions.try_recv()
    else {
        panic!("provisioning expected");
    };
    assert_eq!(
        rig.volume.write_gate.in_flight(),
        0,
        "waiting for the provisioning thread outside the gate"
    );
    provision(&[(volume.as_ref(), extent)])
        .remove(0)
        .expect("mapped");
    rig.with(|engine, ctx| engine.on_wake(reply.token, 0, ctx));
    let ios = rig.submitted();
    assert_eq!(ios.len(), 1);
    assert_eq!(
        rig.volume.write_gate.in_flight(),
        1,
        "the data write holds it"
    );
    rig.complete(ios[0].1, expected(ios[0].1));
    assert_eq!(rig.volume.write_gate.in_flight(), 0);
    assert_eq!(rig.finished(), vec![(write, BlockStatus::Ok)]);
}
