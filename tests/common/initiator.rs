//! A small blocking iSCSI initiator for tests that need what libiscsi's tools and qemu-io do
//! not give: a session kept open across administrative changes (a resize, a deleted path),
//! sense data read byte by byte, and raw PDUs a real initiator would never send. It logs in
//! with one operational-stage request (no CHAP), ImmediateData=No and InitialR2T=Yes so that
//! every write waits for its R2T, and runs one command at a time.

use sds::target::iscsi::params;
use sds::target::iscsi::pdu::{
    self, stage, DataOut, LoginRequest, ScsiCommand, TargetPdu, BHS_BYTES,
};
use sds::target::iscsi::pdu_io::{read_pdu, write_pdu, Digests, PduIoError, Received};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What the test initiator accepts in one data segment (declared at login).
pub const TEST_MAX_RECV_DATA_SEGMENT: u32 = 256 * 1024;

/// How long a test initiator waits for any one PDU before it gives up.
pub const TEST_PDU_TIMEOUT: Duration = Duration::from_secs(30);

/// SCSI status CHECK CONDITION.
pub const CHECK_CONDITION: u8 = 0x02;
/// SCSI status GOOD.
pub const GOOD: u8 = 0x00;

/// The outcome of one SCSI command.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u8,
    /// Fixed- or descriptor-format sense data (without the two-byte length), empty if none.
    pub sense: Vec<u8>,
    /// Data-In, in buffer order.
    pub data: Vec<u8>,
}

impl Outcome {
    /// (sense key, ASC, ASCQ), from fixed (0x70/0x71) or descriptor (0x72/0x73) sense.
    pub fn sense_triple(&self) -> Option<(u8, u8, u8)> {
        let s = &self.sense;
        match s.first().map(|b| b & 0x7f) {
            Some(0x70 | 0x71) if s.len() >= 14 => Some((s[2] & 0x0f, s[12], s[13])),
            Some(0x72 | 0x73) if s.len() >= 4 => Some((s[1] & 0x0f, s[2], s[3])),
            _ => None,
        }
    }
}

/// Why a command or login did not come back with an answer.
#[derive(Debug)]
pub enum InitiatorError {
    /// The connection ended (closed or reset).
    Connection(String),
    /// Nothing came within the time allowed.
    TimedOut,
    /// The target refused the login with this status class and detail.
    Refused(u8, u8),
    /// The target answered something this initiator does not expect.
    Unexpected(String),
}

/// One logged-in session on one connection.
pub struct Initiator {
    pub stream: TcpStream,
    pub digests: Digests,
    cmd_sn: u32,
    exp_stat_sn: u32,
    next_itt: u32,
    /// The target's MaxRecvDataSegmentLength: the most one Data-Out may carry.
    max_xmit: u32,
}

fn connection(error: impl std::fmt::Debug) -> InitiatorError {
    InitiatorError::Connection(format!("{error:?}"))
}

/// A failed PDU read or write: a read timeout is [`InitiatorError::TimedOut`].
fn pdu_io(error: PduIoError) -> InitiatorError {
    match &error {
        PduIoError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            InitiatorError::TimedOut
        }
        _ => connection(error),
    }
}

impl Initiator {
    /// Logs `initiator` in to `target` at 127.0.0.1:`port`; `digests` are asked for (CRC32C)
    /// and required.
    pub fn login(
        port: u16,
        initiator: &str,
        target: &str,
        digests: Digests,
    ) -> Result<Self, InitiatorError> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(connection)?;
        stream
            .set_read_timeout(Some(TEST_PDU_TIMEOUT))
            .map_err(connection)?;
        let _ = stream.set_nodelay(true);
        let digest = |on: bool| if on { "CRC32C" } else { "None" };
        let max_recv = TEST_MAX_RECV_DATA_SEGMENT.to_string();
        let pairs: Vec<(&str, &str)> = vec![
            ("InitiatorName", initiator),
            ("TargetName", target),
            ("SessionType", "Normal"),
            ("HeaderDigest", digest(digests.header)),
            ("DataDigest", digest(digests.data)),
            ("ImmediateData", "No"),
            ("InitialR2T", "Yes"),
            ("MaxRecvDataSegmentLength", &max_recv),
            ("ErrorRecoveryLevel", "0"),
            ("MaxConnections", "1"),
        ];
        let mut data = Vec::new();
        for (key, value) in &pairs {
            params::push_pair(&mut data, key, value);
        }
        let mut max_xmit = 8192;
        let mut tsih = 0;
        let mut exp_stat_sn = 0;
        // Keep answering (with nothing new) until the target moves to full feature.
        for round in 0..8 {
            let request = LoginRequest {
                transit: true,
                continue_: false,
                current_stage: stage::OPERATIONAL,
                next_stage: stage::FULL_FEATURE,
                version_max: 0,
                version_min: 0,
                data_segment_length: data.len() as u32,
                isid: [0x40, 0, 0, 0x7e, 0x57, 0],
                tsih,
                initiator_task_tag: round,
                cid: 0,
                cmd_sn: 1,
                exp_stat_sn,
            };
            let mut bhs = [0u8; BHS_BYTES];
            pdu::write_login_request(&request, &mut bhs);
            write_pdu(&mut stream, &bhs, &data, Digests::default()).map_err(connection)?;
            let reply = read_pdu(&mut stream, Digests::default(), 1 << 20).map_err(connection)?;
            let Ok(TargetPdu::Login(response)) = TargetPdu::parse(&reply.bhs) else {
                return Err(InitiatorError::Unexpected("not a Login Response".into()));
            };
            if response.status_class != 0 {
                return Err(InitiatorError::Refused(
                    response.status_class,
                    response.status_detail,
                ));
            }
            tsih = response.tsih;
            exp_stat_sn = response.sequence.stat_sn.wrapping_add(1);
            if let Ok(keys) = params::parse_text(&reply.data) {
                for (key, value) in keys {
                    if key == "MaxRecvDataSegmentLength" {
                        if let Some(n) = params::parse_number(value) {
                            max_xmit = n as u32;
                        }
                    }
                }
            }
            data.clear();
            if response.transit && response.next_stage == stage::FULL_FEATURE {
                return Ok(Self {
                    stream,
                    digests,
                    cmd_sn: 1,
                    exp_stat_sn,
                    next_itt: 0x100,
                    max_xmit,
                });
            }
        }
        Err(InitiatorError::Unexpected(
            "the target never moved to full feature".into(),
        ))
    }

    /// The next CmdSN this session will use (tests that send raw PDUs take it from here).
    pub fn cmd_sn(&self) -> u32 {
        self.cmd_sn
    }

    /// The StatSN this session expects next.
    pub fn exp_stat_sn(&self) -> u32 {
        self.exp_stat_sn
    }

    /// Takes the next CmdSN and task tag for a raw command.
    pub fn take_sn_and_tag(&mut self) -> (u32, u32) {
        let sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.next_itt = self.next_itt.wrapping_add(1);
        (sn, self.next_itt)
    }

    /// Sends one raw PDU with this session's digests.
    pub fn send(&mut self, bhs: &[u8; BHS_BYTES], data: &[u8]) -> Result<(), InitiatorError> {
        write_pdu(&mut self.stream, bhs, data, self.digests).map_err(pdu_io)
    }

    /// Reads one PDU with this session's digests, answering the target's NOP-In pings.
    pub fn receive(&mut self) -> Result<Received, InitiatorError> {
        self.receive_within(TEST_PDU_TIMEOUT)
    }

    /// [`Initiator::receive`], giving up after `limit` in all (pings answered meanwhile do not
    /// extend it).
    pub fn receive_within(&mut self, limit: Duration) -> Result<Received, InitiatorError> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or(InitiatorError::TimedOut)?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(connection)?;
            let pdu = read_pdu(&mut self.stream, self.digests, 16 << 20).map_err(pdu_io)?;
            match TargetPdu::parse(&pdu.bhs) {
                Ok(TargetPdu::NopIn(nop)) if nop.target_transfer_tag != pdu::RESERVED_TAG => {
                    let reply = pdu::NopOut {
                        immediate: true,
                        data_segment_length: 0,
                        lun: nop.lun,
                        initiator_task_tag: pdu::RESERVED_TAG,
                        target_transfer_tag: nop.target_transfer_tag,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                    };
                    let mut bhs = [0u8; BHS_BYTES];
                    pdu::write_nop_out(&reply, &mut bhs);
                    self.send(&bhs, &[])?;
                }
                Ok(TargetPdu::AsyncMessage(_)) => {}
                _ => return Ok(pdu),
            }
        }
    }

    /// Runs one SCSI command on `lun`: `data_out` is written (after the target's R2Ts), up
    /// to `read_bytes` are read. Returns its status, sense and data.
    pub fn command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read_bytes: u32,
    ) -> Result<Outcome, InitiatorError> {
        self.command_with_data_sn(lun, cdb, data_out, read_bytes, |n| n)
    }

    /// [`Initiator::command`], numbering each burst's Data-Out PDUs `data_sn_of(n)` instead
    /// of `n` (0, 1, 2, …): a wrong DataSN, as a lost PDU would leave.
    pub fn command_with_data_sn(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read_bytes: u32,
        data_sn_of: impl Fn(u32) -> u32,
    ) -> Result<Outcome, InitiatorError> {
        let (cmd_sn, itt) = self.take_sn_and_tag();
        let mut cdb16 = [0u8; 16];
        cdb16[..cdb.len()].copy_from_slice(cdb);
        let write = !data_out.is_empty();
        let command = ScsiCommand {
            immediate: false,
            final_: true,
            read: read_bytes > 0,
            write,
            attributes: 1,
            ahs_bytes: 0,
            data_segment_length: 0,
            lun: lun_field(lun),
            initiator_task_tag: itt,
            expected_data_transfer_length: if write {
                data_out.len() as u32
            } else {
                read_bytes
            },
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: cdb16,
        };
        let mut bhs = [0u8; BHS_BYTES];
        pdu::write_scsi_command(&command, &mut bhs);
        self.send(&bhs, &[])?;
        let mut data = vec![0u8; read_bytes as usize];
        let mut received = 0usize;
        loop {
            let pdu = self.receive()?;
            match TargetPdu::parse(&pdu.bhs) {
                Ok(TargetPdu::ReadyToTransfer(r2t)) if r2t.initiator_task_tag == itt => {
                    let start = r2t.buffer_offset as usize;
                    let end =
                        (start + r2t.desired_data_transfer_length as usize).min(data_out.len());
                    let mut offset = start;
                    let mut data_sn = 0;
                    while offset < end {
                        let piece = (end - offset).min(self.max_xmit as usize);
                        let out = DataOut {
                            final_: offset + piece == end,
                            data_segment_length: piece as u32,
                            lun: lun_field(lun),
                            initiator_task_tag: itt,
                            target_transfer_tag: r2t.target_transfer_tag,
                            exp_stat_sn: self.exp_stat_sn,
                            data_sn: data_sn_of(data_sn),
                            buffer_offset: offset as u32,
                        };
                        pdu::write_data_out(&out, &mut bhs);
                        self.send(&bhs, &data_out[offset..offset + piece])?;
                        offset += piece;
                        data_sn += 1;
                    }
                }
                Ok(TargetPdu::DataIn(data_in)) if data_in.initiator_task_tag == itt => {
                    let at = data_in.buffer_offset as usize;
                    let end = at + pdu.data.len();
                    if end > data.len() {
                        return Err(InitiatorError::Unexpected(format!(
                            "Data-In past the expected length: {at}+{}",
                            pdu.data.len()
                        )));
                    }
                    data[at..end].copy_from_slice(&pdu.data);
                    received = received.max(end);
                    if let Some(status) = data_in.status {
                        self.exp_stat_sn = data_in.sequence.stat_sn.wrapping_add(1);
                        data.truncate(received);
                        return Ok(Outcome {
                            status,
                            sense: Vec::new(),
                            data,
                        });
                    }
                }
                Ok(TargetPdu::ScsiResponse(response)) if response.initiator_task_tag == itt => {
                    self.exp_stat_sn = response.sequence.stat_sn.wrapping_add(1);
                    let sense = if pdu.data.len() >= 2 {
                        let length = usize::from(u16::from_be_bytes([pdu.data[0], pdu.data[1]]));
                        pdu.data[2..(2 + length).min(pdu.data.len())].to_vec()
                    } else {
                        Vec::new()
                    };
                    data.truncate(received);
                    return Ok(Outcome {
                        status: response.status,
                        sense,
                        data,
                    });
                }
                other => {
                    return Err(InitiatorError::Unexpected(format!(
                        "{other:?} while waiting for task {itt:#x}"
                    )))
                }
            }
        }
    }

    /// READ(16) of `blocks` blocks of `block_bytes` at `lba`.
    pub fn read16(
        &mut self,
        lun: u64,
        lba: u64,
        blocks: u32,
        block_bytes: u32,
    ) -> Result<Outcome, InitiatorError> {
        self.command(lun, &rw16(0x88, lba, blocks), &[], blocks * block_bytes)
    }

    /// WRITE(16) of `data` (whole blocks) at `lba`.
    pub fn write16(
        &mut self,
        lun: u64,
        lba: u64,
        data: &[u8],
        block_bytes: u32,
    ) -> Result<Outcome, InitiatorError> {
        let blocks = (data.len() / block_bytes as usize) as u32;
        self.command(lun, &rw16(0x8a, lba, blocks), data, 0)
    }

    /// READ CAPACITY(16): (last LBA, block length), or the outcome if it was not GOOD.
    pub fn read_capacity16(
        &mut self,
        lun: u64,
    ) -> Result<Result<(u64, u32), Outcome>, InitiatorError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let outcome = self.command(lun, &cdb, &[], 32)?;
        if outcome.status != GOOD || outcome.data.len() < 12 {
            return Ok(Err(outcome));
        }
        let d = &outcome.data;
        let last = u64::from_be_bytes(d[0..8].try_into().expect("8 bytes"));
        let block = u32::from_be_bytes(d[8..12].try_into().expect("4 bytes"));
        Ok(Ok((last, block)))
    }

    /// TEST UNIT READY.
    pub fn test_unit_ready(&mut self, lun: u64) -> Result<Outcome, InitiatorError> {
        self.command(lun, &[0u8; 6], &[], 0)
    }
}

/// A READ(16) / WRITE(16) CDB.
pub fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

/// A LUN number in the BHS's LUN field (SAM flat or peripheral addressing).
pub fn lun_field(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}
