//! A volume's opens and its deletion: sessions are admitted at NBD_OPT_GO with their open of
//! the volume, a session refused there (a full reactor) takes no open, and the volume can be
//! deleted once its clients leave.

mod common;

use common::{nbd_request, nbd_try_go, read_some, Server, TEST_HOST};
use serde_json::json;
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sessions one reactor serves (`MAX_CONNECTIONS_PER_REACTOR`): the next is refused.
const REACTOR_SESSIONS: usize = 256;
const NBD_REP_ERR_POLICY: u32 = (1 << 31) | 2;

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
        match read_some(stream, &mut reply[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return false,
            Err(error) => panic!("reading a FLUSH reply: {error}"),
        }
    }
    true
}

#[test]
fn a_volume_refused_by_a_full_reactor_can_be_deleted_after_its_clients_leave() {
    // One reactor, so its session limit is the server's; the host may have more sessions than
    // that, so the reactor is what refuses.
    let server = Server::start_with(|_| vec!["--cores".into(), "0".into()]);
    server.ok(
        "host_set",
        json!({"name": TEST_HOST, "max_sessions": REACTOR_SESSIONS + 44}),
    );
    server.ram_pool("p", 16u64 << 20);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 4u64 << 20}),
    );
    server.grant("v");
    let mut clients: Vec<TcpStream> = (0..REACTOR_SESSIONS)
        .map(|k| {
            nbd_try_go([127, 0, 0, 1], server.port, "v")
                .unwrap_or_else(|error| panic!("session {k} refused: {error:?}"))
        })
        .collect();
    assert!(served(&mut clients[0]));
    assert!(served(&mut clients[REACTOR_SESSIONS - 1]));
    // The reactor is full: this session is refused at NBD_OPT_GO, with the reason, and takes
    // no open of the volume.
    let (code, message) = nbd_try_go([127, 0, 0, 1], server.port, "v")
        .expect_err("a session past the reactor's limit was granted");
    assert_eq!(code, NBD_REP_ERR_POLICY, "{message}");
    assert!(message.contains("sessions"), "{message}");
    let volume = &server.ok("volume_get_volumes", json!({"name": "v"}))[0];
    assert_eq!(volume["connections"], REACTOR_SESSIONS, "{volume}");
    // Open: the delete is refused and changes nothing.
    let (_, message) = server
        .call("volume_delete", json!({"name": "v"}))
        .expect_err("a volume with open sessions was deleted");
    assert!(message.contains("open by"), "{message}");
    assert!(served(&mut clients[1]), "a refused delete cut a session");
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
    // A deleted volume's export is gone: GO is refused, not granted and then dropped.
    assert!(nbd_try_go([127, 0, 0, 1], server.port, "v").is_err());
}
