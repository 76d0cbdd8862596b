//! What a reactor runs: sessions, one per front-end connection. The reactor owns the ring and
//! routes each completion to the session whose index is in the top bits of its tag.

use super::mailbox::SessionId;
use super::ring::IoRing;
use super::ReactorHandle;
use std::sync::Arc;

/// Bits of a ring tag that belong to the session; the bits above name the session.
pub const SESSION_TAG_BITS: u32 = 48;
pub const SESSION_TAG_MASK: u64 = (1 << SESSION_TAG_BITS) - 1;

/// What a session can use while it handles an event.
pub struct SessionContext<'a> {
    pub ring: &'a mut IoRing,
    /// Which reactor runs the session: the index of its statistics counters.
    pub reactor_index: usize,
    pub reactor: &'a Arc<ReactorHandle>,
    pub id: SessionId,
}

impl SessionContext<'_> {
    /// The full ring tag for a session-local tag.
    pub fn tag(&self, local: u64) -> u64 {
        debug_assert!(local <= SESSION_TAG_MASK);
        ((u64::from(self.id.index) + 1) << SESSION_TAG_BITS) | local
    }
}

/// A front-end connection as a reactor sees it.
pub trait Session: Send {
    /// Called once on the reactor that will serve it: post the first reads.
    fn start(&mut self, ctx: &mut SessionContext);
    /// A ring completion with one of this session's tags (the session-local bits).
    fn on_completion(&mut self, local_tag: u64, result: i32, ctx: &mut SessionContext);
    /// A message from another thread (see `Message::Wake`).
    fn on_wake(&mut self, token: u64, result: i32, ctx: &mut SessionContext);
    /// What `tag` names (a virtual path) was revoked: close if this session serves it.
    fn revoke(&mut self, _tag: u64, _ctx: &mut SessionContext) {}
    /// The server is stopping: finish what is in flight, take nothing new.
    fn begin_shutdown(&mut self, ctx: &mut SessionContext);
    /// Closed, with nothing left on the ring: the reactor may drop it and reuse its index.
    fn is_finished(&self) -> bool;
}
