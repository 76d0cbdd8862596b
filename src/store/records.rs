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
