//! Lineages: how snapshots and clones share extents and how their tables are found again at
//! start-up, with the on-disk extent record unchanged (`volume_uuid, virtual_extent,
//! sequence`).
//!
//! A record names a **lineage**, not a volume: the field that held the volume's UUID holds the
//! id of the lineage the extent was written on. A writable volume writes on its lineage (by
//! default its own UUID). Sequences are pool-wide and only grow, so they order records in
//! time, like ZFS birth times:
//!
//! - the head of lineage `L` (the writable volume on it) sees, per virtual extent, the newest
//!   record of `L`;
//! - a snapshot `(L, t)` sees the newest record of `L` whose sequence is at most `t` (taken
//!   from the pool's sequence when the snapshot was made, with no claim in flight);
//! - a lineage may have **sources**: a clone of snapshot `(L, t)` writes on a new lineage `C`
//!   and sees `(L, t)` where `C` has no record of its own; a volume reverted to a snapshot gets
//!   a new lineage the same way. Sources chain: a clone of a clone's snapshot looks through
//!   both. The chain is kept whole in each volume record ([`Lineage::sources`]), so no table
//!   depends on another record to be rebuilt.
//!
//! [`rebuild_views`] is that rule applied to the records found on a pool's LUNs: every table
//! (head, snapshot, clone), how many tables map each extent (its holders, see
//! [`crate::pool::refcount`]) and the records no table maps (orphans: freed).

use crate::constants::MAX_LINEAGE_DEPTH;
use crate::pool::FoundRecord;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// A point in another lineage's history that a lineage falls back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub lineage: crate::identity::Uuid,
    pub sequence: u64,
}

/// What a volume's table is a view of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lineage {
    /// The lineage its records name (a writable volume writes on it).
    pub id: [u8; 16],
    /// A snapshot: the pool sequence it was taken at (it sees records of `id` up to it).
    pub as_of: Option<u64>,
    /// Where it falls back to, nearest first.
    pub sources: Vec<Source>,
}

impl Lineage {
    /// A plain volume's: its own UUID, no history.
    pub fn own(uuid: [u8; 16]) -> Self {
        Self {
            id: uuid,
            as_of: None,
            sources: Vec::new(),
        }
    }

    /// Each lineage the view looks at, with the newest sequence it may see there, nearest
    /// first.
    pub fn chain(&self) -> impl Iterator<Item = ([u8; 16], u64)> + '_ {
        std::iter::once((self.id, self.as_of.unwrap_or(u64::MAX))).chain(
            self.sources
                .iter()
                .map(|source| (source.lineage.0, source.sequence)),
        )
    }

    /// The sources of a lineage that starts from this view (a clone of this snapshot, or a
    /// volume reverted to it); `None` past [`MAX_LINEAGE_DEPTH`].
    pub fn descendant_sources(&self) -> Option<Vec<Source>> {
        let as_of = self.as_of?;
        if self.sources.len() + 1 > MAX_LINEAGE_DEPTH {
            return None;
        }
        let mut sources = vec![Source {
            lineage: crate::identity::Uuid(self.id),
            sequence: as_of,
        }];
        sources.extend(self.sources.iter().copied());
        Some(sources)
    }
}

/// What a volume record says of its lineage (all absent for a plain volume), flattened into
/// the volume's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageRecord {
    /// The lineage its records name, when it is not the volume's own UUID (a snapshot, a
    /// reverted volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<crate::identity::Uuid>,
    /// A snapshot: the pool sequence it was taken at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<u64>,
    /// Where its lineage falls back to, nearest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Source>,
    /// A snapshot: the volume it was taken of (by name, as it was then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_of: Option<String>,
    /// A clone: the snapshot it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_of: Option<String>,
}

impl LineageRecord {
    /// The view of a volume of UUID `uuid` with this record.
    pub fn view(&self, uuid: [u8; 16]) -> Lineage {
        Lineage {
            id: self.lineage.map_or(uuid, |lineage| lineage.0),
            as_of: self.as_of,
            sources: self.sources.clone(),
        }
    }

    pub fn is_snapshot(&self) -> bool {
        self.as_of.is_some()
    }
}

/// One table to rebuild: its view and how many virtual extents it has.
pub struct TableSpec<'a> {
    pub lineage: &'a Lineage,
    pub extent_count: u64,
}

/// What [`rebuild_views`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Per table (in the order given): (virtual extent, slot), by extent.
    pub tables: Vec<Vec<(u64, u64)>>,
    /// Slots more than one table maps, and how many do.
    pub shared: BTreeMap<u64, u32>,
    /// Slots of records no table maps.
    pub orphans: Vec<u64>,
}

/// Per lineage, per virtual extent: the records (sequence, slot), newest first.
type RecordIndex = HashMap<[u8; 16], BTreeMap<u64, Vec<(u64, u64)>>>;

/// Rebuilds every table of a pool from its records (see the module documentation).
pub fn rebuild_views(found: &[FoundRecord], tables: &[TableSpec]) -> Rebuilt {
    // lineage → virtual extent → (sequence, slot), newest first.
    let mut index: RecordIndex = HashMap::new();
    for item in found {
        index
            .entry(item.record.volume_uuid)
            .or_default()
            .entry(item.record.virtual_extent)
            .or_default()
            .push((item.record.sequence, item.slot));
    }
    for extents in index.values_mut() {
        for records in extents.values_mut() {
            records.sort_unstable_by(|a, b| b.cmp(a));
        }
    }
    let mut holders: HashMap<u64, u32> = HashMap::new();
    let mut rebuilt = Rebuilt::default();
    for table in tables {
        let chain: Vec<([u8; 16], u64)> = table.lineage.chain().collect();
        // Every virtual extent some lineage of the chain has a record for.
        let mut candidates: Vec<u64> = chain
            .iter()
            .filter_map(|(lineage, _)| index.get(lineage))
            .flat_map(|extents| extents.range(..table.extent_count).map(|(&v, _)| v))
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let mut mapped = Vec::with_capacity(candidates.len());
        for v in candidates {
            let slot = chain.iter().find_map(|(lineage, limit)| {
                let records = index.get(lineage)?.get(&v)?;
                records
                    .iter()
                    .find(|(sequence, _)| sequence <= limit)
                    .map(|&(_, slot)| slot)
            });
            if let Some(slot) = slot {
                *holders.entry(slot).or_default() += 1;
                mapped.push((v, slot));
            }
        }
        rebuilt.tables.push(mapped);
    }
    rebuilt.orphans = found
        .iter()
        .map(|item| item.slot)
        .filter(|slot| !holders.contains_key(slot))
        .collect();
    rebuilt.shared = holders.into_iter().filter(|&(_, n)| n > 1).collect();
    rebuilt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Uuid;
    use crate::pool::on_disk::ExtentRecord;

    const L: [u8; 16] = [1; 16];
    const C: [u8; 16] = [2; 16];

    fn record(lineage: [u8; 16], v: u64, sequence: u64, slot: u64) -> FoundRecord {
        FoundRecord {
            slot,
            record: ExtentRecord {
                volume_uuid: lineage,
                virtual_extent: v,
                sequence,
            },
        }
    }

    #[test]
    fn heads_snapshots_and_clones_see_their_points_in_time() {
        // Origin on L wrote v0 (seq 1) and v1 (seq 2); snapshot at 3; then v0 again (seq 4,
        // copy-on-write) and v2 (seq 5). A clone C of the snapshot wrote v1 (seq 6).
        let found = [
            record(L, 0, 1, 10),
            record(L, 1, 2, 11),
            record(L, 0, 4, 12),
            record(L, 2, 5, 13),
            record(C, 1, 6, 14),
            // Written after a snapshot that was deleted before the crash: nobody's.
            record(C, 3, 7, 15),
        ];
        let head = Lineage::own(L);
        let snapshot = Lineage {
            as_of: Some(3),
            ..Lineage::own(L)
        };
        let clone = Lineage {
            id: C,
            as_of: None,
            sources: snapshot.descendant_sources().unwrap_or_default(),
        };
        let rebuilt = rebuild_views(
            &found,
            &[
                TableSpec {
                    lineage: &head,
                    extent_count: 4,
                },
                TableSpec {
                    lineage: &snapshot,
                    extent_count: 4,
                },
                TableSpec {
                    lineage: &clone,
                    extent_count: 3,
                },
            ],
        );
        assert_eq!(rebuilt.tables[0], vec![(0, 12), (1, 11), (2, 13)]);
        assert_eq!(rebuilt.tables[1], vec![(0, 10), (1, 11)]);
        // The clone: its own v1, the snapshot's v0; not the origin's later v0 or v2; v3 is
        // past its end.
        assert_eq!(rebuilt.tables[2], vec![(0, 10), (1, 14)]);
        assert_eq!(rebuilt.shared, BTreeMap::from([(10, 2), (11, 2)]));
        assert_eq!(rebuilt.orphans, vec![15]);
    }

    #[test]
    fn a_reverted_volume_drops_what_it_wrote_after_the_snapshot() {
        let found = [
            record(L, 0, 1, 10),
            record(L, 0, 4, 12),
            record(L, 1, 5, 13),
        ];
        let snapshot = Lineage {
            as_of: Some(3),
            ..Lineage::own(L)
        };
        let reverted = Lineage {
            id: C,
            as_of: None,
            sources: snapshot.descendant_sources().unwrap_or_default(),
        };
        let rebuilt = rebuild_views(
            &found,
            &[
                TableSpec {
                    lineage: &reverted,
                    extent_count: 2,
                },
                TableSpec {
                    lineage: &snapshot,
                    extent_count: 2,
                },
            ],
        );
        assert_eq!(rebuilt.tables[0], vec![(0, 10)]);
        assert_eq!(rebuilt.tables[1], vec![(0, 10)]);
        assert_eq!(rebuilt.orphans, vec![12, 13]);
    }

    #[test]
    fn chains_are_bounded() {
        let mut view = Lineage {
            as_of: Some(1),
            ..Lineage::own(L)
        };
        for depth in 0..MAX_LINEAGE_DEPTH {
            let Some(sources) = view.descendant_sources() else {
                panic!("refused at depth {depth}");
            };
            view = Lineage {
                id: [depth as u8; 16],
                as_of: Some(1),
                sources,
            };
        }
        assert_eq!(view.descendant_sources(), None);
        assert_eq!(view.chain().count(), MAX_LINEAGE_DEPTH + 1);
        let _ = Uuid(C);
    }
}
