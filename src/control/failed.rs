//! What a failed LUN takes down, and the pool and volume methods' view of it.
//!
//! A pool with a failed LUN comes up failed at start-up, and its volumes with it; Control keeps
//! them apart ([`FailedPool`], [`FailedVolume`]) so that nothing on the data path ever meets
//! them. The pool and volume methods reach pools.rs and volumes.rs through these guards, which
//! list the failed ones, let them be deleted, and refuse what would reuse their names or build
//! on them; everything else passes through unchanged.

use super::luns::{error_chain, failure};
use super::params::Params;
use super::{pools, volumes, Control, FailedPool, FailedVolume};
use crate::rpc::RpcError;
use serde_json::{json, Value};

/// The `name` parameter as given, before the method validates it.
fn raw_name<'a>(params: &'a Option<Value>, key: &str) -> Option<&'a str> {
    params.as_ref()?.get(key)?.as_str()
}

/// Adds `"state": "online"` to the live entries of a listing, then appends the failed ones.
fn with_failed(listing: Value, failed: impl Iterator<Item = Value>) -> Value {
    let mut items = match listing {
        Value::Array(items) => items,
        other => vec![other],
    };
    for item in &mut items {
        if let Some(object) = item.as_object_mut() {
            object
                .entry("state")
                .or_insert_with(|| Value::from("online"));
        }
    }
    items.extend(failed);
    Value::Array(items)
}

fn describe_failed_pool(control: &Control, failed: &FailedPool) -> Value {
    let volumes = control
        .failed_volumes
        .values()
        .filter(|v| v.record.pool == failed.record.name)
        .count();
    json!({
        "name": failed.record.name,
        "uuid": failed.record.uuid.to_string(),
        "extent_size": failed.record.extent_size,
        "luns": failed.record.luns,
        "volumes": volumes,
        "state": "failed",
        "reason": failed.reason,
    })
}

fn describe_failed_volume(failed: &FailedVolume) -> Value {
    json!({
        "name": failed.record.name,
        "uuid": failed.record.uuid.to_string(),
        "pool": failed.record.pool,
        "size": failed.record.size,
        "block_size": failed.record.block_size,
        "thin": failed.record.thin,
        "connections": 0,
        "state": "failed",
        "reason": failed.reason,
    })
}

pub fn pool_get(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    if let Some(failed) = raw_name(&params, "name").and_then(|n| control.failed_pools.get(n)) {
        Params::new(params, &["name"])?;
        return Ok(json!([describe_failed_pool(control, failed)]));
    }
    let named = raw_name(&params, "name").is_some();
    let listing = pools::get(control, params)?;
    let failed: Vec<Value> = if named {
        Vec::new()
    } else {
        control
            .failed_pools
            .values()
            .map(|f| describe_failed_pool(control, f))
            .collect()
    };
    Ok(with_failed(listing, failed.into_iter()))
}

pub fn pool_create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    if let Some(failed) = raw_name(&params, "name").and_then(|n| control.failed_pools.get(n)) {
        return Err(RpcError::invalid_params(format!(
            "name: pool {} already exists (failed: {})",
            failed.record.name, failed.reason
        )));
    }
    let listed = params
        .as_ref()
        .and_then(|p| p.get("luns"))
        .and_then(Value::as_array);
    for lun_name in listed.into_iter().flatten().filter_map(Value::as_str) {
        let Some(entry) = control.luns.get(lun_name) else {
            continue;
        };
        if let Some(wrapper) = &entry.wrapped_by {
            return Err(RpcError::invalid_params(format!(
                "luns: LUN {lun_name} is the base of fault LUN {wrapper}"
            )));
        }
        if entry.pool.is_none() {
            if let Some(reason) = failure(&control.luns, entry) {
                return Err(RpcError::invalid_params(format!(
                    "luns: LUN {lun_name} is failed: {reason}"
                )));
            }
        }
    }
    pools::create(control, params)
}

pub fn pool_delete(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let Some(name) = raw_name(&params, "name")
        .filter(|n| control.failed_pools.contains_key(*n))
        .map(str::to_string)
    else {
        return pools::delete(control, params);
    };
    Params::new(params, &["name"])?;
    let volumes = control
        .failed_volumes
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
        .delete("pool", &name)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    if let Some(failed) = control.failed_pools.remove(&name) {
        for lun_name in &failed.record.luns {
            if let Some(lun) = control.luns.get_mut(lun_name) {
                lun.pool = None;
            }
        }
    }
    log::info!("failed pool {name} deleted");
    Ok(Value::Bool(true))
}

pub fn volume_get(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    if let Some(failed) = raw_name(&params, "name").and_then(|n| control.failed_volumes.get(n)) {
        Params::new(params, &["name"])?;
        return Ok(json!([describe_failed_volume(failed)]));
    }
    let named = raw_name(&params, "name").is_some();
    let listing = volumes::get(control, params)?;
    let failed: Vec<Value> = if named {
        Vec::new()
    } else {
        control
            .failed_volumes
            .values()
            .map(describe_failed_volume)
            .collect()
    };
    Ok(with_failed(listing, failed.into_iter()))
}

pub fn volume_create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    if let Some(failed) = raw_name(&params, "name").and_then(|n| control.failed_volumes.get(n)) {
        return Err(RpcError::invalid_params(format!(
            "name: volume {} already exists (failed: {})",
            failed.record.name, failed.reason
        )));
    }
    if let Some(failed) = raw_name(&params, "pool").and_then(|n| control.failed_pools.get(n)) {
        return Err(RpcError::invalid_params(format!(
            "pool: pool {} is failed: {}",
            failed.record.name, failed.reason
        )));
    }
    volumes::create(control, params)
}

pub fn volume_resize(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    if let Some(failed) = raw_name(&params, "name").and_then(|n| control.failed_volumes.get(n)) {
        return Err(RpcError::invalid_params(format!(
            "name: volume {} is failed: {}",
            failed.record.name, failed.reason
        )));
    }
    volumes::resize(control, params)
}

pub fn volume_delete(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let Some(name) = raw_name(&params, "name")
        .filter(|n| control.failed_volumes.contains_key(*n))
        .map(str::to_string)
    else {
        return volumes::delete(control, params);
    };
    Params::new(params, &["name"])?;
    super::volume_sets::refuse_member(control, "name", &name, "delete")?;
    super::volume_sets::refuse_set(control, "name", &name, "delete")?;
    // Its virtual paths were never brought up; their records go with it.
    control.delete_down_vpath_records_of(&name)?;
    control
        .store
        .delete("volume", &name)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    control.failed_volumes.remove(&name);
    log::info!("failed volume {name} deleted");
    Ok(Value::Bool(true))
}
