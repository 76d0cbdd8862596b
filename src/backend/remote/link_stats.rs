//! What the links of one remote LUN publish for `lun_get_luns`: each link's state, round-trip
//! estimate and commands in flight, and the LUN's reconnects, timeouts and the array's size
//! when it differs from the LUN's. Atomics written by the links (each link its own slot, so no
//! two reactors write one cache line on the data path) and read by the control thread.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// A link's connection state, in order of worsening: the LUN shows its worst link's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkState {
    Connected = 0,
    Connecting = 1,
    Reconnecting = 2,
    Failed = 3,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Connecting => "connecting",
            Self::Reconnecting => "reconnecting",
            Self::Failed => "failed",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Connected,
            1 => Self::Connecting,
            2 => Self::Reconnecting,
            _ => Self::Failed,
        }
    }
}

/// One link's published numbers, on a cache line of its own.
#[repr(align(64))]
#[derive(Debug)]
struct LinkCounters {
    state: AtomicU8,
    in_flight: AtomicU32,
    rtt_us: AtomicU64,
}

/// The stats of one remote LUN's links.
#[derive(Debug)]
pub struct LinkStats {
    links: Box<[LinkCounters]>,
    reconnects: AtomicU64,
    timeouts: AtomicU64,
    /// The array's size in bytes when it differs from the LUN's (0 when it does not).
    array_size: AtomicU64,
}

/// A copy of [`LinkStats`] for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStatsSnapshot {
    /// The worst state of any link.
    pub state: LinkState,
    pub links: usize,
    /// Links connected now.
    pub links_connected: usize,
    /// Mean of the connected links' round-trip estimates (µs); 0 before any command completed.
    pub rtt_us: u64,
    pub reconnects: u64,
    pub timeouts: u64,
    pub in_flight: u64,
    /// The array's size when it differs from the LUN's.
    pub array_size: Option<u64>,
}

impl LinkStats {
    /// Stats for `links` links, all connecting.
    pub fn new(links: usize) -> Self {
        Self {
            links: (0..links)
                .map(|_| LinkCounters {
                    state: AtomicU8::new(LinkState::Connecting as u8),
                    in_flight: AtomicU32::new(0),
                    rtt_us: AtomicU64::new(0),
                })
                .collect(),
            reconnects: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            array_size: AtomicU64::new(0),
        }
    }

    pub fn set_state(&self, link: usize, state: LinkState) {
        if let Some(counters) = self.links.get(link) {
            counters.state.store(state as u8, Ordering::Relaxed);
        }
    }

    pub fn state(&self, link: usize) -> Option<LinkState> {
        self.links
            .get(link)
            .map(|counters| LinkState::from_u8(counters.state.load(Ordering::Relaxed)))
    }

    /// Whether any link is in `state`.
    pub fn any_in(&self, state: LinkState) -> bool {
        (0..self.links.len()).any(|link| self.state(link) == Some(state))
    }

    pub fn set_in_flight(&self, link: usize, in_flight: u32) {
        if let Some(counters) = self.links.get(link) {
            counters.in_flight.store(in_flight, Ordering::Relaxed);
        }
    }

    pub fn set_rtt_us(&self, link: usize, rtt_us: u64) {
        if let Some(counters) = self.links.get(link) {
            counters.rtt_us.store(rtt_us, Ordering::Relaxed);
        }
    }

    pub fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_timeouts(&self, count: u64) {
        self.timeouts.fetch_add(count, Ordering::Relaxed);
    }

    /// Records the array's size: shown when it differs from `lun_size_bytes`.
    pub fn set_array_size(&self, array_size_bytes: u64, lun_size_bytes: u64) {
        let shown = if array_size_bytes == lun_size_bytes {
            0
        } else {
            array_size_bytes
        };
        self.array_size.store(shown, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LinkStatsSnapshot {
        let mut state = LinkState::Connected;
        let mut links_connected = 0;
        let mut rtt_sum = 0;
        let mut rtt_count = 0;
        let mut in_flight = 0;
        for counters in self.links.iter() {
            let link_state = LinkState::from_u8(counters.state.load(Ordering::Relaxed));
            state = state.max(link_state);
            in_flight += u64::from(counters.in_flight.load(Ordering::Relaxed));
            if link_state == LinkState::Connected {
                links_connected += 1;
                let rtt = counters.rtt_us.load(Ordering::Relaxed);
                if rtt > 0 {
                    rtt_sum += rtt;
                    rtt_count += 1;
                }
            }
        }
        if self.links.is_empty() {
            state = LinkState::Connecting;
        }
        LinkStatsSnapshot {
            state,
            links: self.links.len(),
            links_connected,
            rtt_us: rtt_sum.checked_div(rtt_count).unwrap_or(0),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            in_flight,
            array_size: match self.array_size.load(Ordering::Relaxed) {
                0 => None,
                size => Some(size),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_link_is_the_lun_state() {
        let stats = LinkStats::new(3);
        assert_eq!(stats.snapshot().state, LinkState::Connecting);
        for link in 0..3 {
            stats.set_state(link, LinkState::Connected);
        }
        stats.set_rtt_us(0, 100);
        stats.set_rtt_us(1, 300);
        stats.set_in_flight(2, 5);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.state, LinkState::Connected);
        assert_eq!(
            snapshot.rtt_us, 200,
            "links with no estimate yet are left out"
        );
        assert_eq!(snapshot.in_flight, 5);
        stats.set_state(1, LinkState::Reconnecting);
        stats.count_reconnect();
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.state, LinkState::Reconnecting);
        assert_eq!(snapshot.links_connected, 2);
        assert_eq!(snapshot.rtt_us, 100);
        assert_eq!(snapshot.reconnects, 1);
        stats.set_array_size(1 << 30, 1 << 30);
        assert_eq!(stats.snapshot().array_size, None);
        stats.set_array_size(2 << 30, 1 << 30);
        assert_eq!(stats.snapshot().array_size, Some(2 << 30));
    }
}
