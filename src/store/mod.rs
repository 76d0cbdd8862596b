//! Configuration records: one JSON file per LUN, pool, volume, host, storage domain and
//! virtual path under `STATE/config/` (`KIND-NAME.json`, the records in [`records`]).
//!
//! A record is replaced atomically: written to a temporary file, fsynced, renamed over the
//! old one, and the directory fsynced, so after a crash at any instant each record is either
//! the old or the new one, never half of each. A record file that does not parse is reported
//! with its path and stops the start-up: configuration is never silently reset.
//!
//! A write that fails at any step removes its temporary file, and temporary files a crash left
//! behind (`.KIND-NAME.json.tmp`) are removed, with a log line, when the store opens: they are
//! never a record (a record is whole only once renamed).

pub mod records;

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Records are readable by the server's user only: a host's record may hold CHAP secrets.
const RECORD_FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("configuration store {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration record {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The embedded file store of a single server.
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("config");
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let store = Self { dir };
        store.remove_stale_temporaries()?;
        Ok(store)
    }

    /// Removes the temporary files a write interrupted by a crash left behind.
    fn remove_stale_temporaries(&self) -> Result<(), StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        for path in entries.filter_map(|entry| entry.ok().map(|e| e.path())) {
            if !path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_temporary)
            {
                continue;
            }
            fs::remove_file(&path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
            log::warn!(
                "removed {}, left by an interrupted record write",
                path.display()
            );
        }
        Ok(())
    }

    /// Where the record of `kind` `name` lives (whether or not it exists).
    pub fn record_path(&self, kind: &str, name: &str) -> PathBuf {
        self.dir.join(format!("{kind}-{name}.json"))
    }

    /// Writes a record atomically and durably.
    pub fn put<T: Serialize>(&self, kind: &str, name: &str, record: &T) -> Result<(), StoreError> {
        let path = self.record_path(kind, name);
        let temp = self.dir.join(format!(".{kind}-{name}.json.tmp"));
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Corrupt {
            path: path.clone(),
            source,
        })?;
        // Owner-only: a host record may hold CHAP secrets.
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(RECORD_FILE_MODE)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(&text)?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&temp, &path));
        if let Err(source) = written {
            // The record is still the old one; the half-made new one must not linger.
            if let Err(error) = fs::remove_file(&temp) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cannot remove {}: {error}", temp.display());
                }
            }
            return Err(io(source));
        }
        self.sync_dir()
    }

    /// Removes a record durably.
    pub fn delete(&self, kind: &str, name: &str) -> Result<(), StoreError> {
        let path = self.record_path(kind, name);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Every record of `kind`, sorted by name.
    pub fn list<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>, StoreError> {
        let io = |source| StoreError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut paths: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(io)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{kind}-")) && n.ends_with(".json"))
            })
            .collect();
        paths.sort();
        let mut records = Vec::with_capacity(paths.len());
        for path in paths {
            let text = fs::read(&path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
            records.push(
                serde_json::from_slice(&text).map_err(|source| StoreError::Corrupt {
                    path: path.clone(),
                    source,
                })?,
            );
        }
        Ok(records)
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| StoreError::Io {
                path: self.dir.clone(),
                source,
            })
    }
}

/// Whether a file name in the store's directory is a temporary file of [`FileStore::put`].
fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".json.tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_list_delete_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        store
            .put("lun", "a", &serde_json::json!({"x": 1}))
            .expect("put");
        store
            .put("lun", "b", &serde_json::json!({"x": 2}))
            .expect("put");
        store
            .put("pool", "a", &serde_json::json!({"y": 1}))
            .expect("put");
        let luns: Vec<serde_json::Value> = store.list("lun").expect("list");
        assert_eq!(
            luns,
            vec![serde_json::json!({"x": 1}), serde_json::json!({"x": 2})]
        );
        store.delete("lun", "a").expect("delete");
        assert_eq!(
            store.list::<serde_json::Value>("lun").expect("list").len(),
            1
        );
        fs::write(dir.path().join("config/lun-bad.json"), b"{not json").expect("write");
        match store.list::<serde_json::Value>("lun") {
            Err(StoreError::Corrupt { path, .. }) => assert!(path.ends_with("lun-bad.json")),
            other => panic!("expected a corrupt record error, got {other:?}"),
        }
    }

    /// The temporary files in the store's directory.
    fn temporaries(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir.join("config"))
            .expect("read_dir")
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "tmp"))
            .collect()
    }

    #[test]
    fn a_failed_put_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        // A non-empty directory where the record goes: the rename over it fails.
        let target = store.record_path("lun", "a");
        fs::create_dir(&target).expect("mkdir");
        fs::write(target.join("keep"), b"x").expect("write");
        let result = store.put("lun", "a", &serde_json::json!({"x": 1}));
        assert!(result.is_err(), "the put succeeded over a directory");
        assert_eq!(temporaries(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn stale_temporary_files_are_removed_when_the_store_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        store
            .put("lun", "a", &serde_json::json!({"x": 1}))
            .expect("put");
        fs::write(dir.path().join("config/.lun-b.json.tmp"), b"{\"x\"").expect("write");
        let store = FileStore::open(dir.path()).expect("open again");
        assert_eq!(temporaries(dir.path()), Vec::<PathBuf>::new());
        let luns: Vec<serde_json::Value> = store.list("lun").expect("list");
        assert_eq!(luns, vec![serde_json::json!({"x": 1})]);
    }
}
