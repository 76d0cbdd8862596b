//! `sds serve`: starts the reactors, the control thread, the metadata thread, the front ends and
//! the management socket, and runs until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

/// How a reactor waits when it has nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PollMode {
    /// Spin on the rings without sleeping: lowest latency, burns a core.
    Busy,
    /// Spin briefly, then sleep in the kernel until a completion or a message arrives.
    #[default]
    Adaptive,
}

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
    /// One reactor per listed core; empty means core 0 alone.
    pub cores: Vec<usize>,
    pub poll: PollMode,
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("not implemented yet")]
    NotImplemented,
}

/// Runs the server until SIGINT/SIGTERM; returns after a clean shutdown.
pub fn run(_config: ServeConfig) -> Result<(), ServeError> {
    Err(ServeError::NotImplemented)
}
