//! `lun_*` methods.

use super::params::Params;
use super::{Control, LunEntry};
use crate::backend::{open_lun, LunKind, LunSpec};
use crate::constants::MAX_LUNS;
use crate::rpc::RpcError;
use crate::store::records::LunRecord;
use serde_json::{json, Value};
use std::path::PathBuf;

pub fn describe(entry: &LunEntry) -> Value {
    let info = entry.lun.info();
    json!({
        "name": info.name,
        "uuid": entry.record.uuid.to_string(),
        "kind": info.kind.as_str(),
        "path": info.path,
        "size": info.size_bytes,
        "block_size": info.block_size_bytes,
        "speed_class": info.speed_class.as_str(),
        "direct_io": info.direct_io,
        "persistent": entry.lun.is_persistent(),
        "pool": entry.pool,
        "state": "online",
    })
}

pub fn create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "kind", "path", "size", "block_size"])?;
    let name = params.name("name")?;
    let kind_text = params.str("kind")?;
    let kind = LunKind::parse(kind_text).ok_or_else(|| {
        RpcError::invalid_params(format!(
            "kind: {kind_text:?} is not one of mem, file, blockdev"
        ))
    })?;
    let block_size = match params.optional_u64("block_size")? {
        None => 512,
        Some(b @ (512 | 4096)) => b as u32,
        Some(other) => {
            return Err(RpcError::invalid_params(format!(
                "block_size: {other} is not 512 or 4096"
            )))
        }
    };
    let size = params.optional_u64("size")?;
    if control.luns.contains_key(name) {
        return Err(RpcError::invalid_params(format!(
            "name: LUN {name} already exists"
        )));
    }
    if control.luns.len() >= MAX_LUNS {
        return Err(RpcError::invalid_params(format!(
            "name: the server already has {MAX_LUNS} LUNs"
        )));
    }
    let path = match (kind, params.optional_str("path")?) {
        (LunKind::Mem, Some(_)) => {
            return Err(RpcError::invalid_params("path: a mem LUN has no path"))
        }
        (LunKind::Mem, None) => None,
        (LunKind::File, None) => Some(control.state_dir.join("luns").join(format!("{name}.img"))),
        (LunKind::Blockdev, None) => {
            return Err(RpcError::invalid_params(
                "path: required for a blockdev LUN",
            ))
        }
        (_, Some(path)) => Some(PathBuf::from(path)),
    };
    if kind == LunKind::Mem && size.is_none() {
        return Err(RpcError::invalid_params("size: required for a mem LUN"));
    }
    if let Some(size) = size {
        if size == 0 || size % u64::from(block_size) != 0 {
            return Err(RpcError::invalid_params(format!(
                "size: must be a non-zero multiple of block_size {block_size}"
            )));
        }
    }
    if let Some(path) = &path {
        if let Some(other) = control
            .luns
            .values()
            .find(|e| e.record.path.as_ref() == Some(path))
        {
            return Err(RpcError::invalid_params(format!(
                "path: {} is already LUN {}",
                path.display(),
                other.record.name
            )));
        }
    }
    let spec = LunSpec {
        name: name.to_string(),
        kind,
        path: path.clone(),
        size_bytes: size,
        block_size_bytes: block_size,
    };
    let lun = open_lun(&spec).map_err(|error| {
        RpcError::invalid_params(format!("{}: {}", param_of(&error), error_chain(&error)))
    })?;
    let info = lun.info();
    let record = LunRecord {
        name: name.to_string(),
        uuid: control.new_uuid()?,
        kind,
        path,
        size: info.size_bytes,
        block_size: info.block_size_bytes,
    };
    control
        .store
        .put("lun", name, &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    let entry = LunEntry {
        record,
        lun,
        pool: None,
    };
    let described = describe(&entry);
    control.luns.insert(name.to_string(), entry);
    log::info!(
        "LUN {name} created ({} {} bytes, {}-byte blocks)",
        kind.as_str(),
        info_size(&described),
        block_size
    );
    Ok(described)
}

fn info_size(described: &Value) -> u64 {
    described["size"].as_u64().unwrap_or(0)
}

/// Which parameter a LUN error is about, for the -32602 message.
fn param_of(error: &crate::backend::LunError) -> &'static str {
    match error {
        crate::backend::LunError::Open { .. } => "path",
        crate::backend::LunError::Invalid { what, .. } if what.contains("size") => "size",
        crate::backend::LunError::Invalid { what, .. } if what.contains("block_size") => {
            "block_size"
        }
        _ => "path",
    }
}

/// An error and its sources, on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub fn get(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    match params.optional_name("name")? {
        Some(name) => {
            let entry = control
                .luns
                .get(name)
                .ok_or_else(|| RpcError::invalid_params(format!("name: no LUN {name}")))?;
            Ok(json!([describe(entry)]))
        }
        None => Ok(Value::Array(control.luns.values().map(describe).collect())),
    }
}

pub fn delete(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    let name = params.name("name")?;
    let entry = control
        .luns
        .get(name)
        .ok_or_else(|| RpcError::invalid_params(format!("name: no LUN {name}")))?;
    if let Some(pool) = &entry.pool {
        return Err(RpcError::invalid_params(format!(
            "name: LUN {name} is in pool {pool}; delete the pool first"
        )));
    }
    control
        .store
        .delete("lun", name)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    control.luns.remove(name);
    log::info!("LUN {name} deleted");
    Ok(Value::Bool(true))
}
