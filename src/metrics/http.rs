//! The `/metrics` HTTP endpoint: tiny_http on one thread of its own, answering each request
//! from the last [`MetricsShared`] snapshot. It never calls into the control thread, so a slow
//! or hostile scraper delays nobody but itself.

use super::encode::{render, to_classic_text, CLASSIC_CONTENT_TYPE, CONTENT_TYPE};
use super::MetricsShared;
use crate::constants::METRICS_POLL_MS;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {address}: {message}")]
    Listen {
        address: SocketAddr,
        message: String,
    },
    #[error("cannot start the metrics thread")]
    Thread(#[source] std::io::Error),
}

/// The running endpoint: stops when `shutdown` is set (checked every [`METRICS_POLL_MS`]).
pub struct MetricsServer {
    pub address: SocketAddr,
    thread: JoinHandle<()>,
}

impl MetricsServer {
    pub fn spawn(
        address: SocketAddr,
        shared: Arc<MetricsShared>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self, MetricsError> {
        let server = tiny_http::Server::http(address).map_err(|error| MetricsError::Listen {
            address,
            message: error.to_string(),
        })?;
        let address = server.server_addr().to_ip().unwrap_or(address);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(server, shared, shutdown))
            .map_err(MetricsError::Thread)?;
        log::info!("metrics at http://{address}/metrics");
        Ok(Self { address, thread })
    }

    pub fn join(self) {
        let _ = self.thread.join();
    }
}

fn serve(server: tiny_http::Server, shared: Arc<MetricsShared>, shutdown: Arc<AtomicBool>) {
    while !shutdown.load(Ordering::Acquire) {
        let request = match server.recv_timeout(Duration::from_millis(METRICS_POLL_MS)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(error) => {
                log::warn!("metrics: {error}");
                continue;
            }
        };
        let path = request.url().split('?').next().unwrap_or("");
        let response = if !matches!(request.method(), tiny_http::Method::Get) {
            text_response(405, "only GET\n".into(), "text/plain")
        } else if path != "/metrics" {
            text_response(404, "see /metrics\n".into(), "text/plain")
        } else {
            // Prometheus asks for OpenMetrics in its Accept header; anything else gets the
            // classic text format.
            let openmetrics = request.headers().iter().any(|header| {
                header.field.equiv("Accept")
                    && header
                        .value
                        .as_str()
                        .contains("application/openmetrics-text")
            });
            match shared.load().map(render) {
                Some(Ok(text)) if openmetrics => text_response(200, text, CONTENT_TYPE),
                Some(Ok(text)) => text_response(200, to_classic_text(&text), CLASSIC_CONTENT_TYPE),
                Some(Err(_)) => {
                    text_response(500, "cannot encode the metrics\n".into(), "text/plain")
                }
                // Until the control loop's first gather, a moment after start-up.
                None => text_response(503, "no metrics gathered yet\n".into(), "text/plain"),
            }
        };
        // A scraper that hung up is its own problem.
        let _ = request.respond(response);
    }
}

fn text_response(
    status: u16,
    body: String,
    content_type: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    if let Ok(header) = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
    {
        response.add_header(header);
    }
    response
}
