//! Configuration as data: `save_config` returns every object as one JSON document, in
//! dependency order; `load_config` takes such a document as its params and applies it.
//!
//! The document is the store's own records (`store::records`), by kind, in the order a server
//! needs them: LUNs (drivers before the fault LUNs over them), pools, volumes (each volume
//! before its snapshots, each snapshot before its clones), volume sets, mirrors, hosts,
//! domains, virtual paths. The iSCSI target and the NVMe subsystems are not objects: they
//! follow from hosts and VPs. Secrets (CHAP) are left out unless `include_secrets` is true.
//!
//! `load_config` is idempotent and all or nothing:
//!
//! 1. **Validate** the whole document against the current state before touching anything:
//!    an object that exists here and is the same is left alone; one that exists and differs
//!    is refused (domains excepted: their capabilities are policy, and are set); new storage
//!    objects must come with what they stand on (a new pool with its LUNs, a new volume with
//!    its pool), and their names must be free.
//! 2. **Stage** the new storage objects: their records go to a staging store
//!    (`STATE/load-staging/`), and a second [`Control`] is restored from it by the very code
//!    a restart runs (`Control::restore_from`), off the live configuration: LUNs opened,
//!    pools opened and their journals replayed, maps rebuilt, snapshots, sets and mirrors
//!    built. Anything that does not come up whole (a LUN that cannot be opened, a pool whose
//!    metadata is not there) fails the load here, and the staged objects are dropped.
//! 3. **Commit**: the records are written to the real store, the staged objects moved into
//!    the live maps, then hosts, domains and VPs are created by their own RPC methods
//!    (which check them again). Each step that succeeded leaves an undo; the first failure
//!    runs them backwards (VPs deleted, hosts deleted, domains put back, storage objects
//!    removed with their records), so the server ends as it began.
//!
//! What the undo cannot take back: staging opens pools the way a restart does, so a journal
//! is replayed into its records and orphaned extents are freed, which a restart of any
//! server on those LUNs would do the same way; and a VP is published when it is created, so a
//! host that connects in the instant before a later failure undoes it sees its session cut.

use super::{hosts, vpaths, Control};
use crate::backend::LunKind;
use crate::domain::snapshot::Published;
use crate::rpc::RpcError;
use crate::store::records::{
    DomainRecord, HostRecord, LunRecord, MirrorRecord, PoolRecord, VolumeRecord, VolumeSetRecord,
    VpathRecord,
};
use crate::store::FileStore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The document format this server writes and reads (`"sds_config": 1`).
pub const CONFIG_FORMAT: u64 = 1;
/// Where staged objects' records go while `load_config` runs (under the state directory).
const STAGING_DIR: &str = "load-staging";
/// Secret fields: of a LUN record (a remote LUN's CHAP), and of a host's `chap` object.
const LUN_SECRET_KEYS: &[&str] = &["chap_secret"];
const CHAP_SECRET_KEYS: &[&str] = &["secret", "mutual_secret"];
/// How long undoing a staged mirror waits for its resync to stop.
const RESYNC_STOP_WAIT: Duration = Duration::from_millis(crate::constants::MIRROR_DETACH_WAIT_MS);

/// The kinds of objects, in dependency order: the order of the document's `sections`.
pub const SECTION_KINDS: [&str; 8] = [
    "luns",
    "pools",
    "volumes",
    "volume_sets",
    "mirrors",
    "hosts",
    "domains",
    "vpaths",
];

/// The document. On the wire: `{"sds_config": 1, "saved_by", "secrets", "sections":
/// [{"kind": "luns", "records": [...]}, ...]}`, the sections in [`SECTION_KINDS`] order (a
/// JSON object's keys have no order a reader must keep; an array's has). LUNs and hosts are
/// kept as JSON so that a document saved without secrets (which lacks fields the records
/// require) still parses, and says what is missing.
#[derive(Debug, Default)]
pub struct ConfigDocument {
    pub sds_config: u64,
    pub saved_by: String,
    /// Whether the secrets are in it.
    pub secrets: bool,
    pub luns: Vec<Value>,
    pub pools: Vec<PoolRecord>,
    pub volumes: Vec<VolumeRecord>,
    pub volume_sets: Vec<VolumeSetRecord>,
    pub mirrors: Vec<MirrorRecord>,
    pub hosts: Vec<Value>,
    pub domains: Vec<DomainRecord>,
    /// A VP's `id` is this server's; a loading server gives it its own and knows the VP by
    /// its host and volume.
    pub vpaths: Vec<VpathRecord>,
}

fn values<T: Serialize>(records: &[T]) -> Vec<Value> {
    records.iter().map(to_value).collect()
}

fn records_of<T: DeserializeOwned>(kind: &str, records: Vec<Value>) -> Result<Vec<T>, String> {
    records
        .into_iter()
        .map(|value| {
            let name = value
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            serde_json::from_value(value).map_err(|error| format!("{kind}: {name}: {error}"))
        })
        .collect()
}

impl ConfigDocument {
    pub fn to_json(&self) -> Value {
        let sections: [(&str, Vec<Value>); 8] = [
            ("luns", self.luns.clone()),
            ("pools", values(&self.pools)),
            ("volumes", values(&self.volumes)),
            ("volume_sets", values(&self.volume_sets)),
            ("mirrors", values(&self.mirrors)),
            ("hosts", self.hosts.clone()),
            ("domains", values(&self.domains)),
            ("vpaths", values(&self.vpaths)),
        ];
        json!({
            "sds_config": self.sds_config,
            "saved_by": self.saved_by,
            "secrets": self.secrets,
            "sections": sections
                .into_iter()
                .map(|(kind, records)| json!({"kind": kind, "records": records}))
                .collect::<Vec<_>>(),
        })
    }

    /// Reads a document; sections may come in any order, each kind at most once.
    pub fn from_json(value: Value) -> Result<Self, String> {
        let Value::Object(mut object) = value else {
            return Err("the document must be a JSON object".into());
        };
        if let Some(key) = object
            .keys()
            .find(|k| !["sds_config", "saved_by", "secrets", "sections"].contains(&k.as_str()))
        {
            return Err(format!(
                "{key}: unknown key (expected sds_config, saved_by, secrets, sections)"
            ));
        }
        let mut document = Self {
            sds_config: object
                .get("sds_config")
                .and_then(Value::as_u64)
                .ok_or("sds_config: required, the format number")?,
            saved_by: object
                .get("saved_by")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            secrets: object
                .get("secrets")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ..Default::default()
        };
        let sections = match object.remove("sections") {
            Some(Value::Array(sections)) => sections,
            None => Vec::new(),
            Some(_) => return Err("sections: must be a list".into()),
        };
        let mut seen = BTreeSet::new();
        for section in sections {
            let kind = section
                .get("kind")
                .and_then(Value::as_str)
                .ok_or("sections: each needs a kind")?
                .to_string();
            if !SECTION_KINDS.contains(&kind.as_str()) {
                return Err(format!(
                    "sections: unknown kind {kind} (expected one of {})",
                    SECTION_KINDS.join(", ")
                ));
            }
            if !seen.insert(kind.clone()) {
                return Err(format!("sections: {kind} twice"));
            }
            let records = match section.get("records") {
                Some(Value::Array(records)) => records.clone(),
                _ => return Err(format!("sections: {kind}: records must be a list")),
            };
            match kind.as_str() {
                "luns" => document.luns = records,
                "pools" => document.pools = records_of(&kind, records)?,
                "volumes" => document.volumes = records_of(&kind, records)?,
                "volume_sets" => document.volume_sets = records_of(&kind, records)?,
                "mirrors" => document.mirrors = records_of(&kind, records)?,
                "hosts" => document.hosts = records,
                "domains" => document.domains = records_of(&kind, records)?,
                _ => document.vpaths = records_of(&kind, records)?,
            }
        }
        Ok(document)
    }
}

fn internal(what: &str, error: &dyn std::error::Error) -> RpcError {
    RpcError::internal(format!("{what}: {}", crate::logger::error_chain(error)))
}

fn to_value<T: Serialize>(record: &T) -> Value {
    serde_json::to_value(record).unwrap_or(Value::Null)
}

/// Removes the secrets from a LUN's or a host's JSON.
fn strip_secrets(value: &mut Value) {
    if let Some(object) = value.as_object_mut() {
        for key in LUN_SECRET_KEYS {
            object.remove(*key);
        }
        if let Some(chap) = object.get_mut("chap").and_then(Value::as_object_mut) {
            for key in CHAP_SECRET_KEYS {
                chap.remove(*key);
            }
        }
    }
}

fn stripped(mut value: Value) -> Value {
    strip_secrets(&mut value);
    value
}

/// The secret fields a LUN's or a host's JSON names a user for but lacks.
fn missing_secrets(value: &Value) -> Vec<&'static str> {
    let mut missing = Vec::new();
    let has =
        |object: &Map<String, Value>, key: &str| object.get(key).is_some_and(|v| !v.is_null());
    if let Some(object) = value.as_object() {
        if has(object, "chap_user") && !has(object, "chap_secret") {
            missing.push("chap_secret");
        }
        if let Some(chap) = object.get("chap").and_then(Value::as_object) {
            if !has(chap, "secret") {
                missing.push("chap.secret");
            }
            if has(chap, "mutual_user") && !has(chap, "mutual_secret") {
                missing.push("chap.mutual_secret");
            }
        }
    }
    missing
}

/// Orders records so each comes after the ones it names (`depends` gives those names);
/// names outside the list are taken as there already. A cycle (a damaged record) keeps the
/// rest in their original order at the end.
fn dependency_order<T>(
    records: Vec<T>,
    name: impl Fn(&T) -> &str,
    depends: impl Fn(&T) -> Vec<String>,
) -> Vec<T> {
    let names: BTreeSet<String> = records.iter().map(|r| name(r).to_string()).collect();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut waiting = records;
    let mut ordered = Vec::with_capacity(waiting.len());
    while !waiting.is_empty() {
        let before = waiting.len();
        let mut still = Vec::new();
        for record in waiting {
            let ready = depends(&record)
                .iter()
                .all(|d| !names.contains(d) || placed.contains(d));
            if ready {
                placed.insert(name(&record).to_string());
                ordered.push(record);
            } else {
                still.push(record);
            }
        }
        if still.len() == before {
            ordered.extend(still);
            break;
        }
        waiting = still;
    }
    ordered
}

fn list<T: DeserializeOwned>(control: &Control, kind: &str) -> Result<Vec<T>, RpcError> {
    control
        .store
        .list(kind)
        .map_err(|error| internal("reading the configuration store", &error))
}

/// `save_config {include_secrets?}`: every object's record, in dependency order.
pub fn save(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = super::params::Params::new(params, &["include_secrets"])?;
    let include_secrets = params.optional_bool("include_secrets")?.unwrap_or(false);
    Ok(document_of(control, include_secrets)?.to_json())
}

/// The document of everything `control` holds (its store is the truth: failed pools and
/// volumes, and the VPs of failed volumes, are there too).
pub fn document_of(control: &Control, include_secrets: bool) -> Result<ConfigDocument, RpcError> {
    let luns = dependency_order(
        list::<LunRecord>(control, "lun")?,
        |r| &r.name,
        |r| r.base.iter().cloned().collect(),
    );
    let volumes = dependency_order(
        list::<VolumeRecord>(control, "volume")?,
        |r| &r.name,
        |r| {
            [&r.lineage.snapshot_of, &r.lineage.clone_of]
                .into_iter()
                .flatten()
                .cloned()
                .collect()
        },
    );
    let volume_sets = dependency_order(
        list::<VolumeSetRecord>(control, "volume_set")?,
        |r| &r.name,
        |r| r.members.clone(),
    );
    let secret = |value: Value| {
        if include_secrets {
            value
        } else {
            stripped(value)
        }
    };
    let mut vpaths = list::<VpathRecord>(control, "vpath")?;
    vpaths.sort_by_key(|r| r.id);
    Ok(ConfigDocument {
        sds_config: CONFIG_FORMAT,
        saved_by: crate::version::long_version(),
        secrets: include_secrets,
        luns: luns.iter().map(|r| secret(to_value(r))).collect(),
        pools: list(control, "pool")?,
        volumes,
        volume_sets,
        mirrors: list(control, "mirror")?,
        hosts: list::<HostRecord>(control, "host")?
            .iter()
            .map(|r| secret(to_value(r)))
            .collect(),
        domains: list(control, "domain")?,
        vpaths,
    })
}

/// What validation decided: the objects to add (or, for domains, to set).
#[derive(Default)]
struct Plan {
    luns: Vec<LunRecord>,
    pools: Vec<PoolRecord>,
    volumes: Vec<VolumeRecord>,
    volume_sets: Vec<VolumeSetRecord>,
    mirrors: Vec<MirrorRecord>,
    hosts: Vec<HostRecord>,
    domains: Vec<DomainRecord>,
    vpaths: Vec<VpathRecord>,
    unchanged: usize,
}

impl Plan {
    fn storage_is_empty(&self) -> bool {
        self.luns.is_empty()
            && self.pools.is_empty()
            && self.volumes.is_empty()
            && self.volume_sets.is_empty()
            && self.mirrors.is_empty()
    }

    /// Every storage record, as (kind, name, JSON), in dependency order.
    fn storage_records(&self) -> Vec<(&'static str, String, Value)> {
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

fn refuse(message: String) -> RpcError {
    RpcError::invalid_params(message)
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
fn validate(control: &Control, document: &ConfigDocument) -> Result<Plan, RpcError> {
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
    plan.volumes = classify("volume", &volumes, &current, &mut plan.unchanged)?;
    let new_pools: BTreeSet<&str> = plan.pools.iter().map(|p| p.name.as_str()).collect();
    for volume in &plan.volumes {
        if taken(&volume.name) {
            return Err(refuse(format!(
                "volume {}: the name is taken here",
                volume.name
            )));
        }
        if !new_pools.contains(volume.pool.as_str()) {
            let why = if control.pools.contains_key(&volume.pool)
                || control.failed_pools.contains_key(&volume.pool)
            {
                "exists here already: load_config adds volumes with their pool (create this one \
                 with volume_create)"
            } else {
                "is not in the document"
            };
            return Err(refuse(format!(
                "volume {}: its pool {} {why}",
                volume.name, volume.pool
            )));
        }
    }
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

/// The staged storage objects, and what staging left on disk outside the staging store.
struct Staged {
    control: Control,
    /// Mirror dirty logs that did not exist before staging.
    new_logs: Vec<PathBuf>,
}

fn staging_dir(control: &Control) -> PathBuf {
    control.state_dir.join(STAGING_DIR)
}

fn remove_staging(control: &Control) {
    let dir = staging_dir(control);
    if let Err(error) = std::fs::remove_dir_all(&dir) {
        if error.kind() != std::io::ErrorKind::NotFound {
            log::warn!("load_config: cannot remove {}: {error}", dir.display());
        }
    }
}

fn mirror_log(control: &Control, record: &MirrorRecord) -> PathBuf {
    control
        .state_dir
        .join("mirrors")
        .join(format!("{}.dirty", record.uuid))
}

/// Step 2: restores the new storage objects in a Control of their own.
fn stage(control: &Control, plan: &Plan) -> Result<Staged, RpcError> {
    remove_staging(control);
    let store = FileStore::open(&staging_dir(control))
        .map_err(|error| internal("load_config: staging store", &error))?;
    for (kind, name, record) in plan.storage_records() {
        store
            .put(kind, &name, &record)
            .map_err(|error| internal("load_config: staging store", &error))?;
    }
    let new_logs: Vec<PathBuf> = plan
        .mirrors
        .iter()
        .map(|m| mirror_log(control, m))
        .filter(|path| !path.exists())
        .collect();
    let restored = Control::restore_from(
        control.state_dir.clone(),
        store,
        Arc::new(Published::default()),
        control.reactors.clone(),
        control.provisioner.clone(),
        control.cycle_period,
    );
    let staged = match restored {
        Ok(staged) => Staged {
            control: staged,
            new_logs,
        },
        Err(error) => {
            remove_logs(&new_logs);
            return Err(refuse(format!(
                "load_config: the document's objects cannot be restored: {}",
                crate::logger::error_chain(&error)
            )));
        }
    };
    let mut failures: Vec<String> = Vec::new();
    let s = &staged.control;
    failures.extend(s.luns.values().filter_map(|l| {
        l.failed
            .as_ref()
            .map(|why| format!("LUN {}: {why}", l.record.name))
    }));
    failures.extend(
        s.failed_pools
            .iter()
            .map(|(name, p)| format!("pool {name}: {}", p.reason)),
    );
    failures.extend(
        s.failed_volumes
            .iter()
            .map(|(name, v)| format!("volume {name}: {}", v.reason)),
    );
    failures.extend(
        plan.mirrors
            .iter()
            .filter(|m| {
                s.mirrors
                    .get(&m.name)
                    .map_or(true, |entry| !entry.missing.is_empty())
            })
            .map(|m| format!("mirror {}: not every leg could be brought up", m.name)),
    );
    if failures.is_empty() {
        Ok(staged)
    } else {
        discard(staged);
        Err(refuse(format!(
            "load_config: nothing was changed: {}",
            failures.join("; ")
        )))
    }
}

fn remove_logs(paths: &[PathBuf]) {
    for path in paths {
        if let Err(error) = std::fs::remove_file(path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                log::warn!("load_config: cannot remove {}: {error}", path.display());
            }
        }
    }
}

/// Drops staged objects: resyncs stopped, new dirty logs removed; the LUNs close as their
/// last reference goes.
fn discard(staged: Staged) {
    for entry in staged.control.mirrors.values() {
        entry.mirror.resync.stop_and_wait(RESYNC_STOP_WAIT);
    }
    remove_logs(&staged.new_logs);
    drop(staged.control);
}

/// What the commit did, to undo it backwards.
enum Undo {
    Record {
        kind: &'static str,
        name: String,
    },
    Storage {
        luns: Vec<String>,
        pools: Vec<String>,
        volumes: Vec<String>,
        volume_sets: Vec<String>,
        mirrors: Vec<String>,
        logs: Vec<PathBuf>,
    },
    Host(String),
    Domain {
        name: String,
        before: Option<DomainRecord>,
    },
    Vpath(u64),
}

fn undo_all(control: &mut Control, undos: Vec<Undo>) {
    for undo in undos.into_iter().rev() {
        match undo {
            Undo::Record { kind, name } => {
                if let Err(error) = control.store.delete(kind, &name) {
                    log::error!(
                        "load_config: undo: cannot delete {kind} {name}'s record: {}",
                        crate::logger::error_chain(&error)
                    );
                }
            }
            Undo::Storage {
                luns,
                pools,
                volumes,
                volume_sets,
                mirrors,
                logs,
            } => {
                for name in &mirrors {
                    if let Some(entry) = control.mirrors.remove(name) {
                        entry.mirror.resync.stop_and_wait(RESYNC_STOP_WAIT);
                    }
                }
                for name in volumes.iter().chain(&volume_sets).chain(&mirrors) {
                    control.volumes.remove(name);
                }
                for name in &volume_sets {
                    control.volume_sets.remove(name);
                }
                for name in &pools {
                    control.pools.remove(name);
                }
                for name in &luns {
                    control.luns.remove(name);
                }
                remove_logs(&logs);
            }
            Undo::Host(name) => {
                if let Err(error) = hosts::delete(control, Some(json!({ "name": name }))) {
                    log::error!("load_config: undo: host {name}: {}", error.message);
                }
            }
            Undo::Domain { name, before } => {
                let result = match &before {
                    Some(record) => control.store.put("domain", &name, record),
                    None => control.store.delete("domain", &name),
                };
                if let Err(error) = result {
                    log::error!(
                        "load_config: undo: domain {name}: {}",
                        crate::logger::error_chain(&error)
                    );
                }
                match before {
                    Some(record) => {
                        if let Some(entry) = control.domains.get_mut(&name) {
                            entry.record = record;
                        }
                    }
                    None => {
                        control.domains.remove(&name);
                    }
                }
            }
            Undo::Vpath(id) => {
                if let Err(error) = control.remove_vpath(id) {
                    log::error!("load_config: undo: virtual path {id}: {}", error.message);
                }
            }
        }
    }
    control.recompute_rates();
    control.publish();
}

/// Step 3: the records, the staged objects, then hosts, domains and VPs.
fn commit(
    control: &mut Control,
    plan: Plan,
    staged: Option<Staged>,
    undos: &mut Vec<Undo>,
) -> Result<(), RpcError> {
    if let Some(staged) = staged {
        for (kind, name, record) in plan.storage_records() {
            if let Err(error) = control.store.put(kind, &name, &record) {
                discard(staged);
                return Err(internal(
                    &format!("load_config: {kind} {name}'s record"),
                    &error,
                ));
            }
            undos.push(Undo::Record { kind, name });
        }
        let Staged {
            control: staged,
            new_logs,
        } = staged;
        let mut staged = staged;
        let luns: Vec<String> = staged.luns.keys().cloned().collect();
        let pools: Vec<String> = staged.pools.keys().cloned().collect();
        let volume_sets: Vec<String> = staged.volume_sets.keys().cloned().collect();
        let mirrors: Vec<String> = staged.mirrors.keys().cloned().collect();
        let volumes: Vec<String> = staged
            .volumes
            .keys()
            .filter(|n| !staged.volume_sets.contains_key(*n) && !staged.mirrors.contains_key(*n))
            .cloned()
            .collect();
        control.luns.append(&mut staged.luns);
        control.pools.append(&mut staged.pools);
        control.volumes.append(&mut staged.volumes);
        control.volume_sets.append(&mut staged.volume_sets);
        control.mirrors.append(&mut staged.mirrors);
        undos.push(Undo::Storage {
            luns,
            pools,
            volumes,
            volume_sets,
            mirrors,
            logs: new_logs,
        });
        drop(staged);
    }
    for host in plan.hosts {
        let mut params = json!({ "name": host.name, "addresses": host.addresses });
        for (key, value) in [
            ("nbd_tls_subject", &host.nbd_tls_subject),
            ("iqn", &host.iqn),
            ("nqn", &host.nqn),
        ] {
            if let Some(value) = value {
                params[key] = json!(value);
            }
        }
        if let Some(max) = host.max_sessions {
            params["max_sessions"] = json!(max);
        }
        hosts::create(control, Some(params))
            .map_err(|e| refuse(format!("host {}: {}", host.name, e.message)))?;
        undos.push(Undo::Host(host.name.clone()));
        if let Some(chap) = &host.chap {
            let mut params = json!({ "name": host.name, "user": chap.user, "secret": chap.secret });
            if let (Some(user), Some(secret)) = (&chap.mutual_user, &chap.mutual_secret) {
                params["mutual_user"] = json!(user);
                params["mutual_secret"] = json!(secret);
            }
            hosts::set_chap(control, Some(params))
                .map_err(|e| refuse(format!("host {}: CHAP: {}", host.name, e.message)))?;
        }
    }
    for domain in plan.domains {
        let before = control.domains.get(&domain.name).map(|d| d.record.clone());
        control
            .store
            .put("domain", &domain.name, &domain)
            .map_err(|error| internal(&format!("domain {}", domain.name), &error))?;
        undos.push(Undo::Domain {
            name: domain.name.clone(),
            before: before.clone(),
        });
        match control.domains.get_mut(&domain.name) {
            Some(entry) => entry.record = domain,
            None => {
                control.domains.insert(
                    domain.name.clone(),
                    super::domains::DomainEntry::new(domain),
                );
            }
        }
    }
    for vpath in plan.vpaths {
        let params = json!({
            "host": vpath.host,
            "volume": vpath.volume,
            "domain": vpath.domain,
            "mode": vpath.mode,
            "lun": vpath.lun,
        });
        let created = vpaths::create(control, Some(params)).map_err(|e| {
            refuse(format!(
                "virtual path of host {} to volume {}: {}",
                vpath.host, vpath.volume, e.message
            ))
        })?;
        let id = created["id"]
            .as_u64()
            .ok_or_else(|| RpcError::internal("vpath_create answered no id"))?;
        undos.push(Undo::Vpath(id));
    }
    Ok(())
}

/// `load_config DOCUMENT`: applies a `save_config` document (see the module doc).
pub fn load(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = params.ok_or_else(|| refuse("params: the document is required".into()))?;
    let document = ConfigDocument::from_json(params)
        .map_err(|error| refuse(format!("not an sds configuration document: {error}")))?;
    let plan = validate(control, &document)?;
    let staged = if plan.storage_is_empty() {
        None
    } else {
        Some(stage(control, &plan)?)
    };
    remove_staging(control);
    let summary = json!({
        "unchanged": plan.unchanged,
        "created": {
            "luns": plan.luns.len(),
            "pools": plan.pools.len(),
            "volumes": plan.volumes.len(),
            "volume_sets": plan.volume_sets.len(),
            "mirrors": plan.mirrors.len(),
            "hosts": plan.hosts.len(),
            "vpaths": plan.vpaths.len(),
        },
        "domains_set": plan.domains.len(),
    });
    let mut undos = Vec::new();
    match commit(control, plan, staged, &mut undos) {
        Ok(()) => {
            control.recompute_rates();
            control.publish();
            log::info!("load_config: applied: {summary}");
            Ok(summary)
        }
        Err(error) => {
            log::warn!(
                "load_config failed, undoing what it applied: {}",
                error.message
            );
            undo_all(control, undos);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_stripped_and_missing_ones_named() {
        let host = json!({
            "name": "h", "addresses": [],
            "chap": {"user": "u", "secret": "s3cret-s3cret", "mutual_user": "t", "mutual_secret": "m"}
        });
        let bare = stripped(host.clone());
        assert_eq!(bare["chap"], json!({"user": "u", "mutual_user": "t"}));
        assert_eq!(missing_secrets(&host), Vec::<&str>::new());
        assert_eq!(
            missing_secrets(&bare),
            vec!["chap.secret", "chap.mutual_secret"]
        );
        let lun = json!({"name": "r", "chap_user": "u", "chap_secret": "x"});
        assert_eq!(stripped(lun.clone()).get("chap_secret"), None);
        assert_eq!(missing_secrets(&stripped(lun)), vec!["chap_secret"]);
    }

    #[test]
    fn records_come_after_what_they_name() {
        let records = vec![
            ("clone", vec!["snap"]),
            ("snap", vec!["vol"]),
            ("other", vec!["elsewhere"]),
            ("vol", vec![]),
        ];
        let ordered = dependency_order(
            records,
            |r| r.0,
            |r| r.1.iter().map(|s| s.to_string()).collect(),
        );
        let names: Vec<&str> = ordered.iter().map(|r| r.0).collect();
        assert_eq!(names, ["other", "vol", "snap", "clone"]);
    }
}
