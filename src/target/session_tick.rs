//! A session's once-a-second tick on its reactor's ring: a timeout entry whose completion
//! lets the session look at what changes off the ring (a close asked for by the control
//! plane or another login, a controller that ended, a peer gone silent). One tick at a time
//! per session; the session counts it among its entries on the ring.

use crate::reactor::ring::IoRing;
use io_uring::{opcode, types};

/// Puts the tick (a timeout of `spec`) on the ring; once it is on the ring, `posted` is set
/// and `ring_pending` counts it.
///
/// # Safety
/// `spec` must stay where it is (a box the session owns) and the session must outlive the
/// ring entry (the reactor drops a session only when it is finished, with nothing on the
/// ring).
pub unsafe fn post(
    ring: &mut IoRing,
    spec: &types::Timespec,
    user_data: u64,
    posted: &mut bool,
    ring_pending: &mut u32,
) -> std::io::Result<()> {
    let entry = opcode::Timeout::new(spec).build().user_data(user_data);
    // SAFETY: the timespec stays valid and in place until the completion, as this function's
    // contract says.
    unsafe { ring.push(&entry) }?;
    *posted = true;
    *ring_pending += 1;
    Ok(())
}
