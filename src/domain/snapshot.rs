//! The published, immutable view of what the data path may reach and how it is served.
//!
//! The control thread builds a new [`Snapshot`] whenever configuration changes, and every
//! control-loop cycle in which a VP's rates change, and publishes it with one atomic swap.
//! Handshakes resolve a connection's host and VP from it; sessions read their VP's current
//! decisions (allowed operations, statistics detail, rates) from it through a
//! [`DecisionCache`](super::decision::DecisionCache), which looks at the snapshot again only
//! when [`Published::generation`] moved.

use super::capabilities::{AllowedOps, StatsDetail};
use super::host::{Host, PeerIdentity};
use super::qos::RateLimit;
use super::vpath::Vpath;
use crate::volume::Volume;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A VP as one snapshot decides it.
pub struct PathView {
    pub vpath: Arc<Vpath>,
    pub domain: String,
    pub allowed_ops: AllowedOps,
    pub statistics: StatsDetail,
    /// The rate each reactor may serve this VP at now (index: reactor).
    pub rates: Box<[RateLimit]>,
}

impl PathView {
    #[inline]
    pub fn rate(&self, reactor: usize) -> RateLimit {
        self.rates.get(reactor).copied().unwrap_or_default()
    }
}

/// One generation of the configuration as the data path sees it.
#[derive(Default)]
pub struct Snapshot {
    pub generation: u64,
    /// Every volume by name (what the administrator sees; hosts see only their VPs').
    pub volumes: BTreeMap<String, Arc<Volume>>,
    pub hosts: Vec<Host>,
    /// Every VP, in id order.
    pub paths: Vec<PathView>,
}

impl Snapshot {
    /// A snapshot of one host (`host`, known by no address) with one VP, `vpath`, in a domain
    /// that allows every operation and records latencies, served at `rates` (one per
    /// reactor): what `sds perf` publishes in place of the control thread, and what the
    /// engine's unit tests run under.
    pub fn one_path(
        host: &str,
        vpath: Arc<Vpath>,
        domain: &str,
        volumes: BTreeMap<String, Arc<Volume>>,
        rates: Box<[RateLimit]>,
    ) -> Self {
        Self {
            generation: 1,
            volumes,
            hosts: vec![Host {
                name: host.to_string(),
                tls_subject: None,
                iqn: None,
                nqn: None,
                chap: None,
                addresses: Vec::new(),
                max_sessions: crate::constants::DEFAULT_MAX_SESSIONS_PER_HOST,
                sessions: Arc::default(),
            }],
            paths: vec![PathView {
                vpath,
                domain: domain.to_string(),
                allowed_ops: AllowedOps::default(),
                statistics: StatsDetail::Latency,
                rates,
            }],
        }
    }

    /// The host an iSCSI initiator name is (initiator names compare case-insensitively, as
    /// RFC 3722 normalises them).
    pub fn host_by_iqn(&self, initiator_name: &str) -> Option<&Host> {
        self.hosts.iter().find(|host| {
            host.iqn
                .as_deref()
                .is_some_and(|iqn| iqn.eq_ignore_ascii_case(initiator_name))
        })
    }

    /// The host an NVMe host NQN is (NQNs compare exactly).
    pub fn host_by_nqn(&self, host_nqn: &str) -> Option<&Host> {
        self.hosts
            .iter()
            .find(|host| host.nqn.as_deref() == Some(host_nqn))
    }

    /// The host a connection belongs to: the one whose identity matches it most specifically.
    pub fn host_of(&self, peer: &PeerIdentity) -> Option<&Host> {
        // The most specific claim wins (longest prefix, as ACLs match); between equally
        // specific claims (reported as overlaps when the hosts were created), the first host
        // in name order.
        let mut best: Option<(u16, &Host)> = None;
        for host in &self.hosts {
            if let Some(rank) = host.match_specificity(peer) {
                if best.map_or(true, |(best_rank, _)| rank > best_rank) {
                    best = Some((rank, host));
                }
            }
        }
        best.map(|(_, host)| host)
    }

    /// The VPs of host `host`, with their index in `paths`.
    pub fn paths_of<'a>(&'a self, host: &'a str) -> impl Iterator<Item = (usize, &'a PathView)> {
        self.paths
            .iter()
            .enumerate()
            .filter(move |(_, view)| view.vpath.host == host)
    }

    /// `host`'s VP to volume `volume`.
    pub fn path_to<'a>(&'a self, host: &'a str, volume: &str) -> Option<(usize, &'a PathView)> {
        self.paths_of(host)
            .find(|(_, view)| view.vpath.volume.name == volume)
    }

    /// The view of VP `vpath` in this snapshot; `hint` is where it was last time.
    #[inline]
    pub fn view_of(&self, vpath: &Arc<Vpath>, hint: &mut usize) -> Option<&PathView> {
        if let Some(view) = self.paths.get(*hint) {
            if Arc::ptr_eq(&view.vpath, vpath) {
                return Some(view);
            }
        }
        let index = self
            .paths
            .binary_search_by_key(&vpath.id, |view| view.vpath.id)
            .ok()?;
        *hint = index;
        Some(&self.paths[index])
    }
}

/// Where the current snapshot lives. The control thread stores; everyone else loads.
pub struct Published {
    current: ArcSwap<Snapshot>,
    /// Bumped after every store: sessions that cached a decision look again when it moves.
    generation: AtomicU64,
}

impl Default for Published {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            generation: AtomicU64::new(0),
        }
    }
}

impl Published {
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The current snapshot without touching its reference count: what the I/O path uses.
    #[inline]
    pub fn peek(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn publish(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// How many snapshots have been published: changes exactly when the snapshot does.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
