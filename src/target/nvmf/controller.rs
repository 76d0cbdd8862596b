//! What one NVMe controller's queues share: the admin queue's thread and the I/O queues on
//! the reactors hold the same [`ControllerShared`], and [`NvmfContext`] is what every thread
//! of the NVMe/TCP front end is given (as `IscsiContext` is for iSCSI).
//!
//! The admin queue owns the controller's life: when it ends (Disconnect of the admin queue,
//! CC.EN cleared, shutdown, keep-alive expiry, the host's VPs deleted) it sets
//! [`ControllerShared::closed`]; the I/O queues poll that flag on their tick and end. The
//! flag is the only thing the I/O path reads from here besides the fixed fields, so nothing
//! here is locked on the data path.

use super::registry::Registry;
use crate::constants::NVMF_MAX_IO_QUEUES;
use crate::domain::snapshot::Published;
use crate::reactor::ReactorHandle;
use crate::target::buffer_budget::BufferBudget;
use crate::target::handshake_slots::HandshakeSlots;
use crate::target::reactor_load::ReactorLoad;
use crate::volume::provisioner::Provisioner;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What kind of controller: an NVM subsystem's (the host's namespaces, I/O queues) or the
/// discovery controller's (log page 70h only, no I/O queues).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ControllerKind {
    Nvm,
    Discovery,
}

/// One controller, as its admin queue and I/O queues share it.
#[derive(Debug)]
pub struct ControllerShared {
    /// The controller id the admin Connect allocated; I/O queue Connects name it.
    pub cntlid: u16,
    pub kind: ControllerKind,
    /// The sds host whose subsystem this is (empty for a discovery controller of a host no
    /// record names).
    pub host: String,
    /// The host NQN and host identifier the admin Connect gave; an I/O queue Connect must
    /// give the same.
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// The subsystem's NQN (the discovery NQN for a discovery controller).
    pub subnqn: String,
    /// The host's address and port, for `nvmf_get_qpairs`.
    pub peer: String,
    /// Set once when the controller ends; never cleared. The I/O queues end when they see it.
    pub closed: Arc<AtomicBool>,
    /// Keep Alive Timeout in milliseconds (0: none), as Connect or Set Features set it.
    pub kato_ms: AtomicU32,
    /// Whether the controller is enabled and ready (CC.EN set, CSTS.RDY): I/O queues may
    /// connect only then.
    pub ready: AtomicBool,
    /// I/O queues the host was granted (Set Features Number of Queues; the most until then):
    /// an I/O queue Connect names a QID from 1 to this.
    pub io_queue_limit: AtomicUsize,
    /// Live I/O queues of this controller: a queue adds one when attached to its reactor
    /// ([`Self::io_queue_started`]) and takes it away when it ends.
    pub io_queues: AtomicUsize,
    /// Changes the host has not been told of yet (asynchronous events).
    events: Mutex<PendingEvents>,
}

/// Asynchronous events waiting for an Asynchronous Event Request to carry them, and the
/// namespaces log page 04h reports as changed.
#[derive(Debug, Default)]
struct PendingEvents {
    /// A "namespace attribute changed" notice is due (and not masked by Get Log Page 04h yet).
    namespace_changed: bool,
    /// NSIDs changed since the host last read log page 04h (sorted, no repeats).
    changed: Vec<u32>,
}

impl ControllerShared {
    /// A controller not yet registered (tests, and the registry's own constructor).
    pub fn new(cntlid: u16, kind: ControllerKind, host: &str, subnqn: &str) -> Self {
        Self {
            cntlid,
            kind,
            host: host.to_string(),
            hostnqn: String::new(),
            hostid: [0; 16],
            subnqn: subnqn.to_string(),
            peer: String::new(),
            closed: Arc::new(AtomicBool::new(false)),
            kato_ms: AtomicU32::new(0),
            ready: AtomicBool::new(false),
            io_queue_limit: AtomicUsize::new(NVMF_MAX_IO_QUEUES),
            io_queues: AtomicUsize::new(0),
            events: Mutex::new(PendingEvents::default()),
        }
    }

    /// Whether the controller has ended. One atomic load: poll it on a tick, not per command.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends the controller (its I/O queues follow on their next tick).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The keep-alive timeout, if one is set.
    pub fn keep_alive_timeout(&self) -> Option<Duration> {
        match self.kato_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        }
    }

    /// Counts one more live I/O queue; the count drops when the returned guard does.
    pub fn io_queue_started(self: &Arc<Self>) -> IoQueueCount {
        self.io_queues.fetch_add(1, Ordering::AcqRel);
        IoQueueCount {
            controller: self.clone(),
        }
    }

    /// Records that namespace `nsid` changed (attached, detached, resized): log page 04h
    /// lists it and a "namespace attribute changed" event is due.
    pub fn namespace_changed(&self, nsid: u32) {
        let mut events = self.lock_events();
        if let Err(at) = events.changed.binary_search(&nsid) {
            events.changed.insert(at, nsid);
        }
        events.namespace_changed = true;
    }

    /// Takes the due "namespace attribute changed" notice, if one is (for an Asynchronous
    /// Event Request to complete with).
    pub fn take_namespace_notice(&self) -> bool {
        std::mem::take(&mut self.lock_events().namespace_changed)
    }

    /// The changed namespace list (log page 04h), emptied as reading it does.
    pub fn take_changed_namespaces(&self) -> Vec<u32> {
        let mut events = self.lock_events();
        events.namespace_changed = false;
        std::mem::take(&mut events.changed)
    }

    fn lock_events(&self) -> std::sync::MutexGuard<'_, PendingEvents> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One live I/O queue of a controller, counted while this lives.
#[derive(Debug)]
pub struct IoQueueCount {
    controller: Arc<ControllerShared>,
}

impl IoQueueCount {
    pub fn controller(&self) -> &Arc<ControllerShared> {
        &self.controller
    }
}

impl Drop for IoQueueCount {
    fn drop(&mut self) {
        let before = self.controller.io_queues.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "I/O queue count underflow");
    }
}

/// What the acceptor, every handshake and admin thread and every I/O queue share.
pub struct NvmfContext {
    pub published: Arc<Published>,
    pub reactors: Vec<Arc<ReactorHandle>>,
    pub provisioner: Provisioner,
    pub shutdown: Arc<AtomicBool>,
    /// Every live controller.
    pub registry: Arc<Registry>,
    /// Sessions each reactor serves, shared with the NBD and iSCSI front ends.
    pub reactor_load: Arc<ReactorLoad>,
    /// The server-wide budget of request buffers, shared with the other front ends.
    pub buffer_budget: &'static BufferBudget,
    /// The base of every subsystem NQN (`<base>:<host name>`).
    pub nqn_base: String,
    /// Connections in their handshake (ICReq to Connect), bounded as iSCSI logins are.
    pub handshakes: HandshakeSlots,
    /// How long a handshake (accept to Connect answered) may take.
    pub handshake_limit: Duration,
}

impl NvmfContext {
    /// The NQN of `host`'s subsystem.
    pub fn subsystem_nqn(&self, host: &str) -> String {
        format!("{}:{host}", self.nqn_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_queues_are_counted_while_their_guards_live() {
        let controller = Arc::new(ControllerShared::new(
            1,
            ControllerKind::Nvm,
            "h",
            "nqn.2026-11.org.sds:x:h",
        ));
        let first = controller.io_queue_started();
        let second = controller.io_queue_started();
        assert_eq!(controller.io_queues.load(Ordering::Acquire), 2);
        drop(first);
        assert_eq!(controller.io_queues.load(Ordering::Acquire), 1);
        assert_eq!(second.controller().cntlid, 1);
        assert!(!controller.is_closed());
        controller.close();
        assert!(controller.is_closed());
    }

    #[test]
    fn namespace_changes_are_kept_until_the_log_page_is_read() {
        let controller = ControllerShared::new(1, ControllerKind::Nvm, "h", "s");
        assert!(!controller.take_namespace_notice());
        controller.namespace_changed(3);
        controller.namespace_changed(1);
        controller.namespace_changed(3);
        assert!(controller.take_namespace_notice());
        assert!(!controller.take_namespace_notice(), "one notice per change");
        assert_eq!(controller.take_changed_namespaces(), vec![1, 3]);
        assert!(controller.take_changed_namespaces().is_empty());
    }
}
