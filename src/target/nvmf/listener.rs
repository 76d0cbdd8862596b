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
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot listen for NVMe/TCP on {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the NVMe/TCP acceptor thread")]
    Thread(#[source] std::io::Error),
}

/// Listens on `address` and starts the acceptor thread.
pub fn listen(
    address: SocketAddr,
    context: Arc<NvmfContext>,
) -> Result<JoinHandle<()>, ListenerError> {
    let listener = TcpListener::bind(address).map_err(|source| ListenerError::Bind {
        address: address.to_string(),
        source,
    })?;
    log::info!(
        "NVMe/TCP listening on {address}; subsystems {}:<host>",
        context.nqn_base
    );
    let shutdown = context.shutdown.clone();
    tcp_acceptor::spawn(
        listener,
        "nvmf-accept",
        "NVMe/TCP",
        shutdown,
        move |stream, peer| start_handshake(stream, peer, &context),
    )
    .map_err(ListenerError::Thread)
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
