//! The iSCSI LUN driver: a LUN of another array reached with libiscsi's asynchronous
//! initiator API (`lun_create {kind: "iscsi", url: "iscsi://HOST[:PORT]/TARGET_IQN/LUN"}`).
//!
//! ```text
//!   IscsiDriver (RemoteDriver) ──new_link──▶ IscsiLink (LinkTransport, one per reactor)
//!        │                                        └─ Connection ── libiscsi context, polled
//!        │                                                         on the reactor's ring
//!        └── BlockingIscsi ── Connection, polled with poll(2) on the calling thread
//! ```
//!
//! The shared remote-LUN core (`backend::remote`) does the rest: command queueing, completion
//! to the engine, reconnects with backoff, timeouts, failing and recovery, stats. Sizes come
//! from READ CAPACITY (16) (the LUN's block size is the array's); reads and writes are READ
//! (16) / WRITE (16) (FUA as the FUA bit) moving data straight between the socket and the
//! engine's buffers; flush is SYNCHRONIZE CACHE (16); zeroing is WRITE SAME (16) with UNMAP
//! when the array supports it and reads unmapped blocks as zeroes, else zero-filled writes.
//! Header digests (CRC32C) are offered and used when the array agrees; libiscsi offers no data
//! digest.

pub mod blocking;
pub mod connection;
pub mod link;
pub mod outcome;

use crate::backend::aligned_buf::AlignedBuf;
use crate::backend::iscsi_context::{IscsiContext, IscsiUrl};
use crate::backend::remote::link::ArrayGeometry;
use crate::backend::remote::{RemoteDriver, RemoteLun};
use crate::backend::{LunError, LunSpec};
use crate::constants::{
    ISCSI_DEFAULT_INITIATOR_PREFIX, ISCSI_DEFAULT_PORT, ISCSI_ZERO_CHUNK_BYTES,
    REMOTE_STARTUP_CONNECT_MS,
};
use blocking::BlockingIscsi;
use link::{IscsiLink, ZeroBuffer};
use std::sync::Arc;
use std::time::Duration;

/// How to reach and log in to the array's LUN.
#[derive(Clone, Debug)]
pub struct IscsiParams {
    pub url: IscsiUrl,
    pub initiator_iqn: String,
    /// CHAP user and secret.
    pub chap: Option<(String, String)>,
}

/// The initiator name for a LUN that names none: the prefix and this host's name.
pub fn default_initiator_iqn() -> String {
    let mut name = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it when
    // the name fits (it is at most HOST_NAME_MAX, 64).
    let status = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len() - 1) };
    let host = if status == 0 {
        let end = name.iter().position(|&byte| byte == 0).unwrap_or(0);
        String::from_utf8_lossy(&name[..end])
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect()
    } else {
        String::from("host")
    };
    format!("{ISCSI_DEFAULT_INITIATOR_PREFIX}{host}")
}

/// `host:port` with the host resolved to an address (the first the resolver gives), or the
/// portal as it is when it does not resolve (the links' connects then fail and retry).
fn resolved_portal(portal: &str) -> String {
    use std::net::ToSocketAddrs;
    let with_port = if portal
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        && !portal.ends_with(']')
    {
        portal.to_string()
    } else {
        format!("{portal}:{ISCSI_DEFAULT_PORT}")
    };
    match with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
    {
        Some(std::net::SocketAddr::V4(address)) => address.to_string(),
        Some(std::net::SocketAddr::V6(address)) => format!("[{}]:{}", address.ip(), address.port()),
        None => portal.to_string(),
    }
}

/// The iSCSI protocol of a remote LUN.
pub struct IscsiDriver {
    /// The links' parameters: the portal's host name resolved once, on the thread that opened
    /// the LUN, since a reactor must never block in a resolver.
    link_params: Arc<IscsiParams>,
    zeroes: ZeroBuffer,
    blocking: BlockingIscsi,
    block_size_bytes: u32,
}

impl RemoteDriver for IscsiDriver {
    type Link = IscsiLink;

    fn new_link(&self, _reactor_index: usize) -> IscsiLink {
        IscsiLink::new(self.link_params.clone(), self.zeroes.clone())
    }

    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> std::io::Result<()> {
        self.blocking.read(buf, offset_bytes, self.block_size_bytes)
    }

    fn write_at(&self, buf: &[u8], offset_bytes: u64, fua: bool) -> std::io::Result<()> {
        self.blocking
            .write(buf, offset_bytes, self.block_size_bytes, fua)
    }

    fn write_zeroes_at(&self, offset_bytes: u64, len_bytes: u64) -> std::io::Result<()> {
        self.blocking
            .write_zeroes(offset_bytes, len_bytes, self.block_size_bytes)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.blocking.flush()
    }
}

/// Opens the iSCSI LUN `spec` names: parses its URL, logs in on the blocking connection
/// (waiting up to the LUN's timeout, at most [`REMOTE_STARTUP_CONNECT_MS`]), reads its
/// capacity, and attaches the links.
pub fn open(spec: &LunSpec) -> Result<RemoteLun<IscsiDriver>, LunError> {
    let invalid = |what: String| LunError::Invalid {
        lun: spec.name.clone(),
        what,
    };
    let remote = spec
        .remote
        .as_ref()
        .ok_or_else(|| invalid("url is required for an iscsi LUN".into()))?;
    remote.validate().map_err(invalid)?;
    let initiator_iqn = remote
        .initiator_iqn
        .clone()
        .unwrap_or_else(default_initiator_iqn);
    let url = IscsiContext::new(&initiator_iqn)
        .and_then(|mut context| context.parse_url(&remote.url))
        .map_err(|error| invalid(format!("url: {}", crate::logger::error_chain(&error))))?;
    let params = Arc::new(IscsiParams {
        url,
        initiator_iqn,
        chap: remote.chap_user.clone().zip(remote.chap_secret.clone()),
    });
    let zeroes: ZeroBuffer = Arc::new(AlignedBuf::new(ISCSI_ZERO_CHUNK_BYTES));
    let blocking = BlockingIscsi::new(params.clone(), zeroes.clone(), remote.timeout());
    let wait = remote
        .timeout()
        .min(Duration::from_millis(REMOTE_STARTUP_CONNECT_MS));
    let capacity = blocking
        .capacity(wait)
        .map_err(|error| LunError::Unreachable {
            lun: spec.name.clone(),
            url: remote.url.clone(),
            reason: error.to_string(),
        })?;
    let mut link_params = (*params).clone();
    link_params.url.portal = resolved_portal(&params.url.portal);
    let driver = IscsiDriver {
        link_params: Arc::new(link_params),
        zeroes,
        blocking,
        block_size_bytes: capacity.block_size_bytes,
    };
    RemoteLun::open(
        spec,
        ArrayGeometry {
            size_bytes: capacity.size_bytes,
            block_size_bytes: capacity.block_size_bytes,
        },
        driver,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg_attr(miri, ignore = "address resolution: Miri isolates the host")]
    #[test]
    fn portals_resolve_once_with_the_default_port() {
        assert_eq!(resolved_portal("127.0.0.1:3270"), "127.0.0.1:3270");
        assert_eq!(resolved_portal("127.0.0.1"), "127.0.0.1:3260");
        assert_eq!(resolved_portal("[::1]:3261"), "[::1]:3261");
        assert_eq!(resolved_portal("[::1]"), "[::1]:3260");
        let local = resolved_portal("localhost:3262");
        assert!(
            local == "127.0.0.1:3262" || local == "[::1]:3262",
            "{local}"
        );
        assert_eq!(
            resolved_portal("no-such-host.invalid:3260"),
            "no-such-host.invalid:3260",
            "left as it is: the links retry"
        );
    }

    #[cfg_attr(miri, ignore = "gethostname: Miri cannot call it")]
    #[test]
    fn the_default_initiator_name_is_an_iqn() {
        let name = default_initiator_iqn();
        assert!(name.starts_with(ISCSI_DEFAULT_INITIATOR_PREFIX), "{name}");
        assert!(name.len() > ISCSI_DEFAULT_INITIATOR_PREFIX.len());
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-:".contains(c)));
    }
}
