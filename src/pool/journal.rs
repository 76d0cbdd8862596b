//! The extent-map journal of one pool LUN: group commit, checkpoints and replay.
//!
//! ```text
//!  provisioning / control thread ──commit(entries)──▶ journal blocks (one write each)
//!                                                        │ one flush of the LUN
//!                                                        ▼
//!                                                     durable: the caller may publish
//!  ring half full ──▶ checkpoint: changed records ─▶ flush ─▶ other checkpoint slot ─▶ flush
//!  open ──▶ records + journal blocks after the checkpoint, up to the first bad one ─▶ state
//! ```
//!
//! The on-disk format is in [`super::on_disk`]. Only metadata threads use a journal, never a
//! reactor, so its state sits behind a mutex: commits of one LUN are serialized, which is what
//! makes a group commit one sequence of blocks and one flush.

use super::on_disk::{
    decode_journal_block, encode_journal_block, Checkpoint, ExtentRecord, GeometryError,
    JournalEnd, JournalEntry, Layout, CHECKPOINT_SLOTS,
};
use crate::backend::aligned_buf::AlignedBuf;
use crate::backend::{Lun, LunError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Lun(#[from] LunError),
    #[error("neither checkpoint slot is valid: the pool metadata is damaged")]
    NoCheckpoint,
    /// A block whole and correctly checksummed, but naming what the LUN does not have: the
    /// pool's metadata is damaged, and replaying it would corrupt the pool.
    #[error("checkpoint slot {slot} (LUN block {lun_block}): damaged")]
    DamagedCheckpoint {
        slot: u64,
        lun_block: u64,
        #[source]
        source: GeometryError,
    },
    #[error("journal block {sequence} (LUN block {lun_block}), entry {entry}: damaged")]
    Damaged {
        sequence: u64,
        lun_block: u64,
        entry: usize,
        #[source]
        source: GeometryError,
    },
}

/// What opening a LUN found in its journal.
#[derive(Clone, Copy, Debug)]
pub struct Recovery {
    /// The journal sequence the records held when the LUN was opened.
    pub checkpoint_sequence: u64,
    pub replayed_blocks: u64,
    pub replayed_entries: u64,
    /// Why replay stopped.
    pub end: JournalEnd,
    /// Time to read the checkpoint and replay, in microseconds.
    pub elapsed_us: u64,
}

/// Counters for `pool_get_pools`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JournalStats {
    pub next_sequence: u64,
    pub checkpoint_sequence: u64,
    pub epoch: u64,
    pub dirty_records: u64,
    pub commits: u64,
    pub checkpoints: u64,
}

struct State {
    next_sequence: u64,
    checkpoint: Checkpoint,
    epoch: u64,
    /// The newest state of every record changed since the checkpoint.
    dirty: BTreeMap<u64, Option<ExtentRecord>>,
    block: AlignedBuf,
    commits: u64,
    checkpoints: u64,
}

pub struct Journal {
    layout: Layout,
    state: Mutex<State>,
}

impl Journal {
    /// The journal of a freshly formatted LUN (metadata area already zeroed): writes the first
    /// checkpoint.
    pub fn format(lun: &dyn Lun, layout: Layout) -> Result<Self, JournalError> {
        let journal = Self::with_state(
            layout,
            Checkpoint {
                sequence: 0,
                generation: 0,
                epoch: 1,
            },
        );
        {
            let mut state = journal.lock();
            let first = state.checkpoint;
            journal.write_checkpoint(lun, &mut state, first)?;
        }
        Ok(journal)
    }

    /// Opens the journal of a LUN whose extent records are `records` (extent → record): replays
    /// every journal block after the checkpoint into `records`, then folds them into a new
    /// checkpoint that starts a new epoch.
    pub fn open(
        lun: &dyn Lun,
        layout: Layout,
        records: &mut HashMap<u64, ExtentRecord>,
    ) -> Result<(Self, Recovery), JournalError> {
        let started = Instant::now();
        let block_bytes = layout.block_size_bytes as usize;
        let mut block = AlignedBuf::new(block_bytes);
        let mut checkpoint: Option<Checkpoint> = None;
        for slot in 0..CHECKPOINT_SLOTS {
            lun.read_at(
                &mut block.as_mut_slice()[..block_bytes],
                layout.checkpoint_offset_bytes(slot),
            )?;
            if let Some(found) = Checkpoint::decode(&block.as_slice()[..block_bytes]) {
                found
                    .validate()
                    .map_err(|source| JournalError::DamagedCheckpoint {
                        slot,
                        lun_block: layout.checkpoint_offset_bytes(slot) / block_bytes as u64,
                        source,
                    })?;
                if checkpoint.map_or(true, |c| found.generation > c.generation) {
                    checkpoint = Some(found);
                }
            }
        }
        let checkpoint = checkpoint.ok_or(JournalError::NoCheckpoint)?;
        let journal = Self::with_state(layout, checkpoint);
        let mut state = journal.lock();
        let mut expected = checkpoint.sequence + 1;
        let mut min_epoch = checkpoint.epoch;
        let mut entries = Vec::with_capacity(layout.journal_entries_per_block());
        let mut replayed_entries = 0u64;
        let mut end = JournalEnd::Empty;
        // At most a full ring can follow a checkpoint.
        for _ in 0..layout.journal_blocks {
            let bytes = &mut block.as_mut_slice()[..block_bytes];
            lun.read_at(bytes, layout.journal_block_offset_bytes(expected))?;
            match decode_journal_block(bytes, expected, min_epoch, &mut entries) {
                Ok(epoch) => {
                    // Every entry is checked before any is applied: a damaged block changes
                    // nothing, and the pool is failed with the block named.
                    for (index, entry) in entries.iter().enumerate() {
                        entry
                            .validate(&layout)
                            .map_err(|source| JournalError::Damaged {
                                sequence: expected,
                                lun_block: layout.journal_block_offset_bytes(expected)
                                    / u64::from(layout.block_size_bytes),
                                entry: index,
                                source,
                            })?;
                    }
                    for entry in &entries {
                        match entry.record {
                            Some(record) => records.insert(entry.extent, record),
                            None => records.remove(&entry.extent),
                        };
                        state.dirty.insert(entry.extent, entry.record);
                    }
                    replayed_entries += entries.len() as u64;
                    min_epoch = epoch;
                    expected += 1;
                }
                Err(stop) => {
                    end = stop;
                    break;
                }
            }
        }
        let recovery = Recovery {
            checkpoint_sequence: checkpoint.sequence,
            replayed_blocks: expected - checkpoint.sequence - 1,
            replayed_entries,
            end,
            elapsed_us: started.elapsed().as_micros() as u64,
        };
        state.next_sequence = expected;
        state.epoch = checkpoint.epoch + 1;
        journal.checkpoint_locked(lun, &mut state)?;
        drop(state);
        Ok((journal, recovery))
    }

    fn with_state(layout: Layout, checkpoint: Checkpoint) -> Self {
        Self {
            layout,
            state: Mutex::new(State {
                next_sequence: checkpoint.sequence + 1,
                checkpoint,
                epoch: checkpoint.epoch,
                dirty: BTreeMap::new(),
                block: AlignedBuf::new(layout.block_size_bytes as usize),
                commits: 0,
                checkpoints: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock aborts the process (panic = "abort"), so a poisoned
        // lock cannot be observed; take the state either way.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `entries` as journal blocks and flushes the LUN once: when this returns `Ok`,
    /// every entry is durable. Checkpoints first when the ring has no room, and after the
    /// commit when the ring is half full.
    pub fn commit(&self, lun: &dyn Lun, entries: &[JournalEntry]) -> Result<(), JournalError> {
        let layout = self.layout;
        let block_bytes = layout.block_size_bytes as usize;
        let mut state = self.lock();
        for chunk in entries.chunks(layout.journal_entries_per_block()) {
            if state.next_sequence - state.checkpoint.sequence > layout.journal_blocks {
                self.checkpoint_locked(lun, &mut state)?;
            }
            let sequence = state.next_sequence;
            let epoch = state.epoch;
            let bytes = &mut state.block.as_mut_slice()[..block_bytes];
            encode_journal_block(sequence, epoch, chunk, bytes);
            lun.write_at(bytes, layout.journal_block_offset_bytes(sequence), false)?;
            for entry in chunk {
                state.dirty.insert(entry.extent, entry.record);
            }
            state.next_sequence += 1;
        }
        lun.flush()?;
        state.commits += 1;
        if state.next_sequence - 1 - state.checkpoint.sequence >= layout.journal_blocks / 2 {
            self.checkpoint_locked(lun, &mut state)?;
        }
        Ok(())
    }

    /// Folds every journaled change into the extent records now.
    pub fn checkpoint(&self, lun: &dyn Lun) -> Result<(), JournalError> {
        let mut state = self.lock();
        self.checkpoint_locked(lun, &mut state)
    }

    fn checkpoint_locked(&self, lun: &dyn Lun, state: &mut State) -> Result<(), JournalError> {
        let layout = self.layout;
        let block_bytes = layout.block_size_bytes as usize;
        // The journal blocks go down before the records that repeat them.
        lun.flush()?;
        let State { dirty, block, .. } = state;
        for (&extent, record) in dirty.iter() {
            let bytes = &mut block.as_mut_slice()[..block_bytes];
            match record {
                Some(record) => record.encode(bytes),
                None => bytes.fill(0),
            }
            lun.write_at(bytes, layout.record_offset_bytes(extent), false)?;
        }
        lun.flush()?;
        let next = Checkpoint {
            sequence: state.next_sequence - 1,
            generation: state.checkpoint.generation + 1,
            epoch: state.epoch,
        };
        self.write_checkpoint(lun, state, next)?;
        state.dirty.clear();
        state.checkpoints += 1;
        Ok(())
    }

    fn write_checkpoint(
        &self,
        lun: &dyn Lun,
        state: &mut State,
        checkpoint: Checkpoint,
    ) -> Result<(), JournalError> {
        let block_bytes = self.layout.block_size_bytes as usize;
        let bytes = &mut state.block.as_mut_slice()[..block_bytes];
        checkpoint.encode(bytes);
        lun.write_at(
            bytes,
            self.layout.checkpoint_offset_bytes(checkpoint.generation),
            false,
        )?;
        lun.flush()?;
        state.checkpoint = checkpoint;
        Ok(())
    }

    pub fn stats(&self) -> JournalStats {
        let state = self.lock();
        JournalStats {
            next_sequence: state.next_sequence,
            checkpoint_sequence: state.checkpoint.sequence,
            epoch: state.epoch,
            dirty_records: state.dirty.len() as u64,
            commits: state.commits,
            checkpoints: state.checkpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{open_lun, LunKind, LunSpec};
    use std::sync::Arc;

    fn file_lun(dir: &std::path::Path, block: u32) -> Arc<dyn Lun> {
        open_lun(&LunSpec {
            name: "j".into(),
            kind: LunKind::File,
            path: Some(dir.join("lun.img")),
            size_bytes: Some(64 << 20),
            block_size_bytes: block,
            remote: None,
        })
        .expect("file LUN")
    }

    fn record(volume: u8, virtual_extent: u64) -> ExtentRecord {
        ExtentRecord {
            volume_uuid: [volume; 16],
            virtual_extent,
            sequence: virtual_extent + 1,
        }
    }

    fn formatted(lun: &dyn Lun, journal_blocks: u64) -> (Journal, Layout) {
        let info = lun.info();
        let layout = Layout::compute(
            info.size_bytes,
            info.block_size_bytes,
            1 << 20,
            Some(journal_blocks),
        )
        .expect("layout");
        lun.write_zeroes_at(
            layout.checkpoint_offset_bytes(0),
            layout.data_offset_bytes - layout.checkpoint_offset_bytes(0),
        )
        .expect("zero");
        (Journal::format(lun, layout).expect("format"), layout)
    }

    /// Reads the records table, then opens the journal, as the pool does.
    fn reopen(lun: &dyn Lun, layout: Layout) -> (HashMap<u64, ExtentRecord>, Recovery) {
        let mut records = HashMap::new();
        let block = layout.block_size_bytes as usize;
        let mut buf = AlignedBuf::new(block);
        for extent in 0..layout.extent_count {
            lun.read_at(
                &mut buf.as_mut_slice()[..block],
                layout.record_offset_bytes(extent),
            )
            .expect("read");
            if let super::super::on_disk::RecordState::Used(r) =
                ExtentRecord::decode(&buf.as_slice()[..block])
            {
                records.insert(extent, r);
            }
        }
        let (_, recovery) = Journal::open(lun, layout, &mut records).expect("open");
        (records, recovery)
    }

    #[test]
    fn commits_survive_without_a_checkpoint_and_replay_stops_at_a_torn_block() {
        let dir = tempfile::tempdir().expect("dir");
        let lun = file_lun(dir.path(), 512);
        let (journal, layout) = formatted(lun.as_ref(), 64);
        // 25 entries: three blocks of ten.
        let entries: Vec<JournalEntry> = (0..25)
            .map(|i| JournalEntry {
                extent: i,
                record: Some(record(1, 100 + i)),
            })
            .collect();
        journal.commit(lun.as_ref(), &entries).expect("commit");
        journal
            .commit(
                lun.as_ref(),
                &[JournalEntry {
                    extent: 3,
                    record: None,
                }],
            )
            .expect("free");
        // "Crash": nothing more is written. Replay finds all four blocks.
        let (records, recovery) = reopen(lun.as_ref(), layout);
        assert_eq!(recovery.replayed_blocks, 4);
        assert_eq!(recovery.replayed_entries, 26);
        assert_eq!(records.len(), 24);
        assert_eq!(records.get(&7), Some(&record(1, 107)));
        assert!(!records.contains_key(&3));
        // Opening checkpointed everything: a second open replays nothing and sees the same.
        let (again, recovery) = reopen(lun.as_ref(), layout);
        assert_eq!(recovery.replayed_blocks, 0);
        assert_eq!(again, records);

        // A commit whose second block is torn: replay keeps the first block only.
        let (journal, _) = Journal::open(lun.as_ref(), layout, &mut again.clone()).expect("open");
        let more: Vec<JournalEntry> = (30..50)
            .map(|i| JournalEntry {
                extent: i,
                record: Some(record(2, i)),
            })
            .collect();
        journal.commit(lun.as_ref(), &more).expect("commit");
        let stats = journal.stats();
        let torn_at = layout.journal_block_offset_bytes(stats.next_sequence - 1);
        let mut garbage = AlignedBuf::new(512);
        garbage.as_mut_slice()[..512].fill(0x5a);
        lun.write_at(&garbage.as_slice()[..512], torn_at, true)
            .expect("tear");
        let (records, recovery) = reopen(lun.as_ref(), layout);
        assert_eq!(recovery.replayed_blocks, 1);
        assert_eq!(recovery.end, JournalEnd::Torn);
        assert!(records.contains_key(&39) && !records.contains_key(&40));
    }

    #[test]
    fn the_ring_wraps_through_checkpoints() {
        let dir = tempfile::tempdir().expect("dir");
        let lun = file_lun(dir.path(), 4096);
        let (journal, layout) = formatted(lun.as_ref(), 16);
        let extents = layout.extent_count.min(40);
        // 200 single-entry commits: the 16-block ring wraps many times.
        for i in 0..200u64 {
            let extent = i % extents;
            let entry = JournalEntry {
                extent,
                record: (i % 7 != 0).then_some(record(3, i)),
            };
            journal.commit(lun.as_ref(), &[entry]).expect("commit");
        }
        assert!(journal.stats().checkpoints >= 200 / 8 - 1);
        let (records, _) = reopen(lun.as_ref(), layout);
        for extent in 0..extents {
            // The last commit to touch this extent decides.
            let last = (0..200u64).rev().find(|i| i % extents == extent);
            let want = last.and_then(|i| (i % 7 != 0).then_some(record(3, i)));
            assert_eq!(records.get(&extent).copied(), want, "extent {extent}");
        }
    }

    #[test]
    fn a_stale_block_from_a_crashed_run_is_not_replayed() {
        let dir = tempfile::tempdir().expect("dir");
        let lun = file_lun(dir.path(), 512);
        let (journal, layout) = formatted(lun.as_ref(), 64);
        let entries: Vec<JournalEntry> = (0..20)
            .map(|i| JournalEntry {
                extent: i,
                record: Some(record(4, i)),
            })
            .collect();
        journal.commit(lun.as_ref(), &entries).expect("commit");
        // Crash with block 1 torn and block 2 whole: replay stops at 1.
        let mut garbage = AlignedBuf::new(512);
        garbage.as_mut_slice()[..512].fill(0x33);
        lun.write_at(
            &garbage.as_slice()[..512],
            layout.journal_block_offset_bytes(1),
            true,
        )
        .expect("tear");
        let mut records = HashMap::new();
        let (journal, recovery) = Journal::open(lun.as_ref(), layout, &mut records).expect("open");
        assert_eq!(recovery.replayed_blocks, 0);
        assert!(records.is_empty());
        // The next run rewrites block 1 only, then crashes: the old block 2 must not follow it.
        journal
            .commit(
                lun.as_ref(),
                &[JournalEntry {
                    extent: 50,
                    record: Some(record(5, 50)),
                }],
            )
            .expect("commit");
        let (records, recovery) = reopen(lun.as_ref(), layout);
        assert_eq!(recovery.replayed_blocks, 1);
        assert!(matches!(recovery.end, JournalEnd::Stale { .. }));
        assert_eq!(records.len(), 1);
        assert_eq!(records.get(&50), Some(&record(5, 50)));
    }

    #[test]
    fn a_whole_block_naming_an_extent_past_the_lun_is_damage_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let lun = file_lun(dir.path(), 512);
        let (journal, layout) = formatted(lun.as_ref(), 64);
        journal
            .commit(
                lun.as_ref(),
                &[JournalEntry {
                    extent: 1,
                    record: Some(record(1, 1)),
                }],
            )
            .expect("commit");
        // Block 2, whole and checksummed: one good entry, then one past the LUN's extents.
        let stats = journal.stats();
        let mut block = AlignedBuf::new(512);
        let entries = [
            JournalEntry {
                extent: 2,
                record: Some(record(1, 2)),
            },
            JournalEntry {
                extent: layout.extent_count,
                record: Some(record(1, 3)),
            },
        ];
        encode_journal_block(
            stats.next_sequence,
            stats.epoch,
            &entries,
            &mut block.as_mut_slice()[..512],
        );
        let at = layout.journal_block_offset_bytes(stats.next_sequence);
        lun.write_at(&block.as_slice()[..512], at, true)
            .expect("write");
        let mut records = HashMap::new();
        let error = match Journal::open(lun.as_ref(), layout, &mut records) {
            Ok(_) => panic!("a damaged journal block was replayed"),
            Err(error) => error,
        };
        match &error {
            JournalError::Damaged {
                sequence,
                lun_block,
                entry,
                source,
            } => {
                assert_eq!(*sequence, stats.next_sequence);
                assert_eq!(*lun_block, at / 512);
                assert_eq!(*entry, 1);
                assert!(source.to_string().contains("field extent"), "{source}");
            }
            other => panic!("not damage: {other}"),
        }
        // Nothing of the damaged block was applied, not even its good entry.
        assert!(!records.contains_key(&2));
    }
}
