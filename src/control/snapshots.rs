//! `snapshot_*`, `clone_create` and `volume_revert`: point-in-time views of volumes that
//! share extents with them (see `volume::lineage` for the model, `pool::refcount` for how a
//! shared extent is freed, `volume::write_gate` for the moment a snapshot is taken).
//!
//! A snapshot is a read-only volume (listed by `volume_get_volumes` with `snapshot_of`, given
//! read-only VPs only); a clone is a writable volume on a lineage of its own, falling back to
//! its snapshot's. Taking a snapshot copies the origin's table, not its data: the steps that
//! touch tables run on the provisioning thread, between two of its batches, so no claim or
//! copy-on-write overlaps them.
//!
//! Order of durable steps, so that `kill -9` at any point leaves a consistent state:
//! - snapshot: table copied and marked, writes drained, then the record; a crash before the
//!   record leaves no snapshot, and what the origin copied meanwhile has newer records, so
//!   the older ones are found orphaned and freed at the next start;
//! - clone and revert: the record first (its view rebuilt from the records alone gives the
//!   same table), then the table;
//! - delete: the record first, then the extents nothing else maps (a crash in between leaves
//!   records no table maps: freed at the next start).

use super::params::Params;
use super::volumes::release_from;
use super::{Control, VolumeEntry};
use crate::constants::{MAX_VOLUMES, WRITE_GATE_DRAIN_TIMEOUT_MS};
use crate::logger::error_chain;
use crate::pool::on_disk::ExtentRecord;
use crate::pool::refcount::Dropped;
use crate::pool::SLOT_SHARED;
use crate::rpc::RpcError;
use crate::store::records::VolumeRecord;
use crate::volume::lineage::{Lineage, LineageRecord};
use crate::volume::provisioner::Request;
use crate::volume::Volume;
use crossbeam::channel::bounded;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs `step` on the provisioning thread (between two of its batches) and returns its
/// result.
fn on_provisioner<T: Send + 'static>(
    control: &Control,
    step: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RpcError> {
    let (sender, receiver) = bounded(1);
    let request = Request::Run(Box::new(move || {
        let _ = sender.send(step());
    }));
    control
        .provisioner
        .post(request)
        .map_err(|_| RpcError::internal("the provisioning thread has stopped"))?;
    receiver
        .recv()
        .map_err(|_| RpcError::internal("the provisioning thread has stopped"))
}

fn volume_of(control: &Control, name: &str, key: &str) -> Result<Arc<Volume>, RpcError> {
    control
        .volumes
        .get(name)
        .map(|entry| entry.volume.clone())
        .ok_or_else(|| RpcError::invalid_params(format!("{key}: no volume {name}")))
}

fn snapshot_of(control: &Control, name: &str, key: &str) -> Result<Arc<Volume>, RpcError> {
    let volume = volume_of(control, name, key)?;
    if !volume.read_only {
        return Err(RpcError::invalid_params(format!(
            "{key}: volume {name} is not a snapshot"
        )));
    }
    Ok(volume)
}

fn check_new_name(control: &Control, name: &str) -> Result<(), RpcError> {
    if control.volumes.contains_key(name) || control.failed_volumes.contains_key(name) {
        return Err(RpcError::invalid_params(format!(
            "name: volume {name} already exists"
        )));
    }
    if control.volumes.len() >= MAX_VOLUMES {
        return Err(RpcError::invalid_params(format!(
            "name: the server already has {MAX_VOLUMES} volumes"
        )));
    }
    Ok(())
}

/// Tells each writable volume whether its lineage keeps history: it has sources, or another
/// table's view looks through its lineage (a snapshot of it, a clone of such a snapshot even
/// once the snapshot is gone). That decides whether a whole-extent TRIM may free
/// (`Volume::trim_may_free`): freeing its newest record of an extent would let an older one
/// that view keeps be taken for the volume's content at the next start.
pub fn update_histories(control: &Control) {
    // How many views (every table's chain, its own lineage included) look through each
    // lineage.
    let mut views: HashMap<[u8; 16], usize> = HashMap::new();
    for entry in control.volumes.values() {
        if entry.volume.composite().is_none() {
            for (id, _) in entry.volume.lineage().chain() {
                *views.entry(id).or_default() += 1;
            }
        }
    }
    for entry in control.volumes.values().filter(|v| !v.volume.read_only) {
        let lineage = entry.volume.lineage();
        // Its own chain counts its lineage once; any other view is history.
        let others = views.get(&lineage.id).copied().unwrap_or(0) > 1;
        entry
            .volume
            .set_keeps_history(!lineage.sources.is_empty() || others);
    }
}

/// Why `volume` may not become part of a composite (a set's member): its extents may be
/// shared (a snapshot, a clone, a volume with snapshots), and copy-on-write works on a plain
/// volume's own table only.
pub fn shares_extents(volume: &Volume) -> Option<&'static str> {
    if volume.read_only {
        return Some("is a snapshot");
    }
    let lineage = volume.lineage();
    if !lineage.sources.is_empty() {
        return Some("is a clone or was reverted to a snapshot: it shares extents");
    }
    // What `update_histories` derived: a snapshot of it, or a clone's sources, look through
    // its lineage.
    if volume.keeps_history() {
        return Some("has snapshots or clones: it shares extents with them");
    }
    (volume.shared_extents() > 0).then_some("shares extents with a clone")
}

fn store_error(error: crate::store::StoreError) -> RpcError {
    RpcError::internal(error_chain(&error))
}

/// `snapshot_create {volume, name}`: a read-only point-in-time view of `volume`, at once.
pub fn create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["volume", "name"])?;
    let origin_name = params.name("volume")?;
    let name = params.name("name")?;
    let origin = volume_of(control, origin_name, "volume")?;
    if origin.composite().is_some() {
        return Err(RpcError::invalid_params(format!(
            "volume: {origin_name} is made of other volumes: snapshot its members"
        )));
    }
    super::volume_sets::refuse_member(control, "volume", origin_name, "snapshot")?;
    super::mirrors::refuse_reserved(control, "volume", origin_name, "snapshot")?;
    if origin.read_only {
        return Err(RpcError::invalid_params(format!(
            "volume: {origin_name} is a snapshot (read-only already; clone it to change it)"
        )));
    }
    if origin.is_deleted() {
        return Err(RpcError::invalid_params(format!(
            "volume: {origin_name} is being deleted"
        )));
    }
    check_new_name(control, name)?;
    let entry = control
        .volumes
        .get(origin_name)
        .ok_or_else(|| RpcError::invalid_params(format!("volume: no volume {origin_name}")))?;
    let mut record = VolumeRecord {
        name: name.to_string(),
        uuid: control.new_uuid()?,
        pool: entry.record.pool.clone(),
        size: origin.size_bytes(),
        block_size: origin.block_size_bytes,
        thin: origin.thin,
        qos: Default::default(),
        lineage: LineageRecord::default(),
    };
    let (snapshot_name, uuid) = (name.to_string(), record.uuid.0);
    let taken = on_provisioner(control, move || {
        let lineage = origin.lineage();
        let as_of = origin.pool.next_sequence();
        let snapshot = Volume::new(
            &snapshot_name,
            uuid,
            origin.pool.clone(),
            origin.size_bytes(),
            origin.block_size_bytes,
            origin.thin,
        )
        .with_lineage(
            Lineage {
                as_of: Some(as_of),
                ..lineage.clone()
            },
            true,
        );
        // Copy, count, then mark: a write that sees the mark asks this thread for a copy,
        // which waits until this step is over.
        for (extent, slot) in origin.map().mapped() {
            let slot = slot & !SLOT_SHARED;
            if snapshot.map().publish(extent, slot).is_ok() {
                origin.pool.refcounts.share(slot);
            }
            origin.map().set_bits(extent, SLOT_SHARED);
        }
        // Writes that loaded a slot before it was marked write in place: wait for them.
        let deadline = Instant::now() + Duration::from_millis(WRITE_GATE_DRAIN_TIMEOUT_MS);
        if origin.write_gate.drain_until(deadline) {
            Ok((snapshot, lineage, as_of))
        } else {
            release_from(&snapshot, 0);
            Err(())
        }
    })?;
    let (snapshot, lineage, as_of) = taken.map_err(|()| {
        RpcError::internal(format!(
            "volume: {origin_name}: the snapshot was not taken: writes in flight did not \
             complete within {WRITE_GATE_DRAIN_TIMEOUT_MS} ms"
        ))
    })?;
    record.lineage = LineageRecord {
        lineage: Some(crate::identity::Uuid(lineage.id)),
        as_of: Some(as_of),
        sources: lineage.sources,
        snapshot_of: Some(origin_name.to_string()),
        clone_of: None,
    };
    if let Err(error) = control.store.put("volume", name, &record) {
        release_from(&snapshot, 0);
        return Err(store_error(error));
    }
    let entry = VolumeEntry {
        record,
        volume: Arc::new(snapshot),
    };
    let described = describe(&entry);
    control.volumes.insert(name.to_string(), entry);
    update_histories(control);
    control.publish();
    log::info!("snapshot {name} of volume {origin_name} taken at sequence {as_of}");
    Ok(described)
}

/// One snapshot, as `snapshot_get_snapshots` lists it.
fn describe(entry: &VolumeEntry) -> Value {
    let volume = &entry.volume;
    json!({
        "name": volume.name,
        "uuid": entry.record.uuid.to_string(),
        "volume": entry.record.lineage.snapshot_of,
        "pool": entry.record.pool,
        "size": volume.size_bytes(),
        "block_size": volume.block_size_bytes,
        "sequence": entry.record.lineage.as_of,
        "allocated": volume.allocated_extents() * volume.extent_bytes(),
        "shared": volume.shared_extents() * volume.extent_bytes(),
        "connections": volume.open_state.open_count(),
    })
}

/// `snapshot_get_snapshots {name?, volume?}`: every snapshot, one by name, or those of one
/// volume.
pub fn get(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "volume"])?;
    let name = params.optional_name("name")?;
    let of = params.optional_name("volume")?;
    if let Some(name) = name {
        snapshot_of(control, name, "name")?;
    }
    Ok(Value::Array(
        control
            .volumes
            .values()
            .filter(|entry| entry.volume.read_only)
            .filter(|entry| name.map_or(true, |n| entry.record.name == n))
            .filter(|entry| {
                of.map_or(true, |o| {
                    entry.record.lineage.snapshot_of.as_deref() == Some(o)
                })
            })
            .map(describe)
            .collect(),
    ))
}

/// `snapshot_delete {name}`: drops the snapshot; the extents nothing else maps are freed.
/// Refused while a VP points at it (delete the VP first) or a session has it open.
pub fn delete(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    let name = params.name("name")?;
    let snapshot = snapshot_of(control, name, "name")?;
    if let Some(vpath) = control.vpaths.values().find(|v| v.record.volume == name) {
        return Err(RpcError::invalid_params(format!(
            "name: snapshot {name} has virtual path {} (delete it first)",
            vpath.record.id
        )));
    }
    super::volumes::delete(control, Some(json!({ "name": name })))?;
    drop(snapshot);
    Ok(Value::Bool(true))
}

/// `clone_create {snapshot, name}`: a writable volume starting as the snapshot's content,
/// sharing every extent with it until written.
pub fn clone_create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["snapshot", "name"])?;
    let snapshot_name = params.name("snapshot")?;
    let name = params.name("name")?;
    let snapshot = snapshot_of(control, snapshot_name, "snapshot")?;
    check_new_name(control, name)?;
    let sources = snapshot.lineage().descendant_sources().ok_or_else(|| {
        RpcError::invalid_params(format!(
            "snapshot: {snapshot_name} is {} clones deep already",
            crate::constants::MAX_LINEAGE_DEPTH
        ))
    })?;
    let pool_name = control
        .volumes
        .get(snapshot_name)
        .map(|entry| entry.record.pool.clone())
        .unwrap_or_default();
    let uuid = control.new_uuid()?;
    let record = VolumeRecord {
        name: name.to_string(),
        uuid,
        pool: pool_name,
        size: snapshot.size_bytes(),
        block_size: snapshot.block_size_bytes,
        thin: snapshot.thin,
        qos: Default::default(),
        lineage: LineageRecord {
            sources: sources.clone(),
            clone_of: Some(snapshot_name.to_string()),
            ..Default::default()
        },
    };
    // The record first: rebuilt from the records alone, the clone's view is this table.
    control
        .store
        .put("volume", name, &record)
        .map_err(store_error)?;
    let clone = Volume::new(
        name,
        uuid.0,
        snapshot.pool.clone(),
        snapshot.size_bytes(),
        snapshot.block_size_bytes,
        snapshot.thin,
    )
    .with_lineage(
        Lineage {
            id: uuid.0,
            as_of: None,
            sources,
        },
        false,
    );
    share_table(&snapshot, &clone);
    let entry = VolumeEntry {
        record,
        volume: Arc::new(clone),
    };
    let described = super::volumes::describe(&entry);
    control.volumes.insert(name.to_string(), entry);
    update_histories(control);
    control.publish();
    log::info!("clone {name} of snapshot {snapshot_name} created");
    Ok(described)
}

/// Maps every extent of `from` into `into` (empty, or emptied), marked SHARED: each gains a
/// holder.
fn share_table(from: &Volume, into: &Volume) {
    for (extent, slot) in from.map().mapped() {
        let slot = slot & !SLOT_SHARED;
        from.pool.refcounts.share(slot);
        if into.map().publish(extent, slot | SLOT_SHARED).is_err() {
            let _ = from.pool.refcounts.drop_holder(slot);
        }
    }
}

/// `volume_revert {volume, snapshot}`: the volume's content becomes the snapshot's. Offline:
/// refused while a session has the volume open (its VPs stay). The volume keeps its UUID and
/// size, and moves to a new lineage falling back to the snapshot's; what it wrote since is
/// freed where nothing else maps it.
pub fn revert(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["volume", "snapshot"])?;
    let name = params.name("volume")?;
    let snapshot_name = params.name("snapshot")?;
    let volume = volume_of(control, name, "volume")?;
    if volume.read_only {
        return Err(RpcError::invalid_params(format!(
            "volume: {name} is a snapshot"
        )));
    }
    super::volume_sets::refuse_member(control, "volume", name, "revert")?;
    super::mirrors::refuse_reserved(control, "volume", name, "revert")?;
    let snapshot = snapshot_of(control, snapshot_name, "snapshot")?;
    if !Arc::ptr_eq(&snapshot.pool, &volume.pool)
        || snapshot.block_size_bytes != volume.block_size_bytes
        || snapshot.size_bytes() > volume.size_bytes()
    {
        return Err(RpcError::invalid_params(format!(
            "snapshot: {snapshot_name} is not in volume {name}'s pool with its block size and at \
             most its size"
        )));
    }
    let sources = snapshot.lineage().descendant_sources().ok_or_else(|| {
        RpcError::invalid_params(format!(
            "snapshot: {snapshot_name} is {} clones deep already",
            crate::constants::MAX_LINEAGE_DEPTH
        ))
    })?;
    // Exclusive for the duration, as a delete would be: no session may open it meanwhile.
    volume.open_state.try_begin_delete().map_err(|still_open| {
        RpcError::invalid_params(format!(
            "volume: {name} is {still_open} (revert is offline: disconnect its hosts first)"
        ))
    })?;
    let result = revert_closed(control, name, &volume, &snapshot, sources);
    volume.open_state.cancel_delete();
    result?;
    update_histories(control);
    control.publish();
    log::info!("volume {name} reverted to snapshot {snapshot_name}");
    Ok(control
        .volumes
        .get(name)
        .map(super::volumes::describe)
        .unwrap_or(Value::Null))
}

fn revert_closed(
    control: &mut Control,
    name: &str,
    volume: &Arc<Volume>,
    snapshot: &Arc<Volume>,
    sources: Vec<crate::volume::lineage::Source>,
) -> Result<(), RpcError> {
    let lineage_id = control.new_uuid()?;
    let mut record = control
        .volumes
        .get(name)
        .map(|entry| entry.record.clone())
        .ok_or_else(|| RpcError::invalid_params(format!("volume: no volume {name}")))?;
    record.lineage.lineage = Some(lineage_id);
    record.lineage.as_of = None;
    record.lineage.sources = sources.clone();
    // The record first: rebuilt from the records alone, the volume is the snapshot's view.
    control
        .store
        .put("volume", name, &record)
        .map_err(store_error)?;
    let (volume_step, snapshot_step) = (volume.clone(), snapshot.clone());
    on_provisioner(control, move || {
        // The new table's holders first, so an extent both tables map is never freed.
        let old: Vec<u64> = (0..volume_step.map().extent_count())
            .map(|extent| volume_step.map().clear(extent) & !SLOT_SHARED)
            .filter(|&slot| slot != 0)
            .collect();
        share_table(&snapshot_step, &volume_step);
        let last: Vec<(u64, Option<ExtentRecord>)> = old
            .into_iter()
            .filter(|&slot| volume_step.pool.refcounts.drop_holder(slot) == Dropped::Last)
            .map(|slot| (slot, None))
            .collect();
        for (&(slot, _), outcome) in last.iter().zip(volume_step.pool.commit(&last)) {
            match outcome {
                Ok(()) => volume_step.pool.release_extent(slot),
                Err(error) => log::error!(
                    "volume {}: freeing an extent failed: {}",
                    volume_step.name,
                    error_chain(&error)
                ),
            }
        }
        volume_step.set_lineage(Lineage {
            id: lineage_id.0,
            as_of: None,
            sources,
        });
    })?;
    if let Some(entry) = control.volumes.get_mut(name) {
        entry.record = record;
    }
    Ok(())
}
