//! The io_uring engine shared by the drivers whose LUN is a file descriptor (`file`,
//! `blockdev`): reads and writes with O_DIRECT where the file system allows it, FUA as
//! RWF_DSYNC, flush as fdatasync, zeroes as fallocate. A LUN whose device is gone (ENODEV or
//! ENXIO, on either path) is marked failed, and its I/O then fails at once with EIO.

use super::aligned_buf::AlignedBuf;
use super::{check_range, Lun, LunError, LunHealth, LunInfo, LunIo, Started};
use crate::blockio::BlockOp;
use crate::reactor::ring::IoRing;
use io_uring::{opcode, squeue, types};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// How a driver zeroes a range.
#[derive(Clone, Copy, Debug)]
pub enum ZeroMode {
    /// fallocate(PUNCH_HOLE | KEEP_SIZE): a regular file; the range is deallocated.
    PunchHole,
    /// fallocate(ZERO_RANGE | KEEP_SIZE): a block device.
    ZeroRange,
}

impl ZeroMode {
    fn fallocate_mode(self) -> i32 {
        match self {
            Self::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            Self::ZeroRange => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        }
    }
}

/// A LUN that is an open file descriptor.
pub struct FdLun {
    info: LunInfo,
    file: File,
    zero_mode: ZeroMode,
    health: LunHealth,
}

/// Opens `path` read-write, with O_DIRECT if a block-sized aligned read at offset 0 works that
/// way; otherwise buffered, with a warning, and claims it for this LUN alone
/// ([`super::claim`]): a block device (`block_device`) is opened O_EXCL, and either kind gets
/// qemu's image locks. Returns the file and whether I/O is direct.
pub fn open_direct_or_buffered(
    lun: &str,
    path: &Path,
    block_size_bytes: u32,
    block_device: bool,
) -> Result<(File, bool), LunError> {
    let exclusive = if block_device { libc::O_EXCL } else { 0 };
    let open = |direct: bool| {
        let mut options = OpenOptions::new();
        options
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | exclusive | if direct { libc::O_DIRECT } else { 0 });
        options.open(path)
    };
    let open_error = |source: std::io::Error| {
        if block_device && source.raw_os_error() == Some(libc::EBUSY) {
            return LunError::InUse {
                lun: lun.to_string(),
                path: path.to_path_buf(),
                holder: "the device is mounted or opened exclusively elsewhere (EBUSY)",
            };
        }
        LunError::Open {
            lun: lun.to_string(),
            path: path.to_path_buf(),
            source,
        }
    };
    let (file, direct_io) = open_unclaimed(lun, path, block_size_bytes, open, open_error)?;
    super::claim::claim(lun, path, &file)?;
    Ok((file, direct_io))
}

/// The open of [`open_direct_or_buffered`]: direct if the probe read works, else buffered.
fn open_unclaimed(
    lun: &str,
    path: &Path,
    block_size_bytes: u32,
    open: impl Fn(bool) -> std::io::Result<File>,
    open_error: impl Fn(std::io::Error) -> LunError,
) -> Result<(File, bool), LunError> {
    match open(true) {
        Ok(file) => {
            let mut probe = AlignedBuf::new(block_size_bytes as usize);
            let probe = &mut probe.as_mut_slice()[..block_size_bytes as usize];
            match file.read_at(probe, 0) {
                Ok(_) => return Ok((file, true)),
                Err(error) => log::warn!(
                    "LUN {lun}: {} refuses {block_size_bytes}-byte O_DIRECT I/O ({error}); using buffered I/O, flushed with fdatasync",
                    path.display()
                ),
            }
        }
        // A device someone else holds is refused whatever the flags: no fallback to try.
        Err(error) if error.raw_os_error() == Some(libc::EBUSY) => return Err(open_error(error)),
        Err(_) => log::warn!(
            "LUN {lun}: {} does not support O_DIRECT; using buffered I/O, flushed with fdatasync",
            path.display()
        ),
    }
    Ok((open(false).map_err(open_error)?, false))
}

impl FdLun {
    pub fn new(info: LunInfo, file: File, zero_mode: ZeroMode) -> Self {
        Self {
            info,
            file,
            zero_mode,
            health: LunHealth::default(),
        }
    }

    /// Counts a synchronous I/O error (failing the LUN if its device is gone) and wraps it.
    fn io_error(&self, io_type: BlockOp, offset_bytes: u64, source: std::io::Error) -> LunError {
        let errno = source.raw_os_error().unwrap_or(libc::EIO);
        if self.health.note_error(io_type, errno) {
            log::error!(
                "LUN {}: device gone ({source}); the LUN is failed and its I/O fails from now on",
                self.info.name
            );
        }
        LunError::Io {
            lun: self.info.name.clone(),
            offset_bytes,
            source,
        }
    }

    /// Refuses synchronous I/O to a failed LUN (counted as an error of `io_type`).
    fn check_online(&self, io_type: BlockOp) -> Result<(), LunError> {
        match self.health.failed_errno() {
            None => Ok(()),
            Some(errno) => {
                self.health.count_error(io_type);
                Err(LunError::Failed {
                    lun: self.info.name.clone(),
                    reason: format!("device gone: {}", std::io::Error::from_raw_os_error(errno)),
                })
            }
        }
    }

    fn fallocate_sync(&self, offset_bytes: u64, len_bytes: u64) -> std::io::Result<()> {
        // SAFETY: fallocate on a valid owned descriptor with plain integer arguments.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                self.zero_mode.fallocate_mode(),
                offset_bytes as i64,
                len_bytes as i64,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Lun for FdLun {
    fn info(&self) -> &LunInfo {
        &self.info
    }

    unsafe fn submit(&self, io: &LunIo, tag: u64, ring: &mut IoRing) -> Started {
        if self.health.is_failed() {
            return Started::Done(Err(libc::EIO));
        }
        let fd = types::Fd(self.file.as_raw_fd());
        if let LunIo::WriteZeroes {
            offset_bytes,
            len_bytes,
            fua: true,
        } = *io
        {
            let zero = opcode::Fallocate::new(fd, len_bytes)
                .offset(offset_bytes)
                .mode(self.zero_mode.fallocate_mode())
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(tag);
            let sync = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(tag);
            // SAFETY: neither entry refers to a buffer; the descriptor outlives them (see below).
            return match unsafe { ring.push_linked(&zero, &sync) } {
                Ok(()) => Started::Queued(2),
                Err(error) => Started::Done(Err(error.raw_os_error().unwrap_or(libc::EIO))),
            };
        }
        let entry = match *io {
            LunIo::Read {
                offset_bytes,
                buf,
                len_bytes,
            } => opcode::Read::new(fd, buf, len_bytes)
                .offset(offset_bytes)
                .build(),
            LunIo::Write {
                offset_bytes,
                buf,
                len_bytes,
                fua,
            } => opcode::Write::new(fd, buf, len_bytes)
                .offset(offset_bytes)
                .rw_flags(if fua { libc::RWF_DSYNC } else { 0 })
                .build(),
            LunIo::WriteZeroes {
                offset_bytes,
                len_bytes,
                ..
            } => opcode::Fallocate::new(fd, len_bytes)
                .offset(offset_bytes)
                .mode(self.zero_mode.fallocate_mode())
                .build(),
            LunIo::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        // SAFETY: the caller keeps the buffer valid until the tagged completion is reaped, and
        // the descriptor lives as long as this LUN, which the caller holds an Arc to.
        match unsafe { ring.push(&entry.user_data(tag)) } {
            Ok(()) => Started::Queued(1),
            Err(error) => Started::Done(Err(error.raw_os_error().unwrap_or(libc::EIO))),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> Result<(), LunError> {
        check_range(&self.info, offset_bytes, buf.len() as u64)?;
        self.check_online(BlockOp::Read)?;
        self.file
            .read_exact_at(buf, offset_bytes)
            .map_err(|error| self.io_error(BlockOp::Read, offset_bytes, error))
    }

    fn write_at(&self, buf: &[u8], offset_bytes: u64, durable: bool) -> Result<(), LunError> {
        check_range(&self.info, offset_bytes, buf.len() as u64)?;
        self.check_online(BlockOp::Write)?;
        self.file
            .write_all_at(buf, offset_bytes)
            .map_err(|error| self.io_error(BlockOp::Write, offset_bytes, error))?;
        if durable {
            self.file
                .sync_data()
                .map_err(|error| self.io_error(BlockOp::Flush, offset_bytes, error))?;
        }
        Ok(())
    }

    fn write_zeroes_at(&self, offset_bytes: u64, len_bytes: u64) -> Result<(), LunError> {
        check_range(&self.info, offset_bytes, len_bytes)?;
        self.check_online(BlockOp::Write)?;
        if self.fallocate_sync(offset_bytes, len_bytes).is_ok() {
            return Ok(());
        }
        // The file system or device cannot deallocate: write zeroes instead.
        const CHUNK_BYTES: u64 = 1024 * 1024;
        let zeroes = AlignedBuf::new(CHUNK_BYTES as usize);
        let mut done = 0;
        while done < len_bytes {
            let len = (len_bytes - done).min(CHUNK_BYTES) as usize;
            self.file
                .write_all_at(&zeroes.as_slice()[..len], offset_bytes + done)
                .map_err(|error| self.io_error(BlockOp::Write, offset_bytes + done, error))?;
            done += len as u64;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), LunError> {
        self.check_online(BlockOp::Flush)?;
        self.file
            .sync_data()
            .map_err(|error| self.io_error(BlockOp::Flush, 0, error))
    }

    fn health(&self) -> Option<&LunHealth> {
        Some(&self.health)
    }
}

/// The speed class of the device behind `dev` (a `st_dev` or `st_rdev`), from sysfs.
pub fn speed_class_of_device(dev: u64) -> super::SpeedClass {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let base = format!("/sys/dev/block/{major}:{minor}");
    for candidate in [
        format!("{base}/queue/rotational"),
        format!("{base}/../queue/rotational"),
    ] {
        if let Ok(text) = std::fs::read_to_string(&candidate) {
            return match text.trim() {
                "0" => super::SpeedClass::Ssd,
                "1" => super::SpeedClass::Hdd,
                _ => super::SpeedClass::Unknown,
            };
        }
    }
    super::SpeedClass::Unknown
}

#[cfg(test)]
mod tests {
    use crate::backend::aligned_buf::AlignedBuf;
    use crate::backend::{open_lun, LunError, LunIo, LunKind, LunSpec, Started};
    use crate::blockio::BlockOp;
    use crate::reactor::ring::IoRing;

    /// A device-gone error fails the LUN: every later I/O, on either path, fails at once.
    #[cfg_attr(
        miri,
        ignore = "io_uring: a system call Miri cannot run (sanitize.sh runs it under TSan)"
    )]
    #[test]
    fn device_gone_fails_the_lun() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lun = open_lun(&LunSpec {
            name: "f".into(),
            kind: LunKind::File,
            path: Some(dir.path().join("f.img")),
            size_bytes: Some(1 << 20),
            block_size_bytes: 512,
            remote: None,
        })
        .expect("file LUN");
        let mut buf = AlignedBuf::new(4096);
        assert!(lun.read_at(buf.as_mut_slice(), 0).is_ok());
        lun.note_error(BlockOp::Read, libc::EIO);
        assert!(!lun.is_failed(), "an I/O error alone does not fail a LUN");
        lun.note_error(BlockOp::Read, libc::ENODEV);
        assert!(lun.is_failed());
        assert!(matches!(
            lun.read_at(buf.as_mut_slice(), 0),
            Err(LunError::Failed { .. })
        ));
        let mut ring = IoRing::new(4).expect("ring");
        let read = LunIo::Read {
            offset_bytes: 0,
            buf: buf.as_mut_ptr(),
            len_bytes: 4096,
        };
        // SAFETY: nothing is queued: a failed LUN completes at once.
        let started = unsafe { lun.submit(&read, 1, &mut ring) };
        assert!(matches!(started, Started::Done(Err(libc::EIO))));
        let errors = lun.health().map(|h| h.errors()).unwrap_or_default();
        assert_eq!(errors.read, 3, "two noted errors and one refused read");
    }
}
