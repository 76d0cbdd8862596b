//! A small blocking NVMe/TCP initiator for the controller tests, built on `sds::nvmf` only
//! (the codec and the command vocabulary, no target code): ICReq/ICResp, Connect of an admin
//! or I/O queue with a host NQN and host identifier, Property Get/Set, and admin commands one
//! at a time, gathering the C2HData that comes before their response capsule; for the I/O
//! tests, [`NvmfConnection::exchange`] also answers R2Ts with H2CData and takes a C2HData
//! with SUCCESS as the answer, and raw bytes can be sent to see the target terminate.

use sds::nvmf::command::{
    Command, CommandBuilder, Completion, ADMIN_GET_LOG_PAGE, ADMIN_IDENTIFY, FCTYPE_CONNECT,
    FCTYPE_PROPERTY_GET, FCTYPE_PROPERTY_SET, IO_READ, IO_WRITE, SGL_DATA_BLOCK_OFFSET,
    SGL_TRANSPORT_DATA_BLOCK,
};
use sds::nvmf::pdu::{Direction, Header, IcReq, Negotiated};
use sds::nvmf::pdu_io::{read_pdu, write_pdu, PduIoError};
use sds::nvmf::status::Status;
use std::net::TcpStream;
use std::time::Duration;

/// How long the test initiator waits for any one PDU.
pub const PDU_TIMEOUT: Duration = Duration::from_secs(30);
/// What the initiator accepts in one PDU.
const MAX_DATA_BYTES: u32 = 1 << 20;
/// The discovery subsystem's NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// The CC value that enables a controller: IOCQES 4, IOSQES 6, EN.
pub const CC_ENABLE: u32 = (4 << 20) | (6 << 16) | 1;

/// One queue's connection.
pub struct NvmfConnection {
    pub stream: TcpStream,
    negotiated: Negotiated,
    buffer: Vec<u8>,
    scratch: Vec<u8>,
    next_cid: u16,
}

/// A command's answer: its completion and the data that came before it.
#[derive(Debug)]
pub struct Answer {
    pub completion: Completion,
    pub data: Vec<u8>,
}

impl Answer {
    pub fn status(&self) -> Status {
        self.completion.status
    }
}

/// Who connects.
#[derive(Clone, Debug)]
pub struct Identity {
    pub hostnqn: String,
    pub hostid: [u8; 16],
}

impl NvmfConnection {
    /// TCP connection and ICReq/ICResp, with the digests asked for.
    pub fn open(port: u16, digests: bool) -> Result<Self, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(PDU_TIMEOUT)).ok();
        stream.set_write_timeout(Some(PDU_TIMEOUT)).ok();
        stream.set_nodelay(true).ok();
        let mut connection = Self {
            stream,
            negotiated: Negotiated::initial(MAX_DATA_BYTES),
            buffer: Vec::new(),
            scratch: Vec::new(),
            next_cid: 1,
        };
        let icreq = Header::IcReq(IcReq {
            host_pda: 0,
            header_digest: digests,
            data_digest: digests,
            max_r2t: 0,
        });
        connection.send(&icreq, &[])?;
        let answer = read_pdu(
            &mut connection.stream,
            &mut connection.buffer,
            Direction::ControllerToHost,
            &connection.negotiated,
        )
        .map_err(|e| e.to_string())?;
        let Header::IcResp(icresp) = answer.header else {
            return Err(format!("not an ICResp: {:?}", answer.header));
        };
        connection.negotiated = Negotiated {
            header_digest: icresp.header_digest,
            data_digest: icresp.data_digest,
            host_pda: 0,
            controller_pda: icresp.controller_pda,
            max_data_bytes: MAX_DATA_BYTES,
        };
        Ok(connection)
    }

    fn send(&mut self, header: &Header, data: &[u8]) -> Result<(), String> {
        write_pdu(
            &mut self.stream,
            header,
            data,
            &self.negotiated,
            &mut self.scratch,
        )
        .map_err(|e| e.to_string())
    }

    pub fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1);
        self.next_cid
    }

    /// Connect: `qid` 0 for an admin queue (CNTLID FFFFh), else an I/O queue of `cntlid`.
    pub fn connect(
        &mut self,
        identity: &Identity,
        subnqn: &str,
        qid: u16,
        cntlid: u16,
        kato_ms: u32,
    ) -> Result<Answer, String> {
        let mut data = [0u8; 1024];
        data[..16].copy_from_slice(&identity.hostid);
        data[16..18].copy_from_slice(&cntlid.to_le_bytes());
        data[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
        data[512..512 + identity.hostnqn.len()].copy_from_slice(identity.hostnqn.as_bytes());
        let sqsize: u16 = if qid == 0 { 31 } else { 63 };
        let cid = self.cid();
        let command = CommandBuilder::fabrics(FCTYPE_CONNECT, cid)
            .bytes_at(42, &qid.to_le_bytes())
            .bytes_at(44, &sqsize.to_le_bytes())
            .bytes_at(48, &kato_ms.to_le_bytes())
            .sgl(0, 1024, SGL_DATA_BLOCK_OFFSET)
            .build();
        self.command(command, &data)
    }

    /// An admin queue of `subnqn`, connected (not enabled).
    pub fn admin(
        port: u16,
        identity: &Identity,
        subnqn: &str,
        kato_ms: u32,
    ) -> Result<(Self, Answer), String> {
        let mut connection = Self::open(port, false)?;
        let answer = connection.connect(identity, subnqn, 0, 0xffff, kato_ms)?;
        Ok((connection, answer))
    }

    /// An I/O queue `qid` of controller `cntlid`, connected.
    pub fn io_queue(
        port: u16,
        identity: &Identity,
        subnqn: &str,
        qid: u16,
        cntlid: u16,
    ) -> Result<(Self, Answer), String> {
        let mut connection = Self::open(port, true)?;
        let answer = connection.connect(identity, subnqn, qid, cntlid, 0)?;
        Ok((connection, answer))
    }

    /// Write with its data in the capsule (at most 8 KiB).
    pub fn write(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        data: &[u8],
    ) -> Result<Answer, String> {
        let cid = self.cid();
        let command = CommandBuilder::new(IO_WRITE, cid)
            .nsid(nsid)
            .range(lba, blocks)
            .sgl(0, data.len() as u32, SGL_DATA_BLOCK_OFFSET)
            .build();
        self.command(command, data)
    }

    /// Read of `bytes` (C2HData, then the response capsule).
    pub fn read(&mut self, nsid: u32, lba: u64, blocks: u32, bytes: u32) -> Result<Answer, String> {
        let cid = self.cid();
        let command = CommandBuilder::new(IO_READ, cid)
            .nsid(nsid)
            .range(lba, blocks)
            .sgl(0, bytes, SGL_TRANSPORT_DATA_BLOCK)
            .build();
        self.command(command, &[])
    }

    /// Property Get: `eight_bytes` for CAP.
    pub fn property_get(&mut self, offset: u32, eight_bytes: bool) -> Result<Answer, String> {
        let cid = self.cid();
        let command = CommandBuilder::fabrics(FCTYPE_PROPERTY_GET, cid)
            .bytes_at(40, &[u8::from(eight_bytes)])
            .bytes_at(44, &offset.to_le_bytes())
            .build();
        self.command(command, &[])
    }

    pub fn property_set(&mut self, offset: u32, value: u32) -> Result<Answer, String> {
        let cid = self.cid();
        let command = CommandBuilder::fabrics(FCTYPE_PROPERTY_SET, cid)
            .bytes_at(44, &offset.to_le_bytes())
            .bytes_at(48, &u64::from(value).to_le_bytes())
            .build();
        self.command(command, &[])
    }

    /// Sets CC.EN and reads CSTS back.
    pub fn enable(&mut self) -> Result<u32, String> {
        let set = self.property_set(0x14, CC_ENABLE)?;
        if !set.status().is_success() {
            return Err(format!("Property Set CC: {}", set.status()));
        }
        let csts = self.property_get(0x1c, false)?;
        Ok(csts.completion.result as u32)
    }

    /// Identify with `cns` for `nsid`: 4096 bytes back.
    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<Answer, String> {
        let cid = self.cid();
        let command = CommandBuilder::new(ADMIN_IDENTIFY, cid)
            .nsid(nsid)
            .cdw(10, u32::from(cns))
            .sgl(0, 4096, SGL_TRANSPORT_DATA_BLOCK)
            .build();
        self.command(command, &[])
    }

    /// Get Log Page `page`, `bytes` of it (a multiple of 4).
    pub fn log_page(&mut self, page: u8, bytes: u32) -> Result<Answer, String> {
        let cid = self.cid();
        let dwords = bytes / 4 - 1;
        let command = CommandBuilder::new(ADMIN_GET_LOG_PAGE, cid)
            .nsid(u32::MAX)
            .cdw(10, u32::from(page) | ((dwords & 0xffff) << 16))
            .cdw(11, dwords >> 16)
            .sgl(0, bytes, SGL_TRANSPORT_DATA_BLOCK)
            .build();
        self.command(command, &[])
    }

    /// Sends `command` (with `data` in its capsule) and waits for its answer.
    pub fn command(&mut self, command: Command, data: &[u8]) -> Result<Answer, String> {
        self.send(&Header::CapsuleCmd(command), data)?;
        self.answer(command.cid())
    }

    /// Sends `command` without waiting (an Asynchronous Event Request).
    pub fn submit(&mut self, command: Command) -> Result<(), String> {
        self.send(&Header::CapsuleCmd(command), &[])
    }

    /// Reads PDUs until the response capsule of `cid`, gathering its C2HData.
    pub fn answer(&mut self, cid: u16) -> Result<Answer, String> {
        let mut data = Vec::new();
        loop {
            let pdu = read_pdu(
                &mut self.stream,
                &mut self.buffer,
                Direction::ControllerToHost,
                &self.negotiated,
            )
            .map_err(|e| match e {
                PduIoError::Closed => "closed".to_string(),
                other => other.to_string(),
            })?;
            match pdu.header {
                Header::C2HData(header) if header.command_id == cid => {
                    let at = header.offset_bytes as usize;
                    if data.len() < at + pdu.data.len() {
                        data.resize(at + pdu.data.len(), 0);
                    }
                    data[at..at + pdu.data.len()].copy_from_slice(pdu.data);
                }
                Header::CapsuleResp(completion) if completion.cid == cid => {
                    return Ok(Answer { completion, data })
                }
                Header::C2HTermReq(term) => return Err(format!("terminated: {term:?}")),
                other => return Err(format!("unexpected PDU {other:?}")),
            }
        }
    }

    /// The next PDU's header, whatever it is (a termination request, for bad-input tests).
    pub fn next_header(&mut self) -> Result<Header, String> {
        read_pdu(
            &mut self.stream,
            &mut self.buffer,
            Direction::ControllerToHost,
            &self.negotiated,
        )
        .map(|pdu| pdu.header)
        .map_err(|e| e.to_string())
    }

    /// Whether the target closed the connection within `within` (reads nothing else).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        self.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok();
        let mut byte = [0u8; 1];
        while std::time::Instant::now() < deadline {
            match std::io::Read::read(&mut self.stream, &mut byte) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// A string field of a data structure: up to its first NUL, spaces trimmed.
pub fn text_field(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_string()
}

pub fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// How an I/O exchange ended when it did not end with an answer.
#[derive(Debug)]
pub enum Ended {
    /// The target sent a C2HTermReq (with the header in error it carried).
    Terminated(sds::nvmf::pdu::TermReq, Vec<u8>),
    /// The connection closed (or failed).
    Closed(String),
}

impl NvmfConnection {
    pub fn next_pdu(&mut self) -> Result<sds::nvmf::pdu::Pdu<'_>, PduIoError> {
        read_pdu(
            &mut self.stream,
            &mut self.buffer,
            Direction::ControllerToHost,
            &self.negotiated,
        )
    }

    /// What ICReq/ICResp settled.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Sends `command` with its data — a write's (or a Compare's) `write` bytes in the capsule
    /// when they fit in 8 KiB, else in H2CData PDUs of at most `max_h2c_data` after the
    /// target's R2T — and reads until its answer, gathering `read_bytes` of C2HData.
    pub fn exchange(
        &mut self,
        command: Command,
        write: &[u8],
        read_bytes: usize,
        max_h2c_data: usize,
    ) -> Result<Answer, Ended> {
        use sds::nvmf::pdu::DataHeader;
        let cid = command.cid();
        let mut command = command;
        let in_capsule = !write.is_empty() && write.len() <= 8192;
        if !write.is_empty() || read_bytes > 0 {
            let bytes = write.len().max(read_bytes) as u32;
            let identifier = if in_capsule {
                SGL_DATA_BLOCK_OFFSET
            } else {
                SGL_TRANSPORT_DATA_BLOCK
            };
            command.0[24..32].fill(0);
            command.0[32..36].copy_from_slice(&bytes.to_le_bytes());
            command.0[39] = identifier;
        }
        let capsule = if in_capsule { write } else { &[][..] };
        self.send(&Header::CapsuleCmd(command), capsule)
            .map_err(Ended::Closed)?;
        let mut data = vec![0u8; read_bytes];
        loop {
            let pdu = self.next_pdu().map_err(|e| Ended::Closed(e.to_string()))?;
            match pdu.header {
                Header::CapsuleResp(completion) if completion.cid == cid => {
                    return Ok(Answer { completion, data });
                }
                Header::C2HData(header) if header.command_id == cid => {
                    let at = header.offset_bytes as usize;
                    let Some(place) = data.get_mut(at..at + pdu.data.len()) else {
                        return Err(Ended::Closed("C2HData past the read".into()));
                    };
                    place.copy_from_slice(pdu.data);
                    if header.success {
                        let completion = Completion::new(cid, sds::nvmf::status::SUCCESS);
                        return Ok(Answer { completion, data });
                    }
                }
                Header::R2T(r2t) if r2t.command_id == cid => {
                    let end = (r2t.offset_bytes + r2t.length_bytes) as usize;
                    let mut at = r2t.offset_bytes as usize;
                    while at < end {
                        let len = (end - at).min(max_h2c_data);
                        let header = Header::H2CData(DataHeader {
                            command_id: cid,
                            transfer_tag: r2t.transfer_tag,
                            offset_bytes: at as u32,
                            length_bytes: len as u32,
                            last: at + len == end,
                            success: false,
                        });
                        let piece = write.get(at..at + len).unwrap_or(&[]).to_vec();
                        self.send(&header, &piece).map_err(Ended::Closed)?;
                        at += len;
                    }
                }
                Header::C2HTermReq(term) => {
                    return Err(Ended::Terminated(term, pdu.data.to_vec()));
                }
                other => return Err(Ended::Closed(format!("unexpected PDU {other:?}"))),
            }
        }
    }

    /// Sends raw bytes (a PDU a real host would never send).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        std::io::Write::write_all(&mut self.stream, bytes).map_err(|e| e.to_string())
    }

    /// Reads until the target sends a C2HTermReq (returned) or closes.
    pub fn expect_termination(&mut self) -> Ended {
        loop {
            match self.next_pdu() {
                Ok(pdu) => {
                    if let Header::C2HTermReq(term) = pdu.header {
                        return Ended::Terminated(term, pdu.data.to_vec());
                    }
                }
                Err(error) => return Ended::Closed(error.to_string()),
            }
        }
    }
}
