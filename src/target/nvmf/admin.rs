//! The admin queue of one controller, as a state machine with no I/O: a command in, an
//! [`Outcome`] out (a completion and the data to send before it, or the command held, as an
//! Asynchronous Event Request is until an event completes it). The blocking thread in
//! [`super::admin_thread`] moves PDUs; everything the host can ask of a controller is decided
//! here, so it is tested without sockets.
//!
//! Before the host enables the controller (CC.EN) only fabrics commands are accepted; any
//! other command is a command sequence error. A discovery controller answers Identify
//! Controller, the discovery log page, features, Keep Alive and the fabrics commands.

use super::controller::{ControllerKind, ControllerShared};
use super::features::Features;
use super::identify::{self, ControllerIdentity, IoFeatures, IDENTIFY_BYTES};
use super::log_pages::{self, DiscoveryEntry, LogRequest};
use super::properties::{Change, Properties};
use super::subsystem;
use crate::constants::{
    NVMF_IN_CAPSULE_DATA_BYTES, NVMF_KEEP_ALIVE_GRACE_MS, NVMF_MAX_NSID, NVMF_MAX_PENDING_AERS,
};
use crate::domain::snapshot::Published;
use crate::nvmf::command::{
    Command, Completion, ADMIN_ABORT, ADMIN_ASYNC_EVENT_REQUEST, ADMIN_GET_FEATURES,
    ADMIN_GET_LOG_PAGE, ADMIN_IDENTIFY, ADMIN_KEEP_ALIVE, ADMIN_SET_FEATURES, FABRICS,
    FCTYPE_CONNECT, FCTYPE_DISCONNECT, FCTYPE_PROPERTY_GET, FCTYPE_PROPERTY_SET,
};
use crate::nvmf::pdu::{data_location, DataLocation};
use crate::nvmf::status::{self, Status};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An Asynchronous Event Request's completion for "namespace attribute changed": type
/// Notice (2) in bits 2:0, information 00h in bits 15:8, log page 04h in bits 23:16.
pub const EVENT_NAMESPACE_ATTRIBUTE_CHANGED: u64 = 0x02 | (0x04 << 16);
/// Abort's result: bit 0 set, the command was not aborted.
const ABORT_NOT_ABORTED: u64 = 1;

/// What the admin queue is given.
pub struct AdminSetup {
    pub published: Arc<Published>,
    pub nqn_base: String,
    /// The address the host reached this server at (what the discovery log names).
    pub local_address: SocketAddr,
    pub io_features: IoFeatures,
}

/// What to do with a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send the first `data_bytes` of [`AdminQueue::data`] (C2HData), then the completion.
    Answer {
        completion: Completion,
        data_bytes: usize,
    },
    /// Held: an Asynchronous Event Request, completed later by [`AdminQueue::due_event`].
    Held,
    /// Answer, then end the association (Disconnect of the admin queue).
    AnswerThenEnd { completion: Completion },
}

/// One controller's admin queue.
pub struct AdminQueue {
    shared: Arc<ControllerShared>,
    setup: AdminSetup,
    properties: Properties,
    features: Features,
    /// CIDs of the Asynchronous Event Requests held, oldest first.
    held_events: Vec<u16>,
    last_keep_alive: Instant,
    /// Whether the host itself ended the I/O queues (CC reset or shutdown): the admin queue
    /// then goes on (the host reads CSTS, then disconnects).
    ended_by_host: bool,
    data: Vec<u8>,
}

impl AdminQueue {
    pub fn new(shared: Arc<ControllerShared>, setup: AdminSetup, now: Instant) -> Self {
        Self {
            shared,
            setup,
            properties: Properties::new(),
            features: Features::default(),
            held_events: Vec::with_capacity(NVMF_MAX_PENDING_AERS),
            last_keep_alive: now,
            ended_by_host: false,
            data: Vec::with_capacity(IDENTIFY_BYTES),
        }
    }

    pub fn shared(&self) -> &Arc<ControllerShared> {
        &self.shared
    }

    /// The data the last [`Outcome::Answer`] sends.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Whether the controller was ended from outside (its host's VPs deleted, the server
    /// stopping): the admin queue ends too.
    pub fn ended_elsewhere(&self) -> bool {
        self.shared.is_closed() && !self.ended_by_host
    }

    /// Whether the keep-alive timer expired: no Keep Alive (or other command) for KATO and
    /// the grace beyond it.
    pub fn keep_alive_expired(&self, now: Instant) -> bool {
        self.shared.keep_alive_timeout().is_some_and(|kato| {
            now.saturating_duration_since(self.last_keep_alive)
                > kato + Duration::from_millis(u64::from(NVMF_KEEP_ALIVE_GRACE_MS))
        })
    }

    /// An Asynchronous Event Request completed, if one is held and an event it may carry is
    /// due.
    pub fn due_event(&mut self) -> Option<Completion> {
        if self.held_events.is_empty()
            || !self.features.namespace_notices()
            || !self.shared.take_namespace_notice()
        {
            return None;
        }
        let cid = self.held_events.remove(0);
        Some(Completion::new(cid, status::SUCCESS).with_result(EVENT_NAMESPACE_ATTRIBUTE_CHANGED))
    }

    /// Decides one command that arrived with `in_capsule_bytes` of capsule data.
    pub fn handle(&mut self, command: &Command, in_capsule_bytes: usize, now: Instant) -> Outcome {
        // Any command shows the host alive; Keep Alive exists for when it has nothing to ask.
        self.last_keep_alive = now;
        self.data.clear();
        let cid = command.cid();
        let answer = |status: Status, result: u64| Outcome::Answer {
            completion: Completion::new(cid, status).with_result(result),
            data_bytes: 0,
        };
        if command.opcode() == FABRICS {
            return match self.fabrics(command) {
                Ok(Some(result)) => answer(status::SUCCESS, result),
                Ok(None) => Outcome::AnswerThenEnd {
                    completion: Completion::new(cid, status::SUCCESS),
                },
                Err(status) => answer(status, 0),
            };
        }
        if !self.properties.ready() {
            return answer(status::COMMAND_SEQUENCE_ERROR, 0);
        }
        // Data the host reads must come back over the transport (C2HData), at most as much
        // as its SGL holds; in-capsule data is only for what the host writes.
        let room = match data_location(command, in_capsule_bytes, NVMF_IN_CAPSULE_DATA_BYTES as u32)
        {
            Ok(DataLocation::Transport { length_bytes }) => length_bytes as usize,
            Ok(_) => 0,
            Err(status) => return answer(status, 0),
        };
        let result = match command.opcode() {
            ADMIN_IDENTIFY => self.identify(command),
            ADMIN_GET_LOG_PAGE => self.log_page(command),
            ADMIN_GET_FEATURES => self.features.get(command, &self.shared).map(u64::from),
            ADMIN_SET_FEATURES => self.features.set(command, &self.shared).map(u64::from),
            ADMIN_KEEP_ALIVE => Ok(0),
            ADMIN_ABORT => Ok(ABORT_NOT_ABORTED),
            ADMIN_ASYNC_EVENT_REQUEST => {
                if self.held_events.len() >= NVMF_MAX_PENDING_AERS {
                    Err(status::ASYNC_EVENT_LIMIT_EXCEEDED)
                } else {
                    self.held_events.push(cid);
                    return Outcome::Held;
                }
            }
            _ => Err(status::INVALID_OPCODE),
        };
        match result {
            Ok(result) => {
                if !self.data.is_empty() && room == 0 {
                    self.data.clear();
                    return answer(status::DATA_SGL_LENGTH_INVALID, 0);
                }
                Outcome::Answer {
                    completion: Completion::new(cid, status::SUCCESS).with_result(result),
                    data_bytes: self.data.len().min(room),
                }
            }
            Err(status) => {
                self.data.clear();
                answer(status, 0)
            }
        }
    }

    /// Property Get and Set, Disconnect: `Ok(None)` ends the association.
    fn fabrics(&mut self, command: &Command) -> Result<Option<u64>, Status> {
        let eight_bytes = command.0[40] & 0b111 == 1;
        let offset = command.u32_at(44);
        match command.fctype() {
            FCTYPE_PROPERTY_GET => self.properties.get(offset, eight_bytes).map(Some),
            FCTYPE_PROPERTY_SET => {
                match self
                    .properties
                    .set(offset, eight_bytes, command.u64_at(48))?
                {
                    Change::Enabled => self.shared.ready.store(true, Ordering::Release),
                    Change::Reset | Change::Shutdown => {
                        self.shared.ready.store(false, Ordering::Release);
                        self.ended_by_host = true;
                        self.shared.close();
                    }
                    Change::Nothing | Change::Fatal => {}
                }
                Ok(Some(0))
            }
            FCTYPE_DISCONNECT => Ok(None),
            // This queue is connected already.
            FCTYPE_CONNECT => Err(status::COMMAND_SEQUENCE_ERROR),
            _ => Err(status::INVALID_OPCODE),
        }
    }

    fn identify(&mut self, command: &Command) -> Result<u64, Status> {
        let cns = (command.cdw(10) & 0xff) as u8;
        let nsid = command.nsid();
        let mut page = [0u8; IDENTIFY_BYTES];
        let nvm = self.shared.kind == ControllerKind::Nvm;
        match cns {
            identify::CNS_CONTROLLER => identify::controller(
                &ControllerIdentity {
                    cntlid: self.shared.cntlid,
                    kind: self.shared.kind,
                    subnqn: &self.shared.subnqn,
                    features: self.setup.io_features,
                },
                &mut page,
            ),
            identify::CNS_NAMESPACE if nvm => {
                if nsid == 0 || nsid > NVMF_MAX_NSID {
                    return Err(status::INVALID_NAMESPACE_OR_FORMAT);
                }
                let snapshot = self.setup.published.load();
                // An inactive NSID in range answers zeroes.
                if let Some(namespace) = subsystem::namespace(&snapshot, &self.shared.host, nsid) {
                    identify::namespace(&namespace, &mut page);
                }
            }
            identify::CNS_ACTIVE_NAMESPACES if nvm => {
                let snapshot = self.setup.published.load();
                let namespaces = subsystem::namespaces(&snapshot, &self.shared.host);
                identify::active_namespaces(&namespaces, nsid, &mut page)?;
            }
            identify::CNS_NAMESPACE_DESCRIPTORS if nvm => {
                let snapshot = self.setup.published.load();
                let namespace = subsystem::namespace(&snapshot, &self.shared.host, nsid)
                    .ok_or(status::INVALID_NAMESPACE_OR_FORMAT)?;
                identify::namespace_descriptors(&namespace, &mut page);
            }
            _ => return Err(status::INVALID_FIELD),
        }
        self.data.extend_from_slice(&page);
        Ok(0)
    }

    fn log_page(&mut self, command: &Command) -> Result<u64, Status> {
        let request = LogRequest::of(command);
        let nvm = self.shared.kind == ControllerKind::Nvm;
        let mut page = Vec::new();
        match request.page {
            log_pages::LOG_ERROR if nvm => page.resize(log_pages::ERROR_ENTRY_BYTES, 0),
            log_pages::LOG_SMART if nvm => {
                let snapshot = self.setup.published.load();
                let mut namespaces = subsystem::namespaces(&snapshot, &self.shared.host);
                let nsid = command.nsid();
                if nsid != 0 && nsid != u32::MAX {
                    namespaces.retain(|namespace| namespace.nsid == nsid);
                    if namespaces.is_empty() {
                        return Err(status::INVALID_NAMESPACE_OR_FORMAT);
                    }
                }
                let mut smart = [0u8; log_pages::SMART_BYTES];
                log_pages::smart(&namespaces, &mut smart);
                page.extend_from_slice(&smart);
            }
            log_pages::LOG_CHANGED_NAMESPACES if nvm => {
                let changed = self.shared.take_changed_namespaces();
                let mut list = [0u8; log_pages::CHANGED_LIST_ENTRIES * 4];
                log_pages::changed_namespaces(&changed, &mut list);
                page.extend_from_slice(&list);
            }
            log_pages::LOG_DISCOVERY if !nvm => {
                let snapshot = self.setup.published.load();
                // The host as it is now: a record made after this controller connected
                // counts.
                let entries: Vec<DiscoveryEntry> = snapshot
                    .host_by_nqn(&self.shared.hostnqn)
                    .filter(|host| !subsystem::namespaces(&snapshot, &host.name).is_empty())
                    .map(|host| DiscoveryEntry {
                        subnqn: subsystem::subsystem_nqn(&self.setup.nqn_base, &host.name),
                        address: self.setup.local_address,
                    })
                    .into_iter()
                    .collect();
                log_pages::discovery(self.setup.published.generation(), &entries, &mut page);
            }
            _ => return Err(status::INVALID_LOG_PAGE),
        }
        request.cut(&page, &mut self.data)?;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::nvme_name::DISCOVERY_NQN;
    use crate::nvmf::command::{CommandBuilder, SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK};
    use crate::nvmf::registers::{self as properties, CC, CSTS, CSTS_RDY};
    use crate::target::nvmf::features::{AEC_NAMESPACE_ATTRIBUTE, FID_ASYNC_EVENT_CONFIG};
    use crate::target::nvmf::subsystem::tests::snapshot;

    const BASE: &str = "nqn.2026-11.org.sds:m";

    fn queue(kind: ControllerKind, host: &str, hostnqn: &str) -> AdminQueue {
        let published = Arc::new(Published::default());
        published.publish(snapshot());
        let subnqn = match kind {
            ControllerKind::Nvm => subsystem::subsystem_nqn(BASE, host),
            ControllerKind::Discovery => DISCOVERY_NQN.to_string(),
        };
        let mut shared = ControllerShared::new(3, kind, host, &subnqn);
        shared.hostnqn = hostnqn.into();
        AdminQueue::new(
            Arc::new(shared),
            AdminSetup {
                published,
                nqn_base: BASE.into(),
                local_address: "127.0.0.1:4420".parse().unwrap(),
                io_features: IoFeatures::SDS,
            },
            Instant::now(),
        )
    }

    fn property_set(value: u32) -> Command {
        CommandBuilder::fabrics(FCTYPE_PROPERTY_SET, 1)
            .bytes_at(44, &CC.to_le_bytes())
            .bytes_at(48, &u64::from(value).to_le_bytes())
            .build()
    }

    fn property_get(offset: u32) -> Command {
        CommandBuilder::fabrics(FCTYPE_PROPERTY_GET, 2)
            .bytes_at(44, &offset.to_le_bytes())
            .build()
    }

    fn result_of(outcome: Outcome) -> (Status, u64, usize) {
        match outcome {
            Outcome::Answer {
                completion,
                data_bytes,
            } => (completion.status, completion.result, data_bytes),
            other => panic!("not an answer: {other:?}"),
        }
    }

    fn enable(queue: &mut AdminQueue) {
        let now = Instant::now();
        let (status, _, _) =
            result_of(queue.handle(&property_set(properties::enabling_cc()), 0, now));
        assert_eq!(status, status::SUCCESS);
    }

    fn identify(cns: u8, nsid: u32) -> Command {
        CommandBuilder::new(ADMIN_IDENTIFY, 9)
            .nsid(nsid)
            .cdw(10, u32::from(cns))
            .sgl(0, 4096, SGL_TRANSPORT_DATA_BLOCK)
            .build()
    }

    fn log_page(page: u8, bytes: u32) -> Command {
        CommandBuilder::new(ADMIN_GET_LOG_PAGE, 10)
            .nsid(u32::MAX)
            .cdw(10, u32::from(page) | ((bytes / 4 - 1) << 16))
            .sgl(0, bytes, SGL_TRANSPORT_DATA_BLOCK)
            .build()
    }

    #[test]
    fn only_fabrics_commands_before_the_controller_is_enabled() {
        let mut queue = queue(ControllerKind::Nvm, "a", "nqn.2014-08.org.example:a");
        let now = Instant::now();
        let (status, _, _) = result_of(queue.handle(&identify(1, 0), 0, now));
        assert_eq!(status, status::COMMAND_SEQUENCE_ERROR);
        assert_eq!(
            result_of(queue.handle(&property_get(CSTS), 0, now)).1 & u64::from(CSTS_RDY),
            0
        );
        enable(&mut queue);
        assert!(queue.shared().ready.load(Ordering::Acquire));
        assert_eq!(
            result_of(queue.handle(&property_get(CSTS), 0, now)).1,
            u64::from(CSTS_RDY)
        );
        let (status, _, bytes) = result_of(queue.handle(&identify(1, 0), 0, now));
        assert_eq!((status, bytes), (status::SUCCESS, 4096));
        assert_eq!(&queue.data()[78..80], &3u16.to_le_bytes(), "CNTLID");
    }

    #[test]
    fn identify_answers_for_the_hosts_namespaces_only() {
        let mut queue = queue(ControllerKind::Nvm, "a", "nqn.2014-08.org.example:a");
        enable(&mut queue);
        let now = Instant::now();
        let (status, _, _) = result_of(queue.handle(&identify(0, 5), 0, now));
        assert_eq!(status, status::SUCCESS);
        assert_eq!(&queue.data()[104..120], &[0xa1; 16], "NGUID");
        result_of(queue.handle(&identify(0, 2), 0, now));
        assert!(queue.data().iter().all(|&b| b == 0), "inactive: zeroes");
        let (status, _, _) = result_of(queue.handle(&identify(0, 0), 0, now));
        assert_eq!(status, status::INVALID_NAMESPACE_OR_FORMAT);
        let (status, _, _) = result_of(queue.handle(&identify(3, 2), 0, now));
        assert_eq!(status, status::INVALID_NAMESPACE_OR_FORMAT);
        result_of(queue.handle(&identify(2, 0), 0, now));
        assert_eq!(&queue.data()[..12], &[1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        let (status, _, _) = result_of(queue.handle(&identify(0x10, 0), 0, now));
        assert_eq!(status, status::INVALID_FIELD);
        // Data the host reads cannot come in the capsule.
        let in_capsule = CommandBuilder::new(ADMIN_IDENTIFY, 9)
            .cdw(10, 1)
            .sgl(0, 0, SGL_DATA_BLOCK_OFFSET)
            .build();
        let (status, _, _) = result_of(queue.handle(&in_capsule, 0, now));
        assert_eq!(status, status::DATA_SGL_LENGTH_INVALID);
    }

    #[test]
    fn the_discovery_log_shows_only_the_askers_subsystem() {
        let now = Instant::now();
        for (hostnqn, records) in [
            ("nqn.2014-08.org.example:a", 1u8),
            ("nqn.2014-08.org.example:b", 0),
            ("nqn.2014-08.org.example:stranger", 0),
        ] {
            let mut queue = queue(ControllerKind::Discovery, "", hostnqn);
            enable(&mut queue);
            let (status, _, bytes) = result_of(queue.handle(&log_page(0x70, 4096), 0, now));
            assert_eq!((status, bytes), (status::SUCCESS, 4096), "{hostnqn}");
            assert_eq!(queue.data()[8], records, "{hostnqn}");
            if records == 1 {
                let subnqn = subsystem::subsystem_nqn(BASE, "a");
                assert_eq!(
                    &queue.data()[1024 + 256..][..subnqn.len()],
                    subnqn.as_bytes()
                );
            }
            let (status, _, _) = result_of(queue.handle(&identify(0, 1), 0, now));
            assert_eq!(status, status::INVALID_FIELD, "no namespaces on discovery");
            let (status, _, _) = result_of(queue.handle(&log_page(0x02, 512), 0, now));
            assert_eq!(status, status::INVALID_LOG_PAGE);
        }
    }

    #[test]
    fn an_event_request_is_held_until_a_namespace_changes() {
        let mut queue = queue(ControllerKind::Nvm, "a", "nqn.2014-08.org.example:a");
        enable(&mut queue);
        let now = Instant::now();
        let aec = CommandBuilder::new(ADMIN_SET_FEATURES, 4)
            .cdw(10, u32::from(FID_ASYNC_EVENT_CONFIG))
            .cdw(11, AEC_NAMESPACE_ATTRIBUTE)
            .build();
        assert_eq!(result_of(queue.handle(&aec, 0, now)).0, status::SUCCESS);
        let aer = |cid| CommandBuilder::new(ADMIN_ASYNC_EVENT_REQUEST, cid).build();
        for cid in 0..NVMF_MAX_PENDING_AERS as u16 {
            assert_eq!(queue.handle(&aer(100 + cid), 0, now), Outcome::Held);
        }
        assert_eq!(
            result_of(queue.handle(&aer(200), 0, now)).0,
            status::ASYNC_EVENT_LIMIT_EXCEEDED
        );
        assert_eq!(queue.due_event(), None);
        queue.shared().namespace_changed(5);
        let event = queue.due_event().expect("an event");
        assert_eq!(
            (event.cid, event.result),
            (100, EVENT_NAMESPACE_ATTRIBUTE_CHANGED)
        );
        assert_eq!(queue.due_event(), None, "one event per change");
        result_of(queue.handle(&log_page(0x04, 4096), 0, now));
        assert_eq!(&queue.data()[..8], &[5, 0, 0, 0, 0, 0, 0, 0]);
        result_of(queue.handle(&log_page(0x04, 4096), 0, now));
        assert_eq!(&queue.data()[..4], &[0, 0, 0, 0], "reading clears the list");
    }

    #[test]
    fn keep_alive_expires_after_kato_and_the_grace() {
        let start = Instant::now();
        let mut queue = queue(ControllerKind::Nvm, "a", "nqn.2014-08.org.example:a");
        assert!(
            !queue.keep_alive_expired(start + Duration::from_secs(3600)),
            "no KATO"
        );
        queue.shared().kato_ms.store(1000, Ordering::Release);
        let grace = Duration::from_millis(u64::from(NVMF_KEEP_ALIVE_GRACE_MS));
        assert!(!queue.keep_alive_expired(start + Duration::from_millis(1000) + grace));
        let later = start + Duration::from_millis(900);
        let keep_alive = CommandBuilder::new(ADMIN_KEEP_ALIVE, 7).build();
        queue.handle(&keep_alive, 0, later);
        assert!(!queue.keep_alive_expired(later + Duration::from_millis(1000) + grace));
        assert!(queue.keep_alive_expired(later + Duration::from_millis(1001) + grace));
    }

    #[test]
    fn a_shutdown_ends_the_io_queues_but_not_the_admin_queue() {
        let mut queue = queue(ControllerKind::Nvm, "a", "nqn.2014-08.org.example:a");
        enable(&mut queue);
        let now = Instant::now();
        result_of(queue.handle(&property_set(properties::shutdown_cc()), 0, now));
        assert!(queue.shared().is_closed());
        assert!(!queue.ended_elsewhere());
        let csts = result_of(queue.handle(&property_get(CSTS), 0, now)).1 as u32;
        assert_eq!(csts & (0b11 << 2), properties::CSTS_SHST_COMPLETE);
        let disconnect = CommandBuilder::fabrics(FCTYPE_DISCONNECT, 8).build();
        assert!(matches!(
            queue.handle(&disconnect, 0, now),
            Outcome::AnswerThenEnd { .. }
        ));
        let other = self::queue(ControllerKind::Nvm, "a", "nqn.2014-08.org.example:a");
        other.shared().close();
        assert!(other.ended_elsewhere());
    }
}
