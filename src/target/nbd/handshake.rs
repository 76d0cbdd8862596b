//! The fixed-newstyle NBD handshake, as a blocking exchange on any byte stream: greeting,
//! client flags, then options until the client picks an export (NBD_OPT_GO or
//! NBD_OPT_EXPORT_NAME) or leaves. Runs on a handshake thread, never on a reactor.
//!
//! With TLS configured (the NBD spec's "mandatory TLS" mode) the negotiation has a clear-text
//! part, where only NBD_OPT_STARTTLS and NBD_OPT_ABORT are served, then the caller's TLS
//! handshake on the same socket, then the rest over TLS ([`Negotiation`]). The exports are
//! looked up only after TLS, from the identity the client certificate proves.

use super::protocol::*;
use crate::constants::{MAX_NAME_BYTES, MAX_NBD_OPTION_BYTES};
use std::io::{Read, Write};

/// Options one client may send before it picks an export.
const MAX_OPTIONS: usize = 1024;
/// Largest oversized option payload read and dropped (then refused with ERR_TOO_BIG); a
/// larger one ends the connection.
const MAX_NBD_OPTION_DRAIN_BYTES: usize = 1024 * 1024;

/// An export as the handshake describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
    pub size_bytes: u64,
    pub min_block_bytes: u32,
    pub preferred_block_bytes: u32,
    pub max_payload_bytes: u32,
    pub read_only: bool,
    pub can_multi_conn: bool,
    pub can_flush: bool,
    pub can_fua: bool,
    pub can_trim: bool,
    pub can_write_zeroes: bool,
}

impl ExportInfo {
    pub fn transmission_flags(&self) -> u16 {
        let mut flags = NBD_FLAG_HAS_FLAGS;
        for (on, flag) in [
            (self.read_only, NBD_FLAG_READ_ONLY),
            (self.can_flush, NBD_FLAG_SEND_FLUSH),
            (self.can_fua, NBD_FLAG_SEND_FUA),
            (self.can_trim, NBD_FLAG_SEND_TRIM),
            (self.can_write_zeroes, NBD_FLAG_SEND_WRITE_ZEROES),
            (self.can_multi_conn, NBD_FLAG_CAN_MULTI_CONN),
        ] {
            if on {
                flags |= flag;
            }
        }
        flags
    }
}

/// What the handshake may show and open.
pub trait ExportCatalog {
    fn list_exports(&self) -> Vec<ExportInfo>;
    fn find_export(&self, name: &str) -> Option<ExportInfo>;
    /// Grants a session on `export` just before the server says yes to it; `Err` says why
    /// not (the client gets NBD_REP_ERR_POLICY with it).
    fn admit(&self, _export: &ExportInfo) -> Result<(), String> {
        Ok(())
    }
}

/// The client's choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub export: ExportInfo,
    pub transmission_flags: u16,
    /// Whether the client asked for NBD_INFO_BLOCK_SIZE (and so promised to honour it).
    pub block_size_negotiated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connection error during the handshake")]
    Io(#[from] std::io::Error),
    #[error("client does not speak fixed newstyle (flags {0:#x})")]
    ClientFlags(u32),
    #[error("bad option magic {0:#018x}")]
    BadMagic(u64),
    #[error("client asked for unknown export {0} with NBD_OPT_EXPORT_NAME")]
    UnknownExport(String),
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
    #[error("option of {0} bytes: too large to read, disconnecting")]
    OptionTooLarge(usize),
    #[error(
        "client sent NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS on a server that requires TLS"
    )]
    TlsRequired,
    #[error("handshake step out of order: {0}")]
    TlsState(&'static str),
    #[error("NBD_OPT_EXPORT_NAME refused: {0}")]
    Refused(String),
}

/// A parsed NBD_OPT_INFO / NBD_OPT_GO payload.
#[derive(Debug, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub info_types: Vec<u16>,
}

/// Parses an NBD_OPT_INFO / NBD_OPT_GO payload; `None` if its lengths are inconsistent.
pub fn parse_info_request(data: &[u8]) -> Option<InfoRequest> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(data.get(4..4 + name_len)?)
        .ok()?
        .to_string();
    let rest = data.get(4 + name_len..)?;
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let types = rest.get(2..)?;
    if types.len() != count * 2 {
        return None;
    }
    Some(InfoRequest {
        name,
        info_types: types
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    })
}

/// A client's export name as an error reply or a log line quotes it: at most the longest name
/// an export can have. Quoted whole, a 64 KiB name would come back as a reply of up to six
/// times that (escaped), past the 4096 bytes the NBD spec lets a client refuse.
fn quoted_name(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    if end == name.len() {
        format!("{name:?}")
    } else {
        format!("{:?}... ({} bytes)", &name[..end], name.len())
    }
}

fn read_u32<S: Read>(stream: &mut S) -> std::io::Result<u32> {
    let mut raw = [0u8; 4];
    stream.read_exact(&mut raw)?;
    Ok(u32::from_be_bytes(raw))
}

fn read_u64<S: Read>(stream: &mut S) -> std::io::Result<u64> {
    let mut raw = [0u8; 8];
    stream.read_exact(&mut raw)?;
    Ok(u64::from_be_bytes(raw))
}

fn reply<S: Write>(
    stream: &mut S,
    option: u32,
    reply_type: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    stream.write_all(&out)
}

fn info_reply<S: Write>(
    stream: &mut S,
    option: u32,
    info_type: u16,
    body: &[u8],
) -> std::io::Result<()> {
    let mut data = Vec::with_capacity(2 + body.len());
    data.extend_from_slice(&info_type.to_be_bytes());
    data.extend_from_slice(body);
    reply(stream, option, NBD_REP_INFO, &data)
}

/// NBD_OPT_STARTTLS, and the option replies that go with TLS (the NBD protocol document's
/// "TLS support" section). Here rather than in `protocol` because only the handshake uses them.
pub const NBD_OPT_STARTTLS: u32 = 5;
pub const NBD_REP_ERR_POLICY: u32 = (1 << 31) | 2;
pub const NBD_REP_ERR_TLS_REQD: u32 = (1 << 31) | 5;

/// Runs a whole handshake in the clear (no TLS offered: NBD_OPT_STARTTLS is refused).
/// `Ok(None)` when the client aborted or left before choosing.
pub fn negotiate<S: Read + Write>(
    stream: &mut S,
    catalog: &dyn ExportCatalog,
) -> Result<Option<Negotiated>, HandshakeError> {
    let mut negotiation = Negotiation::start(stream, TlsPolicy::Off)?;
    negotiation.choose_export(stream, catalog)
}

/// Whether this connection must upgrade to TLS before it may do anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// The server has no certificate: NBD_OPT_STARTTLS gets NBD_REP_ERR_UNSUP.
    Off,
    /// The server has a certificate, and TLS is mandatory (the NBD spec's "mandatory TLS"
    /// mode): before NBD_OPT_STARTTLS only NBD_OPT_ABORT is served.
    Required,
}

/// Where a negotiation stands with TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsState {
    Off,
    /// Required and not started yet: only [`Negotiation::until_starttls`] may run.
    Awaited,
    /// STARTTLS acknowledged: the caller runs the TLS handshake and continues over TLS.
    Started,
}

/// One option as read off the wire: its code and its payload, `None` when the payload was
/// past [`MAX_NBD_OPTION_BYTES`] (read and dropped unheld).
struct WireOption {
    code: u32,
    length: usize,
    data: Option<Vec<u8>>,
}

/// One client's negotiation, in steps, so a connection can change streams in the middle:
/// [`Negotiation::start`] (greeting and client flags), then, when TLS is required,
/// [`Negotiation::until_starttls`] in the clear, then (after the caller's TLS handshake, on the
/// TLS stream) [`Negotiation::choose_export`]. The export catalogue is asked for only by the
/// last step, so the caller resolves it from what the connection proved — after TLS, the
/// client certificate. The option budget (`MAX_OPTIONS`) spans every step.
pub struct Negotiation {
    no_zeroes: bool,
    options_left: usize,
    tls: TlsState,
}

impl Negotiation {
    /// Sends the greeting and reads the client's flags.
    pub fn start<S: Read + Write>(stream: &mut S, tls: TlsPolicy) -> Result<Self, HandshakeError> {
        let mut greeting = [0u8; 18];
        greeting[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
        greeting[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
        greeting[16..18]
            .copy_from_slice(&(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES).to_be_bytes());
        stream.write_all(&greeting)?;
        let client_flags = read_u32(stream)?;
        if client_flags & NBD_FLAG_C_FIXED_NEWSTYLE == 0
            || client_flags & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) != 0
        {
            return Err(HandshakeError::ClientFlags(client_flags));
        }
        Ok(Self {
            no_zeroes: client_flags & NBD_FLAG_C_NO_ZEROES != 0,
            options_left: MAX_OPTIONS,
            tls: match tls {
                TlsPolicy::Off => TlsState::Off,
                TlsPolicy::Required => TlsState::Awaited,
            },
        })
    }

    /// The next option; `None` when the client left (end of stream before an option).
    fn next_option<S: Read + Write>(
        &mut self,
        stream: &mut S,
    ) -> Result<Option<WireOption>, HandshakeError> {
        if self.options_left == 0 {
            return Err(HandshakeError::TooManyOptions);
        }
        self.options_left -= 1;
        let magic = match read_u64(stream) {
            Ok(magic) => magic,
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        if magic != IHAVEOPT {
            return Err(HandshakeError::BadMagic(magic));
        }
        let code = read_u32(stream)?;
        let length = read_u32(stream)? as usize;
        if length > MAX_NBD_OPTION_DRAIN_BYTES {
            // Not worth reading: the NBD spec lets a server that will not read an option's
            // data disconnect instead, and a handshake thread must not wait for gigabytes.
            return Err(HandshakeError::OptionTooLarge(length));
        }
        if length > MAX_NBD_OPTION_BYTES {
            // Drop the payload without holding it; the caller refuses the option.
            std::io::copy(
                &mut Read::by_ref(stream).take(length as u64),
                &mut std::io::sink(),
            )?;
            return Ok(Some(WireOption {
                code,
                length,
                data: None,
            }));
        }
        let mut data = vec![0u8; length];
        stream.read_exact(&mut data)?;
        Ok(Some(WireOption {
            code,
            length,
            data: Some(data),
        }))
    }

    /// The clear-text part of a TLS-required negotiation: every option but NBD_OPT_ABORT and
    /// NBD_OPT_STARTTLS gets NBD_REP_ERR_TLS_REQD, and NBD_OPT_EXPORT_NAME (which has no
    /// error reply) ends the connection. `Ok(true)` once NBD_OPT_STARTTLS is acknowledged:
    /// the caller then runs the TLS handshake on the same socket and goes on with
    /// [`Negotiation::choose_export`] over TLS. `Ok(false)` when the client aborted or left.
    /// `tls_available` false (every TLS slot taken) refuses NBD_OPT_STARTTLS with
    /// NBD_REP_ERR_POLICY, which a client can report, rather than dropping the connection.
    pub fn until_starttls<S: Read + Write>(
        &mut self,
        stream: &mut S,
        tls_available: bool,
    ) -> Result<bool, HandshakeError> {
        if self.tls != TlsState::Awaited {
            return Err(HandshakeError::TlsState("STARTTLS is not awaited"));
        }
        while let Some(option) = self.next_option(stream)? {
            match option.code {
                NBD_OPT_ABORT => {
                    let _ = reply(stream, option.code, NBD_REP_ACK, &[]);
                    return Ok(false);
                }
                NBD_OPT_EXPORT_NAME => return Err(HandshakeError::TlsRequired),
                NBD_OPT_STARTTLS if option.length != 0 => reply(
                    stream,
                    option.code,
                    NBD_REP_ERR_INVALID,
                    b"NBD_OPT_STARTTLS takes no data",
                )?,
                NBD_OPT_STARTTLS if !tls_available => reply(
                    stream,
                    option.code,
                    NBD_REP_ERR_POLICY,
                    b"too many TLS connections to this server; try again later",
                )?,
                NBD_OPT_STARTTLS => {
                    reply(stream, option.code, NBD_REP_ACK, &[])?;
                    stream.flush()?;
                    self.tls = TlsState::Started;
                    return Ok(true);
                }
                code => reply(
                    stream,
                    code,
                    NBD_REP_ERR_TLS_REQD,
                    b"this server requires TLS: send NBD_OPT_STARTTLS first",
                )?,
            }
        }
        Ok(false)
    }

    /// Options until the client picks an export (NBD_OPT_GO or NBD_OPT_EXPORT_NAME) from
    /// `catalog`; `Ok(None)` when it aborted or left first. Over TLS, a second
    /// NBD_OPT_STARTTLS gets NBD_REP_ERR_INVALID; without TLS, NBD_REP_ERR_UNSUP.
    pub fn choose_export<S: Read + Write>(
        &mut self,
        stream: &mut S,
        catalog: &dyn ExportCatalog,
    ) -> Result<Option<Negotiated>, HandshakeError> {
        if self.tls == TlsState::Awaited {
            return Err(HandshakeError::TlsState(
                "exports asked for before NBD_OPT_STARTTLS",
            ));
        }
        while let Some(WireOption { code, length, data }) = self.next_option(stream)? {
            let Some(data) = data else {
                if code == NBD_OPT_EXPORT_NAME {
                    return Err(HandshakeError::UnknownExport(format!("of {length} bytes")));
                }
                reply(stream, code, NBD_REP_ERR_TOO_BIG, b"option too large")?;
                continue;
            };
            match code {
                NBD_OPT_EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data).into_owned();
                    let Some(export) = catalog.find_export(&name) else {
                        return Err(HandshakeError::UnknownExport(quoted_name(&name)));
                    };
                    // This option has no error reply: a refusal can only close.
                    catalog.admit(&export).map_err(HandshakeError::Refused)?;
                    let flags = export.transmission_flags();
                    let mut out = Vec::with_capacity(10 + 124);
                    out.extend_from_slice(&export.size_bytes.to_be_bytes());
                    out.extend_from_slice(&flags.to_be_bytes());
                    if !self.no_zeroes {
                        out.extend_from_slice(&[0u8; 124]);
                    }
                    stream.write_all(&out)?;
                    stream.flush()?;
                    return Ok(Some(Negotiated {
                        export,
                        transmission_flags: flags,
                        block_size_negotiated: false,
                    }));
                }
                NBD_OPT_ABORT => {
                    let _ = reply(stream, code, NBD_REP_ACK, &[]);
                    let _ = stream.flush();
                    return Ok(None);
                }
                NBD_OPT_STARTTLS => match self.tls {
                    TlsState::Started => {
                        reply(stream, code, NBD_REP_ERR_INVALID, b"TLS is already started")?
                    }
                    _ => reply(
                        stream,
                        code,
                        NBD_REP_ERR_UNSUP,
                        b"this server is not configured for TLS",
                    )?,
                },
                NBD_OPT_LIST => {
                    if !data.is_empty() {
                        reply(
                            stream,
                            code,
                            NBD_REP_ERR_INVALID,
                            b"NBD_OPT_LIST takes no data",
                        )?;
                        continue;
                    }
                    for export in catalog.list_exports() {
                        let mut body = Vec::with_capacity(4 + export.name.len());
                        body.extend_from_slice(&(export.name.len() as u32).to_be_bytes());
                        body.extend_from_slice(export.name.as_bytes());
                        reply(stream, code, NBD_REP_SERVER, &body)?;
                    }
                    reply(stream, code, NBD_REP_ACK, &[])?;
                }
                NBD_OPT_INFO | NBD_OPT_GO => {
                    let Some(request) = parse_info_request(&data) else {
                        reply(stream, code, NBD_REP_ERR_INVALID, b"malformed info request")?;
                        continue;
                    };
                    let Some(export) = catalog.find_export(&request.name) else {
                        reply(
                            stream,
                            code,
                            NBD_REP_ERR_UNKNOWN,
                            format!("no export named {}", quoted_name(&request.name)).as_bytes(),
                        )?;
                        continue;
                    };
                    if code == NBD_OPT_GO {
                        if let Err(why) = catalog.admit(&export) {
                            reply(stream, code, NBD_REP_ERR_POLICY, why.as_bytes())?;
                            continue;
                        }
                    }
                    let flags = export.transmission_flags();
                    let mut body = [0u8; 10];
                    body[0..8].copy_from_slice(&export.size_bytes.to_be_bytes());
                    body[8..10].copy_from_slice(&flags.to_be_bytes());
                    info_reply(stream, code, NBD_INFO_EXPORT, &body)?;
                    if request.info_types.contains(&NBD_INFO_NAME) {
                        info_reply(stream, code, NBD_INFO_NAME, export.name.as_bytes())?;
                    }
                    if request.info_types.contains(&NBD_INFO_DESCRIPTION) {
                        info_reply(
                            stream,
                            code,
                            NBD_INFO_DESCRIPTION,
                            export.description.as_bytes(),
                        )?;
                    }
                    let mut sizes = [0u8; 12];
                    sizes[0..4].copy_from_slice(&export.min_block_bytes.to_be_bytes());
                    sizes[4..8].copy_from_slice(&export.preferred_block_bytes.to_be_bytes());
                    sizes[8..12].copy_from_slice(&export.max_payload_bytes.to_be_bytes());
                    info_reply(stream, code, NBD_INFO_BLOCK_SIZE, &sizes)?;
                    reply(stream, code, NBD_REP_ACK, &[])?;
                    if code == NBD_OPT_GO {
                        stream.flush()?;
                        let block_size_negotiated =
                            request.info_types.contains(&NBD_INFO_BLOCK_SIZE);
                        return Ok(Some(Negotiated {
                            export,
                            transmission_flags: flags,
                            block_size_negotiated,
                        }));
                    }
                }
                _ => reply(stream, code, NBD_REP_ERR_UNSUP, b"option not supported")?,
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Duplex {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Two;
    fn export(name: &str) -> ExportInfo {
        ExportInfo {
            name: name.into(),
            description: "d".into(),
            size_bytes: 1 << 20,
            min_block_bytes: 512,
            preferred_block_bytes: 4096,
            max_payload_bytes: 1 << 22,
            read_only: false,
            can_multi_conn: true,
            can_flush: true,
            can_fua: true,
            can_trim: true,
            can_write_zeroes: true,
        }
    }
    impl ExportCatalog for Two {
        fn list_exports(&self) -> Vec<ExportInfo> {
            vec![export("a"), export("b")]
        }
        fn find_export(&self, name: &str) -> Option<ExportInfo> {
            ["a", "b"].contains(&name).then(|| export(name))
        }
    }

    fn option(code: u32, data: &[u8]) -> Vec<u8> {
        let mut out = IHAVEOPT.to_be_bytes().to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut out = (name.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for info in infos {
            out.extend_from_slice(&info.to_be_bytes());
        }
        out
    }

    fn run(
        client_flags: u32,
        options: &[Vec<u8>],
    ) -> (Result<Option<Negotiated>, HandshakeError>, Vec<u8>) {
        let mut input = client_flags.to_be_bytes().to_vec();
        for o in options {
            input.extend_from_slice(o);
        }
        let mut duplex = Duplex {
            input: std::io::Cursor::new(input),
            output: Vec::new(),
        };
        let result = negotiate(&mut duplex, &Two);
        (result, duplex.output)
    }

    /// Splits the option replies after the 18-byte greeting into (option, type, data).
    fn replies(output: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut at = 18;
        let mut out = Vec::new();
        while at + 20 <= output.len() {
            assert_eq!(
                u64::from_be_bytes(output[at..at + 8].try_into().expect("8")),
                OPTION_REPLY_MAGIC
            );
            let option = u32::from_be_bytes(output[at + 8..at + 12].try_into().expect("4"));
            let kind = u32::from_be_bytes(output[at + 12..at + 16].try_into().expect("4"));
            let len = u32::from_be_bytes(output[at + 16..at + 20].try_into().expect("4")) as usize;
            out.push((option, kind, output[at + 20..at + 20 + len].to_vec()));
            at += 20 + len;
        }
        out
    }

    #[test]
    fn greeting_then_list() {
        let (result, output) = run(3, &[option(NBD_OPT_LIST, &[])]);
        assert!(matches!(result, Ok(None)));
        assert_eq!(&output[0..8], b"NBDMAGIC");
        assert_eq!(&output[8..16], b"IHAVEOPT");
        let replies = replies(&output);
        assert_eq!(replies.len(), 3);
        assert_eq!(replies[0].1, NBD_REP_SERVER);
        assert_eq!(&replies[0].2[4..], b"a");
        assert_eq!(&replies[1].2[4..], b"b");
        assert_eq!(replies[2].1, NBD_REP_ACK);
    }

    /// Shows one export but grants no session on it.
    struct Busy;
    impl ExportCatalog for Busy {
        fn list_exports(&self) -> Vec<ExportInfo> {
            vec![export("a")]
        }
        fn find_export(&self, name: &str) -> Option<ExportInfo> {
            (name == "a").then(|| export(name))
        }
        fn admit(&self, _export: &ExportInfo) -> Result<(), String> {
            Err("no sessions left".into())
        }
    }

    #[test]
    fn a_session_refused_at_go_is_an_option_error_and_negotiation_goes_on() {
        let mut input = 3u32.to_be_bytes().to_vec();
        input.extend(option(NBD_OPT_INFO, &go_payload("a", &[])));
        input.extend(option(NBD_OPT_GO, &go_payload("a", &[])));
        input.extend(option(NBD_OPT_ABORT, &[]));
        let mut duplex = Duplex {
            input: std::io::Cursor::new(input),
            output: Vec::new(),
        };
        let result = negotiate(&mut duplex, &Busy);
        assert!(matches!(result, Ok(None)), "{result:?}");
        let replies = replies(&duplex.output);
        // NBD_OPT_INFO only describes: it is answered in full.
        assert!(replies
            .iter()
            .any(|r| r.0 == NBD_OPT_INFO && r.1 == NBD_REP_ACK));
        let go: Vec<_> = replies.iter().filter(|r| r.0 == NBD_OPT_GO).collect();
        assert_eq!(go.len(), 1, "nothing but the error for NBD_OPT_GO");
        assert_eq!(go[0].1, NBD_REP_ERR_POLICY);
        assert_eq!(go[0].2, b"no sessions left");
        assert_eq!(replies.last().expect("abort").1, NBD_REP_ACK);
    }

    #[test]
    fn go_sends_export_and_block_size() {
        let (result, output) = run(
            3,
            &[option(
                NBD_OPT_GO,
                &go_payload("b", &[NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME]),
            )],
        );
        let negotiated = result.expect("ok").expect("go");
        assert_eq!(negotiated.export.name, "b");
        assert!(negotiated.block_size_negotiated);
        let replies = replies(&output);
        let kinds: Vec<u16> = replies
            .iter()
            .filter(|r| r.1 == NBD_REP_INFO)
            .map(|r| u16::from_be_bytes([r.2[0], r.2[1]]))
            .collect();
        assert_eq!(
            kinds,
            vec![NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE]
        );
        let export_info = &replies[0].2;
        assert_eq!(
            u64::from_be_bytes(export_info[2..10].try_into().expect("8")),
            1 << 20
        );
        assert_eq!(replies.last().expect("ack").1, NBD_REP_ACK);
    }

    #[test]
    fn unknown_export_info_then_abort() {
        let (result, output) = run(
            1,
            &[
                option(NBD_OPT_INFO, &go_payload("zz", &[])),
                option(NBD_OPT_ABORT, &[]),
            ],
        );
        assert!(matches!(result, Ok(None)));
        let replies = replies(&output);
        assert_eq!(replies[0].1, NBD_REP_ERR_UNKNOWN);
        assert_eq!(replies[1].1, NBD_REP_ACK);
    }

    #[test]
    fn malformed_go_and_unsupported_options() {
        let (result, output) = run(
            1,
            &[
                option(NBD_OPT_GO, &[0, 0, 0, 9]),
                option(8, &[]),
                option(NBD_OPT_GO, &go_payload("a", &[])),
            ],
        );
        assert!(result.expect("ok").is_some());
        let replies = replies(&output);
        assert_eq!(replies[0].1, NBD_REP_ERR_INVALID);
        assert_eq!(replies[1].1, NBD_REP_ERR_UNSUP);
    }

    #[test]
    fn export_name_with_and_without_zeroes() {
        let (result, output) = run(1, &[option(NBD_OPT_EXPORT_NAME, b"a")]);
        assert_eq!(result.expect("ok").expect("chosen").export.name, "a");
        assert_eq!(output.len(), 18 + 10 + 124);
        let (_, output) = run(3, &[option(NBD_OPT_EXPORT_NAME, b"a")]);
        assert_eq!(output.len(), 18 + 10);
        let (result, _) = run(3, &[option(NBD_OPT_EXPORT_NAME, b"nope")]);
        assert!(matches!(result, Err(HandshakeError::UnknownExport(_))));
    }

    /// Found by fuzz/fuzz_targets/nbd_options.rs: the name of an unknown export came back
    /// whole, escaped, in the error reply, so a 39 KiB name of control characters made a
    /// 78 KiB reply; NBD clients may refuse any string past 4096 bytes.
    #[test]
    fn unknown_long_name_is_quoted_short() {
        let name = "\r".repeat(MAX_NBD_OPTION_BYTES - 6);
        let (result, output) = run(3, &[option(NBD_OPT_INFO, &go_payload(&name, &[]))]);
        assert!(matches!(result, Ok(None)));
        let replies = replies(&output);
        assert_eq!(replies[0].1, NBD_REP_ERR_UNKNOWN);
        assert!(replies[0].2.len() <= 4096, "{} bytes", replies[0].2.len());
        let message = String::from_utf8(replies[0].2.clone()).expect("utf-8");
        assert!(message.ends_with(&format!("... ({} bytes)", name.len())));

        let (result, _) = run(3, &[option(NBD_OPT_EXPORT_NAME, name.as_bytes())]);
        let Err(HandshakeError::UnknownExport(shown)) = result else {
            panic!("unknown export accepted");
        };
        assert!(shown.len() <= 4096);
        let shown = quoted_name("\u{e9}".repeat(40).as_str());
        assert!(shown.starts_with('"') && shown.contains("... (80 bytes)"));
    }

    /// What [`run_tls_required`] saw: the clear-text part's result, the part over TLS's (if
    /// it ran), and everything the server wrote.
    type TlsRun = (
        Result<bool, HandshakeError>,
        Option<Result<Option<Negotiated>, HandshakeError>>,
        Vec<u8>,
    );

    /// A TLS-required negotiation over the in-memory stream: the clear-text options, then (if
    /// STARTTLS was acknowledged) the options "over TLS" — the same stream, since what TLS
    /// does to the bytes is rustls's business, not the negotiation's.
    fn run_tls_required(clear: &[Vec<u8>], over_tls: &[Vec<u8>], tls_available: bool) -> TlsRun {
        let mut input = 3u32.to_be_bytes().to_vec();
        for o in clear.iter().chain(over_tls) {
            input.extend_from_slice(o);
        }
        let mut duplex = Duplex {
            input: std::io::Cursor::new(input),
            output: Vec::new(),
        };
        let mut negotiation = Negotiation::start(&mut duplex, TlsPolicy::Required).expect("start");
        let started = negotiation.until_starttls(&mut duplex, tls_available);
        let chosen = match started {
            Ok(true) => Some(negotiation.choose_export(&mut duplex, &Two)),
            _ => None,
        };
        (started, chosen, duplex.output)
    }

    #[test]
    fn tls_required_refuses_everything_before_starttls() {
        let (started, chosen, output) = run_tls_required(
            &[
                option(NBD_OPT_LIST, &[]),
                option(NBD_OPT_INFO, &go_payload("a", &[])),
                option(NBD_OPT_GO, &go_payload("a", &[NBD_INFO_BLOCK_SIZE])),
                option(8, &[]),
                option(NBD_OPT_STARTTLS, b"junk"),
                option(NBD_OPT_STARTTLS, &[]),
            ],
            &[
                option(NBD_OPT_STARTTLS, &[]),
                option(NBD_OPT_LIST, &[]),
                option(NBD_OPT_GO, &go_payload("b", &[])),
            ],
            true,
        );
        assert!(matches!(started, Ok(true)));
        let negotiated = chosen.expect("went on over TLS").expect("ok").expect("go");
        assert_eq!(negotiated.export.name, "b");
        let replies = replies(&output);
        let kinds: Vec<(u32, u32)> = replies.iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(
            kinds[..10],
            [
                (NBD_OPT_LIST, NBD_REP_ERR_TLS_REQD),
                (NBD_OPT_INFO, NBD_REP_ERR_TLS_REQD),
                (NBD_OPT_GO, NBD_REP_ERR_TLS_REQD),
                (8, NBD_REP_ERR_TLS_REQD),
                (NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID),
                (NBD_OPT_STARTTLS, NBD_REP_ACK),
                // Over TLS: a second STARTTLS is invalid, then the exports are there.
                (NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID),
                (NBD_OPT_LIST, NBD_REP_SERVER),
                (NBD_OPT_LIST, NBD_REP_SERVER),
                (NBD_OPT_LIST, NBD_REP_ACK),
            ]
        );
        // Nothing about an export leaked before TLS: the refusals carry only text.
        assert!(replies[..4]
            .iter()
            .all(|r| String::from_utf8_lossy(&r.2).contains("requires TLS")));
    }

    #[test]
    fn tls_required_export_name_before_starttls_disconnects() {
        let (started, chosen, output) = run_tls_required(
            &[
                option(NBD_OPT_LIST, &[]),
                option(NBD_OPT_EXPORT_NAME, b"a"),
                option(NBD_OPT_STARTTLS, &[]),
            ],
            &[],
            true,
        );
        assert!(matches!(started, Err(HandshakeError::TlsRequired)));
        assert!(chosen.is_none());
        // One refusal for the LIST, then nothing: no export data, no STARTTLS answer.
        assert_eq!(replies(&output).len(), 1);
        assert_eq!(output.len(), 18 + 20 + replies(&output)[0].2.len());
    }

    #[test]
    fn tls_required_abort_and_leaving() {
        let (started, _, output) = run_tls_required(&[option(NBD_OPT_ABORT, &[])], &[], true);
        assert!(matches!(started, Ok(false)));
        assert_eq!(replies(&output)[0].1, NBD_REP_ACK);
        let (started, _, _) = run_tls_required(&[], &[], true);
        assert!(matches!(started, Ok(false)));
    }

    #[test]
    fn tls_required_without_a_free_slot_refuses_politely() {
        let (started, _, output) = run_tls_required(
            &[option(NBD_OPT_STARTTLS, &[]), option(NBD_OPT_ABORT, &[])],
            &[],
            false,
        );
        assert!(matches!(started, Ok(false)));
        let replies = replies(&output);
        assert_eq!(replies[0].1, NBD_REP_ERR_POLICY);
        assert_eq!(replies[1].1, NBD_REP_ACK);
    }

    #[test]
    fn starttls_without_tls_configured_is_unsupported() {
        let (result, output) = run(
            3,
            &[
                option(NBD_OPT_STARTTLS, &[]),
                option(NBD_OPT_GO, &go_payload("a", &[])),
            ],
        );
        assert_eq!(result.expect("ok").expect("go").export.name, "a");
        assert_eq!(replies(&output)[0].1, NBD_REP_ERR_UNSUP);
    }

    #[test]
    fn steps_out_of_order_are_refused() {
        let mut duplex = Duplex {
            input: std::io::Cursor::new(3u32.to_be_bytes().to_vec()),
            output: Vec::new(),
        };
        let mut negotiation = Negotiation::start(&mut duplex, TlsPolicy::Required).expect("start");
        assert!(matches!(
            negotiation.choose_export(&mut duplex, &Two),
            Err(HandshakeError::TlsState(_))
        ));
        let mut duplex = Duplex {
            input: std::io::Cursor::new(3u32.to_be_bytes().to_vec()),
            output: Vec::new(),
        };
        let mut negotiation = Negotiation::start(&mut duplex, TlsPolicy::Off).expect("start");
        assert!(matches!(
            negotiation.until_starttls(&mut duplex, true),
            Err(HandshakeError::TlsState(_))
        ));
    }

    /// The option budget spans the clear-text part and the part over TLS.
    #[test]
    fn option_budget_spans_starttls() {
        let clear: Vec<Vec<u8>> = (0..MAX_OPTIONS - 1)
            .map(|_| option(NBD_OPT_LIST, &[]))
            .chain([option(NBD_OPT_STARTTLS, &[])])
            .collect();
        let (started, chosen, _) = run_tls_required(&clear, &[option(NBD_OPT_LIST, &[])], true);
        assert!(matches!(started, Ok(true)));
        assert!(matches!(chosen, Some(Err(HandshakeError::TooManyOptions))));
    }

    #[test]
    fn refuses_old_clients_and_oversized_options() {
        assert!(matches!(run(0, &[]).0, Err(HandshakeError::ClientFlags(0))));
        let big = vec![0u8; MAX_NBD_OPTION_BYTES + 1];
        let (result, output) = run(1, &[option(NBD_OPT_LIST, &big)]);
        assert!(matches!(result, Ok(None)));
        assert_eq!(replies(&output)[0].1, NBD_REP_ERR_TOO_BIG);
        // Claiming more than is worth draining ends the handshake at once, unread.
        let mut huge = IHAVEOPT.to_be_bytes().to_vec();
        huge.extend_from_slice(&NBD_OPT_LIST.to_be_bytes());
        huge.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
        let (result, _) = run(1, &[huge]);
        assert!(matches!(result, Err(HandshakeError::OptionTooLarge(_))));
    }
}
