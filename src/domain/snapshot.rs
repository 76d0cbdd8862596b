//! The published, immutable view of what the data path may reach.

use crate::volume::Volume;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One generation of the configuration as the data path sees it.
#[derive(Default)]
pub struct Snapshot {
    pub generation: u64,
    /// Volumes by name: the NBD export names.
    pub volumes: BTreeMap<String, Arc<Volume>>,
}

/// Where the current snapshot lives. The control thread stores; everyone else loads.
pub struct Published {
    current: ArcSwap<Snapshot>,
}

impl Default for Published {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
        }
    }
}

impl Published {
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn publish(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}
