//! A name the server gives itself once and keeps: made at the first start from the machine's
//! host name, stored as one field of a small JSON record in the state directory, and read back
//! at every later start, so hosts that recorded it find the same name after a restart. A name
//! configured for one run wins without touching the record (drop the flag and the stored one
//! is back). The iSCSI target name (`iscsi_target`) and the NVMe subsystem NQN base
//! (`nvmf_subsystem`) are such names; each brings its own rules through `validate`.

use std::path::{Path, PathBuf};

/// Which name, where it is kept and how a new one is made.
pub struct StableName {
    /// What the name is, for logs and errors ("iSCSI target name").
    pub what: &'static str,
    /// The record's file in the state directory.
    pub file: &'static str,
    /// The record's field that holds the name.
    pub field: &'static str,
    /// The naming authority a generated name starts with.
    pub prefix: &'static str,
    /// The longest name.
    pub max_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StableNameError {
    #[error("cannot read the {what} from {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a {what} record (a JSON object with a string \"{field}\")")]
    Parse {
        what: &'static str,
        field: &'static str,
        path: PathBuf,
    },
    #[error("cannot write the {what} to {path}")]
    Write {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name:?} is not a valid {what}: {reason}")]
    Invalid {
        what: &'static str,
        name: String,
        reason: String,
    },
}

impl StableName {
    /// The name to serve: `configured` when given, else the stored one, else a new one
    /// (stored). `validate` says why a name is not acceptable.
    pub fn resolve(
        &self,
        state_dir: &Path,
        configured: Option<&str>,
        validate: impl Fn(&str) -> Result<(), String>,
    ) -> Result<String, StableNameError> {
        let checked = |name: &str| {
            validate(name).map_err(|reason| StableNameError::Invalid {
                what: self.what,
                name: name.to_string(),
                reason,
            })
        };
        if let Some(name) = configured {
            checked(name)?;
            return Ok(name.to_string());
        }
        let path = state_dir.join(self.file);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let record: serde_json::Value =
                    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                let Some(name) = record.get(self.field).and_then(|v| v.as_str()) else {
                    return Err(StableNameError::Parse {
                        what: self.what,
                        field: self.field,
                        path,
                    });
                };
                checked(name)?;
                Ok(name.to_string())
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let name = self.generated(&machine_name());
                checked(&name)?;
                let text = serde_json::json!({ self.field: name }).to_string();
                // Written whole or not at all: a temporary file renamed into place.
                let temporary = state_dir.join(format!("{}.tmp", self.file));
                std::fs::write(&temporary, text)
                    .and_then(|()| std::fs::rename(&temporary, &path))
                    .map_err(|source| StableNameError::Write {
                        what: self.what,
                        path,
                        source,
                    })?;
                log::info!("{} {name} created", self.what);
                Ok(name)
            }
            Err(source) => Err(StableNameError::Read {
                what: self.what,
                path,
                source,
            }),
        }
    }

    /// `<prefix><machine>`, the machine's name lower-cased with anything but letters, digits,
    /// '-' and '.' made a '-' (what both iSCSI names and NQNs may hold), cut to `max_bytes`.
    pub fn generated(&self, machine: &str) -> String {
        let mut suffix: String = machine
            .trim()
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if suffix.is_empty() {
            suffix = "sds".into();
        }
        suffix.truncate(self.max_bytes.saturating_sub(self.prefix.len()));
        format!("{}{suffix}", self.prefix)
    }
}

fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}
