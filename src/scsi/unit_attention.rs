//! Unit attentions (SAM-5 5.14, SPC-4 5.14): conditions an initiator must hear of once,
//! reported as CHECK CONDITION / UNIT ATTENTION on its next command (except INQUIRY, REPORT
//! LUNS and REQUEST SENSE, which SAM lets through) and then cleared.
//!
//! Each I_T nexus has its own set ([`Pending`], kept by its `ScsiLun`): a new nexus starts
//! with POWER ON, RESET OCCURRED; a LUN reset adds BUS DEVICE RESET; a resize the
//! `ScsiLun` notices (the volume's size differs from what it last reported) adds CAPACITY
//! DATA HAS CHANGED; the transport adds REPORTED LUNS DATA HAS CHANGED. Conditions one nexus
//! causes for others (persistent reservations preempted, released, cleared; mode parameters
//! changed) go through the logical unit's [`Mailbox`], which each `ScsiLun` checks with one
//! atomic load per command.

use super::sense::{self, Sense};
use crate::constants::SCSI_MAX_PENDING_UNIT_ATTENTIONS;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The conditions, highest precedence first (SPC-4: a reset condition outranks the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Condition {
    PowerOn = 0,
    LunReset = 1,
    ReservationsPreempted = 2,
    ReservationsReleased = 3,
    RegistrationsPreempted = 4,
    ModeParametersChanged = 5,
    CapacityChanged = 6,
    ReportedLunsChanged = 7,
}

impl Condition {
    const ALL: [Condition; 8] = [
        Self::PowerOn,
        Self::LunReset,
        Self::ReservationsPreempted,
        Self::ReservationsReleased,
        Self::RegistrationsPreempted,
        Self::ModeParametersChanged,
        Self::CapacityChanged,
        Self::ReportedLunsChanged,
    ];

    pub fn sense(self) -> Sense {
        match self {
            Self::PowerOn => sense::POWER_ON_OCCURRED,
            Self::LunReset => sense::BUS_DEVICE_RESET_OCCURRED,
            Self::ReservationsPreempted => sense::RESERVATIONS_PREEMPTED,
            Self::ReservationsReleased => sense::RESERVATIONS_RELEASED,
            Self::RegistrationsPreempted => sense::REGISTRATIONS_PREEMPTED,
            Self::ModeParametersChanged => sense::MODE_PARAMETERS_CHANGED,
            Self::CapacityChanged => sense::CAPACITY_DATA_HAS_CHANGED,
            Self::ReportedLunsChanged => sense::REPORTED_LUNS_DATA_HAS_CHANGED,
        }
    }
}

/// The unit attentions pending for one I_T nexus: a bit per condition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending(u8);

impl Pending {
    pub fn raise(&mut self, condition: Condition) {
        // A reset clears what it supersedes (SPC-4 5.14: the reset is reported instead).
        if matches!(condition, Condition::PowerOn | Condition::LunReset) {
            self.0 &= 1 << Condition::PowerOn as u8;
        }
        self.0 |= 1 << condition as u8;
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn contains(&self, condition: Condition) -> bool {
        self.0 & (1 << condition as u8) != 0
    }

    /// Takes the highest-precedence condition.
    pub fn take(&mut self) -> Option<Condition> {
        let condition = Condition::ALL
            .into_iter()
            .find(|c| self.0 & (1 << *c as u8) != 0)?;
        self.0 &= !(1 << condition as u8);
        Some(condition)
    }

    pub fn clear(&mut self) {
        self.0 = 0;
    }
}

/// Unit attentions addressed to other nexuses of a logical unit, by initiator port name.
/// Written by the rare commands that cause them (PERSISTENT RESERVE OUT, MODE SELECT);
/// read by each `ScsiLun` only when the generation moved.
#[derive(Default)]
pub struct Mailbox {
    generation: AtomicU64,
    entries: Mutex<Vec<(String, String, Condition)>>,
}

impl Mailbox {
    /// The generation, to compare with the last one a nexus saw (one atomic load).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Posts `condition` to the nexus (initiator port, target port). The oldest entry is
    /// dropped past the bound (a nexus that never comes back must not grow the list).
    pub fn post(&self, initiator_port: &str, target_port: &str, condition: Condition) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= SCSI_MAX_PENDING_UNIT_ATTENTIONS * 8 {
            entries.remove(0);
        }
        entries.push((
            initiator_port.to_string(),
            target_port.to_string(),
            condition,
        ));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Moves the entries for the nexus into `pending`.
    pub fn collect(&self, initiator_port: &str, target_port: &str, pending: &mut Pending) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        entries.retain(|(i, t, condition)| {
            if i == initiator_port && t == target_port {
                pending.raise(*condition);
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_come_out_by_precedence_and_a_reset_supersedes() {
        let mut pending = Pending::default();
        pending.raise(Condition::CapacityChanged);
        pending.raise(Condition::RegistrationsPreempted);
        assert_eq!(pending.take(), Some(Condition::RegistrationsPreempted));
        pending.raise(Condition::LunReset);
        assert_eq!(pending.take(), Some(Condition::LunReset));
        assert_eq!(
            pending.take(),
            None,
            "the reset superseded the capacity change"
        );
        let mailbox = Mailbox::default();
        let before = mailbox.generation();
        mailbox.post("a", "t", Condition::ReservationsPreempted);
        mailbox.post("b", "t", Condition::ReservationsReleased);
        assert_ne!(mailbox.generation(), before);
        mailbox.collect("a", "t", &mut pending);
        assert_eq!(pending.take(), Some(Condition::ReservationsPreempted));
        assert!(pending.is_empty());
    }
}
