//! Statistics as the management interface shows them: one control-loop cycle's rates and
//! percentiles, and totals since start.

use crate::blockio::BlockOp;
use crate::domain::stats::VpTotals;
use serde_json::{json, Map, Value};

/// What one cycle saw, kept for `*_get_stats` and `sds top`.
#[derive(Clone, Debug, Default)]
pub struct CycleStats {
    pub delta: VpTotals,
}

impl CycleStats {
    pub fn to_json(&self, cycle_s: f64) -> Value {
        let per_sec = |n: u64| {
            if cycle_s > 0.0 {
                n as f64 / cycle_s
            } else {
                0.0
            }
        };
        let delta = &self.delta;
        let latency = delta.latency_us();
        json!({
            "iops": per_sec(delta.all_ops()).round(),
            "read_iops": per_sec(delta.ops[0]).round(),
            "write_iops": per_sec(delta.ops[1]).round(),
            // MiB/s, the unit of the QoS limits (as in SPDK).
            "mbytes_per_sec": per_sec(delta.data_bytes()) / (1024.0 * 1024.0),
            "latency_us": latency.map(|(p50, p99, p999)| json!({"p50": p50, "p99": p99, "p99_9": p999})),
            "throttled_ios": delta.throttled_ops,
            "throttled_ms": delta.throttled_ns as f64 / 1e6,
            "errors": delta.errors,
        })
    }
}

/// Totals since start: operations and bytes by kind, errors, throttling, percentiles.
pub fn totals_json(totals: &VpTotals) -> Value {
    let mut ops = Map::new();
    let mut bytes = Map::new();
    for op in BlockOp::ALL {
        ops.insert(op.as_str().into(), totals.ops[op.index()].into());
        bytes.insert(op.as_str().into(), totals.bytes[op.index()].into());
    }
    let latency = totals.latency_us();
    json!({
        "ops": ops,
        "bytes": bytes,
        "errors": totals.errors,
        "throttled_ios": totals.throttled_ops,
        "throttled_ms": totals.throttled_ns as f64 / 1e6,
        "latency_us": latency.map(|(p50, p99, p999)| json!({"p50": p50, "p99": p99, "p99_9": p999})),
    })
}
