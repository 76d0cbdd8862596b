//! Idle management connections cannot lock management out: when every RPC slot is taken, the
//! connection idle the longest is closed to make room for the new client.

mod common;
use common::*;
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// `MAX_RPC_CONNECTIONS` in src/constants.rs.
const MAX_RPC_CONNECTIONS: usize = 64;

/// Whether the server closed `stream` (a read sees end of file), waiting up to `wait`.
fn closed_by_server(stream: &mut UnixStream, wait: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let deadline = Instant::now() + wait;
    let mut byte = [0u8; 1];
    while Instant::now() < deadline {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn idle_connections_on_every_slot_do_not_lock_management_out() {
    let server = Server::start();
    // Every slot taken: half silent, half trickling an unfinished request.
    let mut idle = Vec::new();
    for index in 0..MAX_RPC_CONNECTIONS {
        let mut stream = UnixStream::connect(&server.socket).expect("connect");
        if index % 2 == 1 {
            loop {
                match stream.write(b"{\"jsonrpc\":") {
                    Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                    written => {
                        written.expect("write");
                        break;
                    }
                }
            }
        }
        idle.push(stream);
    }
    // Let the server accept them all before the new clients arrive.
    std::thread::sleep(Duration::from_millis(500));

    // New management clients are served, each within the harness's 30 s deadline.
    for round in 0..8 {
        let started = Instant::now();
        let luns = server.call("lun_get_luns", json!({}));
        assert!(luns.is_ok(), "round {round}: {luns:?}");
        eprintln!("round {round}: served in {:?}", started.elapsed());
    }
    // The oldest idle connections made room: the first one is closed.
    assert!(
        closed_by_server(&mut idle[0], Duration::from_secs(10)),
        "the longest-idle connection was not closed"
    );
}
