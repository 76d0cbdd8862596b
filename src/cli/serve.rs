//! `sds serve`: the command-line options of the server and their translation into the
//! library's [`ServeConfig`]; the server itself is `sds::serve`.

use super::{chain, DEFAULT_STATE_DIR};
use clap::Args;
use sds::serve::{parse_cores, PollMode, ServeConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// Read options from this TOML file: each key is a flag below with `_` for `-`
    /// (`state_dir = "/var/lib/sds"`, `cycle_ms = 100`); a flag given here or by its
    /// environment variable overrides the file (the package installs a commented example,
    /// /etc/sds/sds.toml)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where configuration records, file LUNs created without a path and the socket live
    #[arg(long, env = "SDS_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The management socket [default: STATE_DIR/sds.sock]
    #[arg(long)]
    rpc_socket: Option<PathBuf>,
    /// NBD over TCP, HOST:PORT, or `none`
    #[arg(long, default_value = "127.0.0.1:10809", value_parser = parse_listen)]
    nbd_listen: String,
    /// The iSCSI target's portal, HOST:PORT, or `none`
    #[arg(long, default_value = "127.0.0.1:3260", value_parser = parse_listen)]
    iscsi_listen: String,
    /// The iSCSI target name for this run [default: the one made at the first start,
    /// iqn.2026-11.org.sds:<hostname>, kept in STATE_DIR/iscsi-target.json]
    #[arg(long)]
    iscsi_target_name: Option<String>,
    /// The NVMe/TCP port (subsystems and the discovery controller), HOST:PORT, or `none`
    #[arg(long, default_value = "127.0.0.1:4420", value_parser = parse_listen)]
    nvmf_listen: String,
    /// The base of the NVMe subsystem NQNs (`<base>:<host name>`) for this run [default: the
    /// one made at the first start, nqn.2026-11.org.sds:<hostname>, kept in
    /// STATE_DIR/nvmf.json]
    #[arg(long)]
    nvmf_nqn_base: Option<String>,
    /// NBD over a Unix socket as well
    #[arg(long)]
    nbd_socket: Option<PathBuf>,
    /// Permission bits of the --nbd-socket file, in octal. The default lets every user reach
    /// the socket, so that the host records (`unix:UID`) decide who sees what
    #[arg(long, default_value = "0666", value_parser = parse_mode)]
    nbd_unix_mode: u32,
    /// Seconds one NBD client may take for its whole handshake (negotiation and TLS); a
    /// client still negotiating then is disconnected
    #[arg(long, default_value_t = sds::constants::HANDSHAKE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=sds::constants::MAX_HANDSHAKE_TIMEOUT_SECS))]
    nbd_handshake_timeout_secs: u64,
    /// Cores to run one pinned reactor each on: `0`, `0,1`, `0-3` [default: the last core,
    /// leaving core 0 to the kernel's interrupt work and to local clients]
    #[arg(long, value_parser = check_cores)]
    cores: Option<String>,
    /// busy: spin on the rings (lowest latency, burns the cores); adaptive: sleep when idle
    #[arg(long, value_enum, default_value = "adaptive")]
    poll: PollMode,
    /// Period of the control loop, in milliseconds: how often per-VP statistics are gathered
    /// and each domain's QoS budget is shared anew among its virtual paths
    #[arg(long, default_value_t = sds::constants::DEFAULT_CYCLE_MS,
          value_parser = clap::value_parser!(u64).range(sds::constants::MIN_CYCLE_MS..=sds::constants::MAX_CYCLE_MS))]
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
    /// Prometheus metrics at http://HOST:PORT/metrics, or `none`
    #[arg(long, default_value = "none")]
    metrics_listen: String,
    /// error, warn, info, debug or trace
    #[arg(long, env = "SDS_LOG", default_value = "info",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: String,
}

/// A file mode in octal (`0666`, `660`), at most 0777.
fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|&mode| mode <= 0o777)
        .ok_or_else(|| format!("{text:?}: expected an octal mode from 0000 to 0777"))
}

/// A listener's address as given (HOST:PORT, or `none` or empty for none), checked when the
/// command line or the configuration file is read, so a bad one names its flag or its line.
fn parse_listen(text: &str) -> Result<String, String> {
    match text {
        "none" | "" => Ok(text.to_owned()),
        address => address
            .parse::<SocketAddr>()
            .map(|_| text.to_owned())
            .map_err(|e| format!("{e}: expected HOST:PORT (an IP address and a port) or none")),
    }
}

/// A `--cores` list, checked as early as a listener's address.
fn check_cores(text: &str) -> Result<String, String> {
    parse_cores(text).map(|_| text.to_owned())
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), String> {
    sds::logger::init(&args.log_level);
    if let Some(path) = &args.config {
        log::info!("options from {} and the command line", path.display());
    }
    let nbd_listen = match args.nbd_listen.as_str() {
        "none" | "" => None,
        text => Some(
            text.parse::<SocketAddr>()
                .map_err(|e| format!("--nbd-listen {text:?}: {e}"))?,
        ),
    };
    let iscsi_listen = match args.iscsi_listen.as_str() {
        "none" | "" => None,
        text => Some(
            text.parse::<SocketAddr>()
                .map_err(|e| format!("--iscsi-listen {text:?}: {e}"))?,
        ),
    };
    let nvmf_listen = match args.nvmf_listen.as_str() {
        "none" | "" => None,
        text => Some(
            text.parse::<SocketAddr>()
                .map_err(|e| format!("--nvmf-listen {text:?}: {e}"))?,
        ),
    };
    let metrics_listen = match args.metrics_listen.as_str() {
        "none" | "" => None,
        text => Some(
            text.parse::<SocketAddr>()
                .map_err(|e| format!("--metrics-listen {text:?}: {e}"))?,
        ),
    };
    let config = ServeConfig {
        metrics_listen,
        state_dir: args.state_dir,
        rpc_socket: args.rpc_socket,
        nbd_listen,
        nbd_socket: args.nbd_socket,
        iscsi_listen,
        iscsi_target_name: args.iscsi_target_name,
        nvmf_listen,
        nvmf_nqn_base: args.nvmf_nqn_base,
        nbd_unix_mode: args.nbd_unix_mode,
        nbd_handshake_timeout: std::time::Duration::from_secs(args.nbd_handshake_timeout_secs),
        cores: match &args.cores {
            Some(text) => parse_cores(text)?,
            None => Vec::new(),
        },
        poll: args.poll,
        cycle: std::time::Duration::from_millis(args.cycle_ms),
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(sds::target::nbd::tls::TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca,
            }),
            _ => None,
        },
    };
    sds::serve::run(config).map_err(|e| chain(&e))
}
