//! The SPDK methods whose meaning carries over, with SPDK's field names, so SPDK's tools and
//! scripts read sds as they read SPDK: volumes appear as bdevs.
//!
//! `bdev_get_iostat` lists LUNs too (by a LUN's name, and in the full listing, after the
//! volumes). A LUN counts only its errors (the success path keeps no per-LUN counters; volumes
//! count operations and bytes), so a LUN's entry is `{name, product_name: "sds LUN", kind,
//! state, num_errors, io_error: {read, write, flush}}`, plus `injected` for a fault LUN.
//! `io_error` counts errors per I/O type (where SPDK counts them per completion status);
//! volumes carry one too, per NBD command type (read, write, unmap, write_zeroes, flush).

use super::luns::{error_counts, failure};
use super::params::Params;
use super::{methods::METHODS, Control, LunEntry, VolumeEntry};
use crate::blockio::BlockOp;
use crate::rpc::RpcError;
use crate::version::{GIT_REVISION, VERSION};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// Ticks in SPDK's statistics are microseconds here.
const TICK_RATE_HZ: u64 = 1_000_000;

pub fn get_version(_control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    Params::new(params, &[])?;
    let mut parts = VERSION.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    Ok(json!({
        "version": format!("sds v{VERSION}"),
        "fields": { "major": major, "minor": minor, "patch": patch, "suffix": "", "commit": GIT_REVISION },
    }))
}

pub fn get_methods(_control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    // SPDK's clients send `current` and `include_aliases`; both change nothing here.
    let _ = Params::new(params, &["current", "include_aliases"])?;
    Ok(Value::Array(
        METHODS.iter().map(|(name, _)| json!(name)).collect(),
    ))
}

pub fn get_reactors(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    Params::new(params, &[])?;
    let reactors: Vec<Value> = control
        .reactors
        .iter()
        .map(|r| {
            json!({
                "lcore": r.core,
                "busy": r.busy_us.load(Ordering::Relaxed),
                "idle": r.idle_us.load(Ordering::Relaxed),
                "in_interrupt": r.sleeping.load(Ordering::Relaxed),
                "connections": r.sessions.load(Ordering::Relaxed),
                "poll_mode": r.poll.as_str(),
                "lw_threads": [ { "name": format!("reactor_{}", r.index), "id": r.index } ],
            })
        })
        .collect();
    Ok(json!({ "tick_rate": TICK_RATE_HZ, "reactors": reactors }))
}

fn bdev(entry: &VolumeEntry) -> Value {
    let volume = &entry.volume;
    let block = u64::from(volume.block_size_bytes);
    json!({
        "name": volume.name,
        "aliases": [],
        "product_name": "sds volume",
        "block_size": volume.block_size_bytes,
        "num_blocks": volume.size_bytes() / block,
        "uuid": entry.record.uuid.to_string(),
        "assigned_rate_limits": entry.record.qos.to_json(),
        "claimed": false,
        "zoned": false,
        "supported_io_types": {
            "read": true, "write": true, "unmap": true, "write_zeroes": true, "flush": true,
            "reset": false, "compare": false, "compare_and_write": false, "abort": false, "nvme_admin": false, "nvme_io": false,
        },
        "driver_specific": { "sds": {
            "pool": entry.record.pool,
            "thin": volume.thin,
            "allocated": volume.allocated_extents() * volume.extent_bytes(),
            "volatile": volume.pool.volatile,
            "state": super::volumes::condition(volume).map_or("online", |(state, _)| state),
        } },
    })
}

fn selected<'a>(control: &'a Control, params: &Params) -> Result<Vec<&'a VolumeEntry>, RpcError> {
    match params.optional_name("name")? {
        Some(name) => control
            .volumes
            .get(name)
            .map(|entry| vec![entry])
            .ok_or_else(|| RpcError::invalid_params(format!("name: no bdev {name}"))),
        None => Ok(control.volumes.values().collect()),
    }
}

pub fn get_bdevs(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "timeout"])?;
    Ok(Value::Array(
        selected(control, &params)?.into_iter().map(bdev).collect(),
    ))
}

pub fn get_iostat(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "per_channel"])?;
    let (volumes, luns): (Vec<&VolumeEntry>, Vec<&LunEntry>) = match params.optional_name("name")? {
        Some(name) => {
            let volumes: Vec<_> = control.volumes.get(name).into_iter().collect();
            let luns: Vec<_> = control.luns.get(name).into_iter().collect();
            if volumes.is_empty() && luns.is_empty() {
                return Err(RpcError::invalid_params(format!("name: no bdev {name}")));
            }
            (volumes, luns)
        }
        None => (
            control.volumes.values().collect(),
            control.luns.values().collect(),
        ),
    };
    let mut bdevs: Vec<Value> = volumes.into_iter().map(volume_iostat).collect();
    bdevs.extend(luns.into_iter().map(|entry| lun_iostat(control, entry)));
    Ok(json!({
        "tick_rate": TICK_RATE_HZ,
        "ticks": control.started.elapsed().as_micros() as u64,
        "bdevs": bdevs,
    }))
}

fn volume_iostat(entry: &VolumeEntry) -> Value {
    let t = entry.volume.stats.totals();
    let io_error: serde_json::Map<String, Value> = BlockOp::ALL
        .iter()
        .map(|op| {
            (
                spdk_io_type(*op).to_string(),
                json!(t.kind_errors[op.index()]),
            )
        })
        .collect();
    json!({
        "name": entry.volume.name,
        "bytes_read": t.read_bytes,
        "num_read_ops": t.read_ops,
        "bytes_written": t.write_bytes,
        "num_write_ops": t.write_ops,
        "bytes_unmapped": t.unmap_bytes,
        "num_unmap_ops": t.unmap_ops,
        "bytes_copied": 0,
        "num_copy_ops": 0,
        "read_latency_ticks": t.read_latency_ns / 1000,
        "write_latency_ticks": t.write_latency_ns / 1000,
        "unmap_latency_ticks": t.unmap_latency_ns / 1000,
        "num_write_zeroes_ops": t.zero_ops,
        "bytes_write_zeroes": t.zero_bytes,
        "num_flush_ops": t.flush_ops,
        "num_errors": t.errors,
        "io_error": io_error,
    })
}

fn lun_iostat(control: &Control, entry: &LunEntry) -> Value {
    let errors = entry.lun.health().map(|h| h.errors()).unwrap_or_default();
    // The LUN I/O the block engine completed on it (`backend::lun_io_stats`); a zeroing is
    // a write of no bytes.
    let io = entry
        .lun
        .health()
        .map(|h| h.io.totals())
        .unwrap_or_default();
    let (read, write, flush) = (
        BlockOp::Read.class_index(),
        BlockOp::Write.class_index(),
        BlockOp::Flush.class_index(),
    );
    let mut stat = json!({
        "name": entry.record.name,
        "product_name": "sds LUN",
        "kind": entry.record.kind.as_str(),
        "state": if failure(&control.luns, entry).is_some() { "failed" } else { "online" },
        "bytes_read": io.bytes[read],
        "num_read_ops": io.ops[read],
        "bytes_written": io.bytes[write],
        "num_write_ops": io.ops[write],
        "num_flush_ops": io.ops[flush],
        "read_latency_ticks": io.latency_ns[read] / 1000,
        "write_latency_ticks": io.latency_ns[write] / 1000,
        "num_errors": errors.total(),
        "io_error": error_counts(errors),
    });
    if let Some(fault) = &entry.fault {
        let injected = fault.injected();
        stat["injected"] = json!({
            "failed": error_counts(injected.failed),
            "delayed": error_counts(injected.delayed),
        });
    }
    stat
}

/// The name SPDK's `bdev_get_iostat` gives an operation in `io_error` (it calls TRIM "unmap").
fn spdk_io_type(op: BlockOp) -> &'static str {
    match op {
        BlockOp::Trim => "unmap",
        other => other.as_str(),
    }
}
