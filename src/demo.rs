//! `sds demo`: the whole path, end to end, in a scratch state dir. Starts `sds serve` as a
//! child process, builds a pool from a 512-byte-sector file LUN and a 4096-byte-sector file LUN
//! (and shows that a RAM LUN may not join them), creates a thin volume, writes and reads it with a real NBD client (qemu-io)
//! across extent and LUN boundaries, shows what the server reports, and stops it cleanly.

use sds::rpc::client::Client;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The options of `sds demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// State dir for the demo server [default: a new temporary directory]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Leave the state dir in place afterwards
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo: {0}")]
    Step(String),
    #[error("demo: {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn step(message: impl Into<String>) -> DemoError {
    DemoError::Step(message.into())
}

/// Stops the server when the demo ends, however it ends.
struct Server {
    child: Child,
}

impl Server {
    fn stop(&mut self) -> Result<bool, DemoError> {
        // SAFETY: kill() with a PID we spawned and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().map_err(|source| DemoError::Io {
                what: "waiting for the server".into(),
                source,
            })? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        Ok(false)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> Result<u16, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| DemoError::Io {
        what: "finding a free port".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| DemoError::Io {
            what: "finding a free port".into(),
            source,
        })
}

fn connect(socket: &Path) -> Result<Client, DemoError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::connect(socket) {
            Ok(client) => return Ok(client),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(error) => return Err(step(format!("the server did not come up: {error}"))),
        }
    }
}

fn call(client: &mut Client, method: &str, params: Value) -> Result<Value, DemoError> {
    println!("  rpc {method} {params}");
    client
        .call(method, Some(params))
        .map_err(|error| step(format!("{method} failed: {error}")))
}

fn qemu_io(url: &str, commands: &[String]) -> Result<String, DemoError> {
    let mut command = Command::new("qemu-io");
    command.args(["-f", "raw", url]);
    for c in commands {
        command.args(["-c", c]);
    }
    let output = command.output().map_err(|source| DemoError::Io {
        what: "running qemu-io (run scripts/setup.sh to install qemu-utils)".into(),
        source,
    })?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if !output.status.success()
        || text.contains("Pattern verification failed")
        || text.contains("failed")
    {
        return Err(step(format!("qemu-io reported a failure:\n{text}")));
    }
    Ok(text)
}

pub fn run(options: DemoArgs) -> Result<(), DemoError> {
    let state_dir = options
        .state_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("sds-demo-{}", std::process::id())));
    std::fs::create_dir_all(&state_dir).map_err(|source| DemoError::Io {
        what: format!("creating {}", state_dir.display()),
        source,
    })?;
    let result = demo(&state_dir);
    if !options.keep && options.state_dir.is_none() {
        let _ = std::fs::remove_dir_all(&state_dir);
    } else {
        println!("state dir kept: {}", state_dir.display());
    }
    result
}

fn demo(state_dir: &Path) -> Result<(), DemoError> {
    let exe = std::env::current_exe().map_err(|source| DemoError::Io {
        what: "finding the sds binary".into(),
        source,
    })?;
    let port = free_port()?;
    let socket = state_dir.join("sds.sock");
    println!(
        "sds demo: starting `sds serve` in {} (NBD on 127.0.0.1:{port})",
        state_dir.display()
    );
    let child = Command::new(exe)
        .args(["serve", "--state-dir"])
        .arg(state_dir)
        .args([
            "--nbd-listen",
            &format!("127.0.0.1:{port}"),
            // The demo speaks NBD only; it must not take (or fail on) the iSCSI or NVMe/TCP
            // port of a real server on this machine.
            "--iscsi-listen",
            "none",
            "--nvmf-listen",
            "none",
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| DemoError::Io {
            what: "starting sds serve".into(),
            source,
        })?;
    let mut server = Server { child };
    let mut client = connect(&socket)?;

    println!("\n1. LUNs of three kinds and two sector sizes, pooled with 1 MiB extents:");
    call(
        &mut client,
        "lun_create",
        json!({"name": "file512", "kind": "file", "size": 64u64 << 20, "block_size": 512}),
    )?;
    call(
        &mut client,
        "lun_create",
        json!({"name": "file4k", "kind": "file", "size": 64u64 << 20, "block_size": 4096}),
    )?;
    call(
        &mut client,
        "lun_create",
        json!({"name": "ram", "kind": "mem", "size": 64u64 << 20, "block_size": 512}),
    )?;
    // A RAM LUN keeps nothing across a restart: a pool is either all RAM or all persistent.
    let mixed = json!({"name": "pool0", "luns": ["file512", "file4k", "ram"]});
    println!("  rpc pool_create {mixed}");
    match client.call("pool_create", Some(mixed)) {
        Ok(_) => return Err(step("a pool mixing RAM and file LUNs was accepted")),
        Err(error) => println!("  refused, as it must be: {error}"),
    }
    let pool = call(
        &mut client,
        "pool_create",
        json!({"name": "pool0", "luns": ["file512", "file4k"]}),
    )?;
    println!(
        "  pool0: {} extents of {} bytes, {} free",
        pool["total_extents"], pool["extent_size"], pool["free_extents"]
    );

    println!("\n2. A thin 128 MiB volume:");
    let volume = call(
        &mut client,
        "volume_create",
        json!({"name": "vol0", "pool": "pool0", "size": 128u64 << 20}),
    )?;
    println!(
        "  vol0: uuid {}, {} bytes allocated",
        volume["uuid"], volume["allocated"]
    );

    println!(
        "\n3. A host (this machine) and a virtual path: no host reaches a volume without one:"
    );
    call(
        &mut client,
        "host_create",
        json!({"name": "localhost", "addresses": ["127.0.0.1/32"]}),
    )?;
    let vpath = call(
        &mut client,
        "vpath_create",
        json!({"host": "localhost", "volume": "vol0", "mode": "rw"}),
    )?;
    println!(
        "  host localhost (127.0.0.1/32) -> vol0: virtual path {}, mode {}, domain {}, LUN {}",
        vpath["id"], vpath["mode"], vpath["domain"], vpath["lun"]
    );

    let url = format!("nbd://127.0.0.1:{port}/vol0");
    println!("\n4. qemu-io writes patterns through NBD, across extent and LUN boundaries, and reads them back:");
    let commands: Vec<String> = [
        (0xa1u32, 0u64, 4096u64),
        (0xb2, (1 << 20) - 8192, 16384),
        (0xc3, (3 << 20) - 4096, (2 << 20) + 8192),
        (0xd4, (100 << 20) + 12288, 65536),
    ]
    .iter()
    .flat_map(|&(pattern, offset, len)| {
        [
            format!("write -P {pattern:#x} {offset} {len}"),
            format!("read -P {pattern:#x} {offset} {len}"),
        ]
    })
    .chain(["read -P 0 (64 << 20) 4096".replace("(64 << 20)", &(64u64 << 20).to_string())])
    .collect();
    for c in &commands {
        println!("  qemu-io -c '{c}'");
    }
    let output = qemu_io(&url, &commands)?;
    for line in output
        .lines()
        .filter(|l| l.starts_with("wrote") || l.starts_with("read"))
    {
        println!("    {line}");
    }
    println!("  every pattern read back as written; a never-written range read as zeroes");

    println!("\n5. What the server reports:");
    let volumes = call(&mut client, "volume_get_volumes", json!({"name": "vol0"}))?;
    println!(
        "  vol0 now has {} extents allocated ({} bytes)",
        volumes[0]["allocated_extents"], volumes[0]["allocated"]
    );
    let iostat = call(&mut client, "bdev_get_iostat", json!({"name": "vol0"}))?;
    let stats = &iostat["bdevs"][0];
    println!(
        "  bdev_get_iostat: {} reads ({} bytes), {} writes ({} bytes)",
        stats["num_read_ops"], stats["bytes_read"], stats["num_write_ops"], stats["bytes_written"]
    );

    let stats = call(&mut client, "vpath_get_stats", json!({}))?;
    let total = &stats["vpaths"][0]["total"];
    println!(
        "  vpath_get_stats: virtual path {} did {} reads and {} writes, p99 latency {} us",
        stats["vpaths"][0]["id"],
        total["ops"]["read"],
        total["ops"]["write"],
        total["latency_us"]["p99"]
    );

    println!("\n6. Stopping the server (SIGTERM: drain, flush, exit 0)");
    drop(client);
    if !server.stop()? {
        return Err(step("the server did not stop cleanly"));
    }
    println!("\nsds demo: done");
    Ok(())
}
