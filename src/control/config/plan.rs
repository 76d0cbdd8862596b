//! Step 1 of `load_config`: the whole document checked against the current state, into a
//! [`Plan`] of what to add; nothing is changed.

use super::document::{missing_secrets, stripped};
use super::{list, refuse, to_value, ConfigDocument, CONFIG_FORMAT};
use crate::backend::LunKind;
use crate::constants::{MAX_LUNS, MAX_MIRRORS, MAX_POOLS, MAX_VOLUMES};
use crate::control::Control;
use crate::rpc::RpcError;
use crate::store::records::{
    DomainRecord, HostRecord, LunRecord, MirrorRecord, PoolRecord, VolumeRecord, VolumeSetRecord,
    VpathRecord,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What validation decided: the objects to add (or, for domains, to set).
#[derive(Default)]
pub(super) struct Plan {
    pub(super) luns: Vec<LunRecord>,
    pub(super) pools: Vec<PoolRecord>,
    pub(super) volumes: Vec<VolumeRecord>,
    /// Plain volumes new to a pool this server has already: made as `volume_create` makes
    /// them (empty), with the document's UUID.
    pub(super) fresh_volumes: Vec<VolumeRecord>,
    pub(super) volume_sets: Vec<VolumeSetRecord>,
    pub(super) mirrors: Vec<MirrorRecord>,
    pub(super) hosts: Vec<HostRecord>,
    pub(super) domains: Vec<DomainRecord>,
    pub(super) vpaths: Vec<VpathRecord>,
    pub(super) unchanged: usize,
}

impl Plan {
    pub(super) fn storage_is_empty(&self) -> bool {
        self.luns.is_empty()
            && self.pools.is_empty()
            && self.volumes.is_empty()
            && self.volume_sets.is_empty()
            && self.mirrors.is_empty()
    }

    /// Every storage record, as (kind, name, JSON), in dependency order.
    pub(super) fn storage_records(&self) -> Vec<(&'static str, String, Value)> {
        let mut records = Vec::new();
        records.extend(
            self.luns
                .iter()
                .map(|r| ("lun", r.name.clone(), to_value(r))),
        );
        records.extend(
            self.pools
                .iter()
                .map(|r| ("pool", r.name.clone(), to_value(r))),
        );
        records.extend(
            self.volumes
                .iter()
                .map(|r| ("volume", r.name.clone(), to_value(r))),
        );
        records.extend(
            self.volume_sets
                .iter()
                .map(|r| ("volume_set", r.name.clone(), to_value(r))),
        );
        records.extend(
            self.mirrors
                .iter()
                .map(|r| ("mirror", r.name.clone(), to_value(r))),
        );
        records
    }
}

/// Sorts the document's objects of one kind into new ones and ones that are here already
/// (the same, else refused). `current` holds this server's records of the kind by name.
fn classify<T: Serialize + Clone>(
    kind: &str,
    incoming: &[(String, Value, T)],
    current: &BTreeMap<String, Value>,
    unchanged: &mut usize,
) -> Result<Vec<T>, RpcError> {
    let mut seen = BTreeSet::new();
    let mut new = Vec::new();
    for (name, value, record) in incoming {
        if !seen.insert(name.clone()) {
            return Err(refuse(format!("{kind} {name} is in the document twice")));
        }
        match current.get(name) {
            Some(here) if stripped(here.clone()) == stripped(value.clone()) => *unchanged += 1,
            Some(here) => {
                return Err(refuse(format!(
                    "{kind} {name} exists here and differs: here {}, in the document {}",
                    stripped(here.clone()),
                    stripped(value.clone())
                )))
            }
            None => new.push(record.clone()),
        }
    }
    Ok(new)
}

fn current_of<T: Serialize + DeserializeOwned>(
    control: &Control,
    kind: &str,
    name: impl Fn(&T) -> String,
) -> Result<BTreeMap<String, Value>, RpcError> {
    Ok(list::<T>(control, kind)?
        .iter()
        .map(|r| (name(r), to_value(r)))
        .collect())
}

fn parse<T: DeserializeOwned>(kind: &str, value: &Value) -> Result<T, RpcError> {
    let name = value.get("name").and_then(Value::as_str).unwrap_or("?");
    serde_json::from_value(value.clone()).map_err(|error| refuse(format!("{kind} {name}: {error}")))
}

/// Step 1: checks the whole document against this server; changes nothing.
pub(super) fn validate(control: &Control, document: &ConfigDocument) -> Result<Plan, RpcError> {
    if document.sds_config != CONFIG_FORMAT {
        return Err(refuse(format!(
            "sds_config: format {} is not the one this server reads ({CONFIG_FORMAT})",
            document.sds_config
        )));
    }
    let mut plan = Plan::default();

    let mut luns = Vec::new();
    for value in &document.luns {
        let record: LunRecord = parse("lun", value)?;
        luns.push((record.name.clone(), value.clone(), record));
    }
    let current = current_of::<LunRecord>(control, "lun", |r| r.name.clone())?;
    plan.luns = classify("LUN", &luns, &current, &mut plan.unchanged)?;
    for record in &plan.luns {
        let value = luns
            .iter()
            .find(|(n, _, _)| *n == record.name)
            .map(|(_, v, _)| v);
        if let Some(missing) = value.map(missing_secrets).filter(|m| !m.is_empty()) {
            return Err(refuse(format!(
                "LUN {}: the document has no {} (save it with include_secrets)",
                record.name,
                missing.join(", ")
            )));
        }
        if record.kind == LunKind::Fault {
            let base = record.base.clone().unwrap_or_default();
            if !plan.luns.iter().any(|l| l.name == base) {
                return Err(refuse(format!(
                    "LUN {}: its base LUN {base} must be loaded with it",
                    record.name
                )));
            }
        }
    }

    let pools: Vec<_> = document
        .pools
        .iter()
        .map(|r| (r.name.clone(), to_value(r), r.clone()))
        .collect();
    let current = current_of::<PoolRecord>(control, "pool", |r| r.name.clone())?;
    plan.pools = classify("pool", &pools, &current, &mut plan.unchanged)?;
    let new_luns: BTreeSet<&str> = plan.luns.iter().map(|l| l.name.as_str()).collect();
    let mut pooled = BTreeSet::new();
    for pool in &plan.pools {
        for lun in &pool.luns {
            if !new_luns.contains(lun.as_str()) {
                let why = if control.luns.contains_key(lun) {
                    "exists here already (a pool is loaded with its LUNs)"
                } else {
                    "is not in the document"
                };
                return Err(refuse(format!("pool {}: its LUN {lun} {why}", pool.name)));
            }
            if !pooled.insert(lun.clone()) {
                return Err(refuse(format!("LUN {lun} is in two pools")));
            }
        }
    }

    // Volumes, sets and mirrors share one namespace.
    let taken = |name: &str| {
        control.volumes.contains_key(name)
            || control.failed_volumes.contains_key(name)
            || control.volume_sets.contains_key(name)
            || control.mirrors.contains_key(name)
    };
    let volumes: Vec<_> = document
        .volumes
        .iter()
        .map(|r| (r.name.clone(), to_value(r), r.clone()))
        .collect();
    let current = current_of::<VolumeRecord>(control, "volume", |r| r.name.clone())?;
    let new_pools: BTreeSet<String> = plan.pools.iter().map(|p| p.name.clone()).collect();
    let (staged_volumes, fresh_volumes): (Vec<VolumeRecord>, Vec<VolumeRecord>) =
        classify("volume", &volumes, &current, &mut plan.unchanged)?
            .into_iter()
            .partition(|v| new_pools.contains(&v.pool));
    plan.volumes = staged_volumes;
    for volume in plan.volumes.iter().chain(&fresh_volumes) {
        if taken(&volume.name) {
            return Err(refuse(format!(
                "volume {}: the name is taken here",
                volume.name
            )));
        }
    }
    // A volume for a pool this server has: a plain one is made empty, as volume_create makes
    // it; a snapshot or clone holds data only its own pool has, so it comes with its pool.
    for volume in &fresh_volumes {
        let why = if control.failed_pools.contains_key(&volume.pool) {
            "is failed here"
        } else if !control.pools.contains_key(&volume.pool) {
            "is not in the document"
        } else if volume.lineage != Default::default() {
            "exists here already, and a snapshot or clone is loaded only with its pool"
        } else {
            continue;
        };
        return Err(refuse(format!(
            "volume {}: its pool {} {why}",
            volume.name, volume.pool
        )));
    }
    plan.fresh_volumes = fresh_volumes;
    let new_volumes: BTreeSet<&str> = plan.volumes.iter().map(|v| v.name.as_str()).collect();

    let sets: Vec<_> = document
        .volume_sets
        .iter()
        .map(|r| (r.name.clone(), to_value(r), r.clone()))
        .collect();
    let current = current_of::<VolumeSetRecord>(control, "volume_set", |r| r.name.clone())?;
    plan.volume_sets = classify("volume set", &sets, &current, &mut plan.unchanged)?;
    let mirrors: Vec<_> = document
        .mirrors
        .iter()
        .map(|r| (r.name.clone(), to_value(r), r.clone()))
        .collect();
    let current = current_of::<MirrorRecord>(control, "mirror", |r| r.name.clone())?;
    plan.mirrors = classify("mirror", &mirrors, &current, &mut plan.unchanged)?;
    let composites = plan
        .volume_sets
        .iter()
        .map(|s| ("volume set", &s.name, &s.members))
        .chain(plan.mirrors.iter().map(|m| ("mirror", &m.name, &m.legs)));
    for (what, name, parts) in composites {
        if taken(name) || new_volumes.contains(name.as_str()) {
            return Err(refuse(format!("{what} {name}: the name is taken")));
        }
        if let Some(part) = parts.iter().find(|p| !new_volumes.contains(p.as_str())) {
            return Err(refuse(format!(
                "{what} {name}: its volume {part} must be loaded with it"
            )));
        }
    }

    // The limits each create method keeps, for the objects that bypass those methods.
    let volumes_after = control.volumes.len()
        + control.failed_volumes.len()
        + plan.volumes.len()
        + plan.fresh_volumes.len()
        + plan.volume_sets.len()
        + plan.mirrors.len();
    let limits = [
        ("LUNs", control.luns.len() + plan.luns.len(), MAX_LUNS),
        (
            "pools",
            control.pools.len() + control.failed_pools.len() + plan.pools.len(),
            MAX_POOLS,
        ),
        ("volumes", volumes_after, MAX_VOLUMES),
        (
            "mirrors",
            control.mirrors.len() + plan.mirrors.len(),
            MAX_MIRRORS,
        ),
    ];
    if let Some((what, count, limit)) = limits.iter().find(|(_, count, limit)| count > limit) {
        return Err(refuse(format!(
            "{what}: the server would have {count}, more than the {limit} it may have"
        )));
    }

    let mut hosts = Vec::new();
    for value in &document.hosts {
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        // A host saved without secrets parses as one without CHAP; its secrets are checked below.
        let mut parsable = value.clone();
        if !missing_secrets(value).is_empty() {
            if let Some(object) = parsable.as_object_mut() {
                object.remove("chap");
            }
        }
        let record: HostRecord = parse("host", &parsable)?;
        hosts.push((name, value.clone(), record));
    }
    let current = current_of::<HostRecord>(control, "host", |r| r.name.clone())?;
    plan.hosts = classify("host", &hosts, &current, &mut plan.unchanged)?;
    for host in &plan.hosts {
        let value = hosts
            .iter()
            .find(|(n, _, _)| *n == host.name)
            .map(|(_, v, _)| v);
        if let Some(missing) = value.map(missing_secrets).filter(|m| !m.is_empty()) {
            return Err(refuse(format!(
                "host {}: the document has no {} (save it with include_secrets)",
                host.name,
                missing.join(", ")
            )));
        }
    }

    let mut names = BTreeSet::new();
    for domain in &document.domains {
        if !names.insert(domain.name.clone()) {
            return Err(refuse(format!(
                "domain {} is in the document twice",
                domain.name
            )));
        }
        match control.domains.get(&domain.name) {
            Some(here) if here.record == *domain => plan.unchanged += 1,
            _ => plan.domains.push(domain.clone()),
        }
    }
    let new_domains = plan
        .domains
        .iter()
        .filter(|d| !control.domains.contains_key(&d.name))
        .count();
    if control.domains.len() + new_domains > crate::constants::MAX_DOMAINS {
        return Err(refuse(format!(
            "domains: more than the {} a server may have",
            crate::constants::MAX_DOMAINS
        )));
    }

    let known_volume = |name: &str| {
        control.volumes.contains_key(name)
            || new_volumes.contains(name)
            || plan.fresh_volumes.iter().any(|v| v.name == name)
            || plan.volume_sets.iter().any(|s| s.name == name)
            || plan.mirrors.iter().any(|m| m.name == name)
    };
    let mut pairs = BTreeSet::new();
    for vpath in &document.vpaths {
        let pair = (vpath.host.clone(), vpath.volume.clone());
        if !pairs.insert(pair) {
            return Err(refuse(format!(
                "virtual path {}: host {} has two to volume {}",
                vpath.id, vpath.host, vpath.volume
            )));
        }
        let here = control
            .vpaths
            .values()
            .find(|v| v.record.host == vpath.host && v.record.volume == vpath.volume);
        match here {
            Some(here) => {
                let same = here.record.domain == vpath.domain
                    && here.record.mode == vpath.mode
                    && here.record.lun == vpath.lun;
                if !same {
                    return Err(refuse(format!(
                        "virtual path of host {} to volume {} exists here ({}) and differs",
                        vpath.host, vpath.volume, here.record.id
                    )));
                }
                plan.unchanged += 1;
            }
            None => {
                if !control.hosts.contains_key(&vpath.host)
                    && !plan.hosts.iter().any(|h| h.name == vpath.host)
                {
                    return Err(refuse(format!(
                        "virtual path {}: no host {}",
                        vpath.id, vpath.host
                    )));
                }
                if !known_volume(&vpath.volume) {
                    return Err(refuse(format!(
                        "virtual path {}: no volume {} (it is failed or missing)",
                        vpath.id, vpath.volume
                    )));
                }
                if !control.domains.contains_key(&vpath.domain)
                    && !plan.domains.iter().any(|d| d.name == vpath.domain)
                {
                    return Err(refuse(format!(
                        "virtual path {}: no domain {}",
                        vpath.id, vpath.domain
                    )));
                }
                plan.vpaths.push(vpath.clone());
            }
        }
    }
    Ok(plan)
}
