//! The control loop's side of `/metrics`: every [`METRICS_GATHER_INTERVAL_MS`] the control
//! cycle copies the counters it already reads (the VP totals it gathered for QoS, the
//! volumes' and LUNs' counters `bdev_get_iostat` reads, pool space and journal counters,
//! reactor busy time) into a [`MetricsSnapshot`] and swaps it in for the HTTP thread
//! (`crate::metrics`). Nothing here runs unless `--metrics-listen` is given.

use super::Control;
use crate::blockio::BlockOp;
use crate::constants::METRICS_GATHER_INTERVAL_MS;
use crate::metrics::snapshot::{
    DomainRow, LatencyHistogram, LunRow, MirrorRow, OpCounters, PathCounters, PoolRow, ReactorRow,
    RemoteRow, VolumeRow, VpathRow,
};
use crate::metrics::{MetricsShared, MetricsSnapshot};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where gathers go, when the last was, and each reactor's busy and idle microseconds then
/// (for the busy ratio over the interval).
pub struct MetricsGatherer {
    shared: Arc<MetricsShared>,
    last_at: Option<Instant>,
    reactor_previous_us: Vec<(u64, u64)>,
}

impl MetricsGatherer {
    pub fn new(shared: Arc<MetricsShared>) -> Self {
        Self {
            shared,
            last_at: None,
            reactor_previous_us: Vec::new(),
        }
    }
}

impl Control {
    /// Called by every control cycle: gathers when the interval has passed.
    pub(super) fn gather_metrics_if_due(&mut self) {
        let Some(mut gatherer) = self.metrics.take() else {
            return;
        };
        let due = gatherer.last_at.map_or(true, |at| {
            at.elapsed() >= Duration::from_millis(METRICS_GATHER_INTERVAL_MS)
        });
        if due {
            gatherer.last_at = Some(Instant::now());
            let snapshot = self.metrics_snapshot(&mut gatherer.reactor_previous_us);
            gatherer.shared.store(snapshot);
        }
        self.metrics = Some(gatherer);
    }

    fn metrics_snapshot(&self, reactor_previous_us: &mut Vec<(u64, u64)>) -> MetricsSnapshot {
        let mut volumes: Vec<VolumeRow> = self
            .volumes
            .values()
            .map(|entry| {
                let t = entry.volume.stats.totals();
                let mut io = OpCounters::default();
                let mut time_seconds = [0.0; BlockOp::COUNT];
                let mut set = |op: BlockOp, ops: u64, bytes: u64, latency_ns: u64| {
                    io.ops[op.index()] = ops;
                    io.bytes[op.index()] = bytes;
                    time_seconds[op.index()] = latency_ns as f64 / 1e9;
                };
                set(BlockOp::Read, t.read_ops, t.read_bytes, t.read_latency_ns);
                set(
                    BlockOp::Write,
                    t.write_ops,
                    t.write_bytes,
                    t.write_latency_ns,
                );
                set(
                    BlockOp::Trim,
                    t.unmap_ops,
                    t.unmap_bytes,
                    t.unmap_latency_ns,
                );
                set(BlockOp::WriteZeroes, t.zero_ops, t.zero_bytes, 0);
                set(BlockOp::Flush, t.flush_ops, 0, 0);
                VolumeRow {
                    name: entry.record.name.clone(),
                    pool: entry.record.pool.clone(),
                    io,
                    errors: t.errors,
                    time_seconds,
                    latency: LatencyHistogram::default(),
                    size_bytes: entry.volume.size_bytes(),
                    allocated_bytes: entry.volume.allocated_extents() * entry.volume.extent_bytes(),
                }
            })
            .collect();
        // The VP totals as the last cycle gathered them (`previous`): no second read of the
        // reactors' counters.
        let vpaths: Vec<VpathRow> = self
            .vpaths
            .values()
            .map(|entry| VpathRow {
                id: entry.record.id,
                host: entry.record.host.clone(),
                volume: entry.record.volume.clone(),
                domain: entry.record.domain.clone(),
                counters: PathCounters::from_totals(&entry.previous),
                sessions: (0..entry.vpath.stats.reactors())
                    .map(|r| u64::from(entry.vpath.stats.reactor_sessions(r)))
                    .sum(),
            })
            .collect();
        // A volume's histogram: the sum of its VPs' (the volume itself keeps only sums, and
        // this costs the I/O path nothing).
        let volume_index: std::collections::HashMap<String, usize> = volumes
            .iter()
            .enumerate()
            .map(|(index, v)| (v.name.clone(), index))
            .collect();
        for vp in &vpaths {
            if let Some(&index) = volume_index.get(&vp.volume) {
                volumes[index].latency.add(&vp.counters.latency);
            }
        }
        let domains = self
            .domains
            .values()
            .map(|entry| DomainRow {
                name: entry.record.name.clone(),
                counters: PathCounters::from_totals(&entry.totals),
            })
            .collect();
        let luns = self
            .luns
            .values()
            .map(|entry| {
                let errors = entry.lun.health().map(|h| h.errors()).unwrap_or_default();
                let io = entry
                    .lun
                    .health()
                    .map(|h| h.io.totals())
                    .unwrap_or_default();
                LunRow {
                    name: entry.record.name.clone(),
                    kind: entry.record.kind.as_str().to_string(),
                    pool: entry.pool.clone().unwrap_or_default(),
                    size_bytes: entry.record.size,
                    failed: super::luns::failure(&self.luns, entry).is_some(),
                    errors: [errors.read, errors.write, errors.flush],
                    ops: io.ops,
                    bytes: io.bytes,
                    latency: std::array::from_fn(|class| {
                        LatencyHistogram::from_counts(
                            &io.latency_buckets[class],
                            io.latency_ns[class] as f64 / 1e9,
                        )
                    }),
                    remote: entry.lun.link_stats().map(|stats| {
                        let link = stats.snapshot();
                        RemoteRow {
                            state: link.state.as_str().to_string(),
                            links: link.links as u64,
                            links_connected: link.links_connected as u64,
                            rtt_seconds: link.rtt_us as f64 / 1e6,
                            reconnects: link.reconnects,
                            timeouts: link.timeouts,
                            in_flight: link.in_flight,
                            array_size_bytes: link.array_size,
                        }
                    }),
                }
            })
            .collect();
        let pools = self
            .pools
            .values()
            .map(|entry| {
                let provisioned = self
                    .volumes
                    .values()
                    .filter(|v| v.record.pool == entry.record.name)
                    .map(|v| v.volume.size_bytes())
                    .sum();
                let space = super::pools::space_of(entry, provisioned);
                let mut row = PoolRow {
                    name: entry.record.name.clone(),
                    capacity_bytes: entry.pool.total_extents() * entry.pool.extent_bytes,
                    allocated_bytes: space.allocated_bytes,
                    provisioned_bytes: provisioned,
                    threshold_percent: entry.record.threshold,
                    ..Default::default()
                };
                for member in &entry.pool.luns {
                    let stats = member.journal.stats();
                    row.journal_commits += stats.commits;
                    row.journal_checkpoints += stats.checkpoints;
                    if let Some(recovery) = &member.recovery {
                        row.replayed_blocks += recovery.replayed_blocks;
                        row.replayed_entries += recovery.replayed_entries;
                    }
                }
                row
            })
            .collect();
        // As mirror_get_mirrors describes them: one place decides a mirror's state.
        let mirrors = self
            .mirrors
            .values()
            .map(|entry| {
                let described = super::mirrors::describe(entry);
                let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                let number = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
                MirrorRow {
                    name: entry.record.name.clone(),
                    state: text(&described["state"]),
                    legs: described["legs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|leg| (text(&leg["volume"]), text(&leg["state"])))
                        .collect(),
                    dirty_bytes: number(&described["dirty_bytes"]),
                    resync_running: described["resync"]["running"].as_bool().unwrap_or(false),
                    resync_done_bytes: number(&described["resync"]["done_bytes"]),
                    resync_total_bytes: number(&described["resync"]["total_bytes"]),
                }
            })
            .collect();
        reactor_previous_us.resize(self.reactors.len(), (0, 0));
        let reactors = self
            .reactors
            .iter()
            .zip(reactor_previous_us.iter_mut())
            .map(|(reactor, previous)| {
                let busy_us = reactor.busy_us.load(Ordering::Relaxed);
                let idle_us = reactor.idle_us.load(Ordering::Relaxed);
                let busy = busy_us.saturating_sub(previous.0);
                let all = busy + idle_us.saturating_sub(previous.1);
                *previous = (busy_us, idle_us);
                ReactorRow {
                    index: reactor.index,
                    core: reactor.core,
                    busy_seconds: busy_us as f64 / 1e6,
                    idle_seconds: idle_us as f64 / 1e6,
                    busy_ratio: if all == 0 {
                        0.0
                    } else {
                        busy as f64 / all as f64
                    },
                    connections: reactor.sessions.load(Ordering::Relaxed) as u64,
                }
            })
            .collect();
        MetricsSnapshot {
            version: crate::version::VERSION.to_string(),
            revision: crate::version::GIT_REVISION.to_string(),
            hostname: hostname(),
            iscsi_target: self
                .iscsi
                .as_ref()
                .map(|t| t.name.clone())
                .unwrap_or_default(),
            nvmf_nqn_base: self
                .nvmf
                .as_ref()
                .map(|t| t.nqn_base.clone())
                .unwrap_or_default(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            iscsi_sessions: self
                .iscsi
                .as_ref()
                .map_or(0, |t| t.registry.list().len() as u64),
            nvmf_controllers: self
                .nvmf
                .as_ref()
                .map_or(0, |t| t.registry.list().len() as u64),
            cycle_seconds: self.last_cycle_s,
            volumes,
            vpaths,
            domains,
            luns,
            pools,
            mirrors,
            reactors,
        }
    }
}

/// The machine's name, as the kernel has it (empty if unreadable).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}
