//! Reservations of one logical unit: SPC-4 persistent reservations (PERSISTENT RESERVE IN
//! and OUT, all six types, APTPL) and SPC-2 RESERVE / RELEASE, and the check every command
//! goes through ([`Reservations::conflicts`], SPC-4 5.13.1 table "commands allowed in the
//! presence of reservations").
//!
//! The state sits behind a mutex touched only by the reservation commands (rare,
//! administrative traffic) and when a nexus's verdict must be made again. The fast path of
//! every other command is one atomic load: `reserved` is false (no persistent reservation
//! and no SPC-2 reservation); under a standing reservation it is two, the flag and the
//! state's version, against the [`Verdict`] the nexus's `ScsiLun` keeps.
//!
//! Persistence (APTPL): when the last REGISTER asked for it, the state is written to
//! `STATE/scsi/pr-<volume uuid>.json` after every change, atomically (temporary file, fsync,
//! rename, directory fsync) and read back when the registry creates the logical unit. The
//! write is synchronous on the reactor that runs the PERSISTENT RESERVE OUT: it is a small
//! file, and the command is rare administrative traffic, so a blocking write of a few
//! hundred bytes is accepted rather than a round trip through another thread. A register
//! with APTPL 0 removes the file.
//!
//! Not implemented (refused with INVALID FIELD IN PARAMETER LIST / CDB): SPEC_I_PT,
//! ALL_TG_PT, REGISTER AND MOVE, element and extent scopes. PREEMPT AND ABORT removes the
//! preempted registrations and reservation, and new commands from those nexuses conflict;
//! their commands already running in other sessions are not aborted (a session aborts only
//! its own tasks).

use super::nexus::Nexus;
use super::sense::{self, Sense};
use super::unit_attention::{Condition, Mailbox};
use crate::constants::{SCSI_MAX_PR_FILE_BYTES, SCSI_MAX_PR_REGISTRATIONS};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

pub const TYPE_WRITE_EXCLUSIVE: u8 = 1;
pub const TYPE_EXCLUSIVE_ACCESS: u8 = 3;
pub const TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 5;
pub const TYPE_EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: u8 = 6;
pub const TYPE_WRITE_EXCLUSIVE_ALL_REGISTRANTS: u8 = 7;
pub const TYPE_EXCLUSIVE_ACCESS_ALL_REGISTRANTS: u8 = 8;

pub const SA_READ_KEYS: u8 = 0;
pub const SA_READ_RESERVATION: u8 = 1;
pub const SA_REPORT_CAPABILITIES: u8 = 2;
pub const SA_READ_FULL_STATUS: u8 = 3;

pub const SA_REGISTER: u8 = 0;
pub const SA_RESERVE: u8 = 1;
pub const SA_RELEASE: u8 = 2;
pub const SA_CLEAR: u8 = 3;
pub const SA_PREEMPT: u8 = 4;
pub const SA_PREEMPT_AND_ABORT: u8 = 5;
pub const SA_REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 6;

/// The length of a PERSISTENT RESERVE OUT parameter list (SPC-4 6.16.3) without SPEC_I_PT.
pub const PR_OUT_PARAMETER_BYTES: usize = 24;

/// INVALID RELEASE OF PERSISTENT RESERVATION (26/04).
const INVALID_RELEASE: Sense = Sense::new(sense::KEY_ILLEGAL_REQUEST, 0x26, 0x04);

/// How a command touches the logical unit, for the reservation check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Allowed under every reservation (INQUIRY, REPORT LUNS, REQUEST SENSE, REPORT
    /// SUPPORTED OPERATION CODES, READ CAPACITY, PERSISTENT RESERVE IN/OUT, TEST UNIT
    /// READY under a persistent reservation).
    Always,
    /// Reads the medium or the unit's parameters (READ, VERIFY, MODE SENSE): conflicts under
    /// exclusive-access reservations held by others.
    Read,
    /// Changes the medium or the unit's parameters (WRITE, WRITE SAME, UNMAP, COMPARE AND
    /// WRITE, SYNCHRONIZE CACHE, MODE SELECT): conflicts under every reservation held by
    /// others.
    Write,
    /// TEST UNIT READY: allowed under a persistent reservation, conflicts under an SPC-2
    /// one (SPC-2 7.22).
    TestUnitReady,
}

/// Why a PERSISTENT RESERVE OUT (or RESERVE) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Registration {
    initiator_port: String,
    target_port: String,
    key: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    /// The holding nexus (for the all-registrants types: the one that reserved; every
    /// registrant holds it).
    initiator_port: String,
    target_port: String,
    pr_type: u8,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PrState {
    generation: u32,
    aptpl: bool,
    registrations: Vec<Registration>,
    reservation: Option<Holder>,
    /// The SPC-2 reservation's holder (initiator port, target port); never persisted.
    #[serde(skip)]
    spc2: Option<(String, String)>,
}

fn all_registrants(pr_type: u8) -> bool {
    matches!(
        pr_type,
        TYPE_WRITE_EXCLUSIVE_ALL_REGISTRANTS | TYPE_EXCLUSIVE_ACCESS_ALL_REGISTRANTS
    )
}

fn registrants_only_or_all(pr_type: u8) -> bool {
    matches!(
        pr_type,
        TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY
            | TYPE_EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
            | TYPE_WRITE_EXCLUSIVE_ALL_REGISTRANTS
            | TYPE_EXCLUSIVE_ACCESS_ALL_REGISTRANTS
    )
}

fn valid_type(pr_type: u8) -> bool {
    matches!(pr_type, 1 | 3 | 5 | 6 | 7 | 8)
}

impl PrState {
    fn registration(&self, nexus: &Nexus) -> Option<usize> {
        self.registrations.iter().position(|r| {
            r.initiator_port == nexus.initiator_port && r.target_port == nexus.target_port
        })
    }

    fn holds(&self, nexus: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(h) if all_registrants(h.pr_type) => self.registration(nexus).is_some(),
            Some(h) => {
                h.initiator_port == nexus.initiator_port && h.target_port == nexus.target_port
            }
        }
    }

    fn holder_key(&self) -> Option<u64> {
        let h = self.reservation.as_ref()?;
        self.registrations
            .iter()
            .find(|r| r.initiator_port == h.initiator_port && r.target_port == h.target_port)
            .map(|r| r.key)
    }

    fn conflicts(&self, nexus: &Nexus, access: Access) -> bool {
        if let Some((i, t)) = &self.spc2 {
            let mine = *i == nexus.initiator_port && *t == nexus.target_port;
            return !mine && access != Access::Always;
        }
        let Some(h) = &self.reservation else {
            return false;
        };
        if access == Access::Always || access == Access::TestUnitReady || self.holds(nexus) {
            return false;
        }
        let registered = self.registration(nexus).is_some();
        match h.pr_type {
            TYPE_WRITE_EXCLUSIVE => access == Access::Write,
            TYPE_EXCLUSIVE_ACCESS => true,
            TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY | TYPE_WRITE_EXCLUSIVE_ALL_REGISTRANTS => {
                !registered && access == Access::Write
            }
            TYPE_EXCLUSIVE_ACCESS_REGISTRANTS_ONLY | TYPE_EXCLUSIVE_ACCESS_ALL_REGISTRANTS => {
                !registered
            }
            _ => false,
        }
    }

    /// Removes registrations matching `pred`, posting `condition` to each removed nexus
    /// other than `by`; releases the reservation if its holder went. Returns how many.
    fn remove_registrations(
        &mut self,
        by: &Nexus,
        pred: impl Fn(&Registration) -> bool,
        condition: Condition,
        mailbox: &Mailbox,
    ) -> usize {
        let before = self.registrations.len();
        let mut removed = Vec::new();
        self.registrations.retain(|r| {
            if pred(r) {
                removed.push((r.initiator_port.clone(), r.target_port.clone()));
                false
            } else {
                true
            }
        });
        for (i, t) in &removed {
            if !(*i == by.initiator_port && *t == by.target_port) {
                mailbox.post(i, t, condition);
            }
        }
        if let Some(h) = &self.reservation {
            let holder_gone = if all_registrants(h.pr_type) {
                self.registrations.is_empty()
            } else {
                removed
                    .iter()
                    .any(|(i, t)| *i == h.initiator_port && *t == h.target_port)
            };
            if holder_gone {
                self.reservation = None;
            }
        }
        before - self.registrations.len()
    }

    /// Releases the reservation; the registrants of a registrants-only or all-registrants
    /// reservation other than `by` hear RESERVATIONS RELEASED.
    fn release(&mut self, by: &Nexus, mailbox: &Mailbox) {
        if let Some(h) = self.reservation.take() {
            if registrants_only_or_all(h.pr_type) {
                for r in &self.registrations {
                    if !(r.initiator_port == by.initiator_port && r.target_port == by.target_port) {
                        mailbox.post(
                            &r.initiator_port,
                            &r.target_port,
                            Condition::ReservationsReleased,
                        );
                    }
                }
            }
        }
    }

    fn out(
        &mut self,
        nexus: &Nexus,
        action: u8,
        scope: u8,
        pr_type: u8,
        params: &[u8],
        mailbox: &Mailbox,
    ) -> Result<(), Refusal> {
        if params.len() != PR_OUT_PARAMETER_BYTES {
            return Err(Refusal::Check(sense::PARAMETER_LIST_LENGTH_ERROR));
        }
        let key = u64::from_be_bytes(params[0..8].try_into().unwrap_or([0; 8]));
        let sa_key = u64::from_be_bytes(params[8..16].try_into().unwrap_or([0; 8]));
        let flags = params[20];
        if flags & 0x08 != 0 {
            // SPEC_I_PT
            return Err(Refusal::Check(Sense::invalid_field_in_parameter_list(
                20,
                Some(3),
            )));
        }
        if flags & 0x04 != 0 {
            // ALL_TG_PT
            return Err(Refusal::Check(Sense::invalid_field_in_parameter_list(
                20,
                Some(2),
            )));
        }
        let aptpl = flags & 0x01 != 0;
        let mine = self.registration(nexus);
        let registered_key = mine.map(|i| self.registrations[i].key);
        match action {
            SA_REGISTER | SA_REGISTER_AND_IGNORE_EXISTING_KEY => {
                if action == SA_REGISTER {
                    match registered_key {
                        None if key != 0 => return Err(Refusal::Conflict),
                        Some(k) if k != key => return Err(Refusal::Conflict),
                        _ => {}
                    }
                }
                match (mine, sa_key) {
                    (None, 0) => return Ok(()),
                    (None, _) => {
                        if self.registrations.len() >= SCSI_MAX_PR_REGISTRATIONS {
                            return Err(Refusal::Check(sense::INSUFFICIENT_REGISTRATION_RESOURCES));
                        }
                        self.registrations.push(Registration {
                            initiator_port: nexus.initiator_port.clone(),
                            target_port: nexus.target_port.clone(),
                            key: sa_key,
                        });
                    }
                    (Some(index), 0) => {
                        self.registrations.remove(index);
                        if let Some(h) = &self.reservation {
                            let held = if all_registrants(h.pr_type) {
                                self.registrations.is_empty()
                            } else {
                                h.initiator_port == nexus.initiator_port
                                    && h.target_port == nexus.target_port
                            };
                            if held {
                                self.release(nexus, mailbox);
                            }
                        }
                    }
                    (Some(index), _) => self.registrations[index].key = sa_key,
                }
                self.aptpl = aptpl;
                self.generation = self.generation.wrapping_add(1);
                Ok(())
            }
            SA_RESERVE | SA_RELEASE | SA_CLEAR | SA_PREEMPT | SA_PREEMPT_AND_ABORT => {
                if registered_key != Some(key) {
                    return Err(Refusal::Conflict);
                }
                if action != SA_CLEAR && scope != 0 {
                    return Err(Refusal::Check(Sense::invalid_field_in_cdb(2, Some(7))));
                }
                let needs_type = action != SA_CLEAR && action != SA_RELEASE;
                if needs_type && !valid_type(pr_type) {
                    return Err(Refusal::Check(Sense::invalid_field_in_cdb(2, Some(3))));
                }
                match action {
                    SA_RESERVE => match &self.reservation {
                        None => {
                            self.reservation = Some(Holder {
                                initiator_port: nexus.initiator_port.clone(),
                                target_port: nexus.target_port.clone(),
                                pr_type,
                            });
                            Ok(())
                        }
                        Some(h) if self.holds(nexus) && h.pr_type == pr_type => Ok(()),
                        Some(_) => Err(Refusal::Conflict),
                    },
                    SA_RELEASE => match &self.reservation {
                        None => Ok(()),
                        Some(_) if !self.holds(nexus) => Ok(()),
                        Some(h) if h.pr_type != pr_type => Err(Refusal::Check(INVALID_RELEASE)),
                        Some(_) => {
                            self.release(nexus, mailbox);
                            Ok(())
                        }
                    },
                    SA_CLEAR => {
                        self.reservation = None;
                        self.remove_registrations(
                            nexus,
                            |_| true,
                            Condition::ReservationsPreempted,
                            mailbox,
                        );
                        self.generation = self.generation.wrapping_add(1);
                        Ok(())
                    }
                    _ => self.preempt(nexus, sa_key, pr_type, mailbox),
                }
            }
            _ => Err(Refusal::Check(Sense::invalid_field_in_cdb(1, Some(4)))),
        }
    }

    fn preempt(
        &mut self,
        nexus: &Nexus,
        sa_key: u64,
        pr_type: u8,
        mailbox: &Mailbox,
    ) -> Result<(), Refusal> {
        let new_holder = Holder {
            initiator_port: nexus.initiator_port.clone(),
            target_port: nexus.target_port.clone(),
            pr_type,
        };
        let is_me = |r: &Registration| {
            r.initiator_port == nexus.initiator_port && r.target_port == nexus.target_port
        };
        match self.reservation.clone() {
            Some(h) if all_registrants(h.pr_type) && sa_key == 0 => {
                // Every other registration goes; the preempting nexus reserves.
                self.remove_registrations(
                    nexus,
                    |r| !is_me(r),
                    Condition::RegistrationsPreempted,
                    mailbox,
                );
                self.reservation = Some(new_holder);
            }
            Some(h) if !all_registrants(h.pr_type) && Some(sa_key) == self.holder_key() => {
                // The holder is preempted: its registrations (and all with its key) go, the
                // preempting nexus reserves with the new type.
                self.remove_registrations(
                    nexus,
                    |r| r.key == sa_key && !is_me(r),
                    Condition::RegistrationsPreempted,
                    mailbox,
                );
                self.reservation = Some(new_holder);
                // The other registrants lose their access under the old type.
                if h.pr_type != pr_type {
                    for r in &self.registrations {
                        if !is_me(r) {
                            mailbox.post(
                                &r.initiator_port,
                                &r.target_port,
                                Condition::ReservationsReleased,
                            );
                        }
                    }
                }
            }
            _ => {
                if sa_key == 0 {
                    return Err(Refusal::Check(Sense::invalid_field_in_parameter_list(
                        8, None,
                    )));
                }
                let removed = self.remove_registrations(
                    nexus,
                    |r| r.key == sa_key,
                    Condition::RegistrationsPreempted,
                    mailbox,
                );
                if removed == 0 {
                    return Err(Refusal::Conflict);
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }

    /// PERSISTENT RESERVE IN data for `action` into `out`.
    fn read(&self, action: u8, protocol_identifier: u8, out: &mut Vec<u8>) {
        out.clear();
        match action {
            SA_READ_KEYS => {
                out.extend_from_slice(&self.generation.to_be_bytes());
                out.extend_from_slice(&((self.registrations.len() * 8) as u32).to_be_bytes());
                for r in &self.registrations {
                    out.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            SA_READ_RESERVATION => {
                out.extend_from_slice(&self.generation.to_be_bytes());
                match &self.reservation {
                    None => out.extend_from_slice(&0u32.to_be_bytes()),
                    Some(h) => {
                        out.extend_from_slice(&16u32.to_be_bytes());
                        let key = if all_registrants(h.pr_type) {
                            0
                        } else {
                            self.holder_key().unwrap_or(0)
                        };
                        out.extend_from_slice(&key.to_be_bytes());
                        out.extend_from_slice(&[0, 0, 0, 0, 0, h.pr_type & 0x0F, 0, 0]);
                    }
                }
            }
            SA_REPORT_CAPABILITIES => {
                // CRH 1, PTPL_C 1; TMV 1 with the types below; PTPL_A as set now.
                out.extend_from_slice(&[
                    0,
                    8,
                    0x11,
                    0x80 | u8::from(self.aptpl),
                    0x80 | 0x40 | 0x20 | 0x08 | 0x02,
                    0x01,
                    0,
                    0,
                ]);
            }
            _ => {
                out.extend_from_slice(&self.generation.to_be_bytes());
                out.extend_from_slice(&0u32.to_be_bytes());
                for r in &self.registrations {
                    let holder = match &self.reservation {
                        Some(h) if all_registrants(h.pr_type) => Some(h.pr_type),
                        Some(h)
                            if h.initiator_port == r.initiator_port
                                && h.target_port == r.target_port =>
                        {
                            Some(h.pr_type)
                        }
                        _ => None,
                    };
                    out.extend_from_slice(&r.key.to_be_bytes());
                    out.extend_from_slice(&[0; 4]);
                    out.push(u8::from(holder.is_some()));
                    out.push(holder.unwrap_or(0) & 0x0F);
                    out.extend_from_slice(&[0; 4]);
                    out.extend_from_slice(&1u16.to_be_bytes()); // relative target port
                    let id = transport_id(protocol_identifier, &r.initiator_port);
                    out.extend_from_slice(&(id.len() as u32).to_be_bytes());
                    out.extend_from_slice(&id);
                }
                let len = (out.len() - 8) as u32;
                out[4..8].copy_from_slice(&len.to_be_bytes());
            }
        }
    }
}

/// A TransportID (SPC-4 7.6.4) for an initiator port: the port's name as the transport gave
/// it, in the name-string format with the port identifier (format 01b, what iSCSI's
/// `"<name>,i,0x<isid>"` is), null-terminated and padded to a multiple of 4 bytes.
fn transport_id(protocol_identifier: u8, initiator_port: &str) -> Vec<u8> {
    let name = initiator_port.as_bytes();
    let padded = (name.len() + 1).div_ceil(4) * 4;
    let mut id = Vec::with_capacity(4 + padded);
    id.push(0x40 | (protocol_identifier & 0x0F));
    id.push(0);
    id.extend_from_slice(&(padded as u16).to_be_bytes());
    id.extend_from_slice(name);
    id.resize(4 + padded, 0);
    id
}

/// What goes wrong persisting the state.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("persistent reservation file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("persistent reservation file {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What the reservations mean for one nexus: which kinds of command conflict. A `ScsiLun`
/// keeps the verdict with the version it was made at, so while nothing changes a command
/// pays one atomic load even under a standing reservation (a cluster's, held for days).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub read: bool,
    pub write: bool,
    pub test_unit_ready: bool,
}

impl Verdict {
    #[inline]
    pub fn conflicts(&self, access: Access) -> bool {
        match access {
            Access::Always => false,
            Access::Read => self.read,
            Access::Write => self.write,
            Access::TestUnitReady => self.test_unit_ready,
        }
    }
}

/// The reservations of one logical unit.
pub struct Reservations {
    reserved: AtomicBool,
    /// Bumped (under the lock) by every change of the state.
    version: AtomicU64,
    state: Mutex<PrState>,
    /// Where the state persists (APTPL), if anywhere.
    path: Option<PathBuf>,
}

impl Reservations {
    /// Reservations persisted at `path` (None: never persisted), loaded from it if present.
    pub fn load(path: Option<PathBuf>) -> Result<Self, PersistError> {
        let mut state = PrState::default();
        if let Some(path) = &path {
            match File::open(path) {
                Ok(file) => {
                    let mut text = String::new();
                    file.take(SCSI_MAX_PR_FILE_BYTES)
                        .read_to_string(&mut text)
                        .map_err(|source| PersistError::Io {
                            path: path.clone(),
                            source,
                        })?;
                    state =
                        serde_json::from_str(&text).map_err(|source| PersistError::Corrupt {
                            path: path.clone(),
                            source,
                        })?;
                    state.registrations.truncate(SCSI_MAX_PR_REGISTRATIONS);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(PersistError::Io {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(Self {
            reserved: AtomicBool::new(state.reservation.is_some()),
            version: AtomicU64::new(0),
            state: Mutex::new(state),
            path,
        })
    }

    /// Reservations kept in memory only.
    pub fn empty() -> Self {
        Self {
            reserved: AtomicBool::new(false),
            version: AtomicU64::new(0),
            state: Mutex::new(PrState::default()),
            path: None,
        }
    }

    /// Whether a command with `access` from `nexus` meets a reservation it must not pass.
    #[inline]
    pub fn conflicts(&self, nexus: &Nexus, access: Access) -> bool {
        if !self.reserved.load(Ordering::Acquire) {
            return false;
        }
        match self.state.lock() {
            Ok(state) => state.conflicts(nexus, access),
            Err(_) => false,
        }
    }

    /// Whether any reservation exists (the fast path: one load).
    #[inline]
    pub fn is_reserved(&self) -> bool {
        self.reserved.load(Ordering::Acquire)
    }

    /// The version of the state: a verdict made at it still holds while it is the same.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The verdict for `nexus` now, and the version it was made at.
    pub fn verdict(&self, nexus: &Nexus) -> (u64, Verdict) {
        match self.state.lock() {
            Ok(state) => (
                self.version.load(Ordering::Acquire),
                Verdict {
                    read: state.conflicts(nexus, Access::Read),
                    write: state.conflicts(nexus, Access::Write),
                    test_unit_ready: state.conflicts(nexus, Access::TestUnitReady),
                },
            ),
            Err(_) => (u64::MAX, Verdict::default()),
        }
    }

    fn publish(&self, state: &PrState) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.reserved.store(
            state.reservation.is_some() || state.spc2.is_some(),
            Ordering::Release,
        );
    }

    /// SPC-2 RESERVE: the whole unit for `nexus`.
    pub fn reserve_spc2(&self, nexus: &Nexus) -> Result<(), Refusal> {
        let Ok(mut state) = self.state.lock() else {
            return Err(Refusal::Check(sense::INTERNAL_TARGET_FAILURE));
        };
        // With a persistent reservation (or registrations) in place, RESERVE conflicts
        // (SPC-4 5.13.3, CRH 1: unless the nexus holds it... it never does an SPC-2 one).
        if state.reservation.is_some() || !state.registrations.is_empty() {
            return Err(Refusal::Conflict);
        }
        match &state.spc2 {
            Some((i, t)) if !(*i == nexus.initiator_port && *t == nexus.target_port) => {
                Err(Refusal::Conflict)
            }
            _ => {
                state.spc2 = Some((nexus.initiator_port.clone(), nexus.target_port.clone()));
                self.publish(&state);
                Ok(())
            }
        }
    }

    /// SPC-2 RELEASE: releases `nexus`'s reservation; anything else is GOOD and does
    /// nothing (SPC-2 7.17: a release by another nexus is not an error).
    pub fn release_spc2(&self, nexus: &Nexus) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if matches!(&state.spc2, Some((i, t)) if *i == nexus.initiator_port && *t == nexus.target_port)
        {
            state.spc2 = None;
            self.publish(&state);
        }
    }

    /// A LUN reset or the loss of the nexus releases its SPC-2 reservation.
    pub fn reset_spc2(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.spc2 = None;
            self.publish(&state);
        }
    }

    /// PERSISTENT RESERVE IN `action` into `out`.
    pub fn read(&self, action: u8, protocol_identifier: u8, out: &mut Vec<u8>) {
        if let Ok(state) = self.state.lock() {
            state.read(action, protocol_identifier, out);
        }
    }

    /// PERSISTENT RESERVE OUT.
    pub fn out(
        &self,
        nexus: &Nexus,
        action: u8,
        scope: u8,
        pr_type: u8,
        params: &[u8],
        mailbox: &Mailbox,
    ) -> Result<(), Refusal> {
        let Ok(mut state) = self.state.lock() else {
            return Err(Refusal::Check(sense::INTERNAL_TARGET_FAILURE));
        };
        // An SPC-2 reservation of another nexus keeps persistent reservations out too
        // (SPC-4 5.13.3).
        if matches!(&state.spc2, Some((i, t)) if !(*i == nexus.initiator_port && *t == nexus.target_port))
        {
            return Err(Refusal::Conflict);
        }
        // Worked on a copy: if the state cannot be persisted, nothing changed.
        let mut next = state.clone();
        next.out(nexus, action, scope, pr_type, params, mailbox)?;
        if next != *state {
            if let Some(path) = &self.path {
                let persisted = if next.aptpl {
                    write_atomically(path, &next)
                } else if state.aptpl {
                    remove(path)
                } else {
                    Ok(())
                };
                if persisted.is_err() {
                    return Err(Refusal::Check(sense::INTERNAL_TARGET_FAILURE));
                }
            }
        }
        *state = next;
        self.publish(&state);
        Ok(())
    }
}

fn remove(path: &Path) -> Result<(), PersistError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PersistError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the state to a temporary file, fsyncs it, renames it over `path` and fsyncs the
/// directory: after a crash the file is the old state or the new, never half of each.
fn write_atomically(path: &Path, state: &PrState) -> Result<(), PersistError> {
    let io = |source| PersistError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(state).map_err(|source| PersistError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}
