//! A reactor's mailbox: the only way other threads reach a reactor. A bounded lock-free queue
//! plus an eventfd the reactor keeps a read posted on, so a message wakes a sleeping reactor.

use super::session::Session;
use crossbeam::queue::ArrayQueue;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What other threads tell a reactor.
pub enum Message {
    /// Serve this front-end session from now on.
    Attach(Box<dyn Session>),
    /// Hand `token` and `result` (0 or a positive errno) to session `session`, e.g. "your
    /// allocation is done".
    Wake {
        session: SessionId,
        token: u64,
        result: i32,
    },
    /// The virtual path `vpath_id` is gone: every session serving it closes.
    Revoke { vpath_id: u64 },
    /// Store this number in `ReactorHandle::heartbeat`: the control thread's liveness probe.
    Heartbeat(u64),
    /// Stop going round the loop for this long (`reactor_wedge`, a test-only fault that shows
    /// the systemd watchdog at work; refused unless the server runs with SDS_TEST_FAULTS=1).
    Wedge { duration_ms: u64 },
    /// Stop accepting work, finish what is in flight, then exit.
    Shutdown,
}

/// Names one session on one reactor; the generation tells a reused index from its past.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionId {
    pub index: u16,
    pub generation: u32,
}

pub struct Mailbox {
    queue: ArrayQueue<Message>,
    eventfd: OwnedFd,
}

impl Mailbox {
    pub fn new(capacity: usize) -> std::io::Result<Self> {
        // SAFETY: eventfd takes plain integer arguments; a non-negative result is a new
        // descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            queue: ArrayQueue::new(capacity),
            eventfd,
        })
    }

    /// Posts a message and wakes the reactor. When the mailbox is full the sender yields and
    /// retries: senders are control-plane threads, never reactors.
    pub fn post(&self, mut message: Message) {
        loop {
            match self.queue.push(message) {
                Ok(()) => break,
                Err(back) => {
                    message = back;
                    std::thread::yield_now();
                }
            }
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A failure (counter overflow)
        // still leaves the reactor woken, so the result is not needed.
        unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn pop(&self) -> Option<Message> {
        self.queue.pop()
    }

    pub fn eventfd(&self) -> i32 {
        self.eventfd.as_raw_fd()
    }
}
