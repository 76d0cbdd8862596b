//! The iSCSI transport of a link ([`LinkTransport`]): one libiscsi [`Connection`] driven from
//! the reactor. The socket is watched with one-shot POLL_ADD entries on the reactor's ring
//! (one for POLLIN, kept armed while a connection lives, one for POLLOUT when libiscsi has
//! more to send than the socket took); a command is queued in libiscsi and written at once
//! (`iscsi_service(POLLOUT)` on the non-blocking socket), so a batch costs no extra ring round
//! trip.
//!
//! Connecting: TCP connect and login (`iscsi_full_connect_async`, which also consumes the unit
//! attentions of a new session), READ CAPACITY (16), and the provisioning VPD page when the
//! LUN is thin; then `connected`. A connection that fails (a cancelled or errored task,
//! POLLERR/POLLHUP, a failed service) is torn down: the socket is shut down so the polls
//! complete, then the context is destroyed (freeing every task), then `lost`.
//!
//! WriteZeroes: WRITE SAME (16) with UNMAP when the array supports it (LBPWS) and reads
//! unmapped blocks as zeroes (LBPRZ), else zero-filled WRITE (16)s; in chunks, one after the
//! other, FUA'd by a final SYNCHRONIZE CACHE for WRITE SAME.

use super::connection::{Connection, Event};
use super::outcome::Outcome;
use super::IscsiParams;
use crate::backend::remote::link::{ArrayGeometry, LinkContext, LinkTransport};
use crate::backend::LunIo;
use crate::constants::{
    ISCSI_MAX_COMMAND_RETRIES, ISCSI_WRITE_SAME_CHUNK_BLOCKS, ISCSI_ZERO_CHUNK_BYTES,
    REMOTE_CAPACITY_CHECK_MS, REMOTE_LINK_QUEUE_DEPTH, REMOTE_PING_INTERVAL_MS,
};
use io_uring::{opcode, types};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The transport's ring tags.
const TAG_POLL_IN: u64 = 1;
const TAG_POLL_OUT: u64 = 2;
/// The cancel of a poll, at tear-down.
const TAG_CANCEL: u64 = 3;
/// Task slots of the connection's own commands, past the link's command slots.
const SLOT_CAPACITY: u32 = REMOTE_LINK_QUEUE_DEPTH as u32;
const SLOT_INQUIRY: u32 = REMOTE_LINK_QUEUE_DEPTH as u32 + 1;
const SLOT_PING: u32 = REMOTE_LINK_QUEUE_DEPTH as u32 + 2;
const SLOTS: usize = REMOTE_LINK_QUEUE_DEPTH + 3;

/// Where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    None,
    LoggingIn,
    ReadingCapacity,
    Inquiring,
    Ready,
    /// Shut down; waiting for the polls to complete before destroying the context.
    TearingDown,
}

/// A WriteZeroes in progress.
#[derive(Clone, Copy, Debug, Default)]
struct Zeroing {
    next_bytes: u64,
    end_bytes: u64,
    fua: bool,
    /// The chunk on the wire now.
    chunk_bytes: u64,
    /// The final SYNCHRONIZE CACHE of a FUA'd WRITE SAME is on the wire.
    syncing: bool,
}

/// Per command slot.
#[derive(Clone, Copy, Debug, Default)]
struct SlotState {
    retries: u32,
    zeroing: Option<Zeroing>,
}

/// Block of zeroes the driver's links and blocking connection share.
pub type ZeroBuffer = Arc<crate::backend::aligned_buf::AlignedBuf>;

pub struct IscsiLink {
    params: Arc<IscsiParams>,
    zeroes: ZeroBuffer,
    connection: Option<Connection>,
    phase: Phase,
    poll_in_armed: bool,
    poll_out_armed: bool,
    /// Cancels of polls on the ring (at tear-down).
    cancels_in_flight: u32,
    geometry: ArrayGeometry,
    reads_zeroes: bool,
    write_same_unmap: bool,
    lost_reason: Option<String>,
    slots: Box<[SlotState]>,
    /// When the NOP-Out on the wire was sent, if one is.
    ping_sent: Option<Instant>,
    last_ping: Instant,
    last_capacity_check: Instant,
}

impl IscsiLink {
    pub fn new(params: Arc<IscsiParams>, zeroes: ZeroBuffer) -> Self {
        Self {
            params,
            zeroes,
            connection: None,
            phase: Phase::None,
            poll_in_armed: false,
            poll_out_armed: false,
            cancels_in_flight: 0,
            geometry: ArrayGeometry {
                size_bytes: 0,
                block_size_bytes: 512,
            },
            reads_zeroes: false,
            write_same_unmap: false,
            lost_reason: None,
            slots: vec![SlotState::default(); REMOTE_LINK_QUEUE_DEPTH].into_boxed_slice(),
            ping_sent: None,
            last_ping: Instant::now(),
            last_capacity_check: Instant::now(),
        }
    }

    /// Starts tearing the connection down for `reason` (see the module doc).
    fn tear_down(&mut self, reason: String, link: &mut LinkContext) {
        // Tearing down already, or torn down and reported (a failing call may ask twice).
        if self.phase == Phase::TearingDown
            || (self.phase == Phase::None && self.connection.is_none())
        {
            return;
        }
        self.phase = Phase::TearingDown;
        self.lost_reason = Some(reason);
        if let Some(connection) = &self.connection {
            connection.shutdown_socket();
        }
        // A socket still connecting does not wake its polls on shutdown: cancel them too.
        for (armed, tag) in [
            (self.poll_in_armed, TAG_POLL_IN),
            (self.poll_out_armed, TAG_POLL_OUT),
        ] {
            if armed {
                let entry = opcode::AsyncCancel::new(link.tag(tag))
                    .build()
                    .user_data(link.tag(TAG_CANCEL));
                // SAFETY: a cancel refers to no buffer.
                if unsafe { link.ring.push(&entry) }.is_ok() {
                    self.cancels_in_flight += 1;
                }
            }
        }
        self.finish_tear_down(link);
    }

    /// Destroys the context once no poll refers to its socket, and reports the loss.
    fn finish_tear_down(&mut self, link: &mut LinkContext) {
        if self.phase != Phase::TearingDown || self.poll_in_armed || self.poll_out_armed {
            return;
        }
        // Destroying the context cancels what it holds and frees every task: nothing refers
        // to a command's buffer any more.
        self.connection = None;
        self.phase = Phase::None;
        self.ping_sent = None;
        for slot in self.slots.iter_mut() {
            *slot = SlotState::default();
        }
        let reason = self
            .lost_reason
            .take()
            .unwrap_or_else(|| "connection closed".into());
        link.lost(reason);
    }

    /// Posts the polls libiscsi wants that are not posted yet.
    fn arm(&mut self, link: &mut LinkContext) {
        if self.phase == Phase::TearingDown {
            return;
        }
        let Some(connection) = &self.connection else {
            return;
        };
        let Some(fd) = connection.fd() else {
            return;
        };
        let events = connection.which_events();
        let want_in = events & libc::POLLIN != 0 || self.phase != Phase::LoggingIn;
        let want_out = events & libc::POLLOUT != 0;
        if want_in && !self.poll_in_armed {
            let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                .build()
                .user_data(link.tag(TAG_POLL_IN));
            // SAFETY: a poll refers to no buffer; the socket stays open until both polls have
            // completed (the context is destroyed only after, see `finish_tear_down`).
            self.poll_in_armed = unsafe { link.ring.push(&entry) }.is_ok();
        }
        if want_out && !self.poll_out_armed {
            let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
                .build()
                .user_data(link.tag(TAG_POLL_OUT));
            // SAFETY: as above.
            self.poll_out_armed = unsafe { link.ring.push(&entry) }.is_ok();
        }
    }

    /// Runs libiscsi for `revents` and handles what it reported.
    fn service(&mut self, revents: i16, link: &mut LinkContext) {
        let Some(connection) = &mut self.connection else {
            return;
        };
        if revents & (libc::POLLERR | libc::POLLHUP) != 0 && self.phase == Phase::Ready {
            // Let libiscsi read what arrived first, then give up on the connection.
            connection.service(revents & !(libc::POLLERR | libc::POLLHUP));
            self.handle_events(link);
            self.tear_down("the array closed the connection".into(), link);
            return;
        }
        let result = connection.service(revents);
        let error = (result < 0).then(|| connection.service_error());
        self.handle_events(link);
        if let Some(error) = error {
            self.tear_down(error, link);
        }
    }

    /// Writes what libiscsi has queued, as far as the socket takes it now.
    fn flush_out(&mut self, link: &mut LinkContext) {
        let wants_out = self
            .connection
            .as_ref()
            .is_some_and(|connection| connection.which_events() & libc::POLLOUT != 0);
        if wants_out && !self.poll_out_armed && self.phase != Phase::TearingDown {
            self.service(libc::POLLOUT, link);
        }
        self.arm(link);
    }

    fn handle_events(&mut self, link: &mut LinkContext) {
        while let Some(event) = self.connection.as_mut().and_then(Connection::next_event) {
            if self.phase == Phase::TearingDown {
                // Cancelled while tearing down: the commands go again after a reconnect.
                if let (Event::Task { slot, status }, Some(connection)) =
                    (event, self.connection.as_mut())
                {
                    connection.finish(slot, status);
                }
                continue;
            }
            match event {
                Event::Connected { status } => self.on_logged_in(status, link),
                Event::Task { slot, status } => self.on_task(slot, status, link),
            }
        }
    }

    fn on_logged_in(&mut self, status: i32, link: &mut LinkContext) {
        let Some(connection) = &mut self.connection else {
            return;
        };
        if status != 0 {
            let reason = connection.connect_error();
            self.tear_down(reason, link);
            return;
        }
        self.phase = Phase::ReadingCapacity;
        if let Err(error) = connection.read_capacity16(SLOT_CAPACITY) {
            self.tear_down(format!("READ CAPACITY: {error}"), link);
        }
    }

    fn on_task(&mut self, slot: u32, status: i32, link: &mut LinkContext) {
        let Some(connection) = &mut self.connection else {
            return;
        };
        if slot == SLOT_PING {
            // A NOP-In answered the ping (no task to free); anything else ends the connection.
            if status != 0 {
                let reason = format!("a ping failed: {}", connection.last_error());
                self.tear_down(reason, link);
            } else if let Some(sent) = self.ping_sent.take() {
                link.rtt_sample(sent.elapsed().as_micros() as u64);
            }
            return;
        }
        let finished = connection.finish(slot, status);
        if finished.outcome == Outcome::ConnectionLost {
            let reason = format!("the connection failed: {}", connection.last_error());
            self.tear_down(reason, link);
            return;
        }
        match slot {
            SLOT_CAPACITY => self.on_capacity(finished, link),
            SLOT_INQUIRY => {
                self.write_same_unmap = finished.write_same_unmap && self.reads_zeroes;
                if self.phase == Phase::Inquiring {
                    self.phase = Phase::Ready;
                    link.connected(self.geometry);
                }
            }
            _ => self.on_command(slot as u16, finished.outcome, link),
        }
    }

    fn on_capacity(&mut self, finished: super::connection::Finished, link: &mut LinkContext) {
        let capacity = match (finished.outcome, finished.capacity) {
            (Outcome::Good, Some(capacity)) => capacity,
            (Outcome::Retry { .. }, _) => {
                // A unit attention on the first command: ask again.
                if let Some(connection) = &mut self.connection {
                    if connection.read_capacity16(SLOT_CAPACITY).is_ok() {
                        return;
                    }
                }
                self.tear_down("READ CAPACITY could not be sent again".into(), link);
                return;
            }
            (outcome, _) => {
                self.tear_down(format!("READ CAPACITY failed ({outcome:?})"), link);
                return;
            }
        };
        let geometry = ArrayGeometry {
            size_bytes: capacity.size_bytes,
            block_size_bytes: capacity.block_size_bytes,
        };
        if self.phase != Phase::ReadingCapacity {
            // A capacity change noticed while serving.
            if geometry.size_bytes != self.geometry.size_bytes {
                self.geometry = geometry;
                link.array_size(geometry.size_bytes);
            }
            return;
        }
        self.geometry = geometry;
        self.reads_zeroes = capacity.reads_zeroes;
        self.write_same_unmap = false;
        if capacity.thin {
            self.phase = Phase::Inquiring;
            if let Some(connection) = &mut self.connection {
                if connection.inquiry_provisioning(SLOT_INQUIRY).is_ok() {
                    return;
                }
            }
        }
        self.phase = Phase::Ready;
        link.connected(geometry);
    }

    fn on_command(&mut self, index: u16, outcome: Outcome, link: &mut LinkContext) {
        let Some(io) = link.io(index).copied() else {
            return;
        };
        let Some(state) = self.slots.get_mut(index as usize) else {
            return;
        };
        match outcome {
            Outcome::Good => {
                if let Some(zeroing) = &mut state.zeroing {
                    if zeroing.syncing {
                        state.zeroing = None;
                        link.complete(index, Ok(()));
                        return;
                    }
                    zeroing.next_bytes += zeroing.chunk_bytes;
                    zeroing.chunk_bytes = 0;
                    state.retries = 0;
                    self.start(index, &io, link);
                    return;
                }
                *state = SlotState::default();
                link.complete(index, Ok(()));
            }
            Outcome::Retry { capacity_changed } => {
                state.retries += 1;
                if state.retries > ISCSI_MAX_COMMAND_RETRIES {
                    *state = SlotState::default();
                    link.complete(index, Err(libc::EIO));
                    return;
                }
                if capacity_changed {
                    if let Some(connection) = &mut self.connection {
                        if !connection.busy(SLOT_CAPACITY) {
                            let _ = connection.read_capacity16(SLOT_CAPACITY);
                        }
                    }
                }
                self.start(index, &io, link);
            }
            Outcome::Failed(errno) => {
                *state = SlotState::default();
                link.complete(index, Err(errno));
            }
            Outcome::ConnectionLost => {}
        }
    }

    /// Sends command `index` (or the next step of its zeroing).
    fn start(&mut self, index: u16, io: &LunIo, link: &mut LinkContext) {
        let block = link.block_size_bytes();
        let Some(connection) = &mut self.connection else {
            return;
        };
        let slot = u32::from(index);
        let state = &mut self.slots[index as usize];
        let sent = match *io {
            LunIo::Read {
                offset_bytes,
                buf,
                len_bytes,
            } => {
                // SAFETY: the engine keeps `buf` valid until the command completes, and the
                // task ends (finished, or freed with the context) before the link completes it.
                unsafe {
                    connection.read16(slot, offset_bytes / u64::from(block), buf, len_bytes, block)
                }
            }
            LunIo::Write {
                offset_bytes,
                buf,
                len_bytes,
                fua,
            } => {
                // SAFETY: as for a read.
                unsafe {
                    connection.write16(
                        slot,
                        offset_bytes / u64::from(block),
                        buf,
                        len_bytes,
                        block,
                        fua,
                    )
                }
            }
            LunIo::Flush => connection.sync_cache16(slot),
            LunIo::WriteZeroes {
                offset_bytes,
                len_bytes,
                fua,
            } => {
                let zeroing = state.zeroing.get_or_insert(Zeroing {
                    next_bytes: offset_bytes,
                    end_bytes: offset_bytes + len_bytes,
                    fua,
                    chunk_bytes: 0,
                    syncing: false,
                });
                if zeroing.next_bytes >= zeroing.end_bytes {
                    if zeroing.fua && self.write_same_unmap {
                        zeroing.syncing = true;
                        connection.sync_cache16(slot)
                    } else {
                        state.zeroing = None;
                        link.complete(index, Ok(()));
                        return;
                    }
                } else if self.write_same_unmap {
                    let chunk = (zeroing.end_bytes - zeroing.next_bytes)
                        .min(ISCSI_WRITE_SAME_CHUNK_BLOCKS * u64::from(block));
                    zeroing.chunk_bytes = chunk;
                    // SAFETY: the zero buffer is shared by the driver, alive as long as any
                    // link, and at least one block long.
                    unsafe {
                        connection.write_same16_unmap(
                            slot,
                            zeroing.next_bytes / u64::from(block),
                            (chunk / u64::from(block)) as u32,
                            self.zeroes.as_ptr(),
                            block,
                        )
                    }
                } else {
                    let chunk =
                        (zeroing.end_bytes - zeroing.next_bytes).min(ISCSI_ZERO_CHUNK_BYTES as u64);
                    zeroing.chunk_bytes = chunk;
                    // SAFETY: as above; the buffer holds `ISCSI_ZERO_CHUNK_BYTES` zeroes and is
                    // only read.
                    unsafe {
                        connection.write16(
                            slot,
                            zeroing.next_bytes / u64::from(block),
                            self.zeroes.as_ptr(),
                            chunk as u32,
                            block,
                            zeroing.fua,
                        )
                    }
                }
            }
        };
        if let Err(error) = sent {
            log::debug!(
                "LUN {}: libiscsi refused a command: {error}",
                link.lun_name()
            );
            self.slots[index as usize] = SlotState::default();
            link.complete(index, Err(libc::EIO));
        }
    }
}

impl LinkTransport for IscsiLink {
    fn connect(&mut self, link: &mut LinkContext) {
        match Connection::start(&self.params, SLOTS) {
            Ok(connection) => {
                self.connection = Some(connection);
                self.phase = Phase::LoggingIn;
                self.arm(link);
                if !self.poll_in_armed && !self.poll_out_armed {
                    self.tear_down("no socket to poll after connect".into(), link);
                }
            }
            Err(error) => link.lost(crate::logger::error_chain(&error)),
        }
    }

    fn issue(&mut self, index: u16, io: &LunIo, link: &mut LinkContext) {
        if let Some(state) = self.slots.get_mut(index as usize) {
            *state = SlotState::default();
        }
        self.start(index, io, link);
        self.flush_out(link);
    }

    fn on_completion(&mut self, tag: u64, result: i32, link: &mut LinkContext) {
        match tag {
            TAG_POLL_IN => self.poll_in_armed = false,
            TAG_POLL_OUT => self.poll_out_armed = false,
            TAG_CANCEL => {
                self.cancels_in_flight = self.cancels_in_flight.saturating_sub(1);
                return;
            }
            _ => return,
        }
        if self.phase == Phase::TearingDown {
            self.finish_tear_down(link);
            return;
        }
        if result < 0 {
            self.tear_down(
                format!(
                    "polling the socket failed: {}",
                    std::io::Error::from_raw_os_error(-result)
                ),
                link,
            );
            return;
        }
        self.service(result as i16, link);
        self.flush_out(link);
        self.finish_tear_down(link);
    }

    fn disconnect(&mut self, link: &mut LinkContext) {
        if self.connection.is_none() {
            link.lost("disconnected");
            return;
        }
        self.tear_down("disconnected".into(), link);
    }

    fn is_idle(&self) -> bool {
        !self.poll_in_armed && !self.poll_out_armed && self.cancels_in_flight == 0
    }

    fn tick(&mut self, idle: bool, link: &mut LinkContext) {
        if self.phase != Phase::Ready {
            return;
        }
        // One link per LUN asks the array its size now and then (a resize without a unit
        // attention is noticed too).
        if link.reactor_index() == 0
            && self.last_capacity_check.elapsed() >= Duration::from_millis(REMOTE_CAPACITY_CHECK_MS)
        {
            self.last_capacity_check = Instant::now();
            if let Some(connection) = &mut self.connection {
                if !connection.busy(SLOT_CAPACITY)
                    && connection.read_capacity16(SLOT_CAPACITY).is_ok()
                {
                    self.flush_out(link);
                }
            }
        }
        if let Some(sent) = self.ping_sent {
            if sent.elapsed() >= link.timeout() {
                self.tear_down("the array did not answer a ping in time".into(), link);
            }
            return;
        }
        if !idle || self.last_ping.elapsed() < Duration::from_millis(REMOTE_PING_INTERVAL_MS) {
            return;
        }
        let Some(connection) = &mut self.connection else {
            return;
        };
        self.last_ping = Instant::now();
        match connection.nop_out(SLOT_PING) {
            Ok(()) => {
                self.ping_sent = Some(self.last_ping);
                self.flush_out(link);
            }
            Err(error) => self.tear_down(format!("a ping could not be sent: {error}"), link),
        }
    }
}
