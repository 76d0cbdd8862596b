//! Whole PDUs over a blocking stream, for the login and discovery sessions on a handshake
//! thread (the full-feature phase of a normal session reads through its reactor's ring
//! instead). A read takes the BHS, decides from it alone how much follows and whether that is
//! allowed ([`Framing`]), then reads the rest and checks the digests; a write sends BHS,
//! digests, data and padding in one buffer.

use super::pdu::{self, Bhs, Framing, PduError, BHS_BYTES};
use crate::digest::{self, DIGEST_BYTES};
use std::io::{ErrorKind, Read, Write};

/// Whether header and data digests are in use on this connection (never during login).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PduIoError {
    #[error("the initiator closed the connection")]
    Closed,
    #[error("the connection failed")]
    Io(#[source] std::io::Error),
    #[error("malformed PDU")]
    Pdu(#[source] PduError),
}

/// One PDU as read: its BHS and its data segment (padding and digests removed).
#[derive(Clone, Debug)]
pub struct Received {
    pub bhs: Bhs,
    pub data: Vec<u8>,
}

fn io_error(error: std::io::Error) -> PduIoError {
    if error.kind() == ErrorKind::UnexpectedEof {
        PduIoError::Closed
    } else {
        PduIoError::Io(error)
    }
}

/// Reads one PDU whose data segment is at most `max_data_bytes`; AHS is refused (no PDU of
/// a login or discovery session has one).
pub fn read_pdu<S: Read>(
    stream: &mut S,
    digests: Digests,
    max_data_bytes: u32,
) -> Result<Received, PduIoError> {
    let mut bhs = [0u8; BHS_BYTES];
    stream.read_exact(&mut bhs).map_err(io_error)?;
    let framing = Framing::of(&bhs, digests.header, digests.data, max_data_bytes, 0)
        .map_err(PduIoError::Pdu)?;
    if framing.header_digest_bytes > 0 {
        let mut received = [0u8; DIGEST_BYTES];
        stream.read_exact(&mut received).map_err(io_error)?;
        if !digest::matches(&[&bhs], &received) {
            return Err(PduIoError::Pdu(PduError::HeaderDigest));
        }
    }
    let mut data = vec![0u8; framing.data_bytes + framing.padding_bytes];
    stream.read_exact(&mut data).map_err(io_error)?;
    if framing.data_digest_bytes > 0 {
        let mut received = [0u8; DIGEST_BYTES];
        stream.read_exact(&mut received).map_err(io_error)?;
        if !digest::matches(&[&data], &received) {
            return Err(PduIoError::Pdu(PduError::DataDigest));
        }
    }
    data.truncate(framing.data_bytes);
    Ok(Received { bhs, data })
}

/// Writes one PDU: `bhs` (whose DataSegmentLength must be `data.len()`), then `data` padded
/// to four bytes, with the digests in use.
pub fn write_pdu<S: Write>(
    stream: &mut S,
    bhs: &Bhs,
    data: &[u8],
    digests: Digests,
) -> Result<(), PduIoError> {
    let padding = pdu::padding(data.len() as u32);
    let mut out = Vec::with_capacity(BHS_BYTES + 2 * DIGEST_BYTES + data.len() + padding);
    out.extend_from_slice(bhs);
    if digests.header {
        out.extend_from_slice(&digest::digest(bhs));
    }
    if !data.is_empty() {
        let start = out.len();
        out.extend_from_slice(data);
        out.extend(std::iter::repeat(0u8).take(padding));
        if digests.data {
            let sum = digest::digest(&out[start..]);
            out.extend_from_slice(&sum);
        }
    }
    stream.write_all(&out).map_err(io_error)?;
    stream.flush().map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::iscsi::pdu::{NopIn, Sequence};

    #[test]
    fn pdus_round_trip_with_and_without_digests() {
        for digests in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            let mut bhs = [0u8; 48];
            NopIn {
                data_segment_length: 5,
                lun: 0,
                initiator_task_tag: 1,
                target_transfer_tag: 0xffff_ffff,
                sequence: Sequence::default(),
            }
            .write(&mut bhs);
            let mut wire = Vec::new();
            write_pdu(&mut wire, &bhs, b"hello", digests).unwrap();
            let expected = 48 + 8 + if digests.header { 8 } else { 0 };
            assert_eq!(wire.len(), expected);
            let read = read_pdu(&mut wire.as_slice(), digests, 8192).unwrap();
            assert_eq!(read.bhs, bhs);
            assert_eq!(read.data, b"hello");
            if digests.data {
                let mut corrupt = wire.clone();
                corrupt[48 + 4] ^= 1;
                assert!(matches!(
                    read_pdu(&mut corrupt.as_slice(), digests, 8192),
                    Err(PduIoError::Pdu(PduError::DataDigest))
                ));
                let mut corrupt = wire.clone();
                corrupt[3] ^= 1;
                assert!(matches!(
                    read_pdu(&mut corrupt.as_slice(), digests, 8192),
                    Err(PduIoError::Pdu(PduError::HeaderDigest))
                ));
            }
        }
    }

    #[test]
    fn truncated_and_oversized_pdus_are_errors() {
        assert!(matches!(
            read_pdu(&mut [0u8; 20].as_slice(), Digests::default(), 8192),
            Err(PduIoError::Closed)
        ));
        let mut bhs = [0u8; 48];
        bhs[0] = 0x43;
        bhs[5..8].copy_from_slice(&[0, 0, 100]);
        let mut wire = bhs.to_vec();
        wire.extend_from_slice(&[0u8; 10]);
        assert!(matches!(
            read_pdu(&mut wire.as_slice(), Digests::default(), 8192),
            Err(PduIoError::Closed)
        ));
        assert!(matches!(
            read_pdu(&mut wire.as_slice(), Digests::default(), 64),
            Err(PduIoError::Pdu(PduError::DataSegmentTooLong { .. }))
        ));
    }
}
