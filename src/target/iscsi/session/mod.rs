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
//! (`ISCSI_OUT_PDUS`), gathered into one `sendmsg`; a read's data goes out of the task's
//! buffer without a copy. A NOP-In goes to an initiator that has been silent for
//! `ISCSI_NOP_INTERVAL_SECS`; one that does not answer within `ISCSI_NOP_TIMEOUT_SECS` is
//! gone, and its session closes.
//!
//! Malformed input (a PDU the initiator may not send, a data segment larger than it may be, a
//! digest that does not match) ends this connection and only it, as ErrorRecoveryLevel 0
//! prescribes; a command the target cannot carry out gets SCSI's answer and the session goes
//! on.
//!
//! Here: the session, its sequence numbers and the reactor's callbacks. `receive`: PDUs in,
//! commands and their data; `requests`: NOP, task management, text, logout; `answers`:
//! Data-In, status and every PDU out; `keep_alive`: NOP-In and close requests; [`attach`]:
//! building a session at login.

mod answers;
mod attach;
mod keep_alive;
mod receive;
mod requests;

use answers::{Answer, OutData, OutPdu};
pub use attach::attach;
use receive::{DataWait, Inbound};

use super::listener::IscsiContext;
use super::login::{LoggedIn, SessionTicket};
use super::params::Negotiated;
use super::pdu::{
    self, logout, reject, tmf, Bhs, DataIn, DataOut, Framing, InitiatorPdu, LogoutResponse, NopIn,
    ReadyToTransfer, Reject, Residual, ScsiCommand, ScsiResponse, Sequence, TaskManagementRequest,
    TaskManagementResponse, TextResponse, BHS_BYTES, RESERVED_TAG,
};
use super::registry::RegistryEntry;
use crate::blockio::tag::{self, KIND_FRONT_END_FIRST};
use crate::blockio::{BlockEngine, EngineConfig};
use crate::constants::{
    ISCSI_CMD_WINDOW, ISCSI_CONTROL_PDUS, ISCSI_MAX_AHS_BYTES, ISCSI_NOP_INTERVAL_SECS,
    ISCSI_NOP_TIMEOUT_SECS, ISCSI_OUT_PDUS, ISCSI_RECV_BUFFER_BYTES, ISCSI_SLOTS_PER_LUN,
    MAX_BUFFER_BYTES_PER_CONNECTION, MAX_BUFFER_BYTES_TOTAL, MAX_IO_BYTES,
    MAX_LUNS_PER_ISCSI_SESSION, MAX_RETAINED_BUFFER_BYTES_PER_CONNECTION, SCSI_TASKS_PER_LUN,
};
use crate::digest::{self, DIGEST_BYTES};
use crate::reactor::mailbox::Message;
use crate::reactor::session::{Session, SessionContext};
use crate::scsi::{self, DataDirection, ScsiLun, Submit, TaskDone};
use crate::target::buffer_budget::{BufferBudget, BUFFER_BUDGET};
use crate::target::gather_send::{GatherSend, Sent};
use crate::target::recv_buffer::RecvBuffer;
use crate::target::session_tick::SessionTick;
use crate::volume::open_state::OpenGuard;
use io_uring::types;
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

    recv: RecvBuffer,
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
    send: GatherSend,
    /// Set while the session handles a batch (what one receive brought): the answers it
    /// queues go out together in one `sendmsg` at the end of the batch rather than the first
    /// alone.
    defer_send: bool,

    tick: SessionTick,
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
            recv: RecvBuffer::new(ISCSI_RECV_BUFFER_BYTES),
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
            send: GatherSend::with_capacity(MAX_SEND_IOVECS),
            defer_send: false,
            tick: SessionTick::every_second(),
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
                self.recv.received();
                if result <= 0 {
                    self.close("connection closed by the initiator");
                } else {
                    self.recv.filled(result as usize);
                    self.process_input(ctx);
                }
            }
            TAG_DATA => {
                self.recv.received();
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
        let index = crate::blockio::tag::token_slot(token) / ISCSI_SLOTS_PER_LUN;
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
