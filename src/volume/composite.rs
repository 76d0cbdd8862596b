//! Composite volumes: a volume whose body is made of other volumes (its *parts*) instead of
//! its own mapping table. A volume set (concatenation or stripe, see [`super::set`]) is one;
//! a mirror is meant to be another (see "The mirror hook" below).
//!
//! Translation stays one call, [`super::Volume::segment`]: a composite maps an offset to
//! (part, offset in the part), and the part's own map does the rest. A part is always a
//! plain volume (no nesting), so a request costs one more branch and, for a stripe, one
//! division; a plain volume pays only the branch that finds it has no composite body.
//!
//! **LUN table.** The engine tags each LUN I/O with an 8-bit LUN index so that an error is
//! counted on the right LUN without a lookup. For a composite the index is into its flat LUN
//! table: every pool LUN of every part, part after part (part *i*'s pool LUN *k* is entry
//! `lun_base(i) + k`). Entries are appended when a part is added and never move or change,
//! so an index in a completion still names the same LUN (and part) however the composite
//! grew meanwhile. At most [`MAX_COMPOSITE_LUNS`] entries (the tag field's range) and
//! [`MAX_LUNS_PER_POOL`] distinct LUNs (what one flush round may submit); a part that would
//! pass either is refused. A plain volume's table is its pool's LUNs, same numbers.
//!
//! **Growing online.** Parts and LUN entries live in fixed arrays of write-once cells
//! ([`OnceLock`]) with an atomic count each, written only by the control thread: an entry is
//! filled first, then the count is raised (Release), then the volume's size. A request
//! checked against the new size loads the count (Acquire) and finds the new part; a request
//! already running keeps the references it resolved, which stay valid (cells are never
//! emptied while the volume lives).
//!
//! **The mirror hook.** A mirror adds a [`Layout`] variant (say `Mirror`) whose parts are its
//! legs, all covering the same range at the same offsets. Three points are where it plugs in:
//! * writes fan out: [`Composite::copies`] is how many parts a write of this layout goes to
//!   (1 for concat and stripe) and [`Composite::segment_of_copy`] resolves copy *c* of a
//!   range; the engine submits every copy of a round and the request completes when all have
//!   answered (a mirror's engine loop is the one place to add that);
//! * reads go to one chosen part: [`Composite::segment_of_copy`] with the copy the layout
//!   picks (for concat and stripe the only one);
//! * which part an I/O completion belonged to: [`Composite::part_of_lun`] on the tag's LUN
//!   index.

use super::{Segment, Volume};
use crate::constants::{MAX_COMPOSITE_LUNS, MAX_COMPOSITE_PARTS, MAX_LUNS_PER_POOL};
use crate::pool::{Pool, PoolLun};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// How the parts make up the composite's range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Part after part: part *i* covers `[start(i), start(i) + size(i))`. Grows by appending.
    Concat,
    /// Stripes of `1 << stripe_shift` bytes dealt round-robin over the parts: stripe *s* is on
    /// part `s % n` at `(s / n) << stripe_shift`. Fixed part count (adding a part would move
    /// data).
    Stripe { stripe_shift: u32 },
    // Mirror hook (helper B): `Mirror { .. }`, parts = legs; see the module documentation.
}

/// Why a composite cannot be made or grown.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompositeError {
    #[error("a composite volume needs at least one part")]
    NoParts,
    #[error("volume {0} is itself composite: parts must be plain volumes")]
    NestedPart(String),
    #[error("a composite volume has at most {MAX_COMPOSITE_PARTS} parts")]
    TooManyParts,
    #[error(
        "the parts would span more than {MAX_COMPOSITE_LUNS} pool LUNs or more than \
         {MAX_LUNS_PER_POOL} distinct LUNs"
    )]
    TooManyLuns,
    #[error("volume {part} has {part_block} byte blocks, the composite {block}")]
    BlockSize {
        part: String,
        part_block: u32,
        block: u32,
    },
    #[error("only a concatenation can grow by a part")]
    CannotGrow,
    #[error("volume {0} would need read-modify-write on a LUN block larger than the others'")]
    LargerLunBlock(String),
}

/// One part: a plain volume and where it sits.
pub struct Part {
    pub volume: Arc<Volume>,
    /// Concat: where the part starts in the composite. Stripe: 0.
    pub start_bytes: u64,
    /// Bytes of the part the composite uses.
    pub len_bytes: u64,
    /// The LUN table index of the part's pool LUN 0.
    pub lun_base: usize,
}

/// One entry of the LUN table.
pub struct LunEntry {
    pub pool: Arc<Pool>,
    /// The LUN's index in its pool.
    pub index: usize,
    /// The part it belongs to.
    pub part: usize,
    /// The first entry for this (pool, LUN): a flush goes to it (later ones are the same LUN).
    pub flush: bool,
}

impl LunEntry {
    #[inline]
    pub fn lun(&self) -> &PoolLun {
        &self.pool.luns[self.index]
    }
}

/// The body of a composite volume. See the module documentation.
pub struct Composite {
    layout: Layout,
    parts: Box<[OnceLock<Part>]>,
    part_count: AtomicUsize,
    luns: Box<[OnceLock<LunEntry>]>,
    lun_count: AtomicUsize,
    /// The largest LUN block under any part (fixed when made: a part needing more is refused).
    max_lun_block_bytes: u32,
}

impl Composite {
    /// A composite of `parts` (plain volumes of `block_size_bytes` blocks) laid out as
    /// `layout`; its size in bytes too.
    pub(super) fn new(
        layout: Layout,
        block_size_bytes: u32,
        parts: &[Arc<Volume>],
    ) -> Result<(Self, u64), CompositeError> {
        if parts.is_empty() {
            return Err(CompositeError::NoParts);
        }
        let max_lun_block_bytes = parts
            .iter()
            .map(|p| p.max_lun_block_bytes())
            .max()
            .unwrap_or(block_size_bytes);
        let composite = Self {
            layout,
            parts: (0..MAX_COMPOSITE_PARTS).map(|_| OnceLock::new()).collect(),
            part_count: AtomicUsize::new(0),
            luns: (0..MAX_COMPOSITE_LUNS).map(|_| OnceLock::new()).collect(),
            lun_count: AtomicUsize::new(0),
            max_lun_block_bytes,
        };
        // Stripe: every part contributes the same whole stripes.
        let stripe_part_bytes = match layout {
            Layout::Stripe { stripe_shift } => {
                let smallest = parts.iter().map(|p| p.size_bytes()).min().unwrap_or(0);
                Some(smallest >> stripe_shift << stripe_shift)
            }
            Layout::Concat => None,
        };
        let mut size = 0;
        for part in parts {
            let len = stripe_part_bytes.unwrap_or_else(|| part.size_bytes());
            let start = if stripe_part_bytes.is_some() { 0 } else { size };
            composite.push(part, block_size_bytes, start, len)?;
            size += len;
        }
        Ok((composite, size))
    }

    /// Checks `part` and appends it at `start_bytes`. Only the control thread calls this.
    fn push(
        &self,
        part: &Arc<Volume>,
        block_size_bytes: u32,
        start_bytes: u64,
        len_bytes: u64,
    ) -> Result<(), CompositeError> {
        if part.composite.is_some() {
            return Err(CompositeError::NestedPart(part.name.clone()));
        }
        if part.block_size_bytes != block_size_bytes {
            return Err(CompositeError::BlockSize {
                part: part.name.clone(),
                part_block: part.block_size_bytes,
                block: block_size_bytes,
            });
        }
        if part.max_lun_block_bytes() > self.max_lun_block_bytes {
            return Err(CompositeError::LargerLunBlock(part.name.clone()));
        }
        let index = self.part_count.load(Ordering::Acquire);
        if index >= MAX_COMPOSITE_PARTS {
            return Err(CompositeError::TooManyParts);
        }
        let pool = &part.pool;
        let lun_base = self.lun_count.load(Ordering::Acquire);
        if lun_base + pool.luns.len() > MAX_COMPOSITE_LUNS {
            return Err(CompositeError::TooManyLuns);
        }
        let known = |k: usize| {
            self.lun_entries()
                .any(|e| Arc::ptr_eq(&e.pool, pool) && e.index == k)
        };
        let distinct = self.lun_entries().filter(|e| e.flush).count()
            + (0..pool.luns.len()).filter(|&k| !known(k)).count();
        if distinct > MAX_LUNS_PER_POOL {
            return Err(CompositeError::TooManyLuns);
        }
        for k in 0..pool.luns.len() {
            let entry = LunEntry {
                pool: pool.clone(),
                index: k,
                part: index,
                flush: !known(k),
            };
            // Cells past the count are empty: only this thread fills them.
            let _ = self.luns[lun_base + k].set(entry);
        }
        self.lun_count
            .store(lun_base + pool.luns.len(), Ordering::Release);
        let _ = self.parts[index].set(Part {
            volume: part.clone(),
            start_bytes,
            len_bytes,
            lun_base,
        });
        self.part_count.store(index + 1, Ordering::Release);
        Ok(())
    }

    /// Appends `part` at `at_bytes` (the composite's current size): a concatenation grows.
    /// The caller publishes the new size afterwards.
    pub(super) fn append(
        &self,
        part: &Arc<Volume>,
        block_size_bytes: u32,
        at_bytes: u64,
    ) -> Result<u64, CompositeError> {
        if self.layout != Layout::Concat {
            return Err(CompositeError::CannotGrow);
        }
        let len = part.size_bytes();
        self.push(part, block_size_bytes, at_bytes, len)?;
        Ok(at_bytes + len)
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The parts, in order.
    pub fn parts(&self) -> impl Iterator<Item = &Part> + '_ {
        let count = self.part_count.load(Ordering::Acquire);
        self.parts[..count].iter().filter_map(OnceLock::get)
    }

    /// The LUN table, in index order.
    pub fn lun_entries(&self) -> impl Iterator<Item = &LunEntry> + '_ {
        let count = self.lun_count.load(Ordering::Acquire);
        self.luns[..count].iter().filter_map(OnceLock::get)
    }

    /// LUN table entry `index` (an index from a ring tag).
    #[inline]
    pub fn lun(&self, index: usize) -> Option<&PoolLun> {
        self.luns.get(index)?.get().map(LunEntry::lun)
    }

    /// The part LUN table entry `index` belongs to (mirror hook: which leg an I/O was on).
    #[inline]
    pub fn part_of_lun(&self, index: usize) -> Option<usize> {
        self.luns.get(index)?.get().map(|e| e.part)
    }

    pub fn max_lun_block_bytes(&self) -> u32 {
        self.max_lun_block_bytes
    }

    /// Parts a write goes to (mirror hook): 1 for concat and stripe.
    #[inline]
    pub fn copies(&self) -> usize {
        1
    }

    /// The segment of a request at `offset_bytes` with `remaining_bytes` left: in one part, cut
    /// at the part's (concat) or the stripe's end, then at the part's extent.
    #[inline]
    pub(super) fn segment(&self, offset_bytes: u64, remaining_bytes: u64) -> Segment<'_> {
        self.segment_of_copy(0, offset_bytes, remaining_bytes)
    }

    /// Copy `copy` (below [`Self::copies`]) of a segment (mirror hook; concat and stripe have
    /// one copy).
    #[inline]
    pub fn segment_of_copy(
        &self,
        _copy: usize,
        offset_bytes: u64,
        remaining_bytes: u64,
    ) -> Segment<'_> {
        let count = self.part_count.load(Ordering::Acquire);
        let parts = &self.parts[..count];
        let (part, part_offset, len) = match self.layout {
            Layout::Concat => {
                // The last part starting at or before the offset (parts are few: a binary
                // search over the published prefix).
                let index = parts
                    .partition_point(|p| p.get().is_some_and(|p| p.start_bytes <= offset_bytes))
                    .saturating_sub(1);
                let Some(part) = parts.get(index).and_then(OnceLock::get) else {
                    return Segment::Unmapped {
                        part: None,
                        extent: 0,
                        len_bytes: remaining_bytes,
                    };
                };
                let within = offset_bytes - part.start_bytes;
                let len = remaining_bytes.min(part.len_bytes.saturating_sub(within));
                (part, within, len)
            }
            Layout::Stripe { stripe_shift } => {
                let stripe = offset_bytes >> stripe_shift;
                let within = offset_bytes & ((1 << stripe_shift) - 1);
                let n = count.max(1) as u64;
                let Some(part) = parts.get((stripe % n) as usize).and_then(OnceLock::get) else {
                    return Segment::Unmapped {
                        part: None,
                        extent: 0,
                        len_bytes: remaining_bytes,
                    };
                };
                let len = remaining_bytes.min((1 << stripe_shift) - within);
                (part, ((stripe / n) << stripe_shift) + within, len)
            }
        };
        part.volume.plain_segment(
            part.volume.map(),
            part_offset,
            len,
            part.lun_base,
            Some(&part.volume),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{open_lun, LunKind, LunSpec};
    use crate::volume::provisioner::provision;

    const EXTENT: u64 = 1 << 20;

    /// A pool of `luns` RAM LUNs of `lun_block` byte blocks.
    fn pool(name: &str, luns: usize, lun_block: u32) -> Arc<Pool> {
        let luns = (0..luns)
            .map(|i| {
                open_lun(&LunSpec {
                    name: format!("{name}{i}"),
                    kind: LunKind::Mem,
                    path: None,
                    size_bytes: Some(32 << 20),
                    block_size_bytes: lun_block,
                    remote: None,
                })
                .expect("RAM LUN")
            })
            .collect();
        Arc::new(Pool::create(name, [9; 16], EXTENT, None, luns).expect("pool"))
    }

    fn volume(name: &str, pool: &Arc<Pool>, size: u64) -> Arc<Volume> {
        let uuid = [name.as_bytes()[0]; 16];
        Arc::new(Volume::new(name, uuid, pool.clone(), size, 512, true))
    }

    /// Which part (by name), part offset and length a segment resolved to, and its LUN index
    /// when mapped.
    fn resolve(v: &Volume, offset: u64, remaining: u64) -> (Option<String>, u64, Option<usize>) {
        match v.segment(v.map(), offset, remaining) {
            Segment::Unmapped {
                part, len_bytes, ..
            } => (part.map(|p| p.name.clone()), len_bytes, None),
            Segment::Mapped {
                lun_index,
                len_bytes,
                ..
            } => (None, len_bytes, Some(lun_index)),
        }
    }

    #[test]
    fn concat_resolves_through_parts_and_grows() {
        let p = pool("p", 2, 512);
        let q = pool("q", 1, 512);
        let a = volume("a", &p, 3 * EXTENT);
        let b = volume("b", &q, 2 * EXTENT);
        let set = Volume::new_composite("s", [7; 16], Layout::Concat, 512, &[a.clone(), b.clone()])
            .expect("concat");
        assert_eq!(set.size_bytes(), 5 * EXTENT);
        // Inside a: cut at a's extent; at the end of a: cut at the part's end.
        assert_eq!(
            resolve(&set, 100, 8 * EXTENT),
            (Some("a".into()), EXTENT - 100, None)
        );
        assert_eq!(
            resolve(&set, 3 * EXTENT - 512, 4096),
            (Some("a".into()), 512, None)
        );
        assert_eq!(
            resolve(&set, 3 * EXTENT, 4096),
            (Some("b".into()), 4096, None)
        );
        // Provisioning b's extent 1 maps the composite's extent 4; its LUN is entry 2 of the
        // table (after a's pool's two LUNs).
        provision(&[(b.as_ref(), 1)]).remove(0).expect("provision");
        assert_eq!(resolve(&set, 4 * EXTENT + 512, 512), (None, 512, Some(2)));
        let composite = set.composite().expect("composite");
        assert_eq!(composite.part_of_lun(2), Some(1));
        assert_eq!(composite.part_of_lun(1), Some(0));
        assert!(set.lun(2).is_some() && set.lun(3).is_none());
        // The same pool twice: its LUNs are in the table twice, flushed once.
        let c = volume("c", &p, EXTENT);
        assert_eq!(set.append_part(&c), Ok(6 * EXTENT));
        assert_eq!(set.size_bytes(), 6 * EXTENT);
        assert_eq!(
            resolve(&set, 5 * EXTENT, EXTENT),
            (Some("c".into()), EXTENT, None)
        );
        assert_eq!(composite.lun_entries().count(), 5);
        assert_eq!(set.flush_luns().count(), 3);
        assert_eq!(composite.part_of_lun(4), Some(2));
    }

    #[test]
    fn stripe_deals_stripes_round_robin() {
        let p = pool("p", 1, 512);
        let parts: Vec<Arc<Volume>> = ["a", "b", "c"]
            .iter()
            .map(|n| volume(n, &p, 2 * EXTENT + 4096))
            .collect();
        let stripe = 64 * 1024u64;
        let set = Volume::new_composite(
            "s",
            [7; 16],
            Layout::Stripe {
                stripe_shift: stripe.trailing_zeros(),
            },
            512,
            &parts,
        )
        .expect("stripe");
        // Whole stripes of the smallest part: 2 MiB + 4 KiB rounds down to 2 MiB each.
        assert_eq!(set.size_bytes(), 3 * 2 * EXTENT);
        assert_eq!(resolve(&set, 0, EXTENT), (Some("a".into()), stripe, None));
        assert_eq!(
            resolve(&set, stripe + 512, EXTENT),
            (Some("b".into()), stripe - 512, None)
        );
        assert_eq!(resolve(&set, 5 * stripe, EXTENT).0, Some("c".into()));
        // Stripe 3 is a's second: a's offset 64 KiB; map it there and look.
        provision(&[(parts[0].as_ref(), 0)])
            .remove(0)
            .expect("provision");
        assert_eq!(resolve(&set, 3 * stripe, 512), (None, 512, Some(0)));
        assert_eq!(resolve(&set, 4 * stripe, 512).0, Some("b".into()));
        // A stripe cannot grow.
        let d = volume("d", &p, 2 * EXTENT);
        assert_eq!(set.append_part(&d), Err(CompositeError::CannotGrow));
        assert_eq!(set.size_bytes(), 3 * 2 * EXTENT);
    }

    #[test]
    fn readers_find_every_part_while_a_concatenation_grows() {
        let p = pool("p", 1, 512);
        let set = Arc::new(
            Volume::new_composite(
                "s",
                [7; 16],
                Layout::Concat,
                512,
                &[volume("a", &p, EXTENT)],
            )
            .expect("set"),
        );
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (set, done) = (set.clone(), done.clone());
            std::thread::spawn(move || {
                let mut resolved = 0u64;
                let mut seed = 0x9e37_79b9_7f4a_7c15u64;
                while !done.load(Ordering::Acquire) || resolved < 1000 {
                    // Any offset below the size just read must resolve to a part.
                    let size = set.size_bytes();
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let offset = (seed % size) / 512 * 512;
                    match set.segment(set.map(), offset, 512) {
                        Segment::Unmapped {
                            part: Some(part),
                            len_bytes: 512,
                            ..
                        } => assert!(part.name.starts_with(['a', 'x'])),
                        _ => panic!("offset {offset} below size {size} did not resolve"),
                    }
                    resolved += 1;
                }
                resolved
            })
        };
        for i in 1..MAX_COMPOSITE_PARTS {
            set.append_part(&volume(&format!("x{i}"), &p, EXTENT))
                .expect("append");
        }
        done.store(true, Ordering::Release);
        assert!(reader.join().expect("the reader") >= 1000);
        assert_eq!(set.size_bytes(), MAX_COMPOSITE_PARTS as u64 * EXTENT);
    }

    #[test]
    fn bad_parts_are_refused_and_change_nothing() {
        let p = pool("p", 1, 512);
        let q = pool("q", 1, 4096);
        let a = volume("a", &p, EXTENT);
        let big = Arc::new(Volume::new("b", [3; 16], p.clone(), EXTENT, 4096, true));
        assert!(matches!(
            Volume::new_composite("s", [7; 16], Layout::Concat, 512, &[a.clone(), big]),
            Err(CompositeError::BlockSize { .. })
        ));
        assert!(matches!(
            Volume::new_composite("s", [7; 16], Layout::Concat, 512, &[]),
            Err(CompositeError::NoParts)
        ));
        let set = Arc::new(
            Volume::new_composite("s", [7; 16], Layout::Concat, 512, std::slice::from_ref(&a))
                .expect("set"),
        );
        assert!(matches!(
            Volume::new_composite(
                "t",
                [8; 16],
                Layout::Concat,
                512,
                std::slice::from_ref(&set)
            ),
            Err(CompositeError::NestedPart(_))
        ));
        // A part on 4 KiB LUNs would need read-modify-write the set's engines do not do.
        let slow = volume("c", &q, EXTENT);
        assert!(matches!(
            set.append_part(&slow),
            Err(CompositeError::LargerLunBlock(_))
        ));
        assert_eq!(set.size_bytes(), EXTENT);
        assert_eq!(set.composite().map(|c| c.parts().count()), Some(1));
        // A composite has no map of its own to provision into: refused, nothing claimed.
        let free = p.free_extents();
        assert!(matches!(
            provision(&[(set.as_ref(), 0)]).remove(0),
            Err(crate::pool::PoolError::OutsideMap { .. })
        ));
        assert_eq!(p.free_extents(), free);
        for i in 1..MAX_COMPOSITE_PARTS {
            assert!(set
                .append_part(&volume(&format!("x{i}"), &p, EXTENT))
                .is_ok());
        }
        assert_eq!(
            set.append_part(&volume("y", &p, EXTENT)),
            Err(CompositeError::TooManyParts)
        );
        assert_eq!(set.size_bytes(), MAX_COMPOSITE_PARTS as u64 * EXTENT);
    }
}
