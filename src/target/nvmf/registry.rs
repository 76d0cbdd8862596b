//! Every live NVMe controller of the server: controller ids are allocated here, the RPCs
//! (`nvmf_get_subsystems`, `nvmf_get_qpairs`) list from here, an I/O queue Connect finds its
//! controller here, and configuration changes reach a host's controllers through here
//! (closing them, or queueing an asynchronous event).
//!
//! A controller is added by its admin queue's Connect and removed when the
//! [`RegisteredController`] its admin thread holds is dropped. Touched at Connect, at
//! configuration changes and by RPCs only, never per I/O, so one mutex is enough.

use super::controller::{ControllerKind, ControllerShared};
use crate::constants::{
    MAX_NVMF_CONTROLLERS, MAX_NVMF_CONTROLLERS_PER_HOST, MAX_NVMF_DISCOVERY_CONTROLLERS,
};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

/// The lowest and highest controller id a dynamic controller gets (NVMe-oF 1.1 §3.3.1:
/// FFF0h to FFFFh are reserved; FFFFh in Connect asks for a dynamic one).
pub const FIRST_CNTLID: u16 = 1;
pub const LAST_CNTLID: u16 = 0xffef;

/// Why a controller could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("the target already has {MAX_NVMF_CONTROLLERS} controllers")]
    Full,
    #[error("the target already has {MAX_NVMF_DISCOVERY_CONTROLLERS} discovery controllers")]
    DiscoveryFull,
    #[error("the host already has {MAX_NVMF_CONTROLLERS_PER_HOST} controllers")]
    HostFull,
}

/// Who a new controller is for (the admin Connect's data, checked).
#[derive(Clone, Debug)]
pub struct NewController {
    pub kind: ControllerKind,
    pub host: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub subnqn: String,
    pub peer: String,
    pub kato_ms: u32,
}

#[derive(Default)]
struct Inner {
    controllers: Vec<Arc<ControllerShared>>,
    /// The last controller id given; the next search starts after it, so ids are not reused
    /// at once.
    last_cntlid: u16,
}

/// Every live controller.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a controller under a fresh controller id.
    pub fn add(
        self: &Arc<Self>,
        new: NewController,
    ) -> Result<RegisteredController, RegistryError> {
        let mut inner = self.lock();
        if inner.controllers.len() >= MAX_NVMF_CONTROLLERS {
            return Err(RegistryError::Full);
        }
        if new.kind == ControllerKind::Discovery
            && inner
                .controllers
                .iter()
                .filter(|c| c.kind == ControllerKind::Discovery)
                .count()
                >= MAX_NVMF_DISCOVERY_CONTROLLERS
        {
            return Err(RegistryError::DiscoveryFull);
        }
        if new.kind != ControllerKind::Discovery
            && inner
                .controllers
                .iter()
                .filter(|c| c.kind != ControllerKind::Discovery && c.host == new.host)
                .count()
                >= MAX_NVMF_CONTROLLERS_PER_HOST
        {
            return Err(RegistryError::HostFull);
        }
        let mut cntlid = inner.last_cntlid;
        // MAX_NVMF_CONTROLLERS is far below the id space, so a free id is always found.
        loop {
            cntlid = if (FIRST_CNTLID..LAST_CNTLID).contains(&cntlid) {
                cntlid + 1
            } else {
                FIRST_CNTLID
            };
            if inner.controllers.iter().all(|c| c.cntlid != cntlid) {
                break;
            }
        }
        inner.last_cntlid = cntlid;
        let mut shared = ControllerShared::new(cntlid, new.kind, &new.host, &new.subnqn);
        shared.hostnqn = new.hostnqn;
        shared.hostid = new.hostid;
        shared.peer = new.peer;
        shared.kato_ms.store(new.kato_ms, Ordering::Release);
        let shared = Arc::new(shared);
        inner.controllers.push(shared.clone());
        Ok(RegisteredController {
            registry: self.clone(),
            shared,
        })
    }

    /// The live controller with this id.
    pub fn find(&self, cntlid: u16) -> Option<Arc<ControllerShared>> {
        self.lock()
            .controllers
            .iter()
            .find(|c| c.cntlid == cntlid && !c.is_closed())
            .cloned()
    }

    /// Every live controller, by controller id.
    pub fn list(&self) -> Vec<Arc<ControllerShared>> {
        let mut controllers = self.lock().controllers.clone();
        controllers.sort_by_key(|c| c.cntlid);
        controllers
    }

    /// Ends every NVM controller of `host` (its VPs were deleted, or the host was); returns
    /// how many.
    pub fn close_host(&self, host: &str) -> usize {
        let inner = self.lock();
        let mut closed = 0;
        for controller in inner
            .controllers
            .iter()
            .filter(|c| c.kind == ControllerKind::Nvm && c.host == host)
        {
            controller.close();
            closed += 1;
        }
        closed
    }

    /// Tells every NVM controller of `host` that namespace `nsid` changed (an asynchronous
    /// event is then sent by each admin thread); returns how many were told.
    pub fn namespace_changed(&self, host: &str, nsid: u32) -> usize {
        let inner = self.lock();
        let mut told = 0;
        for controller in inner
            .controllers
            .iter()
            .filter(|c| c.kind == ControllerKind::Nvm && c.host == host && !c.is_closed())
        {
            controller.namespace_changed(nsid);
            told += 1;
        }
        told
    }
}

/// A registered controller: removed from the registry, and closed, when dropped (its admin
/// queue's end).
pub struct RegisteredController {
    registry: Arc<Registry>,
    shared: Arc<ControllerShared>,
}

impl RegisteredController {
    pub fn shared(&self) -> &Arc<ControllerShared> {
        &self.shared
    }
}

impl Drop for RegisteredController {
    fn drop(&mut self) {
        self.shared.close();
        let cntlid = self.shared.cntlid;
        self.registry
            .lock()
            .controllers
            .retain(|c| c.cntlid != cntlid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(host: &str) -> NewController {
        NewController {
            kind: ControllerKind::Nvm,
            host: host.into(),
            hostnqn: format!("nqn.2014-08.org.example:{host}"),
            hostid: [7; 16],
            subnqn: format!("nqn.2026-11.org.sds:m:{host}"),
            peer: "127.0.0.1:1".into(),
            kato_ms: 5000,
        }
    }

    #[test]
    fn controllers_get_distinct_ids_and_leave_when_dropped() {
        let registry = Registry::new();
        let a = registry.add(new("a")).unwrap();
        let b = registry.add(new("b")).unwrap();
        assert_ne!(a.shared().cntlid, b.shared().cntlid);
        assert!((FIRST_CNTLID..=LAST_CNTLID).contains(&a.shared().cntlid));
        assert_eq!(
            registry.find(b.shared().cntlid).unwrap().hostnqn,
            "nqn.2014-08.org.example:b"
        );
        let a_shared = a.shared().clone();
        drop(a);
        assert!(a_shared.is_closed(), "dropping the registration ends it");
        assert!(registry.find(a_shared.cntlid).is_none());
        assert_eq!(registry.list().len(), 1);
    }

    #[test]
    fn host_changes_reach_only_that_hosts_controllers() {
        let registry = Registry::new();
        let a = registry.add(new("a")).unwrap();
        let b = registry.add(new("b")).unwrap();
        assert_eq!(registry.namespace_changed("a", 2), 1);
        assert!(a.shared().take_namespace_notice());
        assert!(!b.shared().take_namespace_notice());
        assert_eq!(registry.close_host("b"), 1);
        assert!(b.shared().is_closed() && !a.shared().is_closed());
    }

    #[test]
    fn discovery_controllers_leave_room_for_hosts() {
        let registry = Registry::new();
        let discovery = || NewController {
            kind: ControllerKind::Discovery,
            ..new("stranger")
        };
        let held: Vec<_> = (0..MAX_NVMF_DISCOVERY_CONTROLLERS)
            .map(|_| registry.add(discovery()).unwrap())
            .collect();
        assert_eq!(
            registry.add(discovery()).err(),
            Some(RegistryError::DiscoveryFull)
        );
        assert!(
            registry.add(new("a")).is_ok(),
            "a host's controller still fits"
        );
        drop(held);
        assert!(registry.add(discovery()).is_ok());
    }

    #[test]
    fn one_host_cannot_take_every_controller() {
        let registry = Registry::new();
        let held: Vec<_> = (0..MAX_NVMF_CONTROLLERS_PER_HOST)
            .map(|_| registry.add(new("a")).unwrap())
            .collect();
        assert_eq!(registry.add(new("a")).err(), Some(RegistryError::HostFull));
        assert!(
            registry.add(new("b")).is_ok(),
            "another host still gets one"
        );
        drop(held);
        assert!(registry.add(new("a")).is_ok());
    }

    #[test]
    fn the_registry_is_bounded() {
        let registry = Registry::new();
        let held: Vec<_> = (0..MAX_NVMF_CONTROLLERS)
            .map(|i| {
                registry
                    .add(new(&format!("h{}", i / MAX_NVMF_CONTROLLERS_PER_HOST)))
                    .unwrap()
            })
            .collect();
        assert_eq!(registry.add(new("z")).err(), Some(RegistryError::Full));
        drop(held);
        assert!(registry.add(new("a")).is_ok());
    }
}
