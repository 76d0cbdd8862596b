//! What one gather saw: plain numbers, filled by the control thread (`control::metrics`),
//! read by the HTTP thread. Nothing here points into the live objects.

use crate::blockio::BlockOp;
use crate::domain::stats::{bucket_value_ns, VpTotals};
use arc_swap::ArcSwapOption;
use std::sync::Arc;

/// Upper bounds of the latency histogram buckets, in seconds (the last, +Inf, is implied):
/// 10 µs to 10 s, three per decade, so Grafana's `histogram_quantile` has the resolution a
/// storage latency needs from NVMe to a struggling disk.
pub const LATENCY_BUCKETS_SECONDS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counts in a histogram: one per bound, and +Inf.
pub const LATENCY_HISTOGRAM_BUCKETS: usize = LATENCY_BUCKETS_SECONDS.len() + 1;

/// [`LATENCY_BUCKETS_SECONDS`] in nanoseconds, for the data path's integer compare (rounded
/// to the nearest nanosecond: the decimal bounds are not exact in binary).
pub const LATENCY_BOUNDS_NS: [u64; LATENCY_BUCKETS_SECONDS.len()] = {
    let mut bounds = [0; LATENCY_BUCKETS_SECONDS.len()];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = (LATENCY_BUCKETS_SECONDS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    bounds
};

/// The Prometheus bucket of a latency: the first whose bound is at least it (`le` is
/// inclusive), or the last, +Inf. A binary search over the 19 bounds: five compares, no
/// clock, no float, cheap enough for every LUN I/O's completion.
#[inline]
pub fn latency_bucket(latency_ns: u64) -> usize {
    LATENCY_BOUNDS_NS.partition_point(|&bound| bound < latency_ns)
}

/// A latency histogram in Prometheus buckets: per-bucket (not cumulative) counts, the last
/// one +Inf, with the sum of the samples in seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyHistogram {
    pub sum_seconds: f64,
    pub count: u64,
    /// `LATENCY_BUCKETS_SECONDS.len() + 1` counts.
    pub buckets: Vec<u64>,
}

/// No samples: every bucket there, at zero (a histogram without its +Inf bucket is invalid).
impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            sum_seconds: 0.0,
            count: 0,
            buckets: vec![0; LATENCY_HISTOGRAM_BUCKETS],
        }
    }
}

impl LatencyHistogram {
    /// Folds the data path's log-linear buckets (8 per power of two) into the Prometheus
    /// buckets. A sample counts at its bucket's middle, the value the percentiles of
    /// `vpath_get_stats` report too (within 1/16 of the true latency).
    pub fn from_buckets(latency: &[u64]) -> Self {
        let mut histogram = Self::default();
        for (bucket, &count) in latency.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let seconds = bucket_value_ns(bucket) as f64 / 1e9;
            let index = LATENCY_BUCKETS_SECONDS
                .iter()
                .position(|&le| seconds <= le)
                .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
            histogram.buckets[index] += count;
            histogram.count += count;
            histogram.sum_seconds += seconds * count as f64;
        }
        histogram
    }

    /// Prometheus bucket counts as they are, with the exact sum of the samples.
    pub fn from_counts(counts: &[u64; LATENCY_HISTOGRAM_BUCKETS], sum_seconds: f64) -> Self {
        Self {
            sum_seconds,
            // The count is the buckets' sum, so +Inf always equals it.
            count: counts.iter().sum(),
            buckets: counts.to_vec(),
        }
    }

    /// Adds another histogram's samples (a volume's is the sum of its VPs').
    pub fn add(&mut self, other: &LatencyHistogram) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }
}

/// Counters by operation kind, in [`BlockOp::ALL`] order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpCounters {
    pub ops: [u64; BlockOp::COUNT],
    pub bytes: [u64; BlockOp::COUNT],
}

/// What the VP counters hold (a VP's, or a domain's sum): operations, bytes, errors, QoS
/// throttling and the latency histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PathCounters {
    pub io: OpCounters,
    pub errors: u64,
    pub throttled_ops: u64,
    pub throttled_seconds: f64,
    pub latency: LatencyHistogram,
}

impl PathCounters {
    pub fn from_totals(totals: &VpTotals) -> Self {
        Self {
            io: OpCounters {
                ops: totals.ops,
                bytes: totals.bytes,
            },
            errors: totals.errors,
            throttled_ops: totals.throttled_ops,
            throttled_seconds: totals.throttled_ns as f64 / 1e9,
            latency: LatencyHistogram::from_buckets(&totals.latency[..]),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct VolumeRow {
    pub name: String,
    pub pool: String,
    pub io: OpCounters,
    pub errors: u64,
    /// Time spent in reads, writes and unmaps, in seconds (the volume's own sums).
    pub time_seconds: [f64; BlockOp::COUNT],
    /// The sum of its VPs' histograms: the I/O of VPs whose domain records latency.
    pub latency: LatencyHistogram,
    pub size_bytes: u64,
    pub allocated_bytes: u64,
}

#[derive(Clone, Debug, Default)]
pub struct VpathRow {
    pub id: u64,
    pub host: String,
    pub volume: String,
    pub domain: String,
    pub counters: PathCounters,
    pub sessions: u64,
}

#[derive(Clone, Debug, Default)]
pub struct DomainRow {
    pub name: String,
    pub counters: PathCounters,
}

#[derive(Clone, Debug, Default)]
pub struct LunRow {
    pub name: String,
    pub kind: String,
    pub pool: String,
    pub size_bytes: u64,
    pub failed: bool,
    /// Errors the LUN returned: read, write, flush.
    pub errors: [u64; 3],
    /// LUN I/O the block engine completed on it, per class (read, write, flush): operations,
    /// bytes moved, and a histogram of their times (request start to the LUN I/O's
    /// completion).
    pub ops: [u64; 3],
    pub bytes: [u64; 3],
    pub latency: [LatencyHistogram; 3],
    /// A LUN of another array (iSCSI, NBD): its links' numbers.
    pub remote: Option<RemoteRow>,
}

/// A remote LUN's links, as `lun_get_luns` shows them (`backend::remote::link_stats`).
#[derive(Clone, Debug, Default)]
pub struct RemoteRow {
    /// The worst link's: connected, connecting, reconnecting or failed.
    pub state: String,
    pub links: u64,
    pub links_connected: u64,
    pub rtt_seconds: f64,
    pub reconnects: u64,
    pub timeouts: u64,
    pub in_flight: u64,
    /// The array's size when it differs from the LUN's.
    pub array_size_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct PoolRow {
    pub name: String,
    pub capacity_bytes: u64,
    pub allocated_bytes: u64,
    pub provisioned_bytes: u64,
    pub threshold_percent: u8,
    pub journal_commits: u64,
    pub journal_checkpoints: u64,
    /// What opening the pool replayed from its journals (blocks and entries, over its LUNs).
    pub replayed_blocks: u64,
    pub replayed_entries: u64,
}

/// A mirror as `mirror_get_mirrors` describes it.
#[derive(Clone, Debug, Default)]
pub struct MirrorRow {
    pub name: String,
    /// healthy, resyncing or degraded.
    pub state: String,
    /// Each leg's volume and state (healthy, resyncing, degraded, failed, absent).
    pub legs: Vec<(String, String)>,
    pub dirty_bytes: u64,
    pub resync_running: bool,
    pub resync_done_bytes: u64,
    pub resync_total_bytes: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ReactorRow {
    pub index: usize,
    pub core: usize,
    pub busy_seconds: f64,
    pub idle_seconds: f64,
    /// Busy time over busy and idle time since the previous gather (0 before the second).
    pub busy_ratio: f64,
    pub connections: u64,
}

/// One gather: the server's identity and every object's numbers.
#[derive(Clone, Debug, Default)]
pub struct MetricsSnapshot {
    pub version: String,
    pub revision: String,
    pub hostname: String,
    pub iscsi_target: String,
    pub nvmf_nqn_base: String,
    pub uptime_seconds: f64,
    pub cycle_seconds: f64,
    /// Live iSCSI sessions (discovery ones too) and NVMe/TCP controllers.
    pub iscsi_sessions: u64,
    pub nvmf_controllers: u64,
    pub volumes: Vec<VolumeRow>,
    pub vpaths: Vec<VpathRow>,
    pub domains: Vec<DomainRow>,
    pub luns: Vec<LunRow>,
    pub pools: Vec<PoolRow>,
    pub mirrors: Vec<MirrorRow>,
    pub reactors: Vec<ReactorRow>,
}

/// The last snapshot, shared by the control thread (writer) and the HTTP thread (reader):
/// one atomic pointer swap per gather, no lock.
#[derive(Default)]
pub struct MetricsShared {
    last: ArcSwapOption<MetricsSnapshot>,
}

impl MetricsShared {
    pub fn store(&self, snapshot: MetricsSnapshot) {
        self.last.store(Some(Arc::new(snapshot)));
    }

    pub fn load(&self) -> Option<Arc<MetricsSnapshot>> {
        self.last.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::stats::{bucket_of, LATENCY_BUCKETS};

    #[test]
    fn latencies_fall_in_the_bucket_that_covers_them() {
        let mut latency = vec![0u64; LATENCY_BUCKETS];
        latency[bucket_of(30_000)] += 2; // 30 µs
        latency[bucket_of(3_000_000)] += 1; // 3 ms
        latency[bucket_of(60_000_000_000)] += 1; // 60 s: past the last bound
        let histogram = LatencyHistogram::from_buckets(&latency);
        assert_eq!(histogram.count, 4);
        let index = |le: f64| {
            LATENCY_BUCKETS_SECONDS
                .iter()
                .position(|&b| b == le)
                .unwrap()
        };
        assert_eq!(histogram.buckets[index(0.000_05)], 2);
        assert_eq!(histogram.buckets[index(0.005)], 1);
        assert_eq!(histogram.buckets[LATENCY_BUCKETS_SECONDS.len()], 1);
        assert_eq!(histogram.buckets.iter().sum::<u64>(), 4);
        // Each sample counts within 1/16 of its value.
        let exact = 2.0 * 30e-6 + 3e-3 + 60.0;
        assert!((histogram.sum_seconds - exact).abs() < exact / 16.0);
    }

    #[test]
    fn a_latency_maps_to_the_first_bound_that_covers_it() {
        assert_eq!(LATENCY_BOUNDS_NS[0], 10_000);
        assert_eq!(LATENCY_BOUNDS_NS[1], 25_000);
        assert_eq!(LATENCY_BOUNDS_NS[18], 10_000_000_000);
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(10_000), 0); // le is inclusive
        assert_eq!(latency_bucket(10_001), 1);
        assert_eq!(latency_bucket(3_000_000), 8); // 3 ms: le 5 ms
        assert_eq!(latency_bucket(10_000_000_000), 18);
        assert_eq!(
            latency_bucket(10_000_000_001),
            LATENCY_BUCKETS_SECONDS.len()
        );
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS_SECONDS.len());
        // Against the float definition, around every bound.
        for (i, &le) in LATENCY_BUCKETS_SECONDS.iter().enumerate() {
            let ns = LATENCY_BOUNDS_NS[i];
            assert!((ns as f64 / 1e9 - le).abs() < 1e-12);
            for probe in [ns - 1, ns, ns + 1] {
                let expected = LATENCY_BUCKETS_SECONDS
                    .iter()
                    .position(|&b| probe as f64 / 1e9 <= b + 1e-15)
                    .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
                assert_eq!(latency_bucket(probe), expected, "{probe} ns");
            }
        }
    }

    #[test]
    fn histograms_add_bucket_by_bucket() {
        let mut counts = [0u64; LATENCY_HISTOGRAM_BUCKETS];
        counts[2] = 3;
        counts[LATENCY_HISTOGRAM_BUCKETS - 1] = 1;
        let a = LatencyHistogram::from_counts(&counts, 1.5);
        assert_eq!(a.count, 4);
        let mut sum = LatencyHistogram::default();
        sum.add(&a);
        sum.add(&a);
        assert_eq!(sum.count, 8);
        assert_eq!(sum.buckets[2], 6);
        assert_eq!(sum.buckets.len(), LATENCY_HISTOGRAM_BUCKETS);
        assert!((sum.sum_seconds - 3.0).abs() < 1e-12);
    }
}
