//! The relay that carries a TLS connection's transmission phase to a reactor.
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
//! thread and one more copy each way;
//! [`MAX_TLS_CONNECTIONS`](crate::constants::MAX_TLS_CONNECTIONS) bounds them (a client past
//! it is refused NBD_OPT_STARTTLS with NBD_REP_ERR_POLICY). Plain connections have no relay.
//! TLS inside the reactor (rustls driven from the ring's completions, or kTLS on kernels that
//! have it) is future work.

use super::server::{TlsSlot, TlsStream};
use crate::constants::{TLS_RELAY_BUFFER_BYTES, TLS_RELAY_LINGER_SECS};
use rustls::ServerConnection;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

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
    let (connection, socket) = stream.into_parts();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::nbd::tls::fixtures::test_server;
    use rustls::pki_types::CertificateDer;
    use rustls::StreamOwned;
    use std::sync::Arc;

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
}
