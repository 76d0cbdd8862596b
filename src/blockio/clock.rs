//! The engine's clock: a cheap tick counter for per-request latency and QoS timing, the one
//! clock every front end (and `sds perf`) measures with.
//!
//! Per-request latency needs two clock reads per request; at the rates a null LUN allows
//! (tens of nanoseconds per I/O) `clock_gettime(CLOCK_MONOTONIC)` alone would be a visible
//! share of the cost. On x86_64 the tick counter is the TSC (`rdtsc`, invariant on every
//! machine this runs on: `constant_tsc nonstop_tsc`), calibrated against the monotonic clock
//! once per process ([`TickClock::shared`]), as SPDK's `spdk_get_ticks` does. Elsewhere it is
//! the monotonic clock in nanoseconds.

use std::time::{Duration, Instant};

/// How long the tick counter is calibrated against the monotonic clock.
const CALIBRATION: Duration = Duration::from_millis(20);
/// Fixed-point shift of [`TickClock::ns_per_tick_q32`].
const Q: u32 = 32;

/// A calibrated tick counter. Copy it into each session: reading it touches no shared state.
#[derive(Clone, Copy, Debug)]
pub struct TickClock {
    /// Nanoseconds per tick, as a 32.32 fixed-point number.
    ns_per_tick_q32: u64,
}

impl TickClock {
    /// Calibrates the counter (sleeps `CALIBRATION`, 20 ms, on x86_64).
    pub fn calibrate() -> Self {
        if cfg!(target_arch = "x86_64") {
            let (wall_start, ticks_start) = (Instant::now(), ticks());
            std::thread::sleep(CALIBRATION);
            let (wall_end, ticks_end) = (Instant::now(), ticks());
            let elapsed_ns = wall_end.duration_since(wall_start).as_nanos() as f64;
            let elapsed_ticks = ticks_end.wrapping_sub(ticks_start).max(1) as f64;
            let ns_per_tick = elapsed_ns / elapsed_ticks;
            Self {
                ns_per_tick_q32: (ns_per_tick * f64::from(1u32 << 16) * f64::from(1u32 << 16))
                    as u64,
            }
        } else {
            Self {
                ns_per_tick_q32: 1 << Q,
            }
        }
    }

    /// The current tick count. Only differences between two reads on one thread mean anything.
    #[inline]
    pub fn now(&self) -> u64 {
        ticks()
    }

    /// A number of ticks in nanoseconds.
    #[inline]
    pub fn to_ns(&self, ticks: u64) -> u64 {
        ((u128::from(ticks) * u128::from(self.ns_per_tick_q32)) >> Q) as u64
    }

    /// Ticks per second, for the report.
    pub fn ticks_per_sec(&self) -> f64 {
        1e9 * f64::from(1u32 << 16) * f64::from(1u32 << 16) / self.ns_per_tick_q32.max(1) as f64
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn ticks() -> u64 {
    // SAFETY: rdtsc reads the time-stamp counter; it has no memory operands and every x86_64
    // processor has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn ticks() -> u64 {
    use std::sync::OnceLock;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl TickClock {
    /// The process's clock, calibrated on first use (which sleeps `CALIBRATION` once).
    pub fn shared() -> Self {
        static SHARED: std::sync::OnceLock<TickClock> = std::sync::OnceLock::new();
        *SHARED.get_or_init(TickClock::calibrate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_convert_to_about_the_wall_time() {
        let clock = TickClock::calibrate();
        let (wall, start) = (Instant::now(), clock.now());
        std::thread::sleep(Duration::from_millis(30));
        let ticks = clock.now().wrapping_sub(start);
        let wall_ns = wall.elapsed().as_nanos() as f64;
        let ratio = clock.to_ns(ticks) as f64 / wall_ns;
        assert!((0.9..1.1).contains(&ratio), "tick clock off by {ratio}");
        assert!(clock.ticks_per_sec() > 1e6);
    }
}
