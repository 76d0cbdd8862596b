//! The appliance (issue 13): the configuration file (`sds serve --config`), the systemd
//! notify protocol spoken for real to a datagram socket standing in for systemd, the unit
//! checked by `systemd-analyze verify`, and the Debian package installed and removed with dpkg.

mod common;

use common::{free_port, require_tool, run_bounded, sds_binary, serve_must_fail, Server};
use serde_json::json;
use std::net::TcpStream;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Waits until `ready` holds or `deadline` passes; returns whether it held.
fn wait_for(deadline: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ready()
}

/// SIGTERM to a child we started; waits up to 30 s and returns whether it exited with 0.
fn terminate(child: &mut Child) -> bool {
    // SAFETY: kill() with the PID of our own child and a valid signal.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.success();
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `command` (an `sds serve`) started with its stdout and stderr in `dir`/server.log.
fn spawn_logged(command: &mut Command, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("server.log")).expect("log");
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start sds serve")
}

/// What the server started by `spawn_logged` in `dir` has logged so far.
fn server_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

#[test]
fn example_config_starts_a_server_and_flags_override_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let port = free_port();
    // The installed example, as it is: every key in it is checked, and the flags for the
    // state dir and the listeners (the example's are the system's) override it.
    let mut child = spawn_logged(
        Command::new(sds_binary())
            .args(["serve", "--config"])
            .arg(repo().join("contrib/sds.toml"))
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--nbd-listen", &format!("127.0.0.1:{port}")])
            .args(["--iscsi-listen", "none", "--nvmf-listen", "none"]),
        dir.path(),
    );
    let log = || server_log(dir.path());
    let served = wait_for(Duration::from_secs(30), || {
        UnixStream::connect(state_dir.join("sds.sock")).is_ok()
            && TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(
        served,
        "the example config did not start a server:\n{}",
        log()
    );
    assert!(log().contains("options from"), "{}", log());
    assert!(terminate(&mut child), "{}", log());
}

#[test]
fn config_file_values_apply_and_a_flag_overrides_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let rpc_socket = dir.path().join("control.sock");
    let (file_port, flag_port) = (free_port(), free_port());
    let config = dir.path().join("sds.toml");
    std::fs::write(
        &config,
        format!(
            "# a test's configuration\nstate_dir = {state:?}\nrpc_socket = {rpc:?}\n\
             nbd_listen = \"127.0.0.1:{file_port}\"\niscsi_listen = \"none\"\n\
             nvmf_listen = \"127.0.0.1:{nvmf}\"\ncycle_ms = 50\n",
            state = state_dir.display().to_string(),
            rpc = rpc_socket.display().to_string(),
            nvmf = free_port(),
        ),
    )
    .expect("write config");
    let mut child = spawn_logged(
        Command::new(sds_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--nbd-listen", &format!("127.0.0.1:{flag_port}")])
            .env_remove("SDS_STATE_DIR"),
        dir.path(),
    );
    let log = || server_log(dir.path());
    // The file's state dir and socket are used...
    let served = wait_for(Duration::from_secs(30), || {
        UnixStream::connect(&rpc_socket).is_ok()
    });
    assert!(
        served,
        "no management socket at the file's path:\n{}",
        log()
    );
    assert!(state_dir.join("iscsi-target.json").exists(), "{}", log());
    // ...and the command line's NBD port, not the file's.
    assert!(
        wait_for(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            flag_port
        ))
        .is_ok()),
        "{}",
        log()
    );
    assert!(
        TcpStream::connect(("127.0.0.1", file_port)).is_err(),
        "the file's nbd_listen was used although --nbd-listen overrides it"
    );
    assert!(terminate(&mut child), "{}", log());
}

#[test]
fn invalid_config_stops_start_up_naming_file_line_and_expectation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cases = [
        (
            "state_dir = \"x\"\n\n# the port\nnbd_listn = \"127.0.0.1:1\"\n",
            ":4: unknown key `nbd_listn`; expected one of:",
            "nbd_listen",
        ),
        (
            "poll = \"busy\"\ncycle_ms = 5\n",
            ":2: bad value for `cycle_ms`",
            "10..=10000",
        ),
        (
            "poll = \"fast\"\n",
            ":1: bad value for `poll`",
            "busy, adaptive",
        ),
        (
            "\nnvmf_listen = \"localhost\"\n",
            ":2: bad value for `nvmf_listen`",
            "expected HOST:PORT",
        ),
        (
            "cycle_ms = 100\ncores = [1, 2]\n",
            ":2: bad value for `cores`",
            "expected one value",
        ),
        (
            "log_level = \"info\"\nstate_dir = \n",
            ":2:",
            "expected TOML",
        ),
    ];
    for (index, (text, location, expected)) in cases.into_iter().enumerate() {
        let config = dir.path().join(format!("bad{index}.toml"));
        std::fs::write(&config, text).expect("write config");
        let output = serve_must_fail(
            &[
                "--config".as_ref(),
                config.as_os_str(),
                "--state-dir".as_ref(),
                state.as_os_str(),
            ],
            "an invalid configuration file must stop start-up",
        );
        let named = format!("{}{location}", config.display());
        assert!(output.contains(&named), "expected {named:?} in:\n{output}");
        assert!(
            output.contains(expected),
            "expected {expected:?} in:\n{output}"
        );
    }
    assert!(
        !state.exists(),
        "a refused configuration created the state dir"
    );

    // Every flag `sds serve --help` shows is a key, with nothing written for it but the flag
    // (the file is read against clap's definition): the unknown-key error lists them all.
    let help = Command::new(sds_binary())
        .args(["serve", "--help"])
        .output()
        .expect("sds serve --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags: Vec<String> = help
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .filter_map(|rest| rest.split([' ', '=', '<']).next())
        .filter(|flag| !["help", "config", "socket", "json"].contains(flag))
        .map(|flag| flag.replace('-', "_"))
        .collect();
    assert!(flags.len() >= 15, "too few flags found in:\n{help}");
    let config = dir.path().join("unknown.toml");
    std::fs::write(&config, "no_such_key = 1\n").expect("write config");
    let output = serve_must_fail(
        &["--config".as_ref(), config.as_os_str()],
        "an unknown key must stop start-up",
    );
    let known = output
        .split("expected one of: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no key list in:\n{output}"));
    let known: Vec<&str> = known.trim().split(", ").collect();
    for flag in &flags {
        assert!(
            known.contains(&flag.as_str()),
            "--{flag} is not a key: {known:?}"
        );
    }
    // A file that is not there names itself.
    let missing = dir.path().join("missing.toml");
    let output = serve_must_fail(
        &["--config".as_ref(), missing.as_os_str()],
        "a missing configuration file must stop start-up",
    );
    assert!(output.contains("missing.toml"), "{output}");
}

/// The service manager's side of `sd_notify`: a datagram socket, and what arrived on it.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        Self { socket, path }
    }

    /// The next datagram within `deadline`, as text.
    fn next(&self, deadline: Duration) -> Option<String> {
        let until = Instant::now() + deadline;
        let mut buffer = [0u8; 4096];
        while Instant::now() < until {
            match self.socket.recv(&mut buffer) {
                Ok(n) => return Some(String::from_utf8_lossy(&buffer[..n]).into_owned()),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => panic!("notify socket: {error}"),
            }
        }
        None
    }

    /// The instants at which `WATCHDOG=1` arrived during `window`.
    fn watchdog_pings(&self, window: Duration) -> Vec<Instant> {
        let until = Instant::now() + window;
        let mut pings = Vec::new();
        while let Some(message) = self.next(until.saturating_duration_since(Instant::now())) {
            if message.lines().any(|line| line == "WATCHDOG=1") {
                pings.push(Instant::now());
            }
        }
        pings
    }
}

#[test]
fn notify_ready_after_listeners_watchdog_while_reactors_progress_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = NotifySocket::bind(dir.path());
    let state_dir = dir.path().join("state");
    let port = free_port();
    // WatchdogSec=1s: a ping every 500 ms while healthy.
    let mut child = spawn_logged(
        Command::new(sds_binary())
            .arg("serve")
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--nbd-listen", &format!("127.0.0.1:{port}")])
            .args(["--iscsi-listen", "none", "--nvmf-listen", "none"])
            .env("NOTIFY_SOCKET", &notify.path)
            .env("WATCHDOG_USEC", "1000000")
            .env_remove("WATCHDOG_PID")
            .env("SDS_TEST_FAULTS", "1"),
        dir.path(),
    );
    let log = || server_log(dir.path());

    // A status while the pools are replayed, then READY=1, and when it comes the listeners
    // accept at once.
    let until = Instant::now() + Duration::from_secs(30);
    let mut before_ready = Vec::new();
    loop {
        let message = notify
            .next(until.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|| panic!("no READY=1 within 30 s; log:\n{}", log()));
        if message.lines().any(|line| line == "READY=1") {
            assert!(message.contains("STATUS=serving"), "{message}");
            break;
        }
        before_ready.push(message);
    }
    assert!(
        before_ready.iter().any(|m| m.contains("STATUS=replaying")),
        "{before_ready:?}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "READY=1 came before the NBD listener accepted"
    );
    let mut rpc = UnixStream::connect(state_dir.join("sds.sock"))
        .expect("READY=1 came before the management socket accepted");

    // The watchdog keeps coming while the reactor is healthy.
    let pings = notify.watchdog_pings(Duration::from_secs(3));
    assert!(
        pings.len() >= 3,
        "{} WATCHDOG=1 in 3 s; log:\n{}",
        pings.len(),
        log()
    );

    // Wedge the reactor for 8 s: at most the ping already earned goes out, then none until
    // the reactor goes round its loop again.
    let wedged_at = Instant::now();
    use std::io::Write;
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "reactor_wedge",
                         "params": {"reactor": 0, "duration_ms": 8000}});
    rpc.write_all(request.to_string().as_bytes())
        .expect("send reactor_wedge");
    let reply = common::read_value(&mut rpc);
    assert_eq!(reply["result"], json!(true), "{reply}");
    let pings = notify.watchdog_pings(Duration::from_secs(7));
    let late: Vec<_> = pings
        .iter()
        .map(|at| at.duration_since(wedged_at))
        .filter(|after| *after > Duration::from_secs(2))
        .collect();
    assert!(
        late.is_empty(),
        "WATCHDOG=1 kept coming with the reactor wedged: {late:?} after the wedge; log:\n{}",
        log()
    );
    // Once the wedge ends, the pings come back.
    let pings = notify.watchdog_pings(Duration::from_secs(10));
    assert!(
        !pings.is_empty(),
        "no WATCHDOG=1 after the reactor recovered; log:\n{}",
        log()
    );
    assert!(log().contains("made no progress"), "{}", log());

    // SIGTERM: STOPPING=1, and a clean exit.
    // SAFETY: kill() with the PID of our own child and a valid signal.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let message = notify
            .next(until.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|| panic!("no STOPPING=1 within 30 s of SIGTERM; log:\n{}", log()));
        if message.lines().any(|line| line == "STOPPING=1") {
            break;
        }
    }
    assert!(terminate(&mut child), "not a clean exit; log:\n{}", log());
}

#[test]
fn reactor_wedge_is_refused_without_the_test_environment() {
    let server = Server::start();
    let (_, message) = server
        .call("reactor_wedge", json!({"reactor": 0, "duration_ms": 1000}))
        .expect_err("reactor_wedge without SDS_TEST_FAULTS=1");
    assert!(message.contains("test-only"), "{message}");
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    require_tool("systemd-analyze");
    // The unit as shipped, but for ExecStart's binary, which verify wants to exist: the one
    // this test built stands in for /usr/bin/sds. (`--man=no`: the man page is the package's.)
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = std::fs::read_to_string(repo().join("contrib/sds.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/bin/sds serve --config /etc/sds/sds.toml"));
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    let path = dir.path().join("sds.service");
    std::fs::write(&path, unit.replace("/usr/bin/sds", sds_binary())).expect("write unit");
    let (ok, output) = run_bounded(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path),
        Duration::from_secs(60),
    );
    assert!(
        ok && output.trim().is_empty(),
        "systemd-analyze verify:\n{output}"
    );
}

/// Runs a command to its end within `deadline`; panics with its output if it fails.
fn must_run(command: &mut Command, deadline: Duration, what: &str) -> String {
    let (ok, output) = run_bounded(command, deadline);
    assert!(ok, "{what} failed:\n{output}");
    output
}

/// The Debian package, end to end: scripts/package.sh builds it from the binary this test
/// built (no second, optimised build: the test stays within a few minutes on a 2-core CI);
/// dpkg installs it; the binary, the man page, the unit and the config are in place and the
/// installed unit verifies; dpkg removes and purges it, and the state dir stays. Needs root
/// (dpkg), as the README's set-up and CI have: without it the test fails, saying so.
#[test]
fn debian_package_installs_and_removal_keeps_the_state_dir() {
    // SAFETY: geteuid() only reads the process's credentials.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "installing a package needs root (run the tests as root, as scripts/test.sh expects)"
    );
    require_tool("dpkg");
    require_tool("man");
    let installed_by_us = Command::new("dpkg")
        .args(["-s", "sds"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if Path::new("/usr/bin/sds").exists() && !installed_by_us {
        panic!("/usr/bin/sds exists and is not the sds package's: not overwriting it");
    }
    let built = must_run(
        Command::new(repo().join("scripts/package.sh"))
            .args(["--profile", "dev", "--no-build"])
            .current_dir(repo()),
        // cargo-deb from crates.io, when it is not yet in ~/.cargo/bin, takes minutes to build.
        Duration::from_secs(900),
        "scripts/package.sh",
    );
    let deb = built
        .lines()
        .map(str::trim)
        .rfind(|line| line.ends_with(".deb"))
        .map(|line| repo().join(line))
        .unwrap_or_else(|| panic!("no .deb named in:\n{built}"));
    assert!(deb.exists(), "{} is missing:\n{built}", deb.display());

    let dpkg = |args: &[&str]| {
        must_run(
            Command::new("dpkg").args(args),
            Duration::from_secs(180),
            &format!("dpkg {}", args.join(" ")),
        )
    };
    dpkg(&["-i", deb.to_str().expect("utf-8 path")]);

    let version = must_run(
        Command::new("/usr/bin/sds").arg("--version"),
        Duration::from_secs(30),
        "/usr/bin/sds --version",
    );
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "sds --version: {version}"
    );
    let page = must_run(
        Command::new("man").args(["-w", "sds"]),
        Duration::from_secs(30),
        "man -w sds",
    );
    assert!(page.trim().ends_with("man1/sds.1.gz"), "man -w sds: {page}");
    let page = must_run(
        Command::new("man").args(["-w", "sds-serve"]),
        Duration::from_secs(30),
        "man -w sds-serve",
    );
    assert!(page.contains("sds-serve.1"), "{page}");
    for path in [
        "/lib/systemd/system/sds.service",
        "/etc/sds/sds.toml",
        "/usr/share/bash-completion/completions/sds",
        "/var/lib/sds",
    ] {
        assert!(Path::new(path).exists(), "{path} is not installed");
    }
    // Enabled (it starts at boot), not started.
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/sds.service");
    assert!(wants.exists(), "the unit is not enabled");
    let conffiles = dpkg(&["-s", "sds"]);
    assert!(
        conffiles.contains("/etc/sds/sds.toml"),
        "not a conffile:\n{conffiles}"
    );
    let user = must_run(
        Command::new("getent").args(["passwd", "sds"]),
        Duration::from_secs(30),
        "getent passwd sds",
    );
    assert!(user.contains("/var/lib/sds"), "{user}");
    // The unit as installed, against the installed binary and man page.
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let (ok, output) = run_bounded(
            Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/sds.service"]),
            Duration::from_secs(60),
        );
        assert!(
            ok && output.trim().is_empty(),
            "systemd-analyze verify:\n{output}"
        );
    }

    // Something of the administrator's in the state dir survives remove and purge.
    let marker = PathBuf::from(format!(
        "/var/lib/sds/appliance-test-{}",
        std::process::id()
    ));
    std::fs::write(&marker, b"pool records live here").expect("write the marker");
    dpkg(&["-r", "sds"]);
    assert!(
        !Path::new("/usr/bin/sds").exists(),
        "dpkg -r left /usr/bin/sds"
    );
    assert!(marker.exists(), "dpkg -r deleted the state dir");
    dpkg(&["--purge", "sds"]);
    assert!(marker.exists(), "dpkg --purge deleted the state dir");
    assert!(
        !Path::new("/etc/sds/sds.toml").exists(),
        "purge keeps the conffile"
    );
    assert!(!wants.exists(), "purge left the unit enabled");
    let _ = std::fs::remove_file(&marker);
}
