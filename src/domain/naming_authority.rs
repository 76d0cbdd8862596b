//! The dated naming authority that iSCSI qualified names (`iqn.`, RFC 7143 §4.2.7.1) and NVMe
//! qualified names (`nqn.`, NVMe base specification §4.5) both carry after their prefix:
//! `YYYY-MM.reversed.domain[:anything the authority chooses]`, a year and month (01-12), then
//! the domain's labels (letters, digits, inner '-'), up to the first ':'.

/// What is wrong with the part after `iqn.` or `nqn.`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorityError {
    /// Not `YYYY-MM.` with a month from 01 to 12.
    Date,
    /// A domain label that is empty, or holds something other than letters, digits and inner
    /// '-'.
    Authority,
}

/// Checks `rest`, what follows the `iqn.` or `nqn.` prefix.
pub fn check(rest: &str) -> Result<(), AuthorityError> {
    let (date, after) = rest.split_at_checked(7).ok_or(AuthorityError::Date)?;
    let date = date.as_bytes();
    let month = std::str::from_utf8(&date[5..7])
        .ok()
        .filter(|m| m.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|m| m.parse::<u8>().ok());
    if !(date[..4].iter().all(u8::is_ascii_digit)
        && date[4] == b'-'
        && month.is_some_and(|m| (1..=12).contains(&m)))
    {
        return Err(AuthorityError::Date);
    }
    let authority = after.strip_prefix('.').ok_or(AuthorityError::Date)?;
    // The authority ends at the first ':'; what follows is the authority's own and may hold
    // anything a name may (checked by the caller), including further ':'.
    let authority = authority.split(':').next().unwrap_or_default();
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !authority.split('.').all(label_ok) {
        return Err(AuthorityError::Authority);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_domains() {
        assert_eq!(check("2026-11.org.sds:x:y"), Ok(()));
        assert_eq!(check("2014-08.org.nvmexpress"), Ok(()));
        assert_eq!(check("2026-13.org.sds"), Err(AuthorityError::Date));
        assert_eq!(check("2026-+1.org.sds"), Err(AuthorityError::Date));
        assert_eq!(check("2026-11org.sds"), Err(AuthorityError::Date));
        assert_eq!(check("2026-1"), Err(AuthorityError::Date));
        assert_eq!(check("2026-11.org..sds"), Err(AuthorityError::Authority));
        assert_eq!(check("2026-11.-org.sds"), Err(AuthorityError::Authority));
        assert_eq!(check("2026-11.org_x.sds"), Err(AuthorityError::Authority));
    }
}
