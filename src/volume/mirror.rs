//! Synchronous mirrors: a volume whose body is two or three legs (plain volumes on disjoint
//! LUNs) holding the same bytes.
//!
//! ```text
//!  host write ─▶ regions' started += 1 ─▶ dirty bits set? ─ no ─▶ metadata thread: set durably ─┐
//!                                          │ yes (one load)                                   │
//!                                          ▼ ◀────────────────────────────────────────────────┘
//!                                  every healthy or resyncing leg ─▶ all answered ─▶ done += 1
//!  host read  ─▶ the healthy leg with fewer reads in flight
//!  leg error  ─▶ leg Failing (atomic) ─▶ metadata thread persists Degraded ─▶ wake ─▶ host: ok
//! ```
//!
//! Each leg has a position (0..[`MAX_MIRROR_LEGS`]), a state and a count of I/Os in flight.
//! States: `Healthy` (read and written), `Resyncing` (written, not read, being copied to),
//! `Degraded` (neither: it missed writes, the dirty-region log says where), `Failed` (its
//! volume is gone: only a replace or a split helps). Two states live only in memory:
//! `Failing` (an I/O error was seen; a write that sees it waits until the metadata thread has
//! persisted `Degraded`, so no write is acknowledged while a restart could still believe the
//! leg is whole) and `Absent` / `Detaching` (no leg there, or one being taken out).
//!
//! The dirty-region log ([`super::dirty_log`]) is a write-intent log: every write makes sure
//! the bits of its regions are set (durably) before it touches a leg, so a crash with writes
//! in flight leaves the legs different only in regions the log names. The cleaner (control
//! cycle) clears the bits of quiet regions while every leg is healthy; a resync
//! ([`super::resync`]) clears the bits it copies.
//!
//! Per-region write counters (`started`, `done`) are the resync's race rule: a region is
//! copied only when no write to it is in flight, and copied again if one started meanwhile.

use super::dirty_log::{DirtyLog, DirtyLogError, LoggedLeg};
use super::resync::ResyncProgress;
use super::Volume;
use crate::constants::{MAX_MIRROR_LEGS, MIRROR_DETACH_WAIT_MS};
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The persisted states of a leg (their codes are what the dirty log stores).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LegState {
    Healthy = 0,
    Degraded = 1,
    Resyncing = 2,
    Failed = 3,
}

/// In memory only: an I/O error was seen, `Degraded` is not durable yet.
const FAILING: u8 = 4;
/// In memory only: no leg at this position.
const ABSENT: u8 = 5;
/// In memory only: the leg is being taken out (split, replaced): no new I/O goes to it.
const DETACHING: u8 = 6;

impl LegState {
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Healthy),
            1 | FAILING => Some(Self::Degraded),
            2 => Some(Self::Resyncing),
            3 => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Resyncing => "resyncing",
            Self::Failed => "failed",
        }
    }
}

/// One leg position.
pub struct Leg {
    volume: ArcSwapOption<Volume>,
    state: AtomicU8,
    /// I/Os the data path has in flight on the leg (reads pick the leg with fewer; a detach
    /// waits for zero).
    pub inflight: AtomicU32,
}

impl Leg {
    /// The leg's volume, loaded lock-free for the length of a round.
    #[inline]
    pub fn volume_guard(&self) -> arc_swap::Guard<Option<Arc<Volume>>> {
        self.volume.load()
    }

    fn absent() -> Self {
        Self {
            volume: ArcSwapOption::empty(),
            state: AtomicU8::new(ABSENT),
            inflight: AtomicU32::new(0),
        }
    }
}

pub struct Mirror {
    pub name: String,
    pub uuid: [u8; 16],
    pub size_bytes: u64,
    pub block_size_bytes: u32,
    legs: [Leg; MAX_MIRROR_LEGS],
    pub log: DirtyLog,
    /// Writes started and finished per region (wrapping; only equality matters).
    started: Box<[AtomicU32]>,
    done: Box<[AtomicU32]>,
    pub resync: ResyncProgress,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Log(#[from] DirtyLogError),
    #[error("leg {volume} still has I/O in flight after {waited_ms} ms")]
    Busy { volume: String, waited_ms: u64 },
}

impl Mirror {
    /// A mirror over `legs` (volume, state) with its log.
    pub fn new(
        name: &str,
        uuid: [u8; 16],
        size_bytes: u64,
        block_size_bytes: u32,
        legs: &[(Arc<Volume>, LegState)],
        log: DirtyLog,
    ) -> Self {
        let regions = log.regions() as usize;
        let mirror = Self {
            name: name.to_string(),
            uuid,
            size_bytes,
            block_size_bytes,
            legs: std::array::from_fn(|_| Leg::absent()),
            log,
            started: (0..regions).map(|_| AtomicU32::new(0)).collect(),
            done: (0..regions).map(|_| AtomicU32::new(0)).collect(),
            resync: ResyncProgress::default(),
        };
        for (position, (volume, state)) in legs.iter().enumerate().take(MAX_MIRROR_LEGS) {
            mirror.legs[position].volume.store(Some(volume.clone()));
            mirror.legs[position]
                .state
                .store(*state as u8, Ordering::SeqCst);
        }
        mirror
    }

    // ---- the data path ----------------------------------------------------------------

    /// The leg at `position` (the data path: a lock-free load).
    #[inline]
    pub fn leg(&self, position: usize) -> &Leg {
        &self.legs[position]
    }

    /// The volume of the leg at `position`, if any.
    #[inline]
    pub fn leg_volume(&self, position: usize) -> Option<Arc<Volume>> {
        self.legs.get(position)?.volume.load_full()
    }

    /// The raw state code at `position` (see the module doc).
    #[inline]
    fn code(&self, position: usize) -> u8 {
        self.legs[position].state.load(Ordering::SeqCst)
    }

    /// The state of the leg at `position` as listings show it (`None`: no leg there).
    pub fn leg_state(&self, position: usize) -> Option<LegState> {
        LegState::from_code(self.code(position))
    }

    /// Legs a write goes to: healthy and resyncing ones, as a bit mask of positions.
    #[inline]
    pub fn write_mask(&self) -> u8 {
        let mut mask = 0;
        for position in 0..MAX_MIRROR_LEGS {
            let code = self.code(position);
            if code == LegState::Healthy as u8 || code == LegState::Resyncing as u8 {
                mask |= 1 << position;
            }
        }
        mask
    }

    /// Whether a leg's error is not durable yet: a write must wait for the metadata thread.
    #[inline]
    pub fn has_failing_leg(&self) -> bool {
        (0..MAX_MIRROR_LEGS).any(|p| self.code(p) == FAILING)
    }

    /// The healthy leg with the fewest I/Os in flight, not in `exclude`.
    #[inline]
    pub fn read_leg(&self, exclude: u8) -> Option<usize> {
        (0..MAX_MIRROR_LEGS)
            .filter(|&p| exclude & (1 << p) == 0 && self.code(p) == LegState::Healthy as u8)
            .min_by_key(|&p| self.legs[p].inflight.load(Ordering::Relaxed))
    }

    /// Takes a reference on the leg at `position` for a round of I/O if its state lets it
    /// take writes (`for_write`: healthy or resyncing) or reads (healthy): counted in flight
    /// first and the state checked after, so a detach that saw no I/O in flight is never
    /// followed by one. Give it back with [`Self::leave`].
    #[inline]
    pub fn enter(&self, position: usize, for_write: bool) -> bool {
        let leg = &self.legs[position];
        leg.inflight.fetch_add(1, Ordering::SeqCst);
        let code = leg.state.load(Ordering::SeqCst);
        let usable =
            code == LegState::Healthy as u8 || (for_write && code == LegState::Resyncing as u8);
        if !usable {
            leg.inflight.fetch_sub(1, Ordering::SeqCst);
        }
        usable
    }

    /// One more I/O in flight on the leg at `position` (under a reference from
    /// [`Self::enter`]).
    #[inline]
    pub fn enter_io(&self, position: usize) {
        self.enter_ios(position, 1);
    }

    #[inline]
    pub fn enter_ios(&self, position: usize, count: u32) {
        if count > 0 {
            self.legs[position]
                .inflight
                .fetch_add(count, Ordering::SeqCst);
        }
    }

    /// Gives back `count` in-flight references on the leg at `position`.
    #[inline]
    pub fn leave(&self, position: usize, count: u32) {
        self.legs[position]
            .inflight
            .fetch_sub(count, Ordering::SeqCst);
    }

    /// Takes a leg that returned an I/O error out of reads and writes; the next write (or the
    /// request that saw the error) has the metadata thread persist it as degraded.
    ///
    /// The last healthy leg is never taken out: its error is the host's (the data is nowhere
    /// else). Whether the leg is out of the I/O now (or was already).
    #[inline]
    pub fn note_leg_error(&self, position: usize) -> bool {
        let leg = &self.legs[position];
        let code = leg.state.load(Ordering::SeqCst);
        if code == LegState::Healthy as u8 {
            let other_healthy = (0..MAX_MIRROR_LEGS)
                .any(|p| p != position && self.code(p) == LegState::Healthy as u8);
            if !other_healthy {
                return false;
            }
        } else if code != LegState::Resyncing as u8 {
            return true;
        }
        leg.state
            .compare_exchange(code, FAILING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            || leg.state.load(Ordering::SeqCst) != LegState::Healthy as u8
    }

    /// A write over `[offset, offset + len)` starts: its regions' `started` counters.
    #[inline]
    pub fn begin_write(&self, offset_bytes: u64, len_bytes: u64) {
        for region in self.log.regions_of(offset_bytes, len_bytes) {
            self.started[region as usize].fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The write begun by [`Self::begin_write`] is over (on every leg).
    #[inline]
    pub fn end_write(&self, offset_bytes: u64, len_bytes: u64) {
        for region in self.log.regions_of(offset_bytes, len_bytes) {
            self.done[region as usize].fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Writes started on `region` so far, and whether none is in flight.
    #[inline]
    pub fn region_writes(&self, region: u64) -> (u32, bool) {
        let started = self.started[region as usize].load(Ordering::SeqCst);
        let done = self.done[region as usize].load(Ordering::SeqCst);
        (started, started == done)
    }

    // ---- the metadata thread ----------------------------------------------------------

    /// Persists every failing leg as degraded (the metadata thread, before it wakes the
    /// writes that waited for it). On failure the legs stay failing and the writes fail.
    pub fn persist_failing(&self) -> Result<(), DirtyLogError> {
        if !self.has_failing_leg() {
            return Ok(());
        }
        let failing: Vec<usize> = (0..MAX_MIRROR_LEGS)
            .filter(|&p| self.code(p) == FAILING)
            .collect();
        self.log.set_legs(&self.logged_legs())?;
        for position in failing {
            let leg = &self.legs[position];
            let _ = leg.state.compare_exchange(
                FAILING,
                LegState::Degraded as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            if let Some(volume) = leg.volume.load_full() {
                log::warn!(
                    "mirror {}: leg {} returned an I/O error and is degraded",
                    self.name,
                    volume.name
                );
            }
        }
        Ok(())
    }

    /// The legs as the log records them (failing ones as degraded).
    pub fn logged_legs(&self) -> Vec<LoggedLeg> {
        (0..MAX_MIRROR_LEGS)
            .filter_map(|p| {
                let volume = self.legs[p].volume.load_full()?;
                let state = LegState::from_code(self.code(p))?;
                Some(LoggedLeg {
                    uuid: volume.uuid,
                    state: state as u8,
                })
            })
            .collect()
    }

    /// Sets the state of the leg at `position` and persists the legs (resync and control
    /// threads). `only_from`: change it only if it is in one of these states now.
    pub fn set_leg_state(
        &self,
        position: usize,
        state: LegState,
        only_from: &[LegState],
    ) -> Result<bool, DirtyLogError> {
        let leg = &self.legs[position];
        let code = leg.state.load(Ordering::SeqCst);
        if !only_from.is_empty() && !only_from.iter().any(|s| *s as u8 == code) {
            return Ok(false);
        }
        if leg
            .state
            .compare_exchange(code, state as u8, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Ok(false);
        }
        if let Err(error) = self.log.set_legs(&self.logged_legs()) {
            let _ =
                leg.state
                    .compare_exchange(state as u8, code, Ordering::SeqCst, Ordering::SeqCst);
            return Err(error);
        }
        Ok(true)
    }

    // ---- the control thread -----------------------------------------------------------

    /// Positions that hold a leg.
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_MIRROR_LEGS).filter(|&p| self.legs[p].volume.load().is_some())
    }

    /// The position of the leg whose volume is `name`.
    pub fn position_of(&self, name: &str) -> Option<usize> {
        self.positions()
            .find(|&p| self.leg_volume(p).is_some_and(|v| v.name == name))
    }

    /// The position of the leg that is `volume` (the same object).
    pub fn position_of_volume(&self, volume: &Arc<Volume>) -> Option<usize> {
        (0..MAX_MIRROR_LEGS).find(|&p| {
            self.legs[p]
                .volume
                .load()
                .as_ref()
                .is_some_and(|v| Arc::ptr_eq(v, volume))
        })
    }

    /// Puts `volume` at a free position in `state` and persists the legs.
    pub fn attach(
        &self,
        volume: Arc<Volume>,
        state: LegState,
    ) -> Result<Option<usize>, DirtyLogError> {
        let Some(position) = (0..MAX_MIRROR_LEGS).find(|&p| self.legs[p].volume.load().is_none())
        else {
            return Ok(None);
        };
        let leg = &self.legs[position];
        leg.inflight.store(0, Ordering::SeqCst);
        leg.volume.store(Some(volume));
        leg.state.store(state as u8, Ordering::SeqCst);
        if let Err(error) = self.log.set_legs(&self.logged_legs()) {
            leg.state.store(ABSENT, Ordering::SeqCst);
            leg.volume.store(None);
            return Err(error);
        }
        Ok(Some(position))
    }

    /// Takes the leg at `position` out: no new I/O goes to it, then what is in flight
    /// drains, then it is removed and the legs persisted. Gives the volume back.
    pub fn detach(&self, position: usize) -> Result<Arc<Volume>, MirrorError> {
        let leg = &self.legs[position];
        let before = leg.state.swap(DETACHING, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_millis(MIRROR_DETACH_WAIT_MS);
        while leg.inflight.load(Ordering::SeqCst) != 0 {
            if Instant::now() >= deadline {
                leg.state.store(before, Ordering::SeqCst);
                return Err(MirrorError::Busy {
                    volume: self
                        .leg_volume(position)
                        .map(|v| v.name.clone())
                        .unwrap_or_default(),
                    waited_ms: MIRROR_DETACH_WAIT_MS,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let volume = leg.volume.swap(None);
        if let Err(error) = self.log.set_legs(&self.logged_legs()) {
            leg.volume.store(volume);
            leg.state.store(before, Ordering::SeqCst);
            return Err(error.into());
        }
        leg.state.store(ABSENT, Ordering::SeqCst);
        volume.ok_or(MirrorError::Busy {
            volume: String::new(),
            waited_ms: 0,
        })
    }

    /// The first healthy leg, the source of a resync.
    pub fn healthy_leg(&self) -> Option<usize> {
        (0..MAX_MIRROR_LEGS).find(|&p| self.code(p) == LegState::Healthy as u8)
    }

    /// Whether every leg is healthy.
    pub fn all_healthy(&self) -> bool {
        self.positions()
            .all(|p| self.code(p) == LegState::Healthy as u8)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::{open_lun, LunKind, LunSpec};
    use crate::constants::MIRROR_REGION_BYTES;
    use crate::pool::Pool;

    pub const EXTENT: u64 = 1 << 20;

    /// A plain volume `name` of `size` bytes in its own pool on one RAM LUN.
    pub fn leg(name: &str, size: u64) -> Arc<Volume> {
        let lun = open_lun(&LunSpec {
            name: format!("{name}-lun"),
            kind: LunKind::Mem,
            path: None,
            size_bytes: Some(size + (16 << 20)),
            block_size_bytes: 512,
            remote: None,
        })
        .expect("RAM LUN");
        let uuid = [name.as_bytes()[0]; 16];
        let pool = Arc::new(Pool::create(name, uuid, EXTENT, None, vec![lun]).expect("pool"));
        Arc::new(Volume::new(name, uuid, pool, size, 512, true))
    }

    /// A mirror over `legs` in `states`, its log in `dir`.
    pub fn mirror(dir: &std::path::Path, legs: &[(Arc<Volume>, LegState)]) -> Arc<Mirror> {
        let size = legs[0].0.size_bytes();
        let logged: Vec<LoggedLeg> = legs
            .iter()
            .map(|(v, s)| LoggedLeg {
                uuid: v.uuid,
                state: *s as u8,
            })
            .collect();
        let regions = size.div_ceil(MIRROR_REGION_BYTES);
        let log = DirtyLog::create(&dir.join("m.dirty"), MIRROR_REGION_BYTES, regions, &logged)
            .expect("log");
        Arc::new(Mirror::new("m", [9; 16], size, 512, legs, log))
    }

    #[test]
    fn a_failing_leg_leaves_reads_and_writes_and_persists_as_degraded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (leg("a", 4 * EXTENT), leg("b", 4 * EXTENT));
        let m = mirror(
            dir.path(),
            &[
                (a.clone(), LegState::Healthy),
                (b.clone(), LegState::Healthy),
            ],
        );
        assert_eq!(m.write_mask(), 0b11);
        assert!(m.note_leg_error(1));
        assert!(m.has_failing_leg());
        assert_eq!(m.write_mask(), 0b01);
        assert_eq!(m.read_leg(0), Some(0));
        // The last healthy leg is never taken out.
        assert!(!m.note_leg_error(0));
        assert_eq!(m.leg_state(0), Some(LegState::Healthy));
        m.persist_failing().expect("persist");
        assert!(!m.has_failing_leg());
        assert_eq!(m.leg_state(1), Some(LegState::Degraded));
        let logged = m.log.legs();
        assert_eq!(logged[1].uuid, b.uuid);
        assert_eq!(logged[1].state, LegState::Degraded as u8);
        // A degraded leg takes no new reference for I/O; a healthy one does.
        assert!(!m.enter(1, true));
        assert!(m.enter(0, false));
        m.leave(0, 1);
        assert_eq!(m.leg(0).inflight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn detach_waits_for_io_and_attach_reuses_the_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, c) = (
            leg("a", 4 * EXTENT),
            leg("b", 4 * EXTENT),
            leg("c", 4 * EXTENT),
        );
        let m = mirror(
            dir.path(),
            &[
                (a.clone(), LegState::Healthy),
                (b.clone(), LegState::Healthy),
            ],
        );
        assert!(m.enter(1, true));
        let m2 = m.clone();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            m2.leave(1, 1);
        });
        let detached = m.detach(1).expect("detach");
        releaser.join().expect("thread");
        assert!(Arc::ptr_eq(&detached, &b));
        assert_eq!(m.positions().count(), 1);
        assert_eq!(m.log.legs().len(), 1);
        assert_eq!(
            m.attach(c.clone(), LegState::Resyncing).expect("attach"),
            Some(1)
        );
        assert_eq!(m.position_of("c"), Some(1));
        assert_eq!(m.write_mask(), 0b11);
        assert_eq!(m.read_leg(0), Some(0), "a resyncing leg is not read");
    }
}
