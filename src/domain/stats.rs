//! Per-VP I/O accounting on the data path: one cache-line-padded set of counters per reactor,
//! written only by that reactor (a plain load and store, no read-modify-write contention), read
//! and summed by the control thread. Latency goes into a fixed log-linear histogram of atomic
//! buckets (8 per power of two); the control thread turns bucket counts into percentiles with
//! `hdrhistogram`.

use crate::blockio::BlockOp;
use crate::reactor_counter::bump;
use crossbeam::utils::CachePadded;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Operations counted per kind, in [`BlockOp::index`] order.
pub const OP_KINDS: usize = BlockOp::COUNT;

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 3;
/// Latencies below 2^MIN_BITS ns (1 µs) share the first buckets.
const MIN_BITS: u32 = 10;
/// Powers of two covered above 1 µs: up to 2^46 ns (about 19 hours).
const OCTAVES: usize = 36;
pub const LATENCY_BUCKETS: usize = (OCTAVES + 1) << SUB_BITS;

/// The bucket of a latency in nanoseconds.
#[inline]
pub fn bucket_of(latency_ns: u64) -> usize {
    if latency_ns < (1 << MIN_BITS) {
        return (latency_ns >> (MIN_BITS - SUB_BITS)) as usize;
    }
    let top = 63 - latency_ns.leading_zeros();
    let octave = (top - MIN_BITS + 1) as usize;
    let sub = ((latency_ns >> (top - SUB_BITS)) & ((1 << SUB_BITS) - 1)) as usize;
    ((octave << SUB_BITS) | sub).min(LATENCY_BUCKETS - 1)
}

/// The middle of a bucket, in nanoseconds: what a percentile reports.
pub fn bucket_value_ns(bucket: usize) -> u64 {
    let octave = bucket >> SUB_BITS;
    let sub = (bucket & ((1 << SUB_BITS) - 1)) as u64;
    if octave == 0 {
        let width = 1u64 << (MIN_BITS - SUB_BITS);
        return sub * width + width / 2;
    }
    let top = octave as u32 + MIN_BITS - 1;
    let width = 1u64 << (top - SUB_BITS);
    (1u64 << top) + sub * width + width / 2
}

/// One reactor's counters for one VP.
pub struct VpCounters {
    pub ops: [AtomicU64; OP_KINDS],
    pub bytes: [AtomicU64; OP_KINDS],
    pub errors: AtomicU64,
    /// I/Os that had to wait for QoS tokens, and how long they waited in all.
    pub throttled_ops: AtomicU64,
    pub throttled_ns: AtomicU64,
    pub latency: [AtomicU64; LATENCY_BUCKETS],
    /// Sessions of this VP the reactor serves now.
    pub sessions: AtomicU32,
}

impl Default for VpCounters {
    fn default() -> Self {
        Self {
            ops: Default::default(),
            bytes: Default::default(),
            errors: AtomicU64::new(0),
            throttled_ops: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            sessions: AtomicU32::new(0),
        }
    }
}

impl VpCounters {
    /// Accounts one finished I/O. Called only by the reactor that owns this set.
    #[inline]
    pub fn record(&self, op: BlockOp, bytes: u64, latency_ns: Option<u64>, failed: bool) {
        bump(&self.ops[op.index()], 1);
        bump(&self.bytes[op.index()], bytes);
        if failed {
            bump(&self.errors, 1);
        }
        if let Some(latency_ns) = latency_ns {
            bump(&self.latency[bucket_of(latency_ns)], 1);
        }
    }

    /// Accounts an I/O that waited `waited_ns` for QoS tokens.
    #[inline]
    pub fn record_throttled(&self, waited_ns: u64) {
        bump(&self.throttled_ops, 1);
        bump(&self.throttled_ns, waited_ns);
    }
}

/// Totals over reactors (or a difference of two totals).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpTotals {
    pub ops: [u64; OP_KINDS],
    pub bytes: [u64; OP_KINDS],
    pub errors: u64,
    pub throttled_ops: u64,
    pub throttled_ns: u64,
    pub latency: Box<[u64; LATENCY_BUCKETS]>,
}

impl Default for VpTotals {
    fn default() -> Self {
        Self {
            ops: [0; OP_KINDS],
            bytes: [0; OP_KINDS],
            errors: 0,
            throttled_ops: 0,
            throttled_ns: 0,
            latency: Box::new([0; LATENCY_BUCKETS]),
        }
    }
}

impl VpTotals {
    pub fn add_counters(&mut self, counters: &VpCounters) {
        for kind in 0..OP_KINDS {
            self.ops[kind] += counters.ops[kind].load(Ordering::Relaxed);
            self.bytes[kind] += counters.bytes[kind].load(Ordering::Relaxed);
        }
        self.errors += counters.errors.load(Ordering::Relaxed);
        self.throttled_ops += counters.throttled_ops.load(Ordering::Relaxed);
        self.throttled_ns += counters.throttled_ns.load(Ordering::Relaxed);
        for (total, bucket) in self.latency.iter_mut().zip(&counters.latency) {
            *total += bucket.load(Ordering::Relaxed);
        }
    }

    pub fn add(&mut self, other: &VpTotals) {
        for kind in 0..OP_KINDS {
            self.ops[kind] += other.ops[kind];
            self.bytes[kind] += other.bytes[kind];
        }
        self.errors += other.errors;
        self.throttled_ops += other.throttled_ops;
        self.throttled_ns += other.throttled_ns;
        for (total, bucket) in self.latency.iter_mut().zip(other.latency.iter()) {
            *total += bucket;
        }
    }

    /// `self - earlier`, counter by counter.
    pub fn since(&self, earlier: &VpTotals) -> VpTotals {
        let mut delta = VpTotals::default();
        for kind in 0..OP_KINDS {
            delta.ops[kind] = self.ops[kind].saturating_sub(earlier.ops[kind]);
            delta.bytes[kind] = self.bytes[kind].saturating_sub(earlier.bytes[kind]);
        }
        delta.errors = self.errors.saturating_sub(earlier.errors);
        delta.throttled_ops = self.throttled_ops.saturating_sub(earlier.throttled_ops);
        delta.throttled_ns = self.throttled_ns.saturating_sub(earlier.throttled_ns);
        for (bucket, (now, then)) in delta
            .latency
            .iter_mut()
            .zip(self.latency.iter().zip(earlier.latency.iter()))
        {
            *bucket = now.saturating_sub(*then);
        }
        delta
    }

    /// I/Os that count against an IOPS limit: everything but flushes.
    pub fn limited_ops(&self) -> u64 {
        self.ops[BlockOp::Read.index()]
            + self.ops[BlockOp::Write.index()]
            + self.ops[BlockOp::Trim.index()]
            + self.ops[BlockOp::WriteZeroes.index()]
    }

    pub fn all_ops(&self) -> u64 {
        self.ops.iter().sum()
    }

    pub fn data_bytes(&self) -> u64 {
        self.bytes[BlockOp::Read.index()] + self.bytes[BlockOp::Write.index()]
    }

    /// Latency percentiles in microseconds (p50, p99, p99.9); `None` with no sample.
    pub fn latency_us(&self) -> Option<(f64, f64, f64)> {
        let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1 << 46, 2).ok()?;
        for (bucket, &count) in self.latency.iter().enumerate() {
            if count > 0 {
                histogram
                    .record_n(bucket_value_ns(bucket).max(1), count)
                    .ok()?;
            }
        }
        if histogram.is_empty() {
            return None;
        }
        let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Some((us(0.5), us(0.99), us(0.999)))
    }
}

/// A VP's counters: one padded set per reactor.
pub struct VpathStats {
    per_reactor: Box<[CachePadded<VpCounters>]>,
}

impl VpathStats {
    pub fn new(reactors: usize) -> Self {
        Self {
            per_reactor: (0..reactors.max(1))
                .map(|_| CachePadded::new(VpCounters::default()))
                .collect(),
        }
    }

    /// The counters reactor `index` writes.
    #[inline]
    pub fn reactor(&self, index: usize) -> &VpCounters {
        &self.per_reactor[index.min(self.per_reactor.len() - 1)]
    }

    pub fn reactors(&self) -> usize {
        self.per_reactor.len()
    }

    pub fn totals(&self) -> VpTotals {
        let mut totals = VpTotals::default();
        for counters in self.per_reactor.iter() {
            totals.add_counters(counters);
        }
        totals
    }

    /// Each reactor's limited I/O count so far, for splitting a VP's budget among reactors.
    pub fn reactor_ops(&self, index: usize) -> u64 {
        let counters = self.reactor(index);
        [
            BlockOp::Read,
            BlockOp::Write,
            BlockOp::Trim,
            BlockOp::WriteZeroes,
        ]
        .iter()
        .map(|&k| counters.ops[k as usize].load(Ordering::Relaxed))
        .sum()
    }

    pub fn reactor_sessions(&self, index: usize) -> u32 {
        self.reactor(index).sessions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for value in [
            1u64,
            200,
            1023,
            1024,
            1500,
            50_000,
            999_999,
            1 << 30,
            u64::MAX,
        ] {
            let bucket = bucket_of(value);
            assert!(bucket >= last, "{value}");
            last = bucket;
        }
        for value in [1500u64, 20_000, 777_777, 5_000_000_000] {
            let mid = bucket_value_ns(bucket_of(value)) as f64;
            let error = (mid - value as f64).abs() / value as f64;
            assert!(error < 0.07, "{value}: {mid}");
        }
    }

    #[test]
    fn totals_percentiles_and_deltas() {
        let stats = VpathStats::new(2);
        for i in 0..1000u64 {
            let reactor = (i % 2) as usize;
            let latency = if i < 990 { 100_000 } else { 5_000_000 };
            stats
                .reactor(reactor)
                .record(BlockOp::Read, 4096, Some(latency), false);
        }
        stats.reactor(1).record(BlockOp::Write, 512, None, true);
        let first = stats.totals();
        assert_eq!(first.ops[BlockOp::Read.index()], 1000);
        assert_eq!(first.data_bytes(), 1000 * 4096 + 512);
        assert_eq!(first.errors, 1);
        let (p50, p99, p999) = first.latency_us().expect("samples");
        assert!((95.0..106.0).contains(&p50), "{p50}");
        assert!(p99 < 110.0, "{p99}");
        assert!((4500.0..5500.0).contains(&p999), "{p999}");
        stats
            .reactor(0)
            .record(BlockOp::Flush, 0, Some(1000), false);
        let delta = stats.totals().since(&first);
        assert_eq!(delta.all_ops(), 1);
        assert_eq!(delta.limited_ops(), 0);
    }
}
