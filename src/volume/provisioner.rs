//! The provisioning thread: the one place extents are claimed for thin volumes while I/O runs,
//! and the slow path for writes that need read-modify-write.
//!
//! Reactors never wait on it: a session posts a request and goes on with other requests; the
//! thread answers with a `Wake` in the session's reactor mailbox. Requests that arrive together
//! are committed together (group commit): every claimed extent is zeroed and its record
//! written, then each touched LUN is flushed once, then the mappings are published.
//!
//! Read-modify-write: a volume whose block size is smaller than one of its pool's LUNs sends
//! all its writes here, and its reads that are not aligned to that LUN's blocks (a LUN reads
//! only whole blocks of its own). This thread is single, so those writes are serialized and a
//! read-modify-write can never interleave with another write to the same LUN block.

use super::{Segment, Volume};
use crate::backend::aligned_buf::AlignedBuf;
use crate::constants::{MAX_IO_BYTES, METADATA_BATCH_MAX};
use crate::pool::on_disk::ExtentRecord;
use crate::pool::PoolError;
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
    /// Write `data` (or zeroes when `None`) at `offset_bytes`, read-modify-writing partial LUN
    /// blocks and provisioning unmapped extents.
    SlowWrite {
        volume: Arc<Volume>,
        offset_bytes: u64,
        len_bytes: u64,
        data: Option<SessionBuffer>,
        fua: bool,
        reply: Reply,
    },
    /// Read `len_bytes` at `offset_bytes` into `data`, through whole LUN blocks.
    SlowRead {
        volume: Arc<Volume>,
        offset_bytes: u64,
        len_bytes: u64,
        data: SessionBuffer,
        reply: Reply,
    },
    Stop,
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
    let mut bounce = AlignedBuf::new(MAX_IO_BYTES + 2 * 4096);
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < METADATA_BATCH_MAX {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let mut provisions = Vec::new();
        let mut stop = false;
        for request in batch {
            match request {
                Request::Provision {
                    volume,
                    extent,
                    reply,
                } => provisions.push((volume, extent, reply)),
                Request::SlowWrite {
                    volume,
                    offset_bytes,
                    len_bytes,
                    data,
                    fua,
                    reply,
                } => {
                    let result = slow_write(
                        &volume,
                        offset_bytes,
                        len_bytes,
                        data.as_ref(),
                        fua,
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
                    let result = slow_read(&volume, offset_bytes, len_bytes, &data, &mut bounce);
                    reply.send(errno_of(result));
                }
                Request::Stop => stop = true,
            }
        }
        if !provisions.is_empty() {
            let wanted: Vec<(&Volume, u64)> = provisions
                .iter()
                .map(|(v, e, _)| (v.as_ref(), *e))
                .collect();
            let results = provision(&wanted);
            for ((_, _, reply), result) in provisions.into_iter().zip(results) {
                reply.send(errno_of(result));
            }
        }
        if stop {
            break;
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
    let mut results: Vec<Result<(), PoolError>> = Vec::with_capacity(wanted.len());
    // Claimed slot and its record, per request (slot 0: nothing to publish).
    let mut claimed: Vec<(u64, Option<ExtentRecord>)> = vec![(0, None); wanted.len()];
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
        if map.get(extent) != 0 || duplicate {
            results.push(Ok(()));
            continue;
        }
        let pool = &volume.pool;
        let outcome = pool
            .claim_extent()
            .and_then(|slot| match pool.zero_extent(slot) {
                Ok(()) => Ok(slot),
                Err(error) => {
                    pool.release_extent(slot);
                    Err(error)
                }
            });
        match outcome {
            Ok(slot) => {
                let record = ExtentRecord {
                    volume_uuid: volume.uuid,
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
        if slot != 0 && volume.map().publish(extent, slot).is_err() {
            // Someone else mapped it first (only the control thread can race here); return ours.
            if volume.pool.commit(&[(slot, None)]).remove(0).is_ok() {
                volume.pool.release_extent(slot);
            }
        }
    }
    results
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
/// blocks it covers only in part.
fn slow_write(
    volume: &Volume,
    offset_bytes: u64,
    len_bytes: u64,
    data: Option<&SessionBuffer>,
    fua: bool,
    bounce: &mut AlignedBuf,
) -> Result<(), PoolError> {
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
                    // SAFETY: the session keeps the buffer of len_bytes valid and untouched
                    // until it is answered; done + piece <= len_bytes <= its length.
                    Some(buffer) => into.copy_from_slice(unsafe {
                        std::slice::from_raw_parts(buffer.ptr.add(done as usize), piece as usize)
                    }),
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

/// Reads a range of `volume` with synchronous I/O through whole LUN blocks, for a read a LUN
/// cannot take as it is (narrower than its blocks). Unmapped ranges read as zeroes.
fn slow_read(
    volume: &Volume,
    offset_bytes: u64,
    len_bytes: u64,
    data: &SessionBuffer,
    bounce: &mut AlignedBuf,
) -> Result<(), PoolError> {
    debug_assert!(len_bytes as usize <= data.len_bytes);
    // SAFETY: the session keeps the buffer of `len_bytes` (at most its length) valid and
    // untouched until it is answered, and gave this thread its only use meanwhile.
    let out = unsafe { std::slice::from_raw_parts_mut(data.ptr, len_bytes as usize) };
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
