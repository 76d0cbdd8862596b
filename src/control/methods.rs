//! The method table: every JSON-RPC method the server answers, in one list.

use super::{
    config, domains, failed, hosts, iscsi, luns, mirrors, nvmf, pools, snapshots, spdk,
    volume_sets, volumes, vpaths, watchdog, Control,
};
use crate::rpc::RpcError;
use serde_json::Value;

pub type Handler = fn(&mut Control, Option<Value>) -> Result<Value, RpcError>;

pub const METHODS: &[(&str, Handler)] = &[
    ("lun_create", luns::create),
    ("lun_get_luns", luns::get),
    ("lun_delete", luns::delete),
    ("lun_inject_fault", luns::inject_fault),
    ("lun_clear_fault", luns::clear_fault),
    // The pool and volume methods pass through the guards in failed.rs, which answer for pools
    // and volumes a failed LUN took down and hand everything else to pools.rs and volumes.rs.
    ("pool_create", failed::pool_create),
    ("pool_get_pools", failed::pool_get),
    ("pool_delete", failed::pool_delete),
    ("pool_set_threshold", pools::set_threshold),
    ("volume_create", failed::volume_create),
    ("volume_get_volumes", failed::volume_get),
    ("volume_resize", failed::volume_resize),
    ("volume_delete", failed::volume_delete),
    ("volume_revert", snapshots::revert),
    ("snapshot_create", snapshots::create),
    ("snapshot_get_snapshots", snapshots::get),
    ("snapshot_delete", snapshots::delete),
    ("clone_create", snapshots::clone_create),
    ("volume_set_create", volume_sets::create),
    ("volume_set_add_member", volume_sets::add_member),
    ("volume_set_get_sets", volume_sets::get),
    ("volume_set_delete", volume_sets::delete),
    ("mirror_create", mirrors::create),
    ("mirror_add_leg", mirrors::add_leg),
    ("mirror_replace_leg", mirrors::replace_leg),
    ("mirror_split_leg", mirrors::split_leg),
    ("mirror_get_mirrors", mirrors::get),
    ("mirror_delete", mirrors::delete),
    ("host_create", hosts::create),
    ("host_get_hosts", hosts::get),
    ("host_set", hosts::set),
    ("host_delete", hosts::delete),
    ("host_set_chap", hosts::set_chap),
    ("host_clear_chap", hosts::clear_chap),
    ("domain_create", domains::create),
    ("domain_set_capabilities", domains::set_capabilities),
    ("domain_get_domains", domains::get),
    ("domain_delete", domains::delete),
    ("domain_get_stats", domains::get_stats),
    ("vpath_create", vpaths::create),
    ("vpath_get_vpaths", vpaths::get),
    ("vpath_delete", vpaths::delete),
    ("vpath_set_domain", vpaths::set_domain),
    ("vpath_get_stats", vpaths::get_stats),
    ("iscsi_get_targets", iscsi::get_targets),
    ("iscsi_get_sessions", iscsi::get_sessions),
    ("nvmf_get_subsystems", nvmf::get_subsystems),
    ("nvmf_get_qpairs", nvmf::get_qpairs),
    ("bdev_set_qos_limit", volumes::set_qos_limit),
    ("spdk_get_version", spdk::get_version),
    ("rpc_get_methods", spdk::get_methods),
    ("framework_get_reactors", spdk::get_reactors),
    ("bdev_get_bdevs", spdk::get_bdevs),
    ("bdev_get_iostat", spdk::get_iostat),
    ("reactor_wedge", watchdog::wedge),
    ("save_config", config::save),
    ("load_config", config::load),
];

pub fn find(method: &str) -> Option<Handler> {
    METHODS
        .iter()
        .find(|(name, _)| *name == method)
        .map(|(_, handler)| *handler)
}
