//! Log pages (Get Log Page, NVMe base 2.0 §5.16): the error information log (01h), SMART /
//! health information (02h), the changed namespace list (04h) and the discovery log (70h,
//! NVMe-oF 1.1 §5.3). Each page is built whole (at most 4 KiB), then the part the host asked
//! for (offset and length) is cut from it: see [`LogRequest`].

use super::subsystem::Namespace;
use crate::blockio::request::BlockOp;
use crate::constants::{NVMF_MAX_ADMIN_DATA_BYTES, NVMF_MAX_QUEUE_ENTRIES};
use crate::nvmf::command::{Command, CNTLID_DYNAMIC};
use crate::nvmf::status::{self, Status};
use std::net::SocketAddr;

pub const LOG_ERROR: u8 = 0x01;
pub const LOG_SMART: u8 = 0x02;
pub const LOG_CHANGED_NAMESPACES: u8 = 0x04;
pub const LOG_DISCOVERY: u8 = 0x70;

/// Bytes of one error information entry; the log has one (ELPE 0), never filled: errors are
/// reported in each command's status.
pub const ERROR_ENTRY_BYTES: usize = 64;
pub const SMART_BYTES: usize = 512;
/// The changed namespace list holds 1024 NSIDs; past that its first entry is FFFFFFFFh.
pub const CHANGED_LIST_ENTRIES: usize = 1024;
pub const DISCOVERY_HEADER_BYTES: usize = 1024;
pub const DISCOVERY_ENTRY_BYTES: usize = 1024;

/// A Get Log Page command's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRequest {
    pub page: u8,
    /// Retain Asynchronous Event: reading does not clear the event that pointed at the page.
    pub retain_event: bool,
    pub length_bytes: usize,
    pub offset_bytes: u64,
}

impl LogRequest {
    /// CDW10: LID (7:0), RAE (15), NUMDL (31:16); CDW11: NUMDU (15:0); CDW12-13: the offset.
    pub fn of(command: &Command) -> Self {
        let cdw10 = command.cdw(10);
        let dwords = ((command.cdw(11) & 0xffff) << 16 | (cdw10 >> 16)) as usize + 1;
        Self {
            page: (cdw10 & 0xff) as u8,
            retain_event: cdw10 & (1 << 15) != 0,
            length_bytes: dwords * 4,
            offset_bytes: u64::from(command.cdw(12)) | (u64::from(command.cdw(13)) << 32),
        }
    }

    /// The bytes of `page` the request names: from the offset, as many as asked, zeroes past
    /// the page's end, and never more than `NVMF_MAX_ADMIN_DATA_BYTES` (no page is that
    /// long; the length is the host's to choose). An offset that is not a whole dword or lies
    /// past the page is an invalid field.
    pub fn cut(&self, page: &[u8], out: &mut Vec<u8>) -> Result<(), Status> {
        if self.offset_bytes % 4 != 0 || self.offset_bytes > page.len() as u64 {
            return Err(status::INVALID_FIELD);
        }
        let from = self.offset_bytes as usize;
        let available = &page[from..];
        let length = self.length_bytes.min(NVMF_MAX_ADMIN_DATA_BYTES);
        let take = available.len().min(length);
        out.clear();
        out.extend_from_slice(&available[..take]);
        out.resize(length, 0);
        Ok(())
    }
}

/// SMART / health information (02h) over `namespaces` (the one asked for, or all): data units
/// (thousands of 512-byte units, rounded up) and commands read and written, as the VPs'
/// statistics count them; no warnings, 100% spare, nothing used up.
pub fn smart(namespaces: &[Namespace<'_>], out: &mut [u8; SMART_BYTES]) {
    out.fill(0);
    let (mut read_ops, mut read_bytes, mut write_ops, mut write_bytes) = (0u64, 0u64, 0, 0);
    for namespace in namespaces {
        let totals = namespace.view.vpath.stats.totals();
        read_ops += totals.ops[BlockOp::Read as usize];
        read_bytes += totals.bytes[BlockOp::Read as usize];
        write_ops += totals.ops[BlockOp::Write as usize];
        write_bytes += totals.bytes[BlockOp::Write as usize];
    }
    let units = |bytes: u64| u128::from(bytes.div_ceil(512).div_ceil(1000));
    // Composite temperature: 0 K means not reported; available spare 100%, threshold 10%.
    out[3] = 100;
    out[4] = 10;
    out[32..48].copy_from_slice(&units(read_bytes).to_le_bytes());
    out[48..64].copy_from_slice(&units(write_bytes).to_le_bytes());
    out[64..80].copy_from_slice(&u128::from(read_ops).to_le_bytes());
    out[80..96].copy_from_slice(&u128::from(write_ops).to_le_bytes());
}

/// The changed namespace list (04h) from the NSIDs that changed.
pub fn changed_namespaces(changed: &[u32], out: &mut [u8; CHANGED_LIST_ENTRIES * 4]) {
    out.fill(0);
    if changed.len() > CHANGED_LIST_ENTRIES {
        out[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        return;
    }
    for (index, nsid) in changed.iter().enumerate() {
        out[index * 4..index * 4 + 4].copy_from_slice(&nsid.to_le_bytes());
    }
}

/// One discovery log entry: an NVM subsystem reachable at a TCP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEntry {
    pub subnqn: String,
    /// Where the host reached this server (the listener's address as the host sees it).
    pub address: SocketAddr,
}

// Discovery log entry fields (NVMe-oF 1.1 figure 34).
const TRTYPE_TCP: u8 = 3;
const ADRFAM_IPV4: u8 = 1;
const ADRFAM_IPV6: u8 = 2;
const SUBTYPE_NVM: u8 = 2;
/// TREQ bits 1:0 = 10b: a secure channel is not required.
const TREQ_SECURE_CHANNEL_NOT_REQUIRED: u8 = 0b10;
/// The one port this server has.
const PORT_ID: u16 = 1;

/// The discovery log (70h): a header with the generation counter and the number of
/// records, then one 1024-byte entry per subsystem.
pub fn discovery(generation: u64, entries: &[DiscoveryEntry], out: &mut Vec<u8>) {
    out.clear();
    out.resize(
        DISCOVERY_HEADER_BYTES + entries.len() * DISCOVERY_ENTRY_BYTES,
        0,
    );
    out[0..8].copy_from_slice(&generation.to_le_bytes());
    out[8..16].copy_from_slice(&(entries.len() as u64).to_le_bytes());
    // RECFMT 0.
    for (index, entry) in entries.iter().enumerate() {
        let at = DISCOVERY_HEADER_BYTES + index * DISCOVERY_ENTRY_BYTES;
        let record = &mut out[at..at + DISCOVERY_ENTRY_BYTES];
        record[0] = TRTYPE_TCP;
        record[1] = if entry.address.is_ipv4() {
            ADRFAM_IPV4
        } else {
            ADRFAM_IPV6
        };
        record[2] = SUBTYPE_NVM;
        record[3] = TREQ_SECURE_CHANNEL_NOT_REQUIRED;
        record[4..6].copy_from_slice(&PORT_ID.to_le_bytes());
        record[6..8].copy_from_slice(&CNTLID_DYNAMIC.to_le_bytes());
        record[8..10].copy_from_slice(&(NVMF_MAX_QUEUE_ENTRIES as u16).to_le_bytes());
        // TRSVCID (32..64) and TRADDR (512..768) are ASCII padded with spaces; SUBNQN is
        // 256..512, NUL padded.
        put_padded(&mut record[32..64], &entry.address.port().to_string());
        let subnqn = entry.subnqn.as_bytes();
        let len = subnqn.len().min(256);
        record[256..256 + len].copy_from_slice(&subnqn[..len]);
        put_padded(&mut record[512..768], &entry.address.ip().to_string());
        // TSAS for TCP: SECTYPE 0, no security (the rest of 768..1024 stays zero).
    }
}

fn put_padded(out: &mut [u8], text: &str) {
    out.fill(b' ');
    let len = text.len().min(out.len());
    out[..len].copy_from_slice(&text.as_bytes()[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::command::{CommandBuilder, ADMIN_GET_LOG_PAGE};

    #[test]
    fn a_request_reads_its_fields_and_cuts_its_part() {
        let command = CommandBuilder::new(ADMIN_GET_LOG_PAGE, 1)
            .cdw(10, LOG_DISCOVERY as u32 | (1 << 15) | (3 << 16))
            .cdw(11, 0)
            .cdw(12, 8)
            .build();
        let request = LogRequest::of(&command);
        assert_eq!(
            request,
            LogRequest {
                page: LOG_DISCOVERY,
                retain_event: true,
                length_bytes: 16,
                offset_bytes: 8,
            }
        );
        let page: Vec<u8> = (0..20).collect();
        let mut out = Vec::new();
        request.cut(&page, &mut out).unwrap();
        assert_eq!(
            out,
            vec![8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 0, 0, 0, 0]
        );
        let odd = LogRequest {
            offset_bytes: 2,
            ..request
        };
        assert_eq!(odd.cut(&page, &mut out), Err(status::INVALID_FIELD));
        let past = LogRequest {
            offset_bytes: 24,
            ..request
        };
        assert_eq!(past.cut(&page, &mut out), Err(status::INVALID_FIELD));
        let numdu = CommandBuilder::new(ADMIN_GET_LOG_PAGE, 1)
            .cdw(10, 0xffff << 16)
            .cdw(11, 1)
            .build();
        let huge = LogRequest::of(&numdu);
        assert_eq!(huge.length_bytes, 0x2_0000 * 4);
        huge.cut(&page, &mut out).unwrap();
        assert_eq!(
            out.len(),
            NVMF_MAX_ADMIN_DATA_BYTES,
            "the host's length sizes nothing"
        );
        assert_eq!(&out[..20], &page[..]);
    }

    #[test]
    fn the_discovery_log_lists_each_subsystem_at_its_address() {
        let mut out = Vec::new();
        discovery(9, &[], &mut out);
        assert_eq!(out.len(), 1024);
        assert_eq!(u64::from_le_bytes(out[8..16].try_into().unwrap()), 0);
        let entry = DiscoveryEntry {
            subnqn: "nqn.2026-11.org.sds:m:a".into(),
            address: "127.0.0.1:4420".parse().unwrap(),
        };
        discovery(9, std::slice::from_ref(&entry), &mut out);
        assert_eq!(out.len(), 2048);
        assert_eq!(u64::from_le_bytes(out[0..8].try_into().unwrap()), 9);
        assert_eq!(u64::from_le_bytes(out[8..16].try_into().unwrap()), 1);
        let record = &out[1024..];
        assert_eq!(&record[0..4], &[3, 1, 2, 0b10]);
        assert_eq!(&record[6..8], &[0xff, 0xff]);
        assert_eq!(&record[32..37], b"4420 ");
        assert_eq!(
            &record[256..256 + entry.subnqn.len()],
            entry.subnqn.as_bytes()
        );
        assert_eq!(&record[512..522], b"127.0.0.1 ");
    }

    #[test]
    fn the_changed_list_overflows_to_all_ones() {
        let mut out = [0xffu8; CHANGED_LIST_ENTRIES * 4];
        changed_namespaces(&[1, 5], &mut out);
        assert_eq!(&out[..12], &[1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        let many: Vec<u32> = (1..=1025).collect();
        changed_namespaces(&many, &mut out);
        assert_eq!(&out[..8], &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    }
}
