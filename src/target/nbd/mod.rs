//! The NBD front end (the NBD protocol document is the reference): fixed newstyle handshake
//! on a handshake thread ([`handshake`], [`listener`]), then the transmission phase on a
//! reactor ([`connection`]). The wire format is in [`protocol`].

pub mod connection;
pub mod handshake;
pub mod listener;
pub mod protocol;
