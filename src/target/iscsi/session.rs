//! The full-feature phase of one iSCSI session (one connection, ErrorRecoveryLevel 0), run by
//! a reactor as a [`Session`]: PDU framing, R2T and Data-Out, Data-In and status around the
//! SCSI layer (`crate::scsi`), whose logical units each own a block engine for the I/O.
//!
//! ```text
//!  recv (ring) ──▶ BHS (+AHS, digests) ──▶ SCSI Command ─▶ LUN k: ScsiLun::submit(CDB)
//!                      │ immediate data / Data-Out: straight into the task's buffer
//!                      │ R2T for what the initiator may not send unsolicited
//!                      ▼
//!                 ScsiLun (engine I/O on the ring, provisioner wakes) ─▶ task done
//!                                                                          │
//!  sendmsg (ring) ◀── Data-In (status collapsed into the last) or SCSI Response ◀┘
//! ```
//!
//! Every LUN the host has a virtual path to is one [`ScsiLun`] with its own engine, numbered
//! from `index * ISCSI_SLOTS_PER_LUN` in ring tags, so a completion finds its LUN by its slot.
//! Outgoing PDUs are built in a pool of headers made when the session starts
//! ([`OUT_PDUS`]), gathered into one `sendmsg`; a read's data goes out of the task's buffer
//! without a copy. A NOP-In goes to an initiator that has been silent for
//! `ISCSI_NOP_INTERVAL_SECS`; one that does not answer within `ISCSI_NOP_TIMEOUT_SECS` is
//! gone, and its session closes.
//!
//! Malformed input (a PDU the initiator may not send, a data segment larger than it may be, a
//! digest that does not match) ends this connection and only it, as ErrorRecoveryLevel 0
//! prescribes; a command the target cannot carry out gets SCSI's answer and the session goes
//! on.

use super::digest::{self, DIGEST_BYTES};
use super::listener::IscsiContext;
use super::login::{LoggedIn, SessionTicket};
use super::params::Negotiated;
use super::pdu::{
    self, logout, reject, tmf, Bhs, DataIn, DataOut, Framing, InitiatorPdu, LogoutResponse, NopIn,
    ReadyToTransfer, Reject, Residual, ScsiCommand, ScsiResponse, Sequence, TaskManagementRequest,
    TaskManagementResponse, TextResponse, BHS_BYTES, RESERVED_TAG,
};
use super::registry::RegistryEntry;
use crate::backend::aligned_buf::AlignedBuf;
use crate::blockio::tag::{self, KIND_FRONT_END_FIRST};
use crate::blockio::{BlockEngine, EngineConfig};
use crate::constants::{
    ISCSI_CMD_WINDOW, ISCSI_CONTROL_PDUS, ISCSI_MAX_AHS_BYTES, ISCSI_NOP_INTERVAL_SECS,
    ISCSI_NOP_TIMEOUT_SECS, ISCSI_OUT_PDUS, ISCSI_RECV_BUFFER_BYTES, ISCSI_SLOTS_PER_LUN,
    MAX_BUFFER_BYTES_PER_CONNECTION, MAX_BUFFER_BYTES_TOTAL, MAX_IO_BYTES,
    MAX_LUNS_PER_ISCSI_SESSION, MAX_RETAINED_BUFFER_BYTES_PER_CONNECTION, SCSI_TASKS_PER_LUN,
};
use crate::reactor::mailbox::Message;
use crate::reactor::session::{Session, SessionContext};
use crate::scsi::{self, DataDirection, ScsiLun, Submit, TaskDone};
use crate::target::buffer_budget::{BufferBudget, BUFFER_BUDGET};
use crate::volume::open_state::OpenGuard;
use io_uring::{opcode, types};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};

/// The session's own ring entries (the engines' are told apart by `tag::is_engine`).
const TAG_RECV: u64 = KIND_FRONT_END_FIRST;
const TAG_DATA: u64 = KIND_FRONT_END_FIRST + 1;
const TAG_SEND: u64 = KIND_FRONT_END_FIRST + 2;
const TAG_TICK: u64 = KIND_FRONT_END_FIRST + 3;
const _: () = assert!(TAG_TICK <= tag::KIND_LAST);

/// Bytes of sense (with its two-byte length) or of a short answer kept in an outgoing PDU.
const INLINE_BYTES: usize = 2 + 252;
/// REPORT LUNS (SPC-4): the session answers it, from its LUNs.
const REPORT_LUNS: u8 = 0xa0;
/// SPC-4's protocol identifier of iSCSI, for the device identification page.
const PROTOCOL_ISCSI: u8 = 5;
/// Iovecs of one `sendmsg` at most (the kernel's UIO_MAXIOV is 1024).
const MAX_SEND_IOVECS: usize = 1020;

/// One LUN of the session: a host's VP as SCSI sees it.
struct Lun {
    /// The LUN number the host sees (the VP's `lun`).
    number: u64,
    vpath_id: u64,
    scsi: ScsiLun,
}

/// Where an outgoing PDU's data segment comes from.
enum OutData {
    None,
    /// Part of a task's Data-In.
    Task {
        lun: u16,
        task: u16,
        offset: u32,
        len: u32,
    },
    /// `inline[..len]` of the PDU itself (sense with its length, a rejected header).
    Inline(usize),
    /// A control answer's own bytes (REPORT LUNS to an absent LUN, a NOP-In echo, text).
    Owned(Vec<u8>),
}

/// An outgoing PDU, built in the session's pool.
struct OutPdu {
    /// BHS and, if negotiated, its digest.
    header: [u8; BHS_BYTES + DIGEST_BYTES],
    header_len: usize,
    data: OutData,
    inline: [u8; INLINE_BYTES],
    /// Padding and, if negotiated, the data digest.
    trailer: [u8; 3 + DIGEST_BYTES],
    trailer_len: usize,
    /// The task whose answer this PDU ends: released once it has gone out.
    release: Option<(u16, u16)>,
    /// The connection ends once this PDU has gone out (Logout Response, fatal Reject).
    close_after: bool,
}

impl OutPdu {
    fn new() -> Self {
        Self {
            header: [0; BHS_BYTES + DIGEST_BYTES],
            header_len: BHS_BYTES,
            data: OutData::None,
            inline: [0; INLINE_BYTES],
            trailer: [0; 3 + DIGEST_BYTES],
            trailer_len: 0,
            release: None,
            close_after: false,
        }
    }
}

/// A finished task whose answer is still to be built (Data-In first, then status).
#[derive(Clone, Copy)]
struct Answer {
    lun: u16,
    done: TaskDone,
    lun_wire: u64,
    /// Data-In bytes to send: the task's data, cut to what the initiator expects.
    data_len: u32,
    sent: u32,
    data_sn: u32,
    residual: Residual,
    /// The status goes in the last Data-In (GOOD, no sense, some data).
    collapsed: bool,
}

/// A write waiting for its data: immediate, unsolicited Data-Out, then bursts asked for
/// with R2T.
#[derive(Clone, Copy, Debug)]
struct DataWait {
    itt: u32,
    lun: u16,
    task: u16,
    lun_wire: u64,
    /// Bytes the command takes (its transfer length); the task's buffer holds them.
    expected: u32,
    /// The next buffer offset expected (Data-Out comes in order).
    received: u32,
    /// End of what the initiator may send now: the first burst, or the current R2T's.
    burst_end: u32,
    /// The current R2T's transfer tag, [`RESERVED_TAG`] for unsolicited data.
    ttt: u32,
    r2t_sn: u32,
    /// The DataSN the next Data-Out of the current sequence must carry.
    data_sn: u32,
}

/// What incoming bytes are for right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inbound {
    /// PDU headers, parsed out of the receive buffer.
    Headers,
    /// A data segment going straight into a task's buffer: `got` of `len` bytes so far at
    /// `offset`, then `trailer` bytes (padding, data digest) from the receive buffer.
    Data {
        wait: u32,
        offset: u32,
        len: u32,
        got: u32,
        skip: u32,
        final_: bool,
    },
    /// What follows a data segment that went into a task's buffer: `skip` bytes of it past
    /// what the command takes (dropped), then padding and data digest.
    Trailer {
        wait: u32,
        offset: u32,
        len: u32,
        skip: u32,
        final_: bool,
    },
    /// Bytes to read and drop (the data of a command that was refused or aborted).
    Discard { remaining: usize },
}

pub struct IscsiSession {
    socket: OwnedFd,
    peer: String,
    initiator: String,
    target_name: String,
    /// The portal this connection came in through.
    portal: Option<std::net::SocketAddr>,
    published: std::sync::Arc<crate::domain::snapshot::Published>,
    params: Negotiated,
    luns: Vec<Lun>,
    /// Sorted LUN numbers, for REPORT LUNS.
    lun_numbers: Vec<u64>,
    exp_cmd_sn: u32,
    /// The MaxCmdSN last sent: a command past it is dropped (RFC 7143 3.2.2.1).
    max_cmd_sn: u32,
    stat_sn: u32,
    next_ttt: u32,

    recv_buf: AlignedBuf,
    recv_start: usize,
    recv_end: usize,
    recv_posted: bool,
    inbound: Inbound,
    /// A command waiting for a task of its LUN or for buffer budget (its PDU is still in the
    /// receive buffer).
    stalled: bool,
    /// Bytes of buffer each task holds, charged to this session's and the server's budgets
    /// when it was submitted (index `lun * SCSI_TASKS_PER_LUN + task`).
    charged: Vec<usize>,
    /// Their sum, at most about `MAX_BUFFER_BYTES_PER_CONNECTION`.
    buffer_bytes: usize,
    budget: &'static BufferBudget,
    waits: Vec<DataWait>,

    out: Vec<OutPdu>,
    free_out: Vec<usize>,
    out_queue: VecDeque<usize>,
    answers: VecDeque<Answer>,
    sending: Vec<usize>,
    send_iov: Vec<libc::iovec>,
    send_msg: Box<libc::msghdr>,
    send_posted: bool,
    /// Set while the session handles a batch (what one receive brought, or its engines'
    /// completions): the answers it queues go out together in one `sendmsg` at the end of the
    /// batch rather than the first alone.
    defer_send: bool,

    tick_spec: Box<types::Timespec>,
    tick_posted: bool,
    /// Ticks since the initiator last sent anything.
    idle_ticks: u32,
    /// Ticks since the NOP-In still unanswered was sent.
    nop_pending: Option<u32>,
    /// A Logout Request being answered once everything in flight has been.
    logout: Option<(u32, u8)>,

    ring_pending: u32,
    closing: bool,
    finished: bool,
    /// Listed in `iscsi_get_sessions` until the session ends; its close flag is how a
    /// reinstating login or `vpath_delete` ends it.
    entry: RegistryEntry,
    _guards: SessionGuards,
}

/// What a session holds while it lives, given back when it is dropped: one of its host's
/// sessions and its place on the reactor (the login's ticket), an open of each LUN's volume.
struct SessionGuards {
    _ticket: SessionTicket,
    _opens: Vec<OpenGuard>,
}

// SAFETY: the raw pointers inside (iovecs and the msghdr) point into buffers this session
// owns; the session moves between threads only before it is attached, with nothing in flight.
unsafe impl Send for IscsiSession {}

/// The LUN number of a LUN field in SAM's single-level formats (peripheral or flat space),
/// `None` for any other addressing.
fn lun_number(wire: u64) -> Option<u64> {
    let bytes = wire.to_be_bytes();
    if bytes[2..].iter().any(|&b| b != 0) {
        return None;
    }
    match bytes[0] >> 6 {
        0b00 if bytes[0] == 0 => Some(u64::from(bytes[1])),
        0b01 => Some(u64::from(bytes[0] & 0x3f) << 8 | u64::from(bytes[1])),
        _ => None,
    }
}

/// The status a command gets when the initiator sent more commands than its window.
fn scsi_residual(residual: scsi::Residual) -> Residual {
    match residual {
        scsi::Residual::None => Residual::None,
        scsi::Residual::Underflow(n) => Residual::Underflow(n),
        scsi::Residual::Overflow(n) => Residual::Overflow(n),
    }
}

/// `a` is before `b` in serial number arithmetic (RFC 1982, 32 bits).
fn serial_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

impl IscsiSession {
    /// The session of a login that reached full-feature phase, with one [`ScsiLun`] per VP
    /// of its host (made by the caller, who numbers their engines' slots by position).
    fn new(
        logged_in: LoggedIn,
        luns: Vec<(u64, u64, ScsiLun)>,
        opens: Vec<OpenGuard>,
        target_name: String,
        published: std::sync::Arc<crate::domain::snapshot::Published>,
    ) -> Self {
        let portal = logged_in.stream.local_addr().ok();
        let LoggedIn {
            stream,
            initiator_name,
            params,
            cmd_sn,
            stat_sn,
            registry_entry,
            ticket,
            peer,
            ..
        } = logged_in;
        let guards = SessionGuards {
            _ticket: ticket,
            _opens: opens,
        };
        let luns_len = luns.len();
        let mut lun_numbers: Vec<u64> = luns.iter().map(|(number, _, _)| *number).collect();
        lun_numbers.sort_unstable();
        let recv_buf = AlignedBuf::new(ISCSI_RECV_BUFFER_BYTES);
        Self {
            socket: OwnedFd::from(stream),
            peer: peer.to_string(),
            initiator: initiator_name,
            target_name,
            portal,
            published,
            params,
            luns: luns
                .into_iter()
                .map(|(number, vpath_id, scsi)| Lun {
                    number,
                    vpath_id,
                    scsi,
                })
                .collect(),
            lun_numbers,
            exp_cmd_sn: cmd_sn,
            // What the login's last response said.
            max_cmd_sn: cmd_sn.wrapping_add(ISCSI_CMD_WINDOW - 1),
            stat_sn,
            next_ttt: 1,
            recv_buf,
            recv_start: 0,
            recv_end: 0,
            recv_posted: false,
            inbound: Inbound::Headers,
            stalled: false,
            charged: vec![0; luns_len * SCSI_TASKS_PER_LUN],
            buffer_bytes: 0,
            budget: &BUFFER_BUDGET,
            waits: Vec::with_capacity(ISCSI_CMD_WINDOW as usize),
            out: (0..ISCSI_OUT_PDUS).map(|_| OutPdu::new()).collect(),
            free_out: (0..ISCSI_OUT_PDUS).rev().collect(),
            out_queue: VecDeque::with_capacity(ISCSI_OUT_PDUS),
            answers: VecDeque::with_capacity(ISCSI_CMD_WINDOW as usize),
            sending: Vec::with_capacity(ISCSI_OUT_PDUS),
            send_iov: Vec::with_capacity(MAX_SEND_IOVECS + 3),
            // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
            send_msg: Box::new(unsafe { std::mem::zeroed() }),
            send_posted: false,
            defer_send: false,
            tick_spec: Box::new(types::Timespec::new().sec(1)),
            tick_posted: false,
            idle_ticks: 0,
            nop_pending: None,
            logout: None,
            ring_pending: 0,
            closing: false,
            finished: false,
            entry: registry_entry,
            _guards: guards,
        }
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.socket.as_raw_fd())
    }

    fn close(&mut self, why: &str) {
        if !self.closing {
            log::debug!("iscsi {} ({}): closing: {why}", self.peer, self.initiator);
            self.closing = true;
            for lun in &mut self.luns {
                lun.scsi.shut_down();
            }
            // Wake a posted receive so it completes and the session can finish.
            // SAFETY: shutdown on a descriptor we own, plain integer arguments.
            unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RD) };
        }
    }

    fn maybe_finish(&mut self) {
        if !self.closing || self.finished {
            return;
        }
        if self.ring_pending == 0 && self.luns.iter().all(|lun| lun.scsi.is_idle()) {
            self.finished = true;
            for lun in &mut self.luns {
                lun.scsi.detach();
            }
            // SAFETY: shutdown on a descriptor we own; the peer sees the connection end.
            unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    /// The last CmdSN the initiator may send: as many commands past ExpCmdSN as the session
    /// has tasks free, so that no command ever finds its LUN without a free task (each LUN
    /// has at least `ISCSI_CMD_WINDOW` of them). It never goes down: a command received takes
    /// a task and moves ExpCmdSN by one.
    fn next_max_cmd_sn(&self) -> u32 {
        let in_use: usize = self.luns.iter().map(|lun| lun.scsi.tasks_in_use()).sum();
        let free = (ISCSI_CMD_WINDOW as usize).saturating_sub(in_use) as u32;
        self.exp_cmd_sn.wrapping_add(free).wrapping_sub(1)
    }

    /// The sequence numbers of a PDU about to be sent; MaxCmdSN is remembered as sent.
    fn sequence(&mut self) -> Sequence {
        let max_cmd_sn = self.next_max_cmd_sn();
        if serial_lt(self.max_cmd_sn, max_cmd_sn) {
            self.max_cmd_sn = max_cmd_sn;
        }
        Sequence {
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        }
    }

    /// The sequence numbers of a status-carrying PDU, advancing StatSN.
    fn status_sequence(&mut self) -> Sequence {
        let sequence = self.sequence();
        self.stat_sn = self.stat_sn.wrapping_add(1);
        sequence
    }

    /// The sequence numbers of a PDU that carries no status (StatSN as it stands).
    fn plain_sequence(&mut self) -> Sequence {
        self.sequence()
    }

    // ---- receiving -----------------------------------------------------------------------

    fn post_recv(&mut self, ctx: &mut SessionContext) {
        if self.recv_posted || self.closing {
            return;
        }
        let (ptr, len, kind) = match self.inbound {
            Inbound::Data {
                wait,
                offset,
                len,
                got,
                ..
            } => {
                let Some(w) = self.waits.get(wait as usize).copied() else {
                    self.close("data for a task that is gone");
                    return;
                };
                let buf = self.luns[usize::from(w.lun)]
                    .scsi
                    .data_out_buffer(usize::from(w.task));
                let start = (offset + got) as usize;
                let end = (offset + len) as usize;
                if end > buf.len() || start >= end {
                    self.close("data past the task's buffer");
                    return;
                }
                // SAFETY: start < end <= the task buffer's length, checked above.
                (
                    unsafe { buf.as_mut_ptr().add(start) },
                    end - start,
                    TAG_DATA,
                )
            }
            Inbound::Headers | Inbound::Trailer { .. } | Inbound::Discard { .. } => {
                if self.recv_end == self.recv_buf.len() {
                    if self.recv_start == 0 {
                        self.close("receive buffer full");
                        return;
                    }
                    self.compact();
                }
                // SAFETY: recv_end < the buffer's length, checked above.
                (
                    unsafe { self.recv_buf.as_mut_ptr().add(self.recv_end) },
                    self.recv_buf.len() - self.recv_end,
                    TAG_RECV,
                )
            }
        };
        let entry = opcode::Recv::new(self.fd(), ptr, len as u32)
            .build()
            .user_data(ctx.tag(tag::encode(kind, 0, 0, 0)));
        // SAFETY: the buffer is owned by this session (or by its LUN's task, which is not
        // released while its data is arriving), and the session outlives the completion: the
        // reactor drops a session only when is_finished(), with nothing on the ring.
        match unsafe { ctx.ring.push(&entry) } {
            Ok(()) => {
                self.recv_posted = true;
                self.ring_pending += 1;
            }
            Err(error) => self.close(&format!("cannot post a receive: {error}")),
        }
    }

    fn compact(&mut self) {
        let live = self.recv_end - self.recv_start;
        self.recv_buf
            .as_mut_slice()
            .copy_within(self.recv_start..self.recv_end, 0);
        self.recv_start = 0;
        self.recv_end = live;
    }

    fn buffered(&self) -> usize {
        self.recv_end - self.recv_start
    }

    /// Handles everything complete in the receive buffer, then sends the answers that made
    /// ready together.
    fn process_input(&mut self, ctx: &mut SessionContext) {
        let outer = std::mem::replace(&mut self.defer_send, true);
        self.process_input_batch(ctx);
        self.defer_send = outer;
        self.post_send(ctx);
    }

    fn process_input_batch(&mut self, ctx: &mut SessionContext) {
        loop {
            if self.closing {
                return;
            }
            match self.inbound {
                // Arriving straight into a task's buffer: the receive below is for it.
                Inbound::Data { .. } => break,
                Inbound::Discard { remaining } => {
                    let take = remaining.min(self.buffered());
                    self.recv_start += take;
                    if take < remaining {
                        self.inbound = Inbound::Discard {
                            remaining: remaining - take,
                        };
                        break;
                    }
                    self.inbound = Inbound::Headers;
                }
                Inbound::Trailer {
                    wait,
                    offset,
                    len,
                    skip,
                    final_,
                } => {
                    if !self.take_trailer(wait, offset, len, skip, final_, ctx) {
                        break;
                    }
                }
                Inbound::Headers => {
                    if self.stalled || self.logout.is_some() || !self.take_pdu(ctx) {
                        break;
                    }
                }
            }
        }
        if self.recv_start == self.recv_end {
            self.recv_start = 0;
            self.recv_end = 0;
        } else if self.recv_buf.len() - self.recv_end < BHS_BYTES {
            self.compact();
        }
        self.post_recv(ctx);
        self.post_send(ctx);
    }

    /// Parses and handles one PDU. Returns false when it must wait for more bytes (or for a
    /// task to free up).
    fn take_pdu(&mut self, ctx: &mut SessionContext) -> bool {
        if self.buffered() < BHS_BYTES {
            return false;
        }
        let Ok(bhs) = pdu::bhs_from(&self.recv_buf.as_slice()[self.recv_start..]) else {
            return false;
        };
        let framing = match Framing::of(
            &bhs,
            self.params.header_digest,
            self.params.data_digest,
            self.params.max_recv_data_segment_length,
            ISCSI_MAX_AHS_BYTES,
        ) {
            Ok(framing) => framing,
            Err(error) => {
                self.reject_and_close(&bhs, reject::PROTOCOL_ERROR, &error.to_string());
                return false;
            }
        };
        let header_bytes = BHS_BYTES + framing.ahs_bytes + framing.header_digest_bytes;
        if self.buffered() < header_bytes {
            return false;
        }
        if framing.header_digest_bytes > 0 {
            let at = self.recv_start;
            let raw = self.recv_buf.as_slice();
            let header = &raw[at..at + BHS_BYTES + framing.ahs_bytes];
            let received = &raw[at + BHS_BYTES + framing.ahs_bytes..at + header_bytes];
            if !digest::matches(&[header], received) {
                // The header cannot be trusted, not even its lengths: the connection ends.
                self.close("header digest error");
                return false;
            }
        }
        self.idle_ticks = 0;
        let pdu = match InitiatorPdu::parse(&bhs) {
            Ok(pdu) => pdu,
            Err(error) => {
                self.reject_and_close(&bhs, reject::PROTOCOL_ERROR, &error.to_string());
                return false;
            }
        };
        match pdu {
            InitiatorPdu::ScsiCommand(command) => {
                self.take_command(&bhs, &command, &framing, header_bytes, ctx)
            }
            InitiatorPdu::DataOut(data) => self.take_data_out(&data, &framing, header_bytes),
            other => {
                // Everything else is small and handled whole from the receive buffer.
                let total = header_bytes + framing.rest_bytes()
                    - framing.ahs_bytes
                    - framing.header_digest_bytes;
                if total > self.recv_buf.len() {
                    self.reject_and_close(&bhs, reject::PROTOCOL_ERROR, "PDU too large");
                    return false;
                }
                if self.buffered() < total {
                    return false;
                }
                let data_at = self.recv_start + header_bytes;
                let data = data_at..data_at + framing.data_bytes;
                if framing.data_digest_bytes > 0 {
                    let raw = self.recv_buf.as_slice();
                    let padded = data.start..data.end + framing.padding_bytes;
                    let received = &raw[padded.end..padded.end + DIGEST_BYTES];
                    if !digest::matches(&[&raw[padded]], received) {
                        self.recv_start += total;
                        self.queue_reject(&bhs, reject::DATA_DIGEST_ERROR, false);
                        return true;
                    }
                }
                let payload = self.recv_buf.as_slice()[data].to_vec();
                self.recv_start += total;
                self.take_other(&bhs, other, payload, ctx);
                true
            }
        }
    }

    /// Whether a command's CmdSN is one to carry out; advances ExpCmdSN past it. A command
    /// outside the window is dropped, as RFC 7143 says.
    fn accept_cmd_sn(&mut self, immediate: bool, cmd_sn: u32) -> bool {
        if immediate {
            return true;
        }
        let max_cmd_sn = self.max_cmd_sn;
        if serial_lt(cmd_sn, self.exp_cmd_sn) || serial_lt(max_cmd_sn, cmd_sn) {
            log::debug!(
                "iscsi {}: CmdSN {cmd_sn} outside [{}, {max_cmd_sn}]: dropped",
                self.peer,
                self.exp_cmd_sn
            );
            return false;
        }
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        }
        true
    }

    fn lun_index(&self, wire: u64) -> Option<usize> {
        let number = lun_number(wire)?;
        self.luns.iter().position(|lun| lun.number == number)
    }

    fn take_command(
        &mut self,
        bhs: &Bhs,
        command: &ScsiCommand,
        framing: &Framing,
        header_bytes: usize,
        ctx: &mut SessionContext,
    ) -> bool {
        let data_bytes = framing.data_bytes;
        let trailer_bytes = framing.padding_bytes + framing.data_digest_bytes;
        let lun = self
            .lun_index(command.lun)
            .filter(|_| command.cdb[0] != REPORT_LUNS);
        let Some(index) = lun else {
            // REPORT LUNS lists the session's LUNs, whichever LUN it is sent to; a command to
            // a LUN with no VP gets SAM's answer (INQUIRY still answers, with no unit).
            if !self.accept_cmd_sn(command.immediate, command.cmd_sn) {
                self.skip(header_bytes + data_bytes + trailer_bytes);
                return true;
            }
            let answer = if command.cdb[0] == REPORT_LUNS {
                scsi::report_luns(&self.lun_numbers, &command.cdb)
            } else {
                scsi::no_such_lun(&command.cdb)
            };
            self.skip(header_bytes + data_bytes + trailer_bytes);
            let (data, residual) = answer.data_in(command.expected_data_transfer_length);
            let data = data.to_vec();
            let sense = answer.sense().to_vec();
            self.queue_control_answer(
                command,
                answer.status,
                data,
                &sense,
                scsi_residual(residual),
            );
            return true;
        };
        if self.closing {
            return false;
        }
        let direction = match (command.read, command.write) {
            (_, true) => DataDirection::Write,
            (true, false) => DataDirection::Read,
            (false, false) => DataDirection::None,
        };
        if data_bytes > 0 && direction != DataDirection::Write {
            self.reject_and_close(bhs, reject::PROTOCOL_ERROR, "data with a non-write command");
            return false;
        }
        if data_bytes > 0 && !self.params.immediate_data {
            self.reject_and_close(bhs, reject::PROTOCOL_ERROR, "immediate data not negotiated");
            return false;
        }
        // Peek the window before taking a task: a dropped command takes none.
        let max_cmd_sn = self.max_cmd_sn;
        if !command.immediate
            && (serial_lt(command.cmd_sn, self.exp_cmd_sn) || serial_lt(max_cmd_sn, command.cmd_sn))
        {
            self.accept_cmd_sn(command.immediate, command.cmd_sn);
            self.skip(header_bytes + data_bytes + trailer_bytes);
            return true;
        }
        // Buffers: past this session's share or the server's, the command waits for this
        // session's own answers to drain; a session holding nothing always gets one.
        if self.buffer_bytes > 0
            && (self.buffer_bytes >= MAX_BUFFER_BYTES_PER_CONNECTION
                || self.budget.used_bytes() >= MAX_BUFFER_BYTES_TOTAL)
        {
            self.stalled = true;
            return false;
        }
        let submitted = self.luns[index].scsi.submit(
            command.initiator_task_tag,
            &command.cdb,
            command.expected_data_transfer_length,
            direction,
            ctx,
        );
        let (task, len) = match submitted {
            Submit::Busy => {
                // Every task of the LUN is in use: the command waits in the receive buffer
                // until one is released.
                self.stalled = true;
                return false;
            }
            Submit::Started { task } => {
                self.charge(index, task);
                (task, 0)
            }
            Submit::NeedData { task, len: 0 } => {
                self.charge(index, task);
                // Nothing to wait for: the command runs now.
                self.luns[index].scsi.data_out_done(task, ctx);
                (task, 0)
            }
            Submit::NeedData { task, len } => {
                self.charge(index, task);
                (task, len)
            }
        };
        self.accept_cmd_sn(command.immediate, command.cmd_sn);
        self.recv_start += header_bytes;
        if len == 0 {
            if data_bytes + trailer_bytes > 0 {
                self.inbound = Inbound::Discard {
                    remaining: data_bytes + trailer_bytes,
                };
            }
            self.drain_done(ctx);
            return true;
        }
        let limit = command.expected_data_transfer_length;
        // What the initiator may send before any R2T: its immediate data, and with
        // InitialR2T=No unsolicited Data-Out up to FirstBurstLength (both within EDTL).
        let first_burst = if self.params.initial_r2t {
            data_bytes as u32
        } else {
            self.params.first_burst_length.max(data_bytes as u32)
        }
        .min(limit);
        if data_bytes as u32 > first_burst {
            self.reject_and_close(bhs, reject::PROTOCOL_ERROR, "immediate data past EDTL");
            return false;
        }
        self.waits.push(DataWait {
            itt: command.initiator_task_tag,
            lun: index as u16,
            task: task as u16,
            lun_wire: command.lun,
            expected: len,
            received: 0,
            burst_end: first_burst,
            ttt: RESERVED_TAG,
            r2t_sn: 0,
            data_sn: 0,
        });
        let wait_index = (self.waits.len() - 1) as u32;
        if data_bytes == 0 {
            self.after_data(wait_index, command.final_, ctx);
            return true;
        }
        self.copy_buffered(wait_index, 0, data_bytes as u32, command.final_);
        true
    }

    fn take_data_out(&mut self, data: &DataOut, framing: &Framing, header_bytes: usize) -> bool {
        let trailer_bytes = framing.padding_bytes + framing.data_digest_bytes;
        let Some(wait_index) = self
            .waits
            .iter()
            .position(|w| w.itt == data.initiator_task_tag)
        else {
            // Data for a task that was aborted (or never was): dropped.
            self.skip(header_bytes + framing.data_bytes + trailer_bytes);
            return true;
        };
        let wait = self.waits[wait_index];
        let len = data.data_segment_length;
        let in_order = data.buffer_offset == wait.received && data.data_sn == wait.data_sn;
        let in_burst = u64::from(data.buffer_offset) + u64::from(len) <= u64::from(wait.burst_end);
        let right_tag = data.target_transfer_tag == wait.ttt;
        if !(in_order && in_burst && right_tag) || len == 0 {
            log::debug!(
                "iscsi {}: Data-Out for ITT {:#x} at {} (+{len}, TTT {:#x}) outside what was \
                 asked (received {}, burst to {}, TTT {:#x})",
                self.peer,
                wait.itt,
                data.buffer_offset,
                data.target_transfer_tag,
                wait.received,
                wait.burst_end,
                wait.ttt
            );
            self.close("Data-Out outside the burst");
            return false;
        }
        self.recv_start += header_bytes;
        self.waits[wait_index].data_sn = wait.data_sn.wrapping_add(1);
        self.copy_buffered(wait_index as u32, data.buffer_offset, len, data.final_);
        true
    }

    /// Takes a data segment of `len` bytes at buffer offset `offset` of a write: what the
    /// command takes goes into the task's buffer (what the receive buffer already has is
    /// copied, the rest is received straight into it, [`Inbound::Data`]); bytes past it are
    /// dropped.
    fn copy_buffered(&mut self, wait: u32, offset: u32, len: u32, final_: bool) {
        let w = self.waits[wait as usize];
        let keep = len.min(w.expected.saturating_sub(offset));
        let skip = len - keep;
        let have = self.buffered().min(keep as usize);
        let start = self.recv_start;
        let buf = self.luns[usize::from(w.lun)]
            .scsi
            .data_out_buffer(usize::from(w.task));
        let end = offset as usize + have;
        if end > buf.len() {
            self.close("data past the task's buffer");
            return;
        }
        buf[offset as usize..end].copy_from_slice(&self.recv_buf.as_slice()[start..start + have]);
        self.recv_start += have;
        self.inbound = if have < keep as usize {
            Inbound::Data {
                wait,
                offset,
                len: keep,
                got: have as u32,
                skip,
                final_,
            }
        } else {
            Inbound::Trailer {
                wait,
                offset,
                len: keep,
                skip,
                final_,
            }
        };
    }

    /// Checks the padding and data digest after a data segment in a task's buffer, then
    /// moves the write on.
    fn take_trailer(
        &mut self,
        wait: u32,
        offset: u32,
        len: u32,
        skip: u32,
        final_: bool,
        ctx: &mut SessionContext,
    ) -> bool {
        if skip > 0 {
            // The dropped part of the segment, its padding and its digest (which covers what
            // is dropped, so it is not checked): taken like any other bytes to drop.
            let padding = pdu::padding(len + skip);
            let digest_bytes = if self.params.data_digest {
                DIGEST_BYTES
            } else {
                0
            };
            self.waits[wait as usize].received += len + skip;
            self.inbound = Inbound::Headers;
            self.skip(skip as usize + padding + digest_bytes);
            self.after_data(wait, final_, ctx);
            return true;
        }
        let padding = pdu::padding(len);
        let digest_bytes = if self.params.data_digest {
            DIGEST_BYTES
        } else {
            0
        };
        if self.buffered() < padding + digest_bytes {
            return false;
        }
        let at = self.recv_start;
        self.recv_start += padding + digest_bytes;
        self.inbound = Inbound::Headers;
        if digest_bytes > 0 {
            let w = self.waits[wait as usize];
            let mut pad = [0u8; 3];
            pad[..padding].copy_from_slice(&self.recv_buf.as_slice()[at..at + padding]);
            let mut received = [0u8; DIGEST_BYTES];
            received.copy_from_slice(
                &self.recv_buf.as_slice()[at + padding..at + padding + DIGEST_BYTES],
            );
            let buf = self.luns[usize::from(w.lun)]
                .scsi
                .data_out_buffer(usize::from(w.task));
            let data = &buf[offset as usize..(offset + len) as usize];
            if !digest::matches(&[data, &pad[..padding]], &received) {
                // ErrorRecoveryLevel 0: a data digest error on Data-Out ends the connection.
                self.close("data digest error");
                return false;
            }
        }
        self.waits[wait as usize].received += len;
        self.after_data(wait, final_, ctx);
        true
    }

    /// Data of a write arrived: run the command when it has all, or ask for the next burst.
    fn after_data(&mut self, wait: u32, final_: bool, ctx: &mut SessionContext) {
        let w = self.waits[wait as usize];
        if w.received >= w.expected {
            self.waits.swap_remove(wait as usize);
            self.luns[usize::from(w.lun)]
                .scsi
                .data_out_done(usize::from(w.task), ctx);
            self.drain_done(ctx);
            return;
        }
        if w.received < w.burst_end && !final_ {
            // More of this burst is on its way.
            return;
        }
        // The burst ended (or the first burst was cut short): solicit the next one.
        let burst = (w.expected - w.received).min(self.params.max_burst_length);
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        let w = &mut self.waits[wait as usize];
        w.burst_end = w.received + burst;
        w.ttt = ttt;
        w.data_sn = 0;
        let r2t = ReadyToTransfer {
            lun: w.lun_wire,
            initiator_task_tag: w.itt,
            target_transfer_tag: ttt,
            sequence: Sequence::default(),
            r2t_sn: w.r2t_sn,
            buffer_offset: w.received,
            desired_data_transfer_length: burst,
        };
        w.r2t_sn = w.r2t_sn.wrapping_add(1);
        let mut r2t = r2t;
        r2t.sequence = self.plain_sequence();
        self.queue_pdu(|bhs| r2t.write(bhs), OutData::None, None, false, ctx);
    }

    /// Charges what a task just taken holds to the budgets. A charge still standing on the
    /// same task belonged to one the layer gave back itself (aborted): it is returned first.
    fn charge(&mut self, lun: usize, task: usize) {
        self.uncharge(lun, task);
        let bytes = self.luns[lun].scsi.buffer_bytes(task);
        if bytes > 0 && self.budget.try_charge(bytes, true) {
            self.charged[lun * SCSI_TASKS_PER_LUN + task] = bytes;
            self.buffer_bytes += bytes;
        }
    }

    fn uncharge(&mut self, lun: usize, task: usize) {
        if let Some(charged) = self.charged.get_mut(lun * SCSI_TASKS_PER_LUN + task) {
            let bytes = std::mem::take(charged);
            self.buffer_bytes -= bytes;
            self.budget.release(bytes);
        }
    }

    /// Returns the charges of tasks the layer gave back itself (aborted).
    fn uncharge_freed(&mut self) {
        for lun in 0..self.luns.len() {
            for task in 0..SCSI_TASKS_PER_LUN {
                if self.charged[lun * SCSI_TASKS_PER_LUN + task] > 0
                    && !self.luns[lun].scsi.task_in_use(task)
                {
                    self.uncharge(lun, task);
                }
            }
        }
    }

    fn skip(&mut self, bytes: usize) {
        let take = bytes.min(self.buffered());
        self.recv_start += take;
        if take < bytes {
            self.inbound = Inbound::Discard {
                remaining: bytes - take,
            };
        }
    }

    /// NOP-Out, Task Management, Text, Logout, SNACK, a Login in full-feature phase.
    fn take_other(
        &mut self,
        bhs: &Bhs,
        pdu: InitiatorPdu,
        payload: Vec<u8>,
        ctx: &mut SessionContext,
    ) {
        match pdu {
            InitiatorPdu::NopOut(nop) => {
                if nop.initiator_task_tag == RESERVED_TAG {
                    // An answer to our NOP-In (or a ping that wants none).
                    self.nop_pending = None;
                    return;
                }
                if !self.accept_cmd_sn(nop.immediate, nop.cmd_sn) {
                    return;
                }
                let nop_in = NopIn {
                    data_segment_length: payload.len() as u32,
                    lun: nop.lun,
                    initiator_task_tag: nop.initiator_task_tag,
                    target_transfer_tag: RESERVED_TAG,
                    sequence: self.status_sequence(),
                };
                let data = if payload.is_empty() {
                    OutData::None
                } else {
                    OutData::Owned(payload)
                };
                self.queue_pdu(|bhs| nop_in.write(bhs), data, None, false, ctx);
            }
            InitiatorPdu::TaskManagement(request) => {
                if self.accept_cmd_sn(request.immediate, request.cmd_sn) {
                    self.task_management(&request, ctx);
                }
            }
            InitiatorPdu::Text(text) => {
                if !self.accept_cmd_sn(text.immediate, text.cmd_sn) {
                    return;
                }
                let answer = self.text_answer(&payload);
                let response = TextResponse {
                    final_: true,
                    continue_: false,
                    data_segment_length: answer.len() as u32,
                    lun: 0,
                    initiator_task_tag: text.initiator_task_tag,
                    target_transfer_tag: RESERVED_TAG,
                    sequence: self.status_sequence(),
                };
                let data = if answer.is_empty() {
                    OutData::None
                } else {
                    OutData::Owned(answer)
                };
                self.queue_pdu(|bhs| response.write(bhs), data, None, false, ctx);
            }
            InitiatorPdu::Logout(request) => {
                self.accept_cmd_sn(request.immediate, request.cmd_sn);
                let response = match request.reason {
                    logout::CLOSE_SESSION | logout::CLOSE_CONNECTION => 0,
                    // Connection recovery needs ErrorRecoveryLevel 2.
                    _ => 2,
                };
                self.logout = Some((request.initiator_task_tag, response));
                self.maybe_logout(ctx);
            }
            InitiatorPdu::Snack(_) => self.queue_reject(bhs, reject::COMMAND_NOT_SUPPORTED, false),
            InitiatorPdu::Login(_) => {
                self.reject_and_close(bhs, reject::PROTOCOL_ERROR, "login in full-feature phase")
            }
            InitiatorPdu::ScsiCommand(_) | InitiatorPdu::DataOut(_) => {
                debug_assert!(false, "handled by take_pdu");
            }
        }
    }

    /// The answer to a Text Request in full-feature phase: SendTargets as a discovery
    /// session answers it (this target at the portal the initiator came in through, if its
    /// host still has a VP); any other key is not understood.
    fn text_answer(&self, text: &[u8]) -> Vec<u8> {
        let mut answer = Vec::new();
        let Ok(pairs) = super::params::parse_text(text) else {
            return answer;
        };
        let snapshot = self.published.load();
        for (key, value) in pairs {
            match (key, self.portal) {
                ("SendTargets", Some(portal)) => super::discovery::send_targets(
                    &snapshot,
                    &self.initiator,
                    &self.target_name,
                    portal,
                    value,
                    &mut answer,
                ),
                _ => super::params::push_pair(&mut answer, key, "NotUnderstood"),
            }
        }
        answer
    }

    fn task_management(&mut self, request: &TaskManagementRequest, ctx: &mut SessionContext) {
        let lun = self.lun_index(request.lun);
        let response = match request.function {
            tmf::ABORT_TASK => match lun {
                Some(index) => {
                    self.drop_waits(|w| w.itt == request.referenced_task_tag);
                    if self.luns[index]
                        .scsi
                        .abort_task(request.referenced_task_tag)
                    {
                        tmf::FUNCTION_COMPLETE
                    } else {
                        tmf::TASK_DOES_NOT_EXIST
                    }
                }
                None => tmf::LUN_DOES_NOT_EXIST,
            },
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET => match lun {
                Some(index) => {
                    self.drop_waits(|w| usize::from(w.lun) == index);
                    self.luns[index].scsi.abort_all();
                    tmf::FUNCTION_COMPLETE
                }
                None => tmf::LUN_DOES_NOT_EXIST,
            },
            tmf::LOGICAL_UNIT_RESET => match lun {
                Some(index) => {
                    self.drop_waits(|w| usize::from(w.lun) == index);
                    self.luns[index].scsi.reset();
                    tmf::FUNCTION_COMPLETE
                }
                None => tmf::LUN_DOES_NOT_EXIST,
            },
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
                self.drop_waits(|_| true);
                for lun in &mut self.luns {
                    lun.scsi.reset();
                }
                tmf::FUNCTION_COMPLETE
            }
            tmf::TASK_REASSIGN => tmf::REASSIGNMENT_NOT_SUPPORTED,
            _ => tmf::FUNCTION_NOT_SUPPORTED,
        };
        // Aborted tasks get no answer of their own; what they had queued is dropped.
        self.uncharge_freed();
        self.drain_done(ctx);
        let answer = TaskManagementResponse {
            response,
            initiator_task_tag: request.initiator_task_tag,
            sequence: self.status_sequence(),
        };
        let cold = request.function == tmf::TARGET_COLD_RESET;
        self.queue_pdu(|bhs| answer.write(bhs), OutData::None, None, cold, ctx);
    }

    /// Forgets the writes `matches` picks that wait for data (their tasks were aborted). A
    /// task management request is parsed only between PDUs, so none of them has data
    /// arriving into its buffer at this moment.
    fn drop_waits(&mut self, matches: impl Fn(&DataWait) -> bool) {
        self.waits.retain(|w| !matches(w));
    }

    /// Answers a Logout once nothing is in flight and every answer has gone out.
    fn maybe_logout(&mut self, ctx: &mut SessionContext) {
        let Some((itt, response)) = self.logout else {
            return;
        };
        let busy = !self.luns.iter().all(|lun| lun.scsi.is_idle())
            || !self.answers.is_empty()
            || !self.out_queue.is_empty()
            || self.send_posted;
        if busy {
            return;
        }
        self.logout = None;
        let answer = LogoutResponse {
            response,
            initiator_task_tag: itt,
            sequence: self.status_sequence(),
            time2wait: 0,
            time2retain: 0,
        };
        self.queue_pdu(|bhs| answer.write(bhs), OutData::None, None, true, ctx);
    }

    // ---- answering -------------------------------------------------------------------------

    /// Queues the answers of every task the LUNs have finished.
    fn drain_done(&mut self, ctx: &mut SessionContext) {
        for index in 0..self.luns.len() {
            while let Some(done) = self.luns[index].scsi.pop_done() {
                let wire = scsi::encode_lun(self.luns[index].number);
                let lun_wire = u64::from_be_bytes(wire);
                let available = done.data_in_len;
                let data_len = available;
                let collapsed = done.status == scsi::status::GOOD && data_len > 0;
                self.answers.push_back(Answer {
                    lun: index as u16,
                    done,
                    lun_wire,
                    data_len,
                    sent: 0,
                    data_sn: 0,
                    residual: scsi_residual(done.residual),
                    collapsed,
                });
            }
        }
        self.build_answers(ctx);
        if self.stalled {
            self.stalled = false;
            self.process_input(ctx);
        }
    }

    /// Turns queued answers into PDUs while the pool has room.
    fn build_answers(&mut self, ctx: &mut SessionContext) {
        let chunk = self
            .params
            .max_xmit_data_segment_length
            .min(self.params.max_burst_length)
            .max(512);
        while let Some(answer) = self.answers.front().copied() {
            // Keep some PDUs for control answers (R2T, NOP-In, Reject, task management).
            if self.free_out.len() <= ISCSI_CONTROL_PDUS {
                break;
            }
            let mut answer = answer;
            if answer.sent < answer.data_len {
                let len = (answer.data_len - answer.sent).min(chunk);
                let last = answer.sent + len == answer.data_len;
                let burst_end = (answer.sent + len) % self.params.max_burst_length == 0;
                let status = (last && answer.collapsed).then_some(answer.done.status);
                let sequence = if status.is_some() {
                    self.status_sequence()
                } else {
                    self.plain_sequence()
                };
                let data_in = DataIn {
                    final_: last || burst_end,
                    acknowledge: false,
                    status,
                    residual: answer.residual,
                    data_segment_length: len,
                    lun: answer.lun_wire,
                    initiator_task_tag: answer.done.itt,
                    target_transfer_tag: RESERVED_TAG,
                    sequence,
                    data_sn: answer.data_sn,
                    buffer_offset: answer.sent,
                };
                let release =
                    (last && answer.collapsed).then_some((answer.lun, answer.done.task as u16));
                let data = OutData::Task {
                    lun: answer.lun,
                    task: answer.done.task as u16,
                    offset: answer.sent,
                    len,
                };
                self.queue_pdu(|bhs| data_in.write(bhs), data, release, false, ctx);
                answer.sent += len;
                answer.data_sn += 1;
                if last && answer.collapsed {
                    self.answers.pop_front();
                } else if let Some(front) = self.answers.front_mut() {
                    *front = answer;
                }
                continue;
            }
            // The status, in its own PDU.
            self.answers.pop_front();
            let lun = usize::from(answer.lun);
            let task = answer.done.task;
            let sense = self.luns[lun].scsi.sense(task);
            let mut inline = [0u8; INLINE_BYTES];
            let sense_len = sense.len().min(INLINE_BYTES - 2);
            let data_len = if sense_len > 0 {
                inline[..2].copy_from_slice(&(sense_len as u16).to_be_bytes());
                inline[2..2 + sense_len].copy_from_slice(&sense[..sense_len]);
                2 + sense_len
            } else {
                0
            };
            let response = ScsiResponse {
                response: 0,
                status: answer.done.status,
                residual: answer.residual,
                data_segment_length: data_len as u32,
                initiator_task_tag: answer.done.itt,
                sequence: self.status_sequence(),
                exp_data_sn: answer.data_sn,
            };
            let index = self.queue_pdu(
                |bhs| response.write(bhs),
                OutData::Inline(data_len),
                Some((answer.lun, task as u16)),
                false,
                ctx,
            );
            if let Some(index) = index {
                self.out[index].inline = inline;
                self.finish_trailer(index);
            }
        }
        self.post_send(ctx);
    }

    /// An answer from no task: REPORT LUNS or INQUIRY to a LUN the host has no VP at.
    fn queue_control_answer(
        &mut self,
        command: &ScsiCommand,
        status: u8,
        data: Vec<u8>,
        sense: &[u8],
        residual: Residual,
    ) {
        let sequence_needed = true;
        debug_assert!(sequence_needed);
        let mut inline = [0u8; INLINE_BYTES];
        let sense_len = sense.len().min(INLINE_BYTES - 2);
        if !data.is_empty() && status == scsi::status::GOOD {
            let data_in = DataIn {
                final_: true,
                acknowledge: false,
                status: Some(status),
                residual,
                data_segment_length: data.len() as u32,
                lun: command.lun,
                initiator_task_tag: command.initiator_task_tag,
                target_transfer_tag: RESERVED_TAG,
                sequence: self.status_sequence(),
                data_sn: 0,
                buffer_offset: 0,
            };
            self.queue_pdu_no_ctx(|bhs| data_in.write(bhs), OutData::Owned(data), false);
            return;
        }
        let data_len = if sense_len > 0 {
            inline[..2].copy_from_slice(&(sense_len as u16).to_be_bytes());
            inline[2..2 + sense_len].copy_from_slice(&sense[..sense_len]);
            2 + sense_len
        } else {
            0
        };
        let response = ScsiResponse {
            response: 0,
            status,
            residual,
            data_segment_length: data_len as u32,
            initiator_task_tag: command.initiator_task_tag,
            sequence: self.status_sequence(),
            exp_data_sn: 0,
        };
        if let Some(index) =
            self.queue_pdu_no_ctx(|bhs| response.write(bhs), OutData::Inline(data_len), false)
        {
            self.out[index].inline = inline;
            self.finish_trailer(index);
        }
    }

    fn queue_reject(&mut self, bhs: &Bhs, reason: u8, close_after: bool) {
        let answer = Reject {
            reason,
            sequence: self.status_sequence(),
            data_sn: 0,
        };
        if let Some(index) = self.queue_pdu_no_ctx(
            |out| answer.write(out),
            OutData::Inline(BHS_BYTES),
            close_after,
        ) {
            self.out[index].inline[..BHS_BYTES].copy_from_slice(bhs);
            self.finish_trailer(index);
        }
    }

    /// A PDU the initiator may not send here: Reject, then the connection ends (RFC 7143
    /// ErrorRecoveryLevel 0). Nothing more is read.
    fn reject_and_close(&mut self, bhs: &Bhs, reason: u8, why: &str) {
        log::debug!("iscsi {}: {why}: rejected, closing", self.peer);
        self.queue_reject(bhs, reason, true);
        self.stalled = true;
        self.inbound = Inbound::Discard {
            remaining: usize::MAX,
        };
    }

    fn queue_pdu(
        &mut self,
        write: impl FnOnce(&mut Bhs),
        data: OutData,
        release: Option<(u16, u16)>,
        close_after: bool,
        _ctx: &mut SessionContext,
    ) -> Option<usize> {
        let index = self.queue_pdu_no_ctx(write, data, close_after)?;
        self.out[index].release = release;
        self.finish_trailer(index);
        Some(index)
    }

    /// Builds a PDU in the pool and queues it to send. `None` (and the connection closes)
    /// when the pool is exhausted by PDUs no answer is waiting on, which only an initiator
    /// that never reads can cause.
    fn queue_pdu_no_ctx(
        &mut self,
        write: impl FnOnce(&mut Bhs),
        data: OutData,
        close_after: bool,
    ) -> Option<usize> {
        let Some(index) = self.free_out.pop() else {
            self.close("outgoing PDUs not being read");
            return None;
        };
        let header_digest = self.params.header_digest;
        let out = &mut self.out[index];
        let mut bhs = [0u8; BHS_BYTES];
        write(&mut bhs);
        out.header[..BHS_BYTES].copy_from_slice(&bhs);
        out.header_len = BHS_BYTES;
        if header_digest {
            out.header[BHS_BYTES..].copy_from_slice(&digest::digest(&bhs));
            out.header_len = BHS_BYTES + DIGEST_BYTES;
        }
        out.data = data;
        out.release = None;
        out.close_after = close_after;
        out.trailer_len = 0;
        self.out_queue.push_back(index);
        Some(index)
    }

    /// Fills a queued PDU's padding and data digest, once its data is in place.
    fn finish_trailer(&mut self, index: usize) {
        let data_digest = self.params.data_digest;
        let out = &self.out[index];
        let data: &[u8] = match &out.data {
            OutData::None => &[],
            OutData::Task {
                lun,
                task,
                offset,
                len,
            } => {
                let all = self.luns[usize::from(*lun)]
                    .scsi
                    .data_in(usize::from(*task));
                &all[*offset as usize..(*offset + *len) as usize]
            }
            OutData::Inline(len) => &out.inline[..*len],
            OutData::Owned(bytes) => bytes,
        };
        let padding = pdu::padding(data.len() as u32);
        let mut trailer = [0u8; 3 + DIGEST_BYTES];
        let mut trailer_len = padding;
        if data_digest && !data.is_empty() {
            let zeros = [0u8; 3];
            trailer[padding..padding + DIGEST_BYTES]
                .copy_from_slice(&digest::digest_of(&[data, &zeros[..padding]]));
            trailer_len += DIGEST_BYTES;
        }
        let out = &mut self.out[index];
        out.trailer = trailer;
        out.trailer_len = trailer_len;
    }

    fn post_send(&mut self, ctx: &mut SessionContext) {
        if self.send_posted || self.defer_send || self.out_queue.is_empty() {
            return;
        }
        self.sending.clear();
        self.send_iov.clear();
        while let Some(&index) = self.out_queue.front() {
            if self.send_iov.len() + 3 > MAX_SEND_IOVECS {
                break;
            }
            self.out_queue.pop_front();
            let out = &self.out[index];
            self.send_iov.push(libc::iovec {
                iov_base: out.header.as_ptr() as *mut _,
                iov_len: out.header_len,
            });
            let data: &[u8] = match &out.data {
                OutData::None => &[],
                OutData::Task {
                    lun,
                    task,
                    offset,
                    len,
                } => {
                    let all = self.luns[usize::from(*lun)]
                        .scsi
                        .data_in(usize::from(*task));
                    &all[*offset as usize..(*offset + *len) as usize]
                }
                OutData::Inline(len) => &out.inline[..*len],
                OutData::Owned(bytes) => bytes,
            };
            if !data.is_empty() {
                self.send_iov.push(libc::iovec {
                    iov_base: data.as_ptr() as *mut _,
                    iov_len: data.len(),
                });
            }
            if out.trailer_len > 0 {
                self.send_iov.push(libc::iovec {
                    iov_base: out.trailer.as_ptr() as *mut _,
                    iov_len: out.trailer_len,
                });
            }
            self.sending.push(index);
        }
        self.submit_send(ctx);
    }

    fn submit_send(&mut self, ctx: &mut SessionContext) {
        self.send_msg.msg_iov = self.send_iov.as_mut_ptr();
        self.send_msg.msg_iovlen = self.send_iov.len();
        let entry = opcode::SendMsg::new(self.fd(), &*self.send_msg as *const libc::msghdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(ctx.tag(tag::encode(TAG_SEND, 0, 0, 0)));
        // SAFETY: the msghdr, the iovecs and the buffers they point at (PDUs of the pool,
        // task buffers not released before their last PDU is sent) belong to this session and
        // stay untouched until the send completes.
        match unsafe { ctx.ring.push(&entry) } {
            Ok(()) => {
                self.send_posted = true;
                self.ring_pending += 1;
            }
            Err(error) => self.close(&format!("cannot post a send: {error}")),
        }
    }

    fn on_sent(&mut self, result: i32, ctx: &mut SessionContext) {
        self.send_posted = false;
        if result <= 0 {
            self.close("send failed");
            self.release_sending();
            return;
        }
        let mut sent = result as usize;
        let mut first = 0;
        while first < self.send_iov.len() && sent >= self.send_iov[first].iov_len {
            sent -= self.send_iov[first].iov_len;
            first += 1;
        }
        if first < self.send_iov.len() {
            self.send_iov.drain(..first);
            let iov = &mut self.send_iov[0];
            // SAFETY: sent < iov_len, so the advanced pointer stays inside the same buffer.
            iov.iov_base = unsafe { (iov.iov_base as *mut u8).add(sent) }.cast();
            iov.iov_len -= sent;
            self.submit_send(ctx);
            return;
        }
        let close_after = self.release_sending();
        if close_after {
            self.close("logged out");
            return;
        }
        self.build_answers(ctx);
        self.maybe_logout(ctx);
        self.post_send(ctx);
        if self.stalled {
            self.stalled = false;
            self.process_input(ctx);
        }
    }

    /// Gives back the PDUs that went out and the tasks they ended. Whether one of them
    /// ends the connection.
    fn release_sending(&mut self) -> bool {
        let mut close_after = false;
        for i in 0..self.sending.len() {
            let index = self.sending[i];
            let out = &mut self.out[index];
            close_after |= out.close_after;
            out.data = OutData::None;
            if let Some((lun, task)) = out.release.take() {
                let (lun, task) = (usize::from(lun), usize::from(task));
                self.luns[lun].scsi.release(task);
                self.uncharge(lun, task);
            }
            self.free_out.push(index);
        }
        self.sending.clear();
        close_after
    }

    // ---- keep-alive --------------------------------------------------------------------------

    fn post_tick(&mut self, ctx: &mut SessionContext) {
        if self.tick_posted || self.closing {
            return;
        }
        let entry = opcode::Timeout::new(&*self.tick_spec)
            .build()
            .user_data(ctx.tag(tag::encode(TAG_TICK, 0, 0, 0)));
        // SAFETY: the timespec is a box this session owns; the session outlives the entry.
        match unsafe { ctx.ring.push(&entry) } {
            Ok(()) => {
                self.tick_posted = true;
                self.ring_pending += 1;
            }
            Err(error) => self.close(&format!("cannot post the keep-alive timer: {error}")),
        }
    }

    fn on_tick(&mut self, ctx: &mut SessionContext) {
        self.tick_posted = false;
        if self.closing {
            return;
        }
        if self.entry.close_requested() {
            self.close("ended by a new login of its initiator, or by its host's VPs changing");
            return;
        }
        self.idle_ticks = self.idle_ticks.saturating_add(1);
        match self.nop_pending {
            Some(ticks) if ticks + 1 >= ISCSI_NOP_TIMEOUT_SECS => {
                self.close("the initiator did not answer a NOP-In");
                return;
            }
            Some(ticks) => self.nop_pending = Some(ticks + 1),
            None if self.idle_ticks >= ISCSI_NOP_INTERVAL_SECS => {
                let ttt = self.next_ttt;
                self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
                let nop = NopIn {
                    data_segment_length: 0,
                    lun: 0,
                    initiator_task_tag: RESERVED_TAG,
                    target_transfer_tag: ttt,
                    sequence: self.plain_sequence(),
                };
                self.nop_pending = Some(0);
                self.idle_ticks = 0;
                self.queue_pdu(|bhs| nop.write(bhs), OutData::None, None, false, ctx);
                self.post_send(ctx);
            }
            None => {}
        }
        self.post_tick(ctx);
    }
}

impl Drop for IscsiSession {
    /// A session can end with answers it never sent, or tasks the layer dropped: what they
    /// were charged goes back to the server's budget.
    fn drop(&mut self) {
        self.budget.release(self.buffer_bytes);
    }
}

impl Session for IscsiSession {
    fn start(&mut self, ctx: &mut SessionContext) {
        for lun in &mut self.luns {
            lun.scsi.attach(ctx.reactor_index);
        }
        self.post_tick(ctx);
        self.process_input(ctx);
    }

    fn on_ring_credit(&mut self, ctx: &mut SessionContext) {
        for lun in &mut self.luns {
            lun.scsi.on_ring_credit(ctx);
        }
        self.drain_done(ctx);
        self.maybe_finish();
    }

    fn revoke(&mut self, vpath_id: u64, _ctx: &mut SessionContext) {
        if self.luns.iter().any(|lun| lun.vpath_id == vpath_id) {
            self.close("a virtual path of its host was deleted");
            self.maybe_finish();
        }
    }

    fn on_completion(&mut self, local_tag: u64, result: i32, ctx: &mut SessionContext) {
        if tag::is_engine(local_tag) {
            let index = tag::decode(local_tag).slot / ISCSI_SLOTS_PER_LUN;
            if let Some(lun) = self.luns.get_mut(index) {
                lun.scsi.on_completion(local_tag, result, ctx);
            }
            self.drain_done(ctx);
            self.maybe_logout(ctx);
            self.maybe_finish();
            return;
        }
        self.ring_pending -= 1;
        match tag::kind_of(local_tag) {
            TAG_RECV => {
                self.recv_posted = false;
                if result <= 0 {
                    self.close("connection closed by the initiator");
                } else {
                    self.recv_end += result as usize;
                    self.process_input(ctx);
                }
            }
            TAG_DATA => {
                self.recv_posted = false;
                if result <= 0 {
                    self.close("connection closed by the initiator");
                } else if let Inbound::Data {
                    wait,
                    offset,
                    len,
                    got,
                    skip,
                    final_,
                } = self.inbound
                {
                    let got = got + result as u32;
                    self.inbound = if got < len {
                        Inbound::Data {
                            wait,
                            offset,
                            len,
                            got,
                            skip,
                            final_,
                        }
                    } else {
                        Inbound::Trailer {
                            wait,
                            offset,
                            len,
                            skip,
                            final_,
                        }
                    };
                    self.process_input(ctx);
                }
            }
            TAG_SEND => self.on_sent(result, ctx),
            TAG_TICK => self.on_tick(ctx),
            _ => log::error!(
                "iscsi {}: completion with unknown tag {local_tag:#x}",
                self.peer
            ),
        }
        self.maybe_finish();
    }

    fn on_wake(&mut self, token: u64, result: i32, ctx: &mut SessionContext) {
        let index = token as usize / ISCSI_SLOTS_PER_LUN;
        if let Some(lun) = self.luns.get_mut(index) {
            lun.scsi.on_wake(token, result, ctx);
        }
        self.drain_done(ctx);
        self.maybe_logout(ctx);
        self.maybe_finish();
    }

    fn begin_shutdown(&mut self, ctx: &mut SessionContext) {
        self.close("server shutting down");
        self.drain_done(ctx);
        self.maybe_finish();
    }

    fn is_finished(&self) -> bool {
        self.finished
    }
}

/// Hands a session that reached full-feature phase to the reactor its ticket has a place on:
/// one LUN per VP of its host (at most `MAX_LUNS_PER_ISCSI_SESSION`, in LUN order), each
/// with its own engine whose slots are numbered from its position. A VP whose volume is being
/// deleted is left out.
pub fn attach(logged_in: LoggedIn, context: &IscsiContext) {
    let snapshot = context.published.load();
    let peer = logged_in.peer;
    let host = logged_in.host.clone();
    let nexus = std::sync::Arc::new(scsi::Nexus {
        initiator_port: format!(
            "{},i,0x{}",
            logged_in.initiator_name,
            logged_in
                .isid
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        target_port: format!(
            "{},t,0x{:04x}",
            context.target_name,
            super::login::TARGET_PORTAL_GROUP_TAG
        ),
        host: host.clone(),
    });
    let mut paths: Vec<_> = snapshot.paths_of(&host).collect();
    paths.sort_by_key(|(_, view)| view.vpath.lun);
    if paths.len() > MAX_LUNS_PER_ISCSI_SESSION {
        log::warn!(
            "iSCSI {peer}: host {host} has {} VPs; the first {MAX_LUNS_PER_ISCSI_SESSION} by \
             LUN are served",
            paths.len()
        );
        paths.truncate(MAX_LUNS_PER_ISCSI_SESSION);
    }
    // The buffers the session's engines keep for reuse are a connection's worth, shared.
    let retained_per_lun =
        (MAX_RETAINED_BUFFER_BYTES_PER_CONNECTION / paths.len().max(1)).max(MAX_IO_BYTES);
    let mut luns = Vec::with_capacity(paths.len());
    let mut opens = Vec::with_capacity(paths.len());
    for (position, (path_index, view)) in paths.into_iter().enumerate() {
        let volume = &view.vpath.volume;
        let Ok(open) = OpenGuard::open(volume) else {
            continue;
        };
        let engine = BlockEngine::new(
            view.vpath.clone(),
            path_index,
            context.published.clone(),
            context.provisioner.clone(),
            EngineConfig {
                slot_base: position * ISCSI_SLOTS_PER_LUN,
                slots: SCSI_TASKS_PER_LUN,
                max_io_bytes: MAX_IO_BYTES,
                initial_buffer_bytes: 0,
                retained_buffer_bytes: retained_per_lun,
                domain: true,
            },
        );
        let identity = scsi::LunIdentity::new(volume.uuid, &context.target_name, PROTOCOL_ISCSI);
        let unit = context.scsi.get(volume);
        let number = u64::from(view.vpath.lun);
        luns.push((
            number,
            view.vpath.id,
            ScsiLun::new(number, engine, unit, nexus.clone(), identity),
        ));
        opens.push(open);
    }
    logged_in
        .registry_entry
        .set_luns(luns.iter().map(|(number, _, _)| *number).collect());
    log::info!(
        "iSCSI {peer}: {} (host {host}) in full-feature phase; LUNs {:?}",
        logged_in.initiator_name,
        luns.iter()
            .map(|(number, _, _)| *number)
            .collect::<Vec<_>>()
    );
    let reactor = logged_in.ticket.place.reactor();
    let session = IscsiSession::new(
        logged_in,
        luns,
        opens,
        context.target_name.clone(),
        context.published.clone(),
    );
    if let Some(reactor) = context.reactors.get(reactor) {
        reactor.post(Message::Attach(Box::new(session)));
    }
}
