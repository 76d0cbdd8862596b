//! `sds perf`'s command line ([`PerfArgs`]) and its validation into a [`PerfConfig`]: every
//! value a run uses is checked here, before anything is built, with an error that names the
//! option.

use clap::{Args, ValueEnum};
use sds::backend::LunKind;
use sds::constants::{
    MAX_EXTENT_BYTES, MAX_IO_BYTES, MAX_REACTORS, MAX_VOLUME_EXTENTS, MIN_EXTENT_BYTES,
    RING_ENTRIES,
};
use sds::pool::on_disk::Layout;
use sds::reactor::PollMode;
use sds::units::{format_size, parse_size};
use std::path::PathBuf;
use std::time::Duration;

/// Largest queue depth of one job (its slots and buffers are allocated up front).
pub const MAX_PERF_QUEUE_DEPTH: u32 = 256;
/// Largest number of jobs on one reactor.
pub const MAX_PERF_JOBS_PER_REACTOR: u32 = 64;
/// I/Os one reactor may have in flight for all its jobs: what its ring holds.
pub const MAX_PERF_INFLIGHT_PER_REACTOR: u64 = RING_ENTRIES as u64;
/// Buffer bytes of one job (queue depth × I/O size).
pub const MAX_PERF_BUFFER_BYTES_PER_JOB: u64 = 256 << 20;
/// Longest measured run and ramp, in seconds.
pub const MAX_PERF_TIME_SECS: f64 = 24.0 * 3600.0;
pub const MAX_PERF_RAMP_SECS: f64 = 3600.0;
/// Units (I/O-sized blocks) one job may track for `--verify`: one stamp (4 bytes) each.
pub const MAX_VERIFY_UNITS_PER_JOB: u64 = 1 << 26;

const _: () = assert!(MAX_PERF_QUEUE_DEPTH as u64 <= MAX_PERF_INFLIGHT_PER_REACTOR);
const _: () = assert!(
    MAX_PERF_QUEUE_DEPTH <= 1 << 12,
    "the slot field of a perf ring tag"
);

/// The LUN driver under the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LunChoice {
    /// Stores nothing and completes every I/O at once: what the rest of the stack costs
    Null,
    /// RAM: every I/O is a copy, completed at once
    Mem,
    /// A file driven through the reactor's io_uring, O_DIRECT where the file system allows it
    File,
}

impl LunChoice {
    pub fn kind(self) -> LunKind {
        match self {
            Self::Null => LunKind::Null,
            Self::Mem => LunKind::Mem,
            Self::File => LunKind::File,
        }
    }
}

/// What each job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Random reads
    #[value(name = "randread")]
    RandRead,
    /// Random writes
    #[value(name = "randwrite")]
    RandWrite,
    /// Sequential reads, wrapping at the end of the job's region
    #[value(name = "read")]
    Read,
    /// Sequential writes, wrapping at the end of the job's region
    #[value(name = "write")]
    Write,
    /// Random reads and writes, --rwmixread percent of them reads
    #[value(name = "randrw")]
    RandRw,
}

impl Workload {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RandRead => "randread",
            Self::RandWrite => "randwrite",
            Self::Read => "read",
            Self::Write => "write",
            Self::RandRw => "randrw",
        }
    }

    pub fn is_random(self) -> bool {
        matches!(self, Self::RandRead | Self::RandWrite | Self::RandRw)
    }

    pub fn has_writes(self) -> bool {
        matches!(self, Self::RandWrite | Self::Write | Self::RandRw)
    }
}

/// `sds perf`: an in-process load generator, like SPDK's bdevperf.
#[derive(Args, Clone, Debug)]
#[command(after_long_help = "\
Builds everything in this process: the LUN, a pool and a volume on it, a host, a storage domain \
with no limits and a virtual path, and the reactors; then each job keeps --qd I/Os of --bs \
bytes going through the domain layer, the volume's map and the LUN driver, as an NBD \
connection's requests go, with no network. No server is started and nothing is kept.

Prints IOPS, MiB/s and latency percentiles per job and in total, IOPS per core (IOPS over the \
CPU time of the reactor threads during the measured window, from CLOCK_THREAD_CPUTIME_ID), and \
a cross-check: the I/Os the jobs completed against what the volume's and the VP's own counters \
saw. --json prints all of it as one JSON object instead. Exits non-zero on a bad option, a \
failed I/O, a --verify mismatch or counters that disagree.

Example: the cost of the domain layer on a RAM volume:
  sds perf --lun mem --rw randread --bs 4k --qd 32 --time 5
  sds perf --lun mem --rw randread --bs 4k --qd 32 --time 5 --no-domain")]
pub struct PerfArgs {
    /// LUN driver under the volume: null (stores nothing: the cost of the stack alone), mem
    /// (RAM) or file (io_uring on a file) [default: null; mem with --verify]
    #[arg(long, value_enum)]
    pub lun: Option<LunChoice>,
    /// Size of the LUN [default: just large enough for the volume and the pool's metadata]
    #[arg(long, value_parser = parse_size)]
    pub lun_size: Option<u64>,
    /// The file of --lun file [default: a new file in $TMPDIR, removed afterwards]. An existing
    /// file is used as it is (and overwritten: it is formatted as a pool)
    #[arg(long)]
    pub lun_path: Option<PathBuf>,
    /// Block size of the LUN and of the volume: 512 or 4096
    #[arg(long, default_value = "4096", value_parser = parse_size)]
    pub block_size: u64,
    /// Block size of the volume alone, 512 or 4096, at most --block-size [default:
    /// --block-size]. Smaller than the LUN's, every write takes the read-modify-write path
    /// (the provisioning thread), as a host's would
    #[arg(long, value_parser = parse_size)]
    pub volume_block_size: Option<u64>,
    /// Size of the volume the jobs share; each job works in its own equal slice of it
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub volume_size: u64,
    /// Extent size of the pool: a power of two from 64K to 1G
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub extent_size: u64,
    /// Make the volume thin: reads of never-written blocks then cost nothing and first writes
    /// wait for the provisioning thread [default: thick, every extent mapped before the run]
    #[arg(long)]
    pub thin: bool,
    /// I/O pattern of every job
    #[arg(long, value_enum, default_value = "randread")]
    pub rw: Workload,
    /// Percentage of reads with --rw randrw (0 to 100)
    #[arg(long, default_value_t = 50)]
    pub rwmixread: u32,
    /// Bytes per I/O (e.g. 4k, 128k): a multiple of the volume's block size, at most 4M; I/Os are aligned
    /// to their size
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub bs: u64,
    /// I/Os each job keeps in flight (1 to 256). With LUNs that complete at once (null, mem),
    /// each I/O completes inside its submission and the job cycles through its QD slots
    #[arg(long, default_value_t = 32)]
    pub qd: u32,
    /// Jobs (perf sessions, each with its own slots, buffers and slice of the volume) per
    /// reactor; jobs × qd at most 1024 per reactor
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// Cores to run one pinned reactor each on: `1`, `0,1`, `0-3` [default: the last core, as
    /// `sds serve` chooses]
    #[arg(long)]
    pub cores: Option<String>,
    /// How idle reactors wait: busy (spin, like SPDK's bdevperf) or adaptive (sleep in the
    /// kernel, the default of `sds serve`)
    #[arg(long, value_enum, default_value = "busy")]
    pub poll: PollMode,
    /// Seconds measured (fractions allowed)
    #[arg(long, default_value_t = 5.0)]
    pub time: f64,
    /// Seconds of load before measuring starts (fractions allowed)
    #[arg(long, default_value_t = 0.5)]
    pub ramp: f64,
    /// Bypass the domain layer: no snapshot load, VP lookup, domain's allowed operations, QoS
    /// token bucket or per-VP statistics per I/O; the engine's own checks stay (range,
    /// alignment, the VP's read-only mode). What the domain layer costs is the difference with
    /// a run without this
    #[arg(long)]
    pub no_domain: bool,
    /// Check the data: writes carry a pattern naming their place and their write; reads
    /// compare every byte. Read workloads first fill the jobs' slices with it, write workloads
    /// read every slice back after the run. Needs a LUN that stores data (mem or file); exits
    /// non-zero on a mismatch
    #[arg(long)]
    pub verify: bool,
    /// Log level of the components the run builds: error, warn, info, debug
    #[arg(long, default_value = "error")]
    pub log_level: String,
    /// Drive a remote NVMe/TCP target instead of a volume built here:
    /// nvme-tcp://HOST[:PORT]/SUBNQN (port 4420 by default). The jobs are I/O queues
    /// (--queues), each on a reactor of --cores; --volume-size is then how much of the
    /// namespace they use (at most all of it), and --lun, --thin and the other volume options
    /// do not apply
    #[arg(long)]
    pub target: Option<String>,
    /// Host NQN the initiator connects as (--target) [default:
    /// nqn.2014-08.org.nvmexpress:uuid:<a new random UUID>]
    #[arg(long)]
    pub hostnqn: Option<String>,
    /// I/O queues to open on --target, one job each, spread round robin over --cores
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Namespace of --target to drive
    #[arg(long, default_value_t = 1)]
    pub nsid: u32,
    /// CRC32C digests to ask --target for on every queue: none, header, data or both
    #[arg(long, value_enum, default_value = "none")]
    pub digest: DigestChoice,
}

/// `--digest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DigestChoice {
    None,
    Header,
    Data,
    Both,
}

impl DigestChoice {
    pub fn digests(self) -> super::nvmf_target::Digests {
        super::nvmf_target::Digests {
            header: matches!(self, Self::Header | Self::Both),
            data: matches!(self, Self::Data | Self::Both),
        }
    }
}

/// `--target` and what goes with it, validated.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    pub url: super::nvmf_target::TargetUrl,
    pub hostnqn: String,
    pub queues: u32,
    pub nsid: u32,
    pub digests: super::nvmf_target::Digests,
}

/// Why `sds perf` could not run, or found a problem.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    #[error("{option}: {reason}")]
    Option {
        option: &'static str,
        reason: String,
    },
    #[error("cannot open the {kind} LUN")]
    Lun {
        kind: &'static str,
        #[source]
        source: sds::backend::LunError,
    },
    #[error("cannot build the pool")]
    Pool(#[source] sds::pool::PoolError),
    #[error("cannot provision the thick volume")]
    Provision(#[source] sds::pool::PoolError),
    #[error(transparent)]
    Reactor(#[from] sds::reactor::ReactorError),
    #[error("cannot start the provisioning thread")]
    Provisioner(#[source] std::io::Error),
    #[error("cannot read random bytes for a UUID")]
    Uuid(#[source] std::io::Error),
    #[error("job {job} stopped: {reason}")]
    Job { job: usize, reason: String },
    #[error("cannot set up {url}")]
    Nvmf {
        url: String,
        #[source]
        source: super::nvmf_target::SetupError,
    },
    #[error("{jobs} jobs did not report within {waited_s} s")]
    Timeout { jobs: usize, waited_s: u64 },
    #[error("verify: {errors} reads returned other data than was written; first: {first}")]
    Verify { errors: u64, first: String },
    #[error("{errors} I/Os failed")]
    IoErrors { errors: u64 },
    #[error(
        "the jobs completed {completed} I/Os but the volume counted {volume} and the VP {vpath}"
    )]
    CountersDiffer {
        completed: u64,
        volume: u64,
        vpath: u64,
    },
}

fn bad(option: &'static str, reason: impl Into<String>) -> PerfError {
    PerfError::Option {
        option,
        reason: reason.into(),
    }
}

/// A run, validated.
#[derive(Clone, Debug)]
pub struct PerfConfig {
    pub lun: LunChoice,
    pub lun_size_bytes: u64,
    /// The file of a file LUN.
    pub lun_path: Option<PathBuf>,
    /// Whether that file is the run's own scratch file (no --lun-path), removed at the end.
    pub lun_path_is_scratch: bool,
    /// The LUN's block size.
    pub block_size_bytes: u32,
    /// The volume's block size (at most the LUN's).
    pub volume_block_size_bytes: u32,
    pub volume_size_bytes: u64,
    pub extent_bytes: u64,
    pub thin: bool,
    pub workload: Workload,
    pub read_percent: u32,
    pub io_bytes: u32,
    pub queue_depth: usize,
    pub jobs_per_reactor: usize,
    pub cores: Vec<usize>,
    pub poll: PollMode,
    pub time: Duration,
    pub ramp: Duration,
    pub domain: bool,
    pub verify: bool,
    /// `--target`: the jobs drive a remote NVMe/TCP namespace, not a volume built here.
    pub remote: Option<RemoteConfig>,
}

impl PerfConfig {
    pub fn jobs(&self) -> usize {
        match &self.remote {
            Some(remote) => remote.queues as usize,
            None => self.jobs_per_reactor * self.cores.len(),
        }
    }

    /// Bytes of the volume each job works in (a multiple of the I/O size).
    pub fn region_bytes(&self) -> u64 {
        let io = u64::from(self.io_bytes);
        self.volume_size_bytes / self.jobs() as u64 / io * io
    }

    /// I/O-sized units in each job's region.
    pub fn region_units(&self) -> u64 {
        self.region_bytes() / u64::from(self.io_bytes)
    }

    pub fn volume_extents(&self) -> u64 {
        self.volume_size_bytes.div_ceil(self.extent_bytes)
    }
}

/// A percentage or a number of seconds as given.
fn seconds(
    option: &'static str,
    value: f64,
    min_exclusive: bool,
    max: f64,
) -> Result<Duration, PerfError> {
    let low_ok = if min_exclusive {
        value > 0.0
    } else {
        value >= 0.0
    };
    if !(low_ok && value <= max) {
        let low = if min_exclusive {
            "more than 0"
        } else {
            "0 or more"
        };
        return Err(bad(
            option,
            format!("{value} is not a number of seconds {low}, at most {max}"),
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// The smallest LUN that holds a pool with `extents` extents of `extent_bytes`.
pub fn lun_bytes_for(extents: u64, block_size_bytes: u32, extent_bytes: u64) -> Option<u64> {
    let mut size = extents.checked_mul(extent_bytes)?;
    // Each round adds what the metadata took from the data area; two or three rounds suffice.
    for _ in 0..64 {
        let have = Layout::compute(size, block_size_bytes, extent_bytes, None)
            .map(|layout| layout.extent_count)
            .unwrap_or(0);
        if have >= extents {
            return Some(size);
        }
        size = size.checked_add((extents - have).max(1) * extent_bytes)?;
    }
    None
}

impl PerfArgs {
    /// Checks every option; the first bad one is the error.
    pub fn validate(&self) -> Result<PerfConfig, PerfError> {
        if self.target.is_some() {
            return self.validate_remote();
        }
        for (given, option) in [
            (self.hostnqn.is_some(), "--hostnqn"),
            (self.queues != 1, "--queues"),
            (self.nsid != 1, "--nsid"),
            (self.digest != DigestChoice::None, "--digest"),
        ] {
            if given {
                return Err(bad(option, "applies only with --target"));
            }
        }
        let block_size_bytes = match self.block_size {
            512 => 512u32,
            4096 => 4096,
            other => return Err(bad("--block-size", format!("{other} is not 512 or 4096"))),
        };
        let block = u64::from(block_size_bytes);
        let volume_block_size_bytes = match self.volume_block_size {
            None => block_size_bytes,
            Some(512) => 512u32,
            Some(4096) if block_size_bytes == 4096 => 4096,
            Some(4096) => {
                return Err(bad(
                    "--volume-block-size",
                    "4096 is larger than the LUN's block size (--block-size 512)",
                ))
            }
            Some(other) => {
                return Err(bad(
                    "--volume-block-size",
                    format!("{other} is not 512 or 4096"),
                ))
            }
        };
        let volume_block = u64::from(volume_block_size_bytes);
        if self.bs == 0 || self.bs % volume_block != 0 {
            return Err(bad(
                "--bs",
                format!(
                    "{} is not a multiple of the block size {volume_block} (--block-size, --volume-block-size)",
                    self.bs
                ),
            ));
        }
        if self.bs > MAX_IO_BYTES as u64 {
            return Err(bad(
                "--bs",
                format!(
                    "{} is more than the largest I/O, {}",
                    self.bs,
                    format_size(MAX_IO_BYTES as u64)
                ),
            ));
        }
        if !(1..=MAX_PERF_QUEUE_DEPTH).contains(&self.qd) {
            return Err(bad(
                "--qd",
                format!(
                    "{} is not a queue depth from 1 to {MAX_PERF_QUEUE_DEPTH}",
                    self.qd
                ),
            ));
        }
        if !(1..=MAX_PERF_JOBS_PER_REACTOR).contains(&self.jobs) {
            return Err(bad(
                "--jobs",
                format!(
                    "{} is not a number of jobs from 1 to {MAX_PERF_JOBS_PER_REACTOR}",
                    self.jobs
                ),
            ));
        }
        if u64::from(self.jobs) * u64::from(self.qd) > MAX_PERF_INFLIGHT_PER_REACTOR {
            return Err(bad(
                "--jobs",
                format!(
                    "{} jobs × QD {} is more than the {MAX_PERF_INFLIGHT_PER_REACTOR} I/Os a reactor's ring holds",
                    self.jobs, self.qd
                ),
            ));
        }
        if u64::from(self.qd) * self.bs > MAX_PERF_BUFFER_BYTES_PER_JOB {
            return Err(bad(
                "--qd",
                format!(
                    "QD {} × {} bytes is more buffer than a job may hold ({})",
                    self.qd,
                    self.bs,
                    format_size(MAX_PERF_BUFFER_BYTES_PER_JOB)
                ),
            ));
        }
        if self.rwmixread > 100 {
            return Err(bad(
                "--rwmixread",
                format!("{} is not a percentage (0 to 100)", self.rwmixread),
            ));
        }
        let time = seconds("--time", self.time, true, MAX_PERF_TIME_SECS)?;
        let ramp = seconds("--ramp", self.ramp, false, MAX_PERF_RAMP_SECS)?;
        if !self.extent_size.is_power_of_two()
            || !(MIN_EXTENT_BYTES..=MAX_EXTENT_BYTES).contains(&self.extent_size)
        {
            return Err(bad(
                "--extent-size",
                format!("{} is not a power of two from 64K to 1G", self.extent_size),
            ));
        }
        let cores = match &self.cores {
            Some(text) => sds::serve::parse_cores(text).map_err(|reason| PerfError::Option {
                option: "--cores",
                reason: reason.trim_start_matches("--cores: ").to_string(),
            })?,
            None => vec![sds::serve::default_core()],
        };
        if let Some(available) = core_affinity::get_core_ids() {
            let ids: Vec<usize> = available.iter().map(|c| c.id).collect();
            if let Some(core) = cores.iter().find(|c| !ids.contains(c)) {
                return Err(bad(
                    "--cores",
                    format!("core {core} is not one this process may run on ({ids:?})"),
                ));
            }
        }
        let mut unique = cores.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != cores.len() || cores.len() > MAX_REACTORS {
            return Err(bad(
                "--cores",
                format!("give each core once, at most {MAX_REACTORS}"),
            ));
        }
        if self.volume_size == 0 || self.volume_size % block != 0 {
            return Err(bad(
                "--volume-size",
                format!(
                    "{} is not a non-zero multiple of the block size {block}",
                    self.volume_size
                ),
            ));
        }
        if self.volume_size.div_ceil(self.extent_size) > MAX_VOLUME_EXTENTS {
            return Err(bad(
                "--volume-size",
                format!(
                    "more than {MAX_VOLUME_EXTENTS} extents of {}",
                    format_size(self.extent_size)
                ),
            ));
        }
        let lun = self.lun.unwrap_or(if self.verify {
            LunChoice::Mem
        } else {
            LunChoice::Null
        });
        let lun_path = match (lun, &self.lun_path) {
            (LunChoice::File, Some(path)) => Some(path.clone()),
            (LunChoice::File, None) => {
                Some(std::env::temp_dir().join(format!("sds-perf-{}.img", std::process::id())))
            }
            (_, Some(_)) => {
                return Err(bad("--lun-path", "only a file LUN (--lun file) has a path"))
            }
            (_, None) => None,
        };
        if self.verify && lun == LunChoice::Null {
            return Err(bad(
                "--verify",
                "a null LUN stores nothing to read back: use --lun mem or --lun file",
            ));
        }
        let config = PerfConfig {
            lun,
            lun_size_bytes: 0,
            lun_path_is_scratch: lun == LunChoice::File && self.lun_path.is_none(),
            lun_path,
            block_size_bytes,
            volume_block_size_bytes,
            volume_size_bytes: self.volume_size,
            extent_bytes: self.extent_size,
            thin: self.thin,
            workload: self.rw,
            read_percent: self.rwmixread,
            io_bytes: self.bs as u32,
            queue_depth: self.qd as usize,
            jobs_per_reactor: self.jobs as usize,
            cores,
            poll: self.poll,
            time,
            ramp,
            domain: !self.no_domain,
            verify: self.verify,
            remote: None,
        };
        let units = config.region_units();
        let min_units = if self.verify {
            2 * u64::from(self.qd)
        } else {
            1
        };
        if units < min_units {
            return Err(bad(
                "--volume-size",
                format!(
                    "{} gives each of {} jobs fewer than {min_units} I/Os of {} bytes{}",
                    format_size(self.volume_size),
                    config.jobs(),
                    self.bs,
                    if self.verify {
                        " (--verify needs twice the QD)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if self.verify && units > MAX_VERIFY_UNITS_PER_JOB {
            return Err(bad(
                "--verify",
                format!(
                    "each job would track {units} units; at most {MAX_VERIFY_UNITS_PER_JOB} (use a larger --bs or a smaller --volume-size)"
                ),
            ));
        }
        let needed = lun_bytes_for(config.volume_extents(), block_size_bytes, self.extent_size)
            .ok_or_else(|| bad("--volume-size", "too large for any LUN"))?;
        let lun_size_bytes = match self.lun_size {
            None => needed,
            Some(size) if size % block != 0 => {
                return Err(bad(
                    "--lun-size",
                    format!("{size} is not a multiple of the block size {block}"),
                ))
            }
            Some(size) if size < needed => {
                return Err(bad(
                    "--lun-size",
                    format!(
                        "{} cannot hold a {} volume and the pool's metadata: it needs {}",
                        format_size(size),
                        format_size(self.volume_size),
                        format_size(needed)
                    ),
                ))
            }
            Some(size) => size,
        };
        Ok(PerfConfig {
            lun_size_bytes,
            ..config
        })
    }
}

impl PerfArgs {
    /// `--target`: the options that apply to a remote namespace. What depends on the namespace
    /// (its block size, its size) is checked by [`PerfConfig::for_namespace`] once the set-up
    /// has read it.
    fn validate_remote(&self) -> Result<PerfConfig, PerfError> {
        use super::nvmf_target::{check_nqn, parse_target_url};
        use sds::constants::NVMF_INITIATOR_MAX_IO_QUEUES;
        let text = self.target.as_deref().unwrap_or_default();
        let url = parse_target_url(text).map_err(|reason| bad("--target", reason))?;
        for (given, option) in [
            (self.lun.is_some(), "--lun"),
            (self.lun_size.is_some(), "--lun-size"),
            (self.lun_path.is_some(), "--lun-path"),
            (self.volume_block_size.is_some(), "--volume-block-size"),
            (self.thin, "--thin"),
            (self.no_domain, "--no-domain"),
            (self.jobs != 1, "--jobs"),
        ] {
            if given {
                return Err(bad(
                    option,
                    "does not apply with --target (the namespace is the target's; use --queues for more jobs)",
                ));
            }
        }
        let hostnqn = match &self.hostnqn {
            Some(nqn) => {
                check_nqn("host NQN", nqn).map_err(|reason| bad("--hostnqn", reason))?;
                nqn.clone()
            }
            None => {
                let uuid = sds::identity::Uuid::new_random().map_err(PerfError::Uuid)?;
                format!("nqn.2014-08.org.nvmexpress:uuid:{uuid}")
            }
        };
        if !(1..=NVMF_INITIATOR_MAX_IO_QUEUES).contains(&self.queues) {
            return Err(bad(
                "--queues",
                format!(
                    "{} is not a number of I/O queues from 1 to {NVMF_INITIATOR_MAX_IO_QUEUES}",
                    self.queues
                ),
            ));
        }
        if self.nsid == 0 || self.nsid == u32::MAX {
            return Err(bad(
                "--nsid",
                format!("{} is not a namespace ID", self.nsid),
            ));
        }
        // The options every run shares: checked by the local path's validation on a
        // stand-in volume of the same size, then the stand-in's LUN is dropped.
        let local = PerfArgs {
            target: None,
            hostnqn: None,
            queues: 1,
            nsid: 1,
            digest: DigestChoice::None,
            lun: Some(LunChoice::Null),
            // The namespace's block size is checked once known (for_namespace).
            block_size: 512,
            verify: false,
            ..self.clone()
        };
        let shared = local.validate()?;
        if u64::from(self.queues) * u64::from(self.qd)
            > MAX_PERF_INFLIGHT_PER_REACTOR * shared.cores.len() as u64
        {
            return Err(bad(
                "--queues",
                format!(
                    "{} queues × QD {} is more than the reactors' rings hold ({MAX_PERF_INFLIGHT_PER_REACTOR} each)",
                    self.queues, self.qd
                ),
            ));
        }
        Ok(PerfConfig {
            lun_size_bytes: 0,
            lun_path: None,
            lun_path_is_scratch: false,
            thin: false,
            verify: self.verify,
            domain: false,
            remote: Some(RemoteConfig {
                url,
                hostnqn,
                queues: self.queues,
                nsid: self.nsid,
                digests: self.digest.digests(),
            }),
            ..shared
        })
    }
}

impl PerfConfig {
    /// A `--target` run once the namespace is known: its block size is the block size, and
    /// the jobs share the first `--volume-size` bytes of it (at most all of it).
    pub fn for_namespace(
        &self,
        block_bytes: u32,
        namespace_bytes: u64,
    ) -> Result<PerfConfig, PerfError> {
        let block = u64::from(block_bytes);
        if u64::from(self.io_bytes) % block != 0 {
            return Err(bad(
                "--bs",
                format!(
                    "{} is not a multiple of the namespace's block size {block}",
                    self.io_bytes
                ),
            ));
        }
        let used = self.volume_size_bytes.min(namespace_bytes) / block * block;
        let config = PerfConfig {
            block_size_bytes: block_bytes,
            volume_block_size_bytes: block_bytes,
            volume_size_bytes: used,
            ..self.clone()
        };
        let units = config.region_units();
        let min_units = if self.verify {
            2 * self.queue_depth as u64
        } else {
            1
        };
        if units < min_units {
            return Err(bad(
                "--volume-size",
                format!(
                    "{} of the namespace gives each of {} queues fewer than {min_units} I/Os of {} bytes",
                    format_size(used),
                    config.jobs(),
                    self.io_bytes
                ),
            ));
        }
        if self.verify && units > MAX_VERIFY_UNITS_PER_JOB {
            return Err(bad(
                "--verify",
                format!(
                    "each queue would track {units} units; at most {MAX_VERIFY_UNITS_PER_JOB} (use a larger --bs or a smaller --volume-size)"
                ),
            ));
        }
        Ok(config)
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

    fn parse(extra: &[&str]) -> Result<PerfArgs, clap::Error> {
        let mut argv = vec!["perf"];
        argv.extend_from_slice(extra);
        Wrapper::try_parse_from(argv).map(|w| w.args)
    }

    fn config(extra: &[&str]) -> Result<PerfConfig, String> {
        parse(extra)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_a_4k_randread_qd32_on_one_reactor() {
        let config = config(&["--cores", "0"]).expect("defaults are valid");
        assert_eq!(config.lun, LunChoice::Null);
        assert_eq!(config.workload, Workload::RandRead);
        assert_eq!((config.io_bytes, config.queue_depth), (4096, 32));
        assert_eq!(config.cores, vec![0]);
        assert_eq!(config.poll, PollMode::Busy);
        assert!(config.domain && !config.thin && !config.verify);
        assert_eq!(config.region_bytes(), 1 << 30);
        // The LUN holds the volume and the metadata.
        let layout = Layout::compute(config.lun_size_bytes, 4096, 1 << 20, None).expect("layout");
        assert!(layout.extent_count >= 1024);
        assert!(config.lun_size_bytes < (1 << 30) + (64 << 20));
    }

    /// `--verify` needs a LUN that keeps data: without `--lun` it gets RAM; the volume's blocks
    /// default to the LUN's and may be smaller (the read-modify-write path).
    #[test]
    fn verify_defaults_to_ram_and_volume_blocks_to_the_luns() {
        let config = config(&["--cores", "0", "--verify"]).expect("valid");
        assert_eq!(config.lun, LunChoice::Mem);
        assert_eq!(config.volume_block_size_bytes, 4096);
        let config = config_rmw();
        assert_eq!(
            (config.block_size_bytes, config.volume_block_size_bytes),
            (4096, 512)
        );
    }

    fn config_rmw() -> PerfConfig {
        config(&["--cores", "0", "--volume-block-size", "512", "--bs", "512"]).expect("valid")
    }

    #[test]
    fn bad_values_name_their_option() {
        for (args, option) in [
            (&["--qd", "0"][..], "--qd"),
            (&["--qd", "257"][..], "--qd"),
            (&["--bs", "1000"][..], "--bs"),
            (&["--bs", "512", "--block-size", "4096"][..], "--bs"),
            (&["--bs", "8M"][..], "--bs"),
            (&["--block-size", "1024"][..], "--block-size"),
            (&["--jobs", "0"][..], "--jobs"),
            (&["--jobs", "64", "--qd", "32"][..], "--jobs"),
            (&["--time", "0"][..], "--time"),
            (&["--time", "nan"][..], "--time"),
            (&["--ramp=-1"][..], "--ramp"),
            (&["--rwmixread", "101"][..], "--rwmixread"),
            (&["--extent-size", "100K"][..], "--extent-size"),
            (&["--volume-size", "1000"][..], "--volume-size"),
            (
                &["--volume-size", "64K", "--jobs", "32", "--bs", "4k"][..],
                "--volume-size",
            ),
            (&["--lun", "mem", "--lun-path", "/tmp/x"][..], "--lun-path"),
            (&["--lun", "null", "--verify"][..], "--verify"),
            (&["--volume-block-size", "1024"][..], "--volume-block-size"),
            (
                &["--block-size", "512", "--volume-block-size", "4096"][..],
                "--volume-block-size",
            ),
            (&["--lun", "mem", "--lun-size", "1M"][..], "--lun-size"),
            (&["--cores", "0,0"][..], "--cores"),
            (&["--cores", "9999"][..], "--cores"),
            (&["--cores", "x"][..], "--cores"),
        ] {
            let mut all = vec!["--cores", "0"];
            if option == "--cores" {
                all.clear();
            }
            all.extend_from_slice(args);
            let error = config(&all).expect_err(&format!("{args:?} must be refused"));
            assert!(error.starts_with(option), "{args:?}: {error}");
        }
    }

    #[test]
    fn target_options_are_checked_and_volume_options_refused_with_it() {
        const URL: &str = "nvme-tcp://127.0.0.1:4420/nqn.2026-11.org.sds:x";
        let config = config(&["--cores", "0", "--target", URL, "--queues", "3"]).expect("valid");
        let remote = config.remote.as_ref().expect("remote");
        assert_eq!((remote.queues, remote.nsid, config.jobs()), (3, 1, 3));
        assert!(remote
            .hostnqn
            .starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
        assert!(!remote.digests.header && !remote.digests.data);
        // The namespace decides the block size and caps the part used.
        let sized = config.for_namespace(512, 6 << 20).expect("fits");
        assert_eq!(
            (sized.block_size_bytes, sized.volume_size_bytes),
            (512, 6 << 20)
        );
        assert!(
            config.for_namespace(8192, 1 << 30).is_err(),
            "4k I/O on 8k blocks"
        );
        let verify = self::config(&["--cores", "0", "--target", URL, "--verify", "--qd", "32"])
            .expect("valid");
        assert!(verify.for_namespace(4096, 64 * 4096).is_ok(), "twice QD32");
        assert!(
            verify.for_namespace(4096, 63 * 4096).is_err(),
            "too small for --verify at QD32"
        );
        for (args, option) in [
            (&["--target", "nbd://x/y"][..], "--target"),
            (&["--target", URL, "--lun", "mem"][..], "--lun"),
            (&["--target", URL, "--thin"][..], "--thin"),
            (&["--target", URL, "--jobs", "2"][..], "--jobs"),
            (&["--target", URL, "--queues", "0"][..], "--queues"),
            (&["--target", URL, "--queues", "65"][..], "--queues"),
            (&["--target", URL, "--nsid", "0"][..], "--nsid"),
            (&["--target", URL, "--hostnqn", ""][..], "--hostnqn"),
            (&["--queues", "2"][..], "--queues"),
            (&["--hostnqn", "nqn.x"][..], "--hostnqn"),
            (&["--digest", "both"][..], "--digest"),
        ] {
            let mut argv = vec!["--cores", "0"];
            argv.extend_from_slice(args);
            let error = self::config(&argv).expect_err(&format!("{args:?} must be refused"));
            assert!(error.starts_with(option), "{args:?}: {error}");
        }
    }

    #[test]
    fn unknown_workloads_and_luns_are_refused_by_the_parser() {
        for args in [
            &["--rw", "randomread"][..],
            &["--lun", "tape"][..],
            &["--poll", "lazy"][..],
        ] {
            let error = parse(args).expect_err("refused");
            assert!(error.to_string().contains("invalid value"), "{error}");
        }
    }

    #[test]
    fn verify_needs_room_to_keep_in_flight_units_apart() {
        assert!(config(&[
            "--cores",
            "0",
            "--lun",
            "mem",
            "--verify",
            "--volume-size",
            "128K"
        ])
        .is_err());
        let config = config(&[
            "--cores",
            "0",
            "--lun",
            "mem",
            "--verify",
            "--volume-size",
            "1M",
            "--rw",
            "randrw",
        ])
        .expect("valid");
        assert_eq!(config.region_units(), 256);
        assert!(config.verify && config.workload == Workload::RandRw);
    }

    #[test]
    fn regions_split_the_volume_between_jobs() {
        let config = config(&[
            "--cores",
            "0",
            "--jobs",
            "3",
            "--volume-size",
            "1M",
            "--bs",
            "8k",
        ])
        .expect("valid");
        assert_eq!(config.jobs(), 3);
        assert_eq!(
            config.region_units(),
            42,
            "1 MiB / 3 jobs / 8 KiB, rounded down"
        );
        assert_eq!(config.region_bytes() % 8192, 0);
    }

    #[test]
    fn a_file_lun_gets_a_scratch_path() {
        let config = config(&["--cores", "0", "--lun", "file"]).expect("valid");
        let path = config.lun_path.expect("path");
        assert!(path.starts_with(std::env::temp_dir()));
        assert!(config.lun_path_is_scratch);
    }

    #[test]
    fn lun_sizes_fit_the_volume() {
        for (extents, block, extent) in [
            (1u64, 512u32, 64u64 << 10),
            (1024, 4096, 1 << 20),
            (5000, 512, 1 << 20),
        ] {
            let size = lun_bytes_for(extents, block, extent).expect("size");
            let layout = Layout::compute(size, block, extent, None).expect("layout");
            assert!(layout.extent_count >= extents);
            assert!(size <= extents * extent + extents * u64::from(block) + (16 << 20));
        }
    }
}
