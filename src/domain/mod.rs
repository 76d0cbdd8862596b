//! The domain layer: who may reach which volume, and how well each is served.
//!
//! ```text
//!  handshake: PeerIdentity ──▶ Host ──▶ its VPs (discovery, open)
//!  per I/O:   session ──▶ DecisionCache (one load of the published generation; the
//!             Snapshot's PathView is read again only when it moved) ──▶ allowed ops,
//!             RateLimit ──▶ TokenBucket (session-local) ──▶ volume; then VpCounters
//!  control:   every cycle, VpathStats ──▶ share domain budgets (qos) ──▶ new Snapshot
//! ```
//!
//! Hosts ([`host`]) are named by what their protocol proves; a virtual path ([`vpath`])
//! associates one host with one volume; a storage domain groups VPs and carries
//! [`capabilities`] for all of them. The control thread builds an immutable [`snapshot`] of
//! all this and publishes it with one atomic swap; front ends and reactors only ever load it.

pub mod capabilities;
pub mod decision;
pub mod host;
pub mod iscsi_name;
pub mod naming_authority;
pub mod nvme_name;
pub mod qos;
pub mod snapshot;
pub mod stats;
pub mod vpath;
