//! Accepting NBD clients: one acceptor thread per listening socket (TCP or Unix). Each new
//! connection negotiates on a short-lived handshake thread (blocking, bounded in number and
//! time, off the data path); once the client picks an export, the connection is handed to a
//! reactor, round robin, as an [`NbdSession`].
//!
//! Who the client is decides what it sees (`HostCatalog`), and is settled once per
//! connection, as late as the protocol allows: a plain connection is known by its address (TCP)
//! or user id (Unix socket) from the start; with TLS configured (on every listener, TLS then
//! being required) the catalogue is resolved only after NBD_OPT_STARTTLS and the TLS
//! handshake, from the verified client certificate's subject — and only from it, when client
//! certificates are required. A TLS connection's transmission phase goes through a relay
//! thread ([`super::tls`]); a plain one's socket goes to the reactor as it is.

use super::connection::NbdSession;
use super::handshake::{ExportCatalog, ExportInfo, HandshakeError, Negotiation, TlsPolicy};
use super::session_slots::{ReactorLoad, SessionTicket};
use super::tls::{self, TlsServer, TlsSocket};
use crate::constants::MAX_IO_BYTES;
use crate::domain::host::{Host, PeerIdentity};
use crate::domain::snapshot::{PathView, Published, Snapshot};
use crate::domain::vpath::AccessMode;
use crate::reactor::mailbox::Message;
use crate::reactor::ReactorHandle;
use crate::target::handshake_slots::{HandshakeSlots, Source};
use crate::target::handshake_stream::{HandshakeSocket as Socket, HandshakeStream as Stream};
use crate::volume::open_state::OpenGuard;
use crate::volume::provisioner::Provisioner;
use crate::volume::Volume;
use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot listen for NBD on {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the mode of the NBD socket {address} to {mode:04o}")]
    Mode {
        address: String,
        mode: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the NBD acceptor thread")]
    Thread(#[source] std::io::Error),
}

/// What every acceptor and handshake thread shares.
pub struct NbdContext {
    pub published: Arc<Published>,
    pub reactors: Vec<Arc<ReactorHandle>>,
    pub provisioner: Provisioner,
    pub shutdown: Arc<AtomicBool>,
    /// The TLS set-up; when present, every connection must start TLS before anything else.
    pub tls: Option<TlsServer>,
    handshakes: HandshakeSlots,
    /// How long a whole handshake may take (`--nbd-handshake-timeout-secs`).
    handshake_limit: Duration,
    /// Sessions each reactor serves or has been promised.
    reactor_load: Arc<ReactorLoad>,
}

impl NbdContext {
    pub fn new(
        published: Arc<Published>,
        reactors: Vec<Arc<ReactorHandle>>,
        provisioner: Provisioner,
        shutdown: Arc<AtomicBool>,
        tls: Option<TlsServer>,
        handshake_limit: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            published,
            provisioner,
            shutdown,
            tls,
            handshakes: HandshakeSlots::default(),
            handshake_limit,
            reactor_load: ReactorLoad::new(reactors.len()),
            reactors,
        })
    }

    /// Sessions each reactor serves: the other front ends count against the same places.
    pub fn reactor_load(&self) -> Arc<ReactorLoad> {
        self.reactor_load.clone()
    }
}

/// The exports one host sees in one snapshot: the volumes it has a virtual path to, each as
/// its VP allows (read-only, and only the operations its domain allows advertised).
struct HostCatalog {
    snapshot: Arc<Snapshot>,
    host: Option<Host>,
    reactor_load: Arc<ReactorLoad>,
    /// The session granted at NBD_OPT_GO, until it is handed to its reactor.
    ticket: RefCell<Option<SessionTicket>>,
}

impl HostCatalog {
    /// The catalogue of whichever host `identity` names, in the snapshot published now; that
    /// one snapshot serves the rest of the negotiation.
    fn resolve(context: &NbdContext, identity: &PeerIdentity, peer: &str) -> Self {
        let snapshot = context.published.load();
        let host = snapshot.host_of(identity).cloned();
        if host.is_none() {
            log::info!("NBD {peer}: no host matches {identity}: it sees no export");
        }
        Self {
            snapshot,
            host,
            reactor_load: context.reactor_load.clone(),
            ticket: RefCell::new(None),
        }
    }

    /// The virtual path behind an export this catalogue showed.
    fn path(&self, export: &str) -> Option<(usize, &PathView)> {
        let host = self.host.as_ref()?;
        self.snapshot.path_to(&host.name, export)
    }

    fn export(&self, view: &PathView) -> ExportInfo {
        let mut info = export_info(&view.vpath.volume);
        let ops = view.allowed_ops;
        info.read_only = view.vpath.mode == AccessMode::ReadOnly || !ops.write;
        info.can_trim = ops.trim && !info.read_only;
        info.can_write_zeroes = ops.write_zeroes && !info.read_only;
        info.can_flush = ops.flush;
        info.can_fua = ops.flush && !info.read_only;
        info
    }
}

pub fn export_info(volume: &Volume) -> ExportInfo {
    let block = volume.block_size_bytes;
    ExportInfo {
        name: volume.name.clone(),
        description: format!("sds volume in pool {}", volume.pool.name),
        size_bytes: volume.size_bytes(),
        min_block_bytes: block,
        preferred_block_bytes: block.max(4096),
        max_payload_bytes: MAX_IO_BYTES as u32,
        read_only: false,
        can_multi_conn: true,
        can_flush: true,
        can_fua: true,
        can_trim: true,
        can_write_zeroes: true,
    }
}

impl ExportCatalog for HostCatalog {
    fn list_exports(&self) -> Vec<ExportInfo> {
        let Some(host) = &self.host else {
            return Vec::new();
        };
        self.snapshot
            .paths_of(&host.name)
            .map(|(_, view)| self.export(view))
            .collect()
    }

    fn find_export(&self, name: &str) -> Option<ExportInfo> {
        let host = self.host.as_ref()?;
        self.snapshot
            .path_to(&host.name, name)
            .map(|(_, view)| self.export(view))
    }

    /// One of the host's sessions and a place on a reactor, or why not.
    fn admit(&self, export: &ExportInfo) -> Result<(), String> {
        let Some(host) = &self.host else {
            return Err("no host".into());
        };
        let (_, view) = self
            .path(&export.name)
            .ok_or_else(|| format!("no export {}", export.name))?;
        // Opened here, before GO is answered: a volume being deleted cannot be opened, and a
        // volume open cannot be deleted (see volume::open_state).
        let open = OpenGuard::open(&view.vpath.volume)
            .map_err(|error| format!("volume {}: {error}", export.name))?;
        let host_session = host.take_session().map_err(|open| {
            format!(
                "host {} already has {open} sessions open, its max_sessions",
                host.name
            )
        })?;
        let place = self.reactor_load.reserve().ok_or_else(|| {
            format!(
                "the server already serves its {} sessions",
                self.reactor_load.capacity()
            )
        })?;
        *self.ticket.borrow_mut() = Some(SessionTicket {
            host: host_session,
            place,
            open,
        });
        Ok(())
    }
}

/// A listening socket of either family.
enum Listening {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

pub fn listen_tcp(
    address: SocketAddr,
    context: Arc<NbdContext>,
) -> Result<JoinHandle<()>, ListenerError> {
    let listener = TcpListener::bind(address).map_err(|source| ListenerError::Bind {
        address: address.to_string(),
        source,
    })?;
    log::info!("NBD listening on {address}");
    spawn_acceptor(Listening::Tcp(listener), context)
}

/// Listens on a Unix socket at `path` with permission bits `mode`. Who may connect is decided
/// by the host records (`unix:UID`), so the default mode lets every user reach the socket;
/// a narrower mode is for sites that want the file system to decide as well.
pub fn listen_unix(
    path: &Path,
    mode: u32,
    context: Arc<NbdContext>,
) -> Result<JoinHandle<()>, ListenerError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| ListenerError::Bind {
        address: path.display().to_string(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        ListenerError::Mode {
            address: path.display().to_string(),
            mode,
            source,
        }
    })?;
    log::info!("NBD listening on {} (mode {mode:04o})", path.display());
    spawn_acceptor(Listening::Unix(listener, path.to_path_buf()), context)
}

fn spawn_acceptor(
    listening: Listening,
    context: Arc<NbdContext>,
) -> Result<JoinHandle<()>, ListenerError> {
    std::thread::Builder::new()
        .name("nbd-accept".into())
        .spawn(move || accept_loop(listening, context))
        .map_err(ListenerError::Thread)
}

fn accept_loop(listening: Listening, context: Arc<NbdContext>) {
    let nonblocking = match &listening {
        Listening::Tcp(l) => l.set_nonblocking(true),
        Listening::Unix(l, _) => l.set_nonblocking(true),
    };
    if let Err(error) = nonblocking {
        log::error!("NBD acceptor: {error}");
        return;
    }
    while !context.shutdown.load(Ordering::Acquire) {
        let accepted = match &listening {
            Listening::Tcp(l) => l.accept().map(|(stream, peer)| {
                let _ = stream.set_nodelay(true);
                let identity = PeerIdentity {
                    address: Some(peer.ip()),
                    ..PeerIdentity::default()
                };
                (Socket::Tcp(stream), peer.to_string(), identity)
            }),
            Listening::Unix(l, path) => l.accept().map(|(stream, _)| {
                let uid = peer_uid(&stream);
                let identity = PeerIdentity {
                    unix_uid: uid,
                    ..PeerIdentity::default()
                };
                let name = match uid {
                    Some(uid) => format!("unix:{uid}@{}", path.display()),
                    None => format!("unix:{}", path.display()),
                };
                (Socket::Unix(stream), name, identity)
            }),
        };
        match accepted {
            Ok((socket, peer, identity)) => start_handshake(socket, peer, identity, &context),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(error) => {
                log::warn!("NBD accept failed: {error}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    if let Listening::Unix(_, path) = &listening {
        let _ = std::fs::remove_file(path);
    }
}

impl TlsSocket for Stream {
    fn set_nonblocking(&self, nonblocking: bool) -> std::io::Result<()> {
        match self.socket() {
            Socket::Tcp(s) => s.set_nonblocking(nonblocking),
            Socket::Unix(s) => s.set_nonblocking(nonblocking),
        }
    }
    /// The handshake is over: its deadline no longer applies.
    fn clear_timeouts(&self) -> std::io::Result<()> {
        self.clear_deadline();
        match self.socket() {
            Socket::Tcp(s) => TlsSocket::clear_timeouts(s),
            Socket::Unix(s) => TlsSocket::clear_timeouts(s),
        }
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        match self.socket() {
            Socket::Tcp(s) => TlsSocket::shutdown_write(s),
            Socket::Unix(s) => TlsSocket::shutdown_write(s),
        }
    }
}

/// The user id of a Unix-socket peer (SO_PEERCRED), as the kernel saw it at connect time.
fn peer_uid(stream: &std::os::unix::net::UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: ucred is plain old data; all-zero is a valid value.
    let mut credentials: libc::ucred = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt on a descriptor we own, writing at most `length` bytes into
    // `credentials`, which lives for the whole call.
    let done = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut length,
        )
    };
    (done == 0).then_some(credentials.uid)
}

fn start_handshake(
    socket: Socket,
    peer: String,
    identity: PeerIdentity,
    context: &Arc<NbdContext>,
) {
    let source = match (identity.address, identity.unix_uid) {
        (Some(address), _) => Source::Address(address),
        (None, Some(uid)) => Source::UnixUid(uid),
        (None, None) => Source::Unknown,
    };
    // Whether a host record names this peer by what the transport proves before any
    // negotiation (its address or user id).
    let known = context.published.load().host_of(&identity).is_some();
    let slot = match context.handshakes.admit(source, known) {
        Ok(slot) => slot,
        Err(refusal) => {
            log::warn!("NBD {peer}: refused: {refusal}");
            return;
        }
    };
    let context = context.clone();
    let stream = Stream::new(socket);
    let spawned = std::thread::Builder::new()
        .name("nbd-handshake".into())
        .spawn(move || {
            handshake(stream, &peer, &identity, &context);
            drop(slot);
        });
    if let Err(error) = spawned {
        log::error!("NBD: cannot start a handshake thread: {error}");
    }
}

fn handshake(mut stream: Stream, peer: &str, identity: &PeerIdentity, context: &NbdContext) {
    if let Err(error) = stream.prepare(context.handshake_limit) {
        log::warn!("NBD {peer}: {error}");
        return;
    }
    let policy = match context.tls {
        Some(_) => TlsPolicy::Required,
        None => TlsPolicy::Off,
    };
    let mut negotiation = match Negotiation::start(&mut stream, policy) {
        Ok(negotiation) => negotiation,
        Err(error) => return handshake_failed(peer, &error),
    };
    let Some(tls) = &context.tls else {
        let catalog = HostCatalog::resolve(context, identity, peer);
        let negotiated = match negotiation.choose_export(&mut stream, &catalog) {
            Ok(Some(negotiated)) => negotiated,
            Ok(None) => return,
            Err(error) => return handshake_failed(peer, &error),
        };
        let Some((index, view)) = catalog.path(&negotiated.export.name) else {
            return;
        };
        let Some(ticket) = catalog.ticket.take() else {
            return;
        };
        match stream.into_fd() {
            Ok(fd) => attach(context, fd, index, view, peer, ticket),
            Err(error) => log::warn!("NBD {peer}: {error}"),
        }
        return;
    };
    // TLS is required: nothing but NBD_OPT_STARTTLS (or leaving) in the clear.
    let slot = tls.reserve();
    if slot.is_none() {
        log::warn!(
            "NBD {peer}: {} TLS connections already open; refusing NBD_OPT_STARTTLS",
            tls.active()
        );
    }
    match negotiation.until_starttls(&mut stream, slot.is_some()) {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => return handshake_failed(peer, &error),
    }
    let Some(slot) = slot else {
        return;
    };
    let mut stream = match tls.accept(stream) {
        Ok(stream) => stream,
        Err(error) => {
            log::info!(
                "NBD {peer}: refused: {}",
                crate::logger::error_chain(&error)
            );
            return;
        }
    };
    let identity = PeerIdentity {
        tls_subject: stream.subject.clone(),
        ..identity.clone()
    };
    match &stream.subject {
        Some(subject) => log::info!(
            "NBD {peer}: {}, client certificate {subject}",
            stream.describe()
        ),
        None => log::info!(
            "NBD {peer}: {}, no client certificate asked for",
            stream.describe()
        ),
    }
    let catalog = HostCatalog::resolve(context, &identity, peer);
    let negotiated = match negotiation.choose_export(&mut stream, &catalog) {
        Ok(Some(negotiated)) => negotiated,
        Ok(None) => return,
        Err(error) => return handshake_failed(peer, &error),
    };
    let Some((index, view)) = catalog.path(&negotiated.export.name) else {
        return;
    };
    let Some(ticket) = catalog.ticket.take() else {
        return;
    };
    match tls::spawn_relay(stream, slot, peer.to_string()) {
        Ok(fd) => attach(context, fd, index, view, peer, ticket),
        Err(error) => log::warn!("NBD {peer}: cannot start the TLS relay: {error}"),
    }
}

fn handshake_failed(peer: &str, error: &HandshakeError) {
    log::info!(
        "NBD {peer}: handshake failed: {}",
        crate::logger::error_chain(error)
    );
}

/// Hands a negotiated connection to the reactor its ticket has a place on.
fn attach(
    context: &NbdContext,
    fd: OwnedFd,
    index: usize,
    view: &PathView,
    peer: &str,
    ticket: SessionTicket,
) {
    log::info!(
        "NBD {peer}: host {} serving volume {} through virtual path {}",
        view.vpath.host,
        view.vpath.volume.name,
        view.vpath.id
    );
    let reactor = ticket.place.reactor();
    let session = NbdSession::new(
        fd,
        ticket,
        view.vpath.clone(),
        index,
        context.published.clone(),
        context.provisioner.clone(),
        MAX_IO_BYTES,
        peer.to_string(),
    );
    let Some(reactor) = context.reactors.get(reactor) else {
        return;
    };
    reactor.post(Message::Attach(Box::new(session)));
}
