//! The persisted configuration records.

use crate::backend::LunKind;
use crate::domain::capabilities::{Capabilities, QosLimits};
use crate::domain::vpath::AccessMode;
use crate::identity::Uuid;
use crate::volume::set::SetLayout;
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
    /// For a LUN of another array (`iscsi`, `nbd`): its `url`, `initiator_iqn`, `chap_user`,
    /// `chap_secret`, `timeout_ms`, `fail_after_ms`, flattened into the record (absent for a
    /// local LUN). The CHAP secret makes the state directory root-only reading.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<crate::backend::remote::RemoteSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolRecord {
    pub name: String,
    pub uuid: Uuid,
    pub extent_size: u64,
    pub luns: Vec<String>,
    /// `pool_set_threshold`: the allocation, in percent of capacity, past which the server
    /// warns (see `pool::threshold`). Records written before it existed get the default.
    #[serde(default = "crate::pool::threshold::default_percent")]
    pub threshold: u8,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    pub name: String,
    pub uuid: Uuid,
    pub pool: String,
    pub size: u64,
    pub block_size: u32,
    pub thin: bool,
    /// `bdev_set_qos_limit`: limits on the volume as a whole, over every VP to it.
    #[serde(default, skip_serializing_if = "QosLimits::is_unlimited")]
    pub qos: QosLimits,
    /// Snapshots and clones: what the volume's table is a view of (empty: a plain volume).
    #[serde(default, flatten)]
    pub lineage: crate::volume::lineage::LineageRecord,
}

/// A volume set (`volume_set_create`): a volume made of member volumes (see
/// `volume::set`). Restored after the volumes; its block size is its members'.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeSetRecord {
    pub name: String,
    pub uuid: Uuid,
    pub layout: SetLayout,
    /// Stripe sets: bytes per stripe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_size: Option<u64>,
    /// In order: a concatenation's members in address order, a stripe's in stripe order.
    pub members: Vec<String>,
    /// `bdev_set_qos_limit` on the set.
    #[serde(default, skip_serializing_if = "QosLimits::is_unlimited")]
    pub qos: QosLimits,
}

/// A host (`host_create`): an initiator, by what its protocol proves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd_tls_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iqn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nqn: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// NBD sessions the host may have open at once; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<usize>,
    /// iSCSI CHAP credentials (`host_set_chap`); the secrets are never shown by any RPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<ChapRecord>,
}

/// A host's CHAP credentials: the initiator proves `user`/`secret` to the target; with a
/// mutual pair, the target then proves `mutual_user`/`mutual_secret` to the initiator.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChapRecord {
    pub user: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_secret: Option<String>,
}

/// Never prints a secret.
impl std::fmt::Debug for ChapRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapRecord")
            .field("user", &self.user)
            .field("mutual_user", &self.mutual_user)
            .finish_non_exhaustive()
    }
}

/// A storage domain (`domain_create`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub name: String,
    pub capabilities: Capabilities,
}

/// A virtual path (`vpath_create`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpathRecord {
    pub id: u64,
    pub host: String,
    pub volume: String,
    pub domain: String,
    pub mode: AccessMode,
    pub lun: u32,
}

/// A synchronous mirror (`mirror_create`): its legs by volume name, in position order. The
/// legs' states are in its dirty-region log (`STATE/mirrors/<uuid>.dirty`), which the data
/// path writes; this record changes only with the membership.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MirrorRecord {
    pub name: String,
    pub uuid: Uuid,
    pub size: u64,
    pub block_size: u32,
    pub legs: Vec<String>,
    #[serde(default, skip_serializing_if = "QosLimits::is_unlimited")]
    pub qos: QosLimits,
}
