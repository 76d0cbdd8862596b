//! A volume's write gate: lets the provisioning thread wait until every write that may have
//! looked at the volume's mapping table before some moment has completed.
//!
//! A snapshot marks every mapped slot of its origin SHARED, so that later writes copy the
//! extent first. A write that loaded its slot just before the mark would still write in
//! place, into an extent the snapshot now holds: the snapshot must wait for it. The gate is
//! two in-flight counters and an epoch (RCU-like, two epochs): a write round enters (loads the
//! epoch, adds one to that epoch's counter) before it loads any slot, and leaves (subtracts
//! one) when its LUN I/O has completed. [`WriteGate::drain`] flips the epoch and waits until
//! the old epoch's counter is zero. Every access is SeqCst, which gives one total order: a
//! write that loaded a slot before the marks entered before them, so the drain, which reads
//! its counter after the marks, sees it (or its leaving).
//!
//! Writes that enter after the flip go to the other counter, so a steady stream of writes
//! never holds a drain up. The cost to a write round: one load and two read-modify-writes.

use crate::constants::WRITE_GATE_DRAIN_TIMEOUT_MS;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct WriteGate {
    epoch: AtomicU64,
    in_flight: [AtomicU64; 2],
}

/// The epoch a write round entered with; give it back to [`WriteGate::leave`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entered(u8);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{in_flight} writes still in flight after {WRITE_GATE_DRAIN_TIMEOUT_MS} ms")]
pub struct DrainTimedOut {
    pub in_flight: u64,
}

impl WriteGate {
    /// A write round starts (before it loads any mapping slot).
    #[inline]
    pub fn enter(&self) -> Entered {
        let parity = (self.epoch.load(Ordering::SeqCst) & 1) as u8;
        self.in_flight[parity as usize].fetch_add(1, Ordering::SeqCst);
        Entered(parity)
    }

    /// A write round's I/O has completed.
    #[inline]
    pub fn leave(&self, entered: Entered) {
        self.in_flight[entered.0 as usize].fetch_sub(1, Ordering::SeqCst);
    }

    /// Waits until every write round that entered before this call has left. Called after
    /// the slots were changed; yields the thread between looks (writes take microseconds to
    /// a few milliseconds). A LUN that never answers bounds the wait.
    pub fn drain(&self) -> Result<(), DrainTimedOut> {
        let old = (self.epoch.fetch_add(1, Ordering::SeqCst) & 1) as usize;
        let deadline = Instant::now() + Duration::from_millis(WRITE_GATE_DRAIN_TIMEOUT_MS);
        let mut spins = 0u32;
        loop {
            let in_flight = self.in_flight[old].load(Ordering::SeqCst);
            if in_flight == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DrainTimedOut { in_flight });
            }
            spins += 1;
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// Write rounds in flight now (both epochs).
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
    fn drain_waits_for_rounds_entered_before_it_only() {
        let gate = WriteGate::default();
        assert_eq!(gate.drain(), Ok(()));
        let early = gate.enter();
        let gate = Arc::new(gate);
        let done = Arc::new(AtomicBool::new(false));
        let drainer = {
            let (gate, done) = (gate.clone(), done.clone());
            std::thread::spawn(move || {
                let result = gate.drain();
                done.store(true, Ordering::SeqCst);
                result
            })
        };
        // Rounds entering after the flip do not hold the drain; wait until it flipped.
        while gate.epoch.load(Ordering::SeqCst) < 2 {
            std::thread::yield_now();
        }
        let late = gate.enter();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !done.load(Ordering::SeqCst),
            "drained while an early round ran"
        );
        gate.leave(early);
        assert_eq!(drainer.join().ok(), Some(Ok(())));
        assert_eq!(gate.in_flight(), 1);
        gate.leave(late);
        assert_eq!(gate.in_flight(), 0);
    }
}
