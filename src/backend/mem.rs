//! `mem`: a LUN in RAM. Every I/O completes at once with a copy; nothing survives a restart of
//! the server, and the server warns when one joins a pool.
//!
//! Its memory is a [`MemRegion`] that every reactor reads and writes at once. Pages are
//! mapped lazily, so the kernel would grant far more than it can back and the server would be
//! killed later, when the pages are touched. A RAM LUN is therefore granted only if it fits:
//! the sizes of every RAM LUN of the server, this one included, must stay within what
//! `/proc/meminfo` reports as `MemAvailable` when it is created, less
//! [`MEM_LUN_RESERVE_BYTES`] for the rest of the server and the machine. Existing RAM LUNs are
//! counted at their full size (they may fill up at any time), which errs on the safe side.

use super::mem_region::MemRegion;
use super::{
    check_range, in_memory_size, Lun, LunError, LunHealth, LunInfo, LunIo, LunKind, LunSpec,
    SpeedClass, Started,
};
use crate::blockio::BlockOp;
use crate::constants::MEM_LUN_RESERVE_BYTES;
use crate::reactor::ring::IoRing;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest RAM LUN: the memory is reserved lazily by the kernel, but bound it all the same.
pub const MAX_MEM_LUN_BYTES: u64 = 1 << 40;

/// Bytes of every RAM LUN alive in this process.
static MEM_LUN_BYTES: AtomicU64 = AtomicU64::new(0);

/// `MemAvailable` of `/proc/meminfo`, in bytes; `None` if it cannot be read.
fn mem_available_bytes() -> Option<u64> {
    // Miri runs isolated from the host: it has no /proc, and its memory is the host's anyway.
    if cfg!(miri) {
        return Some(u64::MAX);
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A claim on the RAM LUN budget, given back when dropped.
struct MemBudget(u64);

impl MemBudget {
    /// Claims `size_bytes` if every RAM LUN together still fits in `available_bytes` less the
    /// reserve. Returns what is left to grant otherwise.
    fn claim(size_bytes: u64, available_bytes: u64) -> Result<Self, u64> {
        let limit = available_bytes.saturating_sub(MEM_LUN_RESERVE_BYTES);
        MEM_LUN_BYTES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(size_bytes).filter(|&total| total <= limit)
            })
            .map(|_| Self(size_bytes))
            .map_err(|used| limit.saturating_sub(used))
    }
}

impl Drop for MemBudget {
    fn drop(&mut self) {
        MEM_LUN_BYTES.fetch_sub(self.0, Ordering::AcqRel);
    }
}

pub struct MemLun {
    info: LunInfo,
    data: MemRegion,
    /// RAM does not fail; the counters are there so every LUN reports the same way.
    health: LunHealth,
    /// Held for as long as the LUN lives.
    _budget: MemBudget,
}

impl MemLun {
    pub fn new(spec: &LunSpec) -> Result<Self, LunError> {
        let invalid = |what: String| LunError::Invalid {
            lun: spec.name.clone(),
            what,
        };
        let size_bytes = in_memory_size(spec, MAX_MEM_LUN_BYTES, "1 TiB")?;
        let len = usize::try_from(size_bytes)
            .map_err(|_| invalid("size exceeds the address space".into()))?;
        let available_bytes = mem_available_bytes()
            .ok_or_else(|| invalid("size: cannot read MemAvailable from /proc/meminfo".into()))?;
        let budget = MemBudget::claim(size_bytes, available_bytes).map_err(|left_bytes| {
            invalid(format!(
                "size of {size_bytes} bytes is more memory than can be had: {left_bytes} bytes \
                 are left for RAM LUNs (MemAvailable less {MEM_LUN_RESERVE_BYTES} bytes kept \
                 for the system, less the other RAM LUNs)"
            ))
        })?;
        let data = MemRegion::new(len).map_err(|error| {
            invalid(format!(
                "size of {size_bytes} bytes: the kernel refuses the memory: {error}"
            ))
        })?;
        let info = LunInfo {
            name: spec.name.clone(),
            kind: LunKind::Mem,
            path: None,
            size_bytes,
            block_size_bytes: spec.block_size_bytes,
            speed_class: SpeedClass::Ram,
            direct_io: false,
        };
        Ok(Self {
            info,
            data,
            health: LunHealth::default(),
            _budget: budget,
        })
    }

    /// Carries out `io` at once. Returns a positive errno on a range error.
    fn execute(&self, io: &LunIo) -> Result<(), i32> {
        let Some((offset_bytes, len_bytes)) = io.range() else {
            return Ok(());
        };
        check_range(&self.info, offset_bytes, len_bytes).map_err(|_| libc::EINVAL)?;
        // In range and block-aligned (so word-aligned), as the region requires.
        let (offset, len) = (offset_bytes as usize, len_bytes as usize);
        match *io {
            // SAFETY: the caller guarantees buf is valid for len bytes and untouched by anyone
            // else until the I/O completes, which it does here.
            LunIo::Read { buf, .. } => unsafe { self.data.read_into(offset, buf, len) },
            // SAFETY: as for Read, with the copy in the other direction.
            LunIo::Write { buf, .. } => unsafe { self.data.write_from(offset, buf, len) },
            LunIo::WriteZeroes { .. } => self.data.zero(offset, len),
            LunIo::Flush => {}
        }
        Ok(())
    }
}

impl Lun for MemLun {
    fn info(&self) -> &LunInfo {
        &self.info
    }

    unsafe fn submit(&self, io: &LunIo, _tag: u64, _ring: &mut IoRing) -> Started {
        Started::Done(self.execute(io))
    }

    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> Result<(), LunError> {
        let io = LunIo::Read {
            offset_bytes,
            buf: buf.as_mut_ptr(),
            len_bytes: buf.len() as u32,
        };
        check_range(&self.info, offset_bytes, buf.len() as u64)?;
        self.execute(&io)
            .map_err(|errno| self.io_error(BlockOp::Read, offset_bytes, errno))
    }

    fn write_at(&self, buf: &[u8], offset_bytes: u64, _durable: bool) -> Result<(), LunError> {
        let io = LunIo::Write {
            offset_bytes,
            buf: buf.as_ptr(),
            len_bytes: buf.len() as u32,
            fua: false,
        };
        check_range(&self.info, offset_bytes, buf.len() as u64)?;
        self.execute(&io)
            .map_err(|errno| self.io_error(BlockOp::Write, offset_bytes, errno))
    }

    fn write_zeroes_at(&self, offset_bytes: u64, len_bytes: u64) -> Result<(), LunError> {
        check_range(&self.info, offset_bytes, len_bytes)?;
        let io = LunIo::WriteZeroes {
            offset_bytes,
            len_bytes,
            fua: false,
        };
        self.execute(&io)
            .map_err(|errno| self.io_error(BlockOp::Write, offset_bytes, errno))
    }

    fn flush(&self) -> Result<(), LunError> {
        Ok(())
    }

    fn is_persistent(&self) -> bool {
        false
    }

    fn health(&self) -> Option<&LunHealth> {
        Some(&self.health)
    }
}

impl MemLun {
    fn io_error(&self, io_type: BlockOp, offset_bytes: u64, errno: i32) -> LunError {
        self.health.count_error(io_type);
        LunError::Io {
            lun: self.info.name.clone(),
            offset_bytes,
            source: std::io::Error::from_raw_os_error(errno),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn mem_lun(size_bytes: u64) -> MemLun {
        MemLun::new(&LunSpec {
            name: "m".into(),
            kind: LunKind::Mem,
            path: None,
            size_bytes: Some(size_bytes),
            block_size_bytes: 512,
            remote: None,
        })
        .expect("mem LUN")
    }

    /// Several threads (as several reactors do) write and read one RAM LUN at once: their own
    /// blocks, and one block they all overwrite. Each reads back its own blocks exactly; the
    /// shared block holds bytes of some writer. Under Miri or ThreadSanitizer
    /// (scripts/sanitize.sh) a data race in the LUN fails this test.
    #[test]
    fn threads_write_and_read_a_mem_lun_at_once() {
        const THREADS: usize = 4;
        const BLOCK: usize = 512;
        let rounds = if cfg!(miri) { 2 } else { 200 };
        let lun = Arc::new(mem_lun((THREADS as u64 + 1) * BLOCK as u64 * 2));
        let shared_offset = (THREADS * 2 * BLOCK) as u64;
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let lun = lun.clone();
                std::thread::spawn(move || {
                    let own_offset = (t * 2 * BLOCK) as u64;
                    for round in 0..rounds {
                        let pattern = vec![(t * 16 + round % 16) as u8 + 1; 2 * BLOCK];
                        lun.write_at(&pattern, own_offset, false)
                            .expect("write own");
                        lun.write_at(&pattern[..BLOCK], shared_offset, false)
                            .expect("write shared");
                        let mut back = vec![0u8; 2 * BLOCK];
                        lun.read_at(&mut back, own_offset).expect("read own");
                        assert_eq!(back, pattern, "thread {t} round {round}");
                        let mut shared = vec![0u8; BLOCK];
                        lun.read_at(&mut shared, shared_offset)
                            .expect("read shared");
                        assert!(shared.iter().all(|&b| b != 0), "a writer's bytes");
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker");
        }
    }
}
