//! A pool's space threshold: the share of its capacity, in percent, past which the server
//! warns that the pool is filling (thin volumes may promise more than it holds, and a full
//! pool fails every write that needs a new extent).
//!
//! The administrator sets it with `pool_set_threshold` (kept in the pool's record, default
//! [`DEFAULT_POOL_THRESHOLD_PERCENT`]); the control cycle looks at every pool once per cycle
//! and logs one warning when allocation crosses it, and one note when it falls below again,
//! so a pool that hovers around it logs once per crossing, not once per cycle.

use crate::constants::{DEFAULT_POOL_THRESHOLD_PERCENT, MAX_POOL_THRESHOLD_PERCENT};

/// Whether `allocated_extents` of `total_extents` reach `percent` of them. An empty pool
/// (no extents) is never over.
pub fn is_over(allocated_extents: u64, total_extents: u64, percent: u8) -> bool {
    total_extents > 0
        && u128::from(allocated_extents) * 100 >= u128::from(total_extents) * u128::from(percent)
}

/// Whether `percent` is a threshold a pool may have.
pub fn is_valid(percent: u64) -> bool {
    (1..=u64::from(MAX_POOL_THRESHOLD_PERCENT)).contains(&percent)
}

/// The threshold a pool record without one has.
pub fn default_percent() -> u8 {
    DEFAULT_POOL_THRESHOLD_PERCENT
}

/// What the control cycle last saw of one pool.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ThresholdWatch {
    over: bool,
}

/// A change the control cycle reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// Allocation reached the threshold.
    Above,
    /// Allocation fell back below it.
    Below,
}

impl ThresholdWatch {
    /// Takes this cycle's look; returns the crossing, if allocation crossed the threshold
    /// since the last look.
    pub fn observe(&mut self, over: bool) -> Option<Crossing> {
        let crossing = match (self.over, over) {
            (false, true) => Some(Crossing::Above),
            (true, false) => Some(Crossing::Below),
            _ => None,
        };
        self.over = over;
        crossing
    }

    pub fn is_over(&self) -> bool {
        self.over
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_means_reaching_the_percentage() {
        assert!(!is_over(79, 100, 80));
        assert!(is_over(80, 100, 80));
        assert!(is_over(100, 100, 100));
        assert!(!is_over(99, 100, 100));
        assert!(is_over(1, 3, 1));
        assert!(!is_over(0, 0, 1), "an empty pool is never over");
        assert!(!is_over(0, 3, 1));
        // No overflow on the largest pools.
        assert!(is_over(u64::MAX, u64::MAX, 100));
    }

    #[test]
    fn valid_thresholds_are_one_to_a_hundred() {
        assert!(!is_valid(0));
        assert!(is_valid(1));
        assert!(is_valid(100));
        assert!(!is_valid(101));
        assert!(is_valid(u64::from(default_percent())));
    }

    #[test]
    fn a_crossing_is_reported_once_each_way() {
        let mut watch = ThresholdWatch::default();
        assert_eq!(watch.observe(false), None);
        assert_eq!(watch.observe(true), Some(Crossing::Above));
        assert!(watch.is_over());
        assert_eq!(watch.observe(true), None, "once, not every cycle");
        assert_eq!(watch.observe(false), Some(Crossing::Below));
        assert_eq!(watch.observe(false), None);
        assert_eq!(
            watch.observe(true),
            Some(Crossing::Above),
            "again after falling"
        );
    }
}
