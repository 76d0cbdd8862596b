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
//!    objects must come with what they stand on (a new pool with its LUNs, a snapshot or a
//!    clone with its pool, a set or a mirror with its volumes), and their names must be free.
//!    A plain volume new to a pool this server has is not staged: step 3 makes it empty, as
//!    `volume_create` does, with the document's UUID.
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
//!
//! Files: `document` (the format, secrets, dependency order), `plan` (step 1),
//! `apply` (steps 2 and 3 and the undo).

mod apply;
mod document;
mod plan;

pub use document::{ConfigDocument, CONFIG_FORMAT, SECTION_KINDS};

use super::Control;
use crate::rpc::RpcError;
use crate::store::records::{HostRecord, LunRecord, VolumeRecord, VolumeSetRecord, VpathRecord};
use apply::{commit, remove_staging, stage, undo_all};
use document::{dependency_order, stripped};
use plan::validate;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

pub(super) fn internal(what: &str, error: &dyn std::error::Error) -> RpcError {
    RpcError::internal(format!("{what}: {}", crate::logger::error_chain(error)))
}

pub(super) fn to_value<T: Serialize>(record: &T) -> Value {
    serde_json::to_value(record).unwrap_or(Value::Null)
}

pub(super) fn refuse(message: String) -> RpcError {
    RpcError::invalid_params(message)
}

pub(super) fn list<T: DeserializeOwned>(control: &Control, kind: &str) -> Result<Vec<T>, RpcError> {
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
            "volumes": plan.volumes.len() + plan.fresh_volumes.len(),
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
