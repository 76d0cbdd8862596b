//! `lun_*` methods and fault injection (`lun_inject_fault`, `lun_clear_fault`). The guards that
//! keep the pool and volume methods off what a failed LUN took down are in `failed.rs`.
//!
//! A LUN is `online` or `failed`: failed when it could not be opened at start-up (the entry's
//! `failed` reason), when its device went away at run time (an I/O ended with ENODEV or
//! ENXIO), or, for a fault LUN, when its base is failed. Error counters come from the LUN's
//! [`crate::backend::LunHealth`].

use super::params::Params;
use super::{Control, LunEntry};
use crate::backend::fault::{FaultLun, FaultMode, FaultSpec, FaultSpecError, IoTypes};
use crate::backend::remote::link_stats::LinkStats;
use crate::backend::remote::RemoteSpec;
use crate::backend::{lun_path, open_lun, ErrorCounts, Lun, LunKind, LunSpec};
use crate::constants::{MAX_FAULT_DELAY_US, MAX_LUNS};
use crate::rpc::RpcError;
use crate::store::records::LunRecord;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub fn error_counts(counts: ErrorCounts) -> Value {
    json!({ "read": counts.read, "write": counts.write, "flush": counts.flush })
}

/// Why a LUN is failed, or `None` while it is online.
pub fn failure(luns: &BTreeMap<String, LunEntry>, entry: &LunEntry) -> Option<String> {
    if let Some(reason) = &entry.failed {
        return Some(reason.clone());
    }
    if !entry.lun.is_failed() {
        return None;
    }
    if let Some(base) = entry.record.base.as_deref() {
        let why = luns
            .get(base)
            .filter(|b| !std::ptr::eq(*b, entry))
            .and_then(|b| failure(luns, b))
            .unwrap_or_else(|| "failed".into());
        return Some(format!("its base LUN {base} is failed: {why}"));
    }
    let errno = entry
        .lun
        .health()
        .and_then(|h| h.failed_errno())
        .unwrap_or(libc::EIO);
    Some(format!(
        "device gone ({})",
        std::io::Error::from_raw_os_error(errno)
    ))
}

pub fn describe(luns: &BTreeMap<String, LunEntry>, entry: &LunEntry) -> Value {
    let info = entry.lun.info();
    let reason = failure(luns, entry);
    let errors = entry.lun.health().map(|h| h.errors()).unwrap_or_default();
    let mut described = json!({
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
        "state": if reason.is_some() { "failed" } else { "online" },
        "reason": reason,
        "errors": error_counts(errors),
    });
    if let Some(wrapper) = &entry.wrapped_by {
        described["wrapped_by"] = json!(wrapper);
    }
    if let Some(remote) = &entry.record.remote {
        described["remote"] = describe_remote(remote, entry.lun.link_stats());
    }
    if let Some(fault) = &entry.fault {
        described["base"] = json!(entry.record.base);
        described["fault"] = describe_fault(fault);
        let injected = fault.injected();
        described["injected"] = json!({
            "failed": error_counts(injected.failed),
            "delayed": error_counts(injected.delayed),
        });
    }
    described
}

/// The `remote` object of a LUN of another array: where it is and how its links fare (never
/// the CHAP secret).
fn describe_remote(remote: &RemoteSpec, stats: Option<&LinkStats>) -> Value {
    let mut described = json!({
        "url": remote.url,
        "initiator_iqn": remote.initiator_iqn,
        "chap_user": remote.chap_user,
        "timeout_ms": remote.timeout().as_millis() as u64,
        "fail_after_ms": remote.fail_after().as_millis() as u64,
    });
    match stats.map(LinkStats::snapshot) {
        Some(snapshot) => {
            described["state"] = json!(snapshot.state.as_str());
            described["links"] = json!(snapshot.links);
            described["links_connected"] = json!(snapshot.links_connected);
            described["rtt_us"] = json!(snapshot.rtt_us);
            described["reconnects"] = json!(snapshot.reconnects);
            described["timeouts"] = json!(snapshot.timeouts);
            described["in_flight"] = json!(snapshot.in_flight);
            described["array_size"] = json!(snapshot.array_size);
        }
        // A stand-in: the array could not be reached at start-up.
        None => described["state"] = json!("failed"),
    }
    described
}

fn describe_fault(fault: &FaultLun) -> Value {
    match fault.active() {
        None => Value::Null,
        Some(active) => json!({
            "io_type": active.spec.io_types.as_str(),
            "mode": active.spec.mode.as_str(),
            "count": active.spec.count,
            "remaining": active.remaining,
            "delay_us": (active.spec.mode == FaultMode::Delay).then_some(active.spec.delay_us),
        }),
    }
}

pub fn create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(
        params,
        &[
            "name",
            "kind",
            "path",
            "size",
            "block_size",
            "base",
            "url",
            "uri",
            "initiator_iqn",
            "chap_user",
            "chap_secret",
            "timeout_ms",
            "fail_after_ms",
        ],
    )?;
    let name = params.name("name")?;
    let kind_text = params.str("kind")?;
    let kind = LunKind::parse(kind_text).ok_or_else(|| {
        RpcError::invalid_params(format!(
            "kind: {kind_text:?} is not one of mem, file, blockdev, fault, null, iscsi, nbd"
        ))
    })?;
    if kind == LunKind::Fault {
        return create_fault(control, &params, name);
    }
    if kind.is_remote() {
        return create_remote(control, &params, name, kind);
    }
    for remote_only in [
        "url",
        "uri",
        "initiator_iqn",
        "chap_user",
        "chap_secret",
        "timeout_ms",
        "fail_after_ms",
    ] {
        if params.optional_str(remote_only).ok().flatten().is_some()
            || params.optional_u64(remote_only).ok().flatten().is_some()
        {
            return Err(RpcError::invalid_params(format!(
                "{remote_only}: only a LUN of another array (iscsi, nbd) has one"
            )));
        }
    }
    if params.optional_str("base")?.is_some() {
        return Err(RpcError::invalid_params(
            "base: only a fault LUN has a base",
        ));
    }
    let block_size = block_size_param(&params, 512)?;
    let size = params.optional_u64("size")?;
    check_new_name(control, name)?;
    let path = match (kind, params.optional_str("path")?) {
        (LunKind::Mem | LunKind::Null, Some(_)) => {
            return Err(RpcError::invalid_params(format!(
                "path: a {} LUN has no path",
                kind.as_str()
            )))
        }
        (LunKind::Mem | LunKind::Null | LunKind::Fault | LunKind::Iscsi | LunKind::Nbd, None) => {
            None
        }
        (LunKind::File, None) => Some(control.state_dir.join("luns").join(format!("{name}.img"))),
        (LunKind::Blockdev, None) => {
            return Err(RpcError::invalid_params(
                "path: required for a blockdev LUN",
            ))
        }
        (_, Some(path)) => Some(PathBuf::from(path)),
    };
    // Recorded absolute and resolved: a relative path means the same thing at every start.
    let path = path
        .map(|path| {
            lun_path::canonical(&path).map_err(|error| {
                RpcError::invalid_params(format!(
                    "path: cannot resolve {}: {error}",
                    path.display()
                ))
            })
        })
        .transpose()?;
    if matches!(kind, LunKind::Mem | LunKind::Null) && size.is_none() {
        return Err(RpcError::invalid_params(format!(
            "size: required for a {} LUN",
            kind.as_str()
        )));
    }
    if let Some(size) = size {
        if size == 0 || size % u64::from(block_size) != 0 {
            return Err(RpcError::invalid_params(format!(
                "size: must be a non-zero multiple of block_size {block_size}"
            )));
        }
    }
    if let Some(path) = &path {
        // By what the path names, not how it is spelled: a hard link, or a record written
        // before paths were resolved, names the same file by another path.
        let identity = lun_path::identity(path);
        if let Some(other) = control.luns.values().find(|e| {
            e.record.path.as_ref().is_some_and(|other| {
                other == path || identity.is_some() && lun_path::identity(other) == identity
            })
        }) {
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
        path,
        size_bytes: size,
        block_size_bytes: block_size,
        remote: None,
    };
    let (described, _) = open_and_add(control, spec)?;
    log::info!(
        "LUN {name} created ({} {} bytes, {}-byte blocks)",
        kind.as_str(),
        info_size(&described),
        block_size
    );
    Ok(described)
}

/// `lun_create` of a LUN of another array: logs in on its blocking connection (on this
/// thread, bounded by the LUN's timeout and `REMOTE_STARTUP_CONNECT_MS`), takes the array's
/// size and block size, and attaches its links to the reactors.
fn create_remote(
    control: &mut Control,
    params: &Params,
    name: &str,
    kind: LunKind,
) -> Result<Value, RpcError> {
    if params.optional_str("path")?.is_some() {
        return Err(RpcError::invalid_params(format!(
            "path: a {} LUN has a url, not a path",
            kind.as_str()
        )));
    }
    if params.optional_u64("size")?.is_some() {
        return Err(RpcError::invalid_params(
            "size: a remote LUN's size is its array's",
        ));
    }
    let block_size = block_size_param(params, 0)?;
    check_new_name(control, name)?;
    // NBD names its address a URI (the NBD URI standard), iSCSI a URL (libiscsi's).
    let url_key = if kind == LunKind::Nbd { "uri" } else { "url" };
    let other_key = if kind == LunKind::Nbd { "url" } else { "uri" };
    if params.optional_str(other_key)?.is_some() {
        return Err(RpcError::invalid_params(format!(
            "{other_key}: a {} LUN's address is its {url_key}",
            kind.as_str()
        )));
    }
    if kind == LunKind::Nbd {
        for iscsi_only in ["initiator_iqn", "chap_user", "chap_secret"] {
            if params.optional_str(iscsi_only)?.is_some() {
                return Err(RpcError::invalid_params(format!(
                    "{iscsi_only}: only an iscsi LUN has one"
                )));
            }
        }
    }
    let owned = |value: Option<&str>| value.map(str::to_string);
    let remote = RemoteSpec {
        url: params.str(url_key)?.to_string(),
        initiator_iqn: owned(params.optional_str("initiator_iqn")?),
        chap_user: owned(params.optional_str("chap_user")?),
        chap_secret: owned(params.optional_str("chap_secret")?),
        timeout_ms: params.optional_u64("timeout_ms")?,
        fail_after_ms: params.optional_u64("fail_after_ms")?,
    };
    remote
        .validate()
        .map_err(|why| RpcError::invalid_params(why.replacen("url", url_key, 1)))?;
    if let Some(other) = control.luns.values().find(|entry| {
        entry
            .record
            .remote
            .as_ref()
            .is_some_and(|other| other.url == remote.url)
    }) {
        return Err(RpcError::invalid_params(format!(
            "{url_key}: {} is already LUN {}",
            remote.url, other.record.name
        )));
    }
    let spec = LunSpec {
        name: name.to_string(),
        kind,
        path: None,
        size_bytes: None,
        block_size_bytes: block_size,
        remote: Some(remote),
    };
    let (described, (size, block)) = open_and_add(control, spec)?;
    log::info!(
        "LUN {name} created ({} at {}, {size} bytes, {block}-byte blocks)",
        kind.as_str(),
        described["remote"]["url"].as_str().unwrap_or(""),
    );
    Ok(described)
}

/// Opens the LUN `spec` describes and adds it with its record (size and block size as opened):
/// its description, and the size and block size. A LUN that cannot be opened is an invalid
/// parameter naming the one at fault.
fn open_and_add(control: &mut Control, spec: LunSpec) -> Result<(Value, (u64, u32)), RpcError> {
    let lun = open_lun(&spec).map_err(|error| {
        RpcError::invalid_params(format!("{}: {}", param_of(&error), error_chain(&error)))
    })?;
    let info = lun.info();
    let (size, block) = (info.size_bytes, info.block_size_bytes);
    let record = LunRecord {
        name: spec.name,
        uuid: control.new_uuid()?,
        kind: spec.kind,
        path: spec.path,
        size,
        block_size: block,
        base: None,
        remote: spec.remote,
    };
    let described = add_entry(control, record, lun, None)?;
    Ok((described, (size, block)))
}

/// The `block_size` parameter of `lun_create`: 512 or 4096, else `absent` (a remote LUN's 0:
/// its array's).
fn block_size_param(params: &Params, absent: u32) -> Result<u32, RpcError> {
    match params.optional_u64("block_size")? {
        None => Ok(absent),
        Some(b @ (512 | 4096)) => Ok(b as u32),
        Some(other) => Err(RpcError::invalid_params(format!(
            "block_size: {other} is not 512 or 4096"
        ))),
    }
}

fn check_new_name(control: &Control, name: &str) -> Result<(), RpcError> {
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
    Ok(())
}

/// `lun_create` with `kind: "fault"`: a fault LUN over `base`, which it then owns the way a
/// pool owns its LUNs (the base cannot be pooled, wrapped again or deleted meanwhile).
fn create_fault(control: &mut Control, params: &Params, name: &str) -> Result<Value, RpcError> {
    for key in ["path", "size", "block_size"] {
        if params.optional_str(key).is_ok_and(|v| v.is_some())
            || params.optional_u64(key).is_ok_and(|v| v.is_some())
        {
            return Err(RpcError::invalid_params(format!(
                "{key}: a fault LUN takes its {key} from its base"
            )));
        }
    }
    let base_name = params.name("base")?;
    check_new_name(control, name)?;
    if base_name == name {
        return Err(RpcError::invalid_params(format!(
            "base: LUN {name} cannot wrap itself"
        )));
    }
    let base = control
        .luns
        .get(base_name)
        .ok_or_else(|| RpcError::invalid_params(format!("base: no LUN {base_name}")))?;
    if let Some(pool) = &base.pool {
        return Err(RpcError::invalid_params(format!(
            "base: LUN {base_name} is in pool {pool}"
        )));
    }
    if let Some(wrapper) = &base.wrapped_by {
        return Err(RpcError::invalid_params(format!(
            "base: LUN {base_name} is already the base of fault LUN {wrapper}"
        )));
    }
    if let Some(reason) = failure(&control.luns, base) {
        return Err(RpcError::invalid_params(format!(
            "base: LUN {base_name} is failed: {reason}"
        )));
    }
    let fault = Arc::new(FaultLun::new(name, base.lun.clone()));
    let record = LunRecord {
        name: name.to_string(),
        uuid: control.new_uuid()?,
        kind: LunKind::Fault,
        path: None,
        size: base.record.size,
        block_size: base.record.block_size,
        base: Some(base_name.to_string()),
        remote: None,
    };
    let described = add_entry(control, record, fault.clone(), Some(fault))?;
    if let Some(base) = control.luns.get_mut(base_name) {
        base.wrapped_by = Some(name.to_string());
    }
    log::info!("LUN {name} created: fault injection over LUN {base_name}");
    Ok(described)
}

/// A new LUN made known: its record stored (a store failure refuses the command before the
/// LUN is listed), its entry added; returns its description. Every kind's `lun_create` ends
/// here.
fn add_entry(
    control: &mut Control,
    record: LunRecord,
    lun: Arc<dyn Lun>,
    fault: Option<Arc<FaultLun>>,
) -> Result<Value, RpcError> {
    control
        .store
        .put("lun", &record.name, &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    let name = record.name.clone();
    let entry = LunEntry {
        record,
        lun,
        pool: None,
        fault,
        wrapped_by: None,
        failed: None,
    };
    let described = describe(&control.luns, &entry);
    control.luns.insert(name, entry);
    Ok(described)
}

fn info_size(described: &Value) -> u64 {
    described["size"].as_u64().unwrap_or(0)
}

/// Which parameter a LUN error is about, for the -32602 message.
fn param_of(error: &crate::backend::LunError) -> &'static str {
    match error {
        crate::backend::LunError::Open { .. } => "path",
        crate::backend::LunError::Unreachable { .. } => "url",
        crate::backend::LunError::Invalid { what, .. } if what.starts_with("url") => "url",
        crate::backend::LunError::Invalid { what, .. } if what.starts_with("uri") => "uri",
        crate::backend::LunError::Invalid { what, .. } if what.contains("size") => "size",
        crate::backend::LunError::Invalid { what, .. } if what.contains("block_size") => {
            "block_size"
        }
        _ => "path",
    }
}

pub use crate::logger::error_chain;

pub fn get(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    match params.optional_name("name")? {
        Some(name) => {
            let entry = control
                .luns
                .get(name)
                .ok_or_else(|| RpcError::invalid_params(format!("name: no LUN {name}")))?;
            Ok(json!([describe(&control.luns, entry)]))
        }
        None => Ok(Value::Array(
            control
                .luns
                .values()
                .map(|entry| describe(&control.luns, entry))
                .collect(),
        )),
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
    if let Some(wrapper) = &entry.wrapped_by {
        return Err(RpcError::invalid_params(format!(
            "name: LUN {name} is the base of fault LUN {wrapper}; delete {wrapper} first"
        )));
    }
    let base = entry.record.base.clone();
    control
        .store
        .delete("lun", name)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    control.luns.remove(name);
    if let Some(base) = base.and_then(|b| control.luns.get_mut(&b)) {
        base.wrapped_by = None;
    }
    log::info!("LUN {name} deleted");
    Ok(Value::Bool(true))
}

/// The fault LUN `name` of a method's parameters.
fn fault_lun(control: &Control, params: &Params) -> Result<(String, Arc<FaultLun>), RpcError> {
    let name = params.name("name")?;
    let entry = control
        .luns
        .get(name)
        .ok_or_else(|| RpcError::invalid_params(format!("name: no LUN {name}")))?;
    let fault = entry.fault.clone().ok_or_else(|| {
        RpcError::invalid_params(format!(
            "name: LUN {name} is a {} LUN, not a fault LUN",
            entry.record.kind.as_str()
        ))
    })?;
    Ok((name.to_string(), fault))
}

/// `lun_inject_fault {name, io_type, mode, count?, delay_us?}`: replaces the fault LUN's
/// injected fault. Returns the LUN as `lun_get_luns` shows it.
pub fn inject_fault(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "io_type", "mode", "count", "delay_us"])?;
    let (name, fault) = fault_lun(control, &params)?;
    let io_text = params.str("io_type")?;
    let io_types = IoTypes::parse(io_text).ok_or_else(|| {
        RpcError::invalid_params(format!(
            "io_type: {io_text:?} is not one of read, write, flush, all"
        ))
    })?;
    let mode_text = params.str("mode")?;
    let mode = FaultMode::parse(mode_text).ok_or_else(|| {
        RpcError::invalid_params(format!(
            "mode: {mode_text:?} is not one of fail, delay, fail_after"
        ))
    })?;
    let count = params.optional_u64("count")?;
    if count == Some(0) && mode != FaultMode::FailAfter {
        return Err(RpcError::invalid_params(
            "count: must be at least 1 (leave it out for every I/O)",
        ));
    }
    let delay_us = params.optional_u64("delay_us")?;
    let spec = FaultSpec {
        io_types,
        mode,
        count,
        delay_us: delay_us.unwrap_or(0),
    };
    fault.inject(spec).map_err(|error| match error {
        FaultSpecError::CountRequired => {
            RpcError::invalid_params("count: required for mode fail_after")
        }
        FaultSpecError::Delay if mode == FaultMode::Delay => RpcError::invalid_params(format!(
            "delay_us: required for mode delay, 1 to {MAX_FAULT_DELAY_US}"
        )),
        FaultSpecError::Delay => RpcError::invalid_params("delay_us: only for mode delay"),
    })?;
    log::warn!(
        "LUN {name}: fault injected: {} {} I/O{}{}",
        mode.as_str(),
        io_types.as_str(),
        count.map_or(String::new(), |c| format!(", count {c}")),
        delay_us.map_or(String::new(), |d| format!(", {d} us")),
    );
    described(control, &name)
}

/// `lun_clear_fault {name}`: the fault LUN passes every I/O through again.
pub fn clear_fault(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    let (name, fault) = fault_lun(control, &params)?;
    if fault.clear() {
        log::warn!("LUN {name}: fault cleared");
    }
    described(control, &name)
}

fn described(control: &Control, name: &str) -> Result<Value, RpcError> {
    control
        .luns
        .get(name)
        .map(|entry| describe(&control.luns, entry))
        .ok_or_else(|| RpcError::invalid_params(format!("name: no LUN {name}")))
}
