//! A mirror's persistent dirty-region log: one bit per
//! [`MIRROR_REGION_BYTES`](crate::constants::MIRROR_REGION_BYTES) of the mirror, set while the
//! legs may differ there, and the persisted state of each leg.
//!
//! The file `STATE/mirrors/<uuid>.dirty` is a header block (magic, version, region size and
//! count, the legs' uuids and states, a CRC32C) followed by bitmap blocks of
//! [`DIRTY_LOG_BLOCK_BYTES`]. The bits live in memory as atomics; the file is what a restart
//! believes. The one rule: **a bit is visible as set in memory only once it is durable** —
//! [`DirtyLog::set_durable`] writes the blocks holding the new bits (from the bits in memory
//! plus the new ones), `fdatasync`s, and only then publishes them. So a writer that finds its
//! bit set (one atomic load) may go on without a sync: what a crash leaves is never less
//! than what a writer relied on. Clearing is the other way round: cleared in memory first,
//! written lazily ([`DirtyLog::flush`]); a crash before then only recopies a region.
//!
//! Writes of the file are serialised by one mutex; only the metadata (provisioner) thread, the
//! resync threads and the control thread take it, never a reactor.

use crate::constants::{DIRTY_LOG_BLOCK_BYTES, MAX_MIRROR_LEGS, MAX_MIRROR_REGIONS};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const MAGIC: &[u8; 8] = b"SDSMIRDL";
const VERSION: u32 = 1;
/// Bits in one bitmap block.
const BITS_PER_BLOCK: u64 = DIRTY_LOG_BLOCK_BYTES as u64 * 8;
const WORDS_PER_BLOCK: usize = DIRTY_LOG_BLOCK_BYTES / 8;
/// Header layout: magic 0..8, version 8..12, leg count 12..16, region bytes 16..24, regions
/// 24..32, legs from 32 (uuid 16 bytes + state 1 byte + 7 reserved), CRC32C in the last 4.
const LEGS_AT: usize = 32;
const LEG_BYTES: usize = 24;
const CRC_AT: usize = DIRTY_LOG_BLOCK_BYTES - 4;
const _: () = assert!(LEGS_AT + MAX_MIRROR_LEGS * LEG_BYTES <= CRC_AT);

#[derive(Debug, thiserror::Error)]
pub enum DirtyLogError {
    #[error("dirty-region log {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dirty-region log {path} is damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
}

/// A leg as the log records it: which volume, in which state (see
/// [`super::mirror::LegState`]'s persisted codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedLeg {
    pub uuid: [u8; 16],
    pub state: u8,
}

pub struct DirtyLog {
    path: PathBuf,
    region_bytes: u64,
    regions: u64,
    bits: Box<[AtomicU64]>,
    io: Mutex<LogIo>,
}

struct LogIo {
    file: File,
    legs: Vec<LoggedLeg>,
    /// Bitmap blocks whose cleared bits are not written yet.
    stale: Vec<bool>,
}

impl DirtyLog {
    /// Makes a new log (every bit clear, `legs` as given), durably: the file and its
    /// directory are synced before this returns.
    pub fn create(
        path: &Path,
        region_bytes: u64,
        regions: u64,
        legs: &[LoggedLeg],
    ) -> Result<Self, DirtyLogError> {
        let io = |source| DirtyLogError::Io {
            path: path.to_path_buf(),
            source,
        };
        if regions > MAX_MIRROR_REGIONS || legs.len() > MAX_MIRROR_LEGS {
            return Err(DirtyLogError::Damaged {
                path: path.to_path_buf(),
                detail: format!(
                    "{regions} regions or {} legs is past the limits",
                    legs.len()
                ),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io)?;
        let blocks = regions.div_ceil(BITS_PER_BLOCK);
        file.set_len((1 + blocks) * DIRTY_LOG_BLOCK_BYTES as u64)
            .map_err(io)?;
        let log = Self::assemble(path, file, region_bytes, regions, legs.to_vec());
        log.write_header_locked(&log.lock())?;
        log.lock().file.sync_all().map_err(io)?;
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(log)
    }

    /// Opens an existing log, checking it belongs to a mirror of `regions` regions of
    /// `region_bytes`.
    pub fn open(path: &Path, region_bytes: u64, regions: u64) -> Result<Self, DirtyLogError> {
        let io = |source| DirtyLogError::Io {
            path: path.to_path_buf(),
            source,
        };
        let damaged = |detail: String| DirtyLogError::Damaged {
            path: path.to_path_buf(),
            detail,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let mut header = vec![0u8; DIRTY_LOG_BLOCK_BYTES];
        file.read_exact_at(&mut header, 0).map_err(io)?;
        if &header[..8] != MAGIC {
            return Err(damaged("no dirty-log magic".into()));
        }
        let crc = u32::from_le_bytes(header[CRC_AT..].try_into().unwrap_or_default());
        if crc32c::crc32c(&header[..CRC_AT]) != crc {
            return Err(damaged("header checksum mismatch".into()));
        }
        let word =
            |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or_default());
        let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        let leg_count = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default()) as usize;
        if version != VERSION || leg_count > MAX_MIRROR_LEGS {
            return Err(damaged(format!("version {version}, {leg_count} legs")));
        }
        if word(16) != region_bytes || word(24) != regions {
            return Err(damaged(format!(
                "it has {} regions of {} bytes, the mirror {regions} of {region_bytes}",
                word(24),
                word(16)
            )));
        }
        let legs = (0..leg_count)
            .map(|i| {
                let at = LEGS_AT + i * LEG_BYTES;
                let mut uuid = [0u8; 16];
                uuid.copy_from_slice(&header[at..at + 16]);
                LoggedLeg {
                    uuid,
                    state: header[at + 16],
                }
            })
            .collect();
        let log = Self::assemble(path, file, region_bytes, regions, legs);
        let mut block = vec![0u8; DIRTY_LOG_BLOCK_BYTES];
        for (index, words) in log.bits.chunks(WORDS_PER_BLOCK).enumerate() {
            let at = (1 + index as u64) * DIRTY_LOG_BLOCK_BYTES as u64;
            log.lock().file.read_exact_at(&mut block, at).map_err(io)?;
            for (word, bytes) in words.iter().zip(block.chunks_exact(8)) {
                word.store(
                    u64::from_le_bytes(bytes.try_into().unwrap_or_default()),
                    Ordering::Relaxed,
                );
            }
        }
        // Bits past the last region are never set; a file that has some was not ours.
        for region in regions..(log.bits.len() as u64 * 64) {
            log.clear(region);
        }
        Ok(log)
    }

    fn assemble(
        path: &Path,
        file: File,
        region_bytes: u64,
        regions: u64,
        legs: Vec<LoggedLeg>,
    ) -> Self {
        let words = regions.div_ceil(64) as usize;
        let blocks = regions.div_ceil(BITS_PER_BLOCK) as usize;
        Self {
            path: path.to_path_buf(),
            region_bytes,
            regions,
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            io: Mutex::new(LogIo {
                file,
                legs,
                stale: vec![false; blocks],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogIo> {
        // A thread that panicked while holding it left the file as it was: go on with it.
        self.io
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn regions(&self) -> u64 {
        self.regions
    }

    pub fn region_bytes(&self) -> u64 {
        self.region_bytes
    }

    /// The regions `[offset, offset + len)` touches.
    #[inline]
    pub fn regions_of(&self, offset_bytes: u64, len_bytes: u64) -> std::ops::Range<u64> {
        let first = offset_bytes / self.region_bytes;
        let end = (offset_bytes + len_bytes.max(1)).div_ceil(self.region_bytes);
        first..end.min(self.regions)
    }

    /// Whether `region`'s bit is set (and so durable): one atomic load.
    #[inline]
    pub fn is_set(&self, region: u64) -> bool {
        let Some(word) = self.bits.get((region / 64) as usize) else {
            return false;
        };
        word.load(Ordering::SeqCst) & (1 << (region % 64)) != 0
    }

    /// Whether every region in `range` has its bit set.
    #[inline]
    pub fn all_set(&self, range: std::ops::Range<u64>) -> bool {
        range.into_iter().all(|region| self.is_set(region))
    }

    /// Whether no region in `range` has its bit set.
    #[inline]
    pub fn none_set(&self, range: std::ops::Range<u64>) -> bool {
        !range.into_iter().any(|region| self.is_set(region))
    }

    /// Sets the bits of `regions` durably: the blocks that hold them are written (with every
    /// bit already set) and synced, and only then do the bits show in memory.
    pub fn set_durable(&self, regions: impl IntoIterator<Item = u64>) -> Result<(), DirtyLogError> {
        let mut wanted: Vec<(usize, u64)> = Vec::new();
        for region in regions.into_iter().filter(|&r| r < self.regions) {
            if self.is_set(region) {
                continue;
            }
            let (word, bit) = ((region / 64) as usize, 1u64 << (region % 64));
            match wanted.iter_mut().find(|(w, _)| *w == word) {
                Some((_, bits)) => *bits |= bit,
                None => wanted.push((word, bit)),
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let io = self.lock();
        let mut blocks: Vec<usize> = wanted.iter().map(|&(w, _)| w / WORDS_PER_BLOCK).collect();
        blocks.sort_unstable();
        blocks.dedup();
        for &block in &blocks {
            self.write_block_locked(&io, block, &wanted)?;
        }
        io.file.sync_data().map_err(|source| DirtyLogError::Io {
            path: self.path.clone(),
            source,
        })?;
        for &(word, bits) in &wanted {
            self.bits[word].fetch_or(bits, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Sets every bit durably (a full copy is needed).
    pub fn set_all_durable(&self) -> Result<(), DirtyLogError> {
        self.set_durable(0..self.regions)
    }

    /// Clears `region`'s bit in memory; the file keeps it set until [`Self::flush`].
    pub fn clear(&self, region: u64) {
        let Some(word) = self.bits.get((region / 64) as usize) else {
            return;
        };
        word.fetch_and(!(1 << (region % 64)), Ordering::SeqCst);
        let block = (region / BITS_PER_BLOCK) as usize;
        if let Some(stale) = self.lock().stale.get_mut(block) {
            *stale = true;
        }
    }

    /// Writes the blocks whose bits were cleared since, and syncs.
    pub fn flush(&self) -> Result<(), DirtyLogError> {
        let mut io = self.lock();
        let stale: Vec<usize> = (0..io.stale.len()).filter(|&b| io.stale[b]).collect();
        if stale.is_empty() {
            return Ok(());
        }
        for &block in &stale {
            self.write_block_locked(&io, block, &[])?;
        }
        io.file.sync_data().map_err(|source| DirtyLogError::Io {
            path: self.path.clone(),
            source,
        })?;
        for block in stale {
            io.stale[block] = false;
        }
        Ok(())
    }

    /// Bitmap block `block` as the bits in memory are now, plus `extra` (word, bits) pairs.
    fn write_block_locked(
        &self,
        io: &LogIo,
        block: usize,
        extra: &[(usize, u64)],
    ) -> Result<(), DirtyLogError> {
        let mut bytes = vec![0u8; DIRTY_LOG_BLOCK_BYTES];
        let first = block * WORDS_PER_BLOCK;
        for (i, chunk) in bytes.chunks_exact_mut(8).enumerate() {
            let word = first + i;
            let Some(bits) = self.bits.get(word) else {
                break;
            };
            let mut value = bits.load(Ordering::SeqCst);
            for &(w, more) in extra {
                if w == word {
                    value |= more;
                }
            }
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        let at = (1 + block as u64) * DIRTY_LOG_BLOCK_BYTES as u64;
        io.file
            .write_all_at(&bytes, at)
            .map_err(|source| DirtyLogError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Regions whose bits are set.
    pub fn count_set(&self) -> u64 {
        self.bits
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// The first region at or after `from` whose bit is set.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let mut word = (from / 64) as usize;
        let mut mask = !0u64 << (from % 64);
        while let Some(bits) = self.bits.get(word) {
            let value = bits.load(Ordering::SeqCst) & mask;
            if value != 0 {
                let region = word as u64 * 64 + u64::from(value.trailing_zeros());
                return (region < self.regions).then_some(region);
            }
            word += 1;
            mask = !0;
        }
        None
    }

    /// The legs as last persisted.
    pub fn legs(&self) -> Vec<LoggedLeg> {
        self.lock().legs.clone()
    }

    /// Records the legs and their states durably (header written and synced).
    pub fn set_legs(&self, legs: &[LoggedLeg]) -> Result<(), DirtyLogError> {
        let mut io = self.lock();
        if io.legs == legs {
            return Ok(());
        }
        let previous = std::mem::replace(&mut io.legs, legs.to_vec());
        let written = self.write_header_locked(&io).and_then(|()| {
            io.file.sync_data().map_err(|source| DirtyLogError::Io {
                path: self.path.clone(),
                source,
            })
        });
        if written.is_err() {
            io.legs = previous;
        }
        written
    }

    fn write_header_locked(&self, io: &LogIo) -> Result<(), DirtyLogError> {
        let mut header = vec![0u8; DIRTY_LOG_BLOCK_BYTES];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(io.legs.len() as u32).to_le_bytes());
        header[16..24].copy_from_slice(&self.region_bytes.to_le_bytes());
        header[24..32].copy_from_slice(&self.regions.to_le_bytes());
        for (i, leg) in io.legs.iter().enumerate() {
            let at = LEGS_AT + i * LEG_BYTES;
            header[at..at + 16].copy_from_slice(&leg.uuid);
            header[at + 16] = leg.state;
        }
        let crc = crc32c::crc32c(&header[..CRC_AT]);
        header[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        io.file
            .write_all_at(&header, 0)
            .map_err(|source| DirtyLogError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legs() -> Vec<LoggedLeg> {
        vec![
            LoggedLeg {
                uuid: [1; 16],
                state: 0,
            },
            LoggedLeg {
                uuid: [2; 16],
                state: 1,
            },
        ]
    }

    #[test]
    fn bits_survive_reopening_and_clears_need_a_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.dirty");
        // More regions than one bitmap block holds, so bits land in two blocks.
        let regions = BITS_PER_BLOCK + 100;
        let log = DirtyLog::create(&path, 1 << 20, regions, &legs()).expect("create");
        assert_eq!(log.count_set(), 0);
        log.set_durable([3, 64, BITS_PER_BLOCK + 5]).expect("set");
        assert!(log.is_set(3) && log.is_set(64) && log.is_set(BITS_PER_BLOCK + 5));
        assert!(!log.is_set(4));
        assert_eq!(log.next_set(0), Some(3));
        assert_eq!(log.next_set(4), Some(64));
        assert_eq!(log.next_set(65), Some(BITS_PER_BLOCK + 5));
        assert_eq!(log.next_set(BITS_PER_BLOCK + 6), None);
        log.clear(3);
        drop(log);
        // Not flushed: the cleared bit is still set on disk (a crash only recopies it).
        let log = DirtyLog::open(&path, 1 << 20, regions).expect("open");
        assert_eq!(log.count_set(), 3);
        assert_eq!(log.legs(), legs());
        log.clear(3);
        log.clear(BITS_PER_BLOCK + 5);
        log.flush().expect("flush");
        drop(log);
        let log = DirtyLog::open(&path, 1 << 20, regions).expect("open");
        assert_eq!(log.count_set(), 1);
        assert!(log.is_set(64));
    }

    #[test]
    fn set_all_and_leg_states_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.dirty");
        let log = DirtyLog::create(&path, 1 << 20, 130, &legs()).expect("create");
        log.set_all_durable().expect("set all");
        assert_eq!(log.count_set(), 130);
        assert!(log.all_set(0..130));
        let mut changed = legs();
        changed[1].state = 2;
        log.set_legs(&changed).expect("legs");
        drop(log);
        let log = DirtyLog::open(&path, 1 << 20, 130).expect("open");
        assert_eq!(log.count_set(), 130);
        assert_eq!(log.legs(), changed);
        assert_eq!(log.regions_of(0, 1), 0..1);
        assert_eq!(log.regions_of((1 << 20) - 512, 1024), 0..2);
        assert_eq!(log.regions_of(129 << 20, 1 << 20), 129..130);
    }

    #[test]
    fn a_damaged_or_foreign_log_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.dirty");
        drop(DirtyLog::create(&path, 1 << 20, 10, &legs()).expect("create"));
        assert!(matches!(
            DirtyLog::open(&path, 1 << 20, 11),
            Err(DirtyLogError::Damaged { .. })
        ));
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(&[0xff], 20).expect("damage");
        assert!(matches!(
            DirtyLog::open(&path, 1 << 20, 10),
            Err(DirtyLogError::Damaged { .. })
        ));
    }
}
