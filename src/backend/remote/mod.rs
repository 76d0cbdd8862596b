//! Remote LUNs: a LUN of another array (iSCSI, NBD) used as a pool member like a local disk.
//!
//! ```text
//!  engine on reactor R ──Lun::submit(io, tag, ring R)──▶ RemoteLun ──▶ links[R]  (LinkSlot)
//!                                                                        │ issue
//!                                                                        ▼
//!                       LinkSession on reactor R ◀── ring R ──▶ LinkTransport (iSCSI | NBD)
//!                                  │ command done                         │ socket I/O
//!                                  ▼                                      ▼
//!  engine ◀── CQE {user_data: tag, res} ◀── IORING_OP_MSG_RING to ring R      the array
//!
//!  provisioning / control / start-up ──read_at, write_at, …──▶ RemoteDriver's blocking connection
//! ```
//!
//! A remote LUN ([`RemoteLun`]) keeps **one connection to the array per reactor**, a *link*,
//! plus one blocking connection (behind a mutex, inside the driver) for the synchronous
//! methods, which only non-reactor threads call. A link is a reactor session
//! ([`link::LinkSession`]) attached to its reactor by the mailbox when the LUN is opened
//! ([`register_reactors`] tells this module the reactors, once they run). Its state lives in
//! the LUN's table of [`link::LinkSlot`]s, indexed by reactor and touched only on that
//! reactor's thread: `submit` on reactor R (named by [`IoRing::owner`]) hands the command to
//! slot R directly, which issues it at once when the link is connected and under
//! [`REMOTE_LINK_QUEUE_DEPTH`], or keeps it in a FIFO (bounded by [`REMOTE_LINK_MAX_WAITING`],
//! which the engine's ring credit keeps it under). `submit` returns `Started::Queued(1)`; a
//! ring with no owner (a test's, a tool's) gets EIO at once.
//!
//! A finished command completes back to its caller by an `IORING_OP_MSG_RING` the link posts
//! to its reactor's own ring (`user_data` the caller's tag, `res` the bytes transferred or
//! `-errno`, the MSG_RING entry's own completion skipped on success): the block engine sees an
//! ordinary completion. A full ring keeps the completion queued in the link until the next
//! event or tick.
//!
//! **The link core** ([`link::LinkCore`], generic over the protocol) owns the command table,
//! completion posting, and the link's life: connecting, `connected`, lost and reconnecting
//! with exponential backoff ([`backoff`], [`REMOTE_RECONNECT_MIN_MS`] ..
//! [`REMOTE_RECONNECT_MAX_MS`]) with every command kept and reissued, a clock tick
//! ([`REMOTE_LINK_TICK_MS`]). A command older than the LUN's `timeout_ms` fails with EIO: at
//! once if it is not on the wire, else the connection is reset first (a transport cannot
//! abandon a command whose buffer the array's answer may still land in) and it fails once the
//! reset is done. A link unreachable for `fail_after_ms` marks the LUN failed
//! (`LunHealth::mark_failed(ENXIO)`: its I/O fails at once); it keeps trying, and when it
//! connects again (and no other link is failed) the LUN comes back online by itself
//! (`LunHealth::clear_failed`, logged), which a mirror treats as a leg that came back.
//! [`link_stats::LinkStats`] publishes each link's state, round-trip estimate and commands in
//! flight, and the LUN's reconnects, timeouts and the array's size when it differs.
//!
//! **Adding a transport** (the protocol half), e.g. NBD:
//! 1. a [`link::LinkTransport`]: `connect` (non-blocking; ends in `LinkContext::connected`
//!    with the array's [`link::ArrayGeometry`], or `LinkContext::lost`), `issue(index, io)`
//!    (completes with `LinkContext::complete(index, Ok(()) | Err(errno))` exactly once unless
//!    the connection is lost first), `on_completion` for its own ring entries (local tags
//!    below [`link::TRANSPORT_TAG_LIMIT`], made full with `LinkContext::tag`; at most two
//!    entries of its own on the ring in steady state, which with the link's tick is the
//!    reserve `RING_RESERVED_ENTRIES` keeps for a session), `disconnect` (report `lost` once
//!    nothing refers to a command's buffer any more), `is_idle`, and optionally `tick` (an
//!    idle ping; `LinkContext::rtt_sample` feeds its round trip to the estimate,
//!    `LinkContext::array_size` reports a resized array);
//! 2. a [`RemoteDriver`]: `new_link(reactor_index)` makes a link's transport, and the blocking
//!    methods (`read_at`, `write_at`, `write_zeroes_at`, `flush`) run on the calling thread
//!    (never a reactor), bounded by the LUN's timeout;
//! 3. its arm in `backend::open_lun`: connect the driver's blocking connection (which learns
//!    the [`link::ArrayGeometry`]), then [`RemoteLun::open`].
//!
//! The LUN's size and block size are the array's (a `block_size` that disagrees is refused);
//! reopened at start-up, the recorded size is kept and a different size on the array is
//! logged and shown as `array_size` (the pool does not grow by itself).

pub mod backoff;
pub mod link;
pub mod link_stats;

use crate::backend::{Lun, LunError, LunHealth, LunInfo, LunIo, LunSpec, SpeedClass, Started};
use crate::blockio::BlockOp;
use crate::constants::{
    MAX_ISCSI_STRING_BYTES, MAX_REMOTE_URL_BYTES, REMOTE_FAIL_AFTER_MS, REMOTE_IO_TIMEOUT_MS,
    REMOTE_LINK_MAX_WAITING, REMOTE_LINK_QUEUE_DEPTH, REMOTE_MAX_TIMEOUT_MS, REMOTE_MIN_TIMEOUT_MS,
};
#[cfg(doc)]
use crate::constants::{REMOTE_LINK_TICK_MS, REMOTE_RECONNECT_MAX_MS, REMOTE_RECONNECT_MIN_MS};
use crate::reactor::mailbox::Message;
use crate::reactor::ring::IoRing;
use crate::reactor::ReactorHandle;
use link::{ArrayGeometry, LinkSession, LinkSlot, LinkTransport};
use link_stats::LinkStats;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What a remote LUN is created with (`lun_create`) and recorded with (`LunRecord`). Its
/// `Debug` leaves the CHAP secret out, so no log line can carry it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSpec {
    /// `iscsi://HOST[:PORT]/TARGET_IQN/LUN`, or the NBD URI (`nbd://…`, `nbd+unix://…`).
    pub url: String,
    /// iSCSI: the initiator name to log in as (default: sds's own, derived from the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator_iqn: Option<String>,
    /// iSCSI: CHAP credentials, both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_secret: Option<String>,
    /// A command not completed within this fails with EIO (default [`REMOTE_IO_TIMEOUT_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Unreachable this long, the LUN is failed (default [`REMOTE_FAIL_AFTER_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_after_ms: Option<u64>,
}

impl std::fmt::Debug for RemoteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSpec")
            .field("url", &self.url)
            .field("initiator_iqn", &self.initiator_iqn)
            .field("chap_user", &self.chap_user)
            .field(
                "chap_secret",
                &self.chap_secret.as_ref().map(|_| "(hidden)"),
            )
            .field("timeout_ms", &self.timeout_ms)
            .field("fail_after_ms", &self.fail_after_ms)
            .finish()
    }
}

impl RemoteSpec {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(REMOTE_IO_TIMEOUT_MS))
    }

    pub fn fail_after(&self) -> Duration {
        Duration::from_millis(self.fail_after_ms.unwrap_or(REMOTE_FAIL_AFTER_MS))
    }

    /// Checks what an administrator gave: lengths, CHAP both or neither, the settings' bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.url.is_empty() || self.url.len() > MAX_REMOTE_URL_BYTES {
            return Err(format!("url must be 1 to {MAX_REMOTE_URL_BYTES} bytes"));
        }
        for (field, value) in [
            ("initiator_iqn", &self.initiator_iqn),
            ("chap_user", &self.chap_user),
            ("chap_secret", &self.chap_secret),
        ] {
            if value
                .as_ref()
                .is_some_and(|text| text.is_empty() || text.len() > MAX_ISCSI_STRING_BYTES)
            {
                return Err(format!(
                    "{field} must be 1 to {MAX_ISCSI_STRING_BYTES} bytes"
                ));
            }
        }
        if self.chap_user.is_some() != self.chap_secret.is_some() {
            return Err("chap_user and chap_secret go together".into());
        }
        for (field, value) in [
            ("timeout_ms", self.timeout_ms),
            ("fail_after_ms", self.fail_after_ms),
        ] {
            if value
                .is_some_and(|ms| !(REMOTE_MIN_TIMEOUT_MS..=REMOTE_MAX_TIMEOUT_MS).contains(&ms))
            {
                return Err(format!(
                    "{field} must be {REMOTE_MIN_TIMEOUT_MS} to {REMOTE_MAX_TIMEOUT_MS}"
                ));
            }
        }
        Ok(())
    }
}

/// The reactors links attach to: set by `serve` once they run ([`register_reactors`]). Empty
/// elsewhere (tests, tools): a remote LUN opened then has no links, and its ring I/O fails.
static REACTORS: RwLock<Vec<Arc<ReactorHandle>>> = RwLock::new(Vec::new());

/// Tells remote LUNs opened from now on which reactors to attach their links to.
pub fn register_reactors(reactors: &[Arc<ReactorHandle>]) {
    let mut registered = REACTORS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *registered = reactors.to_vec();
}

fn registered_reactors() -> Vec<Arc<ReactorHandle>> {
    REACTORS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// What a remote LUN's links share with it (read-only but for atomics).
pub struct RemoteCommon {
    pub name: String,
    pub size_bytes: u64,
    pub block_size_bytes: u32,
    pub timeout: Duration,
    pub fail_after: Duration,
    pub health: LunHealth,
    pub stats: LinkStats,
    /// The LUN is gone (dropped): its links disconnect and finish.
    pub closing: AtomicBool,
    /// The array's LUN is smaller than this LUN: failed until it is large enough again.
    pub shrunk: AtomicBool,
}

impl RemoteCommon {
    /// The array says its LUN is `size_bytes`: shown when it differs; smaller than this LUN
    /// fails the LUN (its end is gone), large enough again brings it back (if no link is
    /// failed).
    pub fn note_array_size(&self, size_bytes: u64) {
        self.stats.set_array_size(size_bytes, self.size_bytes);
        if size_bytes < self.size_bytes {
            if !self.shrunk.swap(true, Ordering::AcqRel) && self.health.mark_failed(libc::ENXIO) {
                log::error!(
                    "LUN {}: the array's LUN shrank to {size_bytes} bytes, below the LUN's {}; the LUN is failed",
                    self.name,
                    self.size_bytes
                );
            }
        } else if self.shrunk.swap(false, Ordering::AcqRel)
            && !self.stats.any_in(link_stats::LinkState::Failed)
            && self.health.clear_failed()
        {
            log::info!(
                "LUN {}: the array's LUN is {size_bytes} bytes again; the LUN is back online",
                self.name
            );
        }
    }
}

/// The part of a remote LUN its link sessions hold too.
pub struct RemoteShared<T> {
    pub common: RemoteCommon,
    links: Box<[LinkSlot<T>]>,
}

/// The protocol of a remote LUN: makes its links' transports and runs its blocking
/// connection (see the module doc).
pub trait RemoteDriver: Send + Sync + 'static {
    type Link: LinkTransport;
    /// The transport of the link on reactor `reactor_index` (not connected yet).
    fn new_link(&self, reactor_index: usize) -> Self::Link;
    /// The blocking methods: on the calling thread, bounded by the LUN's timeout, never on a
    /// reactor. Ranges are checked by the caller. An error is the array's or the connection's.
    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> std::io::Result<()>;
    fn write_at(&self, buf: &[u8], offset_bytes: u64, fua: bool) -> std::io::Result<()>;
    fn write_zeroes_at(&self, offset_bytes: u64, len_bytes: u64) -> std::io::Result<()>;
    fn flush(&self) -> std::io::Result<()>;
}

/// A LUN of another array (see the module doc).
pub struct RemoteLun<D: RemoteDriver> {
    info: LunInfo,
    shared: Arc<RemoteShared<D::Link>>,
    driver: D,
}

impl<D: RemoteDriver> RemoteLun<D> {
    /// The LUN `spec` names over `driver`, whose blocking connection found the array to be
    /// `geometry`; attaches one link to each registered reactor. A `block_size` other than the
    /// array's is refused; the size is the recorded one if `spec` has it (start-up), else the
    /// array's.
    pub fn open(spec: &LunSpec, geometry: ArrayGeometry, driver: D) -> Result<Self, LunError> {
        let invalid = |what: String| LunError::Invalid {
            lun: spec.name.clone(),
            what,
        };
        let remote = spec
            .remote
            .as_ref()
            .ok_or_else(|| invalid("a remote LUN needs a url".into()))?;
        if geometry.block_size_bytes != 512 && geometry.block_size_bytes != 4096 {
            return Err(invalid(format!(
                "the array's block size is {} bytes; sds takes 512 or 4096",
                geometry.block_size_bytes
            )));
        }
        if spec.block_size_bytes != 0 && spec.block_size_bytes != geometry.block_size_bytes {
            return Err(invalid(format!(
                "block_size {} disagrees with the array's {} bytes",
                spec.block_size_bytes, geometry.block_size_bytes
            )));
        }
        let block = u64::from(geometry.block_size_bytes);
        let size_bytes = spec
            .size_bytes
            .unwrap_or(geometry.size_bytes / block * block);
        if size_bytes == 0 {
            return Err(invalid("the array's LUN is empty".into()));
        }
        let reactors = registered_reactors();
        let common = RemoteCommon {
            name: spec.name.clone(),
            size_bytes,
            block_size_bytes: geometry.block_size_bytes,
            timeout: remote.timeout(),
            fail_after: remote.fail_after(),
            health: LunHealth::default(),
            stats: LinkStats::new(reactors.len()),
            closing: AtomicBool::new(false),
            shrunk: AtomicBool::new(false),
        };
        common.note_array_size(geometry.size_bytes);
        if geometry.size_bytes > size_bytes {
            log::warn!(
                "LUN {}: the array's LUN is {} bytes, the LUN {size_bytes} (the pool does not grow by itself)",
                spec.name,
                geometry.size_bytes
            );
        }
        let links = reactors
            .iter()
            .map(|reactor| LinkSlot::new(reactor.index, driver.new_link(reactor.index)))
            .collect();
        let shared = Arc::new(RemoteShared { common, links });
        for reactor in &reactors {
            reactor.post(Message::Attach(Box::new(LinkSession::new(
                shared.clone(),
                reactor.index,
            ))));
        }
        Ok(Self {
            info: LunInfo {
                name: spec.name.clone(),
                kind: spec.kind,
                path: None,
                size_bytes,
                block_size_bytes: geometry.block_size_bytes,
                speed_class: SpeedClass::Unknown,
                direct_io: true,
            },
            shared,
            driver,
        })
    }

    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// Wraps an error of the blocking connection, counted in the LUN's health.
    fn sync_error(&self, io_type: BlockOp, offset_bytes: u64, source: std::io::Error) -> LunError {
        self.shared
            .common
            .health
            .count_errno(io_type, source.raw_os_error().unwrap_or(libc::EIO));
        LunError::Io {
            lun: self.info.name.clone(),
            offset_bytes,
            source,
        }
    }

    fn check_online(&self) -> Result<(), LunError> {
        match self.shared.common.health.failed_errno() {
            None => Ok(()),
            Some(errno) => Err(LunError::Failed {
                lun: self.info.name.clone(),
                reason: format!(
                    "its array is unreachable ({})",
                    std::io::Error::from_raw_os_error(errno)
                ),
            }),
        }
    }
}

impl<D: RemoteDriver> Drop for RemoteLun<D> {
    fn drop(&mut self) {
        // The links see it on their next tick, disconnect and finish.
        self.shared.common.closing.store(true, Ordering::Release);
    }
}

impl<D: RemoteDriver> Lun for RemoteLun<D> {
    fn info(&self) -> &LunInfo {
        &self.info
    }

    unsafe fn submit(&self, io: &LunIo, tag: u64, ring: &mut IoRing) -> Started {
        if self.shared.common.health.is_failed() {
            return Started::Done(Err(libc::EIO));
        }
        if let Some((offset_bytes, len_bytes)) = io.range() {
            if super::check_range(&self.info, offset_bytes, len_bytes).is_err() {
                return Started::Done(Err(libc::EINVAL));
            }
        }
        let Some(slot) = ring.owner().and_then(|owner| self.shared.links.get(owner)) else {
            return Started::Done(Err(libc::EIO));
        };
        // SAFETY: `ring.owner()` names the reactor whose thread runs this call (a reactor's
        // ring never leaves its thread), so slot `owner` is this thread's; the engine calls
        // submit from its own session's handler, never from inside the link's. The caller
        // keeps the buffer valid until the completion is posted (the `Lun::submit` contract).
        match unsafe { slot.accept(&self.shared.common, io, tag, ring) } {
            Ok(()) => Started::Queued(1),
            Err(errno) => Started::Done(Err(errno)),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> Result<(), LunError> {
        super::check_range(&self.info, offset_bytes, buf.len() as u64)?;
        self.check_online()?;
        self.driver
            .read_at(buf, offset_bytes)
            .map_err(|error| self.sync_error(BlockOp::Read, offset_bytes, error))
    }

    fn write_at(&self, buf: &[u8], offset_bytes: u64, durable: bool) -> Result<(), LunError> {
        super::check_range(&self.info, offset_bytes, buf.len() as u64)?;
        self.check_online()?;
        self.driver
            .write_at(buf, offset_bytes, durable)
            .map_err(|error| self.sync_error(BlockOp::Write, offset_bytes, error))
    }

    fn write_zeroes_at(&self, offset_bytes: u64, len_bytes: u64) -> Result<(), LunError> {
        super::check_range(&self.info, offset_bytes, len_bytes)?;
        self.check_online()?;
        self.driver
            .write_zeroes_at(offset_bytes, len_bytes)
            .map_err(|error| self.sync_error(BlockOp::Write, offset_bytes, error))
    }

    fn flush(&self) -> Result<(), LunError> {
        self.check_online()?;
        self.driver
            .flush()
            .map_err(|error| self.sync_error(BlockOp::Flush, 0, error))
    }

    fn health(&self) -> Option<&LunHealth> {
        Some(&self.shared.common.health)
    }

    fn link_stats(&self) -> Option<&LinkStats> {
        Some(&self.shared.common.stats)
    }
}

// The link's FIFO holds at least a table's worth.
const _: () = assert!(REMOTE_LINK_QUEUE_DEPTH <= REMOTE_LINK_MAX_WAITING);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LunKind;
    use crate::identity::Uuid;
    use crate::store::records::LunRecord;

    fn spec() -> RemoteSpec {
        RemoteSpec {
            url: "iscsi://192.0.2.7/iqn.2026-11.org.example:array/1".into(),
            ..RemoteSpec::default()
        }
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(spec().validate(), Ok(()));
        assert_eq!(
            spec().timeout(),
            Duration::from_millis(REMOTE_IO_TIMEOUT_MS)
        );
        assert_eq!(
            spec().fail_after(),
            Duration::from_millis(REMOTE_FAIL_AFTER_MS)
        );
        let only_user = RemoteSpec {
            chap_user: Some("u".into()),
            ..spec()
        };
        assert!(only_user.validate().is_err_and(|why| why.contains("chap")));
        let too_short = RemoteSpec {
            timeout_ms: Some(REMOTE_MIN_TIMEOUT_MS - 1),
            ..spec()
        };
        assert!(too_short
            .validate()
            .is_err_and(|why| why.starts_with("timeout_ms")));
        let empty = RemoteSpec {
            url: String::new(),
            ..spec()
        };
        assert!(empty.validate().is_err_and(|why| why.starts_with("url")));
        let long_iqn = RemoteSpec {
            initiator_iqn: Some("i".repeat(MAX_ISCSI_STRING_BYTES + 1)),
            ..spec()
        };
        assert!(long_iqn.validate().is_err());
        let secret = RemoteSpec {
            chap_user: Some("u".into()),
            chap_secret: Some("do-not-log-me".into()),
            ..spec()
        };
        assert!(!format!("{secret:?}").contains("do-not-log-me"));
    }

    /// The remote fields are flat in a LUN's record, and absent from a local LUN's (records
    /// written before remote LUNs existed read the same).
    #[test]
    fn records_carry_the_remote_fields_flat() {
        let record = LunRecord {
            name: "arr0".into(),
            uuid: Uuid([7; 16]),
            kind: LunKind::Iscsi,
            path: None,
            size: 1 << 30,
            block_size: 512,
            base: None,
            remote: Some(RemoteSpec {
                chap_user: Some("u".into()),
                chap_secret: Some("s".into()),
                timeout_ms: Some(5000),
                ..spec()
            }),
        };
        let text = serde_json::to_value(&record).expect("serialize");
        assert_eq!(text["url"], spec().url);
        assert_eq!(text["chap_secret"], "s");
        assert_eq!(text["timeout_ms"], 5000);
        assert!(text.get("fail_after_ms").is_none());
        let back: LunRecord = serde_json::from_value(text).expect("deserialize");
        assert_eq!(back, record);
        let local = LunRecord {
            kind: LunKind::File,
            remote: None,
            ..record
        };
        let text = serde_json::to_value(&local).expect("serialize");
        assert!(text.get("url").is_none());
        let back: LunRecord = serde_json::from_value(text).expect("deserialize");
        assert_eq!(back.remote, None);
    }
}
