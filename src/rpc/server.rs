//! The management socket: a Unix socket speaking JSON-RPC 2.0 in SPDK's framing. One accept
//! thread and one thread per client (bounded by [`Slots`], which evicts the longest-idle client
//! when full, and closes clients idle too long); every well-formed request goes to the
//! [`Dispatch`] and its answer comes back on the same connection.

use super::framing::{Decoder, FramingError};
use super::slots::{SlotGuard, Slots};
use super::{Dispatch, RpcError};
use crate::constants::RPC_IDLE_TIMEOUT_SECS;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RpcServerError {
    #[error("cannot listen on the management socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another server answers on the management socket {path}; stop it or choose another \
         --rpc-socket"
    )]
    InUse { path: PathBuf },
    #[error("cannot start the RPC thread")]
    Thread(#[source] std::io::Error),
}

pub struct RpcServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl RpcServer {
    /// Stops accepting, and removes the socket file. Connected clients finish their request.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn spawn(
    path: &Path,
    dispatch: Arc<dyn Dispatch>,
    shutdown: Arc<AtomicBool>,
) -> Result<RpcServer, RpcServerError> {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    check_not_served(path)?;
    // Only a socket nobody answers on (left by a server that was killed) is replaced.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| RpcServerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| RpcServerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("rpc-accept".into())
        .spawn(move || accept_loop(listener, dispatch, stop_flag, shutdown))
        .map_err(RpcServerError::Thread)?;
    Ok(RpcServer {
        path: path.to_path_buf(),
        stop,
        thread,
    })
}

/// Refuses a management socket that a running server answers on: removing it would leave that
/// server unreachable. A socket file nobody listens on (ECONNREFUSED) is stale and may go.
pub fn check_not_served(path: &Path) -> Result<(), RpcServerError> {
    match UnixStream::connect(path) {
        Ok(_) => Err(RpcServerError::InUse {
            path: path.to_path_buf(),
        }),
        Err(_) => Ok(()),
    }
}

fn accept_loop(
    listener: UnixListener,
    dispatch: Arc<dyn Dispatch>,
    stop: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
) {
    let slots = Arc::new(Slots::default());
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let slot = match slots.admit(&stream) {
                    Ok(slot) => slot,
                    Err(error) => {
                        log::warn!("rpc: refusing a client: {error}");
                        continue;
                    }
                };
                let (dispatch, shutdown) = (dispatch.clone(), shutdown.clone());
                let spawned = std::thread::Builder::new()
                    .name("rpc-client".into())
                    .spawn(move || serve_client(stream, &slot, dispatch.as_ref(), &shutdown));
                if let Err(error) = spawned {
                    log::error!("rpc: cannot start a client thread: {error}");
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(error) => {
                log::warn!("rpc: accept failed: {error}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn error_response(id: Value, error: &RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": error.to_json() })
}

/// A valid request: its id (absent for a notification), method and params.
pub type Envelope<'a> = (Option<Value>, &'a str, Option<Value>);

/// Checks the request envelope; returns it, or the id and error to answer with.
pub fn validate(request: &Value) -> Result<Envelope<'_>, (Value, RpcError)> {
    let Some(object) = request.as_object() else {
        return Err((
            Value::Null,
            RpcError::invalid_request("request must be a JSON object"),
        ));
    };
    let id = object.get("id").cloned();
    let id_valid = matches!(
        id,
        None | Some(Value::Null) | Some(Value::Number(_)) | Some(Value::String(_))
    );
    let answer_id = if id_valid {
        id.clone().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    if !id_valid {
        return Err((
            answer_id,
            RpcError::invalid_request("id: must be a number, a string or null"),
        ));
    }
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((
            answer_id,
            RpcError::invalid_request("jsonrpc: must be \"2.0\""),
        ));
    }
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        return Err((
            answer_id,
            RpcError::invalid_request("method: missing or not a string"),
        ));
    };
    let params = object.get("params").cloned();
    if !matches!(
        params,
        None | Some(Value::Object(_)) | Some(Value::Array(_))
    ) {
        return Err((
            answer_id,
            RpcError::invalid_request("params: must be an object or an array"),
        ));
    }
    Ok((id, method, params))
}

/// Serves one client until it hangs up, errs, is evicted ([`Slots`]) or has been idle for
/// `RPC_IDLE_TIMEOUT_SECS`.
fn serve_client(
    mut stream: UnixStream,
    slot: &SlotGuard,
    dispatch: &dyn Dispatch,
    shutdown: &AtomicBool,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut decoder = Decoder::default();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        loop {
            let answer = match decoder.next_value() {
                Ok(None) => break,
                Ok(Some(request)) => match validate(&request) {
                    Err((id, error)) => Some(error_response(id, &error)),
                    Ok((id, method, params)) => {
                        slot.busy();
                        let result = dispatch.call(method, params);
                        id.map(|id| match result {
                            Ok(value) => json!({ "jsonrpc": "2.0", "id": id, "result": value }),
                            Err(error) => error_response(id, &error),
                        })
                    }
                },
                Err(error) => {
                    let rpc_error = match error {
                        FramingError::Syntax(detail) => {
                            RpcError::parse_error(format!("Parse error: {detail}"))
                        }
                        FramingError::TooLarge => RpcError::invalid_request(error.to_string()),
                    };
                    let _ = write_value(&mut stream, &error_response(Value::Null, &rpc_error));
                    return;
                }
            };
            if let Some(answer) = answer {
                if write_value(&mut stream, &answer).is_err() {
                    return;
                }
            }
            slot.idle();
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => decoder.feed(&chunk[..n]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if shutdown.load(Ordering::Acquire) {
                    return;
                }
            }
            Err(_) => return,
        }
        // Idle since the last answer, however many bytes of a request trickled in since.
        if slot
            .idle_for()
            .is_some_and(|idle| idle >= Duration::from_secs(RPC_IDLE_TIMEOUT_SECS))
        {
            log::info!("rpc: closing a connection idle for {RPC_IDLE_TIMEOUT_SECS} s");
            return;
        }
    }
}

fn write_value(stream: &mut UnixStream, value: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    stream.write_all(&bytes)
}
