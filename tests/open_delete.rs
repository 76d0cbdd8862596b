//! A volume's opens and its deletion: a session a reactor refuses gives its open back, so the
//! volume can be deleted once its clients leave.

mod common;

use common::{nbd_raw_connect, nbd_request, Server};
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sessions one reactor serves (`MAX_CONNECTIONS_PER_REACTOR`): the next is refused.
const REACTOR_SESSIONS: usize = 256;

/// Whether the server still serves `stream`: a FLUSH gets an answer, not an end of stream.
fn served(stream: &mut TcpStream) -> bool {
    if let Err(error) = stream.write_all(&nbd_request(3, 1, 0, 0)) {
        assert!(
            matches!(
                error.kind(),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
            ),
            "{error}"
        );
        return false;
    }
    let mut reply = [0u8; 16];
    let mut got = 0;
    while got < reply.len() {
        match stream.read(&mut reply[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return false,
            Err(error) => panic!("reading a FLUSH reply: {error}"),
        }
    }
    true
}

#[test]
fn a_volume_refused_by_a_full_reactor_can_be_deleted_after_its_clients_leave() {
    // One reactor, so its session limit is the server's.
    let server = Server::start_with(|_| vec!["--cores".into(), "0".into()]);
    server.ok(
        "lun_create",
        json!({"name": "m", "kind": "mem", "size": 16u64 << 20}),
    );
    server.ok("pool_create", json!({"name": "p", "luns": ["m"]}));
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 4u64 << 20}),
    );
    server.grant("v");
    let mut clients: Vec<TcpStream> = (0..REACTOR_SESSIONS)
        .map(|_| nbd_raw_connect(server.port, "v"))
        .collect();
    assert!(served(&mut clients[0]));
    // The reactor is full: this session is negotiated, then refused by the reactor.
    let mut refused = nbd_raw_connect(server.port, "v");
    assert!(
        !served(&mut refused),
        "a reactor served a session past its limit"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains("refusing a connection") {
        assert!(Instant::now() < deadline, "no refusal in the log");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(refused);
    let volume = &server.ok("volume_get_volumes", json!({"name": "v"}))[0];
    assert_eq!(volume["connections"], REACTOR_SESSIONS, "{volume}");
    // Open: the delete is refused and changes nothing.
    let (_, message) = server
        .call("volume_delete", json!({"name": "v"}))
        .expect_err("a volume with open sessions was deleted");
    assert!(message.contains("open by"), "{message}");
    clients.clear();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let volume = &server.ok("volume_get_volumes", json!({"name": "v"}))[0];
        if volume["connections"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the volume stayed open after every client left: {volume}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.ok("volume_delete", json!({"name": "v"}));
    assert_eq!(server.ok("volume_get_volumes", json!({})), json!([]));
}
