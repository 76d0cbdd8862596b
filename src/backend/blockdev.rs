//! `blockdev`: a LUN on a block device (a disk, a partition, a loop device). Its size and
//! logical sector size come from the device; I/O goes through io_uring ([`super::fd_lun`]).

use super::fd_lun::{open_direct_or_buffered, speed_class_of_device, FdLun, ZeroMode};
use super::{LunError, LunInfo, LunKind, LunSpec};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;

/// `BLKSSZGET`: the device's logical sector size.
const BLKSSZGET: libc::c_ulong = 0x1268;

pub fn open(spec: &LunSpec) -> Result<FdLun, LunError> {
    let invalid = |what: String| LunError::Invalid {
        lun: spec.name.clone(),
        what,
    };
    let path = spec
        .path
        .clone()
        .ok_or_else(|| invalid("path is required for a blockdev LUN".into()))?;
    let open_error = |source| LunError::Open {
        lun: spec.name.clone(),
        path: path.clone(),
        source,
    };
    let metadata = std::fs::metadata(&path).map_err(open_error)?;
    if !metadata.file_type().is_block_device() {
        return Err(invalid(format!("{} is not a block device", path.display())));
    }
    // Probe the logical sector size first: the LUN's block size is at least that.
    let probe = std::fs::File::open(&path).map_err(open_error)?;
    let mut sector: libc::c_int = 512;
    // SAFETY: BLKSSZGET writes one c_int through the pointer, which points at a live c_int.
    let rc = unsafe {
        libc::ioctl(
            probe.as_raw_fd(),
            BLKSSZGET as _,
            &mut sector as *mut libc::c_int,
        )
    };
    let sector = if rc == 0 { sector as u32 } else { 512 };
    let block_size_bytes = spec.block_size_bytes.max(sector);
    let (mut file, direct_io) = open_direct_or_buffered(&spec.name, &path, block_size_bytes, true)?;
    let device_bytes = file.seek(SeekFrom::End(0)).map_err(open_error)?;
    let size_bytes = device_bytes / u64::from(block_size_bytes) * u64::from(block_size_bytes);
    if let Some(size) = spec.size_bytes {
        if size != size_bytes {
            return Err(invalid(format!(
                "size {size} differs from the device's {size_bytes} bytes"
            )));
        }
    }
    if size_bytes == 0 {
        return Err(invalid(format!("{} is empty", path.display())));
    }
    let info = LunInfo {
        name: spec.name.clone(),
        kind: LunKind::Blockdev,
        path: Some(path),
        size_bytes,
        block_size_bytes,
        speed_class: speed_class_of_device(metadata.rdev()),
        direct_io,
    };
    Ok(FdLun::new(info, file, ZeroMode::ZeroRange))
}
