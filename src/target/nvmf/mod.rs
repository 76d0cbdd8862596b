//! The NVMe/TCP front end (NVMe-oF 1.1 with TP 8000): one NVM subsystem per host, its
//! namespaces the host's VPs (NSID = VP lun + 1), and a discovery controller on the same port.
//! The wire vocabulary and PDU codec are `crate::nvmf`; this is the target.
//!
//! ```text
//!  listener ─▶ handshake (ICReq/ICResp, Connect: connect.rs against subsystem.rs)
//!               ├─ admin queue ─▶ registry.rs (cntlid) ─▶ admin_thread.rs running admin.rs
//!               │                   (properties, identify, features, log_pages)
//!               └─ I/O queue ───▶ queue::attach ─▶ a reactor (queue/)
//!  control thread ─▶ registry.rs: namespace changed (events) / close a host's controllers
//! ```
//!
//! - [`controller`]: what a controller's admin queue and its I/O queues share
//!   (`ControllerShared`), and the context every thread of the front end is given.
//! - [`registry`]: every live controller (cntlid allocation, `nvmf_get_subsystems` /
//!   `nvmf_get_qpairs`, closing a host's controllers, delivering asynchronous events).
//! - [`subsystem`]: the subsystem model: NQNs and each host's namespaces.
//! - [`connect`]: whether a Connect is granted; [`handshake`] and [`listener`] run it.
//! - [`admin`]: the admin queue as a state machine; [`admin_thread`] moves its PDUs;
//!   [`properties`], [`identify`], [`features`], [`log_pages`] are what it answers with.
//! - [`queue`]: an I/O queue on a reactor: capsules, R2T/H2CData, C2HData, responses, through
//!   one block engine per namespace.

pub mod admin;
pub mod admin_thread;
pub mod connect;
pub mod controller;
pub mod features;
pub mod handshake;
pub mod identify;
pub mod listener;
pub mod log_pages;
pub mod properties;
pub mod queue;
pub mod registry;
pub mod subsystem;

pub use controller::{ControllerShared, NvmfContext};
