//! The login phase (RFC 7143 §6), on a blocking stream on a handshake thread: the security
//! stage (AuthMethod CHAP or None), the operational stage (the keys of [`super::params`]), and
//! the move to full-feature phase with a TSIH.
//!
//! Who logs in: the initiator name of the first Login Request names the sds host (its record's
//! `iqn`). A normal session needs such a host with at least one virtual path, and the target
//! name this server has; a discovery session is open to any initiator (one no host names
//! simply discovers nothing). A host with CHAP credentials must authenticate with CHAP (and,
//! when the initiator asks, the target proves itself with the host's mutual secret); a host
//! without them logs in with AuthMethod=None.
//!
//! Every refusal is a Login Response with the status RFC 7143 §11.13.5 gives the reason
//! (authentication 02/01, authorization 02/02, wrong target 02/03, version 02/05, missing key
//! 02/07, session type 02/09, a PDU other than a login 02/0B, malformed text 02/00, a target
//! fault 03/xx), and then the connection closes. A PDU that cannot even be framed (unknown
//! opcode, data segment beyond [`ISCSI_LOGIN_DATA_SEGMENT_BYTES`]) closes the connection
//! after a 02/00 answer; a connection that ends mid-PDU just ends.

use super::chap::{self, Challenge, CHAP_MD5};
use super::params::{self, Answer, Negotiated, Negotiation, Offer, SessionType, TextError};
use super::pdu::{
    login_status, stage, Bhs, InitiatorPdu, LoginRequest, LoginResponse, PduError, Sequence,
    ISCSI_VERSION,
};
use super::pdu_io::{read_pdu, write_pdu, Digests, PduIoError};
use super::registry::{Registry, RegistryEntry, RegistryError, SessionInfo, SessionKind};
use crate::constants::{
    ISCSI_LOGIN_DATA_SEGMENT_BYTES, MAX_ISCSI_LOGIN_PDUS, MAX_ISCSI_TEXT_BYTES,
};
use crate::domain::host::{Host, HostSession};
use crate::domain::snapshot::Snapshot;
use crate::target::reactor_load::{ReactorLoad, ReactorPlace};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

/// The commands an initiator may have outstanding (MaxCmdSN − ExpCmdSN + 1) as the login
/// ends; the full-feature session moves the window from there.
pub const ISCSI_COMMAND_WINDOW: u32 = crate::constants::ISCSI_CMD_WINDOW;
/// The StatSN of the first Login Response (any value will do, §11.13.4).
const FIRST_STAT_SN: u32 = 1;
/// The target portal group of the one portal this target has.
pub const TARGET_PORTAL_GROUP_TAG: u16 = 1;

/// Why a login ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Connection(#[from] PduIoError),
    #[error("refused with status {:02x}/{:02x}: {reason}", status.0, status.1)]
    Refused { status: (u8, u8), reason: String },
    #[error("more than {MAX_ISCSI_LOGIN_PDUS} login PDUs")]
    TooManyPdus,
}

/// What the login needs to know.
pub struct LoginSetup<'a> {
    /// The snapshot the host is resolved in, once, for the whole login.
    pub snapshot: Arc<Snapshot>,
    pub target_name: &'a str,
    pub offer: Offer,
    pub registry: &'a Arc<Registry>,
    /// The initiator's address, for the registry and the logs.
    pub peer: String,
    /// Where a normal session gets its place on a reactor (taken before the final response,
    /// so a full server refuses the login instead of dropping a session it accepted); `None`
    /// in tests that never reach a normal session.
    pub reactor_load: Option<&'a Arc<ReactorLoad>>,
}

/// What a normal session holds while it lives: one of its host's sessions (`max_sessions`)
/// and a place on a reactor, both given back when dropped.
pub struct SessionTicket {
    pub host: HostSession,
    pub place: ReactorPlace,
}

impl std::fmt::Debug for SessionTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTicket")
            .field("reactor", &self.place.reactor())
            .finish_non_exhaustive()
    }
}

/// A normal session at the end of its login, as the listener hands it to
/// `session::attach`: its socket (blocking, no timeouts) and everything the login settled.
pub struct LoggedIn {
    pub stream: TcpStream,
    pub initiator_name: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    /// The sds host the initiator name matched.
    pub host: String,
    pub params: Negotiated,
    /// The CmdSN expected next (ExpCmdSN).
    pub cmd_sn: u32,
    /// The StatSN of the next response.
    pub stat_sn: u32,
    pub peer: SocketAddr,
    pub registry_entry: RegistryEntry,
    /// The host session and the reactor place (`ticket.place.reactor()`) it was given.
    pub ticket: SessionTicket,
}

/// A login that reached the full-feature phase.
#[derive(Debug)]
pub struct LoginOutcome {
    pub initiator_name: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub session_type: SessionType,
    /// The host the initiator name matched; always present for a normal session.
    pub host: Option<Host>,
    pub params: Negotiated,
    /// The CmdSN the target expects next.
    pub cmd_sn: u32,
    /// The StatSN of the target's next response.
    pub stat_sn: u32,
    pub registry_entry: RegistryEntry,
    /// A normal session's host session and reactor place.
    pub ticket: Option<SessionTicket>,
}

/// Where the security stage is.
#[derive(Debug)]
enum Security {
    /// No AuthMethod agreed yet.
    Open,
    /// AuthMethod=None agreed (or never asked for, and not needed).
    NoneAgreed,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    ChapChosen,
    /// The challenge sent; waiting for CHAP_N and CHAP_R.
    ChallengeSent(Challenge),
    /// The initiator proved itself (and the target too, when asked).
    Authenticated,
}

struct Failure {
    status: (u8, u8),
    reason: String,
}

fn fail(status: (u8, u8), reason: impl Into<String>) -> Failure {
    Failure {
        status,
        reason: reason.into(),
    }
}

struct Login<'a> {
    setup: &'a LoginSetup<'a>,
    first: LoginRequest,
    stat_sn: u32,
    initiator_name: String,
    session_type: SessionType,
    host: Option<Host>,
    security: Security,
    negotiation: Negotiation,
    /// Whether the first response (which carries TargetPortalGroupTag) went out.
    answered_once: bool,
    /// Whether the first request's text has been read for who the initiator is.
    identified: bool,
    /// The latest stage a request was in: the login never goes back to an earlier one.
    stage_reached: u8,
}

/// Runs a login on `stream` to its end: the full-feature phase, or a refusal (sent, then
/// returned as an error).
pub fn login<S: Read + Write>(
    stream: &mut S,
    setup: &LoginSetup<'_>,
) -> Result<LoginOutcome, LoginError> {
    let received = read_login_pdu(stream)?;
    let first = match InitiatorPdu::parse(&received.0) {
        Ok(InitiatorPdu::Login(request)) => request,
        _ => {
            // Not a login at all: nothing to answer in terms the peer would understand
            // beyond the one status for it.
            return Err(refuse_raw(
                stream,
                &received.0,
                fail(
                    login_status::INVALID_DURING_LOGIN,
                    "the first PDU is not a Login Request",
                ),
            ));
        }
    };
    let mut login = Login {
        setup,
        first,
        stat_sn: FIRST_STAT_SN,
        initiator_name: String::new(),
        session_type: SessionType::Normal,
        host: None,
        security: Security::Open,
        negotiation: Negotiation::new(setup.offer, SessionType::Normal),
        answered_once: false,
        identified: false,
        stage_reached: stage::SECURITY,
    };
    match login.run(stream, received) {
        Ok(outcome) => Ok(outcome),
        Err(Step::Io(error)) => Err(error),
        Err(Step::Refuse(failure)) => {
            let _ = login.respond_failure(stream, &failure);
            Err(LoginError::Refused {
                status: failure.status,
                reason: failure.reason,
            })
        }
    }
}

enum Step {
    Io(LoginError),
    Refuse(Failure),
}

impl From<Failure> for Step {
    fn from(failure: Failure) -> Self {
        Self::Refuse(failure)
    }
}

impl From<PduIoError> for Step {
    fn from(error: PduIoError) -> Self {
        Self::Io(LoginError::Connection(error))
    }
}

/// Reads a login-phase PDU; a PDU that cannot be framed is answered 02/00 and ends the login.
fn read_login_pdu<S: Read + Write>(stream: &mut S) -> Result<(Bhs, Vec<u8>), LoginError> {
    match read_pdu(stream, Digests::default(), ISCSI_LOGIN_DATA_SEGMENT_BYTES) {
        Ok(received) => Ok((received.bhs, received.data)),
        Err(PduIoError::Pdu(error)) => {
            // The BHS was read; answer with what can be said without trusting the rest.
            let status = match error {
                PduError::UnknownOpcode(_) | PduError::NotInitiatorOpcode(_) => {
                    login_status::INVALID_DURING_LOGIN
                }
                _ => login_status::INITIATOR_ERROR_GENERIC,
            };
            let mut bhs = [0u8; 48];
            write_status(&mut bhs, None, FIRST_STAT_SN, 0, 0, status);
            let _ = write_pdu(stream, &bhs, &[], Digests::default());
            Err(LoginError::Refused {
                status,
                reason: error.to_string(),
            })
        }
        Err(error) => Err(error.into()),
    }
}

/// Answers a first PDU that is not a login, echoing its ITT.
fn refuse_raw<S: Write>(stream: &mut S, bhs: &Bhs, failure: Failure) -> LoginError {
    let mut out = [0u8; 48];
    let itt = u32::from_be_bytes([bhs[16], bhs[17], bhs[18], bhs[19]]);
    write_status(&mut out, None, FIRST_STAT_SN, itt, 0, failure.status);
    let _ = write_pdu(stream, &out, &[], Digests::default());
    LoginError::Refused {
        status: failure.status,
        reason: failure.reason,
    }
}

/// A Login Response carrying a failure status: no stage, no transit, TSIH 0.
fn write_status(
    bhs: &mut Bhs,
    request: Option<&LoginRequest>,
    stat_sn: u32,
    itt: u32,
    cmd_sn: u32,
    status: (u8, u8),
) {
    LoginResponse {
        transit: false,
        continue_: false,
        current_stage: 0,
        next_stage: 0,
        version_max: ISCSI_VERSION,
        version_active: ISCSI_VERSION,
        data_segment_length: 0,
        isid: request.map(|r| r.isid).unwrap_or_default(),
        tsih: 0,
        initiator_task_tag: request.map_or(itt, |r| r.initiator_task_tag),
        sequence: Sequence {
            stat_sn,
            exp_cmd_sn: cmd_sn,
            max_cmd_sn: cmd_sn,
        },
        status_class: status.0,
        status_detail: status.1,
    }
    .write(bhs);
}

impl Login<'_> {
    fn run<S: Read + Write>(
        &mut self,
        stream: &mut S,
        first: (Bhs, Vec<u8>),
    ) -> Result<LoginOutcome, Step> {
        if self.first.version_min > ISCSI_VERSION {
            return Err(fail(
                login_status::UNSUPPORTED_VERSION,
                format!("version {} and later only", self.first.version_min),
            )
            .into());
        }
        if self.first.tsih != 0 {
            // MaxConnections=1 and ErrorRecoveryLevel=0: a connection never joins an
            // existing session.
            let status = if self.setup.registry.has_tsih(self.first.tsih) {
                login_status::TOO_MANY_CONNECTIONS
            } else {
                login_status::SESSION_DOES_NOT_EXIST
            };
            return Err(fail(status, format!("TSIH {} given", self.first.tsih)).into());
        }
        let mut pdu = first;
        let mut pdus = 1;
        loop {
            let InitiatorPdu::Login(request) = InitiatorPdu::parse(&pdu.0)
                .map_err(|error| fail(login_status::INVALID_DURING_LOGIN, error.to_string()))?
            else {
                return Err(fail(
                    login_status::INVALID_DURING_LOGIN,
                    "a PDU other than a Login Request during login",
                )
                .into());
            };
            if request.isid != self.first.isid || request.tsih != self.first.tsih {
                return Err(fail(
                    login_status::INITIATOR_ERROR_GENERIC,
                    "the ISID or TSIH changed during login",
                )
                .into());
            }
            // Text continued over several PDUs (C bit) is gathered first; each part is
            // acknowledged with an empty response.
            let mut text = pdu.1;
            let mut last = request;
            while last.continue_ {
                self.respond(stream, &last, false, &[], 0)?;
                pdus += 1;
                if pdus > MAX_ISCSI_LOGIN_PDUS {
                    return Err(Step::Io(LoginError::TooManyPdus));
                }
                let next = read_login_pdu(stream).map_err(Step::Io)?;
                let Ok(InitiatorPdu::Login(request)) = InitiatorPdu::parse(&next.0) else {
                    return Err(fail(
                        login_status::INVALID_DURING_LOGIN,
                        "a PDU other than a Login Request during login",
                    )
                    .into());
                };
                if text.len() + next.1.len() > MAX_ISCSI_TEXT_BYTES {
                    return Err(fail(
                        login_status::INITIATOR_ERROR_GENERIC,
                        TextError::TooLong(text.len() + next.1.len()).to_string(),
                    )
                    .into());
                }
                text.extend_from_slice(&next.1);
                last = request;
            }
            if let Some(outcome) = self.step(stream, &last, &text)? {
                return Ok(outcome);
            }
            pdus += 1;
            if pdus > MAX_ISCSI_LOGIN_PDUS {
                return Err(Step::Io(LoginError::TooManyPdus));
            }
            pdu = read_login_pdu(stream).map_err(Step::Io)?;
        }
    }

    /// One login request (its whole text): answers it, and returns the outcome once the
    /// initiator and the target agree to go to full-feature phase.
    fn step<S: Read + Write>(
        &mut self,
        stream: &mut S,
        request: &LoginRequest,
        text: &[u8],
    ) -> Result<Option<LoginOutcome>, Step> {
        let pairs = params::parse_text(text)
            .map_err(|error| fail(login_status::INITIATOR_ERROR_GENERIC, error.to_string()))?;
        // The first request's whole text (however many PDUs carried it) names the initiator.
        if !self.identified {
            self.identify(&pairs)?;
            self.identified = true;
        }
        let current = request.current_stage;
        if current != stage::SECURITY && current != stage::OPERATIONAL {
            return Err(fail(
                login_status::INITIATOR_ERROR_GENERIC,
                format!("login stage {current}"),
            )
            .into());
        }
        if current < self.stage_reached {
            return Err(fail(
                login_status::INITIATOR_ERROR_GENERIC,
                format!("login stage {current} after stage {}", self.stage_reached),
            )
            .into());
        }
        self.stage_reached = current;
        if current == stage::OPERATIONAL {
            self.leave_security()?;
        }
        let mut reply = Vec::new();
        if !self.answered_once && self.session_type == SessionType::Normal {
            params::push_pair(
                &mut reply,
                "TargetPortalGroupTag",
                &TARGET_PORTAL_GROUP_TAG.to_string(),
            );
        }
        for (key, value) in &pairs {
            self.answer(current, key, value, &mut reply)?;
        }
        if current == stage::SECURITY {
            self.chap(&pairs, &mut reply)?;
        }
        // May the initiator move on? Out of the security stage only once it is done.
        let mut transit = request.transit;
        let next = request.next_stage;
        if transit {
            if next <= current || next == 2 || next > stage::FULL_FEATURE {
                return Err(fail(
                    login_status::INITIATOR_ERROR_GENERIC,
                    format!("login stage {current} to {next}"),
                )
                .into());
            }
            if current == stage::SECURITY {
                match self.security {
                    Security::ChapChosen | Security::ChallengeSent(_) => transit = false,
                    _ => self.leave_security()?,
                }
            }
        }
        if transit && next == stage::FULL_FEATURE {
            for (key, value) in self.negotiation.declarations() {
                params::push_pair(&mut reply, key, &value);
            }
            let outcome = self.finish()?;
            self.respond(stream, request, true, &reply, outcome.tsih)?;
            let outcome = LoginOutcome {
                stat_sn: self.stat_sn,
                ..outcome
            };
            log::info!(
                "iSCSI {}: {} logged in ({} session, TSIH {}, host {})",
                self.setup.peer,
                outcome.initiator_name,
                match outcome.session_type {
                    SessionType::Normal => "normal",
                    SessionType::Discovery => "discovery",
                },
                outcome.tsih,
                outcome.host.as_ref().map_or("none", |h| h.name.as_str())
            );
            return Ok(Some(outcome));
        }
        self.respond(stream, request, transit, &reply, 0)?;
        Ok(None)
    }

    /// The first request's InitiatorName, SessionType and TargetName, and who that is.
    fn identify(&mut self, pairs: &[(&str, &str)]) -> Result<(), Failure> {
        let find = |wanted: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == wanted)
                .map(|(_, value)| *value)
        };
        let Some(initiator) = find("InitiatorName").filter(|name| !name.is_empty()) else {
            return Err(fail(
                login_status::MISSING_PARAMETER,
                "no InitiatorName in the first login request",
            ));
        };
        self.initiator_name = initiator.to_string();
        self.session_type = match find("SessionType").unwrap_or("Normal") {
            "Normal" => SessionType::Normal,
            "Discovery" => SessionType::Discovery,
            other => {
                return Err(fail(
                    login_status::SESSION_TYPE_NOT_SUPPORTED,
                    format!("SessionType {other}"),
                ))
            }
        };
        self.negotiation.set_session_type(self.session_type);
        self.host = self.setup.snapshot.host_by_iqn(initiator).cloned();
        if self.session_type == SessionType::Discovery {
            return Ok(());
        }
        let Some(target) = find("TargetName") else {
            return Err(fail(
                login_status::MISSING_PARAMETER,
                "no TargetName in a normal session's first login request",
            ));
        };
        if !target.eq_ignore_ascii_case(self.setup.target_name) {
            return Err(fail(
                login_status::NOT_FOUND,
                format!("no target {target} here"),
            ));
        }
        let Some(host) = &self.host else {
            return Err(fail(
                login_status::AUTHORIZATION_FAILURE,
                format!("no host has the initiator name {initiator}"),
            ));
        };
        if self.setup.snapshot.paths_of(&host.name).next().is_none() {
            return Err(fail(
                login_status::AUTHORIZATION_FAILURE,
                format!("host {} has no virtual path", host.name),
            ));
        }
        Ok(())
    }

    fn chap_required(&self) -> bool {
        self.host.as_ref().is_some_and(|host| host.chap.is_some())
    }

    /// Leaving the security stage: allowed once authenticated, or when no authentication is
    /// needed.
    fn leave_security(&mut self) -> Result<(), Failure> {
        match self.security {
            Security::Authenticated | Security::NoneAgreed => Ok(()),
            Security::Open if !self.chap_required() => {
                self.security = Security::NoneAgreed;
                Ok(())
            }
            _ => Err(fail(
                login_status::AUTHENTICATION_FAILURE,
                "left the security stage without authenticating",
            )),
        }
    }

    fn answer(
        &mut self,
        current: u8,
        key: &str,
        value: &str,
        reply: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        match key {
            // Declarations the target takes note of (or already did), nothing to answer.
            "InitiatorName" | "InitiatorAlias" | "SessionType" | "TargetName" => Ok(()),
            "AuthMethod" if current == stage::SECURITY => {
                let offered: Vec<&str> = value.split(',').collect();
                let chosen = if self.chap_required() {
                    offered.contains(&"CHAP").then_some("CHAP")
                } else {
                    offered.contains(&"None").then_some("None")
                };
                match chosen {
                    Some("CHAP") => {
                        self.security = Security::ChapChosen;
                        params::push_pair(reply, key, "CHAP");
                        Ok(())
                    }
                    Some(_) => {
                        self.security = Security::NoneAgreed;
                        params::push_pair(reply, key, "None");
                        Ok(())
                    }
                    None => Err(fail(
                        login_status::AUTHENTICATION_FAILURE,
                        format!("AuthMethod {value}: none this host can use"),
                    )),
                }
            }
            // Taken together by `chap`, after the other keys of the request.
            _ if key.starts_with("CHAP_") && current == stage::SECURITY => Ok(()),
            "AuthMethod" => {
                // Only in the security stage (§13.2 "Use: LO, SO... security stage").
                params::push_pair(reply, key, "Irrelevant");
                Ok(())
            }
            _ if key.starts_with("CHAP_") => Err(fail(
                login_status::INITIATOR_ERROR_GENERIC,
                format!("{key} outside the security stage"),
            )),
            _ => {
                let answer = self
                    .negotiation
                    .answer(key, value)
                    .unwrap_or(Answer::NotUnderstood);
                if let Some(text) = answer.text() {
                    params::push_pair(reply, key, text);
                }
                Ok(())
            }
        }
    }

    /// The CHAP keys of one request, in the order RFC 7143 §12.1.3 has them: CHAP_A is
    /// answered with the challenge; CHAP_N and CHAP_R are checked against the host's
    /// credentials, and with CHAP_I and CHAP_C (mutual CHAP) the target answers in turn.
    fn chap(&mut self, pairs: &[(&str, &str)], reply: &mut Vec<u8>) -> Result<(), Failure> {
        let find = |wanted: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == wanted)
                .map(|(_, value)| *value)
        };
        if !pairs.iter().any(|(key, _)| key.starts_with("CHAP_")) {
            return Ok(());
        }
        let auth_failed = |reason: &str| fail(login_status::AUTHENTICATION_FAILURE, reason);
        match &self.security {
            Security::ChapChosen => {
                let Some(algorithms) = find("CHAP_A") else {
                    return Err(auth_failed("CHAP keys before CHAP_A"));
                };
                if !algorithms.split(',').any(|algorithm| algorithm == CHAP_MD5) {
                    return Err(auth_failed("CHAP_A without MD5 (5)"));
                }
                let challenge = Challenge::new()
                    .map_err(|error| fail(login_status::TARGET_ERROR, error.to_string()))?;
                params::push_pair(reply, "CHAP_A", CHAP_MD5);
                params::push_pair(reply, "CHAP_I", &challenge.id.to_string());
                params::push_pair(reply, "CHAP_C", &chap::encode_hex(&challenge.bytes));
                self.security = Security::ChallengeSent(challenge);
                Ok(())
            }
            Security::ChallengeSent(challenge) => {
                let Some(credentials) = self.host.as_ref().and_then(|h| h.chap.clone()) else {
                    return Err(auth_failed("no CHAP credentials"));
                };
                let (Some(user), Some(response)) = (find("CHAP_N"), find("CHAP_R")) else {
                    return Err(auth_failed("no CHAP_N and CHAP_R"));
                };
                if user != credentials.user {
                    return Err(auth_failed("CHAP_N is not the host's CHAP user"));
                }
                if !challenge.verify(credentials.secret.as_bytes(), response) {
                    return Err(auth_failed("wrong CHAP response"));
                }
                match (find("CHAP_I"), find("CHAP_C")) {
                    (None, None) => {}
                    (Some(id), Some(their_challenge)) => {
                        let (Some(mutual_user), Some(mutual_secret)) =
                            (&credentials.mutual_user, &credentials.mutual_secret)
                        else {
                            return Err(auth_failed(
                                "mutual CHAP asked for, and the host has no mutual secret",
                            ));
                        };
                        let id = params::parse_number(id)
                            .and_then(|id| u8::try_from(id).ok())
                            .ok_or_else(|| auth_failed("a CHAP_I that is not 0 to 255"))?;
                        let their_challenge = chap::decode_binary(their_challenge)
                            .map_err(|error| auth_failed(&error.to_string()))?;
                        if their_challenge.is_empty() || their_challenge == challenge.bytes {
                            return Err(auth_failed(
                                "the initiator's challenge is empty or the target's own",
                            ));
                        }
                        let proof = chap::answer(id, mutual_secret.as_bytes(), &their_challenge);
                        params::push_pair(reply, "CHAP_N", mutual_user);
                        params::push_pair(reply, "CHAP_R", &chap::encode_hex(&proof));
                    }
                    _ => return Err(auth_failed("only one of CHAP_I and CHAP_C")),
                }
                self.security = Security::Authenticated;
                Ok(())
            }
            _ => Err(auth_failed("CHAP keys out of order")),
        }
    }

    /// Gives the initiator its Login Response: the request's stage, the transit decided,
    /// `reply` as text, and the TSIH once the session exists.
    fn respond<S: Write>(
        &mut self,
        stream: &mut S,
        request: &LoginRequest,
        transit: bool,
        reply: &[u8],
        tsih: u16,
    ) -> Result<(), Step> {
        let mut bhs = [0u8; 48];
        LoginResponse {
            transit,
            continue_: false,
            current_stage: request.current_stage,
            next_stage: if transit { request.next_stage } else { 0 },
            version_max: ISCSI_VERSION,
            version_active: ISCSI_VERSION,
            data_segment_length: reply.len() as u32,
            isid: self.first.isid,
            tsih,
            initiator_task_tag: request.initiator_task_tag,
            sequence: self.sequence(),
            status_class: login_status::SUCCESS.0,
            status_detail: login_status::SUCCESS.1,
        }
        .write(&mut bhs);
        write_pdu(stream, &bhs, reply, Digests::default())?;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        self.answered_once = true;
        Ok(())
    }

    fn sequence(&self) -> Sequence {
        // A Login Request is immediate: the CmdSN it carries is the one expected next.
        let exp_cmd_sn = self.first.cmd_sn;
        Sequence {
            stat_sn: self.stat_sn,
            exp_cmd_sn,
            max_cmd_sn: exp_cmd_sn.wrapping_add(ISCSI_COMMAND_WINDOW - 1),
        }
    }

    fn respond_failure<S: Write>(
        &mut self,
        stream: &mut S,
        failure: &Failure,
    ) -> Result<(), PduIoError> {
        log::info!(
            "iSCSI {}: login of {} refused ({:02x}/{:02x}): {}",
            self.setup.peer,
            if self.initiator_name.is_empty() {
                "an unnamed initiator"
            } else {
                &self.initiator_name
            },
            failure.status.0,
            failure.status.1,
            failure.reason
        );
        let mut bhs = [0u8; 48];
        write_status(
            &mut bhs,
            Some(&self.first),
            self.stat_sn,
            0,
            self.first.cmd_sn,
            failure.status,
        );
        write_pdu(stream, &bhs, &[], Digests::default())
    }

    /// The session exists from here: registered, with its TSIH.
    fn finish(&mut self) -> Result<LoginOutcome, Failure> {
        if self.session_type == SessionType::Normal && self.host.is_none() {
            return Err(fail(
                login_status::AUTHORIZATION_FAILURE,
                "a normal session without a host",
            ));
        }
        let params = self.negotiation.result;
        let kind = match self.session_type {
            SessionType::Normal => SessionKind::Normal,
            SessionType::Discovery => SessionKind::Discovery,
        };
        let info = SessionInfo {
            id: 0,
            initiator: self.initiator_name.clone(),
            host: self
                .host
                .as_ref()
                .map(|h| h.name.clone())
                .unwrap_or_default(),
            isid: self.first.isid.iter().map(|b| format!("{b:02x}")).collect(),
            tsih: 0,
            target: self.setup.target_name.to_string(),
            peer: self.setup.peer.clone(),
            kind,
            negotiated: params
                .named()
                .into_iter()
                .map(|(key, value)| (key.to_string(), value))
                .collect(),
            header_digest: params.header_digest,
            data_digest: params.data_digest,
            luns: Vec::new(),
        };
        let ticket = match (&self.host, self.setup.reactor_load) {
            (Some(host), Some(load)) if self.session_type == SessionType::Normal => {
                let host_session = host.take_session().map_err(|open| {
                    fail(
                        login_status::OUT_OF_RESOURCES,
                        format!(
                            "host {} already has {open} sessions, its max_sessions",
                            host.name
                        ),
                    )
                })?;
                let place = load.reserve().ok_or_else(|| {
                    fail(
                        login_status::OUT_OF_RESOURCES,
                        format!("the server already serves its {} sessions", load.capacity()),
                    )
                })?;
                Some(SessionTicket {
                    host: host_session,
                    place,
                })
            }
            _ => None,
        };
        let registry_entry = self.setup.registry.add(info).map_err(|error| match error {
            RegistryError::Full => fail(login_status::OUT_OF_RESOURCES, error.to_string()),
        })?;
        Ok(LoginOutcome {
            initiator_name: self.initiator_name.clone(),
            isid: self.first.isid,
            tsih: registry_entry.tsih(),
            session_type: self.session_type,
            host: self.host.clone(),
            params,
            cmd_sn: self.first.cmd_sn,
            stat_sn: self.stat_sn,
            registry_entry,
            ticket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::discovery::{self, DiscoverySetup};
    use super::super::pdu;
    use super::super::test_initiator::TestInitiator;
    use super::*;
    use crate::domain::snapshot::Published;
    use crate::store::records::ChapRecord;
    use std::os::unix::net::UnixStream;
    use std::thread::JoinHandle;

    type Pairs = Vec<(&'static str, &'static str)>;
    type Responder = fn(u8, &[u8]) -> String;
    const TARGET: &str = "iqn.2026-11.org.sds:test";
    const KNOWN: &str = "iqn.2026-11.org.example:known";
    const SECRET: &str = "twelve-bytes-secret";
    const MUTUAL: &str = "the-targets-secret";

    fn host(name: &str, iqn: &str, chap: Option<ChapRecord>) -> Host {
        Host {
            name: name.into(),
            tls_subject: None,
            iqn: Some(iqn.into()),
            nqn: None,
            chap: chap.map(Arc::new),
            addresses: Vec::new(),
            max_sessions: 4,
            sessions: Arc::default(),
        }
    }

    fn chap_record(mutual: bool) -> ChapRecord {
        ChapRecord {
            user: "known-user".into(),
            secret: SECRET.into(),
            mutual_user: mutual.then(|| "target-user".into()),
            mutual_secret: mutual.then(|| MUTUAL.into()),
        }
    }

    /// A target over a socket pair: the login, then a discovery session when that is what
    /// it became. Returns the initiator's end and the target's result.
    fn target(hosts: Vec<Host>) -> (TestInitiator, JoinHandle<Result<LoginOutcome, String>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let published = Arc::new(Published::default());
        published.publish(Snapshot {
            hosts,
            ..Snapshot::default()
        });
        let registry = Registry::new();
        let thread = std::thread::spawn(move || {
            let mut stream = ours;
            let setup = LoginSetup {
                snapshot: published.load(),
                target_name: TARGET,
                offer: Offer::default(),
                registry: &registry,
                peer: "test".into(),
                reactor_load: None,
            };
            let outcome = login(&mut stream, &setup).map_err(|e| e.to_string())?;
            if outcome.session_type == SessionType::Discovery {
                let setup = DiscoverySetup {
                    published: &published,
                    target_name: TARGET,
                    portal: "127.0.0.1:3260".parse().unwrap(),
                };
                discovery::serve(&mut stream, &outcome, &setup).map_err(|e| e.to_string())?;
            }
            Ok(outcome)
        });
        (TestInitiator::new(theirs), thread)
    }

    #[test]
    fn a_stranger_discovers_nothing() {
        let (mut initiator, thread) = target(vec![]);
        let reply = initiator.login_plain(&[
            ("InitiatorName", "iqn.2026-11.org.example:stranger"),
            ("SessionType", "Discovery"),
        ]);
        assert_eq!(reply.status(), (0, 0));
        let login = reply.login();
        assert!(login.transit);
        assert_eq!(login.next_stage, stage::FULL_FEATURE);
        assert_ne!(login.tsih, 0);
        assert!(
            reply.value("MaxRecvDataSegmentLength").is_some(),
            "the target declares its receive limit"
        );
        let answer = initiator.send_targets();
        assert!(matches!(answer.pdu, pdu::TargetPdu::Text(t) if t.final_));
        assert!(answer.data.is_empty(), "{:?}", answer.pairs());
        let bye = initiator.logout();
        assert!(matches!(bye.pdu, pdu::TargetPdu::Logout(l) if l.response == 0));
        let outcome = thread.join().unwrap().unwrap();
        assert!(outcome.host.is_none());
    }

    #[test]
    fn a_host_without_a_virtual_path_is_not_authorized_and_discovers_nothing() {
        let (mut initiator, thread) = target(vec![host("h", KNOWN, None)]);
        let reply = initiator.login_plain(&[("InitiatorName", KNOWN), ("TargetName", TARGET)]);
        assert_eq!(reply.status(), login_status::AUTHORIZATION_FAILURE);
        assert!(thread
            .join()
            .unwrap()
            .unwrap_err()
            .contains("no virtual path"));

        let (mut initiator, thread) = target(vec![host("h", KNOWN, None)]);
        let reply =
            initiator.login_plain(&[("InitiatorName", KNOWN), ("SessionType", "Discovery")]);
        assert_eq!(reply.status(), (0, 0));
        assert!(initiator.send_targets().data.is_empty());
        initiator.logout();
        assert_eq!(thread.join().unwrap().unwrap().host.unwrap().name, "h");
    }

    #[test]
    fn refusals_carry_their_status() {
        let cases: Vec<(Pairs, (u8, u8))> = vec![
            (
                vec![("InitiatorName", "iqn.x:stranger"), ("TargetName", TARGET)],
                login_status::AUTHORIZATION_FAILURE,
            ),
            (
                vec![
                    ("InitiatorName", KNOWN),
                    ("TargetName", "iqn.2026-11.org.sds:else"),
                ],
                login_status::NOT_FOUND,
            ),
            (
                vec![("TargetName", TARGET)],
                login_status::MISSING_PARAMETER,
            ),
            (
                vec![("InitiatorName", KNOWN)],
                login_status::MISSING_PARAMETER,
            ),
            (
                vec![("InitiatorName", KNOWN), ("SessionType", "Bogus")],
                login_status::SESSION_TYPE_NOT_SUPPORTED,
            ),
        ];
        for (pairs, status) in cases {
            let (mut initiator, thread) = target(vec![host("h", KNOWN, None)]);
            let reply = initiator.login_plain(&pairs);
            assert_eq!(reply.status(), status, "{pairs:?}");
            let login = reply.login();
            assert!(!login.transit && login.tsih == 0);
            assert!(thread.join().unwrap().is_err());
        }
    }

    #[test]
    fn malformed_first_pdus_end_the_login() {
        // Not a login.
        let (initiator, thread) = target(vec![]);
        let mut bhs = [0u8; 48];
        bhs[0] = 0x01;
        write_pdu(&mut &initiator.stream, &bhs, &[], Digests::default()).unwrap();
        let mut initiator = initiator;
        assert_eq!(
            initiator.read().status(),
            login_status::INVALID_DURING_LOGIN
        );
        assert!(thread.join().unwrap().is_err());
        // A data segment far beyond what a login may carry.
        let (initiator, thread) = target(vec![]);
        bhs[0] = 0x43;
        bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        write_pdu(&mut &initiator.stream, &bhs, &[], Digests::default()).unwrap();
        let mut initiator = initiator;
        assert_eq!(
            initiator.read().status(),
            login_status::INITIATOR_ERROR_GENERIC
        );
        assert!(thread.join().unwrap().is_err());
        // A version this target does not speak.
        let (initiator, thread) = target(vec![]);
        let mut bhs = [0u8; 48];
        bhs[0] = 0x43;
        bhs[2] = 2;
        bhs[3] = 1;
        write_pdu(&mut &initiator.stream, &bhs, &[], Digests::default()).unwrap();
        let mut initiator = initiator;
        assert_eq!(initiator.read().status(), login_status::UNSUPPORTED_VERSION);
        assert!(thread.join().unwrap().is_err());
        // Malformed text.
        let (initiator, thread) = target(vec![]);
        let mut bhs = [0u8; 48];
        bhs[0] = 0x43;
        bhs[7] = 8;
        write_pdu(
            &mut &initiator.stream,
            &bhs,
            b"garbage\0",
            Digests::default(),
        )
        .unwrap();
        let mut initiator = initiator;
        assert_eq!(
            initiator.read().status(),
            login_status::INITIATOR_ERROR_GENERIC
        );
        assert!(thread.join().unwrap().is_err());
        // Cut off mid-PDU: the login just ends.
        let (initiator, thread) = target(vec![]);
        use std::io::Write as _;
        (&initiator.stream).write_all(&[0x43, 0x81, 0, 0]).unwrap();
        drop(initiator);
        assert!(thread.join().unwrap().unwrap_err().contains("closed"));
    }

    /// The CHAP exchange up to the initiator's answer; returns the target's challenge.
    fn chap_start(initiator: &mut TestInitiator) -> (u8, Vec<u8>) {
        let reply = initiator.login(
            stage::SECURITY,
            Some(stage::OPERATIONAL),
            &[
                ("InitiatorName", KNOWN),
                ("SessionType", "Discovery"),
                ("AuthMethod", "CHAP,None"),
            ],
        );
        assert_eq!(reply.status(), (0, 0));
        assert_eq!(reply.value("AuthMethod").as_deref(), Some("CHAP"));
        assert!(!reply.login().transit, "no leaving before authenticating");
        let reply = initiator.login(stage::SECURITY, None, &[("CHAP_A", "7,5")]);
        assert_eq!(reply.value("CHAP_A").as_deref(), Some("5"));
        let id: u8 = reply.value("CHAP_I").unwrap().parse().unwrap();
        let challenge = chap::decode_binary(&reply.value("CHAP_C").unwrap()).unwrap();
        assert_eq!(challenge.len(), chap::CHAP_CHALLENGE_BYTES);
        (id, challenge)
    }

    #[test]
    fn chap_one_way_and_mutual() {
        // One way.
        let (mut initiator, thread) = target(vec![host("h", KNOWN, Some(chap_record(false)))]);
        let (id, challenge) = chap_start(&mut initiator);
        let response = chap::encode_hex(&chap::answer(id, SECRET.as_bytes(), &challenge));
        let reply = initiator.login(
            stage::SECURITY,
            Some(stage::FULL_FEATURE),
            &[("CHAP_N", "known-user"), ("CHAP_R", &response)],
        );
        assert_eq!(reply.status(), (0, 0));
        assert!(reply.login().transit);
        initiator.logout();
        assert!(thread.join().unwrap().is_ok());

        // Mutual: the target proves the mutual secret.
        let (mut initiator, thread) = target(vec![host("h", KNOWN, Some(chap_record(true)))]);
        let (id, challenge) = chap_start(&mut initiator);
        let response = chap::encode_hex(&chap::answer(id, SECRET.as_bytes(), &challenge));
        let ours = [9u8; 16];
        let reply = initiator.login(
            stage::SECURITY,
            Some(stage::OPERATIONAL),
            &[
                ("CHAP_N", "known-user"),
                ("CHAP_R", &response),
                ("CHAP_I", "77"),
                ("CHAP_C", &chap::encode_hex(&ours)),
            ],
        );
        assert_eq!(reply.status(), (0, 0));
        assert_eq!(reply.value("CHAP_N").as_deref(), Some("target-user"));
        assert_eq!(
            reply.value("CHAP_R"),
            Some(chap::encode_hex(&chap::answer(
                77,
                MUTUAL.as_bytes(),
                &ours
            )))
        );
        let reply = initiator.login(stage::OPERATIONAL, Some(stage::FULL_FEATURE), &[]);
        assert_eq!(reply.status(), (0, 0));
        initiator.logout();
        assert!(thread.join().unwrap().is_ok());
    }

    #[test]
    fn chap_failures_are_authentication_failures() {
        let answers: [(&str, Responder); 3] = [
            ("known-user", |id, c| {
                chap::encode_hex(&chap::answer(id, b"the-wrong-secret", c))
            }),
            ("someone-else", |id, c| {
                chap::encode_hex(&chap::answer(id, SECRET.as_bytes(), c))
            }),
            ("known-user", |_, _| "0x00".to_string()),
        ];
        for (user, answer) in answers {
            let (mut initiator, thread) = target(vec![host("h", KNOWN, Some(chap_record(false)))]);
            let (id, challenge) = chap_start(&mut initiator);
            let reply = initiator.login(
                stage::SECURITY,
                Some(stage::FULL_FEATURE),
                &[("CHAP_N", user), ("CHAP_R", &answer(id, &challenge))],
            );
            assert_eq!(reply.status(), login_status::AUTHENTICATION_FAILURE);
            assert!(thread.join().unwrap().is_err());
        }
        // A host with CHAP cannot skip it.
        let (mut initiator, thread) = target(vec![host("h", KNOWN, Some(chap_record(false)))]);
        let reply =
            initiator.login_plain(&[("InitiatorName", KNOWN), ("SessionType", "Discovery")]);
        assert_eq!(reply.status(), login_status::AUTHENTICATION_FAILURE);
        assert!(thread.join().unwrap().is_err());
        // Mutual asked of a host with no mutual secret, or with the target's own challenge.
        for (mutual, reflect) in [(false, false), (true, true)] {
            let (mut initiator, thread) = target(vec![host("h", KNOWN, Some(chap_record(mutual)))]);
            let (id, challenge) = chap_start(&mut initiator);
            let response = chap::encode_hex(&chap::answer(id, SECRET.as_bytes(), &challenge));
            let theirs = if reflect {
                challenge.clone()
            } else {
                vec![1; 16]
            };
            let reply = initiator.login(
                stage::SECURITY,
                Some(stage::OPERATIONAL),
                &[
                    ("CHAP_N", "known-user"),
                    ("CHAP_R", &response),
                    ("CHAP_I", "1"),
                    ("CHAP_C", &chap::encode_hex(&theirs)),
                ],
            );
            assert_eq!(reply.status(), login_status::AUTHENTICATION_FAILURE);
            assert!(thread.join().unwrap().is_err());
        }
    }

    #[test]
    fn a_discovery_answer_longer_than_the_initiators_limit_comes_in_parts() {
        let (mut initiator, thread) = target(vec![]);
        let reply = initiator.login(
            stage::OPERATIONAL,
            Some(stage::FULL_FEATURE),
            &[
                ("InitiatorName", "iqn.x:y"),
                ("SessionType", "Discovery"),
                ("MaxRecvDataSegmentLength", "512"),
            ],
        );
        assert_eq!(reply.status(), (0, 0));
        // Forty unknown keys: forty NotUnderstood answers, about 1.5 KiB of text, split
        // wherever 512 bytes end (RFC 7143 lets a pair straddle two PDUs).
        let keys: Vec<String> = (0..40)
            .map(|k| format!("X-org.example.key{k:04}"))
            .collect();
        let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "1")).collect();
        let mut reply = initiator.text(&pairs, pdu::RESERVED_TAG);
        let mut text = Vec::new();
        let mut parts = 1;
        loop {
            let pdu::TargetPdu::Text(response) = reply.pdu else {
                panic!("not a Text Response");
            };
            assert!(reply.data.len() <= 512);
            text.extend_from_slice(&reply.data);
            if response.final_ {
                assert_eq!(response.target_transfer_tag, pdu::RESERVED_TAG);
                break;
            }
            assert!(response.continue_);
            assert_ne!(response.target_transfer_tag, pdu::RESERVED_TAG);
            reply = initiator.text(&[], response.target_transfer_tag);
            parts += 1;
        }
        assert!(parts >= 3, "{parts} parts");
        let answers = params::parse_text(&text).unwrap();
        assert_eq!(answers.len(), 40);
        assert!(answers
            .iter()
            .zip(&keys)
            .all(|((key, value), sent)| key == sent && *value == "NotUnderstood"));
        initiator.logout();
        assert!(thread.join().unwrap().is_ok());
    }

    #[test]
    fn login_text_continued_over_pdus_is_gathered() {
        let (mut initiator, thread) = target(vec![]);
        // "InitiatorName=iqn.x:y\0SessionType=Discovery\0" cut in the middle of a key.
        let whole = b"InitiatorName=iqn.x:y\0SessionType=Discovery\0AuthMethod=None\0";
        let (head, tail) = whole.split_at(30);
        for (part, more) in [(head, true), (tail, false)] {
            let request = LoginRequest {
                transit: !more,
                continue_: more,
                current_stage: stage::SECURITY,
                next_stage: if more { 0 } else { stage::FULL_FEATURE },
                version_max: 0,
                version_min: 0,
                data_segment_length: part.len() as u32,
                isid: initiator.isid,
                tsih: 0,
                initiator_task_tag: 0,
                cid: 0,
                cmd_sn: 1,
                exp_stat_sn: 0,
            };
            let mut bhs = [0u8; 48];
            pdu::write_login_request(&request, &mut bhs);
            write_pdu(&mut &initiator.stream, &bhs, part, Digests::default()).unwrap();
            let reply = initiator.read();
            assert_eq!(reply.status(), (0, 0));
            if more {
                assert!(reply.data.is_empty() && !reply.login().transit);
            } else {
                assert_eq!(reply.value("AuthMethod").as_deref(), Some("None"));
                assert!(reply.login().transit);
            }
        }
        initiator.logout();
        let outcome = thread.join().unwrap().unwrap();
        assert_eq!(outcome.initiator_name, "iqn.x:y");
        assert_eq!(outcome.session_type, SessionType::Discovery);
    }

    #[test]
    fn a_login_never_goes_back_to_the_security_stage() {
        let (mut initiator, thread) = target(vec![]);
        let reply = initiator.login(
            stage::OPERATIONAL,
            None,
            &[("InitiatorName", "iqn.x:y"), ("SessionType", "Discovery")],
        );
        assert_eq!(reply.status(), (0, 0));
        let reply = initiator.login(stage::SECURITY, None, &[("AuthMethod", "None")]);
        assert_eq!(reply.status(), login_status::INITIATOR_ERROR_GENERIC);
        assert!(thread.join().unwrap().is_err());
    }

    #[test]
    fn malformed_send_targets_are_rejected_and_unknown_keys_not_understood() {
        let (mut initiator, thread) = target(vec![]);
        let reply =
            initiator.login_plain(&[("InitiatorName", "iqn.x:y"), ("SessionType", "Discovery")]);
        assert_eq!(reply.status(), (0, 0));
        for (key, value, expected) in [
            ("SendTargets", "Alle", Some(("SendTargets", "Reject"))),
            ("SendTargets", "A", Some(("SendTargets", "Reject"))),
            (
                "SendTargetsPlease",
                "All",
                Some(("SendTargetsPlease", "NotUnderstood")),
            ),
            ("sENDtARGETS", "aLL", Some(("sENDtARGETS", "NotUnderstood"))),
            ("SendTargets", "iqn.2026-11.org.sds:elsewhere", None),
            ("SendTargets", "All", None),
        ] {
            let reply = initiator.text(&[(key, value)], pdu::RESERVED_TAG);
            let pairs = reply.pairs();
            match expected {
                Some((k, v)) => assert_eq!(pairs, vec![(k.to_string(), v.to_string())]),
                None => assert!(pairs.is_empty(), "{key}={value}: {pairs:?}"),
            }
        }
        initiator.logout();
        assert!(thread.join().unwrap().is_ok());
    }

    #[test]
    fn a_login_naming_a_tsih_is_refused() {
        let (initiator, thread) = target(vec![]);
        let data = b"InitiatorName=iqn.x:y\0SessionType=Discovery\0";
        let request = LoginRequest {
            transit: true,
            continue_: false,
            current_stage: stage::OPERATIONAL,
            next_stage: stage::FULL_FEATURE,
            version_max: 0,
            version_min: 0,
            data_segment_length: data.len() as u32,
            isid: initiator.isid,
            tsih: 7,
            initiator_task_tag: 0,
            cid: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
        };
        let mut bhs = [0u8; 48];
        pdu::write_login_request(&request, &mut bhs);
        write_pdu(&mut &initiator.stream, &bhs, data, Digests::default()).unwrap();
        let mut initiator = initiator;
        assert_eq!(
            initiator.read().status(),
            login_status::SESSION_DOES_NOT_EXIST
        );
        assert!(thread.join().unwrap().is_err());
    }

    #[test]
    fn a_discovery_session_answers_nops_and_rejects_scsi() {
        let (mut initiator, thread) = target(vec![]);
        let reply =
            initiator.login_plain(&[("InitiatorName", "iqn.x:y"), ("SessionType", "Discovery")]);
        assert_eq!(reply.status(), (0, 0));
        // A ping with data comes back with the same data.
        let nop = pdu::NopOut {
            immediate: true,
            lun: 0,
            initiator_task_tag: 77,
            target_transfer_tag: pdu::RESERVED_TAG,
            cmd_sn: initiator.cmd_sn,
            exp_stat_sn: initiator.exp_stat_sn,
            data_segment_length: 5,
        };
        let mut bhs = [0u8; 48];
        pdu::write_nop_out(&nop, &mut bhs);
        write_pdu(&mut &initiator.stream, &bhs, b"hello", Digests::default()).unwrap();
        let reply = initiator.read();
        assert!(matches!(reply.pdu, pdu::TargetPdu::NopIn(n) if n.initiator_task_tag == 77));
        assert_eq!(reply.data, b"hello");
        // A SCSI command has no place in a discovery session: rejected, and the session
        // goes on.
        let mut bhs = [0u8; 48];
        bhs[0] = 0x01;
        bhs[1] = 0x80;
        bhs[32] = 0x12;
        write_pdu(&mut &initiator.stream, &bhs, &[], Digests::default()).unwrap();
        let reply = initiator.read();
        assert!(matches!(
            reply.pdu,
            pdu::TargetPdu::Reject(r) if r.reason == pdu::reject::PROTOCOL_ERROR
        ));
        assert_eq!(reply.data, bhs, "the rejected header comes back");
        assert!(initiator.send_targets().data.is_empty());
        initiator.logout();
        assert!(thread.join().unwrap().is_ok());
    }

    #[test]
    fn operational_keys_are_answered_and_unknown_ones_not_understood() {
        let (mut initiator, thread) = target(vec![]);
        let reply = initiator.login(
            stage::OPERATIONAL,
            None,
            &[
                ("InitiatorName", "iqn.x:y"),
                ("SessionType", "Discovery"),
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "CRC32C,None"),
                ("MaxRecvDataSegmentLength", "4096"),
                ("X-com.example.Thing", "1"),
            ],
        );
        assert_eq!(reply.status(), (0, 0));
        assert_eq!(reply.value("HeaderDigest").as_deref(), Some("CRC32C"));
        assert_eq!(
            reply.value("X-com.example.Thing").as_deref(),
            Some("NotUnderstood")
        );
        assert!(reply.value("TargetPortalGroupTag").is_none(), "discovery");
        let reply = initiator.login(stage::OPERATIONAL, Some(stage::FULL_FEATURE), &[]);
        assert_eq!(reply.status(), (0, 0));
        // Digests are on from here.
        initiator.digests = Digests {
            header: true,
            data: true,
        };
        assert!(initiator.send_targets().data.is_empty());
        initiator.logout();
        let outcome = thread.join().unwrap().unwrap();
        assert!(outcome.params.header_digest && outcome.params.data_digest);
        assert_eq!(outcome.params.max_xmit_data_segment_length, 4096);
    }
}
