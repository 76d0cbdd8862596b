//! Steps 2 and 3 of `load_config`: the new storage objects staged in a `Control` of their
//! own, then the commit into the live one with an undo log.

use super::plan::Plan;
use super::{internal, refuse};
use crate::control::{hosts, vpaths, Control};
use crate::domain::snapshot::Published;
use crate::rpc::RpcError;
use crate::store::records::{DomainRecord, MirrorRecord};
use crate::store::FileStore;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where staged objects' records go while `load_config` runs (under the state directory).
const STAGING_DIR: &str = "load-staging";
/// How long undoing a staged mirror waits for its resync to stop.
const RESYNC_STOP_WAIT: Duration = Duration::from_millis(crate::constants::MIRROR_DETACH_WAIT_MS);

/// The staged storage objects, and what staging left on disk outside the staging store.
pub(super) struct Staged {
    control: Control,
    /// Mirror dirty logs that did not exist before staging.
    new_logs: Vec<PathBuf>,
}

fn staging_dir(control: &Control) -> PathBuf {
    control.state_dir.join(STAGING_DIR)
}

pub(super) fn remove_staging(control: &Control) {
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
pub(super) fn stage(control: &Control, plan: &Plan) -> Result<Staged, RpcError> {
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
pub(super) enum Undo {
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
    FreshVolume(String),
    Host(String),
    Domain {
        name: String,
        before: Option<DomainRecord>,
    },
    Vpath(u64),
}

pub(super) fn undo_all(control: &mut Control, undos: Vec<Undo>) {
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
            Undo::FreshVolume(name) => {
                let params = Some(json!({ "name": name }));
                if let Err(error) = crate::control::failed::volume_delete(control, params) {
                    log::error!("load_config: undo: volume {name}: {}", error.message);
                }
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
pub(super) fn commit(
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
        // Their lineages are their own pools', but every flag is derived from all views.
        crate::control::snapshots::update_histories(control);
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
    for volume in plan.fresh_volumes {
        let name = volume.name.clone();
        crate::control::volumes::create_with(control, volume)
            .map_err(|e| refuse(format!("volume {name}: {}", e.message)))?;
        undos.push(Undo::FreshVolume(name));
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
                    crate::control::domains::DomainEntry::new(domain),
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
