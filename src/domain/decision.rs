//! What the current snapshot decides for one I/O on one VP: which operations the VP may send,
//! whether its latencies are recorded, and the QoS rate its session takes tokens at. Every
//! front end (and `sds perf`) asks here once per request.
//!
//! A session keeps the last decision in a [`DecisionCache`] and looks at the snapshot again
//! only when the published generation moved: the steady state costs one Acquire load of a
//! counter that changes only when the control thread publishes (it pairs with the Release
//! increment after each new snapshot is stored), plus, for a rate-limited VP, one load of the
//! VP's session count on this reactor.

use super::capabilities::{AllowedOps, StatsDetail};
use super::qos::RateLimit;
use super::snapshot::Published;
use super::vpath::Vpath;
use std::sync::Arc;

#[derive(Clone, Copy, Debug)]
pub struct PathDecision {
    pub allowed_ops: AllowedOps,
    pub record_latency: bool,
    /// This session's rate: the VP's rate on this reactor, shared evenly by the VP's sessions
    /// there. Unlimited when no limit applies.
    pub rate: RateLimit,
}

/// One session's view of its VP's decisions.
pub struct DecisionCache {
    vpath: Arc<Vpath>,
    /// Where the VP sat in the snapshot last time.
    hint: usize,
    /// The generation `decision` was read from (`u64::MAX`: never read).
    generation: u64,
    /// `None` once the VP is gone.
    decision: Option<(AllowedOps, bool, RateLimit)>,
}

impl DecisionCache {
    pub fn new(vpath: Arc<Vpath>, hint: usize) -> Self {
        Self {
            vpath,
            hint,
            generation: u64::MAX,
            decision: None,
        }
    }

    pub fn vpath(&self) -> &Arc<Vpath> {
        &self.vpath
    }

    /// The decision for an I/O of this session on reactor `reactor`; `None` once the VP is
    /// gone.
    #[inline]
    pub fn decide(&mut self, published: &Published, reactor: usize) -> Option<PathDecision> {
        let generation = published.generation();
        if generation != self.generation {
            self.refresh(published, reactor, generation);
        }
        let (allowed_ops, record_latency, mut rate) = self.decision?;
        if !rate.is_unlimited() {
            let sessions = self.vpath.stats.reactor_sessions(reactor);
            if sessions > 1 {
                rate = rate.scaled(1.0 / f64::from(sessions));
            }
        }
        Some(PathDecision {
            allowed_ops,
            record_latency,
            rate,
        })
    }

    #[cold]
    fn refresh(&mut self, published: &Published, reactor: usize, generation: u64) {
        self.generation = generation;
        self.decision = None;
        if self.vpath.is_revoked() {
            return;
        }
        let snapshot = published.peek();
        if let Some(view) = snapshot.view_of(&self.vpath, &mut self.hint) {
            self.decision = Some((
                view.allowed_ops,
                view.statistics == StatsDetail::Latency,
                view.rate(reactor),
            ));
        }
    }
}
