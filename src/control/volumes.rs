//! `volume_*` methods.

use super::params::{one_or_all, Params};
use super::{Control, VolumeEntry};
use crate::constants::{MAX_VOLUMES, MAX_VOLUME_EXTENTS};
use crate::domain::capabilities::QosLimits;
use crate::logger::error_chain;
use crate::pool::on_disk::ExtentRecord;
use crate::pool::refcount::Dropped;
use crate::pool::SLOT_SHARED;
use crate::rpc::RpcError;
use crate::store::records::VolumeRecord;
use crate::volume::provisioner::provision;
use crate::volume::Volume;
use serde_json::{json, Value};
use std::sync::Arc;

/// Checks that volume `name` may become a part of another volume (a set's member or a
/// mirror's leg), which then reserves it: a plain volume that is not failed, not already a
/// part, shares no extents (a part's I/O writes its extents in place, never through
/// copy-on-write), has no VP and is not open. Refusals are worded under parameter `key`;
/// returns the volume.
pub fn check_reservable(control: &Control, key: &str, name: &str) -> Result<Arc<Volume>, RpcError> {
    let invalid = |why: String| Err(RpcError::invalid_params(format!("{key}: {why}")));
    if control.failed_volumes.contains_key(name) {
        return invalid(format!("volume {name} is failed"));
    }
    let Some(entry) = control.volumes.get(name) else {
        return invalid(format!("no volume {name}"));
    };
    let volume = entry.volume.clone();
    if volume.composite().is_some() || volume.mirror.is_some() {
        return invalid(format!(
            "{name} is itself a volume set or a mirror, not a plain volume"
        ));
    }
    if let Some(mirror) = super::mirrors::reserved_by(control, name) {
        return invalid(format!("volume {name} is already a leg of mirror {mirror}"));
    }
    if let Some(set) = super::volume_sets::set_of_member(control, name) {
        return invalid(format!(
            "volume {name} is already a member of volume set {set}"
        ));
    }
    if let Some(why) = super::snapshots::shares_extents(&volume) {
        return invalid(format!("volume {name} {why}"));
    }
    if let Some(vpath) = control.vpaths.values().find(|v| v.record.volume == name) {
        return invalid(format!(
            "volume {name} is in use: virtual path {} reaches it",
            vpath.record.id
        ));
    }
    if volume.open_state.open_count() > 0 || volume.is_deleted() {
        return invalid(format!("volume {name} is open or being deleted"));
    }
    Ok(volume)
}

pub fn describe(entry: &VolumeEntry) -> Value {
    let volume = &entry.volume;
    let extents = volume.allocated_extents();
    let mut described = json!({
        "name": volume.name,
        "uuid": entry.record.uuid.to_string(),
        "pool": entry.record.pool,
        "size": volume.size_bytes(),
        "block_size": volume.block_size_bytes,
        "thin": volume.thin,
        "allocated": extents * volume.extent_bytes(),
        "allocated_extents": extents,
        // What the volume promises (its size) and, of what it maps, what other tables map
        // too (snapshots, clones: refcount > 1).
        "provisioned": volume.size_bytes(),
        "connections": volume.open_state.open_count(),
        "qos": entry.record.qos.to_json(),
        "volatile": volume.pool.volatile,
        "shared": volume.shared_extents() * volume.extent_bytes(),
        "read_only": volume.read_only,
    });
    if let Some(object) = described.as_object_mut() {
        let lineage = &entry.record.lineage;
        if let Some(origin) = &lineage.snapshot_of {
            object.insert("snapshot_of".into(), origin.clone().into());
        }
        if let Some(snapshot) = &lineage.clone_of {
            object.insert("clone_of".into(), snapshot.clone().into());
        }
    }
    if let (Some(object), Some((state, note))) = (described.as_object_mut(), condition(volume)) {
        object.insert("state".into(), state.into());
        object.insert("note".into(), note.into());
    }
    described
}

/// What a listing says of a volume whose data is not all there: its state (none: the
/// listing's `online`) and a note for people.
pub fn condition(volume: &Volume) -> Option<(&'static str, String)> {
    if volume.data_lost() {
        return Some((
            "data_lost",
            format!(
                "pool {} had a volatile LUN among persistent ones and lost what it held when the \
                 server stopped: every range no surviving record maps fails with EIO",
                volume.pool.name
            ),
        ));
    }
    volume.started_empty.then(|| {
        (
            "online",
            "volatile: started empty at this start of the server; what it held before is gone"
                .to_string(),
        )
    })
}

fn check_size(size: u64, block_size: u32, extent_bytes: u64) -> Result<(), RpcError> {
    if size == 0 || size % u64::from(block_size) != 0 {
        return Err(RpcError::invalid_params(format!(
            "size: must be a non-zero multiple of block_size {block_size}"
        )));
    }
    if size.div_ceil(extent_bytes) > MAX_VOLUME_EXTENTS {
        return Err(RpcError::invalid_params(format!(
            "size: larger than {MAX_VOLUME_EXTENTS} extents of {extent_bytes} bytes"
        )));
    }
    Ok(())
}

/// Maps every extent in `[from, to)` of a thick volume, as one group commit.
fn provision_range(volume: &Volume, from: u64, to: u64) -> Result<(), RpcError> {
    let wanted: Vec<(&Volume, u64)> = (from..to).map(|extent| (volume, extent)).collect();
    for result in provision(&wanted) {
        result.map_err(|error| {
            RpcError::invalid_params(format!(
                "size: cannot provision the thick volume: {}",
                error_chain(&error)
            ))
        })?;
    }
    Ok(())
}

/// Unmaps every extent of `volume` from `from` on (all of them from 0: a volume or a
/// snapshot dropped); each loses a holder, and those nothing else maps (a snapshot, a clone)
/// are freed (records cleared as one group commit, then their bits).
pub(super) fn release_from(volume: &Volume, from: u64) {
    let map = volume.map();
    let freed: Vec<(u64, Option<ExtentRecord>)> = (from..map.extent_count())
        .map(|extent| map.clear(extent) & !SLOT_SHARED)
        .filter(|&slot| slot != 0)
        .filter(|&slot| volume.pool.refcounts.drop_holder(slot) == Dropped::Last)
        .map(|slot| (slot, None))
        .collect();
    for (&(slot, _), outcome) in freed.iter().zip(volume.pool.commit(&freed)) {
        match outcome {
            Ok(()) => volume.pool.release_extent(slot),
            // The record stays: the extent stays used until a restart finds no table
            // mapping it and frees it.
            Err(error) => log::error!(
                "volume {}: freeing an extent failed: {}",
                volume.name,
                error_chain(&error)
            ),
        }
    }
}

pub fn create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "pool", "size", "block_size", "thin"])?;
    let name = params.name("name")?;
    let pool_name = params.name("pool")?;
    let size = params.u64("size")?;
    let block_size = match params.optional_u64("block_size")? {
        None => 4096,
        Some(b @ (512 | 4096)) => b as u32,
        Some(other) => {
            return Err(RpcError::invalid_params(format!(
                "block_size: {other} is not 512 or 4096"
            )))
        }
    };
    let thin = params.optional_bool("thin")?.unwrap_or(true);
    let uuid = control.new_uuid()?;
    create_with(
        control,
        VolumeRecord {
            name: name.to_string(),
            uuid,
            pool: pool_name.to_string(),
            size,
            block_size,
            thin,
            qos: Default::default(),
            lineage: Default::default(),
        },
    )
}

/// `volume_create`'s checks and work for a plain volume's record, made by `create` or read
/// from a `load_config` document (which keeps the volume's UUID and QoS limits).
pub(super) fn create_with(control: &mut Control, record: VolumeRecord) -> Result<Value, RpcError> {
    let (name, pool_name) = (record.name.clone(), record.pool.clone());
    let (name, pool_name) = (name.as_str(), pool_name.as_str());
    let (size, block_size, thin) = (record.size, record.block_size, record.thin);
    if !matches!(block_size, 512 | 4096) {
        return Err(RpcError::invalid_params(format!(
            "block_size: {block_size} is not 512 or 4096"
        )));
    }
    if control.volumes.contains_key(name) {
        return Err(RpcError::invalid_params(format!(
            "name: volume {name} already exists"
        )));
    }
    if control.volumes.len() >= MAX_VOLUMES {
        return Err(RpcError::invalid_params(format!(
            "name: the server already has {MAX_VOLUMES} volumes"
        )));
    }
    let pool = control
        .pools
        .get(pool_name)
        .ok_or_else(|| RpcError::invalid_params(format!("pool: no pool {pool_name}")))?
        .pool
        .clone();
    check_size(size, block_size, pool.extent_bytes)?;
    let extents = size.div_ceil(pool.extent_bytes);
    if !thin && extents > pool.free_extents() {
        return Err(RpcError::invalid_params(format!(
            "size: a thick volume needs {extents} extents, pool {pool_name} has {} free",
            pool.free_extents()
        )));
    }
    let volume = Arc::new(Volume::new(
        name,
        record.uuid.0,
        pool,
        size,
        block_size,
        thin,
    ));
    // The record first: extent records of a volume without one would be freed at start-up.
    control
        .store
        .put("volume", name, &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    if !thin {
        if let Err(error) = provision_range(&volume, 0, extents) {
            release_from(&volume, 0);
            let _ = control.store.delete("volume", name);
            return Err(error);
        }
    }
    let entry = VolumeEntry { record, volume };
    let described = describe(&entry);
    control.volumes.insert(name.to_string(), entry);
    control.publish();
    log::info!(
        "volume {name} created in pool {pool_name}: {size} bytes, {block_size}-byte blocks, {}",
        if thin { "thin" } else { "thick" }
    );
    Ok(described)
}

pub fn get(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    one_or_all(params, &control.volumes, "volume", describe)
}

pub fn resize(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "size"])?;
    let name = params.name("name")?;
    let size = params.u64("size")?;
    super::mirrors::refuse_reserved(control, "name", name, "resize")?;
    let entry = control
        .volumes
        .get(name)
        .ok_or_else(|| RpcError::invalid_params(format!("name: no volume {name}")))?;
    super::volume_sets::refuse_member(control, "name", name, "resize")?;
    super::volume_sets::refuse_set(control, "name", name, "resize")?;
    let volume = entry.volume.clone();
    if volume.read_only {
        return Err(RpcError::invalid_params(format!(
            "name: {name} is a snapshot: its size is its origin's when it was taken"
        )));
    }
    let current = volume.size_bytes();
    if size < current {
        return Err(RpcError::invalid_params(format!(
            "size: {size} is smaller than the current {current}; volumes only grow"
        )));
    }
    check_size(size, volume.block_size_bytes, volume.extent_bytes())?;
    let old_extents = volume.map().extent_count();
    let new_extents = size.div_ceil(volume.extent_bytes());
    if !volume.thin && new_extents - old_extents > volume.pool.free_extents() {
        return Err(RpcError::invalid_params(format!(
            "size: pool {} has too few free extents to grow the thick volume",
            volume.pool.name
        )));
    }
    let mut record = entry.record.clone();
    record.size = size;
    control
        .store
        .put("volume", name, &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    volume.grow(size);
    if !volume.thin {
        provision_range(&volume, old_extents, new_extents)?;
    }
    if let Some(entry) = control.volumes.get_mut(name) {
        entry.record = record;
    }
    control.publish();
    log::info!("volume {name} resized from {current} to {size} bytes");
    announce_new_size(control, name);
    Ok(control
        .volumes
        .get(name)
        .map(describe)
        .unwrap_or(Value::Null))
}

/// Tells hosts volume `name` has a new size (published already): every NVMe host with a VP
/// to it hears that its namespace changed. (iSCSI LUNs see the size change on their next
/// command and raise CAPACITY DATA HAS CHANGED; NBD clients see it when they connect.)
pub(super) fn announce_new_size(control: &Control, name: &str) {
    if let Some(nvmf) = &control.nvmf {
        for vpath in control.vpaths.values().filter(|v| v.record.volume == name) {
            nvmf.namespace_changed(
                &vpath.record.host,
                crate::target::nvmf::subsystem::nsid_of_lun(vpath.record.lun),
            );
        }
    }
}

pub fn delete(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    let name = params.name("name")?;
    super::volume_sets::refuse_member(control, "name", name, "delete")?;
    super::volume_sets::refuse_set(control, "name", name, "delete")?;
    super::mirrors::refuse_reserved(control, "name", name, "delete")?;
    let entry = control
        .volumes
        .get(name)
        .ok_or_else(|| RpcError::invalid_params(format!("name: no volume {name}")))?;
    // One atomic step: refused while a session has the volume open, and from here on no
    // handshake can open it, so nothing writes into the extents freed below.
    let volume = entry.volume.clone();
    volume.open_state.try_begin_delete().map_err(|still_open| {
        RpcError::invalid_params(format!("name: volume {name} is {still_open}"))
    })?;
    let removed = remove_records(control, name);
    if let Err(error) = removed {
        volume.open_state.cancel_delete();
        return Err(error);
    }
    control.volumes.remove(name);
    control.publish();
    release_from(&volume, 0);
    // After its extents are dropped: a snapshot or clone gone may leave its origin without
    // history, and a TRIM may then free what no other view looks at any more.
    super::snapshots::update_histories(control);
    log::info!("volume {name} deleted");
    Ok(Value::Bool(true))
}

/// Deletes the records of volume `name` and of its virtual paths (none has a connection: the
/// volume is not open).
fn remove_records(control: &mut Control, name: &str) -> Result<(), RpcError> {
    control.remove_vpaths_of(name)?;
    control
        .store
        .delete("volume", name)
        .map_err(|error| RpcError::internal(error_chain(&error)))
}

/// SPDK's `bdev_set_qos_limit {name, rw_ios_per_sec?, rw_mbytes_per_sec?, r_mbytes_per_sec?,
/// w_mbytes_per_sec?}`: limits on the volume as a whole, on top of its VPs' domains, shared
/// among the VPs to it by demand and their domains' priority. 0 removes a limit.
pub fn set_qos_limit(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let mut known = vec!["name"];
    known.extend(QosLimits::NAMES);
    let raw = params.clone();
    let params = Params::new(params, &known)?;
    let name = params.name("name")?;
    if control.mirrors.contains_key(name) {
        return Err(RpcError::invalid_params(format!(
            "name: {name} is a mirror: QoS limits on mirrors are not supported yet"
        )));
    }
    let entry = control
        .volumes
        .get(name)
        .ok_or_else(|| RpcError::invalid_params(format!("name: no volume {name}")))?;
    let object = raw
        .as_ref()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if !QosLimits::NAMES.iter().any(|key| object.contains_key(*key)) {
        return Err(RpcError::invalid_params(format!(
            "rw_ios_per_sec: give at least one of {}",
            QosLimits::NAMES.join(", ")
        )));
    }
    let mut record = entry.record.clone();
    record
        .qos
        .merge(&object, "")
        .map_err(RpcError::invalid_params)?;
    // A volume set keeps its limits in its own record.
    if !super::volume_sets::put_qos(control, name, &record.qos)? {
        control
            .store
            .put("volume", name, &record)
            .map_err(|error| RpcError::internal(error_chain(&error)))?;
    }
    if let Some(entry) = control.volumes.get_mut(name) {
        entry.record = record;
    }
    control.recompute_rates();
    control.publish();
    log::info!("volume {name}: QoS limits set");
    Ok(Value::Bool(true))
}
