//! NBD over TLS with client certificates, driven by real clients (libnbd's nbdinfo, qemu-io)
//! with certificates made in each test's temporary dir by the `openssl` command: a CA; a
//! server certificate for 127.0.0.1 and localhost; client1, signed by the CA, whose subject
//! names a host; client2, signed by the CA, whose subject names none; an intruder with
//! client1's subject signed by another CA of the same name. The host a connection is served
//! as comes from the certificate's subject alone: a host known only by address gets nothing
//! over TLS, and a client without TLS gets nothing at all.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// The subject client1's certificate carries, as `openssl x509 -nameopt RFC2253` prints it.
const CLIENT1_SUBJECT: &str = "CN=client1,O=sds test";

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
";

fn openssl(dir: &Path, args: &[&str]) -> Output {
    require_tool("openssl");
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Certificates and the per-client directories libnbd and qemu read (`ca-cert.pem`,
/// `client-cert.pem`, `client-key.pem`).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> Self {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CONFIG).expect("openssl.cnf");
        let ca = |name: &str, subject: &str| {
            openssl(
                &dir,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &format!("{name}-key.pem"),
                    "-out",
                    &format!("{name}-cert.pem"),
                    "-subj",
                    subject,
                    "-days",
                    "2",
                    "-config",
                    "openssl.cnf",
                    "-extensions",
                    "ca_ext",
                ],
            );
        };
        let leaf = |name: &str, subject: &str, ca: &str, extensions: &str, serial: &str| {
            openssl(
                &dir,
                &[
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &format!("{name}-key.pem"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    subject,
                    "-config",
                    "openssl.cnf",
                ],
            );
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{ca}-cert.pem"),
                    "-CAkey",
                    &format!("{ca}-key.pem"),
                    "-set_serial",
                    serial,
                    "-out",
                    &format!("{name}-cert.pem"),
                    "-days",
                    "2",
                    "-extfile",
                    "openssl.cnf",
                    "-extensions",
                    extensions,
                ],
            );
        };
        ca("ca", "/CN=sds test CA");
        // Another CA with the same name: the intruder's certificate names the right issuer,
        // so the client sends it and only the signature gives it away.
        ca("evil", "/CN=sds test CA");
        leaf("server", "/CN=localhost", "ca", "server_ext", "1");
        leaf("client1", "/O=sds test/CN=client1", "ca", "client_ext", "2");
        leaf("client2", "/O=sds test/CN=client2", "ca", "client_ext", "3");
        leaf(
            "intruder",
            "/O=sds test/CN=client1",
            "evil",
            "client_ext",
            "4",
        );
        for client in ["client1", "client2", "intruder", "nocert"] {
            let client_dir = dir.join(client);
            std::fs::create_dir_all(&client_dir).expect("client dir");
            std::fs::copy(dir.join("ca-cert.pem"), client_dir.join("ca-cert.pem")).expect("ca");
            if client != "nocert" {
                std::fs::copy(
                    dir.join(format!("{client}-cert.pem")),
                    client_dir.join("client-cert.pem"),
                )
                .expect("cert");
                std::fs::copy(
                    dir.join(format!("{client}-key.pem")),
                    client_dir.join("client-key.pem"),
                )
                .expect("key");
            }
        }
        Self { dir }
    }

    /// `sds serve` options for TLS, client certificates required unless `client_ca` is false.
    fn serve_args(&self, client_ca: bool) -> Vec<String> {
        let path = |name: &str| self.dir.join(name).display().to_string();
        let mut args = vec![
            "--tls-cert".to_string(),
            path("server-cert.pem"),
            "--tls-key".to_string(),
            path("server-key.pem"),
        ];
        if client_ca {
            args.extend(["--tls-client-ca".to_string(), path("ca-cert.pem")]);
        }
        args
    }

    fn client(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A certificate's subject as an administrator copies it from OpenSSL.
    fn subject(&self, name: &str) -> String {
        let output = openssl(
            &self.dir,
            &[
                "x509",
                "-in",
                &format!("{name}-cert.pem"),
                "-noout",
                "-subject",
                "-nameopt",
                "RFC2253",
            ],
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .trim_start_matches("subject=")
            .to_string()
    }
}

/// A server requiring TLS (client certificates too, unless `client_ca` is false), with a
/// pool and volumes `v` and `w`.
fn tls_server(client_ca: bool) -> (Server, Pki) {
    let server = Server::start_with(|dir| Pki::make(dir).serve_args(client_ca));
    let pki = Pki {
        dir: server.dir.path().join("pki"),
    };
    server.file_pool("p", MIB);
    for volume in ["v", "w"] {
        server.ok(
            "volume_create",
            json!({"name": volume, "pool": "p", "size": 16 * MIB}),
        );
    }
    (server, pki)
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().expect("run the client");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// `nbdinfo --list --json` over TLS with `client_dir`'s certificates: the export names, or
/// the client's output when it failed.
fn list_exports(server: &Server, client_dir: &Path) -> Result<Vec<String>, String> {
    require_tool("nbdinfo");
    let uri = format!(
        "nbds://127.0.0.1:{}/?tls-certificates={}",
        server.port,
        client_dir.display()
    );
    let (ok, text) = run(Command::new("timeout").args(["60", "nbdinfo", "--list", "--json", &uri]));
    if !ok {
        return Err(text);
    }
    let listing: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    assert_eq!(listing["TLS"], json!(true), "{text}");
    Ok(listing["exports"]
        .as_array()
        .map(|exports| {
            exports
                .iter()
                .filter_map(|e| e["export-name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// qemu-io over TLS on `export` with `client_dir`'s certificates; (clean, output), where clean
/// means it succeeded and no pattern check failed.
fn qemu_io_tls(
    server: &Server,
    client_dir: &Path,
    export: &str,
    commands: &[&str],
) -> (bool, String) {
    require_tool("qemu-io");
    let mut command = Command::new("timeout");
    command.args(["60", "qemu-io", "--object"]).arg(format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        client_dir.display()
    ));
    command.args(["--image-opts"]).arg(format!(
        "driver=nbd,host=127.0.0.1,port={},export={export},tls-creds=tls0",
        server.port
    ));
    for c in commands {
        command.args(["-c", c]);
    }
    let (ok, text) = run(&mut command);
    let clean = ok && !text.contains("Pattern verification failed") && !text.contains("failed");
    (clean, text)
}

/// Waits for the server's log to contain `needle` (log lines can trail the client's exit).
fn wait_for_log(server: &Server, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the server log never said {needle:?}:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_certificate_names_the_host_and_shows_only_its_volumes() {
    let (server, pki) = tls_server(true);
    // The subject is exactly what an administrator copies from openssl.
    assert_eq!(pki.subject("client1"), CLIENT1_SUBJECT);
    server.ok(
        "host_create",
        json!({"name": "client1", "nbd_tls_subject": pki.subject("client1")}),
    );
    server.ok("vpath_create", json!({"host": "client1", "volume": "v"}));
    // The test host (127.0.0.0/8, by address) has a path to w: that must not leak to a TLS
    // client coming from the same address.
    server.grant("w");

    let client1 = pki.client("client1");
    assert_eq!(list_exports(&server, &client1), Ok(vec!["v".to_string()]));
    let (clean, text) = qemu_io_tls(
        &server,
        &client1,
        "v",
        &[
            "write -P 0x5a 0 64k",
            "read -P 0x5a 0 64k",
            // Larger than every buffer of the relay, both ways.
            "write -P 0x33 1M 6M",
            "read -P 0x33 1M 6M",
        ],
    );
    assert!(
        clean,
        "qemu-io over TLS failed:\n{text}\nlog:\n{}",
        server.log()
    );
    assert_eq!(text.matches("read ").count(), 2, "{text}");
    // On a new connection the data is there.
    let (clean, text) = qemu_io_tls(
        &server,
        &client1,
        "v",
        &[
            "read -P 0x5a 0 64k",
            "read -P 0x33 1M 6M",
            "read -P 0 7M 1M",
        ],
    );
    assert!(clean, "read-back over TLS failed:\n{text}");
    let log = server.log();
    assert!(
        log.contains(&format!("client certificate {CLIENT1_SUBJECT}"))
            && log.contains("host client1 serving volume v"),
        "{log}"
    );

    // w has no path from client1: not listed, and it cannot be opened.
    let (clean, text) = qemu_io_tls(&server, &client1, "w", &["read 0 4k"]);
    assert!(!clean, "client1 opened w:\n{text}");
    assert!(text.contains("export"), "{text}");
}

/// The relay passes a session's end on: when the reactor closes it (here because the virtual
/// path was deleted), the TLS client sees its connection end, and the relay thread is gone.
#[test]
fn deleting_the_path_cuts_a_tls_client() {
    let (server, pki) = tls_server(true);
    server.ok(
        "host_create",
        json!({"name": "client1", "nbd_tls_subject": CLIENT1_SUBJECT}),
    );
    let path = server.ok("vpath_create", json!({"host": "client1", "volume": "v"}))["id"].clone();
    require_tool("nbdsh");
    let script = format!(
        "import nbd, sys\n\
         h = nbd.NBD()\n\
         h.set_uri_allow_local_file(True)\n\
         h.connect_uri('nbds://127.0.0.1:{port}/v?tls-certificates={dir}')\n\
         h.pwrite(b'\\x42' * 4096, 8192)\n\
         assert h.pread(4096, 8192) == b'\\x42' * 4096\n\
         print('ready', flush=True)\n\
         sys.stdin.readline()\n\
         try:\n    h.pread(4096, 8192)\n    print('STILL SERVED')\n\
         except nbd.Error as e:\n    print('CUT', e)\n",
        port = server.port,
        dir = pki.client("client1").display()
    );
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with libnbd");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut ready = [0u8; 6];
    let got = stdout.read_exact(&mut ready);
    if got.is_err() || &ready != b"ready\n" {
        let output = child.wait_with_output().expect("output");
        panic!(
            "the libnbd client did not get going: {}\nlog:\n{}",
            String::from_utf8_lossy(&output.stderr),
            server.log()
        );
    }
    let relays_before = relay_threads(&server);
    assert_eq!(relays_before, 1, "one TLS connection, one relay thread");
    server.ok("vpath_delete", json!({"id": path}));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("tell the client to go on");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("client output");
    let output = child.wait_with_output().expect("client exit");
    assert!(
        rest.contains("CUT"),
        "the client was still served after its path was deleted: {rest}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_for_log(&server, "TLS relay");
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay_threads(&server) > 0 {
        assert!(
            Instant::now() < deadline,
            "the relay thread outlived its session"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_host_known_only_by_address_gets_nothing_over_tls() {
    let (server, pki) = tls_server(true);
    // The test host matches 127.0.0.0/8 and has paths to both volumes; client2's certificate
    // is signed by the right CA but its subject names no host.
    server.grant("v");
    server.grant("w");
    let client2 = pki.client("client2");
    assert_eq!(list_exports(&server, &client2), Ok(Vec::new()));
    for volume in ["v", "w"] {
        let (clean, text) = qemu_io_tls(&server, &client2, volume, &["read 0 4k"]);
        assert!(
            !clean,
            "a certificate naming no host opened {volume}:\n{text}"
        );
    }
    wait_for_log(&server, "no host matches tls:CN=client2,O=sds test");
}

#[test]
fn unknown_certificates_missing_certificates_and_plain_clients_are_refused() {
    let (server, pki) = tls_server(true);
    server.ok(
        "host_create",
        json!({"name": "client1", "nbd_tls_subject": CLIENT1_SUBJECT}),
    );
    server.ok("vpath_create", json!({"host": "client1", "volume": "v"}));
    server.grant("v");

    // Same subject, issuer of the same name, wrong signature: the TLS handshake fails.
    let refused = list_exports(&server, &pki.client("intruder"));
    assert!(refused.is_err(), "the intruder listed {refused:?}");
    wait_for_log(
        &server,
        "refused: TLS handshake failed: invalid peer certificate",
    );
    // No certificate at all.
    let refused = list_exports(&server, &pki.client("nocert"));
    assert!(
        refused.is_err(),
        "a client without a certificate listed {refused:?}"
    );
    wait_for_log(&server, "peer sent no certificates");

    // Without TLS: libnbd and qemu get nothing.
    let (ok, text) = run(Command::new("timeout").args([
        "60",
        "nbdinfo",
        "--list",
        &format!("nbd://127.0.0.1:{}/", server.port),
    ]));
    assert!(!ok, "a plain client listed exports:\n{text}");
    let (clean, text) = qemu_io(&server.url_without_grant("v"), &["read 0 4k".to_string()]);
    assert!(!clean, "a plain client read v:\n{text}");

    // On the wire: every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD, and
    // NBD_OPT_EXPORT_NAME (which cannot be refused) closes the connection.
    let mut stream = plain_negotiation(server.port);
    for (option, data) in [
        (3u32, Vec::new()),
        (7, go_payload("v")),
        (6, go_payload("v")),
    ] {
        send_option(&mut stream, option, &data);
        let (replied_to, kind, message) = option_reply(&mut stream);
        assert_eq!(
            (replied_to, kind),
            (option, NBD_REP_ERR_TLS_REQD),
            "{message}"
        );
    }
    send_option(&mut stream, 1, b"v");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "answered NBD_OPT_EXPORT_NAME before TLS: {rest:02x?}"
    );
    // A second client can still ask politely to leave.
    let mut stream = plain_negotiation(server.port);
    send_option(&mut stream, 2, &[]);
    assert_eq!(
        option_reply(&mut stream).1,
        1,
        "NBD_OPT_ABORT not acknowledged"
    );

    // After all that, client1 still works.
    let (clean, text) = qemu_io_tls(
        &server,
        &pki.client("client1"),
        "v",
        &["write -P 0x11 0 4k", "read -P 0x11 0 4k"],
    );
    assert!(clean, "{text}");
}

#[test]
fn tls_without_client_certificates_knows_hosts_by_address() {
    let (server, pki) = tls_server(false);
    server.grant("v");
    // A client that has only the CA (to check the server) and no certificate of its own.
    let nocert = pki.client("nocert");
    assert_eq!(list_exports(&server, &nocert), Ok(vec!["v".to_string()]));
    let (clean, text) = qemu_io_tls(
        &server,
        &nocert,
        "v",
        &["write -P 0x77 4k 1M", "read -P 0x77 4k 1M"],
    );
    assert!(clean, "{text}\nlog:\n{}", server.log());
    // TLS is still required.
    let (ok, _) = run(Command::new("timeout").args([
        "60",
        "nbdinfo",
        "--list",
        &format!("nbd://127.0.0.1:{}/", server.port),
    ]));
    assert!(!ok, "a plain client listed exports from a TLS server");
}

#[test]
fn plain_servers_refuse_starttls_and_serve_as_before() {
    let server = Server::start();
    let mut stream = plain_negotiation(server.port);
    send_option(&mut stream, NBD_OPT_STARTTLS, &[]);
    assert_eq!(option_reply(&mut stream).1, NBD_REP_ERR_UNSUP);
    send_option(&mut stream, 3, &[]);
    assert_eq!(
        option_reply(&mut stream).1,
        1,
        "NBD_OPT_LIST after STARTTLS refused"
    );
}

#[test]
fn bad_tls_files_stop_start_up_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::make(dir.path());
    let path = |name: &str| pki.dir.join(name).display().to_string();
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec![
                "--tls-cert".into(),
                path("missing.pem"),
                "--tls-key".into(),
                path("server-key.pem"),
            ],
            vec!["missing.pem".into()],
        ),
        (
            // A certificate where the key should be.
            vec![
                "--tls-cert".into(),
                path("server-cert.pem"),
                "--tls-key".into(),
                path("server-cert.pem"),
            ],
            vec!["key".into(), "server-cert.pem".into()],
        ),
        (
            // A key that is not the certificate's.
            vec![
                "--tls-cert".into(),
                path("server-cert.pem"),
                "--tls-key".into(),
                path("client1-key.pem"),
            ],
            vec!["server-cert.pem".into(), "client1-key.pem".into()],
        ),
        (
            vec![
                "--tls-cert".into(),
                path("server-cert.pem"),
                "--tls-key".into(),
                path("server-key.pem"),
                "--tls-client-ca".into(),
                path("openssl.cnf"),
            ],
            vec!["client CA".into(), "openssl.cnf".into()],
        ),
        (
            vec!["--tls-cert".into(), path("server-cert.pem")],
            vec!["--tls-key".into()],
        ),
    ];
    for (index, (args, expected)) in cases.iter().enumerate() {
        let state = dir.path().join(format!("state{index}"));
        let mut child = Command::new(sds_binary())
            .args(["serve", "--nbd-listen", "none", "--state-dir"])
            .arg(&state)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start sds serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sds serve {args:?} kept running");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = child.wait_with_output().expect("output");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started:\n{text}");
        for needle in expected {
            assert!(
                text.contains(needle.as_str()),
                "{args:?}: no {needle:?} in:\n{text}"
            );
        }
    }
}

/// Threads of the server process named as the TLS relay names its threads.
fn relay_threads(server: &Server) -> usize {
    let state = server.state_dir.display().to_string();
    let pid = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok())
        .find(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .map(|cmdline| {
                    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                    cmdline.contains(" serve ") && cmdline.contains(&state)
                })
                .unwrap_or(false)
        })
        .expect("the server's process")
        .path();
    std::fs::read_dir(pid.join("task"))
        .expect("tasks")
        .filter_map(|task| task.ok())
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .map(|comm| comm.trim() == "nbd-tls-relay")
                .unwrap_or(false)
        })
        .count()
}

const NBD_OPT_STARTTLS: u32 = 5;
const NBD_REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const NBD_REP_ERR_TLS_REQD: u32 = (1 << 31) | 5;

/// A raw client past the greeting and its flags, in the clear.
fn plain_negotiation(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting[0..8], b"NBDMAGIC");
    stream.write_all(&3u32.to_be_bytes()).expect("client flags");
    stream
}

fn send_option(stream: &mut TcpStream, option: u32, data: &[u8]) {
    let mut out = b"IHAVEOPT".to_vec();
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    stream.write_all(&out).expect("send option");
}

fn go_payload(name: &str) -> Vec<u8> {
    let mut out = (name.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out
}

/// One option reply: (option, reply type, data as text).
fn option_reply(stream: &mut TcpStream) -> (u32, u32, String) {
    let mut header = [0u8; 20];
    stream.read_exact(&mut header).expect("option reply");
    assert_eq!(&header[0..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
    let option = u32::from_be_bytes(header[8..12].try_into().expect("4"));
    let kind = u32::from_be_bytes(header[12..16].try_into().expect("4"));
    let length = u32::from_be_bytes(header[16..20].try_into().expect("4")) as usize;
    let mut data = vec![0u8; length];
    stream.read_exact(&mut data).expect("option data");
    (option, kind, String::from_utf8_lossy(&data).into_owned())
}
