//! The stand-in (a [`Lun`] that is no driver) a pool puts in place of a volatile LUN whose content a restart lost, when the
//! pool also has persistent LUNs (a pool made before pools had to be all volatile or all
//! persistent). Nothing is ever placed on it; the ranges of the pool's volumes that may have
//! been there are routed to it (see `Volume::segment`), so that reading or writing them fails
//! with EIO instead of returning zeroes. Flushes succeed: there is nothing of it to make
//! durable, and a FLUSH of the volume must still reach its other LUNs.

use crate::backend::{Lun, LunError, LunHealth, LunInfo, LunIo, Started};
use crate::blockio::BlockOp;
use crate::reactor::ring::IoRing;

pub struct LostLun {
    info: LunInfo,
    reason: String,
    health: LunHealth,
}

impl LostLun {
    /// Stands in for the LUN described by `info`, whose content is gone for `reason`.
    pub fn new(info: LunInfo, reason: String) -> Self {
        Self {
            info,
            reason,
            health: LunHealth::default(),
        }
    }

    fn lost(&self, io_type: BlockOp) -> LunError {
        self.health.count_error(io_type);
        LunError::Failed {
            lun: self.info.name.clone(),
            reason: self.reason.clone(),
        }
    }
}

impl Lun for LostLun {
    fn info(&self) -> &LunInfo {
        &self.info
    }

    unsafe fn submit(&self, io: &LunIo, _tag: u64, _ring: &mut IoRing) -> Started {
        match io {
            LunIo::Flush => Started::Done(Ok(())),
            _ => Started::Done(Err(libc::EIO)),
        }
    }

    fn read_at(&self, _buf: &mut [u8], _offset_bytes: u64) -> Result<(), LunError> {
        Err(self.lost(BlockOp::Read))
    }

    fn write_at(&self, _buf: &[u8], _offset_bytes: u64, _durable: bool) -> Result<(), LunError> {
        Err(self.lost(BlockOp::Write))
    }

    fn write_zeroes_at(&self, _offset_bytes: u64, _len_bytes: u64) -> Result<(), LunError> {
        Err(self.lost(BlockOp::Write))
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
