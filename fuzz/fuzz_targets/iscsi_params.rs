//! The login's key=value text and the operational negotiation (RFC 7143 §13): any bytes as
//! a text data segment, every pair offered to a normal and a discovery session.
//!
//! Checks: parsed keys and values stay within their limits; the negotiated parameters always
//! hold what this target allows (ErrorRecoveryLevel 0, one connection, FirstBurstLength at
//! most MaxBurstLength, both within the target's offer, lengths within RFC 7143's ranges).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::constants::{MAX_ISCSI_KEY_BYTES, MAX_ISCSI_VALUE_BYTES};
use sds::target::iscsi::params::{self, Negotiation, Offer, SessionType};

fuzz_target!(|data: &[u8]| {
    let Ok(pairs) = params::parse_text(data) else {
        return;
    };
    let offer = Offer::default();
    for session_type in [SessionType::Normal, SessionType::Discovery] {
        let mut negotiation = Negotiation::new(offer, session_type);
        for (key, value) in &pairs {
            assert!(!key.is_empty() && key.len() <= MAX_ISCSI_KEY_BYTES);
            assert!(value.len() <= MAX_ISCSI_VALUE_BYTES);
            if let Some(answer) = negotiation.answer(key, value) {
                if let Some(text) = answer.text() {
                    assert!(text.len() <= MAX_ISCSI_VALUE_BYTES);
                }
            }
        }
        let _ = negotiation.declarations();
        let result = negotiation.result;
        assert_eq!(result.error_recovery_level, 0);
        assert_eq!(result.max_connections, 1);
        assert!(result.first_burst_length <= result.max_burst_length);
        assert!(result.max_burst_length <= offer.max_burst_length);
        assert!(result.first_burst_length <= offer.first_burst_length);
        assert!(
            result.max_outstanding_r2t >= 1
                && result.max_outstanding_r2t <= offer.max_outstanding_r2t
        );
        assert!((512..(1 << 24)).contains(&result.max_xmit_data_segment_length));
        assert_eq!(
            result.max_recv_data_segment_length,
            offer.max_recv_data_segment_length
        );
        assert!(result.initial_r2t || !offer.initial_r2t);
        assert!(!result.immediate_data || offer.immediate_data);
    }
});
