//! `sds snapshot` and `sds clone`: read-only point-in-time views of a volume, writable clones
//! of them, and reverting a volume to one. The subcommands, their JSON-RPC calls
//! (`snapshot_*`, `clone_create`, `volume_revert`) and the snapshot table.

use super::output::{done, show};
use super::table::{bytes, print_table, text};
use super::Call;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot of a volume, at once (no data is copied)
    Create {
        /// The volume
        volume: String,
        /// The snapshot's name (it is listed as a read-only volume)
        name: String,
    },
    /// List snapshots (of one volume with --volume)
    List {
        #[arg(long)]
        volume: Option<String>,
    },
    /// Delete a snapshot: the extents nothing else shares are freed (refused while a
    /// virtual path points at it)
    Delete { name: String },
    /// Make a volume's content the snapshot's, offline (refused while a host has it open)
    Revert {
        /// The volume to revert
        volume: String,
        /// The snapshot whose content it takes
        snapshot: String,
    },
}

#[derive(Subcommand)]
pub enum CloneCommand {
    /// Create a writable volume from a snapshot, sharing its extents until written
    Create {
        /// The snapshot
        snapshot: String,
        /// The clone's name
        name: String,
    },
}

/// Runs one `sds snapshot` subcommand against the server.
pub fn run(command: SnapshotCommand, json: bool, call: Call) -> Result<(), String> {
    match command {
        SnapshotCommand::Create { volume, name } => show(
            json,
            call(
                "snapshot_create",
                Some(json!({ "volume": volume, "name": name })),
            )?,
            print_snapshots,
        ),
        SnapshotCommand::List { volume } => {
            let params = volume.map(|v| json!({ "volume": v }));
            show(
                json,
                call("snapshot_get_snapshots", params)?,
                print_snapshots,
            )
        }
        SnapshotCommand::Delete { name } => done(
            json,
            call("snapshot_delete", Some(json!({ "name": name })))?,
            &format!("snapshot {name} deleted"),
        ),
        SnapshotCommand::Revert { volume, snapshot } => {
            let result = call(
                "volume_revert",
                Some(json!({ "volume": volume, "snapshot": snapshot })),
            )?;
            done(
                json,
                result,
                &format!("volume {volume} reverted to snapshot {snapshot}"),
            )
        }
    }
}

/// Runs one `sds clone` subcommand against the server.
pub fn run_clone(command: CloneCommand, json: bool, call: Call) -> Result<(), String> {
    match command {
        CloneCommand::Create { snapshot, name } => show(
            json,
            call(
                "clone_create",
                Some(json!({ "snapshot": snapshot, "name": name })),
            )?,
            print_clones,
        ),
    }
}

fn print_snapshots(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                text(s, "name"),
                text(s, "volume"),
                text(s, "pool"),
                bytes(s, "size"),
                bytes(s, "allocated"),
                bytes(s, "shared"),
                text(s, "sequence"),
                text(s, "connections"),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "VOLUME",
            "POOL",
            "SIZE",
            "ALLOCATED",
            "SHARED",
            "SEQUENCE",
            "CONNS",
        ],
        &rows,
    );
}

fn print_clones(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|c| {
            vec![
                text(c, "name"),
                text(c, "clone_of"),
                text(c, "pool"),
                bytes(c, "size"),
                bytes(c, "shared"),
                text(c, "uuid"),
            ]
        })
        .collect();
    print_table(
        &["NAME", "CLONE OF", "POOL", "SIZE", "SHARED", "UUID"],
        &rows,
    );
}
