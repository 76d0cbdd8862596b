//! `sds lun`: the physical storage resources (RAM, files, block devices, fault-injection
//! wrappers). The subcommands, their JSON-RPC calls (`lun_*`) and the LUN table.

use super::output::{done, show};
use super::params::set;
use super::table::{bytes, print_table, text};
use super::Call;
use clap::Subcommand;
use sds::units::parse_size;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum LunCommand {
    /// Add a LUN: `--kind file --path P --size 1G`, `--kind mem --size 256M`, `--kind blockdev --path /dev/loop0`,
    /// `--kind fault --base LUN` (fault injection over another LUN),
    /// `--kind iscsi --url iscsi://HOST:PORT/TARGET_IQN/LUN` (a LUN of another array),
    /// `--kind nbd --uri nbd://HOST[:PORT]/EXPORT` (an export of another NBD server)
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
        #[command(flatten)]
        remote: RemoteArgs,
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

/// The options of a LUN of another array (`--kind iscsi`, `--kind nbd`).
#[derive(clap::Args)]
pub struct RemoteArgs {
    /// The array's LUN: iscsi://HOST[:PORT]/TARGET_IQN/LUN
    #[arg(long)]
    url: Option<String>,
    /// The NBD export (--kind nbd): nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH
    #[arg(long)]
    uri: Option<String>,
    /// The initiator name to log in as [default: iqn.2026-11.org.sds.initiator:HOSTNAME]
    #[arg(long)]
    initiator_iqn: Option<String>,
    /// CHAP user name (with --chap-secret-file)
    #[arg(long)]
    chap_user: Option<String>,
    /// A file holding the CHAP secret (kept off the command line, which others can read)
    #[arg(long)]
    chap_secret_file: Option<PathBuf>,
    /// A command not done within this fails with EIO [default: 30000]
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Unreachable this long, the LUN is failed until it connects again [default: 120000]
    #[arg(long)]
    fail_after_ms: Option<u64>,
}

impl RemoteArgs {
    /// Adds the options given to `params`.
    fn set(self, params: &mut Value) -> Result<(), String> {
        set(params, "url", self.url.map(|u| json!(u)));
        set(params, "uri", self.uri.map(|u| json!(u)));
        set(
            params,
            "initiator_iqn",
            self.initiator_iqn.map(|i| json!(i)),
        );
        set(params, "chap_user", self.chap_user.map(|u| json!(u)));
        if let Some(file) = self.chap_secret_file {
            let secret = std::fs::read_to_string(&file)
                .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
            set(params, "chap_secret", Some(json!(secret.trim_end())));
        }
        set(params, "timeout_ms", self.timeout_ms.map(|t| json!(t)));
        set(
            params,
            "fail_after_ms",
            self.fail_after_ms.map(|f| json!(f)),
        );
        Ok(())
    }
}

/// Runs one `sds lun` subcommand against the server.
pub fn run(command: LunCommand, json: bool, call: Call) -> Result<(), String> {
    match command {
        LunCommand::Create {
            name,
            kind,
            path,
            size,
            block_size,
            base,
            remote,
        } => {
            let mut params = json!({ "name": name, "kind": kind });
            // A relative path means this command's working directory, not the server's.
            let path = path.map(|p| std::path::absolute(&p).unwrap_or(p));
            set(&mut params, "path", path.map(|p| json!(p)));
            set(&mut params, "size", size.map(|s| json!(s)));
            set(&mut params, "block_size", block_size.map(|b| json!(b)));
            set(&mut params, "base", base.map(|b| json!(b)));
            remote.set(&mut params)?;
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
    }
}

/// The table of LUNs, with a fault LUN's base and fault where a file LUN shows its path.
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
                // A LUN of another array shows its URL.
                _ if l["remote"].is_object() => text(&l["remote"], "url"),
                _ => text(l, "path"),
            };
            // A remote LUN's link state, round trip and reconnects; "-" for a local LUN.
            let remote = &l["remote"];
            let (link, rtt, reconnects) = if remote.is_object() {
                (
                    text(remote, "state"),
                    // 0: no round trip measured yet.
                    match remote["rtt_us"].as_u64() {
                        Some(rtt) if rtt > 0 => format!("{rtt}us"),
                        _ => "-".to_string(),
                    },
                    text(remote, "reconnects"),
                )
            } else {
                ("-".to_string(), "-".to_string(), "-".to_string())
            };
            vec![
                text(l, "name"),
                text(l, "kind"),
                bytes(l, "size"),
                text(l, "block_size"),
                text(l, "speed_class"),
                text(l, "pool"),
                text(l, "state"),
                link,
                rtt,
                reconnects,
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
            "LINK",
            "RTT",
            "RECONNECTS",
            "ERRORS R/W/F",
            "PATH",
        ],
        &rows,
    );
}
