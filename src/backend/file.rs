//! `file`: a LUN in a regular file, created with the given size if absent (when the LUN is
//! created; at start-up a missing file fails the LUN instead). `block_size` (512 or 4096) sets
//! the sector size the LUN emulates; I/O goes through io_uring ([`super::fd_lun`]).

use super::fd_lun::{open_direct_or_buffered, speed_class_of_device, FdLun, ZeroMode};
use super::{LunError, LunInfo, LunKind, LunSpec};
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;

/// Opens the file LUN `spec` describes, creating its file with `size` if it does not exist.
pub fn open(spec: &LunSpec) -> Result<FdLun, LunError> {
    open_or_create(spec, true)
}

/// Opens a file LUN whose file must exist already (a LUN of the configuration, at start-up):
/// a missing file is a LUN that disappeared, not one to create empty.
pub fn open_existing(spec: &LunSpec) -> Result<FdLun, LunError> {
    open_or_create(spec, false)
}

fn open_or_create(spec: &LunSpec, create: bool) -> Result<FdLun, LunError> {
    let invalid = |what: String| LunError::Invalid {
        lun: spec.name.clone(),
        what,
    };
    let path = spec
        .path
        .clone()
        .ok_or_else(|| invalid("path is required for a file LUN".into()))?;
    let open_error = |source| LunError::Open {
        lun: spec.name.clone(),
        path: path.clone(),
        source,
    };
    let block = u64::from(spec.block_size_bytes);
    match std::fs::metadata(&path) {
        Ok(metadata) => {
            if !metadata.is_file() {
                return Err(invalid(format!("{} is not a regular file", path.display())));
            }
            if let Some(size) = spec.size_bytes {
                if size != metadata.len() {
                    return Err(invalid(format!(
                        "size {size} differs from the existing file's {} bytes",
                        metadata.len()
                    )));
                }
            }
        }
        Err(error) if create && error.kind() == std::io::ErrorKind::NotFound => {
            let size = spec.size_bytes.ok_or_else(|| {
                invalid(format!(
                    "{} does not exist and no size was given",
                    path.display()
                ))
            })?;
            if size == 0 || size % block != 0 {
                return Err(invalid(format!(
                    "size must be a non-zero multiple of block_size {block}"
                )));
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(open_error)?;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(open_error)?;
            file.set_len(size).map_err(open_error)?;
            file.sync_all().map_err(open_error)?;
        }
        Err(error) => return Err(open_error(error)),
    }
    let (file, direct_io) =
        open_direct_or_buffered(&spec.name, &path, spec.block_size_bytes, false)?;
    let metadata = file.metadata().map_err(open_error)?;
    let size_bytes = metadata.len() / block * block;
    if size_bytes == 0 {
        return Err(invalid(format!(
            "{} is smaller than one {block}-byte block",
            path.display()
        )));
    }
    let info = LunInfo {
        name: spec.name.clone(),
        kind: LunKind::File,
        path: Some(path),
        size_bytes,
        block_size_bytes: spec.block_size_bytes,
        speed_class: speed_class_of_device(metadata.dev()),
        direct_io,
    };
    Ok(FdLun::new(info, file, ZeroMode::PunchHole))
}
