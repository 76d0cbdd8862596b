//! Claims on what a LUN lives on: a LUN's file or device is written by this server alone.
//!
//! Two writers on one LUN (a second sds, or the same server given the file twice) hand the
//! same blocks to different volumes. A file-descriptor LUN is therefore claimed when it opens,
//! the way qemu claims a disk image, so that qemu, another sds and anything else following
//! qemu's convention refuse it while we hold it:
//!
//! - **Files and devices: qemu's image locks.** Open-file-description (OFD) byte-range locks,
//!   as `block/file-posix.c` takes them: byte `100 + i` says "holds permission i", byte
//!   `200 + i` says "does not share permission i" (i = consistent read, write, write
//!   unchanged, resize, graph change). A LUN holds every permission and shares none, so it
//!   read-locks bytes 100–104 and 200–204, then tests (F_OFD_GETLK with a write lock) whether
//!   anyone else holds any of them: qemu applies, then tests, in the same order, so of two
//!   openers racing at least one sees the other. OFD locks (not POSIX `F_SETLK` locks) because
//!   they belong to the open file, not the process: two LUNs of one server on one file
//!   conflict too, and closing some other descriptor of the file does not drop them. They go
//!   when the LUN's descriptor is closed, so nothing is left behind by a crash.
//! - **Block devices: also O_EXCL** (opened by [`super::fd_lun::open_direct_or_buffered`]),
//!   the kernel's own claim: refused with EBUSY while the device is mounted, part of a RAID or
//!   device-mapper table, or held by another O_EXCL opener (as SPDK's bdev claims and qemu's
//!   `locking` of host devices do).
//!
//! A file system that has no OFD locks (some network and FUSE file systems answer EINVAL or
//! ENOLCK) cannot hold a claim: the LUN opens with a warning, as qemu does with `locking=auto`.

use super::LunError;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// qemu's `RAW_LOCK_PERM_BASE` and `RAW_LOCK_SHARED_BASE`, and the permission bits a LUN
/// claims (`BLK_PERM_CONSISTENT_READ` .. `BLK_PERM_GRAPH_MOD`, bits 0 to 4).
const QEMU_LOCK_PERM_BASE: libc::off_t = 100;
const QEMU_LOCK_SHARED_BASE: libc::off_t = 200;
const QEMU_PERMISSION_BITS: libc::off_t = 5;

/// Claims `file` (the LUN's open descriptor) with qemu's image locks, or says it is in use.
/// The claim lasts as long as the descriptor.
pub fn claim(lun: &str, path: &Path, file: &File) -> Result<(), LunError> {
    for base in [QEMU_LOCK_PERM_BASE, QEMU_LOCK_SHARED_BASE] {
        let mut lock = byte_range(libc::F_RDLCK, base);
        match ofd_lock(file, libc::F_OFD_SETLK, &mut lock) {
            Ok(()) => {}
            Err(error) if matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                return Err(in_use(lun, path))
            }
            Err(error) => {
                log::warn!(
                    "LUN {lun}: {} cannot be locked ({error}); it is not claimed, so nothing \
                     stops another program from writing it",
                    path.display()
                );
                return Ok(());
            }
        }
    }
    for base in [QEMU_LOCK_PERM_BASE, QEMU_LOCK_SHARED_BASE] {
        let mut test = byte_range(libc::F_WRLCK, base);
        ofd_lock(file, libc::F_OFD_GETLK, &mut test).map_err(|source| LunError::Open {
            lun: lun.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
        if test.l_type != libc::F_UNLCK as libc::c_short {
            return Err(in_use(lun, path));
        }
    }
    Ok(())
}

fn in_use(lun: &str, path: &Path) -> LunError {
    LunError::InUse {
        lun: lun.to_string(),
        path: path.to_path_buf(),
        holder: "another open holds qemu-style image locks on it",
    }
}

/// A lock of `kind` on qemu's permission bytes from `base`.
fn byte_range(kind: libc::c_int, base: libc::off_t) -> libc::flock {
    // SAFETY: flock is a plain C struct of integers, for which all zeroes is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = base;
    lock.l_len = QEMU_PERMISSION_BITS;
    // An OFD lock request must say pid 0.
    lock.l_pid = 0;
    lock
}

/// `fcntl(fd, command, lock)` for an OFD lock command, retried on EINTR.
fn ofd_lock(file: &File, command: libc::c_int, lock: &mut libc::flock) -> std::io::Result<()> {
    loop {
        // SAFETY: fcntl with an OFD lock command reads and (for GETLK) writes the flock struct
        // behind the pointer, which is a live, exclusively borrowed flock.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), command, lock as *mut libc::flock) };
        if rc == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .expect("open")
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri isolates the file system")]
    fn a_second_open_of_a_claimed_file_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lun.img");
        let first = open(&path);
        claim("a", &path, &first).expect("first claim");
        // Another open file description, even in this process, is another owner.
        let second = open(&path);
        match claim("b", &path, &second) {
            Err(LunError::InUse { lun, .. }) => assert_eq!(lun, "b"),
            other => panic!("a second claim was not refused: {other:?}"),
        }
        drop(second);
        drop(first);
        let third = open(&path);
        claim("c", &path, &third).expect("the claim after the first closed");
    }
}
