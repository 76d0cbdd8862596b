//! Front ends: each protocol negotiates off the data path (resolving the host once at login
//! or handshake), then, on a reactor, parses its wire frames and hands block requests to its
//! session's block engine (`crate::blockio`), answering in its own terms from the engine's
//! status.

pub mod buffer_budget;
pub mod gather_send;
pub mod handshake_slots;
pub mod handshake_stream;
pub mod iscsi;
pub mod nbd;
pub mod nvmf;
pub mod reactor_load;
pub mod recv_buffer;
pub mod session_tick;
pub mod stable_name;
pub mod tcp_acceptor;
