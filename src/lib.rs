//! sds — the storage domain server.
//!
//! Data flows from the front ends (`target`) through the domain layer (`domain`: which
//! volume a connection reaches, and how) to volumes (`volume`: the mapping of virtual extents
//! onto pool extents), pools (`pool`: extents, allocation, on-disk metadata) and LUN drivers
//! (`backend`). Pinned poller threads (`reactor`) run that path without locks; the control
//! thread (`control`) owns configuration, persists it (`store`) and publishes immutable
//! snapshots to the reactors. `rpc` is the JSON-RPC management socket and `cli` its command
//! line client. `perf` drives the same data path in-process, with no network (`sds perf`).

pub mod backend;
pub mod blockio;
pub mod cli;
pub mod constants;
pub mod control;
pub mod demo;
pub mod domain;
pub mod identity;
pub mod logger;
pub mod perf;
pub mod pool;
pub mod reactor;
pub mod rpc;
pub mod serve;
pub mod state_lock;
pub mod store;
pub mod target;
pub mod version;
pub mod volume;
