//! LUN drivers: the physical storage resources the server controls.
//!
//! ```text
//!   volume ──(LunIo, tag)──▶ dyn Lun ──▶ io_uring entries on the reactor's ring  (file, blockdev)
//!                                   └──▶ completed at once                      (mem)
//! ```
//!
//! A driver implements [`Lun`]: it reports what it is ([`LunInfo`]), starts data-path I/O on the
//! calling reactor's ring (or completes it at once), and offers synchronous I/O for the
//! metadata thread and the control thread. Completions on the ring come back to the reactor with
//! the tag the caller chose; the reactor maps the result with [`completion_result`].
//!
//! To add a driver: one new file here implementing `Lun`, one variant in [`LunKind`], and one
//! arm in [`open_lun`], the only place that lists drivers.

pub mod aligned_buf;
pub mod blockdev;
pub mod fd_lun;
pub mod file;
pub mod mem;

use crate::reactor::ring::IoRing;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Which driver serves a LUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LunKind {
    Mem,
    File,
    Blockdev,
}

impl LunKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "mem" => Some(Self::Mem),
            "file" => Some(Self::File),
            "blockdev" => Some(Self::Blockdev),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mem => "mem",
            Self::File => "file",
            Self::Blockdev => "blockdev",
        }
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

    /// Reads synchronously (metadata thread, control thread, start-up).
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
}

/// The result of a ring completion for a LUN I/O of `expected_bytes` (0 for flush and zeroes):
/// `Ok` or a positive errno. A short transfer is an I/O error: LUN I/O never crosses the end
/// of the LUN, so a short one means the medium failed.
pub fn completion_result(result: i32, expected_bytes: u32) -> Result<(), i32> {
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
    if spec.block_size_bytes != 512 && spec.block_size_bytes != 4096 {
        return Err(LunError::Invalid {
            lun: spec.name.clone(),
            what: "block_size must be 512 or 4096".into(),
        });
    }
    Ok(match spec.kind {
        LunKind::Mem => Arc::new(mem::MemLun::new(spec)?),
        LunKind::File => Arc::new(file::open(spec)?),
        LunKind::Blockdev => Arc::new(blockdev::open(spec)?),
    })
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
