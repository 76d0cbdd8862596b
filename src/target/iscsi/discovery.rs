//! Discovery sessions (RFC 7143 §4.3 and appendix C), served whole on the handshake thread
//! that ran their login: they carry no SCSI, only Text Requests with `SendTargets`, NOP-Outs
//! and a Logout.
//!
//! `SendTargets=All` (or `=<this target's name>`) answers `TargetName=<name>` and
//! `TargetAddress=<the address the initiator reached>,1` — but only to an initiator whose host
//! has at least one virtual path in the snapshot published when the request comes; anyone
//! else gets an empty answer, so an initiator learns of nothing it may not use; a value that is
//! neither `All` nor an iSCSI name is answered `SendTargets=Reject`. An answer
//! longer than the initiator's MaxRecvDataSegmentLength goes out in parts (F=0, C=1, a target
//! transfer tag the initiator sends back to ask for the next). Any other PDU is rejected
//! (Reject, protocol error) and the session goes on; the whole session, login included, must
//! end within the handshake's deadline.

use super::login::{LoginOutcome, ISCSI_COMMAND_WINDOW, TARGET_PORTAL_GROUP_TAG};
use super::params::{self, Answer};
use super::pdu::{
    reject, InitiatorPdu, LogoutResponse, NopIn, Reject, Sequence, TextRequest, TextResponse,
    BHS_BYTES, RESERVED_TAG,
};
use super::pdu_io::{read_pdu, write_pdu, Digests, PduIoError};
use crate::constants::{MAX_ISCSI_DISCOVERY_PDUS, MAX_ISCSI_TEXT_BYTES};
use crate::domain::snapshot::{Published, Snapshot};
use std::io::{Read, Write};
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Connection(#[from] PduIoError),
    #[error("more than {MAX_ISCSI_DISCOVERY_PDUS} PDUs in one discovery session")]
    TooManyPdus,
    #[error("more than {MAX_ISCSI_TEXT_BYTES} bytes of text in one request")]
    TextTooLong,
}

/// What a discovery session answers with.
pub struct DiscoverySetup<'a> {
    pub published: &'a Published,
    pub target_name: &'a str,
    /// The address the initiator connected to: the portal it is told to use.
    pub portal: SocketAddr,
}

/// The tag of a partial Text Response (any value but 0xffffffff).
const CONTINUE_TAG: u32 = 1;

struct Session<'a> {
    setup: &'a DiscoverySetup<'a>,
    outcome: &'a LoginOutcome,
    digests: Digests,
    stat_sn: u32,
    exp_cmd_sn: u32,
    /// The rest of an answer longer than one PDU, sent part by part.
    pending: Vec<u8>,
    /// Text of a request continued over several PDUs (C bit), gathered.
    gathered: Vec<u8>,
}

/// Serves a discovery session until its Logout (Ok) or its end.
pub fn serve<S: Read + Write>(
    stream: &mut S,
    outcome: &LoginOutcome,
    setup: &DiscoverySetup<'_>,
) -> Result<(), DiscoveryError> {
    let mut session = Session {
        setup,
        outcome,
        digests: Digests {
            header: outcome.params.header_digest,
            data: outcome.params.data_digest,
        },
        stat_sn: outcome.stat_sn,
        exp_cmd_sn: outcome.cmd_sn,
        pending: Vec::new(),
        gathered: Vec::new(),
    };
    for _ in 0..MAX_ISCSI_DISCOVERY_PDUS {
        let received = read_pdu(
            stream,
            session.digests,
            outcome.params.max_recv_data_segment_length,
        )?;
        let pdu = match InitiatorPdu::parse(&received.bhs) {
            Ok(pdu) => pdu,
            Err(_) => {
                session.reject(stream, &received.bhs, reject::PROTOCOL_ERROR)?;
                continue;
            }
        };
        match pdu {
            InitiatorPdu::Text(request) => session.text(stream, &request, &received.data)?,
            InitiatorPdu::NopOut(nop) => {
                session.advance(nop.immediate, nop.cmd_sn);
                // A NOP-Out with the reserved ITT answers a NOP-In; nothing goes back.
                if nop.initiator_task_tag != RESERVED_TAG {
                    let mut bhs = [0u8; BHS_BYTES];
                    NopIn {
                        data_segment_length: received.data.len() as u32,
                        lun: nop.lun,
                        initiator_task_tag: nop.initiator_task_tag,
                        target_transfer_tag: RESERVED_TAG,
                        sequence: session.next_sequence(),
                    }
                    .write(&mut bhs);
                    write_pdu(stream, &bhs, &received.data, session.digests)?;
                }
            }
            InitiatorPdu::Logout(logout) => {
                session.advance(logout.immediate, logout.cmd_sn);
                let mut bhs = [0u8; BHS_BYTES];
                LogoutResponse {
                    response: super::pdu::logout::CLOSED,
                    initiator_task_tag: logout.initiator_task_tag,
                    sequence: session.next_sequence(),
                    time2wait: 0,
                    time2retain: 0,
                }
                .write(&mut bhs);
                write_pdu(stream, &bhs, &[], session.digests)?;
                return Ok(());
            }
            // No SCSI, no task management, no SNACK (ErrorRecoveryLevel 0), no second login.
            _ => session.reject(stream, &received.bhs, reject::PROTOCOL_ERROR)?,
        }
    }
    Err(DiscoveryError::TooManyPdus)
}

impl Session<'_> {
    /// A non-immediate request takes its CmdSN.
    fn advance(&mut self, immediate: bool, cmd_sn: u32) {
        if !immediate && cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        }
    }

    fn next_sequence(&mut self) -> Sequence {
        let sequence = Sequence {
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.exp_cmd_sn.wrapping_add(ISCSI_COMMAND_WINDOW - 1),
        };
        self.stat_sn = self.stat_sn.wrapping_add(1);
        sequence
    }

    fn reject<S: Write>(
        &mut self,
        stream: &mut S,
        rejected: &[u8; BHS_BYTES],
        reason: u8,
    ) -> Result<(), DiscoveryError> {
        let mut bhs = [0u8; BHS_BYTES];
        Reject {
            reason,
            sequence: self.next_sequence(),
            data_sn: 0,
        }
        .write(&mut bhs);
        write_pdu(stream, &bhs, rejected, self.digests)?;
        Ok(())
    }

    fn text<S: Write>(
        &mut self,
        stream: &mut S,
        request: &TextRequest,
        data: &[u8],
    ) -> Result<(), DiscoveryError> {
        self.advance(request.immediate, request.cmd_sn);
        if request.target_transfer_tag == CONTINUE_TAG && !self.pending.is_empty() {
            // The initiator asks for the next part of the answer.
            return self.send_part(stream, request);
        }
        self.pending.clear();
        if self.gathered.len() + data.len() > MAX_ISCSI_TEXT_BYTES {
            return Err(DiscoveryError::TextTooLong);
        }
        self.gathered.extend_from_slice(data);
        if request.continue_ {
            // More text comes; acknowledge this part with an empty response.
            return self.respond(stream, request, false, &[]);
        }
        let text = std::mem::take(&mut self.gathered);
        let mut answer = Vec::new();
        match params::parse_text(&text) {
            Ok(pairs) => {
                for (key, value) in pairs {
                    if key == "SendTargets" {
                        self.send_targets(value, &mut answer);
                    } else if let Some(text) = Answer::NotUnderstood.text() {
                        params::push_pair(&mut answer, key, text);
                    }
                }
            }
            Err(error) => {
                log::info!(
                    "iSCSI {}: malformed text in a discovery session: {error}",
                    self.outcome.initiator_name
                );
                let mut bhs = [0u8; BHS_BYTES];
                super::pdu::write_text_request(request, &mut bhs);
                return self.reject(stream, &bhs, reject::PROTOCOL_ERROR);
            }
        }
        self.pending = answer;
        self.send_part(stream, request)
    }

    fn send_targets(&self, value: &str, answer: &mut Vec<u8>) {
        send_targets(
            &self.setup.published.load(),
            &self.outcome.initiator_name,
            self.setup.target_name,
            self.setup.portal,
            value,
            answer,
        );
    }

    /// Sends as much of the pending answer as one PDU may carry.
    fn send_part<S: Write>(
        &mut self,
        stream: &mut S,
        request: &TextRequest,
    ) -> Result<(), DiscoveryError> {
        let limit = self.outcome.params.max_xmit_data_segment_length as usize;
        let take = self.pending.len().min(limit);
        let part: Vec<u8> = self.pending.drain(..take).collect();
        let last = self.pending.is_empty();
        self.respond(stream, request, last, &part)
    }

    fn respond<S: Write>(
        &mut self,
        stream: &mut S,
        request: &TextRequest,
        last: bool,
        data: &[u8],
    ) -> Result<(), DiscoveryError> {
        let mut bhs = [0u8; BHS_BYTES];
        TextResponse {
            final_: last,
            continue_: !last && !self.pending.is_empty(),
            data_segment_length: data.len() as u32,
            lun: request.lun,
            initiator_task_tag: request.initiator_task_tag,
            target_transfer_tag: if last { RESERVED_TAG } else { CONTINUE_TAG },
            sequence: self.next_sequence(),
        }
        .write(&mut bhs);
        write_pdu(stream, &bhs, data, self.digests)?;
        Ok(())
    }
}

/// The answer to `SendTargets=<value>` from `initiator`, appended to `answer`: this target's
/// name and portal when the initiator's host has a virtual path in `snapshot` and `value` is
/// `All` or this target's name; nothing for another iSCSI name or a host with no VP; and
/// `SendTargets=Reject` for a value that is neither `All` nor an iSCSI name (libiscsi's
/// `iSCSI.iSCSISendTargets.Invalid` sends `Alle` and `A` and expects a failure). A normal
/// session's Text Request may ask it too (RFC 7143 §13.3); there an empty value means "this
/// session's target", so the caller passes the target's name instead.
pub fn send_targets(
    snapshot: &Snapshot,
    initiator: &str,
    target_name: &str,
    portal: SocketAddr,
    value: &str,
    answer: &mut Vec<u8>,
) {
    let is_name = ["iqn.", "eui.", "naa."].iter().any(|prefix| {
        value
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    });
    if value != "All" && !is_name {
        params::push_pair(answer, "SendTargets", "Reject");
        return;
    }
    let visible = snapshot
        .host_by_iqn(initiator)
        .is_some_and(|host| snapshot.paths_of(&host.name).next().is_some());
    if visible && (value == "All" || value.eq_ignore_ascii_case(target_name)) {
        params::push_pair(answer, "TargetName", target_name);
        params::push_pair(
            answer,
            "TargetAddress",
            &format!("{portal},{TARGET_PORTAL_GROUP_TAG}"),
        );
    }
}
