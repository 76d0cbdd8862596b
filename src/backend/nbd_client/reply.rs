//! Decoding the server's replies, simple and structured, as a state machine that does no I/O:
//! it says what to receive next ([`Want`]) and is told how many bytes arrived
//! ([`ReplyDecoder::received`]); what it learnt comes out as [`Event`]s. A read's data goes
//! straight into the caller's buffer: the decoder names the cookie and the place in the
//! request's buffer ([`Want::Data`]), never copies it. Headers and the small payloads of hole
//! and error chunks go into the decoder's own buffer; error messages are skipped
//! ([`Want::Discard`]).
//!
//! Everything the server says is checked against the request it answers
//! ([`RequestShape`], looked up by cookie): an unknown cookie, a data chunk outside the read's
//! range or for a command that is not a read, a chunk of a type the client did not negotiate,
//! a malformed length, are all [`ReplyError`]s, and the connection that sent them is dropped.

use crate::target::nbd::protocol::{NBD_EIO, SIMPLE_REPLY_MAGIC};

pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// The chunk is the last of its reply.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;
pub const NBD_REPLY_TYPE_NONE: u16 = 0;
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// The bit every error chunk type has.
pub const NBD_REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
pub const NBD_REPLY_TYPE_ERROR: u16 = NBD_REPLY_TYPE_ERROR_BIT | 1;
pub const NBD_REPLY_TYPE_ERROR_OFFSET: u16 = NBD_REPLY_TYPE_ERROR_BIT | 2;

pub const SIMPLE_REPLY_BYTES: usize = 16;
pub const STRUCTURED_HEADER_BYTES: usize = 20;
/// An OFFSET_HOLE chunk's payload: offset and length.
const HOLE_PAYLOAD_BYTES: usize = 12;
/// An error chunk's fixed part: errno and message length.
const ERROR_FIXED_BYTES: usize = 6;
/// Bytes after an ERROR_OFFSET chunk's message: the offset.
const ERROR_OFFSET_TAIL_BYTES: usize = 8;

/// What the client asked in the request a cookie names: enough to check the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestShape {
    pub read: bool,
    pub offset_bytes: u64,
    pub length_bytes: u32,
}

/// What to receive next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Into [`ReplyDecoder::buffer`] (this many bytes at most).
    Header(usize),
    /// A read's data, into the request's buffer at byte `at`, `len` bytes at most.
    Data { cookie: u64, at: u32, len: u32 },
    /// Bytes to skip (an error chunk's message), at most this many.
    Discard(u32),
}

/// What a reply said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Bytes `at..at + len` of the read `cookie` are done: received into its buffer, or a
    /// hole the caller fills with zeroes.
    Chunk {
        cookie: u64,
        at: u32,
        len: u32,
        hole: bool,
    },
    /// The server reported an error for `cookie`; more chunks follow.
    Failed { cookie: u64, nbd_errno: u32 },
    /// The reply to `cookie` is complete; `nbd_errno` is the error its last message carried
    /// (0 if none: earlier `Failed` events still count).
    Done { cookie: u64, nbd_errno: u32 },
}

/// The server broke the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("bad reply magic {0:#010x}")]
    BadMagic(u32),
    #[error("a structured reply, which was not negotiated")]
    NotNegotiated,
    #[error("a reply to cookie {0}, which is not in flight")]
    UnknownCookie(u64),
    #[error("a reply chunk of type {kind} with {length} bytes for cookie {cookie} is malformed")]
    BadChunk { cookie: u64, kind: u16, length: u32 },
    #[error("a data chunk for cookie {0} outside its request")]
    OutOfRange(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The first 16 bytes of any reply.
    Start,
    /// The last 4 bytes of a structured chunk header.
    ChunkTail,
    /// An OFFSET_DATA chunk's offset.
    DataOffset,
    /// Data into the caller's buffer.
    Data {
        at: u32,
        remaining: u32,
    },
    HolePayload,
    ErrorFixed,
    /// Skipping bytes, then the error's event.
    Discard {
        remaining: u32,
        nbd_errno: u32,
    },
}

/// The current structured chunk's header.
#[derive(Clone, Copy, Debug, Default)]
struct Chunk {
    flags: u16,
    kind: u16,
    cookie: u64,
    length: u32,
    /// Where a data chunk starts in its request's buffer, and how long the whole chunk is.
    data_at: u32,
    data_len: u32,
}

/// Decodes the replies of one connection, one byte range at a time.
#[derive(Debug)]
pub struct ReplyDecoder {
    structured: bool,
    stage: Stage,
    buffer: [u8; STRUCTURED_HEADER_BYTES],
    filled: usize,
    chunk: Chunk,
    /// Events not yet taken, oldest first (a reply makes at most two at a time).
    events: [Option<Event>; 2],
}

impl ReplyDecoder {
    /// A decoder for a connection that negotiated structured replies or not.
    pub fn new(structured: bool) -> Self {
        Self {
            structured,
            stage: Stage::Start,
            buffer: [0; STRUCTURED_HEADER_BYTES],
            filled: 0,
            chunk: Chunk::default(),
            events: [None, None],
        }
    }

    /// Whether the decoder is between replies (nothing of one has arrived).
    pub fn is_idle(&self) -> bool {
        self.stage == Stage::Start && self.filled == 0 && self.events.iter().all(Option::is_none)
    }

    /// How many header bytes the current stage receives in all.
    fn header_goal(&self) -> usize {
        match self.stage {
            Stage::Start => SIMPLE_REPLY_BYTES,
            Stage::ChunkTail => STRUCTURED_HEADER_BYTES,
            Stage::DataOffset => 8,
            Stage::HolePayload => HOLE_PAYLOAD_BYTES,
            Stage::ErrorFixed => ERROR_FIXED_BYTES,
            Stage::Data { .. } | Stage::Discard { .. } => 0,
        }
    }

    /// What to receive next.
    pub fn want(&self) -> Want {
        match self.stage {
            Stage::Data { at, remaining } => Want::Data {
                cookie: self.chunk.cookie,
                at,
                len: remaining,
            },
            Stage::Discard { remaining, .. } => Want::Discard(remaining),
            _ => Want::Header(self.header_goal() - self.filled),
        }
    }

    /// Where [`Want::Header`] bytes go: the unfilled part of the decoder's buffer.
    pub fn buffer(&mut self) -> &mut [u8] {
        let goal = self.header_goal();
        &mut self.buffer[self.filled..goal]
    }

    /// The next event, if any.
    pub fn next_event(&mut self) -> Option<Event> {
        let event = self.events[0].take();
        self.events[0] = self.events[1].take();
        event
    }

    fn push(&mut self, event: Event) {
        let slot = if self.events[0].is_none() { 0 } else { 1 };
        debug_assert!(self.events[slot].is_none(), "events taken between receives");
        self.events[slot] = Some(event);
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([
            self.buffer[at],
            self.buffer[at + 1],
            self.buffer[at + 2],
            self.buffer[at + 3],
        ])
    }

    fn u64_at(&self, at: usize) -> u64 {
        (u64::from(self.u32_at(at)) << 32) | u64::from(self.u32_at(at + 4))
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.buffer[at], self.buffer[at + 1]])
    }

    fn bad_chunk(&self) -> ReplyError {
        ReplyError::BadChunk {
            cookie: self.chunk.cookie,
            kind: self.chunk.kind,
            length: self.chunk.length,
        }
    }

    /// The chunk ended: its Done event if it is the last of its reply.
    fn end_chunk(&mut self, nbd_errno: u32) {
        self.stage = Stage::Start;
        self.filled = 0;
        if self.chunk.flags & NBD_REPLY_FLAG_DONE != 0 {
            self.push(Event::Done {
                cookie: self.chunk.cookie,
                nbd_errno,
            });
        } else if nbd_errno != 0 {
            self.push(Event::Failed {
                cookie: self.chunk.cookie,
                nbd_errno,
            });
        }
    }

    /// `count` bytes of what [`ReplyDecoder::want`] asked for have arrived (into
    /// [`ReplyDecoder::buffer`], the request's buffer, or nowhere). `shape` looks up the
    /// request a cookie names. Take the events ([`ReplyDecoder::next_event`]) before the next
    /// call.
    pub fn received(
        &mut self,
        count: usize,
        shape: impl Fn(u64) -> Option<RequestShape>,
    ) -> Result<(), ReplyError> {
        match self.stage {
            Stage::Data { at, remaining } => {
                let count = (count as u32).min(remaining);
                if count == remaining {
                    let (cookie, data_at, data_len) =
                        (self.chunk.cookie, self.chunk.data_at, self.chunk.data_len);
                    self.push(Event::Chunk {
                        cookie,
                        at: data_at,
                        len: data_len,
                        hole: false,
                    });
                    self.end_chunk(0);
                } else {
                    self.stage = Stage::Data {
                        at: at + count,
                        remaining: remaining - count,
                    };
                }
                return Ok(());
            }
            Stage::Discard {
                remaining,
                nbd_errno,
            } => {
                let count = (count as u32).min(remaining);
                if count == remaining {
                    self.end_chunk(nbd_errno);
                } else {
                    self.stage = Stage::Discard {
                        remaining: remaining - count,
                        nbd_errno,
                    };
                }
                return Ok(());
            }
            _ => {}
        }
        self.filled = (self.filled + count).min(self.header_goal());
        if self.filled < self.header_goal() {
            return Ok(());
        }
        match self.stage {
            Stage::Start => {
                let magic = self.u32_at(0);
                if magic == SIMPLE_REPLY_MAGIC {
                    let nbd_errno = self.u32_at(4);
                    let cookie = self.u64_at(8);
                    let request = shape(cookie).ok_or(ReplyError::UnknownCookie(cookie))?;
                    self.chunk = Chunk {
                        flags: NBD_REPLY_FLAG_DONE,
                        kind: NBD_REPLY_TYPE_NONE,
                        cookie,
                        length: 0,
                        data_at: 0,
                        data_len: request.length_bytes,
                    };
                    // A successful read's data follows a simple reply; nothing follows an
                    // error (the client never negotiated anything that makes it otherwise).
                    if request.read && nbd_errno == 0 && request.length_bytes > 0 {
                        self.filled = 0;
                        self.stage = Stage::Data {
                            at: 0,
                            remaining: request.length_bytes,
                        };
                    } else {
                        self.end_chunk(nbd_errno);
                    }
                } else if magic == STRUCTURED_REPLY_MAGIC {
                    if !self.structured {
                        return Err(ReplyError::NotNegotiated);
                    }
                    self.stage = Stage::ChunkTail;
                } else {
                    return Err(ReplyError::BadMagic(magic));
                }
            }
            Stage::ChunkTail => {
                self.chunk = Chunk {
                    flags: self.u16_at(4),
                    kind: self.u16_at(6),
                    cookie: self.u64_at(8),
                    length: self.u32_at(16),
                    data_at: 0,
                    data_len: 0,
                };
                let cookie = self.chunk.cookie;
                let request = shape(cookie).ok_or(ReplyError::UnknownCookie(cookie))?;
                let length = self.chunk.length as usize;
                self.filled = 0;
                match self.chunk.kind {
                    NBD_REPLY_TYPE_NONE => {
                        if length != 0 || self.chunk.flags & NBD_REPLY_FLAG_DONE == 0 {
                            return Err(self.bad_chunk());
                        }
                        self.end_chunk(0);
                    }
                    NBD_REPLY_TYPE_OFFSET_DATA if request.read && length > 8 => {
                        self.stage = Stage::DataOffset;
                    }
                    NBD_REPLY_TYPE_OFFSET_HOLE if request.read && length == HOLE_PAYLOAD_BYTES => {
                        self.stage = Stage::HolePayload;
                    }
                    NBD_REPLY_TYPE_ERROR if length >= ERROR_FIXED_BYTES => {
                        self.stage = Stage::ErrorFixed
                    }
                    NBD_REPLY_TYPE_ERROR_OFFSET
                        if length >= ERROR_FIXED_BYTES + ERROR_OFFSET_TAIL_BYTES =>
                    {
                        self.stage = Stage::ErrorFixed
                    }
                    // An error type this client does not know is still an error (the spec
                    // asks clients to treat it as one).
                    kind if kind & NBD_REPLY_TYPE_ERROR_BIT != 0 && length >= ERROR_FIXED_BYTES => {
                        self.stage = Stage::ErrorFixed
                    }
                    _ => return Err(self.bad_chunk()),
                }
            }
            Stage::DataOffset => {
                let offset = self.u64_at(0);
                let data_len = self.chunk.length - 8;
                let request =
                    shape(self.chunk.cookie).ok_or(ReplyError::UnknownCookie(self.chunk.cookie))?;
                let at = within(&request, offset, data_len)
                    .ok_or(ReplyError::OutOfRange(self.chunk.cookie))?;
                self.chunk.data_at = at;
                self.chunk.data_len = data_len;
                self.filled = 0;
                self.stage = Stage::Data {
                    at,
                    remaining: data_len,
                };
            }
            Stage::HolePayload => {
                let offset = self.u64_at(0);
                let len = self.u32_at(8);
                let request =
                    shape(self.chunk.cookie).ok_or(ReplyError::UnknownCookie(self.chunk.cookie))?;
                let at = within(&request, offset, len)
                    .filter(|_| len > 0)
                    .ok_or(ReplyError::OutOfRange(self.chunk.cookie))?;
                self.push(Event::Chunk {
                    cookie: self.chunk.cookie,
                    at,
                    len,
                    hole: true,
                });
                self.end_chunk(0);
            }
            Stage::ErrorFixed => {
                // An error of 0 would read as success: the server said it failed, so EIO.
                let nbd_errno = match self.u32_at(0) {
                    0 => NBD_EIO,
                    errno => errno,
                };
                let message_len = usize::from(self.u16_at(4));
                let tail = if self.chunk.kind == NBD_REPLY_TYPE_ERROR_OFFSET {
                    ERROR_OFFSET_TAIL_BYTES
                } else {
                    0
                };
                let length = self.chunk.length as usize;
                let known = self.chunk.kind == NBD_REPLY_TYPE_ERROR
                    || self.chunk.kind == NBD_REPLY_TYPE_ERROR_OFFSET;
                if known && ERROR_FIXED_BYTES + message_len + tail != length
                    || ERROR_FIXED_BYTES + message_len + tail > length
                {
                    return Err(self.bad_chunk());
                }
                let remaining = (length - ERROR_FIXED_BYTES) as u32;
                self.filled = 0;
                if remaining == 0 {
                    self.end_chunk(nbd_errno);
                } else {
                    self.stage = Stage::Discard {
                        remaining,
                        nbd_errno,
                    };
                }
            }
            Stage::Data { .. } | Stage::Discard { .. } => unreachable!("handled above"),
        }
        Ok(())
    }
}

/// Where `offset..offset + len` lies in the request's buffer, if inside the request.
fn within(request: &RequestShape, offset: u64, len: u32) -> Option<u32> {
    let end = offset.checked_add(u64::from(len))?;
    let request_end = request.offset_bytes + u64::from(request.length_bytes);
    if offset < request.offset_bytes || end > request_end {
        return None;
    }
    u32::try_from(offset - request.offset_bytes).ok()
}

/// The errno (positive, Linux numbering) of an NBD error number. NBD's numbers are Linux's for
/// the errors it defines; anything else reads as EIO.
pub fn errno_of(nbd_errno: u32) -> i32 {
    use crate::target::nbd::protocol::{
        NBD_EINVAL, NBD_EIO, NBD_ENOMEM, NBD_ENOSPC, NBD_ENOTSUP, NBD_EOVERFLOW, NBD_EPERM,
        NBD_ESHUTDOWN,
    };
    match nbd_errno {
        NBD_EPERM => libc::EPERM,
        NBD_EIO => libc::EIO,
        NBD_ENOMEM => libc::ENOMEM,
        NBD_EINVAL => libc::EINVAL,
        NBD_ENOSPC => libc::ENOSPC,
        NBD_EOVERFLOW => libc::EOVERFLOW,
        NBD_ENOTSUP => libc::ENOTSUP,
        NBD_ESHUTDOWN => libc::ESHUTDOWN,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: RequestShape = RequestShape {
        read: true,
        offset_bytes: 4096,
        length_bytes: 1024,
    };
    const WRITE: RequestShape = RequestShape {
        read: false,
        offset_bytes: 0,
        length_bytes: 512,
    };

    fn shape(cookie: u64) -> Option<RequestShape> {
        match cookie {
            1 => Some(READ),
            2 => Some(WRITE),
            _ => None,
        }
    }

    fn simple(errno: u32, cookie: u64) -> Vec<u8> {
        crate::target::nbd::protocol::encode_simple_reply(errno, cookie).to_vec()
    }

    fn chunk(flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `wire` to the decoder `step` bytes at a time at most (short receives), with the
    /// read's data landing in `buf`; returns the events.
    fn feed(
        decoder: &mut ReplyDecoder,
        wire: &[u8],
        step: usize,
        buf: &mut [u8],
    ) -> Result<Vec<Event>, ReplyError> {
        let mut events = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let n = match decoder.want() {
                Want::Header(n) => {
                    let n = n.min(step).min(wire.len() - pos);
                    decoder.buffer()[..n].copy_from_slice(&wire[pos..pos + n]);
                    n
                }
                Want::Data { at, len, .. } => {
                    let n = (len as usize).min(step).min(wire.len() - pos);
                    buf[at as usize..at as usize + n].copy_from_slice(&wire[pos..pos + n]);
                    n
                }
                Want::Discard(len) => (len as usize).min(step).min(wire.len() - pos),
            };
            pos += n;
            decoder.received(n, shape)?;
            while let Some(event) = decoder.next_event() {
                events.push(event);
            }
        }
        Ok(events)
    }

    #[test]
    fn simple_replies_with_and_without_data() {
        for step in [1, 3, 7, 4096] {
            let mut decoder = ReplyDecoder::new(false);
            let mut buf = vec![0u8; 1024];
            let data: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
            let mut wire = simple(0, 1);
            wire.extend_from_slice(&data);
            wire.extend(simple(5, 2));
            wire.extend(simple(22, 1));
            let events = feed(&mut decoder, &wire, step, &mut buf).expect("valid");
            assert_eq!(
                events,
                vec![
                    Event::Chunk {
                        cookie: 1,
                        at: 0,
                        len: 1024,
                        hole: false
                    },
                    Event::Done {
                        cookie: 1,
                        nbd_errno: 0
                    },
                    Event::Done {
                        cookie: 2,
                        nbd_errno: 5
                    },
                    Event::Done {
                        cookie: 1,
                        nbd_errno: 22
                    },
                ],
                "step {step}"
            );
            assert_eq!(buf, data);
            assert!(decoder.is_idle());
        }
    }

    #[test]
    fn structured_read_in_chunks_with_a_hole() {
        for step in [1, 5, 4096] {
            let mut decoder = ReplyDecoder::new(true);
            let mut buf = vec![0xeeu8; 1024];
            let mut wire = Vec::new();
            // Bytes 512..1024 first, then a hole over 0..512, then NONE with DONE.
            let mut payload = (4096u64 + 512).to_be_bytes().to_vec();
            payload.extend(std::iter::repeat(7u8).take(512));
            wire.extend(chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &payload));
            let mut hole = 4096u64.to_be_bytes().to_vec();
            hole.extend(512u32.to_be_bytes());
            wire.extend(chunk(0, NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole));
            wire.extend(chunk(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, 1, &[]));
            // A write's reply as a structured NONE.
            wire.extend(chunk(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, 2, &[]));
            let events = feed(&mut decoder, &wire, step, &mut buf).expect("valid");
            assert_eq!(
                events,
                vec![
                    Event::Chunk {
                        cookie: 1,
                        at: 512,
                        len: 512,
                        hole: false
                    },
                    Event::Chunk {
                        cookie: 1,
                        at: 0,
                        len: 512,
                        hole: true
                    },
                    Event::Done {
                        cookie: 1,
                        nbd_errno: 0
                    },
                    Event::Done {
                        cookie: 2,
                        nbd_errno: 0
                    },
                ]
            );
            assert!(buf[512..].iter().all(|&b| b == 7));
            assert!(
                buf[..512].iter().all(|&b| b == 0xee),
                "holes are the caller's"
            );
        }
    }

    #[test]
    fn data_chunk_with_done_and_error_chunks() {
        let mut decoder = ReplyDecoder::new(true);
        let mut buf = vec![0u8; 1024];
        let mut payload = 4096u64.to_be_bytes().to_vec();
        payload.extend(std::iter::repeat(1u8).take(1024));
        let mut wire = chunk(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, 1, &payload);
        // An error with a message, not final, then an ERROR_OFFSET that is.
        let mut error = 5u32.to_be_bytes().to_vec();
        error.extend(3u16.to_be_bytes());
        error.extend(b"bad");
        wire.extend(chunk(0, NBD_REPLY_TYPE_ERROR, 2, &error));
        let mut error_offset = 28u32.to_be_bytes().to_vec();
        error_offset.extend(0u16.to_be_bytes());
        error_offset.extend(4096u64.to_be_bytes());
        wire.extend(chunk(
            NBD_REPLY_FLAG_DONE,
            NBD_REPLY_TYPE_ERROR_OFFSET,
            1,
            &error_offset,
        ));
        let events = feed(&mut decoder, &wire, 4096, &mut buf).expect("valid");
        assert_eq!(
            events,
            vec![
                Event::Chunk {
                    cookie: 1,
                    at: 0,
                    len: 1024,
                    hole: false
                },
                Event::Done {
                    cookie: 1,
                    nbd_errno: 0
                },
                Event::Failed {
                    cookie: 2,
                    nbd_errno: 5
                },
                Event::Done {
                    cookie: 1,
                    nbd_errno: 28
                },
            ]
        );
    }

    #[test]
    fn protocol_errors() {
        let mut buf = vec![0u8; 1024];
        let run = |structured: bool, wire: Vec<u8>, buf: &mut [u8]| {
            feed(&mut ReplyDecoder::new(structured), &wire, 4096, buf)
        };
        let mut bad = simple(0, 1);
        bad[0] = 0;
        assert!(matches!(
            run(false, bad, &mut buf),
            Err(ReplyError::BadMagic(_))
        ));
        assert_eq!(
            run(false, simple(0, 9), &mut buf),
            Err(ReplyError::UnknownCookie(9))
        );
        let none = chunk(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, 1, &[]);
        assert_eq!(run(false, none, &mut buf), Err(ReplyError::NotNegotiated));
        // Data for a write; data past the read's end; NONE without DONE; unknown types.
        let mut payload = 0u64.to_be_bytes().to_vec();
        payload.extend([0u8; 16]);
        assert!(matches!(
            run(
                true,
                chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 2, &payload),
                &mut buf
            ),
            Err(ReplyError::BadChunk { .. })
        ));
        let mut payload = (4096u64 + 1020).to_be_bytes().to_vec();
        payload.extend([0u8; 8]);
        assert_eq!(
            run(
                true,
                chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &payload),
                &mut buf
            ),
            Err(ReplyError::OutOfRange(1))
        );
        assert!(matches!(
            run(true, chunk(0, NBD_REPLY_TYPE_NONE, 1, &[]), &mut buf),
            Err(ReplyError::BadChunk { .. })
        ));
        assert!(matches!(
            run(true, chunk(NBD_REPLY_FLAG_DONE, 5, 1, &[0; 8]), &mut buf),
            Err(ReplyError::BadChunk { .. })
        ));
        // An error chunk whose message runs past it.
        let mut error = 5u32.to_be_bytes().to_vec();
        error.extend(9u16.to_be_bytes());
        assert!(matches!(
            run(
                true,
                chunk(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, 1, &error),
                &mut buf
            ),
            Err(ReplyError::BadChunk { .. })
        ));
        // An unknown error type is an error with its errno.
        let mut error = 12u32.to_be_bytes().to_vec();
        error.extend(0u16.to_be_bytes());
        assert_eq!(
            run(
                true,
                chunk(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR_BIT | 9, 2, &error),
                &mut buf
            ),
            Ok(vec![Event::Done {
                cookie: 2,
                nbd_errno: 12
            }])
        );
    }

    #[test]
    fn errnos() {
        assert_eq!(errno_of(28), libc::ENOSPC);
        assert_eq!(errno_of(1234), libc::EIO);
    }
}
