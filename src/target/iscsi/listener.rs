//! Accepting iSCSI initiators: one acceptor thread on the portal's TCP socket; each new
//! connection logs in on a short-lived handshake thread (blocking, bounded in number by
//! [`HandshakeSlots`] and in time by one deadline for the whole login, off the data path). A
//! discovery session is then served to its end on that same thread ([`super::discovery`]); a
//! normal session is handed to a reactor through [`session::attach`].
//!
//! The initiator is known by its initiator name, which the login resolves against the
//! snapshot published when the connection arrives; its address only decides which handshake
//! slots it may take (a peer a host record names by address gets the larger share, as on NBD).

use super::discovery::{self, DiscoverySetup};
use super::login::{self, LoggedIn, LoginSetup};
use super::params::{Offer, SessionType};
use super::registry::Registry;
use super::session;
use crate::domain::snapshot::Published;
use crate::reactor::ReactorHandle;
use crate::scsi::LuRegistry;
use crate::target::handshake_slots::HandshakeSlots;
use crate::target::handshake_stream::{HandshakeSocket, HandshakeStream};
use crate::target::reactor_load::ReactorLoad;
use crate::target::tcp_acceptor;
use crate::volume::provisioner::Provisioner;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Why the listener could not start.
pub type ListenerError = tcp_acceptor::AcceptorError;

/// What the acceptor, every login thread and every session share.
pub struct IscsiContext {
    pub published: Arc<Published>,
    pub reactors: Vec<Arc<ReactorHandle>>,
    pub provisioner: Provisioner,
    pub shutdown: Arc<AtomicBool>,
    /// Every live session (`iscsi_get_sessions`, TSIHs, reinstatement).
    pub registry: Arc<Registry>,
    /// This server's one target name (see [`super::target_name`]).
    pub target_name: String,
    /// Sessions each reactor serves, shared with the NBD front end.
    pub reactor_load: Arc<ReactorLoad>,
    /// The SCSI layer's shared state (logical units across sessions).
    pub scsi: Arc<LuRegistry>,
    /// What logins are offered.
    pub offer: Offer,
    handshakes: HandshakeSlots,
    /// How long a whole login (and a whole discovery session) may take.
    handshake_limit: Duration,
}

/// What [`IscsiContext::new`] is given.
pub struct IscsiSetup {
    pub published: Arc<Published>,
    pub reactors: Vec<Arc<ReactorHandle>>,
    pub provisioner: Provisioner,
    pub shutdown: Arc<AtomicBool>,
    pub registry: Arc<Registry>,
    pub target_name: String,
    pub reactor_load: Arc<ReactorLoad>,
    pub scsi: Arc<LuRegistry>,
    pub handshake_limit: Duration,
}

impl IscsiContext {
    pub fn new(setup: IscsiSetup) -> Arc<Self> {
        Arc::new(Self {
            published: setup.published,
            reactors: setup.reactors,
            provisioner: setup.provisioner,
            shutdown: setup.shutdown,
            registry: setup.registry,
            target_name: setup.target_name,
            reactor_load: setup.reactor_load,
            scsi: setup.scsi,
            offer: Offer::default(),
            handshakes: HandshakeSlots::default(),
            handshake_limit: setup.handshake_limit,
        })
    }
}

/// Listens on `address` and starts the acceptor thread.
pub fn listen(
    address: SocketAddr,
    context: Arc<IscsiContext>,
) -> Result<JoinHandle<()>, ListenerError> {
    let shutdown = context.shutdown.clone();
    let log_context = context.clone();
    let acceptor = tcp_acceptor::listen(
        address,
        "iscsi-accept",
        "iSCSI",
        shutdown,
        move |stream, peer| start_login(stream, peer, &context),
    )?;
    log::info!(
        "iSCSI target {} listening on {address}",
        log_context.target_name
    );
    Ok(acceptor)
}

fn start_login(stream: TcpStream, peer: SocketAddr, context: &Arc<IscsiContext>) {
    let thread_context = context.clone();
    tcp_acceptor::start_handshake(
        stream,
        peer,
        &context.published,
        &context.handshakes,
        "iSCSI",
        "iscsi-login",
        move |stream, slot| {
            handshake(stream, peer, &thread_context);
            drop(slot);
        },
    );
}

fn handshake(tcp: TcpStream, peer: SocketAddr, context: &IscsiContext) {
    let portal = match tcp.local_addr() {
        Ok(address) => address,
        Err(error) => {
            log::warn!("iSCSI {peer}: {error}");
            return;
        }
    };
    let mut stream = HandshakeStream::new(HandshakeSocket::Tcp(tcp));
    if let Err(error) = stream.prepare(context.handshake_limit) {
        log::warn!("iSCSI {peer}: {error}");
        return;
    }
    let setup = LoginSetup {
        snapshot: context.published.load(),
        target_name: &context.target_name,
        offer: context.offer,
        registry: &context.registry,
        peer: peer.to_string(),
        reactor_load: Some(&context.reactor_load),
    };
    let outcome = match login::login(&mut stream, &setup) {
        Ok(outcome) => outcome,
        Err(error) => {
            log::info!(
                "iSCSI {peer}: login failed: {}",
                crate::logger::error_chain(&error)
            );
            return;
        }
    };
    drop(setup);
    if outcome.session_type == SessionType::Discovery {
        let setup = DiscoverySetup {
            published: &context.published,
            target_name: &context.target_name,
            portal,
        };
        if let Err(error) = discovery::serve(&mut stream, &outcome, &setup) {
            log::info!(
                "iSCSI {peer}: discovery session ended: {}",
                crate::logger::error_chain(&error)
            );
        }
        return;
    }
    let (Some(host), Some(ticket)) = (outcome.host, outcome.ticket) else {
        log::warn!("iSCSI {peer}: a normal session without its host or reactor place");
        return;
    };
    let stream = match stream.into_fd() {
        Ok(fd) => TcpStream::from(fd),
        Err(error) => {
            log::warn!("iSCSI {peer}: {error}");
            return;
        }
    };
    let logged_in = LoggedIn {
        stream,
        initiator_name: outcome.initiator_name,
        isid: outcome.isid,
        tsih: outcome.tsih,
        host: host.name,
        params: outcome.params,
        cmd_sn: outcome.cmd_sn,
        stat_sn: outcome.stat_sn,
        peer,
        registry_entry: outcome.registry_entry,
        ticket,
    };
    session::attach(logged_in, context);
}
