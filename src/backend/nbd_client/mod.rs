//! The NBD client: a LUN that is an export of another NBD server (another sds's volume,
//! qemu-nbd, nbdkit), reached over TCP or a Unix socket.
//!
//! ```text
//!   uri ──▶ connect ──▶ Negotiation (fixed newstyle, structured replies, GO) ──▶ Export
//!   synchronous Lun methods ──▶ BlockingConnection (one request at a time, behind a Mutex)
//! ```
//!
//! The protocol pieces do no I/O ([`negotiation`], [`request`], [`reply`]): the blocking
//! connection drives them with plain socket calls.

pub mod blocking;
pub mod driver;
pub mod link;
pub mod negotiation;
pub mod reply;
pub mod request;
pub mod uri;
