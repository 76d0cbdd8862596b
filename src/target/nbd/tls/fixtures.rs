//! What the TLS unit tests share: a client certificate and its key (made for these tests only)
//! and a server loaded with them.

use super::{TlsFiles, TlsServer};
use std::path::{Path, PathBuf};

/// A self-signed certificate made with
/// `openssl req -new -x509 -key k.pem -subj "/O=sds test/CN=client1"`.
pub(super) const CLIENT1_PEM: &str = "-----BEGIN CERTIFICATE-----
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
/// The key of [`CLIENT1_PEM`] (made for these tests only).
pub(super) const CLIENT1_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg42KQ2qKgC6/SOCud
QcL7JKc4nvXpyfAMXb1TBnWebSWhRANCAARFV4tujQ6R0rCblzxxKFADKmtmYM/H
xBkL3KyUkzFEwzGE6Z+dC52+VddItEel5CYsdLyIxpaiVOaKTbhD5o8P
-----END PRIVATE KEY-----
";

pub(super) fn test_server(dir: &Path) -> TlsServer {
    TlsServer::load(&TlsFiles {
        cert: write_file(dir, "cert.pem", CLIENT1_PEM),
        key: write_file(dir, "key.pem", CLIENT1_KEY_PEM),
        client_ca: None,
    })
    .expect("load")
}

pub(super) fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}
