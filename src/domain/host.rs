//! Hosts: initiators, named by what their protocol proves about them.
//!
//! A connection carries a [`PeerIdentity`]: its source address (TCP) or its user id (a Unix
//! socket), and, when it came over TLS with a verified client certificate, that certificate's
//! subject. A [`Host`] claims connections by those: by its TLS subject when the peer proved
//! one, and then only by it (an address proves nothing a certificate could not); else by one
//! of its addresses — CIDR networks or `unix:UID` — as also over TLS without client
//! certificates.

use crate::constants::DEFAULT_MAX_SESSIONS_PER_HOST;
use crate::store::records::{ChapRecord, HostRecord};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What a connection's transport proves about the peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Source address of a TCP connection.
    pub address: Option<IpAddr>,
    /// User id of the peer of a Unix-socket connection (SO_PEERCRED).
    pub unix_uid: Option<u32>,
    /// Subject of the verified TLS client certificate (RFC 4514 form, e.g. `CN=host1,O=lab`).
    pub tls_subject: Option<String>,
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(subject) = &self.tls_subject {
            return write!(f, "tls:{subject}");
        }
        match (self.address, self.unix_uid) {
            (Some(address), _) => write!(f, "{address}"),
            (None, Some(uid)) => write!(f, "unix:{uid}"),
            (None, None) => write!(f, "unknown"),
        }
    }
}

/// One address a host may connect from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAddress {
    /// An IP network: `10.0.0.0/8`, `127.0.0.1` (a /32), `::1/128`.
    Net { base: IpAddr, prefix_bits: u8 },
    /// A Unix-socket peer running as this user id: `unix:1001`.
    UnixUid(u32),
}

impl HostAddress {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(uid) = text.strip_prefix("unix:") {
            return uid
                .parse()
                .map(Self::UnixUid)
                .map_err(|_| format!("{text:?}: expected unix:UID with a numeric user id"));
        }
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let base: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?}: not an IP address, a CIDR network or unix:UID"))?;
        let max_bits = if base.is_ipv4() { 32 } else { 128 };
        let prefix_bits = match prefix {
            None => max_bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&bits| bits <= max_bits)
                .ok_or_else(|| format!("{text:?}: prefix length must be 0..={max_bits}"))?,
        };
        Ok(Self::Net { base, prefix_bits })
    }

    pub fn matches(&self, peer: &PeerIdentity) -> bool {
        match *self {
            Self::UnixUid(uid) => peer.unix_uid == Some(uid),
            Self::Net { base, prefix_bits } => peer
                .address
                .is_some_and(|address| in_network(address, base, prefix_bits)),
        }
    }

    /// How specific this address is, for choosing between hosts that both match a peer
    /// (longest prefix first, as routes and ACLs do): the prefix length of a network; a user
    /// id names exactly one peer, so it ranks above any network.
    pub fn specificity(&self) -> u16 {
        match *self {
            Self::UnixUid(_) => u16::MAX,
            Self::Net { prefix_bits, .. } => u16::from(prefix_bits),
        }
    }

    /// Whether some peer could match both addresses (one network contains the other, or the
    /// same user id).
    pub fn overlaps(&self, other: &HostAddress) -> bool {
        match (*self, *other) {
            (Self::UnixUid(a), Self::UnixUid(b)) => a == b,
            (
                Self::Net {
                    base: a,
                    prefix_bits: a_bits,
                },
                Self::Net {
                    base: b,
                    prefix_bits: b_bits,
                },
            ) => {
                let (wide, wide_bits, narrow) = if a_bits <= b_bits {
                    (a, a_bits, b)
                } else {
                    (b, b_bits, a)
                };
                in_network(narrow, wide, wide_bits)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for HostAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnixUid(uid) => write!(f, "unix:{uid}"),
            Self::Net { base, prefix_bits } => write!(f, "{base}/{prefix_bits}"),
        }
    }
}

fn in_network(address: IpAddr, base: IpAddr, prefix_bits: u8) -> bool {
    // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    };
    match (address, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_bits))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_bits))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// A host as the data path matches connections against it.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub tls_subject: Option<String>,
    /// The iSCSI initiator name that is this host.
    pub iqn: Option<String>,
    /// The NVMe host NQN that is this host (what its NVMe/TCP Connect presents).
    pub nqn: Option<String>,
    /// The CHAP credentials an iSCSI login must prove (and, mutual, be proved), if set.
    pub chap: Option<Arc<ChapRecord>>,
    pub addresses: Vec<HostAddress>,
    /// NBD sessions it may have open at once.
    pub max_sessions: usize,
    /// NBD sessions it has open (or has been promised by a successful NBD_OPT_GO), shared by
    /// every snapshot's copy of this host.
    pub sessions: Arc<AtomicUsize>,
}

impl Host {
    pub fn from_record(record: &HostRecord) -> Result<Self, String> {
        let addresses = record
            .addresses
            .iter()
            .map(|text| HostAddress::parse(text))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: record.name.clone(),
            tls_subject: record.nbd_tls_subject.clone(),
            iqn: record.iqn.clone(),
            nqn: record.nqn.clone(),
            chap: record.chap.clone().map(Arc::new),
            addresses,
            max_sessions: record.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS_PER_HOST),
            sessions: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Takes one of the host's sessions; `Err(open)` when it already has `max_sessions`.
    pub fn take_session(&self) -> Result<HostSession, usize> {
        self.sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max_sessions).then_some(open + 1)
            })
            .map(|_| HostSession {
                sessions: self.sessions.clone(),
            })
    }

    /// Whether this host is the peer: by certificate subject when the peer proved one, else
    /// by address.
    pub fn matches(&self, peer: &PeerIdentity) -> bool {
        self.match_specificity(peer).is_some()
    }

    /// How specifically this host claims the peer, if it does: a certificate subject is unique
    /// among hosts; without TLS, the most specific of its addresses that matches. The host
    /// that claims a peer most specifically is its host.
    pub fn match_specificity(&self, peer: &PeerIdentity) -> Option<u16> {
        match &peer.tls_subject {
            Some(subject) => {
                (self.tls_subject.as_deref() == Some(subject.as_str())).then_some(u16::MAX)
            }
            None => self
                .addresses
                .iter()
                .filter(|a| a.matches(peer))
                .map(HostAddress::specificity)
                .max(),
        }
    }
}

/// One of a host's sessions, given back when dropped.
#[derive(Debug)]
pub struct HostSession {
    sessions: Arc<AtomicUsize>,
}

impl Drop for HostSession {
    fn drop(&mut self) {
        let before = self.sessions.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "host session count underflow");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_at(address: &str) -> PeerIdentity {
        PeerIdentity {
            address: Some(address.parse().expect("address")),
            ..PeerIdentity::default()
        }
    }

    #[test]
    fn addresses_parse_and_match() {
        let net = HostAddress::parse("10.1.0.0/16").expect("cidr");
        assert!(net.matches(&peer_at("10.1.200.3")));
        assert!(!net.matches(&peer_at("10.2.0.1")));
        assert!(net.matches(&peer_at("::ffff:10.1.0.9")));
        let one = HostAddress::parse("127.0.0.1").expect("address");
        assert!(one.matches(&peer_at("127.0.0.1")) && !one.matches(&peer_at("127.0.0.2")));
        let v6 = HostAddress::parse("fd00::/8").expect("v6");
        assert!(v6.matches(&peer_at("fd12::1")) && !v6.matches(&peer_at("fe80::1")));
        let all = HostAddress::parse("0.0.0.0/0").expect("any");
        assert!(all.matches(&peer_at("192.0.2.1")));
        let uid = HostAddress::parse("unix:1001").expect("uid");
        let unix_peer = PeerIdentity {
            unix_uid: Some(1001),
            ..PeerIdentity::default()
        };
        assert!(uid.matches(&unix_peer) && !uid.matches(&peer_at("127.0.0.1")));
        for bad in ["10.0.0.0/33", "unix:root", "host.example", "::1/129", ""] {
            assert!(HostAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specificity_and_overlap() {
        let any = HostAddress::parse("0.0.0.0/0").expect("any");
        let loopback = HostAddress::parse("127.0.0.0/8").expect("loopback");
        let one = HostAddress::parse("127.0.0.1").expect("one");
        let other = HostAddress::parse("10.0.0.0/8").expect("other");
        assert!(any.specificity() < loopback.specificity());
        assert!(loopback.specificity() < one.specificity());
        assert!(one.specificity() < HostAddress::UnixUid(0).specificity());
        assert!(any.overlaps(&one) && one.overlaps(&any) && loopback.overlaps(&one));
        assert!(!loopback.overlaps(&other) && !other.overlaps(&one));
        assert!(!one.overlaps(&HostAddress::UnixUid(0)));
        assert!(HostAddress::UnixUid(7).overlaps(&HostAddress::UnixUid(7)));
    }

    #[test]
    fn a_certificate_outranks_an_address() {
        let host = Host::from_record(&HostRecord {
            name: "h".into(),
            nbd_tls_subject: Some("CN=h".into()),
            iqn: None,
            nqn: None,
            addresses: vec!["127.0.0.0/8".into()],
            max_sessions: Some(2),
            chap: None,
        })
        .expect("host");
        assert!(host.matches(&peer_at("127.0.0.1")));
        let mut tls_peer = peer_at("127.0.0.1");
        tls_peer.tls_subject = Some("CN=other".into());
        assert!(
            !host.matches(&tls_peer),
            "an address must not stand in for a certificate"
        );
        tls_peer.tls_subject = Some("CN=h".into());
        assert!(host.matches(&tls_peer));
        // Sessions up to the record's limit, and back when dropped.
        let first = host.take_session().expect("first");
        let _second = host
            .clone()
            .take_session()
            .expect("a snapshot's copy counts too");
        assert_eq!(host.take_session().err(), Some(2));
        drop(first);
        assert!(host.take_session().is_ok());
    }
}
