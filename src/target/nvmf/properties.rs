//! The controller properties a fabrics host reads and writes with Property Get and Property
//! Set (NVMe-oF 1.1 §3.4, the registers of NVMe base 2.0 §3.1.3): CAP, VS, CC and CSTS.
//!
//! Enabling (CC.EN 0 → 1, with the only queue entry sizes fabrics allow) makes the controller
//! ready at once (CSTS.RDY); clearing CC.EN resets it and a shutdown notification (CC.SHN) is
//! complete at once (CSTS.SHST): both end the controller's I/O queues, which the caller does
//! on the [`Change`] this returns. Nothing here is kept anywhere else: the admin queue's
//! thread owns the one copy.

use crate::constants::{NVMF_MAX_QUEUE_ENTRIES, NVMF_READY_TIMEOUT_UNITS};
use crate::nvmf::registers::{
    CAP, CC, CC_AMS_SHIFT, CC_CSS_SHIFT, CC_EN, CC_IOCQES_SHIFT, CC_IOSQES_SHIFT, CC_MPS_SHIFT,
    CC_SHN_SHIFT, CSTS, CSTS_CFS, CSTS_RDY, CSTS_SHST_COMPLETE, CSTS_SHST_SHIFT, IOCQES, IOSQES,
    VS,
};
use crate::nvmf::status::{self, Status};

/// The version this server reports: NVMe 1.3, the version whose fabrics feature set it
/// implements (NVMe-oF 1.1 keep alive, discovery log page, namespace identification
/// descriptors).
pub const VERSION_1_3: u32 = 0x0001_0300;

/// What a Property Set did to the controller, for the caller to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Nothing,
    /// CC.EN went 0 → 1: the controller is ready (I/O queues may now connect).
    Enabled,
    /// CC.EN went 1 → 0: a controller reset; its I/O queues end.
    Reset,
    /// CC.SHN asked for a shutdown, now complete; its I/O queues end.
    Shutdown,
    /// CC.EN was set with values this controller cannot run with: CSTS.CFS is set.
    Fatal,
}

/// CAP, VS, CC and CSTS of one controller.
#[derive(Clone, Debug)]
pub struct Properties {
    cc: u32,
    csts: u32,
}

impl Default for Properties {
    fn default() -> Self {
        Self::new()
    }
}

impl Properties {
    pub const fn new() -> Self {
        Self { cc: 0, csts: 0 }
    }

    /// CAP: MQES (0's based), CQR (fabrics require contiguous queues), TO (how long to wait
    /// for RDY), CSS bit 0 (the NVM command set); MPSMIN = MPSMAX = 0 (4 KiB; unused on
    /// fabrics but checked by hosts).
    pub const fn capabilities() -> u64 {
        let mqes = (NVMF_MAX_QUEUE_ENTRIES - 1) as u64;
        let cqr = 1u64 << 16;
        let timeout = (NVMF_READY_TIMEOUT_UNITS as u64) << 24;
        let css_nvm = 1u64 << 37;
        mqes | cqr | timeout | css_nvm
    }

    pub fn cc(&self) -> u32 {
        self.cc
    }

    pub fn csts(&self) -> u32 {
        self.csts
    }

    /// Whether the controller is enabled and ready (admin commands other than fabrics ones,
    /// and I/O queue Connects, are accepted only then).
    pub fn ready(&self) -> bool {
        self.csts & CSTS_RDY != 0 && self.csts & CSTS_CFS == 0
    }

    /// Property Get: `eight_bytes` is ATTRIB.SIZE. CAP is the only 8-byte property.
    pub fn get(&self, offset: u32, eight_bytes: bool) -> Result<u64, Status> {
        match (offset, eight_bytes) {
            (CAP, true) => Ok(Self::capabilities()),
            (VS, false) => Ok(u64::from(VERSION_1_3)),
            (CC, false) => Ok(u64::from(self.cc)),
            (CSTS, false) => Ok(u64::from(self.csts)),
            _ => Err(status::INVALID_FIELD),
        }
    }

    /// Property Set: only CC is writable.
    pub fn set(&mut self, offset: u32, eight_bytes: bool, value: u64) -> Result<Change, Status> {
        if offset != CC || eight_bytes {
            return Err(status::INVALID_FIELD);
        }
        let new = u32::try_from(value).map_err(|_| status::INVALID_FIELD)?;
        let old = self.cc;
        self.cc = new;
        let shutdown = (new >> CC_SHN_SHIFT) & 0b11 != 0;
        if shutdown && (old >> CC_SHN_SHIFT) & 0b11 == 0 {
            self.csts = (self.csts & !(0b11 << CSTS_SHST_SHIFT)) | CSTS_SHST_COMPLETE;
            return Ok(Change::Shutdown);
        }
        match (old & CC_EN != 0, new & CC_EN != 0) {
            (false, true) => {
                if !Self::runnable(new) {
                    self.csts |= CSTS_CFS;
                    return Ok(Change::Fatal);
                }
                self.csts = (self.csts & !(0b11 << CSTS_SHST_SHIFT)) | CSTS_RDY;
                Ok(Change::Enabled)
            }
            (true, false) => {
                self.csts &= !(CSTS_RDY | CSTS_CFS | (0b11 << CSTS_SHST_SHIFT));
                Ok(Change::Reset)
            }
            _ => Ok(Change::Nothing),
        }
    }

    /// Whether a CC being enabled asks for what this controller is: the NVM command set,
    /// 4 KiB pages, round robin arbitration, 64-byte submission and 16-byte completion
    /// entries.
    fn runnable(cc: u32) -> bool {
        (cc >> CC_CSS_SHIFT) & 0b111 == 0
            && (cc >> CC_MPS_SHIFT) & 0b1111 == 0
            && (cc >> CC_AMS_SHIFT) & 0b111 == 0
            && (cc >> CC_IOSQES_SHIFT) & 0b1111 == IOSQES
            && (cc >> CC_IOCQES_SHIFT) & 0b1111 == IOCQES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::registers::{enabling_cc, shutdown_cc};

    #[test]
    fn capabilities_announce_the_queue_size_and_the_nvm_command_set() {
        let cap = Properties::capabilities();
        assert_eq!(cap & 0xffff, NVMF_MAX_QUEUE_ENTRIES as u64 - 1, "MQES");
        assert_ne!(cap & (1 << 16), 0, "CQR");
        assert_eq!(
            (cap >> 24) & 0xff,
            u64::from(NVMF_READY_TIMEOUT_UNITS),
            "TO"
        );
        assert_eq!((cap >> 37) & 0xff, 1, "CSS: NVM");
        let properties = Properties::new();
        assert_eq!(properties.get(CAP, true), Ok(cap));
        assert_eq!(properties.get(CAP, false), Err(status::INVALID_FIELD));
        assert_eq!(properties.get(VS, false), Ok(0x0001_0300));
        assert_eq!(properties.get(0x0c, false), Err(status::INVALID_FIELD));
    }

    #[test]
    fn enabling_makes_ready_and_disabling_resets() {
        let mut properties = Properties::new();
        assert!(!properties.ready());
        assert_eq!(properties.get(CSTS, false), Ok(0));
        assert_eq!(
            properties.set(CC, false, u64::from(enabling_cc())),
            Ok(Change::Enabled)
        );
        assert!(properties.ready());
        assert_eq!(properties.get(CSTS, false), Ok(u64::from(CSTS_RDY)));
        assert_eq!(properties.get(CC, false), Ok(u64::from(enabling_cc())));
        assert_eq!(
            properties.set(CC, false, u64::from(enabling_cc())),
            Ok(Change::Nothing)
        );
        assert_eq!(properties.set(CC, false, 0), Ok(Change::Reset));
        assert!(!properties.ready());
        assert_eq!(properties.get(CSTS, false), Ok(0));
        assert_eq!(
            properties.set(VS, false, 0),
            Err(status::INVALID_FIELD),
            "VS is read only"
        );
        assert_eq!(properties.set(CC, true, 1), Err(status::INVALID_FIELD));
    }

    #[test]
    fn a_shutdown_completes_at_once() {
        let mut properties = Properties::new();
        properties.set(CC, false, u64::from(enabling_cc())).unwrap();
        assert_eq!(
            properties.set(CC, false, u64::from(shutdown_cc())),
            Ok(Change::Shutdown)
        );
        let csts = properties.get(CSTS, false).unwrap() as u32;
        assert_eq!(csts & (0b11 << 2), CSTS_SHST_COMPLETE);
    }

    #[test]
    fn wrong_entry_sizes_are_a_fatal_status() {
        let mut properties = Properties::new();
        assert_eq!(properties.set(CC, false, 1), Ok(Change::Fatal));
        assert!(!properties.ready());
        assert_ne!(properties.csts() & CSTS_CFS, 0);
    }
}
