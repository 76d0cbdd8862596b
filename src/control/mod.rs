//! The control thread: the only owner and mutator of configuration.
//!
//! RPC requests arrive through [`ControlDispatch`] and run one at a time on this thread. A
//! method validates everything first, then persists the new records ([`crate::store`]), then
//! changes the live objects, then publishes a new [`Snapshot`] to the data path with one
//! atomic swap. A failed call changes nothing.
//!
//! Adding a method: write it in the file of its noun (`luns`, `pools`, `volumes`,
//! `volume_sets`, `hosts`,
//! `domains`, `vpaths`, `iscsi`, `nvmf`; the SPDK-named ones in `spdk`) and add one line to
//! [`methods::METHODS`]. Pool and volume methods that must not touch what a failed LUN took
//! down go through the guards in `failed`; `cycle` is the control loop, `lun_errors` its
//! rate-limited LUN error log, `stats` the statistics methods.

pub mod config;
mod cycle;
mod domains;
mod failed;
mod hosts;
pub mod iscsi;
mod lun_errors;
mod luns;
pub mod metrics;
pub mod mirrors;
pub mod nvmf;
pub use luns::error_chain as luns_error_chain;
pub mod methods;
pub mod params;
mod pools;
pub mod snapshots;
mod spdk;
mod stats;
mod volume_sets;
mod volumes;
mod vpaths;
pub mod watchdog;

use crate::backend::fault::{FaultLun, MissingLun};
use crate::backend::{reopen_lun, Lun, LunKind, LunSpec};
use crate::constants::CONTROL_QUEUE_CAPACITY;
use crate::domain::host::Host;
use crate::domain::snapshot::{PathView, Published, Snapshot};
use crate::domain::vpath::Vpath;
use crate::identity::Uuid;
use crate::pool::Pool;
use crate::reactor::ReactorHandle;
use crate::rpc::{Dispatch, RpcError};
use crate::store::records::{
    DomainRecord, HostRecord, LunRecord, PoolRecord, VolumeRecord, VolumeSetRecord, VpathRecord,
};
use crate::store::{FileStore, StoreError};
use crate::volume::provisioner::Provisioner;
use crate::volume::Volume;
use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("restoring {what}: {detail}")]
    Inconsistent { what: String, detail: String },
    #[error("cannot start the control thread")]
    Thread(#[source] std::io::Error),
}

pub struct LunEntry {
    pub record: LunRecord,
    pub lun: Arc<dyn Lun>,
    pub pool: Option<String>,
    /// For a fault LUN: the same object as `lun`, for injecting faults.
    pub fault: Option<Arc<FaultLun>>,
    /// The fault LUN that wraps this one: it owns it as a pool would (no pool, no delete).
    pub wrapped_by: Option<String>,
    /// Why the LUN could not be opened at start-up (`lun` is then a [`MissingLun`]).
    pub failed: Option<String>,
}

pub struct PoolEntry {
    pub record: PoolRecord,
    pub pool: Arc<Pool>,
    /// Whether allocation was past the record's threshold at the last control cycle.
    pub threshold_watch: crate::pool::threshold::ThresholdWatch,
}

pub struct VolumeEntry {
    pub record: VolumeRecord,
    pub volume: Arc<Volume>,
}

/// A pool that could not be opened at start-up (one of its LUNs failed, or its metadata could
/// not be read): listed with the reason, never served, deletable.
pub struct FailedPool {
    pub record: PoolRecord,
    pub reason: String,
}

/// A volume of a failed pool: listed with the reason, not exported, deletable.
pub struct FailedVolume {
    pub record: VolumeRecord,
    pub reason: String,
}

/// Everything the control thread owns.
pub struct Control {
    pub state_dir: PathBuf,
    pub store: FileStore,
    pub luns: BTreeMap<String, LunEntry>,
    pub pools: BTreeMap<String, PoolEntry>,
    pub volumes: BTreeMap<String, VolumeEntry>,
    /// Pools and volumes a failed LUN took down at start-up, kept apart from the live ones.
    pub failed_pools: BTreeMap<String, FailedPool>,
    pub failed_volumes: BTreeMap<String, FailedVolume>,
    /// Volume sets by name (each also in `volumes`, or `failed_volumes`, as a volume).
    pub volume_sets: BTreeMap<String, VolumeSetRecord>,
    pub hosts: BTreeMap<String, hosts::HostEntry>,
    pub domains: BTreeMap<String, domains::DomainEntry>,
    pub vpaths: BTreeMap<u64, vpaths::VpathEntry>,
    /// Synchronous mirrors (each also listed in `volumes`, see [`mirrors`]).
    pub mirrors: BTreeMap<String, mirrors::MirrorEntry>,
    pub next_vpath_id: u64,
    pub published: Arc<Published>,
    pub reactors: Vec<Arc<ReactorHandle>>,
    pub provisioner: Provisioner,
    pub started: Instant,
    /// The control loop's period, when the last cycle ran and how long it lasted.
    pub cycle_period: Duration,
    pub last_cycle_at: Instant,
    pub last_cycle_s: f64,
    /// The iSCSI target, for `iscsi_*` (set by `serve` before the control thread starts).
    pub iscsi: Option<iscsi::IscsiTarget>,
    /// The NVMe/TCP front end, for `nvmf_*` and the events its controllers are told of (set
    /// by `serve` before the control thread starts).
    pub nvmf: Option<nvmf::NvmfTarget>,
    /// `--metrics-listen`: where the control cycle leaves its metrics snapshots.
    pub metrics: Option<metrics::MetricsGatherer>,
    generation: u64,
}

impl Control {
    /// Restores the configuration from the store: LUNs, then pools (reading their extent
    /// records), then volumes (rebuilding their maps from those records), then volume sets. A LUN that cannot be
    /// opened does not stop the server: it is kept as failed, its pool comes up failed, and
    /// that pool's volumes are listed as failed and not served; everything else serves.
    pub fn restore(
        state_dir: PathBuf,
        published: Arc<Published>,
        reactors: Vec<Arc<ReactorHandle>>,
        provisioner: Provisioner,
        cycle_period: Duration,
    ) -> Result<Self, ControlError> {
        let store = FileStore::open(&state_dir)?;
        Self::restore_from(
            state_dir,
            store,
            published,
            reactors,
            provisioner,
            cycle_period,
        )
    }

    /// [`Control::restore`] from the records of `store`, which need not be `state_dir`'s own
    /// (`load_config` restores the objects it adds from a staging store, see `config`).
    pub fn restore_from(
        state_dir: PathBuf,
        store: FileStore,
        published: Arc<Published>,
        reactors: Vec<Arc<ReactorHandle>>,
        provisioner: Provisioner,
        cycle_period: Duration,
    ) -> Result<Self, ControlError> {
        let mut control = Self {
            state_dir,
            store,
            luns: BTreeMap::new(),
            pools: BTreeMap::new(),
            volumes: BTreeMap::new(),
            failed_pools: BTreeMap::new(),
            failed_volumes: BTreeMap::new(),
            volume_sets: BTreeMap::new(),
            hosts: BTreeMap::new(),
            domains: BTreeMap::new(),
            vpaths: BTreeMap::new(),
            mirrors: BTreeMap::new(),
            next_vpath_id: 1,
            published,
            reactors,
            provisioner,
            started: Instant::now(),
            cycle_period,
            last_cycle_at: Instant::now(),
            last_cycle_s: cycle_period.as_secs_f64(),
            iscsi: None,
            nvmf: None,
            metrics: None,
            generation: 0,
        };
        control.restore_luns()?;
        let mut found_by_pool = HashMap::new();
        for record in control.store.list::<PoolRecord>("pool")? {
            let mut luns = Vec::with_capacity(record.luns.len());
            let mut failure = None;
            for name in &record.luns {
                let entry = control
                    .luns
                    .get(name)
                    .ok_or_else(|| ControlError::Inconsistent {
                        what: format!("pool {}", record.name),
                        detail: format!(
                            "its LUN {name} has no record ({} is missing)",
                            control.store.record_path("lun", name).display()
                        ),
                    })?;
                if failure.is_none() {
                    failure = luns::failure(&control.luns, entry)
                        .map(|why| format!("LUN {name} is failed: {why}"));
                }
                luns.push(entry.lun.clone());
                if let Some(entry) = control.luns.get_mut(name) {
                    entry.pool = Some(record.name.clone());
                }
            }
            let opened = match failure {
                Some(reason) => Err(reason),
                None => Pool::open(&record.name, record.uuid.0, record.extent_size, luns)
                    .map_err(|error| luns::error_chain(&error)),
            };
            match opened {
                Ok((pool, found)) => {
                    if pool.started_empty {
                        log::warn!(
                            "pool {} is volatile (RAM LUNs only): it starts empty, and what its \
                             volumes held before this start is gone",
                            record.name
                        );
                    }
                    found_by_pool.insert(record.name.clone(), found);
                    control.pools.insert(
                        record.name.clone(),
                        PoolEntry {
                            record,
                            pool: Arc::new(pool),
                            threshold_watch: Default::default(),
                        },
                    );
                }
                Err(reason) => {
                    log::error!(
                        "pool {} is failed and its volumes are not served: {reason}",
                        record.name
                    );
                    control
                        .failed_pools
                        .insert(record.name.clone(), FailedPool { record, reason });
                }
            }
        }
        for record in control.store.list::<VolumeRecord>("volume")? {
            if let Some(failed) = control.failed_pools.get(&record.pool) {
                let reason = format!("pool {} is failed: {}", record.pool, failed.reason);
                control
                    .failed_volumes
                    .insert(record.name.clone(), FailedVolume { record, reason });
                continue;
            }
            let pool =
                control
                    .pools
                    .get(&record.pool)
                    .ok_or_else(|| ControlError::Inconsistent {
                        what: format!("volume {}", record.name),
                        detail: format!(
                            "its pool {} has no record ({} is missing)",
                            record.pool,
                            control.store.record_path("pool", &record.pool).display()
                        ),
                    })?;
            // volume_create and volume_resize never record more; a record that says so was
            // edited or damaged, and its map could not be built.
            if record.size.div_ceil(pool.pool.extent_bytes) > crate::constants::MAX_VOLUME_EXTENTS {
                return Err(ControlError::Inconsistent {
                    what: format!(
                        "volume {} ({})",
                        record.name,
                        control.store.record_path("volume", &record.name).display()
                    ),
                    detail: format!(
                        "its size {} is more than {} extents",
                        record.size,
                        crate::constants::MAX_VOLUME_EXTENTS
                    ),
                });
            }
            let volume = Volume::new(
                &record.name,
                record.uuid.0,
                pool.pool.clone(),
                record.size,
                record.block_size,
                record.thin,
            )
            .restored()
            .with_lineage(
                record.lineage.view(record.uuid.0),
                record.lineage.is_snapshot(),
            );
            control.volumes.insert(
                record.name.clone(),
                VolumeEntry {
                    record,
                    volume: Arc::new(volume),
                },
            );
        }
        control.rebuild_maps(found_by_pool);
        control.restore_mirrors()?;
        control.restore_volume_sets()?;
        control.restore_paths()?;
        control.recompute_rates();
        control.publish();
        Ok(control)
    }

    /// Opens every recorded LUN: drivers first, then fault LUNs over their bases (in rounds,
    /// as a base may itself be a fault LUN). A LUN that cannot be opened is kept as failed.
    fn restore_luns(&mut self) -> Result<(), ControlError> {
        let (mut faults, drivers): (Vec<LunRecord>, Vec<LunRecord>) = self
            .store
            .list::<LunRecord>("lun")?
            .into_iter()
            .partition(|record| record.kind == LunKind::Fault);
        // One deadline for all: LUNs another program holds delay start-up once, not per LUN.
        let claim_deadline =
            Instant::now() + Duration::from_millis(crate::constants::LUN_CLAIM_WAIT_MS);
        for record in drivers {
            let spec = LunSpec {
                name: record.name.clone(),
                kind: record.kind,
                path: record.path.clone(),
                size_bytes: Some(record.size),
                block_size_bytes: record.block_size,
                remote: record.remote.clone(),
            };
            match reopen_lun(&spec, claim_deadline) {
                Ok(lun) => self.insert_lun(record, lun, None, None),
                Err(error) => self.insert_missing_lun(record, luns::error_chain(&error)),
            }
        }
        while !faults.is_empty() {
            let before = faults.len();
            let mut waiting = Vec::new();
            for record in faults {
                let base_name = record.base.clone().unwrap_or_default();
                let Some(base) = self.luns.get_mut(&base_name) else {
                    waiting.push(record);
                    continue;
                };
                base.wrapped_by = Some(record.name.clone());
                let fault = Arc::new(FaultLun::new(&record.name, base.lun.clone()));
                self.insert_lun(record, fault.clone(), Some(fault), None);
            }
            if waiting.len() == before {
                for record in waiting {
                    let reason = format!(
                        "its base LUN {} has no record",
                        record.base.as_deref().unwrap_or("(none)")
                    );
                    self.insert_missing_lun(record, reason);
                }
                break;
            }
            faults = waiting;
        }
        Ok(())
    }

    fn insert_lun(
        &mut self,
        record: LunRecord,
        lun: Arc<dyn Lun>,
        fault: Option<Arc<FaultLun>>,
        failed: Option<String>,
    ) {
        self.luns.insert(
            record.name.clone(),
            LunEntry {
                record,
                lun,
                pool: None,
                fault,
                wrapped_by: None,
                failed,
            },
        );
    }

    /// Keeps a LUN that cannot be opened in the configuration, failed with `reason`.
    fn insert_missing_lun(&mut self, record: LunRecord, reason: String) {
        log::error!(
            "LUN {} cannot be opened and is failed: {reason}",
            record.name
        );
        let lun = Arc::new(MissingLun::new(
            &record.name,
            record.kind,
            record.path.clone(),
            record.size,
            record.block_size,
            reason.clone(),
        ));
        self.insert_lun(record, lun, None, Some(reason));
    }

    /// Rebuilds every volume's map from the extent records found on the pools' LUNs: heads,
    /// snapshots and clones, each the view its lineage gives (see `volume::lineage`); extents
    /// more than one table maps get their holder counts and, in writable tables, the SHARED
    /// bit. Records no table maps (a volume deleted, a snapshot dropped, a revert, before a
    /// crash finished clearing them) are cleared and their extents freed.
    fn rebuild_maps(&mut self, found_by_pool: HashMap<String, Vec<crate::pool::FoundRecord>>) {
        use crate::volume::lineage::{rebuild_views, TableSpec};
        for (pool_name, found) in found_by_pool {
            let Some(pool) = self.pools.get(&pool_name).map(|p| p.pool.clone()) else {
                continue;
            };
            let tables: Vec<(Arc<Volume>, crate::volume::lineage::Lineage)> = self
                .volumes
                .values()
                .filter(|v| Arc::ptr_eq(&v.volume.pool, &pool) && v.volume.composite().is_none())
                .map(|v| (v.volume.clone(), v.volume.lineage()))
                .collect();
            // Nothing written after a snapshot may carry a sequence at or below its own.
            for (_, lineage) in &tables {
                for (_, sequence) in lineage.chain().filter(|&(_, s)| s != u64::MAX) {
                    pool.advance_sequence_past(sequence);
                }
            }
            let heads: HashMap<[u8; 16], Arc<Volume>> = tables
                .iter()
                .filter(|(volume, _)| !volume.read_only)
                .map(|(volume, lineage)| (lineage.id, volume.clone()))
                .collect();
            if let Some(reason) = Self::record_past_its_volume(&pool, &found, &heads) {
                self.fail_open_pool(&pool_name, reason);
                continue;
            }
            let specs: Vec<TableSpec> = tables
                .iter()
                .map(|(volume, lineage)| TableSpec {
                    lineage,
                    extent_count: volume.map().extent_count(),
                })
                .collect();
            let rebuilt = rebuild_views(&found, &specs);
            let mut mapped = 0u64;
            for ((volume, _), table) in tables.iter().zip(&rebuilt.tables) {
                for &(extent, slot) in table {
                    let shared = !volume.read_only && rebuilt.shared.contains_key(&slot);
                    let value = if shared {
                        slot | crate::pool::SLOT_SHARED
                    } else {
                        slot
                    };
                    if volume.map().publish(extent, value).is_ok() {
                        mapped += 1;
                    }
                }
            }
            for (&slot, &holders) in &rebuilt.shared {
                pool.refcounts.set_holders(slot, holders);
            }
            let orphaned = rebuilt.orphans;
            let changes: Vec<(u64, Option<crate::pool::on_disk::ExtentRecord>)> =
                orphaned.iter().map(|&slot| (slot, None)).collect();
            let mut freed = 0usize;
            for (&slot, outcome) in orphaned.iter().zip(pool.commit(&changes)) {
                match outcome {
                    Ok(()) => {
                        pool.release_extent(slot);
                        freed += 1;
                    }
                    Err(error) => log::error!(
                        "pool {pool_name}: cannot free an orphaned extent: {}",
                        crate::logger::error_chain(&error)
                    ),
                }
            }
            if freed > 0 {
                log::warn!(
                    "pool {pool_name}: freed {freed} extents no volume, snapshot or clone maps"
                );
            }
            log::info!(
                "pool {pool_name}: {mapped} mapped extents restored ({} shared)",
                rebuilt.shared.len()
            );
        }
        snapshots::update_histories(self);
    }

    /// The damage, if a record of `pool` maps a virtual extent past the end of the writable
    /// volume whose lineage it names: volumes only grow, so no such record is ever written.
    /// (A lineage with no writable volume left, kept by snapshots, is not checked: its
    /// snapshots may be smaller than what their origin grew to.)
    fn record_past_its_volume(
        pool: &Arc<crate::pool::Pool>,
        found: &[crate::pool::FoundRecord],
        heads: &HashMap<[u8; 16], Arc<Volume>>,
    ) -> Option<String> {
        found.iter().find_map(|item| {
            let volume = heads.get(&item.record.volume_uuid)?;
            let extents = volume.map().extent_count();
            if item.record.virtual_extent < extents {
                return None;
            }
            let (lun_index, extent) = crate::pool::decode_slot(item.slot)?;
            let lun = pool.luns.get(lun_index)?;
            Some(format!(
                "LUN {}: extent record {extent} (LUN block {}): damaged: field virtual_extent is {}, \
                 not below volume {}'s {extents} extents",
                lun.lun.info().name,
                lun.layout.record_offset_bytes(extent) / u64::from(lun.layout.block_size_bytes),
                item.record.virtual_extent,
                volume.name,
            ))
        })
    }

    /// Takes a pool found damaged after it was opened out of service, as if it had failed to
    /// open: it and its volumes are listed as failed with `reason`, and never served.
    fn fail_open_pool(&mut self, name: &str, reason: String) {
        log::error!("pool {name} is failed and its volumes are not served: {reason}");
        let Some(entry) = self.pools.remove(name) else {
            return;
        };
        let volumes: Vec<String> = self
            .volumes
            .values()
            .filter(|v| v.record.pool == name)
            .map(|v| v.record.name.clone())
            .collect();
        for volume in volumes {
            if let Some(removed) = self.volumes.remove(&volume) {
                self.failed_volumes.insert(
                    volume,
                    FailedVolume {
                        record: removed.record,
                        reason: format!("pool {name} is failed: {reason}"),
                    },
                );
            }
        }
        self.failed_pools.insert(
            name.to_string(),
            FailedPool {
                record: entry.record,
                reason,
            },
        );
    }

    /// Builds and publishes a new snapshot of what the data path may reach.
    pub fn publish(&mut self) {
        self.generation += 1;
        let volumes = self
            .volumes
            .iter()
            .map(|(name, entry)| (name.clone(), entry.volume.clone()))
            .collect();
        let hosts = self
            .hosts
            .values()
            .map(|entry| entry.host.clone())
            .collect();
        let paths = self
            .vpaths
            .values()
            .map(|entry| {
                let capabilities = self
                    .domains
                    .get(&entry.record.domain)
                    .map(|d| d.record.capabilities)
                    .unwrap_or_default();
                PathView {
                    vpath: entry.vpath.clone(),
                    domain: entry.record.domain.clone(),
                    allowed_ops: capabilities.allowed_ops,
                    statistics: capabilities.statistics,
                    rates: entry.rates.clone(),
                }
            })
            .collect();
        self.published.publish(Snapshot {
            generation: self.generation,
            volumes,
            hosts,
            paths,
        });
    }

    /// Restores hosts, domains (making the `default` one if missing) and virtual paths. A VP
    /// whose volume is not served (its pool failed) is kept on disk but not brought up.
    fn restore_paths(&mut self) -> Result<(), ControlError> {
        for record in self.store.list::<HostRecord>("host")? {
            let host = Host::from_record(&record).map_err(|detail| ControlError::Inconsistent {
                what: format!(
                    "host {} ({})",
                    record.name,
                    self.store.record_path("host", &record.name).display()
                ),
                detail,
            })?;
            self.hosts
                .insert(record.name.clone(), hosts::HostEntry { record, host });
        }
        for record in self.store.list::<DomainRecord>("domain")? {
            self.domains
                .insert(record.name.clone(), domains::DomainEntry::new(record));
        }
        if !self.domains.contains_key(domains::DEFAULT_DOMAIN) {
            let record = DomainRecord {
                name: domains::DEFAULT_DOMAIN.to_string(),
                capabilities: Default::default(),
            };
            self.store.put("domain", &record.name, &record)?;
            self.domains
                .insert(record.name.clone(), domains::DomainEntry::new(record));
        }
        for record in self.store.list::<VpathRecord>("vpath")? {
            self.next_vpath_id = self.next_vpath_id.max(record.id + 1);
            let path = self.store.record_path("vpath", &record.id.to_string());
            let missing = |what: &str, name: &str| ControlError::Inconsistent {
                what: format!("virtual path {} ({})", record.id, path.display()),
                detail: format!("its {what} {name} has no record"),
            };
            if !self.hosts.contains_key(&record.host) {
                return Err(missing("host", &record.host));
            }
            if !self.domains.contains_key(&record.domain) {
                return Err(missing("domain", &record.domain));
            }
            let Some(volume) = self.volumes.get(&record.volume).map(|v| v.volume.clone()) else {
                if self.failed_volumes.contains_key(&record.volume) {
                    log::warn!(
                        "virtual path {}: volume {} is failed; the path stays down",
                        record.id,
                        record.volume
                    );
                    continue;
                }
                return Err(missing("volume", &record.volume));
            };
            let vpath = Arc::new(Vpath::new(
                record.id,
                &record.host,
                volume,
                record.mode,
                record.lun,
                self.reactors.len(),
            ));
            let id = record.id;
            self.vpaths.insert(
                id,
                vpaths::VpathEntry::new(record, vpath, self.reactors.len()),
            );
        }
        log::info!(
            "{} hosts, {} domains, {} virtual paths restored",
            self.hosts.len(),
            self.domains.len(),
            self.vpaths.len()
        );
        Ok(())
    }

    fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        let handler = methods::find(method).ok_or_else(|| RpcError::method_not_found(method))?;
        handler(self, params)
    }

    pub fn new_uuid(&self) -> Result<Uuid, RpcError> {
        Uuid::new_random().map_err(|error| {
            RpcError::internal(format!("cannot read random bytes for a UUID: {error}"))
        })
    }

    /// Folds every pool's journal into its records and flushes every LUN, for a clean
    /// shutdown: the next start has nothing to replay.
    pub fn flush_all(&self) {
        for entry in self.pools.values() {
            if let Err(error) = entry.pool.checkpoint() {
                log::error!(
                    "checkpointing pool {} failed: {}",
                    entry.record.name,
                    crate::logger::error_chain(&error)
                );
            }
        }
        for entry in self.luns.values() {
            if let Err(error) = entry.lun.flush() {
                log::error!("flushing LUN {} failed: {error}", entry.record.name);
            }
        }
    }
}

struct ControlCall {
    method: String,
    params: Option<Value>,
    reply: Sender<Result<Value, RpcError>>,
}

/// The RPC server's way into the control thread.
pub struct ControlDispatch {
    sender: Sender<ControlCall>,
}

impl Dispatch for ControlDispatch {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        let (reply, answer) = bounded(1);
        let call = ControlCall {
            method: method.to_string(),
            params,
            reply,
        };
        self.sender
            .send(call)
            .map_err(|_| RpcError::internal("the server is shutting down"))?;
        answer
            .recv()
            .map_err(|_| RpcError::internal("the server is shutting down"))?
    }
}

/// Starts the control thread on a restored [`Control`]. Dropping every `ControlDispatch`
/// ends the thread, which hands the `Control` back through its join handle.
pub fn spawn(control: Control) -> Result<(ControlDispatch, JoinHandle<Control>), ControlError> {
    let (sender, receiver) = bounded::<ControlCall>(CONTROL_QUEUE_CAPACITY);
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || run(control, receiver))
        .map_err(ControlError::Thread)?;
    Ok((ControlDispatch { sender }, thread))
}

fn run(mut control: Control, receiver: Receiver<ControlCall>) -> Control {
    let mut next_cycle = Instant::now() + control.cycle_period;
    let mut watchdog = watchdog::Watchdog::from_env();
    loop {
        let wake = watchdog
            .as_ref()
            .map_or(next_cycle, |watchdog| watchdog.next_ping().min(next_cycle));
        let wait = wake.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(wait) {
            Ok(call) => {
                let result = control.call(&call.method, call.params);
                if let Err(error) = &result {
                    log::info!("rpc {}: {}", call.method, error.message);
                }
                let _ = call.reply.send(result);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_cycle {
            control.run_cycle();
            next_cycle = Instant::now() + control.cycle_period;
        }
        if let Some(watchdog) = &mut watchdog {
            watchdog.tick(&control.reactors, Instant::now());
        }
    }
    control
}
