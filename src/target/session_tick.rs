//! A session's once-a-second tick on its reactor's ring: a timeout entry whose completion
//! lets the session look at what changes off the ring (a close asked for by the control
//! plane or another login, a controller that ended, a peer gone silent). One tick at a time
//! per session; the session counts it among its entries on the ring.

use crate::blockio::tag;
use crate::reactor::session::SessionContext;
use io_uring::{opcode, types};

pub struct SessionTick {
    /// Boxed: the ring entry points at it until the timeout completes.
    spec: Box<types::Timespec>,
    posted: bool,
}

impl SessionTick {
    pub fn every_second() -> Self {
        Self {
            spec: Box::new(types::Timespec::new().sec(1)),
            posted: false,
        }
    }

    /// Whether the tick is on the ring.
    #[inline]
    pub fn is_posted(&self) -> bool {
        self.posted
    }

    /// Its completion came back: the tick is off the ring.
    #[inline]
    pub fn fired(&mut self) {
        self.posted = false;
    }

    /// Puts the tick on the ring, tagged with the session-local tag kind `kind`; once it is
    /// on the ring, `ring_pending` (the session's count of its entries on the ring) counts it.
    ///
    /// # Safety
    /// This tick must not be dropped before its completion has come back: the session that
    /// owns it must outlive the ring entry (the reactor drops a session only when it is
    /// finished, with nothing on the ring).
    pub unsafe fn post(
        &mut self,
        ctx: &mut SessionContext,
        kind: u64,
        ring_pending: &mut u32,
    ) -> std::io::Result<()> {
        let entry = opcode::Timeout::new(&*self.spec)
            .build()
            .user_data(ctx.tag(tag::encode(kind, 0, 0, 0)));
        // SAFETY: the timespec is boxed and owned by this tick, which outlives the entry as
        // this function's contract says.
        unsafe { ctx.ring.push(&entry) }?;
        self.posted = true;
        *ring_pending += 1;
        Ok(())
    }
}
