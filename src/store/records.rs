//! The persisted configuration records.

use crate::backend::LunKind;
use crate::identity::Uuid;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LunRecord {
    pub name: String,
    pub uuid: Uuid,
    pub kind: LunKind,
    pub path: Option<PathBuf>,
    pub size: u64,
    pub block_size: u32,
    /// For a `fault` LUN: the LUN it wraps, opened before it at start-up. (Injected faults
    /// are runtime state and are not recorded.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolRecord {
    pub name: String,
    pub uuid: Uuid,
    pub extent_size: u64,
    pub luns: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    pub name: String,
    pub uuid: Uuid,
    pub pool: String,
    pub size: u64,
    pub block_size: u32,
    pub thin: bool,
}
