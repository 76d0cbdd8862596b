//! Posting a session's receive on its reactor's ring, as every front end does: into the free
//! room of its receive buffer, or straight into the buffer of the request whose data is
//! arriving (after checking that the window asked for lies inside it). One receive at a time
//! per session; the session counts it among its entries on the ring, so it is never dropped
//! while the kernel may still write into its buffers.

use crate::reactor::ring::IoRing;
use io_uring::{opcode, types};

/// Where a receive straight into a request's buffer goes: bytes `start..end` of `buf`.
/// `None` when the window is empty or runs past the buffer (a peer's data the request does
/// not take).
#[inline]
pub fn data_window(buf: &mut [u8], start: usize, end: usize) -> Option<(*mut u8, usize)> {
    if end > buf.len() || start >= end {
        return None;
    }
    // SAFETY: start < end <= the buffer's length, checked above, so the pointer stays inside
    // the buffer.
    Some((unsafe { buf.as_mut_ptr().add(start) }, end - start))
}

/// Puts a receive of at most `len` bytes into `at` on the ring for `fd`; once it is on the
/// ring, `posted` is set and `ring_pending` counts it.
///
/// # Safety
/// The `len` bytes at `at` must be writable and stay where they are, not reused for anything
/// else, until the receive's completion has been handed back to the session; the session must
/// outlive the ring entry (the reactor drops a session only when it is finished, with nothing
/// on the ring).
#[inline]
pub unsafe fn post(
    ring: &mut IoRing,
    fd: types::Fd,
    (at, len): (*mut u8, usize),
    user_data: u64,
    posted: &mut bool,
    ring_pending: &mut u32,
) -> std::io::Result<()> {
    let entry = opcode::Recv::new(fd, at, len as u32)
        .build()
        .user_data(user_data);
    // SAFETY: the buffer stays valid and in place until the completion, as this function's
    // contract says.
    unsafe { ring.push(&entry) }?;
    *posted = true;
    *ring_pending += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_window_must_be_inside_the_buffer_and_not_empty() {
        let mut buf = [0u8; 16];
        let base = buf.as_ptr() as usize;
        let (at, len) = data_window(&mut buf, 4, 16).expect("inside");
        assert_eq!((at as usize - base, len), (4, 12));
        assert!(data_window(&mut buf, 4, 17).is_none(), "past the end");
        assert!(data_window(&mut buf, 8, 8).is_none(), "empty");
        assert!(data_window(&mut buf, 9, 8).is_none(), "reversed");
    }
}
