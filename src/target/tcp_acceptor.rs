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

/// Starts thread `thread_name` accepting on `listener` until `shutdown`; each connection goes
/// to `on_accept`. `protocol` names the front end in the log.
pub fn spawn(
    listener: TcpListener,
    thread_name: &str,
    protocol: &'static str,
    shutdown: Arc<AtomicBool>,
    mut on_accept: impl FnMut(TcpStream, SocketAddr) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
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
