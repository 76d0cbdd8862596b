//! A front end's receive buffer: bytes the reactor's ring received and the session has not
//! parsed yet, between `start` and `end`. Receives go after `end`; parsing consumes from
//! `start`; when the free room at the end runs short, what is left moves to the front. Made
//! once per session, never grown.
//!
//! It also posts the session's one receive on the ring, as every front end does: into its
//! free room, or straight into the buffer of the request whose data is arriving
//! ([`data_window`] checks that window lies inside that buffer).

use crate::backend::aligned_buf::AlignedBuf;
use crate::blockio::tag;
use crate::reactor::session::SessionContext;
use io_uring::{opcode, types};

pub struct RecvBuffer {
    buf: AlignedBuf,
    start: usize,
    end: usize,
    /// Whether the session's receive is on the ring.
    posted: bool,
}

/// Why the session's receive could not be posted.
#[derive(Debug, thiserror::Error)]
pub enum RecvPostError {
    /// The buffer is full of bytes not consumed yet (a frame larger than it).
    #[error("receive buffer full")]
    Full,
    #[error("cannot post a receive: {0}")]
    Ring(std::io::Error),
}

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

impl RecvBuffer {
    pub fn new(bytes: usize) -> Self {
        Self {
            buf: AlignedBuf::new(bytes),
            start: 0,
            end: 0,
            posted: false,
        }
    }

    /// Whether the session's receive is on the ring.
    #[inline]
    pub fn is_posted(&self) -> bool {
        self.posted
    }

    /// The receive's completion came back: nothing is on the ring any more.
    #[inline]
    pub fn received(&mut self) {
        self.posted = false;
    }

    /// Puts the session's receive on the ring from `fd`: straight into a request's buffer
    /// when `direct` is a [`data_window`], else into this buffer's free room
    /// ([`Self::spare`]); tagged with the session-local tag kind `kind`. Once it is on the
    /// ring, `ring_pending` (the session's count of its entries on the ring) counts it.
    ///
    /// # Safety
    /// A `direct` window must be writable and stay where it is, not reused for anything
    /// else, until the receive's completion has come back; the session must outlive the ring
    /// entry (the reactor drops a session only when it is finished, with nothing on the ring).
    #[inline]
    pub unsafe fn post(
        &mut self,
        ctx: &mut SessionContext,
        fd: types::Fd,
        direct: Option<(*mut u8, usize)>,
        kind: u64,
        ring_pending: &mut u32,
    ) -> Result<(), RecvPostError> {
        let (at, len) = match direct {
            Some(window) => window,
            None => self.spare().ok_or(RecvPostError::Full)?,
        };
        let entry = opcode::Recv::new(fd, at, len as u32)
            .build()
            .user_data(ctx.tag(tag::encode(kind, 0, 0, 0)));
        // SAFETY: the bytes received into (this buffer's own, or the caller's window) stay
        // valid and in place until the completion, as this function's contract says.
        unsafe { ctx.ring.push(&entry) }.map_err(RecvPostError::Ring)?;
        self.posted = true;
        *ring_pending += 1;
        Ok(())
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The bytes received and not consumed yet.
    #[inline]
    pub fn pending(&self) -> &[u8] {
        &self.buf.as_slice()[self.start..self.end]
    }

    /// How many bytes [`Self::pending`] holds.
    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The first `bytes` pending bytes are parsed.
    #[inline]
    pub fn consume(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.len(), "consumed more than was received");
        self.start += bytes.min(self.len());
    }

    /// Drops up to `bytes` pending bytes (what a refused request brought, say); returns how
    /// many are still to drop once more arrive.
    #[inline]
    pub fn discard(&mut self, bytes: usize) -> usize {
        let take = bytes.min(self.len());
        self.start += take;
        bytes - take
    }

    /// A receive into [`Self::spare`] brought `bytes`.
    #[inline]
    pub fn filled(&mut self, bytes: usize) {
        debug_assert!(self.end + bytes <= self.buf.len(), "filled past the buffer");
        self.end = (self.end + bytes).min(self.buf.len());
    }

    /// Where the next receive goes and how much it may bring: the room after the pending
    /// bytes, moving them to the front first when there is none. `None` when the buffer is
    /// full of bytes not consumed yet.
    pub fn spare(&mut self) -> Option<(*mut u8, usize)> {
        if self.end == self.buf.len() {
            if self.start == 0 {
                return None;
            }
            self.compact();
        }
        // SAFETY: end < the buffer's length, checked above.
        let at = unsafe { self.buf.as_mut_ptr().add(self.end) };
        Some((at, self.buf.len() - self.end))
    }

    /// After a round of parsing: back to the front when everything was consumed, or the
    /// pending bytes moved there when fewer than `keep_free` bytes of room are left after them.
    pub fn tidy(&mut self, keep_free: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < keep_free {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let live = self.end - self.start;
        self.buf.as_mut_slice().copy_within(self.start..self.end, 0);
        self.start = 0;
        self.end = live;
    }
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

    #[test]
    fn pending_bytes_move_to_the_front_when_the_end_is_reached() {
        let mut recv = RecvBuffer::new(4096);
        let (at, room) = recv.spare().expect("room");
        assert_eq!(room, 4096);
        // SAFETY: `at` points at `room` writable bytes of the buffer.
        unsafe { std::ptr::write_bytes(at, 7, room) };
        recv.filled(room);
        assert!(recv.spare().is_none(), "full of unconsumed bytes");
        recv.consume(4000);
        assert_eq!(recv.pending(), &[7u8; 96][..]);
        let (_, room) = recv.spare().expect("compacted");
        assert_eq!(room, 4000);
        assert_eq!(recv.pending(), &[7u8; 96][..], "the pending bytes kept");
        assert_eq!(recv.discard(100), 4, "four more to drop once they arrive");
        recv.tidy(48);
        assert!(recv.is_empty());
        assert_eq!(recv.spare().map(|(_, room)| room), Some(4096));
    }
}
