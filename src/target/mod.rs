//! Front ends: each protocol parses its wire frames, resolves the host once at login or
//! handshake, and hands block requests to the volumes through the domain layer.

pub mod nbd;
