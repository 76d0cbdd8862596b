//! LUNs that fail on purpose or by accident.
//!
//! [`FaultLun`] (`kind: "fault"`) wraps another LUN, its base, like SPDK's error and delay
//! bdevs: I/O passes through to the base until a fault is injected ([`FaultLun::inject`]),
//! then I/O of the chosen types fails with EIO or is delayed:
//!
//! | mode         | the next `count` I/Os of the type (no count: every one until cleared) |
//! | ------------ | ---------------------------------------------------------------------- |
//! | `fail`       | fail with EIO                                                          |
//! | `delay`      | complete `delay_us` after they were started, at the earliest           |
//! | `fail_after` | succeed; every one after them fails with EIO (`count` is required)     |
//!
//! A new injection replaces the previous one; [`FaultLun::clear`] removes it. Faults are
//! runtime state, never persisted.
//!
//! On the data path the fault is read with one lock-free load ([`ArcSwapOption`]) and at most
//! one atomic decrement; nothing is allocated. An injected failure completes at once
//! (`Started::Done(Err(EIO))`) without touching the ring. A delay starts the I/O on the base at
//! once and queues, beside it, an io_uring timer with the same tag plus
//! [`super::DRIVER_TIMER_TAG`]: the block engine sees the request complete when both have,
//! which is the semantics of SPDK's delay bdev (a completion is held until `delay_us` after
//! submission). The timer's timespec is a field of the LUN,
//! written only with atomic stores, so it stays valid until the ring is submitted.
//!
//! Why not a timer linked in front of the I/O (IOSQE_IO_LINK): the base pushes its own ring
//! entries, and a base that completes at once (RAM, a failed LUN, a full ring) would leave a
//! linked timer whose link reaches the next, unrelated entry; and a timer that posts no
//! completion (IOSQE_CQE_SKIP_SUCCESS) would leave the ring's in-flight count, which a reactor
//! drains to zero at shutdown, one too high. The synchronous methods (provisioning and control
//! threads, never a reactor) simply sleep.
//!
//! [`MissingLun`] stands in for a LUN that could not be opened at start-up (its file removed,
//! its device gone): it keeps its place in the configuration, reports itself failed, and fails
//! every I/O.

use super::{Lun, LunError, LunHealth, LunInfo, LunIo, LunKind, SpeedClass, Started};
use crate::blockio::BlockOp;
use crate::constants::MAX_FAULT_DELAY_US;
use crate::reactor::ring::IoRing;
use arc_swap::ArcSwapOption;
use io_uring::{opcode, types};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What an injected fault does to the I/O it applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    Fail,
    Delay,
    FailAfter,
}

impl FaultMode {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "fail" => Some(Self::Fail),
            "delay" => Some(Self::Delay),
            "fail_after" => Some(Self::FailAfter),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Delay => "delay",
            Self::FailAfter => "fail_after",
        }
    }
}

/// Which I/O types a fault applies to: `read`, `write`, `flush` or `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoTypes(u8);

impl IoTypes {
    pub const ALL: IoTypes = IoTypes(0b111);

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::only(BlockOp::Read)),
            "write" => Some(Self::only(BlockOp::Write)),
            "flush" => Some(Self::only(BlockOp::Flush)),
            "all" => Some(Self::ALL),
            _ => None,
        }
    }

    pub fn only(io_type: BlockOp) -> Self {
        Self(1 << io_type.class_index())
    }

    #[inline]
    pub fn contains(self, io_type: BlockOp) -> bool {
        self.0 & (1 << io_type.class_index()) != 0
    }

    pub fn as_str(self) -> &'static str {
        match self.0 {
            0b001 => "read",
            0b010 => "write",
            0b100 => "flush",
            _ => "all",
        }
    }
}

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    pub io_types: IoTypes,
    pub mode: FaultMode,
    /// How many I/Os the mode counts (see the module table); `None`: unlimited. Required for
    /// `fail_after`.
    pub count: Option<u64>,
    /// For `delay`: at most [`MAX_FAULT_DELAY_US`].
    pub delay_us: u64,
}

/// Why a fault cannot be injected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FaultSpecError {
    #[error("fail_after needs a count of I/Os to let through")]
    CountRequired,
    #[error("delay_us must be 1 to {MAX_FAULT_DELAY_US} for delay, and is only for delay")]
    Delay,
}

impl FaultSpec {
    pub fn validate(&self) -> Result<(), FaultSpecError> {
        if self.mode == FaultMode::FailAfter && self.count.is_none() {
            return Err(FaultSpecError::CountRequired);
        }
        let delay_ok = match self.mode {
            FaultMode::Delay => (1..=MAX_FAULT_DELAY_US).contains(&self.delay_us),
            _ => self.delay_us == 0,
        };
        if !delay_ok {
            return Err(FaultSpecError::Delay);
        }
        Ok(())
    }
}

/// The injected fault and how much of its count is left.
#[derive(Debug)]
struct Injection {
    spec: FaultSpec,
    /// I/Os still to fail or delay (`fail`, `delay`) or to let through (`fail_after`); unused
    /// when the count is unlimited.
    remaining: AtomicU64,
}

impl Injection {
    /// Takes one from the count; false once it is spent. Always true when unlimited.
    #[inline]
    fn take_one(&self) -> bool {
        self.spec.count.is_none()
            || self
                .remaining
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
    }
}

/// The active fault as `lun_get_luns` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultStatus {
    pub spec: FaultSpec,
    /// What is left of the count (`None`: unlimited).
    pub remaining: Option<u64>,
}

/// Faults a fault LUN has injected, per [`BlockOp`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InjectedCounts {
    pub failed: super::ErrorCounts,
    pub delayed: super::ErrorCounts,
}

/// What to do with one I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    Delay,
}

/// A `__kernel_timespec` that may be rewritten while the kernel may read it: two atomics with
/// the same layout as [`types::Timespec`].
#[repr(C)]
#[derive(Debug, Default)]
struct SharedTimespec {
    sec: AtomicI64,
    nsec: AtomicI64,
}

const _: () =
    assert!(std::mem::size_of::<SharedTimespec>() == std::mem::size_of::<types::Timespec>());
const _: () =
    assert!(std::mem::align_of::<SharedTimespec>() >= std::mem::align_of::<types::Timespec>());

impl SharedTimespec {
    fn set(&self, delay_us: u64) {
        let delay = Duration::from_micros(delay_us);
        self.sec.store(delay.as_secs() as i64, Ordering::Relaxed);
        self.nsec
            .store(i64::from(delay.subsec_nanos()), Ordering::Relaxed);
    }

    fn as_timespec(&self) -> *const types::Timespec {
        (self as *const Self).cast()
    }
}

/// The fault-injection driver: a LUN in front of another.
pub struct FaultLun {
    info: LunInfo,
    base: Arc<dyn Lun>,
    /// Errors this LUN returned (injected or its base's).
    health: LunHealth,
    injection: ArcSwapOption<Injection>,
    failed: [AtomicU64; 3],
    delayed: [AtomicU64; 3],
    /// The delay of the current `delay` fault, for the ring's timers.
    delay: SharedTimespec,
}

impl FaultLun {
    /// A fault LUN named `name` over `base`; it has the base's size, block size and speed.
    pub fn new(name: &str, base: Arc<dyn Lun>) -> Self {
        let base_info = base.info();
        let info = LunInfo {
            name: name.to_string(),
            kind: LunKind::Fault,
            path: None,
            size_bytes: base_info.size_bytes,
            block_size_bytes: base_info.block_size_bytes,
            speed_class: base_info.speed_class,
            direct_io: base_info.direct_io,
        };
        Self {
            info,
            base,
            health: LunHealth::default(),
            injection: ArcSwapOption::empty(),
            failed: Default::default(),
            delayed: Default::default(),
            delay: SharedTimespec::default(),
        }
    }

    pub fn base(&self) -> &Arc<dyn Lun> {
        &self.base
    }

    /// Injects `spec`, replacing any fault injected before.
    pub fn inject(&self, spec: FaultSpec) -> Result<(), FaultSpecError> {
        spec.validate()?;
        // The timespec first: a reactor that sees the new injection sees its delay.
        self.delay.set(spec.delay_us);
        self.injection.store(Some(Arc::new(Injection {
            spec,
            remaining: AtomicU64::new(spec.count.unwrap_or(0)),
        })));
        Ok(())
    }

    /// Removes the injected fault; returns whether there was one.
    pub fn clear(&self) -> bool {
        self.injection.swap(None).is_some()
    }

    pub fn active(&self) -> Option<FaultStatus> {
        self.injection.load().as_ref().map(|injection| FaultStatus {
            spec: injection.spec,
            remaining: injection
                .spec
                .count
                .map(|_| injection.remaining.load(Ordering::Acquire)),
        })
    }

    pub fn injected(&self) -> InjectedCounts {
        let counts = |array: &[AtomicU64; 3]| super::ErrorCounts {
            read: array[BlockOp::Read.class_index()].load(Ordering::Relaxed),
            write: array[BlockOp::Write.class_index()].load(Ordering::Relaxed),
            flush: array[BlockOp::Flush.class_index()].load(Ordering::Relaxed),
        };
        InjectedCounts {
            failed: counts(&self.failed),
            delayed: counts(&self.delayed),
        }
    }

    /// Decides what happens to one I/O of `io_type`, counting what is injected.
    #[inline]
    fn verdict(&self, io_type: BlockOp) -> Verdict {
        let guard = self.injection.load();
        let Some(injection) = guard.as_ref() else {
            return Verdict::Pass;
        };
        if !injection.spec.io_types.contains(io_type) {
            return Verdict::Pass;
        }
        let verdict = match injection.spec.mode {
            FaultMode::Fail if injection.take_one() => Verdict::Fail,
            FaultMode::Delay if injection.take_one() => Verdict::Delay,
            FaultMode::FailAfter if !injection.take_one() => Verdict::Fail,
            _ => Verdict::Pass,
        };
        // The error itself is counted by whoever sees it returned: gate_sync for synchronous
        // I/O, the block engine (note_error) for ring I/O.
        match verdict {
            Verdict::Fail => self.failed[io_type.class_index()].fetch_add(1, Ordering::Relaxed),
            Verdict::Delay => self.delayed[io_type.class_index()].fetch_add(1, Ordering::Relaxed),
            Verdict::Pass => 0,
        };
        verdict
    }

    /// Applies the fault to a synchronous I/O: fails it, or sleeps (never on a reactor: the
    /// synchronous methods run on the provisioning and control threads).
    fn gate_sync(&self, io_type: BlockOp, offset_bytes: u64) -> Result<(), LunError> {
        match self.verdict(io_type) {
            Verdict::Pass => Ok(()),
            Verdict::Fail => {
                self.health.count_error(io_type);
                Err(LunError::Io {
                    lun: self.info.name.clone(),
                    offset_bytes,
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                })
            }
            Verdict::Delay => {
                let sec = self.delay.sec.load(Ordering::Relaxed).max(0) as u64;
                let nsec = self
                    .delay
                    .nsec
                    .load(Ordering::Relaxed)
                    .clamp(0, 999_999_999) as u32;
                std::thread::sleep(Duration::new(sec, nsec));
                Ok(())
            }
        }
    }

    /// Counts an error the base returned to a synchronous I/O (this LUN returns it too).
    fn pass_error(&self, io_type: BlockOp, error: LunError) -> LunError {
        if error.is_io_error() {
            self.health.count_error(io_type);
        }
        error
    }

    /// Queues a timer that completes with `tag` after the current delay.
    ///
    /// # Safety
    /// The caller keeps this LUN alive until the tagged completion is reaped (as it does for
    /// any I/O it starts on it).
    unsafe fn push_timer(&self, tag: u64, ring: &mut IoRing) -> bool {
        let timer = opcode::Timeout::new(self.delay.as_timespec())
            .build()
            .user_data(tag | super::DRIVER_TIMER_TAG);
        // SAFETY: the entry points at self.delay, which lives as long as this LUN (kept alive
        // by the caller until the completion) and is only ever written with atomic stores; the
        // kernel copies it when the entry is submitted.
        unsafe { ring.push(&timer) }.is_ok()
    }
}

impl Lun for FaultLun {
    fn info(&self) -> &LunInfo {
        &self.info
    }

    unsafe fn submit(&self, io: &LunIo, tag: u64, ring: &mut IoRing) -> Started {
        match self.verdict(io.io_type()) {
            // SAFETY: the caller's guarantees for `io` are passed on unchanged.
            Verdict::Pass => unsafe { self.base.submit(io, tag, ring) },
            Verdict::Fail => Started::Done(Err(libc::EIO)),
            Verdict::Delay => {
                // SAFETY: as for Pass.
                let started = unsafe { self.base.submit(io, tag, ring) };
                // An error is not held back: only completions that would succeed are delayed.
                // A timer that cannot be queued (the ring refuses) leaves the I/O undelayed.
                match started {
                    Started::Done(Err(errno)) => Started::Done(Err(errno)),
                    // SAFETY: the caller holds this LUN until the tagged completions are in.
                    Started::Done(Ok(())) => match unsafe { self.push_timer(tag, ring) } {
                        true => Started::Queued(1),
                        false => Started::Done(Ok(())),
                    },
                    // SAFETY: as above.
                    Started::Queued(count) => match unsafe { self.push_timer(tag, ring) } {
                        true => Started::Queued(count + 1),
                        false => Started::Queued(count),
                    },
                }
            }
        }
    }

    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> Result<(), LunError> {
        self.gate_sync(BlockOp::Read, offset_bytes)?;
        self.base
            .read_at(buf, offset_bytes)
            .map_err(|error| self.pass_error(BlockOp::Read, error))
    }

    fn write_at(&self, buf: &[u8], offset_bytes: u64, durable: bool) -> Result<(), LunError> {
        self.gate_sync(BlockOp::Write, offset_bytes)?;
        self.base
            .write_at(buf, offset_bytes, durable)
            .map_err(|error| self.pass_error(BlockOp::Write, error))
    }

    fn write_zeroes_at(&self, offset_bytes: u64, len_bytes: u64) -> Result<(), LunError> {
        self.gate_sync(BlockOp::Write, offset_bytes)?;
        self.base
            .write_zeroes_at(offset_bytes, len_bytes)
            .map_err(|error| self.pass_error(BlockOp::Write, error))
    }

    fn flush(&self) -> Result<(), LunError> {
        self.gate_sync(BlockOp::Flush, 0)?;
        self.base
            .flush()
            .map_err(|error| self.pass_error(BlockOp::Flush, error))
    }

    fn is_persistent(&self) -> bool {
        self.base.is_persistent()
    }

    fn health(&self) -> Option<&LunHealth> {
        Some(&self.health)
    }

    /// A fault LUN fails with its base: its own I/O never meets a device.
    fn is_failed(&self) -> bool {
        self.base.is_failed()
    }

    /// Counts the error here; a device-gone error (never an injected one, which is EIO) came
    /// from the base, which it fails.
    fn note_error(&self, io_type: BlockOp, errno: i32) {
        self.health.count_errno(io_type, errno);
        if super::is_device_gone(errno) {
            self.base.note_error(io_type, errno);
        }
    }
}

/// A LUN that could not be opened at start-up: it keeps its place in the configuration (and
/// in its pool's), reports itself failed with the reason, and fails every I/O.
pub struct MissingLun {
    info: LunInfo,
    reason: String,
    health: LunHealth,
}

impl MissingLun {
    pub fn new(
        name: &str,
        kind: LunKind,
        path: Option<PathBuf>,
        size_bytes: u64,
        block_size_bytes: u32,
        reason: String,
    ) -> Self {
        Self {
            info: LunInfo {
                name: name.to_string(),
                kind,
                path,
                size_bytes,
                block_size_bytes,
                speed_class: SpeedClass::Unknown,
                direct_io: false,
            },
            reason,
            health: LunHealth::failed_with(libc::ENODEV),
        }
    }

    fn failed(&self, io_type: BlockOp) -> LunError {
        self.health.count_error(io_type);
        LunError::Failed {
            lun: self.info.name.clone(),
            reason: self.reason.clone(),
        }
    }
}

impl Lun for MissingLun {
    fn info(&self) -> &LunInfo {
        &self.info
    }

    unsafe fn submit(&self, _io: &LunIo, _tag: u64, _ring: &mut IoRing) -> Started {
        Started::Done(Err(libc::EIO))
    }

    fn read_at(&self, _buf: &mut [u8], _offset_bytes: u64) -> Result<(), LunError> {
        Err(self.failed(BlockOp::Read))
    }

    fn write_at(&self, _buf: &[u8], _offset_bytes: u64, _durable: bool) -> Result<(), LunError> {
        Err(self.failed(BlockOp::Write))
    }

    fn write_zeroes_at(&self, _offset_bytes: u64, _len_bytes: u64) -> Result<(), LunError> {
        Err(self.failed(BlockOp::Write))
    }

    fn flush(&self) -> Result<(), LunError> {
        Err(self.failed(BlockOp::Flush))
    }

    fn health(&self) -> Option<&LunHealth> {
        Some(&self.health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{mem::MemLun, LunSpec};

    fn fault_over_mem() -> FaultLun {
        let base = MemLun::new(&LunSpec {
            name: "base".into(),
            kind: LunKind::Mem,
            path: None,
            size_bytes: Some(1 << 20),
            block_size_bytes: 512,
            remote: None,
        })
        .expect("mem LUN");
        FaultLun::new("f", Arc::new(base))
    }

    fn spec(io: &str, mode: FaultMode, count: Option<u64>, delay_us: u64) -> FaultSpec {
        FaultSpec {
            io_types: IoTypes::parse(io).expect("io type"),
            mode,
            count,
            delay_us,
        }
    }

    #[test]
    fn fail_counts_down_then_passes() {
        let lun = fault_over_mem();
        let mut buf = vec![0u8; 512];
        lun.inject(spec("read", FaultMode::Fail, Some(2), 0))
            .expect("inject");
        assert!(
            lun.write_at(&buf, 0, false).is_ok(),
            "writes are not faulted"
        );
        for _ in 0..2 {
            let error = lun.read_at(&mut buf, 0).expect_err("injected");
            assert!(
                matches!(&error, LunError::Io { source, .. } if source.raw_os_error() == Some(libc::EIO))
            );
        }
        assert!(lun.read_at(&mut buf, 0).is_ok(), "the count is spent");
        assert_eq!(lun.injected().failed.read, 2);
        assert_eq!(lun.health().map(|h| h.errors().read), Some(2));
        assert_eq!(lun.active().and_then(|a| a.remaining), Some(0));
    }

    #[test]
    fn fail_after_lets_count_through_then_fails_every_one() {
        let lun = fault_over_mem();
        let buf = vec![0u8; 512];
        lun.inject(spec("write", FaultMode::FailAfter, Some(3), 0))
            .expect("inject");
        for _ in 0..3 {
            assert!(lun.write_at(&buf, 0, false).is_ok());
        }
        for _ in 0..4 {
            assert!(lun.write_at(&buf, 0, false).is_err());
        }
        assert!(lun.flush().is_ok());
        assert!(lun.clear());
        assert!(lun.write_at(&buf, 0, false).is_ok());
        assert!(!lun.clear(), "nothing left to clear");
        assert_eq!(lun.injected().failed.write, 4);
    }

    #[test]
    fn unlimited_all_and_replacement() {
        let lun = fault_over_mem();
        let mut buf = vec![0u8; 512];
        lun.inject(spec("all", FaultMode::Fail, None, 0))
            .expect("inject");
        for _ in 0..10 {
            assert!(lun.read_at(&mut buf, 0).is_err());
            assert!(lun.flush().is_err());
        }
        lun.inject(spec("flush", FaultMode::Delay, Some(1), 1000))
            .expect("replace");
        assert!(
            lun.read_at(&mut buf, 0).is_ok(),
            "the new fault replaced the old"
        );
        assert!(lun.flush().is_ok());
        assert_eq!(lun.injected().delayed.flush, 1);
    }

    #[test]
    fn bad_specs_are_refused() {
        assert_eq!(
            spec("all", FaultMode::FailAfter, None, 0).validate(),
            Err(FaultSpecError::CountRequired)
        );
        assert_eq!(
            spec("all", FaultMode::Delay, None, 0).validate(),
            Err(FaultSpecError::Delay)
        );
        assert_eq!(
            spec("all", FaultMode::Fail, None, 5).validate(),
            Err(FaultSpecError::Delay)
        );
        assert_eq!(
            spec("all", FaultMode::Delay, None, MAX_FAULT_DELAY_US + 1).validate(),
            Err(FaultSpecError::Delay)
        );
        assert!(IoTypes::parse("trim").is_none());
        assert!(FaultMode::parse("corrupt").is_none());
    }

    /// The ring path on this kernel: an injected failure completes at once without touching
    /// the ring; a delay queues the I/O and a timer with the same tag, and both complete as
    /// successes (the timer's -ETIME reads as Ok, as the timer's only).
    #[cfg_attr(
        miri,
        ignore = "io_uring: a system call Miri cannot run (sanitize.sh runs it under TSan)"
    )]
    #[test]
    fn ring_path_fails_at_once_and_delays_with_a_timer() {
        use crate::backend::aligned_buf::AlignedBuf;
        use crate::backend::{completion_result, open_lun, split_tag};
        let dir = tempfile::tempdir().expect("tempdir");
        let base = open_lun(&LunSpec {
            name: "file".into(),
            kind: LunKind::File,
            path: Some(dir.path().join("f.img")),
            size_bytes: Some(1 << 20),
            block_size_bytes: 4096,
            remote: None,
        })
        .expect("file LUN");
        let mut pattern = AlignedBuf::new(4096);
        pattern.as_mut_slice().fill(0x5a);
        base.write_at(pattern.as_slice(), 8192, true)
            .expect("write");
        let lun = FaultLun::new("f", base);
        let mut ring = IoRing::new(8).expect("ring");
        let mut buf = AlignedBuf::new(4096);
        let read = LunIo::Read {
            offset_bytes: 8192,
            buf: buf.as_mut_ptr(),
            len_bytes: 4096,
        };
        lun.inject(spec("read", FaultMode::Fail, Some(1), 0))
            .expect("inject");
        // SAFETY: buf outlives every completion reaped below.
        let started = unsafe { lun.submit(&read, 7, &mut ring) };
        assert!(matches!(started, Started::Done(Err(libc::EIO))));
        assert_eq!(ring.in_flight(), 0, "an injected failure touches no ring");

        lun.inject(spec("read", FaultMode::Delay, None, 20_000))
            .expect("inject");
        // SAFETY: as above.
        let started = unsafe { lun.submit(&read, 9, &mut ring) };
        assert!(matches!(started, Started::Queued(2)), "{started:?}");
        let mut results = Vec::new();
        while results.len() < 2 {
            ring.submit_and_wait().expect("wait");
            while let Some(cqe) = ring.pop_completion() {
                let (tag, timer) = split_tag(cqe.user_data());
                assert_eq!(tag, 9);
                results.push((timer, completion_result(cqe.result(), 4096, timer)));
            }
        }
        results.sort_unstable();
        assert_eq!(results, vec![(false, Ok(())), (true, Ok(()))]);
        assert_eq!(ring.in_flight(), 0);
        assert_eq!(buf.as_slice(), pattern.as_slice());
        assert_eq!(lun.injected().delayed.read, 1);
        assert_eq!(lun.injected().failed.read, 1);
    }

    #[test]
    fn missing_lun_fails_everything() {
        let lun = MissingLun::new("gone", LunKind::File, None, 1 << 20, 512, "removed".into());
        assert!(lun.is_failed());
        let mut buf = vec![0u8; 512];
        assert!(matches!(
            lun.read_at(&mut buf, 0),
            Err(LunError::Failed { .. })
        ));
        assert_eq!(lun.health().map(|h| h.errors().read), Some(1));
        let fault = FaultLun::new("f", Arc::new(lun));
        assert!(fault.is_failed(), "a fault LUN fails with its base");
    }
}
