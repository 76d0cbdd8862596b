//! The state directory's lock: one server per state directory, for the server's whole life.
//!
//! Two servers on one state directory would replay the same journals and hand the same free
//! extents to different volumes. So `sds serve` takes `flock(LOCK_EX | LOCK_NB)` on
//! `STATE/sds.lock` before it reads anything there or touches its management socket, writes
//! its pid into the file once it holds the lock (so a refused server can name the holder), and
//! keeps the file open until it has stopped. The kernel drops a flock with the last descriptor
//! of its open file, so a server killed with SIGKILL leaves no lock behind: the next one starts.
//! The file itself is never removed: unlinking a locked file would let a third server lock a
//! new file of the same name while the first still runs. Its pid is meaningful only while the
//! lock is held.

use crate::constants::{
    MAX_STATE_LOCK_HOLDER_BYTES, STATE_LOCK_HOLDER_READ_ATTEMPTS,
    STATE_LOCK_HOLDER_READ_INTERVAL_MS,
};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The lock file's name in the state directory.
pub const STATE_LOCK_FILE: &str = "sds.lock";

#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    #[error("cannot open the state directory's lock file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the state directory {state_dir} is in use by another sds server ({holder}, which holds \
         the lock on {path}); stop that server or choose another --state-dir"
    )]
    Held {
        state_dir: PathBuf,
        path: PathBuf,
        holder: String,
    },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write this server's pid into {path}")]
    WritePid {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases the state directory.
#[derive(Debug)]
pub struct StateLock {
    /// Kept open for the lock's sake: closing it releases the flock.
    _file: File,
}

impl StateLock {
    /// Takes the lock on `state_dir` (which must exist), or says who holds it.
    pub fn acquire(state_dir: &Path) -> Result<Self, StateLockError> {
        let path = state_dir.join(STATE_LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|source| StateLockError::Open {
                path: path.clone(),
                source,
            })?;
        loop {
            // SAFETY: flock on a descriptor this function owns, with constant flags.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let error = std::io::Error::last_os_error();
            match error.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => {
                    return Err(StateLockError::Held {
                        state_dir: state_dir.to_path_buf(),
                        holder: holder(&file),
                        path,
                    })
                }
                _ => {
                    return Err(StateLockError::Lock {
                        path,
                        source: error,
                    })
                }
            }
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
            .map_err(|source| StateLockError::WritePid {
                path: path.clone(),
                source,
            })?;
        Ok(Self { _file: file })
    }
}

/// Who holds the lock, as the holder wrote it: "pid N", or "pid unknown" when it has not
/// written its pid yet (or the file says something else).
fn holder(file: &File) -> String {
    let mut buffer = [0u8; MAX_STATE_LOCK_HOLDER_BYTES];
    for _ in 0..STATE_LOCK_HOLDER_READ_ATTEMPTS {
        if let Ok(n) = file.read_at(&mut buffer, 0) {
            let text = String::from_utf8_lossy(&buffer[..n]);
            if let Ok(pid) = text.trim().parse::<u32>() {
                return format!("pid {pid}");
            }
        }
        std::thread::sleep(Duration::from_millis(STATE_LOCK_HOLDER_READ_INTERVAL_MS));
    }
    "pid unknown".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_granted_once_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = StateLock::acquire(dir.path()).expect("first lock");
        // A second open file description, as a second server would have.
        match StateLock::acquire(dir.path()) {
            Err(StateLockError::Held { holder, .. }) => {
                assert_eq!(holder, format!("pid {}", std::process::id()))
            }
            other => panic!("a second lock was not refused: {other:?}"),
        }
        drop(first);
        StateLock::acquire(dir.path()).expect("the lock after release");
    }
}
