//! NVMe Qualified Names (NQNs, NVMe base specification 2.0 §4.5), checked when an
//! administrator gives a host's `nqn` or the subsystem NQN base, so that what a Connect
//! presents is compared against a well-formed name.
//!
//! Two forms, both at most 223 bytes:
//! - `nqn.YYYY-MM.reversed.domain[:anything]`: a date the naming authority held the domain,
//!   the domain reversed, and a string the authority assigns;
//! - `nqn.2014-08.org.nvmexpress:uuid:` and a UUID in its 36-character text form.
//!
//! Unlike iSCSI names, NQNs compare byte for byte (the specification has no case folding), so
//! a name is stored exactly as given. The specification allows UTF-8; this server accepts
//! printable ASCII without spaces, which is what every initiator it knows sends.

use super::naming_authority::{self, AuthorityError};
use crate::constants::MAX_NQN_BYTES;

/// The NQN of the discovery controller (NVMe-oF 1.1 §5: the well-known discovery NQN).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// The prefix of the UUID form.
pub const UUID_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";

/// Why a text is not an NQN. The message says what the administrator should fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NqnError {
    #[error("{0:?} is empty or longer than {MAX_NQN_BYTES} bytes")]
    Length(String),
    #[error("{0:?}: an NQN holds printable ASCII characters without spaces")]
    Character(String),
    #[error(
        "{0:?} is not an NQN: it is nqn.YYYY-MM.reversed.domain[:id] or \
         nqn.2014-08.org.nvmexpress:uuid:<UUID>"
    )]
    Format(String),
    #[error("{0:?}: an NQN goes on after nqn. with a date YYYY-MM (month 01 to 12) and a '.'")]
    Date(String),
    #[error(
        "{0:?}: an NQN's naming authority is a reversed domain name of labels of letters, \
         digits and '-' separated by '.' (e.g. com.example)"
    )]
    Authority(String),
    #[error("{0:?}: the UUID form ends in a UUID as 8-4-4-4-12 hex digits")]
    Uuid(String),
}

/// Checks that `text` is an NQN.
pub fn validate(text: &str) -> Result<(), NqnError> {
    if text.is_empty() || text.len() > MAX_NQN_BYTES {
        return Err(NqnError::Length(text.to_string()));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(NqnError::Character(text.to_string()));
    }
    if let Some(uuid) = text.strip_prefix(UUID_PREFIX) {
        return if is_uuid(uuid) {
            Ok(())
        } else {
            Err(NqnError::Uuid(text.to_string()))
        };
    }
    let rest = text
        .strip_prefix("nqn.")
        .ok_or_else(|| NqnError::Format(text.to_string()))?;
    naming_authority::check(rest).map_err(|error| match error {
        AuthorityError::Date => NqnError::Date(text.to_string()),
        AuthorityError::Authority => NqnError::Authority(text.to_string()),
    })
}

/// 8-4-4-4-12 hex digits.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_initiators_send_are_valid() {
        for name in [
            DISCOVERY_NQN,
            "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "nqn.2026-11.org.sds:node1:host-a",
            "nqn.2016-06.io.spdk:cnode1",
            "nqn.2014-08.com.example:nvme:nvm-subsystem-sn-d78432",
        ] {
            assert_eq!(validate(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn invalid_names_say_why() {
        let too_long = format!("nqn.2014-08.com.example:{}", "a".repeat(MAX_NQN_BYTES));
        for (given, kind) in [
            ("", "length"),
            (too_long.as_str(), "length"),
            ("nqn.2014-08.com.example:a b", "character"),
            ("iqn.2014-08.com.example", "format"),
            ("nqn.14-08.com.example", "date"),
            ("nqn.2014-13.com.example", "date"),
            ("nqn.2014-08com.example", "date"),
            ("nqn.2014-08.:x", "authority"),
            ("nqn.2014-08.com..example", "authority"),
            ("nqn.2014-08.org.nvmexpress:uuid:1234", "uuid"),
            (
                "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bfz",
                "uuid",
            ),
        ] {
            let got = match validate(given).expect_err(given) {
                NqnError::Length(_) => "length",
                NqnError::Character(_) => "character",
                NqnError::Format(_) => "format",
                NqnError::Date(_) => "date",
                NqnError::Authority(_) => "authority",
                NqnError::Uuid(_) => "uuid",
            };
            assert_eq!(got, kind, "{given}");
        }
    }
}
