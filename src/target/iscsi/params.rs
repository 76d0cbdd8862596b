//! Login and text parameters (RFC 7143 §6 and §13): the `key=value` text format of Login and
//! Text data segments, and the negotiation of the operational keys into [`Negotiated`].
//!
//! Text is a sequence of `key=value` pairs each ended by a NUL byte. Keys are at most
//! [`MAX_ISCSI_KEY_BYTES`], values at most [`MAX_ISCSI_VALUE_BYTES`] (room for a CHAP
//! challenge in hex), a whole exchange at most [`MAX_ISCSI_TEXT_BYTES`] and
//! [`MAX_ISCSI_TEXT_PAIRS`] pairs; past any of them the text is malformed and the login fails.
//!
//! Negotiation follows each key's result function (§13): declarative keys
//! (MaxRecvDataSegmentLength) are each side's own; numerical keys take the minimum (or, for
//! DefaultTime2Wait, the maximum) of both offers; boolean keys take AND or OR; list keys take
//! the first of the initiator's values this target supports. This target's own offers are in
//! [`Offer`]. A key this target does not know is answered `NotUnderstood`, a key that has no
//! meaning for the session type `Irrelevant`, and a value out of range or of the wrong form
//! `Reject` (the login goes on with the default). Adding a key: its arm in
//! [`Negotiation::answer`], its field in [`Negotiated`].

use crate::constants::{
    ISCSI_FIRST_BURST_BYTES, ISCSI_MAX_BURST_BYTES, ISCSI_MAX_OUTSTANDING_R2T,
    ISCSI_MAX_RECV_DATA_SEGMENT_BYTES, MAX_ISCSI_KEY_BYTES, MAX_ISCSI_TEXT_BYTES,
    MAX_ISCSI_TEXT_PAIRS, MAX_ISCSI_VALUE_BYTES,
};

/// Why a text data segment could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text of {0} bytes, more than {MAX_ISCSI_TEXT_BYTES}")]
    TooLong(usize),
    #[error("more than {MAX_ISCSI_TEXT_PAIRS} key=value pairs")]
    TooManyPairs,
    #[error("a key=value pair without '='")]
    MissingEquals,
    #[error("an empty key")]
    EmptyKey,
    #[error("a key of {0} bytes, more than {MAX_ISCSI_KEY_BYTES}")]
    KeyTooLong(usize),
    #[error("key {key}: a value of {length} bytes, more than {MAX_ISCSI_VALUE_BYTES}")]
    ValueTooLong { key: String, length: usize },
    #[error("a key or value that is not UTF-8")]
    NotUtf8,
    #[error("key {0} has characters RFC 7143 does not allow in a key")]
    BadKey(String),
}

/// The pairs of a text data segment, in order. Empty entries (padding, a doubled NUL) are
/// skipped; a last pair without its NUL is taken as ended by the segment's end.
pub fn parse_text(data: &[u8]) -> Result<Vec<(&str, &str)>, TextError> {
    if data.len() > MAX_ISCSI_TEXT_BYTES {
        return Err(TextError::TooLong(data.len()));
    }
    let mut pairs = Vec::new();
    for entry in data.split(|&byte| byte == 0).filter(|e| !e.is_empty()) {
        if pairs.len() == MAX_ISCSI_TEXT_PAIRS {
            return Err(TextError::TooManyPairs);
        }
        let equals = entry
            .iter()
            .position(|&byte| byte == b'=')
            .ok_or(TextError::MissingEquals)?;
        let (key, value) = (&entry[..equals], &entry[equals + 1..]);
        if key.is_empty() {
            return Err(TextError::EmptyKey);
        }
        if key.len() > MAX_ISCSI_KEY_BYTES {
            return Err(TextError::KeyTooLong(key.len()));
        }
        let key = std::str::from_utf8(key).map_err(|_| TextError::NotUtf8)?;
        // §6.1: a key is letters, digits, '.', '-', '+', '@', '_'.
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-+@_".contains(&b))
        {
            return Err(TextError::BadKey(key.to_string()));
        }
        if value.len() > MAX_ISCSI_VALUE_BYTES {
            return Err(TextError::ValueTooLong {
                key: key.to_string(),
                length: value.len(),
            });
        }
        let value = std::str::from_utf8(value).map_err(|_| TextError::NotUtf8)?;
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// Appends `key=value\0` to `out`.
pub fn push_pair(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// Session types (§13.21).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// What this target offers for each negotiated key. The defaults are the server's; the
/// result of a login is the result function of this and the initiator's offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// What this target accepts in one PDU's data segment (declared to the initiator).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    /// Yes: the initiator may send data with the command, up to FirstBurstLength.
    pub immediate_data: bool,
    /// Yes: every Data-Out past the immediate data waits for an R2T (no unsolicited
    /// Data-Out PDUs), so a write's buffer is always the target's to ask for. OR: with Yes
    /// here the result is always Yes.
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub header_digest: bool,
    pub data_digest: bool,
}

impl Default for Offer {
    fn default() -> Self {
        Self {
            max_recv_data_segment_length: ISCSI_MAX_RECV_DATA_SEGMENT_BYTES,
            max_burst_length: ISCSI_MAX_BURST_BYTES,
            first_burst_length: ISCSI_FIRST_BURST_BYTES,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: ISCSI_MAX_OUTSTANDING_R2T,
            header_digest: true,
            data_digest: true,
        }
    }
}

/// The operational parameters a login settled (RFC 7143 §13), for the full-feature phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The largest data segment this target accepts (what it declared).
    pub max_recv_data_segment_length: u32,
    /// The largest data segment this target may send (what the initiator declared).
    pub max_xmit_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub header_digest: bool,
    pub data_digest: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
    pub max_connections: u32,
}

impl Negotiated {
    /// RFC 7143's defaults for every key neither side mentions, with this target's declared
    /// receive limit.
    pub fn defaults(offer: &Offer) -> Self {
        Self {
            max_recv_data_segment_length: offer.max_recv_data_segment_length,
            max_xmit_data_segment_length: 8192,
            max_burst_length: 262_144.min(offer.max_burst_length),
            first_burst_length: 65_536.min(offer.first_burst_length),
            immediate_data: offer.immediate_data,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            header_digest: false,
            data_digest: false,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
        }
    }

    /// The parameters by their RFC names, as `iscsi_get_sessions` shows them.
    pub fn named(&self) -> Vec<(&'static str, String)> {
        let yes_no = |b: bool| if b { "Yes" } else { "No" }.to_string();
        let digest = |b: bool| if b { "CRC32C" } else { "None" }.to_string();
        vec![
            (
                "MaxRecvDataSegmentLength",
                self.max_recv_data_segment_length.to_string(),
            ),
            (
                "MaxXmitDataSegmentLength",
                self.max_xmit_data_segment_length.to_string(),
            ),
            ("MaxBurstLength", self.max_burst_length.to_string()),
            ("FirstBurstLength", self.first_burst_length.to_string()),
            ("ImmediateData", yes_no(self.immediate_data)),
            ("InitialR2T", yes_no(self.initial_r2t)),
            ("MaxOutstandingR2T", self.max_outstanding_r2t.to_string()),
            ("DataPDUInOrder", yes_no(self.data_pdu_in_order)),
            ("DataSequenceInOrder", yes_no(self.data_sequence_in_order)),
            ("HeaderDigest", digest(self.header_digest)),
            ("DataDigest", digest(self.data_digest)),
            ("DefaultTime2Wait", self.default_time2wait.to_string()),
            ("DefaultTime2Retain", self.default_time2retain.to_string()),
            ("ErrorRecoveryLevel", self.error_recovery_level.to_string()),
            ("MaxConnections", self.max_connections.to_string()),
        ]
    }
}

/// The answer to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send `key=value`.
    Value(String),
    NotUnderstood,
    Irrelevant,
    Reject,
    /// Nothing to send (a declaration this target only takes note of).
    Silent,
}

impl Answer {
    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Value(value) => Some(value),
            Self::NotUnderstood => Some("NotUnderstood"),
            Self::Irrelevant => Some("Irrelevant"),
            Self::Reject => Some("Reject"),
            Self::Silent => None,
        }
    }
}

/// Parses a numerical value: decimal, or hex with `0x` (§6.1's numerical values).
pub fn parse_number(value: &str) -> Option<u64> {
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        if hex.is_empty() || hex.len() > 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    } else {
        if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        value.parse().ok()
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(value: bool) -> Answer {
    Answer::Value(if value { "Yes" } else { "No" }.to_string())
}

/// The operational negotiation of one login, key by key.
#[derive(Clone, Debug)]
pub struct Negotiation {
    offer: Offer,
    session_type: SessionType,
    pub result: Negotiated,
    /// Whether this target declared its MaxRecvDataSegmentLength yet.
    declared_recv_length: bool,
}

impl Negotiation {
    pub fn new(offer: Offer, session_type: SessionType) -> Self {
        Self {
            offer,
            session_type,
            result: Negotiated::defaults(&offer),
            declared_recv_length: false,
        }
    }

    pub fn session_type(&self) -> SessionType {
        self.session_type
    }

    /// Sets the session type once the initiator declared it (SessionType comes in the first
    /// login PDU, before any operational key).
    pub fn set_session_type(&mut self, session_type: SessionType) {
        self.session_type = session_type;
    }

    /// The answer to an operational key (§13); `None` when `key` is not one (a login or
    /// security key, which the login answers itself).
    pub fn answer(&mut self, key: &str, value: &str) -> Option<Answer> {
        let discovery = self.session_type == SessionType::Discovery;
        let normal_only = matches!(
            key,
            "MaxConnections"
                | "InitialR2T"
                | "ImmediateData"
                | "MaxBurstLength"
                | "FirstBurstLength"
                | "MaxOutstandingR2T"
                | "DataPDUInOrder"
                | "DataSequenceInOrder"
        );
        if discovery && normal_only {
            return Some(Answer::Irrelevant);
        }
        let result = &mut self.result;
        let answer = match key {
            "MaxRecvDataSegmentLength" => match number_in(value, 512, (1 << 24) - 1) {
                Some(length) => {
                    result.max_xmit_data_segment_length = length;
                    // Declared back once: ours, which the initiator sends within.
                    if self.declared_recv_length {
                        Answer::Silent
                    } else {
                        self.declared_recv_length = true;
                        Answer::Value(self.offer.max_recv_data_segment_length.to_string())
                    }
                }
                None => Answer::Reject,
            },
            "MaxBurstLength" => match number_in(value, 512, (1 << 24) - 1) {
                Some(length) => {
                    result.max_burst_length = length.min(self.offer.max_burst_length);
                    result.first_burst_length =
                        result.first_burst_length.min(result.max_burst_length);
                    Answer::Value(result.max_burst_length.to_string())
                }
                None => Answer::Reject,
            },
            "FirstBurstLength" => match number_in(value, 512, (1 << 24) - 1) {
                Some(length) => {
                    result.first_burst_length = length
                        .min(self.offer.first_burst_length)
                        .min(result.max_burst_length);
                    Answer::Value(result.first_burst_length.to_string())
                }
                None => Answer::Reject,
            },
            "MaxOutstandingR2T" => match number_in(value, 1, 65535) {
                Some(count) => {
                    result.max_outstanding_r2t = count.min(self.offer.max_outstanding_r2t);
                    Answer::Value(result.max_outstanding_r2t.to_string())
                }
                None => Answer::Reject,
            },
            "ErrorRecoveryLevel" => match number_in(value, 0, 2) {
                Some(_) => {
                    result.error_recovery_level = 0;
                    Answer::Value("0".into())
                }
                None => Answer::Reject,
            },
            "MaxConnections" => match number_in(value, 1, 65535) {
                Some(_) => {
                    result.max_connections = 1;
                    Answer::Value("1".into())
                }
                None => Answer::Reject,
            },
            "DefaultTime2Wait" => match number_in(value, 0, 3600) {
                Some(seconds) => {
                    // Max: the longer of the two waits (ours is the default, 2).
                    result.default_time2wait = seconds.max(2);
                    Answer::Value(result.default_time2wait.to_string())
                }
                None => Answer::Reject,
            },
            "DefaultTime2Retain" => match number_in(value, 0, 3600) {
                Some(_) => {
                    // Min with ours, 0: at ErrorRecoveryLevel 0 nothing is kept for a
                    // reconnection.
                    result.default_time2retain = 0;
                    Answer::Value("0".into())
                }
                None => Answer::Reject,
            },
            "ImmediateData" => match parse_bool(value) {
                Some(wanted) => {
                    result.immediate_data = wanted && self.offer.immediate_data;
                    yes_no(result.immediate_data)
                }
                None => Answer::Reject,
            },
            "InitialR2T" => match parse_bool(value) {
                Some(wanted) => {
                    result.initial_r2t = wanted || self.offer.initial_r2t;
                    yes_no(result.initial_r2t)
                }
                None => Answer::Reject,
            },
            "DataPDUInOrder" => match parse_bool(value) {
                Some(_) => {
                    result.data_pdu_in_order = true;
                    yes_no(true)
                }
                None => Answer::Reject,
            },
            "DataSequenceInOrder" => match parse_bool(value) {
                Some(_) => {
                    result.data_sequence_in_order = true;
                    yes_no(true)
                }
                None => Answer::Reject,
            },
            "HeaderDigest" => match choose_digest(value, self.offer.header_digest) {
                Some(crc) => {
                    result.header_digest = crc;
                    Answer::Value(if crc { "CRC32C" } else { "None" }.into())
                }
                None => Answer::Reject,
            },
            "DataDigest" => match choose_digest(value, self.offer.data_digest) {
                Some(crc) => {
                    result.data_digest = crc;
                    Answer::Value(if crc { "CRC32C" } else { "None" }.into())
                }
                None => Answer::Reject,
            },
            // Markers are gone from RFC 7143; older initiators still offer them.
            "IFMarker" | "OFMarker" => match parse_bool(value) {
                Some(_) => yes_no(false),
                None => Answer::Reject,
            },
            "IFMarkInt" | "OFMarkInt" => Answer::Irrelevant,
            _ => return None,
        };
        Some(answer)
    }

    /// What this target must still declare before the login ends, whether or not the
    /// initiator asked: its MaxRecvDataSegmentLength (§13.12), so the initiator never sends
    /// more than this target reads.
    pub fn declarations(&mut self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.declared_recv_length {
            self.declared_recv_length = true;
            out.push((
                "MaxRecvDataSegmentLength",
                self.offer.max_recv_data_segment_length.to_string(),
            ));
        }
        out
    }
}

fn number_in(value: &str, low: u32, high: u32) -> Option<u32> {
    let number = parse_number(value)?;
    (u64::from(low)..=u64::from(high))
        .contains(&number)
        .then_some(number as u32)
}

/// The first digest of the initiator's list this target supports; `None` when there is none
/// (or the list is malformed).
fn choose_digest(list: &str, crc_offered: bool) -> Option<bool> {
    list.split(',').find_map(|choice| match choice {
        "None" => Some(false),
        "CRC32C" if crc_offered => Some(true),
        _ => None,
    })
}

/// Whether `key` is one the login handles itself (the security and session keys), so the
/// operational negotiation must not answer NotUnderstood for it.
pub fn is_login_key(key: &str) -> bool {
    matches!(
        key,
        "InitiatorName"
            | "InitiatorAlias"
            | "TargetName"
            | "TargetAlias"
            | "TargetAddress"
            | "TargetPortalGroupTag"
            | "SessionType"
            | "AuthMethod"
    ) || key.starts_with("CHAP_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_parses_pairs_and_refuses_malformed() {
        let data = b"InitiatorName=iqn.2026-11.org.x:a\0SessionType=Normal\0\0\0";
        assert_eq!(
            parse_text(data).unwrap(),
            vec![
                ("InitiatorName", "iqn.2026-11.org.x:a"),
                ("SessionType", "Normal")
            ]
        );
        assert_eq!(parse_text(b"A=b").unwrap(), vec![("A", "b")]);
        assert_eq!(parse_text(b"A=\0").unwrap(), vec![("A", "")]);
        assert_eq!(parse_text(b"novalue\0"), Err(TextError::MissingEquals));
        assert_eq!(parse_text(b"=x\0"), Err(TextError::EmptyKey));
        assert_eq!(parse_text(b"a b=x\0"), Err(TextError::BadKey("a b".into())));
        let long_key = format!("{}=1\0", "K".repeat(MAX_ISCSI_KEY_BYTES + 1));
        assert_eq!(
            parse_text(long_key.as_bytes()),
            Err(TextError::KeyTooLong(MAX_ISCSI_KEY_BYTES + 1))
        );
        let long_value = format!("K={}\0", "v".repeat(MAX_ISCSI_VALUE_BYTES + 1));
        assert!(matches!(
            parse_text(long_value.as_bytes()),
            Err(TextError::ValueTooLong { .. })
        ));
        assert_eq!(parse_text(b"K=\xff\0"), Err(TextError::NotUtf8));
        let many: Vec<u8> = (0..=MAX_ISCSI_TEXT_PAIRS)
            .flat_map(|_| b"K=v\0".iter().copied())
            .collect();
        assert_eq!(parse_text(&many), Err(TextError::TooManyPairs));
        let huge = vec![b'a'; MAX_ISCSI_TEXT_BYTES + 1];
        assert_eq!(
            parse_text(&huge),
            Err(TextError::TooLong(MAX_ISCSI_TEXT_BYTES + 1))
        );
        let mut out = Vec::new();
        push_pair(&mut out, "A", "1");
        push_pair(&mut out, "B", "x,y");
        assert_eq!(out, b"A=1\0B=x,y\0");
    }

    #[test]
    fn numbers_in_decimal_and_hex() {
        assert_eq!(parse_number("8192"), Some(8192));
        assert_eq!(parse_number("0x2000"), Some(8192));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("12a"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }

    fn normal() -> Negotiation {
        Negotiation::new(Offer::default(), SessionType::Normal)
    }

    fn value(answer: Option<Answer>) -> String {
        answer.and_then(|a| a.text().map(str::to_string)).unwrap()
    }

    /// What libiscsi offers in its operational stage, and what comes back.
    #[test]
    fn a_libiscsi_offer_negotiates() {
        let mut n = normal();
        let offer = Offer::default();
        assert_eq!(value(n.answer("HeaderDigest", "None,CRC32C")), "None");
        assert_eq!(value(n.answer("DataDigest", "None")), "None");
        assert_eq!(value(n.answer("InitialR2T", "No")), "Yes");
        assert_eq!(value(n.answer("ImmediateData", "Yes")), "Yes");
        assert_eq!(
            value(n.answer("MaxBurstLength", "16776192")),
            offer.max_burst_length.min(16_776_192).to_string()
        );
        assert_eq!(
            value(n.answer("FirstBurstLength", "262144")),
            offer.first_burst_length.min(262_144).to_string()
        );
        assert_eq!(
            value(n.answer("MaxRecvDataSegmentLength", "262144")),
            offer.max_recv_data_segment_length.to_string()
        );
        assert_eq!(value(n.answer("MaxConnections", "1")), "1");
        assert_eq!(value(n.answer("ErrorRecoveryLevel", "2")), "0");
        assert_eq!(value(n.answer("DefaultTime2Wait", "0")), "2");
        assert_eq!(value(n.answer("DefaultTime2Retain", "20")), "0");
        assert_eq!(value(n.answer("MaxOutstandingR2T", "8")), {
            offer.max_outstanding_r2t.min(8).to_string()
        });
        assert_eq!(value(n.answer("DataPDUInOrder", "No")), "Yes");
        assert_eq!(value(n.answer("IFMarker", "No")), "No");
        assert_eq!(value(n.answer("OFMarkInt", "2048~8192")), "Irrelevant");
        // Declared already: nothing more to declare.
        assert!(n.declarations().is_empty());
        let result = n.result;
        assert_eq!(result.max_xmit_data_segment_length, 262_144);
        assert!(result.initial_r2t && result.immediate_data);
        assert!(!result.header_digest && !result.data_digest);
        assert!(result.first_burst_length <= result.max_burst_length);
        assert_eq!(result.error_recovery_level, 0);
    }

    #[test]
    fn digests_take_the_initiators_first_supported_choice() {
        let mut n = normal();
        assert_eq!(value(n.answer("HeaderDigest", "CRC32C,None")), "CRC32C");
        assert_eq!(value(n.answer("DataDigest", "CRC32C")), "CRC32C");
        assert!(n.result.header_digest && n.result.data_digest);
        assert_eq!(n.answer("DataDigest", "MD5"), Some(Answer::Reject));
        let mut plain = Negotiation::new(
            Offer {
                header_digest: false,
                ..Offer::default()
            },
            SessionType::Normal,
        );
        assert_eq!(value(plain.answer("HeaderDigest", "CRC32C,None")), "None");
        assert_eq!(plain.answer("HeaderDigest", "CRC32C"), Some(Answer::Reject));
    }

    #[test]
    fn bad_values_are_rejected_and_unknown_keys_not_understood() {
        let mut n = normal();
        assert_eq!(
            n.answer("MaxRecvDataSegmentLength", "100"),
            Some(Answer::Reject)
        );
        assert_eq!(
            n.answer("MaxBurstLength", "0x1000000"),
            Some(Answer::Reject)
        );
        assert_eq!(n.answer("ImmediateData", "yes"), Some(Answer::Reject));
        assert_eq!(n.answer("ErrorRecoveryLevel", "3"), Some(Answer::Reject));
        assert_eq!(n.answer("X-com.example.Foo", "1"), None);
        assert!(is_login_key("CHAP_A") && is_login_key("InitiatorName"));
        assert!(!is_login_key("X-com.example.Foo"));
        // Left at their defaults, and our receive limit still to declare.
        assert_eq!(n.result, Negotiated::defaults(&Offer::default()));
        assert_eq!(
            n.declarations(),
            vec![(
                "MaxRecvDataSegmentLength",
                ISCSI_MAX_RECV_DATA_SEGMENT_BYTES.to_string()
            )]
        );
        assert!(n.declarations().is_empty());
    }

    #[test]
    fn discovery_sessions_find_data_keys_irrelevant() {
        let mut n = Negotiation::new(Offer::default(), SessionType::Discovery);
        for key in ["MaxBurstLength", "InitialR2T", "MaxConnections"] {
            assert_eq!(n.answer(key, "1"), Some(Answer::Irrelevant), "{key}");
        }
        assert_eq!(value(n.answer("HeaderDigest", "None")), "None");
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let mut n = normal();
        n.answer("FirstBurstLength", "262144");
        n.answer("MaxBurstLength", "4096");
        assert_eq!(n.result.max_burst_length, 4096);
        assert_eq!(n.result.first_burst_length, 4096);
    }
}
