//! The `sds` command line: `sds serve` runs the server; every other command is a client of
//! its management socket (`--socket`, or `SDS_SOCKET`), printing tables for people and the
//! raw JSON result with `--json`.

pub mod size;
pub mod table;

use crate::rpc::client::{Client, ClientError};
use crate::serve::{PollMode, ServeConfig};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use size::{format_size, parse_size};
use std::net::SocketAddr;
use std::path::PathBuf;
use table::print_table;

const DEFAULT_STATE_DIR: &str = "/var/lib/sds";

#[derive(Parser)]
#[command(
    name = "sds",
    version = crate::version::VERSION,
    long_version = concat!(env!("CARGO_PKG_VERSION"), " (rev ", env!("SDS_GIT_REVISION"), ")"),
    about = "sds, the storage domain server: pools LUNs, carves thin volumes, serves them over NBD",
    long_about = "sds pools heterogeneous block storage (RAM, files, block devices) into storage pools, \
carves thin or thick volumes out of them and serves the volumes to hosts over NBD.\n\n\
Start a server with `sds serve`, then manage it with the other commands, which talk to the \
server's JSON-RPC socket. `sds demo` shows the whole path end to end."
)]
struct Cli {
    /// The server's management socket [default: $SDS_STATE_DIR/sds.sock, or /var/lib/sds/sds.sock]
    #[arg(long, global = true, env = "SDS_SOCKET")]
    socket: Option<PathBuf>,
    /// Print the server's raw JSON result instead of a table
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: reactors, management socket and NBD front end, until SIGINT/SIGTERM
    Serve(ServeArgs),
    /// Start a server in a scratch state dir, build a pool and a volume, and read and write it
    /// with a real NBD client (qemu-io)
    Demo(DemoArgs),
    /// Physical storage resources: RAM, files, block devices
    #[command(subcommand)]
    Lun(LunCommand),
    /// Pools of LUNs cut into extents
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Virtual disks carved out of a pool, served as NBD exports of the same name
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Send any JSON-RPC method, e.g. `sds rpc bdev_get_bdevs '{"name":"vol1"}'`
    Rpc {
        method: String,
        /// Parameters as a JSON object
        params: Option<String>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Where configuration records, file LUNs created without a path and the socket live
    #[arg(long, env = "SDS_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The management socket [default: STATE_DIR/sds.sock]
    #[arg(long)]
    rpc_socket: Option<PathBuf>,
    /// NBD over TCP, HOST:PORT, or `none`
    #[arg(long, default_value = "127.0.0.1:10809")]
    nbd_listen: String,
    /// NBD over a Unix socket as well
    #[arg(long)]
    nbd_socket: Option<PathBuf>,
    /// Cores to run one pinned reactor each on: `0`, `0,1`, `0-3` [default: the last core,
    /// leaving core 0 to the kernel's interrupt work and to local clients]
    #[arg(long)]
    cores: Option<String>,
    /// busy: spin on the rings (lowest latency, burns the cores); adaptive: sleep when idle
    #[arg(long, value_enum, default_value = "adaptive")]
    poll: Poll,
    /// Period of the control loop, in milliseconds: how often per-VP statistics are gathered
    /// and each domain's QoS budget is shared anew among its virtual paths
    #[arg(long, default_value_t = crate::constants::DEFAULT_CYCLE_MS,
          value_parser = clap::value_parser!(u64).range(crate::constants::MIN_CYCLE_MS..=crate::constants::MAX_CYCLE_MS))]
    cycle_ms: u64,
    /// error, warn, info, debug or trace
    #[arg(long, env = "SDS_LOG", default_value = "info")]
    log_level: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Poll {
    Busy,
    Adaptive,
}

#[derive(Args)]
struct DemoArgs {
    /// State dir for the demo server [default: a new temporary directory]
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Leave the state dir in place afterwards
    #[arg(long)]
    keep: bool,
}

#[derive(Subcommand)]
enum LunCommand {
    /// Add a LUN: `--kind file --path P --size 1G`, `--kind mem --size 256M`, `--kind blockdev --path /dev/loop0`,
    /// `--kind fault --base LUN` (fault injection over another LUN)
    Create {
        name: String,
        #[arg(long)]
        kind: String,
        #[arg(long)]
        path: Option<PathBuf>,
        /// Size, for mem LUNs and for files that do not exist yet (e.g. 1G)
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Sector size the LUN has or emulates: 512 or 4096
        #[arg(long)]
        block_size: Option<u32>,
        /// For a fault LUN: the LUN it wraps (in no pool)
        #[arg(long)]
        base: Option<String>,
    },
    /// List LUNs, with their state and error counts
    List,
    /// Remove a LUN that is in no pool (its file is kept)
    Delete { name: String },
    /// Inject a fault into a fault LUN's I/O, replacing the previous one
    InjectFault {
        name: String,
        /// read, write, flush or all
        #[arg(long)]
        io_type: String,
        /// fail (the next COUNT I/Os), fail_after (fail every I/O after COUNT) or delay
        #[arg(long)]
        mode: String,
        /// I/Os the mode applies to [default: every one, until cleared]; required for fail_after
        #[arg(long)]
        count: Option<u64>,
        /// Delay in microseconds, for mode delay
        #[arg(long)]
        delay_us: Option<u64>,
    },
    /// Remove a fault LUN's injected fault
    ClearFault { name: String },
}

#[derive(Subcommand)]
enum PoolCommand {
    /// Build a pool from LUNs (formats them)
    Create {
        name: String,
        /// A LUN to include; repeat, or give a comma-separated list
        #[arg(long = "lun", alias = "luns", value_delimiter = ',', required = true)]
        luns: Vec<String>,
        /// Extent size: a power of two from 64K to 1G [default: 1M]
        #[arg(long, value_parser = parse_size)]
        extent_size: Option<u64>,
    },
    /// List pools with capacity and free space
    List,
    /// Remove a pool that has no volumes
    Delete { name: String },
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Create a volume (thin unless --thick)
    Create {
        name: String,
        #[arg(long)]
        pool: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// 512 or 4096 [default: 4096]
        #[arg(long)]
        block_size: Option<u32>,
        /// Provision every extent now
        #[arg(long)]
        thick: bool,
    },
    /// List volumes
    List,
    /// Grow a volume, online
    Resize {
        name: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Delete a volume and free its extents
    Delete { name: String },
}

/// Runs the command line; returns the process exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let socket = cli.socket.clone().unwrap_or_else(|| {
        std::env::var_os("SDS_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
            .join("sds.sock")
    });
    let call = |method: &str, params: Option<Value>| -> Result<Value, String> {
        let mut client = Client::connect(&socket).map_err(|e| chain(&e))?;
        client.call(method, params).map_err(|error| match error {
            ClientError::Rpc(rpc) => format!("{} (code {})", rpc.message, rpc.code),
            other => chain(&other),
        })
    };
    let json = cli.json;
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Demo(args) => {
            crate::logger::init("warn");
            crate::demo::run(crate::demo::DemoOptions {
                state_dir: args.state_dir,
                keep: args.keep,
            })
            .map_err(|e| chain(&e))
        }
        Command::Rpc { method, params } => {
            let params = params
                .map(|text| {
                    serde_json::from_str::<Value>(&text)
                        .map_err(|e| format!("params are not valid JSON: {e}"))
                })
                .transpose()?;
            let result = call(&method, params)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_default()
            );
            Ok(())
        }
        Command::Lun(command) => match command {
            LunCommand::Create {
                name,
                kind,
                path,
                size,
                block_size,
                base,
            } => {
                let mut params = json!({ "name": name, "kind": kind });
                set(&mut params, "path", path.map(|p| json!(p)));
                set(&mut params, "size", size.map(|s| json!(s)));
                set(&mut params, "block_size", block_size.map(|b| json!(b)));
                set(&mut params, "base", base.map(|b| json!(b)));
                show(json, call("lun_create", Some(params))?, print_luns)
            }
            LunCommand::List => show(json, call("lun_get_luns", None)?, print_luns),
            LunCommand::Delete { name } => done(
                json,
                call("lun_delete", Some(json!({ "name": name })))?,
                &format!("LUN {name} deleted"),
            ),
            LunCommand::InjectFault {
                name,
                io_type,
                mode,
                count,
                delay_us,
            } => {
                let mut params = json!({ "name": name, "io_type": io_type, "mode": mode });
                set(&mut params, "count", count.map(|c| json!(c)));
                set(&mut params, "delay_us", delay_us.map(|d| json!(d)));
                show(json, call("lun_inject_fault", Some(params))?, print_luns)
            }
            LunCommand::ClearFault { name } => show(
                json,
                call("lun_clear_fault", Some(json!({ "name": name })))?,
                print_luns,
            ),
        },
        Command::Pool(command) => match command {
            PoolCommand::Create {
                name,
                luns,
                extent_size,
            } => {
                let mut params = json!({ "name": name, "luns": luns });
                set(&mut params, "extent_size", extent_size.map(|s| json!(s)));
                show(json, call("pool_create", Some(params))?, print_pools)
            }
            PoolCommand::List => show(json, call("pool_get_pools", None)?, print_pools),
            PoolCommand::Delete { name } => done(
                json,
                call("pool_delete", Some(json!({ "name": name })))?,
                &format!("pool {name} deleted"),
            ),
        },
        Command::Volume(command) => match command {
            VolumeCommand::Create {
                name,
                pool,
                size,
                block_size,
                thick,
            } => {
                let mut params =
                    json!({ "name": name, "pool": pool, "size": size, "thin": !thick });
                set(&mut params, "block_size", block_size.map(|b| json!(b)));
                show(json, call("volume_create", Some(params))?, print_volumes)
            }
            VolumeCommand::List => show(json, call("volume_get_volumes", None)?, print_volumes),
            VolumeCommand::Resize { name, size } => show(
                json,
                call("volume_resize", Some(json!({ "name": name, "size": size })))?,
                print_volumes,
            ),
            VolumeCommand::Delete { name } => done(
                json,
                call("volume_delete", Some(json!({ "name": name })))?,
                &format!("volume {name} deleted"),
            ),
        },
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    crate::logger::init(&args.log_level);
    let nbd_listen = match args.nbd_listen.as_str() {
        "none" | "" => None,
        text => Some(
            text.parse::<SocketAddr>()
                .map_err(|e| format!("--nbd-listen {text:?}: {e}"))?,
        ),
    };
    let config = ServeConfig {
        state_dir: args.state_dir,
        rpc_socket: args.rpc_socket,
        nbd_listen,
        nbd_socket: args.nbd_socket,
        cores: match &args.cores {
            Some(text) => parse_cores(text)?,
            None => Vec::new(),
        },
        poll: match args.poll {
            Poll::Busy => PollMode::Busy,
            Poll::Adaptive => PollMode::Adaptive,
        },
        cycle: std::time::Duration::from_millis(args.cycle_ms),
    };
    crate::serve::run(config).map_err(|e| chain(&e))
}

/// `0,2-3` → [0, 2, 3].
pub fn parse_cores(text: &str) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("--cores: {part:?} is not a core or a range like 0-3");
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to): (usize, usize) = (
                    from.parse().map_err(|_| bad())?,
                    to.parse().map_err(|_| bad())?,
                );
                if from > to {
                    return Err(bad());
                }
                cores.extend(from..=to);
            }
            None => cores.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cores.is_empty() || cores.len() > crate::constants::MAX_REACTORS {
        return Err(format!(
            "--cores: give 1 to {} cores",
            crate::constants::MAX_REACTORS
        ));
    }
    Ok(cores)
}

fn chain(error: &dyn std::error::Error) -> String {
    crate::control::luns_error_chain(error)
}

fn set(params: &mut Value, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        params[key] = value;
    }
}

fn done(json: bool, result: Value, message: &str) -> Result<(), String> {
    if json {
        println!("{result}");
    } else {
        println!("{message}");
    }
    Ok(())
}

fn show(json: bool, result: Value, print: fn(&[Value])) -> Result<(), String> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
        return Ok(());
    }
    match result {
        Value::Array(items) => print(&items),
        single => print(&[single]),
    }
    Ok(())
}

fn text(value: &Value, key: &str) -> String {
    match &value[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn bytes(value: &Value, key: &str) -> String {
    value[key]
        .as_u64()
        .map(format_size)
        .unwrap_or_else(|| "-".into())
}

fn print_luns(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|l| {
            let errors = &l["errors"];
            let errors = format!(
                "{}/{}/{}",
                text(errors, "read"),
                text(errors, "write"),
                text(errors, "flush")
            );
            // A fault LUN shows its base (and active fault) where a file shows its path.
            let path = match (&l["base"], &l["fault"]) {
                (Value::String(base), Value::Object(fault)) => format!(
                    "base {base}; fault {} {}",
                    fault.get("mode").and_then(Value::as_str).unwrap_or("?"),
                    fault.get("io_type").and_then(Value::as_str).unwrap_or("?"),
                ),
                (Value::String(base), _) => format!("base {base}"),
                _ => text(l, "path"),
            };
            vec![
                text(l, "name"),
                text(l, "kind"),
                bytes(l, "size"),
                text(l, "block_size"),
                text(l, "speed_class"),
                text(l, "pool"),
                text(l, "state"),
                errors,
                path,
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "KIND",
            "SIZE",
            "BLOCK",
            "SPEED",
            "POOL",
            "STATE",
            "ERRORS R/W/F",
            "PATH",
        ],
        &rows,
    );
}

fn print_pools(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            let luns = p["luns"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                text(p, "name"),
                bytes(p, "capacity"),
                bytes(p, "free"),
                bytes(p, "extent_size"),
                text(p, "volumes"),
                luns,
            ]
        })
        .collect();
    print_table(
        &["NAME", "CAPACITY", "FREE", "EXTENT", "VOLUMES", "LUNS"],
        &rows,
    );
}

fn print_volumes(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| {
            let kind = if v["thin"].as_bool() == Some(false) {
                "thick"
            } else {
                "thin"
            };
            vec![
                text(v, "name"),
                text(v, "pool"),
                bytes(v, "size"),
                bytes(v, "allocated"),
                text(v, "block_size"),
                kind.into(),
                text(v, "connections"),
                text(v, "uuid"),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "POOL",
            "SIZE",
            "ALLOCATED",
            "BLOCK",
            "TYPE",
            "CONNS",
            "UUID",
        ],
        &rows,
    );
}
