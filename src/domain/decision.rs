//! What the current snapshot decides for one I/O on one VP, read with one atomic load: which
//! operations the VP may send, whether its latencies are recorded, and the QoS rate its
//! session takes tokens at. Every front end (and `sds perf`) asks here once per request.

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

/// The decision for `vpath` on reactor `reactor`; `None` once the VP is gone. `hint` is where
/// the VP sat in the snapshot last time (kept by the caller between requests).
#[inline]
pub fn decide(
    published: &Published,
    vpath: &Arc<Vpath>,
    hint: &mut usize,
    reactor: usize,
) -> Option<PathDecision> {
    if vpath.is_revoked() {
        return None;
    }
    let snapshot = published.peek();
    let view = snapshot.view_of(vpath, hint)?;
    let mut rate = view.rate(reactor);
    if !rate.is_unlimited() {
        let sessions = vpath.stats.reactor_sessions(reactor);
        if sessions > 1 {
            rate = rate.scaled(1.0 / f64::from(sessions));
        }
    }
    Some(PathDecision {
        allowed_ops: view.allowed_ops,
        record_latency: view.statistics == StatsDetail::Latency,
        rate,
    })
}
