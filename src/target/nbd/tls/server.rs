//! The server's side of a TLS connection: [`TlsServer`] holds the rustls configuration (from
//! [`super::config`]) and the count of open TLS connections, hands out a [`TlsSlot`] per
//! connection (at most [`MAX_TLS_CONNECTIONS`]), and runs the TLS handshake after
//! NBD_OPT_STARTTLS on the handshake thread. What it returns, a [`TlsStream`], carries the rest
//! of the negotiation in plaintext and then goes to [`super::relay`]; with client certificates
//! required it also carries the verified client's subject ([`super::x509`]), the name the host
//! is known by.

use super::config::{server_config, TlsError, TlsFiles};
use super::x509::{subject_of_certificate, SubjectError};
use crate::constants::{MAX_TLS_CONNECTIONS, TLS_RELAY_BUFFER_BYTES};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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

impl TlsServer {
    /// Loads and checks the files; every error names the file at fault.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            config: Arc::new(server_config(files)?),
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
    /// The verified client certificate's subject (see [`super::x509`] for its format); `None`
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

    /// The rustls connection and the socket under it, for the relay.
    pub(super) fn into_parts(self) -> (ServerConnection, S) {
        self.inner.into_parts()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::nbd::tls::fixtures::test_server;

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
}
