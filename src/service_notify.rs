//! systemd's service notification protocol (`sd_notify(3)`), for `Type=notify` units: one
//! datagram per state change to the Unix socket named by `NOTIFY_SOCKET`, sent by the
//! `sd-notify` crate rather than by linking libsystemd.
//!
//! The server says `READY=1` once its listeners accept and its pools are replayed (so a unit
//! ordered after sds.service finds it serving), `STOPPING=1` when SIGTERM or SIGINT starts the
//! shutdown, and `WATCHDOG=1` from the control thread while every reactor makes progress
//! (`control::watchdog`). Without `NOTIFY_SOCKET` (started by hand, or `Type=simple`) every
//! call does nothing. A notification that cannot be sent is logged and otherwise ignored: the
//! service manager, not the server, decides what a missing one means.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set by [`stopping`]: the watchdog stops judging reactors that are leaving on purpose.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// The listeners accept and the state is replayed; `status` is what `systemctl status` shows.
pub fn ready(status: &str) {
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// What the server is doing, for `systemctl status`, before it is ready (replaying journals
/// may take a while).
pub fn status(text: &str) {
    send(&[sd_notify::NotifyState::Status(text)]);
}

/// The server has begun its shutdown.
pub fn stopping() {
    STOPPING.store(true, Ordering::Release);
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("draining in-flight I/O"),
    ]);
}

/// Whether [`stopping`] was said.
pub fn is_stopping() -> bool {
    STOPPING.load(Ordering::Acquire)
}

/// Every reactor is going round its loop: the watchdog timer starts again.
pub fn watchdog() {
    send(&[sd_notify::NotifyState::Watchdog]);
}

/// The watchdog period the service manager set (`WatchdogSec=`), if it is for this process:
/// `WATCHDOG_USEC`, when `WATCHDOG_PID` is absent or names this process (as libsystemd's
/// `sd_watchdog_enabled` reads them).
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

fn send(states: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        log::warn!("cannot notify the service manager (NOTIFY_SOCKET): {error}");
    }
}
