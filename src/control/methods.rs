//! The method table: every JSON-RPC method the server answers, in one list.

use super::{luns, pools, spdk, volumes, Control};
use crate::rpc::RpcError;
use serde_json::Value;

pub type Handler = fn(&mut Control, Option<Value>) -> Result<Value, RpcError>;

pub const METHODS: &[(&str, Handler)] = &[
    ("lun_create", luns::create),
    ("lun_get_luns", luns::get),
    ("lun_delete", luns::delete),
    ("pool_create", pools::create),
    ("pool_get_pools", pools::get),
    ("pool_delete", pools::delete),
    ("volume_create", volumes::create),
    ("volume_get_volumes", volumes::get),
    ("volume_resize", volumes::resize),
    ("volume_delete", volumes::delete),
    ("spdk_get_version", spdk::get_version),
    ("rpc_get_methods", spdk::get_methods),
    ("framework_get_reactors", spdk::get_reactors),
    ("bdev_get_bdevs", spdk::get_bdevs),
    ("bdev_get_iostat", spdk::get_iostat),
];

pub fn find(method: &str) -> Option<Handler> {
    METHODS
        .iter()
        .find(|(name, _)| *name == method)
        .map(|(_, handler)| *handler)
}
