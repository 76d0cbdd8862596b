//! What `sds perf` prints: per-job and total IOPS, MiB/s, latency percentiles (the jobs'
//! histograms merged), IOPS per core (IOPS over the reactors' thread CPU time), and a
//! cross-check of the I/Os the jobs completed against the volume's and the VP's own counters.

use super::job::{Counts, JobResult};
use super::options::{PerfConfig, PerfError};
use super::pattern::Mismatch;
use hdrhistogram::Histogram;
use sds::domain::stats::VpTotals;
use sds::units::format_size;
use sds::volume::stats::IoTotals;
use serde_json::{json, Value};

/// Where IOPS per core gets its CPU time.
pub const CPU_CLOCK: &str = "CLOCK_THREAD_CPUTIME_ID of each reactor thread over the window";

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            mean_us: histogram.mean() / 1000.0,
            p50_us: us(histogram.value_at_quantile(0.5)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "mean": round3(self.mean_us),
            "p50": round3(self.p50_us),
            "p99": round3(self.p99_us),
            "p99_9": round3(self.p999_us),
            "max": round3(self.max_us),
        })
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// One job's numbers.
#[derive(Clone, Debug)]
pub struct JobReport {
    pub job: usize,
    pub reactor: usize,
    pub core: usize,
    pub measured: Counts,
    pub window_s: f64,
    pub iops: f64,
    pub mib_per_sec: f64,
    pub latency: Latency,
}

/// One reactor's CPU use over the measured window.
#[derive(Clone, Debug)]
pub struct ReactorReport {
    pub index: usize,
    pub core: usize,
    pub iops: f64,
    pub cpu_s: f64,
    pub wall_s: f64,
}

/// The whole process's CPU time over the window, as the coordinating thread measured it: the
/// reactors, the other threads and io_uring's kernel workers (which do buffered file I/O
/// outside the reactor threads).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessCpu {
    pub cpu_s: f64,
    pub wall_s: f64,
}

/// The completed-I/O cross-check: what the jobs counted against what the stack counted.
#[derive(Clone, Copy, Debug)]
pub struct CrossCheck {
    pub completed_ios: u64,
    pub volume_ios: u64,
    /// `None` with `--no-domain` (the VP counts nothing then).
    pub vpath_ios: Option<u64>,
    /// What the VP counted with `--no-domain`: must be 0.
    pub vpath_ios_bypassed: u64,
}

impl CrossCheck {
    pub fn matches(&self) -> bool {
        self.volume_ios == self.completed_ios
            && match self.vpath_ios {
                Some(vp) => vp == self.completed_ios,
                None => self.vpath_ios_bypassed == 0,
            }
    }
}

pub struct Report {
    pub config: PerfConfig,
    pub jobs: Vec<JobReport>,
    pub reactors: Vec<ReactorReport>,
    pub measured: Counts,
    pub iops: f64,
    pub read_iops: f64,
    pub write_iops: f64,
    pub mib_per_sec: f64,
    pub latency: Latency,
    /// Cores' worth of CPU the reactors used over the window (1.0 per busy-polling reactor).
    pub cores_used: f64,
    pub iops_per_core: f64,
    pub process: ProcessCpu,
    /// `None` for a remote target (`--target`): no counters of its own to compare with.
    pub cross_check: Option<CrossCheck>,
    /// Every I/O the jobs completed, in every stage.
    pub completed_ios: u64,
    pub failed_ios: u64,
    pub throttled_ios: u64,
    pub verify_checked: u64,
    pub verify_errors: u64,
    pub first_mismatch: Option<Mismatch>,
    pub fatal: Vec<(usize, String)>,
    pub tick_hz: f64,
}

fn per_sec(count: u64, window_s: f64) -> f64 {
    if window_s > 0.0 {
        count as f64 / window_s
    } else {
        0.0
    }
}

impl Report {
    pub fn build(
        config: &PerfConfig,
        mut results: Vec<JobResult>,
        process: ProcessCpu,
        counters: Option<(IoTotals, VpTotals)>,
        tick_hz: f64,
    ) -> Self {
        results.sort_by_key(|r| r.job);
        let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).ok();
        let mut jobs = Vec::with_capacity(results.len());
        let mut reactors: Vec<ReactorReport> = config
            .cores
            .iter()
            .enumerate()
            .map(|(index, &core)| ReactorReport {
                index,
                core,
                iops: 0.0,
                cpu_s: 0.0,
                wall_s: 0.0,
            })
            .collect();
        let mut measured = Counts::default();
        let (mut iops, mut read_iops, mut write_iops, mut bytes_per_sec) = (0.0, 0.0, 0.0, 0.0);
        let mut completed_ios = 0;
        let mut failed_ios = 0;
        let mut throttled_ios = 0;
        let mut verify_checked = 0;
        let mut verify_errors = 0;
        let mut first_mismatch = None;
        let mut fatal = Vec::new();
        for result in &results {
            let window_s = result.window_ns as f64 / 1e9;
            let job_iops = per_sec(result.measured.ios, window_s);
            iops += job_iops;
            read_iops += per_sec(result.measured.read_ios, window_s);
            write_iops += per_sec(result.measured.write_ios, window_s);
            bytes_per_sec += per_sec(result.measured.bytes, window_s);
            measured.ios += result.measured.ios;
            measured.bytes += result.measured.bytes;
            measured.read_ios += result.measured.read_ios;
            measured.write_ios += result.measured.write_ios;
            measured.errors += result.measured.errors;
            completed_ios += result.completed_ios;
            failed_ios += result.failed_ios;
            throttled_ios += result.throttled_ios;
            verify_checked += result.verify_checked;
            verify_errors += result.verify_errors;
            if first_mismatch.is_none() {
                first_mismatch = result.first_mismatch.clone();
            }
            if let Some(why) = &result.fatal {
                fatal.push((result.job, why.clone()));
            }
            if let (Some(total), Some(histogram)) = (merged.as_mut(), result.histogram.as_ref()) {
                // Same bounds on both sides: adding cannot fail.
                let _ = total.add(histogram);
            }
            if let Some(reactor) = reactors.get_mut(result.reactor_index) {
                reactor.iops += job_iops;
                if let Some(cpu_ns) = result.cpu_ns {
                    reactor.cpu_s = cpu_ns as f64 / 1e9;
                    reactor.wall_s = window_s;
                }
            }
            jobs.push(JobReport {
                job: result.job,
                reactor: result.reactor_index,
                core: config.cores.get(result.reactor_index).copied().unwrap_or(0),
                measured: result.measured,
                window_s,
                iops: job_iops,
                mib_per_sec: per_sec(result.measured.bytes, window_s) / (1u64 << 20) as f64,
                latency: result
                    .histogram
                    .as_ref()
                    .map(Latency::of)
                    .unwrap_or_default(),
            });
        }
        let cores_used: f64 = reactors
            .iter()
            .filter(|r| r.wall_s > 0.0)
            .map(|r| r.cpu_s / r.wall_s)
            .sum();
        let cross_check = counters.map(|(volume, vpath)| CrossCheck {
            completed_ios,
            volume_ios: volume.read_ops + volume.write_ops + volume.errors,
            vpath_ios: config.domain.then(|| vpath.all_ops()),
            vpath_ios_bypassed: if config.domain { 0 } else { vpath.all_ops() },
        });
        Self {
            config: config.clone(),
            jobs,
            reactors,
            measured,
            iops,
            read_iops,
            write_iops,
            mib_per_sec: bytes_per_sec / (1u64 << 20) as f64,
            latency: merged.as_ref().map(Latency::of).unwrap_or_default(),
            cores_used,
            iops_per_core: if cores_used > 0.0 {
                iops / cores_used
            } else {
                0.0
            },
            process,
            cross_check,
            completed_ios,
            failed_ios,
            throttled_ios,
            verify_checked,
            verify_errors,
            first_mismatch,
            fatal,
            tick_hz,
        }
    }

    /// What makes the run a failure (exit status non-zero), after the report is printed.
    pub fn problems(&self) -> Result<(), PerfError> {
        if let Some((job, reason)) = self.fatal.first() {
            return Err(PerfError::Job {
                job: *job,
                reason: reason.clone(),
            });
        }
        if self.verify_errors > 0 {
            return Err(PerfError::Verify {
                errors: self.verify_errors,
                first: self
                    .first_mismatch
                    .as_ref()
                    .map_or_else(|| "?".into(), ToString::to_string),
            });
        }
        if self.failed_ios > 0 {
            return Err(PerfError::IoErrors {
                errors: self.failed_ios,
            });
        }
        if let Some(check) = self.cross_check.filter(|check| !check.matches()) {
            return Err(PerfError::CountersDiffer {
                completed: check.completed_ios,
                volume: check.volume_ios,
                vpath: check.vpath_ios.unwrap_or(check.vpath_ios_bypassed),
            });
        }
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        let c = &self.config;
        json!({
            "config": {
                "lun": format!("{:?}", c.lun).to_lowercase(),
                "lun_size": c.lun_size_bytes,
                "lun_path": c.lun_path,
                "block_size": c.block_size_bytes,
                "volume_block_size": c.volume_block_size_bytes,
                "volume_size": c.volume_size_bytes,
                "extent_size": c.extent_bytes,
                "thin": c.thin,
                "rw": c.workload.as_str(),
                "rwmixread": c.read_percent,
                "bs": c.io_bytes,
                "qd": c.queue_depth,
                "jobs_per_reactor": c.jobs_per_reactor,
                "cores": c.cores,
                "poll": c.poll.as_str(),
                "time_s": c.time.as_secs_f64(),
                "ramp_s": c.ramp.as_secs_f64(),
                "domain": c.domain,
                "verify": c.verify,
                "target": c.remote.as_ref().map(|r| r.url.to_string()),
                "hostnqn": c.remote.as_ref().map(|r| r.hostnqn.clone()),
                "queues": c.remote.as_ref().map(|r| r.queues),
                "nsid": c.remote.as_ref().map(|r| r.nsid),
                "digest": c.remote.as_ref().map(|r| r.digests.to_string()),
            },
            "ios": self.measured.ios,
            "iops": self.iops.round(),
            "read_iops": self.read_iops.round(),
            "write_iops": self.write_iops.round(),
            "mib_per_sec": round3(self.mib_per_sec),
            "mb_per_sec": round3(self.mib_per_sec * 1.048_576),
            "latency_us": self.latency.to_json(),
            "cores_used": round3(self.cores_used),
            "iops_per_core": self.iops_per_core.round(),
            "cpu_clock": CPU_CLOCK,
            "process_cpu_s": round3(self.process.cpu_s),
            "process_wall_s": round3(self.process.wall_s),
            "tick_hz": self.tick_hz.round(),
            "reactors": self.reactors.iter().map(|r| json!({
                "index": r.index,
                "core": r.core,
                "iops": r.iops.round(),
                "cpu_s": round3(r.cpu_s),
                "wall_s": round3(r.wall_s),
            })).collect::<Vec<_>>(),
            "jobs": self.jobs.iter().map(|j| json!({
                "job": j.job,
                "reactor": j.reactor,
                "core": j.core,
                "ios": j.measured.ios,
                "window_s": j.window_s,
                "iops": j.iops.round(),
                "mib_per_sec": round3(j.mib_per_sec),
                "latency_us": j.latency.to_json(),
            })).collect::<Vec<_>>(),
            "counters": self.cross_check.map(|check| json!({
                "completed_ios": check.completed_ios,
                "volume_ios": check.volume_ios,
                "vpath_ios": check.vpath_ios,
                "match": check.matches(),
            })),
            "completed_ios": self.completed_ios,
            "failed_ios": self.failed_ios,
            "throttled_ios": self.throttled_ios,
            "verify": c.verify.then(|| json!({
                "checked_ios": self.verify_checked,
                "errors": self.verify_errors,
                "first_mismatch": self.first_mismatch.as_ref().map(ToString::to_string),
            })),
        })
    }

    /// The table for people.
    pub fn print(&self) {
        let c = &self.config;
        let lun = format!("{:?}", c.lun).to_lowercase();
        println!(
            "sds perf: {} {} QD{}, {} job{} on {} reactor{} (core{} {}), {} polling, domain layer {}{}",
            c.workload.as_str(),
            format_size(u64::from(c.io_bytes)),
            c.queue_depth,
            c.jobs(),
            if c.jobs() == 1 { "" } else { "s" },
            c.cores.len(),
            if c.cores.len() == 1 { "" } else { "s" },
            if c.cores.len() == 1 { "" } else { "s" },
            c.cores
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            c.poll.as_str(),
            if c.domain { "on" } else { "bypassed" },
            if c.workload == super::options::Workload::RandRw {
                format!(", {}% reads", c.read_percent)
            } else {
                String::new()
            },
        );
        if let Some(remote) = &c.remote {
            println!(
                "  {} (namespace {}, {}-byte blocks, {} digests): the first {} used, as {} over {} I/O queue{}; {:.2} s measured after {:.2} s ramp",
                remote.url,
                remote.nsid,
                c.block_size_bytes,
                remote.digests,
                format_size(c.volume_size_bytes),
                remote.hostnqn,
                remote.queues,
                if remote.queues == 1 { "" } else { "s" },
                c.time.as_secs_f64(),
                c.ramp.as_secs_f64(),
            );
        } else {
            println!(
                "  {} {} volume ({}-byte blocks{}) on a {} {lun} LUN ({}-byte blocks, {} extents); {:.2} s measured after {:.2} s ramp",
                format_size(c.volume_size_bytes),
                if c.thin { "thin" } else { "thick" },
                c.volume_block_size_bytes,
                if c.volume_block_size_bytes < c.block_size_bytes {
                    ": writes read-modify-write"
                } else {
                    ""
                },
                format_size(c.lun_size_bytes),
                c.block_size_bytes,
                format_size(c.extent_bytes),
                c.time.as_secs_f64(),
                c.ramp.as_secs_f64(),
            );
        }
        println!();
        let header = [
            "JOB", "CORE", "IOPS", "MiB/s", "MEAN us", "P50 us", "P99 us", "P99.9 us",
        ];
        let mut rows: Vec<[String; 8]> = self
            .jobs
            .iter()
            .map(|j| {
                [
                    j.job.to_string(),
                    j.core.to_string(),
                    format!("{:.0}", j.iops),
                    format!("{:.1}", j.mib_per_sec),
                    format!("{:.2}", j.latency.mean_us),
                    format!("{:.2}", j.latency.p50_us),
                    format!("{:.2}", j.latency.p99_us),
                    format!("{:.2}", j.latency.p999_us),
                ]
            })
            .collect();
        rows.push([
            "total".into(),
            String::new(),
            format!("{:.0}", self.iops),
            format!("{:.1}", self.mib_per_sec),
            format!("{:.2}", self.latency.mean_us),
            format!("{:.2}", self.latency.p50_us),
            format!("{:.2}", self.latency.p99_us),
            format!("{:.2}", self.latency.p999_us),
        ]);
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let text: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, &w))| {
                    if i < 2 {
                        format!("{cell:<w$}")
                    } else {
                        format!("{cell:>w$}")
                    }
                })
                .collect();
            println!("  {}", text.join("  ").trim_end());
        };
        line(&header.map(String::from));
        for row in &rows {
            line(row);
        }
        println!();
        let cpu_s: f64 = self.reactors.iter().map(|r| r.cpu_s).sum();
        let wall_s: f64 = self.reactors.iter().map(|r| r.wall_s).sum();
        println!(
            "  IOPS per core: {:.0}  (reactor CPU {cpu_s:.2} s over {wall_s:.2} s of reactor wall time = {:.2} cores; {CPU_CLOCK})",
            self.iops_per_core, self.cores_used
        );
        println!(
            "  Whole process: {:.2} s CPU over {:.2} s (all threads and io_uring workers; CLOCK_PROCESS_CPUTIME_ID)",
            self.process.cpu_s, self.process.wall_s
        );
        match &self.cross_check {
            Some(check) => println!(
                "  Counters: {} I/Os completed, volume counted {}, VP counted {}: {}",
                check.completed_ios,
                check.volume_ios,
                match check.vpath_ios {
                    Some(vp) => vp.to_string(),
                    None => format!("{} (bypassed)", check.vpath_ios_bypassed),
                },
                if check.matches() { "match" } else { "MISMATCH" }
            ),
            None => println!(
                "  Counters: {} I/Os completed (a remote target: no counters here to compare)",
                self.completed_ios
            ),
        }
        if self.failed_ios > 0 || self.throttled_ios > 0 {
            println!(
                "  {} I/Os failed, {} asked to wait by the token bucket",
                self.failed_ios, self.throttled_ios
            );
        }
        if c.verify {
            println!(
                "  Verify: {} reads checked, {} mismatches{}",
                self.verify_checked,
                self.verify_errors,
                self.first_mismatch
                    .as_ref()
                    .map(|m| format!("; first: {m}"))
                    .unwrap_or_default()
            );
        }
        for (job, why) in &self.fatal {
            println!("  job {job} stopped early: {why}");
        }
    }
}
