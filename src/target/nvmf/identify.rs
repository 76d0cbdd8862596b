//! Identify data structures (NVMe base 2.0 §5.17.2, NVM command set 1.0 §4.1.5): the
//! controller (CNS 01h), a namespace (CNS 00h), the active namespace list (CNS 02h) and a
//! namespace's identification descriptors (CNS 03h). Each is built into the caller's
//! 4096-byte buffer from the published snapshot; nothing is cached, so a resize or a new VP is
//! seen by the next Identify.
//!
//! What the controller announces (optional NVM commands, fused Compare and Write, a volatile
//! write cache) comes from [`IoFeatures`]: only what the I/O queues implement.

use super::controller::ControllerKind;
use super::properties::VERSION_1_3;
use super::subsystem::Namespace;
use crate::constants::{
    MAX_IO_BYTES, NVMF_IN_CAPSULE_DATA_BYTES, NVMF_KEEP_ALIVE_GRANULARITY_MS, NVMF_MAX_NSID,
    NVMF_MAX_PENDING_AERS, NVMF_MAX_QUEUE_ENTRIES,
};
use crate::domain::vpath::AccessMode;
use crate::nvmf::command::{COMMAND_BYTES, COMPLETION_BYTES};
use crate::nvmf::status::{self, Status};

/// Bytes of every Identify data structure.
pub const IDENTIFY_BYTES: usize = 4096;

// CNS values (NVMe base 2.0 figure 273).
pub const CNS_NAMESPACE: u8 = 0x00;
pub const CNS_CONTROLLER: u8 = 0x01;
pub const CNS_ACTIVE_NAMESPACES: u8 = 0x02;
pub const CNS_NAMESPACE_DESCRIPTORS: u8 = 0x03;

/// The model number every sds controller reports.
pub const MODEL: &str = "sds";
/// Active NSIDs one list holds (1024 four-byte entries).
const ACTIVE_LIST_ENTRIES: usize = IDENTIFY_BYTES / 4;

/// Namespace identification descriptor types (NVMe base 2.0 figure 278).
pub const NIDT_NGUID: u8 = 0x02;
pub const NIDT_UUID: u8 = 0x03;
pub const NIDT_CSI: u8 = 0x04;

/// The optional I/O commands and features the I/O queues implement, announced in Identify
/// Controller (ONCS, FUSES, VWC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoFeatures {
    pub compare: bool,
    pub write_zeroes: bool,
    pub dataset_management: bool,
    pub fused_compare_and_write: bool,
    /// Writes may sit in a volatile cache until Flush (the host then sends Flush).
    pub volatile_write_cache: bool,
}

impl IoFeatures {
    /// What sds's I/O queues implement (`super::queue`): Compare, Write Zeroes, Dataset
    /// Management (deallocate) and Flush; no fused Compare and Write.
    pub const SDS: IoFeatures = IoFeatures {
        compare: true,
        write_zeroes: true,
        dataset_management: true,
        fused_compare_and_write: false,
        volatile_write_cache: true,
    };

    /// ONCS: Compare (bit 0), Dataset Management (bit 2), Write Zeroes (bit 3).
    pub fn oncs(&self) -> u16 {
        u16::from(self.compare)
            | (u16::from(self.dataset_management) << 2)
            | (u16::from(self.write_zeroes) << 3)
    }
}

/// Who is asking, for Identify Controller.
#[derive(Clone, Copy, Debug)]
pub struct ControllerIdentity<'a> {
    pub cntlid: u16,
    pub kind: ControllerKind,
    pub subnqn: &'a str,
    pub features: IoFeatures,
}

/// MDTS: the largest transfer, as a power of two of the minimum page size (4 KiB).
pub const fn max_data_transfer_exponent() -> u8 {
    let pages = MAX_IO_BYTES / 4096;
    (usize::BITS - 1 - pages.leading_zeros()) as u8
}

/// The serial number of a subsystem: 16 hex digits of a hash of its NQN, the same for every
/// controller of it and across restarts (hosts use SN with the NQN to find a subsystem's
/// controllers).
pub fn serial_number(subnqn: &str) -> String {
    // FNV-1a, 64 bits: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in subnqn.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// An ASCII field, left aligned and padded with spaces (SN, MN, FR).
fn put_ascii(out: &mut [u8], text: &str) {
    out.fill(b' ');
    let bytes = text.as_bytes();
    let len = bytes.len().min(out.len());
    out[..len].copy_from_slice(&bytes[..len]);
}

fn put_u16(out: &mut [u8], at: usize, value: u16) {
    out[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut [u8], at: usize, value: u32) {
    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut [u8], at: usize, value: u64) {
    out[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Identify Controller (CNS 01h).
pub fn controller(identity: &ControllerIdentity<'_>, out: &mut [u8; IDENTIFY_BYTES]) {
    out.fill(0);
    let nvm = identity.kind == ControllerKind::Nvm;
    // VID and SSVID stay 0: no PCI vendor.
    put_ascii(&mut out[4..24], &serial_number(identity.subnqn));
    put_ascii(&mut out[24..64], MODEL);
    put_ascii(&mut out[64..72], crate::version::VERSION);
    // CMIC bit 1: the subsystem may have two or more controllers (a host may connect twice).
    out[76] = if nvm { 1 << 1 } else { 0 };
    out[77] = max_data_transfer_exponent();
    put_u16(out, 78, identity.cntlid);
    put_u32(out, 80, VERSION_1_3);
    // OAES bit 8: namespace attribute notices.
    put_u32(out, 92, if nvm { 1 << 8 } else { 0 });
    // CTRATT bit 0: 128-bit host identifiers (fabrics use them in Connect).
    put_u32(out, 96, 1);
    // CNTRLTYPE: 1 I/O controller, 2 discovery controller.
    out[111] = if nvm { 1 } else { 2 };
    // OACS 0: no optional admin commands. ACL: 4 Aborts at once (0's based).
    out[258] = 3;
    out[259] = (NVMF_MAX_PENDING_AERS - 1) as u8;
    // FRMW: one read-only firmware slot.
    out[260] = (1 << 1) | 1;
    // LPA bit 2: extended Get Log Page data (NUMDU, offsets).
    out[261] = 1 << 2;
    // KAS in 100 ms units.
    put_u16(out, 320, (NVMF_KEEP_ALIVE_GRANULARITY_MS / 100) as u16);
    // SQES and CQES: required and maximum entry sizes, 64 and 16 bytes.
    out[512] = 0x66;
    out[513] = 0x44;
    put_u16(out, 514, NVMF_MAX_QUEUE_ENTRIES as u16);
    if nvm {
        put_u32(out, 516, NVMF_MAX_NSID);
        put_u16(out, 520, identity.features.oncs());
        put_u16(
            out,
            522,
            u16::from(identity.features.fused_compare_and_write),
        );
        out[525] = u8::from(identity.features.volatile_write_cache);
    }
    // SGLS: SGLs without alignment requirements (bits 1:0 = 01b), and an offset in the
    // address of a data block descriptor (in-capsule data).
    put_u32(out, 536, 1 | (1 << 20));
    let subnqn = identity.subnqn.as_bytes();
    let len = subnqn.len().min(256);
    out[768..768 + len].copy_from_slice(&subnqn[..len]);
    // Fabrics: command capsule size (the command and in-capsule data) and response capsule
    // size in 16-byte units; in-capsule data at offset 0; one SGL descriptor per command.
    put_u32(
        out,
        1792,
        ((COMMAND_BYTES + NVMF_IN_CAPSULE_DATA_BYTES) / 16) as u32,
    );
    put_u32(out, 1796, (COMPLETION_BYTES / 16) as u32);
    put_u16(out, 1800, 0);
    out[1803] = 1;
}

/// Identify Namespace (CNS 00h) of an active namespace.
pub fn namespace(namespace: &Namespace<'_>, out: &mut [u8; IDENTIFY_BYTES]) {
    out.fill(0);
    let volume = &namespace.view.vpath.volume;
    let block_bytes = u64::from(volume.block_size_bytes.max(1));
    let blocks = volume.size_bytes() / block_bytes;
    let used = if volume.thin {
        (volume.allocated_extents() * volume.extent_bytes() / block_bytes).min(blocks)
    } else {
        blocks
    };
    put_u64(out, 0, blocks);
    put_u64(out, 8, blocks);
    put_u64(out, 16, used);
    // NSFEAT bit 0: thin provisioning (NUSE is what is allocated).
    out[24] = u8::from(volume.thin);
    // NLBAF 0 (one format), FLBAS 0 (format 0).
    // NMIC bit 0: the namespace may be attached to two or more controllers.
    out[30] = 1;
    // DLFEAT: a deallocated block of a thin volume reads zeroes.
    out[33] = if volume.thin { 0b001 } else { 0 };
    // NVMCAP: bytes.
    out[48..64].copy_from_slice(&u128::from(volume.size_bytes()).to_le_bytes());
    // NSATTR bit 0: write protected (a read-only VP).
    out[99] = u8::from(namespace.view.vpath.mode == AccessMode::ReadOnly);
    // NGUID: the volume's uuid, stable and the same through every host's VP to it.
    out[104..120].copy_from_slice(&volume.uuid);
    // LBA format 0: LBADS = log2(block size), no metadata, best relative performance.
    let lbads = block_bytes.trailing_zeros();
    put_u32(out, 128, lbads << 16);
}

/// The active namespace list (CNS 02h): NSIDs above `after`, ascending, at most 1024.
pub fn active_namespaces(
    namespaces: &[Namespace<'_>],
    after: u32,
    out: &mut [u8; IDENTIFY_BYTES],
) -> Result<(), Status> {
    if after >= 0xffff_fffe {
        return Err(status::INVALID_NAMESPACE_OR_FORMAT);
    }
    out.fill(0);
    for (index, namespace) in namespaces
        .iter()
        .filter(|namespace| namespace.nsid > after)
        .take(ACTIVE_LIST_ENTRIES)
        .enumerate()
    {
        put_u32(out, index * 4, namespace.nsid);
    }
    Ok(())
}

/// The namespace identification descriptors (CNS 03h): NGUID and UUID (both the volume's
/// uuid) and the command set (NVM).
pub fn namespace_descriptors(namespace: &Namespace<'_>, out: &mut [u8; IDENTIFY_BYTES]) {
    out.fill(0);
    let uuid = namespace.view.vpath.volume.uuid;
    let mut at = 0;
    for (kind, id) in [
        (NIDT_NGUID, &uuid[..]),
        (NIDT_UUID, &uuid[..]),
        (NIDT_CSI, &[0u8][..]),
    ] {
        out[at] = kind;
        out[at + 1] = id.len() as u8;
        out[at + 4..at + 4 + id.len()].copy_from_slice(id);
        at += 4 + id.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::nvmf::subsystem::{self, tests::snapshot};

    fn u16_at(out: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([out[at], out[at + 1]])
    }
    fn u32_at(out: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(out[at..at + 4].try_into().unwrap())
    }
    fn u64_at(out: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(out[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn the_controller_says_who_it_is_and_what_it_does() {
        let mut out = [0xffu8; IDENTIFY_BYTES];
        let subnqn = "nqn.2026-11.org.sds:m:a";
        controller(
            &ControllerIdentity {
                cntlid: 7,
                kind: ControllerKind::Nvm,
                subnqn,
                features: IoFeatures::SDS,
            },
            &mut out,
        );
        assert_eq!(&out[4..20], serial_number(subnqn).as_bytes());
        assert_eq!(&out[24..28], b"sds ");
        assert_eq!(u16_at(&out, 78), 7);
        assert_eq!(u32_at(&out, 80), 0x0001_0300);
        assert_eq!(out[77], 10, "4 MiB = 2^10 pages of 4 KiB");
        assert_eq!(out[111], 1);
        assert_eq!(u16_at(&out, 320), 1, "KAS 100 ms");
        assert_eq!(out[259] as usize, NVMF_MAX_PENDING_AERS - 1);
        assert_eq!(u32_at(&out, 516), 16384);
        assert_eq!(u16_at(&out, 520), 0b1101, "Compare, DSM, Write Zeroes");
        assert_eq!(u16_at(&out, 522), 0, "no fused Compare and Write");
        assert_eq!(out[525], 1);
        assert_eq!(&out[768..768 + subnqn.len()], subnqn.as_bytes());
        assert_eq!(out[768 + subnqn.len()], 0);
        assert_eq!(u32_at(&out, 1792), (64 + 8192) / 16);
        assert_eq!(u32_at(&out, 1796), 1);
        assert_eq!(u32_at(&out, 536), 0x0010_0001);
        assert_ne!(
            serial_number(subnqn),
            serial_number("nqn.2026-11.org.sds:m:b")
        );
    }

    #[test]
    fn a_discovery_controller_has_no_namespaces() {
        let mut out = [0u8; IDENTIFY_BYTES];
        controller(
            &ControllerIdentity {
                cntlid: 1,
                kind: ControllerKind::Discovery,
                subnqn: crate::domain::nvme_name::DISCOVERY_NQN,
                features: IoFeatures::SDS,
            },
            &mut out,
        );
        assert_eq!(out[111], 2);
        assert_eq!(u32_at(&out, 516), 0);
        assert_eq!(u16_at(&out, 520), 0);
    }

    #[test]
    fn a_namespace_is_its_volume() {
        let snapshot = snapshot();
        let namespaces = subsystem::namespaces(&snapshot, "a");
        let mut out = [0xffu8; IDENTIFY_BYTES];
        namespace(&namespaces[0], &mut out);
        assert_eq!(u64_at(&out, 0), 2048, "1 MiB of 512-byte blocks");
        assert_eq!(u64_at(&out, 8), 2048);
        assert_eq!(u64_at(&out, 16), 0, "a thin volume never written");
        assert_eq!(out[24], 1);
        assert_eq!(out[25], 0);
        assert_eq!(out[26], 0);
        assert_eq!(out[99], 0, "read-write");
        assert_eq!(&out[104..120], &[0xa0; 16]);
        assert_eq!(u32_at(&out, 128), 9 << 16);
        namespace(&namespaces[1], &mut out);
        assert_eq!(out[99], 1, "a read-only VP is write protected");
        assert_eq!(&out[104..120], &[0xa1; 16]);
    }

    #[test]
    fn the_active_list_counts_up_from_the_given_nsid() {
        let snapshot = snapshot();
        let namespaces = subsystem::namespaces(&snapshot, "a");
        let mut out = [0xffu8; IDENTIFY_BYTES];
        active_namespaces(&namespaces, 0, &mut out).unwrap();
        assert_eq!(
            (u32_at(&out, 0), u32_at(&out, 4), u32_at(&out, 8)),
            (1, 5, 0)
        );
        active_namespaces(&namespaces, 1, &mut out).unwrap();
        assert_eq!((u32_at(&out, 0), u32_at(&out, 4)), (5, 0));
        assert_eq!(
            active_namespaces(&namespaces, 0xffff_ffff, &mut out),
            Err(status::INVALID_NAMESPACE_OR_FORMAT)
        );
    }

    #[test]
    fn descriptors_carry_the_volume_uuid_twice() {
        let snapshot = snapshot();
        let namespaces = subsystem::namespaces(&snapshot, "a");
        let mut out = [0xffu8; IDENTIFY_BYTES];
        namespace_descriptors(&namespaces[1], &mut out);
        assert_eq!(&out[0..4], &[NIDT_NGUID, 16, 0, 0]);
        assert_eq!(&out[4..20], &[0xa1; 16]);
        assert_eq!(&out[20..24], &[NIDT_UUID, 16, 0, 0]);
        assert_eq!(&out[24..40], &[0xa1; 16]);
        assert_eq!(&out[40..45], &[NIDT_CSI, 1, 0, 0, 0]);
        assert_eq!(out[45], 0, "the list ends");
    }
}
