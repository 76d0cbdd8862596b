//! A connection while it negotiates on a handshake thread (an NBD handshake, an iSCSI login
//! or discovery session): a blocking socket of either family and one deadline for the whole
//! negotiation. Every read and write waits at most until that deadline, so a peer that
//! trickles a byte at a time cannot hold its handshake slot longer than the deadline allows.

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// A connection while it negotiates: a socket of either family, and the one deadline of the
/// whole handshake. Every read and write waits at most until that deadline (the socket's
/// timeout is set to what is left before each), so a peer that trickles a byte at a time
/// cannot hold its handshake slot longer than the deadline allows.
pub struct HandshakeStream {
    socket: HandshakeSocket,
    /// None once the handshake is over (the TLS relay then owns the timing).
    deadline: Cell<Option<Instant>>,
}

pub enum HandshakeSocket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl HandshakeStream {
    pub fn new(socket: HandshakeSocket) -> Self {
        Self {
            socket,
            deadline: Cell::new(None),
        }
    }

    /// Blocking, with the handshake's deadline `limit` from now.
    pub fn prepare(&self, limit: Duration) -> std::io::Result<()> {
        self.deadline.set(Some(Instant::now() + limit));
        match &self.socket {
            HandshakeSocket::Tcp(s) => s.set_nonblocking(false),
            HandshakeSocket::Unix(s) => s.set_nonblocking(false),
        }
    }

    /// The socket itself.
    pub fn socket(&self) -> &HandshakeSocket {
        &self.socket
    }

    /// The handshake is over: its deadline no longer applies (the caller clears the
    /// socket's own timeouts).
    pub fn clear_deadline(&self) {
        self.deadline.set(None);
    }

    /// Sets the socket's timeouts to the time left before the deadline; an error once it
    /// has passed.
    fn arm(&self) -> std::io::Result<()> {
        let Some(deadline) = self.deadline.get() else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the handshake's deadline passed",
            ));
        }
        match &self.socket {
            HandshakeSocket::Tcp(s) => s
                .set_read_timeout(Some(left))
                .and_then(|()| s.set_write_timeout(Some(left))),
            HandshakeSocket::Unix(s) => s
                .set_read_timeout(Some(left))
                .and_then(|()| s.set_write_timeout(Some(left))),
        }
    }

    /// Back to no timeouts: the reactor drives the socket through io_uring from now on.
    pub fn into_fd(self) -> std::io::Result<OwnedFd> {
        match self.socket {
            HandshakeSocket::Tcp(s) => s
                .set_read_timeout(None)
                .and_then(|()| s.set_write_timeout(None))
                .map(|()| OwnedFd::from(s)),
            HandshakeSocket::Unix(s) => s
                .set_read_timeout(None)
                .and_then(|()| s.set_write_timeout(None))
                .map(|()| OwnedFd::from(s)),
        }
    }
}

impl Read for HandshakeStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        match &mut self.socket {
            HandshakeSocket::Tcp(s) => s.read(buf),
            HandshakeSocket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for HandshakeStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        match &mut self.socket {
            HandshakeSocket::Tcp(s) => s.write(buf),
            HandshakeSocket::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.socket {
            HandshakeSocket::Tcp(s) => s.flush(),
            HandshakeSocket::Unix(s) => s.flush(),
        }
    }
}

impl AsFd for HandshakeStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            HandshakeSocket::Tcp(s) => s.as_fd(),
            HandshakeSocket::Unix(s) => s.as_fd(),
        }
    }
}
