//! The hand-over of an I/O queue from the handshake thread (which answered its Connect) to a
//! reactor, and the making of a namespace's engine: at attach for each VP the host has, and
//! later for a VP made while the queue lives, the first time a command names its NSID.

use super::*;
use crate::blockio::EngineConfig;
use crate::constants::{
    MAX_IO_BYTES, MAX_NAMESPACES_PER_SUBSYSTEM, MAX_RETAINED_BUFFER_BYTES_PER_CONNECTION,
    NVMF_IN_CAPSULE_DATA_BYTES, NVMF_MAX_H2C_DATA_BYTES, NVMF_MAX_QUEUE_ENTRIES,
    NVMF_RECV_BUFFER_BYTES,
};
use crate::domain::vpath::Vpath;
use crate::reactor::mailbox::Message;
use crate::target::handshake_stream::HandshakeStream;

/// An I/O queue whose Connect the handshake thread answered, ready for a reactor.
pub struct IoQueueTicket {
    pub stream: HandshakeStream,
    /// Bytes read past the Connect capsule (the host may send its first commands at once).
    pub leftover: Vec<u8>,
    pub controller: Arc<ControllerShared>,
    pub qid: u16,
    /// SQSIZE as the host gave it in Connect (0's based).
    pub sqsize: u16,
    /// Connect CATTR bit 2: the host disabled SQ flow control.
    pub sq_flow_control_disabled: bool,
    pub header_digest: bool,
    pub data_digest: bool,
    /// HPDA from ICReq: how the host wants C2H data aligned.
    pub host_pda: u8,
    /// The place on a reactor reserved for the queue before its Connect was answered.
    pub place: ReactorPlace,
}

/// What the queue needs of the front end's context.
pub struct QueueContext<'a> {
    pub published: &'a Arc<Published>,
    pub provisioner: &'a Provisioner,
    pub budget: &'static BufferBudget,
    pub reactors: &'a [Arc<crate::reactor::ReactorHandle>],
}

/// Hands an I/O queue to the reactor its ticket has a place on, with an engine for each VP
/// its host has now (at most `MAX_NAMESPACES_PER_SUBSYSTEM`, in LUN order).
pub fn attach(ticket: IoQueueTicket, context: &super::super::NvmfContext) {
    attach_with(
        ticket,
        &QueueContext {
            published: &context.published,
            provisioner: &context.provisioner,
            budget: context.buffer_budget,
            reactors: &context.reactors,
        },
    );
}

pub(crate) fn attach_with(ticket: IoQueueTicket, context: &QueueContext) {
    let peer = match ticket.stream.socket() {
        crate::target::handshake_stream::HandshakeSocket::Tcp(s) => s
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".to_string()),
        crate::target::handshake_stream::HandshakeSocket::Unix(_) => "unix".to_string(),
    };
    let socket = match ticket.stream.into_fd() {
        Ok(socket) => socket,
        Err(error) => {
            log::warn!(
                "nvmf {peer}: I/O queue {} not attached: {error}",
                ticket.qid
            );
            return;
        }
    };
    let host = ticket.controller.host.clone();
    let mut queue = IoQueue {
        socket,
        peer: peer.clone(),
        controller: ticket.controller.clone(),
        qid: ticket.qid,
        sq_entries: ticket.sqsize.saturating_add(1),
        sq_head: 0,
        sq_flow_control_disabled: ticket.sq_flow_control_disabled,
        negotiated: Negotiated {
            header_digest: ticket.header_digest,
            data_digest: ticket.data_digest,
            host_pda: ticket.host_pda,
            controller_pda: 0,
            max_data_bytes: (NVMF_IN_CAPSULE_DATA_BYTES as u32).max(NVMF_MAX_H2C_DATA_BYTES),
        },
        host: host.clone(),
        published: context.published.clone(),
        provisioner: context.provisioner.clone(),
        namespaces: Vec::with_capacity(MAX_NAMESPACES_PER_SUBSYSTEM),
        reactor_index: None,
        recv: RecvBuffer::new(NVMF_RECV_BUFFER_BYTES),
        inbound: Inbound::Headers,
        stalled: false,
        terminating: false,
        terminating_ticks: 0,
        buffer_bytes: 0,
        budget: context.budget,
        dsm: DsmBuffers::new(),
        compare: CompareBuffers::new(),
        control: (0..CONTROL_ANSWERS)
            .map(|_| ControlAnswer {
                resp: [0; RESP_BYTES],
                len: 0,
                close_after: false,
            })
            .collect(),
        free_control: (0..CONTROL_ANSWERS as u16).rev().collect(),
        term: [0; TERM_BYTES],
        term_len: 0,
        out_queue: VecDeque::with_capacity(2 * NVMF_MAX_QUEUE_ENTRIES + CONTROL_ANSWERS),
        sending: Vec::with_capacity(MAX_SEND_IOVECS),
        send: GatherSend::with_capacity(MAX_SEND_IOVECS),
        defer_send: false,
        tick: SessionTick::every_second(),
        ring_pending: 0,
        closing: false,
        finished: false,
        _count: ticket.controller.io_queue_started(),
        place: ticket.place,
    };
    if ticket.leftover.len() > queue.recv.capacity() {
        log::warn!(
            "nvmf {peer}: I/O queue {}: too many bytes after Connect",
            ticket.qid
        );
        return;
    }
    if !ticket.leftover.is_empty() {
        if let Some((at, room)) = queue.recv.spare() {
            let n = ticket.leftover.len().min(room);
            // SAFETY: `at` points at `room` writable bytes of the receive buffer, and n <= room.
            unsafe { std::ptr::copy_nonoverlapping(ticket.leftover.as_ptr(), at, n) };
            queue.recv.filled(n);
        }
    }
    let snapshot = context.published.load();
    let mut paths: Vec<_> = snapshot
        .paths_of(&host)
        .map(|(index, view)| (index, view.vpath.clone()))
        .collect();
    paths.sort_by_key(|(_, vpath)| vpath.lun);
    if paths.len() > MAX_NAMESPACES_PER_SUBSYSTEM {
        log::warn!(
            "nvmf {peer}: host {host} has {} VPs; the first {MAX_NAMESPACES_PER_SUBSYSTEM} by \
             LUN are its namespaces",
            paths.len()
        );
        paths.truncate(MAX_NAMESPACES_PER_SUBSYSTEM);
    }
    for (index, vpath) in paths {
        queue.add_namespace(vpath, index);
    }
    log::info!(
        "nvmf {peer}: I/O queue {} of controller {} (host {host}), {} entries, namespaces {:?}",
        ticket.qid,
        ticket.controller.cntlid,
        queue.sq_entries,
        queue.namespaces.iter().map(|n| n.nsid).collect::<Vec<_>>()
    );
    let reactor = queue.place.reactor();
    if let Some(reactor) = context.reactors.get(reactor) {
        reactor.post(Message::Attach(Box::new(queue)));
    }
}

impl IoQueue {
    /// Makes the engine of `vpath`'s namespace (its volume opened), numbered by its position.
    /// `false` when the queue has all the namespaces it can or the volume is being deleted.
    pub(super) fn add_namespace(&mut self, vpath: Arc<Vpath>, path_hint: usize) -> bool {
        let position = self.namespaces.len();
        if position >= MAX_NAMESPACES_PER_SUBSYSTEM {
            return false;
        }
        let Ok(open) = OpenGuard::open(&vpath.volume) else {
            return false;
        };
        // The buffers the engines keep for reuse are a connection's worth, shared.
        let retained =
            (MAX_RETAINED_BUFFER_BYTES_PER_CONNECTION / (position + 1)).max(MAX_IO_BYTES);
        let mut engine = BlockEngine::new(
            vpath.clone(),
            path_hint,
            self.published.clone(),
            self.provisioner.clone(),
            EngineConfig::front_end(
                position * NVMF_SLOTS_PER_NAMESPACE,
                NVMF_SLOTS_PER_NAMESPACE,
                MAX_IO_BYTES,
                retained,
            ),
        );
        if let Some(reactor_index) = self.reactor_index {
            engine.attach(reactor_index);
        }
        self.namespaces.push(Namespace {
            nsid: vpath.lun + 1,
            vpath_id: vpath.id,
            block_bytes: vpath.volume.block_size_bytes,
            engine,
            commands: (0..NVMF_SLOTS_PER_NAMESPACE)
                .map(|_| CommandSlot::new())
                .collect(),
            _open: open,
        });
        self.out_queue.reserve(2 * NVMF_SLOTS_PER_NAMESPACE);
        true
    }

    /// The position of namespace `nsid`, made now if the host got a VP at LUN `nsid - 1`
    /// since the queue began (a configuration change: the allocation is allowed here).
    pub(super) fn namespace(&mut self, nsid: u32) -> Option<usize> {
        if let Some(position) = self.namespaces.iter().position(|n| n.nsid == nsid) {
            return Some(position);
        }
        let lun = nsid.checked_sub(1)?;
        let snapshot = self.published.load();
        let (index, vpath) = snapshot
            .paths_of(&self.host)
            .find(|(_, view)| view.vpath.lun == lun)
            .map(|(index, view)| (index, view.vpath.clone()))?;
        drop(snapshot);
        if !self.add_namespace(vpath, index) {
            return None;
        }
        log::info!(
            "nvmf {} (qid {}): namespace {nsid} added",
            self.peer,
            self.qid
        );
        Some(self.namespaces.len() - 1)
    }
}
