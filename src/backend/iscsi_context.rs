//! The owned libiscsi context: the one safe handle on `sds_sys`'s iSCSI initiator bindings.
//!
//! ```text
//!   IscsiContext::new(initiator_iqn) ──▶ set_* (target, alias, session type, digest, CHAP,
//!                                               timeout, auto-reconnect)
//!                                      ──▶ fd() / which_events()   (for the reactor's poll)
//!                                      ──▶ Drop: iscsi_destroy_context (closes the socket,
//!                                               frees every queued PDU)
//! ```
//!
//! An [`IscsiContext`] owns one `struct iscsi_context` from creation to destruction. Its
//! setters copy Rust strings into libiscsi through C strings, refusing a string libiscsi would
//! truncate ([`MAX_ISCSI_STRING_BYTES`]) or could not take (an inner NUL). A libiscsi call that
//! fails reports the context's own error text ([`IscsiContextError::Refused`]).
//!
//! The remote iSCSI LUN driver (`backend::iscsi`) owns one `IscsiContext` per connection and
//! drives it through [`IscsiContext::raw`] (the asynchronous connect, `iscsi_service` and the
//! SCSI tasks, each call with its own `// SAFETY:` note in `backend::iscsi::connection`). Only
//! the functions `sys/build.rs` allow-lists can be called.
//!
//! Threads: libiscsi contexts are not thread-safe, and a context's callbacks run on the thread
//! that calls `iscsi_service`. `IscsiContext` holds a raw pointer and is therefore neither
//! `Send` nor `Sync`: the reactor that creates a context is the only one that touches it.

use crate::constants::MAX_ISCSI_STRING_BYTES;
use std::ffi::{c_int, CStr, CString, NulError};
use std::ptr::NonNull;

/// What failed while creating or configuring a libiscsi context.
#[derive(Debug, thiserror::Error)]
pub enum IscsiContextError {
    /// A string handed to libiscsi holds a NUL byte, which a C string cannot carry.
    #[error("the iSCSI {field} contains a NUL byte")]
    InteriorNul {
        field: &'static str,
        #[source]
        source: NulError,
    },
    /// A string longer than libiscsi's fixed buffers, which would silently truncate it.
    #[error("the iSCSI {field} is {length_bytes} bytes, longer than {MAX_ISCSI_STRING_BYTES}")]
    TooLong {
        field: &'static str,
        length_bytes: usize,
    },
    /// A number libiscsi takes as a C `int` does not fit one.
    #[error("the iSCSI {field} {value} is out of range")]
    OutOfRange { field: &'static str, value: u64 },
    /// `iscsi_create_context` returned NULL (out of memory).
    #[error("libiscsi could not create a context")]
    CreateFailed,
    /// A libiscsi call returned an error; the cause is the context's error text.
    #[error("libiscsi refused {call}")]
    Refused {
        call: &'static str,
        #[source]
        source: LibiscsiMessage,
    },
}

/// libiscsi's own description of its last error (`iscsi_get_error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LibiscsiMessage(pub String);

/// iSCSI session type (RFC 7143 SessionType).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    /// A session that only lists targets (SendTargets).
    Discovery,
    /// A session that carries SCSI commands to one target.
    Normal,
}

/// Which header digests (CRC32C over each PDU header) the initiator offers, most preferred
/// first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderDigest {
    None,
    NoneThenCrc32c,
    Crc32cThenNone,
    Crc32c,
}

/// The parts of an `iscsi://[user[%password]@]host[:port]/target_iqn/lun` URL a LUN needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IscsiUrl {
    /// `host:port` as libiscsi connects to it.
    pub portal: String,
    pub target_iqn: String,
    pub lun: u32,
}

/// One owned libiscsi context. Not `Send`/`Sync` (see the module doc).
#[derive(Debug)]
pub struct IscsiContext {
    /// Never NULL; owned: destroyed exactly once, in `Drop`.
    raw: NonNull<sds_sys::iscsi_context>,
}

/// A Rust string as a C string libiscsi can keep without truncating it.
fn iscsi_string(field: &'static str, text: &str) -> Result<CString, IscsiContextError> {
    if text.len() > MAX_ISCSI_STRING_BYTES {
        return Err(IscsiContextError::TooLong {
            field,
            length_bytes: text.len(),
        });
    }
    CString::new(text).map_err(|source| IscsiContextError::InteriorNul { field, source })
}

impl IscsiContext {
    /// Creates a context that logs in as `initiator_iqn`.
    pub fn new(initiator_iqn: &str) -> Result<Self, IscsiContextError> {
        let initiator = iscsi_string("initiator name", initiator_iqn)?;
        // SAFETY: `initiator` is a valid NUL-terminated string that outlives the call;
        // libiscsi copies it into the new context.
        let raw = unsafe { sds_sys::iscsi_create_context(initiator.as_ptr()) };
        let raw = NonNull::new(raw).ok_or(IscsiContextError::CreateFailed)?;
        Ok(Self { raw })
    }

    fn as_ptr(&self) -> *mut sds_sys::iscsi_context {
        self.raw.as_ptr()
    }

    /// The raw context, for the calls of the driver's connection (`backend::iscsi`). Valid
    /// while `self` lives; never to be destroyed by the caller.
    pub fn raw(&mut self) -> *mut sds_sys::iscsi_context {
        self.raw.as_ptr()
    }

    /// libiscsi's text for the last error on this context ("" when there was none).
    pub fn last_error(&self) -> LibiscsiMessage {
        // SAFETY: the context is live (owned by `self`); libiscsi returns a pointer to a
        // NUL-terminated buffer inside the context, valid until the next call on it, and the
        // text is copied out before `self` can be used again.
        let text = unsafe { sds_sys::iscsi_get_error(self.as_ptr()) };
        if text.is_null() {
            return LibiscsiMessage(String::new());
        }
        // SAFETY: `text` is non-NULL and NUL-terminated (see above).
        let text = unsafe { CStr::from_ptr(text) };
        LibiscsiMessage(text.to_string_lossy().into_owned())
    }

    /// Maps a libiscsi status (0 success, negative failure) to a result.
    fn check(&self, call: &'static str, status: c_int) -> Result<(), IscsiContextError> {
        if status == 0 {
            return Ok(());
        }
        Err(IscsiContextError::Refused {
            call,
            source: self.last_error(),
        })
    }

    /// Sets the IQN of the target to log in to (before login).
    pub fn set_target_name(&mut self, target_iqn: &str) -> Result<(), IscsiContextError> {
        let target = iscsi_string("target name", target_iqn)?;
        // SAFETY: the context is live and exclusively borrowed; `target` is NUL-terminated and
        // outlives the call, which copies it.
        let status = unsafe { sds_sys::iscsi_set_targetname(self.as_ptr(), target.as_ptr()) };
        self.check("iscsi_set_targetname", status)
    }

    /// Sets the initiator alias the target shows for this session (before login).
    pub fn set_alias(&mut self, alias: &str) -> Result<(), IscsiContextError> {
        let alias = iscsi_string("alias", alias)?;
        // SAFETY: as in `set_target_name`: live, exclusive context; string copied by the call.
        let status = unsafe { sds_sys::iscsi_set_alias(self.as_ptr(), alias.as_ptr()) };
        self.check("iscsi_set_alias", status)
    }

    /// Sets the session type (before login).
    pub fn set_session_type(&mut self, session_type: SessionType) -> Result<(), IscsiContextError> {
        let value = match session_type {
            SessionType::Discovery => sds_sys::iscsi_session_type::ISCSI_SESSION_DISCOVERY,
            SessionType::Normal => sds_sys::iscsi_session_type::ISCSI_SESSION_NORMAL,
        };
        // SAFETY: live, exclusive context; `value` is one of the enum's own values.
        let status = unsafe { sds_sys::iscsi_set_session_type(self.as_ptr(), value) };
        self.check("iscsi_set_session_type", status)
    }

    /// Sets which header digests the initiator offers (before login).
    pub fn set_header_digest(&mut self, digest: HeaderDigest) -> Result<(), IscsiContextError> {
        use sds_sys::iscsi_header_digest as raw;
        let value = match digest {
            HeaderDigest::None => raw::ISCSI_HEADER_DIGEST_NONE,
            HeaderDigest::NoneThenCrc32c => raw::ISCSI_HEADER_DIGEST_NONE_CRC32C,
            HeaderDigest::Crc32cThenNone => raw::ISCSI_HEADER_DIGEST_CRC32C_NONE,
            HeaderDigest::Crc32c => raw::ISCSI_HEADER_DIGEST_CRC32C,
        };
        // SAFETY: live, exclusive context; `value` is one of the enum's own values.
        let status = unsafe { sds_sys::iscsi_set_header_digest(self.as_ptr(), value) };
        self.check("iscsi_set_header_digest", status)
    }

    /// Sets the CHAP user and secret the initiator answers the target's challenge with.
    pub fn set_chap(&mut self, user: &str, secret: &str) -> Result<(), IscsiContextError> {
        let user = iscsi_string("CHAP user", user)?;
        let secret = iscsi_string("CHAP secret", secret)?;
        // SAFETY: live, exclusive context; both strings are NUL-terminated, outlive the call
        // and are copied by it.
        let status = unsafe {
            sds_sys::iscsi_set_initiator_username_pwd(self.as_ptr(), user.as_ptr(), secret.as_ptr())
        };
        self.check("iscsi_set_initiator_username_pwd", status)
    }

    /// Sets how long a command issued from now on may take before libiscsi fails it
    /// (0: no timeout, libiscsi's default).
    pub fn set_timeout_secs(&mut self, timeout_secs: u32) -> Result<(), IscsiContextError> {
        let value = c_int::try_from(timeout_secs).map_err(|_| IscsiContextError::OutOfRange {
            field: "timeout in seconds",
            value: u64::from(timeout_secs),
        })?;
        // SAFETY: live, exclusive context; any non-negative int is a valid timeout.
        let status = unsafe { sds_sys::iscsi_set_timeout(self.as_ptr(), value) };
        self.check("iscsi_set_timeout", status)
    }

    /// Turns libiscsi's own automatic reconnect on or off. The driver will turn it off and
    /// reconnect itself, with backoff, from the reactor.
    pub fn set_auto_reconnect(&mut self, enabled: bool) {
        // SAFETY: live, exclusive context; the flag takes 0 or 1.
        unsafe { sds_sys::iscsi_set_noautoreconnect(self.as_ptr(), c_int::from(!enabled)) }
    }

    /// The session's socket, or `None` before a connection is started.
    pub fn fd(&self) -> Option<c_int> {
        // SAFETY: live context; reading the fd changes nothing.
        let fd = unsafe { sds_sys::iscsi_get_fd(self.as_ptr()) };
        (fd >= 0).then_some(fd)
    }

    /// The poll events (`POLLIN`, `POLLOUT`) libiscsi waits for on [`fd`](Self::fd); 0 means
    /// wait at least 100 ms before asking again (a reconnect is backing off).
    pub fn which_events(&self) -> i16 {
        // SAFETY: live context; the call only inspects the context's state and queues.
        let events = unsafe { sds_sys::iscsi_which_events(self.as_ptr()) };
        // Poll events are a `short` in `struct pollfd`; libiscsi returns them as an int.
        i16::try_from(events).unwrap_or(0)
    }

    /// Parses an `iscsi://` URL with this context's parser (which also reports its error text
    /// on the context).
    pub fn parse_url(&mut self, url: &str) -> Result<IscsiUrl, IscsiContextError> {
        let url_text = CString::new(url).map_err(|source| IscsiContextError::InteriorNul {
            field: "URL",
            source,
        })?;
        // SAFETY: live, exclusive context; `url_text` is NUL-terminated and outlives the call.
        // The result is NULL or a URL this function owns and frees below.
        let parsed = unsafe { sds_sys::iscsi_parse_full_url(self.as_ptr(), url_text.as_ptr()) };
        let Some(parsed) = NonNull::new(parsed) else {
            return Err(IscsiContextError::Refused {
                call: "iscsi_parse_full_url",
                source: self.last_error(),
            });
        };
        // SAFETY: `parsed` is a valid, exclusively owned `struct iscsi_url` (non-NULL result of
        // the parser), read before it is destroyed below.
        let fields = unsafe { parsed.as_ref() };
        let text = |buffer: &[std::ffi::c_char]| {
            // Each buffer is NUL-terminated within its MAX_STRING_SIZE + 1 bytes (libiscsi
            // fills them with strncpy of at most MAX_STRING_SIZE bytes into a zeroed struct).
            let bytes: Vec<u8> = buffer.iter().map(|&byte| byte as u8).collect();
            CStr::from_bytes_until_nul(&bytes)
                .map(|text| text.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let url = IscsiUrl {
            portal: text(&fields.portal),
            target_iqn: text(&fields.target),
            lun: u32::try_from(fields.lun).unwrap_or(u32::MAX),
        };
        // SAFETY: `parsed` came from `iscsi_parse_full_url`, is destroyed once, and `fields`
        // is not used after this.
        unsafe { sds_sys::iscsi_destroy_url(parsed.as_ptr()) };
        Ok(url)
    }
}

impl Drop for IscsiContext {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `iscsi_create_context`, is owned by `self` alone and is
        // destroyed exactly once, here. Its return value is always 0 for a non-NULL context.
        unsafe { sds_sys::iscsi_destroy_context(self.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIATOR: &str = "iqn.2026-11.org.example:sds-test";

    #[test]
    #[cfg_attr(miri, ignore = "calls into libiscsi, native code Miri cannot run")]
    fn create_configure_destroy() {
        let mut context = IscsiContext::new(INITIATOR).expect("create");
        context
            .set_target_name("iqn.2026-11.org.example:array")
            .expect("target name");
        context.set_alias("sds-test").expect("alias");
        context
            .set_session_type(SessionType::Normal)
            .expect("session type");
        context
            .set_header_digest(HeaderDigest::NoneThenCrc32c)
            .expect("header digest");
        context
            .set_chap("user", "secret-of-12-bytes")
            .expect("chap");
        context.set_timeout_secs(30).expect("timeout");
        context.set_auto_reconnect(false);
        assert_eq!(context.fd(), None, "no socket before a connect");
        drop(context);

        // Many contexts in turn: creation and destruction leave nothing behind.
        for _ in 0..64 {
            let context = IscsiContext::new(INITIATOR).expect("create");
            assert_eq!(context.fd(), None);
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "calls into libiscsi, native code Miri cannot run")]
    fn parses_a_url() {
        let mut context = IscsiContext::new(INITIATOR).expect("create");
        let url = context
            .parse_url("iscsi://192.0.2.7:3261/iqn.2026-11.org.example:array/3")
            .expect("parse");
        assert_eq!(
            url,
            IscsiUrl {
                portal: "192.0.2.7:3261".to_string(),
                target_iqn: "iqn.2026-11.org.example:array".to_string(),
                lun: 3,
            }
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "calls into libiscsi, native code Miri cannot run")]
    fn a_bad_url_reports_libiscsi_error() {
        let mut context = IscsiContext::new(INITIATOR).expect("create");
        let error = context
            .parse_url("http://192.0.2.7/iqn.2026-11.org.example:array/0")
            .expect_err("not an iscsi URL");
        let IscsiContextError::Refused { call, source } = &error else {
            panic!("unexpected error {error:?}");
        };
        assert_eq!(*call, "iscsi_parse_full_url");
        assert!(!source.0.is_empty(), "libiscsi says why");
        assert_eq!(context.last_error(), *source);
    }

    #[test]
    #[cfg_attr(miri, ignore = "calls into libiscsi, native code Miri cannot run")]
    fn strings_libiscsi_cannot_take_are_refused() {
        let too_long = "i".repeat(MAX_ISCSI_STRING_BYTES + 1);
        assert!(matches!(
            IscsiContext::new(&too_long),
            Err(IscsiContextError::TooLong { length_bytes, .. })
                if length_bytes == MAX_ISCSI_STRING_BYTES + 1
        ));
        let mut context = IscsiContext::new(INITIATOR).expect("create");
        assert!(matches!(
            context.set_target_name("iqn\0x"),
            Err(IscsiContextError::InteriorNul { .. })
        ));
        assert!(matches!(
            context.set_timeout_secs(u32::MAX),
            Err(IscsiContextError::OutOfRange { .. })
        ));
        let exactly_max = "t".repeat(MAX_ISCSI_STRING_BYTES);
        context.set_target_name(&exactly_max).expect("at the bound");
    }
}
