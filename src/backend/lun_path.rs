//! How a LUN's file or device is named and recognised.
//!
//! A path is a spelling, not an identity: `DIR/sub/../l1.img`, a symlink to `DIR/l1.img` and a
//! hard link to it are all one file, and two LUNs on it would hand its blocks to two pools.
//! So `lun_create` records the path [`canonical`] (absolute, with `.`, `..` and symlinks
//! resolved: a relative path is taken from the server's working directory once, at creation,
//! and not again at every start), and compares what it names by [`Identity`]: device and
//! inode for a file, the device number for a block device (two device nodes of one disk are
//! one disk).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// What a path names, whatever its spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    File { device: u64, inode: u64 },
    BlockDevice { device: u64 },
}

/// The identity of what `path` names, or `None` if nothing is there (yet).
pub fn identity(path: &Path) -> Option<Identity> {
    let metadata = std::fs::metadata(path).ok()?;
    Some(if metadata.file_type().is_block_device() {
        Identity::BlockDevice {
            device: metadata.rdev(),
        }
    } else {
        Identity::File {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    })
}

/// `path` absolute and resolved. A path whose last components do not exist yet (a file LUN
/// to be created, in directories to be created) is resolved as far as it exists; the rest,
/// plain names, is appended. A `..` or `.` in the part that does not exist is an error, as it
/// would be when the file is opened.
pub fn canonical(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    resolve(&absolute)
}

fn resolve(absolute: &Path) -> std::io::Result<PathBuf> {
    match std::fs::canonicalize(absolute) {
        Ok(resolved) => Ok(resolved),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let (Some(parent), Some(Component::Normal(name))) =
                (absolute.parent(), absolute.components().next_back())
            else {
                return Err(error);
            };
            Ok(resolve(parent)?.join(name))
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "Miri isolates the file system")]
    fn spellings_resolve_to_one_path_and_links_to_one_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonicalize");
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("l1.img"), b"x").expect("write");
        std::os::unix::fs::symlink(root.join("l1.img"), root.join("link")).expect("symlink");
        std::fs::hard_link(root.join("l1.img"), root.join("hard")).expect("link");
        let l1 = root.join("l1.img");
        assert_eq!(canonical(&root.join("sub/../l1.img")).expect(".."), l1);
        assert_eq!(canonical(&root.join("./sub/./../l1.img")).expect("."), l1);
        assert_eq!(canonical(&root.join("link")).expect("symlink"), l1);
        assert_eq!(identity(&root.join("hard")), identity(&l1));
        assert!(identity(&l1).is_some());
        // Not there yet: resolved as far as it exists.
        assert_eq!(
            canonical(&root.join("sub/../new/dir/l2.img")).expect("new"),
            root.join("new/dir/l2.img")
        );
        assert_eq!(identity(&root.join("new/dir/l2.img")), None);
        assert!(canonical(&root.join("missing/..")).is_err());
    }
}
