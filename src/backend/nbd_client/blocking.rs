//! A blocking connection to an NBD export: one request at a time, plain socket calls bounded
//! by a timeout. The remote LUN keeps one behind a `Mutex` for its synchronous methods (the
//! provisioning and control threads and start-up; never a reactor), and opens one to learn
//! the export's size and flags when the LUN is created.

use super::negotiation::{Export, Negotiation, NegotiationError};
use super::reply::{errno_of, Event, ReplyDecoder, ReplyError, RequestShape, Want};
use super::request::{encode_request, Capabilities};
use super::uri::{NbdAddress, NbdUri};
use crate::target::nbd::protocol::Command;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Bytes skipped per read when discarding (an error chunk's message).
const DISCARD_CHUNK_BYTES: usize = 512;

/// A connected socket, TCP or Unix.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Connects to `address`, bounded by `timeout` (each address a host name resolves to is
    /// tried in turn); reads and writes are bounded by it too.
    pub fn connect(address: &NbdAddress, timeout: Duration) -> io::Result<Self> {
        let stream = match address {
            NbdAddress::Tcp { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut connected = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(stream) => {
                            connected = Some(stream);
                            break;
                        }
                        Err(error) => last = error,
                    }
                }
                let stream = connected.ok_or(last)?;
                // Requests are written whole: no reason to wait for more.
                stream.set_nodelay(true)?;
                set_keepalive(std::os::fd::AsRawFd::as_raw_fd(&stream));
                Self::Tcp(stream)
            }
            NbdAddress::Unix { path } => Self::Unix(UnixStream::connect(path)?),
        };
        stream.set_timeout(timeout)?;
        Ok(stream)
    }

    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Self::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
            Self::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
        }
    }

    /// Reads some bytes, EINTR retried; end of stream is an error (the server hung up mid-reply).
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let result = match self {
                Self::Tcp(s) => s.read(buf),
                Self::Unix(s) => s.read(buf),
            };
            match result {
                Ok(0) if !buf.is_empty() => return Err(io::ErrorKind::UnexpectedEof.into()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.write_all(buf),
            Self::Unix(s) => s.write_all(buf),
        }
    }

    /// The raw file descriptor (for a link that takes the socket over after the handshake).
    pub fn into_fd(self) -> std::os::fd::OwnedFd {
        match self {
            Self::Tcp(s) => s.into(),
            Self::Unix(s) => s.into(),
        }
    }
}

/// Turns TCP keepalive on for a connection to an NBD server (`NBD_KEEPALIVE_*`): NBD has no
/// ping, and an idle connection to a server that vanished without a reset would otherwise
/// look alive until its next request. Best effort: a socket that refuses keeps working.
pub fn set_keepalive(fd: std::os::fd::RawFd) {
    use crate::constants::{
        NBD_KEEPALIVE_IDLE_SECS, NBD_KEEPALIVE_INTERVAL_SECS, NBD_KEEPALIVE_PROBES,
    };
    for (level, option, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            NBD_KEEPALIVE_IDLE_SECS,
        ),
        (
            libc::IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            NBD_KEEPALIVE_INTERVAL_SECS,
        ),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, NBD_KEEPALIVE_PROBES),
    ] {
        // SAFETY: setsockopt on a socket the caller owns, with a pointer to a live int of the
        // size given.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {uri}")]
    Connect {
        uri: String,
        #[source]
        source: io::Error,
    },
    #[error("handshake with {uri} failed")]
    Handshake {
        uri: String,
        #[source]
        source: io::Error,
    },
    #[error("{uri}")]
    Negotiation {
        uri: String,
        #[source]
        source: NegotiationError,
    },
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The connection broke (or timed out): it is unusable; the request may be sent again on
    /// a new one.
    #[error("connection lost")]
    Connection(#[source] io::Error),
    /// The server broke the protocol: the connection is unusable.
    #[error("protocol error")]
    Protocol(#[source] ReplyError),
    /// A read's reply did not cover the whole read.
    #[error("the reply to a read of {len_bytes} bytes covered {covered_bytes}")]
    ShortRead { len_bytes: u32, covered_bytes: u64 },
    /// The server answered with an error (a positive errno); the connection is fine.
    #[error("the server answered {}", io::Error::from_raw_os_error(*.0))]
    Server(i32),
}

impl RequestError {
    /// Whether the connection is unusable after this error.
    pub fn is_connection_lost(&self) -> bool {
        !matches!(self, Self::Server(_))
    }

    /// The errno a caller reports.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Server(errno) => *errno,
            _ => libc::EIO,
        }
    }
}

/// Drives a handshake over a blocking stream to the end.
pub fn negotiate(stream: &mut Stream, export_name: &str) -> Result<Export, ConnectError> {
    let mut negotiation =
        Negotiation::new(export_name).map_err(|source| ConnectError::Negotiation {
            uri: export_name.into(),
            source,
        })?;
    let io_error = |source| ConnectError::Handshake {
        uri: export_name.into(),
        source,
    };
    loop {
        let out = negotiation.output();
        if !out.is_empty() {
            let len = out.len();
            stream.write_all(out).map_err(io_error)?;
            negotiation.sent(len);
        }
        let count = stream.read_some(negotiation.input()).map_err(io_error)?;
        if let Some(export) =
            negotiation
                .received(count)
                .map_err(|source| ConnectError::Negotiation {
                    uri: export_name.into(),
                    source,
                })?
        {
            return Ok(export);
        }
    }
}

/// One connection in the transmission phase.
#[derive(Debug)]
pub struct BlockingConnection {
    stream: Stream,
    export: Export,
    capabilities: Capabilities,
    decoder: ReplyDecoder,
    next_cookie: u64,
}

impl BlockingConnection {
    /// Connects to `uri` and completes the handshake, every step bounded by `timeout`.
    pub fn connect(uri: &NbdUri, timeout: Duration) -> Result<Self, ConnectError> {
        let mut stream =
            Stream::connect(&uri.address, timeout).map_err(|source| ConnectError::Connect {
                uri: uri.to_string(),
                source,
            })?;
        let export = negotiate(&mut stream, &uri.export).map_err(|error| match error {
            ConnectError::Handshake { source, .. } => ConnectError::Handshake {
                uri: uri.to_string(),
                source,
            },
            ConnectError::Negotiation { source, .. } => ConnectError::Negotiation {
                uri: uri.to_string(),
                source,
            },
            other => other,
        })?;
        Ok(Self {
            stream,
            capabilities: Capabilities::from_flags(export.transmission_flags),
            decoder: ReplyDecoder::new(export.structured),
            export,
            next_cookie: 1,
        })
    }

    pub fn export(&self) -> &Export {
        &self.export
    }

    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Sends one request and waits for its whole reply. A read's data lands in `read_buf`.
    fn request(
        &mut self,
        command: Command,
        flags: u16,
        offset_bytes: u64,
        length_bytes: u32,
        payload: Option<&[u8]>,
        mut read_buf: Option<&mut [u8]>,
    ) -> Result<(), RequestError> {
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        let header = encode_request(command, flags, cookie, offset_bytes, length_bytes);
        self.stream
            .write_all(&header)
            .map_err(RequestError::Connection)?;
        if let Some(payload) = payload {
            self.stream
                .write_all(payload)
                .map_err(RequestError::Connection)?;
        }
        let shape = RequestShape {
            read: command == Command::Read,
            offset_bytes,
            length_bytes,
        };
        let lookup = |c: u64| (c == cookie).then_some(shape);
        let mut covered_bytes = 0u64;
        let mut failed = 0u32;
        let mut discard = [0u8; DISCARD_CHUNK_BYTES];
        loop {
            let count = match self.decoder.want() {
                Want::Header(_) => self.stream.read_some(self.decoder.buffer()),
                Want::Data { at, len, .. } => {
                    let buf = read_buf
                        .as_deref_mut()
                        .ok_or(RequestError::Protocol(ReplyError::UnknownCookie(cookie)))?;
                    self.stream
                        .read_some(&mut buf[at as usize..(at + len) as usize])
                }
                Want::Discard(len) => {
                    let len = (len as usize).min(DISCARD_CHUNK_BYTES);
                    self.stream.read_some(&mut discard[..len])
                }
            }
            .map_err(RequestError::Connection)?;
            self.decoder
                .received(count, lookup)
                .map_err(RequestError::Protocol)?;
            while let Some(event) = self.decoder.next_event() {
                match event {
                    Event::Chunk { at, len, hole, .. } => {
                        covered_bytes += u64::from(len);
                        if hole {
                            if let Some(buf) = read_buf.as_deref_mut() {
                                buf[at as usize..(at + len) as usize].fill(0);
                            }
                        }
                    }
                    Event::Failed { nbd_errno, .. } => {
                        if failed == 0 {
                            failed = nbd_errno;
                        }
                    }
                    Event::Done { nbd_errno, .. } => {
                        let errno = if failed != 0 { failed } else { nbd_errno };
                        if errno != 0 {
                            return Err(RequestError::Server(errno_of(errno)));
                        }
                        if shape.read && covered_bytes != u64::from(length_bytes) {
                            return Err(RequestError::ShortRead {
                                len_bytes: length_bytes,
                                covered_bytes,
                            });
                        }
                        return Ok(());
                    }
                }
            }
        }
    }

    pub fn read(&mut self, buf: &mut [u8], offset_bytes: u64) -> Result<(), RequestError> {
        let len = buf.len() as u32;
        self.request(Command::Read, 0, offset_bytes, len, None, Some(buf))
    }

    /// Writes `buf`; durable when this returns if `fua` (FUA, or a flush after the write when
    /// the export has no FUA).
    pub fn write(&mut self, buf: &[u8], offset_bytes: u64, fua: bool) -> Result<(), RequestError> {
        let flags = self.capabilities.fua_flags(fua);
        let len = buf.len() as u32;
        self.request(Command::Write, flags, offset_bytes, len, Some(buf), None)?;
        if self.capabilities.fua_needs_flush(fua) {
            self.flush()?;
        }
        Ok(())
    }

    /// Zeroes a range in requests of at most `max_request_bytes`: WRITE_ZEROES when the
    /// export has it, else writes of zeroes.
    pub fn write_zeroes(
        &mut self,
        offset_bytes: u64,
        len_bytes: u64,
        max_request_bytes: u32,
    ) -> Result<(), RequestError> {
        let zeroes = if self.capabilities.write_zeroes {
            Vec::new()
        } else {
            vec![0u8; max_request_bytes as usize]
        };
        let mut done = 0u64;
        while done < len_bytes {
            let len = (len_bytes - done).min(u64::from(max_request_bytes)) as u32;
            if self.capabilities.write_zeroes {
                self.request(
                    Command::WriteZeroes,
                    0,
                    offset_bytes + done,
                    len,
                    None,
                    None,
                )?;
            } else {
                self.write(&zeroes[..len as usize], offset_bytes + done, false)?;
            }
            done += u64::from(len);
        }
        Ok(())
    }

    /// Makes completed writes durable (nothing to do for an export without a write cache).
    pub fn flush(&mut self) -> Result<(), RequestError> {
        if !self.capabilities.flush {
            return Ok(());
        }
        self.request(Command::Flush, 0, 0, 0, None, None)
    }

    /// Says goodbye (NBD_CMD_DISC) before the socket closes; errors do not matter any more.
    pub fn disconnect(mut self) {
        let header = encode_request(Command::Disconnect, 0, 0, 0, 0);
        let _ = self.stream.write_all(&header);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    /// qemu-nbd serving a raw file on a Unix socket; killed when dropped.
    struct QemuNbd {
        child: Child,
        uri: NbdUri,
        _dir: tempfile::TempDir,
    }

    impl Drop for QemuNbd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// None (the test skips, saying why) when qemu-nbd is not installed.
    /// qemu-nbd serving a fresh image (scripts/setup.sh installs qemu-utils: a machine
    /// without it fails these tests rather than skipping them).
    fn qemu_nbd(size_bytes: u64) -> QemuNbd {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("disk.raw");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size_bytes))
            .expect("image");
        let socket = dir.path().join("nbd.sock");
        let child = match Command::new("qemu-nbd")
            .args([
                "--format",
                "raw",
                "--export-name",
                "disk",
                "--shared",
                "4",
                "--socket",
            ])
            .arg(&socket)
            .arg(&image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(error) => panic!("qemu-nbd cannot run ({error}): run scripts/setup.sh"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        QemuNbd {
            child,
            uri: super::super::uri::parse(&format!("nbd+unix:///disk?socket={}", socket.display()))
                .expect("uri"),
            _dir: dir,
        }
    }

    /// Against qemu-nbd (structured replies, block sizes, FUA, WRITE_ZEROES, holes): what
    /// is written reads back, zeroes read as zeroes, and errors come back as errnos.
    #[cfg_attr(
        miri,
        ignore = "spawns qemu-nbd and uses sockets: Miri isolates the host"
    )]
    #[test]
    fn reads_writes_and_zeroes_against_qemu_nbd() {
        let server = qemu_nbd(8 << 20);
        let timeout = Duration::from_secs(20);
        let mut conn = BlockingConnection::connect(&server.uri, timeout).expect("connect");
        let export = *conn.export();
        assert_eq!(export.size_bytes, 8 << 20);
        assert!(export.structured, "qemu-nbd offers structured replies");
        assert!(export.block_sizes.is_some());
        assert!(conn.capabilities().write_zeroes && conn.capabilities().fua);

        // A never-written region: qemu-nbd answers with a hole chunk over stale bytes.
        let mut buf = vec![0xaau8; 1 << 20];
        conn.read(&mut buf, 0).expect("read hole");
        assert!(buf.iter().all(|&b| b == 0));

        let data: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 % 253) as u8).collect();
        conn.write(&data, 4096, true).expect("write");
        conn.flush().expect("flush");
        let mut back = vec![0u8; 1 << 20];
        conn.read(&mut back, 4096).expect("read");
        assert_eq!(back, data);

        conn.write_zeroes(8192, 65536, 1 << 20).expect("zeroes");
        conn.read(&mut back, 4096).expect("read");
        assert_eq!(&back[..4096], &data[..4096]);
        assert!(back[4096..4096 + 65536].iter().all(|&b| b == 0));
        assert_eq!(&back[4096 + 65536..], &data[4096 + 65536..]);

        // Past the end: the server's error, and the connection goes on.
        let error = conn
            .read(&mut back[..4096], 8 << 20)
            .expect_err("out of range");
        assert!(!error.is_connection_lost(), "{error}");
        conn.read(&mut back[..4096], 0).expect("still usable");
        conn.disconnect();
    }

    #[cfg_attr(
        miri,
        ignore = "spawns qemu-nbd and uses sockets: Miri isolates the host"
    )]
    #[test]
    fn unknown_export_and_refused_connection() {
        let server = qemu_nbd(1 << 20);
        let mut uri = server.uri.clone();
        uri.export = "nope".into();
        let error =
            BlockingConnection::connect(&uri, Duration::from_secs(20)).expect_err("unknown");
        assert!(
            matches!(
                error,
                ConnectError::Negotiation {
                    source: NegotiationError::NoSuchExport(_) | NegotiationError::Refused { .. },
                    ..
                }
            ),
            "{error:?}"
        );
        let nowhere =
            super::super::uri::parse("nbd+unix:///x?socket=/nonexistent/sock").expect("uri");
        assert!(matches!(
            BlockingConnection::connect(&nowhere, Duration::from_secs(1)),
            Err(ConnectError::Connect { .. })
        ));
    }
}
