//! The `sds` command line: `sds serve` runs the server; every other command is a client of
//! its management socket (`--socket`, or `SDS_SOCKET`), printing tables for people and the
//! raw JSON result with `--json`. It is the binary's, not the library's: it uses only the
//! `sds` library's public API, and `sds serve`, `sds perf` and `sds demo` run in this process.
//!
//! This file holds the top-level [`Cli`] and [`Command`] and the dispatch to one file per
//! resource, each of which holds its clap subcommands, the JSON-RPC calls they make and the
//! table it prints: `lun`, `pool`, `volume` (with `qos`, the QoS limit options it shares with
//! `domain`), `volume_set`, `host`, `domain`, `vpath`; `serve` translates the server's options, `top` is the
//! live view. Shared by all of them: `output` (table or `--json`), `params` (options to
//! JSON-RPC parameters) and `table` (layout and cells); sizes are the library's
//! (`sds::units`), since `sds perf` and the fuzz targets parse them too.
//!
//! To add a resource: a file with its `Subcommand` enum, a `run(command, json, call)` that
//! makes the calls and prints with `output::show`, and its table; then a variant of
//! [`Command`] and an arm in [`run`].

mod config;
mod domain;
mod generate;
mod host;
mod iscsi;
mod lun;
mod mirror;
mod nvmf;
mod output;
mod params;
mod pool;
mod qos;
mod secret;
mod serve;
mod snapshot;
mod table;
mod top;
mod volume;
mod volume_set;
mod vpath;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sds::rpc::client::{Client, ClientError};
use serde_json::Value;
use std::path::PathBuf;

/// Where `sds serve` keeps its state, and so where the other commands look for its socket.
const DEFAULT_STATE_DIR: &str = "/var/lib/sds";

/// How the command line calls a JSON-RPC method: the result, or a message for the user.
pub type Call<'a> = &'a dyn Fn(&str, Option<Value>) -> Result<Value, String>;

#[derive(Parser)]
#[command(
    name = "sds",
    version = sds::version::VERSION,
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
    Serve(serve::ServeArgs),
    /// Start a server in a scratch state dir, build a pool and a volume, and read and write it
    /// with a real NBD client (qemu-io)
    Demo(crate::demo::DemoArgs),
    /// Physical storage resources: RAM, files, block devices
    #[command(subcommand)]
    Lun(lun::LunCommand),
    /// Pools of LUNs cut into extents
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Virtual disks carved out of a pool, served as NBD exports of the same name
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Snapshots: read-only point-in-time views of a volume, taken at once (copy-on-write);
    /// and reverting a volume to one, offline
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Clones: writable volumes made from a snapshot, sharing its extents until written
    #[command(subcommand)]
    Clone(snapshot::CloneCommand),
    /// Volume sets: one volume made of member volumes, concatenated or striped
    #[command(subcommand)]
    VolumeSet(volume_set::VolumeSetCommand),
    /// Synchronous mirrors: a volume kept on two or three legs (volumes on disjoint LUNs)
    #[command(subcommand)]
    Mirror(mirror::MirrorCommand),
    /// Hosts: the initiators that may connect, known by what their connection proves
    ///
    /// A host is known by its TLS client-certificate subject when it connects over TLS,
    /// otherwise by its source address (TCP) or its user id (a Unix socket). A host sees and
    /// opens only the volumes it has a virtual path to (`sds vpath create`); a connection no
    /// host claims sees no volume at all.
    #[command(subcommand)]
    Host(host::HostCommand),
    /// Storage domains: what the virtual paths in them may do, and how fast
    ///
    /// A storage domain is a named set of capabilities that every virtual path (VP) placed in
    /// it gets: QoS limits on the domain as a whole, shared among its VPs by demand; a floor
    /// and a ceiling of IOPS for each VP; a priority against other domains' VPs when they share
    /// a volume's limit (`sds volume qos`); the operations allowed; and how much statistics
    /// detail is kept. 0 means no limit. Every VP is in exactly one domain; `default` always
    /// exists, limits nothing and allows everything.
    #[command(subcommand)]
    Domain(domain::DomainCommand),
    /// Virtual paths (VPs): which host may reach which volume, in which mode and domain
    ///
    /// A VP lets one host reach one volume: a host discovers and opens only the volumes it has
    /// a VP to. Each VP has a mode (rw, or ro: writes refused with EPERM), a LUN number, and a
    /// storage domain whose capabilities its I/O gets. VPs are numbered: `sds vpath list`
    /// shows the IDs that delete, set-domain and stats take.
    #[command(subcommand)]
    Vpath(vpath::VpathCommand),
    /// The iSCSI target: its name, portals and LUNs per host, and its live sessions
    #[command(subcommand)]
    Iscsi(iscsi::IscsiCommand),
    /// NVMe/TCP: the subsystems (one per host, its VPs as namespaces) and the live
    /// controllers with their queues
    #[command(subcommand)]
    Nvmf(nvmf::NvmfCommand),
    /// Drive a volume in-process (no network) and measure IOPS, latency and IOPS per core,
    /// like SPDK's bdevperf
    Perf(crate::perf::PerfArgs),
    Top(top::TopArgs),
    /// The configuration as one JSON document: save it, load it into a server
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Send any JSON-RPC method, e.g. `sds rpc bdev_get_bdevs '{"name":"vol1"}'`
    Rpc {
        method: String,
        /// Parameters as a JSON object
        params: Option<String>,
    },
    /// Write the man pages (one per command) into DIR (for packaging)
    #[command(hide = true)]
    GenMan {
        dir: PathBuf,
    },
    /// Write bash, zsh and fish completions into DIR (for packaging)
    #[command(hide = true)]
    GenCompletions {
        dir: PathBuf,
    },
}

/// Runs the command line; returns the process exit status.
pub fn main() -> i32 {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(message) => {
            eprintln!("error: {message}");
            return 2;
        }
    };
    // An administrative command prints and exits: a reader that goes away (`sds rpc … | head`)
    // ends it quietly, as it ends other Unix tools, instead of a panic on the failed print.
    // The server, the demo and perf keep SIGPIPE ignored: they write to sockets.
    if !matches!(
        cli.command,
        Command::Serve(_) | Command::Perf(_) | Command::Demo(_)
    ) {
        // SAFETY: restoring a signal's default disposition, before this process starts any
        // thread, touches no memory of ours.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

/// Parses the command line; for `sds serve --config FILE`, the file's keys as flags appended
/// to it, but for those the command line or the environment already sets
/// (`sds::config_file`). Help, version and usage errors print and exit, as clap does.
fn parse() -> Result<Cli, String> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(argv.clone());
    let Some(("serve", serve)) = matches.subcommand() else {
        return Cli::from_arg_matches(&matches).map_err(|e| e.to_string());
    };
    let Some(path) = serve.get_one::<PathBuf>(sds::config_file::CONFIG_FLAG) else {
        return Cli::from_arg_matches(&matches).map_err(|e| e.to_string());
    };
    let command = Cli::command();
    let serve_command = command
        .find_subcommand("serve")
        .ok_or("the serve command is missing")?;
    let from_file = sds::config_file::load(path, serve_command, |id| {
        matches!(
            serve.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    })
    .map_err(|e| chain(&e))?;
    argv.extend(from_file);
    let matches = Cli::command().get_matches_from(argv);
    Cli::from_arg_matches(&matches).map_err(|e| e.to_string())
}

/// Runs one parsed command line: `serve`, `demo` and `perf` in this process, every other
/// command as JSON-RPC calls to the server's socket.
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
        Command::Serve(args) => serve::run(args),
        Command::Perf(args) => crate::perf::main(args, json),
        Command::Demo(args) => {
            sds::logger::init("warn");
            crate::demo::run(args).map_err(|e| chain(&e))
        }
        Command::GenMan { dir } => generate::man_pages(&dir),
        Command::GenCompletions { dir } => generate::completions(&dir),
        Command::Rpc { method, params } => {
            let params = params
                .map(|text| {
                    serde_json::from_str::<Value>(&text)
                        .map_err(|e| format!("params are not valid JSON: {e}"))
                })
                .transpose()?;
            output::print_json(&call(&method, params)?);
            Ok(())
        }
        Command::Lun(command) => lun::run(command, json, &call),
        Command::Pool(command) => pool::run(command, json, &call),
        Command::Volume(command) => volume::run(command, json, &call),
        Command::Snapshot(command) => snapshot::run(command, json, &call),
        Command::Clone(command) => snapshot::run_clone(command, json, &call),
        Command::VolumeSet(command) => volume_set::run(command, json, &call),
        Command::Mirror(command) => mirror::run(command, json, &call),
        Command::Host(command) => host::run(command, json, &call),
        Command::Domain(command) => domain::run(command, json, &call),
        Command::Vpath(command) => vpath::run(command, json, &call),
        Command::Iscsi(command) => iscsi::run(command, json, &call),
        Command::Nvmf(command) => nvmf::run(command, json, &call),
        Command::Top(args) => top::run(&args, json, &call),
        Command::Config(command) => config::run(command, json, &call),
    }
}

/// An error and its causes, as one line for the user.
fn chain(error: &dyn std::error::Error) -> String {
    sds::control::luns_error_chain(error)
}
