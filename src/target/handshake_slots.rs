//! Who may negotiate at once: the admission of new front-end connections (NBD handshakes,
//! iSCSI logins) to a handshake thread. Each front end has its own set of slots.
//!
//! A handshake holds a thread until it ends, so slots are few (`MAX_HANDSHAKES`), and a peer
//! that keeps them without finishing would lock every client out. Three bounds stop that:
//!
//! - every handshake has one deadline for the whole negotiation (enforced by the listener's
//!   stream, not here), so a slot is never held longer than that;
//! - one source (an IP address, or a Unix user id) holds at most
//!   `MAX_HANDSHAKES_PER_ADDRESS` slots, or `MAX_HANDSHAKES_PER_KNOWN_ADDRESS` if a host
//!   record names it (a host opening many connections at once is not refused, and still
//!   leaves room for the others);
//! - peers that no host record claims by address or user id share only
//!   `MAX_UNKNOWN_HANDSHAKES` slots; the rest are kept for peers a host record names, so
//!   strangers cannot starve known hosts. (Over TLS the host is named by its certificate,
//!   which is known only after negotiating: a peer whose address no host lists counts as
//!   unknown until then.)
//!
//! A refused connection is closed at once; the client may retry. The counts live behind one
//! mutex: this runs once per accepted connection, on the acceptor thread, never on the data
//! path. The map holds only sources with a handshake in progress, so it is bounded by
//! `MAX_HANDSHAKES`.

use crate::constants::{
    MAX_HANDSHAKES, MAX_HANDSHAKES_PER_ADDRESS, MAX_HANDSHAKES_PER_KNOWN_ADDRESS,
    MAX_UNKNOWN_HANDSHAKES,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// What one source of connections is counted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Address(IpAddr),
    UnixUid(u32),
    /// A Unix peer whose credentials could not be read.
    Unknown,
}

/// Why a connection was not given a handshake slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{MAX_HANDSHAKES} handshakes already in progress")]
    Full,
    #[error(
        "{MAX_UNKNOWN_HANDSHAKES} handshakes of peers no host record names already in progress"
    )]
    UnknownFull,
    #[error("{0} handshakes from this source already in progress")]
    SourceFull(usize),
}

#[derive(Default)]
struct Counts {
    total: usize,
    unknown: usize,
    by_source: HashMap<Source, usize>,
}

#[derive(Default)]
pub struct HandshakeSlots {
    counts: Arc<Mutex<Counts>>,
}

/// A handshake slot; given back when dropped.
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    source: Source,
    known: bool,
}

impl HandshakeSlots {
    /// Takes a slot for a connection from `source`; `known` says whether a host record names
    /// it.
    pub fn admit(&self, source: Source, known: bool) -> Result<Slot, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= MAX_HANDSHAKES {
            return Err(Refusal::Full);
        }
        if !known && counts.unknown >= MAX_UNKNOWN_HANDSHAKES {
            return Err(Refusal::UnknownFull);
        }
        let from_source = counts.by_source.get(&source).copied().unwrap_or(0);
        let source_limit = if known {
            MAX_HANDSHAKES_PER_KNOWN_ADDRESS
        } else {
            MAX_HANDSHAKES_PER_ADDRESS
        };
        if from_source >= source_limit {
            return Err(Refusal::SourceFull(source_limit));
        }
        counts.total += 1;
        counts.unknown += usize::from(!known);
        counts.by_source.insert(source, from_source + 1);
        Ok(Slot {
            counts: self.counts.clone(),
            source,
            known,
        })
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        debug_assert!(counts.total > 0 && (self.known || counts.unknown > 0));
        counts.total -= 1;
        counts.unknown -= usize::from(!self.known);
        if let Some(count) = counts.by_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(last: u8) -> Source {
        Source::Address(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn one_source_holds_only_its_share() {
        for (known, share) in [
            (false, MAX_HANDSHAKES_PER_ADDRESS),
            (true, MAX_HANDSHAKES_PER_KNOWN_ADDRESS),
        ] {
            let slots = HandshakeSlots::default();
            let held: Vec<_> = (0..share)
                .map(|_| slots.admit(address(1), known).expect("within the share"))
                .collect();
            // A stranger's per-address share is the whole strangers' share, which is then
            // what refuses first.
            let expected = if known {
                Refusal::SourceFull(share)
            } else {
                Refusal::UnknownFull
            };
            assert_eq!(slots.admit(address(1), known).err(), Some(expected));
            assert!(
                slots.admit(address(2), true).is_ok(),
                "another host still gets in"
            );
            drop(held);
            assert!(slots.admit(address(1), known).is_ok(), "slots come back");
        }
    }

    #[test]
    fn strangers_cannot_take_the_known_hosts_slots() {
        let slots = HandshakeSlots::default();
        let mut held = Vec::new();
        let mut last = 0u8;
        while held.len() < MAX_UNKNOWN_HANDSHAKES {
            last += 1;
            while let Ok(slot) = slots.admit(address(last), false) {
                held.push(slot);
                if held.len() == MAX_UNKNOWN_HANDSHAKES {
                    break;
                }
            }
        }
        assert_eq!(
            slots.admit(address(200), false).err(),
            Some(Refusal::UnknownFull)
        );
        // Every remaining slot is a known host's.
        let mut known = Vec::new();
        for k in 0..(MAX_HANDSHAKES - MAX_UNKNOWN_HANDSHAKES) {
            let source = Source::UnixUid((k / MAX_HANDSHAKES_PER_KNOWN_ADDRESS) as u32);
            known.push(slots.admit(source, true).expect("a known host's slot"));
        }
        assert_eq!(
            slots.admit(Source::UnixUid(999), true).err(),
            Some(Refusal::Full)
        );
        assert_eq!(slots.in_progress(), MAX_HANDSHAKES);
        drop(known);
        drop(held);
        assert_eq!(slots.in_progress(), 0);
    }
}
