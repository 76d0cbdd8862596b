//! The address of a remote NBD export, as the NBD URI standard spells it: `nbd://HOST[:PORT]/EXPORT`
//! over TCP (port 10809 unless given; an IPv6 host in brackets) or
//! `nbd+unix:///EXPORT?socket=PATH` over a Unix socket. The export name is the path after the
//! first `/`, percent-decoded; an empty one names the server's default export. TLS schemes
//! (`nbds://`) are refused: the client does not speak TLS.

use std::fmt;
use std::path::PathBuf;

/// The port an `nbd://` URI means when it names none (IANA's NBD port).
pub const NBD_DEFAULT_PORT: u16 = 10809;

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdAddress {
    Tcp { host: String, port: u16 },
    Unix { path: PathBuf },
}

/// A parsed NBD URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUri {
    pub address: NbdAddress,
    pub export: String,
}

/// Why a URI is not one the client can use; the message names what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    #[error("{0:?}: the scheme must be nbd:// or nbd+unix:// (TLS schemes are not supported)")]
    Scheme(String),
    #[error("{0:?}: no host")]
    NoHost(String),
    #[error("{0:?}: the port is not a number from 1 to 65535")]
    Port(String),
    #[error("{0:?}: an nbd+unix URI has no host and needs ?socket=PATH")]
    UnixSocket(String),
    #[error("{0:?}: {1}")]
    Malformed(String, &'static str),
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            NbdAddress::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{}", self.export)
            }
            NbdAddress::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{}", self.export),
            NbdAddress::Unix { path } => {
                write!(f, "nbd+unix:///{}?socket={}", self.export, path.display())
            }
        }
    }
}

/// Decodes `%XX` escapes; a malformed escape or a result that is not UTF-8 is an error.
fn percent_decode(text: &str, uri: &str) -> Result<String, UriError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| UriError::Malformed(uri.into(), "a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError::Malformed(uri.into(), "not UTF-8"))
}

/// Parses an NBD URI.
pub fn parse(uri: &str) -> Result<NbdUri, UriError> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| UriError::Scheme(uri.into()))?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, export) = match rest.split_once('/') {
        Some((authority, export)) => (authority, export),
        None => (rest, ""),
    };
    let export = percent_decode(export, uri)?;
    match scheme {
        "nbd" => {
            if query.is_some() {
                return Err(UriError::Malformed(uri.into(), "nbd:// takes no query"));
            }
            let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| UriError::Malformed(uri.into(), "an unclosed [ in the host"))?;
                let port = match after {
                    "" => None,
                    _ => Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| UriError::Port(uri.into()))?,
                    ),
                };
                (host, port)
            } else {
                match authority.split_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (authority, None),
                }
            };
            if host.is_empty() {
                return Err(UriError::NoHost(uri.into()));
            }
            let port = match port {
                None => NBD_DEFAULT_PORT,
                Some(port) => port
                    .parse::<u16>()
                    .ok()
                    .filter(|&port| port != 0)
                    .ok_or_else(|| UriError::Port(uri.into()))?,
            };
            Ok(NbdUri {
                address: NbdAddress::Tcp {
                    host: host.to_owned(),
                    port,
                },
                export,
            })
        }
        "nbd+unix" => {
            if !authority.is_empty() {
                return Err(UriError::UnixSocket(uri.into()));
            }
            let mut socket = None;
            for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("socket", path)) if !path.is_empty() => {
                        socket = Some(PathBuf::from(percent_decode(path, uri)?))
                    }
                    _ => {
                        return Err(UriError::Malformed(
                            uri.into(),
                            "an unknown query parameter",
                        ))
                    }
                }
            }
            let path = socket.ok_or_else(|| UriError::UnixSocket(uri.into()))?;
            Ok(NbdUri {
                address: NbdAddress::Unix { path },
                export,
            })
        }
        _ => Err(UriError::Scheme(uri.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, export: &str) -> NbdUri {
        NbdUri {
            address: NbdAddress::Tcp {
                host: host.into(),
                port,
            },
            export: export.into(),
        }
    }

    #[test]
    fn tcp_uris() {
        assert_eq!(parse("nbd://h:1234/vol"), Ok(tcp("h", 1234, "vol")));
        assert_eq!(parse("nbd://h/vol"), Ok(tcp("h", NBD_DEFAULT_PORT, "vol")));
        assert_eq!(parse("nbd://h"), Ok(tcp("h", NBD_DEFAULT_PORT, "")));
        assert_eq!(parse("nbd://h:9/"), Ok(tcp("h", 9, "")));
        assert_eq!(parse("nbd://[::1]:99/a%20b"), Ok(tcp("::1", 99, "a b")));
        assert_eq!(
            parse("nbd://[::1]/x/y"),
            Ok(tcp("::1", NBD_DEFAULT_PORT, "x/y"))
        );
    }

    #[test]
    fn unix_uris() {
        assert_eq!(
            parse("nbd+unix:///exp?socket=/run/nbd.sock"),
            Ok(NbdUri {
                address: NbdAddress::Unix {
                    path: "/run/nbd.sock".into()
                },
                export: "exp".into()
            })
        );
        assert_eq!(
            parse("nbd+unix://?socket=/s").map(|u| u.export),
            Ok(String::new())
        );
    }

    #[test]
    fn refused_uris() {
        assert!(matches!(parse("nbds://h/x"), Err(UriError::Scheme(_))));
        assert!(matches!(parse("iscsi://h/x"), Err(UriError::Scheme(_))));
        assert!(matches!(parse("h:10809"), Err(UriError::Scheme(_))));
        assert!(matches!(parse("nbd:///x"), Err(UriError::NoHost(_))));
        assert!(matches!(parse("nbd://h:0/x"), Err(UriError::Port(_))));
        assert!(matches!(parse("nbd://h:70000/x"), Err(UriError::Port(_))));
        assert!(matches!(parse("nbd://h:p/x"), Err(UriError::Port(_))));
        assert!(matches!(
            parse("nbd://[::1/x"),
            Err(UriError::Malformed(..))
        ));
        assert!(matches!(parse("nbd://h/%zz"), Err(UriError::Malformed(..))));
        assert!(matches!(
            parse("nbd+unix:///x"),
            Err(UriError::UnixSocket(_))
        ));
        assert!(matches!(
            parse("nbd+unix://host/x?socket=/s"),
            Err(UriError::UnixSocket(_))
        ));
        assert!(matches!(
            parse("nbd+unix:///x?sock=/s"),
            Err(UriError::Malformed(..))
        ));
    }

    #[test]
    fn displays_round_trip() {
        for text in ["nbd://h:1/v", "nbd://[::1]:2/v", "nbd+unix:///v?socket=/s"] {
            assert_eq!(parse(text).map(|u| u.to_string()).as_deref(), Ok(text));
        }
    }
}
