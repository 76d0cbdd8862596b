//! The `/metrics` HTTP endpoint: one thread of its own, a `poll(2)` loop over non-blocking
//! std sockets, answering each request from the last [`MetricsShared`] snapshot. It never
//! calls into the control thread, so a slow or hostile scraper delays nobody but the metrics
//! thread, and the loop bounds what any client can hold there:
//!
//! - at most [`METRICS_MAX_CONNECTIONS`] connections are open; a new one past it closes the
//!   oldest (so a client holding many idle connections cannot lock a scraper out: the scraper
//!   needs a slot for the milliseconds of one answer);
//! - a request's line and headers are at most [`METRICS_MAX_REQUEST_BYTES`] (431 past it);
//! - a connection lives [`METRICS_CONNECTION_TIMEOUT_MS`] from accept to the last byte of its
//!   answer, then is closed whatever it is doing (one that never sends, or reads slowly);
//! - reads and writes never block, so one client's slowness costs another nothing but the
//!   turn of the loop. One request per connection (`Connection: close`), as Prometheus
//!   scrapes are seconds apart.
//!
//! A small loop of our own rather than a server crate: tiny_http (the first choice) serves
//! each open connection on a thread of an unbounded pool and has no request timeout.

use super::encode::{render, to_classic_text, CLASSIC_CONTENT_TYPE, CONTENT_TYPE};
use super::MetricsShared;
use crate::constants::{
    METRICS_CONNECTION_TIMEOUT_MS, METRICS_MAX_CONNECTIONS, METRICS_MAX_REQUEST_BYTES,
    METRICS_POLL_MS,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
        let listen_error = |error: std::io::Error| MetricsError::Listen {
            address,
            message: error.to_string(),
        };
        let listener = TcpListener::bind(address).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        let address = listener.local_addr().unwrap_or(address);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(listener, shared, shutdown))
            .map_err(MetricsError::Thread)?;
        log::info!("metrics at http://{address}/metrics");
        Ok(Self { address, thread })
    }

    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// One client connection: reading its request, then writing its answer.
struct Connection {
    stream: TcpStream,
    deadline: Instant,
    request: Vec<u8>,
    /// The answer and how much of it is written, once the request is whole.
    answer: Option<(Vec<u8>, usize)>,
}

enum Progress {
    Open,
    Done,
}

fn serve(listener: TcpListener, shared: Arc<MetricsShared>, shutdown: Arc<AtomicBool>) {
    let mut connections: Vec<Connection> = Vec::with_capacity(METRICS_MAX_CONNECTIONS);
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(METRICS_MAX_CONNECTIONS + 1);
    while !shutdown.load(Ordering::Acquire) {
        fds.clear();
        fds.push(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let now = Instant::now();
        let mut timeout = Duration::from_millis(METRICS_POLL_MS);
        for connection in &connections {
            fds.push(libc::pollfd {
                fd: connection.stream.as_raw_fd(),
                events: if connection.answer.is_some() {
                    libc::POLLOUT
                } else {
                    libc::POLLIN
                },
                revents: 0,
            });
            timeout = timeout.min(connection.deadline.saturating_duration_since(now));
        }
        // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfds, each naming a
        // socket this thread owns; poll only writes their `revents`.
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                // Rounded up, so a deadline just ahead is not polled for in a busy loop.
                timeout.as_millis() as libc::c_int + 1,
            )
        };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != ErrorKind::Interrupted {
                log::warn!("metrics: poll: {error}");
                std::thread::sleep(Duration::from_millis(METRICS_POLL_MS));
            }
            continue;
        }
        // Serve what is ready, then drop what is done or past its deadline.
        let now = Instant::now();
        let mut index = 0;
        connections.retain_mut(|connection| {
            index += 1;
            let revents = fds.get(index).map_or(0, |fd| fd.revents);
            let progress = if revents != 0 {
                advance(connection, &shared)
            } else {
                Progress::Open
            };
            matches!(progress, Progress::Open) && now < connection.deadline
        });
        if fds[0].revents != 0 {
            accept_all(&listener, &mut connections);
        }
    }
}

/// Takes every pending connection; past the bound, the oldest open one makes room.
fn accept_all(listener: &TcpListener, connections: &mut Vec<Connection>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if connections.len() >= METRICS_MAX_CONNECTIONS {
                    // In accept order: the first is the oldest.
                    connections.remove(0);
                }
                connections.push(Connection {
                    stream,
                    deadline: Instant::now() + Duration::from_millis(METRICS_CONNECTION_TIMEOUT_MS),
                    request: Vec::new(),
                    answer: None,
                });
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => return,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => {
                // Out of descriptors, or a connection reset before accept: try next round.
                log::debug!("metrics: accept: {error}");
                return;
            }
        }
    }
}

/// Reads what the client sent, or writes what is left of the answer, without blocking.
fn advance(connection: &mut Connection, shared: &MetricsShared) -> Progress {
    if connection.answer.is_none() {
        let mut buffer = [0u8; 1024];
        loop {
            match connection.stream.read(&mut buffer) {
                Ok(0) => return Progress::Done,
                Ok(n) => {
                    connection.request.extend_from_slice(&buffer[..n]);
                    if let Some(end) = find_end(&connection.request) {
                        let answer = respond(&connection.request[..end], shared);
                        connection.answer = Some((answer, 0));
                        break;
                    }
                    if connection.request.len() >= METRICS_MAX_REQUEST_BYTES {
                        let answer = encode_answer(431, "request too large\n".into(), "text/plain");
                        connection.answer = Some((answer, 0));
                        break;
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Progress::Open,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Progress::Done,
            }
        }
    }
    let Some((answer, written)) = connection.answer.as_mut() else {
        return Progress::Open;
    };
    while *written < answer.len() {
        match connection.stream.write(&answer[*written..]) {
            Ok(0) => return Progress::Done,
            Ok(n) => *written += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Progress::Open,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Progress::Done,
        }
    }
    let _ = connection.stream.shutdown(Shutdown::Write);
    Progress::Done
}

/// Where the request's headers end (past the blank line), if they have.
fn find_end(request: &[u8]) -> Option<usize> {
    request
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// The whole answer to one request (line, headers, body).
fn respond(request: &[u8], shared: &MetricsShared) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("");
    let path = first.next().unwrap_or("").split('?').next().unwrap_or("");
    if method != "GET" {
        return encode_answer(405, "only GET\n".into(), "text/plain");
    }
    if path != "/metrics" {
        return encode_answer(404, "see /metrics\n".into(), "text/plain");
    }
    // Prometheus asks for OpenMetrics in its Accept header; anything else gets the classic
    // text format.
    let openmetrics = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    });
    match shared.load().map(render) {
        Some(Ok(text)) if openmetrics => encode_answer(200, text, CONTENT_TYPE),
        Some(Ok(text)) => encode_answer(200, to_classic_text(&text), CLASSIC_CONTENT_TYPE),
        Some(Err(_)) => encode_answer(500, "cannot encode the metrics\n".into(), "text/plain"),
        // Until the control loop's first gather, a moment after start-up.
        None => encode_answer(503, "no metrics gathered yet\n".into(), "text/plain"),
    }
}

fn encode_answer(status: u16, body: String, content_type: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body.as_bytes());
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_by_method_and_path() {
        let shared = MetricsShared::default();
        let status = |request: &str| {
            let answer = respond(request.as_bytes(), &shared);
            String::from_utf8_lossy(&answer[9..12]).into_owned()
        };
        assert_eq!(status("GET /metrics HTTP/1.1\r\n\r\n"), "503");
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), "405");
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), "404");
        assert_eq!(status("\r\n\r\n"), "405");
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
