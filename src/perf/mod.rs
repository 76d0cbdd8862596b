//! `sds perf`: an in-process load generator, like SPDK's bdevperf. Part of the binary, built
//! on the library's public API like the rest of the command line.
//!
//! ```text
//!  sds perf ──builds──▶ LUN (null | mem | file) ─▶ pool ─▶ volume (thick, or thin)
//!                       host + domain (no limits) + VP in a published snapshot
//!                       reactors (pinned, busy polling) + provisioning thread
//!           ──attaches──▶ --jobs PerfSessions per reactor ──I/O──▶ BlockEngine ─▶ volume ─▶ LUN
//!           ──phases───▶ prepare (fill) ─▶ ramp ─▶ measure ─▶ stop ──results──▶ report
//! ```
//!
//! Nothing here is a model of the server: the jobs are reactor sessions ([`session`]) that
//! drive the block engine an NBD session drives (`sds::blockio`); only the socket is missing.
//! `--no-domain` turns off the engine's domain layer, so two runs give what it costs.
//!
//! IOPS per core divides the IOPS by the CPU time the reactor threads used over the measured
//! window, read with `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` on each reactor thread by one of
//! its jobs when it sees the window open and close ([`clock::thread_cpu_ns`]).
//!
//! Extending it: a new workload is a [`options::Workload`] variant and an arm in
//! `PerfSession::pick`; a new LUN kind is a [`options::LunChoice`] variant.

pub mod clock;
pub mod job;
pub mod nvmf_job;
pub mod nvmf_target;
pub mod options;
pub mod pattern;
pub mod report;
pub mod session;

pub use options::{PerfArgs, PerfConfig, PerfError};

use nvmf_job::NvmfJob;
use nvmf_target::SetupRequest;
use options::RemoteConfig;

use clock::process_cpu_ns;
use crossbeam::channel::{bounded, Receiver};
use job::{JobResult, JobSpec, RunControl, PHASE_MEASURE, PHASE_RAMP, PHASE_STOP};
use report::{ProcessCpu, Report};
use sds::backend::{open_lun, LunSpec};
use sds::blockio::clock::TickClock;
use sds::domain::qos::RateLimit;
use sds::domain::snapshot::{Published, Snapshot};
use sds::domain::vpath::{AccessMode, Vpath};
use sds::identity::Uuid;
use sds::pool::Pool;
use sds::reactor::mailbox::Message;
use sds::reactor::{self, PollMode, ReactorHandle};
use sds::volume::provisioner::{provision, Provisioner};
use sds::volume::Volume;
use session::PerfSession;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Names of what a run builds.
const PERF_NAME: &str = "perf";
const PERF_HOST: &str = "perf";
/// Longest wait for the jobs to fill their regions (`--verify` with reads) and start.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wait for the jobs to report after the window closes (a `--verify` read-back).
const RESULT_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the coordinator looks at the jobs while it waits for them.
const WAIT_STEP: Duration = Duration::from_millis(5);

/// `sds perf`: runs, prints the report (JSON with `json`) and returns an error (a non-zero
/// exit) if the run failed or found a problem.
pub fn main(args: PerfArgs, json: bool) -> Result<(), String> {
    sds::logger::init(&args.log_level);
    let chain = |error: &PerfError| sds::logger::error_chain(error);
    let config = args.validate().map_err(|e| chain(&e))?;
    let report = run(&config).map_err(|e| chain(&e))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
        );
    } else {
        report.print();
    }
    report.problems().map_err(|e| chain(&e))
}

/// A scratch LUN file the run created: removed when the run ends.
struct ScratchFile(Option<PathBuf>);

impl Drop for ScratchFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The reactors and the provisioning thread of a run: stopped and joined when dropped, on
/// every way out of [`run`].
struct Threads {
    reactors: Vec<Arc<ReactorHandle>>,
    reactor_threads: Vec<JoinHandle<()>>,
    provisioner: Option<(Provisioner, JoinHandle<()>)>,
}

impl Threads {
    /// One reactor on each of `cores` (reactor `index` on `cores[index]`), no provisioner yet.
    /// Dropped on an error, it stops the reactors already running.
    fn with_reactors(cores: &[usize], poll: PollMode) -> Result<Self, PerfError> {
        let mut threads = Threads {
            reactors: Vec::with_capacity(cores.len()),
            reactor_threads: Vec::with_capacity(cores.len()),
            provisioner: None,
        };
        for (index, &core) in cores.iter().enumerate() {
            let (handle, thread) = reactor::spawn(index, core, poll)?;
            threads.reactors.push(handle);
            threads.reactor_threads.push(thread);
        }
        Ok(threads)
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        for handle in &self.reactors {
            handle.post(Message::Shutdown);
        }
        for thread in self.reactor_threads.drain(..) {
            let _ = thread.join();
        }
        if let Some((provisioner, thread)) = self.provisioner.take() {
            provisioner.stop();
            let _ = thread.join();
        }
    }
}

/// Builds the stack, runs the jobs and gathers the report.
pub fn run(config: &PerfConfig) -> Result<Report, PerfError> {
    if let Some(remote) = &config.remote {
        return run_remote(config, remote);
    }
    let clock = TickClock::shared();
    let scratch = ScratchFile(
        config
            .lun_path
            .clone()
            .filter(|_| config.lun_path_is_scratch),
    );
    let volume = build_volume(config)?;
    let mut threads = Threads::with_reactors(&config.cores, config.poll)?;
    let (provisioner, provisioner_thread) = Provisioner::spawn().map_err(PerfError::Provisioner)?;
    threads.provisioner = Some((provisioner.clone(), provisioner_thread));

    // A host, a domain with no limits and one read-write VP, published as the control thread
    // would publish them.
    let reactor_count = threads.reactors.len();
    let vpath = Arc::new(Vpath::new(
        1,
        PERF_HOST,
        volume.clone(),
        AccessMode::ReadWrite,
        0,
        reactor_count,
    ));
    let published = Arc::new(Published::default());
    published.publish(Snapshot::one_path(
        PERF_HOST,
        vpath.clone(),
        PERF_NAME,
        BTreeMap::from([(PERF_NAME.to_string(), volume.clone())]),
        vec![RateLimit::default(); reactor_count].into_boxed_slice(),
    ));

    let control = Arc::new(RunControl::default());
    let jobs = config.jobs();
    let (sender, results) = bounded::<JobResult>(jobs);
    let region_bytes = config.region_bytes();
    for (reactor_index, handle) in threads.reactors.iter().enumerate() {
        for local in 0..config.jobs_per_reactor {
            let job = reactor_index * config.jobs_per_reactor + local;
            let spec = JobSpec {
                report_cpu: local == 0,
                ..job_spec(config, job, region_bytes)
            };
            let session = PerfSession::new(
                spec,
                control.clone(),
                sender.clone(),
                vpath.clone(),
                published.clone(),
                provisioner.clone(),
            );
            handle.post(Message::Attach(Box::new(session)));
        }
    }
    drop(sender);
    let gathered = coordinate(config, &control, &results);
    // Stop the reactors (and with them any job still running) before reading the counters.
    drop(threads);
    drop(scratch);
    let (gathered, process) = gathered?;
    Ok(Report::build(
        config,
        gathered,
        process,
        Some((volume.stats.totals(), vpath.stats.totals())),
        clock.ticks_per_sec(),
    ))
}

/// `--target`: connects to the remote controller, runs one job per I/O queue on the reactors
/// and gathers the report. The admin queue's keep-alive runs until the jobs are done.
/// Job `job` of `config`: its workload and its region of `region_bytes`, on a volume this run
/// made (zeroed), not reading its reactor's CPU time; the callers say otherwise where needed.
fn job_spec(config: &PerfConfig, job: usize, region_bytes: u64) -> JobSpec {
    JobSpec {
        job,
        workload: config.workload,
        read_percent: config.read_percent,
        io_bytes: config.io_bytes,
        queue_depth: config.queue_depth,
        region_start_bytes: job as u64 * region_bytes,
        units: config.region_units(),
        domain: config.domain,
        verify: config.verify,
        report_cpu: false,
        starts_zeroed: true,
    }
}

fn run_remote(config: &PerfConfig, remote: &RemoteConfig) -> Result<Report, PerfError> {
    let clock = TickClock::shared();
    let hostid = Uuid::new_random().map_err(PerfError::Uuid)?;
    let mut connected = nvmf_target::connect(&SetupRequest {
        url: &remote.url,
        hostnqn: &remote.hostnqn,
        hostid: hostid.0,
        nsid: remote.nsid,
        io_queues: remote.queues,
        queue_depth: config.queue_depth,
        io_bytes: config.io_bytes,
        digests: remote.digests,
    })
    .map_err(|source| PerfError::Nvmf {
        url: remote.url.to_string(),
        source,
    })?;
    let namespace = connected.namespace;
    let controller = connected.controller;
    log::info!(
        "{}: controller {} (MDTS {:?} bytes, {} bytes in-capsule, {} queue entries), namespace {} of {} {}-byte blocks",
        remote.url,
        controller.cntlid,
        controller.max_transfer_bytes,
        controller.in_capsule_bytes,
        controller.max_queue_entries,
        namespace.nsid,
        namespace.blocks,
        namespace.block_bytes
    );
    let config = config.for_namespace(namespace.block_bytes, namespace.size_bytes())?;
    let threads = Threads::with_reactors(&config.cores, config.poll)?;
    let control = Arc::new(RunControl::default());
    let (sender, results) = bounded::<JobResult>(config.jobs());
    let region_bytes = config.region_bytes();
    let reactor_count = threads.reactors.len();
    for (job, queue) in std::mem::take(&mut connected.io_queues)
        .into_iter()
        .enumerate()
    {
        let spec = JobSpec {
            domain: false,
            // Queues go round robin: the first queue of each reactor reads its CPU time.
            report_cpu: job < reactor_count,
            // A remote namespace holds whatever it held.
            starts_zeroed: false,
            ..job_spec(&config, job, region_bytes)
        };
        let session = NvmfJob::new(
            spec,
            control.clone(),
            sender.clone(),
            queue,
            namespace,
            connected.controller.in_capsule_bytes,
        );
        threads.reactors[job % reactor_count].post(Message::Attach(Box::new(session)));
    }
    drop(sender);
    let gathered = coordinate(&config, &control, &results);
    drop(threads);
    if let Some(why) = connected.keep_alive.stop() {
        log::warn!(
            "{}: keep-alive on the admin queue failed: {why}",
            remote.url
        );
    }
    let (gathered, process) = gathered?;
    Ok(Report::build(
        &config,
        gathered,
        process,
        None,
        clock.ticks_per_sec(),
    ))
}

/// The LUN, its pool and the volume; a thick volume has every extent mapped (and zeroed).
fn build_volume(config: &PerfConfig) -> Result<Arc<Volume>, PerfError> {
    let kind = config.lun.kind();
    let lun = open_lun(&LunSpec {
        name: format!("{PERF_NAME}0"),
        kind,
        path: config.lun_path.clone(),
        size_bytes: Some(config.lun_size_bytes),
        block_size_bytes: config.block_size_bytes,
        remote: None,
    })
    .map_err(|source| PerfError::Lun {
        kind: kind.as_str(),
        source,
    })?;
    let uuid = || Uuid::new_random().map(|u| u.0).map_err(PerfError::Uuid);
    let pool = Pool::create(PERF_NAME, uuid()?, config.extent_bytes, None, vec![lun])
        .map_err(PerfError::Pool)?;
    // A volume block smaller than the LUN's sends every write through the provisioning
    // thread's read-modify-write, as it does for a host.
    let volume = Arc::new(Volume::new(
        PERF_NAME,
        uuid()?,
        Arc::new(pool),
        config.volume_size_bytes,
        config.volume_block_size_bytes,
        config.thin,
    ));
    if !config.thin {
        let wanted: Vec<(&Volume, u64)> = (0..config.volume_extents())
            .map(|extent| (volume.as_ref(), extent))
            .collect();
        for result in provision(&wanted) {
            result.map_err(PerfError::Provision)?;
        }
    }
    Ok(volume)
}

/// Runs the phases: waits for every job to be ready, ramps, measures, stops, and gathers one
/// result per job, with the whole process's CPU time over the window.
fn coordinate(
    config: &PerfConfig,
    control: &RunControl,
    results: &Receiver<JobResult>,
) -> Result<(Vec<JobResult>, ProcessCpu), PerfError> {
    let jobs = config.jobs();
    let mut gathered = Vec::with_capacity(jobs);
    let started = Instant::now();
    while control.ready.load(Ordering::Acquire) < jobs {
        // A job that reports before everyone is ready has stopped early: say why.
        if let Ok(result) = results.try_recv() {
            control.phase.store(PHASE_STOP, Ordering::Release);
            return Err(PerfError::Job {
                job: result.job,
                reason: result
                    .fatal
                    .unwrap_or_else(|| "it finished before the run began".into()),
            });
        }
        if started.elapsed() > READY_TIMEOUT {
            control.phase.store(PHASE_STOP, Ordering::Release);
            return Err(PerfError::Timeout {
                jobs: jobs - control.ready.load(Ordering::Acquire),
                waited_s: READY_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(WAIT_STEP);
    }
    control.phase.store(PHASE_RAMP, Ordering::Release);
    let ended_early = hold_phase(config.ramp, results, &mut gathered);
    let (cpu_start, wall_start) = (process_cpu_ns(), Instant::now());
    control.phase.store(PHASE_MEASURE, Ordering::Release);
    if !ended_early {
        hold_phase(config.time, results, &mut gathered);
    }
    control.phase.store(PHASE_STOP, Ordering::Release);
    let process = ProcessCpu {
        cpu_s: cpu_start
            .zip(process_cpu_ns())
            .map_or(0.0, |(start, end)| end.saturating_sub(start) as f64 / 1e9),
        wall_s: wall_start.elapsed().as_secs_f64(),
    };
    let deadline = Instant::now() + RESULT_TIMEOUT;
    while gathered.len() < jobs {
        match results.recv_deadline(deadline) {
            Ok(result) => gathered.push(result),
            Err(_) => {
                return Err(PerfError::Timeout {
                    jobs: jobs - gathered.len(),
                    waited_s: RESULT_TIMEOUT.as_secs(),
                })
            }
        }
    }
    Ok((gathered, process))
}

/// Waits out a phase of `duration`, unless a job reports first (it stopped: a fault of its
/// own, or its target ended the connection), which ends the run now instead of after the
/// whole `--time`. Whether it ended early; the early result joins `gathered`.
fn hold_phase(
    duration: Duration,
    results: &Receiver<JobResult>,
    gathered: &mut Vec<JobResult>,
) -> bool {
    match results.recv_timeout(duration) {
        Ok(result) => {
            gathered.push(result);
            true
        }
        Err(crossbeam::channel::RecvTimeoutError::Timeout) => false,
        Err(crossbeam::channel::RecvTimeoutError::Disconnected) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: PerfArgs,
    }

    fn config(args: &[&str]) -> PerfConfig {
        let mut argv = vec!["perf", "--time", "0.2", "--ramp", "0", "--poll", "adaptive"];
        argv.extend_from_slice(args);
        Wrapper::parse_from(argv).args.validate().expect("valid")
    }

    #[test]
    fn verify_passes_on_ram_and_catches_a_lun_that_loses_writes() {
        let args = [
            "--lun",
            "mem",
            "--verify",
            "--rw",
            "randwrite",
            "--volume-size",
            "2M",
            "--qd",
            "4",
        ];
        let report = run(&config(&args)).expect("run on a mem LUN");
        assert_eq!(report.verify_checked, 512, "every unit read back");
        assert_eq!(report.verify_errors, 0);
        assert!(report.problems().is_ok());
        assert!(report.cross_check.is_some_and(|check| check.matches()));
        // The same run on a LUN that stores nothing (refused on the command line): the
        // read-back must see that what was written is not there.
        let mut lossy = config(&args);
        lossy.lun = options::LunChoice::Null;
        let report = run(&lossy).expect("run on a null LUN");
        assert!(
            report.verify_errors > 0,
            "{} checked",
            report.verify_checked
        );
        assert!(matches!(report.problems(), Err(PerfError::Verify { .. })));
    }
}
