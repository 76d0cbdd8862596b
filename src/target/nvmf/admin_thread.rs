//! The thread that serves one controller's admin queue for the controller's life: it reads
//! command capsules (blocking, with a short tick so that it also notices the keep-alive
//! timer, asynchronous events, the controller being ended elsewhere and the server stopping),
//! lets the [`AdminQueue`] decide each, and sends C2HData and the response capsule.
//!
//! A PDU once begun must arrive whole within `NVMF_ADMIN_PDU_TIMEOUT_MS`; a malformed one, or
//! a PDU an admin queue never receives (this controller asks for no H2C data), gets a
//! C2HTermReq and ends the controller. Threads are bounded by `MAX_NVMF_CONTROLLERS`: the
//! registry refuses the Connect past it.

use super::admin::{AdminQueue, AdminSetup, Outcome};
use super::handshake::{read_or_terminate, terminate};
use super::registry::RegisteredController;
use crate::constants::{NVMF_ADMIN_PDU_TIMEOUT_MS, NVMF_ADMIN_TICK_MS};
use crate::nvmf::command::Completion;
use crate::nvmf::pdu::{DataHeader, Header, Negotiated, FES_PDU_SEQUENCE_ERROR};
use crate::nvmf::pdu_io::{self, PduIoError};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A connected admin queue, as the handshake leaves it.
pub struct AdminConnection {
    pub stream: TcpStream,
    pub registered: RegisteredController,
    pub negotiated: Negotiated,
    /// The admin queue's SQSIZE (0's based).
    pub sqsize: u16,
    pub sq_flow_control_disabled: bool,
    pub setup: AdminSetup,
    pub peer: SocketAddr,
}

/// Why the admin queue ended.
#[derive(Debug, thiserror::Error)]
pub enum AdminEnd {
    #[error("the host disconnected")]
    Disconnected,
    #[error("the host closed the connection")]
    Closed,
    #[error("no Keep Alive within the keep-alive timeout")]
    KeepAliveExpired,
    #[error("the controller was ended (its host's VPs changed, or the host was deleted)")]
    Ended,
    #[error("the server is stopping")]
    Shutdown,
    #[error("the connection failed")]
    Io(#[source] std::io::Error),
    #[error("PDU exchange failed")]
    Pdu(#[source] PduIoError),
    #[error("a {0:?} PDU on the admin queue")]
    UnexpectedPdu(crate::nvmf::pdu::PduType),
}

/// Serves the admin queue until the controller ends; the controller leaves the registry when
/// this returns (and its I/O queues end, through the closed flag).
pub fn serve(connection: AdminConnection, shutdown: &AtomicBool) {
    let peer = connection.peer;
    let cntlid = connection.registered.shared().cntlid;
    match run(connection, shutdown) {
        Ok(end) | Err(end) => log::info!(
            "NVMe/TCP {peer}: controller {cntlid} ended: {}",
            crate::logger::error_chain(&end)
        ),
    }
}

fn run(connection: AdminConnection, shutdown: &AtomicBool) -> Result<AdminEnd, AdminEnd> {
    let AdminConnection {
        mut stream,
        registered,
        negotiated,
        sqsize,
        sq_flow_control_disabled,
        setup,
        ..
    } = connection;
    let mut queue = AdminQueue::new(registered.shared().clone(), setup, Instant::now());
    let tick = Duration::from_millis(NVMF_ADMIN_TICK_MS);
    let pdu_timeout = Duration::from_millis(NVMF_ADMIN_PDU_TIMEOUT_MS);
    // A host that stops reading its answers cannot hold the thread longer than this either.
    stream
        .set_write_timeout(Some(pdu_timeout))
        .map_err(AdminEnd::Io)?;
    let mut buffer = Vec::new();
    let mut scratch = Vec::new();
    // SQHD after the Connect, which was the queue's first command.
    let entries = u32::from(sqsize) + 1;
    let mut sq_head = 1 % entries;
    loop {
        if shutdown.load(Ordering::Acquire) {
            return Ok(AdminEnd::Shutdown);
        }
        if queue.ended_elsewhere() {
            return Ok(AdminEnd::Ended);
        }
        if queue.keep_alive_expired(Instant::now()) {
            return Ok(AdminEnd::KeepAliveExpired);
        }
        if let Some(mut event) = queue.due_event() {
            // The event request was consumed long ago: the head is where it is now.
            event.sq_head = sq_head as u16;
            send_response(&mut stream, event, &negotiated, &mut scratch)?;
        }
        // Wait up to one tick for the next PDU to begin.
        stream.set_read_timeout(Some(tick)).map_err(AdminEnd::Io)?;
        match stream.peek(&mut [0u8; 1]) {
            Ok(0) => return Ok(AdminEnd::Closed),
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(error) => return Err(AdminEnd::Io(error)),
        }
        stream
            .set_read_timeout(Some(pdu_timeout))
            .map_err(AdminEnd::Io)?;
        let received = match read_or_terminate(&mut stream, &mut buffer, &negotiated, &mut scratch)
        {
            Ok(received) => received,
            Err(PduIoError::Closed) => return Ok(AdminEnd::Closed),
            Err(error) => return Err(AdminEnd::Pdu(error)),
        };
        let command = match received.header {
            Header::CapsuleCmd(command) => command,
            Header::H2CTermReq(_) => return Ok(AdminEnd::Closed),
            other => {
                terminate(
                    &mut stream,
                    FES_PDU_SEQUENCE_ERROR,
                    0,
                    &negotiated,
                    &mut scratch,
                );
                return Err(AdminEnd::UnexpectedPdu(other.pdu_type()));
            }
        };
        if !sq_flow_control_disabled {
            sq_head = (sq_head + 1) % entries;
        }
        let with_head = |mut completion: Completion| {
            completion.sq_head = sq_head as u16;
            completion
        };
        // An answer (with its data, if any); after some, the queue ends.
        let (completion, data_bytes, then_end) =
            match queue.handle(&command, received.data.len(), Instant::now()) {
                Outcome::Answer {
                    completion,
                    data_bytes,
                } => (completion, data_bytes, false),
                Outcome::AnswerThenEnd { completion } => (completion, 0, true),
                Outcome::Held => continue,
            };
        if data_bytes > 0 {
            let header = Header::C2HData(DataHeader {
                command_id: completion.cid,
                transfer_tag: 0,
                offset_bytes: 0,
                length_bytes: data_bytes as u32,
                last: true,
                success: false,
            });
            pdu_io::write_pdu(
                &mut stream,
                &header,
                &queue.data()[..data_bytes],
                &negotiated,
                &mut scratch,
            )
            .map_err(AdminEnd::Pdu)?;
        }
        send_response(
            &mut stream,
            with_head(completion),
            &negotiated,
            &mut scratch,
        )?;
        if then_end {
            return Ok(AdminEnd::Disconnected);
        }
    }
}

fn send_response(
    stream: &mut TcpStream,
    completion: Completion,
    negotiated: &Negotiated,
    scratch: &mut Vec<u8>,
) -> Result<(), AdminEnd> {
    pdu_io::write_pdu(
        stream,
        &Header::CapsuleResp(completion),
        &[],
        negotiated,
        scratch,
    )
    .map_err(AdminEnd::Pdu)
}
