//! `sds pool`: pools of LUNs cut into extents. The subcommands, their JSON-RPC calls
//! (`pool_*`) and the pool table.

use super::output::{done, show};
use super::params::set;
use super::table::{bytes, joined, print_notes, print_table, text, volatile};
use super::Call;
use clap::Subcommand;
use sds::units::parse_size;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum PoolCommand {
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
    /// List pools with capacity, free space, what volumes promise (provisioned) and use
    List,
    /// Set the allocation, in percent of capacity, past which the server warns [default: 80]
    SetThreshold {
        name: String,
        /// 1 to 100
        percent: u64,
    },
    /// Remove a pool that has no volumes
    Delete { name: String },
}

/// Runs one `sds pool` subcommand against the server.
pub fn run(command: PoolCommand, json: bool, call: Call) -> Result<(), String> {
    match command {
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
        PoolCommand::SetThreshold { name, percent } => show(
            json,
            call(
                "pool_set_threshold",
                Some(json!({ "pool": name, "percent": percent })),
            )?,
            print_pools,
        ),
        PoolCommand::Delete { name } => done(
            json,
            call("pool_delete", Some(json!({ "name": name })))?,
            &format!("pool {name} deleted"),
        ),
    }
}

/// The threshold cell: `80%`, with `(over)` once allocation has reached it.
fn threshold(pool: &Value) -> String {
    match (pool["threshold"].as_u64(), pool["over_threshold"].as_bool()) {
        (Some(percent), Some(true)) => format!("{percent}% (over)"),
        (Some(percent), _) => format!("{percent}%"),
        (None, _) => "-".into(),
    }
}

/// The table of pools, and the notes of those that have one.
fn print_pools(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            vec![
                text(p, "name"),
                bytes(p, "capacity"),
                bytes(p, "free"),
                bytes(p, "provisioned"),
                bytes(p, "allocated"),
                bytes(p, "shared"),
                threshold(p),
                bytes(p, "extent_size"),
                text(p, "volumes"),
                joined(&p["luns"]),
                text(p, "state"),
                volatile(p),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "CAPACITY",
            "FREE",
            "PROVISIONED",
            "ALLOCATED",
            "SHARED",
            "THRESHOLD",
            "EXTENT",
            "VOLUMES",
            "LUNS",
            "STATE",
            "VOLATILE",
        ],
        &rows,
    );
    print_notes(items);
}
