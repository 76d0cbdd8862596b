//! LUN drivers: the physical storage resources the server controls.
//!
//! ```text
//!   block engine ──(LunIo, tag)──▶ dyn Lun ──▶ io_uring entries on the reactor's ring  (file, blockdev)
//!                                         └──▶ completed at once                      (mem, null)
//! ```
//!
//! A driver implements [`Lun`]: it reports what it is ([`LunInfo`]), starts data-path I/O on the
//! calling reactor's ring (or completes it at once), and offers synchronous I/O for the
//! provisioning thread, the control thread and start-up. Completions on the ring come back to
//! the reactor with the tag the caller chose (a driver's own timer entry adds
//! [`DRIVER_TIMER_TAG`]); the block engine (`crate::blockio`) maps the result with
//! [`completion_result`].
//!
//! To add a driver: one new file here implementing `Lun`, one variant in [`LunKind`], and one
//! arm in [`open_lun`], the only place that lists drivers.
//!
//! Errors: every driver keeps a [`LunHealth`] (error counters per [`BlockOp`], and whether the
//! LUN has failed). The synchronous methods count the errors they return themselves; errors of
//! ring I/O complete in the session's block engine, which hands them back with
//! [`Lun::note_error`]. Both touch the counters only on the error path. A LUN whose device is
//! gone (an I/O ends with ENODEV or ENXIO) is marked failed; from then on its I/O fails at
//! once with EIO. [`fault`] holds the fault-injection driver and the stand-in for a LUN that
//! could not be opened at start-up.

pub mod aligned_buf;
pub mod blockdev;
pub mod claim;
pub mod fault;
pub mod fd_lun;
pub mod file;
pub mod iscsi;
pub mod iscsi_context;
pub mod lun_io_stats;
pub mod lun_path;
pub mod mem;
pub mod mem_region;
pub mod nbd_client;
pub mod null;
pub mod remote;

use crate::blockio::BlockOp;
use crate::reactor::ring::IoRing;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

/// Which driver serves a LUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LunKind {
    Mem,
    File,
    Blockdev,
    /// Fault injection over another LUN, its base ([`fault::FaultLun`]).
    Fault,
    /// Stores nothing, completes every I/O at once ([`null::NullLun`]): for measuring the stack.
    Null,
    /// A LUN of another array over iSCSI ([`iscsi`], over the [`remote`] core).
    Iscsi,
    /// An export of another NBD server ([`nbd_client`]), driven from the reactors.
    Nbd,
}

impl LunKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "mem" => Some(Self::Mem),
            "file" => Some(Self::File),
            "blockdev" => Some(Self::Blockdev),
            "fault" => Some(Self::Fault),
            "null" => Some(Self::Null),
            "iscsi" => Some(Self::Iscsi),
            "nbd" => Some(Self::Nbd),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mem => "mem",
            Self::File => "file",
            Self::Blockdev => "blockdev",
            Self::Fault => "fault",
            Self::Null => "null",
            Self::Iscsi => "iscsi",
            Self::Nbd => "nbd",
        }
    }

    /// Whether the LUN lives on another array ([`remote`]): its size and block size are the
    /// array's, and it is reached over the network.
    pub fn is_remote(self) -> bool {
        matches!(self, Self::Iscsi | Self::Nbd)
    }
}

/// How fast a LUN is, roughly: the pool's tiering and the administrator read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpeedClass {
    Ram,
    Ssd,
    Hdd,
    Unknown,
}

impl SpeedClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ram => "ram",
            Self::Ssd => "ssd",
            Self::Hdd => "hdd",
            Self::Unknown => "unknown",
        }
    }
}

/// What a LUN is: fixed for its lifetime.
#[derive(Clone, Debug)]
pub struct LunInfo {
    pub name: String,
    pub kind: LunKind,
    pub path: Option<PathBuf>,
    pub size_bytes: u64,
    /// 512 or 4096: every I/O to the LUN is aligned to it.
    pub block_size_bytes: u32,
    pub speed_class: SpeedClass,
    /// Whether I/O bypasses the page cache (O_DIRECT).
    pub direct_io: bool,
}

/// What creating or opening a LUN needs.
#[derive(Clone, Debug)]
pub struct LunSpec {
    pub name: String,
    pub kind: LunKind,
    pub path: Option<PathBuf>,
    pub size_bytes: Option<u64>,
    pub block_size_bytes: u32,
    /// For a LUN of another array (iSCSI, NBD): where it is and how to reach it.
    pub remote: Option<remote::RemoteSpec>,
}

/// Why a LUN operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LunError {
    #[error("LUN {lun}: cannot open {path}")]
    Open {
        lun: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another open (another sds, qemu, a mount) holds the file or device: see [`claim`].
    #[error("LUN {lun}: {path} is in use: {holder}")]
    InUse {
        lun: String,
        path: PathBuf,
        holder: &'static str,
    },
    #[error("LUN {lun}: {what}")]
    Invalid { lun: String, what: String },
    #[error("LUN {lun}: I/O error at byte {offset_bytes}")]
    Io {
        lun: String,
        offset_bytes: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("LUN {lun}: I/O of {len_bytes} bytes at {offset_bytes} is out of range or misaligned")]
    OutOfRange {
        lun: String,
        offset_bytes: u64,
        len_bytes: u64,
    },
    /// A remote LUN's array could not be reached (or refused the login).
    #[error("LUN {lun}: cannot reach {url}: {reason}")]
    Unreachable {
        lun: String,
        url: String,
        reason: String,
    },
    #[error("LUN {lun} has failed ({reason}); its I/O fails")]
    Failed { lun: String, reason: String },
}

impl LunError {
    /// Whether this is an error of the medium (counted in the LUN's error counters), as
    /// opposed to a request the LUN refused (out of range, invalid).
    pub fn is_io_error(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Failed { .. })
    }
}

/// Whether an errno says the device behind a LUN is gone (removed, unplugged), not that one
/// I/O failed.
pub fn is_device_gone(errno: i32) -> bool {
    errno == libc::ENODEV || errno == libc::ENXIO
}

/// Errors a LUN returned, per [`BlockOp`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub read: u64,
    pub write: u64,
    pub flush: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.read + self.write + self.flush
    }
}

/// What a LUN has suffered: its error counters and whether it has failed. Written only on the
/// error path (atomic adds, no lock), so the success path pays nothing for it; read by the
/// control thread for `lun_get_luns` and `bdev_get_iostat`.
#[derive(Debug, Default)]
pub struct LunHealth {
    /// 0 while the LUN is online; else the errno that failed it.
    failed_errno: AtomicI32,
    /// Errors returned, indexed by [`BlockOp::index`].
    errors: [AtomicU64; 3],
    /// The errno of the latest error of each type, 0 if none is known (the error path stores
    /// it; the control thread names it when it logs the errors).
    last_errno: [AtomicI32; 3],
    /// How many of each type's errors the control thread has logged, and when it last did
    /// (its clock, in milliseconds). Only the control thread touches these
    /// (`control::lun_errors`): reactors never log an I/O error themselves.
    reported: [AtomicU64; 3],
    reported_at_ms: [AtomicU64; 3],
    /// The I/O the block engine completed on this LUN, per reactor (see
    /// [`lun_io_stats`]): written on the success path too, each reactor its own lines.
    pub io: lun_io_stats::LunIoStats,
}

impl LunHealth {
    /// The health of a LUN that is failed from the start (it could not be opened).
    pub fn failed_with(errno: i32) -> Self {
        Self {
            failed_errno: AtomicI32::new(errno),
            ..Self::default()
        }
    }

    /// One relaxed load: the data path checks it before every I/O.
    #[inline]
    pub fn is_failed(&self) -> bool {
        self.failed_errno.load(Ordering::Relaxed) != 0
    }

    /// The errno that failed the LUN, if it has failed.
    pub fn failed_errno(&self) -> Option<i32> {
        match self.failed_errno.load(Ordering::Acquire) {
            0 => None,
            errno => Some(errno),
        }
    }

    /// Marks the LUN failed; returns whether it was online until now.
    pub fn mark_failed(&self, errno: i32) -> bool {
        let errno = if errno == 0 { libc::EIO } else { errno };
        self.failed_errno
            .compare_exchange(0, errno, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Brings a failed LUN back online (a remote LUN whose array is reachable again); returns
    /// whether it was failed until now.
    pub fn clear_failed(&self) -> bool {
        self.failed_errno.swap(0, Ordering::AcqRel) != 0
    }

    /// Counts one error of `io_type`.
    #[inline]
    pub fn count_error(&self, io_type: BlockOp) {
        self.errors[io_type.class_index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one error and marks the LUN failed if the errno says its device is gone.
    /// Returns whether this error failed the LUN (it was online until now).
    pub fn note_error(&self, io_type: BlockOp, errno: i32) -> bool {
        self.count_errno(io_type, errno);
        is_device_gone(errno) && self.mark_failed(errno)
    }

    /// Counts one error of `io_type` that ended with `errno`, without judging the errno.
    #[inline]
    pub fn count_errno(&self, io_type: BlockOp, errno: i32) {
        self.count_error(io_type);
        self.last_errno[io_type.class_index()].store(errno, Ordering::Relaxed);
    }

    /// The errno of the latest error of `io_type` noted with one, if any.
    pub fn last_errno(&self, io_type: BlockOp) -> Option<i32> {
        match self.last_errno[io_type.class_index()].load(Ordering::Relaxed) {
            0 => None,
            errno => Some(errno),
        }
    }

    /// The control thread's record of what it has logged of `io_type`'s errors: the count,
    /// and when (its clock, in milliseconds; 0 if never).
    pub fn reported(&self, io_type: BlockOp) -> (u64, u64) {
        (
            self.reported[io_type.class_index()].load(Ordering::Relaxed),
            self.reported_at_ms[io_type.class_index()].load(Ordering::Relaxed),
        )
    }

    /// The control thread has logged `io_type`'s errors up to `count`, at `at_ms`.
    pub fn set_reported(&self, io_type: BlockOp, count: u64, at_ms: u64) {
        self.reported[io_type.class_index()].store(count, Ordering::Relaxed);
        self.reported_at_ms[io_type.class_index()].store(at_ms, Ordering::Relaxed);
    }

    pub fn errors(&self) -> ErrorCounts {
        let get = |t: BlockOp| self.errors[t.class_index()].load(Ordering::Relaxed);
        ErrorCounts {
            read: get(BlockOp::Read),
            write: get(BlockOp::Write),
            flush: get(BlockOp::Flush),
        }
    }
}

/// One data-path operation on a LUN. Offsets and lengths are in bytes and aligned to the LUN's
/// block size; buffers are aligned to [`aligned_buf::BUFFER_ALIGN_BYTES`].
#[derive(Clone, Copy, Debug)]
pub enum LunIo {
    Read {
        offset_bytes: u64,
        buf: *mut u8,
        len_bytes: u32,
    },
    Write {
        offset_bytes: u64,
        buf: *const u8,
        len_bytes: u32,
        fua: bool,
    },
    /// Zeroes a range (deallocating it where the driver can) and keeps it readable as zeroes.
    WriteZeroes {
        offset_bytes: u64,
        len_bytes: u64,
        fua: bool,
    },
    Flush,
}

impl LunIo {
    /// The I/O's LUN class (see [`BlockOp::LUN_CLASSES`]): a zeroing is a write.
    #[inline]
    pub fn io_type(&self) -> BlockOp {
        match self {
            Self::Read { .. } => BlockOp::Read,
            Self::Write { .. } | Self::WriteZeroes { .. } => BlockOp::Write,
            Self::Flush => BlockOp::Flush,
        }
    }
}

impl LunIo {
    /// The byte range the I/O covers (`None` for a flush, which covers no range).
    #[inline]
    pub fn range(&self) -> Option<(u64, u64)> {
        match *self {
            LunIo::Read {
                offset_bytes,
                len_bytes,
                ..
            }
            | LunIo::Write {
                offset_bytes,
                len_bytes,
                ..
            } => Some((offset_bytes, u64::from(len_bytes))),
            LunIo::WriteZeroes {
                offset_bytes,
                len_bytes,
                ..
            } => Some((offset_bytes, len_bytes)),
            LunIo::Flush => None,
        }
    }
}

/// What starting an I/O did.
#[derive(Debug)]
pub enum Started {
    /// Completed already; no completion will arrive on the ring.
    Done(Result<(), i32>),
    /// This many entries are on the ring with the caller's tag; each completion carries a
    /// result (a FUA zeroing is a linked fallocate + fdatasync pair).
    Queued(u32),
}

/// A physical storage resource. Shared by every reactor (`Send + Sync`); each reactor starts
/// I/O on its own ring.
pub trait Lun: Send + Sync {
    fn info(&self) -> &LunInfo;

    /// Starts `io` on `ring`, tagging its completion with `tag`, or completes it at once.
    /// A result error is a positive errno.
    ///
    /// # Safety
    /// The buffer `io` points at must stay valid, and not be touched by anyone else, until the
    /// I/O completes: at once for `Started::Done`, else when the tagged completion is reaped.
    unsafe fn submit(&self, io: &LunIo, tag: u64, ring: &mut IoRing) -> Started;

    /// Reads synchronously (provisioning thread, control thread, start-up).
    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> Result<(), LunError>;
    /// Writes synchronously; durable only after [`Lun::flush`] unless `durable`.
    fn write_at(&self, buf: &[u8], offset_bytes: u64, durable: bool) -> Result<(), LunError>;
    /// Zeroes a range synchronously.
    fn write_zeroes_at(&self, offset_bytes: u64, len_bytes: u64) -> Result<(), LunError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), LunError>;
    /// Whether data survives a restart of the server.
    fn is_persistent(&self) -> bool {
        true
    }

    /// The LUN's error counters and failed state; `None` for a driver that keeps none.
    fn health(&self) -> Option<&LunHealth> {
        None
    }

    /// A remote LUN's link stats (connection state, round trip, reconnects); `None` for a
    /// local LUN.
    fn link_stats(&self) -> Option<&remote::link_stats::LinkStats> {
        None
    }

    /// Whether the LUN has failed (its device is gone): its I/O fails at once with EIO.
    #[inline]
    fn is_failed(&self) -> bool {
        self.health().is_some_and(LunHealth::is_failed)
    }

    /// Accounts an error that a ring I/O of this LUN completed with (or that `submit` returned
    /// at once): the front end calls it on its error path, on a reactor, so it only counts
    /// (atomics); the control thread logs the counts, rate-limited (`control::lun_errors`).
    /// ENODEV and ENXIO mark the LUN failed, which is logged here, once in the LUN's life. The synchronous methods count their own errors and never come through here.
    fn note_error(&self, io_type: BlockOp, errno: i32) {
        if let Some(health) = self.health() {
            if health.note_error(io_type, errno) {
                log::error!(
                    "LUN {}: device gone ({}); the LUN is failed and its I/O fails from now on",
                    self.info().name,
                    std::io::Error::from_raw_os_error(errno)
                );
            }
        }
    }
}

/// The tag bit a driver sets on a ring entry of its own that travels with an I/O, a timer (the
/// fault LUN's delay, [`fault::FaultLun`]): its completion is the request's like the I/O's,
/// but it ends with `-ETIME` when it fires, which for a read, write, fsync or fallocate would
/// be an error. Callers' tags keep this bit clear (the block engine's layout,
/// `blockio::tag`, stays below it), and hand it back to [`completion_result`] through
/// [`split_tag`].
pub const DRIVER_TIMER_TAG: u64 = 1 << 47;
// The bit lies in the session-local part of a reactor's tag, which the session decodes.
const _: () = assert!(DRIVER_TIMER_TAG & !crate::reactor::session::SESSION_TAG_MASK == 0);

/// Splits a completion's tag into the tag the caller chose and whether the entry was a
/// driver's timer ([`DRIVER_TIMER_TAG`]).
#[inline]
pub fn split_tag(tag: u64) -> (u64, bool) {
    (tag & !DRIVER_TIMER_TAG, tag & DRIVER_TIMER_TAG != 0)
}

/// The result of a ring completion for a LUN I/O of `expected_bytes` (0 for flush and zeroes):
/// `Ok` or a positive errno. A short transfer is an I/O error: LUN I/O never crosses the end
/// of the LUN, so a short one means the medium failed. For a driver's timer
/// (`driver_timer`, see [`split_tag`]) the expiry, `-ETIME`, is its success; for every other
/// entry ETIME is an error like any errno.
pub fn completion_result(result: i32, expected_bytes: u32, driver_timer: bool) -> Result<(), i32> {
    if driver_timer {
        return if result == -libc::ETIME || result >= 0 {
            Ok(())
        } else {
            Err(-result)
        };
    }
    if result < 0 {
        Err(-result)
    } else if expected_bytes != 0 && result as u32 != expected_bytes {
        Err(libc::EIO)
    } else {
        Ok(())
    }
}

/// Opens (creating where the kind allows) the LUN `spec` describes. The only place that lists
/// the drivers.
pub fn open_lun(spec: &LunSpec) -> Result<Arc<dyn Lun>, LunError> {
    // A remote LUN's block size is its array's (0: take it; another value is checked then).
    let array_block_size = spec.kind.is_remote() && spec.block_size_bytes == 0;
    if !array_block_size && spec.block_size_bytes != 512 && spec.block_size_bytes != 4096 {
        return Err(LunError::Invalid {
            lun: spec.name.clone(),
            what: "block_size must be 512 or 4096".into(),
        });
    }
    Ok(match spec.kind {
        LunKind::Mem => Arc::new(mem::MemLun::new(spec)?),
        LunKind::File => Arc::new(file::open(spec)?),
        LunKind::Blockdev => Arc::new(blockdev::open(spec)?),
        LunKind::Null => Arc::new(null::NullLun::new(spec)?),
        LunKind::Iscsi => Arc::new(iscsi::open(spec)?),
        LunKind::Nbd => Arc::new(nbd_client::driver::open(spec)?),
        LunKind::Fault => {
            return Err(LunError::Invalid {
                lun: spec.name.clone(),
                what: "a fault LUN is opened over its base LUN (fault::FaultLun::new)".into(),
            })
        }
    })
}

/// Opens a LUN of the configuration again (at start-up): like [`open_lun`], except that
/// nothing is created: a file LUN whose file is gone is an error. A file or device in use
/// ([`LunError::InUse`]) is tried again until `claim_deadline`: a server killed with SIGKILL
/// releases its claims only once the kernel has torn down its io_uring instances, which it
/// does asynchronously, after the process is gone.
pub fn reopen_lun(
    spec: &LunSpec,
    claim_deadline: std::time::Instant,
) -> Result<Arc<dyn Lun>, LunError> {
    loop {
        let opened: Result<Arc<dyn Lun>, LunError> = match spec.kind {
            LunKind::File => file::open_existing(spec).map(|lun| Arc::new(lun) as Arc<dyn Lun>),
            _ => open_lun(spec),
        };
        match opened {
            Err(LunError::InUse { .. }) if std::time::Instant::now() < claim_deadline => {
                std::thread::sleep(std::time::Duration::from_millis(
                    crate::constants::LUN_CLAIM_RETRY_MS,
                ))
            }
            other => return other,
        }
    }
}

/// The size of a LUN that lives only in memory (mem, null): required, a non-zero multiple of
/// the block size, at most `max_bytes` (named as `max_text` in the error).
pub(crate) fn in_memory_size(
    spec: &LunSpec,
    max_bytes: u64,
    max_text: &str,
) -> Result<u64, LunError> {
    let invalid = |what: String| LunError::Invalid {
        lun: spec.name.clone(),
        what,
    };
    let size_bytes = spec
        .size_bytes
        .ok_or_else(|| invalid(format!("size is required for a {} LUN", spec.kind.as_str())))?;
    let block = u64::from(spec.block_size_bytes);
    if size_bytes == 0 || size_bytes % block != 0 || size_bytes > max_bytes {
        return Err(invalid(format!(
            "size must be a non-zero multiple of block_size, at most {max_text}"
        )));
    }
    Ok(size_bytes)
}

/// Checks that a synchronous I/O is inside the LUN and aligned to its block size.
pub(crate) fn check_range(
    info: &LunInfo,
    offset_bytes: u64,
    len_bytes: u64,
) -> Result<(), LunError> {
    let block = u64::from(info.block_size_bytes);
    let in_range = offset_bytes
        .checked_add(len_bytes)
        .is_some_and(|end| end <= info.size_bytes);
    if !in_range || offset_bytes % block != 0 || len_bytes % block != 0 {
        return Err(LunError::OutOfRange {
            lun: info.name.clone(),
            offset_bytes,
            len_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_results() {
        assert_eq!(completion_result(4096, 4096, false), Ok(()));
        assert_eq!(completion_result(512, 4096, false), Err(libc::EIO));
        assert_eq!(completion_result(-libc::EIO, 4096, false), Err(libc::EIO));
        assert_eq!(completion_result(0, 0, false), Ok(()));
        // A fault LUN's delay timer expiring, or cancelled with an error.
        assert_eq!(completion_result(-libc::ETIME, 4096, true), Ok(()));
        assert_eq!(
            completion_result(-libc::ECANCELED, 4096, true),
            Err(libc::ECANCELED)
        );
        assert_eq!(split_tag(9 | DRIVER_TIMER_TAG), (9, true));
        assert_eq!(split_tag(9), (9, false));
    }

    /// Only a driver's timer entry may end with ETIME as a success: a read, write, fsync or
    /// fallocate that does is an error.
    #[test]
    fn etime_is_an_error_of_an_io() {
        assert_eq!(
            completion_result(-libc::ETIME, 4096, false),
            Err(libc::ETIME)
        );
        assert_eq!(completion_result(-libc::ETIME, 0, false), Err(libc::ETIME));
    }

    #[test]
    fn health_counts_and_fails_once() {
        let health = LunHealth::default();
        assert!(!health.note_error(BlockOp::Write, libc::EIO));
        assert!(health.note_error(BlockOp::Read, libc::ENXIO));
        assert!(
            !health.note_error(BlockOp::Read, libc::ENODEV),
            "already failed"
        );
        assert_eq!(health.failed_errno(), Some(libc::ENXIO));
        assert_eq!(
            health.errors(),
            ErrorCounts {
                read: 2,
                write: 1,
                flush: 0
            }
        );
    }
}
