//! `sds host`: the initiators that may connect, known by what their connection proves. The
//! subcommands, their JSON-RPC calls (`host_*`) and the host table.

use super::output::{done, show};
use super::params::set;
use super::secret::SecretSource;
use super::table::{joined, print_table, text};
use super::Call;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum HostCommand {
    /// Register a host, known by at least one of its addresses, TLS subject, IQN or NQN
    ///
    /// Without TLS a connection belongs to the host one of whose addresses it comes from;
    /// over TLS only the client certificate's subject counts. The new host sees no volume until
    /// it is given a virtual path (`sds vpath create --host NAME --volume VOLUME`).
    #[command(group(
        clap::ArgGroup::new("identity")
            .required(true)
            .multiple(true)
            .args(["addresses", "tls_subject", "iqn", "nqn"])
    ))]
    Create {
        /// The host's name: 1 to 64 of A-Z a-z 0-9 . _ - :
        name: String,
        /// An address the host connects from without TLS: an IP address (127.0.0.1, ::1), a
        /// CIDR network (10.0.0.0/24) or unix:UID for a Unix-socket peer running as that user
        /// id. Repeat, or give a comma-separated list
        #[arg(long = "address", value_name = "CIDR|unix:UID", value_delimiter = ',')]
        addresses: Vec<String>,
        /// Subject of the host's TLS client certificate, as `openssl x509 -noout -subject
        /// -nameopt RFC2253` prints it (CN=host1,O=lab); no two hosts may share one
        #[arg(long, value_name = "DN")]
        tls_subject: Option<String>,
        /// The host's iSCSI initiator name (iqn.YYYY-MM.reversed.domain[:id], eui.<16 hex>
        /// or naa.<16 or 32 hex>), stored lower-case; an iSCSI login with it is this host's,
        /// and no two hosts may share one
        #[arg(long)]
        iqn: Option<String>,
        /// The host's NVMe host NQN (nqn.YYYY-MM.reversed.domain[:id], or
        /// nqn.2014-08.org.nvmexpress:uuid:<UUID> as /etc/nvme/hostnqn holds it), kept as
        /// given; an NVMe/TCP Connect with it is this host's, and no two hosts may share one
        #[arg(long)]
        nqn: Option<String>,
        /// NBD sessions the host may have open at once [default: 64]
        #[arg(long, value_name = "N")]
        max_sessions: Option<u64>,
    },
    /// Change a host's limits (an NBD client past max_sessions is refused at NBD_OPT_GO)
    Set {
        /// The host to change
        name: String,
        /// NBD sessions the host may have open at once
        #[arg(long, value_name = "N")]
        max_sessions: u64,
    },
    /// Set or clear the CHAP credentials an iSCSI login of the host must prove
    ///
    /// The host proves USER and the secret; with --mutual-user the target then proves
    /// MUTUAL_USER and the mutual secret back. Secrets are 12 to 255 bytes, and no command
    /// or answer ever shows them again. To keep a secret out of the shell's history, give it
    /// in $SDS_CHAP_SECRET / $SDS_CHAP_MUTUAL_SECRET, in a file (--secret-file PATH), on stdin
    /// (--secret-file -, one line per secret), or type it at the prompt.
    #[command(group(
        clap::ArgGroup::new("secret_source").args(["secret", "secret_file"])
    ))]
    #[command(group(
        clap::ArgGroup::new("mutual_secret_source").args(["mutual_secret", "mutual_secret_file"])
    ))]
    Chap {
        /// The host to change
        name: String,
        /// The CHAP name (CHAP_N) the host logs in with
        #[arg(long, required_unless_present = "clear")]
        user: Option<String>,
        /// The host's CHAP secret
        #[arg(long, env = "SDS_CHAP_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Read the host's secret from this file (its first line), or from stdin with -
        #[arg(long, value_name = "PATH|-")]
        secret_file: Option<String>,
        /// For mutual CHAP: the name the target answers with
        #[arg(long, requires = "user")]
        mutual_user: Option<String>,
        /// For mutual CHAP: the target's secret (must differ from the host's)
        #[arg(long, env = "SDS_CHAP_MUTUAL_SECRET", hide_env_values = true)]
        mutual_secret: Option<String>,
        /// Read the target's secret from this file, or from stdin with -
        #[arg(long, value_name = "PATH|-")]
        mutual_secret_file: Option<String>,
        /// Remove the host's CHAP credentials: it logs in without CHAP again
        #[arg(long, conflicts_with_all = ["user", "secret", "secret_file", "mutual_user", "mutual_secret", "mutual_secret_file"])]
        clear: bool,
    },
    /// List hosts with their identities and how many virtual paths each has
    List {
        /// Show only this host (an error if there is none)
        name: Option<String>,
    },
    /// Remove a host; refused while it still has virtual paths (`sds vpath delete` them first)
    Delete {
        /// The host to remove
        name: String,
    },
}

/// Runs one `sds host` subcommand against the server.
pub fn run(command: HostCommand, json: bool, call: Call) -> Result<(), String> {
    match command {
        HostCommand::Create {
            name,
            addresses,
            tls_subject,
            iqn,
            nqn,
            max_sessions,
        } => {
            let mut params = json!({ "name": name });
            set(&mut params, "max_sessions", max_sessions.map(|n| json!(n)));
            if !addresses.is_empty() {
                params["addresses"] = json!(addresses);
            }
            set(
                &mut params,
                "nbd_tls_subject",
                tls_subject.map(|s| json!(s)),
            );
            set(&mut params, "iqn", iqn.map(|s| json!(s)));
            set(&mut params, "nqn", nqn.map(|s| json!(s)));
            show(json, call("host_create", Some(params))?, print_hosts)
        }
        HostCommand::Set { name, max_sessions } => show(
            json,
            call(
                "host_set",
                Some(json!({ "name": name, "max_sessions": max_sessions })),
            )?,
            print_hosts,
        ),
        HostCommand::Chap {
            name,
            user,
            secret,
            secret_file,
            mutual_user,
            mutual_secret,
            mutual_secret_file,
            clear,
        } => {
            if clear {
                return show(
                    json,
                    call("host_clear_chap", Some(json!({ "name": name })))?,
                    print_hosts,
                );
            }
            let secret = SecretSource {
                value: secret,
                file: secret_file.as_deref(),
                what: format!("CHAP secret of host {name}"),
            }
            .read(true)?
            .ok_or("give the secret: --secret-file PATH|-, $SDS_CHAP_SECRET or --secret")?;
            let mut params = json!({ "name": name, "user": user, "secret": secret });
            if let Some(mutual_user) = mutual_user {
                let mutual_secret = SecretSource {
                    value: mutual_secret,
                    file: mutual_secret_file.as_deref(),
                    what: format!("target's mutual CHAP secret for host {name}"),
                }
                .read(true)?
                .ok_or(
                    "give the mutual secret: --mutual-secret-file PATH|-, \
                     $SDS_CHAP_MUTUAL_SECRET or --mutual-secret",
                )?;
                params["mutual_user"] = json!(mutual_user);
                params["mutual_secret"] = json!(mutual_secret);
            } else if mutual_secret.is_some() || mutual_secret_file.is_some() {
                return Err("a mutual secret needs --mutual-user".into());
            }
            show(json, call("host_set_chap", Some(params))?, print_hosts)
        }
        HostCommand::List { name } => show(
            json,
            call("host_get_hosts", name.map(|name| json!({ "name": name })))?,
            print_hosts,
        ),
        HostCommand::Delete { name } => done(
            json,
            call("host_delete", Some(json!({ "name": name })))?,
            &format!("host {name} deleted"),
        ),
    }
}

/// The table of hosts and their identities.
fn print_hosts(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|h| {
            vec![
                text(h, "name"),
                joined(&h["addresses"]),
                text(h, "nbd_tls_subject"),
                text(h, "iqn"),
                chap_text(&h["chap"]),
                text(h, "nqn"),
                text(h, "vpaths"),
                format!("{}/{}", text(h, "sessions"), text(h, "max_sessions")),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "ADDRESSES",
            "TLS SUBJECT",
            "IQN",
            "CHAP",
            "NQN",
            "VPS",
            "SESSIONS",
        ],
        &rows,
    );
}

/// The CHAP column: the user names, never a secret (the server sends none).
fn chap_text(chap: &Value) -> String {
    match (chap["user"].as_str(), chap["mutual_user"].as_str()) {
        (None, _) => "-".into(),
        (Some(user), None) => user.into(),
        (Some(user), Some(mutual)) => format!("{user} (mutual: {mutual})"),
    }
}
