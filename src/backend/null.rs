//! `null`: a LUN that stores nothing. Every I/O completes at once; a read returns whatever its
//! buffer already held, a write is dropped. It has a size and a block size like any LUN, so it
//! can be pooled and carved into volumes, which makes it the measure of what the rest of the
//! stack costs (SPDK's null bdev plays the same part for bdevperf). Nothing it holds survives
//! anything: it is not persistent, and a pool on it is formatted anew at every start.

use super::{
    check_range, in_memory_size, Lun, LunError, LunHealth, LunInfo, LunIo, LunKind, LunSpec,
    SpeedClass, Started,
};
use crate::reactor::ring::IoRing;

/// Largest null LUN: it costs no memory, but a size past this is surely a typo.
pub const MAX_NULL_LUN_BYTES: u64 = 1 << 50;

pub struct NullLun {
    info: LunInfo,
    /// A null LUN never fails; the counters are there so every LUN reports the same way.
    health: LunHealth,
}

impl NullLun {
    pub fn new(spec: &LunSpec) -> Result<Self, LunError> {
        let size_bytes = in_memory_size(spec, MAX_NULL_LUN_BYTES, "1 PiB")?;
        Ok(Self {
            info: LunInfo {
                name: spec.name.clone(),
                kind: LunKind::Null,
                path: None,
                size_bytes,
                block_size_bytes: spec.block_size_bytes,
                speed_class: SpeedClass::Ram,
                direct_io: false,
            },
            health: LunHealth::default(),
        })
    }

    /// The range check every driver makes (a request past the end or misaligned is refused),
    /// and nothing else. Returns a positive errno on a range error.
    #[inline]
    fn execute(&self, io: &LunIo) -> Result<(), i32> {
        let Some((offset_bytes, len_bytes)) = io.range() else {
            return Ok(());
        };
        check_range(&self.info, offset_bytes, len_bytes).map_err(|_| libc::EINVAL)
    }
}

impl Lun for NullLun {
    fn info(&self) -> &LunInfo {
        &self.info
    }

    unsafe fn submit(&self, io: &LunIo, _tag: u64, _ring: &mut IoRing) -> Started {
        Started::Done(self.execute(io))
    }

    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> Result<(), LunError> {
        check_range(&self.info, offset_bytes, buf.len() as u64)
    }

    fn write_at(&self, buf: &[u8], offset_bytes: u64, _durable: bool) -> Result<(), LunError> {
        check_range(&self.info, offset_bytes, buf.len() as u64)
    }

    fn write_zeroes_at(&self, offset_bytes: u64, len_bytes: u64) -> Result<(), LunError> {
        check_range(&self.info, offset_bytes, len_bytes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::aligned_buf::AlignedBuf;

    fn spec(size_bytes: Option<u64>, block_size_bytes: u32) -> LunSpec {
        LunSpec {
            name: "n".into(),
            kind: LunKind::Null,
            path: None,
            size_bytes,
            block_size_bytes,
            remote: None,
        }
    }

    #[test]
    fn sizes_are_checked() {
        assert!(NullLun::new(&spec(None, 512)).is_err(), "size required");
        assert!(NullLun::new(&spec(Some(0), 512)).is_err());
        assert!(NullLun::new(&spec(Some(4096 + 512), 4096)).is_err());
        assert!(NullLun::new(&spec(Some(MAX_NULL_LUN_BYTES + 4096), 4096)).is_err());
        let lun = NullLun::new(&spec(Some(1 << 40), 4096)).expect("1 TiB costs nothing");
        assert_eq!(lun.info().size_bytes, 1 << 40);
        assert_eq!(lun.info().kind, LunKind::Null);
        assert!(!lun.is_persistent());
    }

    #[cfg_attr(
        miri,
        ignore = "io_uring: a system call Miri cannot run (sanitize.sh runs it under TSan)"
    )]
    #[test]
    fn io_completes_at_once_and_stores_nothing() {
        let lun = NullLun::new(&spec(Some(1 << 20), 512)).expect("lun");
        let mut ring = IoRing::new(8).expect("ring");
        let mut buf = AlignedBuf::new(4096);
        buf.as_mut_slice().fill(0x5a);
        let write = LunIo::Write {
            offset_bytes: 4096,
            buf: buf.as_ptr(),
            len_bytes: 4096,
            fua: true,
        };
        // SAFETY: buf outlives the call and the I/O completes inside it.
        let started = unsafe { lun.submit(&write, 1, &mut ring) };
        assert!(matches!(started, Started::Done(Ok(()))));
        buf.as_mut_slice().fill(0x11);
        let read = LunIo::Read {
            offset_bytes: 4096,
            buf: buf.as_mut_ptr(),
            len_bytes: 4096,
        };
        // SAFETY: as above.
        let started = unsafe { lun.submit(&read, 2, &mut ring) };
        assert!(matches!(started, Started::Done(Ok(()))));
        assert!(
            buf.as_slice().iter().all(|&b| b == 0x11),
            "a read leaves the buffer as it was"
        );
        assert_eq!(ring.in_flight(), 0, "nothing goes to the ring");
        let past_end = LunIo::Read {
            offset_bytes: (1 << 20) - 512,
            buf: buf.as_mut_ptr(),
            len_bytes: 1024,
        };
        // SAFETY: as above; the LUN refuses the range before touching anything.
        let started = unsafe { lun.submit(&past_end, 3, &mut ring) };
        assert!(matches!(started, Started::Done(Err(libc::EINVAL))));
        assert!(lun
            .write_at(&buf.as_slice()[..512], 1 << 20, false)
            .is_err());
        assert!(lun.read_at(&mut buf.as_mut_slice()[..512], 0).is_ok());
        assert!(lun.flush().is_ok());
    }
}
