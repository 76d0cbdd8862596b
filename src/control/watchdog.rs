//! The systemd watchdog (`WatchdogSec=` in sds.service): the control thread pings
//! `WATCHDOG=1` only while every reactor is going round its loop, so a wedged reactor (a
//! kernel call that never returns, a session that spins) gets the process restarted.
//!
//! How a reactor shows it is alive: the control thread posts it a [`Message::Heartbeat`]
//! with a sequence number, and the reactor, draining its mailbox, stores the number in its
//! handle. A reactor asleep in `io_uring_enter` is woken by the message (the mailbox's
//! eventfd), so an idle reactor answers as well as a busy one; a reactor that has not stored
//! the last number it was sent by the next ping is stuck, and no ping goes out. One heartbeat
//! is outstanding per reactor at most, so a stuck reactor's mailbox never fills with them.
//! The pings go out [`WATCHDOG_PINGS_PER_PERIOD`] times per period: a reactor has half the
//! period to answer, and a late control cycle does not cost a healthy server its life.
//!
//! The control thread pinging also proves the control thread itself runs. `reactor_wedge`
//! (refused unless the server was started with `SDS_TEST_FAULTS=1`) wedges one reactor for a
//! while, for the tests that show the pings stop and come back.

use super::params::Params;
use super::Control;
use crate::constants::{MAX_REACTOR_WEDGE_MS, WATCHDOG_PINGS_PER_PERIOD};
use crate::reactor::mailbox::Message;
use crate::reactor::ReactorHandle;
use crate::rpc::RpcError;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The environment variable that enables the test-only faults of this module.
pub const TEST_FAULTS_ENV: &str = "SDS_TEST_FAULTS";

pub struct Watchdog {
    ping_every: Duration,
    next_ping: Instant,
    /// Per reactor, the last heartbeat sequence sent to it.
    sent: Vec<u64>,
    /// Whether the last round found a reactor stuck (to log a stall and a recovery once each).
    stalled: bool,
}

impl Watchdog {
    /// The watchdog the service manager asked for, if any.
    pub fn from_env() -> Option<Self> {
        let period = crate::service_notify::watchdog_period()?;
        let watchdog = Self::new(period);
        log::info!(
            "systemd watchdog: {} ms; pinging every {} ms while every reactor makes progress",
            period.as_millis(),
            watchdog.ping_every.as_millis()
        );
        Some(watchdog)
    }

    fn new(period: Duration) -> Self {
        Self {
            ping_every: period / WATCHDOG_PINGS_PER_PERIOD,
            next_ping: Instant::now(),
            sent: Vec::new(),
            stalled: false,
        }
    }

    /// When [`Watchdog::tick`] next has something to do.
    pub fn next_ping(&self) -> Instant {
        self.next_ping
    }

    /// When it is time: pings the service manager if every reactor answered its last
    /// heartbeat, and sends each reactor that answered the next one. Returns the stuck
    /// reactors' indexes (empty: pinged), or `None` when it was not time, or the server is
    /// stopping (its reactors leave their loops on purpose; systemd's stop timeout rules then).
    pub fn tick(&mut self, reactors: &[Arc<ReactorHandle>], now: Instant) -> Option<Vec<usize>> {
        if now < self.next_ping || crate::service_notify::is_stopping() {
            return None;
        }
        self.next_ping = now + self.ping_every;
        self.sent.resize(reactors.len(), 0);
        let mut stuck = Vec::new();
        for (reactor, sent) in reactors.iter().zip(self.sent.iter_mut()) {
            if reactor.heartbeat.load(Ordering::Acquire) < *sent {
                stuck.push(reactor.index);
                continue;
            }
            *sent += 1;
            reactor.post(Message::Heartbeat(*sent));
        }
        if stuck.is_empty() {
            if self.stalled {
                log::warn!("systemd watchdog: every reactor makes progress again");
                self.stalled = false;
            }
            crate::service_notify::watchdog();
        } else if !self.stalled {
            log::error!(
                "systemd watchdog: reactor(s) {stuck:?} made no progress for {} ms; \
                 withholding the watchdog ping",
                self.ping_every.as_millis()
            );
            self.stalled = true;
        }
        Some(stuck)
    }
}

/// `reactor_wedge {"reactor": N, "duration_ms": MS}`: the test-only fault that stops one
/// reactor going round its loop for a while. Refused unless the server's environment has
/// `SDS_TEST_FAULTS=1`: an administrator never wedges a production reactor by accident.
pub fn wedge(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    if std::env::var_os(TEST_FAULTS_ENV).as_deref() != Some(std::ffi::OsStr::new("1")) {
        return Err(RpcError::invalid_params(format!(
            "reactor_wedge is a test-only fault: start the server with {TEST_FAULTS_ENV}=1"
        )));
    }
    let params = Params::new(params, &["reactor", "duration_ms"])?;
    let index = params.u64("reactor")?;
    let duration_ms = params.u64("duration_ms")?;
    if duration_ms == 0 || duration_ms > MAX_REACTOR_WEDGE_MS {
        return Err(RpcError::invalid_params(format!(
            "duration_ms: must be 1 to {MAX_REACTOR_WEDGE_MS}"
        )));
    }
    let reactor = usize::try_from(index)
        .ok()
        .and_then(|index| control.reactors.get(index))
        .ok_or_else(|| RpcError::invalid_params(format!("reactor: no reactor {index}")))?;
    reactor.post(Message::Wedge { duration_ms });
    Ok(json!(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::mailbox::Mailbox;
    use crate::reactor::PollMode;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

    fn reactor(index: usize) -> Arc<ReactorHandle> {
        Arc::new(ReactorHandle {
            index,
            core: 0,
            mailbox: Mailbox::new(8).expect("mailbox"),
            busy_us: AtomicU64::new(0),
            idle_us: AtomicU64::new(0),
            sessions: AtomicUsize::new(0),
            sleeping: AtomicBool::new(false),
            heartbeat: AtomicU64::new(0),
            poll: PollMode::Adaptive,
        })
    }

    /// What a reactor's loop does with its mailbox: answers heartbeats. Returns how many.
    fn answer(reactor: &ReactorHandle) -> usize {
        let mut answered = 0;
        while let Some(message) = reactor.mailbox.pop() {
            if let Message::Heartbeat(sequence) = message {
                reactor.heartbeat.store(sequence, Ordering::Release);
                answered += 1;
            }
        }
        answered
    }

    #[test]
    fn pings_only_while_every_reactor_answers_and_sends_a_stuck_one_nothing_more() {
        let reactors = [reactor(0), reactor(1)];
        let mut watchdog = Watchdog::new(Duration::from_secs(2));
        let mut now = Instant::now();
        // The first round finds nothing outstanding: a ping, and a heartbeat each.
        assert_eq!(watchdog.tick(&reactors, now), Some(vec![]));
        // Not yet time for the next round.
        assert_eq!(
            watchdog.tick(&reactors, now + Duration::from_millis(10)),
            None
        );
        assert_eq!(answer(&reactors[0]), 1);
        assert_eq!(answer(&reactors[1]), 1);
        now += Duration::from_secs(1);
        assert_eq!(watchdog.tick(&reactors, now), Some(vec![]));
        // Reactor 1 is wedged: it drains nothing. No ping for as long as that lasts, and
        // it is sent no more heartbeats while the one it has is unanswered.
        assert_eq!(answer(&reactors[0]), 1);
        for _ in 0..3 {
            now += Duration::from_secs(1);
            assert_eq!(watchdog.tick(&reactors, now), Some(vec![1]));
            assert_eq!(answer(&reactors[0]), 1);
        }
        assert_eq!(
            answer(&reactors[1]),
            1,
            "one heartbeat outstanding, not four"
        );
        // It goes round its loop again: the pings resume.
        now += Duration::from_secs(1);
        assert_eq!(watchdog.tick(&reactors, now), Some(vec![]));
    }
}
