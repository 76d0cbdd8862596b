//! The `sds` command line: `sds serve` runs the server; every other command is a client of
//! its management socket (`--socket`, or `SDS_SOCKET`), printing tables for people and the
//! raw JSON result with `--json`.

pub mod size;
pub mod table;
pub mod top;

use crate::rpc::client::{Client, ClientError};
use crate::serve::{PollMode, ServeConfig};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};
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
    /// Hosts: the initiators that may connect, known by what their connection proves
    ///
    /// A host is known by its TLS client-certificate subject when it connects over TLS,
    /// otherwise by its source address (TCP) or its user id (a Unix socket). A host sees and
    /// opens only the volumes it has a virtual path to (`sds vpath create`); a connection no
    /// host claims sees no volume at all.
    #[command(subcommand)]
    Host(HostCommand),
    /// Storage domains: what the virtual paths in them may do, and how fast
    ///
    /// A storage domain is a named set of capabilities that every virtual path (VP) placed in
    /// it gets: QoS limits on the domain as a whole, shared among its VPs by demand; a floor
    /// and a ceiling of IOPS for each VP; a priority against other domains' VPs when they share
    /// a volume's limit (`sds volume qos`); the operations allowed; and how much statistics
    /// detail is kept. 0 means no limit. Every VP is in exactly one domain; `default` always
    /// exists, limits nothing and allows everything.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Virtual paths (VPs): which host may reach which volume, in which mode and domain
    ///
    /// A VP lets one host reach one volume: a host discovers and opens only the volumes it has
    /// a VP to. Each VP has a mode (rw, or ro: writes refused with EPERM), a LUN number, and a
    /// storage domain whose capabilities its I/O gets. VPs are numbered: `sds vpath list`
    /// shows the IDs that delete, set-domain and stats take.
    #[command(subcommand)]
    Vpath(VpathCommand),
    /// Drive a volume in-process (no network) and measure IOPS, latency and IOPS per core,
    /// like SPDK's bdevperf
    Perf(crate::perf::PerfArgs),
    Top(top::TopArgs),
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
    /// Permission bits of the --nbd-socket file, in octal. The default lets every user reach
    /// the socket, so that the host records (`unix:UID`) decide who sees what
    #[arg(long, default_value = "0666", value_parser = parse_mode)]
    nbd_unix_mode: u32,
    /// Seconds one NBD client may take for its whole handshake (negotiation and TLS); a
    /// client still negotiating then is disconnected
    #[arg(long, default_value_t = crate::constants::HANDSHAKE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=crate::constants::MAX_HANDSHAKE_TIMEOUT_SECS))]
    nbd_handshake_timeout_secs: u64,
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
    /// NBD over TLS: the server's certificate chain (PEM). With it every NBD client must
    /// start TLS (NBD_OPT_STARTTLS) before anything else
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) NBD clients' certificates must chain to; each client must then
    /// present one, and its subject (as `openssl x509 -noout -subject -nameopt RFC2253`
    /// prints it) names the host, not its address
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
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
    /// Limit a volume's I/O as a whole, on top of its virtual paths' domains
    ///
    /// SPDK's bdev_set_qos_limit: the limits apply to all virtual paths to the volume together
    /// and are shared among them by demand, weighted by their domains' priority (high 4,
    /// normal 2, low 1). Only the limits given change; 0 removes one.
    Qos {
        /// The volume to limit
        name: String,
        #[command(flatten)]
        limits: QosArgs,
    },
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
        Command::Perf(args) => crate::perf::main(args, json),
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
                // A relative path means this command's working directory, not the server's.
                let path = path.map(|p| std::path::absolute(&p).unwrap_or(p));
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
            VolumeCommand::Qos { name, limits } => volume_qos(json, &call, &name, &limits),
        },
        Command::Host(command) => host(command, json, &call),
        Command::Domain(command) => domain(command, json, &call),
        Command::Vpath(command) => vpath(command, json, &call),
        Command::Top(args) => top::run(&args, json, &call),
    }
}

/// A file mode in octal (`0666`, `660`), at most 0777.
fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|&mode| mode <= 0o777)
        .ok_or_else(|| format!("{text:?}: expected an octal mode from 0000 to 0777"))
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
        nbd_unix_mode: args.nbd_unix_mode,
        nbd_handshake_timeout: std::time::Duration::from_secs(args.nbd_handshake_timeout_secs),
        cores: match &args.cores {
            Some(text) => parse_cores(text)?,
            None => Vec::new(),
        },
        poll: match args.poll {
            Poll::Busy => PollMode::Busy,
            Poll::Adaptive => PollMode::Adaptive,
        },
        cycle: std::time::Duration::from_millis(args.cycle_ms),
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(crate::target::nbd::tls::TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca,
            }),
            _ => None,
        },
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
                text(p, "state"),
                volatile(p),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME", "CAPACITY", "FREE", "EXTENT", "VOLUMES", "LUNS", "STATE", "VOLATILE",
        ],
        &rows,
    );
    print_notes(items);
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
                text(v, "state"),
                volatile(v),
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
            "STATE",
            "VOLATILE",
        ],
        &rows,
    );
    print_notes(items);
}

/// The VOLATILE column: "yes" for a pool (or a volume of one) that starts empty at every
/// start of the server.
fn volatile(value: &Value) -> String {
    match value["volatile"].as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

/// Under a table: the note of every row that has one (a volatile pool that started empty, data
/// lost), so people see it without --json.
fn print_notes(items: &[Value]) {
    for item in items {
        if let (Some(name), Some(note)) = (item["name"].as_str(), item["note"].as_str()) {
            println!("note: {name}: {note}");
        }
    }
}

// ---- Hosts, storage domains and virtual paths: `sds host`, `sds domain`, `sds vpath`,
// `sds volume qos`. Each command is one JSON-RPC call; `sds top` lives in top.rs. ----

#[derive(Subcommand)]
enum HostCommand {
    /// Register a host, known by at least one of its addresses, TLS subject, IQN or NQN
    ///
    /// Without TLS a connection belongs to the host one of whose addresses it comes from;
    /// over TLS only the client certificate's subject counts. The new host sees no volume until
    /// it is given a virtual path (`sds vpath create --host NAME --volume VOLUME`).
    #[command(group(
        clap::ArgGroup::new("identity")
            .required(true)
            .multiple(true)
            .args(["addresses", "tls_subject", "iqn", "nqn"])
    ))]
    Create {
        /// The host's name: 1 to 64 of A-Z a-z 0-9 . _ - :
        name: String,
        /// An address the host connects from without TLS: an IP address (127.0.0.1, ::1), a
        /// CIDR network (10.0.0.0/24) or unix:UID for a Unix-socket peer running as that user
        /// id. Repeat, or give a comma-separated list
        #[arg(long = "address", value_name = "CIDR|unix:UID", value_delimiter = ',')]
        addresses: Vec<String>,
        /// Subject of the host's TLS client certificate, as `openssl x509 -noout -subject
        /// -nameopt RFC2253` prints it (CN=host1,O=lab); no two hosts may share one
        #[arg(long, value_name = "DN")]
        tls_subject: Option<String>,
        /// The host's iSCSI initiator name, kept with the host for front ends that identify
        /// hosts by it
        #[arg(long)]
        iqn: Option<String>,
        /// The host's NVMe-oF host NQN, kept with the host for front ends that identify hosts
        /// by it
        #[arg(long)]
        nqn: Option<String>,
        /// NBD sessions the host may have open at once [default: 64]
        #[arg(long, value_name = "N")]
        max_sessions: Option<u64>,
    },
    /// Change a host's limits (an NBD client past max_sessions is refused at NBD_OPT_GO)
    Set {
        /// The host to change
        name: String,
        /// NBD sessions the host may have open at once
        #[arg(long, value_name = "N")]
        max_sessions: u64,
    },
    /// List hosts with their identities and how many virtual paths each has
    List {
        /// Show only this host (an error if there is none)
        name: Option<String>,
    },
    /// Remove a host; refused while it still has virtual paths (`sds vpath delete` them first)
    Delete {
        /// The host to remove
        name: String,
    },
}

/// Limits on a stream of I/O, with SPDK's names and units. Only the options given are sent.
#[derive(Args)]
struct QosArgs {
    /// I/Os per second, reads and writes together (0: no limit)
    #[arg(long, value_name = "N")]
    rw_ios_per_sec: Option<u64>,
    /// Megabytes (MiB, as SPDK counts them) read and written per second, all together
    /// (0: no limit)
    #[arg(long, value_name = "N")]
    rw_mbytes_per_sec: Option<u64>,
    /// Megabytes (MiB) read per second (0: no limit)
    #[arg(long, value_name = "N")]
    r_mbytes_per_sec: Option<u64>,
    /// Megabytes (MiB) written per second (0: no limit)
    #[arg(long, value_name = "N")]
    w_mbytes_per_sec: Option<u64>,
}

impl QosArgs {
    /// The limits given, by their JSON-RPC names.
    fn to_json(&self) -> Map<String, Value> {
        let mut object = Map::new();
        for (key, value) in [
            ("rw_ios_per_sec", self.rw_ios_per_sec),
            ("rw_mbytes_per_sec", self.rw_mbytes_per_sec),
            ("r_mbytes_per_sec", self.r_mbytes_per_sec),
            ("w_mbytes_per_sec", self.w_mbytes_per_sec),
        ] {
            if let Some(value) = value {
                object.insert(key.into(), value.into());
            }
        }
        object
    }
}

/// A domain's capabilities as options; only the options given are sent.
#[derive(Args)]
struct CapabilityArgs {
    #[command(flatten)]
    qos: QosArgs,
    /// IOPS each virtual path is guaranteed out of the domain's rw-ios-per-sec while it wants
    /// them (0: no floor)
    #[arg(long, value_name = "N")]
    vpath_min_ios_per_sec: Option<u64>,
    /// IOPS no single virtual path may exceed, whatever the domain has left (0: no ceiling)
    #[arg(long, value_name = "N")]
    vpath_max_ios_per_sec: Option<u64>,
    /// How the domain's virtual paths rank against other domains' when they share a volume's
    /// limit (`sds volume qos`): shares are weighted high 4, normal 2, low 1 [new domain: normal]
    #[arg(long, value_enum)]
    priority: Option<PriorityArg>,
    /// An operation the domain's virtual paths may send; the others are refused (NBD EPERM).
    /// Repeat or give a comma-separated list; the list replaces the domain's list
    /// [new domain: all]
    #[arg(long = "allow", value_name = "OP", value_enum, value_delimiter = ',')]
    allow: Vec<OpArg>,
    /// How much the data path records for each I/O [new domain: latency]
    #[arg(long, value_enum)]
    statistics: Option<StatisticsArg>,
}

impl CapabilityArgs {
    /// The `capabilities` object of `domain_create` and `domain_set_capabilities`: only the
    /// keys of the options given, so `sds domain set` changes nothing else.
    fn to_json(&self) -> Map<String, Value> {
        let mut object = self.qos.to_json();
        for (key, value) in [
            ("vpath_min_ios_per_sec", self.vpath_min_ios_per_sec),
            ("vpath_max_ios_per_sec", self.vpath_max_ios_per_sec),
        ] {
            if let Some(value) = value {
                object.insert(key.into(), value.into());
            }
        }
        if let Some(priority) = self.priority {
            object.insert("priority".into(), value_name(&priority).into());
        }
        if !self.allow.is_empty() {
            let ops: Vec<&str> = if self.allow.contains(&OpArg::All) {
                OpArg::EACH.iter().map(|op| op.as_str()).collect()
            } else {
                OpArg::EACH
                    .iter()
                    .filter(|op| self.allow.contains(op))
                    .map(|op| op.as_str())
                    .collect()
            };
            object.insert("allowed_ops".into(), json!(ops));
        }
        if let Some(statistics) = self.statistics {
            object.insert("statistics".into(), value_name(&statistics).into());
        }
        object
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum PriorityArg {
    /// Weight 4
    High,
    /// Weight 2
    Normal,
    /// Weight 1
    Low,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OpArg {
    Read,
    Write,
    Flush,
    /// Discard (NBD TRIM)
    Trim,
    #[value(name = "write_zeroes", alias = "write-zeroes")]
    WriteZeroes,
    /// Every operation above
    All,
}

impl OpArg {
    const EACH: [OpArg; 5] = [
        Self::Read,
        Self::Write,
        Self::Flush,
        Self::Trim,
        Self::WriteZeroes,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Flush => "flush",
            Self::Trim => "trim",
            Self::WriteZeroes => "write_zeroes",
            Self::All => "all",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum StatisticsArg {
    /// Operations, bytes and errors
    Basic,
    /// Also a latency histogram (p50, p99, p99.9)
    Latency,
}

/// The name clap shows for a value-enum variant, which is also the JSON-RPC value.
fn value_name(value: &impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

#[derive(Subcommand)]
enum DomainCommand {
    /// Create a storage domain; capabilities not given get the defaults
    ///
    /// The defaults: no limits, normal priority, every operation allowed, latency statistics.
    /// Limits on the domain (--rw-ios-per-sec, --*-mbytes-per-sec) are shared among its
    /// virtual paths by demand, within each one's floor and ceiling (--vpath-min-ios-per-sec,
    /// --vpath-max-ios-per-sec). 0 means no limit everywhere.
    Create {
        /// The domain's name: 1 to 64 of A-Z a-z 0-9 . _ - :
        name: String,
        #[command(flatten)]
        capabilities: CapabilityArgs,
    },
    /// Change some of a domain's capabilities; those not given keep their values
    ///
    /// The change reaches every virtual path in the domain at once, without disconnecting
    /// anyone. Give 0 to remove a limit; --allow replaces the whole list of allowed operations.
    Set {
        /// The domain to change (`default` too)
        name: String,
        #[command(flatten)]
        capabilities: CapabilityArgs,
    },
    /// List domains with their capabilities and virtual paths (- means no limit)
    List {
        /// Show only this domain (an error if there is none)
        name: Option<String>,
    },
    /// Remove a domain; refused while virtual paths are in it, and for `default`
    Delete {
        /// The domain to remove
        name: String,
    },
    /// What each domain's virtual paths did: rates and latency over the server's last control
    /// cycle, and totals since start (`sds top` for a live view)
    Stats {
        /// Show only this domain
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum VpathCommand {
    /// Let a host reach a volume: it can then discover and open it
    Create {
        /// The host (`sds host list`)
        #[arg(long)]
        host: String,
        /// The volume (`sds volume list`); a host has at most one virtual path per volume
        #[arg(long)]
        volume: String,
        /// The storage domain whose capabilities the virtual path's I/O gets [default: default]
        #[arg(long)]
        domain: Option<String>,
        /// Read-write, or read-only (writes, trims and write-zeroes are refused with NBD
        /// EPERM) [default: rw]
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// The LUN number the host sees the volume at, 0 to 16383, unique per host
        /// [default: the lowest free one]
        #[arg(long, value_name = "N")]
        lun: Option<u32>,
    },
    /// List virtual paths, all or only a host's or a volume's
    List {
        /// Only this host's virtual paths
        #[arg(long)]
        host: Option<String>,
        /// Only the virtual paths to this volume
        #[arg(long)]
        volume: Option<String>,
    },
    /// Remove a virtual path: the host loses the volume, and its open connections through the
    /// path are cut
    Delete {
        /// The virtual path's ID (`sds vpath list`)
        id: u64,
    },
    /// Move a virtual path to another storage domain; takes effect at once, without
    /// disconnecting the host
    SetDomain {
        /// The virtual path's ID (`sds vpath list`)
        id: u64,
        /// The domain to move it to
        domain: String,
    },
    /// What each virtual path did: rates and latency over the server's last control cycle,
    /// the limit it gets now, and totals since it was made (`sds top` for a live view)
    Stats {
        /// Show only this virtual path
        id: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Read and write
    Rw,
    /// Read only
    Ro,
}

fn host(command: HostCommand, json: bool, call: top::Call) -> Result<(), String> {
    match command {
        HostCommand::Create {
            name,
            addresses,
            tls_subject,
            iqn,
            nqn,
            max_sessions,
        } => {
            let mut params = json!({ "name": name });
            set(&mut params, "max_sessions", max_sessions.map(|n| json!(n)));
            if !addresses.is_empty() {
                params["addresses"] = json!(addresses);
            }
            set(
                &mut params,
                "nbd_tls_subject",
                tls_subject.map(|s| json!(s)),
            );
            set(&mut params, "iqn", iqn.map(|s| json!(s)));
            set(&mut params, "nqn", nqn.map(|s| json!(s)));
            show(json, call("host_create", Some(params))?, print_hosts)
        }
        HostCommand::Set { name, max_sessions } => show(
            json,
            call(
                "host_set",
                Some(json!({ "name": name, "max_sessions": max_sessions })),
            )?,
            print_hosts,
        ),
        HostCommand::List { name } => show(
            json,
            call("host_get_hosts", name.map(|name| json!({ "name": name })))?,
            print_hosts,
        ),
        HostCommand::Delete { name } => done(
            json,
            call("host_delete", Some(json!({ "name": name })))?,
            &format!("host {name} deleted"),
        ),
    }
}

fn domain(command: DomainCommand, json: bool, call: top::Call) -> Result<(), String> {
    match command {
        DomainCommand::Create { name, capabilities } => {
            let mut params = json!({ "name": name });
            let capabilities = capabilities.to_json();
            if !capabilities.is_empty() {
                params["capabilities"] = Value::Object(capabilities);
            }
            show(json, call("domain_create", Some(params))?, print_domains)
        }
        DomainCommand::Set { name, capabilities } => {
            let capabilities = capabilities.to_json();
            if capabilities.is_empty() {
                return Err(format!(
                    "sds domain set {name}: give at least one capability to change \
                     (see `sds domain set --help`)"
                ));
            }
            let params = json!({ "name": name, "capabilities": capabilities });
            show(
                json,
                call("domain_set_capabilities", Some(params))?,
                print_domains,
            )
        }
        DomainCommand::List { name } => show(
            json,
            call(
                "domain_get_domains",
                name.map(|name| json!({ "name": name })),
            )?,
            print_domains,
        ),
        DomainCommand::Delete { name } => done(
            json,
            call("domain_delete", Some(json!({ "name": name })))?,
            &format!("domain {name} deleted"),
        ),
        DomainCommand::Stats { name } => show_object(
            json,
            call("domain_get_stats", name.map(|name| json!({ "name": name })))?,
            top::print_domain_stats,
        ),
    }
}

fn vpath(command: VpathCommand, json: bool, call: top::Call) -> Result<(), String> {
    match command {
        VpathCommand::Create {
            host,
            volume,
            domain,
            mode,
            lun,
        } => {
            let mut params = json!({ "host": host, "volume": volume });
            set(&mut params, "domain", domain.map(|d| json!(d)));
            set(&mut params, "mode", mode.map(|m| json!(value_name(&m))));
            set(&mut params, "lun", lun.map(|l| json!(l)));
            show(json, call("vpath_create", Some(params))?, print_vpaths)
        }
        VpathCommand::List { host, volume } => {
            let mut params = json!({});
            set(&mut params, "host", host.map(|h| json!(h)));
            set(&mut params, "volume", volume.map(|v| json!(v)));
            show(json, call("vpath_get_vpaths", Some(params))?, print_vpaths)
        }
        VpathCommand::Delete { id } => done(
            json,
            call("vpath_delete", Some(json!({ "id": id })))?,
            &format!("virtual path {id} deleted"),
        ),
        VpathCommand::SetDomain { id, domain } => show(
            json,
            call(
                "vpath_set_domain",
                Some(json!({ "id": id, "domain": domain })),
            )?,
            print_vpaths,
        ),
        VpathCommand::Stats { id } => show_object(
            json,
            call("vpath_get_stats", id.map(|id| json!({ "id": id })))?,
            top::print_vpath_stats,
        ),
    }
}

/// `sds volume qos`: SPDK's `bdev_set_qos_limit` on a volume.
fn volume_qos(json: bool, call: top::Call, name: &str, limits: &QosArgs) -> Result<(), String> {
    let limits = limits.to_json();
    if limits.is_empty() {
        return Err(format!(
            "sds volume qos {name}: give at least one of --rw-ios-per-sec, \
             --rw-mbytes-per-sec, --r-mbytes-per-sec, --w-mbytes-per-sec"
        ));
    }
    let summary: Vec<String> = limits
        .iter()
        .map(|(key, value)| match value.as_u64() {
            Some(0) => format!("{key} 0 (no limit)"),
            _ => format!("{key} {value}"),
        })
        .collect();
    let mut params = Value::Object(limits);
    params["name"] = json!(name);
    done(
        json,
        call("bdev_set_qos_limit", Some(params))?,
        &format!("volume {name}: {}", summary.join(", ")),
    )
}

/// Like `show`, for results that are one object rather than a list (the `*_get_stats` ones).
fn show_object(json: bool, result: Value, print: fn(&Value)) -> Result<(), String> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
    } else {
        print(&result);
    }
    Ok(())
}

/// The strings of a JSON list, comma-separated; `-` when empty.
fn joined(value: &Value) -> String {
    let items: Vec<String> = value
        .as_array()
        .map(|list| {
            list.iter()
                .map(|item| match item {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// A limit: the number, or `-` for 0 (no limit).
fn limit(value: &Value, key: &str) -> String {
    match value[key].as_u64() {
        Some(0) | None => "-".into(),
        Some(n) => n.to_string(),
    }
}

fn print_hosts(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|h| {
            vec![
                text(h, "name"),
                joined(&h["addresses"]),
                text(h, "nbd_tls_subject"),
                text(h, "iqn"),
                text(h, "nqn"),
                text(h, "vpaths"),
                format!("{}/{}", text(h, "sessions"), text(h, "max_sessions")),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "ADDRESSES",
            "TLS SUBJECT",
            "IQN",
            "NQN",
            "VPS",
            "SESSIONS",
        ],
        &rows,
    );
}

fn print_domains(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            let c = &d["capabilities"];
            let allowed = match c["allowed_ops"].as_array().map(Vec::len) {
                Some(n) if n == OpArg::EACH.len() => "all".to_string(),
                Some(0) => "none".to_string(),
                _ => joined(&c["allowed_ops"]),
            };
            vec![
                text(d, "name"),
                text(c, "priority"),
                limit(c, "rw_ios_per_sec"),
                limit(c, "rw_mbytes_per_sec"),
                limit(c, "r_mbytes_per_sec"),
                limit(c, "w_mbytes_per_sec"),
                limit(c, "vpath_min_ios_per_sec"),
                limit(c, "vpath_max_ios_per_sec"),
                allowed,
                text(c, "statistics"),
                joined(&d["vpaths"]),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "PRIORITY",
            "RW IOPS",
            "RW MiB/s",
            "R MiB/s",
            "W MiB/s",
            "VP MIN IOPS",
            "VP MAX IOPS",
            "ALLOW",
            "STATISTICS",
            "VPS",
        ],
        &rows,
    );
}

fn print_vpaths(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| {
            vec![
                text(v, "id"),
                text(v, "host"),
                text(v, "volume"),
                text(v, "domain"),
                text(v, "mode"),
                text(v, "lun"),
                text(v, "connections"),
            ]
        })
        .collect();
    print_table(
        &["ID", "HOST", "VOLUME", "DOMAIN", "MODE", "LUN", "CONNS"],
        &rows,
    );
}
