//! NBD over TLS: the server's certificate, key and client CA (`sds serve --tls-cert --tls-key
//! --tls-client-ca`), the TLS handshake after NBD_OPT_STARTTLS, the client certificate's
//! subject as the name a host is known by, and the relay that carries a TLS connection's
//! transmission phase to a reactor. One file per part:
//!
//! ```text
//!  sds serve --tls-cert --tls-key [--tls-client-ca]
//!        │
//!        ▼
//!  config    files read and checked ──▶ rustls ServerConfig
//!        │
//!        ▼
//!  server    TlsServer (one, shared by every handshake thread)
//!              reserve() ─▶ TlsSlot: at most MAX_TLS_CONNECTIONS open at once
//!              accept()  ─▶ TLS handshake on the handshake thread, after NBD_OPT_STARTTLS
//!        │                    └─ client certificate ─▶ x509: its subject names the host
//!        ▼
//!  TlsStream ── the rest of the negotiation (NBD_OPT_GO …) in plaintext, by listener.rs
//!        │
//!        ▼
//!  relay     spawn_relay: a thread per connection, rustls ◀══▶ Unix socket pair ──▶ reactor
//! ```
//!
//! - [`config`]: [`TlsFiles`] and the rustls server configuration they make; every error
//!   names the file at fault.
//! - [`server`]: [`TlsServer`], the bound on TLS connections ([`TlsSlot`]) and the handshake
//!   ([`TlsServer::accept`] returns a [`TlsStream`]).
//! - [`relay`]: why and how a TLS connection's transmission phase reaches a reactor that knows
//!   nothing of TLS ([`spawn_relay`]).
//! - [`x509`]: the certificate subject's format, and the small DER walk that reads it.
//!
//! Callers (`listener.rs`, `serve.rs`, the CLI) use the names re-exported here.

pub mod config;
#[cfg(test)]
mod fixtures;
pub mod relay;
pub mod server;
pub mod x509;

pub use config::{TlsError, TlsFiles};
pub use relay::{spawn_relay, RelayError, TlsSocket};
pub use server::{TlsAcceptError, TlsServer, TlsSlot, TlsStream};
pub use x509::{format_name, subject_of_certificate, SubjectError};
