//! The files `sds serve --tls-cert --tls-key --tls-client-ca` names, read and checked into the
//! rustls server configuration that every TLS handshake uses. Each file is read with a bound
//! ([`MAX_TLS_PEM_BYTES`]) and every error names the file at fault, so a mistake on the
//! command line is reported before the server listens.

use crate::constants::MAX_TLS_PEM_BYTES;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// The rustls server configuration the files make (loaded and checked; every error names the
/// file at fault): the server's chain and key, client certificates verified against the client
/// CA when there is one, and no session resumption.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
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
    let mut config = builder
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
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::nbd::tls::fixtures::{write_file, CLIENT1_PEM};

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
        let message = |files: &TlsFiles| match server_config(files) {
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
