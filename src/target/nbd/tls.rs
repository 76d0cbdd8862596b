//! NBD over TLS: the server's certificate, key and client CA (`sds serve --tls-cert --tls-key
//! --tls-client-ca`), the TLS handshake after NBD_OPT_STARTTLS, the client certificate's
//! subject as the name a host is known by, and the relay that carries a TLS connection's
//! transmission phase to a reactor.
//!
//! ```text
//!  client ══TLS over TCP══▶ relay thread (rustls) ──plaintext, Unix socket pair──▶ reactor
//! ```
//!
//! **Why a relay.** Reactors drive their sessions' sockets with io_uring recv/send and know
//! nothing of TLS. Kernel TLS (user space does the handshake, the kernel then encrypts and
//! decrypts the socket's records) would let a reactor keep the TCP socket, but this kernel has
//! none (CONFIG_TLS is not set). So once a TLS client picks an export, [`spawn_relay`] makes a
//! Unix socket pair, gives one end to a relay thread that owns the rustls connection and the
//! client's socket and pumps bytes between them (poll(), nonblocking, bounded buffers, each
//! side's close passed on to the other), and hands the other end to a reactor as the session
//! socket: the reactor runs the same code as for a plain connection. A TLS connection costs a
//! thread and one more copy each way; [`MAX_TLS_CONNECTIONS`] bounds them (a client past it is
//! refused NBD_OPT_STARTTLS with NBD_REP_ERR_POLICY). Plain connections have no relay.
//! TLS inside the reactor (rustls driven from the ring's completions, or kTLS on kernels that
//! have it) is future work.
//!
//! **Who the client is.** With `--tls-client-ca` a client must present a certificate that CA
//! signed, or the TLS handshake fails; the certificate's subject then names the host, and only
//! it (not the address). The subject is written as OpenSSL prints it with
//! `openssl x509 -noout -subject -nameopt RFC2253` (less the `subject=` prefix): RFC 4514
//! order (the last RDN first), `,` between RDNs and `+` inside one, OpenSSL's short names
//! (`CN`, `O`, `OU`, `C`, `L`, `ST`, `DC`, `UID`, `emailAddress`, …; an unknown type as its
//! dotted OID with its value as `#` and the hex of its DER), `\` before `,+"\<>;`, before a
//! leading space or `#` and a trailing space, and `\XX` for control bytes and every byte of a
//! non-ASCII character in UTF-8 — e.g. `CN=client1,O=sds test`. [`subject_of_certificate`]
//! walks the certificate's DER itself (a few dozen lines, tested against OpenSSL's output)
//! rather than pull in a general X.509 parser.

use crate::constants::{
    MAX_TLS_CONNECTIONS, MAX_TLS_PEM_BYTES, TLS_RELAY_BUFFER_BYTES, TLS_RELAY_LINGER_SECS,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The files `sds serve` is given for TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) client certificates must chain to; without it clients present
    /// none, and hosts are told apart by address as without TLS.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TLS {what} {path} is larger than {MAX_TLS_PEM_BYTES} bytes")]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("the TLS {what} {path} is not valid PEM")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the TLS {what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("the TLS client CA {path} holds a certificate that cannot be a trust anchor")]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot verify client certificates against the TLS client CA {path}")]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("the TLS certificate {cert} and key {key} do not make a TLS server")]
    Server {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Why a client's TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsAcceptError {
    #[error("cannot start a TLS connection")]
    Start(#[source] rustls::Error),
    #[error("TLS handshake failed")]
    Handshake(#[source] std::io::Error),
    #[error("TLS handshake stalled: the client sent nothing more")]
    Stalled,
    #[error("the verified client certificate's subject cannot be read")]
    Subject(#[source] SubjectError),
}

/// Why a certificate's subject could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubjectError {
    #[error("malformed DER: {0}")]
    Malformed(&'static str),
    #[error("no client certificate")]
    NoCertificate,
}

/// The server's TLS set-up, shared by every handshake thread.
pub struct TlsServer {
    config: Arc<ServerConfig>,
    /// Whether clients must present a certificate (and so have a subject).
    pub client_certificates: bool,
    /// TLS connections open now (handshaking or relayed); at most [`MAX_TLS_CONNECTIONS`].
    active: Arc<AtomicUsize>,
}

/// One of the [`MAX_TLS_CONNECTIONS`] places for a TLS connection, given back when dropped
/// (when the handshake fails or the relay ends).
pub struct TlsSlot(Arc<AtomicUsize>);

impl Drop for TlsSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn read_pem_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let file = std::fs::File::open(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_TLS_PEM_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() > MAX_TLS_PEM_BYTES {
        return Err(TlsError::TooLarge {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem_file(what, path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "certificate (BEGIN CERTIFICATE)",
        });
    }
    Ok(certificates)
}

impl TlsServer {
    /// Loads and checks the files; every error names the file at fault.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certificates("certificate", &files.cert)?;
        let key_bytes = read_pem_file("key", &files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|source| match source {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
                what: "key",
                path: files.key.clone(),
                expected: "private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            },
            source => TlsError::Pem {
                what: "key",
                path: files.key.clone(),
                source,
            },
        })?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Server {
                cert: files.cert.clone(),
                key: files.key.clone(),
                source,
            })?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for certificate in read_certificates("client CA", path)? {
                    roots
                        .add(certificate)
                        .map_err(|source| TlsError::ClientCa {
                            path: path.clone(),
                            source,
                        })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|source| TlsError::Verifier {
                            path: path.clone(),
                            source,
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder
                .with_single_cert(chain, key)
                .map_err(|source| TlsError::Server {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                    source,
                })?;
        // NBD connections live long and are few: a full handshake each time costs nothing
        // worth saving, and without resumption every connection's identity comes from a
        // certificate checked on that connection.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        Ok(Self {
            config: Arc::new(config),
            client_certificates: files.client_ca.is_some(),
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A place for one more TLS connection, if fewer than [`MAX_TLS_CONNECTIONS`] are open.
    pub fn reserve(&self) -> Option<TlsSlot> {
        if self.active.fetch_add(1, Ordering::AcqRel) >= MAX_TLS_CONNECTIONS {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(TlsSlot(self.active.clone()))
    }

    /// TLS connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Runs the server's side of the TLS handshake on `socket` (blocking, within the socket's
    /// timeouts); with client certificates required, the client's has been verified when this
    /// returns, and its subject is in [`TlsStream::subject`].
    pub fn accept<S: Read + Write>(&self, mut socket: S) -> Result<TlsStream<S>, TlsAcceptError> {
        let mut connection =
            ServerConnection::new(self.config.clone()).map_err(TlsAcceptError::Start)?;
        connection.set_buffer_limit(Some(TLS_RELAY_BUFFER_BYTES));
        while connection.is_handshaking() {
            let (read, written) = connection
                .complete_io(&mut socket)
                .map_err(TlsAcceptError::Handshake)?;
            if read == 0 && written == 0 && connection.is_handshaking() {
                return Err(TlsAcceptError::Stalled);
            }
        }
        let subject = if self.client_certificates {
            let leaf = connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .ok_or(TlsAcceptError::Subject(SubjectError::NoCertificate))?;
            Some(subject_of_certificate(leaf).map_err(TlsAcceptError::Subject)?)
        } else {
            None
        };
        Ok(TlsStream {
            inner: StreamOwned::new(connection, socket),
            subject,
        })
    }
}

/// A socket after a successful TLS handshake: plaintext in and out.
pub struct TlsStream<S: Read + Write> {
    inner: StreamOwned<ServerConnection, S>,
    /// The verified client certificate's subject (see the module doc for its format); `None`
    /// when the server asks for no client certificates.
    pub subject: Option<String>,
}

impl<S: Read + Write> TlsStream<S> {
    /// The negotiated protocol version and cipher suite, for the log.
    pub fn describe(&self) -> String {
        let connection = &self.inner.conn;
        match (
            connection.protocol_version(),
            connection.negotiated_cipher_suite(),
        ) {
            (Some(version), Some(suite)) => format!("{version:?} {:?}", suite.suite()),
            _ => "TLS".to_string(),
        }
    }
}

impl<S: Read + Write> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<S: Read + Write> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A connected socket a TLS connection can run over: TCP, or a Unix stream.
pub trait TlsSocket: Read + Write + AsFd + Send + 'static {
    fn set_nonblocking(&self, nonblocking: bool) -> std::io::Result<()>;
    /// Clears the handshake's read and write timeouts.
    fn clear_timeouts(&self) -> std::io::Result<()>;
    fn shutdown_write(&self) -> std::io::Result<()>;
}

impl TlsSocket for std::net::TcpStream {
    fn set_nonblocking(&self, nonblocking: bool) -> std::io::Result<()> {
        std::net::TcpStream::set_nonblocking(self, nonblocking)
    }
    fn clear_timeouts(&self) -> std::io::Result<()> {
        self.set_read_timeout(None)?;
        self.set_write_timeout(None)
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl TlsSocket for UnixStream {
    fn set_nonblocking(&self, nonblocking: bool) -> std::io::Result<()> {
        UnixStream::set_nonblocking(self, nonblocking)
    }
    fn clear_timeouts(&self) -> std::io::Result<()> {
        self.set_read_timeout(None)?;
        self.set_write_timeout(None)
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Why a relay ended other than by a clean close.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("TLS error from the client")]
    Tls(#[source] rustls::Error),
    #[error("client socket")]
    Client(#[source] std::io::Error),
    #[error("session socket")]
    Session(#[source] std::io::Error),
    #[error("poll")]
    Poll(#[source] std::io::Error),
    #[error("the client read nothing for {TLS_RELAY_LINGER_SECS} s after the session closed")]
    Linger,
}

/// Starts the relay thread for a negotiated TLS connection; returns the socket the reactor
/// serves the session on. The relay holds `slot` until it ends.
pub fn spawn_relay<S: TlsSocket>(
    stream: TlsStream<S>,
    slot: TlsSlot,
    peer: String,
) -> std::io::Result<OwnedFd> {
    let (connection, socket) = stream.inner.into_parts();
    socket.clear_timeouts()?;
    socket.set_nonblocking(true)?;
    let (session_end, relay_end) = UnixStream::pair()?;
    relay_end.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("nbd-tls-relay".into())
        .spawn(move || {
            let _slot = slot;
            match relay(connection, socket, relay_end) {
                Ok(()) => log::debug!("NBD {peer}: TLS relay closed"),
                Err(error) => log::info!(
                    "NBD {peer}: TLS relay ended: {}",
                    crate::logger::error_chain(&error)
                ),
            }
        })?;
    Ok(OwnedFd::from(session_end))
}

/// A bounded byte queue: filled at `end`, drained from `start`.
struct Buffer {
    bytes: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buffer {
    fn new(capacity: usize) -> Self {
        Self {
            bytes: vec![0u8; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
    fn has_room(&self) -> bool {
        self.end - self.start < self.bytes.len()
    }
    fn filled(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }
    fn consume(&mut self, count: usize) {
        self.start += count;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    /// The free space at the end, after moving what is queued to the front if it has to.
    fn room(&mut self) -> &mut [u8] {
        if self.end == self.bytes.len() && self.start > 0 {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.bytes[self.end..]
    }
    fn commit(&mut self, count: usize) {
        self.end += count;
    }
}

fn would_block(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

/// Decrypts what rustls has read; on a TLS error, tells the client why (the alert rustls
/// queued) before giving up.
fn process_packets<S: TlsSocket>(
    connection: &mut ServerConnection,
    client: &mut S,
) -> Result<(), RelayError> {
    if let Err(error) = connection.process_new_packets() {
        let _ = connection.write_tls(client);
        return Err(RelayError::Tls(error));
    }
    Ok(())
}

/// Pumps bytes between the client's TLS connection and the session socket until both are
/// done: the client's end of stream (close_notify or a bare TCP close) is passed to the
/// session as a half-close once everything before it is delivered; the session's end of
/// stream (the reactor closed it) sends close_notify to the client after its last replies.
fn relay<S: TlsSocket>(
    mut connection: ServerConnection,
    mut client: S,
    mut session: UnixStream,
) -> Result<(), RelayError> {
    let mut to_session = Buffer::new(TLS_RELAY_BUFFER_BYTES);
    let mut to_client = Buffer::new(TLS_RELAY_BUFFER_BYTES);
    // The client's socket gave end of stream.
    let mut client_eof = false;
    // No more plaintext will come from the client.
    let mut client_done = false;
    // The session's write side is shut: the reactor has seen end of stream.
    let mut session_shut = false;
    // The reactor closed the session: no more replies.
    let mut session_done = false;
    let mut linger_until: Option<Instant> = None;
    // Records the handshake thread read past the client's choice of export.
    process_packets(&mut connection, &mut client)?;
    loop {
        let mut progress = false;

        // Client → session. rustls reads from the socket only when its own plaintext buffer
        // is empty, and that is drained only into `to_session`: back-pressure all the way.
        // rustls holds at most one record's worth of unprocessed bytes, so every read is
        // followed by processing (which decrypts every whole record it holds).
        if !client_eof && connection.wants_read() {
            match connection.read_tls(&mut client) {
                Ok(0) => client_eof = true,
                Ok(_) => progress = true,
                Err(error) if would_block(&error) => {}
                Err(error) => return Err(RelayError::Client(error)),
            }
            process_packets(&mut connection, &mut client)?;
        }
        while !client_done && to_session.has_room() {
            match connection.reader().read(to_session.room()) {
                Ok(0) => client_done = true,
                Ok(count) => {
                    to_session.commit(count);
                    progress = true;
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    if client_eof {
                        // Closed without close_notify: rustls has nothing more to give.
                        client_done = true;
                    }
                    break;
                }
                // A bare TCP close with everything delivered: what most NBD clients do.
                Err(error) if error.kind() == ErrorKind::UnexpectedEof => client_done = true,
                Err(error) => return Err(RelayError::Client(error)),
            }
        }
        if !to_session.is_empty() {
            match session.write(to_session.filled()) {
                Ok(count) => {
                    to_session.consume(count);
                    progress = true;
                }
                Err(error) if would_block(&error) => {}
                // The reactor closed the session; nothing will read what is left.
                Err(_) => return Ok(()),
            }
        }
        if client_done && to_session.is_empty() && !session_shut {
            let _ = session.shutdown(std::net::Shutdown::Write);
            session_shut = true;
            progress = true;
        }

        // Session → client.
        if !session_done && to_client.has_room() {
            match session.read(to_client.room()) {
                Ok(0) => {
                    session_done = true;
                    progress = true;
                }
                Ok(count) => {
                    to_client.commit(count);
                    progress = true;
                }
                Err(error) if would_block(&error) => {}
                Err(error) => return Err(RelayError::Session(error)),
            }
        }
        if !to_client.is_empty() {
            // Accepts nothing while rustls holds TLS_RELAY_BUFFER_BYTES of unsent records.
            match connection.writer().write(to_client.filled()) {
                Ok(count) => {
                    to_client.consume(count);
                    progress |= count > 0;
                }
                Err(error) => return Err(RelayError::Client(error)),
            }
        }
        if session_done && to_client.is_empty() && linger_until.is_none() {
            connection.send_close_notify();
            linger_until = Some(Instant::now() + Duration::from_secs(TLS_RELAY_LINGER_SECS));
        }
        while connection.wants_write() {
            match connection.write_tls(&mut client) {
                Ok(_) => progress = true,
                Err(error) if would_block(&error) => break,
                Err(error) => return Err(RelayError::Client(error)),
            }
        }
        if let Some(deadline) = linger_until {
            if !connection.wants_write() {
                let _ = client.shutdown_write();
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RelayError::Linger);
            }
        }
        if progress {
            continue;
        }

        // Nothing moved: sleep until one of the sockets can take or give what is waiting.
        let client_events = (if !client_eof && connection.wants_read() {
            libc::POLLIN
        } else {
            0
        }) | (if connection.wants_write() {
            libc::POLLOUT
        } else {
            0
        });
        let session_events = (if !session_done && to_client.has_room() {
            libc::POLLIN
        } else {
            0
        }) | (if !to_session.is_empty() {
            libc::POLLOUT
        } else {
            0
        });
        // A socket with nothing asked of it is left out (fd -1), so that its hang-up, which
        // poll() reports whatever is asked, cannot spin this loop.
        let mut fds = [
            libc::pollfd {
                fd: if client_events != 0 {
                    client.as_fd().as_raw_fd()
                } else {
                    -1
                },
                events: client_events,
                revents: 0,
            },
            libc::pollfd {
                fd: if session_events != 0 {
                    session.as_raw_fd()
                } else {
                    -1
                },
                events: session_events,
                revents: 0,
            },
        ];
        let timeout_ms = match linger_until {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
            // Nothing to wait for should not happen; look again in a while rather than hang.
            None if client_events == 0 && session_events == 0 => 1000,
            None => -1,
        };
        // SAFETY: `fds` is a live array of two initialised pollfd structs for the whole call,
        // and its length is passed with it; both descriptors (or -1) are owned by this thread.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != ErrorKind::Interrupted {
                return Err(RelayError::Poll(error));
            }
        }
    }
}

/// A DER reader over one level of nesting.
struct Der<'a> {
    bytes: &'a [u8],
}

/// One DER element: its tag, its contents and its whole encoding.
struct Element<'a> {
    tag: u8,
    content: &'a [u8],
    encoding: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn next(&mut self) -> Result<Element<'a>, SubjectError> {
        let all = self.bytes;
        let (&tag, rest) = all
            .split_first()
            .ok_or(SubjectError::Malformed("truncated"))?;
        if tag & 0x1f == 0x1f {
            return Err(SubjectError::Malformed("multi-byte tag"));
        }
        let (&first, rest) = rest
            .split_first()
            .ok_or(SubjectError::Malformed("truncated length"))?;
        let (length, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return Err(SubjectError::Malformed("unsupported length"));
            }
            let digits = rest
                .get(..count)
                .ok_or(SubjectError::Malformed("truncated length"))?;
            let length = digits
                .iter()
                .fold(0usize, |length, &digit| (length << 8) | usize::from(digit));
            (length, &rest[count..])
        };
        let content = rest
            .get(..length)
            .ok_or(SubjectError::Malformed("length past the end"))?;
        let header = all.len() - rest.len();
        self.bytes = &rest[length..];
        Ok(Element {
            tag,
            content,
            encoding: &all[..header + length],
        })
    }

    fn take(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], SubjectError> {
        let element = self.next()?;
        if element.tag != tag {
            return Err(SubjectError::Malformed(what));
        }
        Ok(element.content)
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OBJECT_IDENTIFIER: u8 = 0x06;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;

/// The subject of an X.509 certificate (DER), in the form the module doc describes.
pub fn subject_of_certificate(der: &[u8]) -> Result<String, SubjectError> {
    let certificate = Der::new(der).take(SEQUENCE, "certificate is not a SEQUENCE")?;
    let tbs = Der::new(certificate).take(SEQUENCE, "tbsCertificate is not a SEQUENCE")?;
    let mut fields = Der::new(tbs);
    let mut field = fields.next()?;
    if field.tag == VERSION {
        field = fields.next()?;
    }
    if field.tag != INTEGER {
        return Err(SubjectError::Malformed("no serial number"));
    }
    fields.take(SEQUENCE, "no signature algorithm")?;
    fields.take(SEQUENCE, "no issuer")?;
    fields.take(SEQUENCE, "no validity")?;
    let subject = fields.take(SEQUENCE, "no subject")?;
    format_name(subject)
}

/// OpenSSL's short names for the attribute types it knows (`openssl x509 -nameopt RFC2253`
/// prints these; any other type is printed as its dotted OID).
const ATTRIBUTE_NAMES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.4", "SN"),
    ("2.5.4.5", "serialNumber"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "street"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.12", "title"),
    ("2.5.4.13", "description"),
    ("2.5.4.14", "searchGuide"),
    ("2.5.4.15", "businessCategory"),
    ("2.5.4.16", "postalAddress"),
    ("2.5.4.17", "postalCode"),
    ("2.5.4.18", "postOfficeBox"),
    ("2.5.4.19", "physicalDeliveryOfficeName"),
    ("2.5.4.20", "telephoneNumber"),
    ("2.5.4.21", "telexNumber"),
    ("2.5.4.22", "teletexTerminalIdentifier"),
    ("2.5.4.23", "facsimileTelephoneNumber"),
    ("2.5.4.24", "x121Address"),
    ("2.5.4.25", "internationaliSDNNumber"),
    ("2.5.4.26", "registeredAddress"),
    ("2.5.4.27", "destinationIndicator"),
    ("2.5.4.28", "preferredDeliveryMethod"),
    ("2.5.4.29", "presentationAddress"),
    ("2.5.4.30", "supportedApplicationContext"),
    ("2.5.4.31", "member"),
    ("2.5.4.32", "owner"),
    ("2.5.4.33", "roleOccupant"),
    ("2.5.4.34", "seeAlso"),
    ("2.5.4.35", "userPassword"),
    ("2.5.4.36", "userCertificate"),
    ("2.5.4.37", "cACertificate"),
    ("2.5.4.38", "authorityRevocationList"),
    ("2.5.4.39", "certificateRevocationList"),
    ("2.5.4.40", "crossCertificatePair"),
    ("2.5.4.41", "name"),
    ("2.5.4.42", "GN"),
    ("2.5.4.43", "initials"),
    ("2.5.4.44", "generationQualifier"),
    ("2.5.4.45", "x500UniqueIdentifier"),
    ("2.5.4.46", "dnQualifier"),
    ("2.5.4.47", "enhancedSearchGuide"),
    ("2.5.4.48", "protocolInformation"),
    ("2.5.4.49", "distinguishedName"),
    ("2.5.4.50", "uniqueMember"),
    ("2.5.4.51", "houseIdentifier"),
    ("2.5.4.52", "supportedAlgorithms"),
    ("2.5.4.53", "deltaRevocationList"),
    ("2.5.4.54", "dmdName"),
    ("2.5.4.65", "pseudonym"),
    ("2.5.4.72", "role"),
    ("2.5.4.97", "organizationIdentifier"),
    ("2.5.4.98", "c3"),
    ("2.5.4.99", "n3"),
    ("2.5.4.100", "dnsName"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("1.2.840.113549.1.9.1", "emailAddress"),
    ("1.2.840.113549.1.9.2", "unstructuredName"),
    ("1.2.840.113549.1.9.8", "unstructuredAddress"),
    ("1.3.6.1.4.1.311.60.2.1.1", "jurisdictionL"),
    ("1.3.6.1.4.1.311.60.2.1.2", "jurisdictionST"),
    ("1.3.6.1.4.1.311.60.2.1.3", "jurisdictionC"),
];

fn dotted_oid(content: &[u8]) -> Result<String, SubjectError> {
    let (&first, rest) = content
        .split_first()
        .ok_or(SubjectError::Malformed("empty OID"))?;
    if first >= 0x80 {
        return Err(SubjectError::Malformed("OID first arcs too large"));
    }
    let (top, second) = match first {
        0..=39 => (0, first),
        40..=79 => (1, first - 40),
        _ => (2, first - 80),
    };
    let mut text = format!("{top}.{second}");
    let mut arc: u64 = 0;
    let mut digits = 0;
    for &byte in rest {
        if digits == 9 {
            return Err(SubjectError::Malformed("OID arc too large"));
        }
        arc = (arc << 7) | u64::from(byte & 0x7f);
        digits += 1;
        if byte & 0x80 == 0 {
            text.push_str(&format!(".{arc}"));
            arc = 0;
            digits = 0;
        }
    }
    if digits != 0 {
        return Err(SubjectError::Malformed("OID ends inside an arc"));
    }
    Ok(text)
}

/// An attribute value as UTF-8, the way OpenSSL converts the string types it knows; `None`
/// for a type it dumps as hex.
fn value_utf8(tag: u8, content: &[u8]) -> Result<Option<String>, SubjectError> {
    let text = match tag {
        // UTF8String.
        0x0c => std::str::from_utf8(content)
            .map_err(|_| SubjectError::Malformed("UTF8String is not UTF-8"))?
            .to_string(),
        // Numeric, Printable, T61, Videotex, IA5, UTCTime, GeneralizedTime, Graphic, Visible
        // and General strings: one byte per character, taken as Latin-1.
        0x12..=0x1b => content.iter().map(|&byte| char::from(byte)).collect(),
        // UniversalString: UCS-4, big-endian.
        0x1c => {
            if content.len() % 4 != 0 {
                return Err(SubjectError::Malformed("UniversalString of odd length"));
            }
            content
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect::<Option<String>>()
                .ok_or(SubjectError::Malformed("UniversalString character"))?
        }
        // BMPString: UCS-2, big-endian.
        0x1e => {
            if content.len() % 2 != 0 {
                return Err(SubjectError::Malformed("BMPString of odd length"));
            }
            content
                .chunks_exact(2)
                .map(|c| char::from_u32(u32::from(u16::from_be_bytes([c[0], c[1]]))))
                .collect::<Option<String>>()
                .ok_or(SubjectError::Malformed("BMPString character"))?
        }
        _ => return Ok(None),
    };
    Ok(Some(text))
}

/// Appends `value` escaped as RFC 2253 with OpenSSL's flags: `\` before the specials, a
/// leading space or `#` and a trailing space; `\XX` for controls and non-ASCII bytes.
fn push_escaped(out: &mut String, value: &str) {
    let bytes = value.as_bytes();
    for (index, &byte) in bytes.iter().enumerate() {
        let first = index == 0;
        let last = index + 1 == bytes.len();
        match byte {
            0x00..=0x1f | 0x7f..=0xff => out.push_str(&format!("\\{byte:02X}")),
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            b' ' if first || last => out.push_str("\\ "),
            b'#' if first => out.push_str("\\#"),
            _ => out.push(char::from(byte)),
        }
    }
}

fn push_hex_dump(out: &mut String, encoding: &[u8]) {
    out.push('#');
    for byte in encoding {
        out.push_str(&format!("{byte:02X}"));
    }
}

/// A DER Name (the contents of its SEQUENCE) in the form the module doc describes.
pub fn format_name(name: &[u8]) -> Result<String, SubjectError> {
    struct Attribute<'a> {
        rdn: usize,
        oid: &'a [u8],
        value: Element<'a>,
    }
    let mut attributes = Vec::new();
    let mut rdns = Der::new(name);
    let mut rdn = 0;
    while !rdns.is_empty() {
        let mut members = Der::new(rdns.take(SET, "RDN is not a SET")?);
        if members.is_empty() {
            return Err(SubjectError::Malformed("empty RDN"));
        }
        while !members.is_empty() {
            let mut pair = Der::new(members.take(SEQUENCE, "attribute is not a SEQUENCE")?);
            let oid = pair.take(OBJECT_IDENTIFIER, "attribute type is not an OID")?;
            let value = pair.next()?;
            if !pair.is_empty() {
                return Err(SubjectError::Malformed("attribute has extra fields"));
            }
            attributes.push(Attribute { rdn, oid, value });
        }
        rdn += 1;
    }
    let mut out = String::new();
    let mut previous_rdn = None;
    // RFC 4514: the last RDN first. OpenSSL also reverses the members of a multi-valued RDN.
    for attribute in attributes.iter().rev() {
        match previous_rdn {
            None => {}
            Some(rdn) if rdn == attribute.rdn => out.push('+'),
            Some(_) => out.push(','),
        }
        previous_rdn = Some(attribute.rdn);
        let oid = dotted_oid(attribute.oid)?;
        let known = ATTRIBUTE_NAMES
            .iter()
            .find(|(dotted, _)| *dotted == oid)
            .map(|(_, name)| *name);
        out.push_str(known.unwrap_or(&oid));
        out.push('=');
        let text = match known {
            Some(_) => value_utf8(attribute.value.tag, attribute.value.content)?,
            None => None,
        };
        match text {
            Some(text) => push_escaped(&mut out, &text),
            None => push_hex_dump(&mut out, attribute.value.encoding),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex"))
            .collect()
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(content);
        out
    }

    /// A self-signed certificate made with
    /// `openssl req -new -x509 -key k.pem -subj "/O=sds test/CN=client1"`.
    const CLIENT1_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBoTCCAUegAwIBAgIUGWDV4wWM3Q5qeOxGFLnTTaapPzowCgYIKoZIzj0EAwIw
JTERMA8GA1UECgwIc2RzIHRlc3QxEDAOBgNVBAMMB2NsaWVudDEwIBcNMjYxMTI2
MDcwNjM2WhgPMjEyNjExMDIwNzA2MzZaMCUxETAPBgNVBAoMCHNkcyB0ZXN0MRAw
DgYDVQQDDAdjbGllbnQxMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAERVeLbo0O
kdKwm5c8cShQAyprZmDPx8QZC9yslJMxRMMxhOmfnQudvlXXSLRHpeQmLHS8iMaW
olTmik24Q+aPD6NTMFEwHQYDVR0OBBYEFHUZormfVVP1Re+UsVTm9gXwPQDjMB8G
A1UdIwQYMBaAFHUZormfVVP1Re+UsVTm9gXwPQDjMA8GA1UdEwEB/wQFMAMBAf8w
CgYIKoZIzj0EAwIDSAAwRQIgQMFqnv3lEzk8dbDCz6cX7xQ2Wwbq/N/DiqxwrCg0
c1gCIQDjLdzYxV7Skjjy/tZnc4LqFi/4jjKUrYH815KUhaqOMA==
-----END CERTIFICATE-----
";

    #[test]
    fn subject_of_a_real_certificate() {
        let der = CertificateDer::from_pem_slice(CLIENT1_PEM.as_bytes()).expect("pem");
        assert_eq!(
            subject_of_certificate(&der).expect("subject"),
            "CN=client1,O=sds test"
        );
    }

    /// A Name built by hand with every case OpenSSL treats specially, and what
    /// `openssl req -noout -subject -nameopt RFC2253` (OpenSSL 3.0) printed for a request
    /// carrying it: PrintableString, T61String as Latin-1, BMPString, UniversalString, a
    /// multi-valued RDN with a trailing space, an unknown OID, a known OID with a BIT STRING
    /// value, a leading `#`, controls and `=`, a lone space.
    #[test]
    fn name_matches_openssl_rfc2253() {
        let name = hex(concat!(
            "310b3009060355040613024652310d300b060355040a1404636166e9310d300b060355040b1e04",
            "03a920ac3111300f06035504071c080001f600000000783120300a06035504030c03612c623012",
            "060a0992268993f22c6401010c0478207920310b300906032a03040c026869310c300a06035504",
            "0303030061623114301206092a864886f70d0109011605236c6561643110300e06035504080c07",
            "74616209717f3d310a300806035504030c0120"
        ));
        assert_eq!(
            format_name(&name).expect("name"),
            concat!(
                r"CN=\ ,ST=tab\09q\7F=,emailAddress=\#lead,CN=#0303006162,1.2.3.4=#0C026869,",
                r"UID=x y\ +CN=a\,b,L=\F0\9F\98\80x,OU=\CE\A9\E2\82\AC,O=caf\C3\A9,C=FR"
            )
        );
    }

    #[test]
    fn specials_are_escaped_as_openssl_does() {
        let mut out = String::new();
        push_escaped(&mut out, "a,b+c\"d\\e<f>g;h=i");
        assert_eq!(out, r#"a\,b\+c\"d\\e\<f\>g\;h=i"#);
        out.clear();
        push_escaped(&mut out, " lead#x trail ");
        assert_eq!(out, r"\ lead#x trail\ ");
        out.clear();
        push_escaped(&mut out, "café €");
        assert_eq!(out, r"caf\C3\A9 \E2\82\AC");
    }

    /// A version 1 certificate has no `[0]` version field; the subject is found all the same.
    #[test]
    fn subject_of_a_version_one_certificate() {
        let subject = tlv(
            SEQUENCE,
            &tlv(
                SET,
                &tlv(SEQUENCE, &[hex("0603550403"), tlv(0x0c, b"h1")].concat()),
            ),
        );
        let algorithm = tlv(SEQUENCE, &hex("06082a8648ce3d040302"));
        let body = |version: &[u8]| {
            tlv(
                SEQUENCE,
                &[
                    version.to_vec(),
                    tlv(INTEGER, &[1]),
                    algorithm.clone(),
                    tlv(SEQUENCE, &[]),
                    tlv(SEQUENCE, &[]),
                    subject.clone(),
                    tlv(SEQUENCE, &[]),
                ]
                .concat(),
            )
        };
        for version in [Vec::new(), tlv(VERSION, &tlv(INTEGER, &[2]))] {
            let certificate = tlv(
                SEQUENCE,
                &[body(&version), algorithm.clone(), tlv(0x03, &[0])].concat(),
            );
            assert_eq!(
                subject_of_certificate(&certificate).expect("subject"),
                "CN=h1"
            );
        }
    }

    #[test]
    fn malformed_der_is_refused() {
        let der = CertificateDer::from_pem_slice(CLIENT1_PEM.as_bytes()).expect("pem");
        // Every truncation of a real certificate fails cleanly, never panics.
        for end in 0..der.len() {
            assert!(subject_of_certificate(&der[..end]).is_err(), "{end}");
        }
        for bad in [
            hex("30"),
            hex("3080"),
            hex("308500000000"),
            hex("3003020101"),
            hex("1f0100"),
            tlv(SEQUENCE, &tlv(SEQUENCE, &tlv(INTEGER, &[1]))),
        ] {
            assert!(subject_of_certificate(&bad).is_err(), "{bad:02x?}");
        }
        // An empty RDN, a bad OID, invalid strings.
        assert!(format_name(&tlv(SET, &[])).is_err());
        let attribute = |oid: &[u8], value: Vec<u8>| {
            tlv(
                SET,
                &tlv(SEQUENCE, &[tlv(OBJECT_IDENTIFIER, oid), value].concat()),
            )
        };
        assert!(format_name(&attribute(&[], tlv(0x0c, b"x"))).is_err());
        assert!(format_name(&attribute(&[0x55, 0x04, 0x83], tlv(0x0c, b"x"))).is_err());
        assert!(format_name(&attribute(&[0x55, 0x04, 0x03], tlv(0x0c, &[0xff]))).is_err());
        assert!(format_name(&attribute(&[0x55, 0x04, 0x03], tlv(0x1e, &[0xd8, 0x00]))).is_err());
        assert!(format_name(&attribute(&[0x55, 0x04, 0x03], tlv(0x1c, &[0, 0, 0]))).is_err());
        assert_eq!(format_name(&[]).expect("empty name"), "");
    }

    #[test]
    fn buffer_wraps_and_bounds() {
        let mut buffer = Buffer::new(8);
        buffer.room()[..8].copy_from_slice(b"abcdefgh");
        buffer.commit(8);
        assert!(!buffer.has_room());
        buffer.consume(5);
        assert_eq!(buffer.filled(), b"fgh");
        assert_eq!(buffer.room().len(), 5);
        buffer.room()[..2].copy_from_slice(b"ij");
        buffer.commit(2);
        assert_eq!(buffer.filled(), b"fghij");
        buffer.consume(5);
        assert!(buffer.is_empty() && buffer.room().len() == 8);
    }

    /// The key of [`CLIENT1_PEM`] (made for these tests only).
    const CLIENT1_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg42KQ2qKgC6/SOCud
QcL7JKc4nvXpyfAMXb1TBnWebSWhRANCAARFV4tujQ6R0rCblzxxKFADKmtmYM/H
xBkL3KyUkzFEwzGE6Z+dC52+VddItEel5CYsdLyIxpaiVOaKTbhD5o8P
-----END PRIVATE KEY-----
";

    fn test_server(dir: &Path) -> TlsServer {
        TlsServer::load(&TlsFiles {
            cert: write_file(dir, "cert.pem", CLIENT1_PEM),
            key: write_file(dir, "key.pem", CLIENT1_KEY_PEM),
            client_ca: None,
        })
        .expect("load")
    }

    #[test]
    fn tls_connections_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = test_server(dir.path());
        let mut slots: Vec<TlsSlot> = (0..MAX_TLS_CONNECTIONS)
            .map(|_| server.reserve().expect("slot"))
            .collect();
        assert!(server.reserve().is_none());
        assert_eq!(server.active(), MAX_TLS_CONNECTIONS);
        slots.pop();
        assert!(server.reserve().is_some());
        slots.clear();
        assert_eq!(server.active(), 0);
    }

    /// The client side of the relay test trusts whatever certificate the server shows: what
    /// is tested is the relay, not certificate checks (which tests/tls.rs does with real
    /// clients).
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &rustls::pki_types::ServerName<'_>,
            _ocsp_response: &[u8],
            _now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// A TLS client sends 3 MiB through a relay to an echo "reactor" and gets it all back; its
    /// close reaches the session as end of stream, the session's close reaches the client as
    /// close_notify, and the relay's slot is given back.
    #[test]
    fn relay_carries_bytes_and_closes_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Arc::new(test_server(dir.path()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let client = std::thread::spawn(move || {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
                .with_no_client_auth();
            let connection = rustls::ClientConnection::new(
                Arc::new(config),
                rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            )
            .expect("client");
            let socket = std::net::TcpStream::connect(address).expect("connect");
            socket
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut stream = StreamOwned::new(connection, socket);
            let chunk_bytes = 64 * 1024;
            for round in 0..48u32 {
                let chunk: Vec<u8> = (0..chunk_bytes)
                    .map(|i| (i as u32 ^ round.wrapping_mul(2654435761)) as u8)
                    .collect();
                stream.write_all(&chunk).expect("send");
                stream.flush().expect("flush");
                let mut echoed = vec![0u8; chunk_bytes];
                stream.read_exact(&mut echoed).expect("echo");
                assert!(echoed == chunk, "round {round}: the echo differs");
            }
            stream.conn.send_close_notify();
            stream.flush().expect("close_notify");
            let mut rest = Vec::new();
            // close_notify from the server ends the stream cleanly (Ok), with nothing more.
            stream.read_to_end(&mut rest).expect("clean end");
            assert!(rest.is_empty());
        });
        let (socket, _) = listener.accept().expect("accept");
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let slot = server.reserve().expect("slot");
        let stream = server.accept(socket).expect("TLS handshake");
        assert_eq!(stream.subject, None);
        let session = spawn_relay(stream, slot, "test".into()).expect("relay");
        let mut session = UnixStream::from(session);
        let mut buffer = vec![0u8; 100_000];
        loop {
            let count = session.read(&mut buffer).expect("session read");
            if count == 0 {
                break;
            }
            session.write_all(&buffer[..count]).expect("session write");
        }
        drop(session);
        client.join().expect("client");
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.active() != 0 {
            assert!(Instant::now() < deadline, "the relay never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = write_file(dir.path(), "cert.pem", CLIENT1_PEM);
        let missing = dir.path().join("missing.pem");
        let not_pem = write_file(dir.path(), "garbage.pem", "hello\n");
        let files = |cert: &Path, key: &Path, ca: Option<&Path>| TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: ca.map(Path::to_path_buf),
        };
        let message = |files: &TlsFiles| match TlsServer::load(files) {
            Ok(_) => panic!("loaded {files:?}"),
            Err(error) => error.to_string(),
        };
        let text = message(&files(&missing, &cert, None));
        assert!(
            text.contains("certificate") && text.contains("missing.pem"),
            "{text}"
        );
        let text = message(&files(&not_pem, &cert, None));
        assert!(
            text.contains("garbage.pem") && text.contains("no certificate"),
            "{text}"
        );
        let text = message(&files(&cert, &cert, None));
        assert!(text.contains("key") && text.contains("cert.pem"), "{text}");
        let text = message(&files(&cert, &missing, None));
        assert!(
            text.contains("key") && text.contains("missing.pem"),
            "{text}"
        );
    }
}
