//! The control thread: the only owner and mutator of configuration.
//!
//! RPC requests arrive through [`ControlDispatch`] and run one at a time on this thread. A
//! method validates everything first, then persists the new records ([`crate::store`]), then
//! changes the live objects, then publishes a new [`Snapshot`] to the data path with one
//! atomic swap. A failed call changes nothing.
//!
//! Adding a method: write it in the file of its noun (`luns`, `pools`, `volumes`, `spdk`)
//! and add one line to [`methods::METHODS`].

mod luns;
pub use luns::error_chain as luns_error_chain;
pub mod methods;
pub mod params;
mod pools;
mod spdk;
mod volumes;

use crate::backend::{open_lun, Lun, LunSpec};
use crate::constants::CONTROL_QUEUE_CAPACITY;
use crate::domain::snapshot::{Published, Snapshot};
use crate::identity::Uuid;
use crate::pool::Pool;
use crate::reactor::ReactorHandle;
use crate::rpc::{Dispatch, RpcError};
use crate::store::records::{LunRecord, PoolRecord, VolumeRecord};
use crate::store::{FileStore, StoreError};
use crate::volume::provisioner::Provisioner;
use crate::volume::Volume;
use crossbeam::channel::{bounded, Receiver, Sender};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("restoring LUN {name}")]
    Lun {
        name: String,
        #[source]
        source: Box<crate::backend::LunError>,
    },
    #[error("restoring pool {name}")]
    Pool {
        name: String,
        #[source]
        source: Box<crate::pool::PoolError>,
    },
    #[error("restoring {what}: {detail}")]
    Inconsistent { what: String, detail: String },
    #[error("cannot start the control thread")]
    Thread(#[source] std::io::Error),
}

pub struct LunEntry {
    pub record: LunRecord,
    pub lun: Arc<dyn Lun>,
    pub pool: Option<String>,
}

pub struct PoolEntry {
    pub record: PoolRecord,
    pub pool: Arc<Pool>,
}

pub struct VolumeEntry {
    pub record: VolumeRecord,
    pub volume: Arc<Volume>,
}

/// Everything the control thread owns.
pub struct Control {
    pub state_dir: PathBuf,
    pub store: FileStore,
    pub luns: BTreeMap<String, LunEntry>,
    pub pools: BTreeMap<String, PoolEntry>,
    pub volumes: BTreeMap<String, VolumeEntry>,
    pub published: Arc<Published>,
    pub reactors: Vec<Arc<ReactorHandle>>,
    pub provisioner: Provisioner,
    pub started: Instant,
    generation: u64,
}

impl Control {
    /// Restores the configuration from the store: LUNs, then pools (reading their extent
    /// records), then volumes (rebuilding their maps from those records).
    pub fn restore(
        state_dir: PathBuf,
        published: Arc<Published>,
        reactors: Vec<Arc<ReactorHandle>>,
        provisioner: Provisioner,
    ) -> Result<Self, ControlError> {
        let store = FileStore::open(&state_dir)?;
        let mut control = Self {
            state_dir,
            store,
            luns: BTreeMap::new(),
            pools: BTreeMap::new(),
            volumes: BTreeMap::new(),
            published,
            reactors,
            provisioner,
            started: Instant::now(),
            generation: 0,
        };
        for record in control.store.list::<LunRecord>("lun")? {
            let spec = LunSpec {
                name: record.name.clone(),
                kind: record.kind,
                path: record.path.clone(),
                size_bytes: Some(record.size),
                block_size_bytes: record.block_size,
            };
            let lun = open_lun(&spec).map_err(|source| ControlError::Lun {
                name: record.name.clone(),
                source: Box::new(source),
            })?;
            control.luns.insert(
                record.name.clone(),
                LunEntry {
                    record,
                    lun,
                    pool: None,
                },
            );
        }
        let mut found_by_pool = HashMap::new();
        for record in control.store.list::<PoolRecord>("pool")? {
            let mut luns = Vec::with_capacity(record.luns.len());
            for name in &record.luns {
                let entry =
                    control
                        .luns
                        .get_mut(name)
                        .ok_or_else(|| ControlError::Inconsistent {
                            what: format!("pool {}", record.name),
                            detail: format!("its LUN {name} has no record"),
                        })?;
                entry.pool = Some(record.name.clone());
                luns.push(entry.lun.clone());
            }
            let (pool, found) = Pool::open(&record.name, record.uuid.0, record.extent_size, luns)
                .map_err(|source| ControlError::Pool {
                name: record.name.clone(),
                source: Box::new(source),
            })?;
            found_by_pool.insert(record.name.clone(), found);
            control.pools.insert(
                record.name.clone(),
                PoolEntry {
                    record,
                    pool: Arc::new(pool),
                },
            );
        }
        for record in control.store.list::<VolumeRecord>("volume")? {
            let pool =
                control
                    .pools
                    .get(&record.pool)
                    .ok_or_else(|| ControlError::Inconsistent {
                        what: format!("volume {}", record.name),
                        detail: format!("its pool {} has no record", record.pool),
                    })?;
            let volume = Volume::new(
                &record.name,
                record.uuid.0,
                pool.pool.clone(),
                record.size,
                record.block_size,
                record.thin,
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
        control.publish();
        Ok(control)
    }

    /// Puts every extent record found on the pools' LUNs into its volume's map. Records of
    /// volumes that no longer exist (deleted before a crash finished clearing them) are
    /// cleared and their extents freed.
    fn rebuild_maps(&mut self, found_by_pool: HashMap<String, Vec<crate::pool::FoundRecord>>) {
        let by_uuid: HashMap<[u8; 16], Arc<Volume>> = self
            .volumes
            .values()
            .map(|v| (v.volume.uuid, v.volume.clone()))
            .collect();
        for (pool_name, mut found) in found_by_pool {
            let Some(pool) = self.pools.get(&pool_name).map(|p| p.pool.clone()) else {
                continue;
            };
            // Later records win where two claim the same virtual extent.
            found.sort_by_key(|f| std::cmp::Reverse(f.record.sequence));
            let mut mapped = 0u64;
            let mut orphaned = Vec::new();
            for item in found {
                let published = by_uuid.get(&item.record.volume_uuid).and_then(|volume| {
                    let extent = item.record.virtual_extent;
                    (extent < volume.map().extent_count() && Arc::ptr_eq(&volume.pool, &pool))
                        .then(|| volume.map().publish(extent, item.slot).is_ok())
                });
                if published == Some(true) {
                    mapped += 1;
                } else {
                    orphaned.push(item.slot);
                }
            }
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
                log::warn!("pool {pool_name}: freed {freed} extents whose volume no longer exists");
            }
            log::info!("pool {pool_name}: {mapped} mapped extents restored");
        }
    }

    /// Builds and publishes a new snapshot of what the data path may reach.
    pub fn publish(&mut self) {
        self.generation += 1;
        let volumes = self
            .volumes
            .iter()
            .map(|(name, entry)| (name.clone(), entry.volume.clone()))
            .collect();
        self.published.publish(Snapshot {
            generation: self.generation,
            volumes,
        });
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
    while let Ok(call) = receiver.recv() {
        let result = control.call(&call.method, call.params);
        if let Err(error) = &result {
            log::info!("rpc {}: {}", call.method, error.message);
        }
        let _ = call.reply.send(result);
    }
    control
}
