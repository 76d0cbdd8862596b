//! A volume's write gate: how a thread that changes mapping slots under running I/O (the
//! provisioning thread releasing a trimmed extent; snapshots marking extents shared) waits
//! until every I/O that may still use the slots' old values has completed.
//!
//! The gate is two counters of I/O in flight, one per epoch, and the epoch. The data path
//! pays one load, one `fetch_add`, one load again and, when the I/O's LUN work is done, one
//! `fetch_sub`: no lock, no allocation.
//!
//! ```text
//!  I/O (reactor)                              changer (provisioning thread)
//!  ─────────────                              ─────────────────────────────
//!  e = epoch; count[e] += 1; epoch == e? ─┐   swap the slots (SeqCst)
//!  load slots (SeqCst)                    │   epoch += 1 (old epoch e')
//!  LUN I/O ...                            │   wait until count[e'] == 0
//!  count[e] -= 1  ◀───────────────────────┘   now the old slot values are unused
//! ```
//!
//! Why it is enough: every operation named above is sequentially consistent, so they fall in
//! one total order. An I/O that entered with epoch `e` saw, after its increment, that the
//! epoch was still `e`. If that check came before the changer's flip, its increment did too,
//! and the changer's reads of `count[e]` (after the flip) see it and wait for it. If the check
//! came after the flip, the I/O's slot loads (after the check) come after the changer's swap
//! (before the flip) and see the new values. An I/O whose check fails (a flip came between its
//! load of the epoch and its increment) takes its increment back and enters again, so no I/O
//! holds a counter of an epoch it did not see as current. Changers are serialized by a mutex
//! (they are on control paths, never on the data path), so only one flip is waited on at a time.
//!
//! The drain waits for I/O that is running on a LUN, which completes on its own; an I/O must
//! therefore never hold the gate while it waits for the thread that drains it (the engine
//! leaves the gate before it asks the provisioning thread for an extent).

use crate::constants::WRITE_GATE_DRAIN_TIMEOUT_MS;
use crossbeam::utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Spins before the drain starts to sleep between looks: most I/O in flight completes within
/// tens of microseconds.
const DRAIN_SPINS: u32 = 64;
/// The sleep between looks once spinning did not see the old epoch drain.
const DRAIN_SLEEP: Duration = Duration::from_micros(50);

/// Two per-epoch counters of I/O in flight, and the epoch. See the module documentation.
pub struct WriteGate {
    epoch: CachePadded<AtomicU64>,
    in_flight: [CachePadded<AtomicU64>; 2],
    /// Serializes changers: one flip, one drain at a time.
    changers: Mutex<()>,
}

/// A drain that gave up: I/O of the old epoch was still running at its deadline (a LUN that
/// never answers).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{in_flight} I/O still in flight after {WRITE_GATE_DRAIN_TIMEOUT_MS} ms")]
pub struct DrainTimedOut {
    pub in_flight: u64,
}

/// Proof that an I/O entered the gate in an epoch; give it back with [`WriteGate::leave`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "an entered gate must be left, or every later drain waits forever"]
pub struct GateTicket(u64);

impl Default for WriteGate {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteGate {
    pub fn new() -> Self {
        Self {
            epoch: CachePadded::new(AtomicU64::new(0)),
            in_flight: [
                CachePadded::new(AtomicU64::new(0)),
                CachePadded::new(AtomicU64::new(0)),
            ],
            changers: Mutex::new(()),
        }
    }

    /// Enters the gate: call before loading the mapping slots an I/O will use, and keep the
    /// ticket until the I/O that used them has completed.
    #[inline]
    pub fn enter(&self) -> GateTicket {
        loop {
            let epoch = self.epoch.load(Ordering::SeqCst);
            let counter = &self.in_flight[(epoch & 1) as usize];
            counter.fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == epoch {
                return GateTicket(epoch);
            }
            // A changer flipped between the two loads: it may not wait for this counter.
            counter.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Leaves the gate: the I/O that entered with `ticket` no longer uses the slots it loaded.
    #[inline]
    pub fn leave(&self, ticket: GateTicket) {
        let previous = self.in_flight[(ticket.0 & 1) as usize].fetch_sub(1, Ordering::SeqCst);
        debug_assert!(previous > 0, "left a gate more often than entered");
    }

    /// Waits until every I/O that entered before this call has left. A changer first stores
    /// the new slot values (SeqCst), then drains; afterwards no I/O uses the old values.
    pub fn drain(&self) {
        let drained = self.drain_by(None);
        debug_assert!(drained, "a drain without a deadline gave up");
    }

    /// Like [`Self::drain`], but gives up at `deadline`; returns whether it drained.
    pub fn drain_until(&self, deadline: Instant) -> bool {
        self.drain_by(Some(deadline))
    }

    /// Starts a new epoch and waits until the old one's counter is zero, giving up at
    /// `deadline` if there is one; returns whether it drained. Only a drain without a deadline
    /// spins first ([`DRAIN_SPINS`] times); one with a deadline sleeps from the start and looks
    /// at the clock before each sleep.
    fn drain_by(&self, deadline: Option<Instant>) -> bool {
        // A poisoned lock only means another changer panicked; the gate itself is consistent.
        let _serial = self
            .changers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = self.epoch.fetch_add(1, Ordering::SeqCst);
        let counter = &self.in_flight[(old & 1) as usize];
        let mut spins = if deadline.is_some() { DRAIN_SPINS } else { 0 };
        while counter.load(Ordering::SeqCst) != 0 {
            if spins < DRAIN_SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return false;
            } else {
                std::thread::sleep(DRAIN_SLEEP);
            }
        }
        true
    }

    /// Like [`Self::drain`], bounded by [`WRITE_GATE_DRAIN_TIMEOUT_MS`] (a snapshot gives up
    /// rather than hang its caller on a LUN that never answers).
    pub fn drain_bounded(&self) -> Result<(), DrainTimedOut> {
        let deadline = Instant::now() + Duration::from_millis(WRITE_GATE_DRAIN_TIMEOUT_MS);
        if self.drain_until(deadline) {
            Ok(())
        } else {
            Err(DrainTimedOut {
                in_flight: self.in_flight(),
            })
        }
    }

    /// I/O in the gate now (both epochs), for tests and statistics.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn drain_with_nothing_in_flight_returns_at_once() {
        let gate = WriteGate::new();
        gate.drain();
        gate.drain();
        assert_eq!(gate.in_flight(), 0);
    }

    #[test]
    fn drain_waits_for_an_io_of_the_old_epoch_and_not_for_a_new_one() {
        let gate = Arc::new(WriteGate::new());
        let old = gate.enter();
        let drained = Arc::new(AtomicBool::new(false));
        let drainer = {
            let (gate, drained) = (gate.clone(), drained.clone());
            std::thread::spawn(move || {
                gate.drain();
                drained.store(true, Ordering::SeqCst);
            })
        };
        // Wait until the drainer has flipped the epoch: an I/O entering now is new.
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.epoch.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the drainer never flipped");
            std::thread::yield_now();
        }
        let new = gate.enter();
        assert_ne!(old, new);
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !drained.load(Ordering::SeqCst),
            "drained while an old I/O was in flight"
        );
        gate.leave(old);
        drainer.join().expect("drainer");
        assert!(drained.load(Ordering::SeqCst));
        // The new I/O is still in: a later drain waits for it.
        assert!(!gate.drain_until(Instant::now() + Duration::from_millis(20)));
        gate.leave(new);
        assert!(gate.drain_until(Instant::now() + Duration::from_secs(10)));
        assert_eq!(gate.in_flight(), 0);
    }

    /// The property the gate exists for, under threads: a changer swaps a slot to a new value,
    /// drains, then "frees" the old value; no I/O that loaded a value after entering may ever
    /// see it freed before it leaves.
    #[test]
    fn no_io_ever_holds_a_value_freed_under_it() {
        // Fewer under Miri (scripts/sanitize.sh), where every atomic access is emulated.
        const VALUES: usize = if cfg!(miri) { 100 } else { 20_000 };
        const IO_THREADS: usize = 3;
        let gate = Arc::new(WriteGate::new());
        let slot = Arc::new(AtomicU64::new(1));
        let freed: Arc<Vec<AtomicBool>> =
            Arc::new((0..=VALUES + 1).map(|_| AtomicBool::new(false)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(AtomicU64::new(0));
        // Threads that have made their first check: the changer starts only when all have, so
        // on a loaded machine it cannot run through every value before any I/O thread runs.
        let running = Arc::new(AtomicU64::new(0));
        let ios: Vec<_> = (0..IO_THREADS)
            .map(|_| {
                let (gate, slot, freed, stop, violations, running) = (
                    gate.clone(),
                    slot.clone(),
                    freed.clone(),
                    stop.clone(),
                    violations.clone(),
                    running.clone(),
                );
                std::thread::spawn(move || {
                    let mut checks = 0u64;
                    while checks == 0 || !stop.load(Ordering::Relaxed) {
                        let ticket = gate.enter();
                        let value = slot.load(Ordering::SeqCst) as usize;
                        // The "I/O": look at the value a few times while holding it.
                        for _ in 0..4 {
                            if freed[value].load(Ordering::SeqCst) {
                                violations.fetch_add(1, Ordering::SeqCst);
                            }
                            std::hint::spin_loop();
                        }
                        gate.leave(ticket);
                        checks += 1;
                        if checks == 1 {
                            running.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    checks
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while running.load(Ordering::SeqCst) < IO_THREADS as u64 {
            assert!(Instant::now() < deadline, "the I/O threads never started");
            std::thread::yield_now();
        }
        for next in 2..=VALUES + 1 {
            let old = slot.swap(next as u64, Ordering::SeqCst) as usize;
            gate.drain();
            freed[old].store(true, Ordering::SeqCst);
        }
        stop.store(true, Ordering::Relaxed);
        let checks: u64 = ios.into_iter().map(|t| t.join().expect("io thread")).sum();
        assert!(checks > 0, "the I/O threads never ran");
        assert_eq!(violations.load(Ordering::SeqCst), 0);
        assert_eq!(gate.in_flight(), 0);
    }
}
