//! A link: one reactor's connection to a remote LUN's array, run by the reactor as a session.
//!
//! The generic half lives here ([`LinkCore`]: the command table, the FIFO past the queue
//! depth, completion posting, reconnect with backoff, timeouts, failing and recovery, the
//! stats); the protocol half is a [`LinkTransport`] (iSCSI over libiscsi, NBD on the ring).
//! See the module doc of [`super`] for the whole picture and the transport's contract.

use super::backoff::Backoff;
use super::link_stats::LinkState;
use super::RemoteCommon;
use crate::backend::LunIo;
use crate::constants::{
    MAX_REACTORS, REMOTE_CONNECT_TIMEOUT_MS, REMOTE_LINK_MAX_WAITING, REMOTE_LINK_QUEUE_DEPTH,
    REMOTE_LINK_TICK_MS, REMOTE_RTT_EWMA_SHIFT,
};
use crate::reactor::ring::IoRing;
use crate::reactor::session::{Session, SessionContext, SESSION_TAG_BITS};
use io_uring::{opcode, squeue, types};
use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Session-local ring tags below this belong to the transport; the core's own are above.
pub const TRANSPORT_TAG_LIMIT: u64 = 1 << 40;
/// The link's clock tick (a Timeout entry).
const TICK_TAG: u64 = TRANSPORT_TAG_LIMIT;
/// A completion posted by MSG_RING: its own entry completes only when the post failed
/// (`IOSQE_CQE_SKIP_SUCCESS`).
const POST_TAG: u64 = TRANSPORT_TAG_LIMIT + 1;

/// Link sessions per reactor: a reactor that is shutting down keeps its links until only
/// links are left (the front ends' last I/O needs them).
static LINKS_ON_REACTOR: [AtomicUsize; MAX_REACTORS] =
    [const { AtomicUsize::new(0) }; MAX_REACTORS];

/// What a transport learnt of the array when it connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrayGeometry {
    pub size_bytes: u64,
    pub block_size_bytes: u32,
}

/// The protocol half of a link: how commands travel to one array. One per reactor per LUN,
/// created by the driver ([`super::RemoteDriver::new_link`]) on the control thread and then
/// used only on its reactor. Every method gets the [`LinkContext`], through which it reaches
/// the ring and reports back to the core; it must never block.
///
/// Contract:
/// - [`connect`](Self::connect) starts a connection (TCP, login or negotiation, whatever the
///   protocol needs to know the array's geometry), and later reports exactly one of
///   [`LinkContext::connected`] or [`LinkContext::lost`] (possibly from `connect` itself).
/// - [`issue`](Self::issue) is called only while connected. The transport completes the
///   command exactly once with [`LinkContext::complete`], unless the connection is lost first:
///   then it forgets it, and the core issues it again after the next connect.
/// - [`disconnect`](Self::disconnect) (a command timed out, a connect took too long, the LUN
///   is closing) tears the connection down; once no ring entry and nothing of libiscsi refers
///   to any command's buffer any more, it reports [`LinkContext::lost`]. A connection that
///   breaks by itself is reported the same way, with the same guarantee. Called only while
///   connecting or connected, at most once per connection.
/// - [`is_idle`](Self::is_idle): none of the transport's entries is on the ring (the link may
///   finish, or connect again).
pub trait LinkTransport: Send + 'static {
    fn connect(&mut self, link: &mut LinkContext);
    fn issue(&mut self, index: u16, io: &LunIo, link: &mut LinkContext);
    /// A completion of one of the transport's own ring entries (its local tag, below
    /// [`TRANSPORT_TAG_LIMIT`]).
    fn on_completion(&mut self, tag: u64, result: i32, link: &mut LinkContext);
    fn disconnect(&mut self, link: &mut LinkContext);
    fn is_idle(&self) -> bool;
    /// Called on every tick of the link's clock ([`REMOTE_LINK_TICK_MS`]) while connected,
    /// with whether the link has had no command for a while: e.g. a NOP to measure the
    /// round trip and find a dead connection.
    fn tick(&mut self, _idle: bool, _link: &mut LinkContext) {}
}

/// Where a command of the table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommandState {
    Free,
    /// Accepted, not issued on the current connection (new, or back from a lost one).
    Waiting,
    Issued,
}

/// One command of a link's table.
#[derive(Clone, Copy)]
struct Command {
    io: LunIo,
    /// The ring tag of the caller's completion.
    tag: u64,
    accepted: Instant,
    state: CommandState,
}

/// A command accepted past the queue depth.
#[derive(Clone, Copy)]
struct Pending {
    io: LunIo,
    tag: u64,
    accepted: Instant,
}

/// Where the link's connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not started on its reactor yet.
    Idle,
    Connecting,
    Connected,
    /// Lost (or never made); the next attempt is due at `reconnect_at`.
    Waiting,
}

/// The generic state of one link (see the module doc).
pub struct LinkCore {
    reactor_index: usize,
    /// The link session's tag bits (index + 1 above [`SESSION_TAG_BITS`]); 0 before it starts.
    tag_base: u64,
    phase: Phase,
    /// A disconnect was asked of the transport and its `lost` has not come yet.
    disconnecting: bool,
    /// The link is closing for good (LUN deleted, server stopping): a loss is not news.
    winding_down: bool,
    /// This link has been unreachable for the LUN's `fail_after` and failed the LUN.
    failed: bool,
    /// Connected once already: the next connect is a reconnect.
    was_connected: bool,
    commands: Box<[Command]>,
    free: Vec<u16>,
    waiting: VecDeque<u16>,
    overflow: VecDeque<Pending>,
    to_post: VecDeque<(u64, i32)>,
    issued: usize,
    backoff: Backoff,
    reconnect_at: Instant,
    connect_started: Instant,
    unreachable_since: Option<Instant>,
    last_activity: Instant,
    rtt_us: u64,
    /// What the transport reported during its last call, handled when it returns.
    event_connected: Option<ArrayGeometry>,
    event_lost: Option<String>,
    tick_spec: Box<types::Timespec>,
    tick_armed: bool,
    shutting_down: bool,
    finished: bool,
    /// The last loss was logged; further failed attempts are not, until a connect succeeds.
    loss_logged: bool,
}

// SAFETY: the raw buffer pointers inside `LunIo` are only dereferenced by the transport on the
// link's reactor; the core only moves them. The engine that handed them over keeps them valid
// until their completion (the `Lun::submit` contract).
unsafe impl Send for LinkCore {}

impl LinkCore {
    fn new(reactor_index: usize) -> Self {
        let idle = Command {
            io: LunIo::Flush,
            tag: 0,
            accepted: Instant::now(),
            state: CommandState::Free,
        };
        let now = Instant::now();
        Self {
            reactor_index,
            tag_base: 0,
            phase: Phase::Idle,
            disconnecting: false,
            winding_down: false,
            failed: false,
            was_connected: false,
            commands: vec![idle; REMOTE_LINK_QUEUE_DEPTH].into_boxed_slice(),
            free: (0..REMOTE_LINK_QUEUE_DEPTH as u16).rev().collect(),
            waiting: VecDeque::with_capacity(REMOTE_LINK_QUEUE_DEPTH),
            overflow: VecDeque::with_capacity(REMOTE_LINK_MAX_WAITING),
            to_post: VecDeque::with_capacity(REMOTE_LINK_QUEUE_DEPTH + REMOTE_LINK_MAX_WAITING),
            issued: 0,
            backoff: Backoff::default(),
            reconnect_at: now,
            connect_started: now,
            unreachable_since: Some(now),
            last_activity: now,
            rtt_us: 0,
            event_connected: None,
            event_lost: None,
            tick_spec: Box::new(
                types::Timespec::new().nsec(REMOTE_LINK_TICK_MS as u32 * 1_000_000),
            ),
            tick_armed: false,
            shutting_down: false,
            finished: false,
            loss_logged: false,
        }
    }

    /// Feeds one round trip into the estimate (an EWMA).
    fn note_rtt(&mut self, sample_us: u64) {
        self.rtt_us = if self.rtt_us == 0 {
            sample_us.max(1)
        } else {
            let delta = sample_us as i64 - self.rtt_us as i64;
            (self.rtt_us as i64 + (delta >> REMOTE_RTT_EWMA_SHIFT)).max(1) as u64
        };
    }

    /// Commands the link holds: in the table and past it.
    fn held(&self) -> usize {
        REMOTE_LINK_QUEUE_DEPTH - self.free.len() + self.overflow.len()
    }
}

/// What a transport works with: the ring, and the core it reports to.
pub struct LinkContext<'a> {
    core: &'a mut LinkCore,
    common: &'a RemoteCommon,
    pub ring: &'a mut IoRing,
}

impl LinkContext<'_> {
    /// The full ring tag of the transport's local tag `local` (below [`TRANSPORT_TAG_LIMIT`]).
    pub fn tag(&self, local: u64) -> u64 {
        debug_assert!(local < TRANSPORT_TAG_LIMIT);
        self.core.tag_base | local
    }

    /// The LUN's name, for the transport's log lines.
    pub fn lun_name(&self) -> &str {
        &self.common.name
    }

    /// The index of the reactor the link runs on.
    pub fn reactor_index(&self) -> usize {
        self.core.reactor_index
    }

    /// The LUN's block size (the array's, checked when the LUN was opened).
    pub fn block_size_bytes(&self) -> u32 {
        self.common.block_size_bytes
    }

    /// The LUN's command timeout.
    pub fn timeout(&self) -> Duration {
        self.common.timeout
    }

    /// The I/O of issued command `index`, if it is issued.
    pub fn io(&self, index: u16) -> Option<&LunIo> {
        let command = self.core.commands.get(index as usize)?;
        (command.state == CommandState::Issued).then_some(&command.io)
    }

    /// Command `index` ended: `Ok` (the whole transfer) or a positive errno. A command that is
    /// not issued is ignored (the transport's stale answer).
    pub fn complete(&mut self, index: u16, result: Result<(), i32>) {
        let core = &mut *self.core;
        let Some(command) = core.commands.get_mut(index as usize) else {
            return;
        };
        if command.state != CommandState::Issued {
            return;
        }
        let res = match result {
            Ok(()) => match command.io {
                LunIo::Read { len_bytes, .. } | LunIo::Write { len_bytes, .. } => len_bytes as i32,
                LunIo::WriteZeroes { .. } | LunIo::Flush => 0,
            },
            Err(errno) => -errno.max(1),
        };
        let now = Instant::now();
        let sample_us = now.duration_since(command.accepted).as_micros() as u64;
        let tag = command.tag;
        command.state = CommandState::Free;
        core.note_rtt(sample_us);
        core.last_activity = now;
        core.to_post.push_back((tag, res));
        core.free.push(index);
        core.issued -= 1;
    }

    /// A round trip that took `sample_us` (an idle ping's): feeds the estimate like a command.
    pub fn rtt_sample(&mut self, sample_us: u64) {
        self.core.note_rtt(sample_us);
    }

    /// The connection is up (logged in, negotiated) and the array is `geometry`.
    pub fn connected(&mut self, geometry: ArrayGeometry) {
        self.core.event_connected = Some(geometry);
    }

    /// The array reports its LUN is `size_bytes` now (a capacity change noticed while
    /// connected): logged and shown as `array_size` when it differs from the LUN's.
    pub fn array_size(&mut self, size_bytes: u64) {
        let common = self.common;
        if size_bytes == common.size_bytes {
            log::info!(
                "LUN {}: the array's LUN is {size_bytes} bytes again, the LUN's size",
                common.name
            );
        } else {
            log::warn!(
                "LUN {}: the array's LUN is now {size_bytes} bytes (the LUN is {} bytes; the pool does not grow by itself)",
                common.name,
                common.size_bytes
            );
        }
        common.note_array_size(size_bytes);
    }

    /// The connection is gone (or could not be made), for `reason`; nothing of it refers to a
    /// command's buffer any more (see [`LinkTransport`]).
    pub fn lost(&mut self, reason: impl std::fmt::Display) {
        self.core.event_lost = Some(reason.to_string());
    }
}

/// One link's state in its LUN: the core and its transport.
pub struct Link<T> {
    pub(super) core: LinkCore,
    pub(super) transport: T,
}

/// One reactor's link of a LUN, in the LUN's table indexed by reactor. Touched only on its
/// reactor's thread: by `Lun::submit` there (checked with `IoRing::owner`) and by the link's
/// session, which that reactor alone runs; neither runs inside the other.
pub struct LinkSlot<T> {
    cell: UnsafeCell<Link<T>>,
    /// The link's session was dropped without being started (its reactor was full or
    /// stopping): its I/O fails at once rather than wait for a link that never comes.
    abandoned: AtomicBool,
}

// SAFETY: a slot is only ever accessed from its own reactor's thread (see the type's doc); the
// other threads share the table but never touch this slot's contents.
unsafe impl<T: Send> Sync for LinkSlot<T> {}

impl<T: LinkTransport> LinkSlot<T> {
    pub fn new(reactor_index: usize, transport: T) -> Self {
        Self {
            cell: UnsafeCell::new(Link {
                core: LinkCore::new(reactor_index),
                transport,
            }),
            abandoned: AtomicBool::new(false),
        }
    }

    /// The slot's state.
    ///
    /// # Safety
    /// Only on the slot's reactor's thread, and no other reference from `state` may be live
    /// (the reactor runs one handler at a time and the link never calls out of itself).
    #[allow(
        clippy::mut_from_ref,
        reason = "the slot is the reactor's own, see the type doc"
    )]
    unsafe fn state(&self) -> &mut Link<T> {
        // SAFETY: the caller guarantees exclusive use on the owning thread.
        unsafe { &mut *self.cell.get() }
    }

    /// Accepts a command from the engine on the slot's reactor: issues it at once when
    /// connected and under the queue depth, else keeps it. Returns `Err(errno)` when it
    /// completes at once (the LUN has failed, or the link holds its bound).
    ///
    /// # Safety
    /// On the slot's reactor's thread only (`ring.owner()` is this slot's index), outside any
    /// handler of this link; `io`'s buffer must stay valid until its completion is posted.
    pub unsafe fn accept(
        &self,
        common: &RemoteCommon,
        io: &LunIo,
        tag: u64,
        ring: &mut IoRing,
    ) -> Result<(), i32> {
        if self.abandoned.load(Ordering::Relaxed) {
            return Err(libc::EIO);
        }
        // SAFETY: the caller runs on this slot's reactor, outside the link's handlers.
        let state = unsafe { self.state() };
        let core = &mut state.core;
        if core.failed || core.finished || core.shutting_down {
            return Err(libc::EIO);
        }
        let now = Instant::now();
        if let Some(index) = core.free.pop() {
            core.commands[index as usize] = Command {
                io: *io,
                tag,
                accepted: now,
                state: CommandState::Waiting,
            };
            core.waiting.push_back(index);
        } else if core.overflow.len() < REMOTE_LINK_MAX_WAITING {
            core.overflow.push_back(Pending {
                io: *io,
                tag,
                accepted: now,
            });
        } else {
            return Err(libc::EIO);
        }
        settle(state, common, ring);
        Ok(())
    }
}

/// Handles what the transport reported, issues what may go, and posts completions: run after
/// every call into the transport.
fn settle<T: LinkTransport>(state: &mut Link<T>, common: &RemoteCommon, ring: &mut IoRing) {
    loop {
        let Link { core, transport } = &mut *state;
        if let Some(reason) = core.event_lost.take() {
            on_lost(core, common, &reason);
            continue;
        }
        if let Some(geometry) = core.event_connected.take() {
            on_connected(core, common, geometry);
            continue;
        }
        if core.phase != Phase::Connected || core.disconnecting {
            break;
        }
        // Commands past the depth move into freed table slots, in order.
        while !core.free.is_empty() && !core.overflow.is_empty() {
            let (Some(index), Some(pending)) = (core.free.pop(), core.overflow.pop_front()) else {
                break;
            };
            core.commands[index as usize] = Command {
                io: pending.io,
                tag: pending.tag,
                accepted: pending.accepted,
                state: CommandState::Waiting,
            };
            core.waiting.push_back(index);
        }
        let Some(index) = core.waiting.pop_front() else {
            break;
        };
        let command = &mut core.commands[index as usize];
        command.state = CommandState::Issued;
        let io = command.io;
        core.issued += 1;
        let mut link = LinkContext { core, common, ring };
        transport.issue(index, &io, &mut link);
    }
    post_completions(&mut state.core, ring);
    let core = &state.core;
    common
        .stats
        .set_in_flight(core.reactor_index, core.held() as u32);
    common.stats.set_rtt_us(core.reactor_index, core.rtt_us);
}

/// Posts the completions the ring takes now (an `IORING_OP_MSG_RING` to the reactor's own
/// ring, carrying the caller's tag and result, its own completion skipped on success); what a
/// full ring refuses is posted at the next event or tick.
fn post_completions(core: &mut LinkCore, ring: &mut IoRing) {
    while let Some(&(tag, res)) = core.to_post.front() {
        let entry = opcode::MsgRingData::new(types::Fd(ring.fd()), res, tag, None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(core.tag_base | POST_TAG);
        // SAFETY: a MSG_RING entry refers to no buffer, only to the ring's own fd, which lives
        // as long as the ring.
        if unsafe { ring.push(&entry) }.is_err() {
            break;
        }
        core.to_post.pop_front();
    }
}

fn on_connected(core: &mut LinkCore, common: &RemoteCommon, geometry: ArrayGeometry) {
    core.phase = Phase::Connected;
    core.disconnecting = false;
    core.backoff.reset();
    core.unreachable_since = None;
    core.last_activity = Instant::now();
    if core.was_connected {
        common.stats.count_reconnect();
        log::info!(
            "LUN {}: link of reactor {} reconnected",
            common.name,
            core.reactor_index
        );
    }
    core.was_connected = true;
    core.loss_logged = false;
    common.note_array_size(geometry.size_bytes);
    if geometry.size_bytes != common.size_bytes && core.reactor_index == 0 {
        log::warn!(
            "LUN {}: the array's LUN is {} bytes, the LUN is {} bytes{}",
            common.name,
            geometry.size_bytes,
            common.size_bytes,
            if geometry.size_bytes < common.size_bytes {
                " (smaller: I/O past its end fails)"
            } else {
                " (the pool does not grow by itself)"
            }
        );
    }
    common
        .stats
        .set_state(core.reactor_index, LinkState::Connected);
    if core.failed {
        core.failed = false;
        if !common.stats.any_in(LinkState::Failed)
            && !common.shrunk.load(Ordering::Acquire)
            && common.health.clear_failed()
        {
            log::info!(
                "LUN {}: the array is reachable again; the LUN is back online",
                common.name
            );
        }
    }
}

fn on_lost(core: &mut LinkCore, common: &RemoteCommon, reason: &str) {
    let was = core.phase;
    core.phase = Phase::Waiting;
    core.disconnecting = false;
    // Everything that was on the wire goes again after the next connect, oldest first.
    for index in 0..core.commands.len() {
        if core.commands[index].state == CommandState::Issued {
            core.commands[index].state = CommandState::Waiting;
            core.waiting.push_back(index as u16);
        }
    }
    let commands = &core.commands;
    core.waiting
        .make_contiguous()
        .sort_unstable_by_key(|&index| commands[index as usize].accepted);
    core.issued = 0;
    let now = Instant::now();
    core.unreachable_since.get_or_insert(now);
    core.reconnect_at = now + core.backoff.next_delay();
    if !core.failed {
        common.stats.set_state(
            core.reactor_index,
            if core.was_connected {
                LinkState::Reconnecting
            } else {
                LinkState::Connecting
            },
        );
    }
    if core.winding_down {
        log::debug!(
            "LUN {}: link of reactor {} closed",
            common.name,
            core.reactor_index
        );
    } else if !core.loss_logged {
        core.loss_logged = true;
        if was == Phase::Connected {
            log::warn!(
                "LUN {}: link of reactor {} lost ({reason}); reconnecting, {} commands kept",
                common.name,
                core.reactor_index,
                core.held()
            );
        } else {
            log::warn!(
                "LUN {}: link of reactor {} cannot connect ({reason}); retrying with backoff",
                common.name,
                core.reactor_index
            );
        }
    }
}

/// Fails with EIO every command not on the wire that is older than `older_than` (all of them
/// for `None`); returns how many.
fn fail_waiting(core: &mut LinkCore, older_than: Option<Instant>) -> u64 {
    let expired = |accepted: Instant| older_than.map_or(true, |limit| accepted <= limit);
    let mut failed = 0;
    let mut kept = 0;
    for _ in 0..core.waiting.len() {
        let Some(index) = core.waiting.pop_front() else {
            break;
        };
        let command = &mut core.commands[index as usize];
        if expired(command.accepted) {
            core.to_post.push_back((command.tag, -libc::EIO));
            command.state = CommandState::Free;
            core.free.push(index);
            failed += 1;
        } else {
            core.waiting.push_back(index);
            kept += 1;
        }
    }
    debug_assert_eq!(kept, core.waiting.len());
    while core
        .overflow
        .front()
        .is_some_and(|pending| expired(pending.accepted))
    {
        if let Some(pending) = core.overflow.pop_front() {
            core.to_post.push_back((pending.tag, -libc::EIO));
            failed += 1;
        }
    }
    failed
}

/// The link's clock: reconnects, timeouts, failing, shutting down.
fn tick<T: LinkTransport>(
    state: &mut Link<T>,
    common: &RemoteCommon,
    ring: &mut IoRing,
    only_links_left: bool,
) {
    let now = Instant::now();
    let Link { core, transport } = &mut *state;
    let closing = common.closing.load(Ordering::Acquire);
    let timeout_limit = now.checked_sub(common.timeout);
    // Commands past their timeout that are not on the wire fail now.
    let timed_out = fail_waiting(core, timeout_limit);
    if timed_out > 0 {
        common.stats.count_timeouts(timed_out);
    }
    // One on the wire past its timeout: the connection is reset (the transport cannot abandon
    // a command whose buffer it may still write), and it fails once the reset is done.
    let stuck = core.commands.iter().any(|command| {
        command.state == CommandState::Issued
            && timeout_limit.is_some_and(|limit| command.accepted <= limit)
    });
    let connect_expired = core.phase == Phase::Connecting
        && now.duration_since(core.connect_started)
            >= Duration::from_millis(REMOTE_CONNECT_TIMEOUT_MS);
    let wind_down = closing || (core.shutting_down && only_links_left && core.held() == 0);
    if !core.disconnecting
        && matches!(core.phase, Phase::Connecting | Phase::Connected)
        && (stuck || connect_expired || wind_down)
    {
        if stuck && core.phase == Phase::Connected {
            log::warn!(
                "LUN {}: a command of reactor {}'s link took longer than {} ms; resetting the connection",
                common.name,
                core.reactor_index,
                common.timeout.as_millis()
            );
        }
        core.disconnecting = true;
        core.winding_down |= wind_down;
        transport.disconnect(&mut LinkContext { core, common, ring });
    }
    let core = &mut state.core;
    // Unreachable for too long: the LUN fails, and with it everything the link holds.
    if let Some(since) = core.unreachable_since {
        if !core.failed
            && now.duration_since(since) >= common.fail_after
            && core.phase != Phase::Connected
        {
            core.failed = true;
            common
                .stats
                .set_state(core.reactor_index, LinkState::Failed);
            if common.health.mark_failed(libc::ENXIO) {
                log::error!(
                    "LUN {}: the array has been unreachable for {} ms; the LUN is failed until it connects again",
                    common.name,
                    common.fail_after.as_millis()
                );
            }
        }
    }
    if core.failed {
        fail_waiting(core, None);
    }
    if closing {
        fail_waiting(core, None);
    }
    let Link { core, transport } = &mut *state;
    if core.phase == Phase::Waiting
        && !closing
        && !(core.shutting_down && only_links_left && core.held() == 0)
        && now >= core.reconnect_at
        && transport.is_idle()
    {
        core.phase = Phase::Connecting;
        core.connect_started = now;
        transport.connect(&mut LinkContext { core, common, ring });
    } else if core.phase == Phase::Connected && !core.disconnecting {
        let idle = core.issued == 0
            && now.duration_since(core.last_activity) >= Duration::from_millis(REMOTE_LINK_TICK_MS);
        transport.tick(idle, &mut LinkContext { core, common, ring });
    }
    settle(state, common, ring);
    let Link { core, transport } = &mut *state;
    let done = closing || (core.shutting_down && only_links_left && core.held() == 0);
    if done
        && matches!(core.phase, Phase::Waiting | Phase::Idle)
        && transport.is_idle()
        && core.to_post.is_empty()
        && core.held() == 0
    {
        core.finished = true;
    }
}

/// The reactor session that runs one link: its tick, the transport's ring entries, and the
/// completions it posts. Holds the LUN's shared part, so a deleted LUN's links finish first.
pub struct LinkSession<T: LinkTransport> {
    shared: Arc<super::RemoteShared<T>>,
    index: usize,
    counted: bool,
    started: bool,
}

impl<T: LinkTransport> Drop for LinkSession<T> {
    fn drop(&mut self) {
        if !self.started {
            if let Some(slot) = self.shared.links.get(self.index) {
                slot.abandoned.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl<T: LinkTransport> LinkSession<T> {
    pub fn new(shared: Arc<super::RemoteShared<T>>, index: usize) -> Self {
        Self {
            shared,
            index,
            counted: false,
            started: false,
        }
    }

    fn arm_tick(core: &mut LinkCore, ring: &mut IoRing) {
        let entry = opcode::Timeout::new(&*core.tick_spec as *const types::Timespec)
            .build()
            .user_data(core.tag_base | TICK_TAG);
        // SAFETY: the timespec is boxed in the core, which lives in the LUN's shared part that
        // this session holds until the tick has completed (the session finishes only from the
        // tick's own completion, with no tick armed).
        core.tick_armed = unsafe { ring.push(&entry) }.is_ok();
    }

    /// Runs `f` on this link's state with a ring, then settles.
    fn with_state(
        &mut self,
        ctx: &mut SessionContext,
        f: impl FnOnce(&mut Link<T>, &RemoteCommon, &mut IoRing),
    ) {
        let shared = &*self.shared;
        let Some(slot) = shared.links.get(self.index) else {
            return;
        };
        // SAFETY: this session runs only on reactor `self.index` (it was attached to that
        // reactor alone), and `Lun::submit` reaches the slot only on that reactor too, never
        // while a handler of this session runs.
        let state = unsafe { slot.state() };
        f(state, &shared.common, ctx.ring);
        settle(state, &shared.common, ctx.ring);
        if !state.core.tick_armed && !state.core.finished {
            Self::arm_tick(&mut state.core, ctx.ring);
        }
        if state.core.finished && self.counted {
            self.counted = false;
            LINKS_ON_REACTOR[self.index % MAX_REACTORS].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<T: LinkTransport> Session for LinkSession<T> {
    fn start(&mut self, ctx: &mut SessionContext) {
        self.started = true;
        LINKS_ON_REACTOR[self.index % MAX_REACTORS].fetch_add(1, Ordering::Relaxed);
        self.counted = true;
        let tag_base = (u64::from(ctx.id.index) + 1) << SESSION_TAG_BITS;
        self.with_state(ctx, |state, common, ring| {
            let Link { core, transport } = state;
            core.tag_base = tag_base;
            core.phase = Phase::Connecting;
            core.connect_started = Instant::now();
            transport.connect(&mut LinkContext { core, common, ring });
        });
    }

    fn on_completion(&mut self, local_tag: u64, result: i32, ctx: &mut SessionContext) {
        let only_links_left = ctx.reactor.sessions.load(Ordering::Relaxed)
            <= LINKS_ON_REACTOR[self.index % MAX_REACTORS].load(Ordering::Relaxed);
        self.with_state(ctx, |state, common, ring| match local_tag {
            TICK_TAG => {
                state.core.tick_armed = false;
                tick(state, common, ring, only_links_left);
            }
            POST_TAG => {
                // The kernel refused to post a completion to the reactor's own ring, which
                // never happens while the ring bounds its entries in flight by its completion
                // queue; the command's caller waits forever, so say so loudly.
                log::error!(
                    "LUN {}: reactor {} could not post a command's completion ({})",
                    common.name,
                    state.core.reactor_index,
                    std::io::Error::from_raw_os_error(-result)
                );
            }
            tag if tag < TRANSPORT_TAG_LIMIT => {
                let Link { core, transport } = state;
                transport.on_completion(tag, result, &mut LinkContext { core, common, ring });
            }
            _ => {}
        });
    }

    fn on_wake(&mut self, _token: u64, _result: i32, ctx: &mut SessionContext) {
        self.with_state(ctx, |_, _, _| {});
    }

    fn on_ring_credit(&mut self, ctx: &mut SessionContext) {
        self.with_state(ctx, |_, _, _| {});
    }

    fn begin_shutdown(&mut self, ctx: &mut SessionContext) {
        self.with_state(ctx, |state, _, _| state.core.shutting_down = true);
    }

    fn is_finished(&self) -> bool {
        self.shared.links.get(self.index).map_or(true, |slot| {
            // SAFETY: called by the reactor of this link, between handlers.
            let state = unsafe { slot.state() };
            state.core.finished && !state.core.tick_armed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::remote::link_stats::LinkStats;
    use crate::backend::LunHealth;
    use std::sync::atomic::AtomicBool;

    /// A transport that connects at once and either completes each command at once or keeps
    /// it, recording what it was asked.
    #[derive(Default)]
    struct MockTransport {
        complete_at_once: bool,
        connects: usize,
        issued: Vec<u16>,
    }

    impl LinkTransport for MockTransport {
        fn connect(&mut self, link: &mut LinkContext) {
            self.connects += 1;
            link.connected(ArrayGeometry {
                size_bytes: 1 << 20,
                block_size_bytes: 512,
            });
        }
        fn issue(&mut self, index: u16, io: &LunIo, link: &mut LinkContext) {
            self.issued.push(index);
            assert!(link
                .io(index)
                .is_some_and(|held| held.range() == io.range()));
            if self.complete_at_once {
                link.complete(index, Ok(()));
            }
        }
        fn on_completion(&mut self, _tag: u64, _result: i32, _link: &mut LinkContext) {}
        fn disconnect(&mut self, link: &mut LinkContext) {
            link.lost("asked to");
        }
        fn is_idle(&self) -> bool {
            true
        }
    }

    fn common(timeout: Duration, fail_after: Duration) -> RemoteCommon {
        RemoteCommon {
            name: "remote-test".into(),
            size_bytes: 1 << 20,
            block_size_bytes: 512,
            timeout,
            fail_after,
            health: LunHealth::default(),
            stats: LinkStats::new(1),
            closing: AtomicBool::new(false),
            shrunk: AtomicBool::new(false),
        }
    }

    /// A slot whose link has "started" as session 0 and connected.
    fn started_slot(
        common: &RemoteCommon,
        ring: &mut IoRing,
        complete_at_once: bool,
    ) -> LinkSlot<MockTransport> {
        let slot = LinkSlot::new(
            0,
            MockTransport {
                complete_at_once,
                ..MockTransport::default()
            },
        );
        // SAFETY: the test is the slot's only thread.
        let state = unsafe { slot.state() };
        state.core.tag_base = 1 << SESSION_TAG_BITS;
        state.core.phase = Phase::Connecting;
        let Link { core, transport } = &mut *state;
        transport.connect(&mut LinkContext { core, common, ring });
        settle(state, common, ring);
        assert_eq!(state.core.phase, Phase::Connected);
        slot
    }

    fn read(offset_bytes: u64, buf: &mut [u8]) -> LunIo {
        LunIo::Read {
            offset_bytes,
            buf: buf.as_mut_ptr(),
            len_bytes: buf.len() as u32,
        }
    }

    /// Reaps `count` completions from the ring.
    fn reap(ring: &mut IoRing, count: usize) -> Vec<(u64, i32)> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.len() < count && Instant::now() < deadline {
            ring.submit_and_wait().expect("wait");
            while let Some(cqe) = ring.pop_completion() {
                seen.push((cqe.user_data(), cqe.result()));
            }
        }
        seen
    }

    /// A command the transport completes arrives on the reactor's ring as an ordinary
    /// completion, with the caller's tag and the bytes transferred, and nothing else does.
    #[cfg_attr(miri, ignore = "io_uring: a system call Miri cannot run")]
    #[test]
    fn a_completion_is_posted_to_the_own_ring_with_the_callers_tag() {
        let common = common(Duration::from_secs(30), Duration::from_secs(120));
        let mut ring = IoRing::new(16).expect("ring");
        let slot = started_slot(&common, &mut ring, true);
        let mut buf = vec![0u8; 4096];
        let tag = (7 << SESSION_TAG_BITS) | 42;
        // SAFETY: single thread; `buf` outlives the completion reaped below.
        unsafe { slot.accept(&common, &read(0, &mut buf), tag, &mut ring) }.expect("accepted");
        let flush_tag = (7 << SESSION_TAG_BITS) | 43;
        // SAFETY: as above; a flush has no buffer.
        unsafe { slot.accept(&common, &LunIo::Flush, flush_tag, &mut ring) }.expect("accepted");
        let mut seen = reap(&mut ring, 2);
        seen.sort_unstable();
        assert_eq!(seen, vec![(tag, 4096), (flush_tag, 0)]);
        assert_eq!(
            ring.in_flight(),
            0,
            "the MSG_RING entries' own completions are skipped"
        );
        assert_eq!(common.stats.snapshot().in_flight, 0);
        assert!(common.stats.snapshot().rtt_us > 0);
    }

    /// Commands on the wire when the connection is lost are issued again after the reconnect,
    /// and commands past the queue depth wait in order and start as slots free up.
    #[cfg_attr(miri, ignore = "io_uring: a system call Miri cannot run")]
    #[test]
    fn lost_commands_are_reissued_and_the_fifo_drains_in_order() {
        let common = common(Duration::from_secs(30), Duration::from_secs(120));
        let mut ring = IoRing::new(16).expect("ring");
        let slot = started_slot(&common, &mut ring, false);
        let mut buf = vec![0u8; 512];
        let total = REMOTE_LINK_QUEUE_DEPTH + 5;
        for n in 0..total as u64 {
            // SAFETY: single thread; the buffer outlives the test's completions.
            unsafe { slot.accept(&common, &read(0, &mut buf), n, &mut ring) }.expect("accepted");
        }
        // SAFETY: single thread, no other reference live.
        let state = unsafe { slot.state() };
        assert_eq!(state.transport.issued.len(), REMOTE_LINK_QUEUE_DEPTH);
        assert_eq!(state.core.overflow.len(), 5);
        let Link { core, transport } = &mut *state;
        transport.disconnect(&mut LinkContext {
            core,
            common: &common,
            ring: &mut ring,
        });
        settle(state, &common, &mut ring);
        assert_eq!(state.core.phase, Phase::Waiting);
        assert_eq!(common.stats.snapshot().state, LinkState::Reconnecting);
        state.transport.issued.clear();
        let Link { core, transport } = &mut *state;
        transport.connect(&mut LinkContext {
            core,
            common: &common,
            ring: &mut ring,
        });
        settle(state, &common, &mut ring);
        assert_eq!(
            state.transport.issued.len(),
            REMOTE_LINK_QUEUE_DEPTH,
            "all reissued"
        );
        assert_eq!(common.stats.snapshot().reconnects, 1);
        // Completing the first five lets the five waiting ones in, in order.
        let first: Vec<u16> = state.transport.issued[..5].to_vec();
        for index in first {
            let Link { core, .. } = &mut *state;
            LinkContext {
                core,
                common: &common,
                ring: &mut ring,
            }
            .complete(index, Ok(()));
        }
        settle(state, &common, &mut ring);
        assert!(state.core.overflow.is_empty());
        assert_eq!(state.transport.issued.len(), REMOTE_LINK_QUEUE_DEPTH + 5);
        let moved_in: Vec<u64> = state.transport.issued[REMOTE_LINK_QUEUE_DEPTH..]
            .iter()
            .map(|&index| state.core.commands[index as usize].tag)
            .collect();
        let expected: Vec<u64> = (REMOTE_LINK_QUEUE_DEPTH as u64..total as u64).collect();
        assert_eq!(moved_in, expected);
        let seen = reap(&mut ring, 5);
        assert!(
            seen.iter().all(|&(tag, res)| tag < 5 && res == 512),
            "{seen:?}"
        );
    }

    /// While the link is down, a command past its timeout fails with EIO; past `fail_after`
    /// the LUN is failed and refuses I/O; a connect brings it back.
    #[cfg_attr(miri, ignore = "io_uring: a system call Miri cannot run")]
    #[test]
    fn timeouts_fail_commands_and_an_unreachable_lun_fails_then_recovers() {
        let common = common(Duration::from_millis(1), Duration::from_millis(50));
        let mut ring = IoRing::new(16).expect("ring");
        let slot = started_slot(&common, &mut ring, false);
        // SAFETY: single thread, no other reference live.
        let state = unsafe { slot.state() };
        let Link { core, transport } = &mut *state;
        transport.disconnect(&mut LinkContext {
            core,
            common: &common,
            ring: &mut ring,
        });
        settle(state, &common, &mut ring);
        state.core.reconnect_at = Instant::now() + Duration::from_secs(3600);
        let mut buf = vec![0u8; 512];
        // SAFETY: single thread; the buffer outlives the completion reaped below.
        unsafe { slot.accept(&common, &read(512, &mut buf), 99, &mut ring) }.expect("accepted");
        std::thread::sleep(Duration::from_millis(5));
        // SAFETY: as above.
        let state = unsafe { slot.state() };
        tick(state, &common, &mut ring, false);
        assert_eq!(reap(&mut ring, 1), vec![(99, -libc::EIO)]);
        assert_eq!(common.stats.snapshot().timeouts, 1);
        assert!(!common.health.is_failed());
        std::thread::sleep(Duration::from_millis(60));
        tick(state, &common, &mut ring, false);
        assert!(common.health.is_failed());
        assert_eq!(common.stats.snapshot().state, LinkState::Failed);
        // SAFETY: as above.
        let refused = unsafe { slot.accept(&common, &read(0, &mut buf), 100, &mut ring) };
        assert_eq!(refused, Err(libc::EIO));
        // SAFETY: as above.
        let state = unsafe { slot.state() };
        state.core.reconnect_at = Instant::now();
        tick(state, &common, &mut ring, false);
        assert_eq!(state.core.phase, Phase::Connected);
        assert!(!common.health.is_failed(), "back online");
        assert_eq!(common.stats.snapshot().state, LinkState::Connected);
    }
}
