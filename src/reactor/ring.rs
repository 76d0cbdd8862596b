//! One reactor's io_uring: every storage I/O and every socket read and write of the reactor goes
//! through it, so one `submit_and_wait` is both the batch submit and the idle sleep.

use io_uring::{cqueue, squeue, IoUring};
use std::io;

/// `IORING_ENTER_GETEVENTS`: process completions while in the kernel.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// A reactor's ring. Not shared: each reactor owns one.
pub struct IoRing {
    ring: IoUring,
    /// Entries pushed and not yet completed; the reactor drains to zero at shutdown.
    in_flight: usize,
}

impl IoRing {
    pub fn new(entries: u32) -> io::Result<Self> {
        // Deferred task work: the kernel runs completion work (socket receives above all) only
        // when the reactor enters the ring to reap, never by interrupting it mid-batch. Older
        // kernels lack it; fall back to a single-issuer ring, then to a plain one.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_single_issuer().build(entries))
            .or_else(|_| IoUring::new(entries))?;
        Ok(Self { ring, in_flight: 0 })
    }

    /// Queues one entry, submitting what is queued first if the submission queue is full.
    ///
    /// # Safety
    /// Every buffer, iovec and file descriptor the entry refers to must stay valid and must not
    /// move until its completion has been reaped from this ring.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller guarantees the entry's buffers outlive its completion.
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                self.in_flight += 1;
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Queues two entries back to back (the first linked to the second), never split by a
    /// submit in between.
    ///
    /// # Safety
    /// As for [`IoRing::push`], for both entries.
    pub unsafe fn push_linked(
        &mut self,
        first: &squeue::Entry,
        second: &squeue::Entry,
    ) -> io::Result<()> {
        let room = {
            let queue = self.ring.submission();
            queue.capacity() - queue.len()
        };
        if room < 2 {
            self.submit()?;
        }
        // SAFETY: the caller guarantees both entries' buffers outlive their completions; the
        // queue has room for both, so the link cannot be broken by a submit in between.
        unsafe {
            let mut queue = self.ring.submission();
            queue
                .push_multiple(&[first.clone(), second.clone()])
                .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
        }
        self.in_flight += 2;
        Ok(())
    }

    /// Hands queued entries to the kernel without waiting.
    pub fn submit(&mut self) -> io::Result<usize> {
        match self.ring.submit() {
            Ok(count) => Ok(count),
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => Ok(0),
            Err(error) => Err(error),
        }
    }

    /// Hands queued entries to the kernel and sleeps until at least one completion is ready.
    pub fn submit_and_wait(&mut self) -> io::Result<usize> {
        match self.ring.submit_and_wait(1) {
            Ok(count) => Ok(count),
            Err(error) if matches!(error.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {
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

    /// Whether entries are queued that the kernel has not been given yet.
    pub fn has_unsubmitted(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }
}
