//! A LUN's own I/O counters: operations, bytes and time per LUN class (read, write, flush),
//! as the block engine completes the LUN I/O it issued for hosts' requests (plain, composite
//! and mirror volumes alike). One cache-line-padded set per reactor, each written by its own
//! reactor only (a relaxed load and store, no read-modify-write, no sharing of lines between
//! cores), summed by the control thread for `bdev_get_iostat` and `/metrics`.
//!
//! What is counted: every LUN I/O the engine completes, once (a zeroing counts as a write of
//! no bytes: the LUN moved none). What is not: the provisioning thread's synchronous I/O
//! (journal, zeroing new extents, resync), which never passes a reactor. The time of a LUN I/O
//! is from its request's start on the reactor to the I/O's completion (a request's later
//! rounds include its earlier ones); its sum over the operations is kept, as SPDK's
//! `*_latency_ticks` keep, and its distribution in the Prometheus buckets themselves
//! ([`LATENCY_BUCKETS_SECONDS`]` + +Inf`: 20 counts per class, so a set stays about 600 bytes
//! even at [`MAX_REACTORS`]), found by [`latency_bucket`] from the time the engine already
//! computed — no clock read, no lock, no allocation.

use crate::blockio::BlockOp;
use crate::constants::MAX_REACTORS;
#[cfg(doc)]
use crate::metrics::snapshot::LATENCY_BUCKETS_SECONDS;
use crate::metrics::snapshot::{latency_bucket, LATENCY_HISTOGRAM_BUCKETS};
use crate::reactor_counter::bump;
use crossbeam::utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

/// Per LUN class ([`BlockOp::class_index`]): read, write, flush.
const CLASSES: usize = 3;

#[derive(Debug, Default)]
struct Counters {
    ops: [AtomicU64; CLASSES],
    bytes: [AtomicU64; CLASSES],
    latency_ns: [AtomicU64; CLASSES],
    latency_buckets: [[AtomicU64; LATENCY_HISTOGRAM_BUCKETS]; CLASSES],
}

/// A sum over the reactors, per LUN class (read, write, flush).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LunIoTotals {
    pub ops: [u64; CLASSES],
    pub bytes: [u64; CLASSES],
    pub latency_ns: [u64; CLASSES],
    /// Per class, the I/O counts in the Prometheus latency buckets (not cumulative).
    pub latency_buckets: [[u64; LATENCY_HISTOGRAM_BUCKETS]; CLASSES],
}

#[derive(Debug)]
pub struct LunIoStats {
    per_reactor: Box<[CachePadded<Counters>]>,
}

impl Default for LunIoStats {
    fn default() -> Self {
        Self {
            per_reactor: (0..MAX_REACTORS)
                .map(|_| CachePadded::new(Counters::default()))
                .collect(),
        }
    }
}

impl LunIoStats {
    /// One completed LUN I/O of class `op` on `reactor`'s own counters. Only that reactor's
    /// thread may call it with that index.
    #[inline]
    pub fn record(&self, reactor: usize, op: BlockOp, bytes: u64, latency_ns: u64) {
        let Some(c) = self.per_reactor.get(reactor) else {
            return;
        };
        let class = op.class_index();
        bump(&c.ops[class], 1);
        bump(&c.bytes[class], bytes);
        bump(&c.latency_ns[class], latency_ns);
        bump(&c.latency_buckets[class][latency_bucket(latency_ns)], 1);
    }

    pub fn totals(&self) -> LunIoTotals {
        let mut t = LunIoTotals::default();
        for c in self.per_reactor.iter() {
            for class in 0..CLASSES {
                t.ops[class] += c.ops[class].load(Ordering::Relaxed);
                t.bytes[class] += c.bytes[class].load(Ordering::Relaxed);
                t.latency_ns[class] += c.latency_ns[class].load(Ordering::Relaxed);
                for (sum, count) in t.latency_buckets[class]
                    .iter_mut()
                    .zip(&c.latency_buckets[class])
                {
                    *sum += count.load(Ordering::Relaxed);
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactors_count_apart_and_sum_by_class() {
        let stats = LunIoStats::default();
        stats.record(0, BlockOp::Read, 4096, 10);
        stats.record(3, BlockOp::Read, 8192, 30);
        stats.record(3, BlockOp::WriteZeroes, 0, 5);
        stats.record(1, BlockOp::Flush, 0, 7);
        stats.record(MAX_REACTORS, BlockOp::Read, 1, 1); // out of range: ignored
        let t = stats.totals();
        let (read, write, flush) = (
            BlockOp::Read.class_index(),
            BlockOp::Write.class_index(),
            BlockOp::Flush.class_index(),
        );
        assert_eq!(
            (t.ops[read], t.bytes[read], t.latency_ns[read]),
            (2, 12288, 40)
        );
        assert_eq!((t.ops[write], t.bytes[write]), (1, 0));
        assert_eq!(t.ops[flush], 1);
        // 10 ns and 30 ns fall in the first bucket (le 10 µs); the write and the flush too.
        assert_eq!(t.latency_buckets[read][0], 2);
        assert_eq!(t.latency_buckets[write][0], 1);
        assert_eq!(t.latency_buckets[flush].iter().sum::<u64>(), 1);
    }

    #[test]
    fn a_reactor_set_stays_small() {
        // 9 sums and 3 × 20 bucket counts: 552 bytes, padded to whole cache lines.
        assert!(std::mem::size_of::<CachePadded<Counters>>() <= 640);
    }

    #[test]
    fn each_class_keeps_its_histogram_and_count_matches_ops() {
        let stats = LunIoStats::default();
        stats.record(2, BlockOp::Write, 4096, 80_000); // le 100 µs: bucket 3
        stats.record(5, BlockOp::Write, 4096, 80_000);
        stats.record(5, BlockOp::Write, 4096, 20_000_000_000); // past 10 s: +Inf
        stats.record(2, BlockOp::Read, 4096, 1_000_000); // le 1 ms: bucket 6
        let t = stats.totals();
        let (read, write) = (BlockOp::Read.class_index(), BlockOp::Write.class_index());
        assert_eq!(t.latency_buckets[write][3], 2);
        assert_eq!(t.latency_buckets[write][LATENCY_HISTOGRAM_BUCKETS - 1], 1);
        assert_eq!(t.latency_buckets[read][6], 1);
        for class in 0..CLASSES {
            assert_eq!(t.latency_buckets[class].iter().sum::<u64>(), t.ops[class]);
        }
    }
}
