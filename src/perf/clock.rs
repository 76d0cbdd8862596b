//! The clocks `sds perf` reads: a cheap tick counter for per-I/O latency, and each reactor
//! thread's CPU time for IOPS per core.
//!
//! Per-I/O latency needs two clock reads per I/O; at the rates a null LUN allows (tens of
//! nanoseconds per I/O) `clock_gettime(CLOCK_MONOTONIC)` alone would be a visible share of the
//! cost. On x86_64 the tick counter is the TSC (`rdtsc`, invariant on every machine this runs
//! on: `constant_tsc nonstop_tsc`), calibrated against the monotonic clock once at start-up, as
//! SPDK's `spdk_get_ticks` does. Elsewhere it is the monotonic clock in nanoseconds.

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
    /// Calibrates the counter (sleeps [`CALIBRATION`] on x86_64).
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

/// CPU time the calling thread has used, in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`): user and
/// system time, at the kernel's full resolution. `None` if the clock cannot be read.
pub fn thread_cpu_ns() -> Option<u64> {
    cpu_clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time the whole process has used, in nanoseconds (`CLOCK_PROCESS_CPUTIME_ID`): every
/// thread, io_uring's kernel workers (io-wq) included.
pub fn process_cpu_ns() -> Option<u64> {
    cpu_clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
    let rc = unsafe { libc::clock_gettime(clock, &mut now) };
    (rc == 0).then(|| now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
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

    #[test]
    fn thread_cpu_time_grows_with_work() {
        let before = thread_cpu_ns().expect("thread CPU clock");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let after = thread_cpu_ns().expect("thread CPU clock");
        assert!(after > before, "{x}");
        assert!(process_cpu_ns().expect("process CPU clock") >= after - before);
    }
}
