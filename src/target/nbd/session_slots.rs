//! Places for NBD sessions, promised before the client is told yes.
//!
//! A session is granted during the negotiation, when the client sends NBD_OPT_GO: the
//! client's host must be under its `max_sessions`, and some reactor must have a place for it.
//! Both are taken then, as a [`SessionTicket`], before the server answers; a client past
//! either limit gets NBD_REP_ERR_POLICY with the reason, which it reports, instead of a
//! success followed by a dropped connection. The ticket travels with the session to its
//! reactor and gives both places back when the session ends (or when the negotiation fails
//! after all).
//!
//! The reactor place comes from [`crate::target::reactor_load`], shared with the other front
//! ends.

use crate::domain::host::HostSession;
pub use crate::target::reactor_load::{ReactorLoad, ReactorPlace};
use crate::volume::open_state::OpenGuard;

/// A granted session: one of its host's sessions, a place on a reactor and an open of its
/// volume, all taken at NBD_OPT_GO (so a refusal is an option error the client reports) and
/// all given back when the ticket is dropped, whatever drops it.
pub struct SessionTicket {
    pub host: HostSession,
    pub place: ReactorPlace,
    pub open: OpenGuard,
}
