//! `nvmf_*` methods: the NVMe/TCP front end as administrators see it, and the configuration
//! changes its controllers are told of.
//!
//! The subsystem model is one NVM subsystem per host (README, "NVMe/TCP"):
//! `nvmf_get_subsystems` lists the discovery subsystem and, for every host with an `nqn`, its
//! subsystem `<base>:<host>` with the host's VPs as namespaces (NSID = LUN + 1), in SPDK's
//! shape where it fits. `nvmf_get_qpairs` lists the live controllers from the registry the
//! handshake threads fill in, with their I/O queue counts; the control thread only reads it.

use super::params::Params;
use super::Control;
use crate::constants::MAX_NAMESPACES_PER_SUBSYSTEM;
use crate::domain::nvme_name::DISCOVERY_NQN;
use crate::identity::Uuid;
use crate::rpc::RpcError;
use crate::target::nvmf::controller::ControllerKind;
use crate::target::nvmf::identify;
use crate::target::nvmf::registry::Registry;
use crate::target::nvmf::subsystem;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What the control thread knows of the NVMe/TCP front end, handed over by `serve`.
pub struct NvmfTarget {
    /// The base of every subsystem NQN (stable across restarts, or `--nvmf-nqn-base`).
    pub nqn_base: String,
    /// The addresses it listens on (`--nvmf-listen`); empty when it is off.
    pub listen: Vec<String>,
    pub registry: Arc<Registry>,
}

impl NvmfTarget {
    /// Tells `host`'s controllers that namespace `nsid` changed (a VP added, a volume
    /// grown): each sends an asynchronous event.
    pub fn namespace_changed(&self, host: &str, nsid: u32) {
        let told = self.registry.namespace_changed(host, nsid);
        if told > 0 {
            log::info!("host {host}: {told} NVMe controller(s) told that namespace {nsid} changed");
        }
    }

    /// Ends `host`'s controllers and their I/O queues (a VP deleted): the host connects
    /// again and finds its namespaces as they now are.
    pub fn close_host(&self, host: &str) {
        let closed = self.registry.close_host(host);
        if closed > 0 {
            log::info!("host {host}: {closed} NVMe controller(s) ended");
        }
    }
}

/// SPDK's listen address object for `address` (`HOST:PORT`).
fn listen_address(address: &str) -> Value {
    match address.parse::<SocketAddr>() {
        Ok(socket) => json!({
            "trtype": "TCP",
            "adrfam": if socket.is_ipv4() { "IPv4" } else { "IPv6" },
            "traddr": socket.ip().to_string(),
            "trsvcid": socket.port().to_string(),
        }),
        Err(_) => json!({ "trtype": "TCP", "traddr": address }),
    }
}

/// `nvmf_get_subsystems {nqn?}`: the discovery subsystem, then one subsystem per host with an
/// `nqn`: `{nqn, subtype, listen_addresses, allow_any_host, hosts, host, serial_number,
/// model_number, max_namespaces, namespaces: [{nsid, name, volume, mode, nguid, uuid}],
/// controllers}`. Empty when the server has no NVMe/TCP front end.
pub fn get_subsystems(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["nqn"])?;
    let wanted = params.optional_str("nqn")?;
    let Some(target) = &control.nvmf else {
        return match wanted {
            Some(nqn) => Err(RpcError::invalid_params(format!(
                "nqn: no subsystem {nqn} (the server runs with --nvmf-listen none)"
            ))),
            None => Ok(json!([])),
        };
    };
    let listen: Vec<Value> = target.listen.iter().map(|a| listen_address(a)).collect();
    let controllers = target.registry.list();
    let count = |subnqn: &str| {
        controllers
            .iter()
            .filter(|c| c.subnqn == subnqn && !c.is_closed())
            .count()
    };
    let mut subsystems = vec![json!({
        "nqn": DISCOVERY_NQN,
        "subtype": "Discovery",
        "listen_addresses": listen,
        "allow_any_host": true,
        "hosts": [],
        "controllers": count(DISCOVERY_NQN),
    })];
    let snapshot = control.published.load();
    for entry in control.hosts.values() {
        let Some(host_nqn) = &entry.record.nqn else {
            continue;
        };
        let nqn = subsystem::subsystem_nqn(&target.nqn_base, &entry.record.name);
        let namespaces: Vec<Value> = subsystem::namespaces(&snapshot, &entry.record.name)
            .iter()
            .map(|namespace| {
                let volume = &namespace.view.vpath.volume;
                json!({
                    "nsid": namespace.nsid,
                    "name": volume.name,
                    "volume": volume.name,
                    "mode": namespace.view.vpath.mode.as_str(),
                    "nguid": volume.uuid.iter().map(|b| format!("{b:02X}")).collect::<String>(),
                    "uuid": Uuid(volume.uuid).to_string(),
                })
            })
            .collect();
        subsystems.push(json!({
            "nqn": nqn,
            "subtype": "NVMe",
            "listen_addresses": listen,
            "allow_any_host": false,
            "hosts": [{ "nqn": host_nqn }],
            "host": entry.record.name,
            "serial_number": identify::serial_number(&nqn),
            "model_number": identify::MODEL,
            "max_namespaces": MAX_NAMESPACES_PER_SUBSYSTEM,
            "namespaces": namespaces,
            "controllers": count(&nqn),
        }));
    }
    match wanted {
        None => Ok(Value::Array(subsystems)),
        Some(nqn) => {
            let found: Vec<Value> = subsystems.into_iter().filter(|s| s["nqn"] == nqn).collect();
            if found.is_empty() {
                return Err(RpcError::invalid_params(format!(
                    "nqn: no subsystem {nqn} (a host's subsystem exists once the host has an nqn)"
                )));
            }
            Ok(Value::Array(found))
        }
    }
}

/// `nvmf_get_qpairs {nqn?}`: every live controller (of subsystem `nqn`, if given) with its
/// queues: `{nqn, cntlid, kind, host, hostnqn, peer, state, kato_ms, admin_queues, io_queues}`.
pub fn get_qpairs(control: &mut Control, params: Option<Value>) -> Result<Value, RpcError> {
    let params = Params::new(params, &["nqn"])?;
    let wanted = params.optional_str("nqn")?;
    let Some(target) = &control.nvmf else {
        return Ok(json!([]));
    };
    if let Some(nqn) = wanted {
        let known = nqn == DISCOVERY_NQN
            || subsystem::host_of_subsystem(&control.published.load(), &target.nqn_base, nqn)
                .is_some();
        if !known {
            return Err(RpcError::invalid_params(format!("nqn: no subsystem {nqn}")));
        }
    }
    Ok(Value::Array(
        target
            .registry
            .list()
            .iter()
            .filter(|c| wanted.map_or(true, |nqn| c.subnqn == nqn))
            .map(|c| {
                json!({
                    "nqn": c.subnqn,
                    "cntlid": c.cntlid,
                    "kind": match c.kind {
                        ControllerKind::Nvm => "nvm",
                        ControllerKind::Discovery => "discovery",
                    },
                    "host": c.host,
                    "hostnqn": c.hostnqn,
                    "peer": c.peer,
                    "state": if c.is_closed() {
                        "closing"
                    } else if c.ready.load(Ordering::Acquire) {
                        "active"
                    } else {
                        "connecting"
                    },
                    "kato_ms": c.kato_ms.load(Ordering::Acquire),
                    "admin_queues": 1,
                    "io_queues": c.io_queues.load(Ordering::Acquire),
                })
            })
            .collect(),
    ))
}
