//! `mirror_*` methods, the restore of mirrors at start-up, and what the control cycle does for
//! them (start a resync when a leg comes back, clean the dirty log of a healthy mirror).
//!
//! A mirror is listed as a volume too (its [`VolumeEntry`] has a record made from the mirror's,
//! never stored as a volume record), so VPs, NBD exports and listings find it like any other;
//! its legs are plain volumes, reserved while they are legs: no VP may point at one, and
//! `volume_delete` / `volume_resize` refuse them ([`reserved_by`]).
//!
//! Every call validates everything first; the dirty log (leg states, bits) is written before the
//! mirror record, so a crash between them leaves a log that names a leg the record does not
//! (ignored) or bits set that need no copy (copied again): never a leg believed whole that is
//! not.

use super::params::{one_or_all, Params};
use super::{Control, VolumeEntry};
use crate::backend::fault::FaultMode;
use crate::constants::{
    MAX_LUNS_PER_POOL, MAX_MIRRORS, MAX_MIRROR_LEGS, MIN_MIRROR_LEGS, MIRROR_CLEAN_AFTER_MS,
    MIRROR_REGION_BYTES, RESYNC_RETRY_MS,
};
use crate::logger::error_chain;
use crate::rpc::RpcError;
use crate::store::records::{MirrorRecord, VolumeRecord};
use crate::volume::dirty_log::{DirtyLog, LoggedLeg};
use crate::volume::mirror::{LegState, Mirror};
use crate::volume::{resync, Volume};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a call that takes a leg out waits for the resync to stop.
const RESYNC_STOP_WAIT: Duration = Duration::from_secs(30);

pub struct MirrorEntry {
    pub record: MirrorRecord,
    pub mirror: Arc<Mirror>,
    /// Legs of the record whose volume is not served (their pool failed at start-up).
    pub missing: Vec<String>,
    /// The cleaner's last look at each region's write counter.
    clean_seen: Vec<u32>,
    last_clean: Instant,
}

fn internal(error: &dyn std::error::Error) -> RpcError {
    RpcError::internal(error_chain(error))
}

/// The mirror that reserves volume `name` as a leg.
pub fn reserved_by(control: &Control, name: &str) -> Option<String> {
    control
        .mirrors
        .values()
        .find(|m| m.record.legs.iter().any(|leg| leg == name))
        .map(|m| m.record.name.clone())
}

/// Refuses `what` on volume `name` (parameter `key`) when a mirror forbids it: it is a mirror
/// (the `mirror_*` methods change it) or one of a mirror's legs.
pub fn refuse_reserved(
    control: &Control,
    key: &str,
    name: &str,
    what: &str,
) -> Result<(), RpcError> {
    if control.mirrors.contains_key(name) {
        return Err(RpcError::invalid_params(format!(
            "{key}: {name} is a mirror: cannot {what} it (see mirror_*)"
        )));
    }
    if let Some(mirror) = reserved_by(control, name) {
        return Err(RpcError::invalid_params(format!(
            "{key}: volume {name} is a leg of mirror {mirror}: cannot {what} it"
        )));
    }
    Ok(())
}

fn mirrors_dir(control: &Control) -> PathBuf {
    control.state_dir.join("mirrors")
}

fn log_path(control: &Control, uuid: &crate::identity::Uuid) -> PathBuf {
    mirrors_dir(control).join(format!("{uuid}.dirty"))
}

fn regions_of(size: u64) -> u64 {
    size.div_ceil(MIRROR_REGION_BYTES)
}

pub fn describe(entry: &MirrorEntry) -> Value {
    let mirror = &entry.mirror;
    let mut legs: Vec<Value> = mirror
        .positions()
        .filter_map(|p| {
            let volume = mirror.leg_volume(p)?;
            let state = mirror.leg_state(p).map_or("absent", LegState::as_str);
            Some(json!({
                "volume": volume.name,
                "pool": volume.pool.name,
                "position": p,
                "state": state,
            }))
        })
        .collect();
    legs.extend(
        entry
            .missing
            .iter()
            .map(|name| json!({"volume": name, "state": "failed"})),
    );
    let progress = mirror.resync.snapshot();
    let dirty = mirror.log.count_set();
    let state = if mirror.all_healthy() && entry.missing.is_empty() {
        "healthy"
    } else if progress.running {
        "resyncing"
    } else {
        "degraded"
    };
    let percent = if progress.total_bytes == 0 {
        100.0
    } else {
        progress.done_bytes as f64 * 100.0 / progress.total_bytes as f64
    };
    json!({
        "name": mirror.name,
        "uuid": entry.record.uuid.to_string(),
        "size": mirror.size_bytes,
        "block_size": mirror.block_size_bytes,
        "state": state,
        "legs": legs,
        "dirty_regions": dirty,
        "dirty_bytes": dirty * MIRROR_REGION_BYTES,
        "region_size": MIRROR_REGION_BYTES,
        "resync": {
            "running": progress.running,
            "total_bytes": progress.total_bytes,
            "done_bytes": progress.done_bytes,
            "percent": (percent * 10.0).round() / 10.0,
            "rate_bytes_per_s": progress.rate_bytes_per_s.round(),
            "last_error": progress.last_error,
        },
    })
}

pub fn get(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    one_or_all(params, &control.mirrors, "mirror", describe)
}

/// Checks that `names` may become the legs of one mirror (with `existing` legs already in
/// it): plain volumes, not reserved, no VP, not open, same size and block size, LUN blocks no
/// larger than the volume's, and pools whose LUNs are disjoint.
fn check_legs(
    control: &Control,
    key: &str,
    names: &[String],
    existing: &[Arc<Volume>],
) -> Result<Vec<Arc<Volume>>, RpcError> {
    let bad = |text: String| RpcError::invalid_params(format!("{key}: {text}"));
    let mut volumes: Vec<Arc<Volume>> = Vec::new();
    for name in names {
        if names.iter().filter(|n| *n == name).count() > 1 {
            return Err(bad(format!("volume {name} is named twice")));
        }
        let volume = super::volumes::check_reservable(control, key, name)?;
        if volume.needs_read_modify_write() {
            return Err(bad(format!(
                "volume {name}'s pool has LUN blocks larger than its {}-byte blocks",
                volume.block_size_bytes
            )));
        }
        volumes.push(volume);
    }
    let all: Vec<&Arc<Volume>> = existing.iter().chain(volumes.iter()).collect();
    let first = all[0];
    for volume in &all[1..] {
        if volume.size_bytes() != first.size_bytes() {
            return Err(bad(format!(
                "volume {} has {} bytes, {} has {}: legs are the same size",
                volume.name,
                volume.size_bytes(),
                first.name,
                first.size_bytes()
            )));
        }
        if volume.block_size_bytes != first.block_size_bytes {
            return Err(bad(format!(
                "volume {} has {}-byte blocks, {} has {}: legs have the same block size",
                volume.name, volume.block_size_bytes, first.name, first.block_size_bytes
            )));
        }
    }
    // A flush goes to every LUN of every leg in one round, which has room for as many LUNs
    // as one pool may have.
    let luns: usize = all.iter().map(|v| v.pool.luns.len()).sum();
    if luns > MAX_LUNS_PER_POOL {
        return Err(bad(format!(
            "the legs' pools have {luns} LUNs together, more than {MAX_LUNS_PER_POOL}"
        )));
    }
    // Disjoint LUNs: a LUN (or the base under a fault LUN) in two legs' pools would make one
    // failure take two legs.
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            let shared = lun_names(control, &a.pool)
                .into_iter()
                .find(|name| lun_names(control, &b.pool).contains(name));
            if let Some(lun) = shared {
                return Err(bad(format!(
                    "volumes {} and {} share LUN {lun} (pools {} and {}): legs must be on \
                     disjoint LUNs",
                    a.name, b.name, a.pool.name, b.pool.name
                )));
            }
        }
    }
    Ok(volumes)
}

/// Every LUN a pool stands on: its own and the bases under its fault LUNs.
fn lun_names(control: &Control, pool: &crate::pool::Pool) -> Vec<String> {
    let mut names = Vec::new();
    for member in &pool.luns {
        let mut name = member.lun.info().name.clone();
        for _ in 0..8 {
            names.push(name.clone());
            match control.luns.get(&name).and_then(|e| e.record.base.clone()) {
                Some(base) => name = base,
                None => break,
            }
        }
    }
    names
}

/// Builds and registers a live mirror: the `Mirror`, its host-facing volume, its entries.
fn register(
    control: &mut Control,
    record: MirrorRecord,
    mirror: Arc<Mirror>,
    missing: Vec<String>,
) {
    let first_pool = mirror
        .positions()
        .find_map(|p| mirror.leg_volume(p))
        .map(|v| v.pool.clone());
    let Some(pool) = first_pool else {
        return;
    };
    let volume = Arc::new(Volume::of_mirror(mirror.clone(), pool.clone()));
    // Its data is in its legs' pools: listed with no pool of its own (as a volume set is),
    // so pool figures do not count it twice.
    let volume_record = VolumeRecord {
        name: record.name.clone(),
        uuid: record.uuid,
        pool: String::new(),
        size: record.size,
        block_size: record.block_size,
        thin: true,
        qos: record.qos,
        lineage: Default::default(),
    };
    control.volumes.insert(
        record.name.clone(),
        VolumeEntry {
            record: volume_record,
            volume,
        },
    );
    control.mirrors.insert(
        record.name.clone(),
        MirrorEntry {
            record,
            mirror,
            missing,
            clean_seen: Vec::new(),
            last_clean: Instant::now(),
        },
    );
}

pub fn create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "legs"])?;
    let name = params.name("name")?.to_string();
    let legs = params.name_list("legs")?;
    create_mirror(control, &name, &legs)
}

fn create_mirror(control: &mut Control, name: &str, legs: &[String]) -> Result<Value, RpcError> {
    if control.volumes.contains_key(name) || control.failed_volumes.contains_key(name) {
        return Err(RpcError::invalid_params(format!(
            "name: a volume {name} already exists"
        )));
    }
    if control.mirrors.len() >= MAX_MIRRORS {
        return Err(RpcError::invalid_params(format!(
            "name: the server already has {MAX_MIRRORS} mirrors"
        )));
    }
    if !(MIN_MIRROR_LEGS..=MAX_MIRROR_LEGS).contains(&legs.len()) {
        return Err(RpcError::invalid_params(format!(
            "legs: a mirror has {MIN_MIRROR_LEGS} to {MAX_MIRROR_LEGS} legs, not {}",
            legs.len()
        )));
    }
    let volumes = check_legs(control, "legs", legs, &[])?;
    let (size, block_size) = (volumes[0].size_bytes(), volumes[0].block_size_bytes);
    // Legs that all hold nothing are already the same; otherwise the first is copied to the
    // others.
    let empty = volumes.iter().all(|v| v.allocated_extents() == 0);
    let states: Vec<LegState> = (0..volumes.len())
        .map(|i| {
            if i == 0 || empty {
                LegState::Healthy
            } else {
                LegState::Resyncing
            }
        })
        .collect();
    let uuid = control.new_uuid()?;
    let logged: Vec<LoggedLeg> = volumes
        .iter()
        .zip(&states)
        .map(|(v, s)| LoggedLeg {
            uuid: v.uuid,
            state: *s as u8,
        })
        .collect();
    std::fs::create_dir_all(mirrors_dir(control)).map_err(|e| internal(&e))?;
    let path = log_path(control, &uuid);
    let log = DirtyLog::create(&path, MIRROR_REGION_BYTES, regions_of(size), &logged)
        .map_err(|e| internal(&e))?;
    let record = MirrorRecord {
        name: name.to_string(),
        uuid,
        size,
        block_size,
        legs: legs.to_vec(),
        qos: Default::default(),
    };
    let stored = (if empty {
        Ok(())
    } else {
        log.set_all_durable().map_err(|e| internal(&e))
    })
    .and_then(|()| {
        control
            .store
            .put("mirror", name, &record)
            .map_err(|e| internal(&e))
    });
    if let Err(error) = stored {
        let _ = std::fs::remove_file(&path);
        return Err(error);
    }
    let pairs: Vec<(Arc<Volume>, LegState)> = volumes.into_iter().zip(states).collect();
    let mirror = Arc::new(Mirror::new(name, uuid.0, size, block_size, &pairs, log));
    register(control, record, mirror.clone(), Vec::new());
    control.publish();
    if !empty {
        resync::start(&mirror);
    }
    log::info!(
        "mirror {name} created over {}{}",
        legs.join(", "),
        if empty {
            ""
        } else {
            ": full copy from the first leg"
        }
    );
    Ok(describe_named(control, name))
}

/// Writes the mirror's record with `legs`, keeping the entry's copy in step.
fn put_legs(control: &mut Control, name: &str, legs: Vec<String>) -> Result<(), RpcError> {
    let entry = mirror_entry(control, "mirror", name)?;
    let mut record = entry.record.clone();
    record.legs = legs;
    control
        .store
        .put("mirror", name, &record)
        .map_err(|e| internal(&e))?;
    if let Some(entry) = control.mirrors.get_mut(name) {
        entry.record = record;
    }
    Ok(())
}

/// Mirror `name`, or the caller's error on its parameter `field`.
fn mirror_entry<'a>(
    control: &'a Control,
    field: &str,
    name: &str,
) -> Result<&'a MirrorEntry, RpcError> {
    control
        .mirrors
        .get(name)
        .ok_or_else(|| RpcError::invalid_params(format!("{field}: no mirror {name}")))
}

/// What a call that changed mirror `name` answers: its description (null were it gone).
fn describe_named(control: &Control, name: &str) -> Value {
    control
        .mirrors
        .get(name)
        .map(describe)
        .unwrap_or(Value::Null)
}

/// The mirror's recorded legs but `leg`.
fn legs_but(entry: &MirrorEntry, leg: &str) -> Vec<String> {
    entry
        .record
        .legs
        .iter()
        .filter(|l| *l != leg)
        .cloned()
        .collect()
}

/// The current legs' volumes of a mirror.
fn leg_volumes(mirror: &Mirror) -> Vec<Arc<Volume>> {
    mirror
        .positions()
        .filter_map(|p| mirror.leg_volume(p))
        .collect()
}

/// `mirror_add_leg {mirror, volume, name?}`: adds `volume` as a leg of mirror `mirror`, with a
/// full copy. When `mirror` is a plain volume, it becomes the first leg of a new mirror
/// `name` (required then) and `volume` its second.
pub fn add_leg(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["mirror", "volume", "name"])?;
    let target = params.name("mirror")?.to_string();
    let leg = params.name("volume")?.to_string();
    if !control.mirrors.contains_key(&target) {
        if !control.volumes.contains_key(&target) {
            return Err(RpcError::invalid_params(format!(
                "mirror: no mirror or volume {target}"
            )));
        }
        let Some(name) = params.optional_name("name")? else {
            return Err(RpcError::invalid_params(format!(
                "name: {target} is a plain volume: give the new mirror's name"
            )));
        };
        return create_mirror(control, name, &[target, leg]);
    }
    let entry = &control.mirrors[&target];
    let mirror = entry.mirror.clone();
    let existing = leg_volumes(&mirror);
    if existing.len() + entry.missing.len() >= MAX_MIRROR_LEGS {
        return Err(RpcError::invalid_params(format!(
            "mirror: mirror {target} already has {MAX_MIRROR_LEGS} legs"
        )));
    }
    if mirror.healthy_leg().is_none() {
        return Err(RpcError::invalid_params(format!(
            "mirror: mirror {target} has no healthy leg to copy from"
        )));
    }
    let volume = check_legs(control, "volume", std::slice::from_ref(&leg), &existing)?.remove(0);
    mirror.log.set_all_durable().map_err(|e| internal(&e))?;
    let position = mirror
        .attach(volume, LegState::Resyncing)
        .map_err(|e| internal(&e))?;
    if position.is_none() {
        return Err(RpcError::invalid_params(format!(
            "mirror: mirror {target} has no free leg position"
        )));
    }
    let mut legs = control.mirrors[&target].record.legs.clone();
    legs.push(leg.clone());
    if let Err(error) = put_legs(control, &target, legs) {
        if let Some(p) = mirror.position_of(&leg) {
            let _ = mirror.detach(p);
        }
        return Err(error);
    }
    // A resync already running copies only to the legs it started with: start over.
    mirror.resync.stop_and_wait(RESYNC_STOP_WAIT);
    resync::start(&mirror);
    log::info!("mirror {target}: leg {leg} added, full copy started");
    Ok(describe_named(control, &target))
}

/// `mirror_replace_leg {mirror, leg, volume}`: `volume` takes the place of leg `leg`, which
/// becomes a plain volume again (its data as it was); the new leg gets a full copy.
pub fn replace_leg(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["mirror", "leg", "volume"])?;
    let name = params.name("mirror")?.to_string();
    let old = params.name("leg")?.to_string();
    let new = params.name("volume")?.to_string();
    let entry = mirror_entry(control, "mirror", &name)?;
    let mirror = entry.mirror.clone();
    let is_missing = entry.missing.contains(&old);
    let position = mirror.position_of(&old);
    if position.is_none() && !is_missing {
        return Err(RpcError::invalid_params(format!(
            "leg: volume {old} is not a leg of mirror {name}"
        )));
    }
    let others: Vec<Arc<Volume>> = leg_volumes(&mirror)
        .into_iter()
        .filter(|v| v.name != old)
        .collect();
    let source_left = mirror
        .positions()
        .any(|p| Some(p) != position && mirror.leg_state(p) == Some(LegState::Healthy));
    if !source_left {
        return Err(RpcError::invalid_params(format!(
            "leg: mirror {name} has no other healthy leg to copy from"
        )));
    }
    let volume = check_legs(control, "volume", std::slice::from_ref(&new), &others)?.remove(0);
    mirror.resync.stop_and_wait(RESYNC_STOP_WAIT);
    mirror.log.set_all_durable().map_err(|e| internal(&e))?;
    if let Some(position) = position {
        mirror.detach(position).map_err(|e| internal(&e))?;
    }
    let attached = mirror
        .attach(volume, LegState::Resyncing)
        .map_err(|e| internal(&e))?;
    if attached.is_none() {
        return Err(RpcError::internal("no free leg position after the detach"));
    }
    let legs: Vec<String> = control.mirrors[&name]
        .record
        .legs
        .iter()
        .map(|l| if *l == old { new.clone() } else { l.clone() })
        .collect();
    put_legs(control, &name, legs)?;
    if let Some(entry) = control.mirrors.get_mut(&name) {
        entry.missing.retain(|m| *m != old);
    }
    resync::start(&mirror);
    log::info!("mirror {name}: leg {old} replaced by {new}, full copy started");
    Ok(describe_named(control, &name))
}

/// `mirror_split_leg {mirror, leg}`: detaches leg `leg` as an independent plain volume (its
/// data as of the split); the mirror keeps at least one healthy leg.
pub fn split_leg(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["mirror", "leg"])?;
    let name = params.name("mirror")?.to_string();
    let leg = params.name("leg")?.to_string();
    let entry = mirror_entry(control, "mirror", &name)?;
    let mirror = entry.mirror.clone();
    if entry.missing.contains(&leg) {
        let legs = legs_but(entry, &leg);
        put_legs(control, &name, legs)?;
        if let Some(entry) = control.mirrors.get_mut(&name) {
            entry.missing.retain(|m| *m != leg);
        }
        return Ok(describe_named(control, &name));
    }
    let position = mirror.position_of(&leg).ok_or_else(|| {
        RpcError::invalid_params(format!("leg: volume {leg} is not a leg of mirror {name}"))
    })?;
    if mirror.positions().count() < 2 {
        return Err(RpcError::invalid_params(format!(
            "leg: {leg} is mirror {name}'s last leg: delete the mirror instead"
        )));
    }
    let healthy_left = mirror
        .positions()
        .any(|p| p != position && mirror.leg_state(p) == Some(LegState::Healthy));
    if !healthy_left {
        return Err(RpcError::invalid_params(format!(
            "leg: {leg} is mirror {name}'s only healthy leg"
        )));
    }
    mirror.resync.stop_and_wait(RESYNC_STOP_WAIT);
    let volume = mirror.detach(position).map_err(|e| internal(&e))?;
    let legs = legs_but(&control.mirrors[&name], &leg);
    if let Err(error) = put_legs(control, &name, legs) {
        let _ = mirror.attach(volume, LegState::Degraded);
        return Err(error);
    }
    if resync::needed(&mirror) {
        resync::start(&mirror);
    }
    log::info!("mirror {name}: leg {leg} split off as a plain volume");
    Ok(describe_named(control, &name))
}

/// `mirror_delete {name}`: refused while a VP points at the mirror; its legs become plain
/// volumes again, each with its data.
pub fn delete(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    let name = params.name("name")?.to_string();
    let entry = mirror_entry(control, "name", &name)?;
    if let Some(vp) = control.vpaths.values().find(|v| v.record.volume == name) {
        return Err(RpcError::invalid_params(format!(
            "name: mirror {name} has virtual path {}: delete it first",
            vp.record.id
        )));
    }
    let mirror = entry.mirror.clone();
    let uuid = entry.record.uuid;
    let volume = control.volumes.get(&name).map(|e| e.volume.clone());
    if let Some(volume) = &volume {
        volume.open_state.try_begin_delete().map_err(|still_open| {
            RpcError::invalid_params(format!("name: mirror {name} is {still_open}"))
        })?;
    }
    if let Err(error) = control.store.delete("mirror", &name) {
        if let Some(volume) = &volume {
            volume.open_state.cancel_delete();
        }
        return Err(internal(&error));
    }
    mirror.resync.stop_and_wait(RESYNC_STOP_WAIT);
    let path = log_path(control, &uuid);
    if let Err(error) = std::fs::remove_file(&path) {
        log::warn!("mirror {name}: cannot remove {}: {error}", path.display());
    }
    control.mirrors.remove(&name);
    control.volumes.remove(&name);
    control.publish();
    log::info!("mirror {name} deleted; its legs are plain volumes");
    Ok(Value::Bool(true))
}

impl Control {
    /// Restores every mirror from its record and dirty log (after the volumes, before the
    /// VPs), and starts the resyncs a crash or a degraded leg left to do.
    pub(super) fn restore_mirrors(&mut self) -> Result<(), super::ControlError> {
        for record in self.store.list::<MirrorRecord>("mirror")? {
            let mut present: Vec<Arc<Volume>> = Vec::new();
            let mut missing = Vec::new();
            for leg in &record.legs {
                match self.volumes.get(leg) {
                    Some(entry) if entry.volume.size_bytes() == record.size => {
                        present.push(entry.volume.clone())
                    }
                    _ => {
                        log::error!(
                            "mirror {}: leg {leg} is not served (failed or missing)",
                            record.name
                        );
                        missing.push(leg.clone());
                    }
                }
            }
            if present.is_empty() {
                log::error!(
                    "mirror {}: no leg is served; the mirror is not",
                    record.name
                );
                continue;
            }
            let path = log_path(self, &record.uuid);
            let regions = regions_of(record.size);
            let (log, logged) = match DirtyLog::open(&path, MIRROR_REGION_BYTES, regions) {
                Ok(log) => {
                    let logged = log.legs();
                    (log, logged)
                }
                Err(error) => {
                    // Which leg is whole is not known: the first is taken as the source and
                    // the others copied in full.
                    log::error!(
                        "mirror {}: {}; the first leg is copied to the others",
                        record.name,
                        error_chain(&error)
                    );
                    std::fs::create_dir_all(mirrors_dir(self)).map_err(|source| {
                        super::ControlError::Inconsistent {
                            what: format!("mirror {}", record.name),
                            detail: source.to_string(),
                        }
                    })?;
                    let log = DirtyLog::create(&path, MIRROR_REGION_BYTES, regions, &[])
                        .and_then(|log| log.set_all_durable().map(|()| log))
                        .map_err(|error| super::ControlError::Inconsistent {
                            what: format!("mirror {}", record.name),
                            detail: error_chain(&error),
                        })?;
                    (log, Vec::new())
                }
            };
            let mut full_copy = false;
            let mut pairs: Vec<(Arc<Volume>, LegState)> = present
                .into_iter()
                .enumerate()
                .map(|(i, volume)| {
                    let state = logged
                        .iter()
                        .find(|l| l.uuid == volume.uuid)
                        .and_then(|l| LegState::from_code(l.state));
                    let state = match state {
                        Some(state) => state,
                        None if logged.is_empty() && i == 0 => LegState::Healthy,
                        None => {
                            full_copy = true;
                            LegState::Resyncing
                        }
                    };
                    (volume, state)
                })
                .collect();
            if !pairs.iter().any(|(_, s)| *s == LegState::Healthy) {
                log::error!(
                    "mirror {}: no leg was healthy; {} is taken as the source",
                    record.name,
                    pairs[0].0.name
                );
                pairs[0].1 = LegState::Healthy;
            }
            if full_copy {
                log.set_all_durable()
                    .map_err(|error| super::ControlError::Inconsistent {
                        what: format!("mirror {}", record.name),
                        detail: error_chain(&error),
                    })?;
            }
            let mirror = Arc::new(Mirror::new(
                &record.name,
                record.uuid.0,
                record.size,
                record.block_size,
                &pairs,
                log,
            ));
            if let Err(error) = mirror.log.set_legs(&mirror.logged_legs()) {
                log::error!(
                    "mirror {}: cannot record its legs: {}",
                    record.name,
                    error_chain(&error)
                );
            }
            let dirty = mirror.log.count_set();
            let legs = pairs.len();
            register(self, record, mirror.clone(), missing);
            if resync::needed(&mirror) || (dirty > 0 && legs > 1) {
                resync::start(&mirror);
            }
        }
        if !self.mirrors.is_empty() {
            log::info!("{} mirrors restored", self.mirrors.len());
        }
        Ok(())
    }

    /// The control cycle's part for mirrors: resume a resync that stopped, start one for a
    /// degraded leg whose LUNs look well again (no fault injected, not failed; at most every
    /// [`RESYNC_RETRY_MS`]), and clean the log of a healthy mirror's quiet regions.
    pub(super) fn mirror_cycle(&mut self) {
        let retry = Duration::from_millis(RESYNC_RETRY_MS);
        let mut to_start = Vec::new();
        for entry in self.mirrors.values() {
            let mirror = &entry.mirror;
            if mirror.resync.is_running() {
                continue;
            }
            let due = mirror
                .resync
                .last_attempt()
                .map_or(true, |at| at.elapsed() >= retry);
            if !due {
                continue;
            }
            let comes_back = mirror.positions().any(|p| {
                let state = mirror.leg_state(p);
                state == Some(LegState::Resyncing)
                    || (state == Some(LegState::Degraded)
                        && mirror
                            .leg_volume(p)
                            .is_some_and(|v| self.pool_luns_well(&v.pool)))
            });
            if comes_back {
                to_start.push(mirror.clone());
            }
        }
        for mirror in to_start {
            if resync::start(&mirror) {
                log::info!("mirror {}: a leg is back, resync started", mirror.name);
            }
        }
        let clean_after = Duration::from_millis(MIRROR_CLEAN_AFTER_MS);
        for entry in self.mirrors.values_mut() {
            if entry.last_clean.elapsed() >= clean_after {
                entry.last_clean = Instant::now();
                resync::clean(&entry.mirror, &mut entry.clean_seen);
            }
        }
    }

    /// Whether none of a pool's LUNs is failed or has a failing fault injected (a delay is
    /// slow, not broken).
    fn pool_luns_well(&self, pool: &crate::pool::Pool) -> bool {
        pool.luns.iter().all(|member| {
            let name = &member.lun.info().name;
            let faulted = self
                .luns
                .get(name)
                .and_then(|e| e.fault.as_ref())
                .and_then(|f| f.active())
                .is_some_and(|status| status.spec.mode != FaultMode::Delay);
            !member.lun.is_failed() && !faulted
        })
    }
}
