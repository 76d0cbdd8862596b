//! The block engine: one transport-agnostic path from "a block request" to "it finished,
//! with this status", under every front end (NBD today; iSCSI, NVMe/TCP next) and `sds perf`.
//!
//! ```text
//!   NBD session           sds perf job          (iSCSI, NVMe/TCP …)
//!   framing, payload,     pattern generator,
//!   replies, errnos       --verify
//!        │  BlockRequest {op, offset, length, fua} into slot k       ▲ Finished {slot, status}
//!        ▼                                                           │
//!   ┌───────────────────────── BlockEngine (one per session) ────────┴──────────────┐
//!   │ VP decision ─▶ allowed ops, range ─▶ QoS tokens (timer) ─▶ ring credit          │
//!   │ ─▶ Volume::segment ─▶ provisioner (unmapped extent, read-modify-write)          │
//!   │ ─▶ Lun::submit on the reactor's ring ─▶ completion_result, LUN error counters   │
//!   │ ─▶ volume and VP statistics                                                    │
//!   └────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! - [`request`]: [`BlockOp`], the one name of an operation, and [`BlockRequest`].
//! - [`status`]: [`BlockStatus`], how a request ended, which each front end maps to its
//!   protocol in one place.
//! - [`engine`]: [`BlockEngine`], the per-session engine: slots and their buffers, the cached
//!   VP decision, the token bucket and its timer, provisioning and ring-credit waits.
//! - [`tag`]: the one layout of a session's ring tags.
//! - [`clock`]: the tick clock every latency is measured with.
//!
//! A new front end: run as a reactor `Session`; per request call `decide`, the checks (or
//! `admit`), `reserve`, fill the buffer, `start`; forward ring completions whose tag
//! [`tag::is_engine`] holds to `on_completion`, and `on_wake` and `on_ring_credit` as they
//! come; after each event drain `pop_finished`, answer the host, then `release` the slot.
//! Use tag kinds from [`tag::KIND_FRONT_END_FIRST`] up for your own ring entries.

pub mod clock;
pub mod engine;
pub mod request;
pub mod status;
pub mod tag;

pub use engine::{Admission, BlockEngine, EngineConfig, Finished};
pub use request::{BlockOp, BlockRequest};
pub use status::BlockStatus;
