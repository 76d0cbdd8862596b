//! What a reactor runs: sessions, one per front-end connection. The reactor owns the ring and
//! routes each completion to the session whose index is in the top bits of its tag.
//!
//! The ring holds a bounded number of entries in flight (its completion queue's size). A
//! session checks its credit ([`SessionContext::ring_credit`]) before it starts LUN I/O; when
//! there is not enough, it keeps the request, stops reading new ones and waits
//! ([`SessionContext::wait_for_ring_credit`]); the reactor calls it back
//! ([`Session::on_ring_credit`]) when completions have freed entries.

use super::mailbox::SessionId;
use super::ring::IoRing;
use super::ReactorHandle;
use crate::constants::{MAX_CONNECTIONS_PER_REACTOR, RING_RESERVED_ENTRIES};
use std::collections::VecDeque;
use std::sync::Arc;

/// Bits of a ring tag that belong to the session; the bits above name the session.
pub const SESSION_TAG_BITS: u32 = 48;
pub const SESSION_TAG_MASK: u64 = (1 << SESSION_TAG_BITS) - 1;

/// What a session can use while it handles an event.
pub struct SessionContext<'a> {
    pub ring: &'a mut IoRing,
    /// Which reactor runs the session: the index of its statistics counters.
    pub reactor_index: usize,
    pub reactor: &'a Arc<ReactorHandle>,
    pub id: SessionId,
    /// Sessions waiting for ring credit, called back in order ([`Session::on_ring_credit`]).
    pub credit_waiters: &'a mut CreditWaiters,
}

impl SessionContext<'_> {
    /// The full ring tag for a session-local tag.
    pub fn tag(&self, local: u64) -> u64 {
        debug_assert!(local <= SESSION_TAG_MASK);
        ((u64::from(self.id.index) + 1) << SESSION_TAG_BITS) | local
    }

    /// Ring entries a session may still take for LUN I/O: the ring's credit less the entries
    /// kept for every session's receive, send and timer (which therefore never wait). A
    /// session starts a round of LUN I/O only when this covers the round's worst case
    /// (`MAX_RING_ENTRIES_PER_ROUND`); otherwise it keeps the request queued, stops reading
    /// new ones, and calls [`SessionContext::wait_for_ring_credit`].
    pub fn ring_credit(&self) -> usize {
        self.ring.credit().saturating_sub(RING_RESERVED_ENTRIES)
    }

    /// Asks the reactor to call [`Session::on_ring_credit`] once completions have freed ring
    /// entries. Asking again before the call changes nothing.
    pub fn wait_for_ring_credit(&mut self) {
        self.credit_waiters.add(self.id);
    }
}

/// The sessions of one reactor waiting for ring credit, first come first served; each at most
/// once. A session that finished while waiting leaves a stale entry, skipped by its
/// generation when it comes up.
pub struct CreditWaiters {
    queue: VecDeque<SessionId>,
    /// Per session index: the generation queued, if one is.
    queued: Vec<Option<u32>>,
}

impl Default for CreditWaiters {
    fn default() -> Self {
        Self {
            queue: VecDeque::with_capacity(MAX_CONNECTIONS_PER_REACTOR),
            queued: vec![None; MAX_CONNECTIONS_PER_REACTOR],
        }
    }
}

impl CreditWaiters {
    fn add(&mut self, id: SessionId) {
        if let Some(queued) = self.queued.get_mut(id.index as usize) {
            if *queued != Some(id.generation) {
                *queued = Some(id.generation);
                self.queue.push_back(id);
            }
        }
    }

    /// The next waiting session, if any (possibly one that has finished since: the caller
    /// checks the generation).
    pub fn pop(&mut self) -> Option<SessionId> {
        let id = self.queue.pop_front()?;
        if let Some(queued) = self.queued.get_mut(id.index as usize) {
            if *queued == Some(id.generation) {
                *queued = None;
            }
        }
        Some(id)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// A front-end connection as a reactor sees it.
pub trait Session: Send {
    /// Called once on the reactor that will serve it: post the first reads.
    fn start(&mut self, ctx: &mut SessionContext);
    /// A ring completion with one of this session's tags (the session-local bits).
    fn on_completion(&mut self, local_tag: u64, result: i32, ctx: &mut SessionContext);
    /// A message from another thread (see `Message::Wake`).
    fn on_wake(&mut self, token: u64, result: i32, ctx: &mut SessionContext);
    /// Ring entries were freed after this session asked for them
    /// ([`SessionContext::wait_for_ring_credit`]): start what it kept queued.
    fn on_ring_credit(&mut self, _ctx: &mut SessionContext) {}
    /// The virtual path `vpath_id` was revoked: close if this session serves it.
    fn revoke(&mut self, _vpath_id: u64, _ctx: &mut SessionContext) {}
    /// The server is stopping: finish what is in flight, take nothing new.
    fn begin_shutdown(&mut self, ctx: &mut SessionContext);
    /// Closed, with nothing left on the ring: the reactor may drop it and reuse its index.
    fn is_finished(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(index: u16, generation: u32) -> SessionId {
        SessionId { index, generation }
    }

    /// Each session waits once, in order; a session that finished and whose index was reused
    /// leaves a stale entry behind, and the new one is queued all the same.
    #[test]
    fn waiters_queue_once_each_and_survive_a_reused_index() {
        let mut waiters = CreditWaiters::default();
        waiters.add(id(3, 1));
        waiters.add(id(5, 1));
        waiters.add(id(3, 1));
        assert_eq!(waiters.len(), 2, "asking twice queues once");
        waiters.add(id(3, 2));
        assert_eq!(waiters.pop(), Some(id(3, 1)), "stale: the caller skips it");
        assert_eq!(waiters.pop(), Some(id(5, 1)));
        assert_eq!(waiters.pop(), Some(id(3, 2)));
        assert!(waiters.is_empty());
        waiters.add(id(3, 2));
        assert_eq!(
            waiters.pop(),
            Some(id(3, 2)),
            "may wait again once called back"
        );
        waiters.add(id(u16::MAX, 1));
        assert!(
            waiters.is_empty(),
            "an index past the reactor's sessions is ignored"
        );
    }
}
