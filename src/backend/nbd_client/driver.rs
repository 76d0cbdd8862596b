//! The NBD remote LUN's driver: where the export is ([`NbdTarget`], resolved once when the LUN
//! is opened), which exports sds can use ([`check_export`]), the blocking connection behind
//! the synchronous `Lun` methods, and the links' transports ([`NbdLink`]).
//!
//! An export is refused when it is read-only, cannot WRITE_ZEROES (the links never split a
//! command, and a zeroing must not become a write of data), needs blocks larger than 4096
//! bytes, or takes requests smaller than sds's largest I/O (`MAX_IO_BYTES`). The LUN's block
//! size is 512 when the export's minimum block size is at most 512, else 4096.

use super::blocking::{BlockingConnection, ConnectError, RequestError};
use super::link::NbdLink;
use super::negotiation::Export;
use super::uri::{self, NbdAddress, NbdUri};
use crate::backend::remote::link::ArrayGeometry;
use crate::backend::remote::{RemoteDriver, RemoteLun};
use crate::backend::{LunError, LunSpec};
use crate::constants::{
    MAX_IO_BYTES, REMOTE_CONNECT_TIMEOUT_MS, REMOTE_RECONNECT_MAX_MS, REMOTE_RECONNECT_MIN_MS,
    REMOTE_STARTUP_CONNECT_MS,
};
use crate::target::nbd::protocol::{NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_WRITE_ZEROES};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where an export is: its URI and the socket address every link connects to (a host name is
/// resolved once, when the LUN is opened: a reactor never waits for DNS).
pub struct NbdTarget {
    pub uri: NbdUri,
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
    family: libc::c_int,
}

// SAFETY: the socket address is plain data, only read after the target is built.
unsafe impl Send for NbdTarget {}
// SAFETY: as above; nothing mutates it once built.
unsafe impl Sync for NbdTarget {}

impl NbdTarget {
    /// Resolves `uri`'s address.
    pub fn resolve(uri: NbdUri) -> io::Result<Self> {
        // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (empty) value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let (len, family) = match &uri.address {
            NbdAddress::Tcp { host, port } => {
                let addr = (host.as_str(), *port)
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
                match addr {
                    SocketAddr::V4(v4) => {
                        let sin = libc::sockaddr_in {
                            sin_family: libc::AF_INET as libc::sa_family_t,
                            sin_port: v4.port().to_be(),
                            sin_addr: libc::in_addr {
                                s_addr: u32::from(*v4.ip()).to_be(),
                            },
                            sin_zero: [0; 8],
                        };
                        // SAFETY: sockaddr_storage is larger than sockaddr_in and aligned
                        // for any socket address.
                        unsafe {
                            std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin)
                        };
                        (std::mem::size_of::<libc::sockaddr_in>(), libc::AF_INET)
                    }
                    SocketAddr::V6(v6) => {
                        let sin6 = libc::sockaddr_in6 {
                            sin6_family: libc::AF_INET6 as libc::sa_family_t,
                            sin6_port: v6.port().to_be(),
                            sin6_flowinfo: v6.flowinfo(),
                            sin6_addr: libc::in6_addr {
                                s6_addr: v6.ip().octets(),
                            },
                            sin6_scope_id: v6.scope_id(),
                        };
                        // SAFETY: as above, for sockaddr_in6.
                        unsafe {
                            std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6)
                        };
                        (std::mem::size_of::<libc::sockaddr_in6>(), libc::AF_INET6)
                    }
                }
            }
            NbdAddress::Unix { path } => {
                use std::os::unix::ffi::OsStrExt;
                let bytes = path.as_os_str().as_bytes();
                // SAFETY: sockaddr_un is plain data; all zeroes is valid.
                let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
                if bytes.len() >= sun.sun_path.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the socket path is too long",
                    ));
                }
                sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
                for (to, from) in sun.sun_path.iter_mut().zip(bytes) {
                    *to = *from as libc::c_char;
                }
                // SAFETY: as above, for sockaddr_un.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_un, sun) };
                (std::mem::size_of::<libc::sockaddr_un>(), libc::AF_UNIX)
            }
        };
        Ok(Self {
            uri,
            storage,
            len: len as libc::socklen_t,
            family,
        })
    }

    /// The address family, the address and its length, for socket(2) and connect.
    pub fn sockaddr(&self) -> (libc::c_int, *const libc::sockaddr, libc::socklen_t) {
        (
            self.family,
            (&self.storage as *const libc::sockaddr_storage).cast(),
            self.len,
        )
    }
}

/// The LUN's size and block size on an export, or why sds cannot use it (see the module doc).
pub fn check_export(export: &Export) -> Result<(u64, u32), String> {
    if export.transmission_flags & NBD_FLAG_READ_ONLY != 0 {
        return Err("the export is read-only".into());
    }
    if export.transmission_flags & NBD_FLAG_SEND_WRITE_ZEROES == 0 {
        return Err("the export does not take WRITE_ZEROES".into());
    }
    let (minimum, maximum) = export.block_sizes.map_or((1, u32::MAX), |sizes| {
        (sizes.minimum_bytes, sizes.maximum_bytes)
    });
    let block_size_bytes = match minimum {
        0..=512 => 512,
        513..=4096 => 4096,
        _ => {
            return Err(format!(
                "the export's blocks are {minimum} bytes (at most 4096)"
            ))
        }
    };
    if (maximum as usize) < MAX_IO_BYTES {
        return Err(format!(
            "the export takes requests of at most {maximum} bytes; sds needs {MAX_IO_BYTES}"
        ));
    }
    let size_bytes = export.size_bytes / u64::from(block_size_bytes) * u64::from(block_size_bytes);
    if size_bytes == 0 {
        return Err("the export is empty".into());
    }
    Ok((size_bytes, block_size_bytes))
}

/// The NBD driver of a remote LUN.
pub struct NbdDriver {
    target: Arc<NbdTarget>,
    timeout: Duration,
    blocking: Mutex<Option<BlockingConnection>>,
}

impl NbdDriver {
    /// Runs `op` on the blocking connection, connecting (again) as needed: a lost connection
    /// is made again with backoff and the request sent again, until the LUN's timeout. The
    /// server's own error is returned at once.
    fn with_connection<T>(
        &self,
        mut op: impl FnMut(&mut BlockingConnection) -> Result<T, RequestError>,
    ) -> io::Result<T> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(REMOTE_RECONNECT_MIN_MS);
        let mut guard = self
            .blocking
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            let last_error = match guard.as_mut() {
                Some(connection) => match op(connection) {
                    Ok(value) => return Ok(value),
                    Err(RequestError::Server(errno)) => {
                        return Err(io::Error::from_raw_os_error(errno))
                    }
                    Err(error) => {
                        *guard = None;
                        io::Error::new(io::ErrorKind::ConnectionAborted, error.to_string())
                    }
                },
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let bound = left.min(Duration::from_millis(REMOTE_CONNECT_TIMEOUT_MS));
                    match BlockingConnection::connect(
                        &self.target.uri,
                        bound.max(Duration::from_millis(1)),
                    ) {
                        Ok(connection) => match check_export(connection.export()) {
                            Ok(_) => {
                                *guard = Some(connection);
                                continue;
                            }
                            Err(why) => io::Error::new(io::ErrorKind::InvalidData, why),
                        },
                        Err(error) => {
                            io::Error::new(io::ErrorKind::NotConnected, error.to_string())
                        }
                    }
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{}: {last_error}", self.target.uri),
                ));
            }
            std::thread::sleep(backoff.min(deadline - now));
            backoff = (backoff * 2).min(Duration::from_millis(REMOTE_RECONNECT_MAX_MS));
        }
    }
}

impl RemoteDriver for NbdDriver {
    type Link = NbdLink;

    fn new_link(&self, _reactor_index: usize) -> NbdLink {
        NbdLink::new(self.target.clone())
    }

    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> io::Result<()> {
        self.with_connection(|connection| {
            for (i, chunk) in buf.chunks_mut(MAX_IO_BYTES).enumerate() {
                connection.read(chunk, offset_bytes + (i * MAX_IO_BYTES) as u64)?;
            }
            Ok(())
        })
    }

    fn write_at(&self, buf: &[u8], offset_bytes: u64, fua: bool) -> io::Result<()> {
        self.with_connection(|connection| {
            for (i, chunk) in buf.chunks(MAX_IO_BYTES).enumerate() {
                connection.write(chunk, offset_bytes + (i * MAX_IO_BYTES) as u64, fua)?;
            }
            Ok(())
        })
    }

    fn write_zeroes_at(&self, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
        self.with_connection(|connection| {
            connection.write_zeroes(offset_bytes, len_bytes, MAX_ZEROES_REQUEST_BYTES)
        })
    }

    fn flush(&self) -> io::Result<()> {
        self.with_connection(BlockingConnection::flush)
    }
}

/// The largest WRITE_ZEROES the blocking connection sends (a multiple of 4096 below 4 GiB).
const MAX_ZEROES_REQUEST_BYTES: u32 = 1 << 30;

/// Opens the NBD LUN `spec` names; a block size of 0 takes the export's.
pub fn open(spec: &LunSpec) -> Result<RemoteLun<NbdDriver>, LunError> {
    open_with(
        spec,
        (spec.block_size_bytes != 0).then_some(spec.block_size_bytes),
    )
}

/// Opens the NBD LUN `spec` names: connects its blocking connection (which learns the
/// export), then attaches its links. The block size is `block_size_bytes` if given (refused
/// if the export needs larger blocks), else the export's. At start-up (the size is recorded)
/// an unreachable server is tried again with backoff for `REMOTE_STARTUP_CONNECT_MS`.
pub fn open_with(
    spec: &LunSpec,
    block_size_bytes: Option<u32>,
) -> Result<RemoteLun<NbdDriver>, LunError> {
    let invalid = |what: String| LunError::Invalid {
        lun: spec.name.clone(),
        what,
    };
    let remote = spec
        .remote
        .as_ref()
        .ok_or_else(|| invalid("uri: required for an nbd LUN".into()))?;
    let uri = uri::parse(&remote.url).map_err(|error| invalid(format!("uri: {error}")))?;
    let target = NbdTarget::resolve(uri.clone())
        .map_err(|error| invalid(format!("uri: cannot resolve {uri}: {error}")))?;
    let bound = remote
        .timeout()
        .min(Duration::from_millis(REMOTE_CONNECT_TIMEOUT_MS));
    let startup_deadline = Instant::now() + Duration::from_millis(REMOTE_STARTUP_CONNECT_MS);
    let mut backoff = Duration::from_millis(REMOTE_RECONNECT_MIN_MS);
    let connected = loop {
        match BlockingConnection::connect(&uri, bound) {
            Err(ConnectError::Connect { .. } | ConnectError::Handshake { .. })
                if spec.size_bytes.is_some() && Instant::now() + backoff < startup_deadline =>
            {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(REMOTE_RECONNECT_MAX_MS));
            }
            other => break other,
        }
    };
    let connection = connected.map_err(|error| match error {
        ConnectError::Negotiation { source, .. } => invalid(format!("uri: {uri}: {source}")),
        other => LunError::Unreachable {
            lun: spec.name.clone(),
            url: uri.to_string(),
            reason: format!("{other}: {}", error_chain(&other)),
        },
    })?;
    let (size_bytes, export_block_bytes) =
        check_export(connection.export()).map_err(|why| invalid(format!("uri: {uri}: {why}")))?;
    let block_size_bytes = match block_size_bytes {
        None => export_block_bytes,
        Some(asked) if asked >= export_block_bytes => asked,
        Some(asked) => {
            return Err(invalid(format!(
                "block_size: {asked} is smaller than the export's {export_block_bytes}-byte blocks"
            )))
        }
    };
    let size_bytes = size_bytes / u64::from(block_size_bytes) * u64::from(block_size_bytes);
    let spec = &LunSpec {
        block_size_bytes,
        ..spec.clone()
    };
    let driver = NbdDriver {
        target: Arc::new(target),
        timeout: remote.timeout(),
        blocking: Mutex::new(Some(connection)),
    };
    RemoteLun::open(
        spec,
        ArrayGeometry {
            size_bytes,
            block_size_bytes,
        },
        driver,
    )
}

/// The causes of an error, for a message that says why (the RPC shows only the message).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut source = error.source();
    while let Some(cause) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::nbd_client::negotiation::BlockSizes;
    use crate::target::nbd::protocol::{NBD_FLAG_HAS_FLAGS, NBD_FLAG_SEND_FLUSH};

    fn export(flags: u16, sizes: Option<(u32, u32)>) -> Export {
        Export {
            size_bytes: (1 << 20) + 100,
            transmission_flags: NBD_FLAG_HAS_FLAGS | flags,
            block_sizes: sizes.map(|(minimum_bytes, maximum_bytes)| BlockSizes {
                minimum_bytes,
                preferred_bytes: 4096,
                maximum_bytes,
            }),
            structured: true,
        }
    }

    #[test]
    fn which_exports_sds_takes() {
        let ok = NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FLUSH;
        assert_eq!(check_export(&export(ok, None)), Ok((1 << 20, 512)));
        assert_eq!(
            check_export(&export(ok, Some((1, 32 << 20)))),
            Ok((1 << 20, 512))
        );
        assert_eq!(
            check_export(&export(ok, Some((4096, 32 << 20)))),
            Ok((1 << 20, 4096))
        );
        assert!(check_export(&export(ok, Some((8192, 32 << 20)))).is_err());
        assert!(check_export(&export(ok, Some((512, 1 << 20)))).is_err());
        assert!(check_export(&export(ok | NBD_FLAG_READ_ONLY, None)).is_err());
        assert!(check_export(&export(NBD_FLAG_SEND_FLUSH, None)).is_err());
        let mut tiny = export(ok, None);
        tiny.size_bytes = 100;
        assert!(check_export(&tiny).is_err());
    }

    #[cfg_attr(miri, ignore = "address resolution: Miri isolates the host")]
    #[test]
    fn resolves_addresses() {
        let target = NbdTarget::resolve(uri::parse("nbd://127.0.0.1:4567/x").expect("uri"))
            .expect("resolve");
        let (family, _, len) = target.sockaddr();
        assert_eq!(family, libc::AF_INET);
        assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_in>());
        let long = format!("nbd+unix:///x?socket=/{}", "a".repeat(200));
        assert!(NbdTarget::resolve(uri::parse(&long).expect("uri")).is_err());
    }
}
