//! `sds domain`: storage domains, the capabilities every virtual path in one gets (QoS limits,
//! priority, allowed operations, statistics detail). The subcommands and their capability
//! options, their JSON-RPC calls (`domain_*`) and the domain table; `sds domain stats` prints
//! with `sds top`'s table.

use super::output::{done, show, show_object};
use super::params::value_name;
use super::qos::QosArgs;
use super::table::{joined, limit, print_table, text};
use super::{top, Call};
use clap::{Args, Subcommand, ValueEnum};
use sds::blockio::BlockOp;
use serde_json::{json, Map, Value};

#[derive(Subcommand)]
pub enum DomainCommand {
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

/// A domain's capabilities as options; only the options given are sent.
#[derive(Args)]
pub struct CapabilityArgs {
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
            let ops: Vec<&str> = BlockOp::ALL
                .into_iter()
                .filter(|&op| self.allow.iter().any(|arg| arg.includes(op)))
                .map(BlockOp::as_str)
                .collect();
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
    /// Whether this choice names `op` (`all` names every one).
    fn includes(self, op: BlockOp) -> bool {
        let named = match self {
            Self::Read => BlockOp::Read,
            Self::Write => BlockOp::Write,
            Self::Flush => BlockOp::Flush,
            Self::Trim => BlockOp::Trim,
            Self::WriteZeroes => BlockOp::WriteZeroes,
            Self::All => return true,
        };
        named == op
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum StatisticsArg {
    /// Operations, bytes and errors
    Basic,
    /// Also a latency histogram (p50, p99, p99.9)
    Latency,
}

/// Runs one `sds domain` subcommand against the server.
pub fn run(command: DomainCommand, json: bool, call: Call) -> Result<(), String> {
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

/// The table of domains and their capabilities (- means no limit).
fn print_domains(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            let c = &d["capabilities"];
            let allowed = match c["allowed_ops"].as_array().map(Vec::len) {
                Some(n) if n == BlockOp::COUNT => "all".to_string(),
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
