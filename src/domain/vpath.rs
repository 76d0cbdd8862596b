//! Virtual paths: host ↔ volume associations through this server. A VP has an access mode, a
//! LUN number, a domain, and its own statistics; every I/O a host sends is checked and
//! accounted on its VP. The [`Vpath`] object lives as long as the VP does, across snapshots,
//! so its counters never reset while it exists.

use super::stats::VpathStats;
use crate::volume::Volume;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessMode {
    #[default]
    #[serde(rename = "rw")]
    ReadWrite,
    #[serde(rename = "ro")]
    ReadOnly,
}

impl AccessMode {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "rw" => Some(Self::ReadWrite),
            "ro" => Some(Self::ReadOnly),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWrite => "rw",
            Self::ReadOnly => "ro",
        }
    }
}

/// A live VP.
pub struct Vpath {
    pub id: u64,
    pub host: String,
    pub volume: Arc<Volume>,
    pub mode: AccessMode,
    pub lun: u32,
    pub stats: VpathStats,
    /// Set when the VP is deleted: its sessions close at their next event.
    revoked: AtomicBool,
}

impl Vpath {
    pub fn new(
        id: u64,
        host: &str,
        volume: Arc<Volume>,
        mode: AccessMode,
        lun: u32,
        reactors: usize,
    ) -> Self {
        Self {
            id,
            host: host.to_string(),
            volume,
            mode,
            lun,
            stats: VpathStats::new(reactors),
            revoked: AtomicBool::new(false),
        }
    }

    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    #[inline]
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}
