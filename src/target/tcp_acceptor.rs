//! The acceptor of a TCP front end (iSCSI, NVMe/TCP): one thread polls the listening socket
//! (non-blocking, so it notices the server stopping), and each connection it accepts is
//! admitted to a handshake thread through the front end's [`HandshakeSlots`] (a peer a host
//! record names by address gets the larger share) before the front end's own handshake runs.

use crate::domain::host::PeerIdentity;
use crate::domain::snapshot::Published;
use crate::target::handshake_slots::{HandshakeSlots, Slot, Source};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the acceptor sleeps when no connection is waiting.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// Why a TCP front end could not start listening.
#[derive(Debug, thiserror::Error)]
pub enum AcceptorError {
    #[error("cannot listen for {protocol} on {address}")]
    Bind {
        protocol: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the {protocol} acceptor thread")]
    Thread {
        protocol: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `address` and starts thread `thread_name` accepting on it until `shutdown`; each
/// connection goes to `on_accept`. `protocol` names the front end in errors and the log.
pub fn listen(
    address: SocketAddr,
    thread_name: &str,
    protocol: &'static str,
    shutdown: Arc<AtomicBool>,
    mut on_accept: impl FnMut(TcpStream, SocketAddr) + Send + 'static,
) -> Result<JoinHandle<()>, AcceptorError> {
    let listener = TcpListener::bind(address).map_err(|source| AcceptorError::Bind {
        protocol,
        address,
        source,
    })?;
    std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || {
            if let Err(error) = listener.set_nonblocking(true) {
                log::error!("{protocol} acceptor: {error}");
                return;
            }
            while !shutdown.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, peer)) => on_accept(stream, peer),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(ACCEPT_POLL)
                    }
                    Err(error) => {
                        log::warn!("{protocol} accept failed: {error}");
                        std::thread::sleep(ACCEPT_POLL);
                    }
                }
            }
        })
        .map_err(|source| AcceptorError::Thread { protocol, source })
}

/// Admits an accepted connection to a handshake slot and runs `handshake` with it on thread
/// `thread_name`; the handshake gives the slot back (drops it) when its bounded part is over.
/// A refused connection, or one no thread could be started for, is dropped and said in the log.
pub fn start_handshake(
    stream: TcpStream,
    peer: SocketAddr,
    published: &Published,
    slots: &HandshakeSlots,
    protocol: &'static str,
    thread_name: &str,
    handshake: impl FnOnce(TcpStream, Slot) + Send + 'static,
) {
    let Some(slot) = admit(&stream, peer, published, slots, protocol) else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || handshake(stream, slot));
    if let Err(error) = spawned {
        log::error!("{protocol}: cannot start a handshake thread: {error}");
    }
}

/// Admits an accepted connection to a handshake slot, or says why not (in the log) and
/// drops it. Sets TCP_NODELAY: every front end answers small PDUs at once.
fn admit(
    stream: &TcpStream,
    peer: SocketAddr,
    published: &Published,
    slots: &HandshakeSlots,
    protocol: &'static str,
) -> Option<Slot> {
    let _ = stream.set_nodelay(true);
    let identity = PeerIdentity {
        address: Some(peer.ip()),
        ..PeerIdentity::default()
    };
    let known = published.load().host_of(&identity).is_some();
    match slots.admit(Source::Address(peer.ip()), known) {
        Ok(slot) => Some(slot),
        Err(refusal) => {
            log::warn!("{protocol} {peer}: refused: {refusal}");
            None
        }
    }
}
