//! Volume sets: one volume made of member volumes, concatenated or striped (RAID-0). A set is
//! a composite volume ([`super::composite`]) whose parts are its members; this file holds the
//! rules of sets that do not need the control thread: the layouts as recorded, and the checks
//! of a stripe size.
//!
//! Rules (the README's "Volume sets" says the same for users):
//! * members are plain volumes with the same block size; each is in at most one set;
//! * concat: the set's size is the sum of its members'; it grows online by appending one;
//! * stripe: stripes of `stripe_size` bytes (a power of two, at least the block size, at most
//!   [`MAX_STRIPE_BYTES`]; default [`DEFAULT_STRIPE_BYTES`]) dealt round-robin over the
//!   members; the set's size is members × the smallest member's whole stripes. A stripe set
//!   does not grow: a new member would move almost every stripe.

use super::composite::Layout;
use crate::constants::{DEFAULT_STRIPE_BYTES, MAX_STRIPE_BYTES};
use serde::{Deserialize, Serialize};

/// How a set lays its members out, as recorded and as `volume_set_create` takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetLayout {
    #[default]
    Concat,
    Stripe,
}

impl SetLayout {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "concat" => Some(Self::Concat),
            "stripe" => Some(Self::Stripe),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Concat => "concat",
            Self::Stripe => "stripe",
        }
    }

    /// The composite layout for a set of this layout with `stripe_bytes` (checked, see
    /// [`check_stripe_size`]; ignored for concat).
    pub fn composite(self, stripe_bytes: u64) -> Layout {
        match self {
            Self::Concat => Layout::Concat,
            Self::Stripe => Layout::Stripe {
                stripe_shift: stripe_bytes.trailing_zeros(),
            },
        }
    }
}

/// Why a stripe size is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StripeSizeError {
    #[error("{0} is not a power of two")]
    NotPowerOfTwo(u64),
    #[error("{size} is smaller than the members' block size {block}")]
    BelowBlock { size: u64, block: u32 },
    #[error("{0} is larger than {MAX_STRIPE_BYTES}")]
    TooLarge(u64),
}

/// The stripe size of a stripe set: `given` or the default, checked against the members'
/// block size.
pub fn check_stripe_size(given: Option<u64>, block_bytes: u32) -> Result<u64, StripeSizeError> {
    let size = given.unwrap_or(DEFAULT_STRIPE_BYTES);
    if !size.is_power_of_two() {
        return Err(StripeSizeError::NotPowerOfTwo(size));
    }
    if size < u64::from(block_bytes) {
        return Err(StripeSizeError::BelowBlock {
            size,
            block: block_bytes,
        });
    }
    if size > MAX_STRIPE_BYTES {
        return Err(StripeSizeError::TooLarge(size));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_sizes_are_powers_of_two_between_the_block_and_the_limit() {
        assert_eq!(check_stripe_size(None, 4096), Ok(DEFAULT_STRIPE_BYTES));
        assert_eq!(check_stripe_size(Some(4096), 4096), Ok(4096));
        assert_eq!(
            check_stripe_size(Some(3 * 4096), 512),
            Err(StripeSizeError::NotPowerOfTwo(3 * 4096))
        );
        assert_eq!(
            check_stripe_size(Some(0), 512),
            Err(StripeSizeError::NotPowerOfTwo(0))
        );
        assert_eq!(
            check_stripe_size(Some(2048), 4096),
            Err(StripeSizeError::BelowBlock {
                size: 2048,
                block: 4096
            })
        );
        assert_eq!(
            check_stripe_size(Some(MAX_STRIPE_BYTES * 2), 512),
            Err(StripeSizeError::TooLarge(MAX_STRIPE_BYTES * 2))
        );
    }

    #[test]
    fn layouts_parse_and_map_to_composites() {
        assert_eq!(SetLayout::parse("stripe"), Some(SetLayout::Stripe));
        assert_eq!(SetLayout::parse("raid0"), None);
        assert_eq!(SetLayout::Concat.composite(65536), Layout::Concat);
        assert_eq!(
            SetLayout::Stripe.composite(65536),
            Layout::Stripe { stripe_shift: 16 }
        );
        assert_eq!(
            serde_json::to_string(&SetLayout::Stripe).ok().as_deref(),
            Some("\"stripe\"")
        );
    }
}
