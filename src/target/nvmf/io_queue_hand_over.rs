//! Handing a connected I/O queue to a reactor: the one place the handshake thread meets the
//! I/O queue sessions (`super::queue`). Until the queue sessions are part of the build, an
//! I/O queue whose Connect was answered is closed here, and the host sees its queue end.

use super::controller::{ControllerShared, NvmfContext};
use crate::target::handshake_stream::HandshakeStream;
use crate::target::reactor_load::ReactorPlace;
use std::sync::Arc;

/// A connected I/O queue, as the handshake leaves it.
pub struct ConnectedIoQueue {
    pub stream: HandshakeStream,
    /// Bytes read past the Connect capsule.
    pub leftover: Vec<u8>,
    pub controller: Arc<ControllerShared>,
    pub qid: u16,
    pub sqsize: u16,
    pub sq_flow_control_disabled: bool,
    pub header_digest: bool,
    pub data_digest: bool,
    pub host_pda: u8,
    /// The place on a reactor reserved before the Connect was answered.
    pub place: ReactorPlace,
}

/// Gives the queue to its reactor.
pub fn hand_over(queue: ConnectedIoQueue, _context: &NvmfContext) {
    log::warn!(
        "NVMe/TCP controller {}: I/O queue {} connected, but this build serves no I/O queues",
        queue.controller.cntlid,
        queue.qid
    );
}
