//! The management socket's client, as the `sds` command line uses it.

use super::framing::Decoder;
use super::RpcError;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path} (is `sds serve` running? --socket or SDS_SOCKET picks the socket)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the server")]
    Io(#[from] std::io::Error),
    #[error("the server's answer is not valid JSON-RPC: {0}")]
    Protocol(String),
    #[error("{}", .0.message)]
    Rpc(RpcError),
}

pub struct Client {
    stream: UnixStream,
    decoder: Decoder,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            stream,
            decoder: Decoder::default(),
            next_id: 1,
        })
    }

    /// Sends one request and waits for its answer.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "jsonrpc": "2.0", "id": id, "method": method });
        if let Some(params) = params {
            request["params"] = params;
        }
        let bytes =
            serde_json::to_vec(&request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.stream.write_all(&bytes)?;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.decoder.next_value() {
                Ok(Some(mut answer)) => {
                    if let Some(error) = answer.get("error") {
                        let code = error.get("code").and_then(Value::as_i64).unwrap_or(0) as i32;
                        let message = error
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        return Err(ClientError::Rpc(RpcError::new(code, message)));
                    }
                    return answer
                        .get_mut("result")
                        .map(Value::take)
                        .ok_or_else(|| ClientError::Protocol("no result".into()));
                }
                Ok(None) => {}
                Err(error) => return Err(ClientError::Protocol(error.to_string())),
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "the server closed the connection".into(),
                ));
            }
            self.decoder.feed(&chunk[..n]);
        }
    }
}
