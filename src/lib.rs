//! sds — the storage domain server.
//!
//! Data flows from the front ends (`target`) through the domain layer (`domain`: which
//! volume a connection reaches, and how) to volumes (`volume`: the mapping of virtual extents
//! onto pool extents), pools (`pool`: extents, allocation, on-disk metadata) and LUN drivers
//! (`backend`). Pinned poller threads (`reactor`) run that path without locks; the control
//! thread (`control`) owns configuration, persists it (`store`) and publishes immutable
//! snapshots to the reactors. `rpc` is the JSON-RPC management socket; `serve` starts and stops
//! all of it.
//!
//! The command line (`sds serve`, `sds pool create`, …), `sds demo` and `sds perf` are the
//! binary's (`src/main.rs`, `src/cli/`, `src/demo.rs`, `src/perf/`), built on this library's
//! public API.

pub mod backend;
pub mod blockio;
pub mod config_file;
pub mod constants;
pub mod control;
pub mod digest;
pub mod domain;
pub mod identity;
pub mod logger;
pub mod metrics;
pub mod nvmf;
pub mod pool;
pub mod reactor;
pub mod reactor_counter;
pub mod rpc;
pub mod scsi;
pub mod serve;
pub mod service_notify;
pub mod state_lock;
pub mod store;
pub mod target;
pub mod units;
pub mod version;
pub mod volume;
