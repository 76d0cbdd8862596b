//! NVMe over Fabrics on TCP: the protocol, shared by the target (`crate::target::nvmf`) and
//! `sds perf`'s initiator. Nothing here does I/O or keeps state: it is the vocabulary both
//! sides speak.
//!
//! - [`command`]: the 64-byte submission queue entry and the 16-byte completion queue entry
//!   (NVMe base specification 2.0, figures "Common Command Format" and "Common Completion
//!   Queue Entry Layout"), fabrics commands (NVMe-oF 1.1 §3.3) and the opcodes sds speaks.
//! - [`status`]: status code types and values, so every refusal is an NVMe status.
//! - [`pdu`]: the NVMe/TCP PDU codec (TP 8000): framing checks, headers, digests.
//! - [`registers`]: the controller registers (CAP, VS, CC, CSTS) and their fields.
//! - [`pdu_io`]: whole PDUs over a blocking stream (handshake, admin queue, initiator set-up).

pub mod command;
pub mod pdu;
pub mod pdu_io;
pub mod registers;
pub mod status;
