//! tgtd (Debian's `tgt`) as the foreign iSCSI array of the remote-LUN tests: one target with one
//! file-backed LUN (LUN 1; tgtd's LUN 0 is its own controller) in the test's temp dir, open to
//! every initiator (or to one CHAP account), on a free portal port — and killed (`kill -9`)
//! and restarted on the same port, file and configuration, as an array that crashes and comes
//! back.
//!
//! tgtd keeps nothing across a restart: the harness configures it again through `tgtadm` each
//! time it starts. tgtd ignores SIGTERM; the harness only ever SIGKILLs its own child, which
//! loses nothing the array acknowledged (the LUN goes through the page cache, which outlives
//! the process).
//!
//! **Parallel instances.** tgtd's control channel is the Unix socket
//! `/var/run/tgtd/socket.N` (N from `-C N`, 0 by default, kept in a short: N < 32768), guarded
//! by a POSIX lock (`lockf`) on `/var/run/tgtd/socket.N.lock` that makes a second tgtd on the
//! same N exit at start. A POSIX lock belongs to a process and vanishes with it, so it cannot
//! hold N across a kill and restart. The harness therefore reserves N itself for its whole
//! life with an `flock` on a file of its own (`CONTROL_RESERVATION_DIR/sds-tgtd-control.N`),
//! which every harness in every test process (and worktree) honours, and skips an N whose
//! tgtd lock another process holds (a tgtd started by something else, such as bench/).
use super::{free_port, require_tool, run_bounded};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The target's name; the LUN is `{TGTD_TARGET}` LUN [`TGTD_LUN`].
pub const TGTD_TARGET: &str = "iqn.2026-11.org.sds.test:tgtd";
/// tgtd's LUN 0 is its controller; the backing file is LUN 1.
pub const TGTD_LUN: u32 = 1;
/// How long tgtd may take to listen and answer tgtadm (a loaded 2-core machine starts
/// processes slowly).
pub const TGTD_START_DEADLINE: Duration = Duration::from_secs(60);
/// Longest one tgtadm call may take.
const TGTADM_DEADLINE: Duration = Duration::from_secs(30);
/// Where the control-port reservations live (shared by every test process on the machine).
const CONTROL_RESERVATION_DIR: &str = "/tmp";
/// Control ports the harness picks from: above bench/iscsi_peers.py's (10000..30000), below
/// tgtd's limit (it keeps N in a short).
const CONTROL_PORTS: std::ops::Range<u16> = 30000..32767;
/// Fresh portal ports tried when a first start fails (a port taken since it was found free).
const START_ATTEMPTS: usize = 5;

/// How the array is set up.
#[derive(Clone, Debug)]
pub struct TgtdConfig {
    /// Size of the backing file (made sparse if it does not exist yet).
    pub size_bytes: u64,
    /// The LUN's logical block size (tgtd's `--blocksize`): 512 or 4096.
    pub block_size: u32,
    /// A CHAP account (user, secret) the target requires; `None`: no authentication.
    pub chap: Option<(String, String)>,
}

impl TgtdConfig {
    pub fn new(size_bytes: u64) -> Self {
        Self {
            size_bytes,
            block_size: 512,
            chap: None,
        }
    }
}

/// A running (or killed) tgtd; killed with SIGKILL when dropped.
pub struct Tgtd {
    /// The test's directory: backing file and log.
    dir: PathBuf,
    pub backing: PathBuf,
    pub port: u16,
    /// tgtd's `-C` control port.
    pub control: u16,
    pub config: TgtdConfig,
    /// The flock that reserves `control` while this harness lives.
    _reservation: File,
    child: Option<Child>,
    /// How many times tgtd was started (1 after `start`).
    pub starts: u32,
}

impl Tgtd {
    /// tgtd with a sparse backing file `tgtd-lun.img` of `size_bytes` in `dir`, 512-byte blocks,
    /// no CHAP.
    pub fn start(dir: &Path, size_bytes: u64) -> Self {
        Self::start_with(dir, TgtdConfig::new(size_bytes))
    }

    pub fn start_with(dir: &Path, config: TgtdConfig) -> Self {
        require_tool("tgtd");
        require_tool("tgtadm");
        let backing = dir.join("tgtd-lun.img");
        if !backing.exists() {
            let file = File::create(&backing).expect("create the tgtd backing file");
            file.set_len(config.size_bytes)
                .expect("size the tgtd backing file");
        }
        let (control, reservation) = reserve_control_port();
        let mut tgtd = Self {
            dir: dir.to_path_buf(),
            backing,
            port: 0,
            control,
            config,
            _reservation: reservation,
            child: None,
            starts: 0,
        };
        // A portal port taken between free_port() and tgtd's bind makes tgtd exit: try fresh
        // ports (only at the first start; a restart must keep its port).
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            tgtd.port = free_port();
            match tgtd.try_start() {
                Ok(()) => return tgtd,
                Err(why) => failures.push(why),
            }
        }
        panic!(
            "tgtd did not start in {START_ATTEMPTS} attempts:\n{}\nlog:\n{}",
            failures.join("\n"),
            tgtd.log()
        );
    }

    /// The libiscsi URL of the LUN.
    pub fn url(&self) -> String {
        format!("iscsi://127.0.0.1:{}/{TGTD_TARGET}/{TGTD_LUN}", self.port)
    }

    /// The portal's URL (no target), as iscsi-ls takes it.
    pub fn portal(&self) -> String {
        format!("iscsi://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// `kill -9`: the array vanishes mid-command, its TCP connections reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts tgtd again on the same portal port, control port, backing file and
    /// configuration (after [`Tgtd::kill`]; kills it first if it still runs).
    pub fn restart(&mut self) {
        self.kill();
        if let Err(why) = self.try_start() {
            panic!("tgtd did not restart: {why}\nlog:\n{}", self.log());
        }
    }

    /// Grows (or shrinks) the backing file to `size_bytes`. tgtd reads the size when the LUN
    /// is created, so the array shows it after the next [`Tgtd::restart`].
    pub fn resize_backing(&mut self, size_bytes: u64) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.backing)
            .expect("open the tgtd backing file");
        file.set_len(size_bytes)
            .expect("resize the tgtd backing file");
        self.config.size_bytes = size_bytes;
    }

    /// Deletes the LUN and adds it again on the same backing file, tgtd running: the array's
    /// LUN shows the file's current size at once (what a resize on a live array looks like).
    pub fn reload_lun(&self) {
        let lun = TGTD_LUN.to_string();
        let deleted = self.admin(&[
            "--op",
            "delete",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            &lun,
        ]);
        if let Err(why) = deleted.and_then(|_| self.add_lun()) {
            panic!(
                "tgtd did not take the LUN again: {why}\nlog:\n{}",
                self.log()
            );
        }
    }

    /// tgtd's own output (every start appends to it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("tgtd-{}.log", self.control))
    }

    /// Runs tgtadm on this tgtd's control port; `Err` with its output if it fails.
    pub fn admin(&self, args: &[&str]) -> Result<String, String> {
        let control = self.control.to_string();
        let (ok, text) = run_bounded(
            Command::new("tgtadm")
                .args(["-C", &control, "--lld", "iscsi"])
                .args(args),
            TGTADM_DEADLINE,
        );
        if ok {
            Ok(text)
        } else {
            Err(format!("tgtadm {}: {text}", args.join(" ")))
        }
    }

    /// One start: spawn tgtd, wait until it listens and answers tgtadm (or exits), then
    /// create the target, the LUN, the bindings.
    fn try_start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("tgtd log: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("tgtd log: {e}"))?;
        let child = Command::new("tgtd")
            .args(["-f", "-C", &self.control.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn tgtd: {e}"))?;
        self.child = Some(child);
        self.starts += 1;
        let deadline = Instant::now() + TGTD_START_DEADLINE;
        // Ready: the control socket answers and the portal accepts.
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!(
                    "tgtd (portal {}, control {}) exited at start: {status}",
                    self.port, self.control
                ));
            }
            let answers = self.admin(&["--op", "show", "--mode", "sys"]).is_ok();
            if answers && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "tgtd (portal {}, control {}) not ready within {TGTD_START_DEADLINE:?}",
                    self.port, self.control
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(why) = self.configure() {
            self.kill();
            return Err(why);
        }
        Ok(())
    }

    fn configure(&self) -> Result<(), String> {
        self.admin(&[
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "1",
            "-T",
            TGTD_TARGET,
        ])?;
        self.add_lun()?;
        if let Some((user, secret)) = &self.config.chap {
            self.admin(&[
                "--op",
                "new",
                "--mode",
                "account",
                "--user",
                user,
                "--password",
                secret,
            ])?;
            self.admin(&[
                "--op", "bind", "--mode", "account", "--tid", "1", "--user", user,
            ])?;
        }
        self.admin(&[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ])?;
        Ok(())
    }

    /// Adds the backing file as the target's LUN (its size read now).
    fn add_lun(&self) -> Result<(), String> {
        let backing = self.backing.to_str().ok_or("backing path is not UTF-8")?;
        self.admin(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            &TGTD_LUN.to_string(),
            "-b",
            backing,
            "--blocksize",
            &self.config.block_size.to_string(),
        ])?;
        Ok(())
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.kill();
        // tgtd leaves its socket and lock file behind when killed; remove them while the
        // reservation still keeps every other harness off this control port.
        let socket = format!("/var/run/tgtd/socket.{}", self.control);
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(format!("{socket}.lock"));
    }
}

/// A control port no other harness holds and no other tgtd uses, with the flock that keeps
/// it ours.
fn reserve_control_port() -> (u16, File) {
    let span = u32::from(CONTROL_PORTS.end - CONTROL_PORTS.start);
    // Start somewhere that differs between test processes, then walk the range.
    let first = (std::process::id().wrapping_mul(7919)) % span;
    for step in 0..span {
        let port = CONTROL_PORTS.start + ((first + step) % span) as u16;
        let path = Path::new(CONTROL_RESERVATION_DIR).join(format!("sds-tgtd-control.{port}"));
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        // SAFETY: flock on a descriptor this function owns; non-blocking, no memory passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        if tgtd_lock_held(port) {
            continue;
        }
        return (port, file);
    }
    panic!("no free tgtd control port in {CONTROL_PORTS:?}");
}

/// Whether a process holds tgtd's own POSIX lock for control port `port` (a tgtd not started
/// by this harness).
fn tgtd_lock_held(port: u16) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/var/run/tgtd/socket.{port}.lock"))
    else {
        return false;
    };
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut probe: libc::flock = unsafe { std::mem::zeroed() };
    probe.l_type = libc::F_WRLCK as libc::c_short;
    probe.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_GETLK on a descriptor we own with a valid flock that lives for the call.
    let result = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut probe) };
    result == 0 && probe.l_type != libc::F_UNLCK as libc::c_short
}
