//! The CPU clocks `sds perf` reads: each reactor thread's CPU time for IOPS per core, and the
//! process's. Latency is measured with the engine's tick clock (`blockio::clock`).

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
