//! The option negotiation again, structure-aware: the input describes a sequence of options
//! (names of any length and content, info lists, oversized and unknown options) which are
//! encoded with consistent lengths, so the fuzzer spends its time past the framing, in what
//! each option does. Raw-byte framing is `nbd_handshake`'s job.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sds::constants::MAX_NBD_OPTION_BYTES;
use sds::target::nbd::handshake::negotiate;
use sds::target::nbd::protocol::{
    IHAVEOPT, NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST,
};
use sds_fuzz::{check_handshake, Catalog, ClientStream, EXPORT_NAMES};

#[derive(Arbitrary, Debug)]
enum Flags {
    FixedNewstyle,
    FixedNewstyleNoZeroes,
    Other(u32),
}

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Bytes(Vec<u8>),
    /// One byte repeated: long names without the fuzzer having to grow an input to match.
    Repeated {
        byte: u8,
        count: u16,
    },
}

impl Name {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Known(index) => EXPORT_NAMES[usize::from(*index) % EXPORT_NAMES.len()]
                .as_bytes()
                .to_vec(),
            Self::Bytes(bytes) => bytes.clone(),
            Self::Repeated { byte, count } => vec![*byte; usize::from(*count)],
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Opt {
    ExportName(Name),
    Abort,
    List(Vec<u8>),
    Info {
        go: bool,
        name: Name,
        infos: Vec<u16>,
        /// Added to the info count on the wire, to make it disagree with the list.
        count_skew: i8,
    },
    /// An option whose length is past the limit; its payload swallows the rest of the input.
    Oversized {
        option: u32,
        excess: u32,
    },
    Raw {
        option: u32,
        data: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Session {
    read_cap: u8,
    failing_write: u8,
    flags: Flags,
    options: Vec<Opt>,
}

fn push_option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

fn encode(session: &Session) -> Vec<u8> {
    let flags: u32 = match session.flags {
        Flags::FixedNewstyle => 1,
        Flags::FixedNewstyleNoZeroes => 3,
        Flags::Other(flags) => flags,
    };
    let mut out = flags.to_be_bytes().to_vec();
    for option in &session.options {
        match option {
            Opt::ExportName(name) => push_option(&mut out, NBD_OPT_EXPORT_NAME, &name.bytes()),
            Opt::Abort => push_option(&mut out, NBD_OPT_ABORT, &[]),
            Opt::List(data) => push_option(&mut out, NBD_OPT_LIST, data),
            Opt::Info {
                go,
                name,
                infos,
                count_skew,
            } => {
                let name = name.bytes();
                let mut data = (name.len() as u32).to_be_bytes().to_vec();
                data.extend_from_slice(&name);
                let count = (infos.len() as u16).wrapping_add(*count_skew as u16);
                data.extend_from_slice(&count.to_be_bytes());
                for info in infos {
                    data.extend_from_slice(&info.to_be_bytes());
                }
                let code = if *go { NBD_OPT_GO } else { NBD_OPT_INFO };
                push_option(&mut out, code, &data);
            }
            Opt::Oversized { option, excess } => {
                out.extend_from_slice(&IHAVEOPT.to_be_bytes());
                out.extend_from_slice(&option.to_be_bytes());
                let length = (MAX_NBD_OPTION_BYTES as u32).saturating_add(1 + excess % (1 << 20));
                out.extend_from_slice(&length.to_be_bytes());
            }
            Opt::Raw { option, data } => push_option(&mut out, *option, data),
        }
    }
    out
}

fuzz_target!(|session: Session| {
    let input = encode(&session);
    let mut stream = ClientStream::new(&input, session.read_cap, session.failing_write);
    let result = negotiate(&mut stream, &Catalog);
    check_handshake(&result, &stream.output);
});
