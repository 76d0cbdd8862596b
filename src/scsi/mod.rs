//! The SCSI layer: a transport-agnostic SCSI target (SPC-4 primary commands, SBC-3 block
//! commands) over the block engine. iSCSI is its first transport; Fibre Channel, SRP or
//! any other SCSI transport would drive it the same way, through [`ScsiLun`].
//!
//! ```text
//!   transport session (iSCSI: src/target/iscsi/session.rs)
//!     │ submit(itt, cdb, expected length, direction) / Data-Out / completions
//!     ▼
//!   ScsiLun (one per LUN of a session = one I_T nexus to one logical unit)
//!     cdb ─▶ Command ─▶ unit attention ─▶ reservation check ─▶ execute
//!     │ non-I/O: inquiry, capacity, mode_pages, opcodes, reservations (task buffers)
//!     │ I/O: BlockEngine (read, write, flush, trim, write_zeroes; slot buffers)
//!     ▼
//!   LogicalUnit (one per volume, shared by every nexus on every reactor)
//!     reservations (PR + SPC-2, APTPL file), unit-attention mailbox, CAW interlock, WCE
//! ```
//!
//! - [`cdb`]: decoding; [`opcodes`]: the command table and REPORT SUPPORTED OPERATION CODES.
//! - [`sense`], [`status`]: what a command ends with.
//! - [`inquiry`], [`capacity`], [`mode_pages`], [`geometry`]: the answers of the non-I/O
//!   commands.
//! - [`reservations`], [`interlock`], [`unit_attention`], [`logical_unit`]: per-volume
//!   shared state.
//! - [`scsi_lun`], [`task`]: the per-nexus executor and its task table.
//! - [`unmap`]: the UNMAP parameter list; [`lba_status`]: GET LBA STATUS.
//! - [`mod@report_luns`]: REPORT LUNS over the transport's LUN list, and the answer of a LUN
//!   with no unit.
//! - [`nexus`]: who asks ([`Nexus`]) and what the unit says it is ([`LunIdentity`]).
//!
//! Adding a command: see [`opcodes`].

pub mod capacity;
pub mod cdb;
pub mod geometry;
pub mod inquiry;
pub mod interlock;
pub mod lba_status;
pub mod logical_unit;
pub mod mode_pages;
pub mod nexus;
pub mod opcodes;
pub mod report_luns;
pub mod reservations;
pub mod scsi_lun;
pub mod sense;
pub mod status;
pub mod task;
pub mod unit_attention;
pub mod unmap;

pub use logical_unit::{LogicalUnit, LuRegistry};
pub use nexus::{LunIdentity, Nexus};
pub use report_luns::{decode_lun, encode_lun, no_such_lun, report_luns, Answer};
pub use scsi_lun::ScsiLun;
pub use status::Residual;
pub use task::{DataDirection, Submit, TaskDone};
