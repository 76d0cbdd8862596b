//! Whether a volume may be opened or deleted, as one atomic word: the number of front-end
//! sessions that have it open, and a `deleting` bit.
//!
//! Opening and deleting used to be two separate steps (a counter checked by `volume_delete`,
//! then its extents freed later), so a handshake finishing in between could open a volume
//! whose extents were already being handed to another volume; and a session refused by a
//! full reactor never gave its count back, so its volume could never be deleted. Here:
//!
//! - open is a compare-and-swap loop that adds one only while the deleting bit is clear;
//! - delete is a compare-and-swap that sets the bit only while the count is zero, so once it
//!   succeeds no session has the volume open and none ever will;
//! - an open is held by an [`OpenGuard`] that the session owns: whatever drops the session
//!   (closed, refused by a full or stopping reactor, failed) gives the open back.

use super::Volume;
use crate::constants::MAX_OPENS_PER_VOLUME;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The deleting bit; the bits below it count opens.
const DELETING: u64 = 1 << 63;
const COUNT_MASK: u64 = DELETING - 1;
const _: () = assert!((MAX_OPENS_PER_VOLUME as u64) < COUNT_MASK);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("the volume is being deleted")]
    Deleting,
    #[error("the volume is open {MAX_OPENS_PER_VOLUME} times already")]
    TooManyOpens,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("open by {open_count} connections")]
pub struct StillOpen {
    pub open_count: u64,
}

/// The open count and the deleting bit of one volume.
#[derive(Debug, Default)]
pub struct OpenState(AtomicU64);

impl OpenState {
    /// Adds one open, unless the volume is being deleted (or opened too often).
    pub fn try_open(&self) -> Result<(), OpenError> {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            if current & DELETING != 0 {
                return Err(OpenError::Deleting);
            }
            if current & COUNT_MASK >= MAX_OPENS_PER_VOLUME as u64 {
                return Err(OpenError::TooManyOpens);
            }
            match self.0.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }

    /// Gives back one open taken by [`Self::try_open`].
    pub fn release(&self) {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        assert!(
            before & COUNT_MASK > 0,
            "a volume open was released more often than taken"
        );
    }

    /// Sets the deleting bit if nobody has the volume open; from then on every open fails.
    pub fn try_begin_delete(&self) -> Result<(), StillOpen> {
        self.0
            .compare_exchange(0, DELETING, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|seen| StillOpen {
                open_count: seen & COUNT_MASK,
            })
    }

    /// Clears the deleting bit after a delete that could not finish: the volume stays.
    pub fn cancel_delete(&self) {
        let before = self.0.fetch_and(!DELETING, Ordering::AcqRel);
        assert_eq!(before, DELETING, "cancelling a delete that was not begun");
    }

    pub fn open_count(&self) -> u64 {
        self.0.load(Ordering::Acquire) & COUNT_MASK
    }

    pub fn is_deleting(&self) -> bool {
        self.0.load(Ordering::Acquire) & DELETING != 0
    }
}

/// One open of a volume; dropping it gives the open back.
pub struct OpenGuard {
    volume: Arc<Volume>,
}

impl OpenGuard {
    /// Opens `volume`, unless it is being deleted.
    pub fn open(volume: &Arc<Volume>) -> Result<Self, OpenError> {
        volume.open_state.try_open()?;
        Ok(Self {
            volume: volume.clone(),
        })
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.volume.open_state.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn delete_waits_for_every_open_and_then_excludes_opens() {
        let state = OpenState::default();
        state.try_open().expect("open");
        state.try_open().expect("open");
        assert_eq!(state.open_count(), 2);
        assert_eq!(state.try_begin_delete(), Err(StillOpen { open_count: 2 }));
        state.release();
        assert_eq!(state.try_begin_delete(), Err(StillOpen { open_count: 1 }));
        state.release();
        assert_eq!(state.try_begin_delete(), Ok(()));
        assert!(state.is_deleting());
        assert_eq!(state.try_open(), Err(OpenError::Deleting));
        assert_eq!(state.open_count(), 0);
        // A delete that could not finish lets the volume be opened again.
        state.cancel_delete();
        assert!(!state.is_deleting());
        assert_eq!(state.try_open(), Ok(()));
    }

    #[test]
    fn opens_are_bounded() {
        let state = OpenState::default();
        for _ in 0..MAX_OPENS_PER_VOLUME {
            state.try_open().expect("open");
        }
        assert_eq!(state.try_open(), Err(OpenError::TooManyOpens));
        assert_eq!(state.open_count(), MAX_OPENS_PER_VOLUME as u64);
    }

    #[test]
    #[should_panic(expected = "released more often than taken")]
    fn releasing_what_was_not_taken_is_caught() {
        OpenState::default().release();
    }

    /// Openers and a deleter race: whenever the delete wins, no open is held at that moment
    /// and none succeeds afterwards; every open taken is given back.
    #[test]
    fn concurrent_opens_never_overlap_a_delete() {
        for _ in 0..20 {
            let state = Arc::new(OpenState::default());
            // Set by the deleter when it wins; an opener that then holds an open is the bug.
            let deleted = Arc::new(AtomicBool::new(false));
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    let state = state.clone();
                    let deleted = deleted.clone();
                    std::thread::spawn(move || {
                        let mut opened = 0u64;
                        for _ in 0..5_000 {
                            if state.try_open().is_ok() {
                                assert!(
                                    !deleted.load(Ordering::SeqCst),
                                    "an open succeeded after the delete"
                                );
                                opened += 1;
                                std::hint::spin_loop();
                                state.release();
                            }
                        }
                        opened
                    })
                })
                .collect();
            let deleter = {
                let state = state.clone();
                let deleted = deleted.clone();
                std::thread::spawn(move || loop {
                    if state.try_begin_delete().is_ok() {
                        deleted.store(true, Ordering::SeqCst);
                        assert_eq!(state.open_count(), 0);
                        return;
                    }
                    std::hint::spin_loop();
                })
            };
            for opener in openers {
                opener.join().expect("opener");
            }
            deleter.join().expect("deleter");
            assert!(state.is_deleting());
            assert_eq!(state.open_count(), 0);
        }
    }
}
