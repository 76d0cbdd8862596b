//! One `sendmsg` of many pieces on a reactor's ring, as every front end answers: the pieces
//! (headers, data buffers, trailers) are gathered into iovecs, sent with one ring entry, and
//! a partial send is resumed from where it stopped. The iovecs and the message header are
//! allocated once, when the session is made.

use crate::blockio::tag;
use crate::reactor::session::SessionContext;
use io_uring::{opcode, types};

pub struct GatherSend {
    iov: Vec<libc::iovec>,
    msg: Box<libc::msghdr>,
    posted: bool,
}

/// What a completed send left to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Every piece went out.
    All,
    /// Some did not: the rest is ready to be submitted again.
    Partial,
}

// SAFETY: the raw pointers inside (the iovecs, and the header's pointer to them) point into
// buffers the owning session keeps; a session moves between threads only before it is
// attached, with nothing in flight.
unsafe impl Send for GatherSend {}

impl GatherSend {
    /// Room for `pieces` iovecs per send.
    pub fn with_capacity(pieces: usize) -> Self {
        Self {
            iov: Vec::with_capacity(pieces),
            // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            posted: false,
        }
    }

    /// Whether a send is on the ring.
    #[inline]
    pub fn is_posted(&self) -> bool {
        self.posted
    }

    /// Pieces gathered for the next send.
    #[inline]
    pub fn len(&self) -> usize {
        self.iov.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.iov.is_empty()
    }

    /// Pieces the next send may still take (its iovecs are never grown).
    #[inline]
    pub fn room(&self) -> usize {
        self.iov.capacity() - self.iov.len()
    }

    /// Starts gathering the next send.
    #[inline]
    pub fn clear(&mut self) {
        debug_assert!(!self.posted, "cleared while a send is on the ring");
        self.iov.clear();
    }

    /// Adds a piece (empty pieces are left out).
    #[inline]
    pub fn push(&mut self, piece: &[u8]) {
        if !piece.is_empty() {
            self.iov.push(libc::iovec {
                iov_base: piece.as_ptr() as *mut _,
                iov_len: piece.len(),
            });
        }
    }

    /// Puts the gathered pieces on the ring as one `sendmsg` to `fd`, tagged with the
    /// session-local tag kind `kind`; once it is on the ring, `ring_pending` (the session's
    /// count of its entries on the ring) counts it.
    ///
    /// # Safety
    /// Every piece pushed must stay where it is, unchanged, until the send's completion has
    /// been handed to [`Self::complete`]; the caller must outlive the ring entry.
    #[inline]
    pub unsafe fn submit(
        &mut self,
        ctx: &mut SessionContext,
        fd: types::Fd,
        kind: u64,
        ring_pending: &mut u32,
    ) -> std::io::Result<()> {
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len();
        let entry = opcode::SendMsg::new(fd, &*self.msg as *const libc::msghdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(ctx.tag(tag::encode(kind, 0, 0, 0)));
        // SAFETY: the header and the iovecs are this object's; the pieces are the caller's,
        // kept in place as this function's contract says.
        unsafe { ctx.ring.push(&entry) }?;
        self.posted = true;
        *ring_pending += 1;
        Ok(())
    }

    /// A send completed having sent `sent` bytes (positive): drops the pieces that went out
    /// and, of a piece cut short, the part that did.
    pub fn complete(&mut self, sent: usize) -> Sent {
        self.posted = false;
        let mut sent = sent;
        let mut first = 0;
        while first < self.iov.len() && sent >= self.iov[first].iov_len {
            sent -= self.iov[first].iov_len;
            first += 1;
        }
        if first == self.iov.len() {
            return Sent::All;
        }
        self.iov.drain(..first);
        let iov = &mut self.iov[0];
        // SAFETY: sent < iov_len, so the advanced pointer stays inside the same piece.
        iov.iov_base = unsafe { (iov.iov_base as *mut u8).add(sent) }.cast();
        iov.iov_len -= sent;
        Sent::Partial
    }

    /// A send failed: nothing is on the ring any more.
    pub fn failed(&mut self) {
        self.posted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_send_resumes_inside_the_piece_it_stopped_in() {
        let (a, b, c) = ([1u8; 4], [2u8; 6], [3u8; 3]);
        let mut send = GatherSend::with_capacity(4);
        send.push(&a);
        send.push(&[]);
        send.push(&b);
        send.push(&c);
        assert_eq!(send.len(), 3, "an empty piece is left out");
        assert_eq!(send.complete(7), Sent::Partial);
        assert_eq!(send.len(), 2);
        assert_eq!(send.iov[0].iov_len, 3, "three bytes of b are left");
        assert_eq!(send.iov[0].iov_base as usize, b.as_ptr() as usize + 3);
        assert_eq!(send.complete(6), Sent::All);
    }
}
