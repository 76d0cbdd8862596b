//! `vpath_*` methods: which host reaches which volume, in which mode and domain.
//!
//! A host discovers and opens only volumes it has a VP to. Deleting a VP cuts the host's open
//! connections through it; moving a VP to another domain takes effect at once, without
//! disconnecting anyone.

use super::domains::DEFAULT_DOMAIN;
use super::params::Params;
use super::stats::{totals_json, CycleStats};
use super::Control;
use crate::constants::MAX_VPATHS;
use crate::domain::qos::RateLimit;
use crate::domain::stats::VpTotals;
use crate::domain::vpath::{AccessMode, Vpath};
use crate::logger::error_chain;
use crate::reactor::mailbox::Message;
use crate::rpc::RpcError;
use crate::store::records::VpathRecord;
use serde_json::{json, Value};
use std::sync::Arc;

pub struct VpathEntry {
    pub record: VpathRecord,
    pub vpath: Arc<Vpath>,
    /// Its counters at the end of the last cycle.
    pub previous: VpTotals,
    pub last: CycleStats,
    /// Its rate on each reactor, as last published.
    pub rates: Box<[RateLimit]>,
    /// Its whole allowance (all reactors) as last computed; unlimited when all zero.
    pub allowance: RateLimit,
    /// Limited I/Os per reactor: at the end of the last cycle, and during it.
    pub reactor_previous: Vec<u64>,
    pub reactor_recent: Vec<u64>,
}

impl VpathEntry {
    pub fn new(record: VpathRecord, vpath: Arc<Vpath>, reactors: usize) -> Self {
        Self {
            record,
            vpath,
            previous: VpTotals::default(),
            last: CycleStats::default(),
            rates: vec![RateLimit::default(); reactors.max(1)].into_boxed_slice(),
            allowance: RateLimit::default(),
            reactor_previous: vec![0; reactors.max(1)],
            reactor_recent: vec![0; reactors.max(1)],
        }
    }
}

pub fn describe(entry: &VpathEntry) -> Value {
    json!({
        "id": entry.record.id,
        "host": entry.record.host,
        "volume": entry.record.volume,
        "domain": entry.record.domain,
        "mode": entry.record.mode.as_str(),
        "lun": entry.record.lun,
        "connections": (0..entry.vpath.stats.reactors())
            .map(|r| entry.vpath.stats.reactor_sessions(r))
            .sum::<u32>(),
    })
}

fn entry_of<'a>(control: &'a Control, params: &Params) -> Result<&'a VpathEntry, RpcError> {
    let id = params.u64("id")?;
    control
        .vpaths
        .get(&id)
        .ok_or_else(|| RpcError::invalid_params(format!("id: no virtual path {id}")))
}

pub fn create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["host", "volume", "domain", "mode", "lun"])?;
    let host = params.name("host")?;
    let volume_name = params.name("volume")?;
    let domain = params.optional_name("domain")?.unwrap_or(DEFAULT_DOMAIN);
    let mode = match params.optional_str("mode")? {
        None => AccessMode::ReadWrite,
        Some(text) => AccessMode::parse(text)
            .ok_or_else(|| RpcError::invalid_params(format!("mode: {text:?} is not rw or ro")))?,
    };
    if !control.hosts.contains_key(host) {
        return Err(RpcError::invalid_params(format!("host: no host {host}")));
    }
    if let Some(mirror) = super::mirrors::reserved_by(control, volume_name) {
        return Err(RpcError::invalid_params(format!(
            "volume: volume {volume_name} is a leg of mirror {mirror}: reach it through the mirror"
        )));
    }
    let volume = control
        .volumes
        .get(volume_name)
        .map(|entry| entry.volume.clone())
        .ok_or_else(|| RpcError::invalid_params(format!("volume: no volume {volume_name}")))?;
    if volume.read_only && mode != AccessMode::ReadOnly {
        return Err(RpcError::invalid_params(format!(
            "mode: {volume_name} is a snapshot: only read-only (ro) paths may reach it"
        )));
    }
    super::volume_sets::refuse_member(control, "volume", volume_name, "give a virtual path to")?;
    if !control.domains.contains_key(domain) {
        return Err(RpcError::invalid_params(format!(
            "domain: no domain {domain}"
        )));
    }
    if let Some(existing) = control
        .vpaths
        .values()
        .find(|v| v.record.host == host && v.record.volume == volume_name)
    {
        return Err(RpcError::invalid_params(format!(
            "volume: host {host} already has virtual path {} to volume {volume_name}",
            existing.record.id
        )));
    }
    let taken = |lun: u32| {
        control
            .vpaths
            .values()
            .any(|v| v.record.host == host && v.record.lun == lun)
    };
    let lun = match params.optional_u64("lun")? {
        Some(lun) => {
            let lun = u32::try_from(lun)
                .ok()
                .filter(|&l| l < 16384)
                .ok_or_else(|| RpcError::invalid_params("lun: must be 0..16383"))?;
            if taken(lun) {
                return Err(RpcError::invalid_params(format!(
                    "lun: host {host} already has LUN {lun}"
                )));
            }
            lun
        }
        None => (0..16384u32)
            .find(|&l| !taken(l))
            .ok_or_else(|| RpcError::invalid_params("lun: host has no free LUN number"))?,
    };
    if control.vpaths.len() >= MAX_VPATHS {
        return Err(RpcError::invalid_params(format!(
            "host: the server already has {MAX_VPATHS} virtual paths"
        )));
    }
    let id = control.next_vpath_id;
    let record = VpathRecord {
        id,
        host: host.to_string(),
        volume: volume_name.to_string(),
        domain: domain.to_string(),
        mode,
        lun,
    };
    control
        .store
        .put("vpath", &id.to_string(), &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    control.next_vpath_id += 1;
    let vpath = Arc::new(Vpath::new(
        id,
        host,
        volume,
        mode,
        lun,
        control.reactors.len(),
    ));
    let entry = VpathEntry::new(record, vpath, control.reactors.len());
    let described = describe(&entry);
    control.vpaths.insert(id, entry);
    control.recompute_rates();
    control.publish();
    log::info!(
        "virtual path {id}: host {host} -> volume {volume_name} ({}, domain {domain})",
        mode.as_str()
    );
    // A session's LUNs are settled at login: the host's iSCSI sessions are ended, and its
    // initiators, which log back in on their own, find the new LUN.
    // An NVMe host is told instead: its controllers send an asynchronous event, and its
    // I/O queues serve the new namespace.
    if let Some(nvmf) = &control.nvmf {
        nvmf.namespace_changed(host, crate::target::nvmf::subsystem::nsid_of_lun(lun));
    }
    if let Some(target) = &control.iscsi {
        let closed = target.registry.close_host(host);
        if closed > 0 {
            log::info!(
                "host {host}: {closed} iSCSI session(s) asked to log in again for LUN {lun}"
            );
        }
    }
    Ok(described)
}

pub fn get(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["id", "host", "volume"])?;
    let id = params.optional_u64("id")?;
    let host = params.optional_name("host")?;
    let volume = params.optional_name("volume")?;
    if let Some(id) = id {
        if !control.vpaths.contains_key(&id) {
            return Err(RpcError::invalid_params(format!(
                "id: no virtual path {id}"
            )));
        }
    }
    Ok(Value::Array(
        control
            .vpaths
            .values()
            .filter(|v| id.map_or(true, |id| v.record.id == id))
            .filter(|v| host.map_or(true, |h| v.record.host == h))
            .filter(|v| volume.map_or(true, |n| v.record.volume == n))
            .map(describe)
            .collect(),
    ))
}

pub fn delete(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["id"])?;
    let id = entry_of(control, &params)?.record.id;
    control.remove_vpath(id)?;
    Ok(Value::Bool(true))
}

impl Control {
    /// Deletes VP `id`: its record, then the live object; cuts its connections.
    pub fn remove_vpath(&mut self, id: u64) -> Result<(), RpcError> {
        self.store
            .delete("vpath", &id.to_string())
            .map_err(|error| RpcError::internal(error_chain(&error)))?;
        if let Some(entry) = self.vpaths.remove(&id) {
            entry.vpath.revoke();
            self.publish();
            for reactor in &self.reactors {
                reactor.post(Message::Revoke { vpath_id: id });
            }
            // NVMe controllers of the host end with their queues: the host connects again
            // and finds its namespaces as they now are.
            if let Some(nvmf) = &self.nvmf {
                nvmf.close_host(&entry.record.host);
            }
            log::info!(
                "virtual path {id} deleted: host {} loses volume {}",
                entry.record.host,
                entry.record.volume
            );
        }
        Ok(())
    }

    /// Deletes every live VP of volume `volume` (see [`Control::remove_vpath`]).
    pub fn remove_vpaths_of(&mut self, volume: &str) -> Result<(), RpcError> {
        let ids: Vec<u64> = self
            .vpaths
            .values()
            .filter(|v| v.record.volume == volume)
            .map(|v| v.record.id)
            .collect();
        for id in ids {
            self.remove_vpath(id)?;
        }
        Ok(())
    }

    /// Deletes the stored records of volume `volume`'s VPs that were never brought up (a
    /// failed volume's): there is no live object to revoke.
    pub fn delete_down_vpath_records_of(&mut self, volume: &str) -> Result<(), RpcError> {
        let records = self
            .store
            .list::<VpathRecord>("vpath")
            .map_err(|error| RpcError::internal(error_chain(&error)))?;
        for record in records.iter().filter(|r| r.volume == volume) {
            self.store
                .delete("vpath", &record.id.to_string())
                .map_err(|error| RpcError::internal(error_chain(&error)))?;
        }
        Ok(())
    }
}

pub fn set_domain(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["id", "domain"])?;
    let id = entry_of(control, &params)?.record.id;
    let domain = params.name("domain")?;
    if !control.domains.contains_key(domain) {
        return Err(RpcError::invalid_params(format!(
            "domain: no domain {domain}"
        )));
    }
    let mut record = control.vpaths[&id].record.clone();
    record.domain = domain.to_string();
    control
        .store
        .put("vpath", &id.to_string(), &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    if let Some(entry) = control.vpaths.get_mut(&id) {
        entry.record = record;
    }
    control.recompute_rates();
    control.publish();
    log::info!("virtual path {id} moved to domain {domain}");
    Ok(control.vpaths.get(&id).map(describe).unwrap_or(Value::Null))
}

/// `vpath_get_stats {id?}`: each VP's I/O over the last cycle and since it was made.
pub fn get_stats(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["id"])?;
    let id = params.optional_u64("id")?;
    if let Some(id) = id {
        if !control.vpaths.contains_key(&id) {
            return Err(RpcError::invalid_params(format!(
                "id: no virtual path {id}"
            )));
        }
    }
    let cycle_s = control.cycle_seconds();
    let vpaths: Vec<Value> = control
        .vpaths
        .values()
        .filter(|v| id.map_or(true, |id| v.record.id == id))
        .map(|entry| {
            let mut described = describe(entry);
            let limit = entry.allowance;
            described["last_cycle"] = entry.last.to_json(cycle_s);
            described["total"] = totals_json(&entry.vpath.stats.totals());
            described["limit"] = json!({
                "rw_ios_per_sec": limit.ios_per_sec.round(),
                "rw_mbytes_per_sec": limit.rw_bytes_per_sec / (1024.0 * 1024.0),
                "r_mbytes_per_sec": limit.r_bytes_per_sec / (1024.0 * 1024.0),
                "w_mbytes_per_sec": limit.w_bytes_per_sec / (1024.0 * 1024.0),
            });
            described
        })
        .collect();
    Ok(json!({ "cycle_ms": (cycle_s * 1000.0).round(), "vpaths": vpaths }))
}
