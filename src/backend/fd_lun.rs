//! The io_uring engine shared by the drivers whose LUN is a file descriptor (`file`,
//! `blockdev`): reads and writes with O_DIRECT where the file system allows it, FUA as
//! RWF_DSYNC, flush as fdatasync, zeroes as fallocate.

use super::aligned_buf::AlignedBuf;
use super::{check_range, Lun, LunError, LunInfo, LunIo, Started};
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
}

/// Opens `path` read-write, with O_DIRECT if a block-sized aligned read at offset 0 works that
/// way; otherwise buffered, with a warning. Returns the file and whether I/O is direct.
pub fn open_direct_or_buffered(
    lun: &str,
    path: &Path,
    block_size_bytes: u32,
) -> Result<(File, bool), LunError> {
    let open = |direct: bool| {
        let mut options = OpenOptions::new();
        options
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 });
        options.open(path)
    };
    let open_error = |source| LunError::Open {
        lun: lun.to_string(),
        path: path.to_path_buf(),
        source,
    };
    if let Ok(file) = open(true) {
        let mut probe = AlignedBuf::new(block_size_bytes as usize);
        let probe = &mut probe.as_mut_slice()[..block_size_bytes as usize];
        match file.read_at(probe, 0) {
            Ok(_) => return Ok((file, true)),
            Err(error) => log::warn!(
                "LUN {lun}: {} refuses {block_size_bytes}-byte O_DIRECT I/O ({error}); using buffered I/O, flushed with fdatasync",
                path.display()
            ),
        }
    } else {
        log::warn!(
            "LUN {lun}: {} does not support O_DIRECT; using buffered I/O, flushed with fdatasync",
            path.display()
        );
    }
    Ok((open(false).map_err(open_error)?, false))
}

impl FdLun {
    pub fn new(info: LunInfo, file: File, zero_mode: ZeroMode) -> Self {
        Self {
            info,
            file,
            zero_mode,
        }
    }

    fn io_error(&self, offset_bytes: u64, source: std::io::Error) -> LunError {
        LunError::Io {
            lun: self.info.name.clone(),
            offset_bytes,
            source,
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
        self.file
            .read_exact_at(buf, offset_bytes)
            .map_err(|error| self.io_error(offset_bytes, error))
    }

    fn write_at(&self, buf: &[u8], offset_bytes: u64, durable: bool) -> Result<(), LunError> {
        check_range(&self.info, offset_bytes, buf.len() as u64)?;
        self.file
            .write_all_at(buf, offset_bytes)
            .map_err(|error| self.io_error(offset_bytes, error))?;
        if durable {
            self.file
                .sync_data()
                .map_err(|error| self.io_error(offset_bytes, error))?;
        }
        Ok(())
    }

    fn write_zeroes_at(&self, offset_bytes: u64, len_bytes: u64) -> Result<(), LunError> {
        check_range(&self.info, offset_bytes, len_bytes)?;
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
                .map_err(|error| self.io_error(offset_bytes + done, error))?;
            done += len as u64;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), LunError> {
        self.file
            .sync_data()
            .map_err(|error| self.io_error(0, error))
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
