//! The NBD front end (the NBD protocol document is the reference): fixed newstyle handshake
//! on a handshake thread ([`handshake`], [`listener`]), then the transmission phase on a
//! reactor ([`connection`]). The wire format is in [`protocol`]. With TLS configured, the
//! handshake upgrades the connection after NBD_OPT_STARTTLS and a relay thread carries its
//! transmission phase to the reactor over a Unix socket pair ([`tls`]). The request buffers of
//! every connection share one server-wide budget (`target::buffer_budget`).

pub mod connection;
pub mod handshake;
pub mod listener;
pub mod protocol;
pub mod session_slots;
pub mod tls;
