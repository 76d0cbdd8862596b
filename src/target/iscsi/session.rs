//! PLACEHOLDER written by helper P so the listener builds: the lead replaces this file with
//! the full-feature phase on a reactor. Until then a normal session that logs in is logged
//! and dropped (its connection closes).

use super::listener::IscsiContext;
use super::login::LoggedIn;
use std::path::Path;

/// The SCSI layer's state shared by every session (the lead fills it: the LuRegistry).
pub struct ScsiShared;

impl ScsiShared {
    pub fn new(_state_dir: &Path) -> Self {
        Self
    }
}

/// Hands a logged-in normal session to a reactor (placeholder: drops it).
pub fn attach(logged_in: LoggedIn, context: &IscsiContext) {
    log::warn!(
        "iSCSI {}: the full-feature phase is not built yet; closing the session of {} on {}",
        logged_in.peer,
        logged_in.initiator_name,
        context.target_name
    );
    drop(logged_in);
}
