//! Accepting NBD clients: one acceptor thread per listening socket (TCP or Unix). Each new
//! connection negotiates on a short-lived handshake thread (blocking, bounded in number and
//! time, off the data path); once the client picks an export, the connection is handed to a
//! reactor, round robin, as an [`NbdSession`].

use super::connection::NbdSession;
use super::handshake::{negotiate, ExportCatalog, ExportInfo};
use crate::constants::{HANDSHAKE_TIMEOUT_SECS, MAX_HANDSHAKES, MAX_IO_BYTES};
use crate::domain::host::PeerIdentity;
use crate::domain::snapshot::{PathView, Published, Snapshot};
use crate::domain::vpath::AccessMode;
use crate::reactor::mailbox::Message;
use crate::reactor::ReactorHandle;
use crate::volume::provisioner::Provisioner;
use crate::volume::Volume;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    #[error("cannot start the NBD acceptor thread")]
    Thread(#[source] std::io::Error),
}

/// What every acceptor and handshake thread shares.
pub struct NbdContext {
    pub published: Arc<Published>,
    pub reactors: Vec<Arc<ReactorHandle>>,
    pub provisioner: Provisioner,
    pub shutdown: Arc<AtomicBool>,
    handshakes: AtomicUsize,
    next_reactor: AtomicUsize,
}

impl NbdContext {
    pub fn new(
        published: Arc<Published>,
        reactors: Vec<Arc<ReactorHandle>>,
        provisioner: Provisioner,
        shutdown: Arc<AtomicBool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            published,
            reactors,
            provisioner,
            shutdown,
            handshakes: AtomicUsize::new(0),
            next_reactor: AtomicUsize::new(0),
        })
    }
}

/// The exports one host sees in one snapshot: the volumes it has a virtual path to, each as
/// its VP allows (read-only, and only the operations its domain allows advertised).
struct HostCatalog {
    snapshot: Arc<Snapshot>,
    host: Option<String>,
}

impl HostCatalog {
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
            .paths_of(host)
            .map(|(_, view)| self.export(view))
            .collect()
    }

    fn find_export(&self, name: &str) -> Option<ExportInfo> {
        let host = self.host.as_ref()?;
        self.snapshot
            .path_to(host, name)
            .map(|(_, view)| self.export(view))
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

pub fn listen_unix(path: &Path, context: Arc<NbdContext>) -> Result<JoinHandle<()>, ListenerError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| ListenerError::Bind {
        address: path.display().to_string(),
        source,
    })?;
    log::info!("NBD listening on {}", path.display());
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
                (Stream::Tcp(stream), peer.to_string(), identity)
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
                (Stream::Unix(stream), name, identity)
            }),
        };
        match accepted {
            Ok((stream, peer, identity)) => start_handshake(stream, peer, identity, &context),
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

enum Stream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Stream {
    fn prepare(&self) -> std::io::Result<()> {
        let timeout = Some(Duration::from_secs(HANDSHAKE_TIMEOUT_SECS));
        match self {
            Stream::Tcp(s) => s
                .set_nonblocking(false)
                .and_then(|()| s.set_read_timeout(timeout))
                .and_then(|()| s.set_write_timeout(timeout)),
            Stream::Unix(s) => s
                .set_nonblocking(false)
                .and_then(|()| s.set_read_timeout(timeout))
                .and_then(|()| s.set_write_timeout(timeout)),
        }
    }

    /// Back to no timeouts: the reactor drives the socket through io_uring from now on.
    fn into_fd(self) -> std::io::Result<OwnedFd> {
        match self {
            Stream::Tcp(s) => s
                .set_read_timeout(None)
                .and_then(|()| s.set_write_timeout(None))
                .map(|()| OwnedFd::from(s)),
            Stream::Unix(s) => s
                .set_read_timeout(None)
                .and_then(|()| s.set_write_timeout(None))
                .map(|()| OwnedFd::from(s)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
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
    stream: Stream,
    peer: String,
    identity: PeerIdentity,
    context: &Arc<NbdContext>,
) {
    if context.handshakes.fetch_add(1, Ordering::AcqRel) >= MAX_HANDSHAKES {
        context.handshakes.fetch_sub(1, Ordering::AcqRel);
        log::warn!("NBD {peer}: refused, {MAX_HANDSHAKES} handshakes already in progress");
        return;
    }
    let context = context.clone();
    let spawned = std::thread::Builder::new()
        .name("nbd-handshake".into())
        .spawn(move || {
            handshake(stream, &peer, &identity, &context);
            context.handshakes.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(error) = spawned {
        log::error!("NBD: cannot start a handshake thread: {error}");
    }
}

fn handshake(mut stream: Stream, peer: &str, identity: &PeerIdentity, context: &NbdContext) {
    if let Err(error) = stream.prepare() {
        log::warn!("NBD {peer}: {error}");
        return;
    }
    let snapshot = context.published.load();
    let host = snapshot.host_of(identity).map(|h| h.name.clone());
    if host.is_none() {
        log::info!("NBD {peer}: no host matches {identity}: it sees no export");
    }
    let catalog = HostCatalog {
        snapshot: snapshot.clone(),
        host: host.clone(),
    };
    let negotiated = match negotiate(&mut stream, &catalog) {
        Ok(Some(negotiated)) => negotiated,
        Ok(None) => return,
        Err(error) => {
            log::info!("NBD {peer}: handshake failed: {error}");
            return;
        }
    };
    let Some((index, view)) = host
        .as_deref()
        .and_then(|host| snapshot.path_to(host, &negotiated.export.name))
    else {
        return;
    };
    let fd = match stream.into_fd() {
        Ok(fd) => fd,
        Err(error) => {
            log::warn!("NBD {peer}: {error}");
            return;
        }
    };
    log::info!(
        "NBD {peer}: host {} serving volume {} through virtual path {}",
        view.vpath.host,
        view.vpath.volume.name,
        view.vpath.id
    );
    let session = NbdSession::new(
        fd,
        view.vpath.clone(),
        index,
        context.published.clone(),
        context.provisioner.clone(),
        MAX_IO_BYTES,
        peer.to_string(),
    );
    let reactor = &context.reactors
        [context.next_reactor.fetch_add(1, Ordering::Relaxed) % context.reactors.len()];
    reactor.post(Message::Attach(Box::new(session)));
}
