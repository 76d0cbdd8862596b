//! The client's side of the NBD handshake as a state machine that does no I/O: fixed newstyle
//! only (an old-style or plain newstyle server is refused), then NBD_OPT_STRUCTURED_REPLY
//! (used when the server acknowledges it), then NBD_OPT_GO asking for NBD_INFO_BLOCK_SIZE (the
//! server always sends NBD_INFO_EXPORT: size and transmission flags); a server that does not
//! know NBD_OPT_GO gets NBD_OPT_EXPORT_NAME instead.
//!
//! The driver (the blocking connection, or a link on a reactor's ring) loops: send what
//! [`Negotiation::output`] holds, then receive up to [`Negotiation::want`] bytes into
//! [`Negotiation::input`] and report them ([`Negotiation::received`]), until that returns the
//! [`Export`]. Every length the server sends is bounded before anything is received.

use crate::constants::MAX_NBD_OPTION_BYTES;
use crate::target::nbd::protocol::{
    IHAVEOPT, NBDMAGIC, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE,
    NBD_FLAG_NO_ZEROES, NBD_INFO_BLOCK_SIZE, NBD_INFO_EXPORT, NBD_OPT_EXPORT_NAME, NBD_OPT_GO,
    NBD_REP_ACK, NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP, NBD_REP_INFO, OPTION_REPLY_MAGIC,
};

pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
/// The magic an old-style server sends after NBDMAGIC.
const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// The bit every error reply to an option has.
const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
/// The greeting: NBDMAGIC, IHAVEOPT, handshake flags.
const GREETING_BYTES: usize = 18;
/// An option reply's header: magic, option, reply type, length.
const OPTION_REPLY_HEADER_BYTES: usize = 20;
/// NBD_OPT_EXPORT_NAME's answer: size, flags, and 124 zeroes unless NO_ZEROES was agreed.
const EXPORT_NAME_REPLY_BYTES: usize = 10;
const EXPORT_NAME_ZEROES_BYTES: usize = 124;
/// The longest export name the spec lets a client send.
pub const MAX_EXPORT_NAME_BYTES: usize = 4096;

/// The block sizes an export asked for (NBD_INFO_BLOCK_SIZE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    pub minimum_bytes: u32,
    pub preferred_bytes: u32,
    pub maximum_bytes: u32,
}

/// What the handshake learnt: the export, and how to talk to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    pub size_bytes: u64,
    pub transmission_flags: u16,
    pub block_sizes: Option<BlockSizes>,
    /// Whether the server agreed to structured replies.
    pub structured: bool,
}

/// Why the handshake failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NegotiationError {
    #[error("the server speaks the old-style handshake, which is not supported")]
    OldStyle,
    #[error("the server is not an NBD server (magic {0:#018x})")]
    NotNbd(u64),
    #[error("the server does not offer the fixed newstyle handshake")]
    NotFixedNewstyle,
    #[error("the server has no export {0:?}")]
    NoSuchExport(String),
    #[error("the server refused export {export:?} (reply {code:#x}): {message}")]
    Refused {
        export: String,
        code: u32,
        message: String,
    },
    #[error("the server broke the handshake: {0}")]
    Protocol(String),
    #[error("the export name is longer than {MAX_EXPORT_NAME_BYTES} bytes")]
    NameTooLong,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Greeting,
    /// An option reply's header, to option `option`.
    ReplyHeader,
    /// Its payload.
    ReplyPayload {
        reply: u32,
    },
    ExportNameReply,
    Done,
}

/// One handshake in progress.
#[derive(Debug)]
pub struct Negotiation {
    export_name: String,
    stage: Stage,
    /// Bytes to send, and how many of them are sent.
    output: Vec<u8>,
    sent: usize,
    /// Bytes being received, and how many have arrived.
    input: Vec<u8>,
    filled: usize,
    /// The option whose replies are awaited.
    option: u32,
    no_zeroes: bool,
    structured: bool,
    size_and_flags: Option<(u64, u16)>,
    block_sizes: Option<BlockSizes>,
}

fn option_request(option: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

fn be_u16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}
fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}
fn be_u64(bytes: &[u8]) -> u64 {
    (u64::from(be_u32(bytes)) << 32) | u64::from(be_u32(&bytes[4..]))
}

impl Negotiation {
    pub fn new(export_name: &str) -> Result<Self, NegotiationError> {
        if export_name.len() > MAX_EXPORT_NAME_BYTES {
            return Err(NegotiationError::NameTooLong);
        }
        Ok(Self {
            export_name: export_name.to_owned(),
            stage: Stage::Greeting,
            output: Vec::new(),
            sent: 0,
            input: vec![0; GREETING_BYTES],
            filled: 0,
            option: 0,
            no_zeroes: false,
            structured: false,
            size_and_flags: None,
            block_sizes: None,
        })
    }

    /// Bytes still to send before receiving more.
    pub fn output(&self) -> &[u8] {
        &self.output[self.sent..]
    }

    /// `count` bytes of [`Negotiation::output`] were sent.
    pub fn sent(&mut self, count: usize) {
        self.sent = (self.sent + count).min(self.output.len());
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
        }
    }

    /// How many bytes to receive next (0 once done).
    pub fn want(&self) -> usize {
        self.input.len() - self.filled
    }

    /// Where received bytes go.
    pub fn input(&mut self) -> &mut [u8] {
        &mut self.input[self.filled..]
    }

    fn expect(&mut self, stage: Stage, bytes: usize) {
        self.stage = stage;
        self.input.clear();
        self.input.resize(bytes, 0);
        self.filled = 0;
    }

    fn send_option(&mut self, option: u32, payload: &[u8]) {
        option_request(option, payload, &mut self.output);
        self.option = option;
        self.expect(Stage::ReplyHeader, OPTION_REPLY_HEADER_BYTES);
    }

    fn send_go(&mut self) {
        let name = self.export_name.as_bytes();
        let mut payload = Vec::with_capacity(4 + name.len() + 4);
        payload.extend_from_slice(&(name.len() as u32).to_be_bytes());
        payload.extend_from_slice(name);
        payload.extend_from_slice(&1u16.to_be_bytes());
        payload.extend_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
        self.send_option(NBD_OPT_GO, &payload);
    }

    fn protocol(what: String) -> NegotiationError {
        NegotiationError::Protocol(what)
    }

    /// `count` bytes arrived in [`Negotiation::input`]. Returns the export once the handshake
    /// is complete; the connection is then in the transmission phase.
    pub fn received(&mut self, count: usize) -> Result<Option<Export>, NegotiationError> {
        self.filled = (self.filled + count).min(self.input.len());
        if self.filled < self.input.len() {
            return Ok(None);
        }
        match self.stage {
            Stage::Greeting => {
                let magic = be_u64(&self.input[0..8]);
                if magic != NBDMAGIC {
                    return Err(NegotiationError::NotNbd(magic));
                }
                let style = be_u64(&self.input[8..16]);
                if style == OLDSTYLE_MAGIC {
                    return Err(NegotiationError::OldStyle);
                }
                if style != IHAVEOPT {
                    return Err(NegotiationError::NotNbd(style));
                }
                let flags = be_u16(&self.input[16..18]);
                if flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
                    return Err(NegotiationError::NotFixedNewstyle);
                }
                self.no_zeroes = flags & NBD_FLAG_NO_ZEROES != 0;
                let mut client_flags = NBD_FLAG_C_FIXED_NEWSTYLE;
                if self.no_zeroes {
                    client_flags |= NBD_FLAG_C_NO_ZEROES;
                }
                self.output.extend_from_slice(&client_flags.to_be_bytes());
                self.send_option(NBD_OPT_STRUCTURED_REPLY, &[]);
                Ok(None)
            }
            Stage::ReplyHeader => {
                let magic = be_u64(&self.input[0..8]);
                let option = be_u32(&self.input[8..12]);
                let reply = be_u32(&self.input[12..16]);
                let length = be_u32(&self.input[16..20]) as usize;
                if magic != OPTION_REPLY_MAGIC || option != self.option {
                    return Err(Self::protocol(format!(
                        "an option reply with magic {magic:#x} to option {option} while awaiting option {}",
                        self.option
                    )));
                }
                if length > MAX_NBD_OPTION_BYTES {
                    return Err(Self::protocol(format!(
                        "an option reply of {length} bytes (at most {MAX_NBD_OPTION_BYTES})"
                    )));
                }
                self.expect(Stage::ReplyPayload { reply }, length);
                if length == 0 {
                    return self.on_reply(reply);
                }
                Ok(None)
            }
            Stage::ReplyPayload { reply } => self.on_reply(reply),
            Stage::ExportNameReply => {
                let export = Export {
                    size_bytes: be_u64(&self.input[0..8]),
                    transmission_flags: be_u16(&self.input[8..10]),
                    block_sizes: None,
                    structured: self.structured,
                };
                self.expect(Stage::Done, 0);
                Ok(Some(export))
            }
            Stage::Done => Ok(None),
        }
    }

    /// A whole option reply (its payload in `self.input`).
    fn on_reply(&mut self, reply: u32) -> Result<Option<Export>, NegotiationError> {
        let payload = std::mem::take(&mut self.input);
        let message = || String::from_utf8_lossy(&payload).into_owned();
        match (self.option, reply) {
            (NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK) => {
                self.structured = true;
                self.send_go();
            }
            (NBD_OPT_STRUCTURED_REPLY, reply) if reply & NBD_REP_FLAG_ERROR != 0 => {
                self.send_go();
            }
            (NBD_OPT_GO, NBD_REP_INFO) => {
                if payload.len() < 2 {
                    return Err(Self::protocol("an empty NBD_REP_INFO".into()));
                }
                match be_u16(&payload) {
                    NBD_INFO_EXPORT if payload.len() == 12 => {
                        self.size_and_flags = Some((be_u64(&payload[2..]), be_u16(&payload[10..])))
                    }
                    NBD_INFO_BLOCK_SIZE if payload.len() == 14 => {
                        self.block_sizes = Some(BlockSizes {
                            minimum_bytes: be_u32(&payload[2..]),
                            preferred_bytes: be_u32(&payload[6..]),
                            maximum_bytes: be_u32(&payload[10..]),
                        })
                    }
                    NBD_INFO_EXPORT | NBD_INFO_BLOCK_SIZE => {
                        return Err(Self::protocol(format!(
                            "an NBD_REP_INFO of {} bytes",
                            payload.len()
                        )))
                    }
                    // Name, description and what later versions add: not needed.
                    _ => {}
                }
                self.expect(Stage::ReplyHeader, OPTION_REPLY_HEADER_BYTES);
            }
            (NBD_OPT_GO, NBD_REP_ACK) => {
                let (size_bytes, transmission_flags) = self.size_and_flags.ok_or_else(|| {
                    Self::protocol("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT".into())
                })?;
                self.expect(Stage::Done, 0);
                return Ok(Some(Export {
                    size_bytes,
                    transmission_flags,
                    block_sizes: self.block_sizes,
                    structured: self.structured,
                }));
            }
            (NBD_OPT_GO, NBD_REP_ERR_UNSUP) => {
                // A server older than NBD_OPT_GO: the old way, which ends the handshake with
                // the export's size and flags, or by closing the connection.
                option_request(
                    NBD_OPT_EXPORT_NAME,
                    self.export_name.as_bytes(),
                    &mut self.output,
                );
                self.option = NBD_OPT_EXPORT_NAME;
                let zeroes = if self.no_zeroes {
                    0
                } else {
                    EXPORT_NAME_ZEROES_BYTES
                };
                self.expect(Stage::ExportNameReply, EXPORT_NAME_REPLY_BYTES + zeroes);
            }
            (NBD_OPT_GO, NBD_REP_ERR_UNKNOWN) => {
                return Err(NegotiationError::NoSuchExport(self.export_name.clone()))
            }
            (NBD_OPT_GO, reply) if reply & NBD_REP_FLAG_ERROR != 0 => {
                return Err(NegotiationError::Refused {
                    export: self.export_name.clone(),
                    code: reply,
                    message: message(),
                })
            }
            (option, reply) => {
                return Err(Self::protocol(format!(
                    "reply {reply:#x} to option {option}"
                )))
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::nbd::protocol::{
        NBD_FLAG_HAS_FLAGS, NBD_FLAG_SEND_FLUSH, NBD_REP_ERR_INVALID,
    };

    fn greeting(flags: u16) -> Vec<u8> {
        let mut out = NBDMAGIC.to_be_bytes().to_vec();
        out.extend(IHAVEOPT.to_be_bytes());
        out.extend(flags.to_be_bytes());
        out
    }

    fn option_reply(option: u32, reply: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
        out.extend(option.to_be_bytes());
        out.extend(reply.to_be_bytes());
        out.extend((payload.len() as u32).to_be_bytes());
        out.extend(payload);
        out
    }

    fn info_export(size: u64, flags: u16) -> Vec<u8> {
        let mut out = NBD_INFO_EXPORT.to_be_bytes().to_vec();
        out.extend(size.to_be_bytes());
        out.extend(flags.to_be_bytes());
        out
    }

    /// Runs the handshake against `server` (what the server sends, in order) `step` bytes at a
    /// time; returns the result and what the client sent.
    fn run(server: &[u8], step: usize) -> (Result<Option<Export>, NegotiationError>, Vec<u8>) {
        let mut negotiation = Negotiation::new("vol").expect("name");
        let mut sent = Vec::new();
        let mut pos = 0;
        loop {
            let out = negotiation.output().to_vec();
            sent.extend_from_slice(&out);
            negotiation.sent(out.len());
            let n = negotiation.want().min(step).min(server.len() - pos);
            if n == 0 {
                return (Ok(None), sent);
            }
            negotiation.input()[..n].copy_from_slice(&server[pos..pos + n]);
            pos += n;
            match negotiation.received(n) {
                Ok(None) => {}
                other => return (other, sent),
            }
        }
    }

    #[test]
    fn go_with_structured_replies_and_block_sizes() {
        let mut server = greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        server.extend(option_reply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[]));
        let mut block = NBD_INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        block.extend(1u32.to_be_bytes());
        block.extend(4096u32.to_be_bytes());
        block.extend((32u32 << 20).to_be_bytes());
        server.extend(option_reply(NBD_OPT_GO, NBD_REP_INFO, &[0, 1, b'v']));
        server.extend(option_reply(NBD_OPT_GO, NBD_REP_INFO, &block));
        let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH;
        server.extend(option_reply(
            NBD_OPT_GO,
            NBD_REP_INFO,
            &info_export(1 << 30, flags),
        ));
        server.extend(option_reply(NBD_OPT_GO, NBD_REP_ACK, &[]));
        for step in [1, 7, 1 << 20] {
            let (result, sent) = run(&server, step);
            assert_eq!(
                result,
                Ok(Some(Export {
                    size_bytes: 1 << 30,
                    transmission_flags: flags,
                    block_sizes: Some(BlockSizes {
                        minimum_bytes: 1,
                        preferred_bytes: 4096,
                        maximum_bytes: 32 << 20
                    }),
                    structured: true,
                })),
                "step {step}"
            );
            // Client flags, then STRUCTURED_REPLY, then GO naming "vol" and asking for
            // block sizes.
            assert_eq!(
                &sent[0..4],
                &(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes()
            );
            assert_eq!(&sent[12..16], &NBD_OPT_STRUCTURED_REPLY.to_be_bytes());
            assert_eq!(&sent[28..32], &NBD_OPT_GO.to_be_bytes());
            assert_eq!(&sent[36..40], &3u32.to_be_bytes());
            assert_eq!(&sent[40..43], b"vol");
            assert_eq!(&sent[43..45], &1u16.to_be_bytes());
            assert_eq!(&sent[45..47], &NBD_INFO_BLOCK_SIZE.to_be_bytes());
        }
    }

    #[test]
    fn without_structured_replies_and_go_falls_back_to_export_name() {
        let mut server = greeting(NBD_FLAG_FIXED_NEWSTYLE);
        server.extend(option_reply(
            NBD_OPT_STRUCTURED_REPLY,
            NBD_REP_ERR_UNSUP,
            b"no",
        ));
        server.extend(option_reply(NBD_OPT_GO, NBD_REP_ERR_UNSUP, &[]));
        server.extend((1u64 << 20).to_be_bytes());
        server.extend(NBD_FLAG_HAS_FLAGS.to_be_bytes());
        server.extend([0u8; EXPORT_NAME_ZEROES_BYTES]);
        let (result, sent) = run(&server, 5);
        assert_eq!(
            result,
            Ok(Some(Export {
                size_bytes: 1 << 20,
                transmission_flags: NBD_FLAG_HAS_FLAGS,
                block_sizes: None,
                structured: false,
            }))
        );
        assert_eq!(&sent[0..4], &NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
        let tail = &sent[sent.len() - 19..];
        assert_eq!(&tail[8..12], &NBD_OPT_EXPORT_NAME.to_be_bytes());
        assert_eq!(&tail[16..], b"vol");
    }

    #[test]
    fn refusals() {
        let mut old = NBDMAGIC.to_be_bytes().to_vec();
        old.extend(OLDSTYLE_MAGIC.to_be_bytes());
        old.extend([0u8; 2]);
        assert_eq!(run(&old, 64).0, Err(NegotiationError::OldStyle));
        assert_eq!(
            run(&greeting(0), 64).0,
            Err(NegotiationError::NotFixedNewstyle)
        );
        assert!(matches!(
            run(&[0u8; 18], 64).0,
            Err(NegotiationError::NotNbd(_))
        ));

        let start = |reply: Vec<u8>| {
            let mut server = greeting(NBD_FLAG_FIXED_NEWSTYLE);
            server.extend(option_reply(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[]));
            server.extend(reply);
            run(&server, 64).0
        };
        assert_eq!(
            start(option_reply(NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, b"")),
            Err(NegotiationError::NoSuchExport("vol".into()))
        );
        assert!(matches!(
            start(option_reply(NBD_OPT_GO, NBD_REP_ERR_INVALID, b"why")),
            Err(NegotiationError::Refused { message, .. }) if message == "why"
        ));
        assert!(matches!(
            start(option_reply(NBD_OPT_GO, NBD_REP_ACK, b"")),
            Err(NegotiationError::Protocol(_))
        ));
        assert!(matches!(
            start(option_reply(
                NBD_OPT_GO,
                NBD_REP_INFO,
                &NBD_INFO_EXPORT.to_be_bytes()
            )),
            Err(NegotiationError::Protocol(_))
        ));
        // A reply to another option, and a reply too long to accept.
        assert!(matches!(
            start(option_reply(NBD_OPT_EXPORT_NAME, NBD_REP_ACK, b"")),
            Err(NegotiationError::Protocol(_))
        ));
        let mut huge = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
        huge.extend(NBD_OPT_GO.to_be_bytes());
        huge.extend(NBD_REP_INFO.to_be_bytes());
        huge.extend(u32::MAX.to_be_bytes());
        assert!(matches!(start(huge), Err(NegotiationError::Protocol(_))));
        assert!(Negotiation::new(&"x".repeat(MAX_EXPORT_NAME_BYTES + 1)).is_err());
    }
}
