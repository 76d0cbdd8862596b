//! What one NBD client may take from the others, driven from outside with real clients: the
//! NBD Unix socket's mode (a `unix:UID` host that is not root can connect), handshake slots
//! (a peer that is nobody cannot lock hosts out), sessions per host, and memory held by
//! replies a client never reads.

mod common;
use common::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const MIB: u64 = 1 << 20;

/// `qemu-io` as user `uid` (through `setpriv`): writes a pattern then reads it back.
fn write_and_verify_as(uid: u32, url: &str) -> (bool, String) {
    require_tool("setpriv");
    require_tool("qemu-io");
    let output = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "qemu-io",
            "-f",
            "raw",
            url,
            "-c",
            "write -P 0x3e 0 64k",
            "-c",
            "read -P 0x3e 0 64k",
        ])
        .current_dir("/")
        .output()
        .expect("setpriv qemu-io");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let clean =
        output.status.success() && !text.contains("failed") && text.contains("read 65536/65536");
    (clean, text)
}

/// A server with an NBD Unix socket (and `extra` options), a volume `v` and a host for uid
/// 65534 with a path to it; the socket's permission bits and the volume's URL. Only the
/// socket's own mode may stand in the way: its directory lets anyone through.
fn nobody_behind_nbd_socket(extra: &[&str]) -> (Server, u32, String) {
    let server = Server::start_with(|dir| {
        let mut args = vec![
            "--nbd-socket".to_string(),
            dir.join("nbd.sock").display().to_string(),
        ];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    });
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    let socket = server.dir.path().join("nbd.sock");
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    server.ram_pool("p", 32 * MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 8 * MIB}),
    );
    server.ok(
        "host_create",
        json!({"name": "nobody", "addresses": ["unix:65534"]}),
    );
    server.ok("vpath_create", json!({"host": "nobody", "volume": "v"}));
    let url = format!("nbd+unix:///v?socket={}", socket.display());
    (server, mode, url)
}

#[test]
fn a_unix_host_that_is_not_root_reaches_the_nbd_socket() {
    let (_server, mode, url) = nobody_behind_nbd_socket(&[]);
    assert_eq!(mode, 0o666, "the NBD socket's default mode");
    let (clean, text) = write_and_verify_as(65534, &url);
    assert!(clean, "uid 65534 could not use its volume:\n{text}");
}

#[test]
fn the_nbd_socket_mode_is_a_setting() {
    let (server, mode, url) = nobody_behind_nbd_socket(&["--nbd-unix-mode", "0600"]);
    assert_eq!(mode, 0o600);
    let (clean, text) = write_and_verify_as(65534, &url);
    assert!(!clean, "a 0600 socket let uid 65534 in:\n{text}");
    // Root (the test host's unix:0) still gets in.
    server.grant("v");
    write_and_verify(&url, &[(0x4f, 0, 65536)]);
}

/// The resident memory of the server started for `server`, in bytes (VmRSS of the process
/// whose command line names its state dir).
fn server_rss_bytes(server: &Server) -> u64 {
    let needle = server.state_dir.display().to_string();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(" serve ") || !cmdline.contains(&needle) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(line) = status.lines().find(|l| l.starts_with("VmRSS:")) {
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .expect("VmRSS in kB");
            return kib * 1024;
        }
    }
    panic!("no sds serve process for {needle}");
}

/// Times a real client's 4 KiB write and read-back (qemu-io, pattern compared).
fn timed_small_io(url: &str, pattern: u8) -> std::time::Duration {
    let started = std::time::Instant::now();
    let (clean, text) = qemu_io(
        url,
        &[
            format!("write -P {pattern} 0 4096"),
            format!("read -P {pattern} 0 4096"),
        ],
    );
    assert!(clean && text.contains("read 4096/4096"), "qemu-io:\n{text}");
    started.elapsed()
}

#[test]
fn replies_nobody_reads_hold_bounded_memory_and_others_are_still_served() {
    use std::io::Write;
    const SESSIONS: usize = 48;
    const READS_PER_SESSION: u64 = 24;
    let server = Server::start();
    server.ram_pool("p", 160 * MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 128 * MIB}),
    );
    let url = server.url("v");
    timed_small_io(&url, 0x21);
    let baseline = server_rss_bytes(&server);
    // Each session pipelines 24 reads of 4 MiB (96 MiB of replies) and reads none of them.
    let mut hogs = Vec::new();
    for session in 0..SESSIONS {
        let mut stream = nbd_raw_connect(server.port, "v");
        let mut requests = Vec::new();
        for k in 0..READS_PER_SESSION {
            let offset = (k % 32) * 4 * MIB;
            requests.extend(nbd_request(0, (session as u64) << 32 | k, offset, 4 << 20));
        }
        stream.write_all(&requests).expect("pipelined reads");
        hogs.push(stream);
    }
    // Let the server take what it will take; watch the peak.
    let mut peak = 0;
    let watch_until = std::time::Instant::now() + std::time::Duration::from_secs(4);
    while std::time::Instant::now() < watch_until {
        peak = peak.max(server_rss_bytes(&server));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Another client is served, promptly, with the right bytes.
    let took = timed_small_io(&url, 0x22);
    peak = peak.max(server_rss_bytes(&server));
    eprintln!(
        "baseline {} MiB, peak {} MiB under {SESSIONS} sessions x {READS_PER_SESSION} x 4 MiB unread; 4 KiB write+read took {took:?}",
        baseline >> 20,
        peak >> 20
    );
    // The bound: the server-wide budget of reply buffers (512 MiB), plus one 4 MiB request
    // each session may always have (so that none starves), plus the baseline and slack for
    // the allocator. Without a server-wide budget every session holds its own 64 MiB: 3 GiB.
    let bound = baseline + 512 * MIB + SESSIONS as u64 * 4 * MIB + 256 * MIB;
    assert!(
        peak < bound,
        "resident memory reached {} MiB (bound {} MiB)",
        peak >> 20,
        bound >> 20
    );
    assert!(
        took < std::time::Duration::from_secs(30),
        "a 4 KiB write and read took {took:?}"
    );
    drop(hogs);
}

#[test]
fn refused_requests_do_not_lift_the_per_connection_buffer_cap() {
    use std::io::{Read, Write};
    const GOOD_READS: u64 = 40;
    // The per-connection cap (64 MiB) in 4 MiB requests.
    const CAP_IN_REQUESTS: usize = 16;
    let server = Server::start();
    server.ok(
        "lun_create",
        json!({"name": "base", "kind": "mem", "size": 64 * MIB}),
    );
    server.ok(
        "lun_create",
        json!({"name": "slow", "kind": "fault", "base": "base"}),
    );
    server.ok("pool_create", json!({"name": "p", "luns": ["slow"]}));
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 32 * MIB}),
    );
    write_and_verify(&server.url("v"), &[(0x5c, 0, 4 * MIB)]);
    // Every read now completes one second after it started: the good reads below are all in
    // flight together, and the refused ones answer at once.
    server.ok(
        "lun_inject_fault",
        json!({"name": "slow", "io_type": "read", "mode": "delay", "delay_us": 1_000_000}),
    );
    let mut client = nbd_raw_connect(server.port, "v");
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    // A good 4 MiB read, then a 4 MiB read past the end (EINVAL), and again.
    let mut requests = Vec::new();
    for k in 0..GOOD_READS {
        requests.extend(nbd_request(0, 2 * k, 0, 4 << 20));
        requests.extend(nbd_request(0, 2 * k + 1, 64 * MIB, 4 << 20));
    }
    client.write_all(&requests).expect("requests");
    // Refused reads are answered as soon as they are parsed; a good read only after its
    // second. The server parses past a good read only while the connection's buffers (64 MiB:
    // 16 good reads) allow, so no more than that many refusals can come before the first good
    // reply. If a refusal gave back a charge it never took, all 40 would.
    let mut refused_before_first_good = 0;
    let mut replies = 0;
    let mut data = vec![0u8; 4 << 20];
    let mut seen_good = false;
    while replies < 2 * GOOD_READS {
        let (error, cookie) = nbd_reply(&mut client);
        replies += 1;
        if cookie % 2 == 1 {
            assert_eq!(error, 22, "a read past the end");
            if !seen_good {
                refused_before_first_good += 1;
            }
        } else {
            assert_eq!(error, 0, "a good read");
            client.read_exact(&mut data).expect("read data");
            assert!(data.iter().all(|&b| b == 0x5c), "read back the wrong bytes");
            seen_good = true;
        }
    }
    eprintln!("{refused_before_first_good} refusals before the first good reply");
    assert!(
        refused_before_first_good <= CAP_IN_REQUESTS + 1,
        "{refused_before_first_good} refused reads were answered before the first good one: \
         the connection held more than its 64 MiB of buffers"
    );
    assert!(
        !server.log().contains("buffer accounting"),
        "the server's buffer accounting went out of step"
    );
}

/// Whether the server has closed `stream` (EOF or reset), without blocking.
fn closed_by_server(mut stream: &std::net::TcpStream) -> bool {
    use std::io::Read;
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn a_peer_no_host_names_cannot_lock_hosts_out_of_the_handshake() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    const ATTACKERS: usize = 80;
    const DEADLINE_SECS: u64 = 3;
    let server = Server::start_with(|dir| {
        vec![
            "--nbd-socket".into(),
            dir.join("nbd.sock").display().to_string(),
            "--nbd-handshake-timeout-secs".into(),
            DEADLINE_SECS.to_string(),
        ]
    });
    // The test host, narrowed to 127.0.0.1 (and root on the Unix socket): 127.0.0.5 is nobody.
    server.ok("host_delete", json!({"name": TEST_HOST}));
    server.ok(
        "host_create",
        json!({"name": TEST_HOST, "addresses": ["127.0.0.1", "unix:0"]}),
    );
    server.ram_pool("p", 32 * MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 8 * MIB}),
    );
    let url = server.url("v");
    let unix_url = format!(
        "nbd+unix:///v?socket={}",
        server.dir.path().join("nbd.sock").display()
    );
    // Nobody, from 127.0.0.5 and 127.0.0.6, opens many connections and keeps each alive with
    // a byte a second (each read well within any per-read timeout).
    let attackers: Vec<_> = (0..ATTACKERS)
        .filter_map(|k| nbd_connect_from([127, 0, 0, 5 + (k % 2) as u8], server.port).ok())
        .collect();
    assert_eq!(
        attackers.len(),
        ATTACKERS,
        "could not open the attack connections"
    );
    let started = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let mut streams: Vec<_> = attackers
            .iter()
            .map(|s| s.try_clone().expect("clone"))
            .collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) && sent < 30 {
                for stream in &mut streams {
                    let _ = stream.write(&[0]);
                }
                sent += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // The host is served, over TCP and over the Unix socket, while the attack goes on.
    for url in [&url, &unix_url] {
        let took = timed_small_io(url, 0x33);
        assert!(
            took < Duration::from_secs(30),
            "{url}: a 4 KiB write and read took {took:?} under attack"
        );
    }
    // And every attacking connection is closed by the whole-handshake deadline, although each
    // kept sending.
    let deadline = Instant::now() + Duration::from_secs(DEADLINE_SECS + 20);
    loop {
        let open = attackers.iter().filter(|s| !closed_by_server(s)).count();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} attacking connections still open {:?} after they started",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    trickle.join().expect("trickle");
    let log = server.log();
    assert!(
        log.contains("handshakes of peers no host record names"),
        "no stranger was refused:\n{log}"
    );
}

#[test]
fn one_host_cannot_take_every_session() {
    use std::io::{Read, Write};
    const ATTEMPTS: usize = 300;
    const NBD_REP_ERR_POLICY: u32 = (1 << 31) | 2;
    let server = Server::start_with(|dir| {
        vec![
            "--nbd-socket".into(),
            dir.join("nbd.sock").display().to_string(),
        ]
    });
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    server.ram_pool("p", 32 * MIB);
    for name in ["a", "b"] {
        server.ok(
            "volume_create",
            json!({"name": name, "pool": "p", "size": 8 * MIB}),
        );
    }
    let url = server.url("a");
    write_and_verify(&url, &[(0x1a, 0, 4096)]);
    server.ok(
        "host_create",
        json!({"name": "other", "addresses": ["unix:65534"]}),
    );
    server.ok("vpath_create", json!({"host": "other", "volume": "b"}));
    // The test host opens sessions until it is refused (one reactor serves 256).
    let mut sessions = Vec::new();
    let mut refusal = None;
    for _ in 0..ATTEMPTS {
        match nbd_try_go([127, 0, 0, 1], server.port, "a") {
            Ok(stream) => sessions.push(stream),
            Err(error) => {
                refusal = Some(error);
                break;
            }
        }
    }
    // Every session the server said yes to serves: none is dropped at its first request.
    for (k, stream) in sessions.iter_mut().enumerate() {
        stream
            .write_all(&nbd_request(0, k as u64, 0, 4096))
            .expect("read request");
        let mut header = [0u8; 16];
        if stream.read_exact(&mut header).is_err() {
            panic!(
                "session {k} of {}: NBD_OPT_GO succeeded, then the connection was dropped at \
                 its first request",
                sessions.len()
            );
        }
        assert_eq!(&header[4..8], &[0; 4], "session {k}: read failed");
        let mut data = vec![0u8; 4096];
        stream.read_exact(&mut data).expect("data");
        assert!(data.iter().all(|&b| b == 0x1a), "session {k}: wrong bytes");
    }
    let listed = server.ok("host_get_hosts", json!({"name": TEST_HOST}));
    let limit = listed[0]["max_sessions"]
        .as_u64()
        .expect("max_sessions shown") as usize;
    assert_eq!(
        listed[0]["sessions"].as_u64(),
        Some(limit as u64),
        "{listed}"
    );
    assert_eq!(
        sessions.len(),
        limit,
        "sessions granted past the host's limit"
    );
    let (code, message) = refusal.expect("the host was never refused");
    assert_eq!(code, NBD_REP_ERR_POLICY, "{message}");
    assert!(message.contains("sessions"), "{message}");
    // Real clients of the same host fail at the negotiation, not at their first request;
    // qemu shows the server's reason.
    require_tool("nbdinfo");
    let output = Command::new("nbdinfo").arg(&url).output().expect("nbdinfo");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && text.contains("opt_go"),
        "nbdinfo past the limit: {text}"
    );
    let (clean, text) = qemu_io(&url, &["read 0 4096".into()]);
    assert!(
        !clean && text.contains("already has") && text.contains("sessions open"),
        "qemu-io past the limit:\n{text}"
    );
    eprintln!(
        "nbdinfo: {}qemu-io: {text}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Another host still gets in and reads back what it wrote.
    let unix_url = format!(
        "nbd+unix:///b?socket={}",
        server.dir.path().join("nbd.sock").display()
    );
    let (clean, text) = write_and_verify_as(65534, &unix_url);
    assert!(clean, "the other host was locked out:\n{text}");
    // The limit is the host's own setting: lowering it refuses more; closed sessions give
    // their places back.
    let listing = server.cli(&["host", "list", TEST_HOST]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("SESSIONS") && listing.contains(&format!("{limit}/{limit}")),
        "sds host list:\n{listing}"
    );
    let output = server.cli(&["host", "set", TEST_HOST, "--max-sessions", "2"]);
    assert!(
        output.status.success(),
        "sds host set: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop(sessions);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.ok("host_get_hosts", json!({"name": TEST_HOST}))[0]["sessions"] != json!(0) {
        assert!(std::time::Instant::now() < deadline, "sessions never ended");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let kept: Vec<_> = (0..2)
        .map(|_| nbd_try_go([127, 0, 0, 1], server.port, "a").expect("within the new limit"))
        .collect();
    assert!(nbd_try_go([127, 0, 0, 1], server.port, "a").is_err());
    drop(kept);
}
