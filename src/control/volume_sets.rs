//! `volume_set_*` methods: volumes made of member volumes, concatenated or striped (see
//! `volume::set` for the rules and `volume::composite` for the data path).
//!
//! A set is a volume like any other to the rest of the control thread: it is in
//! [`Control::volumes`] (so `vpath_create`, `volume_get_volumes`, statistics and QoS work on
//! it), with a volume record made up from its set record (no pool of its own: `pool` is
//! empty). Its set record is what is stored (kind `volume_set`), and it is restored after the
//! volumes. Its members stay volumes but are reserved: no virtual path, resize or delete while
//! in a set, and in at most one set.

use super::params::{one_or_all, Params};
use super::{Control, FailedVolume, VolumeEntry};
use crate::logger::error_chain;
use crate::rpc::RpcError;
use crate::store::records::{VolumeRecord, VolumeSetRecord};
use crate::volume::set::{check_stripe_size, SetLayout};
use crate::volume::Volume;
use serde_json::{json, Value};
use std::sync::Arc;

/// The kind of a set's record in the store.
const KIND: &str = "volume_set";

/// The set volume `name` is a member of, if any.
pub fn set_of_member<'a>(control: &'a Control, name: &str) -> Option<&'a str> {
    control
        .volume_sets
        .values()
        .find(|set| set.members.iter().any(|m| m == name))
        .map(|set| set.name.as_str())
}

/// Refuses `what` (an operation, for the message) on a volume that is a member of a set, under
/// parameter `key`.
pub fn refuse_member(control: &Control, key: &str, name: &str, what: &str) -> Result<(), RpcError> {
    match set_of_member(control, name) {
        Some(set) => Err(RpcError::invalid_params(format!(
            "{key}: volume {name} is a member of volume set {set}: cannot {what} it"
        ))),
        None => Ok(()),
    }
}

/// Refuses `what` on a volume that is a set (the set's own methods do it), under `key`.
pub fn refuse_set(control: &Control, key: &str, name: &str, what: &str) -> Result<(), RpcError> {
    if control.volume_sets.contains_key(name) {
        return Err(RpcError::invalid_params(format!(
            "{key}: {name} is a volume set: cannot {what} it (see volume_set_*)"
        )));
    }
    Ok(())
}

/// The volume record a set stands in [`Control::volumes`] with.
fn volume_record(record: &VolumeSetRecord, volume: &Volume) -> VolumeRecord {
    VolumeRecord {
        name: record.name.clone(),
        uuid: record.uuid,
        pool: String::new(),
        size: volume.size_bytes(),
        block_size: volume.block_size_bytes,
        thin: volume.thin,
        qos: record.qos,
        lineage: Default::default(),
    }
}

/// Builds the set's volume from its members (in order).
fn build(record: &VolumeSetRecord, members: &[Arc<Volume>]) -> Result<Volume, String> {
    let block = members.first().map_or(4096, |m| m.block_size_bytes);
    let stripe = record.stripe_size.unwrap_or(0);
    Volume::new_composite(
        &record.name,
        record.uuid.0,
        record.layout.composite(stripe),
        block,
        members,
    )
    .map_err(|error| error.to_string())
}

/// Checks that volume `name` may become a member (of a set of `block` byte blocks when
/// known); its volume.
fn check_member(
    control: &Control,
    key: &str,
    name: &str,
    block: Option<u32>,
) -> Result<Arc<Volume>, RpcError> {
    let volume = super::volumes::check_reservable(control, key, name)?;
    if let Some(block) = block {
        if volume.block_size_bytes != block {
            return Err(RpcError::invalid_params(format!(
                "{key}: volume {name} has {} byte blocks, the set {block}",
                volume.block_size_bytes
            )));
        }
    }
    Ok(volume)
}

fn describe(control: &Control, record: &VolumeSetRecord) -> Value {
    let volume = control.volumes.get(&record.name).map(|e| e.volume.clone());
    let size = volume.as_ref().map_or(0, |v| v.size_bytes());
    let mut described = json!({
        "name": record.name,
        "uuid": record.uuid.to_string(),
        "layout": record.layout.as_str(),
        "members": record.members,
        "size": size,
        "block_size": volume.as_ref().map(|v| v.block_size_bytes),
        "allocated": volume.as_ref().map_or(0, |v| v.allocated_bytes()),
        "connections": volume.as_ref().map_or(0, |v| v.open_state.open_count()),
    });
    if let (Some(object), Some(stripe)) = (described.as_object_mut(), record.stripe_size) {
        object.insert("stripe_size".into(), stripe.into());
    }
    if let (Some(object), Some(failed)) = (
        described.as_object_mut(),
        control.failed_volumes.get(&record.name),
    ) {
        object.insert("state".into(), "failed".into());
        object.insert("reason".into(), failed.reason.clone().into());
    }
    described
}

/// `volume_set_create {name, members, layout?, stripe_size?}`: a new set of existing plain
/// volumes (their data is kept, at the set's addresses of its layout).
pub fn create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "members", "layout", "stripe_size"])?;
    let name = params.name("name")?;
    let members = params.name_list("members")?;
    let layout = match params.optional_str("layout")? {
        None => SetLayout::Concat,
        Some(text) => SetLayout::parse(text).ok_or_else(|| {
            RpcError::invalid_params(format!("layout: {text:?} is not concat or stripe"))
        })?,
    };
    let stripe_given = params.optional_u64("stripe_size")?;
    if control.volumes.contains_key(name) || control.failed_volumes.contains_key(name) {
        return Err(RpcError::invalid_params(format!(
            "name: volume {name} already exists"
        )));
    }
    if control.volumes.len() >= crate::constants::MAX_VOLUMES {
        return Err(RpcError::invalid_params(format!(
            "name: the server already has {} volumes",
            crate::constants::MAX_VOLUMES
        )));
    }
    if members.len() > crate::constants::MAX_COMPOSITE_PARTS {
        return Err(RpcError::invalid_params(format!(
            "members: at most {} members",
            crate::constants::MAX_COMPOSITE_PARTS
        )));
    }
    if let Some(twice) = members
        .iter()
        .enumerate()
        .find(|(i, m)| members[..*i].contains(m))
    {
        return Err(RpcError::invalid_params(format!(
            "members: volume {} is given twice",
            twice.1
        )));
    }
    let mut volumes: Vec<Arc<Volume>> = Vec::with_capacity(members.len());
    for member in &members {
        let block = volumes.first().map(|v| v.block_size_bytes);
        volumes.push(check_member(control, "members", member, block)?);
    }
    let block = volumes.first().map_or(4096, |v| v.block_size_bytes);
    let stripe_size = match layout {
        SetLayout::Concat if stripe_given.is_some() => {
            return Err(RpcError::invalid_params(
                "stripe_size: only a stripe set has one",
            ))
        }
        SetLayout::Concat => None,
        SetLayout::Stripe => {
            let size = check_stripe_size(stripe_given, block)
                .map_err(|error| RpcError::invalid_params(format!("stripe_size: {error}")))?;
            if let Some(small) = volumes.iter().find(|v| v.size_bytes() < size) {
                return Err(RpcError::invalid_params(format!(
                    "stripe_size: {size} is larger than member {} ({} bytes)",
                    small.name,
                    small.size_bytes()
                )));
            }
            Some(size)
        }
    };
    let record = VolumeSetRecord {
        name: name.to_string(),
        uuid: control.new_uuid()?,
        layout,
        stripe_size,
        members,
        qos: Default::default(),
    };
    let volume = Arc::new(
        build(&record, &volumes)
            .map_err(|why| RpcError::invalid_params(format!("members: {why}")))?,
    );
    control
        .store
        .put(KIND, name, &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    log::info!(
        "volume set {name} created: {} of {}, {} bytes",
        layout.as_str(),
        record.members.join(", "),
        volume.size_bytes()
    );
    let entry = VolumeEntry {
        record: volume_record(&record, &volume),
        volume,
    };
    control.volumes.insert(name.to_string(), entry);
    control.volume_sets.insert(name.to_string(), record);
    control.publish();
    Ok(control
        .volume_sets
        .get(name)
        .map(|r| describe(control, r))
        .unwrap_or(Value::Null))
}

/// `volume_set_add_member {set, volume}`: appends a volume to a concatenation, online: hosts
/// see the set grow as on `volume_resize`.
pub fn add_member(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["set", "volume"])?;
    let set_name = params.name("set")?;
    let member = params.name("volume")?;
    let record = control
        .volume_sets
        .get(set_name)
        .cloned()
        .ok_or_else(|| RpcError::invalid_params(format!("set: no volume set {set_name}")))?;
    let set = control
        .volumes
        .get(set_name)
        .map(|e| e.volume.clone())
        .ok_or_else(|| RpcError::invalid_params(format!("set: volume set {set_name} is failed")))?;
    if record.layout != SetLayout::Concat {
        return Err(RpcError::invalid_params(format!(
            "set: volume set {set_name} is a stripe: only a concatenation grows (a new member \
             would move almost every stripe)"
        )));
    }
    if record.members.len() >= crate::constants::MAX_COMPOSITE_PARTS {
        return Err(RpcError::invalid_params(format!(
            "set: volume set {set_name} has {} members already",
            record.members.len()
        )));
    }
    let volume = check_member(control, "volume", member, Some(set.block_size_bytes))?;
    let mut grown = record.clone();
    grown.members.push(member.to_string());
    control
        .store
        .put(KIND, set_name, &grown)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    let old_size = set.size_bytes();
    if let Err(error) = set.append_part(&volume) {
        // Nothing appended: the old record again.
        if let Err(undo) = control.store.put(KIND, set_name, &record) {
            log::error!(
                "volume set {set_name}: cannot restore its record: {}",
                error_chain(&undo)
            );
        }
        return Err(RpcError::invalid_params(format!("volume: {error}")));
    }
    if let Some(entry) = control.volumes.get_mut(set_name) {
        entry.record.size = set.size_bytes();
    }
    control.volume_sets.insert(set_name.to_string(), grown);
    control.publish();
    log::info!(
        "volume set {set_name}: volume {member} added, {old_size} -> {} bytes",
        set.size_bytes()
    );
    super::volumes::announce_new_size(control, set_name);
    Ok(control
        .volume_sets
        .get(set_name)
        .map(|r| describe(control, r))
        .unwrap_or(Value::Null))
}

/// `volume_set_get_sets {name?}`.
pub fn get(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    one_or_all(params, &control.volume_sets, "volume set", |r| {
        describe(control, r)
    })
}

/// `volume_set_delete {name}`: the set is gone (with its virtual paths; refused while a
/// session has it open), its members are plain volumes again with their data.
pub fn delete(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    let name = params.name("name")?;
    if !control.volume_sets.contains_key(name) {
        return Err(RpcError::invalid_params(format!(
            "name: no volume set {name}"
        )));
    }
    let volume = control.volumes.get(name).map(|e| e.volume.clone());
    if let Some(volume) = &volume {
        volume.open_state.try_begin_delete().map_err(|still_open| {
            RpcError::invalid_params(format!("name: volume set {name} is {still_open}"))
        })?;
    }
    let removed = remove_records(control, name);
    if let Err(error) = removed {
        if let Some(volume) = &volume {
            volume.open_state.cancel_delete();
        }
        return Err(error);
    }
    control.volumes.remove(name);
    control.failed_volumes.remove(name);
    control.volume_sets.remove(name);
    control.publish();
    log::info!("volume set {name} deleted; its members are plain volumes again");
    Ok(Value::Bool(true))
}

/// Deletes the set's virtual paths (live or, for a failed set, only recorded) and its record.
fn remove_records(control: &mut Control, name: &str) -> Result<(), RpcError> {
    control.remove_vpaths_of(name)?;
    // A failed set's virtual paths were never brought up: only their records are left.
    control.delete_down_vpath_records_of(name)?;
    control
        .store
        .delete(KIND, name)
        .map_err(|error| RpcError::internal(error_chain(&error)))
}

/// Stores a set's QoS limits (`bdev_set_qos_limit` on a set); false if `name` is no set.
pub fn put_qos(
    control: &mut Control,
    name: &str,
    qos: &crate::domain::capabilities::QosLimits,
) -> Result<bool, RpcError> {
    let Some(mut record) = control.volume_sets.get(name).cloned() else {
        return Ok(false);
    };
    record.qos = *qos;
    control
        .store
        .put(KIND, name, &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    control.volume_sets.insert(name.to_string(), record);
    Ok(true)
}

impl Control {
    /// Restores the volume sets, after the volumes. A set with a member that is failed is
    /// listed as failed (not served, deletable); a member without a record is damage.
    pub(super) fn restore_volume_sets(&mut self) -> Result<(), super::ControlError> {
        for record in self.store.list::<VolumeSetRecord>(KIND)? {
            let path = self.store.record_path(KIND, &record.name);
            let inconsistent = |detail: String| super::ControlError::Inconsistent {
                what: format!("volume set {} ({})", record.name, path.display()),
                detail,
            };
            if self.volumes.contains_key(&record.name)
                || self.failed_volumes.contains_key(&record.name)
            {
                return Err(inconsistent(format!(
                    "a volume is named {} too",
                    record.name
                )));
            }
            let mut members = Vec::with_capacity(record.members.len());
            let mut failed = None;
            for name in &record.members {
                match (self.volumes.get(name), self.failed_volumes.get(name)) {
                    (Some(entry), _) => members.push(entry.volume.clone()),
                    (None, Some(down)) => {
                        failed.get_or_insert_with(|| {
                            format!("member {name} is failed: {}", down.reason)
                        });
                    }
                    (None, None) => {
                        return Err(inconsistent(format!("its member {name} has no record")))
                    }
                }
            }
            if let Some(reason) = failed {
                log::error!(
                    "volume set {} is failed and not served: {reason}",
                    record.name
                );
                let volume_record = VolumeRecord {
                    name: record.name.clone(),
                    uuid: record.uuid,
                    pool: String::new(),
                    size: 0,
                    block_size: 0,
                    thin: true,
                    qos: record.qos,
                    lineage: Default::default(),
                };
                self.failed_volumes.insert(
                    record.name.clone(),
                    FailedVolume {
                        record: volume_record,
                        reason,
                    },
                );
                self.volume_sets.insert(record.name.clone(), record);
                continue;
            }
            let volume = Arc::new(build(&record, &members).map_err(inconsistent)?);
            log::info!(
                "volume set {} restored: {} of {} members, {} bytes",
                record.name,
                record.layout.as_str(),
                members.len(),
                volume.size_bytes()
            );
            self.volumes.insert(
                record.name.clone(),
                VolumeEntry {
                    record: volume_record(&record, &volume),
                    volume,
                },
            );
            self.volume_sets.insert(record.name.clone(), record);
        }
        Ok(())
    }
}
