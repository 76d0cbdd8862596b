//! Per-volume I/O counters, one cache-line-padded set per reactor: each reactor writes only its
//! own set (no shared cache line, no lock) and readers add them up.

use crate::blockio::BlockOp;
use crate::constants::MAX_REACTORS;
use crate::reactor_counter::bump;
use crossbeam::utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct IoCounters {
    pub read_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_latency_ns: AtomicU64,
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
    pub write_latency_ns: AtomicU64,
    pub unmap_ops: AtomicU64,
    pub unmap_bytes: AtomicU64,
    pub unmap_latency_ns: AtomicU64,
    pub zero_ops: AtomicU64,
    pub zero_bytes: AtomicU64,
    pub flush_ops: AtomicU64,
    pub errors: AtomicU64,
    /// Failed requests per [`BlockOp`] (their sum is `errors`), bumped on the error path only.
    pub kind_errors: [AtomicU64; BlockOp::COUNT],
}

/// A sum of every reactor's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoTotals {
    pub read_ops: u64,
    pub read_bytes: u64,
    pub read_latency_ns: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    pub write_latency_ns: u64,
    pub unmap_ops: u64,
    pub unmap_bytes: u64,
    pub unmap_latency_ns: u64,
    pub zero_ops: u64,
    pub zero_bytes: u64,
    pub flush_ops: u64,
    pub errors: u64,
    /// Failed requests, indexed by [`BlockOp::index`].
    pub kind_errors: [u64; BlockOp::COUNT],
}

pub struct VolumeStats {
    per_reactor: Box<[CachePadded<IoCounters>]>,
}

impl Default for VolumeStats {
    fn default() -> Self {
        Self {
            per_reactor: (0..MAX_REACTORS)
                .map(|_| CachePadded::new(IoCounters::default()))
                .collect(),
        }
    }
}

impl VolumeStats {
    /// Accounts one completed I/O on `reactor`'s own counters.
    #[inline]
    pub fn record(&self, reactor: usize, op: BlockOp, bytes: u64, latency_ns: u64, failed: bool) {
        let c = &self.per_reactor[reactor];
        if failed {
            bump(&c.errors, 1);
            bump(&c.kind_errors[op.index()], 1);
            return;
        }
        match op {
            BlockOp::Read => {
                bump(&c.read_ops, 1);
                bump(&c.read_bytes, bytes);
                bump(&c.read_latency_ns, latency_ns);
            }
            BlockOp::Write => {
                bump(&c.write_ops, 1);
                bump(&c.write_bytes, bytes);
                bump(&c.write_latency_ns, latency_ns);
            }
            BlockOp::Trim => {
                bump(&c.unmap_ops, 1);
                bump(&c.unmap_bytes, bytes);
                bump(&c.unmap_latency_ns, latency_ns);
            }
            BlockOp::WriteZeroes => {
                bump(&c.zero_ops, 1);
                bump(&c.zero_bytes, bytes);
            }
            BlockOp::Flush => bump(&c.flush_ops, 1),
        }
    }

    pub fn totals(&self) -> IoTotals {
        let mut t = IoTotals::default();
        for c in self.per_reactor.iter() {
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            t.read_ops += get(&c.read_ops);
            t.read_bytes += get(&c.read_bytes);
            t.read_latency_ns += get(&c.read_latency_ns);
            t.write_ops += get(&c.write_ops);
            t.write_bytes += get(&c.write_bytes);
            t.write_latency_ns += get(&c.write_latency_ns);
            t.unmap_ops += get(&c.unmap_ops);
            t.unmap_bytes += get(&c.unmap_bytes);
            t.unmap_latency_ns += get(&c.unmap_latency_ns);
            t.zero_ops += get(&c.zero_ops);
            t.zero_bytes += get(&c.zero_bytes);
            t.flush_ops += get(&c.flush_ops);
            t.errors += get(&c.errors);
            for (total, counter) in t.kind_errors.iter_mut().zip(&c.kind_errors) {
                *total += get(counter);
            }
        }
        t
    }
}
