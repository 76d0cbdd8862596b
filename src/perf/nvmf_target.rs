//! `sds perf --target nvme-tcp://HOST:PORT/SUBNQN`: the initiator's set-up, blocking, before
//! any job runs. Built on the shared codec (`sds::nvmf::{pdu, pdu_io, command}`) only, never
//! on the target's code, so it checks sds's target as an independent peer would (and is
//! itself checked against Linux's nvmet in tests/nvmf_guest.rs).
//!
//! ```text
//!  admin queue:  TCP connect ─▶ ICReq/ICResp ─▶ Connect (QID 0, HOSTNQN, HOSTID, CNTLID FFFFh)
//!                ─▶ Property Get CAP ─▶ Property Set CC (EN, IOSQES 6, IOCQES 4) ─▶ CSTS.RDY
//!                ─▶ Identify controller (MDTS, IOCCSZ) ─▶ Identify namespace (size, LBA size)
//!                ─▶ Set Features Number of Queues ─▶ [keep-alive thread for the run]
//!  I/O queue k:  TCP connect ─▶ ICReq/ICResp ─▶ Connect (QID k, CNTLID of the admin queue)
//!                ─▶ handed to a reactor as a job (`super::nvmf_job`)
//! ```
//!
//! The initiator asks for the header and data digests `--digest` names (none by default) and
//! no data alignment (HPDA 0); it honours the controller's CPDA and MAXH2CDATA.

use sds::constants::{
    NVMF_INITIATOR_ADMIN_QUEUE_ENTRIES, NVMF_INITIATOR_IO_TIMEOUT, NVMF_INITIATOR_KATO_MS,
    NVMF_INITIATOR_KEEP_ALIVE_INTERVAL, NVMF_INITIATOR_MAX_READY_WAIT, NVMF_INITIATOR_READY_POLL,
    NVMF_INITIATOR_SETUP_MAX_DATA_BYTES,
};
use sds::nvmf::command::{
    Command, CommandBuilder, Completion, ADMIN_IDENTIFY, ADMIN_KEEP_ALIVE, ADMIN_SET_FEATURES,
    CNTLID_DYNAMIC, FCTYPE_CONNECT, FCTYPE_PROPERTY_GET, FCTYPE_PROPERTY_SET,
    SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK,
};
use sds::nvmf::pdu::{Direction, Header, IcReq, Negotiated, PduType};
use sds::nvmf::pdu_io::{read_pdu, write_pdu, PduIoError};
use sds::nvmf::registers::{enabling_cc, CAP, CC, CSTS, CSTS_CFS, CSTS_RDY};
use sds::nvmf::status::{self, Status};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The URL scheme of `--target`.
pub const NVME_TCP_SCHEME: &str = "nvme-tcp://";
/// The NVMe/TCP port when the URL names none (IANA's for NVMe/TCP I/O queues).
pub const NVME_TCP_DEFAULT_PORT: u16 = 4420;
/// The longest NQN (NVMe base 2.0 §4.5: 223 bytes of UTF-8).
pub const MAX_NQN_BYTES: usize = 223;

/// Feature: Number of Queues.
const FEATURE_NUMBER_OF_QUEUES: u32 = 0x07;
/// Identify CNS values.
const CNS_NAMESPACE: u32 = 0x00;
const CNS_CONTROLLER: u32 = 0x01;
const IDENTIFY_BYTES: usize = 4096;
/// Connect's data: HOSTID, CNTLID, SUBNQN and HOSTNQN (NVMe-oF 1.1 figure 20).
const CONNECT_DATA_BYTES: usize = 1024;

/// `--target` parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl {
    pub host: String,
    pub port: u16,
    pub subnqn: String,
}

impl std::fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{NVME_TCP_SCHEME}{}:{}/{}",
            self.host, self.port, self.subnqn
        )
    }
}

/// Parses `nvme-tcp://HOST[:PORT]/SUBNQN` (HOST may be `[v6]`).
pub fn parse_target_url(text: &str) -> Result<TargetUrl, String> {
    let rest = text
        .strip_prefix(NVME_TCP_SCHEME)
        .ok_or_else(|| format!("{text:?} does not begin with {NVME_TCP_SCHEME}"))?;
    let (authority, subnqn) = rest
        .split_once('/')
        .ok_or_else(|| format!("{text:?} names no subsystem NQN after the address"))?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{authority:?}: no closing ]"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{text:?} names no host"));
    }
    let port = match port {
        None => NVME_TCP_DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{port:?} is not a TCP port"))?,
    };
    check_nqn("subsystem NQN", subnqn)?;
    Ok(TargetUrl {
        host: host.to_string(),
        port,
        subnqn: subnqn.to_string(),
    })
}

/// An NQN as Connect carries it: 1 to 223 bytes, no NUL.
pub fn check_nqn(what: &str, nqn: &str) -> Result<(), String> {
    if nqn.is_empty() || nqn.len() > MAX_NQN_BYTES || nqn.contains('\0') {
        return Err(format!(
            "{nqn:?} is not a {what} (1 to {MAX_NQN_BYTES} bytes)"
        ));
    }
    Ok(())
}

/// Why the set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot resolve {address}")]
    Resolve {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {address}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("queue {qid}: {step}")]
    Exchange {
        qid: u16,
        step: &'static str,
        #[source]
        source: PduIoError,
    },
    #[error("queue {qid}: {step}: the target sent a {got:?} PDU")]
    Unexpected {
        qid: u16,
        step: &'static str,
        got: PduType,
    },
    #[error("queue {qid}: {step}: the target ended the connection (termination request, FES {fes:#x}, FEI {fei:#x})")]
    Terminated {
        qid: u16,
        step: &'static str,
        fes: u16,
        fei: u32,
    },
    #[error(
        "the target refused Connect to {subnqn} as {hostnqn} (queue {qid}): {reason} [{status}]"
    )]
    ConnectRefused {
        subnqn: String,
        hostnqn: String,
        qid: u16,
        reason: &'static str,
        status: Status,
    },
    #[error(
        "queue {qid}: the host asked for {asked} digests and the controller enabled {granted}"
    )]
    Digests {
        qid: u16,
        asked: Digests,
        granted: Digests,
    },
    #[error("{step} failed: {status}")]
    Command { step: &'static str, status: Status },
    #[error("the controller did not become ready within {waited_ms} ms (CSTS {csts:#x})")]
    NotReady { waited_ms: u128, csts: u32 },
    #[error("namespace {nsid} is not active on {subnqn}")]
    NoNamespace { nsid: u32, subnqn: String },
    #[error("namespace {nsid}: {reason}")]
    Namespace { nsid: u32, reason: String },
    #[error("the controller granted {granted} I/O queues; {wanted} were asked for (--queues)")]
    TooFewQueues { granted: u32, wanted: u32 },
    #[error(
        "--qd {queue_depth} needs {needed} queue entries; the controller allows {max} (CAP.MQES)"
    )]
    QueueTooDeep {
        queue_depth: usize,
        needed: u32,
        max: u32,
    },
    #[error(
        "--bs {io_bytes} is more than the controller transfers in one command ({max_bytes}, MDTS)"
    )]
    TransferTooLarge { io_bytes: u32, max_bytes: u64 },
}

/// What a Connect status means, in words (NVMe-oF 1.1 figure 21).
fn connect_reason(status: Status) -> &'static str {
    match status {
        s if s.sct == status::CONNECT_INVALID_PARAMETERS.sct
            && s.sc == status::CONNECT_INVALID_PARAMETERS.sc =>
        {
            "invalid parameters (a subsystem NQN or host NQN it does not know, or a host it does not allow)"
        }
        s if s.sct == status::CONNECT_INVALID_HOST.sct && s.sc == status::CONNECT_INVALID_HOST.sc => {
            "this host may not connect to the subsystem"
        }
        s if s.sct == status::CONNECT_CONTROLLER_BUSY.sct
            && s.sc == status::CONNECT_CONTROLLER_BUSY.sc =>
        {
            "the controller is busy"
        }
        s if s.sct == status::CONNECT_INCOMPATIBLE_FORMAT.sct
            && s.sc == status::CONNECT_INCOMPATIBLE_FORMAT.sc =>
        {
            "incompatible format"
        }
        _ => "refused",
    }
}

/// The CRC32C digests a connection asks for in ICReq (`--digest`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

impl std::fmt::Display for Digests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (self.header, self.data) {
            (false, false) => "no",
            (true, false) => "header",
            (false, true) => "data",
            (true, true) => "header and data",
        })
    }
}

/// One connected queue's TCP connection and what ICReq/ICResp settled.
pub struct QueueConnection {
    pub stream: TcpStream,
    pub qid: u16,
    pub negotiated: Negotiated,
    /// MAXH2CDATA: the most data one H2CData PDU may carry.
    pub max_h2c_data_bytes: u32,
}

/// The namespace the jobs drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub nsid: u32,
    pub block_bytes: u32,
    pub blocks: u64,
}

impl NamespaceInfo {
    pub fn size_bytes(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.block_bytes))
    }
}

/// What the jobs need of the controller.
#[derive(Clone, Copy, Debug)]
pub struct ControllerInfo {
    pub cntlid: u16,
    /// The most data a command may move (MDTS); None: no limit.
    pub max_transfer_bytes: Option<u64>,
    /// The most write data a command capsule may carry (IOCCSZ less the command).
    pub in_capsule_bytes: u32,
    /// CAP.MQES + 1: the most entries an I/O queue may have.
    pub max_queue_entries: u32,
}

/// The set-up's answer: the controller, the namespace, the I/O queues to hand to reactors
/// and the admin queue's keep-alive, which ends when this is dropped.
pub struct Connected {
    pub controller: ControllerInfo,
    pub namespace: NamespaceInfo,
    pub io_queues: Vec<QueueConnection>,
    pub keep_alive: KeepAlive,
}

/// What the set-up needs to know.
pub struct SetupRequest<'a> {
    pub url: &'a TargetUrl,
    pub hostnqn: &'a str,
    pub hostid: [u8; 16],
    pub nsid: u32,
    pub io_queues: u32,
    /// Commands each I/O queue keeps in flight: its SQ has one entry more.
    pub queue_depth: usize,
    pub io_bytes: u32,
    pub digests: Digests,
}

/// A blocking queue during the set-up: the admin queue, or an I/O queue until its Connect.
struct BlockingQueue {
    connection: QueueConnection,
    next_cid: u16,
    receive: Vec<u8>,
    scratch: Vec<u8>,
}

impl BlockingQueue {
    /// TCP connect, then ICReq/ICResp.
    fn open(url: &TargetUrl, qid: u16, digests: Digests) -> Result<Self, SetupError> {
        let address = format!("{}:{}", url.host, url.port);
        let addresses: Vec<_> = address
            .to_socket_addrs()
            .map_err(|source| SetupError::Resolve {
                address: address.clone(),
                source,
            })?
            .collect();
        let mut last_error = None;
        let mut stream = None;
        for candidate in addresses {
            match TcpStream::connect_timeout(&candidate, NVMF_INITIATOR_IO_TIMEOUT) {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(error) => last_error = Some(error),
            }
        }
        let stream = stream.ok_or_else(|| SetupError::Connect {
            address: address.clone(),
            source: last_error.unwrap_or_else(|| std::io::Error::other("the name has no address")),
        })?;
        let io = |source| SetupError::Connect {
            address: address.clone(),
            source,
        };
        stream.set_nodelay(true).map_err(io)?;
        stream
            .set_read_timeout(Some(NVMF_INITIATOR_IO_TIMEOUT))
            .map_err(io)?;
        stream
            .set_write_timeout(Some(NVMF_INITIATOR_IO_TIMEOUT))
            .map_err(io)?;
        let mut queue = BlockingQueue {
            connection: QueueConnection {
                stream,
                qid,
                negotiated: Negotiated::initial(NVMF_INITIATOR_SETUP_MAX_DATA_BYTES),
                max_h2c_data_bytes: 0,
            },
            next_cid: 0,
            receive: Vec::with_capacity(IDENTIFY_BYTES + 256),
            scratch: Vec::with_capacity(CONNECT_DATA_BYTES + 256),
        };
        let icreq = Header::IcReq(IcReq {
            host_pda: 0,
            header_digest: digests.header,
            data_digest: digests.data,
            max_r2t: 0,
        });
        queue.send(&icreq, &[], "ICReq")?;
        let negotiated = queue.connection.negotiated;
        let pdu = read_pdu(
            &mut queue.connection.stream,
            &mut queue.receive,
            Direction::ControllerToHost,
            &negotiated,
        )
        .map_err(|source| SetupError::Exchange {
            qid,
            step: "ICResp",
            source,
        })?;
        match pdu.header {
            Header::IcResp(response) => {
                // The controller enables what the host asked for, if it can (TP 8000
                // §3.6.2.2); anything else is refused, so a run never measures or checks
                // other terms than it was given.
                let granted = Digests {
                    header: response.header_digest,
                    data: response.data_digest,
                };
                if granted != digests {
                    return Err(SetupError::Digests {
                        qid,
                        asked: digests,
                        granted,
                    });
                }
                let negotiated = &mut queue.connection.negotiated;
                negotiated.header_digest = granted.header;
                negotiated.data_digest = granted.data;
                negotiated.controller_pda = response.controller_pda;
                queue.connection.max_h2c_data_bytes = response.max_h2c_data_bytes;
            }
            Header::C2HTermReq(term) => {
                return Err(SetupError::Terminated {
                    qid,
                    step: "ICReq",
                    fes: term.fes,
                    fei: term.fei,
                })
            }
            other => {
                return Err(SetupError::Unexpected {
                    qid,
                    step: "ICReq",
                    got: other.pdu_type(),
                })
            }
        }
        Ok(queue)
    }

    fn send(&mut self, header: &Header, data: &[u8], step: &'static str) -> Result<(), SetupError> {
        let negotiated = self.connection.negotiated;
        write_pdu(
            &mut self.connection.stream,
            header,
            data,
            &negotiated,
            &mut self.scratch,
        )
        .map_err(|source| SetupError::Exchange {
            qid: self.connection.qid,
            step,
            source,
        })
    }

    fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1);
        self.next_cid
    }

    /// Sends `command` (with `data_out` in the capsule) and waits for its completion;
    /// `data_in` receives what C2HData PDUs bring. The completion is returned whatever its
    /// status.
    fn execute(
        &mut self,
        command: Command,
        data_out: &[u8],
        data_in: &mut [u8],
        step: &'static str,
    ) -> Result<Completion, SetupError> {
        let qid = self.connection.qid;
        let cid = command.cid();
        self.send(&Header::CapsuleCmd(command), data_out, step)?;
        loop {
            let negotiated = self.connection.negotiated;
            let pdu = read_pdu(
                &mut self.connection.stream,
                &mut self.receive,
                Direction::ControllerToHost,
                &negotiated,
            )
            .map_err(|source| SetupError::Exchange { qid, step, source })?;
            match pdu.header {
                Header::C2HData(data) if data.command_id == cid => {
                    let at = data.offset_bytes as usize;
                    let Some(into) = data_in.get_mut(at..at + pdu.data.len()) else {
                        return Err(SetupError::Unexpected {
                            qid,
                            step,
                            got: PduType::C2HData,
                        });
                    };
                    into.copy_from_slice(pdu.data);
                    if data.success {
                        return Ok(Completion::new(cid, status::SUCCESS));
                    }
                }
                Header::CapsuleResp(completion) if completion.cid == cid => return Ok(completion),
                Header::C2HTermReq(term) => {
                    return Err(SetupError::Terminated {
                        qid,
                        step,
                        fes: term.fes,
                        fei: term.fei,
                    })
                }
                other => {
                    return Err(SetupError::Unexpected {
                        qid,
                        step,
                        got: other.pdu_type(),
                    })
                }
            }
        }
    }

    /// Like [`Self::execute`], but a status other than success is an error.
    fn execute_ok(
        &mut self,
        command: Command,
        data_in: &mut [u8],
        step: &'static str,
    ) -> Result<Completion, SetupError> {
        let completion = self.execute(command, &[], data_in, step)?;
        if !completion.status.is_success() {
            return Err(SetupError::Command {
                step,
                status: completion.status,
            });
        }
        Ok(completion)
    }

    /// Fabrics Connect for this queue; the controller's CNTLID.
    fn connect(
        &mut self,
        request: &SetupRequest,
        sqsize: u16,
        cntlid: u16,
        kato_ms: u32,
    ) -> Result<u16, SetupError> {
        let mut data = [0u8; CONNECT_DATA_BYTES];
        data[0..16].copy_from_slice(&request.hostid);
        data[16..18].copy_from_slice(&cntlid.to_le_bytes());
        let subnqn = request.url.subnqn.as_bytes();
        data[256..256 + subnqn.len()].copy_from_slice(subnqn);
        let hostnqn = request.hostnqn.as_bytes();
        data[512..512 + hostnqn.len()].copy_from_slice(hostnqn);
        let qid = self.connection.qid;
        let command = CommandBuilder::fabrics(FCTYPE_CONNECT, self.cid())
            .sgl(0, CONNECT_DATA_BYTES as u32, SGL_DATA_BLOCK_OFFSET)
            // RECFMT 0, QID; SQSIZE (0's based), CATTR 0 (SQ flow control kept); KATO.
            .cdw(10, u32::from(qid) << 16)
            .cdw(11, u32::from(sqsize))
            .cdw(12, kato_ms)
            .build();
        let completion = self.execute(command, &data, &mut [], "Connect")?;
        if !completion.status.is_success() {
            return Err(SetupError::ConnectRefused {
                subnqn: request.url.subnqn.clone(),
                hostnqn: request.hostnqn.to_string(),
                qid,
                reason: connect_reason(completion.status),
                status: completion.status,
            });
        }
        Ok(completion.result as u16)
    }

    fn property_get(&mut self, offset: u32, eight_bytes: bool) -> Result<u64, SetupError> {
        let command = CommandBuilder::fabrics(FCTYPE_PROPERTY_GET, self.cid())
            .cdw(10, u32::from(eight_bytes))
            .cdw(11, offset)
            .build();
        Ok(self.execute_ok(command, &mut [], "Property Get")?.result)
    }

    fn property_set(&mut self, offset: u32, value: u32) -> Result<(), SetupError> {
        let command = CommandBuilder::fabrics(FCTYPE_PROPERTY_SET, self.cid())
            .cdw(10, 0)
            .cdw(11, offset)
            .cdw(12, value)
            .build();
        self.execute_ok(command, &mut [], "Property Set")?;
        Ok(())
    }

    fn identify(
        &mut self,
        cns: u32,
        nsid: u32,
        page: &mut [u8; IDENTIFY_BYTES],
        step: &'static str,
    ) -> Result<(), SetupError> {
        let command = CommandBuilder::new(ADMIN_IDENTIFY, self.cid())
            .nsid(nsid)
            .sgl(0, IDENTIFY_BYTES as u32, SGL_TRANSPORT_DATA_BLOCK)
            .cdw(10, cns)
            .build();
        self.execute_ok(command, page, step)?;
        Ok(())
    }
}

fn le16(page: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([page[at], page[at + 1]])
}

fn le32(page: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]])
}

fn le64(page: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&page[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// The namespace's size and LBA size from its Identify Namespace page.
pub fn namespace_from_identify(nsid: u32, page: &[u8]) -> Result<Option<NamespaceInfo>, String> {
    let blocks = le64(page, 0);
    if blocks == 0 {
        return Ok(None);
    }
    // FLBAS: the format in use, bits 3:0 and (with more than 16 formats) 6:5.
    let flbas = page[26];
    let format = usize::from(flbas & 0x0f) | (usize::from(flbas >> 5 & 0x3) << 4);
    let nlbaf = usize::from(page[25]);
    if format > nlbaf || format >= 64 {
        return Err(format!(
            "LBA format {format} in use, but only {} exist",
            nlbaf + 1
        ));
    }
    let entry = 128 + 4 * format;
    let metadata_bytes = le16(page, entry);
    let lbads = page[entry + 2];
    if !(9..=16).contains(&lbads) {
        return Err(format!(
            "LBA data size 2^{lbads} is not one sds perf can use"
        ));
    }
    if metadata_bytes != 0 && flbas & 0x10 != 0 {
        return Err("extended-LBA metadata is not supported".into());
    }
    Ok(Some(NamespaceInfo {
        nsid,
        block_bytes: 1 << lbads,
        blocks,
    }))
}

/// Connects the admin queue and the I/O queues, and learns the namespace.
pub fn connect(request: &SetupRequest) -> Result<Connected, SetupError> {
    let mut admin = BlockingQueue::open(request.url, 0, request.digests)?;
    let cntlid = admin.connect(
        request,
        (NVMF_INITIATOR_ADMIN_QUEUE_ENTRIES - 1) as u16,
        CNTLID_DYNAMIC,
        NVMF_INITIATOR_KATO_MS,
    )?;
    let cap = admin.property_get(CAP, true)?;
    let max_queue_entries = (cap & 0xffff) as u32 + 1;
    // CAP.TO: the worst case for CSTS.RDY, in 500 ms units; never wait past the bound.
    let ready_wait =
        Duration::from_millis(((cap >> 24) & 0xff).max(1) * 500).min(NVMF_INITIATOR_MAX_READY_WAIT);
    // CAP.MPSMIN: the smallest memory page, which MDTS counts in.
    let page_bytes = 1u64 << (12 + ((cap >> 48) & 0xf));
    admin.property_set(CC, enabling_cc())?;
    let started = Instant::now();
    loop {
        let csts = admin.property_get(CSTS, false)? as u32;
        if csts & CSTS_CFS != 0 || (csts & CSTS_RDY == 0 && started.elapsed() > ready_wait) {
            return Err(SetupError::NotReady {
                waited_ms: started.elapsed().as_millis(),
                csts,
            });
        }
        if csts & CSTS_RDY != 0 {
            break;
        }
        std::thread::sleep(NVMF_INITIATOR_READY_POLL);
    }
    let mut page = [0u8; IDENTIFY_BYTES];
    admin.identify(CNS_CONTROLLER, 0, &mut page, "Identify controller")?;
    let mdts = page[77];
    let max_transfer_bytes = (mdts != 0).then(|| page_bytes << mdts);
    // IOCCSZ counts 16-byte units and includes the 64-byte command.
    let in_capsule_bytes = (le32(&page, 1792).saturating_mul(16)).saturating_sub(64);
    let controller = ControllerInfo {
        cntlid,
        max_transfer_bytes,
        in_capsule_bytes,
        max_queue_entries,
    };
    if let Some(max_bytes) = max_transfer_bytes {
        if u64::from(request.io_bytes) > max_bytes {
            return Err(SetupError::TransferTooLarge {
                io_bytes: request.io_bytes,
                max_bytes,
            });
        }
    }
    let needed = request.queue_depth as u32 + 1;
    if needed > max_queue_entries {
        return Err(SetupError::QueueTooDeep {
            queue_depth: request.queue_depth,
            needed,
            max: max_queue_entries,
        });
    }
    page.fill(0);
    admin.identify(CNS_NAMESPACE, request.nsid, &mut page, "Identify namespace")?;
    let namespace = namespace_from_identify(request.nsid, &page)
        .map_err(|reason| SetupError::Namespace {
            nsid: request.nsid,
            reason,
        })?
        .ok_or_else(|| SetupError::NoNamespace {
            nsid: request.nsid,
            subnqn: request.url.subnqn.clone(),
        })?;
    let wanted = request.io_queues;
    let command = CommandBuilder::new(ADMIN_SET_FEATURES, admin.cid())
        .cdw(10, FEATURE_NUMBER_OF_QUEUES)
        .cdw(11, (wanted - 1) | ((wanted - 1) << 16))
        .build();
    let granted = admin.execute_ok(command, &mut [], "Set Features (number of queues)")?;
    let granted = (granted.result as u32 & 0xffff).min((granted.result as u32 >> 16) & 0xffff) + 1;
    if granted < wanted {
        return Err(SetupError::TooFewQueues { granted, wanted });
    }
    let mut io_queues = Vec::with_capacity(wanted as usize);
    for qid in 1..=wanted as u16 {
        let mut queue = BlockingQueue::open(request.url, qid, request.digests)?;
        queue.connect(request, request.queue_depth as u16, cntlid, 0)?;
        io_queues.push(queue.connection);
    }
    let keep_alive = KeepAlive::spawn(admin)?;
    Ok(Connected {
        controller,
        namespace,
        io_queues,
        keep_alive,
    })
}

/// The admin queue for the run: a thread that sends Keep Alive within the KATO the Connect
/// gave, so a long run is not cut off. Dropping it stops the thread and closes the queue.
pub struct KeepAlive {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Option<String>>>,
}

impl KeepAlive {
    fn spawn(mut admin: BlockingQueue) -> Result<Self, SetupError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("perf-keep-alive".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(NVMF_INITIATOR_READY_POLL);
                    if last.elapsed() < NVMF_INITIATOR_KEEP_ALIVE_INTERVAL {
                        continue;
                    }
                    last = Instant::now();
                    let command = CommandBuilder::new(ADMIN_KEEP_ALIVE, admin.cid()).build();
                    if let Err(error) = admin.execute_ok(command, &mut [], "Keep Alive") {
                        return Some(sds::logger::error_chain(&error));
                    }
                }
                None
            })
            .map_err(|source| SetupError::Connect {
                address: "a keep-alive thread".into(),
                source,
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread; why keep-alive failed, if it did.
    pub fn stop(&mut self) -> Option<String> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .and_then(|thread| thread.join().unwrap_or(Some("the thread panicked".into())))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls_parse_and_bad_ones_say_why() {
        let url = parse_target_url("nvme-tcp://127.0.0.1:4421/nqn.2026-11.org.sds:x").unwrap();
        assert_eq!(
            url,
            TargetUrl {
                host: "127.0.0.1".into(),
                port: 4421,
                subnqn: "nqn.2026-11.org.sds:x".into()
            }
        );
        assert_eq!(
            url.to_string(),
            "nvme-tcp://127.0.0.1:4421/nqn.2026-11.org.sds:x"
        );
        let url = parse_target_url("nvme-tcp://[::1]/nqn.x").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port),
            ("::1", NVME_TCP_DEFAULT_PORT)
        );
        for bad in [
            "nbd://127.0.0.1/x",
            "nvme-tcp://127.0.0.1:4420",
            "nvme-tcp://127.0.0.1:0/nqn.x",
            "nvme-tcp://127.0.0.1:99999/nqn.x",
            "nvme-tcp://:4420/nqn.x",
            "nvme-tcp://127.0.0.1:4420/",
        ] {
            assert!(parse_target_url(bad).is_err(), "{bad}");
        }
        let long = format!("nvme-tcp://h/{}", "n".repeat(MAX_NQN_BYTES + 1));
        assert!(parse_target_url(&long).is_err());
    }

    #[test]
    fn identify_namespace_gives_size_and_block_size() {
        let mut page = [0u8; IDENTIFY_BYTES];
        page[0..8].copy_from_slice(&2048u64.to_le_bytes());
        page[25] = 1; // two formats
        page[26] = 1; // the second in use
        page[128 + 2] = 9;
        page[132 + 2] = 12;
        let info = namespace_from_identify(1, &page).unwrap().unwrap();
        assert_eq!((info.block_bytes, info.blocks), (4096, 2048));
        assert_eq!(info.size_bytes(), 8 << 20);
        page[26] = 3; // past the formats that exist
        assert!(namespace_from_identify(1, &page).is_err());
        page[0..8].fill(0);
        assert_eq!(namespace_from_identify(1, &page), Ok(None), "inactive");
    }
}
