//! The provisioning thread: the one place extents are claimed for thin volumes while I/O runs,
//! and the slow path for writes that need read-modify-write.
//!
//! Reactors never wait on it: a session posts a request and goes on with other requests; the
//! thread answers with a `Wake` in the session's reactor mailbox. Requests that arrive together
//! are committed together (group commit): every claimed extent is zeroed and its record
//! written, then each touched LUN is flushed once, then the mappings are published.
//!
//! Copy-on-write: a write to an extent whose slot carries the SHARED bit (a snapshot or a
//! clone maps it too) is a `Provision` request as well. If no other table maps it any more,
//! the bit is cleared; otherwise a new extent is claimed, the old one's data copied into it,
//! its record (on the volume's lineage, with a new sequence) committed with the group, and
//! the slot swapped to it; the old extent loses one holder. The copy is durable before the
//! write is woken, and runs here, so it stalls no reactor.
//!
//! Snapshot, clone and revert steps run here too ([`Request::Run`]): between two batches no
//! claim or commit is in flight, so a snapshot's sequence orders every record before or after
//! it.
//!
//! TRIM's releases of whole extents come here too ([`super::reclaim`]), after the claims of
//! the same batch, so a claim and a release never interleave.
//!
//! Read-modify-write: a volume whose block size is smaller than one of its pool's LUNs sends
//! all its writes here, and its reads that are not aligned to that LUN's blocks (a LUN reads
//! only whole blocks of its own). This thread is single, so those writes are serialized and a
//! read-modify-write can never interleave with another write to the same LUN block.

use super::mirror::Mirror;
use super::reclaim::covers_whole_extent;
use super::{Segment, Volume};
use crate::backend::aligned_buf::AlignedBuf;
use crate::constants::{COW_COPY_BYTES, MAX_IO_BYTES, METADATA_BATCH_MAX};
use crate::pool::on_disk::ExtentRecord;
use crate::pool::refcount::Dropped;
use crate::pool::{Pool, PoolError, SLOT_SHARED};
use crate::reactor::mailbox::{Message, SessionId};
use crate::reactor::ReactorHandle;
use crossbeam::channel::{unbounded, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Where the answer to a request goes.
pub struct Reply {
    pub reactor: Arc<ReactorHandle>,
    pub session: SessionId,
    pub token: u64,
}

impl Reply {
    fn send(self, result: i32) {
        self.reactor.post(Message::Wake {
            session: self.session,
            token: self.token,
            result,
        });
    }
}

/// A buffer owned by a waiting session: it stays valid and untouched until the reply.
pub struct SessionBuffer {
    pub ptr: *mut u8,
    pub len_bytes: usize,
}

// SAFETY: the session that sent the pointer does not touch or free the buffer until it has
// received the reply, so the provisioning thread has exclusive use of it meanwhile.
unsafe impl Send for SessionBuffer {}

pub enum Request {
    /// Map virtual `extent` of `volume` (nothing to do if it is mapped by then).
    Provision {
        volume: Arc<Volume>,
        extent: u64,
        reply: Reply,
    },
    /// Unmap whole virtual `extent` of `volume` and give its pool extent back (a TRIM that
    /// covers it), durably before the reply; nothing to do if it is unmapped (see
    /// [`super::reclaim`]).
    Release {
        volume: Arc<Volume>,
        extent: u64,
        reply: Reply,
    },
    /// Write `data` (or zeroes when `None`) at `offset_bytes`, read-modify-writing partial LUN
    /// blocks and provisioning unmapped extents.
    SlowWrite {
        volume: Arc<Volume>,
        offset_bytes: u64,
        len_bytes: u64,
        data: Option<SessionBuffer>,
        fua: bool,
        /// A TRIM: on a thin volume, the mapped extents it covers whole are given back to the
        /// pool (see [`super::reclaim`]) instead of zeroed.
        trim: bool,
        reply: Reply,
    },
    /// Runs a step of the control thread that must not overlap a claim or a copy-on-write
    /// (taking a snapshot, making a clone, reverting); the step answers through its own
    /// channel.
    Run(Box<dyn FnOnce() + Send>),
    /// Read `len_bytes` at `offset_bytes` into `data`, through whole LUN blocks.
    SlowRead {
        volume: Arc<Volume>,
        offset_bytes: u64,
        len_bytes: u64,
        data: SessionBuffer,
        reply: Reply,
    },
    /// A write to `mirror` over `[offset, offset + len)` waits until its regions' dirty bits
    /// are durable and every leg that failed is durably degraded.
    MirrorNote {
        mirror: Arc<Mirror>,
        offset_bytes: u64,
        len_bytes: u64,
        reply: Reply,
    },
    Stop,
}

/// A bounce buffer for [`slow_read`] and [`slow_write`]: what one piece of them needs.
pub fn new_bounce() -> AlignedBuf {
    AlignedBuf::new(MAX_IO_BYTES + 2 * 4096)
}

/// The handle reactors and the control thread post requests through.
#[derive(Clone)]
pub struct Provisioner {
    sender: Sender<Request>,
}

impl Provisioner {
    pub fn spawn() -> std::io::Result<(Self, JoinHandle<()>)> {
        // Unbounded as a queue, bounded by construction: each request comes from one request
        // slot (at most MAX_INFLIGHT_PER_CONNECTION per connection) or from the control thread,
        // so a burst of first writes is never refused for want of queue room.
        let (sender, receiver) = unbounded();
        let thread = std::thread::Builder::new()
            .name("provisioner".into())
            .spawn(move || run(receiver))?;
        Ok((Self { sender }, thread))
    }

    /// A provisioner with no thread: the test holding the receiver answers in its place.
    #[cfg(test)]
    pub(crate) fn detached() -> (Self, Receiver<Request>) {
        let (sender, receiver) = unbounded();
        (Self { sender }, receiver)
    }

    /// Posts a request; fails (handing it back) only once the thread has stopped.
    pub fn post(&self, request: Request) -> Result<(), Request> {
        self.sender.send(request).map_err(|error| error.0)
    }

    pub fn stop(&self) {
        let _ = self.sender.send(Request::Stop);
    }
}

fn run(receiver: Receiver<Request>) {
    let mut bounce = new_bounce();
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < METADATA_BATCH_MAX {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let mut provisions = Vec::new();
        let mut notes: Vec<(Arc<Mirror>, u64, u64, Reply)> = Vec::new();
        let mut releases = Vec::new();
        let mut stop = false;
        for request in batch {
            match request {
                Request::Provision {
                    volume,
                    extent,
                    reply,
                } => provisions.push((volume, extent, reply)),
                Request::Release {
                    volume,
                    extent,
                    reply,
                } => releases.push((volume, extent, reply)),
                Request::SlowWrite {
                    volume,
                    offset_bytes,
                    len_bytes,
                    data,
                    fua,
                    trim,
                    reply,
                } => {
                    // SAFETY: the session keeps the buffer of len_bytes (at most its length)
                    // valid and untouched until it is answered.
                    let data = data.as_ref().map(|buffer| unsafe {
                        std::slice::from_raw_parts(
                            buffer.ptr,
                            (len_bytes as usize).min(buffer.len_bytes),
                        )
                    });
                    let result = slow_write(
                        &volume,
                        offset_bytes,
                        len_bytes,
                        data,
                        fua,
                        trim && volume.thin,
                        &mut bounce,
                    );
                    reply.send(errno_of(result));
                }
                Request::SlowRead {
                    volume,
                    offset_bytes,
                    len_bytes,
                    data,
                    reply,
                } => {
                    debug_assert!(len_bytes as usize <= data.len_bytes);
                    // SAFETY: the session keeps the buffer of `len_bytes` (at most its length)
                    // valid and untouched until it is answered, and gave this thread its only
                    // use meanwhile.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(
                            data.ptr,
                            (len_bytes as usize).min(data.len_bytes),
                        )
                    };
                    let result = slow_read(&volume, offset_bytes, out, &mut bounce);
                    reply.send(errno_of(result));
                }
                Request::Run(step) => {
                    // What arrived before it is done first: the step sees a quiet pool.
                    provide(&mut provisions);
                    give_back(&mut releases);
                    step();
                }
                Request::MirrorNote {
                    mirror,
                    offset_bytes,
                    len_bytes,
                    reply,
                } => notes.push((mirror, offset_bytes, len_bytes, reply)),
                Request::Stop => stop = true,
            }
        }
        provide(&mut provisions);
        give_back(&mut releases);
        if !notes.is_empty() {
            note_mirrors(notes);
        }
        if stop {
            break;
        }
    }
}

/// Answers every collected `Provision` request, as one group commit.
fn provide(provisions: &mut Vec<(Arc<Volume>, u64, Reply)>) {
    if provisions.is_empty() {
        return;
    }
    let wanted: Vec<(&Volume, u64)> = provisions
        .iter()
        .map(|(v, e, _)| (v.as_ref(), *e))
        .collect();
    let results = provision(&wanted);
    for ((_, _, reply), result) in provisions.drain(..).zip(results) {
        reply.send(errno_of(result));
    }
}

/// Answers every collected `Release` request (TRIM's whole extents).
fn give_back(releases: &mut Vec<(Arc<Volume>, u64, Reply)>) {
    if releases.is_empty() {
        return;
    }
    let wanted: Vec<(&Volume, u64)> = releases.iter().map(|(v, e, _)| (v.as_ref(), *e)).collect();
    let results = super::reclaim::release(&wanted);
    for ((_, _, reply), result) in releases.drain(..).zip(results) {
        reply.send(errno_of(result));
    }
}

/// Makes the mirror notes of a batch durable: per mirror, its failing legs persisted as
/// degraded and all the wanted dirty bits set with one sync; then every writer is woken.
fn note_mirrors(mut notes: Vec<(Arc<Mirror>, u64, u64, Reply)>) {
    while let Some((mirror, _, _, _)) = notes.first() {
        let mirror = mirror.clone();
        let (mine, rest): (Vec<_>, Vec<_>) = notes
            .into_iter()
            .partition(|(m, _, _, _)| Arc::ptr_eq(m, &mirror));
        notes = rest;
        let regions: Vec<u64> = mine
            .iter()
            .flat_map(|(_, offset, len, _)| mirror.log.regions_of(*offset, *len))
            .collect();
        let result = mirror
            .persist_failing()
            .and_then(|()| mirror.log.set_durable(regions));
        let errno = match result {
            Ok(()) => 0,
            Err(error) => {
                log::error!(
                    "mirror {}: the dirty-region log cannot be written: {}",
                    mirror.name,
                    crate::logger::error_chain(&error)
                );
                libc::EIO
            }
        };
        for (_, _, _, reply) in mine {
            reply.send(errno);
        }
    }
}

fn errno_of(result: Result<(), PoolError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(PoolError::Full { .. }) => libc::ENOSPC,
        Err(error) => {
            log::error!("provisioning failed: {error}");
            libc::EIO
        }
    }
}

/// Maps every (volume, extent) that is not mapped yet, durably, as one group commit. Used by
/// the provisioning thread for thin volumes and by the control thread for thick ones.
///
/// Each new extent is claimed and zeroed, then all the new records of a pool are committed
/// through its journal together (one flush per LUN), and only then are the mappings published.
pub fn provision(wanted: &[(&Volume, u64)]) -> Vec<Result<(), PoolError>> {
    provision_filled(wanted, true)
}

/// Gives `extent` of `volume`, if a snapshot or a clone shares it, a zeroed extent of its own
/// in its place (a whole-extent TRIM of a shared extent: copy-on-write without the copy),
/// durably, like [`provision`].
pub fn provision_zeroed(volume: &Volume, extent: u64) -> Result<(), PoolError> {
    provision_filled(&[(volume, extent)], false).remove(0)
}

/// [`provision`], with a shared extent's replacement filled with its data (`copy`) or zeroes.
fn provision_filled(wanted: &[(&Volume, u64)], copy: bool) -> Vec<Result<(), PoolError>> {
    let mut results: Vec<Result<(), PoolError>> = Vec::with_capacity(wanted.len());
    // Claimed slot and its record, per request (slot 0: nothing to publish).
    let mut claimed: Vec<(u64, Option<ExtentRecord>)> = vec![(0, None); wanted.len()];
    // For a copy-on-write: the shared slot the copy replaces.
    let mut replaces: Vec<Option<u64>> = vec![None; wanted.len()];
    // The copy buffer, made only when a batch has something to copy.
    let mut copy_buffer: Option<AlignedBuf> = None;
    for (index, &(volume, extent)) in wanted.iter().enumerate() {
        let map = volume.map();
        if volume.composite().is_some() || extent >= map.extent_count() {
            results.push(Err(PoolError::OutsideMap {
                volume: volume.name.clone(),
                extent,
            }));
            continue;
        }
        let duplicate = wanted[..index]
            .iter()
            .zip(&claimed)
            .any(|(&(v, e), &(slot, _))| std::ptr::eq(v, volume) && e == extent && slot != 0);
        let current = map.get(extent);
        if (current != 0 && current & SLOT_SHARED == 0) || duplicate {
            results.push(Ok(()));
            continue;
        }
        let pool = &volume.pool;
        if current & SLOT_SHARED != 0 {
            let old = current & !SLOT_SHARED;
            if !pool.refcounts.is_shared(old) {
                // Every other table let go of it: this one owns it alone now.
                let _ = map.replace(extent, current, old);
                results.push(Ok(()));
                continue;
            }
            replaces[index] = Some(current);
        }
        let outcome = pool.claim_extent().and_then(|slot| {
            let filled = match replaces[index] {
                Some(shared) if copy => {
                    let buffer = copy_buffer.get_or_insert_with(|| {
                        AlignedBuf::new(COW_COPY_BYTES.min(pool.extent_bytes as usize))
                    });
                    copy_extent(pool, shared & !SLOT_SHARED, slot, buffer)
                }
                _ => pool.zero_extent(slot),
            };
            match filled {
                Ok(()) => Ok(slot),
                Err(error) => {
                    pool.release_extent(slot);
                    Err(error)
                }
            }
        });
        match outcome {
            Ok(slot) => {
                let record = ExtentRecord {
                    volume_uuid: volume.lineage_id(),
                    virtual_extent: extent,
                    sequence: pool.next_sequence(),
                };
                claimed[index] = (slot, Some(record));
                results.push(Ok(()));
            }
            Err(error) => results.push(Err(error)),
        }
    }
    // Group commit: every new record of one pool in one commit.
    for (index, &(volume, _)) in wanted.iter().enumerate() {
        let same_pool: Vec<usize> = (0..wanted.len())
            .filter(|&j| claimed[j].0 != 0 && Arc::ptr_eq(&wanted[j].0.pool, &volume.pool))
            .collect();
        if same_pool.first() != Some(&index) {
            continue;
        }
        let changes: Vec<(u64, Option<ExtentRecord>)> =
            same_pool.iter().map(|&j| claimed[j]).collect();
        for (&j, outcome) in same_pool.iter().zip(volume.pool.commit(&changes)) {
            if let Err(error) = outcome {
                log::error!(
                    "pool {}: new extent records are not durable: {}",
                    volume.pool.name,
                    crate::logger::error_chain(&error)
                );
                volume.pool.release_extent(claimed[j].0);
                claimed[j] = (0, None);
                results[j] = Err(error);
            }
        }
    }
    for (index, &(volume, extent)) in wanted.iter().enumerate() {
        let slot = claimed[index].0;
        if slot == 0 {
            continue;
        }
        let published = match replaces[index] {
            None => volume.map().publish(extent, slot),
            Some(shared) => volume.map().replace(extent, shared, slot),
        };
        match (published, replaces[index]) {
            (Ok(()), Some(shared)) => {
                let old = shared & !SLOT_SHARED;
                if volume.pool.refcounts.drop_holder(old) == Dropped::Last {
                    // The other table went meanwhile: I/O of this volume that loaded the old
                    // slot completes before the extent can be handed out again.
                    volume.write_gate.drain();
                    free_extent(&volume.pool, old);
                }
            }
            (Ok(()), None) => {}
            // Someone else mapped it first (only the control thread can race here); return ours.
            (Err(_), _) => free_extent(&volume.pool, slot),
        }
    }
    results
}

/// One table stops mapping `slot`; the last one frees it (its record, then its bit).
pub fn drop_holder(pool: &Pool, slot: u64) {
    if pool.refcounts.drop_holder(slot) == Dropped::Last {
        free_extent(pool, slot);
    }
}

/// Frees an extent no table maps: its record is cleared durably first. If that fails the
/// extent stays used until a restart finds its record orphaned and frees it.
fn free_extent(pool: &Pool, slot: u64) {
    match pool.commit(&[(slot, None)]).remove(0) {
        Ok(()) => pool.release_extent(slot),
        Err(error) => log::error!(
            "pool {}: freeing an extent failed: {}",
            pool.name,
            crate::logger::error_chain(&error)
        ),
    }
}

/// Copies the data of extent `from` into extent `to` (copy-on-write). Durable with the
/// record's commit, which flushes the LUN holding `to`.
fn copy_extent(pool: &Pool, from: u64, to: u64, buffer: &mut AlignedBuf) -> Result<(), PoolError> {
    let (source, _, source_at) = pool.locate(from, 0);
    let (target, _, target_at) = pool.locate(to, 0);
    let step = buffer.as_slice().len() as u64;
    let mut done = 0u64;
    while done < pool.extent_bytes {
        let piece = step.min(pool.extent_bytes - done);
        let window = &mut buffer.as_mut_slice()[..piece as usize];
        source
            .lun
            .read_at(window, source_at + done)
            .map_err(|error| PoolError::Lun {
                pool: pool.name.clone(),
                lun: source.lun.info().name.clone(),
                source: error,
            })?;
        target
            .lun
            .write_at(window, target_at + done, false)
            .map_err(|error| PoolError::Lun {
                pool: pool.name.clone(),
                lun: target.lun.info().name.clone(),
                source: error,
            })?;
        done += piece;
    }
    Ok(())
}

/// The whole LUN blocks around a piece of a request, as the bounce buffer holds them.
struct BlockSpan {
    /// Where the first block starts on the LUN.
    start_bytes: u64,
    /// Bytes of whole blocks.
    len_bytes: usize,
    /// Where the piece lies within them.
    within: std::ops::Range<usize>,
}

impl BlockSpan {
    /// The blocks of `block_bytes` around `piece_bytes` at `at_bytes` on the LUN, the piece cut
    /// to what the bounce buffer holds; the piece's length and its span.
    fn of(block_bytes: u32, at_bytes: u64, piece_bytes: u64) -> (u64, Self) {
        let piece = piece_bytes.min(MAX_IO_BYTES as u64);
        let block = u64::from(block_bytes);
        let start = at_bytes / block * block;
        let end = (at_bytes + piece).next_multiple_of(block);
        let offset = (at_bytes - start) as usize;
        let span = Self {
            start_bytes: start,
            len_bytes: (end - start) as usize,
            within: offset..offset + piece as usize,
        };
        (piece, span)
    }

    /// Whether the piece is whole blocks (nothing around it to read first).
    fn is_exact(&self, piece_bytes: u64) -> bool {
        self.within.start == 0 && self.len_bytes as u64 == piece_bytes
    }
}

/// Writes (or zeroes) a range of `volume` with synchronous I/O, read-modify-writing the LUN
/// blocks it covers only in part and provisioning unmapped extents. With `release` (a TRIM of
/// a thin volume), the mapped extents it covers whole are given back to the pool instead of
/// zeroed. `data`, when given, holds at least `len_bytes`. Also the mirror resync's way to
/// write a leg.
pub fn slow_write(
    volume: &Volume,
    offset_bytes: u64,
    len_bytes: u64,
    data: Option<&[u8]>,
    fua: bool,
    release: bool,
    bounce: &mut AlignedBuf,
) -> Result<(), PoolError> {
    let extent_bytes = volume.extent_bytes();
    let size_bytes = volume.size_bytes();
    let lun_error = |lun: &str, source| PoolError::Lun {
        pool: volume.pool.name.clone(),
        lun: lun.to_string(),
        source,
    };
    let mut done = 0u64;
    while done < len_bytes {
        let map = volume.map();
        let piece = match volume.segment(map, offset_bytes + done, len_bytes - done) {
            Segment::Unmapped {
                part,
                extent,
                len_bytes: piece,
            } => {
                if data.is_none() {
                    // Zeroes over an unmapped extent: already zero.
                    done += piece;
                    continue;
                }
                // A composite's part, or the volume itself.
                let target: &Volume = part.map_or(volume, |p| p);
                provision(&[(target, extent)]).remove(0)?;
                continue;
            }
            Segment::Mapped { shared: true, .. } => {
                // Another table maps this extent: copy it first.
                let extent = (offset_bytes + done) / volume.extent_bytes();
                provision(&[(volume, extent)]).remove(0)?;
                continue;
            }
            Segment::Mapped {
                len_bytes: piece, ..
            } if release
                && covers_whole_extent(offset_bytes + done, piece, extent_bytes, size_bytes)
                // Only an extent of the volume's own map: a volume made of others (whose own
                // map is empty) zeroes, its parts' extents are given back through the parts.
                && (offset_bytes + done) / extent_bytes < volume.map().extent_count() =>
            {
                super::reclaim::release(&[(volume, (offset_bytes + done) / extent_bytes)])
                    .remove(0)?;
                piece
            }
            Segment::Mapped {
                lun,
                offset_bytes: at,
                len_bytes: piece,
                ..
            } => {
                let (piece, span) = BlockSpan::of(lun.layout.block_size_bytes, at, piece);
                let name = lun.lun.info().name.clone();
                let window = &mut bounce.as_mut_slice()[..span.len_bytes];
                if !span.is_exact(piece) {
                    lun.lun
                        .read_at(window, span.start_bytes)
                        .map_err(|e| lun_error(&name, e))?;
                }
                let into = &mut window[span.within.clone()];
                match data {
                    Some(buffer) => {
                        into.copy_from_slice(&buffer[done as usize..(done + piece) as usize])
                    }
                    None => into.fill(0),
                }
                lun.lun
                    .write_at(window, span.start_bytes, fua)
                    .map_err(|e| lun_error(&name, e))?;
                piece
            }
        };
        done += piece;
    }
    Ok(())
}

/// Reads `out.len()` bytes of `volume` at `offset_bytes` with synchronous I/O through whole
/// LUN blocks, for a read a LUN cannot take as it is (narrower than its blocks). Unmapped
/// ranges read as zeroes. Also the mirror resync's way to read a leg.
pub fn slow_read(
    volume: &Volume,
    offset_bytes: u64,
    out: &mut [u8],
    bounce: &mut AlignedBuf,
) -> Result<(), PoolError> {
    let len_bytes = out.len() as u64;
    let mut done = 0u64;
    while done < len_bytes {
        let segment = volume.segment(volume.map(), offset_bytes + done, len_bytes - done);
        let (lun, lun_offset_bytes, mapped_bytes) = match segment {
            Segment::Mapped {
                lun,
                offset_bytes,
                len_bytes,
                ..
            } => (lun, offset_bytes, len_bytes),
            Segment::Unmapped { len_bytes, .. } => {
                // Never written: zeroes.
                out[done as usize..(done + len_bytes) as usize].fill(0);
                done += len_bytes;
                continue;
            }
        };
        let (piece, span) =
            BlockSpan::of(lun.layout.block_size_bytes, lun_offset_bytes, mapped_bytes);
        let window = &mut bounce.as_mut_slice()[..span.len_bytes];
        if let Err(source) = lun.lun.read_at(window, span.start_bytes) {
            return Err(PoolError::Lun {
                pool: volume.pool.name.clone(),
                lun: lun.lun.info().name.clone(),
                source,
            });
        }
        out[done as usize..(done + piece) as usize].copy_from_slice(&window[span.within]);
        done += piece;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{open_lun, LunKind, LunSpec};

    const EXTENT: u64 = 64 * 1024;

    fn ram_volume(name: &str, pool: Arc<Pool>, uuid: u8) -> Volume {
        Volume::new(name, [uuid; 16], pool, 4 * EXTENT, 512, true)
    }

    fn ram_pool() -> Arc<Pool> {
        let spec = LunSpec {
            name: "r".into(),
            kind: LunKind::Mem,
            path: None,
            size_bytes: Some(32 * EXTENT),
            block_size_bytes: 512,
            remote: None,
        };
        let lun = open_lun(&spec).expect("RAM LUN");
        Arc::new(Pool::create("p", [1; 16], EXTENT, None, vec![lun]).expect("pool"))
    }

    fn fill(pool: &Pool, slot: u64, byte: u8) {
        let (member, _, at) = pool.locate(slot, 0);
        let mut buffer = AlignedBuf::new(EXTENT as usize);
        buffer.as_mut_slice().fill(byte);
        member
            .lun
            .write_at(buffer.as_slice(), at, false)
            .expect("write");
    }

    fn holds(pool: &Pool, slot: u64, byte: u8) -> bool {
        let (member, _, at) = pool.locate(slot, 0);
        let mut buffer = AlignedBuf::new(EXTENT as usize);
        member.lun.read_at(buffer.as_mut_slice(), at).expect("read");
        buffer.as_slice().iter().all(|&b| b == byte)
    }

    /// What a snapshot does to the origin's extent: a second table maps it, the origin's
    /// slot is marked.
    fn share(origin: &Volume, other: &Volume, extent: u64) -> u64 {
        let slot = origin.map().get(extent);
        other.map().publish(extent, slot).expect("publish");
        origin.pool.refcounts.share(slot);
        origin.map().set_bits(extent, SLOT_SHARED);
        slot
    }

    #[test]
    fn a_shared_extent_is_copied_and_an_unshared_mark_just_cleared() {
        let pool = ram_pool();
        let origin = ram_volume("v", pool.clone(), 2);
        let snapshot = ram_volume("s", pool.clone(), 3);
        for result in provision(&[(&origin, 0), (&origin, 1), (&origin, 2)]) {
            result.expect("mapped");
        }
        let old = share(&origin, &snapshot, 0);
        fill(&pool, old, 0xab);
        let free = pool.free_extents();
        // Copy-on-write: a new extent with the old data, the snapshot keeps the old one.
        provision(&[(&origin, 0)]).remove(0).expect("copied");
        let new = origin.map().get(0);
        assert_eq!(new & SLOT_SHARED, 0);
        assert_ne!(new, old);
        assert!(holds(&pool, new, 0xab), "the copy has the old data");
        assert_eq!(snapshot.map().get(0), old);
        assert_eq!(pool.refcounts.holders(old), 1);
        assert_eq!(pool.free_extents(), free - 1);
        // Asking again is a no-op: the extent is the origin's own now.
        provision(&[(&origin, 0)]).remove(0).expect("mapped");
        assert_eq!(origin.map().get(0), new);

        // A mark whose other holder went: cleared, nothing claimed.
        let marked = share(&origin, &snapshot, 1);
        assert_eq!(snapshot.map().clear(1), marked);
        assert_eq!(
            pool.refcounts.drop_holder(marked),
            crate::pool::refcount::Dropped::StillShared
        );
        provision(&[(&origin, 1)]).remove(0).expect("unmarked");
        assert_eq!(origin.map().get(1), marked);
        assert_eq!(pool.free_extents(), free - 1);

        // A whole-extent TRIM of a shared extent: a zeroed extent of the origin's own.
        let kept = share(&origin, &snapshot, 2);
        fill(&pool, kept, 0xcd);
        provision_zeroed(&origin, 2).expect("replaced");
        let zeroed = origin.map().get(2);
        assert_ne!(zeroed, kept);
        assert!(holds(&pool, zeroed, 0));
        assert!(
            holds(&pool, kept, 0xcd),
            "the snapshot's extent was touched"
        );
        assert_eq!(pool.free_extents(), free - 2);

        // The snapshot goes: its extents nobody else maps are freed, once each.
        for extent in 0..3 {
            let slot = snapshot.map().clear(extent);
            if slot != 0 {
                drop_holder(&pool, slot);
            }
        }
        assert_eq!(pool.free_extents(), free);
    }
}
