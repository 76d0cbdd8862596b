//! Places for NBD sessions, promised before the client is told yes.
//!
//! A session is granted during the negotiation, when the client sends NBD_OPT_GO: the
//! client's host must be under its `max_sessions`, and some reactor must have a place for it.
//! Both are taken then, as a [`SessionTicket`], before the server answers; a client past
//! either limit gets NBD_REP_ERR_POLICY with the reason, which it reports, instead of a
//! success followed by a dropped connection. The ticket travels with the session to its
//! reactor and gives both places back when the session ends (or when the negotiation fails
//! after all).
//!
//! The reactor chosen is the one with the fewest sessions, so the server's capacity is used
//! whole (round robin could pick a full reactor while another has room).

use crate::constants::MAX_CONNECTIONS_PER_REACTOR;
use crate::domain::host::HostSession;
use crate::volume::open_state::OpenGuard;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Sessions each reactor serves or has been promised.
pub struct ReactorLoad {
    sessions: Box<[AtomicUsize]>,
}

impl ReactorLoad {
    pub fn new(reactors: usize) -> Arc<Self> {
        Arc::new(Self {
            sessions: (0..reactors).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    /// A place on the least loaded reactor with room, if any has.
    pub fn reserve(self: &Arc<Self>) -> Option<ReactorPlace> {
        let mut order: Vec<usize> = (0..self.sessions.len()).collect();
        order.sort_by_key(|&k| self.sessions[k].load(Ordering::Acquire));
        order.into_iter().find_map(|reactor| {
            self.sessions[reactor]
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                    (open < MAX_CONNECTIONS_PER_REACTOR).then_some(open + 1)
                })
                .ok()
                .map(|_| ReactorPlace {
                    load: self.clone(),
                    reactor,
                })
        })
    }

    /// Places every reactor has together.
    pub fn capacity(&self) -> usize {
        self.sessions.len() * MAX_CONNECTIONS_PER_REACTOR
    }
}

/// A place on one reactor, given back when dropped.
pub struct ReactorPlace {
    load: Arc<ReactorLoad>,
    reactor: usize,
}

impl ReactorPlace {
    pub fn reactor(&self) -> usize {
        self.reactor
    }
}

impl Drop for ReactorPlace {
    fn drop(&mut self) {
        let before = self.load.sessions[self.reactor].fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "reactor session count underflow");
    }
}

/// A granted session: one of its host's sessions, a place on a reactor and an open of its
/// volume, all taken at NBD_OPT_GO (so a refusal is an option error the client reports) and
/// all given back when the ticket is dropped, whatever drops it.
pub struct SessionTicket {
    pub host: HostSession,
    pub place: ReactorPlace,
    pub open: OpenGuard,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_go_to_the_least_loaded_reactor_until_all_are_full() {
        let load = ReactorLoad::new(2);
        let first = load.reserve().expect("room");
        let second = load.reserve().expect("room");
        assert_ne!(
            first.reactor(),
            second.reactor(),
            "spread over both reactors"
        );
        let mut held = vec![first, second];
        while let Some(place) = load.reserve() {
            held.push(place);
        }
        assert_eq!(held.len(), load.capacity());
        let freed = held.pop().map(|p| p.reactor());
        assert_eq!(load.reserve().map(|p| p.reactor()), freed);
    }
}
