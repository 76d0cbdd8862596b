//! The integration-test harness: starts the real `sds` binary in a temporary state dir on a
//! free port, talks JSON-RPC to its socket, and runs real clients (qemu-io, nbdinfo, fio)
//! against it. The server is stopped when the harness is dropped.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

pub mod guest;
pub mod initiator;
pub mod kernel_nvme;
pub mod nvmf_initiator;
pub mod tgtd;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The host every test server knows: this machine, over TCP loopback and as root over Unix
/// sockets. Volumes are reachable only through a virtual path (see `Server::grant`).
pub const TEST_HOST: &str = "tester";

/// `sds perf --json ARGS` bounded by `timeout`: (exit success, the report if one was printed,
/// stdout and stderr for messages). Reactors sleep when idle (`--poll adaptive`), so a guest's
/// TCG threads and the server under test keep the machine's cores.
pub fn sds_perf_json(args: &[&str]) -> (bool, Option<Value>, String) {
    let output = Command::new("timeout")
        .args(["120", sds_binary(), "perf", "--json", "--poll", "adaptive"])
        .args(args)
        .output()
        .expect("run sds perf");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (
        output.status.success(),
        serde_json::from_str(&stdout).ok(),
        format!("stdout:\n{stdout}\nstderr:\n{stderr}"),
    )
}

pub fn sds_binary() -> &'static str {
    env!("CARGO_BIN_EXE_sds")
}

/// Fails the test with a clear message if a client tool is missing.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{tool} is not installed: run scripts/setup.sh");
}

/// A port nothing listens on now, never one this test process was given before: the kernel
/// may hand a just-released port out again, and a server given the same port for NBD and
/// iSCSI would fail to start.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    /// The iSCSI portal's port (see [`Server::iscsi_port`]).
    iscsi: u16,
    /// The NVMe/TCP port (see [`Server::nvmf_port`]).
    nvmf: u16,
    /// Options added to `sds serve` beyond the state dir, the port and the log level.
    extra_args: Vec<String>,
    /// The working directory `spawn` starts the server in; the test's own when `None`.
    pub cwd: Option<PathBuf>,
    child: Option<Child>,
}

impl Server {
    /// A new server in a new temporary state dir.
    pub fn start() -> Self {
        Self::start_with(|_| Vec::new())
    }

    /// A new server with more `sds serve` options, made from its temporary dir.
    pub fn start_with(extra_args: impl FnOnce(&Path) -> Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("state");
        let extra_args = extra_args(dir.path());
        let mut server = Self {
            socket: state_dir.join("sds.sock"),
            state_dir,
            dir,
            port: free_port(),
            iscsi: free_port(),
            nvmf: free_port(),
            extra_args,
            cwd: None,
            child: None,
        };
        server.spawn();
        server.ok(
            "host_create",
            json!({"name": TEST_HOST, "addresses": ["127.0.0.0/8", "::1", "unix:0"]}),
        );
        server
    }

    /// Starts (again) the server process on the same state dir and port.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log");
        let mut command = Command::new(sds_binary());
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        let child = command
            .args(["serve", "--state-dir"])
            .arg(&self.state_dir)
            .args([
                "--nbd-listen",
                &format!("127.0.0.1:{}", self.port),
                "--iscsi-listen",
                &format!("127.0.0.1:{}", self.iscsi),
                "--nvmf-listen",
                &format!("127.0.0.1:{}", self.nvmf),
                "--log-level",
                "debug",
            ])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sds serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the server did not open its socket; log:\n{}",
                self.log()
            );
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the server exited early ({status}); log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGTERM and wait; returns whether it exited with status 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: kill() with the PID of our own child and a valid signal.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, no chance to flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The NBD URL of `volume`, after granting the test host a read-write virtual path to it
    /// (once; a later call finds it there).
    pub fn url(&self, volume: &str) -> String {
        self.grant(volume);
        self.url_without_grant(volume)
    }

    /// The port of the server's iSCSI portal (127.0.0.1).
    pub fn iscsi_port(&self) -> u16 {
        self.iscsi
    }

    /// The NVMe/TCP port (subsystems and the discovery controller).
    pub fn nvmf_port(&self) -> u16 {
        self.nvmf
    }

    /// The server's iSCSI target name, as `iscsi_target_name` finds it stored.
    pub fn iscsi_target(&self) -> String {
        let text = std::fs::read_to_string(self.state_dir.join("iscsi-target.json"))
            .expect("the server stores its iSCSI target name");
        serde_json::from_str::<Value>(&text).expect("json")["name"]
            .as_str()
            .expect("a name")
            .to_string()
    }

    /// A libiscsi URL of LUN `lun` of this server's target.
    pub fn iscsi_url(&self, lun: u32) -> String {
        format!(
            "iscsi://127.0.0.1:{}/{}/{lun}",
            self.iscsi,
            self.iscsi_target()
        )
    }

    /// The NBD URL of `volume`, granting nothing.
    pub fn url_without_grant(&self, volume: &str) -> String {
        format!("nbd://127.0.0.1:{}/{volume}", self.port)
    }

    /// Makes sure the test host has a virtual path to `volume`; returns its id.
    pub fn grant(&self, volume: &str) -> u64 {
        let existing = self.ok(
            "vpath_get_vpaths",
            json!({"host": TEST_HOST, "volume": volume}),
        );
        if let Some(id) = existing[0]["id"].as_u64() {
            return id;
        }
        self.ok("vpath_create", json!({"host": TEST_HOST, "volume": volume}))["id"]
            .as_u64()
            .expect("vpath id")
    }

    /// Sends a raw request object; returns the whole response object.
    pub fn rpc_raw(&self, request: &[u8]) -> Value {
        let mut stream = UnixStream::connect(&self.socket).expect("connect to the RPC socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream.write_all(request).expect("send");
        read_value(&mut stream)
    }

    /// Calls a method; returns `Ok(result)` or `Err((code, message))`.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let response = self.rpc_raw(request.to_string().as_bytes());
        if let Some(error) = response.get("error") {
            return Err((
                error["code"].as_i64().unwrap_or(0),
                error["message"].as_str().unwrap_or("").to_string(),
            ));
        }
        Ok(response["result"].clone())
    }

    /// Calls a method that must succeed.
    pub fn ok(&self, method: &str, params: Value) -> Value {
        match self.call(method, params.clone()) {
            Ok(result) => result,
            Err((code, message)) => panic!("{method} {params} failed: {message} ({code})"),
        }
    }

    /// LUN `name` as `lun_get_luns` describes it.
    pub fn lun(&self, name: &str) -> Value {
        self.ok("lun_get_luns", json!({ "name": name }))[0].clone()
    }

    /// Waits (90 s at most) until `done` holds for LUN `name`'s description and returns it;
    /// fails the test saying it never became `what`, with the end of the server's log.
    pub fn wait_lun(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let described = self.lun(name);
            if done(&described) {
                return described;
            }
            if Instant::now() >= deadline {
                let log = self.log();
                let lines: Vec<&str> = log.lines().collect();
                panic!(
                    "LUN {name} never became {what}: {described}\nlog:\n{}",
                    lines[lines.len().saturating_sub(60)..].join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many extents volume `name` has allocated.
    pub fn allocated_extents(&self, volume: &str) -> u64 {
        self.ok("volume_get_volumes", json!({ "name": volume }))[0]["allocated_extents"]
            .as_u64()
            .unwrap_or(0)
    }

    /// The NQN of `host`'s NVMe/TCP subsystem, as `nvmf_get_subsystems` lists it.
    pub fn nvmf_subnqn(&self, host: &str) -> String {
        let subsystems = self.ok("nvmf_get_subsystems", json!({}));
        subsystems
            .as_array()
            .expect("a list")
            .iter()
            .find(|s| s["host"] == host)
            .and_then(|s| s["nqn"].as_str())
            .unwrap_or_else(|| panic!("no subsystem of {host} in {subsystems}"))
            .to_string()
    }

    /// A pool of mixed block sizes: a 512-byte file LUN, a 4096-byte file LUN and a second
    /// 512-byte file LUN (a pool may not mix RAM and persistent LUNs).
    pub fn mixed_pool(&self, name: &str, extent_size: u64) {
        self.ok("lun_create", json!({"name": format!("{name}-f512"), "kind": "file", "size": 32u64 << 20, "block_size": 512}));
        self.ok("lun_create", json!({"name": format!("{name}-f4k"), "kind": "file", "size": 32u64 << 20, "block_size": 4096}));
        self.ok("lun_create", json!({"name": format!("{name}-f512b"), "kind": "file", "size": 32u64 << 20, "block_size": 512}));
        self.ok(
            "pool_create",
            json!({"name": name, "luns": [format!("{name}-f512"), format!("{name}-f4k"), format!("{name}-f512b")], "extent_size": extent_size}),
        );
    }

    /// A volatile pool `name` of one RAM LUN (`{name}-ram`) of `size_bytes`.
    pub fn ram_pool(&self, name: &str, size_bytes: u64) {
        let lun = format!("{name}-ram");
        self.ok(
            "lun_create",
            json!({"name": lun, "kind": "mem", "size": size_bytes}),
        );
        self.ok("pool_create", json!({"name": name, "luns": [lun]}));
    }

    /// A pool of file LUNs only (what survives a restart).
    pub fn file_pool(&self, name: &str, extent_size: u64) {
        self.ok("lun_create", json!({"name": format!("{name}-a"), "kind": "file", "size": 32u64 << 20, "block_size": 512}));
        self.ok("lun_create", json!({"name": format!("{name}-b"), "kind": "file", "size": 32u64 << 20, "block_size": 4096}));
        self.ok("pool_create", json!({"name": name, "luns": [format!("{name}-a"), format!("{name}-b")], "extent_size": extent_size}));
    }

    /// Runs `sds` as a client of this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(sds_binary())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run sds")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One `read`, retried while a signal interrupts it (`read_exact` and `write_all` already retry;
/// a bare `read` does not, and a loaded CI machine delivers signals mid-read).
pub fn read_some<S: Read>(stream: &mut S, buffer: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buffer) {
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Whether the peer closed the connection (a read ends or fails for a reason other than an
/// interruption or the read timeout) before any more bytes arrive.
pub fn peer_closed<S: Read>(stream: &mut S) -> bool {
    let mut byte = [0u8; 1];
    match read_some(stream, &mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

pub fn read_value(stream: &mut UnixStream) -> Value {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(Ok(value)) = serde_json::Deserializer::from_slice(&buffer)
            .into_iter::<Value>()
            .next()
        {
            return value;
        }
        let n = read_some(stream, &mut chunk).expect("read the RPC answer");
        assert!(
            n > 0,
            "the server closed the RPC connection without answering"
        );
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Runs `sds serve` with `args` (and a free NBD port) and expects it to refuse to start within
/// 30 s; returns what it printed. `why` says what its starting would have meant.
pub fn serve_must_fail(args: &[&std::ffi::OsStr], why: &str) -> String {
    let mut child = Command::new(sds_binary())
        .arg("serve")
        .args(args)
        .args(["--nbd-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--iscsi-listen", "none"])
        .args(["--nvmf-listen", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sds serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(!status.success(), "sds serve exited 0: {why}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "{why}:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// Runs qemu-io on `url` with `commands`; returns its output and whether it succeeded with no
/// failed verification.
pub fn qemu_io(url: &str, commands: &[String]) -> (bool, String) {
    qemu_io_opened(url, commands, false)
}

/// [`qemu_io`] on an image opened read-only (`-r`): what a read-only path accepts.
pub fn qemu_io_read_only(url: &str, commands: &[String]) -> (bool, String) {
    qemu_io_opened(url, commands, true)
}

fn qemu_io_opened(url: &str, commands: &[String], read_only: bool) -> (bool, String) {
    require_tool("qemu-io");
    let mut command = Command::new("qemu-io");
    if read_only {
        command.arg("-r");
    }
    command.args(["-f", "raw", url]);
    for c in commands {
        command.args(["-c", c]);
    }
    let output = command.output().expect("qemu-io");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let clean = output.status.success()
        && !text.contains("Pattern verification failed")
        && !text.contains("failed");
    (clean, text)
}

/// Writes then reads back a pattern per (pattern, offset, length), all through one qemu-io.
pub fn write_and_verify(url: &str, writes: &[(u8, u64, u64)]) {
    let mut commands = Vec::new();
    for &(pattern, offset, len) in writes {
        commands.push(format!("write -P {pattern} {offset} {len}"));
    }
    for &(pattern, offset, len) in writes {
        commands.push(format!("read -P {pattern} {offset} {len}"));
    }
    let (clean, text) = qemu_io(url, &commands);
    assert!(clean, "qemu-io failed:\n{text}");
    assert_eq!(
        text.matches("read ").count(),
        writes.len(),
        "not every read ran:\n{text}"
    );
}

/// Reads back patterns written earlier.
pub fn verify(url: &str, writes: &[(u8, u64, u64)]) {
    let commands: Vec<String> = writes
        .iter()
        .map(|&(p, o, l)| format!("read -P {p} {o} {l}"))
        .collect();
    let (clean, text) = qemu_io(url, &commands);
    assert!(clean, "qemu-io read-back failed:\n{text}");
}

/// Runs fio with the given arguments; returns (success, output).
/// Runs fio in `dir` (where its verify state files land) with `args`.
pub fn fio(dir: &Path, args: &[String]) -> (bool, String) {
    require_tool("fio");
    let output = Command::new("fio")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("fio");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success() && text.contains("err= 0"), text)
}

/// fio's random writes of 4 to 64 KiB at queue depth 8 over NBD to `url`, `size` of them
/// (fio's notation), each block read back and checked (crc32c) before fio returns; `extra`
/// options are added (a rate, say). Returns (no error at all, output).
pub fn fio_nbd_verified_writes(
    dir: &Path,
    name: &str,
    url: &str,
    size: &str,
    extra: &[&str],
) -> (bool, String) {
    let mut args: Vec<String> = vec![
        format!("--name={name}"),
        "--ioengine=nbd".into(),
        format!("--uri={url}"),
        "--rw=randwrite".into(),
        "--bsrange=4k-64k".into(),
        "--iodepth=8".into(),
        format!("--size={size}"),
        "--verify=crc32c".into(),
        "--do_verify=1".into(),
        "--verify_fatal=1".into(),
    ];
    args.extend(extra.iter().map(|option| option.to_string()));
    fio(dir, &args)
}

/// The Python of scripts/setup.sh's venv, which holds SPDK's RPC client.
pub fn spdk_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/python");
    assert!(
        python.exists(),
        "SPDK's Python client is not installed at {}: run scripts/setup.sh",
        python.display()
    );
    python
}

/// A TCP connection to 127.0.0.1:`port` from source address `source` (any 127/8 address is
/// this machine's).
pub fn nbd_connect_from(source: [u8; 4], port: u16) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    fn sockaddr(address: [u8; 4], port: u16) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(address),
            },
            sin_zero: [0; 8],
        }
    }
    // SAFETY: socket() with constant arguments; the descriptor is owned by the TcpStream
    // built from it below, or closed here on failure.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = sockaddr(source, 0);
    // SAFETY: bind with a valid sockaddr_in of `length` bytes that lives for the call.
    if unsafe { libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), length) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let remote = sockaddr([127, 0, 0, 1], port);
    loop {
        // SAFETY: connect with a valid sockaddr_in of `length` bytes that lives for the call.
        if unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), length) } == 0 {
            return Ok(stream);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// A fixed-newstyle negotiation ending in NBD_OPT_GO for `export`, from source address
/// `source`: the connection if the server accepted, else the option error and its message.
pub fn nbd_try_go(
    source: [u8; 4],
    port: u16,
    export: &str,
) -> Result<std::net::TcpStream, (u32, String)> {
    use std::io::{Read, Write};
    let mut stream = nbd_connect_from(source, port).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting[0..8], b"NBDMAGIC");
    let mut option = 3u32.to_be_bytes().to_vec();
    option.extend_from_slice(b"IHAVEOPT");
    option.extend_from_slice(&7u32.to_be_bytes());
    option.extend_from_slice(&(4 + export.len() as u32 + 2).to_be_bytes());
    option.extend_from_slice(&(export.len() as u32).to_be_bytes());
    option.extend_from_slice(export.as_bytes());
    option.extend_from_slice(&0u16.to_be_bytes());
    stream.write_all(&option).expect("NBD_OPT_GO");
    loop {
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).expect("option reply");
        let kind = u32::from_be_bytes(header[12..16].try_into().expect("4"));
        let len = u32::from_be_bytes(header[16..20].try_into().expect("4")) as usize;
        let mut data = vec![0u8; len];
        stream.read_exact(&mut data).expect("option data");
        if kind >= 0x8000_0000 {
            return Err((kind, String::from_utf8_lossy(&data).into_owned()));
        }
        if kind == 1 {
            return Ok(stream);
        }
    }
}

/// A minimal NBD client, for requests a real client would never send: fixed-newstyle handshake
/// with NBD_OPT_GO for `export`, which must succeed.
pub fn nbd_raw_connect(port: u16, export: &str) -> TcpStream {
    nbd_try_go([127, 0, 0, 1], port, export)
        .unwrap_or_else(|(kind, message)| panic!("NBD_OPT_GO refused: {kind:#x} {message}"))
}

pub fn nbd_request(command: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut out = 0x2560_9513u32.to_be_bytes().to_vec();
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&command.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out
}

pub fn nbd_reply(stream: &mut TcpStream) -> (u32, u64) {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).expect("reply");
    assert_eq!(
        u32::from_be_bytes(header[0..4].try_into().expect("4")),
        0x6744_6698
    );
    (
        u32::from_be_bytes(header[4..8].try_into().expect("4")),
        u64::from_be_bytes(header[8..16].try_into().expect("8")),
    )
}

/// A loop device over a new sparse image of `size_bytes` in `dir`, detached when dropped.
pub struct LoopDevice {
    pub path: String,
}

impl LoopDevice {
    pub fn attach(dir: &Path, size_bytes: u64) -> Self {
        require_tool("losetup");
        let image = dir.join("loop.img");
        let file = std::fs::File::create(&image).expect("image");
        file.set_len(size_bytes).expect("size");
        let output = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .expect("losetup");
        assert!(
            output.status.success(),
            "losetup failed (tests run as root): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self {
            path: String::from_utf8_lossy(&output.stdout).trim().to_string(),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
    }
}

// ---- iSCSI clients (libiscsi's tools, qemu-io over iscsi://) --------------------------------
//
// Each takes the initiator name to log in with, since the server knows hosts by it. A client
// that hangs is killed at its deadline and reported as failed, with what it printed.

/// Longest an iSCSI client tool may run before the harness kills it.
pub const ISCSI_TOOL_DEADLINE: Duration = Duration::from_secs(60);
/// Longest one iscsi-test-cu run may take (the SCSI and iSCSI families take ~25 s on tgtd).
pub const ISCSI_TEST_CU_DEADLINE: Duration = Duration::from_secs(600);

/// Runs `command` to its end or `deadline`; returns (exited with status 0, stdout + stderr).
pub fn run_bounded(command: &mut Command, deadline: Duration) -> (bool, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client");
    // Read both pipes on threads so a chatty client never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let until = Instant::now() + deadline;
    let status = loop {
        match child.try_wait().expect("wait for the client") {
            Some(status) => break Some(status),
            None if Instant::now() >= until => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut text = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    text += &String::from_utf8_lossy(&err.join().unwrap_or_default());
    match status {
        Some(status) => (status.success(), text),
        None => (false, format!("{text}\n(killed after {deadline:?})")),
    }
}

/// `iscsi-ls -s` (targets and their LUNs) of the portal `url` (`iscsi://127.0.0.1:PORT`).
pub fn iscsi_ls(url: &str, initiator: &str) -> (bool, String) {
    require_tool("iscsi-ls");
    run_bounded(
        Command::new("iscsi-ls").args(["-s", "-i", initiator, url]),
        ISCSI_TOOL_DEADLINE,
    )
}

/// `iscsi-inq` of the LUN at `url`; `page` asks for that VPD page (`-e 1 -c PAGE`).
pub fn iscsi_inq(url: &str, initiator: &str, page: Option<u8>) -> (bool, String) {
    require_tool("iscsi-inq");
    let mut command = Command::new("iscsi-inq");
    command.args(["-i", initiator]);
    if let Some(page) = page {
        command.args(["-e", "1", "-c", &page.to_string()]);
    }
    run_bounded(command.arg(url), ISCSI_TOOL_DEADLINE)
}

/// `iscsi-readcapacity16` of the LUN at `url`; on success also the size in bytes it printed
/// ("Total size:N").
pub fn iscsi_readcapacity16(url: &str, initiator: &str) -> (bool, String, Option<u64>) {
    require_tool("iscsi-readcapacity16");
    let (ok, text) = run_bounded(
        Command::new("iscsi-readcapacity16").args(["-i", initiator, url]),
        ISCSI_TOOL_DEADLINE,
    );
    let size = text
        .lines()
        .find_map(|line| line.strip_prefix("Total size:"))
        .and_then(|size| size.trim().parse().ok());
    (ok, text, size)
}

/// qemu's image name for the LUN at `url` (`iscsi://HOST:PORT/TARGET/LUN`) logged in as
/// `initiator`: qemu takes the initiator name only as a driver option, so the URL is given
/// as its parts (`json:{...}`).
pub fn qemu_iscsi_image(url: &str, initiator: &str) -> String {
    let rest = url
        .strip_prefix("iscsi://")
        .unwrap_or_else(|| panic!("{url} is not an iscsi:// URL"));
    let mut parts = rest.splitn(3, '/');
    let (portal, target, lun) = match (parts.next(), parts.next(), parts.next()) {
        (Some(portal), Some(target), Some(lun)) => (portal, target, lun),
        _ => panic!("{url} is not iscsi://HOST:PORT/TARGET/LUN"),
    };
    let spec = json!({
        "driver": "raw",
        "file": {
            "driver": "iscsi",
            "transport": "tcp",
            "portal": portal,
            "target": target,
            "lun": lun,
            "initiator-name": initiator,
        },
    });
    format!("json:{spec}")
}

/// qemu-io on the LUN at `url` (`iscsi://HOST:PORT/TARGET/LUN`) logged in as `initiator`,
/// running `commands` (`write -P 0x5a 0 4096`, `read -P 0x5a 0 4096`, ...); returns whether it
/// succeeded with no failed command or verification, and its output.
pub fn qemu_io_iscsi(url: &str, initiator: &str, commands: &[String]) -> (bool, String) {
    require_tool("qemu-io");
    let mut command = Command::new("qemu-io");
    for c in commands {
        command.args(["-c", c]);
    }
    command.arg(qemu_iscsi_image(url, initiator));
    let (ok, text) = run_bounded(&mut command, ISCSI_TOOL_DEADLINE);
    let clean = ok && !text.contains("Pattern verification failed") && !text.contains("failed");
    (clean, text)
}

/// What one iscsi-test-cu run found, test by test (`Suite.Test` names).
#[derive(Debug, Default)]
pub struct TestCuResults {
    pub passed: Vec<String>,
    /// With the first reason the test printed.
    pub failed: Vec<(String, String)>,
    pub skipped: Vec<(String, String)>,
    /// The whole log, for a failing assertion to show.
    pub log: String,
}

/// Runs libiscsi's conformance suite: `iscsi-test-cu --test=TESTS --dataloss` on `url` with
/// the two initiator names it logs in with (the second for its two-initiator tests).
pub fn iscsi_test_cu(url: &str, tests: &str, initiator: &str, initiator_2: &str) -> TestCuResults {
    require_tool("iscsi-test-cu");
    let (_, log) = run_bounded(
        Command::new("iscsi-test-cu").args([
            &format!("--test={tests}"),
            "--dataloss",
            "--verbose",
            &format!("--initiator-name={initiator}"),
            &format!("--initiator-name-2={initiator_2}"),
            url,
        ]),
        ISCSI_TEST_CU_DEADLINE,
    );
    parse_test_cu(log)
}

/// Reads iscsi-test-cu's verbose log. CUnit counts a skipped test as passed, so a skip is
/// found in the test's own lines ("[SKIPPED]"); the verdict is the first "passed" or "FAILED"
/// that starts the test's block or a line of it (a test may print "[FAILED] ..." for a step
/// it then tolerates). Same rules as bench/iscsi_conformance.py.
pub fn parse_test_cu(log: String) -> TestCuResults {
    let mut results = TestCuResults::default();
    let mut suite = String::from("?");
    let mut current: Option<(String, Vec<String>)> = None;
    let close = |current: Option<(String, Vec<String>)>, results: &mut TestCuResults| {
        let Some((name, lines)) = current else {
            return;
        };
        let verdict = lines.iter().position(|line| {
            let line = line.trim_start();
            line.starts_with("passed") || line.starts_with("FAILED")
        });
        let reason = |marker: &str, lines: &[String]| {
            lines
                .iter()
                .find_map(|line| {
                    line.split_once(marker)
                        .map(|(_, rest)| rest.trim().to_string())
                })
                .unwrap_or_default()
        };
        match verdict {
            Some(at) if lines[at].trim_start().starts_with("FAILED") => {
                let why = reason("[FAILED]", &lines[..at]);
                results.failed.push((name, why));
            }
            None => results
                .failed
                .push((name, "no verdict (the run was cut off here)".into())),
            Some(_) if lines.iter().any(|line| line.contains("[SKIPPED]")) => {
                let why = reason("[SKIPPED]", &lines);
                results.skipped.push((name, why));
            }
            Some(_) => results.passed.push(name),
        }
    };
    for line in log.lines() {
        if let Some(name) = line.strip_prefix("Suite: ") {
            close(current.take(), &mut results);
            suite = name.trim().to_string();
        } else if let Some(rest) = line.trim_start().strip_prefix("Test: ") {
            close(current.take(), &mut results);
            let (name, after) = rest.split_once(" ...").unwrap_or((rest, ""));
            current = Some((format!("{suite}.{}", name.trim()), vec![after.to_string()]));
        } else if line.starts_with("Run Summary") {
            close(current.take(), &mut results);
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line.to_string());
        }
    }
    close(current.take(), &mut results);
    results.log = log;
    results
}

// ---- kill -9 loops (tests/crash.rs, tests/iscsi_crash.rs) -----------------------------------

/// Cycles a kill -9 loop runs: `SDS_CRASH_CYCLES`, or `default`.
pub fn crash_cycles(default: usize) -> usize {
    std::env::var("SDS_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed of a kill -9 loop: `SDS_CRASH_SEED` replays a run; otherwise the clock.
pub fn crash_seed() -> u64 {
    std::env::var("SDS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// splitmix64: enough randomness for kill moments and offsets, reproducible from one seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn range(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next() % (range.end - range.start)
    }
}
