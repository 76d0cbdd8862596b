//! Quality of service: the control loop's sharing of budgets, and the token buckets the
//! sessions take from on their reactors.
//!
//! ```text
//!  control thread, every cycle:  domain budget ──share_budget──▶ per-VP allowance
//!                                per-VP allowance ──split by reactor demand──▶ RateLimit
//!                                                     (published in the snapshot)
//!  session, per I/O:             TokenBucket (its own) ──refill at its share──▶ take
//! ```
//!
//! Budgets are max-min fair with weights: a VP that used less than its share last cycle and
//! was never throttled keeps what it used plus headroom; what it leaves goes to the VPs that
//! want more (were throttled), in proportion to their weights; anything still left is spread
//! over every VP, so an idle VP can start at once. Floors are granted first, ceilings cap.

use super::capabilities::QosLimits;

/// A rate one reactor may serve one VP at; 0 = unlimited. Bytes per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateLimit {
    pub ios_per_sec: f64,
    pub rw_bytes_per_sec: f64,
    pub r_bytes_per_sec: f64,
    pub w_bytes_per_sec: f64,
}

impl RateLimit {
    /// No limit at all.
    pub const UNLIMITED: RateLimit = RateLimit {
        ios_per_sec: 0.0,
        rw_bytes_per_sec: 0.0,
        r_bytes_per_sec: 0.0,
        w_bytes_per_sec: 0.0,
    };

    pub fn is_unlimited(&self) -> bool {
        self.ios_per_sec == 0.0
            && self.rw_bytes_per_sec == 0.0
            && self.r_bytes_per_sec == 0.0
            && self.w_bytes_per_sec == 0.0
    }

    /// The tighter of two limits, field by field (0 = no limit).
    pub fn min(self, other: RateLimit) -> RateLimit {
        let tight = |a: f64, b: f64| match (a == 0.0, b == 0.0) {
            (true, _) => b,
            (_, true) => a,
            _ => a.min(b),
        };
        RateLimit {
            ios_per_sec: tight(self.ios_per_sec, other.ios_per_sec),
            rw_bytes_per_sec: tight(self.rw_bytes_per_sec, other.rw_bytes_per_sec),
            r_bytes_per_sec: tight(self.r_bytes_per_sec, other.r_bytes_per_sec),
            w_bytes_per_sec: tight(self.w_bytes_per_sec, other.w_bytes_per_sec),
        }
    }

    /// `fraction` of this limit (a share of it); unlimited stays unlimited.
    pub fn scaled(self, fraction: f64) -> RateLimit {
        let part = |v: f64| {
            if v == 0.0 {
                0.0
            } else {
                (v * fraction).max(1.0)
            }
        };
        RateLimit {
            ios_per_sec: part(self.ios_per_sec),
            rw_bytes_per_sec: part(self.rw_bytes_per_sec),
            r_bytes_per_sec: part(self.r_bytes_per_sec),
            w_bytes_per_sec: part(self.w_bytes_per_sec),
        }
    }

    pub fn from_limits(limits: &QosLimits) -> RateLimit {
        const MB: f64 = 1024.0 * 1024.0;
        RateLimit {
            ios_per_sec: limits.rw_ios_per_sec as f64,
            rw_bytes_per_sec: limits.rw_mbytes_per_sec as f64 * MB,
            r_bytes_per_sec: limits.r_mbytes_per_sec as f64 * MB,
            w_bytes_per_sec: limits.w_mbytes_per_sec as f64 * MB,
        }
    }
}

/// How long a bucket may save up unused tokens: the burst a limit allows.
const BURST_SECONDS: f64 = 0.02;

/// One session's tokens: it refills at the session's share of its VP's rate on its reactor
/// (that rate split evenly among the VP's sessions there, see [`super::decision`]). Owned by
/// the session: no atomics, no sharing.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenBucket {
    ios: f64,
    rw_bytes: f64,
    r_bytes: f64,
    w_bytes: f64,
    last_ns: u64,
}

/// What a bucket says to an I/O.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Admit {
    Go,
    /// Try again in this many nanoseconds.
    Wait(u64),
}

impl TokenBucket {
    /// Takes the tokens an I/O of `bytes` needs, or says how long until it could. An I/O
    /// larger than the burst goes ahead once the bucket is not in debt, and leaves it in debt.
    #[inline]
    pub fn take(
        &mut self,
        limit: &RateLimit,
        now_ns: u64,
        counts_as_io: bool,
        read_bytes: u64,
        write_bytes: u64,
    ) -> Admit {
        let elapsed_s = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.last_ns = now_ns;
        let refill = |tokens: &mut f64, rate: f64, floor: f64| {
            if rate > 0.0 {
                *tokens = (*tokens + rate * elapsed_s).min((rate * BURST_SECONDS).max(floor));
            }
        };
        refill(&mut self.ios, limit.ios_per_sec, 1.0);
        refill(&mut self.rw_bytes, limit.rw_bytes_per_sec, 1.0);
        refill(&mut self.r_bytes, limit.r_bytes_per_sec, 1.0);
        refill(&mut self.w_bytes, limit.w_bytes_per_sec, 1.0);
        let rw = (read_bytes + write_bytes) as f64;
        let mut wait_s: f64 = 0.0;
        let mut need = |tokens: f64, rate: f64, amount: f64, threshold: f64| {
            if rate > 0.0 && amount > 0.0 && tokens < threshold {
                wait_s = wait_s.max((threshold - tokens) / rate);
            }
        };
        need(
            self.ios,
            limit.ios_per_sec,
            f64::from(u8::from(counts_as_io)),
            1.0,
        );
        // Bytes: go ahead once the bucket is out of debt.
        need(self.rw_bytes, limit.rw_bytes_per_sec, rw, f64::MIN_POSITIVE);
        need(
            self.r_bytes,
            limit.r_bytes_per_sec,
            read_bytes as f64,
            f64::MIN_POSITIVE,
        );
        need(
            self.w_bytes,
            limit.w_bytes_per_sec,
            write_bytes as f64,
            f64::MIN_POSITIVE,
        );
        if wait_s > 0.0 {
            return Admit::Wait(((wait_s * 1e9) as u64).max(1_000));
        }
        if limit.ios_per_sec > 0.0 && counts_as_io {
            self.ios -= 1.0;
        }
        if limit.rw_bytes_per_sec > 0.0 {
            self.rw_bytes -= rw;
        }
        if limit.r_bytes_per_sec > 0.0 {
            self.r_bytes -= read_bytes as f64;
        }
        if limit.w_bytes_per_sec > 0.0 {
            self.w_bytes -= write_bytes as f64;
        }
        Admit::Go
    }
}

/// One VP as the control loop sees it when sharing a budget.
#[derive(Clone, Copy, Debug, Default)]
pub struct Demand {
    /// What it used last cycle, per second.
    pub used_per_sec: f64,
    /// Whether it waited for tokens last cycle (it wanted more than it had).
    pub throttled: bool,
    pub floor: f64,
    /// 0: no ceiling.
    pub ceiling: f64,
    pub weight: f64,
}

/// Headroom over last cycle's use that a satisfied VP keeps.
const HEADROOM: f64 = 1.25;
/// The smallest grant: a share of the budget that lets an idle VP start at once.
const MIN_GRANT_FRACTION: f64 = 0.01;

/// Shares `budget` (per second, > 0) among `demands`. Returns each one's allowance; their sum
/// never exceeds the budget.
pub fn share_budget(budget: f64, demands: &[Demand]) -> Vec<f64> {
    let count = demands.len();
    if count == 0 {
        return Vec::new();
    }
    let min_grant = (budget * MIN_GRANT_FRACTION)
        .max(1.0)
        .min(budget / count as f64);
    // What each wants: unbounded when throttled, else last use plus headroom.
    let wants: Vec<f64> = demands
        .iter()
        .map(|d| {
            let want = if d.throttled {
                f64::INFINITY
            } else {
                (d.used_per_sec * HEADROOM).max(min_grant)
            };
            if d.ceiling > 0.0 {
                want.min(d.ceiling)
            } else {
                want
            }
        })
        .collect();
    let mut grant = vec![0.0; count];
    let mut left = budget;
    // Floors first, as far as the budget goes.
    let floor_total: f64 = demands
        .iter()
        .zip(&wants)
        .map(|(d, &w)| d.floor.min(w))
        .sum();
    let floor_scale = if floor_total > budget {
        budget / floor_total
    } else {
        1.0
    };
    for (i, d) in demands.iter().enumerate() {
        grant[i] = d.floor.min(wants[i]) * floor_scale;
        left -= grant[i];
    }
    // Water-filling by weight over what is still wanted.
    let mut open: Vec<usize> = (0..count).filter(|&i| wants[i] > grant[i]).collect();
    while left > 1e-9 && !open.is_empty() {
        let weights: f64 = open.iter().map(|&i| demands[i].weight.max(1e-9)).sum();
        let mut satisfied = Vec::new();
        let mut given = 0.0;
        for &i in &open {
            let share = left * demands[i].weight.max(1e-9) / weights;
            let room = wants[i] - grant[i];
            if room <= share {
                grant[i] += room;
                given += room;
                satisfied.push(i);
            }
        }
        if satisfied.is_empty() {
            for &i in &open {
                grant[i] += left * demands[i].weight.max(1e-9) / weights;
            }
            left = 0.0;
            break;
        }
        left -= given;
        open.retain(|i| !satisfied.contains(i));
    }
    // Whatever is left goes to everyone by weight, up to the ceilings.
    if left > 1e-9 {
        let weights: f64 = demands.iter().map(|d| d.weight.max(1e-9)).sum();
        for (i, d) in demands.iter().enumerate() {
            let extra = left * d.weight.max(1e-9) / weights;
            grant[i] = if d.ceiling > 0.0 {
                (grant[i] + extra).min(d.ceiling)
            } else {
                grant[i] + extra
            };
        }
    }
    grant
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> Demand {
        Demand {
            used_per_sec: 1000.0,
            throttled: true,
            weight: 1.0,
            ..Demand::default()
        }
    }

    fn idle() -> Demand {
        Demand {
            weight: 1.0,
            ..Demand::default()
        }
    }

    #[test]
    fn one_busy_takes_nearly_all_three_busy_share_equally() {
        let grants = share_budget(3000.0, &[busy(), idle(), idle()]);
        assert!(grants[0] >= 2900.0, "{grants:?}");
        assert!(grants.iter().sum::<f64>() <= 3000.0 + 1e-6);
        let grants = share_budget(3000.0, &[busy(), busy(), busy()]);
        for grant in &grants {
            assert!((grant - 1000.0).abs() < 1e-6, "{grants:?}");
        }
    }

    #[test]
    fn a_light_user_keeps_headroom_and_gives_the_rest() {
        let light = Demand {
            used_per_sec: 200.0,
            weight: 1.0,
            ..Demand::default()
        };
        let grants = share_budget(3000.0, &[busy(), light]);
        assert!(grants[1] >= 250.0 && grants[1] < 400.0, "{grants:?}");
        assert!((grants[0] + grants[1] - 3000.0).abs() < 1e-6);
    }

    #[test]
    fn floors_ceilings_and_weights() {
        let capped = Demand {
            ceiling: 500.0,
            ..busy()
        };
        let grants = share_budget(3000.0, &[busy(), capped]);
        assert!((grants[1] - 500.0).abs() < 1e-6 && (grants[0] - 2500.0).abs() < 1e-6);
        let heavy = Demand {
            weight: 4.0,
            ..busy()
        };
        let grants = share_budget(5000.0, &[busy(), heavy]);
        assert!((grants[1] - 4000.0).abs() < 1e-6, "{grants:?}");
        let floored = Demand {
            floor: 800.0,
            ..busy()
        };
        let grants = share_budget(1000.0, &[busy(), busy(), busy(), floored]);
        assert!(grants[3] >= 800.0, "{grants:?}");
        assert!(grants.iter().sum::<f64>() <= 1000.0 + 1e-6);
    }

    #[test]
    fn bucket_admits_at_the_rate() {
        let limit = RateLimit {
            ios_per_sec: 2000.0,
            ..RateLimit::default()
        };
        let mut bucket = TokenBucket::default();
        let mut now = 0u64;
        let mut admitted = 0;
        // Simulate one second of a client that retries when told to wait.
        while now < 1_000_000_000 {
            match bucket.take(&limit, now, true, 4096, 0) {
                Admit::Go => admitted += 1,
                Admit::Wait(ns) => now += ns,
            }
        }
        assert!((1990..=2060).contains(&admitted), "{admitted}");
        let unlimited = RateLimit::default();
        assert_eq!(bucket.take(&unlimited, now, true, 1 << 20, 0), Admit::Go);
    }

    #[test]
    fn bytes_limit_lets_a_large_io_through_then_waits() {
        let limit = RateLimit {
            w_bytes_per_sec: 1_000_000.0,
            ..RateLimit::default()
        };
        let mut bucket = TokenBucket::default();
        assert!(matches!(bucket.take(&limit, 1, false, 0, 0), Admit::Go));
        assert!(matches!(
            bucket.take(&limit, 1_000_000, true, 0, 4 << 20),
            Admit::Go
        ));
        match bucket.take(&limit, 2_000_000, true, 0, 4096) {
            Admit::Wait(ns) => assert!(ns > 3_000_000_000, "{ns}"),
            Admit::Go => panic!("a bucket in debt must wait"),
        }
        // Reads are not held by a write limit.
        assert!(matches!(
            bucket.take(&limit, 2_000_000, true, 4096, 0),
            Admit::Go
        ));
    }
}
