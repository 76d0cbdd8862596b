//! The one layout of a session's ring tags (the 48 bits below the reactor's session index,
//! see `reactor::session::SESSION_TAG_BITS`), shared by the engine and the front end that
//! drives it:
//!
//! ```text
//!  47        44..47   32..44      24..32          0..24
//!  driver    kind     slot        LUN table index expected bytes
//!  timer bit (3 bits) (12 bits)   (8 bits)        (24 bits)
//! ```
//!
//! Kinds [`KIND_LUN_IO`] and [`KIND_QOS_TIMER`] belong to the engine; a front end uses
//! [`KIND_FRONT_END_FIRST`] and up for its own entries (socket receive and send, NOPs) and
//! hands the engine every completion for which [`is_engine`] holds. The LUN index (into the
//! volume's LUN table: its pool's LUNs, or a composite's flat table, see
//! `volume::composite`) lets an error be counted on its LUN without a lookup; the expected bytes turn a short transfer
//! into an error (`backend::completion_result`).

use crate::backend::{split_tag, DRIVER_TIMER_TAG};
use crate::constants::{
    MAX_COMPOSITE_LUNS, MAX_INFLIGHT_PER_CONNECTION, MAX_IO_BYTES, MAX_LUNS_PER_POOL,
};

const KIND_SHIFT: u32 = 44;
const SLOT_SHIFT: u32 = 32;
const LUN_SHIFT: u32 = 24;
const KIND_MASK: u64 = 0x7;
const SLOT_MASK: u64 = 0xfff;
const LUN_MASK: u64 = 0xff;
const EXPECTED_MASK: u64 = (1 << LUN_SHIFT) - 1;

/// A LUN I/O of a request.
pub const KIND_LUN_IO: u64 = 1;
/// The QoS timer: throttled requests are retried when it fires.
pub const KIND_QOS_TIMER: u64 = 2;
/// The first kind a front end may use for its own entries; kinds go up to [`KIND_LAST`].
pub const KIND_FRONT_END_FIRST: u64 = 3;
pub const KIND_LAST: u64 = KIND_MASK;

/// Slots a session may have: the slot field's range.
pub const MAX_SLOTS: usize = (SLOT_MASK + 1) as usize;

const _: () = assert!((MAX_IO_BYTES as u64) <= EXPECTED_MASK);
const _: () = assert!(MAX_LUNS_PER_POOL as u64 <= LUN_MASK + 1);
const _: () = assert!(MAX_COMPOSITE_LUNS as u64 <= LUN_MASK + 1);
const _: () = assert!(MAX_INFLIGHT_PER_CONNECTION <= MAX_SLOTS);
// Kinds stay below the bit a LUN driver marks its own timer entries with.
const _: () = assert!(((KIND_LAST + 1) << KIND_SHIFT) <= DRIVER_TIMER_TAG);

/// A session-local tag.
#[inline]
pub fn encode(kind: u64, slot: usize, lun_index: usize, expected_bytes: u32) -> u64 {
    debug_assert!(kind <= KIND_MASK && slot < MAX_SLOTS && lun_index as u64 <= LUN_MASK);
    debug_assert!(u64::from(expected_bytes) <= EXPECTED_MASK);
    (kind << KIND_SHIFT)
        | ((slot as u64) << SLOT_SHIFT)
        | ((lun_index as u64) << LUN_SHIFT)
        | u64::from(expected_bytes)
}

/// The fields of a session-local tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub kind: u64,
    pub slot: usize,
    pub lun_index: usize,
    pub expected_bytes: u32,
    /// The entry was a LUN driver's own timer (see `backend::DRIVER_TIMER_TAG`).
    pub driver_timer: bool,
}

#[inline]
pub fn decode(local: u64) -> Decoded {
    let (local, driver_timer) = split_tag(local);
    Decoded {
        kind: (local >> KIND_SHIFT) & KIND_MASK,
        slot: ((local >> SLOT_SHIFT) & SLOT_MASK) as usize,
        lun_index: ((local >> LUN_SHIFT) & LUN_MASK) as usize,
        expected_bytes: (local & EXPECTED_MASK) as u32,
        driver_timer,
    }
}

/// Whether a completion belongs to the engine (the front end forwards it).
#[inline]
pub fn is_engine(local: u64) -> bool {
    matches!(decode(local).kind, KIND_LUN_IO | KIND_QOS_TIMER)
}

/// The kind of a session-local tag.
#[inline]
pub fn kind_of(local: u64) -> u64 {
    decode(local).kind
}

/// Bits of a provisioner token (`Reply::token`) that hold the engine's slot number; the engine
/// may keep more above them (a mirror request's leg), so a front end routing a wake to one of
/// its engines looks only at these.
pub const TOKEN_SLOT_BITS: u32 = 32;

/// The slot number a provisioner token names.
#[inline]
pub fn token_slot(token: u64) -> usize {
    (token & ((1 << TOKEN_SLOT_BITS) - 1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_the_driver_bit_is_apart() {
        let tag = encode(KIND_LUN_IO, MAX_SLOTS - 1, 255, MAX_IO_BYTES as u32);
        let decoded = decode(tag | DRIVER_TIMER_TAG);
        assert_eq!(
            decoded,
            Decoded {
                kind: KIND_LUN_IO,
                slot: MAX_SLOTS - 1,
                lun_index: 255,
                expected_bytes: MAX_IO_BYTES as u32,
                driver_timer: true,
            }
        );
        assert!(is_engine(tag));
        assert!(!is_engine(encode(KIND_FRONT_END_FIRST, 0, 0, 0)));
        assert_eq!(kind_of(encode(KIND_LAST, 3, 0, 0)), KIND_LAST);
    }
}
