//! The iSCSI front end (RFC 7143). The wire format is in [`pdu`] (with [`crate::digest`] for the
//! optional CRC32C digests).
//!
//! One target per server, its LUNs masked per host: a host, named by its initiator name (the
//! host record's `iqn`), sees each of its virtual paths as a LUN at the VP's `lun` number.

pub mod chap;
pub mod discovery;
pub mod listener;
pub mod login;
pub mod params;
pub mod pdu;
pub mod pdu_io;
pub mod registry;
pub mod session;
pub mod target_name;
#[cfg(test)]
mod test_initiator;
