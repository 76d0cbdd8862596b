//! The NBD transport of a remote LUN's link: one connection to the export per reactor, every
//! byte of it on the reactor's io_uring ring. It plugs into the remote core
//! (`backend::remote::link`), which owns the command table, reconnects and timeouts.
//!
//! ```text
//!   connect:  socket() ─▶ Connect ⟶ LinkTimeout ─▶ Send/Recv of the handshake (Negotiation) ─▶ connected
//!   issue:    header (+ write payload from the caller's buffer) ─▶ send queue ─▶ one SendMsg of
//!             up to NBD_LINK_MAX_SEND_BATCH requests
//!   replies:  one Recv at a time into the link's receive buffer (every reply that has arrived;
//!             headers to the ReplyDecoder, small reads' data copied to their buffers), or for
//!             a large read's data straight into its buffer ─▶ events ─▶ LinkContext::complete
//! ```
//!
//! At most two of the transport's entries are on the ring at once (connect and its timeout;
//! or one send and one receive), as the core's contract asks. A lost or reset connection is
//! shut down (`shutdown(2)`, which ends the pending send and receive at once); once both have
//! completed nothing refers to a command's buffer and the core hears `lost`. Commands are
//! never split: the export's block sizes are checked when the LUN is opened
//! (`driver::check_export`) to take every I/O sds makes in one request.

use super::driver::{check_export, NbdTarget};
use super::negotiation::Negotiation;
use super::reply::{errno_of, Event, ReplyDecoder, RequestShape, Want};
use super::request::{encode_request, Capabilities, REQUEST_HEADER_BYTES};
use crate::backend::remote::link::{ArrayGeometry, LinkContext, LinkTransport};
use crate::backend::LunIo;
use crate::constants::{
    NBD_LINK_DIRECT_RECV_BYTES, NBD_LINK_MAX_SEND_BATCH, NBD_LINK_RECV_BUFFER_BYTES,
    REMOTE_CONNECT_TIMEOUT_MS, REMOTE_LINK_QUEUE_DEPTH,
};
use crate::target::nbd::protocol::Command;
use io_uring::{opcode, squeue, types};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

const TAG_CONNECT: u64 = 1;
const TAG_CONNECT_TIMEOUT: u64 = 2;
const TAG_SEND: u64 = 3;
const TAG_RECV: u64 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Connect and its timeout are on the ring.
    Connecting,
    Negotiating,
    Connected,
    /// Shut down; waiting for the last entries before reporting `lost`.
    Closing,
}

/// What a receive on the ring was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecvKind {
    Negotiation,
    /// Replies into the link's receive buffer (as many as arrive), decoded from there.
    Buffered,
    /// A large read's data straight into its buffer, where the decoder says.
    Direct,
}

/// One command of the link's table as the transport sees it (indexed like the core's).
#[derive(Clone, Copy, Debug)]
struct Slot {
    active: bool,
    cookie: u64,
    shape: RequestShape,
    /// The read's (or write's) buffer.
    buf: *mut u8,
    covered_bytes: u64,
    nbd_errno: u32,
    /// A FUA write to an export without FUA: flushed before it completes.
    flush_after: bool,
}

const IDLE_SLOT: Slot = Slot {
    active: false,
    cookie: 0,
    shape: RequestShape {
        read: false,
        offset_bytes: 0,
        length_bytes: 0,
    },
    buf: std::ptr::null_mut(),
    covered_bytes: 0,
    nbd_errno: 0,
    flush_after: false,
};

/// The NBD transport of one link (see the module doc).
pub struct NbdLink {
    target: Arc<NbdTarget>,
    phase: Phase,
    fd: Option<OwnedFd>,
    /// Entries of this transport on the ring.
    entries: u32,
    connect_result: Option<i32>,
    connect_timeout: Box<types::Timespec>,
    negotiation: Option<Box<Negotiation>>,
    decoder: Box<ReplyDecoder>,
    capabilities: Capabilities,
    recv_kind: Option<RecvKind>,
    send_armed: bool,
    lost_reason: Option<String>,
    /// Per command index: its header, and what the reply is checked against.
    headers: Box<[[u8; REQUEST_HEADER_BYTES]]>,
    slots: Box<[Slot]>,
    /// Commands whose request is not on the wire yet, oldest first.
    send_queue: VecDeque<u16>,
    /// The send on the ring: its iovecs (the first `iov_start` are sent already) and message.
    iovecs: Box<[libc::iovec]>,
    iov_start: usize,
    iov_end: usize,
    msghdr: Box<libc::msghdr>,
    /// Received bytes not decoded yet: `receive[received_start..received_end]`.
    receive: Box<[u8]>,
    received_start: usize,
    received_end: usize,
    /// Makes each issue's cookie unique on the connection (above the command index's 16 bits).
    sequence: u64,
}

// SAFETY: the raw pointers (caller buffers, iovecs) are used only on the link's reactor, which
// alone runs the transport after the driver made it; the engine keeps the buffers valid until
// their completion (the `Lun::submit` contract).
unsafe impl Send for NbdLink {}

fn errno_text(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

impl NbdLink {
    pub fn new(target: Arc<NbdTarget>) -> Self {
        let timeout_ms = REMOTE_CONNECT_TIMEOUT_MS;
        Self {
            target,
            phase: Phase::Idle,
            fd: None,
            entries: 0,
            connect_result: None,
            connect_timeout: Box::new(
                types::Timespec::new()
                    .sec(timeout_ms / 1000)
                    .nsec((timeout_ms % 1000) as u32 * 1_000_000),
            ),
            negotiation: None,
            decoder: Box::new(ReplyDecoder::new(false)),
            capabilities: Capabilities::from_flags(0),
            recv_kind: None,
            send_armed: false,
            lost_reason: None,
            headers: vec![[0u8; REQUEST_HEADER_BYTES]; REMOTE_LINK_QUEUE_DEPTH].into_boxed_slice(),
            slots: vec![IDLE_SLOT; REMOTE_LINK_QUEUE_DEPTH].into_boxed_slice(),
            send_queue: VecDeque::with_capacity(REMOTE_LINK_QUEUE_DEPTH),
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                2 * NBD_LINK_MAX_SEND_BATCH
            ]
            .into_boxed_slice(),
            iov_start: 0,
            iov_end: 0,
            // SAFETY: msghdr is plain data for which all-zeroes is valid (no name, no control).
            msghdr: Box::new(unsafe { std::mem::zeroed() }),
            receive: vec![0u8; NBD_LINK_RECV_BUFFER_BYTES].into_boxed_slice(),
            received_start: 0,
            received_end: 0,
            sequence: 0,
        }
    }

    fn raw_fd(&self) -> i32 {
        self.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }

    /// Pushes one of the transport's entries.
    ///
    /// # Safety
    /// As for `IoRing::push`: what the entry refers to stays valid until it completes.
    unsafe fn push(&mut self, entry: squeue::Entry, link: &mut LinkContext) -> bool {
        // SAFETY: passed on from the caller.
        let pushed = unsafe { link.ring.push(&entry) }.is_ok();
        if pushed {
            self.entries += 1;
        }
        pushed
    }

    /// The connection failed for `reason`: shut it down and report `lost` once the ring holds
    /// nothing of it.
    fn fail(&mut self, reason: String, link: &mut LinkContext) {
        if self.phase != Phase::Closing {
            self.lost_reason = Some(reason);
            self.phase = Phase::Closing;
            if let Some(fd) = &self.fd {
                // SAFETY: shutting down a socket this transport owns; it stays open until the
                // entries that use it have completed.
                unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
        self.settle_closing(link);
    }

    fn settle_closing(&mut self, link: &mut LinkContext) {
        if self.phase != Phase::Closing || self.entries != 0 {
            return;
        }
        self.fd = None;
        self.negotiation = None;
        self.recv_kind = None;
        self.send_armed = false;
        self.send_queue.clear();
        self.slots.fill(IDLE_SLOT);
        self.connect_result = None;
        self.received_start = 0;
        self.received_end = 0;
        self.phase = Phase::Idle;
        let reason = self
            .lost_reason
            .take()
            .unwrap_or_else(|| "disconnected".into());
        link.lost(reason);
    }

    /// The next step of the handshake: send what it has to say, else receive what it waits for.
    fn negotiate(&mut self, link: &mut LinkContext) {
        let fd = types::Fd(self.raw_fd());
        let Some(negotiation) = self.negotiation.as_mut() else {
            return;
        };
        let out = negotiation.output();
        let entry = if !out.is_empty() {
            self.send_armed = true;
            opcode::Send::new(fd, out.as_ptr(), out.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(link.tag(TAG_SEND))
        } else {
            let input = negotiation.input();
            self.recv_kind = Some(RecvKind::Negotiation);
            opcode::Recv::new(fd, input.as_mut_ptr(), input.len() as u32)
                .build()
                .user_data(link.tag(TAG_RECV))
        };
        // SAFETY: the negotiation is boxed and kept (not touched) until this entry completes;
        // the socket stays open until then (closed only once `entries` is 0).
        if !unsafe { self.push(entry, link) } {
            self.send_armed = false;
            self.recv_kind = None;
            self.fail("the ring is full".into(), link);
        }
    }

    /// Posts the next receive of replies: into the link's receive buffer, or, for the data of
    /// a large read, straight into the read's buffer (no copy where copying would cost).
    fn receive_reply(&mut self, link: &mut LinkContext) {
        if self.phase != Phase::Connected || self.recv_kind.is_some() {
            return;
        }
        let fd = types::Fd(self.raw_fd());
        let (ptr, len, kind) = match self.decoder.want() {
            Want::Data { cookie, at, len } if len as usize >= NBD_LINK_DIRECT_RECV_BYTES => {
                let slot = self.slots[(cookie & 0xffff) as usize];
                // SAFETY: the decoder checked `at..at + len` lies inside the read the cookie
                // names, whose buffer the engine keeps valid until the read completes.
                let ptr = unsafe { slot.buf.add(at as usize) };
                (ptr, len as usize, RecvKind::Direct)
            }
            _ => (
                self.receive.as_mut_ptr(),
                self.receive.len(),
                RecvKind::Buffered,
            ),
        };
        let entry = opcode::Recv::new(fd, ptr, len as u32)
            .build()
            .user_data(link.tag(TAG_RECV));
        self.recv_kind = Some(kind);
        // SAFETY: the receive buffer is boxed in the transport and not touched until this
        // entry completes; a read's buffer stays valid until the read completes, which needs
        // the data this receive brings (or the connection's loss, reported only once this
        // entry has completed).
        if !unsafe { self.push(entry, link) } {
            self.recv_kind = None;
            self.fail("the ring is full".into(), link);
        }
    }

    /// Feeds the decoder what the receive buffer holds: headers into its buffer, read data
    /// copied to the reads' buffers; finished commands complete.
    fn decode_received(&mut self, link: &mut LinkContext) -> Result<(), String> {
        while self.received_start < self.received_end {
            let available = &self.receive[self.received_start..self.received_end];
            let count = match self.decoder.want() {
                Want::Header(_) => {
                    let to = self.decoder.buffer();
                    let count = to.len().min(available.len());
                    to[..count].copy_from_slice(&available[..count]);
                    count
                }
                Want::Data { cookie, at, len } => {
                    let count = (len as usize).min(available.len());
                    let slot = self.slots[(cookie & 0xffff) as usize];
                    // SAFETY: the decoder checked `at..at + len` lies inside the read the
                    // cookie names, whose buffer is valid until it completes; the receive
                    // buffer is the link's own, so the two do not overlap.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            available.as_ptr(),
                            slot.buf.add(at as usize),
                            count,
                        )
                    };
                    count
                }
                Want::Discard(len) => (len as usize).min(available.len()),
            };
            self.received_start += count;
            self.decode(count)?;
            self.handle_events(link);
        }
        self.received_start = 0;
        self.received_end = 0;
        Ok(())
    }

    /// Tells the decoder `count` bytes of what it wanted arrived.
    fn decode(&mut self, count: usize) -> Result<(), String> {
        let slots = &self.slots;
        let lookup = |cookie: u64| {
            slots
                .get((cookie & 0xffff) as usize)
                .filter(|slot| slot.active && slot.cookie == cookie)
                .map(|slot| slot.shape)
        };
        self.decoder
            .received(count, lookup)
            .map_err(|error| format!("protocol error: {error}"))
    }

    /// Sends the queued requests (up to a batch) if no send is on the ring.
    fn send_requests(&mut self, link: &mut LinkContext) {
        if self.phase != Phase::Connected || self.send_armed {
            return;
        }
        if self.iov_start == self.iov_end {
            self.iov_start = 0;
            self.iov_end = 0;
            let mut batch = 0;
            while batch < NBD_LINK_MAX_SEND_BATCH {
                let Some(index) = self.send_queue.pop_front() else {
                    break;
                };
                let index = index as usize;
                self.iovecs[self.iov_end] = libc::iovec {
                    iov_base: self.headers[index].as_mut_ptr().cast(),
                    iov_len: REQUEST_HEADER_BYTES,
                };
                self.iov_end += 1;
                let slot = &self.slots[index];
                let is_write = u16::from_be_bytes([self.headers[index][6], self.headers[index][7]])
                    == Command::Write.wire();
                if is_write {
                    self.iovecs[self.iov_end] = libc::iovec {
                        iov_base: slot.buf.cast(),
                        iov_len: slot.shape.length_bytes as usize,
                    };
                    self.iov_end += 1;
                }
                batch += 1;
            }
            if batch == 0 {
                return;
            }
        }
        self.msghdr.msg_iov = self.iovecs[self.iov_start..].as_mut_ptr();
        self.msghdr.msg_iovlen = (self.iov_end - self.iov_start) as _;
        let entry = opcode::SendMsg::new(types::Fd(self.raw_fd()), &*self.msghdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(link.tag(TAG_SEND));
        self.send_armed = true;
        // SAFETY: the message, its iovecs and the headers are boxed in the transport and not
        // changed until the send completes; a write's payload is the caller's buffer, valid
        // until the write completes, which needs the server's reply to all of it.
        if !unsafe { self.push(entry, link) } {
            self.send_armed = false;
            self.fail("the ring is full".into(), link);
        }
    }

    /// `count` bytes of the send went out: drop what is sent from the iovecs.
    fn advance_send(&mut self, mut count: usize) {
        while count > 0 && self.iov_start < self.iov_end {
            let iov = &mut self.iovecs[self.iov_start];
            if count >= iov.iov_len {
                count -= iov.iov_len;
                self.iov_start += 1;
            } else {
                // SAFETY: moves the base within the same buffer, `count` < its length.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(count) }.cast();
                iov.iov_len -= count;
                count = 0;
            }
        }
    }

    /// The handshake is done: check the export and go on as a connected link.
    fn on_negotiated(&mut self, export: super::negotiation::Export, link: &mut LinkContext) {
        self.negotiation = None;
        let block_size_bytes = link.block_size_bytes();
        let size_bytes = match check_export(&export) {
            // The LUN's block may be larger than the export's (asked for at lun_create).
            Ok((_, export_block)) if export_block <= block_size_bytes => {
                export.size_bytes / u64::from(block_size_bytes) * u64::from(block_size_bytes)
            }
            Ok((_, export_block)) => {
                return self.fail(
                    format!(
                        "the export's blocks are now {export_block} bytes, larger than the LUN's"
                    ),
                    link,
                )
            }
            Err(why) => return self.fail(why, link),
        };
        self.capabilities = Capabilities::from_flags(export.transmission_flags);
        *self.decoder = ReplyDecoder::new(export.structured);
        self.phase = Phase::Connected;
        link.connected(ArrayGeometry {
            size_bytes,
            block_size_bytes,
        });
        self.receive_reply(link);
    }

    /// A reply's events: commands finish.
    fn handle_events(&mut self, link: &mut LinkContext) {
        while let Some(event) = self.decoder.next_event() {
            match event {
                Event::Chunk {
                    cookie,
                    at,
                    len,
                    hole,
                } => {
                    let slot = &mut self.slots[(cookie & 0xffff) as usize];
                    slot.covered_bytes += u64::from(len);
                    if hole {
                        // SAFETY: the decoder checked the hole lies inside the read, whose
                        // buffer is valid and the link's until the read completes.
                        unsafe {
                            std::ptr::write_bytes(slot.buf.add(at as usize), 0, len as usize)
                        };
                    }
                }
                Event::Failed { cookie, nbd_errno } => {
                    let slot = &mut self.slots[(cookie & 0xffff) as usize];
                    if slot.nbd_errno == 0 {
                        slot.nbd_errno = nbd_errno;
                    }
                }
                Event::Done { cookie, nbd_errno } => {
                    let index = (cookie & 0xffff) as u16;
                    let slot = &mut self.slots[index as usize];
                    let nbd_errno = if slot.nbd_errno != 0 {
                        slot.nbd_errno
                    } else {
                        nbd_errno
                    };
                    let result = if nbd_errno != 0 {
                        Err(errno_of(nbd_errno))
                    } else if slot.shape.read
                        && slot.covered_bytes != u64::from(slot.shape.length_bytes)
                    {
                        Err(libc::EIO)
                    } else {
                        Ok(())
                    };
                    if result.is_ok() && slot.flush_after {
                        // The write is done; now its flush, under a new cookie.
                        slot.flush_after = false;
                        self.start(index, Command::Flush, 0, 0, 0, std::ptr::null_mut());
                        continue;
                    }
                    slot.active = false;
                    link.complete(index, result);
                }
            }
        }
    }

    /// Fills command `index`'s header and slot and queues it for sending.
    fn start(
        &mut self,
        index: u16,
        command: Command,
        flags: u16,
        offset_bytes: u64,
        length_bytes: u32,
        buf: *mut u8,
    ) {
        self.sequence += 1;
        let cookie = (self.sequence << 16) | u64::from(index);
        let slot = &mut self.slots[index as usize];
        let flush_after = slot.flush_after;
        *slot = Slot {
            active: true,
            cookie,
            shape: RequestShape {
                read: command == Command::Read,
                offset_bytes,
                length_bytes,
            },
            buf,
            covered_bytes: 0,
            nbd_errno: 0,
            flush_after,
        };
        self.headers[index as usize] =
            encode_request(command, flags, cookie, offset_bytes, length_bytes);
        self.send_queue.push_back(index);
    }
}

impl LinkTransport for NbdLink {
    fn connect(&mut self, link: &mut LinkContext) {
        let (family, addr, addr_len) = self.target.sockaddr();
        // SAFETY: a plain socket(2) call; the descriptor is owned at once.
        let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let error = std::io::Error::last_os_error();
            return link.lost(format!("cannot make a socket: {error}"));
        }
        // SAFETY: `raw` is a descriptor just returned by socket(2), owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if family != libc::AF_UNIX {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with a pointer to a live int of the size given.
            unsafe {
                libc::setsockopt(
                    raw,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            super::blocking::set_keepalive(raw);
        }
        self.fd = Some(fd);
        self.connect_result = None;
        let connect = opcode::Connect::new(types::Fd(raw), addr, addr_len)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(link.tag(TAG_CONNECT));
        let timeout = opcode::LinkTimeout::new(&*self.connect_timeout)
            .build()
            .user_data(link.tag(TAG_CONNECT_TIMEOUT));
        // SAFETY: the address lives in the shared target and the timespec in the transport,
        // both until the entries complete; the socket stays open until then.
        match unsafe { link.ring.push_linked(&connect, &timeout) } {
            Ok(()) => {
                self.entries += 2;
                self.phase = Phase::Connecting;
            }
            Err(error) => {
                self.fd = None;
                link.lost(format!("cannot start connecting: {error}"));
            }
        }
    }

    fn issue(&mut self, index: u16, io: &LunIo, link: &mut LinkContext) {
        if index as usize >= self.slots.len() {
            return link.complete(index, Err(libc::EIO));
        }
        self.slots[index as usize].flush_after = false;
        match *io {
            LunIo::Read {
                offset_bytes,
                buf,
                len_bytes,
            } => self.start(index, Command::Read, 0, offset_bytes, len_bytes, buf),
            LunIo::Write {
                offset_bytes,
                buf,
                len_bytes,
                fua,
            } => {
                self.slots[index as usize].flush_after = self.capabilities.fua_needs_flush(fua);
                let flags = self.capabilities.fua_flags(fua);
                self.start(
                    index,
                    Command::Write,
                    flags,
                    offset_bytes,
                    len_bytes,
                    buf.cast_mut(),
                )
            }
            LunIo::WriteZeroes {
                offset_bytes,
                len_bytes,
                fua,
            } => {
                let Ok(len_bytes) = u32::try_from(len_bytes) else {
                    return link.complete(index, Err(libc::EINVAL));
                };
                self.slots[index as usize].flush_after = self.capabilities.fua_needs_flush(fua);
                let flags = self.capabilities.fua_flags(fua);
                self.start(
                    index,
                    Command::WriteZeroes,
                    flags,
                    offset_bytes,
                    len_bytes,
                    std::ptr::null_mut(),
                )
            }
            LunIo::Flush if !self.capabilities.flush => return link.complete(index, Ok(())),
            LunIo::Flush => self.start(index, Command::Flush, 0, 0, 0, std::ptr::null_mut()),
        }
        self.send_requests(link);
    }

    fn on_completion(&mut self, tag: u64, result: i32, link: &mut LinkContext) {
        self.entries = self.entries.saturating_sub(1);
        match tag {
            TAG_CONNECT => {
                self.connect_result = Some(result);
                if self.entries == 0 {
                    self.connect_done(link);
                }
            }
            // The connect's own completion came first: both are in now.
            TAG_CONNECT_TIMEOUT if self.entries == 0 && self.connect_result.is_some() => {
                self.connect_done(link)
            }
            TAG_SEND => {
                self.send_armed = false;
                if self.phase == Phase::Closing {
                    return self.settle_closing(link);
                }
                if result < 0 {
                    return self.fail(format!("send failed: {}", errno_text(-result)), link);
                }
                if self.phase == Phase::Negotiating {
                    if let Some(negotiation) = self.negotiation.as_mut() {
                        negotiation.sent(result as usize);
                    }
                    return self.negotiate(link);
                }
                self.advance_send(result as usize);
                self.send_requests(link);
            }
            TAG_RECV => {
                let kind = self.recv_kind.take();
                if self.phase == Phase::Closing {
                    return self.settle_closing(link);
                }
                if result <= 0 {
                    let why = if result == 0 {
                        "the server closed the connection".to_string()
                    } else {
                        format!("receive failed: {}", errno_text(-result))
                    };
                    return self.fail(why, link);
                }
                match kind {
                    Some(RecvKind::Negotiation) => {
                        let Some(negotiation) = self.negotiation.as_mut() else {
                            return;
                        };
                        match negotiation.received(result as usize) {
                            Ok(Some(export)) => self.on_negotiated(export, link),
                            Ok(None) => self.negotiate(link),
                            Err(error) => self.fail(format!("handshake: {error}"), link),
                        }
                    }
                    Some(RecvKind::Direct) => {
                        if let Err(why) = self.decode(result as usize) {
                            return self.fail(why, link);
                        }
                        self.handle_events(link);
                        self.send_requests(link);
                        self.receive_reply(link);
                    }
                    Some(RecvKind::Buffered) => {
                        self.received_end = result as usize;
                        if let Err(why) = self.decode_received(link) {
                            return self.fail(why, link);
                        }
                        self.send_requests(link);
                        self.receive_reply(link);
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }

    fn disconnect(&mut self, link: &mut LinkContext) {
        match self.phase {
            // The connect ends by itself within its timeout; `connect_done` sees Closing.
            Phase::Idle => link.lost("disconnected"),
            _ => self.fail("disconnected".into(), link),
        }
    }

    fn is_idle(&self) -> bool {
        self.entries == 0
    }
}

impl NbdLink {
    /// Connect and its timeout have both completed.
    fn connect_done(&mut self, link: &mut LinkContext) {
        let result = self.connect_result.take().unwrap_or(-libc::ECANCELED);
        if self.phase == Phase::Closing {
            return self.settle_closing(link);
        }
        if result < 0 {
            let why = if result == -libc::ECANCELED {
                format!("connect to {} timed out", self.target.uri)
            } else {
                format!(
                    "cannot connect to {}: {}",
                    self.target.uri,
                    errno_text(-result)
                )
            };
            self.phase = Phase::Closing;
            self.lost_reason = Some(why);
            return self.settle_closing(link);
        }
        match Negotiation::new(&self.target.uri.export) {
            Ok(negotiation) => {
                self.negotiation = Some(Box::new(negotiation));
                self.phase = Phase::Negotiating;
                self.negotiate(link);
            }
            Err(error) => self.fail(format!("handshake: {error}"), link),
        }
    }
}
