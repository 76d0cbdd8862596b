//! Places for front-end sessions on the reactors, shared by every front end (NBD and iSCSI
//! count against the same `MAX_CONNECTIONS_PER_REACTOR`).
//!
//! The reactor chosen is the one with the fewest sessions, so the server's capacity is used
//! whole (round robin could pick a full reactor while another has room).

use crate::constants::MAX_CONNECTIONS_PER_REACTOR;
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
