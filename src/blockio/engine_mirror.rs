//! The engine's rounds for a mirror volume (see `volume::mirror`): the one place the data
//! path fans a write out to several legs and picks a leg for a read.
//!
//! ```text
//!  write round: started += 1 (once) ─▶ a leg failing, or a dirty bit not set? ─▶ note ─wake─┐
//!               ◀─────────────────────────────────────────────────────────────────────────┘
//!               every healthy/resyncing leg: unmapped extents? ─▶ provision ─wake─▶ again
//!               submit the same range on every leg (ring tag LUN = leg × stride + LUN)
//!  completion:  a leg's error ─▶ leg failing; the round's end ─▶ note (persist it) ─wake─▶ on
//!  read round:  the healthy leg with fewer I/Os in flight; its error ─▶ note, then the round
//!               again on another leg
//! ```
//!
//! The host sees an error only when no leg took a write, or no healthy leg is left for a
//! read. A leg's error is made durable (the leg persisted as degraded by the metadata thread)
//! before the request that saw it finishes.

use super::tag;
use super::BlockOp;
use super::BlockStatus;
use super::{segment_io, BlockEngine, SlotState};
use crate::backend::{LunIo, Started};
use crate::constants::{MAX_MIRROR_LEGS, MAX_SEGMENTS_PER_IO, MIRROR_LEG_LUN_STRIDE};
use crate::pool::PoolLun;
use crate::reactor::session::SessionContext;
use crate::volume::mirror::Mirror;
use crate::volume::provisioner::Request;
use crate::volume::{Segment, Volume};
use std::sync::Arc;

/// Where a provisioner token of a mirror request names the leg (position + 1) it is for:
/// above the slot number (see [`tag::token_slot`]).
const LEG_TOKEN_SHIFT: u32 = tag::TOKEN_SLOT_BITS;

/// A request's mirror state, in its slot.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct MirrorSlot {
    /// Its first round ran (a later call with nothing left does nothing).
    begun: bool,
    /// Its regions' `started` counters were raised: `done` is raised when it finishes.
    pub(super) counted: bool,
    /// Where the current round began (a read round is redone from there on another leg).
    round_start_bytes: u64,
    /// The leg the current read round is on.
    read_leg: u8,
    /// Legs a read has failed on.
    tried_legs: u8,
    /// Legs the current round went to, and those that returned an error.
    round_legs: u8,
    leg_errors: u8,
}

impl BlockEngine {
    /// The engine's mirror, borrowed apart from the engine so that the engine's own methods
    /// may be called while it is used.
    #[inline]
    fn mirror_apart<'m>(&self) -> Option<&'m Mirror> {
        let mirror = self.mirror.as_ref()?;
        // SAFETY: `self.mirror` is set when the engine is built and never replaced or dropped
        // before the engine is; every caller uses the reference only within one method call
        // on the engine, so the Mirror outlives every use.
        Some(unsafe { &*Arc::as_ptr(mirror) })
    }

    /// One round of a request on a mirror volume.
    pub(super) fn run_mirror_round(&mut self, index: usize, ctx: &mut SessionContext) {
        let Some(mirror) = self.mirror_apart() else {
            return;
        };
        match self.slots[index].request.op {
            BlockOp::Read => self.mirror_read(mirror, index, ctx),
            BlockOp::Flush => self.mirror_flush(mirror, index, ctx),
            BlockOp::Write | BlockOp::Trim | BlockOp::WriteZeroes => {
                self.mirror_write(mirror, index, ctx)
            }
        }
    }

    fn mirror_flush(&mut self, mirror: &Mirror, index: usize, ctx: &mut SessionContext) {
        let slot = &mut self.slots[index];
        if slot.mirror.begun {
            return;
        }
        slot.mirror.begun = true;
        slot.cursor_bytes = u64::from(slot.request.length_bytes);
        for position in 0..MAX_MIRROR_LEGS {
            if !mirror.enter(position, true) {
                continue;
            }
            let guard = mirror.leg(position).volume_guard();
            if let Some(volume) = guard.as_ref() {
                for (lun_index, member) in volume.pool.luns.iter().enumerate() {
                    let io = LunIo::Flush;
                    // SAFETY: a flush refers to no buffer.
                    unsafe {
                        self.submit_leg_io(mirror, index, position, member, lun_index, &io, 0, ctx)
                    };
                }
            }
            mirror.leave(position, 1);
        }
    }

    fn mirror_read(&mut self, mirror: &Mirror, index: usize, ctx: &mut SessionContext) {
        let slot = &mut self.slots[index];
        let request = slot.request;
        let (start, total) = (request.offset_bytes, u64::from(request.length_bytes));
        slot.mirror.begun = true;
        if slot.cursor_bytes >= total {
            return;
        }
        let mut tried = slot.mirror.tried_legs;
        // While a resync runs, a region it has yet to copy may differ between healthy legs (a
        // crash left writes in flight): such a read goes to the resync's source, so a later
        // read cannot return older data than an earlier one.
        let pinned = (mirror.resync.is_running()
            && !mirror.log.none_set(mirror.log.regions_of(start, total)))
        .then(|| mirror.healthy_leg())
        .flatten();
        let position = loop {
            let choice = match pinned {
                Some(source) if tried & (1 << source) == 0 => Some(source),
                _ => mirror.read_leg(tried),
            };
            let Some(position) = choice else {
                self.note_status(index, BlockStatus::IoError);
                return;
            };
            if mirror.enter(position, false) {
                break position;
            }
            tried |= 1 << position;
        };
        let guard = mirror.leg(position).volume_guard();
        let Some(volume) = guard.as_ref() else {
            mirror.leave(position, 1);
            self.note_status(index, BlockStatus::IoError);
            return;
        };
        let map = volume.map();
        let slot = &mut self.slots[index];
        slot.mirror.round_start_bytes = slot.cursor_bytes;
        slot.mirror.read_leg = position as u8;
        slot.mirror.round_legs = 1 << position;
        let buf = slot.buf.as_mut_ptr();
        let mut at = slot.cursor_bytes;
        let mut segments = 0;
        while at < total && segments < MAX_SEGMENTS_PER_IO {
            let len = match volume.segment(map, start + at, total - at) {
                Segment::Unmapped { len_bytes, .. } => {
                    // SAFETY: at + len_bytes <= total <= the slot buffer's length.
                    unsafe { std::ptr::write_bytes(buf.add(at as usize), 0, len_bytes as usize) };
                    len_bytes
                }
                Segment::Mapped {
                    lun,
                    lun_index,
                    offset_bytes,
                    len_bytes,
                    ..
                } => {
                    let (io, expected) = segment_io(
                        BlockOp::Read,
                        false,
                        offset_bytes,
                        buf.wrapping_add(at as usize),
                        len_bytes,
                    );
                    // SAFETY: the slot's buffer stays put and untouched until every completion
                    // of this round is reaped (see run_segments).
                    unsafe {
                        self.submit_leg_io(
                            mirror, index, position, lun, lun_index, &io, expected, ctx,
                        )
                    };
                    segments += 1;
                    len_bytes
                }
            };
            at += len;
        }
        self.slots[index].cursor_bytes = at;
        mirror.leave(position, 1);
    }

    fn mirror_write(&mut self, mirror: &Mirror, index: usize, ctx: &mut SessionContext) {
        let slot = &mut self.slots[index];
        let request = slot.request;
        let (start, total) = (request.offset_bytes, u64::from(request.length_bytes));
        if slot.mirror.begun && slot.cursor_bytes >= total {
            return;
        }
        slot.mirror.begun = true;
        if !slot.mirror.counted {
            // Before the dirty bits are looked at: a resync or the cleaner that clears a bit
            // and then finds this count unchanged knows the write will see the bit clear.
            mirror.begin_write(start, total);
            slot.mirror.counted = true;
        }
        if mirror.has_failing_leg() || !mirror.log.all_set(mirror.log.regions_of(start, total)) {
            self.request_mirror_note(index, ctx);
            return;
        }
        let mask = mirror.write_mask();
        let mut legs = 0u8;
        for position in 0..MAX_MIRROR_LEGS {
            if mask & (1 << position) != 0 && mirror.enter(position, true) {
                legs |= 1 << position;
            }
        }
        if legs == 0 {
            self.note_status(index, BlockStatus::IoError);
            return;
        }
        let leave_all = |mirror: &Mirror| {
            for position in (0..MAX_MIRROR_LEGS).filter(|p| legs & (1 << p) != 0) {
                mirror.leave(position, 1);
            }
        };
        let cursor = self.slots[index].cursor_bytes;
        if request.op == BlockOp::Write && self.mirror_provision(mirror, legs, index, ctx) {
            leave_all(mirror);
            return;
        }
        // The round's range: as far as every leg gets within its share of the segments.
        let budget = (MAX_SEGMENTS_PER_IO / legs.count_ones() as usize).max(1);
        let mut end = total;
        for position in (0..MAX_MIRROR_LEGS).filter(|p| legs & (1 << p) != 0) {
            let guard = mirror.leg(position).volume_guard();
            let Some(volume) = guard.as_ref() else {
                continue;
            };
            let (mut at, mut segments) = (cursor, 0);
            while at < end && segments < budget {
                at += segment_len(volume, start + at, end - at);
                segments += 1;
            }
            end = end.min(at);
        }
        let buf = self.slots[index].buf.as_mut_ptr();
        for position in (0..MAX_MIRROR_LEGS).filter(|p| legs & (1 << p) != 0) {
            let guard = mirror.leg(position).volume_guard();
            let Some(volume) = guard.as_ref() else {
                continue;
            };
            let map = volume.map();
            let mut at = cursor;
            while at < end {
                at += match volume.segment(map, start + at, end - at) {
                    // TRIM and WRITE_ZEROES skip it (a write found every extent mapped).
                    Segment::Unmapped { len_bytes, .. } => len_bytes,
                    Segment::Mapped {
                        lun,
                        lun_index,
                        offset_bytes,
                        len_bytes,
                        ..
                    } => {
                        // The op is a write, a TRIM or a WRITE_ZEROES (never a read here).
                        let (io, expected) = segment_io(
                            request.op,
                            request.fua,
                            offset_bytes,
                            buf.wrapping_add(at as usize),
                            len_bytes,
                        );
                        // SAFETY: the slot's buffer stays put and untouched until every
                        // completion of this round is reaped (see run_segments); every leg
                        // reads the same bytes of it.
                        unsafe {
                            self.submit_leg_io(
                                mirror, index, position, lun, lun_index, &io, expected, ctx,
                            )
                        };
                        len_bytes
                    }
                };
            }
        }
        let slot = &mut self.slots[index];
        slot.mirror.round_start_bytes = cursor;
        slot.mirror.round_legs = legs;
        slot.cursor_bytes = end;
        leave_all(mirror);
    }

    /// Asks the provisioner to map every unmapped extent the rest of the write touches on
    /// the legs in `legs`; whether it asked (the request then waits).
    #[cold]
    fn mirror_provision(
        &mut self,
        mirror: &Mirror,
        legs: u8,
        index: usize,
        ctx: &mut SessionContext,
    ) -> bool {
        let request = self.slots[index].request;
        let (start, total) = (request.offset_bytes, u64::from(request.length_bytes));
        let cursor = self.slots[index].cursor_bytes;
        let mut wanted: Vec<(Arc<Volume>, u64)> = Vec::new();
        for position in (0..MAX_MIRROR_LEGS).filter(|p| legs & (1 << p) != 0) {
            let Some(volume) = mirror.leg_volume(position) else {
                continue;
            };
            let mut at = cursor;
            while at < total {
                at += match volume.segment(volume.map(), start + at, total - at) {
                    Segment::Unmapped {
                        extent, len_bytes, ..
                    } => {
                        wanted.push((volume.clone(), extent));
                        len_bytes
                    }
                    // Shared with a snapshot or a clone (refused for legs; kept safe):
                    // the provisioner copies it first.
                    Segment::Mapped {
                        len_bytes,
                        shared: true,
                        ..
                    } => {
                        wanted.push((volume.clone(), (start + at) / volume.extent_bytes()));
                        len_bytes
                    }
                    Segment::Mapped { len_bytes, .. } => len_bytes,
                };
            }
        }
        if wanted.is_empty() {
            return false;
        }
        for (volume, extent) in wanted {
            let mut reply = self.reply_for(index, ctx);
            if let Some(position) = mirror.position_of_volume(&volume) {
                reply.token |= ((position as u64) + 1) << LEG_TOKEN_SHIFT;
            }
            let request = Request::Provision {
                volume,
                extent,
                reply,
            };
            self.post_and_wait(index, request);
        }
        true
    }

    /// A provisioner answer for a mirror request: the token without the leg it names, and
    /// whether the answer is dealt with here (a failed provisioning of a leg's extent is that
    /// leg's failure, not the host's, while another leg is healthy).
    pub(super) fn mirror_wake(&mut self, token: u64, result: i32) -> (u64, i32) {
        let leg = token >> LEG_TOKEN_SHIFT;
        let token = token & ((1 << LEG_TOKEN_SHIFT) - 1);
        if leg == 0 || result == 0 {
            return (token, result);
        }
        let Some(mirror) = self.mirror_apart() else {
            return (token, result);
        };
        let position = (leg - 1) as usize;
        if position < MAX_MIRROR_LEGS && mirror.note_leg_error(position) {
            // The next round finds the leg failing and has it persisted before going on.
            return (token, 0);
        }
        (token, result)
    }

    /// Has the metadata thread persist the mirror's failing legs and set the request's dirty
    /// bits durably; the request waits for its wake.
    #[cold]
    fn request_mirror_note(&mut self, index: usize, ctx: &mut SessionContext) {
        let Some(mirror) = self.mirror.clone() else {
            return;
        };
        let request = self.slots[index].request;
        let note = Request::MirrorNote {
            mirror,
            offset_bytes: request.offset_bytes,
            len_bytes: u64::from(request.length_bytes),
            reply: self.reply_for(index, ctx),
        };
        self.post_and_wait(index, note);
    }

    /// Starts `io` on LUN `lun_index` of leg `position` for request `index`, counted in flight
    /// on the leg, with the ring tag naming the leg (leg × stride + LUN).
    ///
    /// # Safety
    ///
    /// Any buffer `io` names stays put and untouched until its completion is reaped.
    #[expect(
        clippy::too_many_arguments,
        reason = "the leg, its LUN and the I/O are what the three mirror rounds differ in"
    )]
    unsafe fn submit_leg_io(
        &mut self,
        mirror: &Mirror,
        index: usize,
        position: usize,
        lun: &PoolLun,
        lun_index: usize,
        io: &LunIo,
        expected_bytes: u32,
        ctx: &mut SessionContext,
    ) {
        let leg_lun_index = position * MIRROR_LEG_LUN_STRIDE + lun_index;
        let tag = ctx.tag(self.lun_io_tag(index, leg_lun_index, expected_bytes));
        mirror.enter_io(position);
        // SAFETY: the caller keeps any buffer of `io` in place until its completion.
        let started = unsafe { super::submit_lun(&*lun.lun, io, tag, ctx) };
        self.account_mirror_start(mirror, index, position, lun_index, expected_bytes, started);
    }

    fn account_mirror_start(
        &mut self,
        mirror: &Mirror,
        index: usize,
        position: usize,
        lun_index: usize,
        expected_bytes: u32,
        started: Started,
    ) {
        match started {
            Started::Queued(count) => {
                self.slots[index].pending += count;
                self.ring_pending += count;
                // One in flight per completion to come.
                mirror.enter_ios(position, count.saturating_sub(1));
            }
            Started::Done(result) => {
                let io = self.lun_io_note(u64::from(expected_bytes), self.clock.now());
                self.note_mirror_result(
                    index,
                    position * MIRROR_LEG_LUN_STRIDE + lun_index,
                    result,
                    io,
                )
            }
        }
    }

    /// Takes the result of one LUN I/O of a mirror request: the leg's in-flight count, and
    /// an error counted on its LUN and taking the leg out (the host's error only if it was
    /// the last healthy leg).
    pub(super) fn note_mirror_result(
        &mut self,
        index: usize,
        lun_index: usize,
        result: Result<(), i32>,
        io: super::LunIoNote,
    ) {
        let Some(mirror) = self.mirror_apart() else {
            return;
        };
        let position = lun_index / MIRROR_LEG_LUN_STRIDE;
        if position >= MAX_MIRROR_LEGS {
            return;
        }
        mirror.leave(position, 1);
        let slot = &mut self.slots[index];
        let Err(errno) = result else {
            if let Some(volume) = mirror.leg(position).volume_guard().as_ref() {
                if let Some(member) = volume.pool.luns.get(lun_index % MIRROR_LEG_LUN_STRIDE) {
                    io.record(&*member.lun, slot);
                }
            }
            return;
        };
        if let Some(volume) = mirror.leg(position).volume_guard().as_ref() {
            if let Some(member) = volume.pool.luns.get(lun_index % MIRROR_LEG_LUN_STRIDE) {
                member.lun.note_error(slot.request.op.lun_class(), errno);
            }
        }
        if mirror.note_leg_error(position) {
            slot.mirror.leg_errors |= 1 << position;
        } else if slot.status.is_ok() {
            slot.status = BlockStatus::from_errno(errno);
        }
    }

    /// A mirror request's round has every answer. If a leg failed in it: a read goes back to
    /// the round's start (for another leg), a write that no leg took fails, and the request
    /// waits until the metadata thread has persisted the failed legs. Whether it waits.
    pub(super) fn mirror_round_end(&mut self, index: usize, ctx: &mut SessionContext) -> bool {
        let slot = &mut self.slots[index];
        let errors = std::mem::take(&mut slot.mirror.leg_errors);
        if errors == 0 || !slot.status.is_ok() {
            return false;
        }
        if slot.request.op == BlockOp::Read {
            slot.mirror.tried_legs |= 1 << slot.mirror.read_leg;
            slot.cursor_bytes = slot.mirror.round_start_bytes;
        } else if slot.mirror.round_legs & !errors == 0 {
            slot.status = BlockStatus::IoError;
            return false;
        }
        self.request_mirror_note(index, ctx);
        self.slots[index].state == SlotState::Waiting
    }

    /// The request is over: its regions' `done` counters (a write counted by `started`).
    #[inline]
    pub(super) fn mirror_finish(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if !std::mem::take(&mut slot.mirror.counted) {
            return;
        }
        if let Some(mirror) = &self.mirror {
            mirror.end_write(
                slot.request.offset_bytes,
                u64::from(slot.request.length_bytes),
            );
        }
    }
}

/// The length of the segment of `volume` at `offset_bytes` (at most `remaining_bytes`).
#[inline]
fn segment_len(volume: &Volume, offset_bytes: u64, remaining_bytes: u64) -> u64 {
    match volume.segment(volume.map(), offset_bytes, remaining_bytes) {
        Segment::Unmapped { len_bytes, .. } | Segment::Mapped { len_bytes, .. } => len_bytes,
    }
}
