//! One `sds perf --target nvme-tcp://…` job: an NVMe/TCP I/O queue, connected by
//! [`super::nvmf_target`], driven from a reactor through io_uring like a front end's session.
//! The workload, stages, `--verify` and accounting are the [`Job`]'s; this file is the wire.
//!
//! ```text
//!  pump ─▶ Job picks op, unit ─▶ command in slot cid ─▶ send queue ─▶ one sendmsg (gathered)
//!            read:  CapsuleCmd ·············· C2HData (into the slot's buffer) ─▶ CapsuleResp
//!            write: CapsuleCmd + data (in-capsule, up to IOCCSZ), or
//!                   CapsuleCmd ─▶ R2T ─▶ H2CData pieces (each at most MAXH2CDATA) ─▶ CapsuleResp
//!  receive ─▶ PDU headers parsed in the receive buffer; C2HData's data straight into the slot
//!  CapsuleResp ─▶ Job::complete (latency, verify) ─▶ cid free once its sends are back
//! ```
//!
//! Header digests are written and checked by the codec with the header; data digests
//! (`--digest data|both`) are computed over each PDU's data when it is queued, sent as a
//! piece of their own after it, and checked on C2HData once its data is in the buffer.
//!
//! The command identifier is the job's slot. Every buffer (slot data, PDU headers, the send
//! queue, iovecs, the receive buffer) is made when the job is built; nothing is allocated or
//! locked per I/O. A cid is reused only when its command has completed and every send that
//! referred to its buffers has come back from the ring. When the job is done it shuts the
//! connection down (its receive then completes) and reports.
//!
//! Anything the target sends that breaks the protocol (a PDU the codec refuses, a cid not in
//! flight, data past the command's buffer, a termination request) ends the job with the reason.

use super::job::{Job, JobResult, JobSpec, RunControl};
use super::nvmf_target::{NamespaceInfo, QueueConnection};
use super::pattern;
use crossbeam::channel::Sender;
use io_uring::types;
use sds::backend::aligned_buf::AlignedBuf;
use sds::blockio::clock::TickClock;
use sds::blockio::tag::{self, KIND_FRONT_END_FIRST};
use sds::blockio::BlockOp;
use sds::constants::{NVMF_INITIATOR_RECV_BUFFER_BYTES, NVMF_INITIATOR_SEND_PIECES};
use sds::nvmf::command::{
    CommandBuilder, IO_READ, IO_WRITE, SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK,
};
use sds::nvmf::pdu::{
    self, DataHeader, Direction, Framing, Header, Negotiated, MAX_DATA_OFFSET_BYTES,
};
use sds::reactor::session::{Session, SessionContext};
use sds::target::gather_send::{GatherSend, Sent};
use sds::target::recv_buffer::{RecvBuffer, RecvPostError};
use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;

const TAG_RECV: u64 = KIND_FRONT_END_FIRST;
const TAG_DATA: u64 = KIND_FRONT_END_FIRST + 1;
const TAG_SEND: u64 = KIND_FRONT_END_FIRST + 2;
const _: () = assert!(TAG_SEND <= tag::KIND_LAST);
/// Room for one encoded PDU header with its padding (PDO is one byte).
const HEADER_ROOM: usize = MAX_DATA_OFFSET_BYTES + 1;

/// A piece of work for the send side.
#[derive(Clone, Copy)]
enum SendItem {
    /// The command capsule of slot `cid` (with its write data when in-capsule).
    Capsule { cid: u16 },
    /// An H2CData PDU of slot `cid`: header number `header`, `length` bytes from `offset`,
    /// and the data digest in the same number's digest room if `digest`.
    Data {
        cid: u16,
        header: u16,
        offset: u32,
        length: u32,
        digest: bool,
    },
}

/// What the receive side is in the middle of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inbound {
    /// PDU headers, in the receive buffer.
    Headers,
    /// C2HData's data, straight into slot `cid`'s buffer at `at`, `remaining` bytes to come.
    Data {
        cid: u16,
        at: usize,
        remaining: usize,
        pdu: DataPdu,
    },
    /// The data digest that follows a C2HData PDU's data, in the receive buffer.
    Digest { cid: u16, pdu: DataPdu },
}

/// The C2HData PDU whose data is being received.
#[derive(Clone, Copy, PartialEq, Eq)]
struct DataPdu {
    /// Where its data sits in the command's buffer.
    offset: usize,
    length: usize,
    /// The PDU said the command is done (no CapsuleResp follows).
    success: bool,
    /// A data digest follows the data.
    digest: bool,
}

/// Per command identifier.
#[derive(Clone, Copy, Default)]
struct CidState {
    /// Sends queued or on the ring that point into this slot's buffers.
    sends_pending: u16,
    /// Its command is done (or was never started): the cid may be reused once its sends
    /// are back.
    idle: bool,
    /// Bytes of the encoded capsule header.
    capsule_header_bytes: u16,
    /// Whether the write data went in the capsule, and with a data digest after it.
    in_capsule: bool,
    capsule_data_digest: bool,
    /// The next H2CData header buffer to use (round robin).
    next_data_header: u16,
    start_ticks: u64,
}

pub struct NvmfJob {
    job: Job,
    stream: TcpStream,
    negotiated: Negotiated,
    namespace: NamespaceInfo,
    max_h2c_data_bytes: u32,
    in_capsule_bytes: u32,
    /// Slot `cid`'s data: `io_bytes` at `cid * io_bytes`.
    data: AlignedBuf,
    /// Slot `cid`'s capsule header, then its H2CData headers, [`HEADER_ROOM`] bytes each.
    headers: Vec<u8>,
    /// The data digests of those PDUs, numbered as the headers.
    data_digests: Vec<[u8; pdu::DIGEST_BYTES]>,
    data_headers_per_cid: usize,
    cids: Vec<CidState>,
    free_cids: Vec<u16>,
    send_queue: VecDeque<SendItem>,
    /// Cids whose items the send on the ring carries.
    posted: Vec<u16>,
    send: GatherSend,
    recv: RecvBuffer,
    inbound: Inbound,
    /// Socket operations on the ring.
    ring_pending: u32,
    closing: bool,
}

impl NvmfJob {
    pub fn new(
        spec: JobSpec,
        control: Arc<RunControl>,
        results: Sender<JobResult>,
        queue: QueueConnection,
        namespace: NamespaceInfo,
        in_capsule_bytes: u32,
    ) -> Self {
        let io_bytes = spec.io_bytes as usize;
        let queue_depth = spec.queue_depth;
        let max_h2c = queue.max_h2c_data_bytes.max(pdu::MIN_MAXH2CDATA) as usize;
        let data_headers_per_cid = io_bytes.div_ceil(max_h2c).max(1);
        let headers_per_cid = 1 + data_headers_per_cid;
        let job = Job::new(spec, control, results, TickClock::shared());
        let mut negotiated = queue.negotiated;
        // The most data one received PDU may carry: a whole command's.
        negotiated.max_data_bytes = io_bytes as u32;
        Self {
            job,
            stream: queue.stream,
            negotiated,
            namespace,
            max_h2c_data_bytes: max_h2c as u32,
            in_capsule_bytes,
            data: AlignedBuf::new(queue_depth * io_bytes),
            headers: vec![0; queue_depth * headers_per_cid * HEADER_ROOM],
            data_digests: vec![[0; pdu::DIGEST_BYTES]; queue_depth * headers_per_cid],
            data_headers_per_cid,
            cids: vec![
                CidState {
                    idle: true,
                    ..CidState::default()
                };
                queue_depth
            ],
            free_cids: (0..queue_depth as u16).rev().collect(),
            send_queue: VecDeque::with_capacity(queue_depth * headers_per_cid),
            posted: Vec::with_capacity(NVMF_INITIATOR_SEND_PIECES),
            send: GatherSend::with_capacity(NVMF_INITIATOR_SEND_PIECES),
            recv: RecvBuffer::new(NVMF_INITIATOR_RECV_BUFFER_BYTES),
            inbound: Inbound::Headers,
            ring_pending: 0,
            closing: false,
        }
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.stream.as_raw_fd())
    }

    fn io_bytes(&self) -> usize {
        self.job.spec.io_bytes as usize
    }

    fn header_at(&mut self, cid: u16, index: usize) -> &mut [u8] {
        let per_cid = 1 + self.data_headers_per_cid;
        let at = (cid as usize * per_cid + index) * HEADER_ROOM;
        &mut self.headers[at..at + HEADER_ROOM]
    }

    /// Ends the job: it stops issuing, and the connection is shut down so the receive on
    /// the ring comes back.
    fn fail(&mut self, why: String) {
        self.job.abandon(Some(why));
        self.close();
        // Nothing more comes back on this connection: what was in flight failed.
        for cid in 0..self.cids.len() as u16 {
            if !self.cids[cid as usize].idle {
                self.command_done(cid, false);
            }
        }
        self.inbound = Inbound::Headers;
    }

    fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            // SAFETY: shutdown on a descriptor this job owns; the target sees the queue end
            // and the receive on the ring completes.
            unsafe { libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    /// Finishes the job once it has nothing in flight: the connection is shut down first,
    /// and the result goes once the ring has given back every socket operation.
    fn maybe_finish(&mut self) {
        if self.job.finished || !self.job.ready_to_finish() {
            return;
        }
        if !self.closing {
            self.close();
        }
        if self.ring_pending == 0 {
            self.job.finish(0);
        }
    }

    // ---- issuing ---------------------------------------------------------------------------

    fn pump(&mut self, ctx: &mut SessionContext) {
        while !self.closing {
            self.job.advance();
            if !self.job.has_work() {
                break;
            }
            let Some(cid) = self.free_cids.pop() else {
                break;
            };
            if !self.start_io(cid) {
                self.free_cids.push(cid);
                break;
            }
        }
        self.flush_send(ctx);
        self.post_recv(ctx);
        self.job.advance();
        self.maybe_finish();
    }

    /// Starts the next I/O of the job in slot `cid`; false when there is none to start now.
    fn start_io(&mut self, cid: u16) -> bool {
        let Some((op, unit, offset_bytes)) = self.job.pick() else {
            return false;
        };
        let stamp = self.job.stamp_for(op, unit);
        let io_bytes = self.job.spec.io_bytes;
        let slot = cid as usize;
        if self.job.spec.verify && op == BlockOp::Write {
            let io = io_bytes as usize;
            pattern::fill(
                &mut self.data.as_mut_slice()[slot * io..(slot + 1) * io],
                offset_bytes,
                stamp,
            );
        }
        let block = u64::from(self.namespace.block_bytes);
        let in_capsule = op == BlockOp::Write && io_bytes <= self.in_capsule_bytes;
        let (opcode, sgl) = match op {
            BlockOp::Write if in_capsule => (IO_WRITE, SGL_DATA_BLOCK_OFFSET),
            BlockOp::Write => (IO_WRITE, SGL_TRANSPORT_DATA_BLOCK),
            _ => (IO_READ, SGL_TRANSPORT_DATA_BLOCK),
        };
        let command = CommandBuilder::new(opcode, cid)
            .nsid(self.namespace.nsid)
            .range(offset_bytes / block, (u64::from(io_bytes) / block) as u32)
            .sgl(0, io_bytes, sgl)
            .build();
        let negotiated = self.negotiated;
        let data_bytes = if in_capsule { io_bytes as usize } else { 0 };
        let encoded = pdu::encode_header(
            &Header::CapsuleCmd(command),
            data_bytes,
            &negotiated,
            self.header_at(cid, 0),
        );
        let layout = match encoded {
            Ok(layout) => layout,
            Err(error) => {
                self.fail(format!("cannot encode a command capsule: {error}"));
                return false;
            }
        };
        if layout.data_digest {
            let io = io_bytes as usize;
            let per_cid = 1 + self.data_headers_per_cid;
            self.data_digests[slot * per_cid] =
                sds::digest::digest_of(&[&self.data.as_slice()[slot * io..(slot + 1) * io]]);
        }
        self.job.issue(slot, op, unit, offset_bytes, stamp);
        let now = self.job.clock.now();
        let state = &mut self.cids[slot];
        state.idle = false;
        state.capsule_header_bytes = layout.header_bytes as u16;
        state.in_capsule = in_capsule;
        state.capsule_data_digest = layout.data_digest;
        state.start_ticks = now;
        state.sends_pending += 1;
        self.send_queue.push_back(SendItem::Capsule { cid });
        true
    }

    /// Gathers queued PDUs into one sendmsg, unless one is on the ring already.
    fn flush_send(&mut self, ctx: &mut SessionContext) {
        if self.send.is_posted() || self.send_queue.is_empty() || self.closing {
            return;
        }
        self.send.clear();
        self.posted.clear();
        let io = self.io_bytes();
        let per_cid = 1 + self.data_headers_per_cid;
        // An item is at most three pieces: header, data, data digest.
        while self.send.room() >= 3 && self.posted.len() < self.posted.capacity() {
            let Some(item) = self.send_queue.pop_front() else {
                break;
            };
            match item {
                SendItem::Capsule { cid } => {
                    let state = self.cids[cid as usize];
                    let at = cid as usize * per_cid * HEADER_ROOM;
                    self.send
                        .push(&self.headers[at..at + state.capsule_header_bytes as usize]);
                    if state.in_capsule {
                        let from = cid as usize * io;
                        self.send.push(&self.data.as_slice()[from..from + io]);
                        if state.capsule_data_digest {
                            self.send.push(&self.data_digests[cid as usize * per_cid]);
                        }
                    }
                    self.posted.push(cid);
                }
                SendItem::Data {
                    cid,
                    header,
                    offset,
                    length,
                    digest,
                } => {
                    let index = cid as usize * per_cid + 1 + header as usize;
                    let at = index * HEADER_ROOM;
                    // A data PDU's header runs to its PDO (byte 3), where the data begins.
                    let header_bytes = self.headers[at + 3] as usize;
                    self.send.push(&self.headers[at..at + header_bytes]);
                    let from = cid as usize * io + offset as usize;
                    self.send
                        .push(&self.data.as_slice()[from..from + length as usize]);
                    if digest {
                        self.send.push(&self.data_digests[index]);
                    }
                    self.posted.push(cid);
                }
            }
        }
        let fd = self.fd();
        // SAFETY: the pieces are this job's header and data buffers, which stay put and
        // unchanged until the send completes: a cid carried by this send is not reused before
        // (sends_pending), and the job is dropped only when nothing is on the ring.
        let submitted = unsafe { self.send.submit(ctx, fd, TAG_SEND, &mut self.ring_pending) };
        if let Err(error) = submitted {
            self.fail(format!("cannot post a send: {error}"));
        }
    }

    /// The send on the ring came back having sent `result` bytes (or failed).
    fn on_sent(&mut self, result: i32, ctx: &mut SessionContext) {
        if result < 0 {
            self.send.failed();
            let error = std::io::Error::from_raw_os_error(-result);
            self.fail(format!("send failed: {error}"));
            return;
        }
        match self.send.complete(result as usize) {
            Sent::Partial => {
                if self.closing {
                    return;
                }
                let fd = self.fd();
                // SAFETY: as in flush_send: the rest of the same pieces, still in place.
                let submitted =
                    unsafe { self.send.submit(ctx, fd, TAG_SEND, &mut self.ring_pending) };
                if let Err(error) = submitted {
                    self.fail(format!("cannot post a send: {error}"));
                }
            }
            Sent::All => {
                for index in 0..self.posted.len() {
                    let cid = self.posted[index];
                    let state = &mut self.cids[cid as usize];
                    state.sends_pending -= 1;
                    if state.idle && state.sends_pending == 0 {
                        self.free_cids.push(cid);
                    }
                }
                self.posted.clear();
            }
        }
    }

    // ---- receiving -------------------------------------------------------------------------

    fn post_recv(&mut self, ctx: &mut SessionContext) {
        if self.recv.is_posted() || self.closing {
            return;
        }
        let (direct, kind) = match self.inbound {
            Inbound::Data {
                cid, at, remaining, ..
            } => {
                let io = self.io_bytes();
                let from = cid as usize * io + at;
                debug_assert!(at + remaining <= io);
                // SAFETY: from + remaining <= the slot's end, inside the data buffer.
                let ptr = unsafe { self.data.as_mut_ptr().add(from) };
                (Some((ptr, remaining)), TAG_DATA)
            }
            Inbound::Headers | Inbound::Digest { .. } => (None, TAG_RECV),
        };
        let fd = self.fd();
        // SAFETY: the buffer is this job's, and it outlives the completion: the reactor drops
        // a session only when is_finished(), i.e. with nothing on the ring.
        let posted = unsafe {
            self.recv
                .post(ctx, fd, direct, kind, &mut self.ring_pending)
        };
        match posted {
            Ok(()) => {}
            Err(RecvPostError::Full) => self.fail("receive buffer full of an unparsed PDU".into()),
            Err(error) => self.fail(error.to_string()),
        }
    }

    fn on_received(&mut self, kind: u64, result: i32) {
        self.recv.received();
        if result <= 0 {
            if !self.closing {
                let why = if result == 0 {
                    "the target closed the connection".to_string()
                } else {
                    format!(
                        "receive failed: {}",
                        std::io::Error::from_raw_os_error(-result)
                    )
                };
                self.fail(why);
            }
            return;
        }
        let bytes = result as usize;
        if kind == TAG_DATA {
            if let Inbound::Data {
                cid,
                at,
                remaining,
                pdu,
            } = self.inbound
            {
                let left = remaining.saturating_sub(bytes);
                if left > 0 {
                    self.inbound = Inbound::Data {
                        cid,
                        at: at + bytes,
                        remaining: left,
                        pdu,
                    };
                    return;
                }
                self.data_received(cid, pdu);
            }
        } else {
            self.recv.filled(bytes);
        }
        self.process_input();
    }

    /// A C2HData PDU's data is all in the command's buffer: its digest next, if it has one,
    /// else the command is done if the PDU said so.
    fn data_received(&mut self, cid: u16, pdu: DataPdu) {
        self.inbound = Inbound::Headers;
        if pdu.digest {
            self.inbound = Inbound::Digest { cid, pdu };
        } else if pdu.success {
            self.command_done(cid, true);
        }
    }

    /// Checks the data digest in the receive buffer against the data of `pdu`.
    fn check_digest(&mut self, cid: u16, pdu: DataPdu) {
        let io = self.io_bytes();
        let from = cid as usize * io + pdu.offset;
        let data = &self.data.as_slice()[from..from + pdu.length];
        let received = &self.recv.pending()[..pdu::DIGEST_BYTES];
        if pdu::check_data_digest(&[data], received).is_err() {
            return self.fail(format!(
                "C2HData for command {cid}: the data digest does not match the data"
            ));
        }
        self.recv.consume(pdu::DIGEST_BYTES);
        self.inbound = Inbound::Headers;
        if pdu.success {
            self.command_done(cid, true);
        }
    }

    /// Handles every whole PDU in the receive buffer.
    fn process_input(&mut self) {
        while !self.closing {
            if let Inbound::Digest { cid, pdu } = self.inbound {
                if self.recv.len() < pdu::DIGEST_BYTES {
                    break;
                }
                self.check_digest(cid, pdu);
                continue;
            }
            if self.inbound != Inbound::Headers {
                break;
            }
            let pending = self.recv.pending();
            if pending.len() < pdu::COMMON_HEADER_BYTES {
                break;
            }
            let framing =
                match pdu::parse_header(pending, Direction::ControllerToHost, &self.negotiated) {
                    Ok(framing) => framing,
                    Err(error) => return self.fail(format!("bad PDU from the target: {error}")),
                };
            let is_data = framing.pdu_type == pdu::PduType::C2HData;
            // C2HData: the header and the padding up to the data; the data is taken apart.
            let need = if is_data {
                framing.data_offset_bytes
            } else {
                framing.total_bytes
            };
            if pending.len() < need {
                break;
            }
            let header = match pdu::decode_header(pending, &framing) {
                Ok(header) => header,
                Err(error) => return self.fail(format!("bad PDU from the target: {error}")),
            };
            self.recv.consume(need);
            match header {
                Header::C2HData(data) => self.on_c2h_data(data, &framing),
                Header::CapsuleResp(completion) => {
                    let ok = completion.status.is_success();
                    if !self.command_in_flight(completion.cid) {
                        return self.fail(format!(
                            "a response for command {} which is not in flight",
                            completion.cid
                        ));
                    }
                    if !ok {
                        log::debug!(
                            "perf job {}: command {} failed: {}",
                            self.job.spec.job,
                            completion.cid,
                            completion.status
                        );
                    }
                    self.command_done(completion.cid, ok);
                }
                Header::R2T(r2t) => self.on_r2t(r2t),
                Header::C2HTermReq(term) => {
                    return self.fail(format!(
                    "the target ended the connection (termination request, FES {:#x}, FEI {:#x})",
                    term.fes, term.fei
                ))
                }
                other => {
                    return self.fail(format!(
                        "the target sent a {:?} PDU on an I/O queue",
                        other.pdu_type()
                    ))
                }
            }
        }
        self.recv.tidy(HEADER_ROOM);
    }

    fn command_in_flight(&self, cid: u16) -> bool {
        (cid as usize) < self.cids.len() && !self.cids[cid as usize].idle
    }

    fn on_c2h_data(&mut self, data: DataHeader, framing: &Framing) {
        let cid = data.command_id;
        let io = self.io_bytes();
        let at = data.offset_bytes as usize;
        let length = framing.data_bytes;
        if !self.command_in_flight(cid)
            || self.job.slots[cid as usize].op != BlockOp::Read
            || at + length > io
        {
            return self.fail(format!(
                "C2HData for command {cid} at {at}+{length}, which no read in flight expects"
            ));
        }
        let take = length.min(self.recv.len());
        let from = cid as usize * io + at;
        self.data.as_mut_slice()[from..from + take].copy_from_slice(&self.recv.pending()[..take]);
        self.recv.consume(take);
        let pdu = DataPdu {
            offset: at,
            length,
            success: data.last && data.success,
            digest: framing.data_digest_bytes > 0,
        };
        if take < length {
            self.inbound = Inbound::Data {
                cid,
                at: at + take,
                remaining: length - take,
                pdu,
            };
        } else {
            self.data_received(cid, pdu);
        }
    }

    fn on_r2t(&mut self, r2t: pdu::R2t) {
        let cid = r2t.command_id;
        let io = self.io_bytes();
        let offset = r2t.offset_bytes as usize;
        let length = r2t.length_bytes as usize;
        if !self.command_in_flight(cid)
            || self.job.slots[cid as usize].op != BlockOp::Write
            || self.cids[cid as usize].in_capsule
            || offset + length > io
        {
            return self.fail(format!(
                "R2T for command {cid} at {offset}+{length}, which no write in flight expects"
            ));
        }
        let negotiated = self.negotiated;
        let mut sent = 0;
        while sent < length {
            let piece = (length - sent).min(self.max_h2c_data_bytes as usize);
            let state = &mut self.cids[cid as usize];
            let header = state.next_data_header;
            state.next_data_header = (header + 1) % self.data_headers_per_cid as u16;
            let pdu_header = Header::H2CData(DataHeader {
                command_id: cid,
                transfer_tag: r2t.transfer_tag,
                offset_bytes: (offset + sent) as u32,
                length_bytes: piece as u32,
                last: sent + piece == length,
                success: false,
            });
            let layout = match pdu::encode_header(
                &pdu_header,
                piece,
                &negotiated,
                self.header_at(cid, 1 + header as usize),
            ) {
                Ok(layout) => layout,
                Err(error) => return self.fail(format!("cannot encode H2CData: {error}")),
            };
            if layout.data_digest {
                let from = cid as usize * io + offset + sent;
                let index = cid as usize * (1 + self.data_headers_per_cid) + 1 + header as usize;
                self.data_digests[index] =
                    sds::digest::digest_of(&[&self.data.as_slice()[from..from + piece]]);
            }
            self.cids[cid as usize].sends_pending += 1;
            self.send_queue.push_back(SendItem::Data {
                cid,
                header,
                offset: (offset + sent) as u32,
                length: piece as u32,
                digest: layout.data_digest,
            });
            sent += piece;
        }
    }

    /// Command `cid` completed (`ok`: with success): the job accounts it, and the cid goes
    /// back once no send refers to it.
    fn command_done(&mut self, cid: u16, ok: bool) {
        let slot = cid as usize;
        let latency_ticks = self
            .job
            .clock
            .now()
            .wrapping_sub(self.cids[slot].start_ticks);
        let latency_ns = self.job.clock.to_ns(latency_ticks);
        let io = self.io_bytes();
        let data = &self.data.as_slice()[slot * io..(slot + 1) * io];
        self.job.complete(slot, ok, latency_ns, data);
        let state = &mut self.cids[slot];
        state.idle = true;
        if state.sends_pending == 0 {
            self.free_cids.push(cid);
        }
    }
}

impl Session for NvmfJob {
    fn start(&mut self, ctx: &mut SessionContext) {
        self.job.start(ctx.reactor_index);
        self.pump(ctx);
    }

    fn on_completion(&mut self, local_tag: u64, result: i32, ctx: &mut SessionContext) {
        self.ring_pending -= 1;
        match tag::kind_of(local_tag) {
            TAG_SEND => self.on_sent(result, ctx),
            kind @ (TAG_RECV | TAG_DATA) => self.on_received(kind, result),
            _ => log::error!(
                "perf job {}: completion with unknown tag {local_tag:#x}",
                self.job.spec.job
            ),
        }
        self.pump(ctx);
    }

    fn on_wake(&mut self, _token: u64, _result: i32, ctx: &mut SessionContext) {
        self.pump(ctx);
    }

    fn begin_shutdown(&mut self, ctx: &mut SessionContext) {
        self.fail("the reactor is shutting down".into());
        self.pump(ctx);
    }

    fn is_finished(&self) -> bool {
        self.job.finished
    }
}

#[cfg(test)]
mod tests {
    //! The job on a real reactor against a scripted target on a loopback TCP connection: how
    //! it reassembles what the target sends in pieces, and how it ends on what breaks the
    //! protocol.
    use super::*;
    use crate::perf::job::{PHASE_MEASURE, PHASE_STOP};
    use crate::perf::options::Workload;
    use crossbeam::channel::bounded;
    use sds::nvmf::command::Completion;
    use sds::nvmf::pdu::{encode_pdu, Negotiated};
    use sds::nvmf::pdu_io::read_pdu;
    use sds::nvmf::status;
    use sds::reactor::mailbox::Message;
    use sds::reactor::PollMode;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    const IO_BYTES: u32 = 4096;

    /// How the scripted target answers a read.
    #[derive(Clone, Copy, PartialEq)]
    enum Answer {
        /// C2HData in three TCP writes (header, then the data in two halves), then CapsuleResp.
        InPieces,
        /// C2HData naming a command that is not in flight.
        WrongCid,
        /// C2HData whose data digest does not match.
        BadDigest,
    }

    fn terms(data_digest: bool) -> Negotiated {
        Negotiated {
            data_digest,
            ..Negotiated::initial(IO_BYTES)
        }
    }

    /// Runs a read job of QD 4 on a reactor against the scripted target until `stop_after`
    /// (or until it stops by itself); its result.
    fn run(answer: Answer, stop_after: Duration) -> JobResult {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let digest = answer == Answer::BadDigest;
        let target = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let negotiated = terms(digest);
            let (mut receive, mut out) = (Vec::new(), Vec::new());
            while let Ok(pdu) = read_pdu(
                &mut stream,
                &mut receive,
                Direction::HostToController,
                &negotiated,
            ) {
                let Header::CapsuleCmd(command) = pdu.header else {
                    break;
                };
                let cid = match answer {
                    Answer::WrongCid => 99,
                    _ => command.cid(),
                };
                let data = vec![0x5a; command.sgl_length() as usize];
                let header = Header::C2HData(DataHeader {
                    command_id: cid,
                    transfer_tag: 0,
                    offset_bytes: 0,
                    length_bytes: data.len() as u32,
                    last: true,
                    success: false,
                });
                encode_pdu(&header, &data, &negotiated, &mut out).expect("encode");
                if answer == Answer::BadDigest {
                    let last = out.len() - 1;
                    out[last] ^= 1;
                }
                // Header, then the data in two halves (and the digest), each its own write.
                let header_end = out.len() - data.len() - if digest { 4 } else { 0 };
                let half = header_end + data.len() / 2;
                for piece in [&out[..header_end], &out[header_end..half], &out[half..]] {
                    if stream.write_all(piece).is_err() {
                        return;
                    }
                    stream.flush().ok();
                    std::thread::sleep(Duration::from_millis(1));
                }
                let response = Header::CapsuleResp(Completion::new(command.cid(), status::SUCCESS));
                encode_pdu(&response, &[], &negotiated, &mut out).expect("encode");
                if stream.write_all(&out).is_err() {
                    return;
                }
            }
        });
        let stream = TcpStream::connect(address).expect("connect");
        let (sender, results) = bounded(1);
        let control = Arc::new(RunControl::default());
        let spec = JobSpec {
            job: 0,
            workload: Workload::RandRead,
            read_percent: 100,
            io_bytes: IO_BYTES,
            queue_depth: 4,
            region_start_bytes: 0,
            units: 256,
            domain: false,
            verify: false,
            report_cpu: false,
            starts_zeroed: false,
        };
        let queue = QueueConnection {
            stream,
            qid: 1,
            negotiated: terms(digest),
            max_h2c_data_bytes: 65536,
        };
        let namespace = NamespaceInfo {
            nsid: 1,
            block_bytes: 512,
            blocks: 2048,
        };
        let job = NvmfJob::new(spec, control.clone(), sender, queue, namespace, 0);
        let (reactor, thread) =
            sds::reactor::spawn(0, sds::serve::default_core(), PollMode::Adaptive)
                .expect("reactor");
        control.phase.store(PHASE_MEASURE, Ordering::Release);
        reactor.post(Message::Attach(Box::new(job)));
        let early = results.recv_timeout(stop_after).ok();
        control.phase.store(PHASE_STOP, Ordering::Release);
        let result = early.unwrap_or_else(|| {
            results
                .recv_timeout(Duration::from_secs(30))
                .expect("the job reports")
        });
        reactor.post(Message::Shutdown);
        let _ = thread.join();
        let _ = target.join();
        result
    }

    #[test]
    fn data_received_in_pieces_completes_reads() {
        let result = run(Answer::InPieces, Duration::from_millis(300));
        assert!(result.fatal.is_none(), "{:?}", result.fatal);
        assert!(result.completed_ios > 4, "{} I/Os", result.completed_ios);
        assert_eq!(result.failed_ios, 0);
    }

    #[test]
    fn data_for_a_command_not_in_flight_ends_the_job() {
        let result = run(Answer::WrongCid, Duration::from_secs(30));
        let fatal = result.fatal.expect("the job stopped");
        assert!(fatal.contains("C2HData for command 99"), "{fatal}");
        assert_eq!(result.failed_ios, result.completed_ios, "in flight: failed");
    }

    #[test]
    fn a_wrong_data_digest_ends_the_job() {
        let result = run(Answer::BadDigest, Duration::from_secs(30));
        let fatal = result.fatal.expect("the job stopped");
        assert!(fatal.contains("data digest does not match"), "{fatal}");
    }
}
