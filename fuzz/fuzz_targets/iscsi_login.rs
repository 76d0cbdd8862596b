//! The whole iSCSI login (and, when it becomes one, the discovery session), driven by
//! arbitrary initiator bytes over an in-memory stream against a snapshot of two hosts: one
//! with CHAP credentials, one without, neither with a virtual path.
//!
//! Input: byte 0 caps how many bytes one `read` returns (0: no cap), byte 1 makes the Nth
//! `write` fail (0: never); the rest is what the initiator sends.
//! Checks: no panic; only a discovery session reaches full-feature phase (no host has a
//! virtual path), with a TSIH and the parameters this target allows; everything the target wrote during login frames as Login Responses.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::domain::host::Host;
use sds::domain::snapshot::{Published, Snapshot};
use sds::store::records::ChapRecord;
use sds::target::iscsi::discovery::{self, DiscoverySetup};
use sds::target::iscsi::login::{login, LoginSetup};
use sds::target::iscsi::params::{Offer, SessionType};
use sds::target::iscsi::pdu::TargetPdu;
use sds::target::iscsi::pdu_io::{read_pdu, Digests};
use sds::target::iscsi::registry::Registry;
use sds_fuzz::ClientStream;
use std::sync::Arc;

fn host(name: &str, iqn: &str, chap: Option<ChapRecord>) -> Host {
    Host {
        name: name.into(),
        tls_subject: None,
        iqn: Some(iqn.into()),
        nqn: None,
        chap: chap.map(Arc::new),
        addresses: Vec::new(),
        max_sessions: 4,
        sessions: Arc::default(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [read_cap, failing_write, initiator @ ..] = data else {
        return;
    };
    let published = Published::default();
    published.publish(Snapshot {
        hosts: vec![
            host(
                "a",
                "iqn.a",
                Some(ChapRecord {
                    user: "u".into(),
                    secret: "secret-secret".into(),
                    mutual_user: Some("t".into()),
                    mutual_secret: Some("mutual-secret".into()),
                }),
            ),
            host("b", "iqn.b", None),
        ],
        ..Snapshot::default()
    });
    let registry = Registry::new();
    let mut stream = ClientStream::new(initiator, *read_cap, *failing_write);
    let setup = LoginSetup {
        snapshot: published.load(),
        target_name: "iqn.2026-11.org.sds:fuzz",
        offer: Offer::default(),
        registry: &registry,
        peer: "fuzz".into(),
        reactor_load: None,
    };
    let outcome = login(&mut stream, &setup);
    // Whatever the login wrote is whole Login Responses (no digests during login).
    let mut written = stream.output.as_slice();
    while !written.is_empty() {
        let received = read_pdu(&mut written, Digests::default(), 1 << 24).expect("whole PDUs");
        assert!(matches!(
            TargetPdu::parse(&received.bhs),
            Ok(TargetPdu::Login(_))
        ));
    }
    let Ok(outcome) = outcome else {
        return;
    };
    assert_ne!(outcome.tsih, 0);
    // No host has a virtual path, so only a discovery session may log in.
    assert_eq!(outcome.session_type, SessionType::Discovery);
    assert_eq!(outcome.params.error_recovery_level, 0);
    assert!(outcome.params.first_burst_length <= outcome.params.max_burst_length);
    {
        let setup = DiscoverySetup {
            published: &published,
            target_name: "iqn.2026-11.org.sds:fuzz",
            portal: "127.0.0.1:3260".parse().expect("an address"),
        };
        let _ = discovery::serve(&mut stream, &outcome, &setup);
    }
});
