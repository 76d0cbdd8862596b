//! The controller registers a fabrics host reads and writes with Property Get and Property Set
//! (NVMe-oF 1.1 §3.4; the registers of NVMe base 2.0 §3.1.3): their offsets and the CC and CSTS
//! fields both sides use. The target's answers are `crate::target::nvmf::properties`; the
//! initiator that enables a controller is `crate::perf::nvmf_target`.

/// Property offsets.
pub const CAP: u32 = 0x00;
pub const VS: u32 = 0x08;
pub const CC: u32 = 0x14;
pub const CSTS: u32 = 0x1c;

// CC fields.
pub const CC_EN: u32 = 1 << 0;
pub const CC_CSS_SHIFT: u32 = 4;
pub const CC_MPS_SHIFT: u32 = 7;
pub const CC_AMS_SHIFT: u32 = 11;
pub const CC_SHN_SHIFT: u32 = 14;
pub const CC_IOSQES_SHIFT: u32 = 16;
pub const CC_IOCQES_SHIFT: u32 = 20;
/// log2 of the submission and completion queue entry sizes (64 and 16 bytes): the only ones
/// fabrics allow.
pub const IOSQES: u32 = 6;
pub const IOCQES: u32 = 4;

// CSTS fields.
pub const CSTS_RDY: u32 = 1 << 0;
pub const CSTS_CFS: u32 = 1 << 1;
pub const CSTS_SHST_SHIFT: u32 = 2;
pub const CSTS_SHST_COMPLETE: u32 = 0b10 << CSTS_SHST_SHIFT;

/// The CC value a host writes to enable a controller (Linux's: NVM command set, 4 KiB pages,
/// round robin, 64/16-byte entries, EN).
pub const fn enabling_cc() -> u32 {
    (IOSQES << CC_IOSQES_SHIFT) | (IOCQES << CC_IOCQES_SHIFT) | CC_EN
}

/// The CC value that asks for a normal shutdown of an enabled controller.
pub const fn shutdown_cc() -> u32 {
    enabling_cc() | (0b01 << CC_SHN_SHIFT)
}
