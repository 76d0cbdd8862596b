//! The one iSCSI target name of this server, stable across restarts: made at the first start
//! as `iqn.2026-11.org.sds:<hostname>` and kept in `STATE/iscsi-target.json`; every later
//! start reads it back, so initiators that recorded it (and SCSI-3 reservations made through
//! it) find the same target. `--iscsi-target-name` overrides it for one run without changing
//! the file (remove the flag and the stored name is back).

use crate::target::stable_name::{StableName, StableNameError};
use std::path::Path;

/// The file in the state directory.
pub const TARGET_NAME_FILE: &str = "iscsi-target.json";
/// The naming authority of generated names (RFC 7143 §4.2.7.1: `iqn.yyyy-mm.reversed-domain`).
pub const GENERATED_PREFIX: &str = "iqn.2026-11.org.sds:";
/// The longest iSCSI name (RFC 7143 §4.2.7.1: 223 bytes).
pub use crate::constants::MAX_ISCSI_NAME_BYTES;

const TARGET_NAME: StableName = StableName {
    what: "iSCSI target name",
    file: TARGET_NAME_FILE,
    field: "name",
    prefix: GENERATED_PREFIX,
    max_bytes: MAX_ISCSI_NAME_BYTES,
};

/// The name to serve: `configured` when given, else the stored one, else a new one (stored).
pub fn resolve(state_dir: &Path, configured: Option<&str>) -> Result<String, StableNameError> {
    TARGET_NAME.resolve(state_dir, configured, validate)
}

/// `iqn.2026-11.org.sds:<host>` with the host name lower-cased and anything an iSCSI name may
/// not hold (RFC 3722: letters, digits, '-', '.', ':') made a '-'.
pub fn generated(host: &str) -> String {
    TARGET_NAME.generated(host)
}

/// An iSCSI name as RFC 7143 §4.2.7 has them: `iqn.`, `eui.` or `naa.`, at most 223 bytes of
/// lower-case letters, digits, '-', '.' and ':'.
pub fn validate(name: &str) -> Result<(), String> {
    if name.len() > MAX_ISCSI_NAME_BYTES {
        return Err("longer than 223 bytes".into());
    }
    if !["iqn.", "eui.", "naa."]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        || name.len() <= 4
    {
        return Err("it must start with iqn., eui. or naa.".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b))
    {
        return Err("only lower-case letters, digits, '-', '.' and ':' are allowed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_valid() {
        assert_eq!(generated("Node_1"), "iqn.2026-11.org.sds:node-1");
        assert_eq!(generated(""), "iqn.2026-11.org.sds:sds");
        validate(&generated(&"x".repeat(500))).unwrap();
        validate(&generated("ünïcode host")).unwrap();
    }

    #[test]
    fn validation() {
        validate("iqn.2026-11.org.sds:a").unwrap();
        validate("eui.02004567a425678d").unwrap();
        assert!(validate("iqn.").is_err());
        assert!(validate("iqn.2026-11.org.sds:UPPER").is_err());
        assert!(validate("target").is_err());
    }

    #[test]
    fn the_name_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = resolve(dir.path(), None).unwrap();
        assert!(first.starts_with(GENERATED_PREFIX));
        std::fs::write(
            dir.path().join(TARGET_NAME_FILE),
            r#"{"name": "iqn.2026-11.org.sds:kept"}"#,
        )
        .unwrap();
        assert_eq!(
            resolve(dir.path(), None).unwrap(),
            "iqn.2026-11.org.sds:kept"
        );
        assert_eq!(
            resolve(dir.path(), Some("iqn.2026-11.org.sds:given")).unwrap(),
            "iqn.2026-11.org.sds:given"
        );
        assert_eq!(
            resolve(dir.path(), None).unwrap(),
            "iqn.2026-11.org.sds:kept",
            "an override is not stored"
        );
        assert!(resolve(dir.path(), Some("Bad Name")).is_err());
        std::fs::write(dir.path().join(TARGET_NAME_FILE), "not json").unwrap();
        assert!(matches!(
            resolve(dir.path(), None),
            Err(StableNameError::Parse { .. })
        ));
    }
}
