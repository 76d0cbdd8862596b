//! Reactors: pinned poller threads that run the data path to completion.
//!
//! Each reactor owns one io_uring ring ([`ring::IoRing`]), the front-end sessions attached to
//! it ([`session::Session`]) and its own statistics. Other threads reach it only through its
//! [`mailbox::Mailbox`]. One loop iteration: drain the mailbox, route every ring completion to
//! its session, submit what the sessions queued; with nothing to do, either spin (busy polling)
//! or, after a short spin, sleep in `io_uring_enter` until a completion or a message arrives
//! (adaptive polling, the default on small machines).

pub mod mailbox;
pub mod poll_mode;
pub mod ring;
pub mod session;

pub use poll_mode::PollMode;

use crate::constants::{
    MAILBOX_CAPACITY, MAX_CONNECTIONS_PER_REACTOR, MAX_RING_ENTRIES_PER_ROUND, RING_CQ_ENTRIES,
    RING_ENTRIES,
};
use io_uring::{opcode, types};
use mailbox::{Mailbox, Message, SessionId};
use ring::IoRing;
use session::{CreditWaiters, Session, SessionContext, SESSION_TAG_BITS, SESSION_TAG_MASK};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// How long an adaptive reactor keeps polling after its last piece of work when all it waits
/// for is its hosts (no LUN I/O in flight): their next command. Polling is the cheaper wait
/// when that command comes within the cost of a sleep and a wake-up, and a host's next command
/// comes sooner when the reactor polls: the host's send then wakes nobody. On the 2-core VMs
/// this was measured on (bench/wake_floor.py), a sleep and wake-up cost a server ~35 µs of CPU
/// and the client's send ~35 µs of latency, and fio's next QD1 command came 28-42 µs after a
/// reply to a polling reactor against 60-70 µs after one to a sleeping reactor. 100 µs covers
/// both, so a QD1 host keeps the reactor in the fast regime instead of locking it in the
/// slow one; an idle reactor still sleeps 100 µs after its last work.
const HOST_WAIT_SPIN: std::time::Duration = std::time::Duration::from_micros(100);
/// How long it polls while LUN I/O is in flight: devices that answer within it (RAM, NVMe,
/// a loopback array) are caught without a sleep; a slower device (the VM's virtual disk,
/// ~80 µs) is waited for asleep, which costs less CPU than polling through it. (A window
/// learned from how long sleeps last, as KVM's halt polling does, was tried for iSCSI at queue
/// depth 1: it saved ~10% CPU per I/O on a file LUN but cost a RAM LUN ~30% in latency.)
const DEVICE_WAIT_SPIN: std::time::Duration = std::time::Duration::from_micros(20);
/// The ring tag of the reactor's own eventfd read.
const EVENTFD_TAG: u64 = 0;

/// Why a reactor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("reactor {index}: cannot set up its io_uring ring")]
    Ring {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("reactor {index}: cannot create its mailbox eventfd")]
    Mailbox {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("reactor {index}: cannot start its thread")]
    Thread {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// What other threads hold of a reactor: its mailbox and its published counters.
pub struct ReactorHandle {
    pub index: usize,
    pub core: usize,
    pub mailbox: Mailbox,
    /// Microseconds spent doing work and idle, for `framework_get_reactors`.
    pub busy_us: AtomicU64,
    pub idle_us: AtomicU64,
    pub sessions: AtomicUsize,
    /// Whether it is asleep in the kernel waiting for work right now.
    pub sleeping: AtomicBool,
    /// The last [`Message::Heartbeat`] the reactor took from its mailbox: the control thread's
    /// proof that the reactor still goes round its loop (the systemd watchdog,
    /// `control::watchdog`).
    pub heartbeat: AtomicU64,
    pub poll: PollMode,
}

impl ReactorHandle {
    pub fn post(&self, message: Message) {
        self.mailbox.post(message);
    }
}

/// Starts a reactor pinned to `core`. Returns its handle and thread.
pub fn spawn(
    index: usize,
    core: usize,
    poll: PollMode,
) -> Result<(Arc<ReactorHandle>, JoinHandle<()>), ReactorError> {
    let mailbox =
        Mailbox::new(MAILBOX_CAPACITY).map_err(|source| ReactorError::Mailbox { index, source })?;
    let handle = Arc::new(ReactorHandle {
        index,
        core,
        mailbox,
        busy_us: AtomicU64::new(0),
        idle_us: AtomicU64::new(0),
        sessions: AtomicUsize::new(0),
        sleeping: AtomicBool::new(false),
        heartbeat: AtomicU64::new(0),
        poll,
    });
    let thread_handle = handle.clone();
    // The ring is created on the reactor's own thread: it is single-issuer, so only the
    // thread that created it may submit to it.
    let (ready, started) = crossbeam::channel::bounded::<Result<(), std::io::Error>>(1);
    let thread = std::thread::Builder::new()
        .name(format!("reactor-{index}"))
        .spawn(move || {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                log::warn!("reactor {index}: could not pin to core {core}; running unpinned");
            }
            let ring = match IoRing::with_sizes(RING_ENTRIES, RING_CQ_ENTRIES) {
                Ok(mut ring) => {
                    ring.set_owner(index);
                    ring
                }
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            let mut reactor = Reactor::new(thread_handle, ring);
            reactor.run();
        })
        .map_err(|source| ReactorError::Thread { index, source })?;
    match started.recv() {
        Ok(Ok(())) => {}
        Ok(Err(source)) => return Err(ReactorError::Ring { index, source }),
        Err(_) => {
            return Err(ReactorError::Ring {
                index,
                source: std::io::Error::other("reactor thread exited"),
            })
        }
    }
    Ok((handle, thread))
}

struct SessionSlot {
    session: Option<Box<dyn Session>>,
    generation: u32,
}

struct Reactor {
    handle: Arc<ReactorHandle>,
    ring: IoRing,
    sessions: Vec<SessionSlot>,
    free_indexes: Vec<u16>,
    eventfd_buf: Box<u64>,
    shutting_down: bool,
    credit_waiters: CreditWaiters,
}

impl Reactor {
    fn new(handle: Arc<ReactorHandle>, ring: IoRing) -> Self {
        let sessions = (0..MAX_CONNECTIONS_PER_REACTOR)
            .map(|_| SessionSlot {
                session: None,
                generation: 0,
            })
            .collect();
        let free_indexes = (0..MAX_CONNECTIONS_PER_REACTOR as u16).rev().collect();
        Self {
            handle,
            ring,
            sessions,
            free_indexes,
            eventfd_buf: Box::new(0),
            shutting_down: false,
            credit_waiters: CreditWaiters::default(),
        }
    }

    fn arm_eventfd(&mut self) {
        let entry = opcode::Read::new(
            types::Fd(self.handle.mailbox.eventfd()),
            (&mut *self.eventfd_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(EVENTFD_TAG);
        // SAFETY: eventfd_buf is a Box owned by the reactor that lives until run() returns,
        // and run() drains the ring before returning; the eventfd lives in the handle.
        if let Err(error) = unsafe { self.ring.push(&entry) } {
            log::error!(
                "reactor {}: cannot post the mailbox read: {error}",
                self.handle.index
            );
        }
    }

    fn run(&mut self) {
        self.arm_eventfd();
        let mut last_work = Instant::now();
        let mut last = Instant::now();
        loop {
            let mut did_work = self.drain_mailbox();
            while let Some(completion) = self.ring.pop_completion() {
                did_work = true;
                self.route(completion.user_data(), completion.result());
            }
            self.resume_credit_waiters();
            if self.shutting_down && self.handle.sessions.load(Ordering::Relaxed) == 0 {
                break;
            }
            let now = Instant::now();
            let elapsed_us = now.duration_since(last).as_micros() as u64;
            last = now;
            if did_work {
                self.handle.busy_us.fetch_add(elapsed_us, Ordering::Relaxed);
                last_work = now;
                // Nothing queued: entering the kernel would only cost a system call (the
                // completions it could post are reaped by the poll or the wait below).
                if self.ring.is_empty_to_submit() {
                    continue;
                }
                if let Err(error) = self.ring.submit() {
                    log::error!(
                        "reactor {}: io_uring submit failed: {error}",
                        self.handle.index
                    );
                }
                continue;
            }
            self.handle.idle_us.fetch_add(elapsed_us, Ordering::Relaxed);
            if self.handle.poll == PollMode::Busy
                || now.duration_since(last_work) < self.spin_window()
            {
                // Enter the kernel without waiting: submits what is queued and runs the
                // ring's pending task work, so socket completions show up while we poll.
                if let Err(error) = self.ring.poll_kernel() {
                    log::error!(
                        "reactor {}: io_uring poll failed: {error}",
                        self.handle.index
                    );
                }
                continue;
            }
            self.handle.sleeping.store(true, Ordering::Relaxed);
            if let Err(error) = self.ring.submit_and_wait() {
                log::error!(
                    "reactor {}: io_uring wait failed: {error}",
                    self.handle.index
                );
            }
            self.handle.sleeping.store(false, Ordering::Relaxed);
            let now = Instant::now();
            self.handle.idle_us.fetch_add(
                now.duration_since(last).as_micros() as u64,
                Ordering::Relaxed,
            );
            last = now;
        }
        // Sessions are gone; wait for the mailbox read, the only entry left, by cancelling it.
        let cancel = opcode::AsyncCancel::new(EVENTFD_TAG)
            .build()
            .user_data(u64::MAX);
        // SAFETY: a cancel entry refers to no buffer.
        if unsafe { self.ring.push(&cancel) }.is_ok() {
            while self.ring.in_flight() > 0 {
                if self.ring.submit_and_wait().is_err() {
                    break;
                }
                while self.ring.pop_completion().is_some() {}
            }
        }
        log::debug!("reactor {}: stopped", self.handle.index);
    }

    /// How long to poll after the last work before sleeping: see [`HOST_WAIT_SPIN`] and
    /// [`DEVICE_WAIT_SPIN`].
    fn spin_window(&self) -> std::time::Duration {
        if self.ring.device_in_flight() > 0 {
            DEVICE_WAIT_SPIN
        } else {
            HOST_WAIT_SPIN
        }
    }

    fn drain_mailbox(&mut self) -> bool {
        let mut did_work = false;
        while let Some(message) = self.handle.mailbox.pop() {
            did_work = true;
            match message {
                Message::Attach(session) => self.attach(session),
                Message::Wake {
                    session,
                    token,
                    result,
                } => self.with_session(session.index, Some(session.generation), |s, ctx| {
                    s.on_wake(token, result, ctx)
                }),
                Message::Revoke { vpath_id } => {
                    for index in 0..self.sessions.len() {
                        self.with_session(index as u16, None, |s, ctx| s.revoke(vpath_id, ctx));
                    }
                }
                Message::Heartbeat(sequence) => {
                    self.handle.heartbeat.store(sequence, Ordering::Release);
                }
                Message::Wedge { duration_ms } => {
                    // The test-only fault of `reactor_wedge`: the loop stops going round, as
                    // it would in a kernel call that never returns or a session that spins.
                    log::warn!(
                        "reactor {}: wedged on purpose for {duration_ms} ms (reactor_wedge)",
                        self.handle.index
                    );
                    std::thread::sleep(std::time::Duration::from_millis(duration_ms));
                }
                Message::Shutdown => {
                    self.shutting_down = true;
                    for index in 0..self.sessions.len() {
                        self.with_session(index as u16, None, |s, ctx| s.begin_shutdown(ctx));
                    }
                }
            }
        }
        did_work
    }

    fn attach(&mut self, mut session: Box<dyn Session>) {
        let Some(index) = self.free_indexes.pop() else {
            // Dropping the session closes its connection: the reactor is full.
            log::warn!(
                "reactor {}: refusing a connection, {MAX_CONNECTIONS_PER_REACTOR} sessions already",
                self.handle.index
            );
            return;
        };
        if self.shutting_down {
            self.free_indexes.push(index);
            return;
        }
        let slot = &mut self.sessions[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let id = SessionId {
            index,
            generation: slot.generation,
        };
        let mut ctx = SessionContext {
            ring: &mut self.ring,
            reactor_index: self.handle.index,
            reactor: &self.handle,
            id,
            credit_waiters: &mut self.credit_waiters,
        };
        session.start(&mut ctx);
        self.sessions[index as usize].session = Some(session);
        self.handle.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `f` on a session, then drops the session if that finished it: a session finishes
    /// only in one of its own handlers, so this is the one place to look.
    fn with_session(
        &mut self,
        index: u16,
        generation: Option<u32>,
        f: impl FnOnce(&mut dyn Session, &mut SessionContext),
    ) {
        let Some(slot) = self.sessions.get_mut(index as usize) else {
            return;
        };
        if generation.is_some_and(|g| g != slot.generation) {
            return;
        }
        let id = SessionId {
            index,
            generation: slot.generation,
        };
        let Some(session) = slot.session.as_mut() else {
            return;
        };
        let mut ctx = SessionContext {
            ring: &mut self.ring,
            reactor_index: self.handle.index,
            reactor: &self.handle,
            id,
            credit_waiters: &mut self.credit_waiters,
        };
        f(session.as_mut(), &mut ctx);
        if session.is_finished() {
            slot.session = None;
            self.free_indexes.push(index);
            self.handle.sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Calls back the sessions waiting for ring credit, oldest first, while a round's worth is
    /// free; each is called at most once per turn (one that is still short asks again and goes
    /// to the back).
    fn resume_credit_waiters(&mut self) {
        for _ in 0..self.credit_waiters.len() {
            if self
                .ring
                .credit()
                .saturating_sub(crate::constants::RING_RESERVED_ENTRIES)
                < MAX_RING_ENTRIES_PER_ROUND
            {
                return;
            }
            let Some(id) = self.credit_waiters.pop() else {
                return;
            };
            self.with_session(id.index, Some(id.generation), |s, ctx| {
                s.on_ring_credit(ctx)
            });
        }
    }

    fn route(&mut self, tag: u64, result: i32) {
        if tag == EVENTFD_TAG {
            if !self.shutting_down || self.handle.sessions.load(Ordering::Relaxed) > 0 {
                self.arm_eventfd();
            }
            return;
        }
        if tag == u64::MAX {
            return;
        }
        let index = ((tag >> SESSION_TAG_BITS) - 1) as u16;
        self.with_session(index, None, |s, ctx| {
            s.on_completion(tag & SESSION_TAG_MASK, result, ctx)
        });
    }
}
