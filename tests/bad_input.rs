//! Garbage on every socket a host or an administrator can reach: malformed, truncated and
//! oversized NBD handshakes and JSON-RPC frames. Each gets an error in its protocol's terms or
//! a closed connection, nothing is allocated for an oversized frame, and the server keeps
//! serving every other connection with the right data.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Whether the peer closed the connection (reads end or fail) within the timeout.
fn closed<S: Read>(stream: &mut S) -> bool {
    let mut sink = [0u8; 4096];
    loop {
        match read_some(stream, &mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) => {
                return !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

fn nbd_connect(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting[0..8], b"NBDMAGIC");
    assert_eq!(&greeting[8..16], b"IHAVEOPT");
    stream
}

fn option_header(code: u32, len: u32) -> Vec<u8> {
    let mut out = b"IHAVEOPT".to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// Reads one option reply: (reply type, data length).
fn option_reply(stream: &mut TcpStream) -> (u32, u32) {
    let mut header = [0u8; 20];
    stream.read_exact(&mut header).expect("option reply");
    assert_eq!(
        u64::from_be_bytes(header[0..8].try_into().expect("8")),
        0x0003_e889_0455_65a9
    );
    let kind = u32::from_be_bytes(header[12..16].try_into().expect("4"));
    let len = u32::from_be_bytes(header[16..20].try_into().expect("4"));
    let mut data = vec![0u8; len as usize];
    stream.read_exact(&mut data).expect("reply data");
    (kind, len)
}

#[test]
fn garbage_in_the_nbd_handshake_closes_only_that_connection() {
    let server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 8 * MIB}),
    );
    write_and_verify(&server.url("v"), &[(0x6b, 0, 3 * MIB)]);

    // Unknown client flags: the server must close (the NBD protocol's rule).
    let mut stream = nbd_connect(server.port);
    stream
        .write_all(&0xffff_fff0u32.to_be_bytes())
        .expect("flags");
    assert!(closed(&mut stream), "kept a client with unknown flags");

    // A bad option magic.
    let mut stream = nbd_connect(server.port);
    stream.write_all(&1u32.to_be_bytes()).expect("flags");
    stream
        .write_all(b"NOTMAGIC\0\0\0\x07\0\0\0\0")
        .expect("option");
    assert!(closed(&mut stream), "kept a client with a bad option magic");

    // An option that claims almost 4 GiB of data: the server neither waits for nor buffers
    // it; it disconnects (the NBD spec's choice for an option it will not read).
    let mut stream = nbd_connect(server.port);
    stream.write_all(&1u32.to_be_bytes()).expect("flags");
    stream
        .write_all(&option_header(7, 0xffff_fff0))
        .expect("huge option");
    stream.write_all(&[0u8; 64]).expect("some of its data");
    assert!(closed(&mut stream), "kept waiting for a 4 GiB option");

    // An option reply is still correct for a well-behaved client after unknown options.
    let mut stream = nbd_connect(server.port);
    stream.write_all(&1u32.to_be_bytes()).expect("flags");
    stream
        .write_all(&option_header(0x1234, 3))
        .expect("unknown");
    stream.write_all(b"abc").expect("its data");
    assert_eq!(
        option_reply(&mut stream).0,
        0x8000_0001,
        "not NBD_REP_ERR_UNSUP"
    );
    stream.write_all(&option_header(2, 0)).expect("abort");
    assert_eq!(
        option_reply(&mut stream).0,
        1,
        "NBD_OPT_ABORT not acknowledged"
    );

    // A handshake cut off in the middle of an option.
    let mut stream = nbd_connect(server.port);
    stream.write_all(&1u32.to_be_bytes()).expect("flags");
    stream.write_all(&option_header(7, 40)[..10]).expect("half");
    drop(stream);

    // Other clients never noticed.
    verify(&server.url("v"), &[(0x6b, 0, 3 * MIB), (0, 3 * MIB, MIB)]);
    write_and_verify(&server.url("v"), &[(0x6c, 4 * MIB, 65536)]);
}

fn rpc_connect(server: &Server) -> UnixStream {
    let stream = UnixStream::connect(&server.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

#[test]
fn garbage_on_the_rpc_socket_gets_errors_and_changes_nothing() {
    let server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 8 * MIB}),
    );
    write_and_verify(&server.url("v"), &[(0x7d, 0, 65536)]);
    let before = server.ok("volume_get_volumes", json!({}));
    // A client that stays connected throughout and keeps working.
    let mut steady = rpc_connect(&server);

    // Not JSON: -32700, then the connection is closed (the stream cannot be resynchronised).
    let mut stream = rpc_connect(&server);
    stream
        .write_all(b"{\"jsonrpc\": \"2.0\", oops}")
        .expect("garbage");
    let answer = read_value(&mut stream);
    assert_eq!(answer["error"]["code"], -32700, "{answer}");
    assert!(closed(&mut stream), "kept a client that sent garbage");

    // Valid JSON that is not a request: -32600, and the connection goes on.
    let mut stream = rpc_connect(&server);
    stream.write_all(b"[1, 2, 3]").expect("array");
    assert_eq!(read_value(&mut stream)["error"]["code"], -32600);
    stream
        .write_all(br#"{"jsonrpc": "2.0", "id": 9, "method": "spdk_get_version"}"#)
        .expect("call");
    assert_eq!(read_value(&mut stream)["id"], 9);

    // An unterminated value growing past the frame limit: refused, never buffered whole.
    let mut stream = rpc_connect(&server);
    stream
        .write_all(br#"{"jsonrpc": "2.0", "id": 1, "method": "x", "params": ""#)
        .expect("start");
    let chunk = vec![b'a'; 64 * 1024];
    let mut refused = false;
    for _ in 0..64 {
        if stream.write_all(&chunk).is_err() {
            refused = true;
            break;
        }
    }
    if !refused {
        let answer: Value = read_value(&mut stream);
        assert!(
            answer["error"]["code"].as_i64().is_some_and(|c| c < 0),
            "an oversized frame was not refused: {answer}"
        );
    }

    // A frame cut off by a disconnect.
    let mut stream = rpc_connect(&server);
    stream
        .write_all(br#"{"jsonrpc": "2.0", "id": 1, "method": "volume_dele"#)
        .expect("half");
    drop(stream);

    // Wrong parameters on a real method: -32602, and nothing changed.
    let mut stream = rpc_connect(&server);
    stream
        .write_all(
            br#"{"jsonrpc": "2.0", "id": 2, "method": "volume_delete", "params": {"name": 7}}"#,
        )
        .expect("bad params");
    assert_eq!(read_value(&mut stream)["error"]["code"], -32602);

    steady
        .write_all(br#"{"jsonrpc": "2.0", "id": 5, "method": "volume_get_volumes"}"#)
        .expect("steady call");
    let answer = read_value(&mut steady);
    assert_eq!(answer["id"], 5);
    let strip = |mut v: Value| {
        for item in v.as_array_mut().expect("array") {
            item.as_object_mut().expect("object").remove("connections");
        }
        v
    };
    assert_eq!(strip(answer["result"].clone()), strip(before));
    verify(&server.url("v"), &[(0x7d, 0, 65536)]);
}
