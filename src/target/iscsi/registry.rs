//! The iSCSI sessions the server has, for `iscsi_get_sessions`, for TSIH assignment and for
//! session reinstatement.
//!
//! A session is added when its login succeeds and removed when its [`RegistryEntry`] is
//! dropped (the session's end, on whichever thread owns it). Touched at login and close only,
//! never per I/O, so one mutex is enough.
//!
//! Reinstatement (RFC 7143 §6.3.5): a new login with TSIH 0 and the same initiator name and
//! ISID as a live session replaces it. At ErrorRecoveryLevel 0 nothing of the old session
//! carries over: the registry raises the old entry's close request
//! ([`RegistryEntry::close_requested`]), which its owner polls and then ends the session,
//! and the new login goes on at once under a new TSIH.

use crate::constants::MAX_ISCSI_SESSIONS;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// What kind of session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Normal,
    Discovery,
}

/// One session as `iscsi_get_sessions` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    /// Registry-wide id, never reused while the server runs.
    pub id: u64,
    pub initiator: String,
    /// The sds host the initiator name matched (empty for a discovery session of an
    /// initiator no host names).
    pub host: String,
    /// The ISID in hex, 12 digits.
    pub isid: String,
    pub tsih: u16,
    pub target: String,
    /// The initiator's address and port.
    pub peer: String,
    pub kind: SessionKind,
    /// The negotiated operational parameters by their RFC 7143 names.
    pub negotiated: BTreeMap<String, String>,
    pub header_digest: bool,
    pub data_digest: bool,
    /// The LUNs the session's host sees (filled in by the session).
    pub luns: Vec<u64>,
}

struct Live {
    info: SessionInfo,
    close: Arc<AtomicBool>,
}

#[derive(Default)]
struct Inner {
    sessions: Vec<Live>,
    next_id: u64,
    next_tsih: u16,
}

/// Every live session.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

/// Why a session could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("the target already has {MAX_ISCSI_SESSIONS} sessions")]
    Full,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a session; its `id` and `tsih` are assigned here (whatever `info` held).
    /// A live normal session of the same initiator and ISID is asked to close
    /// (reinstatement).
    pub fn add(self: &Arc<Self>, mut info: SessionInfo) -> Result<RegistryEntry, RegistryError> {
        let mut inner = self.lock();
        if inner.sessions.len() >= MAX_ISCSI_SESSIONS {
            return Err(RegistryError::Full);
        }
        for live in &inner.sessions {
            if live.info.kind == info.kind
                && live.info.isid == info.isid
                && live.info.initiator.eq_ignore_ascii_case(&info.initiator)
            {
                log::info!(
                    "iSCSI: {} reinstates its session with ISID {} (TSIH {}): the old one is closed",
                    info.initiator,
                    info.isid,
                    live.info.tsih
                );
                live.close.store(true, Ordering::Release);
            }
        }
        inner.next_id += 1;
        info.id = inner.next_id;
        info.tsih = loop {
            // TSIH 0 means "new session" on the wire; skip it, and any still in use.
            inner.next_tsih = inner.next_tsih.wrapping_add(1);
            let tsih = inner.next_tsih;
            if tsih != 0 && inner.sessions.iter().all(|live| live.info.tsih != tsih) {
                break tsih;
            }
        };
        let close = Arc::new(AtomicBool::new(false));
        let entry = RegistryEntry {
            registry: self.clone(),
            id: info.id,
            tsih: info.tsih,
            close: close.clone(),
        };
        inner.sessions.push(Live { info, close });
        Ok(entry)
    }

    /// Every live session.
    pub fn list(&self) -> Vec<SessionInfo> {
        self.lock()
            .sessions
            .iter()
            .map(|live| live.info.clone())
            .collect()
    }

    /// Whether a live session has this TSIH.
    pub fn has_tsih(&self, tsih: u16) -> bool {
        self.lock()
            .sessions
            .iter()
            .any(|live| live.info.tsih == tsih)
    }

    /// Asks every session of `host` to close (its VPs changed, or it was deleted); returns how
    /// many were asked.
    pub fn close_host(&self, host: &str) -> usize {
        let inner = self.lock();
        let mut asked = 0;
        for live in inner.sessions.iter().filter(|live| live.info.host == host) {
            live.close.store(true, Ordering::Release);
            asked += 1;
        }
        asked
    }
}

/// A registered session; removed from the registry when dropped.
pub struct RegistryEntry {
    registry: Arc<Registry>,
    id: u64,
    tsih: u16,
    close: Arc<AtomicBool>,
}

impl std::fmt::Debug for RegistryEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryEntry")
            .field("id", &self.id)
            .field("tsih", &self.tsih)
            .finish()
    }
}

impl RegistryEntry {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn tsih(&self) -> u16 {
        self.tsih
    }

    /// Whether the session should end: reinstated by a new login, or its host's sessions
    /// were closed. Cheap (one atomic load); poll it on a timer, not per I/O.
    pub fn close_requested(&self) -> bool {
        self.close.load(Ordering::Acquire)
    }

    /// The flag itself, for an owner that wants to watch it elsewhere.
    pub fn close_flag(&self) -> Arc<AtomicBool> {
        self.close.clone()
    }

    /// Records the LUNs the session serves.
    pub fn set_luns(&self, luns: Vec<u64>) {
        let mut inner = self.registry.lock();
        if let Some(live) = inner
            .sessions
            .iter_mut()
            .find(|live| live.info.id == self.id)
        {
            live.info.luns = luns;
        }
    }
}

impl Drop for RegistryEntry {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.sessions.retain(|live| live.info.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(initiator: &str, isid: &str) -> SessionInfo {
        SessionInfo {
            id: 0,
            initiator: initiator.into(),
            host: "h".into(),
            isid: isid.into(),
            tsih: 0,
            target: "iqn.2026-11.org.sds:t".into(),
            peer: "127.0.0.1:1".into(),
            kind: SessionKind::Normal,
            negotiated: BTreeMap::new(),
            header_digest: false,
            data_digest: false,
            luns: Vec::new(),
        }
    }

    #[test]
    fn entries_get_ids_and_tsihs_and_leave_when_dropped() {
        let registry = Registry::new();
        let a = registry.add(info("iqn.a", "400001370000")).unwrap();
        let b = registry.add(info("iqn.b", "400001370000")).unwrap();
        assert_ne!(a.tsih(), 0);
        assert_ne!(a.tsih(), b.tsih());
        assert_ne!(a.id(), b.id());
        assert!(registry.has_tsih(a.tsih()));
        b.set_luns(vec![0, 3]);
        let listed = registry.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[1].luns, vec![0, 3]);
        drop(a);
        assert_eq!(registry.list().len(), 1);
        assert_eq!(registry.close_host("h"), 1);
        assert!(b.close_requested());
    }

    #[test]
    fn sessions_serialize_as_iscsi_get_sessions_shows_them() {
        let mut session = info("iqn.a", "400001370000");
        session
            .negotiated
            .insert("HeaderDigest".into(), "CRC32C".into());
        let value = serde_json::to_value(&session).unwrap();
        assert_eq!(value["kind"], "normal");
        assert_eq!(value["negotiated"]["HeaderDigest"], "CRC32C");
        assert_eq!(value["isid"], "400001370000");
    }

    #[test]
    fn the_same_initiator_and_isid_reinstates() {
        let registry = Registry::new();
        let old = registry.add(info("iqn.a", "400001370000")).unwrap();
        let other_isid = registry.add(info("iqn.a", "400001370001")).unwrap();
        assert!(!old.close_requested());
        let new = registry.add(info("IQN.A", "400001370000")).unwrap();
        assert!(old.close_requested());
        assert!(!other_isid.close_requested());
        assert!(!new.close_requested());
        assert_ne!(old.tsih(), new.tsih());
    }
}
