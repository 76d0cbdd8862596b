//! `sds volume`: thin or thick virtual disks carved out of a pool, served as NBD exports of
//! the same name. The subcommands, their JSON-RPC calls (`volume_*`, and SPDK's
//! `bdev_set_qos_limit` for `sds volume qos`) and the volume table.

use super::output::{done, show};
use super::params::set;
use super::qos::QosArgs;
use super::table::{bytes, print_notes, print_table, text, volatile};
use super::Call;
use clap::Subcommand;
use sds::units::parse_size;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum VolumeCommand {
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

/// Runs one `sds volume` subcommand against the server.
pub fn run(command: VolumeCommand, json: bool, call: Call) -> Result<(), String> {
    match command {
        VolumeCommand::Create {
            name,
            pool,
            size,
            block_size,
            thick,
        } => {
            let mut params = json!({ "name": name, "pool": pool, "size": size, "thin": !thick });
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
        VolumeCommand::Qos { name, limits } => volume_qos(json, call, &name, &limits),
    }
}

/// `sds volume qos`: SPDK's `bdev_set_qos_limit` on a volume.
fn volume_qos(json: bool, call: Call, name: &str, limits: &QosArgs) -> Result<(), String> {
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

/// The table of volumes, and the notes of those that have one.
fn print_volumes(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| {
            let kind = if let Some(origin) = v["snapshot_of"].as_str() {
                format!("snapshot of {origin}")
            } else if let Some(snapshot) = v["clone_of"].as_str() {
                format!("clone of {snapshot}")
            } else if v["thin"].as_bool() == Some(false) {
                "thick".into()
            } else {
                "thin".into()
            };
            vec![
                text(v, "name"),
                text(v, "pool"),
                bytes(v, "size"),
                bytes(v, "allocated"),
                bytes(v, "shared"),
                text(v, "block_size"),
                kind,
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
            "SHARED",
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
