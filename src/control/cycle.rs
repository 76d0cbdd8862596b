//! The control loop: every cycle (default 100 ms) the control thread gathers every reactor's
//! per-VP counters, turns them into last-cycle statistics, shares each domain's budget among
//! its VPs by their recent demand (and each volume's `bdev_set_qos_limit` among the VPs to
//! it, by priority), splits each VP's allowance among the reactors serving it, and publishes
//! a new snapshot when any rate changed. The data path only reads these decisions. It also
//! logs the LUN errors the reactors counted, rate-limited ([`super::lun_errors`]).

use super::Control;
use crate::blockio::BlockOp;
use crate::domain::capabilities::QosLimits;
use crate::domain::qos::{share_budget, Demand, RateLimit};
use crate::domain::stats::VpTotals;
use std::collections::BTreeMap;
use std::time::Instant;

/// A reactor with no session of a VP gets this share of the VP's allowance, so a connection
/// that lands there can start before the next cycle gives it a real share.
const IDLE_REACTOR_SHARE: f64 = 0.05;

/// Which of the four limited quantities a budget is about.
#[derive(Clone, Copy)]
enum Quantity {
    Ios,
    RwBytes,
    ReadBytes,
    WriteBytes,
}

impl Quantity {
    const ALL: [Quantity; 4] = [
        Quantity::Ios,
        Quantity::RwBytes,
        Quantity::ReadBytes,
        Quantity::WriteBytes,
    ];

    fn budget(self, limits: &RateLimit) -> f64 {
        match self {
            Quantity::Ios => limits.ios_per_sec,
            Quantity::RwBytes => limits.rw_bytes_per_sec,
            Quantity::ReadBytes => limits.r_bytes_per_sec,
            Quantity::WriteBytes => limits.w_bytes_per_sec,
        }
    }

    fn set(self, limits: &mut RateLimit, value: f64) {
        match self {
            Quantity::Ios => limits.ios_per_sec = value,
            Quantity::RwBytes => limits.rw_bytes_per_sec = value,
            Quantity::ReadBytes => limits.r_bytes_per_sec = value,
            Quantity::WriteBytes => limits.w_bytes_per_sec = value,
        }
    }

    fn used(self, delta: &VpTotals) -> u64 {
        match self {
            Quantity::Ios => delta.limited_ops(),
            Quantity::RwBytes => delta.data_bytes(),
            Quantity::ReadBytes => delta.bytes[BlockOp::Read.index()],
            Quantity::WriteBytes => delta.bytes[BlockOp::Write.index()],
        }
    }
}

/// A budget to share: its limits and who shares them with which weight.
struct Budget {
    limits: RateLimit,
    members: Vec<(u64, f64)>,
    /// Floor and ceiling in IOPS for each member (domains only).
    floor: f64,
    ceiling: f64,
}

impl Control {
    /// Seconds the last cycle lasted (the configured period before the first).
    pub fn cycle_seconds(&self) -> f64 {
        self.last_cycle_s
    }

    /// One cycle: gather, account, decide, publish.
    pub fn run_cycle(&mut self) {
        let now = Instant::now();
        self.last_cycle_s = now
            .duration_since(self.last_cycle_at)
            .as_secs_f64()
            .max(1e-3);
        self.last_cycle_at = now;
        self.mirror_cycle();
        let mut domain_deltas: BTreeMap<String, VpTotals> = BTreeMap::new();
        for entry in self.vpaths.values_mut() {
            let totals = entry.vpath.stats.totals();
            let delta = totals.since(&entry.previous);
            domain_deltas
                .entry(entry.record.domain.clone())
                .or_default()
                .add(&delta);
            entry.previous = totals;
            entry.last.delta = delta;
            let reactors = entry.vpath.stats.reactors();
            entry.reactor_recent.resize(reactors, 0);
            entry.reactor_previous.resize(reactors, 0);
            for reactor in 0..reactors {
                let ops = entry.vpath.stats.reactor_ops(reactor);
                entry.reactor_recent[reactor] = ops.saturating_sub(entry.reactor_previous[reactor]);
                entry.reactor_previous[reactor] = ops;
            }
        }
        for (name, domain) in self.domains.iter_mut() {
            let delta = domain_deltas.remove(name).unwrap_or_default();
            domain.totals.add(&delta);
            domain.last.delta = delta;
        }
        if self.recompute_rates() {
            self.publish();
        }
        super::pools::watch_thresholds(self);
        // The reactors only count LUN errors; their log lines are written here.
        super::lun_errors::report(
            self.luns
                .iter()
                .map(|(name, entry)| (name.as_str(), entry.lun.as_ref())),
        );
        self.gather_metrics_if_due();
    }

    /// Recomputes every VP's allowance and per-reactor rates from the last cycle's demand.
    /// Returns whether any published rate changed.
    pub fn recompute_rates(&mut self) -> bool {
        let cycle_s = self.last_cycle_s;
        let mut allowances: BTreeMap<u64, RateLimit> = BTreeMap::new();
        let mut budgets: Vec<Budget> = Vec::new();
        for domain in self.domains.values() {
            let caps = &domain.record.capabilities;
            budgets.push(Budget {
                limits: RateLimit::from_limits(&caps.qos),
                members: self
                    .vpaths
                    .values()
                    .filter(|v| v.record.domain == domain.record.name)
                    .map(|v| (v.record.id, 1.0))
                    .collect(),
                floor: caps.vpath_min_ios_per_sec as f64,
                ceiling: caps.vpath_max_ios_per_sec as f64,
            });
        }
        for volume in self.volumes.values() {
            if volume.record.qos == QosLimits::default() {
                continue;
            }
            budgets.push(Budget {
                limits: RateLimit::from_limits(&volume.record.qos),
                members: self
                    .vpaths
                    .values()
                    .filter(|v| v.record.volume == volume.record.name)
                    .map(|v| {
                        let weight = self
                            .domains
                            .get(&v.record.domain)
                            .map_or(2, |d| d.record.capabilities.priority.weight());
                        (v.record.id, weight as f64)
                    })
                    .collect(),
                floor: 0.0,
                ceiling: 0.0,
            });
        }
        for budget in &budgets {
            for quantity in Quantity::ALL {
                let total = quantity.budget(&budget.limits);
                let is_ios = matches!(quantity, Quantity::Ios);
                let ceiling = if is_ios { budget.ceiling } else { 0.0 };
                let grants: Vec<f64> = if total > 0.0 {
                    let demands: Vec<Demand> = budget
                        .members
                        .iter()
                        .map(|&(id, weight)| {
                            let last = self.vpaths.get(&id).map(|v| &v.last.delta);
                            Demand {
                                used_per_sec: last
                                    .map_or(0.0, |d| quantity.used(d) as f64 / cycle_s),
                                throttled: last.is_some_and(|d| d.throttled_ops > 0),
                                floor: if is_ios { budget.floor } else { 0.0 },
                                ceiling,
                                weight,
                            }
                        })
                        .collect();
                    share_budget(total, &demands)
                } else if ceiling > 0.0 {
                    vec![ceiling; budget.members.len()]
                } else {
                    continue;
                };
                for (&(id, _), grant) in budget.members.iter().zip(grants) {
                    let mut limit = RateLimit::default();
                    quantity.set(&mut limit, grant.max(1.0));
                    let combined = allowances.entry(id).or_default();
                    *combined = combined.min(limit);
                }
            }
        }
        let mut changed = false;
        for (id, entry) in self.vpaths.iter_mut() {
            let allowance = allowances.get(id).copied().unwrap_or_default();
            let reactors = entry.rates.len();
            let active: Vec<usize> = (0..reactors)
                .filter(|&r| entry.vpath.stats.reactor_sessions(r) > 0)
                .collect();
            let recent_total: u64 = active
                .iter()
                .map(|&r| entry.reactor_recent.get(r).copied().unwrap_or(0))
                .sum();
            let mut rates = vec![RateLimit::default(); reactors].into_boxed_slice();
            if !allowance.is_unlimited() {
                for (reactor, rate) in rates.iter_mut().enumerate() {
                    let fraction = if active.is_empty() {
                        1.0
                    } else if !active.contains(&reactor) {
                        IDLE_REACTOR_SHARE
                    } else if recent_total == 0 {
                        1.0 / active.len() as f64
                    } else {
                        // By recent use, with a little for each so none is starved.
                        let even = 1.0 / active.len() as f64;
                        let used = entry.reactor_recent.get(reactor).copied().unwrap_or(0) as f64
                            / recent_total as f64;
                        0.9 * used + 0.1 * even
                    };
                    *rate = allowance.scaled(fraction);
                }
            }
            if rates != entry.rates {
                changed = true;
                entry.rates = rates;
            }
            entry.allowance = allowance;
        }
        changed
    }
}
