//! `sds vpath`: virtual paths, which host may reach which volume, in which mode and storage
//! domain. The subcommands, their JSON-RPC calls (`vpath_*`) and the virtual-path table;
//! `sds vpath stats` prints with `sds top`'s table.

use super::output::{done, show, show_object};
use super::params::{set, value_name};
use super::table::{print_table, text};
use super::{top, Call};
use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum VpathCommand {
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
pub enum ModeArg {
    /// Read and write
    Rw,
    /// Read only
    Ro,
}

/// Runs one `sds vpath` subcommand against the server.
pub fn run(command: VpathCommand, json: bool, call: Call) -> Result<(), String> {
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

/// The table of virtual paths.
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
