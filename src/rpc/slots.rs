//! The management socket's connection slots: at most `MAX_RPC_CONNECTIONS`, and an idle client
//! never keeps management out.
//!
//! Every connection holds a slot while it lives. A connection is *idle* while it is not
//! executing a request; it has been idle since it connected or since its last answer, however
//! many bytes of an unfinished request it has trickled in since. Two rules free slots:
//!
//! - **Eviction.** A client arriving when every slot is taken gets the slot of the connection
//!   idle the longest, which is shut down; it is refused only if every connection is
//!   executing a request. So 64 silent (or trickling) clients delay a new one by nothing.
//! - **Idle timeout.** A connection idle for `RPC_IDLE_TIMEOUT_SECS` is closed by its own
//!   thread, so idle clients do not hold threads and sockets for ever.
//!
//! The registry is a mutex-guarded list: the management socket is control plane, touched once
//! per request.

use crate::constants::MAX_RPC_CONNECTIONS;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error(
        "every one of the {MAX_RPC_CONNECTIONS} management connections is executing a request"
    )]
    AllBusy,
    #[error("cannot keep a handle on the connection")]
    Clone(#[source] std::io::Error),
}

struct Slot {
    id: u64,
    /// A second handle on the connection, to shut it down when it is evicted.
    stream: UnixStream,
    idle_since: Instant,
    busy: bool,
}

/// The slots of one management socket.
#[derive(Default)]
pub struct Slots {
    slots: Mutex<Vec<Slot>>,
    next_id: AtomicU64,
}

/// One connection's slot, freed when dropped.
pub struct SlotGuard {
    slots: Arc<Slots>,
    id: u64,
}

impl Slots {
    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        // A panic elsewhere while holding the lock leaves the list itself consistent (every
        // change is one push, remove or field store).
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives `stream` a slot, evicting the longest-idle connection if every slot is taken.
    pub fn admit(self: &Arc<Self>, stream: &UnixStream) -> Result<SlotGuard, SlotError> {
        let handle = stream.try_clone().map_err(SlotError::Clone)?;
        let mut slots = self.lock();
        if slots.len() >= MAX_RPC_CONNECTIONS {
            let (index, idle_for) = slots
                .iter()
                .enumerate()
                .filter(|(_, slot)| !slot.busy)
                .min_by_key(|(_, slot)| slot.idle_since)
                .map(|(index, slot)| (index, slot.idle_since.elapsed()))
                .ok_or(SlotError::AllBusy)?;
            let evicted = slots.swap_remove(index);
            let _ = evicted.stream.shutdown(Shutdown::Both);
            log::warn!(
                "rpc: {MAX_RPC_CONNECTIONS} clients connected; closed the one idle longest ({} s) to make room",
                idle_for.as_secs()
            );
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        slots.push(Slot {
            id,
            stream: handle,
            idle_since: Instant::now(),
            busy: false,
        });
        Ok(SlotGuard {
            slots: self.clone(),
            id,
        })
    }

    /// Connections holding a slot.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SlotGuard {
    fn update(&self, busy: bool) {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.iter_mut().find(|slot| slot.id == self.id) {
            slot.busy = busy;
            slot.idle_since = Instant::now();
        }
    }

    /// The connection is executing a request: it is not evicted meanwhile.
    pub fn busy(&self) {
        self.update(true);
    }

    /// The connection has been answered and is idle from now on.
    pub fn idle(&self) {
        self.update(false);
    }

    /// How long the connection has been idle; `None` while it is busy, or once it was
    /// evicted (its socket is then shut down as well).
    pub fn idle_for(&self) -> Option<Duration> {
        self.slots
            .lock()
            .iter()
            .find(|slot| slot.id == self.id)
            .filter(|slot| !slot.busy)
            .map(|slot| slot.idle_since.elapsed())
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut slots = self.slots.lock();
        if let Some(index) = slots.iter().position(|slot| slot.id == self.id) {
            slots.swap_remove(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_evicts_the_longest_idle_and_never_a_busy_one() {
        let slots = Arc::new(Slots::default());
        let mut peers = Vec::new();
        let mut guards = Vec::new();
        for _ in 0..MAX_RPC_CONNECTIONS {
            let (ours, theirs) = UnixStream::pair().expect("pair");
            guards.push(slots.admit(&ours).expect("admit"));
            peers.push((ours, theirs));
        }
        // The first is executing a request; the second has been idle the longest of the rest.
        guards[0].busy();
        for guard in &guards[2..] {
            guard.idle();
        }
        let (newcomer, _peer) = UnixStream::pair().expect("pair");
        let _new = slots.admit(&newcomer).expect("admit past the limit");
        assert_eq!(slots.len(), MAX_RPC_CONNECTIONS);
        assert!(guards[0].idle_for().is_none(), "the busy connection");
        assert!(guards[1].idle_for().is_none(), "evicted");
        assert!(guards[2].idle_for().is_some(), "kept");
        // The evicted connection's peer sees the end of the stream.
        let mut byte = [0u8; 1];
        assert_eq!(
            std::io::Read::read(&mut &peers[1].1, &mut byte).expect("read"),
            0
        );
        // Every slot busy: the next client is refused.
        for guard in &guards[2..] {
            guard.busy();
        }
        _new.busy();
        let (late, _peer) = UnixStream::pair().expect("pair");
        assert!(matches!(slots.admit(&late), Err(SlotError::AllBusy)));
        drop(guards);
        assert_eq!(slots.len(), 1);
    }
}
