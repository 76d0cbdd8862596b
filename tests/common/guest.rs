//! A Debian guest kernel under QEMU, for the tests that need the Linux kernel's own NVMe/TCP
//! initiator (nvme-tcp) or target (nvmet-tcp): this machine's kernel has neither.
//!
//! scripts/build-nvme-guest.sh (run by scripts/setup.sh) builds the kernel and an initramfs
//! into `target/guest` (or `$SDS_GUEST`). A test hands a shell script to [`Guest::boot`]: it
//! goes into a second cpio archive appended to the initramfs (the kernel unpacks concatenated
//! archives as one), as `/test.sh`, which the guest's /init runs after loading the modules and
//! bringing up the network; /init then prints `SDS-GUEST: exit STATUS` and powers off.
//!
//! The network is QEMU's user-mode network: from the guest, 10.0.2.2 ([`HOST_FROM_GUEST`])
//! is this machine's loopback, so the guest reaches a test server on 127.0.0.1; a listener in
//! the guest is reached from here through a forwarded port ([`GuestOptions::forward`]).
//! Nothing leaves the machine.
//!
//! QEMU runs with TCG (KVM here is a nested driver that cannot run a stock kernel), so the
//! guest is slow: about 6 s to boot alone, several times that on a loaded 2-core machine. Tests
//! wait on lines the guest prints, with generous deadlines, never on sleeps.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The address of this machine's loopback as the guest sees it (QEMU's user-mode gateway).
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

/// The prefix of every line the guest's /init prints for the host to parse.
pub const GUEST_LINE_PREFIX: &str = "SDS-GUEST: ";

/// How long a whole guest run may take by default: boot, module loading and a short test under
/// TCG on a loaded machine.
pub const GUEST_DEADLINE: Duration = Duration::from_secs(240);

/// The directory scripts/build-nvme-guest.sh built the guest into.
pub fn guest_dir() -> PathBuf {
    let dir = std::env::var_os("SDS_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/guest"));
    for file in ["vmlinux", "initramfs.cpio"] {
        assert!(
            dir.join(file).exists(),
            "the NVMe/TCP guest is not built ({} is missing): run scripts/setup.sh",
            dir.join(file).display()
        );
    }
    dir
}

/// How to boot a guest.
#[derive(Clone, Debug)]
pub struct GuestOptions {
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Ports forwarded from 127.0.0.1 on this machine into the guest: (host port, guest port).
    pub forwards: Vec<(u16, u16)>,
    /// The whole run's bound: QEMU is killed past it (by `timeout`, even if the test dies).
    pub deadline: Duration,
    /// Files put in the guest's root beside /test.sh: (name, contents), mode 0755.
    pub files: Vec<(String, Vec<u8>)>,
}

impl Default for GuestOptions {
    fn default() -> Self {
        Self {
            memory_mib: 512,
            forwards: Vec::new(),
            deadline: GUEST_DEADLINE,
            files: Vec::new(),
        }
    }
}

impl GuestOptions {
    /// Forwards 127.0.0.1:`host_port` on this machine to the guest's `guest_port`.
    pub fn forward(mut self, host_port: u16, guest_port: u16) -> Self {
        self.forwards.push((host_port, guest_port));
        self
    }

    /// Puts `contents` in the guest as /`name` (data, or a static program to run).
    pub fn file(mut self, name: &str, contents: Vec<u8>) -> Self {
        self.files.push((name.to_string(), contents));
        self
    }
}

/// The console output collected so far, and whether QEMU has ended.
#[derive(Default)]
struct Console {
    lines: Vec<String>,
    ended: bool,
}

/// A running guest. Dropping it kills QEMU.
pub struct Guest {
    child: Child,
    console: Arc<(Mutex<Console>, Condvar)>,
    _dir: tempfile::TempDir,
}

/// What a finished guest printed.
#[derive(Debug)]
pub struct GuestOutput {
    /// Every console line (the kernel's, /init's and the script's), in order.
    pub lines: Vec<String>,
    /// The script's exit status, from /init's `SDS-GUEST: exit N` line; None if the guest
    /// never got that far (a panic, or the deadline).
    pub exit_status: Option<i32>,
}

impl GuestOutput {
    /// The console as one string, for assertion messages.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Whether some line is exactly `line` (after trimming).
    pub fn has_line(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l.trim() == line)
    }

    /// The lines /init and the script printed with the `SDS-GUEST: ` prefix, prefix removed.
    pub fn results(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| l.trim().strip_prefix(GUEST_LINE_PREFIX))
            .collect()
    }
}

/// Boots the guest with `script` as its /test.sh and waits for it to power off: its output.
pub fn run_guest(script: &str, options: GuestOptions) -> GuestOutput {
    let deadline = options.deadline;
    let guest = Guest::boot(script, options);
    guest.wait_end(deadline)
}

impl Guest {
    /// Boots the guest with `script` (a /bin/sh script) as its /test.sh.
    pub fn boot(script: &str, options: GuestOptions) -> Self {
        let guest = guest_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        // The built initramfs, then the test's own archive with /test.sh.
        let initrd = dir.path().join("initrd.cpio");
        let mut archive = std::fs::read(guest.join("initramfs.cpio")).expect("read initramfs");
        let mut files: Vec<(&str, u32, &[u8])> = vec![("test.sh", 0o100755, script.as_bytes())];
        for (name, contents) in &options.files {
            files.push((name, 0o100755, contents));
        }
        archive.extend_from_slice(&cpio_newc(&files));
        std::fs::write(&initrd, &archive).expect("write initrd");

        let mut nic = "user,model=virtio-net-pci".to_string();
        for (host_port, guest_port) in &options.forwards {
            nic.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"));
        }
        let mut command = Command::new("timeout");
        command
            .args([
                "--kill-after=10",
                &format!("{}", options.deadline.as_secs()),
            ])
            .arg("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", &options.memory_mib.to_string()])
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
            .args(["-no-reboot", "-bios", "/usr/share/qemu/qboot.rom"])
            .arg("-kernel")
            .arg(guest.join("vmlinux"))
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .args(["-nic", &nic])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .expect("start qemu-system-x86_64 under timeout: run scripts/setup.sh");
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("qemu stdout");
        let stderr = child.stderr.take().expect("qemu stderr");
        // stderr (QEMU's own complaints) ends with the process too; its lines join the console.
        let for_stderr = Arc::clone(&console);
        std::thread::spawn(move || collect(BufReader::new(stderr), &for_stderr, false));
        let for_stdout = Arc::clone(&console);
        std::thread::spawn(move || collect(BufReader::new(stdout), &for_stdout, true));
        Self {
            child,
            console,
            _dir: dir,
        }
    }

    /// Waits until a console line contains `needle`: that line, or None if QEMU ended or
    /// `deadline` passed first.
    pub fn wait_for_line(&self, needle: &str, deadline: Duration) -> Option<String> {
        let end = Instant::now() + deadline;
        let (lock, ready) = &*self.console;
        let mut console = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(line) = console.lines.iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if console.ended || now >= end {
                return None;
            }
            console = ready
                .wait_timeout(console, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Every console line so far.
    pub fn lines(&self) -> Vec<String> {
        let (lock, _) = &*self.console;
        lock.lock().unwrap_or_else(|p| p.into_inner()).lines.clone()
    }

    /// Waits for the guest to power off (or `deadline`, then kills it): its output.
    pub fn wait_end(mut self, deadline: Duration) -> GuestOutput {
        let end = Instant::now() + deadline;
        {
            let (lock, ready) = &*self.console;
            let mut console = lock.lock().unwrap_or_else(|p| p.into_inner());
            while !console.ended && Instant::now() < end {
                let left = end.saturating_duration_since(Instant::now());
                console = ready
                    .wait_timeout(console, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        self.stop();
        let lines = self.lines();
        let exit_status = lines.iter().rev().find_map(|l| {
            l.trim()
                .strip_prefix(GUEST_LINE_PREFIX)?
                .strip_prefix("exit ")?
                .trim()
                .parse()
                .ok()
        });
        GuestOutput { lines, exit_status }
    }

    /// Ends QEMU: SIGTERM to `timeout`, which passes it on to QEMU, then reaps it.
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id() as libc::pid_t;
            // SAFETY: kill(2) with a pid this process spawned and has not reaped yet (try_wait
            // said it is running), so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads lines into the console until the stream ends; `marks_end`: its end is QEMU's end.
fn collect(reader: impl BufRead, console: &(Mutex<Console>, Condvar), marks_end: bool) {
    let (lock, ready) = console;
    for line in reader.split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches('\r')
            .to_string();
        if std::env::var_os("SDS_GUEST_ECHO").is_some() {
            let _ = writeln!(std::io::stderr(), "guest| {text}");
        }
        lock.lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines
            .push(text);
        ready.notify_all();
    }
    if marks_end {
        lock.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
        ready.notify_all();
    }
}

/// A newc cpio archive of regular files (name, mode, contents), with its trailer.
pub fn cpio_newc(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    fn pad4(out: &mut Vec<u8>) {
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    fn entry(out: &mut Vec<u8>, inode: u32, name: &str, mode: u32, data: &[u8]) {
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            0, // rdevmajor
            0, // rdevminor
            name.len() as u32 + 1,
            0, // check
        ];
        out.extend_from_slice(b"070701");
        for field in fields {
            out.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
    }
    let mut out = Vec::new();
    for (index, (name, mode, data)) in files.iter().enumerate() {
        entry(&mut out, 1000 + index as u32, name, *mode, data);
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// The NVMe/TCP port Linux's target listens on in the guest.
pub const GUEST_NVMET_PORT: u16 = 4420;

/// A /test.sh that makes the guest a Linux NVMe/TCP target (nvmet + nvmet-tcp, configured
/// through configfs): subsystem `subnqn` with one namespace (NSID 1) of `size_mib` MiB backed
/// by a file on the guest's tmpfs (buffered: tmpfs has no O_DIRECT in this kernel), listening
/// on 0.0.0.0:[`GUEST_NVMET_PORT`]. `allowed_host`: only that host NQN may connect; None lets
/// any host. Prints `SDS-GUEST: target ready` and then serves until the guest is killed.
pub fn nvmet_target_script(subnqn: &str, size_mib: u32, allowed_host: Option<&str>) -> String {
    let hosts = match allowed_host {
        Some(host) => format!(
            "mkdir hosts/{host}\n\
             ln -s /sys/kernel/config/nvmet/hosts/{host} subsystems/{subnqn}/allowed_hosts/{host}\n"
        ),
        None => format!("echo 1 > subsystems/{subnqn}/attr_allow_any_host\n"),
    };
    format!(
        r#"set -e
dd if=/dev/zero of=/tmp/namespace1 bs=1M count=0 seek={size_mib} 2>/dev/null
cd /sys/kernel/config/nvmet
mkdir subsystems/{subnqn}
{hosts}mkdir subsystems/{subnqn}/namespaces/1
echo -n /tmp/namespace1 > subsystems/{subnqn}/namespaces/1/device_path
echo 1 > subsystems/{subnqn}/namespaces/1/buffered_io
echo 1 > subsystems/{subnqn}/namespaces/1/enable
mkdir ports/1
echo tcp > ports/1/addr_trtype
echo ipv4 > ports/1/addr_adrfam
echo 0.0.0.0 > ports/1/addr_traddr
echo {port} > ports/1/addr_trsvcid
ln -s /sys/kernel/config/nvmet/subsystems/{subnqn} ports/1/subsystems/{subnqn}
echo "SDS-GUEST: target ready"
while true; do sleep 60; done
"#,
        port = GUEST_NVMET_PORT
    )
}

/// A shell line for a guest script: connects the kernel's NVMe/TCP initiator to `subnqn` at
/// `address:port` as `hostnqn` (writing the options to /dev/nvme-fabrics, as nvme-cli does;
/// the guest has no nvme-cli). From the guest, this machine's loopback is
/// [`HOST_FROM_GUEST`]. The kernel prints the new controller's options back on success.
pub fn fabrics_connect_line(address: &str, port: u16, subnqn: &str, hostnqn: &str) -> String {
    format!(
        "echo \"transport=tcp,traddr={address},trsvcid={port},nqn={subnqn},hostnqn={hostnqn}\" > /dev/nvme-fabrics"
    )
}
