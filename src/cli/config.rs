//! `sds config save FILE` / `sds config load FILE`: the server's configuration as one JSON
//! document (`save_config` / `load_config`), for backing up, reviewing and moving it.

use super::Call;
use clap::Subcommand;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// A saved configuration may hold CHAP secrets: the file is its owner's alone.
const CONFIG_FILE_MODE: u32 = 0o600;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Write every object (LUNs, pools, volumes, snapshots, clones, sets, mirrors, hosts,
    /// domains, virtual paths) as one JSON document, in the order a server needs them
    Save {
        /// Where to write it (`-`: standard output); created with mode 0600
        file: PathBuf,
        /// Put the CHAP secrets in it too (without them, a load creates hosts with CHAP only
        /// where the server already has them)
        #[arg(long)]
        include_secrets: bool,
    },
    /// Apply a saved document: what is already here and the same is left alone, what is
    /// missing is created; a document that cannot be applied whole changes nothing
    Load {
        /// The document (`-`: standard input)
        file: PathBuf,
    },
}

pub fn run(command: ConfigCommand, json_output: bool, call: Call) -> Result<(), String> {
    match command {
        ConfigCommand::Save {
            file,
            include_secrets,
        } => {
            let document = call(
                "save_config",
                Some(json!({ "include_secrets": include_secrets })),
            )?;
            let mut text = serde_json::to_string_pretty(&document)
                .map_err(|e| format!("cannot format the document: {e}"))?;
            text.push('\n');
            if file.as_os_str() == "-" {
                std::io::stdout()
                    .write_all(text.as_bytes())
                    .map_err(|e| format!("standard output: {e}"))?;
                return Ok(());
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(CONFIG_FILE_MODE)
                .open(&file)
                .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
                .map_err(|e| format!("{}: {e}", file.display()))?;
            if !json_output {
                eprintln!("configuration saved to {}", file.display());
            }
            Ok(())
        }
        ConfigCommand::Load { file } => {
            let mut text = String::new();
            if file.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| format!("standard input: {e}"))?;
            } else {
                text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
            }
            let document: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
            let summary = call("load_config", Some(document))?;
            if json_output {
                super::output::print_json(&summary);
            } else {
                let created = &summary["created"];
                let parts: Vec<String> = created
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                    .map(|(kind, n)| format!("{n} {kind}"))
                    .collect();
                println!(
                    "created: {}; domains set: {}; already here: {}",
                    if parts.is_empty() {
                        "nothing".to_string()
                    } else {
                        parts.join(", ")
                    },
                    summary["domains_set"],
                    summary["unchanged"]
                );
            }
            Ok(())
        }
    }
}
