//! `domain_*` methods: storage domains and their capabilities. The `default` domain always
//! exists: as made, it limits nothing and allows everything, so it never contradicts what
//! other domains enforce; it can be given capabilities but not deleted.

use super::params::{one_or_all, Params};
use super::stats::{totals_json, CycleStats};
use super::Control;
use crate::constants::MAX_DOMAINS;
use crate::domain::capabilities::Capabilities;
use crate::domain::stats::VpTotals;
use crate::logger::error_chain;
use crate::rpc::RpcError;
use crate::store::records::DomainRecord;
use serde_json::{json, Value};

pub const DEFAULT_DOMAIN: &str = "default";

pub struct DomainEntry {
    pub record: DomainRecord,
    /// Everything its VPs did while they were in it.
    pub totals: VpTotals,
    pub last: CycleStats,
}

impl DomainEntry {
    pub fn new(record: DomainRecord) -> Self {
        Self {
            record,
            totals: VpTotals::default(),
            last: CycleStats::default(),
        }
    }
}

pub fn describe(control: &Control, entry: &DomainEntry) -> Value {
    let vpaths: Vec<u64> = control
        .vpaths
        .values()
        .filter(|v| v.record.domain == entry.record.name)
        .map(|v| v.record.id)
        .collect();
    json!({
        "name": entry.record.name,
        "capabilities": entry.record.capabilities.to_json(),
        "vpaths": vpaths,
    })
}

fn capabilities_of(params: &Params, base: Capabilities) -> Result<Capabilities, RpcError> {
    let mut capabilities = base;
    if let Some(value) = params.optional_value("capabilities") {
        capabilities
            .merge(value)
            .map_err(RpcError::invalid_params)?;
    }
    Ok(capabilities)
}

pub fn create(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "capabilities"])?;
    let name = params.name("name")?;
    let capabilities = capabilities_of(&params, Capabilities::default())?;
    if control.domains.contains_key(name) {
        return Err(RpcError::invalid_params(format!(
            "name: domain {name} already exists"
        )));
    }
    if control.domains.len() >= MAX_DOMAINS {
        return Err(RpcError::invalid_params(format!(
            "name: the server already has {MAX_DOMAINS} domains"
        )));
    }
    let record = DomainRecord {
        name: name.to_string(),
        capabilities,
    };
    control
        .store
        .put("domain", name, &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    let entry = DomainEntry::new(record);
    let described = describe(control, &entry);
    control.domains.insert(name.to_string(), entry);
    log::info!("domain {name} created");
    Ok(described)
}

pub fn set_capabilities(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name", "capabilities"])?;
    let name = params.name("name")?;
    let entry = control
        .domains
        .get(name)
        .ok_or_else(|| RpcError::invalid_params(format!("name: no domain {name}")))?;
    if params.optional_value("capabilities").is_none() {
        return Err(RpcError::invalid_params(
            "capabilities: missing required parameter",
        ));
    }
    let capabilities = capabilities_of(&params, entry.record.capabilities)?;
    let mut record = entry.record.clone();
    record.capabilities = capabilities;
    control
        .store
        .put("domain", name, &record)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    if let Some(entry) = control.domains.get_mut(name) {
        entry.record = record;
    }
    // The new limits reach the reactors now, not at the next cycle.
    control.recompute_rates();
    control.publish();
    log::info!("domain {name}: capabilities changed");
    let entry = control.domains.get(name).map(|e| describe(control, e));
    Ok(entry.unwrap_or(Value::Null))
}

pub fn get(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    one_or_all(params, &control.domains, "domain", |entry| {
        describe(control, entry)
    })
}

pub fn delete(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    let name = params.name("name")?;
    if !control.domains.contains_key(name) {
        return Err(RpcError::invalid_params(format!("name: no domain {name}")));
    }
    if name == DEFAULT_DOMAIN {
        return Err(RpcError::invalid_params(
            "name: the default domain cannot be deleted",
        ));
    }
    let members = control
        .vpaths
        .values()
        .filter(|v| v.record.domain == name)
        .count();
    if members > 0 {
        return Err(RpcError::invalid_params(format!(
            "name: domain {name} still has {members} virtual paths"
        )));
    }
    control
        .store
        .delete("domain", name)
        .map_err(|error| RpcError::internal(error_chain(&error)))?;
    control.domains.remove(name);
    log::info!("domain {name} deleted");
    Ok(Value::Bool(true))
}

/// `domain_get_stats {name?}`: what each domain's VPs did, over the last cycle and since start.
pub fn get_stats(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["name"])?;
    let name = params.optional_name("name")?;
    if let Some(name) = name {
        if !control.domains.contains_key(name) {
            return Err(RpcError::invalid_params(format!("name: no domain {name}")));
        }
    }
    let cycle_s = control.cycle_seconds();
    let domains: Vec<Value> = control
        .domains
        .values()
        .filter(|entry| name.map_or(true, |n| n == entry.record.name))
        .map(|entry| {
            json!({
                "name": entry.record.name,
                "vpaths": control.vpaths.values().filter(|v| v.record.domain == entry.record.name).count(),
                "last_cycle": entry.last.to_json(cycle_s),
                "total": totals_json(&entry.totals),
            })
        })
        .collect();
    Ok(json!({ "cycle_ms": (cycle_s * 1000.0).round(), "domains": domains }))
}
