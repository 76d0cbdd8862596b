//! The logical unit: what every I_T nexus to one volume shares, on every reactor —
//! reservations, the unit attentions one nexus causes for others, the COMPARE AND WRITE
//! interlock and the mode parameters a MODE SELECT changes. [`LuRegistry`] hands out one
//! per volume (created on first use at login, off the I/O path) and keeps it for the life of
//! the server, so reservations survive the loss of every nexus as SPC-4 requires.

use super::interlock::Interlock;
use super::reservations::{PersistError, Reservations};
use super::unit_attention::Mailbox;
use crate::volume::Volume;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One volume as a SCSI logical unit, shared by its `ScsiLun`s.
pub struct LogicalUnit {
    pub volume_uuid: [u8; 16],
    pub reservations: Reservations,
    pub unit_attentions: Mailbox,
    pub interlock: Interlock,
    /// The caching mode page's WCE: writes may complete before they are durable (a LUN's
    /// page cache or device cache holds them until SYNCHRONIZE CACHE or FUA). MODE SELECT
    /// may clear it: every write is then sent with FUA.
    write_cache: AtomicBool,
    /// Counts LUN resets and mode parameter changes: every nexus compares them with what it
    /// last saw (one atomic load each per command) and raises BUS DEVICE RESET or MODE
    /// PARAMETERS CHANGED for itself (SAM-5 6.4: a reset is heard by every nexus; SPC-4
    /// 6.13: a change made through one nexus is heard by the others).
    pub resets: AtomicU64,
    pub mode_changes: AtomicU64,
}

impl LogicalUnit {
    /// A logical unit for `volume_uuid` whose reservations persist at `pr_path`.
    pub fn new(volume_uuid: [u8; 16], pr_path: Option<PathBuf>) -> Result<Self, PersistError> {
        Ok(Self {
            volume_uuid,
            reservations: Reservations::load(pr_path)?,
            unit_attentions: Mailbox::default(),
            interlock: Interlock::default(),
            write_cache: AtomicBool::new(true),
            resets: AtomicU64::new(0),
            mode_changes: AtomicU64::new(0),
        })
    }

    #[inline]
    pub fn write_cache_enabled(&self) -> bool {
        self.write_cache.load(Ordering::Relaxed)
    }

    pub fn set_write_cache(&self, enabled: bool) {
        self.write_cache.store(enabled, Ordering::Relaxed);
    }
}

/// Volume UUID → its logical unit.
pub struct LuRegistry {
    dir: PathBuf,
    units: Mutex<HashMap<[u8; 16], Arc<LogicalUnit>>>,
}

/// The persistent-reservation file of a volume under the state directory.
pub fn pr_path(state_dir: &Path, volume_uuid: &[u8; 16]) -> PathBuf {
    let mut name = String::with_capacity(40);
    name.push_str("pr-");
    for b in volume_uuid {
        name.push_str(&format!("{b:02x}"));
    }
    name.push_str(".json");
    state_dir.join("scsi").join(name)
}

impl LuRegistry {
    /// Logical units whose persistent reservations live under `state_dir/scsi/`.
    pub fn new(state_dir: &Path) -> Arc<Self> {
        Arc::new(Self {
            dir: state_dir.to_path_buf(),
            units: Mutex::new(HashMap::new()),
        })
    }

    /// The volume's logical unit, made (and its reservations read back) on first use. A
    /// reservation file that cannot be read is logged and the unit starts without
    /// reservations: refusing the volume to every host would be worse than losing an
    /// APTPL reservation, which initiators re-establish.
    pub fn get(&self, volume: &Arc<Volume>) -> Arc<LogicalUnit> {
        let mut units = match self.units.lock() {
            Ok(units) => units,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(unit) = units.get(&volume.uuid) {
            return unit.clone();
        }
        let path = pr_path(&self.dir, &volume.uuid);
        let unit = match LogicalUnit::new(volume.uuid, Some(path.clone())) {
            Ok(unit) => unit,
            Err(e) => {
                log::warn!(
                    "volume {}: persistent reservations not restored: {e}",
                    volume.name
                );
                let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
                LogicalUnit::new(volume.uuid, Some(path))
                    .unwrap_or_else(|_| LogicalUnit::unpersisted(volume.uuid))
            }
        };
        let unit = Arc::new(unit);
        units.insert(volume.uuid, unit.clone());
        unit
    }

    /// Forgets a deleted volume's unit and its reservation file.
    pub fn remove(&self, volume_uuid: &[u8; 16]) {
        if let Ok(mut units) = self.units.lock() {
            units.remove(volume_uuid);
        }
        let _ = std::fs::remove_file(pr_path(&self.dir, volume_uuid));
    }
}

impl LogicalUnit {
    /// A unit whose reservations are never persisted (tests, and the fallback above).
    pub fn unpersisted(volume_uuid: [u8; 16]) -> Self {
        Self {
            volume_uuid,
            reservations: Reservations::empty(),
            unit_attentions: Mailbox::default(),
            interlock: Interlock::default(),
            write_cache: AtomicBool::new(true),
            resets: AtomicU64::new(0),
            mode_changes: AtomicU64::new(0),
        }
    }
}
