//! Resynchronising a mirror's legs while hosts keep writing to it.
//!
//! One resync per mirror (at most [`MAX_RESYNC_THREADS`] at once), each with
//! [`RESYNC_COPY_WORKERS`] copy threads so that reads and writes of several regions overlap: they
//! walk the dirty-region log once from the start (a shared cursor) and, for each region whose bit
//! is set, copy the region from a
//! healthy leg (the source) to every other leg that is healthy or resyncing (the targets),
//! with the blocking helpers the slow path uses ([`slow_read`], [`slow_write`]), then clears
//! the bit. Degraded legs become `Resyncing` when it starts (from then on hosts' writes reach
//! them too) and `Healthy` when it ends. A full copy is the same walk with every bit set.
//!
//! The race rule with host writes (per-region counters of [`Mirror::region_writes`]): a
//! region is copied only when no write to it is in flight (otherwise it is retried after the
//! rest); its bit is cleared after the copy, and if a write started meanwhile the bit is set
//! again (durably) and the region copied again — so the copy never overwrites a newer write
//! on a target, and a write that saw the bit set before the clear is covered by it.
//!
//! Cleared bits are written to the log every [`RESYNC_PERSIST_EVERY_REGIONS`] regions or
//! [`RESYNC_PERSIST_INTERVAL_MS`]: after a `kill -9` the restart resumes from what the log
//! says (at most that much is copied again).

use super::mirror::{LegState, Mirror};
use super::provisioner::{slow_read, slow_write};
use super::{Segment, Volume};
use crate::backend::aligned_buf::AlignedBuf;
use crate::constants::{
    MAX_LUN_BLOCK_BYTES, MAX_RESYNC_THREADS, RESYNC_COPY_WORKERS, RESYNC_PERSIST_EVERY_REGIONS,
    RESYNC_PERSIST_INTERVAL_MS,
};
use crate::logger::error_chain;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Resync threads running, over all mirrors.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// A mirror's resync as listings show it.
#[derive(Default)]
pub struct ResyncProgress {
    running: AtomicBool,
    stop: AtomicBool,
    total_bytes: AtomicU64,
    done_bytes: AtomicU64,
    times: Mutex<ResyncTimes>,
}

#[derive(Default)]
struct ResyncTimes {
    started: Option<Instant>,
    finished: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// What [`ResyncProgress::snapshot`] reports.
#[derive(Clone, Debug, Default)]
pub struct ResyncSnapshot {
    pub running: bool,
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub rate_bytes_per_s: f64,
    pub last_error: Option<String>,
}

impl ResyncProgress {
    fn times(&self) -> std::sync::MutexGuard<'_, ResyncTimes> {
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    pub fn snapshot(&self) -> ResyncSnapshot {
        let times = self.times();
        let done_bytes = self.done_bytes.load(Ordering::Relaxed);
        let elapsed = match (times.started, times.finished) {
            (Some(s), Some(f)) if !self.is_running() => f.duration_since(s),
            (Some(s), _) => s.elapsed(),
            _ => Duration::ZERO,
        };
        ResyncSnapshot {
            running: self.is_running(),
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
            done_bytes,
            rate_bytes_per_s: if elapsed.is_zero() {
                0.0
            } else {
                done_bytes as f64 / elapsed.as_secs_f64()
            },
            last_error: times.last_error.clone(),
        }
    }

    /// When a resync last started (for the retry back-off).
    pub fn last_attempt(&self) -> Option<Instant> {
        self.times().last_attempt
    }

    /// Asks a running resync to stop and waits (at most `wait`) until it has.
    pub fn stop_and_wait(&self, wait: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + wait;
        while self.is_running() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("no healthy leg to copy from")]
    NoSource,
    #[error("reading leg {leg}")]
    Source {
        leg: String,
        #[source]
        source: Box<crate::pool::PoolError>,
    },
    #[error("writing leg {leg}")]
    Target {
        leg: String,
        #[source]
        source: Box<crate::pool::PoolError>,
    },
    #[error("the dirty-region log")]
    Log(#[from] super::dirty_log::DirtyLogError),
    #[error("stopped")]
    Stopped,
    #[error("leg {leg} failed again during the resync")]
    TargetLost { leg: String },
}

/// Starts a resync of `mirror` on its own thread unless one runs or the limit of threads is
/// reached; whether it started.
pub fn start(mirror: &Arc<Mirror>) -> bool {
    let progress = &mirror.resync;
    if progress
        .running
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return false;
    }
    if RUNNING.fetch_add(1, Ordering::SeqCst) >= MAX_RESYNC_THREADS {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        progress.running.store(false, Ordering::SeqCst);
        return false;
    }
    progress.stop.store(false, Ordering::SeqCst);
    {
        let mut times = progress.times();
        times.last_attempt = Some(Instant::now());
        times.started = Some(Instant::now());
        times.finished = None;
        times.last_error = None;
    }
    let mirror = mirror.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("resync-{}", mirror.name))
        .spawn(move || {
            let outcome = run(&mirror);
            let progress = &mirror.resync;
            let mut times = progress.times();
            times.finished = Some(Instant::now());
            match outcome {
                Ok(()) => log::info!(
                    "mirror {}: resync done, {} bytes copied",
                    mirror.name,
                    progress.done_bytes.load(Ordering::Relaxed)
                ),
                Err(error) => {
                    let text = error_chain(&error);
                    log::warn!("mirror {}: resync stopped: {text}", mirror.name);
                    times.last_error = Some(text);
                }
            }
            drop(times);
            progress.running.store(false, Ordering::SeqCst);
            RUNNING.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(error) = spawned {
        log::error!("cannot start a resync thread: {error}");
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        progress.running.store(false, Ordering::SeqCst);
        return false;
    }
    true
}

/// Whether a resync would have something to do: a degraded or resyncing leg, or dirty bits
/// with more than one leg (a crash left writes in flight).
pub fn needed(mirror: &Mirror) -> bool {
    let stale = mirror.positions().any(|p| {
        matches!(
            mirror.leg_state(p),
            Some(LegState::Degraded | LegState::Resyncing)
        )
    });
    stale
}

fn run(mirror: &Arc<Mirror>) -> Result<(), ResyncError> {
    let source = mirror.healthy_leg().ok_or(ResyncError::NoSource)?;
    let source_volume = mirror.leg_volume(source).ok_or(ResyncError::NoSource)?;
    let mut targets: Vec<(usize, Arc<Volume>)> = Vec::new();
    for position in mirror.positions().filter(|&p| p != source) {
        let Some(volume) = mirror.leg_volume(position) else {
            continue;
        };
        mirror.set_leg_state(
            position,
            LegState::Resyncing,
            &[LegState::Degraded, LegState::Resyncing],
        )?;
        if matches!(
            mirror.leg_state(position),
            Some(LegState::Resyncing | LegState::Healthy)
        ) {
            targets.push((position, volume));
        }
    }
    let region_bytes = mirror.log.region_bytes();
    let progress = &mirror.resync;
    progress
        .total_bytes
        .store(mirror.log.count_set() * region_bytes, Ordering::Relaxed);
    progress.done_bytes.store(0, Ordering::Relaxed);
    log::info!(
        "mirror {}: resync from leg {} to {} legs, {} regions",
        mirror.name,
        source_volume.name,
        targets.len(),
        mirror.log.count_set()
    );
    let source = (source, source_volume);
    let cursor = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| {
        let mut workers = Vec::with_capacity(RESYNC_COPY_WORKERS);
        for worker in 0..RESYNC_COPY_WORKERS {
            let copier = Copier {
                mirror,
                source: source.clone(),
                targets: targets.clone(),
                buf: AlignedBuf::new(region_bytes as usize),
                // A piece is at most a region: its LUN blocks fit in a region and two blocks.
                bounce: AlignedBuf::new(region_bytes as usize + 2 * MAX_LUN_BLOCK_BYTES),
                abort: &abort,
            };
            let cursor = &cursor;
            let spawned = std::thread::Builder::new()
                .name(format!("resync-{}-{worker}", mirror.name))
                .spawn_scoped(scope, move || copier.run(cursor));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(error) => log::warn!(
                    "mirror {}: a resync worker did not start: {error}",
                    mirror.name
                ),
            }
        }
        let mut outcome = if workers.is_empty() {
            Err(ResyncError::Stopped)
        } else {
            Ok(())
        };
        for handle in workers {
            let result = handle.join().unwrap_or(Err(ResyncError::Stopped));
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    });
    outcome?;
    mirror.log.flush()?;
    for (position, _) in &targets {
        mirror.set_leg_state(*position, LegState::Healthy, &[LegState::Resyncing])?;
    }
    Ok(())
}

/// One copy worker of a resync: its buffers, and the resync's source and targets.
struct Copier<'a> {
    mirror: &'a Mirror,
    source: (usize, Arc<Volume>),
    targets: Vec<(usize, Arc<Volume>)>,
    buf: AlignedBuf,
    bounce: AlignedBuf,
    /// Set by the worker that failed: the others stop too.
    abort: &'a AtomicBool,
}

impl Copier<'_> {
    /// Takes the next set region after the shared `cursor` and copies it, until none is
    /// left; then the regions that were busy, until each was copied.
    fn run(mut self, cursor: &AtomicU64) -> Result<(), ResyncError> {
        let result = self.copy_all(cursor);
        if result.is_err() {
            self.abort.store(true, Ordering::SeqCst);
        }
        result
    }

    fn copy_all(&mut self, cursor: &AtomicU64) -> Result<(), ResyncError> {
        let (mirror, progress) = (self.mirror, &self.mirror.resync);
        let mut busy = Vec::new();
        let mut since_flush = 0;
        let mut flushed_at = Instant::now();
        let flush_interval = Duration::from_millis(RESYNC_PERSIST_INTERVAL_MS);
        loop {
            self.check()?;
            let from = cursor.load(Ordering::SeqCst);
            let Some(region) = mirror.log.next_set(from) else {
                break;
            };
            if cursor
                .compare_exchange(from, region + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue; // Another worker took it.
            }
            match self.copy_region(region)? {
                Some(bytes) => {
                    progress.done_bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                None => busy.push(region),
            }
            since_flush += 1;
            if since_flush >= RESYNC_PERSIST_EVERY_REGIONS || flushed_at.elapsed() >= flush_interval
            {
                mirror.log.flush()?;
                since_flush = 0;
                flushed_at = Instant::now();
            }
        }
        // Regions that had writes in flight when their turn came: again until each was quiet.
        while !busy.is_empty() {
            self.check()?;
            std::thread::sleep(Duration::from_millis(1));
            let mut still = Vec::new();
            for region in busy {
                if !mirror.log.is_set(region) {
                    continue;
                }
                match self.copy_region(region)? {
                    Some(bytes) => {
                        progress.done_bytes.fetch_add(bytes, Ordering::Relaxed);
                    }
                    None => still.push(region),
                }
            }
            busy = still;
        }
        Ok(())
    }

    /// Stops when asked to, when another worker failed, or when the source or a target is no
    /// longer in the resync.
    fn check(&self) -> Result<(), ResyncError> {
        if self.mirror.resync.stop.load(Ordering::SeqCst) || self.abort.load(Ordering::SeqCst) {
            return Err(ResyncError::Stopped);
        }
        if self.mirror.leg_state(self.source.0) != Some(LegState::Healthy) {
            return Err(ResyncError::NoSource);
        }
        for (position, volume) in &self.targets {
            if !matches!(
                self.mirror.leg_state(*position),
                Some(LegState::Resyncing | LegState::Healthy)
            ) {
                return Err(ResyncError::TargetLost {
                    leg: volume.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Copies `region` if no write to it is in flight: its bytes, or `None` (busy: later).
    fn copy_region(&mut self, region: u64) -> Result<Option<u64>, ResyncError> {
        let region_bytes = self.mirror.log.region_bytes();
        let offset = region * region_bytes;
        let len = region_bytes.min(self.mirror.size_bytes.saturating_sub(offset));
        loop {
            let (before, quiet) = self.mirror.region_writes(region);
            if !quiet {
                return Ok(None);
            }
            self.copy_range(offset, len)?;
            self.mirror.log.clear(region);
            let (after, _) = self.mirror.region_writes(region);
            if after == before {
                return Ok(Some(len));
            }
            // A write started while the region was copied: it may have reached a target
            // before the copy did. The bit goes back (durably: that writer may rely on it),
            // and the region is copied again once quiet.
            self.mirror.log.set_durable([region])?;
            self.check()?;
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Copies `[offset, offset + len)` from the source to every target, extent piece by
    /// piece: a piece the source never wrote is zeroed on a target that has it mapped, and
    /// skipped where the target has not either.
    fn copy_range(&mut self, offset: u64, len: u64) -> Result<(), ResyncError> {
        let (source_position, source) = &self.source;
        let mut done = 0;
        while done < len {
            let at = offset + done;
            let (mapped, piece) = match source.segment(source.map(), at, len - done) {
                Segment::Mapped { len_bytes, .. } => (true, len_bytes),
                Segment::Unmapped { len_bytes, .. } => (false, len_bytes),
            };
            let data = if mapped {
                let buf = &mut self.buf.as_mut_slice()[..piece as usize];
                if let Err(error) = slow_read(source, at, buf, &mut self.bounce) {
                    self.mirror.note_leg_error(*source_position);
                    let _ = self.mirror.persist_failing();
                    return Err(ResyncError::Source {
                        leg: source.name.clone(),
                        source: Box::new(error),
                    });
                }
                Some(&self.buf.as_slice()[..piece as usize])
            } else {
                None
            };
            for (position, target) in &self.targets {
                if let Err(error) =
                    slow_write(target, at, piece, data, false, false, &mut self.bounce)
                {
                    self.mirror.note_leg_error(*position);
                    let _ = self.mirror.persist_failing();
                    return Err(ResyncError::Target {
                        leg: target.name.clone(),
                        source: Box::new(error),
                    });
                }
            }
            done += piece;
        }
        Ok(())
    }
}

/// Clears the bits of quiet regions of a mirror whose legs are all healthy (the control
/// cycle): a region whose bit is set, with no write in flight and none started since the
/// last look (`seen`, per region), holds the same bytes on every leg. The bit is cleared
/// first and the counter checked after, so a writer either sees the clear (and sets the bit
/// again, durably, before it writes) or is seen here (and the bit is put back).
pub fn clean(mirror: &Mirror, seen: &mut Vec<u32>) {
    if mirror.resync.is_running() || !mirror.all_healthy() {
        return;
    }
    seen.resize(mirror.log.regions() as usize, u32::MAX);
    let mut next = 0;
    let mut cleared = 0;
    while let Some(region) = mirror.log.next_set(next) {
        next = region + 1;
        let (started, quiet) = mirror.region_writes(region);
        let last = std::mem::replace(&mut seen[region as usize], started);
        if !quiet || last != started {
            continue;
        }
        mirror.log.clear(region);
        if mirror.region_writes(region).0 != started {
            if let Err(error) = mirror.log.set_durable([region]) {
                log::error!(
                    "mirror {}: the dirty-region log cannot be written: {}",
                    mirror.name,
                    error_chain(&error)
                );
            }
            continue;
        }
        cleared += 1;
    }
    if cleared > 0 {
        if let Err(error) = mirror.log.flush() {
            log::error!(
                "mirror {}: the dirty-region log cannot be written: {}",
                mirror.name,
                error_chain(&error)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::mirror::tests::{leg, mirror, EXTENT};
    use crate::volume::provisioner::new_bounce;

    fn read(volume: &Volume, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        slow_read(volume, offset, &mut out, &mut new_bounce()).expect("read");
        out
    }

    fn wait_done(m: &Mirror) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while m.resync.is_running() {
            assert!(Instant::now() < deadline, "the resync did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn resync_copies_the_dirty_regions_and_makes_the_leg_healthy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (leg("a", 8 * EXTENT), leg("b", 8 * EXTENT));
        let bounce = &mut new_bounce();
        // Leg a has data in regions 1 and 5 (the second only in part); b has stale data in
        // region 5 and data in region 6 that a does not have (a never wrote there: zeroes).
        slow_write(&a, EXTENT, 8192, Some(&[0xaa; 8192]), false, false, bounce).expect("a");
        slow_write(
            &a,
            5 * EXTENT + 4096,
            4096,
            Some(&[0xab; 4096]),
            false,
            false,
            bounce,
        )
        .expect("a");
        slow_write(
            &b,
            5 * EXTENT,
            8192,
            Some(&[0x11; 8192]),
            false,
            false,
            bounce,
        )
        .expect("b");
        slow_write(
            &b,
            6 * EXTENT,
            4096,
            Some(&[0x22; 4096]),
            false,
            false,
            bounce,
        )
        .expect("b");
        let m = mirror(
            dir.path(),
            &[
                (a.clone(), LegState::Healthy),
                (b.clone(), LegState::Degraded),
            ],
        );
        m.log.set_durable([1, 5, 6]).expect("bits");
        assert!(needed(&m));
        assert!(start(&m));
        wait_done(&m);
        assert_eq!(m.resync.snapshot().last_error, None);
        assert_eq!(m.leg_state(1), Some(LegState::Healthy));
        assert_eq!(m.log.count_set(), 0);
        for region in [1, 5, 6] {
            let offset = region * EXTENT;
            assert_eq!(
                read(&a, offset, EXTENT as usize),
                read(&b, offset, EXTENT as usize),
                "region {region}"
            );
        }
        // Regions whose bits were clear were not touched.
        assert_eq!(m.resync.snapshot().done_bytes, 3 * EXTENT);
        assert!(b.map().get(2) == 0, "a clean region was not copied");
        // The cleared bits are on disk.
        let reopened = crate::volume::dirty_log::DirtyLog::open(
            m.log.path(),
            m.log.region_bytes(),
            m.log.regions(),
        )
        .expect("reopen");
        assert_eq!(reopened.count_set(), 0);
    }

    #[test]
    fn a_region_with_a_write_in_flight_waits_and_a_started_write_makes_it_redo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (leg("a", 4 * EXTENT), leg("b", 4 * EXTENT));
        let m = mirror(
            dir.path(),
            &[
                (a.clone(), LegState::Healthy),
                (b.clone(), LegState::Resyncing),
            ],
        );
        m.log.set_durable([0, 2]).expect("bits");
        // A write to region 2 is in flight: the copy takes region 0, then waits for it.
        m.begin_write(2 * EXTENT, 4096);
        assert!(start(&m));
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.log.is_set(0) {
            assert!(Instant::now() < deadline, "region 0 was not copied");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            m.log.is_set(2),
            "a region with a write in flight was copied"
        );
        assert!(m.resync.is_running());
        m.end_write(2 * EXTENT, 4096);
        wait_done(&m);
        assert_eq!(m.log.count_set(), 0);
        assert_eq!(m.leg_state(1), Some(LegState::Healthy));
    }

    #[test]
    fn the_cleaner_clears_only_regions_quiet_since_its_last_look() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (leg("a", 4 * EXTENT), leg("b", 4 * EXTENT));
        let m = mirror(
            dir.path(),
            &[(a, LegState::Healthy), (b, LegState::Healthy)],
        );
        m.log.set_durable([0, 1, 2]).expect("bits");
        m.begin_write(EXTENT, 4096);
        let mut seen = Vec::new();
        clean(&m, &mut seen);
        // First look: nothing is known to be quiet yet.
        assert_eq!(m.log.count_set(), 3);
        m.begin_write(2 * EXTENT, 4096);
        m.end_write(2 * EXTENT, 4096);
        clean(&m, &mut seen);
        // Region 0 was quiet; 1 has a write in flight; 2 had a write since the last look.
        assert!(!m.log.is_set(0) && m.log.is_set(1) && m.log.is_set(2));
        m.end_write(EXTENT, 4096);
        clean(&m, &mut seen);
        clean(&m, &mut seen);
        assert_eq!(m.log.count_set(), 0);
    }
}
