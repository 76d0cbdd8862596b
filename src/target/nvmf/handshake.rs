//! A new NVMe/TCP connection up to its Connect, on a handshake thread (blocking, bounded in
//! number by the listener's [`HandshakeSlots`](crate::target::handshake_slots) and in time by
//! one deadline): ICReq/ICResp (digests as the host asks, its PDU data alignment, CPDA 0,
//! MAXH2CDATA), then the first capsule, which must be a fabrics Connect with its data in the
//! capsule.
//!
//! An admin queue's Connect makes a controller ([`super::connect::admit_admin`], registered
//! in the [`Registry`](super::registry::Registry)) and the connection goes on as that
//! controller's admin queue ([`super::admin_thread`]); an I/O queue's Connect joins its
//! controller ([`super::connect::admit_io`]) and the connection is handed to a reactor
//! ([`super::queue::attach`]). A refused Connect is answered with its status and the
//! connection closed; a malformed PDU gets a C2HTermReq.

use super::admin::AdminSetup;
use super::admin_thread::AdminConnection;
use super::connect::{self, ConnectCommand, Refusal};
use super::controller::{ControllerKind, NvmfContext};
use super::features::round_keep_alive;
use super::identify::IoFeatures;
use super::queue::{self, IoQueueTicket};
use super::registry::{NewController, RegistryError};
use crate::constants::{
    NVMF_DISCOVERY_KATO_MS, NVMF_IN_CAPSULE_DATA_BYTES, NVMF_MAX_H2C_DATA_BYTES,
};
use crate::nvmf::command::{Completion, FABRICS, FCTYPE_CONNECT};
use crate::nvmf::pdu::{
    self, DataLocation, Direction, Header, IcResp, Negotiated, Pdu, TermReq, FES_PDU_SEQUENCE_ERROR,
};
use crate::nvmf::pdu_io::{self, PduIoError};
use crate::nvmf::status;
use crate::target::handshake_stream::{HandshakeSocket, HandshakeStream};
use std::net::{SocketAddr, TcpStream};

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the connection failed before its Connect")]
    Io(#[source] std::io::Error),
    #[error("PDU exchange failed")]
    Pdu(#[source] PduIoError),
    #[error("the first PDU was a {0:?}, not ICReq")]
    NotIcReq(pdu::PduType),
    #[error("the first capsule was not a Connect")]
    NotConnect,
    #[error("Connect refused: {0}")]
    Refused(Refusal),
}

/// What the handshake leaves: an admin queue to serve (after the handshake slot is given
/// back), or nothing (an I/O queue was handed over, or the connection ended).
pub fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    context: &NvmfContext,
) -> Result<Option<AdminConnection>, HandshakeError> {
    let local_address = tcp.local_addr().map_err(HandshakeError::Io)?;
    let mut stream = HandshakeStream::new(HandshakeSocket::Tcp(tcp));
    stream
        .prepare(context.handshake_limit)
        .map_err(HandshakeError::Io)?;
    let mut buffer = Vec::new();
    let mut scratch = Vec::new();
    // The ICReq: nothing has been negotiated yet.
    let initial = Negotiated::initial(0);
    let received = read_or_terminate(&mut stream, &mut buffer, &initial, &mut scratch)
        .map_err(HandshakeError::Pdu)?;
    let icreq = match received.header {
        Header::IcReq(icreq) => icreq,
        other => {
            let other = other.pdu_type();
            terminate(
                &mut stream,
                FES_PDU_SEQUENCE_ERROR,
                0,
                &initial,
                &mut scratch,
            );
            return Err(HandshakeError::NotIcReq(other));
        }
    };
    let negotiated = Negotiated {
        header_digest: icreq.header_digest,
        data_digest: icreq.data_digest,
        host_pda: icreq.host_pda,
        controller_pda: 0,
        max_data_bytes: NVMF_IN_CAPSULE_DATA_BYTES as u32,
    };
    let icresp = Header::IcResp(IcResp {
        controller_pda: 0,
        header_digest: icreq.header_digest,
        data_digest: icreq.data_digest,
        max_h2c_data_bytes: NVMF_MAX_H2C_DATA_BYTES,
    });
    // ICResp goes without digests whatever was agreed: they start after it.
    pdu_io::write_pdu(&mut stream, &icresp, &[], &initial, &mut scratch)
        .map_err(HandshakeError::Pdu)?;
    let received = read_or_terminate(&mut stream, &mut buffer, &negotiated, &mut scratch)
        .map_err(HandshakeError::Pdu)?;
    let Header::CapsuleCmd(command) = received.header else {
        terminate(
            &mut stream,
            FES_PDU_SEQUENCE_ERROR,
            0,
            &negotiated,
            &mut scratch,
        );
        return Err(HandshakeError::NotConnect);
    };
    let answer = |stream: &mut HandshakeStream,
                  scratch: &mut Vec<u8>,
                  completion: Completion|
     -> Result<(), HandshakeError> {
        pdu_io::write_pdu(
            stream,
            &Header::CapsuleResp(completion),
            &[],
            &negotiated,
            scratch,
        )
        .map_err(HandshakeError::Pdu)
    };
    let refuse = |stream: &mut HandshakeStream, scratch: &mut Vec<u8>, refusal: Refusal| {
        let completion =
            Completion::new(command.cid(), refusal.status).with_result(u64::from(refusal.result));
        answer(stream, scratch, completion)?;
        Err(HandshakeError::Refused(refusal))
    };
    if command.opcode() != FABRICS || command.fctype() != FCTYPE_CONNECT {
        let completion = Completion::new(command.cid(), status::COMMAND_SEQUENCE_ERROR);
        answer(&mut stream, &mut scratch, completion)?;
        return Err(HandshakeError::NotConnect);
    }
    // The Connect data must be in the capsule (TP 8000 has hosts send it so).
    match pdu::data_location(
        &command,
        received.data.len(),
        NVMF_IN_CAPSULE_DATA_BYTES as u32,
    ) {
        Ok(DataLocation::InCapsule { .. }) => {}
        Ok(_) => {
            return refuse(
                &mut stream,
                &mut scratch,
                Refusal::of(status::DATA_SGL_LENGTH_INVALID),
            )
        }
        Err(status) => return refuse(&mut stream, &mut scratch, Refusal::of(status)),
    }
    let connect = ConnectCommand::of(&command);
    let data = match connect::parse_data(received.data) {
        Ok(data) => data,
        Err(refusal) => return refuse(&mut stream, &mut scratch, refusal),
    };
    // The Connect is the queue's first command: the head moved past it, unless the host
    // turned SQ flow control off (SQHD is then reserved).
    let sq_head = u16::from(!connect.sq_flow_control_disabled());
    if connect.qid == 0 {
        let snapshot = context.published.load();
        let grant = match connect::admit_admin(&snapshot, &context.nqn_base, &connect, &data) {
            Ok(grant) => grant,
            Err(refusal) => return refuse(&mut stream, &mut scratch, refusal),
        };
        let left_out = super::subsystem::namespaces_left_out(&snapshot, &grant.host);
        if left_out > 0 {
            log::warn!(
                "NVMe/TCP {peer}: host {} has {left_out} VPs beyond the {} namespaces a \
                 subsystem shows (the first by LUN are served)",
                grant.host,
                crate::constants::MAX_NAMESPACES_PER_SUBSYSTEM
            );
        }
        drop(snapshot);
        let registered = match context.registry.add(NewController {
            kind: grant.kind,
            host: grant.host,
            hostnqn: data.hostnqn.clone(),
            hostid: data.hostid,
            subnqn: data.subnqn.clone(),
            peer: peer.to_string(),
            kato_ms: match (grant.kind, connect.kato_ms) {
                (ControllerKind::Discovery, 0) => NVMF_DISCOVERY_KATO_MS,
                (_, kato_ms) => round_keep_alive(kato_ms),
            },
        }) {
            Ok(registered) => registered,
            Err(RegistryError::Full | RegistryError::DiscoveryFull | RegistryError::HostFull) => {
                return refuse(
                    &mut stream,
                    &mut scratch,
                    Refusal::of(status::CONNECT_CONTROLLER_BUSY),
                )
            }
        };
        let shared = registered.shared().clone();
        let mut completion =
            Completion::new(command.cid(), status::SUCCESS).with_result(u64::from(shared.cntlid));
        completion.sq_head = sq_head;
        answer(&mut stream, &mut scratch, completion)?;
        log::info!(
            "NVMe/TCP {peer}: {} connected controller {} of {} ({:?}, KATO {} ms)",
            data.hostnqn,
            shared.cntlid,
            data.subnqn,
            shared.kind,
            shared.kato_ms.load(std::sync::atomic::Ordering::Acquire),
        );
        stream.clear_deadline();
        let tcp = match stream.into_fd() {
            Ok(fd) => TcpStream::from(fd),
            Err(error) => return Err(HandshakeError::Io(error)),
        };
        return Ok(Some(AdminConnection {
            stream: tcp,
            registered,
            negotiated,
            sqsize: connect.sqsize,
            sq_flow_control_disabled: connect.sq_flow_control_disabled(),
            setup: AdminSetup {
                published: context.published.clone(),
                nqn_base: context.nqn_base.clone(),
                local_address,
                io_features: IoFeatures::SDS,
            },
            peer,
        }));
    }
    let controller = match connect::admit_io(&context.registry, &connect, &data) {
        Ok(controller) => controller,
        Err(refusal) => return refuse(&mut stream, &mut scratch, refusal),
    };
    let Some(place) = context.reactor_load.reserve() else {
        return refuse(
            &mut stream,
            &mut scratch,
            Refusal::of(status::CONNECT_CONTROLLER_BUSY),
        );
    };
    let mut completion =
        Completion::new(command.cid(), status::SUCCESS).with_result(u64::from(controller.cntlid));
    completion.sq_head = sq_head;
    completion.sq_id = connect.qid;
    answer(&mut stream, &mut scratch, completion)?;
    log::info!(
        "NVMe/TCP {peer}: I/O queue {} (size {}) of controller {} connected",
        connect.qid,
        u32::from(connect.sqsize) + 1,
        controller.cntlid
    );
    stream.clear_deadline();
    queue::attach(
        IoQueueTicket {
            stream,
            leftover: Vec::new(),
            controller,
            qid: connect.qid,
            sqsize: connect.sqsize,
            sq_flow_control_disabled: connect.sq_flow_control_disabled(),
            header_digest: negotiated.header_digest,
            data_digest: negotiated.data_digest,
            host_pda: negotiated.host_pda,
            place,
        },
        context,
    );
    Ok(None)
}

/// Reads one PDU from the host; a malformed one is answered with a C2HTermReq that names the
/// error (FES, FEI) before the error is returned.
pub fn read_or_terminate<'b, S: std::io::Read + std::io::Write>(
    stream: &mut S,
    buffer: &'b mut Vec<u8>,
    negotiated: &Negotiated,
    scratch: &mut Vec<u8>,
) -> Result<Pdu<'b>, PduIoError> {
    match pdu_io::read_pdu(stream, buffer, Direction::HostToController, negotiated) {
        Ok(received) => Ok(received),
        Err(PduIoError::Pdu(error)) => {
            let term = TermReq::for_error(&error);
            terminate(stream, term.fes, term.fei, negotiated, scratch);
            Err(PduIoError::Pdu(error))
        }
        Err(error) => Err(error),
    }
}

/// Sends a C2HTermReq (best effort: the connection ends either way).
pub fn terminate<S: std::io::Write>(
    stream: &mut S,
    fes: u16,
    fei: u32,
    negotiated: &Negotiated,
    scratch: &mut Vec<u8>,
) {
    let header = Header::C2HTermReq(TermReq { fes, fei });
    let _ = pdu_io::write_pdu(stream, &header, &[], negotiated, scratch);
}
