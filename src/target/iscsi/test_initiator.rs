//! A minimal blocking initiator for the unit tests of the login and discovery state machines:
//! it sends Login and Text Requests with the text given and reads back the responses, over
//! one end of a socket pair whose other end runs the target's code on a thread.

use super::params;
use super::pdu::{
    self, stage, LoginRequest, LoginResponse, LogoutRequest, TargetPdu, TextRequest, RESERVED_TAG,
};
use super::pdu_io::{read_pdu, write_pdu, Digests};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub struct TestInitiator {
    pub stream: UnixStream,
    pub isid: [u8; 6],
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub itt: u32,
    pub digests: Digests,
}

/// A response and its text, as key/value pairs.
pub struct Reply {
    pub pdu: TargetPdu,
    pub data: Vec<u8>,
}

impl Reply {
    pub fn login(&self) -> LoginResponse {
        match self.pdu {
            TargetPdu::Login(response) => response,
            other => panic!("not a Login Response: {other:?}"),
        }
    }

    pub fn pairs(&self) -> Vec<(String, String)> {
        params::parse_text(&self.data)
            .expect("well-formed text")
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub fn value(&self, key: &str) -> Option<String> {
        self.pairs()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn status(&self) -> (u8, u8) {
        let login = self.login();
        (login.status_class, login.status_detail)
    }
}

fn text(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in pairs {
        params::push_pair(&mut out, key, value);
    }
    out
}

impl TestInitiator {
    pub fn new(stream: UnixStream) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            stream,
            isid: [0x40, 0, 0, 1, 0, 0],
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 0,
            digests: Digests::default(),
        }
    }

    pub fn read(&mut self) -> Reply {
        let received = read_pdu(&mut self.stream, self.digests, 1 << 20).expect("a response");
        let pdu = TargetPdu::parse(&received.bhs).expect("a target PDU");
        if let Some(stat_sn) = match pdu {
            TargetPdu::Login(r) => Some(r.sequence.stat_sn),
            TargetPdu::Text(r) => Some(r.sequence.stat_sn),
            TargetPdu::Logout(r) => Some(r.sequence.stat_sn),
            TargetPdu::NopIn(r) => Some(r.sequence.stat_sn),
            _ => None,
        } {
            self.exp_stat_sn = stat_sn.wrapping_add(1);
        }
        Reply {
            pdu,
            data: received.data,
        }
    }

    /// Sends one Login Request: stage `current`, transit to `next` when given.
    pub fn login(&mut self, current: u8, next: Option<u8>, pairs: &[(&str, &str)]) -> Reply {
        let data = text(pairs);
        let request = LoginRequest {
            transit: next.is_some(),
            continue_: false,
            current_stage: current,
            next_stage: next.unwrap_or(0),
            version_max: 0,
            version_min: 0,
            data_segment_length: data.len() as u32,
            isid: self.isid,
            tsih: 0,
            initiator_task_tag: self.itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        let mut bhs = [0u8; 48];
        pdu::write_login_request(&request, &mut bhs);
        write_pdu(&mut self.stream, &bhs, &data, Digests::default()).unwrap();
        self.read()
    }

    /// A whole login without authentication, security stage then operational then full
    /// feature.
    pub fn login_plain(&mut self, pairs: &[(&str, &str)]) -> Reply {
        let mut first = pairs.to_vec();
        first.push(("AuthMethod", "None"));
        let reply = self.login(stage::SECURITY, Some(stage::OPERATIONAL), &first);
        if reply.status() != (0, 0) {
            return reply;
        }
        self.login(
            stage::OPERATIONAL,
            Some(stage::FULL_FEATURE),
            &[("HeaderDigest", "None"), ("DataDigest", "None")],
        )
    }

    pub fn text(&mut self, pairs: &[(&str, &str)], ttt: u32) -> Reply {
        let data = text(pairs);
        self.itt += 1;
        let request = TextRequest {
            immediate: false,
            final_: true,
            continue_: false,
            data_segment_length: data.len() as u32,
            lun: 0,
            initiator_task_tag: self.itt,
            target_transfer_tag: ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.cmd_sn += 1;
        let mut bhs = [0u8; 48];
        pdu::write_text_request(&request, &mut bhs);
        write_pdu(&mut self.stream, &bhs, &data, self.digests).unwrap();
        self.read()
    }

    pub fn send_targets(&mut self) -> Reply {
        self.text(&[("SendTargets", "All")], RESERVED_TAG)
    }

    pub fn logout(&mut self) -> Reply {
        self.itt += 1;
        let request = LogoutRequest {
            immediate: true,
            reason: pdu::logout::CLOSE_SESSION,
            initiator_task_tag: self.itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        let mut bhs = [0u8; 48];
        pdu::write_logout_request(&request, &mut bhs);
        write_pdu(&mut self.stream, &bhs, &[], self.digests).unwrap();
        self.read()
    }
}
