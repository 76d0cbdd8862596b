//! `sds top`: a live view of every storage domain and virtual path, like SPDK's `spdk_top` or
//! `iostat -x`, and the one-shot tables of `sds domain stats` and `sds vpath stats`.
//!
//! Each frame calls `vpath_get_stats`, `domain_get_stats` and `domain_get_domains` (for the
//! domains' limits), turns the answers into rows and prints two tables, busiest first. Rates
//! are measured between two frames from the counters the server keeps since start (as iostat
//! does), so they cover the whole interval; a domain's are the sum of its VPs'. The first
//! frame has no earlier sample and shows the server's last control cycle instead. Latency
//! percentiles are always the server's last cycle: it keeps no histogram per client window.
//!
//! To add a column: add the field to [`DomainRow`] or [`VpathRow`], fill it in `from_stats`,
//! and add it to the table and to `to_json`.

use super::table::render_table;
use super::Call;
use clap::Args;
use sds::units::format_size;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Longest interval between frames, in seconds: a bound on how long one sleep can last.
const MAX_INTERVAL_SECONDS: f64 = 3600.0;
/// Shortest interval: below this the server's 100 ms cycle makes rates meaningless anyway,
/// and a smaller one would only load the control thread.
const MIN_INTERVAL_SECONDS: f64 = 0.05;

/// Clear the screen and move the cursor home (ANSI): each frame replaces the last.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// Live view of every storage domain and virtual path, redrawn each interval
///
/// Shows two tables, busiest first, like spdk_top or `iostat -x`: the storage domains (their
/// virtual paths, IOPS, MB/s, p50/p99 latency, I/Os the domain's limits delayed, and the
/// limits), and the virtual paths (host, volume, domain, mode, IOPS split into reads and
/// writes, MB/s, p50/p99/p99.9 latency, milliseconds of delay from throttling, the limit the
/// control loop currently gives the VP, open connections, and their protocol: nbd, iscsi,
/// nvme-tcp).
///
/// Rates are measured between frames from the server's counters, so they cover the whole
/// interval; the first frame shows the server's last control cycle (`sds serve --cycle-ms`).
/// Latency percentiles are over the server's last control cycle, `-` when it saw no I/O.
/// MiB/s counts 2^20 bytes of reads and writes, the unit of the QoS limits.
///
/// On a terminal the screen is cleared for each frame; otherwise (a pipe, a file) frames are
/// printed one after another. With --json each frame is one JSON object on one line.
#[derive(Args)]
pub struct TopArgs {
    /// Seconds between frames; fractions are allowed (0.5). From 0.05 to 3600
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
    /// Stop after this many frames [default: run until Ctrl-C]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS).contains(&seconds) {
        return Err(format!(
            "must be from {MIN_INTERVAL_SECONDS} to {MAX_INTERVAL_SECONDS} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Runs `sds top` until `--iterations` frames are out, stdout closes, or the process is
/// interrupted.
pub fn run(args: &TopArgs, json: bool, call: Call) -> Result<(), String> {
    let terminal = !json && std::io::stdout().is_terminal();
    let mut previous: Option<Sample> = None;
    let mut frame: u64 = 0;
    loop {
        let sample = Sample::fetch(call)?;
        frame += 1;
        let view = View::new(&sample, previous.as_ref());
        let text = if json {
            let mut object = view.to_json();
            object["frame"] = json!(frame);
            format!("{object}\n")
        } else {
            let mut text = String::new();
            if terminal {
                text.push_str(CLEAR_SCREEN);
            } else if frame > 1 {
                text.push('\n');
            }
            text.push_str(&view.render(frame));
            text
        };
        let mut stdout = std::io::stdout().lock();
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => {}
            // `sds top | head` closes the pipe: that is how a reader says it has enough.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(error) => return Err(format!("writing to stdout: {error}")),
        }
        drop(stdout);
        if args.iterations.is_some_and(|n| frame >= n) {
            return Ok(());
        }
        previous = Some(sample);
        std::thread::sleep(args.interval);
    }
}

/// One round of answers from the server, and when they came.
struct Sample {
    at: Instant,
    cycle_ms: f64,
    vpaths: Vec<Value>,
    domains: Vec<Value>,
    /// Each domain's capabilities, by name.
    capabilities: HashMap<String, Value>,
    /// The iSCSI target's normal sessions (empty from a server without iSCSI).
    iscsi_sessions: Vec<Value>,
    /// The NVMe/TCP controllers (empty from a server without NVMe/TCP).
    nvmf_qpairs: Vec<Value>,
}

impl Sample {
    fn fetch(call: Call) -> Result<Self, String> {
        let vpaths = call("vpath_get_stats", None)?;
        let domains = call("domain_get_stats", None)?;
        let described = call("domain_get_domains", None)?;
        // A server that predates iSCSI answers "method not found": then there are none.
        let iscsi_sessions = call("iscsi_get_sessions", None)
            .ok()
            .and_then(|sessions| sessions.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|session| session["kind"] == "normal")
            .collect();
        let nvmf_qpairs = call("nvmf_get_qpairs", None)
            .ok()
            .and_then(|qpairs| qpairs.as_array().cloned())
            .unwrap_or_default();
        let capabilities = described
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|d| {
                        Some((d["name"].as_str()?.to_string(), d["capabilities"].clone()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            at: Instant::now(),
            cycle_ms: domains["cycle_ms"].as_f64().unwrap_or(0.0),
            vpaths: list(&vpaths, "vpaths"),
            domains: list(&domains, "domains"),
            capabilities,
            iscsi_sessions,
            nvmf_qpairs,
        })
    }
}

/// How a VP is reached. The VP's connection count covers every front end (each iSCSI session
/// with the VP's LUN holds one, as each NBD connection and each NVMe/TCP I/O queue does); the
/// iSCSI sessions of its host that serve its LUN are the iSCSI part, the I/O queues of its
/// host's live NVMe controllers the NVMe/TCP part, the rest are NBD.
fn protocol(vpath: &Value, iscsi_sessions: &[Value], nvmf_qpairs: &[Value]) -> String {
    let iscsi = iscsi_sessions
        .iter()
        .filter(|s| s["host"] == vpath["host"])
        .filter(|s| {
            s["luns"]
                .as_array()
                .is_some_and(|luns| luns.contains(&vpath["lun"]))
        })
        .count() as u64;
    let nvme: u64 = nvmf_qpairs
        .iter()
        .filter(|c| c["kind"] == "nvm" && c["host"] == vpath["host"] && c["state"] != "closing")
        .map(|c| c["io_queues"].as_u64().unwrap_or(0))
        .sum();
    let nbd = count(vpath, &["connections"]).saturating_sub(iscsi + nvme);
    let used: Vec<&str> = [(nbd, "nbd"), (iscsi, "iscsi"), (nvme, "nvme-tcp")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(_, name)| *name)
        .collect();
    if used.is_empty() {
        "-".to_string()
    } else {
        used.join("+")
    }
}

fn list(result: &Value, key: &str) -> Vec<Value> {
    result[key].as_array().cloned().unwrap_or_default()
}

/// What a row's rates are measured over.
#[derive(Clone, Copy)]
enum Window {
    /// Between two frames, this many seconds apart.
    Interval(f64),
    /// The server's last control cycle, of this many milliseconds.
    Cycle(f64),
}

/// Rates and percentiles of one domain or VP over a window.
#[derive(Default)]
struct Rates {
    iops: f64,
    read_iops: f64,
    write_iops: f64,
    mbytes_per_sec: f64,
    /// I/Os delayed by a limit, over the window.
    throttled_ios: u64,
    /// Milliseconds of delay from throttling, over the window.
    throttled_ms: f64,
    /// p50, p99, p99.9 of the last cycle.
    latency_us: Option<[f64; 3]>,
}

impl Rates {
    /// From a `*_get_stats` entry and, when there is one, the same entry a window earlier.
    fn new(now: &Value, earlier: Option<&Value>, window: Window) -> Self {
        let latency = &now["last_cycle"]["latency_us"];
        let latency_us = match (
            latency["p50"].as_f64(),
            latency["p99"].as_f64(),
            latency["p99_9"].as_f64(),
        ) {
            (Some(p50), Some(p99), Some(p999)) => Some([p50, p99, p999]),
            _ => None,
        };
        match (earlier, window) {
            (Some(earlier), Window::Interval(seconds)) if seconds > 0.0 => {
                let (total, before) = (&now["total"], &earlier["total"]);
                let delta = |path: &[&str]| count(total, path).saturating_sub(count(before, path));
                let ops: u64 = ["read", "write", "flush", "trim", "write_zeroes"]
                    .iter()
                    .map(|kind| delta(&["ops", kind]))
                    .sum();
                let data_bytes = delta(&["bytes", "read"]) + delta(&["bytes", "write"]);
                let throttled_ms =
                    (number(total, &["throttled_ms"]) - number(before, &["throttled_ms"])).max(0.0);
                Self {
                    iops: ops as f64 / seconds,
                    read_iops: delta(&["ops", "read"]) as f64 / seconds,
                    write_iops: delta(&["ops", "write"]) as f64 / seconds,
                    mbytes_per_sec: data_bytes as f64 / seconds / (1024.0 * 1024.0),
                    throttled_ios: delta(&["throttled_ios"]),
                    throttled_ms,
                    latency_us,
                }
            }
            _ => {
                let last = &now["last_cycle"];
                Self {
                    iops: number(last, &["iops"]),
                    read_iops: number(last, &["read_iops"]),
                    write_iops: number(last, &["write_iops"]),
                    mbytes_per_sec: number(last, &["mbytes_per_sec"]),
                    throttled_ios: count(last, &["throttled_ios"]),
                    throttled_ms: number(last, &["throttled_ms"]),
                    latency_us,
                }
            }
        }
    }

    fn to_json(&self) -> Map<String, Value> {
        let mut object = Map::new();
        object.insert("iops".into(), json!(self.iops.round()));
        object.insert("read_iops".into(), json!(self.read_iops.round()));
        object.insert("write_iops".into(), json!(self.write_iops.round()));
        object.insert("mbytes_per_sec".into(), json!(self.mbytes_per_sec));
        object.insert("throttled_ios".into(), json!(self.throttled_ios));
        object.insert("throttled_ms".into(), json!(self.throttled_ms));
        object.insert(
            "latency_us".into(),
            match self.latency_us {
                Some([p50, p99, p999]) => json!({"p50": p50, "p99": p99, "p99_9": p999}),
                None => Value::Null,
            },
        );
        object
    }
}

fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |value, key| &value[*key])
}

fn count(value: &Value, path: &[&str]) -> u64 {
    at(value, path).as_u64().unwrap_or(0)
}

fn number(value: &Value, path: &[&str]) -> f64 {
    at(value, path).as_f64().unwrap_or(0.0)
}

struct DomainRow {
    name: String,
    vpaths: u64,
    rates: Rates,
    /// The domain's own limits (its capabilities' QoS part).
    limit: Value,
}

struct VpathRow {
    id: u64,
    host: String,
    volume: String,
    domain: String,
    mode: String,
    connections: u64,
    /// How its connections reach it: nbd, iscsi, nvme-tcp, several joined by '+', or "-"
    /// with none.
    protocol: String,
    rates: Rates,
    /// What the control loop gives the VP now, all reactors together.
    limit: Value,
}

/// One frame: the rows of both tables, sorted.
struct View {
    window: Window,
    domains: Vec<DomainRow>,
    vpaths: Vec<VpathRow>,
}

impl View {
    fn new(sample: &Sample, previous: Option<&Sample>) -> Self {
        let window = match previous {
            Some(previous) => Window::Interval(sample.at.duration_since(previous.at).as_secs_f64()),
            None => Window::Cycle(sample.cycle_ms),
        };
        let earlier = |entries: &[Value], key: &str, now: &Value| -> Option<Value> {
            entries.iter().find(|e| e[key] == now[key]).cloned()
        };
        let mut domains: Vec<DomainRow> = sample
            .domains
            .iter()
            .map(|d| {
                let before = previous.and_then(|p| earlier(&p.domains, "name", d));
                let name = d["name"].as_str().unwrap_or("?").to_string();
                DomainRow {
                    limit: sample
                        .capabilities
                        .get(&name)
                        .map(qos_of)
                        .unwrap_or(Value::Null),
                    name,
                    vpaths: count(d, &["vpaths"]),
                    rates: Rates::new(d, before.as_ref(), window),
                }
            })
            .collect();
        let mut vpaths: Vec<VpathRow> = sample
            .vpaths
            .iter()
            .map(|v| {
                let before = previous.and_then(|p| earlier(&p.vpaths, "id", v));
                let text = |key: &str| v[key].as_str().unwrap_or("?").to_string();
                VpathRow {
                    id: count(v, &["id"]),
                    host: text("host"),
                    volume: text("volume"),
                    domain: text("domain"),
                    mode: text("mode"),
                    connections: count(v, &["connections"]),
                    protocol: protocol(v, &sample.iscsi_sessions, &sample.nvmf_qpairs),
                    rates: Rates::new(v, before.as_ref(), window),
                    limit: v["limit"].clone(),
                }
            })
            .collect();
        // The server folds its VPs' counters into their domains' only at the end of each
        // control cycle, so a domain's totals move in steps of a cycle; over a window between
        // frames the sum of its VPs' live counters is exact. (A VP deleted during the window
        // drops out of the sum.)
        if let Window::Interval(_) = window {
            for domain in &mut domains {
                let members = vpaths.iter().filter(|v| v.domain == domain.name);
                let rates = &mut domain.rates;
                (rates.iops, rates.read_iops, rates.write_iops) = (0.0, 0.0, 0.0);
                (
                    rates.mbytes_per_sec,
                    rates.throttled_ios,
                    rates.throttled_ms,
                ) = (0.0, 0, 0.0);
                for member in members {
                    rates.iops += member.rates.iops;
                    rates.read_iops += member.rates.read_iops;
                    rates.write_iops += member.rates.write_iops;
                    rates.mbytes_per_sec += member.rates.mbytes_per_sec;
                    rates.throttled_ios += member.rates.throttled_ios;
                    rates.throttled_ms += member.rates.throttled_ms;
                }
            }
        }
        domains.sort_by(|a, b| {
            b.rates
                .iops
                .total_cmp(&a.rates.iops)
                .then_with(|| a.name.cmp(&b.name))
        });
        vpaths.sort_by(|a, b| {
            b.rates
                .iops
                .total_cmp(&a.rates.iops)
                .then_with(|| a.id.cmp(&b.id))
        });
        Self {
            window,
            domains,
            vpaths,
        }
    }

    fn render(&self, frame: u64) -> String {
        let window = match self.window {
            Window::Interval(seconds) => format!("rates over the last {seconds:.2} s"),
            Window::Cycle(ms) => format!("rates over the server's last {ms:.0} ms cycle"),
        };
        let latency = "latency over the last cycle";
        let mut text = format!(
            "sds top - frame {frame} - domains: {}, virtual paths: {} - {window}; {latency}\n\n",
            self.domains.len(),
            self.vpaths.len()
        );
        text.push_str(&domain_table(&self.domains));
        text.push('\n');
        text.push_str(&vpath_table(&self.vpaths));
        text
    }

    fn to_json(&self) -> Value {
        let (window, seconds) = match self.window {
            Window::Interval(seconds) => ("interval", seconds),
            Window::Cycle(ms) => ("cycle", ms / 1000.0),
        };
        let domains: Vec<Value> = self
            .domains
            .iter()
            .map(|d| {
                let mut object = d.rates.to_json();
                object.insert("name".into(), json!(d.name));
                object.insert("vpaths".into(), json!(d.vpaths));
                object.insert("limit".into(), d.limit.clone());
                Value::Object(object)
            })
            .collect();
        let vpaths: Vec<Value> = self
            .vpaths
            .iter()
            .map(|v| {
                let mut object = v.rates.to_json();
                object.insert("id".into(), json!(v.id));
                object.insert("host".into(), json!(v.host));
                object.insert("volume".into(), json!(v.volume));
                object.insert("domain".into(), json!(v.domain));
                object.insert("mode".into(), json!(v.mode));
                object.insert("connections".into(), json!(v.connections));
                object.insert("protocol".into(), json!(v.protocol));
                object.insert("limit".into(), v.limit.clone());
                Value::Object(object)
            })
            .collect();
        json!({
            "window": window,
            "window_s": seconds,
            "domains": domains,
            "vpaths": vpaths,
        })
    }
}

/// The QoS part of a domain's capabilities.
fn qos_of(capabilities: &Value) -> Value {
    json!({
        "rw_ios_per_sec": capabilities["rw_ios_per_sec"],
        "rw_mbytes_per_sec": capabilities["rw_mbytes_per_sec"],
        "r_mbytes_per_sec": capabilities["r_mbytes_per_sec"],
        "w_mbytes_per_sec": capabilities["w_mbytes_per_sec"],
    })
}

/// `1000 IOPS, rw 50 MiB/s`, from SPDK-named QoS fields; `-` when nothing is limited.
pub fn limit_text(limit: &Value) -> String {
    let mut parts = Vec::new();
    for (key, prefix, unit) in [
        ("rw_ios_per_sec", "", "IOPS"),
        ("rw_mbytes_per_sec", "rw ", "MiB/s"),
        ("r_mbytes_per_sec", "r ", "MiB/s"),
        ("w_mbytes_per_sec", "w ", "MiB/s"),
    ] {
        let value = limit[key].as_f64().unwrap_or(0.0);
        if value > 0.0 {
            let shown = if value.fract() == 0.0 || value >= 100.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.1}")
            };
            parts.push(format!("{prefix}{shown} {unit}"));
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn rate(value: f64) -> String {
    format!("{:.0}", value.max(0.0))
}

fn mbytes(value: f64) -> String {
    format!("{:.2}", value.max(0.0))
}

fn millis(value: f64) -> String {
    format!("{:.1}", value.max(0.0))
}

/// A latency in microseconds: one decimal below 100 µs, none above.
fn micros(value: Option<f64>) -> String {
    match value {
        Some(v) if v < 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
        None => "-".into(),
    }
}

fn domain_table(rows: &[DomainRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|d| {
            let latency = d.rates.latency_us;
            vec![
                d.name.clone(),
                d.vpaths.to_string(),
                rate(d.rates.iops),
                mbytes(d.rates.mbytes_per_sec),
                micros(latency.map(|l| l[0])),
                micros(latency.map(|l| l[1])),
                d.rates.throttled_ios.to_string(),
                limit_text(&d.limit),
            ]
        })
        .collect();
    render_table(
        &[
            "DOMAIN",
            "VPS",
            "IOPS",
            "MiB/S",
            "P50 µs",
            "P99 µs",
            "THROTTLED",
            "LIMIT",
        ],
        &cells,
    )
}

fn vpath_table(rows: &[VpathRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|v| {
            let latency = v.rates.latency_us;
            vec![
                v.id.to_string(),
                v.host.clone(),
                v.volume.clone(),
                v.domain.clone(),
                v.mode.clone(),
                rate(v.rates.iops),
                format!("{}/{}", rate(v.rates.read_iops), rate(v.rates.write_iops)),
                mbytes(v.rates.mbytes_per_sec),
                micros(latency.map(|l| l[0])),
                micros(latency.map(|l| l[1])),
                micros(latency.map(|l| l[2])),
                millis(v.rates.throttled_ms),
                limit_text(&v.limit),
                v.connections.to_string(),
                v.protocol.to_string(),
            ]
        })
        .collect();
    render_table(
        &[
            "VP",
            "HOST",
            "VOLUME",
            "DOMAIN",
            "MODE",
            "IOPS",
            "R/W IOPS",
            "MiB/S",
            "P50 µs",
            "P99 µs",
            "P99.9 µs",
            "THROTTLED MS",
            "LIMIT",
            "CONNS",
            "PROTO",
        ],
        &cells,
    )
}

/// Total operations, bytes read, bytes written and errors since start, as table cells.
fn total_cells(entry: &Value) -> [String; 4] {
    let total = &entry["total"];
    let ops: u64 = total["ops"]
        .as_object()
        .map(|ops| ops.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    [
        ops.to_string(),
        format_size(count(total, &["bytes", "read"])),
        format_size(count(total, &["bytes", "write"])),
        count(total, &["errors"]).to_string(),
    ]
}

/// `sds domain stats`: each domain over the server's last control cycle, and totals since start.
pub fn print_domain_stats(result: &Value) {
    let window = Window::Cycle(number(result, &["cycle_ms"]));
    let rows: Vec<Vec<String>> = list(result, "domains")
        .iter()
        .map(|d| {
            let rates = Rates::new(d, None, window);
            let latency = rates.latency_us;
            let mut row = vec![
                d["name"].as_str().unwrap_or("?").to_string(),
                count(d, &["vpaths"]).to_string(),
                rate(rates.iops),
                format!("{}/{}", rate(rates.read_iops), rate(rates.write_iops)),
                mbytes(rates.mbytes_per_sec),
                micros(latency.map(|l| l[0])),
                micros(latency.map(|l| l[1])),
                rates.throttled_ios.to_string(),
            ];
            row.extend(total_cells(d));
            row
        })
        .collect();
    print!(
        "{}",
        render_table(
            &[
                "DOMAIN",
                "VPS",
                "IOPS",
                "R/W IOPS",
                "MiB/S",
                "P50 µs",
                "P99 µs",
                "THROTTLED",
                "TOTAL IOS",
                "READ",
                "WRITTEN",
                "ERRORS",
            ],
            &rows,
        )
    );
}

/// `sds vpath stats`: each VP over the server's last control cycle, its current limit, and
/// totals since it was made.
pub fn print_vpath_stats(result: &Value) {
    let window = Window::Cycle(number(result, &["cycle_ms"]));
    let rows: Vec<Vec<String>> = list(result, "vpaths")
        .iter()
        .map(|v| {
            let rates = Rates::new(v, None, window);
            let latency = rates.latency_us;
            let text = |key: &str| v[key].as_str().unwrap_or("?").to_string();
            let mut row = vec![
                count(v, &["id"]).to_string(),
                text("host"),
                text("volume"),
                text("domain"),
                rate(rates.iops),
                format!("{}/{}", rate(rates.read_iops), rate(rates.write_iops)),
                mbytes(rates.mbytes_per_sec),
                micros(latency.map(|l| l[0])),
                micros(latency.map(|l| l[1])),
                micros(latency.map(|l| l[2])),
                millis(rates.throttled_ms),
                limit_text(&v["limit"]),
            ];
            row.extend(total_cells(v));
            row
        })
        .collect();
    print!(
        "{}",
        render_table(
            &[
                "VP",
                "HOST",
                "VOLUME",
                "DOMAIN",
                "IOPS",
                "R/W IOPS",
                "MiB/S",
                "P50 µs",
                "P99 µs",
                "P99.9 µs",
                "THROTTLED MS",
                "LIMIT",
                "TOTAL IOS",
                "READ",
                "WRITTEN",
                "ERRORS",
            ],
            &rows,
        )
    );
}

#[cfg(test)]
mod tests {
    use super::protocol;
    use serde_json::json;

    #[test]
    fn a_paths_protocol_comes_from_its_hosts_iscsi_sessions() {
        let vp = |connections: u64| json!({"host": "h", "lun": 3, "connections": connections});
        let session = |host: &str, luns: &[u64]| json!({"host": host, "luns": luns});
        assert_eq!(protocol(&vp(0), &[], &[]), "-");
        assert_eq!(protocol(&vp(2), &[], &[]), "nbd");
        let sessions = [session("h", &[0, 3]), session("other", &[3])];
        assert_eq!(protocol(&vp(1), &sessions, &[]), "iscsi");
        assert_eq!(protocol(&vp(2), &sessions, &[]), "nbd+iscsi");
        // A session of the host without this VP's LUN is not this path's.
        assert_eq!(protocol(&vp(1), &[session("h", &[0])], &[]), "nbd");
        let controller = |host: &str, state: &str, io_queues: u64| json!({"kind": "nvm", "host": host, "state": state, "io_queues": io_queues});
        let qpairs = [
            controller("h", "active", 2),
            controller("other", "active", 4),
            controller("h", "closing", 1),
        ];
        assert_eq!(protocol(&vp(2), &[], &qpairs), "nvme-tcp");
        assert_eq!(protocol(&vp(4), &sessions, &qpairs), "nbd+iscsi+nvme-tcp");
    }
}
