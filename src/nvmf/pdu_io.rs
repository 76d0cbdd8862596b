//! Whole NVMe/TCP PDUs over a blocking stream, for the users that are not reactor sessions:
//! the handshake thread (ICReq/ICResp, Connect), the admin queue's thread and the initiator's
//! set-up. A read takes the common header, checks it ([`pdu::parse_header`]) before reading
//! what it announces, so a hostile PLEN never sizes a buffer past the receiver's limit; a
//! write builds the PDU in one buffer and sends it with one write.

use super::pdu::{self, Direction, Header, Negotiated, Pdu, PduError, COMMON_HEADER_BYTES};
use std::io::{ErrorKind, Read, Write};

#[derive(Debug, thiserror::Error)]
pub enum PduIoError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("the connection failed")]
    Io(#[source] std::io::Error),
    #[error("malformed PDU")]
    Pdu(#[source] PduError),
}

fn io_error(error: std::io::Error) -> PduIoError {
    if error.kind() == ErrorKind::UnexpectedEof {
        PduIoError::Closed
    } else {
        PduIoError::Io(error)
    }
}

/// Reads one PDU travelling `expected` into `buffer` (reused: it grows to the largest PDU
/// read, which `negotiated.max_data_bytes` bounds) and decodes it.
pub fn read_pdu<'b, S: Read>(
    stream: &mut S,
    buffer: &'b mut Vec<u8>,
    expected: Direction,
    negotiated: &Negotiated,
) -> Result<Pdu<'b>, PduIoError> {
    buffer.clear();
    buffer.resize(COMMON_HEADER_BYTES, 0);
    stream.read_exact(buffer).map_err(io_error)?;
    let framing = pdu::parse_header(buffer, expected, negotiated).map_err(PduIoError::Pdu)?;
    buffer.resize(framing.total_bytes, 0);
    stream
        .read_exact(&mut buffer[COMMON_HEADER_BYTES..])
        .map_err(io_error)?;
    pdu::decode(buffer, &framing).map_err(PduIoError::Pdu)
}

/// Writes one PDU: `header` and `data`, with the digests and alignment `negotiated` gives.
/// `scratch` is the caller's reusable buffer for the whole PDU.
pub fn write_pdu<S: Write>(
    stream: &mut S,
    header: &Header,
    data: &[u8],
    negotiated: &Negotiated,
    scratch: &mut Vec<u8>,
) -> Result<(), PduIoError> {
    pdu::encode_pdu(header, data, negotiated, scratch).map_err(PduIoError::Pdu)?;
    stream.write_all(scratch).map_err(io_error)?;
    stream.flush().map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::command::{CommandBuilder, IO_WRITE, SGL_DATA_BLOCK_OFFSET};
    use crate::nvmf::pdu::{IcReq, FLAG_DATA_DIGEST};

    #[test]
    fn pdus_written_are_read_back_one_after_the_other() {
        let negotiated = Negotiated {
            header_digest: true,
            data_digest: true,
            ..Negotiated::initial(8192)
        };
        let mut wire = Vec::new();
        let mut scratch = Vec::new();
        let icreq = Header::IcReq(IcReq {
            host_pda: 0,
            header_digest: true,
            data_digest: true,
            max_r2t: 0,
        });
        write_pdu(&mut wire, &icreq, &[], &negotiated, &mut scratch).unwrap();
        let command = CommandBuilder::new(IO_WRITE, 5)
            .sgl(0, 3, SGL_DATA_BLOCK_OFFSET)
            .build();
        let capsule = Header::CapsuleCmd(command);
        write_pdu(&mut wire, &capsule, b"xyz", &negotiated, &mut scratch).unwrap();
        assert_ne!(scratch[1] & FLAG_DATA_DIGEST, 0);

        let mut stream = wire.as_slice();
        let mut buffer = Vec::new();
        let direction = Direction::HostToController;
        let first = read_pdu(&mut stream, &mut buffer, direction, &negotiated).unwrap();
        assert_eq!(first.header, icreq);
        let second = read_pdu(&mut stream, &mut buffer, direction, &negotiated).unwrap();
        assert_eq!(second.header, capsule);
        assert_eq!(second.data, b"xyz");
        assert!(matches!(
            read_pdu(&mut stream, &mut buffer, direction, &negotiated),
            Err(PduIoError::Closed)
        ));
    }

    #[test]
    fn a_huge_announced_length_is_refused_before_anything_is_allocated() {
        let mut head = [0u8; 8];
        head[0] = pdu::PduType::CapsuleCmd as u8;
        head[2] = 72;
        head[3] = 72;
        head[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut buffer = Vec::new();
        let error = read_pdu(
            &mut head.as_slice(),
            &mut buffer,
            Direction::HostToController,
            &Negotiated::initial(8192),
        )
        .unwrap_err();
        assert!(matches!(
            error,
            PduIoError::Pdu(PduError::DataTooLong { .. })
        ));
        assert!(buffer.capacity() < 1024);
    }
}
