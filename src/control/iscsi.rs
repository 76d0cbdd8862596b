//! `iscsi_*` methods: the server's one iSCSI target as administrators see it.
//!
//! The target model is one target per server with LUN masking per host (README, "iSCSI"):
//! `iscsi_get_targets` lists the target's name, its portals and, for every host with an
//! iSCSI name, the LUNs that host sees (one per virtual path, at the VP's LUN number).
//! `iscsi_get_sessions` lists the live sessions from the target's session registry, which the
//! login threads and the reactors fill in; the control thread only reads it.

use super::params::Params;
use super::Control;
use crate::rpc::RpcError;
use crate::target::iscsi::registry::Registry;
use serde_json::{json, Value};
use std::sync::Arc;

/// What the control thread knows of the iSCSI target, handed over by `serve`.
pub struct IscsiTarget {
    /// The target's name (stable across restarts, or `--iscsi-target-name`).
    pub name: String,
    /// The addresses it listens on (`--iscsi-listen`); empty when the portal is off.
    pub portals: Vec<String>,
    pub registry: Arc<Registry>,
}

/// `iscsi_get_targets`: `[{name, portals, luns: [{host, iqn, lun, volume, mode}]}]`, the LUNs
/// ordered by host and LUN number. Empty when the server has no iSCSI target.
pub fn get_targets(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    Params::new(params, &[])?;
    let Some(target) = &control.iscsi else {
        return Ok(json!([]));
    };
    let mut luns: Vec<(&str, u32, Value)> = control
        .vpaths
        .values()
        .filter_map(|entry| {
            let host = control.hosts.get(&entry.record.host)?;
            let iqn = host.record.iqn.as_deref()?;
            Some((
                entry.record.host.as_str(),
                entry.record.lun,
                json!({
                    "host": entry.record.host,
                    "iqn": iqn,
                    "lun": entry.record.lun,
                    "volume": entry.record.volume,
                    "mode": entry.record.mode.as_str(),
                }),
            ))
        })
        .collect();
    luns.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    Ok(json!([{
        "name": target.name,
        "portals": target.portals,
        "luns": luns.into_iter().map(|(_, _, lun)| lun).collect::<Vec<_>>(),
    }]))
}

/// `iscsi_get_sessions`: every live session (normal and discovery) with its initiator, host,
/// ISID, TSIH, target, connection address, negotiated parameters, digests and LUNs.
pub fn get_sessions(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    Params::new(params, &[])?;
    let Some(target) = &control.iscsi else {
        return Ok(json!([]));
    };
    serde_json::to_value(target.registry.list())
        .map_err(|error| RpcError::internal(format!("iscsi_get_sessions: {error}")))
}
