//! `sds iscsi`: the server's iSCSI target (`iscsi_get_targets`) and its live sessions
//! (`iscsi_get_sessions`), as tables or with `--json` the server's answers.

use super::output::show;
use super::table::{print_table, text};
use super::Call;
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand)]
pub enum IscsiCommand {
    /// The target: its name, its portals, and the LUN each host sees for each of its
    /// virtual paths (a host sees only its own, at the VP's LUN number)
    Targets,
    /// Live sessions: initiator, host, ISID/TSIH, connection address, negotiated
    /// parameters and digests
    Sessions,
}

pub fn run(command: IscsiCommand, json: bool, call: Call) -> Result<(), String> {
    match command {
        IscsiCommand::Targets => show(json, call("iscsi_get_targets", None)?, print_targets),
        IscsiCommand::Sessions => show(json, call("iscsi_get_sessions", None)?, print_sessions),
    }
}

/// One line per target, then a table of its LUNs by host.
fn print_targets(targets: &[Value]) {
    if targets.is_empty() {
        println!("no iSCSI target (the server runs with --iscsi-listen none?)");
        return;
    }
    for target in targets {
        let portals: Vec<&str> = target["portals"]
            .as_array()
            .map(|list| list.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "target {}  portals {}",
            text(target, "name"),
            if portals.is_empty() {
                "(none)".to_string()
            } else {
                portals.join(", ")
            }
        );
        let rows: Vec<Vec<String>> = target["luns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|lun| {
                vec![
                    text(lun, "host"),
                    text(lun, "iqn"),
                    text(lun, "lun"),
                    text(lun, "volume"),
                    text(lun, "mode"),
                ]
            })
            .collect();
        print_table(&["HOST", "INITIATOR", "LUN", "VOLUME", "MODE"], &rows);
    }
}

/// The sessions, with the parameters people look at first; `--json` has them all.
fn print_sessions(sessions: &[Value]) {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let negotiated =
                |key: &str| -> String { s["negotiated"][key].as_str().unwrap_or("-").to_string() };
            let digests = match (s["header_digest"].as_bool(), s["data_digest"].as_bool()) {
                (Some(true), Some(true)) => "header+data",
                (Some(true), _) => "header",
                (_, Some(true)) => "data",
                _ => "none",
            };
            let luns: Vec<String> = s["luns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|lun| lun.to_string())
                .collect();
            vec![
                text(s, "id"),
                text(s, "kind"),
                text(s, "initiator"),
                text(s, "host"),
                format!("{}/{}", text(s, "isid"), text(s, "tsih")),
                text(s, "peer"),
                luns.join(","),
                negotiated("MaxRecvDataSegmentLength"),
                negotiated("MaxBurstLength"),
                negotiated("ImmediateData"),
                digests.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "KIND",
            "INITIATOR",
            "HOST",
            "ISID/TSIH",
            "PEER",
            "LUNS",
            "MAXRECVDSL",
            "MAXBURST",
            "IMMEDIATE",
            "DIGESTS",
        ],
        &rows,
    );
}
