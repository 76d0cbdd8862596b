//! The exposition: a [`MetricsSnapshot`] encoded by prometheus-client's OpenMetrics text
//! encoder. Each family's name, help and type is written here, once; the numbers come from
//! the snapshot. (A custom [`Collector`] rather than registered counters, because the
//! numbers already exist: the snapshot's totals are encoded as they are, not counted again.)

use super::snapshot::{
    LatencyHistogram, MetricsSnapshot, OpCounters, PathCounters, LATENCY_BUCKETS_SECONDS,
};
use crate::blockio::BlockOp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt::Error;
use std::sync::Arc;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`to_classic_text`]'s.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// The states `sds_mirror_state` and `sds_mirror_leg_state` enumerate (as
/// `mirror_get_mirrors` names them).
const MIRROR_STATES: [&str; 3] = ["healthy", "resyncing", "degraded"];
const LEG_STATES: [&str; 5] = ["healthy", "resyncing", "degraded", "failed", "absent"];
/// The states `sds_lun_remote_state` enumerates (`backend::remote::link_stats::LinkState`).
const REMOTE_STATES: [&str; 4] = ["connected", "connecting", "reconnecting", "failed"];

/// Encodes a snapshot as OpenMetrics text.
pub fn render(snapshot: Arc<MetricsSnapshot>) -> Result<String, Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text, for scrapers that do not
/// ask for OpenMetrics (`promtool check metrics`, older Prometheus servers, `curl`).
/// prometheus-client writes OpenMetrics only; the two differ, for what sds exports, in three
/// places: a counter family is named without `_total` in OpenMetrics' `# HELP`/`# TYPE` lines
/// but with it in the classic format (where the family's name is its samples'), OpenMetrics
/// ends with `# EOF`, and it may have `# UNIT` lines. Samples are the same in both.
pub fn to_classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut classic = String::with_capacity(openmetrics.len() + 64 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                classic.push_str(prefix);
                classic.push_str(name);
                if counters.contains(name) {
                    classic.push_str("_total");
                }
                classic.push(' ');
                classic.push_str(tail);
            }
            None => classic.push_str(line),
        }
        classic.push('\n');
    }
    classic
}

#[derive(Debug)]
struct SnapshotCollector(Arc<MetricsSnapshot>);

/// One family: its descriptor, then one sample (set) per label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter family: counts (`u64`) or seconds (`f64`).
fn counters<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, N)>,
) -> Result<(), Error>
where
    ConstCounter<N>: EncodeMetric,
{
    let samples = samples
        .into_iter()
        .map(|(labels, value)| (labels, ConstCounter::new(value)));
    family(encoder, name, help, MetricType::Counter, samples)
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> Result<(), Error> {
    let samples = samples
        .into_iter()
        .map(|(labels, value)| (labels, ConstGauge::new(value)));
    family(encoder, name, help, MetricType::Gauge, samples)
}

fn histograms<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, &'a LatencyHistogram)>,
) -> Result<(), Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, histogram) in samples {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(histogram.buckets.iter().copied())
            .collect();
        metric.encode_family(&labels)?.encode_histogram::<Labels>(
            histogram.sum_seconds,
            histogram.count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

/// `labels` plus `op="…"` for every operation kind, with the kind's value.
fn per_op<'a, T: Copy + 'a>(
    rows: impl IntoIterator<Item = (Labels, &'a [T; BlockOp::COUNT])>,
) -> Vec<(Labels, T)> {
    let mut samples = Vec::new();
    for (labels, values) in rows {
        for op in BlockOp::ALL {
            let mut with_op = labels.clone();
            with_op.push(("op", op.as_str().to_string()));
            samples.push((with_op, values[op.index()]));
        }
    }
    samples
}

/// The families the VP and domain counters share, under `prefix` (`sds_vpath`, `sds_domain`).
fn path_families<'a>(
    encoder: &mut DescriptorEncoder,
    prefix: &str,
    what: &str,
    rows: &'a [(Labels, &'a PathCounters)],
) -> Result<(), Error> {
    let io = |c: &'a PathCounters| -> &'a OpCounters { &c.io };
    counters(
        encoder,
        &format!("{prefix}_ops"),
        &format!("Operations completed per {what}, by kind"),
        per_op(rows.iter().map(|(l, c)| (l.clone(), &io(c).ops))),
    )?;
    counters(
        encoder,
        &format!("{prefix}_bytes"),
        &format!("Bytes moved per {what}, by kind"),
        per_op(rows.iter().map(|(l, c)| (l.clone(), &io(c).bytes))),
    )?;
    counters(
        encoder,
        &format!("{prefix}_errors"),
        &format!("Operations that failed per {what}"),
        rows.iter().map(|(l, c)| (l.clone(), c.errors)),
    )?;
    counters(
        encoder,
        &format!("{prefix}_throttled_ops"),
        &format!("Operations that waited for QoS tokens per {what}"),
        rows.iter().map(|(l, c)| (l.clone(), c.throttled_ops)),
    )?;
    counters(
        encoder,
        &format!("{prefix}_throttled_seconds"),
        &format!("Time operations waited for QoS tokens per {what}"),
        rows.iter().map(|(l, c)| (l.clone(), c.throttled_seconds)),
    )?;
    histograms(
        encoder,
        &format!("{prefix}_latency_seconds"),
        &format!("Latency of operations per {what}, from request to reply"),
        rows.iter().map(|(l, c)| (l.clone(), &c.latency)),
    )
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let s = &*self.0;
        let e = &mut encoder;
        gauges(
            e,
            "sds_build_info",
            "The server's version, revision and identity (always 1)",
            [(
                vec![
                    ("version", s.version.clone()),
                    ("revision", s.revision.clone()),
                    ("hostname", s.hostname.clone()),
                    ("iscsi_target", s.iscsi_target.clone()),
                    ("nvmf_nqn_base", s.nvmf_nqn_base.clone()),
                ],
                1.0,
            )],
        )?;
        gauges(
            e,
            "sds_uptime_seconds",
            "Seconds since the server started",
            [(vec![], s.uptime_seconds)],
        )?;
        gauges(
            e,
            "sds_iscsi_sessions",
            "Live iSCSI sessions, discovery sessions included",
            [(vec![], s.iscsi_sessions as f64)],
        )?;
        gauges(
            e,
            "sds_nvmf_controllers",
            "Live NVMe/TCP controllers, discovery controllers included",
            [(vec![], s.nvmf_controllers as f64)],
        )?;
        gauges(
            e,
            "sds_control_cycle_seconds",
            "How long the last control-loop cycle lasted",
            [(vec![], s.cycle_seconds)],
        )?;

        let volume_labels = |v: &super::snapshot::VolumeRow| -> Labels {
            vec![("volume", v.name.clone()), ("pool", v.pool.clone())]
        };
        counters(
            e,
            "sds_volume_ops",
            "Operations completed per volume, by kind (as bdev_get_iostat counts them)",
            per_op(s.volumes.iter().map(|v| (volume_labels(v), &v.io.ops))),
        )?;
        counters(
            e,
            "sds_volume_bytes",
            "Bytes moved per volume, by kind",
            per_op(s.volumes.iter().map(|v| (volume_labels(v), &v.io.bytes))),
        )?;
        counters(
            e,
            "sds_volume_errors",
            "Operations that failed per volume",
            s.volumes.iter().map(|v| (volume_labels(v), v.errors)),
        )?;
        counters(
            e,
            "sds_volume_time_seconds",
            "Time spent in operations per volume, by kind (divide by sds_volume_ops for the mean)",
            per_op(
                s.volumes
                    .iter()
                    .map(|v| (volume_labels(v), &v.time_seconds)),
            ),
        )?;
        histograms(
            e,
            "sds_volume_latency_seconds",
            "Latency of operations per volume, from request to reply: the sum of its VPs' \
             histograms (VPs whose domain records latency)",
            s.volumes.iter().map(|v| (volume_labels(v), &v.latency)),
        )?;
        gauges(
            e,
            "sds_volume_size_bytes",
            "Size of each volume",
            s.volumes
                .iter()
                .map(|v| (volume_labels(v), v.size_bytes as f64)),
        )?;
        gauges(
            e,
            "sds_volume_allocated_bytes",
            "Pool space each volume maps",
            s.volumes
                .iter()
                .map(|v| (volume_labels(v), v.allocated_bytes as f64)),
        )?;

        let vpaths: Vec<(Labels, &PathCounters)> = s
            .vpaths
            .iter()
            .map(|v| {
                (
                    vec![
                        ("vpath", v.id.to_string()),
                        ("host", v.host.clone()),
                        ("volume", v.volume.clone()),
                        ("domain", v.domain.clone()),
                    ],
                    &v.counters,
                )
            })
            .collect();
        path_families(e, "sds_vpath", "virtual path", &vpaths)?;
        gauges(
            e,
            "sds_vpath_sessions",
            "Sessions open on each virtual path",
            vpaths
                .iter()
                .zip(&s.vpaths)
                .map(|((l, _), v)| (l.clone(), v.sessions as f64)),
        )?;
        let domains: Vec<(Labels, &PathCounters)> = s
            .domains
            .iter()
            .map(|d| (vec![("domain", d.name.clone())], &d.counters))
            .collect();
        path_families(e, "sds_domain", "storage domain", &domains)?;

        let lun_labels = |l: &super::snapshot::LunRow| -> Labels {
            vec![
                ("lun", l.name.clone()),
                ("kind", l.kind.clone()),
                ("pool", l.pool.clone()),
            ]
        };
        let mut lun_errors = Vec::new();
        let (mut lun_ops, mut lun_bytes, mut lun_latency) = (Vec::new(), Vec::new(), Vec::new());
        for lun in &s.luns {
            for (class, op) in ["read", "write", "flush"].iter().enumerate() {
                let mut labels = lun_labels(lun);
                labels.push(("op", op.to_string()));
                lun_errors.push((labels.clone(), lun.errors[class]));
                lun_ops.push((labels.clone(), lun.ops[class]));
                lun_bytes.push((labels.clone(), lun.bytes[class]));
                lun_latency.push((labels, &lun.latency[class]));
            }
        }
        counters(
            e,
            "sds_lun_ops",
            "LUN I/O completed per LUN, by kind (a zeroing counts as a write)",
            lun_ops,
        )?;
        counters(
            e,
            "sds_lun_bytes",
            "Bytes read from and written to each LUN by its I/O",
            lun_bytes,
        )?;
        histograms(
            e,
            "sds_lun_latency_seconds",
            "Latency of each LUN's I/O, from its request's start to its completion, by kind",
            lun_latency,
        )?;
        counters(
            e,
            "sds_lun_errors",
            "Errors each LUN returned, by kind",
            lun_errors,
        )?;
        gauges(
            e,
            "sds_lun_size_bytes",
            "Size of each LUN",
            s.luns.iter().map(|l| (lun_labels(l), l.size_bytes as f64)),
        )?;
        gauges(
            e,
            "sds_lun_failed",
            "1 while a LUN is failed (its I/O fails at once), else 0",
            s.luns
                .iter()
                .map(|l| (lun_labels(l), if l.failed { 1.0 } else { 0.0 })),
        )?;

        // LUNs of other arrays: their links (one per reactor).
        let remote: Vec<(Labels, &super::snapshot::RemoteRow)> = s
            .luns
            .iter()
            .filter_map(|l| l.remote.as_ref().map(|r| (lun_labels(l), r)))
            .collect();
        let mut remote_states = Vec::new();
        for (labels, row) in &remote {
            for state in REMOTE_STATES {
                let mut with_state = labels.clone();
                with_state.push(("state", state.to_string()));
                remote_states.push((with_state, if row.state == state { 1.0 } else { 0.0 }));
            }
        }
        gauges(
            e,
            "sds_lun_remote_state",
            "1 for a remote LUN's current state (its worst link's: connected, connecting, \
             reconnecting, failed), else 0",
            remote_states,
        )?;
        let remote_gauge = |f: fn(&super::snapshot::RemoteRow) -> f64| {
            remote
                .iter()
                .map(move |(labels, row)| (labels.clone(), f(row)))
                .collect::<Vec<_>>()
        };
        gauges(
            e,
            "sds_lun_remote_links",
            "Connections a remote LUN keeps to its array (one per reactor)",
            remote_gauge(|r| r.links as f64),
        )?;
        gauges(
            e,
            "sds_lun_remote_links_connected",
            "A remote LUN's links connected now",
            remote_gauge(|r| r.links_connected as f64),
        )?;
        gauges(
            e,
            "sds_lun_remote_rtt_seconds",
            "A remote LUN's round-trip estimate (mean over its connected links; 0 before any command)",
            remote_gauge(|r| r.rtt_seconds),
        )?;
        gauges(
            e,
            "sds_lun_remote_in_flight",
            "Commands a remote LUN has at its array now",
            remote_gauge(|r| r.in_flight as f64),
        )?;
        counters(
            e,
            "sds_lun_remote_reconnects",
            "Reconnections of a remote LUN's links",
            remote.iter().map(|(l, r)| (l.clone(), r.reconnects)),
        )?;
        counters(
            e,
            "sds_lun_remote_timeouts",
            "Commands of a remote LUN that failed for taking longer than its timeout",
            remote.iter().map(|(l, r)| (l.clone(), r.timeouts)),
        )?;
        gauges(
            e,
            "sds_lun_remote_array_size_bytes",
            "The array's size of a remote LUN, present only while it differs from the LUN's",
            remote
                .iter()
                .filter_map(|(l, r)| r.array_size_bytes.map(|size| (l.clone(), size as f64))),
        )?;

        let pool_labels =
            |p: &super::snapshot::PoolRow| -> Labels { vec![("pool", p.name.clone())] };
        gauges(
            e,
            "sds_pool_capacity_bytes",
            "Space of each pool's extents",
            s.pools
                .iter()
                .map(|p| (pool_labels(p), p.capacity_bytes as f64)),
        )?;
        gauges(
            e,
            "sds_pool_allocated_bytes",
            "Space of each pool's extents in use",
            s.pools
                .iter()
                .map(|p| (pool_labels(p), p.allocated_bytes as f64)),
        )?;
        gauges(
            e,
            "sds_pool_provisioned_bytes",
            "Sum of the sizes of each pool's volumes (thin volumes may exceed the capacity)",
            s.pools
                .iter()
                .map(|p| (pool_labels(p), p.provisioned_bytes as f64)),
        )?;
        gauges(
            e,
            "sds_pool_fill_ratio",
            "Allocated over capacity, 0 to 1",
            s.pools.iter().map(|p| {
                let ratio = if p.capacity_bytes == 0 {
                    0.0
                } else {
                    p.allocated_bytes as f64 / p.capacity_bytes as f64
                };
                (pool_labels(p), ratio)
            }),
        )?;
        gauges(
            e,
            "sds_pool_threshold_ratio",
            "The fill past which the server warns (pool_set_threshold), 0 to 1",
            s.pools
                .iter()
                .map(|p| (pool_labels(p), f64::from(p.threshold_percent) / 100.0)),
        )?;
        counters(
            e,
            "sds_pool_journal_commits",
            "Journal blocks written (group commits of extent-map changes) per pool",
            s.pools.iter().map(|p| (pool_labels(p), p.journal_commits)),
        )?;
        counters(
            e,
            "sds_pool_journal_checkpoints",
            "Journal checkpoints written per pool",
            s.pools
                .iter()
                .map(|p| (pool_labels(p), p.journal_checkpoints)),
        )?;
        gauges(
            e,
            "sds_pool_journal_replayed_blocks",
            "Journal blocks replayed when the pool was opened at start-up",
            s.pools
                .iter()
                .map(|p| (pool_labels(p), p.replayed_blocks as f64)),
        )?;
        gauges(
            e,
            "sds_pool_journal_replayed_entries",
            "Extent-map entries replayed when the pool was opened at start-up",
            s.pools
                .iter()
                .map(|p| (pool_labels(p), p.replayed_entries as f64)),
        )?;

        // State sets, as Prometheus has them: one series per possible state, 1 for the
        // current one, so a state change is a value change, not a series appearing.
        let mut mirror_states = Vec::new();
        let mut leg_states = Vec::new();
        for mirror in &s.mirrors {
            for state in MIRROR_STATES {
                let labels = vec![
                    ("mirror", mirror.name.clone()),
                    ("state", state.to_string()),
                ];
                mirror_states.push((labels, if mirror.state == state { 1.0 } else { 0.0 }));
            }
            for (leg, current) in &mirror.legs {
                for state in LEG_STATES {
                    let labels = vec![
                        ("mirror", mirror.name.clone()),
                        ("leg", leg.clone()),
                        ("state", state.to_string()),
                    ];
                    leg_states.push((labels, if current == state { 1.0 } else { 0.0 }));
                }
            }
        }
        gauges(
            e,
            "sds_mirror_state",
            "1 for each mirror's current state (healthy, resyncing, degraded), else 0",
            mirror_states,
        )?;
        gauges(
            e,
            "sds_mirror_leg_state",
            "1 for each mirror leg's current state (healthy, resyncing, degraded, failed, absent), else 0",
            leg_states,
        )?;
        let mirror_labels =
            |m: &super::snapshot::MirrorRow| -> Labels { vec![("mirror", m.name.clone())] };
        gauges(
            e,
            "sds_mirror_dirty_bytes",
            "Bytes of the regions a mirror's dirty log marks (written, not yet known on every leg)",
            s.mirrors
                .iter()
                .map(|m| (mirror_labels(m), m.dirty_bytes as f64)),
        )?;
        gauges(
            e,
            "sds_mirror_resync_running",
            "1 while a mirror's resync copies",
            s.mirrors
                .iter()
                .map(|m| (mirror_labels(m), if m.resync_running { 1.0 } else { 0.0 })),
        )?;
        gauges(
            e,
            "sds_mirror_resync_done_bytes",
            "Bytes the current (or last) resync has copied",
            s.mirrors
                .iter()
                .map(|m| (mirror_labels(m), m.resync_done_bytes as f64)),
        )?;
        gauges(
            e,
            "sds_mirror_resync_total_bytes",
            "Bytes the current (or last) resync has to copy",
            s.mirrors
                .iter()
                .map(|m| (mirror_labels(m), m.resync_total_bytes as f64)),
        )?;

        let reactor_labels = |r: &super::snapshot::ReactorRow| -> Labels {
            vec![
                ("reactor", r.index.to_string()),
                ("core", r.core.to_string()),
            ]
        };
        counters(
            e,
            "sds_reactor_busy_seconds",
            "Time each reactor spent doing work",
            s.reactors
                .iter()
                .map(|r| (reactor_labels(r), r.busy_seconds)),
        )?;
        counters(
            e,
            "sds_reactor_idle_seconds",
            "Time each reactor polled or slept with nothing to do",
            s.reactors
                .iter()
                .map(|r| (reactor_labels(r), r.idle_seconds)),
        )?;
        gauges(
            e,
            "sds_reactor_busy_ratio",
            "Busy time over all time of each reactor since the previous gather, 0 to 1",
            s.reactors.iter().map(|r| (reactor_labels(r), r.busy_ratio)),
        )?;
        gauges(
            e,
            "sds_reactor_connections",
            "Connections each reactor serves",
            s.reactors
                .iter()
                .map(|r| (reactor_labels(r), r.connections as f64)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::snapshot::{DomainRow, LunRow, RemoteRow, VpathRow};

    #[test]
    fn a_snapshot_encodes_as_openmetrics_with_histogram_buckets() {
        let mut counters = PathCounters::default();
        counters.io.ops[BlockOp::Read.index()] = 7;
        counters.latency = LatencyHistogram {
            sum_seconds: 0.5,
            count: 3,
            buckets: {
                let mut b = vec![0; LATENCY_BUCKETS_SECONDS.len() + 1];
                b[0] = 1;
                b[5] = 2;
                b
            },
        };
        let snapshot = MetricsSnapshot {
            version: "0.1.0".into(),
            vpaths: vec![VpathRow {
                id: 3,
                host: "h".into(),
                volume: "v".into(),
                domain: "d".into(),
                counters: counters.clone(),
                sessions: 1,
            }],
            domains: vec![DomainRow {
                name: "d".into(),
                counters,
            }],
            ..Default::default()
        };
        let text = render(Arc::new(snapshot)).unwrap();
        assert!(text.contains("# TYPE sds_vpath_ops counter"), "{text}");
        assert!(text.contains(
            "sds_vpath_ops_total{vpath=\"3\",host=\"h\",volume=\"v\",domain=\"d\",op=\"read\"} 7"
        ));
        assert!(
            text.contains("sds_domain_latency_seconds_bucket{le=\"+Inf\",domain=\"d\"} 3"),
            "{text}"
        );
        assert!(text.contains("sds_domain_latency_seconds_bucket{le=\"0.00001\",domain=\"d\"} 1"));
        assert!(text.contains("sds_domain_latency_seconds_bucket{le=\"0.0001\",domain=\"d\"} 1"));
        assert!(text.contains("sds_domain_latency_seconds_count{domain=\"d\"} 3"));
        assert!(text.contains("sds_build_info{version=\"0.1.0\""));
        assert!(text.trim_end().ends_with("# EOF"));

        let classic = to_classic_text(&text);
        assert!(classic.contains("# TYPE sds_vpath_ops_total counter\n"));
        assert!(classic.contains("# HELP sds_vpath_ops_total Operations completed"));
        assert!(classic.contains("# TYPE sds_vpath_latency_seconds histogram\n"));
        assert!(classic.contains("# TYPE sds_build_info gauge\n"));
        assert!(!classic.contains("# EOF"));
        // Samples are untouched.
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples(&classic), samples(&text));
    }

    #[test]
    fn luns_encode_their_io_and_a_remote_lun_its_links() {
        let snapshot = MetricsSnapshot {
            luns: vec![
                LunRow {
                    name: "l".into(),
                    kind: "file".into(),
                    pool: "p".into(),
                    ops: [3, 5, 1],
                    bytes: [12288, 20480, 0],
                    latency: {
                        let mut read = [0; LATENCY_BUCKETS_SECONDS.len() + 1];
                        read[0] = 1;
                        read[3] = 2;
                        [
                            LatencyHistogram::from_counts(&read, 0.25),
                            LatencyHistogram::default(),
                            LatencyHistogram::default(),
                        ]
                    },
                    ..Default::default()
                },
                LunRow {
                    name: "r".into(),
                    kind: "iscsi".into(),
                    remote: Some(RemoteRow {
                        state: "reconnecting".into(),
                        links: 2,
                        links_connected: 1,
                        rtt_seconds: 0.000_25,
                        reconnects: 4,
                        timeouts: 1,
                        in_flight: 7,
                        array_size_bytes: None,
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = to_classic_text(&render(Arc::new(snapshot)).unwrap());
        let labels = |lun: &str, kind: &str, pool: &str| {
            format!("lun=\"{lun}\",kind=\"{kind}\",pool=\"{pool}\"")
        };
        let l = labels("l", "file", "p");
        let r = labels("r", "iscsi", "");
        for line in [
            format!("sds_lun_ops_total{{{l},op=\"write\"}} 5"),
            format!("sds_lun_bytes_total{{{l},op=\"read\"}} 12288"),
            format!("sds_lun_latency_seconds_sum{{{l},op=\"read\"}} 0.25"),
            format!("sds_lun_latency_seconds_count{{{l},op=\"read\"}} 3"),
            format!("sds_lun_latency_seconds_bucket{{le=\"0.00001\",{l},op=\"read\"}} 1"),
            format!("sds_lun_latency_seconds_bucket{{le=\"0.0001\",{l},op=\"read\"}} 3"),
            format!("sds_lun_latency_seconds_bucket{{le=\"+Inf\",{l},op=\"write\"}} 0"),
            format!("sds_lun_remote_state{{{r},state=\"reconnecting\"}} 1"),
            format!("sds_lun_remote_state{{{r},state=\"connected\"}} 0"),
            format!("sds_lun_remote_links_connected{{{r}}} 1"),
            format!("sds_lun_remote_reconnects_total{{{r}}} 4"),
            format!("sds_lun_remote_in_flight{{{r}}} 7"),
        ] {
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
        // A local LUN has no link series; no array size differs.
        assert!(!text.contains("sds_lun_remote_links{lun=\"l\""), "{text}");
        assert!(!text.contains("sds_lun_remote_array_size_bytes{"), "{text}");
    }
}
