//! `sds nvmf`: the NVMe/TCP front end's subsystems (`nvmf_get_subsystems`) and its live
//! controllers and queues (`nvmf_get_qpairs`), as tables or with `--json` the server's
//! answers.

use super::output::show;
use super::table::{print_table, text};
use super::Call;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum NvmfCommand {
    /// The discovery subsystem and one subsystem per host with an nqn (`<base>:<host>`),
    /// its namespaces being the host's virtual paths at NSID = LUN + 1
    Subsystems {
        /// Only this subsystem
        #[arg(long)]
        nqn: Option<String>,
    },
    /// Live controllers: subsystem, controller id, host, address, state, keep-alive
    /// timeout and I/O queues
    Qpairs {
        /// Only this subsystem's controllers
        #[arg(long)]
        nqn: Option<String>,
    },
}

pub fn run(command: NvmfCommand, json: bool, call: Call) -> Result<(), String> {
    let params = |nqn: Option<String>| nqn.map(|nqn| json!({ "nqn": nqn }));
    match command {
        NvmfCommand::Subsystems { nqn } => show(
            json,
            call("nvmf_get_subsystems", params(nqn))?,
            print_subsystems,
        ),
        NvmfCommand::Qpairs { nqn } => {
            show(json, call("nvmf_get_qpairs", params(nqn))?, print_qpairs)
        }
    }
}

/// One table of subsystems, then one of namespaces by subsystem.
fn print_subsystems(subsystems: &[Value]) {
    if subsystems.is_empty() {
        println!("no NVMe/TCP subsystems (the server runs with --nvmf-listen none?)");
        return;
    }
    let listen = |s: &Value| -> String {
        let addresses: Vec<String> = s["listen_addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| format!("{}:{}", text(a, "traddr"), text(a, "trsvcid")))
            .collect();
        if addresses.is_empty() {
            "-".into()
        } else {
            addresses.join(",")
        }
    };
    let rows: Vec<Vec<String>> = subsystems
        .iter()
        .map(|s| {
            let hosts: Vec<String> = s["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| text(h, "nqn"))
                .collect();
            vec![
                text(s, "nqn"),
                text(s, "subtype"),
                text(s, "host"),
                if hosts.is_empty() {
                    "any".into()
                } else {
                    hosts.join(",")
                },
                s["namespaces"].as_array().map_or(0, Vec::len).to_string(),
                text(s, "controllers"),
                listen(s),
            ]
        })
        .collect();
    print_table(
        &[
            "NQN",
            "TYPE",
            "HOST",
            "HOST NQN",
            "NAMESPACES",
            "CONTROLLERS",
            "LISTEN",
        ],
        &rows,
    );
    let namespaces: Vec<Vec<String>> = subsystems
        .iter()
        .flat_map(|s| {
            s["namespaces"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |n| {
                    vec![
                        text(s, "host"),
                        text(n, "nsid"),
                        text(n, "volume"),
                        text(n, "mode"),
                        text(n, "uuid"),
                    ]
                })
        })
        .collect();
    if !namespaces.is_empty() {
        println!();
        print_table(
            &["HOST", "NSID", "VOLUME", "MODE", "NGUID/UUID"],
            &namespaces,
        );
    }
}

fn print_qpairs(controllers: &[Value]) {
    let rows: Vec<Vec<String>> = controllers
        .iter()
        .map(|c| {
            vec![
                text(c, "nqn"),
                text(c, "cntlid"),
                text(c, "kind"),
                text(c, "host"),
                text(c, "hostnqn"),
                text(c, "peer"),
                text(c, "state"),
                text(c, "kato_ms"),
                text(c, "io_queues"),
            ]
        })
        .collect();
    print_table(
        &[
            "SUBSYSTEM",
            "CNTLID",
            "KIND",
            "HOST",
            "HOST NQN",
            "PEER",
            "STATE",
            "KATO MS",
            "IO QUEUES",
        ],
        &rows,
    );
}
