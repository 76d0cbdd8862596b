//! The JSON-RPC 2.0 management interface, framed as SPDK frames it: a stream of JSON objects on
//! a Unix socket with no length prefix and no delimiter, so SPDK's own Python client can talk to
//! it. `server` reads requests and hands each to a [`Dispatch`] (the control thread); `client`
//! is what the `sds` command line uses.

pub mod client;
pub mod error;
pub mod framing;
pub mod server;
pub mod slots;

pub use error::RpcError;

/// Where the server sends each well-formed request: one call, one answer. The control thread
/// implements it; the RPC server knows nothing of what the methods do.
pub trait Dispatch: Send + Sync + 'static {
    /// Runs `method` with `params` (absent when the request had none) and returns the `result`
    /// value or the error to send back.
    fn call(
        &self,
        method: &str,
        params: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RpcError>;
}
