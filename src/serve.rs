//! `sds serve`: starts the reactors, the control thread, the provisioning thread, the front
//! ends and the management socket, and runs until SIGINT or SIGTERM.

use crate::constants::MAX_REACTORS;
use crate::control::{self, Control};
use crate::domain::snapshot::Published;
use crate::reactor::{self, mailbox::Message};
use crate::rpc;
use crate::scsi::LuRegistry;
use crate::state_lock::StateLock;
use crate::target::buffer_budget::BUFFER_BUDGET;
use crate::target::handshake_slots::HandshakeSlots;
use crate::target::iscsi::listener::{self as iscsi_listener, IscsiContext, IscsiSetup};
use crate::target::iscsi::registry::Registry;
use crate::target::iscsi::target_name;
use crate::target::nbd::listener::{self, NbdContext};
use crate::target::nbd::tls::{TlsFiles, TlsServer};
use crate::target::nvmf::listener as nvmf_listener;
use crate::target::nvmf::registry::Registry as NvmfRegistry;
use crate::target::nvmf::{subsystem, NvmfContext};
use crate::volume::provisioner::Provisioner;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The poll mode lives with the reactor; named here too for the command line's sake.
pub use crate::reactor::PollMode;

/// Everything `sds serve` is told on its command line.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Configuration records, file LUNs created without a path, and the default RPC socket.
    pub state_dir: PathBuf,
    /// The management socket; `state_dir/sds.sock` when absent.
    pub rpc_socket: Option<PathBuf>,
    /// NBD over TCP; `None` disables it.
    pub nbd_listen: Option<SocketAddr>,
    /// NBD over a Unix socket, in addition to TCP.
    pub nbd_socket: Option<PathBuf>,
    /// Permission bits of the NBD Unix socket (`--nbd-unix-mode`).
    pub nbd_unix_mode: u32,
    /// How long one NBD handshake may take, all of it (`--nbd-handshake-timeout-secs`).
    pub nbd_handshake_timeout: std::time::Duration,
    /// One reactor per listed core; empty means one reactor on [`default_core`].
    pub cores: Vec<usize>,
    pub poll: PollMode,
    /// The control loop's period: how often statistics are gathered and QoS shares decided.
    pub cycle: std::time::Duration,
    /// The iSCSI portal; `None` disables the iSCSI target.
    pub iscsi_listen: Option<SocketAddr>,
    /// The iSCSI target name for this run (`--iscsi-target-name`); the stored one (made at
    /// the first start) when absent.
    pub iscsi_target_name: Option<String>,
    /// The NVMe/TCP port; `None` disables the NVMe/TCP front end.
    pub nvmf_listen: Option<SocketAddr>,
    /// The subsystem NQN base for this run (`--nvmf-nqn-base`); the stored one (made at the
    /// first start) when absent.
    pub nvmf_nqn_base: Option<String>,
    /// NBD over TLS: when set, every NBD connection (TCP or Unix) must start TLS, and with a
    /// client CA the client certificate's subject names the host.
    pub tls: Option<TlsFiles>,
    /// Prometheus metrics at `http://ADDRESS/metrics` (`--metrics-listen`); `None`: off.
    pub metrics_listen: Option<SocketAddr>,
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    StateLock(#[from] crate::state_lock::StateLockError),
    #[error("cannot resolve the state directory {path}")]
    StateDirPath {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the SIGINT/SIGTERM handler")]
    Signals(#[source] ctrlc::Error),
    #[error(transparent)]
    Reactor(#[from] crate::reactor::ReactorError),
    #[error("cannot start the provisioning thread")]
    Provisioner(#[source] std::io::Error),
    #[error(transparent)]
    Control(#[from] Box<crate::control::ControlError>),
    #[error(transparent)]
    Listener(#[from] crate::target::nbd::listener::ListenerError),
    #[error(transparent)]
    Rpc(#[from] crate::rpc::server::RpcServerError),
    #[error(transparent)]
    Tls(#[from] crate::target::nbd::tls::TlsError),
    #[error(transparent)]
    StableName(#[from] crate::target::stable_name::StableNameError),
    /// The iSCSI or the NVMe/TCP listener.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::http::MetricsError),
    #[error(transparent)]
    TcpListener(#[from] crate::target::tcp_acceptor::AcceptorError),
}

/// Runs the server until SIGINT/SIGTERM; returns after a clean shutdown: in-flight I/O
/// drained and answered, every LUN flushed.
pub fn run(config: ServeConfig) -> Result<(), ServeError> {
    // Bad TLS files stop start-up before anything is created or runs, naming the file.
    let tls = config.tls.as_ref().map(TlsServer::load).transpose()?;
    if let Some(files) = &config.tls {
        match &files.client_ca {
            Some(ca) => log::info!(
                "NBD requires TLS; client certificates must chain to {} and their subject names the host",
                ca.display()
            ),
            None => log::info!(
                "NBD requires TLS; no client certificates asked for: hosts are known by address"
            ),
        }
    }
    std::fs::create_dir_all(&config.state_dir).map_err(|source| ServeError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    // One server per state directory, held until this function returns: taken before anything
    // in it is read and before the management socket is touched.
    let _state_lock = StateLock::acquire(&config.state_dir)?;
    // The state directory by its absolute name: file LUNs created in it record absolute paths,
    // so a server started later from another working directory finds them.
    let state_dir =
        std::fs::canonicalize(&config.state_dir).map_err(|source| ServeError::StateDirPath {
            path: config.state_dir.clone(),
            source,
        })?;
    let socket = config
        .rpc_socket
        .clone()
        .unwrap_or_else(|| state_dir.join("sds.sock"));
    // A socket another server answers on (one given with --rpc-socket, outside this state dir)
    // is refused now, before the journals are replayed, and never replaced.
    rpc::server::check_not_served(&socket)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = shutdown.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Release)).map_err(ServeError::Signals)?;

    let cores = if config.cores.is_empty() {
        vec![default_core()]
    } else {
        config.cores.clone()
    };
    // Calibrate the engine's clock now (it sleeps once), not in the first handshake, where
    // every handshake arriving meanwhile would wait behind it.
    crate::blockio::clock::TickClock::shared();
    let mut reactors = Vec::with_capacity(cores.len());
    let mut reactor_threads = Vec::with_capacity(cores.len());
    for (index, &core) in cores.iter().enumerate().take(MAX_REACTORS) {
        let (handle, thread) = reactor::spawn(index, core, config.poll)?;
        reactors.push(handle);
        reactor_threads.push(thread);
    }
    // Remote LUNs opened from now on (the recorded ones below, lun_create later) attach one
    // link to each reactor.
    crate::backend::remote::register_reactors(&reactors);
    let (provisioner, provisioner_thread) =
        Provisioner::spawn().map_err(ServeError::Provisioner)?;
    let published = Arc::new(Published::default());
    // The iSCSI target's name and its session registry exist whether or not the portal
    // listens, so the control plane can show both.
    let iscsi_target_name = target_name::resolve(&state_dir, config.iscsi_target_name.as_deref())?;
    let iscsi_registry = Registry::new();
    let iscsi_scsi = LuRegistry::new(&state_dir);
    // Likewise the NVMe subsystem NQN base and the controller registry.
    let nvmf_nqn_base = subsystem::resolve_base(&state_dir, config.nvmf_nqn_base.as_deref())?;
    let nvmf_registry = NvmfRegistry::new();
    crate::service_notify::status("replaying the pools' journals");
    let mut control = Control::restore(
        state_dir,
        published.clone(),
        reactors.clone(),
        provisioner.clone(),
        config.cycle,
    )
    .map_err(Box::new)?;
    // What `iscsi_get_targets` / `iscsi_get_sessions` show: the name, where it listens, and
    // the sessions the login threads and reactors register.
    control.iscsi = Some(control::iscsi::IscsiTarget {
        name: iscsi_target_name.clone(),
        portals: config
            .iscsi_listen
            .iter()
            .map(ToString::to_string)
            .collect(),
        registry: iscsi_registry.clone(),
    });
    control.nvmf = Some(control::nvmf::NvmfTarget {
        nqn_base: nvmf_nqn_base.clone(),
        listen: config.nvmf_listen.iter().map(ToString::to_string).collect(),
        registry: nvmf_registry.clone(),
    });
    let metrics_shared = config
        .metrics_listen
        .map(|_| Arc::new(crate::metrics::MetricsShared::default()));
    if let Some(shared) = &metrics_shared {
        control.metrics = Some(control::metrics::MetricsGatherer::new(shared.clone()));
    }
    let (dispatch, control_thread) = control::spawn(control).map_err(Box::new)?;
    let metrics_server = match (config.metrics_listen, metrics_shared) {
        (Some(address), Some(shared)) => Some(crate::metrics::http::MetricsServer::spawn(
            address,
            shared,
            shutdown.clone(),
        )?),
        _ => None,
    };

    let nbd = NbdContext::new(
        published.clone(),
        reactors.clone(),
        provisioner.clone(),
        shutdown.clone(),
        tls,
        config.nbd_handshake_timeout,
    );
    let mut acceptors = Vec::new();
    if let Some(address) = config.nbd_listen {
        acceptors.push(listener::listen_tcp(address, nbd.clone())?);
    }
    if let Some(path) = &config.nbd_socket {
        acceptors.push(listener::listen_unix(
            path,
            config.nbd_unix_mode,
            nbd.clone(),
        )?);
    }
    if let Some(address) = config.iscsi_listen {
        let iscsi = IscsiContext::new(IscsiSetup {
            published: published.clone(),
            reactors: reactors.clone(),
            provisioner: provisioner.clone(),
            shutdown: shutdown.clone(),
            registry: iscsi_registry.clone(),
            target_name: iscsi_target_name.clone(),
            reactor_load: nbd.reactor_load(),
            scsi: iscsi_scsi,
            handshake_limit: config.nbd_handshake_timeout,
        });
        acceptors.push(iscsi_listener::listen(address, iscsi)?);
    }
    if let Some(address) = config.nvmf_listen {
        let nvmf = Arc::new(NvmfContext {
            published: published.clone(),
            reactors: reactors.clone(),
            provisioner: provisioner.clone(),
            shutdown: shutdown.clone(),
            registry: nvmf_registry.clone(),
            reactor_load: nbd.reactor_load(),
            buffer_budget: &BUFFER_BUDGET,
            nqn_base: nvmf_nqn_base.clone(),
            handshakes: HandshakeSlots::default(),
            handshake_limit: config.nbd_handshake_timeout,
        });
        acceptors.push(nvmf_listener::listen(address, nvmf)?);
    }
    let rpc = rpc::server::spawn(&socket, Arc::new(dispatch), shutdown.clone())?;
    log::info!(
        "{} serving; management socket {}",
        crate::version::long_version(),
        socket.display()
    );
    // Every listener is bound and listening (a connection made now waits in its backlog and
    // is served) and every pool was replayed by Control::restore: systemd may start what
    // depends on sds.service.
    crate::service_notify::ready(&format!("serving; management socket {}", socket.display()));

    while !shutdown.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::service_notify::stopping();
    log::info!("shutting down: draining in-flight I/O");
    rpc.stop();
    if let Some(server) = metrics_server {
        server.join();
    }
    for acceptor in acceptors {
        let _ = acceptor.join();
    }
    for handle in &reactors {
        handle.post(Message::Shutdown);
    }
    for thread in reactor_threads {
        let _ = thread.join();
    }
    provisioner.stop();
    let _ = provisioner_thread.join();
    drop(nbd);
    match control_thread.join() {
        Ok(control) => control.flush_all(),
        Err(_) => log::error!("the control thread panicked"),
    }
    log::info!("stopped cleanly");
    Ok(())
}

/// The core a lone reactor runs on by default: the highest-numbered core this process may use
/// (its affinity mask, so `taskset -c 1 sds serve` puts it on core 1). Core 0 is left to the
/// kernel's interrupt work and to local clients; a client sharing the reactor's core was
/// measured to cost up to 40% of 4k IOPS on a 2-core machine.
pub fn default_core() -> usize {
    core_affinity::get_core_ids()
        .and_then(|ids| ids.into_iter().map(|id| id.id).max())
        .unwrap_or(0)
}

/// The `--cores` list of `sds serve` and `sds perf`: `0,2-3` → [0, 2, 3], 1 to
/// `MAX_REACTORS` cores.
pub fn parse_cores(text: &str) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("--cores: {part:?} is not a core or a range like 0-3");
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to): (usize, usize) = (
                    from.parse().map_err(|_| bad())?,
                    to.parse().map_err(|_| bad())?,
                );
                if from > to {
                    return Err(bad());
                }
                cores.extend(from..=to);
            }
            None => cores.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cores.is_empty() || cores.len() > MAX_REACTORS {
        return Err(format!("--cores: give 1 to {} cores", MAX_REACTORS));
    }
    Ok(cores)
}
