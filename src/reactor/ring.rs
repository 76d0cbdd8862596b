//! One reactor's io_uring: every storage I/O and every socket read and write of the reactor goes
//! through it, so one `submit_and_wait` is both the batch submit and the idle sleep.

use io_uring::{cqueue, squeue, IoUring};
use std::io;

/// `IORING_ENTER_GETEVENTS`: process completions while in the kernel.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// A reactor's ring. Not shared: each reactor owns one.
///
/// Entries in flight (pushed and not yet reaped) never exceed the completion queue's size
/// ([`IoRing::max_in_flight`]): a push past it is refused with EBUSY and the caller keeps its
/// request (sessions check [`IoRing::credit`] first and wait for the reactor to call them back,
/// see `SessionContext::ring_credit`). So the completion queue can never overflow, and a full
/// submission queue is always drained by one submit; nothing loops waiting for the kernel.
pub struct IoRing {
    ring: IoUring,
    /// Entries pushed and not yet completed; the reactor drains to zero at shutdown.
    in_flight: usize,
    /// The completion queue's size: the most entries that may be in flight.
    max_in_flight: usize,
    /// The index of the reactor that owns the ring, `None` for a ring of no reactor (tests,
    /// tools). Remote LUNs pick the reactor's link by it ([`IoRing::owner`]).
    owner: Option<usize>,
    /// LUN I/O in flight, as the block engines count it (`device_started`,
    /// `device_finished`): while there is some, the reactor waits on a device rather than on
    /// a host, which decides how long it polls before it sleeps.
    device_in_flight: usize,
}

impl IoRing {
    /// A ring of `entries` submission entries and twice as many completion entries (the
    /// kernel's default).
    pub fn new(entries: u32) -> io::Result<Self> {
        Self::with_sizes(entries, entries.saturating_mul(2))
    }

    /// A ring of `sq_entries` submission and `cq_entries` completion entries (the kernel
    /// rounds both up to powers of two).
    pub fn with_sizes(sq_entries: u32, cq_entries: u32) -> io::Result<Self> {
        // Deferred task work: the kernel runs completion work (socket receives above all) only
        // when the reactor enters the ring to reap, never by interrupting it mid-batch. Older
        // kernels lack it; fall back to a single-issuer ring, then to a plain one.
        let ring = IoUring::builder()
            .setup_cqsize(cq_entries)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(sq_entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(cq_entries)
                    .setup_single_issuer()
                    .build(sq_entries)
            })
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(cq_entries)
                    .build(sq_entries)
            })?;
        let max_in_flight = ring.params().cq_entries() as usize;
        Ok(Self {
            ring,
            in_flight: 0,
            max_in_flight,
            owner: None,
            device_in_flight: 0,
        })
    }

    /// Names the reactor that owns the ring (set once, by the reactor that created it).
    pub fn set_owner(&mut self, reactor_index: usize) {
        self.owner = Some(reactor_index);
    }

    /// The index of the reactor that owns the ring, if a reactor does.
    pub fn owner(&self) -> Option<usize> {
        self.owner
    }

    /// The ring's own file descriptor: the target of an `IORING_OP_MSG_RING` that posts a
    /// completion to this ring (remote LUNs complete their commands that way).
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.ring.as_raw_fd()
    }

    /// The error of a push refused because the ring is full.
    fn full() -> io::Error {
        io::Error::from_raw_os_error(libc::EBUSY)
    }

    /// Queues one entry, submitting what is queued first if the submission queue is full.
    /// Refuses it (EBUSY) when [`IoRing::max_in_flight`] entries are in flight already, or
    /// when the kernel takes nothing from a full submission queue: the caller keeps the
    /// request and retries after completions were reaped.
    ///
    /// # Safety
    /// Every buffer, iovec and file descriptor the entry refers to must stay valid and must not
    /// move until its completion has been reaped from this ring.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        if self.in_flight >= self.max_in_flight {
            return Err(Self::full());
        }
        if self.ring.submission().is_full() && self.submit()? == 0 {
            return Err(Self::full());
        }
        // SAFETY: the caller guarantees the entry's buffers outlive its completion.
        unsafe { self.ring.submission().push(entry) }.map_err(|_| Self::full())?;
        self.in_flight += 1;
        Ok(())
    }

    /// Queues two entries back to back (the first linked to the second), never split by a
    /// submit in between. Refused as [`IoRing::push`] is.
    ///
    /// # Safety
    /// As for [`IoRing::push`], for both entries.
    pub unsafe fn push_linked(
        &mut self,
        first: &squeue::Entry,
        second: &squeue::Entry,
    ) -> io::Result<()> {
        if self.in_flight + 2 > self.max_in_flight {
            return Err(Self::full());
        }
        let room = {
            let queue = self.ring.submission();
            queue.capacity() - queue.len()
        };
        if room < 2 {
            self.submit()?;
        }
        // SAFETY: the caller guarantees both entries' buffers outlive their completions; the
        // queue has room for both (else push_multiple refuses both), so the link cannot be
        // broken by a submit in between.
        unsafe {
            let mut queue = self.ring.submission();
            queue
                .push_multiple(&[first.clone(), second.clone()])
                .map_err(|_| Self::full())?;
        }
        self.in_flight += 2;
        Ok(())
    }

    /// Hands queued entries to the kernel without waiting. EBUSY and EAGAIN (the kernel is
    /// short of completion space or memory right now) read as nothing submitted: the entries
    /// stay queued, and the reactor reaps completions before it submits again.
    pub fn submit(&mut self) -> io::Result<usize> {
        match self.ring.submit() {
            Ok(count) => Ok(count),
            Err(error)
                if matches!(error.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) =>
            {
                Ok(0)
            }
            Err(error) => Err(error),
        }
    }

    /// Whether no entry is queued for the kernel.
    pub fn is_empty_to_submit(&mut self) -> bool {
        self.ring.submission().is_empty()
    }

    /// Hands queued entries to the kernel and sleeps until at least one completion is ready.
    pub fn submit_and_wait(&mut self) -> io::Result<usize> {
        match self.ring.submit_and_wait(1) {
            Ok(count) => Ok(count),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(0)
            }
            Err(error) => Err(error),
        }
    }

    /// Enters the kernel without waiting: submits queued entries and lets the kernel post the
    /// completions it has ready (socket completions need this task work to run).
    pub fn poll_kernel(&mut self) -> io::Result<()> {
        let to_submit = self.ring.submission().len() as u32;
        // SAFETY: io_uring_enter with no argument structure; every queued entry's buffers are
        // guaranteed valid by the callers of push().
        let entered = unsafe {
            self.ring.submitter().enter::<libc::sigset_t>(
                to_submit,
                0,
                IORING_ENTER_GETEVENTS,
                None,
            )
        };
        match entered {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Takes the next completion, if any.
    pub fn pop_completion(&mut self) -> Option<cqueue::Entry> {
        let entry = self.ring.completion().next();
        if entry.is_some() {
            self.in_flight -= 1;
        }
        entry
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Notes `count` LUN I/O entries started (completions to come from a device).
    pub fn device_started(&mut self, count: usize) {
        self.device_in_flight += count;
    }

    /// Notes one LUN I/O completion reaped.
    pub fn device_finished(&mut self) {
        self.device_in_flight = self.device_in_flight.saturating_sub(1);
    }

    /// LUN I/O in flight on this ring.
    pub fn device_in_flight(&self) -> usize {
        self.device_in_flight
    }

    /// The most entries that may be in flight: the completion queue's size.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Entries that may still be pushed before the ring refuses more.
    pub fn credit(&self) -> usize {
        self.max_in_flight - self.in_flight
    }

    /// Whether entries are queued that the kernel has not been given yet.
    pub fn has_unsubmitted(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;
    use std::time::Duration;

    /// Runs `f` on its own thread and fails if it has not returned within `seconds`: a spin
    /// shows as a timeout, not as a hung test run.
    fn bounded<T: Send + 'static>(seconds: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let _ = done.send(f());
        });
        match result.recv_timeout(Duration::from_secs(seconds)) {
            Ok(value) => value,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the ring spun: no return within {seconds} s")
            }
            // The test body panicked: show its panic.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => unreachable!("the worker sends before it returns"),
            },
        }
    }

    /// A ring with a 4-entry submission queue (8 completion entries) offered far more entries
    /// than its completion queue holds: it takes no more than fit, never spins, and every
    /// entry it took completes exactly once.
    #[cfg_attr(
        miri,
        ignore = "io_uring: a system call Miri cannot run (sanitize.sh runs it under TSan)"
    )]
    #[test]
    fn a_tiny_ring_bounds_in_flight_and_loses_no_completion() {
        bounded(20, || {
            let mut ring = IoRing::new(4).expect("ring");
            let cq_entries = 8;
            assert_eq!(ring.max_in_flight(), cq_entries as usize);
            for round in 0..20u64 {
                let mut accepted = 0u64;
                for i in 0..64u64 {
                    let nop = opcode::Nop::new().build().user_data(round << 32 | i);
                    // SAFETY: a NOP refers to no buffer.
                    if unsafe { ring.push(&nop) }.is_err() {
                        break;
                    }
                    accepted += 1;
                }
                assert!(
                    accepted >= 1 && accepted <= cq_entries,
                    "round {round}: {accepted} entries in flight on a ring whose completion queue holds {cq_entries}"
                );
                let mut seen = Vec::new();
                while (seen.len() as u64) < accepted {
                    ring.submit_and_wait().expect("wait");
                    while let Some(cqe) = ring.pop_completion() {
                        assert_eq!(cqe.user_data() >> 32, round);
                        seen.push(cqe.user_data() & 0xffff_ffff);
                    }
                }
                seen.sort_unstable();
                assert_eq!(seen, (0..accepted).collect::<Vec<_>>(), "round {round}");
                assert_eq!(ring.in_flight(), 0);
            }
        });
    }
}
