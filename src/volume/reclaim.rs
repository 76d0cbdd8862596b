//! Space given back: a TRIM (NBD TRIM, SCSI UNMAP, NVMe deallocate) that covers a whole
//! virtual extent of a thin volume unmaps it and returns its pool extent to the free set.
//!
//! The provisioning thread does it, for every release request that arrived together:
//!
//! 1. Swap each extent's mapping slot to 0 (a later I/O sees it unmapped: reads zeroes, a
//!    write asks for a new extent).
//! 2. Drain each volume's write gate once: every I/O that loaded an old slot value before the
//!    swap completes first, so no write lands in, and no read returns, an extent that may
//!    already belong to someone else.
//! 3. Commit `None` for all of a pool's extents through its journal (one group, one flush
//!    per LUN): durable, so a restart (or a `kill -9` just after the host saw the TRIM
//!    complete) finds the extents free.
//! 4. Punch the extent out of a file LUN (`fallocate`), so the file system under it gets the
//!    space back too (other LUN kinds keep the data until the next claim zeroes it), and
//!    release the bitmap bits; only now may a claim hand the extents out again.
//!
//! Then the sessions are woken. A commit that fails puts the mapping back (the record on disk
//! still names the volume, so freeing the extent would make the restart disagree with what
//! the host sees) and fails the TRIM.
//!
//! An extent [`Volume::trim_may_free`] refuses is zeroed in place instead and stays mapped;
//! one a snapshot or a clone shares (SHARED slot) is replaced by a zeroed extent of the
//! volume's own (`provisioner::provision_zeroed`), never zeroed in place.

use super::Volume;
use crate::backend::LunKind;
use crate::logger::error_chain;
use crate::pool::on_disk::ExtentRecord;
use crate::pool::{decode_slot, Pool, PoolError, SLOT_SHARED};
use std::sync::Arc;

/// Whether a piece of a request at volume offset `offset_bytes`, `len_bytes` long and inside
/// one extent, covers that extent whole. The volume's last extent may be cut short by its
/// size: a piece from its start to the volume's end covers all of it anyone can see.
#[inline]
pub fn covers_whole_extent(
    offset_bytes: u64,
    len_bytes: u64,
    extent_bytes: u64,
    volume_bytes: u64,
) -> bool {
    offset_bytes % extent_bytes == 0
        && (len_bytes == extent_bytes || offset_bytes + len_bytes >= volume_bytes)
}

/// Punches a freed extent out of its LUN if the LUN is a file: cheap (the file system only
/// drops the blocks) and it gives a sparse file's space back. Not on devices, where zeroing
/// may mean writing every byte, nor in RAM: the next claim zeroes the extent anyway. A
/// failure only costs the file its space until then.
fn give_back_to_the_file(pool: &Pool, slot: u64) {
    let Some((lun, _)) = decode_slot(slot) else {
        return;
    };
    let Some(member) = pool.luns.get(lun) else {
        return;
    };
    if member.lun.info().kind != LunKind::File {
        return;
    }
    if let Err(error) = pool.zero_extent(slot) {
        log::warn!(
            "pool {}: punching a released extent out of its file failed (its space stays \
             used on the file system until the extent is claimed again): {}",
            pool.name,
            error_chain(&error)
        );
    }
}

/// Unmaps and frees every (volume, virtual extent) that is mapped, durably, as one group
/// commit per pool. One result per request; an extent not mapped (any more) is done at once.
pub fn release(wanted: &[(&Volume, u64)]) -> Vec<Result<(), PoolError>> {
    let mut results: Vec<Result<(), PoolError>> = Vec::with_capacity(wanted.len());
    // The slot taken out of the map, per request (0: nothing to free).
    let mut taken: Vec<u64> = vec![0; wanted.len()];
    for (index, &(volume, extent)) in wanted.iter().enumerate() {
        let map = volume.map();
        if extent >= map.extent_count() || map.get(extent) == 0 {
            results.push(Ok(()));
            continue;
        }
        let current = map.get(extent);
        if current & SLOT_SHARED != 0 {
            // A snapshot or a clone holds this extent: never zeroed in place. The volume gets
            // a zeroed extent of its own instead (copy-on-write without the copy)...
            if let Err(error) = super::provisioner::provision_zeroed(volume, extent) {
                results.push(Err(error));
                continue;
            }
            if map.get(extent) != current & !SLOT_SHARED {
                results.push(Ok(()));
                continue;
            }
            // ...unless nothing shares it any more (the mark outlived a deleted snapshot):
            // then only the mark was cleared, and the extent is released as the volume's own.
        }
        if !volume.trim_may_free(extent) {
            let slot = map.get(extent);
            results.push(if slot == 0 {
                Ok(())
            } else {
                volume.pool.zero_extent(slot)
            });
            continue;
        }
        taken[index] = map.clear(extent);
        results.push(Ok(()));
    }
    // Every I/O that may hold an old slot value completes before anything is freed.
    for (index, &(volume, _)) in wanted.iter().enumerate() {
        let first_of_volume = wanted[..index]
            .iter()
            .zip(&taken)
            .all(|(&(v, _), &slot)| !std::ptr::eq(v, volume) || slot == 0);
        if taken[index] != 0 && first_of_volume {
            volume.write_gate.drain();
        }
    }
    // Group commit: every freed record of one pool in one commit.
    for (index, &(volume, _)) in wanted.iter().enumerate() {
        let same_pool: Vec<usize> = (0..wanted.len())
            .filter(|&j| taken[j] != 0 && Arc::ptr_eq(&wanted[j].0.pool, &volume.pool))
            .collect();
        if same_pool.first() != Some(&index) {
            continue;
        }
        let changes: Vec<(u64, Option<ExtentRecord>)> =
            same_pool.iter().map(|&j| (taken[j], None)).collect();
        for (&j, outcome) in same_pool.iter().zip(volume.pool.commit(&changes)) {
            let (owner, extent) = wanted[j];
            match outcome {
                Ok(()) => {
                    give_back_to_the_file(&owner.pool, taken[j]);
                    owner.pool.release_extent(taken[j]);
                }
                Err(error) => {
                    log::error!(
                        "volume {}: releasing extent {extent} is not durable: {}",
                        owner.name,
                        error_chain(&error)
                    );
                    if owner.map().publish(extent, taken[j]).is_err() {
                        // A write mapped a new extent meanwhile: the old one stays used until
                        // a restart, which keeps the newer record and frees the older.
                        log::warn!(
                            "volume {}: extent {extent} was mapped anew meanwhile; its old pool \
                             extent stays used until the next start",
                            owner.name
                        );
                    }
                    results[j] = Err(error);
                }
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{open_lun, LunKind, LunSpec};
    use crate::pool::Pool;

    const EXTENT: u64 = 1 << 20;

    #[test]
    fn whole_extents_are_the_aligned_full_ones_and_the_volumes_cut_tail() {
        assert!(covers_whole_extent(0, EXTENT, EXTENT, 4 * EXTENT));
        assert!(covers_whole_extent(2 * EXTENT, EXTENT, EXTENT, 4 * EXTENT));
        assert!(!covers_whole_extent(512, EXTENT - 512, EXTENT, 4 * EXTENT));
        assert!(!covers_whole_extent(0, EXTENT - 512, EXTENT, 4 * EXTENT));
        // A 3.5-extent volume: its last extent is whole from its start to the end.
        let volume = 3 * EXTENT + EXTENT / 2;
        assert!(covers_whole_extent(3 * EXTENT, EXTENT / 2, EXTENT, volume));
        assert!(!covers_whole_extent(3 * EXTENT, EXTENT / 4, EXTENT, volume));
    }

    fn ram_volume(extents: u64) -> Volume {
        let spec = LunSpec {
            name: "r".into(),
            kind: LunKind::Mem,
            path: None,
            size_bytes: Some(16 * EXTENT),
            block_size_bytes: 512,
            remote: None,
        };
        let lun = open_lun(&spec).expect("RAM LUN");
        let pool = Pool::create("p", [1; 16], EXTENT, None, vec![lun]).expect("pool");
        Volume::new("v", [2; 16], Arc::new(pool), extents * EXTENT, 512, true)
    }

    #[test]
    fn releasing_unmaps_frees_and_is_idempotent() {
        let volume = ram_volume(4);
        let start = volume.pool.free_extents();
        let wanted: Vec<(&Volume, u64)> = (0..3).map(|e| (&volume, e)).collect();
        for result in crate::volume::provisioner::provision(&wanted) {
            result.expect("mapped");
        }
        assert_eq!(volume.pool.free_extents(), start - 3);
        // Extent 3 was never mapped, extent 1 is asked twice: all succeed, two are freed.
        let results = release(&[(&volume, 1), (&volume, 3), (&volume, 1), (&volume, 0)]);
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(volume.pool.free_extents(), start - 1);
        assert_eq!(volume.map().get(0), 0);
        assert_eq!(volume.map().get(1), 0);
        assert_ne!(volume.map().get(2), 0);
        assert_eq!(volume.allocated_extents(), 1);
        assert_eq!(volume.write_gate.in_flight(), 0);
    }
}
