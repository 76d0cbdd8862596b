//! The management socket: every JSON-RPC error code provoked, a failed call changing nothing,
//! SPDK's own Python client talking to it, and the command line's tables and `--json`.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::Command;

fn error_code(response: &Value) -> i64 {
    response["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error response: {response}"))
}

fn listing(server: &Server) -> Value {
    json!({
        "luns": server.ok("lun_get_luns", json!({})),
        "pools": server.ok("pool_get_pools", json!({})),
        "volumes": server.ok("volume_get_volumes", json!({})),
    })
}

#[test]
fn each_error_code_and_failed_calls_change_nothing() {
    let server = Server::start();
    server.mixed_pool("p", 1 << 20);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 8u64 << 20}),
    );
    let before = listing(&server);

    // -32700: not JSON at all.
    assert_eq!(error_code(&server.rpc_raw(b"{this is not json")), -32700);
    // -32600: valid JSON, not a request.
    assert_eq!(
        error_code(&server.rpc_raw(br#"{"jsonrpc":"2.0","id":1}"#)),
        -32600
    );
    assert_eq!(
        error_code(
            &server.rpc_raw(br#"{"jsonrpc":"2.0","id":2,"method":"lun_get_luns","params":"x"}"#)
        ),
        -32600
    );
    assert_eq!(error_code(&server.rpc_raw(br#"[1,2]"#)), -32600);
    // -32601: unknown method.
    let response = server.rpc_raw(br#"{"jsonrpc":"2.0","id":3,"method":"volume_explode"}"#);
    assert_eq!(error_code(&response), -32601);
    assert_eq!(response["id"], 3);
    // -32602: each names the bad parameter.
    let cases = [
        (
            "volume_create",
            json!({"name": "w", "pool": "p", "size": 4097}),
            "size",
        ),
        (
            "volume_create",
            json!({"name": "w", "pool": "nope", "size": 4096}),
            "pool",
        ),
        (
            "volume_create",
            json!({"name": "w", "pool": "p", "size": 4096, "block_size": 1000}),
            "block_size",
        ),
        (
            "volume_create",
            json!({"name": "bad name", "pool": "p", "size": 4096}),
            "name",
        ),
        (
            "lun_create",
            json!({"name": "l1", "kind": "mem", "size": 1 << 20, "block_size": 1000}),
            "block_size",
        ),
        (
            "lun_create",
            json!({"name": "l2", "kind": "nbd", "uri": "nbd://127.0.0.1:1/x", "block_size": 1000}),
            "block_size",
        ),
        (
            "volume_create",
            json!({"name": "v", "pool": "p", "size": 4096}),
            "name",
        ),
        (
            "volume_create",
            json!({"name": "w", "pool": "p", "size": 4096, "colour": "red"}),
            "colour",
        ),
        ("volume_resize", json!({"name": "v", "size": 4096}), "size"),
        ("lun_create", json!({"name": "x", "kind": "tape"}), "kind"),
        ("lun_create", json!({"name": "x", "kind": "mem"}), "size"),
        (
            "lun_create",
            json!({"name": "x", "kind": "file", "path": "/etc/hostname/x.img", "size": 1048576}),
            "path",
        ),
        (
            "lun_create",
            json!({"name": "x", "kind": "file", "path": "/tmp/sds-test-never-created.img"}),
            "size",
        ),
        (
            "pool_create",
            json!({"name": "q", "luns": ["p-f512"]}),
            "luns",
        ),
        ("pool_create", json!({"name": "q", "luns": []}), "luns"),
        (
            "pool_create",
            json!({"name": "q", "luns": ["missing"], "extent_size": 3000}),
            "extent_size",
        ),
        ("pool_delete", json!({"name": "p"}), "name"),
        ("lun_delete", json!({"name": "p-f512b"}), "name"),
        ("volume_delete", json!({"name": "nope"}), "name"),
    ];
    for (method, params, parameter) in cases {
        match server.call(method, params.clone()) {
            Err((code, message)) => {
                assert_eq!(code, -32602, "{method} {params}: {message}");
                assert!(
                    message.starts_with(&format!("{parameter}:")),
                    "{method} {params}: message {message:?} does not name {parameter}"
                );
            }
            Ok(result) => panic!("{method} {params} succeeded: {result}"),
        }
    }
    assert_eq!(
        listing(&server),
        before,
        "a failed call changed the configuration"
    );
    // The server still answers and serves data.
    write_and_verify(&server.url("v"), &[(0x1f, 0, 4096)]);
    // A notification (no id) is carried out and not answered: the next answer is for id 9.
    let response = server.rpc_raw(br#"{"jsonrpc":"2.0","method":"spdk_get_version"}{"jsonrpc":"2.0","id":9,"method":"spdk_get_version"}"#);
    assert_eq!(response["id"], 9);
}

#[test]
fn spdk_python_client_talks_to_the_socket() {
    let server = Server::start();
    server.mixed_pool("p", 1 << 20);
    server.ok(
        "volume_create",
        json!({"name": "vol1", "pool": "p", "size": 16u64 << 20, "block_size": 512}),
    );
    let python = spdk_python();
    let script = format!(
        "import json\nfrom spdk.rpc.client import JSONRPCClient\nc = JSONRPCClient('{}')\nprint(json.dumps({{'version': c.call('spdk_get_version'), 'bdevs': c.call('bdev_get_bdevs'), 'one': c.call('bdev_get_bdevs', {{'name': 'vol1'}})}}))\n",
        server.socket.display()
    );
    let output = Command::new(&python)
        .args(["-c", &script])
        .output()
        .expect("python");
    assert!(
        output.status.success(),
        "SPDK's client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("json from the script");
    assert!(
        answer["version"]["version"]
            .as_str()
            .expect("version")
            .starts_with("sds v"),
        "{answer}"
    );
    let bdev = &answer["bdevs"][0];
    assert_eq!(bdev["name"], "vol1");
    assert_eq!(bdev["block_size"], 512);
    assert_eq!(bdev["num_blocks"], (16u64 << 20) / 512);
    assert_eq!(bdev["uuid"].as_str().map(str::len), Some(36));
    assert_eq!(answer["one"][0]["name"], "vol1");
    // And its command-line tool, spdk-rpc, with its pretty-printed framing.
    let spdk_rpc = python.with_file_name("spdk-rpc");
    let output = Command::new(&spdk_rpc)
        .arg("-s")
        .arg(&server.socket)
        .arg("spdk_get_version")
        .output()
        .expect("spdk-rpc");
    assert!(
        output.status.success(),
        "spdk-rpc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("sds v"));
}

#[test]
fn command_line_tables_and_json() {
    let server = Server::start();
    let run = |args: &[&str]| {
        let output = server.cli(args);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (
            output.status.success(),
            text,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert!(
        run(&[
            "lun",
            "create",
            "a",
            "--kind",
            "file",
            "--size",
            "32M",
            "--block-size",
            "4096"
        ])
        .0
    );
    assert!(run(&["lun", "create", "m", "--kind", "file", "--size", "16M"]).0);
    assert!(
        run(&[
            "pool",
            "create",
            "pool1",
            "--lun",
            "a",
            "--lun",
            "m",
            "--extent-size",
            "1M"
        ])
        .0
    );
    let (ok, table, _) = run(&[
        "volume", "create", "disk1", "--pool", "pool1", "--size", "20M",
    ]);
    assert!(ok);
    assert!(
        table.contains("disk1") && table.contains("20.0 MiB"),
        "{table}"
    );
    let (ok, table, _) = run(&["pool", "list"]);
    assert!(
        ok && table.starts_with("NAME") && table.contains("pool1") && table.contains("a,m"),
        "{table}"
    );
    let (ok, json_text, _) = run(&["--json", "volume", "list"]);
    assert!(ok);
    let volumes: Value = serde_json::from_str(&json_text).expect("--json output is JSON");
    assert_eq!(volumes[0]["size"], 20u64 << 20);
    let (ok, text, _) = run(&["rpc", "bdev_get_bdevs", r#"{"name":"disk1"}"#]);
    assert!(
        ok && text.contains("\"product_name\": \"sds volume\""),
        "{text}"
    );
    let (ok, _, error) = run(&[
        "volume", "create", "disk2", "--pool", "nope", "--size", "1M",
    ]);
    assert!(
        !ok && error.contains("pool: no pool nope") && error.contains("-32602"),
        "{error}"
    );
    let output = Command::new(sds_binary())
        .args(["--socket", "/nonexistent/sds.sock", "volume", "list"])
        .output()
        .expect("sds");
    assert!(
        !output.status.success() && String::from_utf8_lossy(&output.stderr).contains("sds serve")
    );
}

#[test]
fn demo_runs_end_to_end() {
    require_tool("qemu-io");
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(sds_binary())
        .args(["demo", "--state-dir"])
        .arg(dir.path().join("demo"))
        .output()
        .expect("sds demo");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("every pattern read back as written") && text.contains("sds demo: done"),
        "{text}"
    );
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// The harness's RPC read survives signals: a reader blocked on the answer is interrupted over
/// and over (a handler installed without SA_RESTART, so each one fails the read with EINTR) and
/// still returns the whole answer. On a loaded CI machine this is what made TLS tests fail
/// with "Interrupted system call".
#[test]
fn the_harness_rpc_read_survives_signals() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" fn that does nothing,
    // which is async-signal-safe, and SIGUSR2 is used by nothing else in this test binary.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as *const () as usize;
        action.sa_flags = 0;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
            0
        );
    }
    let (mut server_end, mut client_end) = UnixStream::pair().expect("socket pair");
    let (thread_tx, thread_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        thread_tx
            .send(unsafe { libc::pthread_self() })
            .expect("send");
        read_value(&mut client_end)
    });
    let reader_thread = thread_rx.recv().expect("reader thread");
    for _ in 0..50 {
        // SAFETY: the reader thread is alive until it has read the answer, which is sent only
        // after the last signal.
        unsafe { libc::pthread_kill(reader_thread, libc::SIGUSR2) };
        std::thread::sleep(Duration::from_millis(5));
    }
    server_end
        .write_all(br#"{"jsonrpc": "2.0", "id": 1, "result": 42}"#)
        .expect("answer");
    let answer = reader.join().expect("the reader panicked");
    assert_eq!(answer["result"], json!(42));
}

/// A reader that goes away before the output ends (`sds rpc … | head -1`) ends the command
/// quietly, as it ends other Unix tools: no panic, no error message.
#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    use std::process::Stdio;
    let server = Server::start();
    // A pipe whose reading end is closed before the command starts: its first write fails.
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is two ints for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0] is the pipe's reading end, ours alone.
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is the pipe's writing end, which the Stdio takes over.
    let writer = unsafe { <Stdio as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let output = std::process::Command::new(common::sds_binary())
        .arg("--socket")
        .arg(&server.socket)
        .args(["rpc", "bdev_get_bdevs"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run sds");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.is_empty(),
        "sds rpc printed on its way out: {stderr}"
    );
    assert!(
        !output.status.success(),
        "the write to a closed pipe went unnoticed"
    );
}
