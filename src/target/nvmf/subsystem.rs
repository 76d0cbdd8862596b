//! The subsystem model: one NVM subsystem per host. Its NQN is `<base>:<host name>`, the base
//! made once (`nqn.2026-11.org.sds:<machine hostname>`) and kept in `STATE/nvmf.json` so NQNs
//! are stable across restarts (`--nvmf-nqn-base` overrides it for one run, not stored). Its
//! namespaces are the host's VPs, NSID = VP lun + 1 (NSID 0 is invalid in NVMe), the first
//! [`MAX_NAMESPACES_PER_SUBSYSTEM`] by LUN.
//!
//! Why per host: NVMe NSIDs are subsystem-wide while a VP's number is per host, so a
//! per-host subsystem lets the VP's own number be the NSID; a host gets one controller and
//! one set of queues for all its volumes; and a host sees its VPs and nothing else, as over
//! iSCSI. Everything here reads a published snapshot; nothing is cached, so a controller
//! always answers from the configuration as it is now.

use crate::constants::{MAX_NAMESPACES_PER_SUBSYSTEM, MAX_NAME_BYTES, MAX_NQN_BYTES};
use crate::domain::host::Host;
use crate::domain::nvme_name;
use crate::domain::snapshot::{PathView, Snapshot};
use crate::target::stable_name::{StableName, StableNameError};
use std::path::Path;

/// The file in the state directory.
pub const NQN_BASE_FILE: &str = "nvmf.json";
/// The naming authority of generated bases.
pub const GENERATED_PREFIX: &str = "nqn.2026-11.org.sds:";
/// The longest base: a subsystem NQN adds ':' and a host name.
pub const MAX_NQN_BASE_BYTES: usize = MAX_NQN_BYTES - 1 - MAX_NAME_BYTES;

const NQN_BASE: StableName = StableName {
    what: "NVMe subsystem NQN base",
    file: NQN_BASE_FILE,
    field: "nqn_base",
    prefix: GENERATED_PREFIX,
    max_bytes: MAX_NQN_BASE_BYTES,
};

/// The base to serve: `configured` when given, else the stored one, else a new one (stored).
pub fn resolve_base(state_dir: &Path, configured: Option<&str>) -> Result<String, StableNameError> {
    NQN_BASE.resolve(state_dir, configured, validate_base)
}

/// `nqn.2026-11.org.sds:<host>`, the machine's host name lower-cased and anything but
/// letters, digits, '-' and '.' made a '-'.
pub fn generated_base(machine: &str) -> String {
    NQN_BASE.generated(machine)
}

/// A base is an NQN short enough that `<base>:<any host name>` still is one.
pub fn validate_base(base: &str) -> Result<(), String> {
    if base.len() > MAX_NQN_BASE_BYTES {
        return Err(format!("longer than {MAX_NQN_BASE_BYTES} bytes"));
    }
    nvme_name::validate(base).map_err(|error| error.to_string())
}

/// The NQN of `host`'s subsystem under `base`.
pub fn subsystem_nqn(base: &str, host: &str) -> String {
    format!("{base}:{host}")
}

/// The host whose subsystem `subnqn` is, if it is one of ours.
pub fn host_of_subsystem<'a>(snapshot: &'a Snapshot, base: &str, subnqn: &str) -> Option<&'a Host> {
    let name = subnqn.strip_prefix(base)?.strip_prefix(':')?;
    snapshot.hosts.iter().find(|host| host.name == name)
}

/// One namespace of a subsystem: a VP of its host.
#[derive(Clone, Copy)]
pub struct Namespace<'a> {
    pub nsid: u32,
    /// Where the VP is in the snapshot's `paths` (what a block engine is built with).
    pub path_index: usize,
    pub view: &'a PathView,
}

/// The NSID of a VP with LUN `lun`.
pub const fn nsid_of_lun(lun: u32) -> u32 {
    lun + 1
}

/// `host`'s namespaces in NSID order: its VPs, the first [`MAX_NAMESPACES_PER_SUBSYSTEM`]
/// by LUN (a VP whose volume is being deleted is left out: it can no longer be opened).
pub fn namespaces<'a>(snapshot: &'a Snapshot, host: &'a str) -> Vec<Namespace<'a>> {
    let mut found: Vec<Namespace<'a>> = snapshot
        .paths_of(host)
        .filter(|(_, view)| !view.vpath.volume.is_deleted() && !view.vpath.is_revoked())
        .map(|(path_index, view)| Namespace {
            nsid: nsid_of_lun(view.vpath.lun),
            path_index,
            view,
        })
        .collect();
    found.sort_by_key(|namespace| namespace.nsid);
    found.truncate(MAX_NAMESPACES_PER_SUBSYSTEM);
    found
}

/// How many VPs `host` has beyond what its subsystem shows (for the warning in the log).
pub fn namespaces_left_out(snapshot: &Snapshot, host: &str) -> usize {
    snapshot
        .paths_of(host)
        .count()
        .saturating_sub(MAX_NAMESPACES_PER_SUBSYSTEM)
}

/// Namespace `nsid` of `host`'s subsystem, if it is active.
pub fn namespace<'a>(snapshot: &'a Snapshot, host: &'a str, nsid: u32) -> Option<Namespace<'a>> {
    namespaces(snapshot, host)
        .into_iter()
        .find(|namespace| namespace.nsid == nsid)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::{open_lun, LunKind, LunSpec};
    use crate::domain::capabilities::{AllowedOps, StatsDetail};
    use crate::domain::vpath::{AccessMode, Vpath};
    use crate::pool::Pool;
    use crate::volume::Volume;
    use std::sync::Arc;

    /// A snapshot with hosts `a` (VPs at LUN 0 to `vol0` and LUN 4 to `vol1`) and `b` (no
    /// VP); volumes of 1 MiB, 512-byte blocks.
    pub fn snapshot() -> Snapshot {
        let lun = open_lun(&LunSpec {
            name: "ram".to_string(),
            kind: LunKind::Mem,
            path: None,
            size_bytes: Some(4 << 20),
            block_size_bytes: 512,
            remote: None,
        })
        .expect("RAM LUN");
        let pool = Arc::new(Pool::create("p", [1; 16], 1 << 20, None, vec![lun]).expect("pool"));
        let volume = |name: &str, uuid: u8| {
            Arc::new(Volume::new(
                name,
                [uuid; 16],
                pool.clone(),
                1 << 20,
                512,
                true,
            ))
        };
        let volumes = [volume("vol0", 0xa0), volume("vol1", 0xa1)];
        let mut snapshot = Snapshot::one_path(
            "a",
            Arc::new(Vpath::new(
                1,
                "a",
                volumes[0].clone(),
                AccessMode::ReadWrite,
                0,
                1,
            )),
            "d",
            Default::default(),
            Box::new([]),
        );
        snapshot.hosts[0].nqn = Some("nqn.2014-08.org.example:a".into());
        let mut b = snapshot.hosts[0].clone();
        b.name = "b".into();
        b.nqn = Some("nqn.2014-08.org.example:b".into());
        snapshot.hosts.push(b);
        snapshot.paths.push(PathView {
            vpath: Arc::new(Vpath::new(
                2,
                "a",
                volumes[1].clone(),
                AccessMode::ReadOnly,
                4,
                1,
            )),
            domain: "d".into(),
            allowed_ops: AllowedOps::default(),
            statistics: StatsDetail::Latency,
            rates: Box::new([]),
        });
        snapshot
    }

    #[test]
    fn namespaces_are_the_hosts_vps_at_lun_plus_one() {
        let snapshot = snapshot();
        let nsids: Vec<u32> = namespaces(&snapshot, "a").iter().map(|n| n.nsid).collect();
        assert_eq!(nsids, vec![1, 5]);
        assert!(namespaces(&snapshot, "b").is_empty());
        assert_eq!(namespace(&snapshot, "a", 5).map(|n| n.path_index), Some(1));
        assert!(namespace(&snapshot, "a", 2).is_none());
        assert!(namespace(&snapshot, "b", 1).is_none());
        assert_eq!(namespaces_left_out(&snapshot, "a"), 0);
    }

    #[test]
    fn subsystem_nqns_name_their_host() {
        let snapshot = snapshot();
        let base = "nqn.2026-11.org.sds:m";
        let nqn = subsystem_nqn(base, "a");
        assert_eq!(nqn, "nqn.2026-11.org.sds:m:a");
        assert_eq!(
            host_of_subsystem(&snapshot, base, &nqn).map(|h| h.name.as_str()),
            Some("a")
        );
        assert!(host_of_subsystem(&snapshot, base, "nqn.2026-11.org.sds:m:zz").is_none());
        assert!(host_of_subsystem(&snapshot, base, "nqn.2026-11.org.sds:ma").is_none());
        assert!(host_of_subsystem(&snapshot, "nqn.2026-11.org.sds:n", &nqn).is_none());
    }

    #[test]
    fn generated_bases_are_valid_and_leave_room_for_a_host_name() {
        assert_eq!(generated_base("Node_1"), "nqn.2026-11.org.sds:node-1");
        assert_eq!(generated_base(""), "nqn.2026-11.org.sds:sds");
        let long = generated_base(&"x".repeat(500));
        validate_base(&long).unwrap();
        nvme_name::validate(&subsystem_nqn(&long, &"h".repeat(MAX_NAME_BYTES))).unwrap();
    }

    #[test]
    fn the_base_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = resolve_base(dir.path(), None).unwrap();
        assert!(first.starts_with(GENERATED_PREFIX));
        assert_eq!(resolve_base(dir.path(), None).unwrap(), first);
        std::fs::write(
            dir.path().join(NQN_BASE_FILE),
            r#"{"nqn_base": "nqn.2026-11.org.sds:kept"}"#,
        )
        .unwrap();
        assert_eq!(
            resolve_base(dir.path(), None).unwrap(),
            "nqn.2026-11.org.sds:kept"
        );
        assert_eq!(
            resolve_base(dir.path(), Some("nqn.2026-11.com.example:given")).unwrap(),
            "nqn.2026-11.com.example:given"
        );
        assert_eq!(
            resolve_base(dir.path(), None).unwrap(),
            "nqn.2026-11.org.sds:kept",
            "an override is not stored"
        );
        assert!(resolve_base(dir.path(), Some("bad base")).is_err());
        std::fs::write(dir.path().join(NQN_BASE_FILE), "not json").unwrap();
        assert!(matches!(
            resolve_base(dir.path(), None),
            Err(StableNameError::Parse { .. })
        ));
    }
}
