//! The domain layer: what the data path is allowed to reach. The control thread builds an
//! immutable [`snapshot::Snapshot`] of it and publishes it with one atomic swap; front ends and
//! reactors only ever load it.
//!
//! Today a snapshot lists the exported volumes; hosts, virtual paths and storage domains with
//! their capabilities (access, QoS, statistics) join it in the same way.

pub mod snapshot;
