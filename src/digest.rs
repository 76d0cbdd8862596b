//! The CRC32C (Castagnoli) digests iSCSI and NVMe/TCP put on the wire: iSCSI's header and data
//! digests (RFC 7143 §11.1, appendix B.4 of RFC 3720: over the BHS and AHS, or over the data
//! segment and its padding) and NVMe/TCP's HDGST and DDGST (TP 8000: over the PDU header, or
//! over its data), each sent as the four bytes of the CRC least significant byte first. That
//! is the order RFC 3720's test vectors (32 zero bytes give `aa 36 91 8a`), libiscsi and Linux
//! (its iSCSI initiator and its nvme-tcp host and target) use; a digest in the other order
//! fails every check, which the tests below pin.

/// Bytes of a header or data digest on the wire.
pub const DIGEST_BYTES: usize = 4;

/// The digest of `bytes` as sent on the wire.
pub fn digest(bytes: &[u8]) -> [u8; DIGEST_BYTES] {
    crc32c::crc32c(bytes).to_le_bytes()
}

/// The digest of several pieces sent one after the other (a data segment and its padding,
/// or a BHS and its AHS), without joining them in memory.
pub fn digest_of(pieces: &[&[u8]]) -> [u8; DIGEST_BYTES] {
    let crc = pieces
        .iter()
        .fold(0u32, |crc, piece| crc32c::crc32c_append(crc, piece));
    crc.to_le_bytes()
}

/// Whether `received` is the digest of `pieces`.
pub fn matches(pieces: &[&[u8]], received: &[u8]) -> bool {
    received == digest_of(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3720_test_vectors_in_wire_order() {
        assert_eq!(digest(&[0u8; 32]), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(digest(&[0xffu8; 32]), [0x43, 0xab, 0xa8, 0x62]);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(digest(&ascending), [0x4e, 0x79, 0xdd, 0x46]);
        let descending: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(digest(&descending), [0x5c, 0xdb, 0x3f, 0x11]);
    }

    #[test]
    fn pieces_digest_as_their_concatenation() {
        let whole: Vec<u8> = (0u8..100).collect();
        assert_eq!(digest_of(&[&whole[..37], &whole[37..]]), digest(&whole));
        assert!(matches(&[&whole[..1], &whole[1..]], &digest(&whole)));
        assert!(!matches(&[&whole[..]], &[0, 0, 0, 0]));
    }
}
