//! Accepting NVMe/TCP hosts: one acceptor thread on the port; each new connection runs its
//! handshake (ICReq/ICResp and Connect, [`super::handshake`]) on its own short-lived thread,
//! bounded in number by
//! [`HandshakeSlots`](crate::target::handshake_slots::HandshakeSlots) and in time by one
//! deadline. An admin queue's thread then goes on serving that controller
//! ([`super::admin_thread`]) with its handshake slot given back; an I/O queue has been handed
//! to a reactor.
//!
//! A peer is known here by its address only (its host NQN comes with Connect): an address a
//! host record names gets the larger share of handshake slots, as on NBD and iSCSI.

use super::admin_thread;
use super::controller::NvmfContext;
use super::handshake;
use crate::target::tcp_acceptor;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Why the listener could not start.
pub type ListenerError = tcp_acceptor::AcceptorError;

/// Listens on `address` and starts the acceptor thread.
pub fn listen(
    address: SocketAddr,
    context: Arc<NvmfContext>,
) -> Result<JoinHandle<()>, ListenerError> {
    let shutdown = context.shutdown.clone();
    let log_context = context.clone();
    let acceptor = tcp_acceptor::listen(
        address,
        "nvmf-accept",
        "NVMe/TCP",
        shutdown,
        move |stream, peer| start_handshake(stream, peer, &context),
    )?;
    log::info!(
        "NVMe/TCP listening on {address}; subsystems {}:<host>",
        log_context.nqn_base
    );
    Ok(acceptor)
}

fn start_handshake(stream: TcpStream, peer: SocketAddr, context: &Arc<NvmfContext>) {
    // Accepted sockets may inherit non-blocking mode on some systems: the handshake blocks.
    let _ = stream.set_nonblocking(false);
    let thread_context = context.clone();
    tcp_acceptor::start_handshake(
        stream,
        peer,
        &context.published,
        &context.handshakes,
        "NVMe/TCP",
        "nvmf-connect",
        move |stream, slot| {
            let context = thread_context;
            let outcome = handshake::handshake(stream, peer, &context);
            drop(slot);
            match outcome {
                Ok(Some(admin)) => admin_thread::serve(admin, &context.shutdown),
                Ok(None) => {}
                Err(error) => log::info!("NVMe/TCP {peer}: {}", crate::logger::error_chain(&error)),
            }
        },
    );
}
