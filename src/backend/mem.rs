//! `mem`: a LUN in RAM. Every I/O completes at once with a copy; nothing survives a restart of
//! the server, and the server warns when one joins a pool.

use super::aligned_buf::AlignedBuf;
use super::{
    check_range, in_memory_size, IoType, Lun, LunError, LunHealth, LunInfo, LunIo, LunKind,
    LunSpec, SpeedClass, Started,
};
use crate::reactor::ring::IoRing;

/// Largest RAM LUN: the memory is reserved lazily by the kernel, but bound it all the same.
pub const MAX_MEM_LUN_BYTES: u64 = 1 << 40;

pub struct MemLun {
    info: LunInfo,
    data: AlignedBuf,
    /// RAM does not fail; the counters are there so every LUN reports the same way.
    health: LunHealth,
}

impl MemLun {
    pub fn new(spec: &LunSpec) -> Result<Self, LunError> {
        let invalid = |what: &str| LunError::Invalid {
            lun: spec.name.clone(),
            what: what.to_string(),
        };
        let size_bytes = in_memory_size(spec, MAX_MEM_LUN_BYTES, "1 TiB")?;
        let len =
            usize::try_from(size_bytes).map_err(|_| invalid("size exceeds the address space"))?;
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
            data: AlignedBuf::new(len),
            health: LunHealth::default(),
        })
    }

    /// Carries out `io` at once. Returns a positive errno on a range error.
    fn execute(&self, io: &LunIo) -> Result<(), i32> {
        let base = self.data.shared_mut_ptr();
        let Some((offset_bytes, len_bytes)) = io.range() else {
            return Ok(());
        };
        check_range(&self.info, offset_bytes, len_bytes).map_err(|_| libc::EINVAL)?;
        let (offset, len) = (offset_bytes as usize, len_bytes as usize);
        // Concurrent host I/O to overlapping ranges races on bytes exactly as it would on a
        // disk; the copies never leave the allocation.
        match *io {
            // SAFETY: check_range proved offset + len <= the allocation's size, and the caller
            // guarantees buf is valid for len bytes.
            LunIo::Read { buf, .. } => unsafe {
                std::ptr::copy_nonoverlapping(base.add(offset), buf, len)
            },
            // SAFETY: as for Read, with the copy in the other direction.
            LunIo::Write { buf, .. } => unsafe {
                std::ptr::copy_nonoverlapping(buf, base.add(offset), len)
            },
            // SAFETY: check_range proved offset + len <= the allocation's size.
            LunIo::WriteZeroes { .. } => unsafe { std::ptr::write_bytes(base.add(offset), 0, len) },
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
            .map_err(|errno| self.io_error(IoType::Read, offset_bytes, errno))
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
            .map_err(|errno| self.io_error(IoType::Write, offset_bytes, errno))
    }

    fn write_zeroes_at(&self, offset_bytes: u64, len_bytes: u64) -> Result<(), LunError> {
        check_range(&self.info, offset_bytes, len_bytes)?;
        let io = LunIo::WriteZeroes {
            offset_bytes,
            len_bytes,
            fua: false,
        };
        self.execute(&io)
            .map_err(|errno| self.io_error(IoType::Write, offset_bytes, errno))
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
    fn io_error(&self, io_type: IoType, offset_bytes: u64, errno: i32) -> LunError {
        self.health.count_error(io_type);
        LunError::Io {
            lun: self.info.name.clone(),
            offset_bytes,
            source: std::io::Error::from_raw_os_error(errno),
        }
    }
}
