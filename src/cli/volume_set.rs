//! `sds volume-set`: volumes made of member volumes, concatenated or striped. The
//! subcommands, their JSON-RPC calls (`volume_set_*`) and the set table.

use super::output::{done, show};
use super::params::set;
use super::table::{bytes, joined, print_table, text};
use super::Call;
use clap::{Subcommand, ValueEnum};
use sds::units::parse_size;
use serde_json::{json, Value};

#[derive(Clone, Copy, ValueEnum)]
pub enum LayoutArg {
    /// Members one after the other; grows by adding a member
    Concat,
    /// Stripes dealt round-robin over the members (RAID-0); cannot grow
    Stripe,
}

#[derive(Subcommand)]
pub enum VolumeSetCommand {
    /// Make one volume of existing volumes (their data is kept, at the set's addresses)
    ///
    /// Members must be plain volumes with the same block size, without virtual paths and in
    /// no other set; while in the set they cannot be resized, deleted or given a virtual path.
    /// The set is a volume: give it virtual paths like any other.
    Create {
        name: String,
        /// The member volumes, in order (comma-separated or repeated)
        #[arg(long, required = true, value_delimiter = ',')]
        members: Vec<String>,
        /// [default: concat]
        #[arg(long, value_enum)]
        layout: Option<LayoutArg>,
        /// Stripe sets: bytes per stripe, a power of two [default: 64K]
        #[arg(long, value_parser = parse_size)]
        stripe_size: Option<u64>,
    },
    /// Append a volume to a concatenated set, online: hosts see the set grow
    AddMember {
        /// The set
        set: String,
        /// The volume to append
        volume: String,
    },
    /// List volume sets
    List,
    /// Delete a set (and its virtual paths): its members are plain volumes again, data kept
    Delete { name: String },
}

/// Runs one `sds volume-set` subcommand against the server.
pub fn run(command: VolumeSetCommand, json: bool, call: Call) -> Result<(), String> {
    match command {
        VolumeSetCommand::Create {
            name,
            members,
            layout,
            stripe_size,
        } => {
            let mut params = json!({ "name": name, "members": members });
            let layout = layout.map(|l| match l {
                LayoutArg::Concat => json!("concat"),
                LayoutArg::Stripe => json!("stripe"),
            });
            set(&mut params, "layout", layout);
            set(&mut params, "stripe_size", stripe_size.map(|s| json!(s)));
            show(json, call("volume_set_create", Some(params))?, print_sets)
        }
        VolumeSetCommand::AddMember { set, volume } => show(
            json,
            call(
                "volume_set_add_member",
                Some(json!({ "set": set, "volume": volume })),
            )?,
            print_sets,
        ),
        VolumeSetCommand::List => show(json, call("volume_set_get_sets", None)?, print_sets),
        VolumeSetCommand::Delete { name } => done(
            json,
            call("volume_set_delete", Some(json!({ "name": name })))?,
            &format!("volume set {name} deleted; its members are plain volumes again"),
        ),
    }
}

/// The table of volume sets.
fn print_sets(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| {
            vec![
                text(v, "name"),
                text(v, "layout"),
                bytes(v, "stripe_size"),
                bytes(v, "size"),
                bytes(v, "allocated"),
                text(v, "block_size"),
                joined(&v["members"]),
                text(v, "connections"),
                text(v, "state"),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "LAYOUT",
            "STRIPE",
            "SIZE",
            "ALLOCATED",
            "BLOCK",
            "MEMBERS",
            "CONNS",
            "STATE",
        ],
        &rows,
    );
}
