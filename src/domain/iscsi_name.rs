//! iSCSI names of hosts (initiators), checked and normalised when an administrator gives one
//! (`host_create {iqn}`), so the name a login presents is matched against exactly one form.
//!
//! RFC 7143 §4.2.7 has three formats, all at most 223 bytes:
//! - `iqn.YYYY-MM.reversed.domain[:anything]` — a date the naming authority held the domain,
//!   the domain reversed, and an optional string the authority assigns;
//! - `eui.` and 16 hex digits (an EUI-64);
//! - `naa.` and 16 or 32 hex digits (a 64- or 128-bit NAA identifier).
//!
//! Names compare case-insensitively (the RFC's stringprep profile, RFC 3722, maps them to
//! lower case), so they are stored lower-cased: `IQN.2001-04.COM.Example:Disk` is recorded as
//! `iqn.2001-04.com.example:disk`. Past the ASCII letters, digits, '-', '.' and ':' a
//! normalised name may hold, the profile allows other Unicode; this server accepts only ASCII
//! names, which is what every initiator it knows sends.

use super::naming_authority::{self, AuthorityError};
use crate::constants::MAX_ISCSI_NAME_BYTES;

/// Why a text is not an iSCSI name. The message says what the administrator should fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IscsiNameError {
    #[error("{0:?} is empty or longer than {MAX_ISCSI_NAME_BYTES} bytes")]
    Length(String),
    #[error(
        "{0:?} is not an iSCSI name: it starts with iqn., eui. or naa. \
         (iqn.YYYY-MM.reversed.domain[:id], eui.<16 hex digits>, naa.<16 or 32 hex digits>)"
    )]
    Format(String),
    #[error("{0:?}: an iqn. name goes on with a date YYYY-MM (month 01 to 12) and a '.'")]
    Date(String),
    #[error(
        "{0:?}: an iqn. name's naming authority is a reversed domain name of labels of \
         letters, digits and '-' separated by '.' (e.g. com.example)"
    )]
    Authority(String),
    #[error("{0:?}: an iSCSI name holds only letters, digits, '-', '.' and ':'")]
    Character(String),
    #[error("{0:?}: an eui. name is eui. and 16 hex digits")]
    Eui(String),
    #[error("{0:?}: an naa. name is naa. and 16 or 32 hex digits")]
    Naa(String),
}

/// The normalised (lower-case) form of `text` if it is an iSCSI name.
pub fn normalize(text: &str) -> Result<String, IscsiNameError> {
    if text.is_empty() || text.len() > MAX_ISCSI_NAME_BYTES {
        return Err(IscsiNameError::Length(text.to_string()));
    }
    let name = text.to_ascii_lowercase();
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b':'))
    {
        return Err(IscsiNameError::Character(text.to_string()));
    }
    if let Some(rest) = name.strip_prefix("iqn.") {
        check_iqn(text, rest)?;
    } else if let Some(hex) = name.strip_prefix("eui.") {
        if !(hex.len() == 16 && is_hex(hex)) {
            return Err(IscsiNameError::Eui(text.to_string()));
        }
    } else if let Some(hex) = name.strip_prefix("naa.") {
        if !((hex.len() == 16 || hex.len() == 32) && is_hex(hex)) {
            return Err(IscsiNameError::Naa(text.to_string()));
        }
    } else {
        return Err(IscsiNameError::Format(text.to_string()));
    }
    Ok(name)
}

fn is_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `rest` is what follows `iqn.`: `YYYY-MM.authority[:anything]`.
fn check_iqn(text: &str, rest: &str) -> Result<(), IscsiNameError> {
    naming_authority::check(rest).map_err(|error| match error {
        AuthorityError::Date => IscsiNameError::Date(text.to_string()),
        AuthorityError::Authority => IscsiNameError::Authority(text.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_are_lower_cased() {
        for (given, stored) in [
            ("iqn.2001-04.com.example", "iqn.2001-04.com.example"),
            (
                "IQN.2001-04.com.Example:Storage.Disk2.sys1.xyz",
                "iqn.2001-04.com.example:storage.disk2.sys1.xyz",
            ),
            (
                "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test",
                "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test",
            ),
            (
                "iqn.1993-08.org.debian:01:5f3a9c",
                "iqn.1993-08.org.debian:01:5f3a9c",
            ),
            ("iqn.2019-04.org.fio:fio", "iqn.2019-04.org.fio:fio"),
            ("eui.02004567A425678D", "eui.02004567a425678d"),
            ("naa.52004567BA64678D", "naa.52004567ba64678d"),
            (
                "naa.62004567BA64678D0123456789ABCDEF",
                "naa.62004567ba64678d0123456789abcdef",
            ),
        ] {
            assert_eq!(normalize(given).as_deref(), Ok(stored), "{given}");
        }
    }

    #[test]
    fn invalid_names_say_why() {
        let too_long = format!(
            "iqn.2001-04.com.example:{}",
            "a".repeat(MAX_ISCSI_NAME_BYTES)
        );
        for (given, kind) in [
            ("", "length"),
            (too_long.as_str(), "length"),
            ("host1", "format"),
            ("iqn", "format"),
            ("iqn.", "date"),
            ("iqn.2001-4.com.example", "date"),
            ("iqn.2001-13.com.example", "date"),
            ("iqn.2001-00.com.example", "date"),
            ("iqn.01-04.com.example", "date"),
            ("iqn.2001-04", "date"),
            ("iqn.2001-04com.example", "date"),
            ("iqn.2001-04.", "authority"),
            ("iqn.2001-04.:x", "authority"),
            ("iqn.2001-04.com..example", "authority"),
            ("iqn.2001-04.-com.example", "authority"),
            ("iqn.2001-04.com.example host", "character"),
            ("iqn.2001-04.com.example:a_b", "character"),
            ("iqn.2001-04.com.exämple", "character"),
            ("eui.02004567A425678", "eui"),
            ("eui.02004567A425678G", "eui"),
            ("naa.52004567BA64678D01", "naa"),
            ("naa.", "naa"),
        ] {
            let error = normalize(given).expect_err(given);
            let got = match error {
                IscsiNameError::Length(_) => "length",
                IscsiNameError::Format(_) => "format",
                IscsiNameError::Date(_) => "date",
                IscsiNameError::Authority(_) => "authority",
                IscsiNameError::Character(_) => "character",
                IscsiNameError::Eui(_) => "eui",
                IscsiNameError::Naa(_) => "naa",
            };
            assert_eq!(got, kind, "{given}: {error}");
        }
    }
}
