//! `pool_*` methods.

use super::luns::error_chain;
use super::params::{one_or_all, Params};
use super::{Control, PoolEntry};
use crate::backend::Lun;
use crate::constants::MAX_POOL_THRESHOLD_PERCENT;
use crate::constants::{
    DEFAULT_EXTENT_BYTES, MAX_EXTENT_BYTES, MAX_LUNS_PER_POOL, MAX_POOLS, MIN_EXTENT_BYTES,
};
use crate::pool::on_disk::{MAX_JOURNAL_BLOCKS, MIN_JOURNAL_BLOCKS};
use crate::pool::threshold;
use crate::pool::Pool;
use crate::rpc::RpcError;
use crate::store::records::PoolRecord;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn describe(control: &Control, entry: &PoolEntry) -> Value {
    let pool = &entry.pool;
    let members = || {
        control
            .volumes
            .values()
            .filter(|v| v.record.pool == entry.record.name)
    };
    let volumes = members().count();
    let space = space_of(entry, members().map(|v| v.volume.size_bytes()).sum());
    let mut described = json!({
        "name": entry.record.name,
        "uuid": entry.record.uuid.to_string(),
        "volatile": pool.volatile,
        "extent_size": pool.extent_bytes,
        "luns": entry.record.luns,
        "total_extents": pool.total_extents(),
        "free_extents": pool.free_extents(),
        "capacity": pool.total_extents() * pool.extent_bytes,
        "free": pool.free_extents() * pool.extent_bytes,
        "volumes": volumes,
        "provisioned": space.provisioned_bytes,
        "allocated": space.allocated_bytes,
        "shared": space.shared_bytes,
        "threshold": entry.record.threshold,
        "over_threshold": space.over_threshold,
        "journal": pool.luns.iter().map(|member| {
            let stats = member.journal.stats();
            json!({
                "lun": member.lun.info().name,
                "blocks": member.layout.journal_blocks,
                "next_sequence": stats.next_sequence,
                "checkpoint_sequence": stats.checkpoint_sequence,
                "epoch": stats.epoch,
                "dirty_records": stats.dirty_records,
                "commits": stats.commits,
                "checkpoints": stats.checkpoints,
                "recovery": member.recovery.map(|r| json!({
                    "checkpoint_sequence": r.checkpoint_sequence,
                    "replayed_blocks": r.replayed_blocks,
                    "replayed_entries": r.replayed_entries,
                    "replay_us": r.elapsed_us,
                    "end": r.end.to_string(),
                })),
            })
        }).collect::<Vec<_>>(),
    });
    let condition = match pool.lost_member() {
        Some(member) => Some((
            "data_lost",
            format!(
                "LUN {} is volatile but the pool is persistent (made before mixing was refused): \
                 what it held was lost when the server stopped; ranges of the pool's volumes \
                 that no surviving record maps fail with EIO",
                pool.luns[member].lun.info().name
            ),
        )),
        None => pool.started_empty.then(|| {
            (
                "online",
                "volatile: started empty at this start of the server; what its volumes held \
                 before is gone"
                    .to_string(),
            )
        }),
    };
    if let (Some(object), Some((state, note))) = (described.as_object_mut(), condition) {
        object.insert("state".into(), state.into());
        object.insert("note".into(), note.into());
    }
    described
}

/// How much of a pool is promised and how much is used.
pub struct Space {
    /// What the pool's volumes promise: the sum of their sizes (thin and thick).
    pub provisioned_bytes: u64,
    /// Extents in use, in bytes (by volumes, and orphans not yet freed).
    pub allocated_bytes: u64,
    /// Extents more than one volume, snapshot or clone maps (refcount > 1).
    pub shared_bytes: u64,
    /// Whether allocation has reached the pool's threshold.
    pub over_threshold: bool,
}

/// The space figures of `entry`, whose volumes' sizes add up to `provisioned_bytes`.
pub fn space_of(entry: &PoolEntry, provisioned_bytes: u64) -> Space {
    let pool = &entry.pool;
    let total = pool.total_extents();
    let allocated = total.saturating_sub(pool.free_extents());
    Space {
        provisioned_bytes,
        allocated_bytes: allocated * pool.extent_bytes,
        shared_bytes: pool.refcounts.shared_extents() * pool.extent_bytes,
        over_threshold: threshold::is_over(allocated, total, entry.record.threshold),
    }
}

/// `pool_set_threshold {pool, percent}`: the allocation, in percent of capacity (1 to 100),
/// past which the control cycle warns; kept in the pool's record.
pub fn set_threshold(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["pool", "percent"])?;
    let name = params.name("pool")?;
    let percent = params.u64("percent")?;
    if !threshold::is_valid(percent) {
        return Err(RpcError::invalid_params(format!(
            "percent: {percent} is not between 1 and {MAX_POOL_THRESHOLD_PERCENT}"
        )));
    }
    if let Some(failed) = control.failed_pools.get(name) {
        return Err(RpcError::invalid_params(format!(
            "pool: pool {name} is failed: {}",
            failed.reason
        )));
    }
    let entry = control
        .pools
        .get(name)
        .ok_or_else(|| RpcError::invalid_params(format!("pool: no pool {name}")))?;
    let mut record = entry.record.clone();
    record.threshold = percent as u8;
    control
        .store
        .put("pool", name, &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    if let Some(entry) = control.pools.get_mut(name) {
        entry.record = record;
    }
    log::info!("pool {name}: space threshold set to {percent}%");
    let entry = control
        .pools
        .get(name)
        .ok_or_else(|| RpcError::internal(format!("pool {name} vanished")))?;
    Ok(describe(control, entry))
}

/// Once per control cycle: logs a warning for each pool whose allocation crossed its
/// threshold since the last look, and a note for each that fell back below it.
pub fn watch_thresholds(control: &mut Control) {
    let mut provisioned: std::collections::BTreeMap<&str, u64> = Default::default();
    for volume in control.volumes.values() {
        *provisioned.entry(volume.record.pool.as_str()).or_default() += volume.volume.size_bytes();
    }
    for (name, entry) in control.pools.iter_mut() {
        let space = space_of(entry, provisioned.get(name.as_str()).copied().unwrap_or(0));
        let capacity = entry.pool.total_extents() * entry.pool.extent_bytes;
        match entry.threshold_watch.observe(space.over_threshold) {
            Some(threshold::Crossing::Above) => log::warn!(
                "pool {name}: {} of {capacity} bytes allocated, past its {}% threshold \
                 ({} bytes provisioned); writes that need a new extent fail once it is full",
                space.allocated_bytes,
                entry.record.threshold,
                space.provisioned_bytes
            ),
            Some(threshold::Crossing::Below) => log::info!(
                "pool {name}: {} of {capacity} bytes allocated, back below its {}% threshold",
                space.allocated_bytes,
                entry.record.threshold
            ),
            None => {}
        }
    }
}

/// The rule that keeps a restart from silently zeroing data: a pool is either volatile (only
/// RAM or null LUNs; it starts empty at every start of the server) or persistent (no volatile
/// LUN). Names the first volatile LUN when `luns` mixes them.
fn check_not_mixed(lun_names: &[String], luns: &[Arc<dyn Lun>]) -> Result<(), RpcError> {
    let volatile = luns.iter().position(|lun| !lun.is_persistent());
    let persistent = luns.iter().position(|lun| lun.is_persistent());
    match (volatile, persistent) {
        (Some(v), Some(p)) => Err(RpcError::invalid_params(format!(
            "luns: LUN {} is volatile (its content is lost when the server stops) and LUN {} is \
             persistent: a pool is either volatile (only mem or null LUNs) or persistent",
            lun_names[v], lun_names[p]
        ))),
        _ => Ok(()),
    }
}

pub fn create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "luns", "extent_size", "journal_blocks"])?;
    let name = params.name("name")?;
    let lun_names = params.name_list("luns")?;
    let extent_size = params
        .optional_u64("extent_size")?
        .unwrap_or(DEFAULT_EXTENT_BYTES);
    if !extent_size.is_power_of_two()
        || !(MIN_EXTENT_BYTES..=MAX_EXTENT_BYTES).contains(&extent_size)
    {
        return Err(RpcError::invalid_params(format!(
            "extent_size: {extent_size} is not a power of two between {MIN_EXTENT_BYTES} and {MAX_EXTENT_BYTES}"
        )));
    }
    let journal_blocks = params.optional_u64("journal_blocks")?;
    if let Some(blocks) = journal_blocks {
        if !(MIN_JOURNAL_BLOCKS..=MAX_JOURNAL_BLOCKS).contains(&blocks) {
            return Err(RpcError::invalid_params(format!(
                "journal_blocks: {blocks} is not between {MIN_JOURNAL_BLOCKS} and {MAX_JOURNAL_BLOCKS}"
            )));
        }
    }
    if control.pools.contains_key(name) {
        return Err(RpcError::invalid_params(format!(
            "name: pool {name} already exists"
        )));
    }
    if control.pools.len() >= MAX_POOLS {
        return Err(RpcError::invalid_params(format!(
            "name: the server already has {MAX_POOLS} pools"
        )));
    }
    if lun_names.len() > MAX_LUNS_PER_POOL {
        return Err(RpcError::invalid_params(format!(
            "luns: at most {MAX_LUNS_PER_POOL} LUNs per pool"
        )));
    }
    let mut luns = Vec::with_capacity(lun_names.len());
    for (index, lun_name) in lun_names.iter().enumerate() {
        if lun_names[..index].contains(lun_name) {
            return Err(RpcError::invalid_params(format!(
                "luns: {lun_name} is listed twice"
            )));
        }
        let entry = control
            .luns
            .get(lun_name)
            .ok_or_else(|| RpcError::invalid_params(format!("luns: no LUN {lun_name}")))?;
        if let Some(pool) = &entry.pool {
            return Err(RpcError::invalid_params(format!(
                "luns: LUN {lun_name} is already in pool {pool}"
            )));
        }
        luns.push(entry.lun.clone());
    }
    check_not_mixed(&lun_names, &luns)?;
    let uuid = control.new_uuid()?;
    let pool =
        Pool::create(name, uuid.0, extent_size, journal_blocks, luns).map_err(
            |error| match error {
                crate::pool::PoolError::Format { .. } => {
                    RpcError::invalid_params(format!("luns: {}", error_chain(&error)))
                }
                other => RpcError::internal(error_chain(&other)),
            },
        )?;
    let record = PoolRecord {
        name: name.to_string(),
        uuid,
        extent_size,
        luns: lun_names.clone(),
        threshold: crate::pool::threshold::default_percent(),
    };
    if let Err(error) = control.store.put("pool", name, &record) {
        let _ = pool.wipe();
        return Err(RpcError::internal(error_chain(&error)));
    }
    for lun_name in &lun_names {
        if let Some(entry) = control.luns.get_mut(lun_name) {
            entry.pool = Some(name.to_string());
        }
    }
    if pool.volatile {
        log::warn!(
            "pool {name} is volatile (RAM LUNs only): it and its volumes start empty at every \
             start of the server"
        );
    }
    let entry = PoolEntry {
        record,
        pool: Arc::new(pool),
        threshold_watch: Default::default(),
    };
    let described = describe(control, &entry);
    control.pools.insert(name.to_string(), entry);
    log::info!(
        "pool {name} created from {} LUNs, {extent_size}-byte extents",
        lun_names.len()
    );
    Ok(described)
}

pub fn get(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    one_or_all(params, &control.pools, "pool", |entry| {
        describe(control, entry)
    })
}

pub fn delete(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    let name = params.name("name")?;
    let entry = control
        .pools
        .get(name)
        .ok_or_else(|| RpcError::invalid_params(format!("name: no pool {name}")))?;
    let volumes = control
        .volumes
        .values()
        .filter(|v| v.record.pool == name)
        .count();
    if volumes > 0 {
        return Err(RpcError::invalid_params(format!(
            "name: pool {name} still has {volumes} volumes"
        )));
    }
    control
        .store
        .delete("pool", name)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    if let Err(error) = entry.pool.wipe() {
        log::warn!(
            "pool {name}: could not erase the superblocks: {}",
            error_chain(&error)
        );
    }
    let lun_names = entry.record.luns.clone();
    control.pools.remove(name);
    for lun_name in lun_names {
        if let Some(lun) = control.luns.get_mut(&lun_name) {
            lun.pool = None;
        }
    }
    log::info!("pool {name} deleted");
    Ok(Value::Bool(true))
}
