//! `sds mirror`: synchronous mirrors over two or three volumes on disjoint LUNs. The
//! subcommands, their JSON-RPC calls (`mirror_*`), the mirror table, and `wait`, which polls
//! `mirror_get_mirrors` and shows the resync's progress (an indicatif bar on a terminal, a
//! plain line per step otherwise) until the mirror is healthy.

use super::output::{done, print_json, show};
use super::table::{bytes, print_table, text};
use super::Call;
use clap::Subcommand;
use sds::units::format_size;
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often `sds mirror wait` asks the server.
const WAIT_POLL: Duration = Duration::from_millis(250);

#[derive(Subcommand)]
pub enum MirrorCommand {
    /// Create a mirror over two or three volumes (same size and block size, disjoint LUNs)
    ///
    /// Legs that all hold nothing start healthy; otherwise the first leg is copied to the
    /// others (see `sds mirror wait`). The legs are reserved while the mirror exists.
    Create {
        name: String,
        /// The legs' volumes, comma-separated or repeated
        #[arg(long, value_delimiter = ',', required = true)]
        legs: Vec<String>,
    },
    /// Add a leg (full copy); on a plain volume, make it a mirror named --name
    AddLeg {
        /// A mirror, or a plain volume with data to turn into one
        mirror: String,
        /// The volume that becomes the new leg
        volume: String,
        /// The new mirror's name, when MIRROR is a plain volume
        #[arg(long)]
        name: Option<String>,
    },
    /// Replace a leg by another volume (full copy); the old leg becomes a plain volume
    ReplaceLeg {
        mirror: String,
        /// The leg to take out
        leg: String,
        /// The volume that takes its place
        volume: String,
    },
    /// Detach a leg as an independent plain volume (its data as of now)
    SplitLeg { mirror: String, leg: String },
    /// List mirrors, their legs and resync progress
    List,
    /// Delete a mirror; its legs become plain volumes with their data
    Delete { name: String },
    /// Wait until a mirror is healthy, showing the resync's progress
    Wait {
        name: String,
        /// Give up after this many seconds (0: never)
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
}

/// Runs one `sds mirror` subcommand against the server.
pub fn run(command: MirrorCommand, json: bool, call: Call) -> Result<(), String> {
    match command {
        MirrorCommand::Create { name, legs } => show(
            json,
            call("mirror_create", Some(json!({ "name": name, "legs": legs })))?,
            print_mirrors,
        ),
        MirrorCommand::AddLeg {
            mirror,
            volume,
            name,
        } => {
            let mut params = json!({ "mirror": mirror, "volume": volume });
            if let Some(name) = name {
                params["name"] = json!(name);
            }
            show(json, call("mirror_add_leg", Some(params))?, print_mirrors)
        }
        MirrorCommand::ReplaceLeg {
            mirror,
            leg,
            volume,
        } => show(
            json,
            call(
                "mirror_replace_leg",
                Some(json!({ "mirror": mirror, "leg": leg, "volume": volume })),
            )?,
            print_mirrors,
        ),
        MirrorCommand::SplitLeg { mirror, leg } => show(
            json,
            call(
                "mirror_split_leg",
                Some(json!({ "mirror": mirror, "leg": leg })),
            )?,
            print_mirrors,
        ),
        MirrorCommand::List => show(json, call("mirror_get_mirrors", None)?, print_mirrors),
        MirrorCommand::Delete { name } => done(
            json,
            call("mirror_delete", Some(json!({ "name": name })))?,
            &format!("mirror {name} deleted; its legs are plain volumes"),
        ),
        MirrorCommand::Wait { name, timeout } => wait(json, call, &name, timeout),
    }
}

/// The one mirror `name` as the server describes it now.
fn fetch(call: Call, name: &str) -> Result<Value, String> {
    let result = call("mirror_get_mirrors", Some(json!({ "name": name })))?;
    result
        .as_array()
        .and_then(|items| items.first())
        .cloned()
        .ok_or_else(|| format!("no mirror {name}"))
}

/// `sds mirror wait`: polls until the mirror is healthy.
fn wait(json: bool, call: Call, name: &str, timeout_s: u64) -> Result<(), String> {
    let started = Instant::now();
    let deadline = (timeout_s > 0).then(|| started + Duration::from_secs(timeout_s));
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("mirror {name}"));
        bar
    });
    let mut last_line = String::new();
    loop {
        let mirror = fetch(call, name)?;
        let resync = &mirror["resync"];
        let total = resync["total_bytes"].as_u64().unwrap_or(0);
        let copied = resync["done_bytes"].as_u64().unwrap_or(0);
        let state = text(&mirror, "state");
        match &bar {
            Some(bar) => {
                bar.set_length(total.max(1));
                bar.set_position(copied.min(total));
            }
            None if !json => {
                let line = format!(
                    "mirror {name}: {state}, resync {} of {} ({}%), {}/s",
                    format_size(copied),
                    format_size(total),
                    resync["percent"],
                    format_size(resync["rate_bytes_per_s"].as_f64().unwrap_or(0.0) as u64)
                );
                if line != last_line {
                    println!("{line}");
                    last_line = line;
                }
            }
            None => {}
        }
        if state == "healthy" {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            if json {
                print_json(&mirror);
            } else {
                println!(
                    "mirror {name} is healthy ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            if let Some(bar) = &bar {
                bar.abandon();
            }
            let why = resync["last_error"]
                .as_str()
                .map(|e| format!(" (last resync error: {e})"))
                .unwrap_or_default();
            return Err(format!(
                "mirror {name} is still {state} after {timeout_s} s{why}"
            ));
        }
        std::thread::sleep(WAIT_POLL);
    }
}

/// The table of mirrors: one row per leg, the mirror's columns on its first.
fn print_mirrors(items: &[Value]) {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for mirror in items {
        let resync = &mirror["resync"];
        let progress = if resync["running"].as_bool() == Some(true) {
            format!(
                "{}% {}/s",
                resync["percent"],
                format_size(resync["rate_bytes_per_s"].as_f64().unwrap_or(0.0) as u64)
            )
        } else {
            "-".into()
        };
        let legs = mirror["legs"].as_array().cloned().unwrap_or_default();
        for (i, leg) in legs.iter().enumerate() {
            let first = i == 0;
            let cell = |value: String| if first { value } else { String::new() };
            rows.push(vec![
                cell(text(mirror, "name")),
                cell(bytes(mirror, "size")),
                cell(text(mirror, "state")),
                text(leg, "volume"),
                text(leg, "pool"),
                text(leg, "state"),
                cell(bytes(mirror, "dirty_bytes")),
                cell(progress.clone()),
            ]);
        }
    }
    print_table(
        &[
            "NAME",
            "SIZE",
            "STATE",
            "LEG",
            "POOL",
            "LEG STATE",
            "DIRTY",
            "RESYNC",
        ],
        &rows,
    );
}
