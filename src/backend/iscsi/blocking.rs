//! The blocking connection of an iSCSI LUN: the same asynchronous libiscsi API as the links,
//! driven by poll(2) on the calling thread (provisioning, control, start-up; never a reactor),
//! one command at a time behind a mutex. Every call is bounded by the LUN's timeout: a lost
//! connection is made again within it, a command past it fails with `TimedOut` (the connection
//! is dropped first, so nothing still refers to the caller's buffer).

use super::connection::{Capacity, Connection, Event};
use super::link::ZeroBuffer;
use super::outcome::Outcome;
use super::IscsiParams;
use crate::constants::{
    ISCSI_MAX_COMMAND_RETRIES, ISCSI_WRITE_SAME_CHUNK_BLOCKS, ISCSI_ZERO_CHUNK_BYTES,
    REMOTE_RECONNECT_MIN_MS,
};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The slot of the blocking connection's one command.
const SLOT: u32 = 0;
/// Longest single poll(2), so the deadline is looked at often enough.
const POLL_SLICE_MS: u64 = 100;

struct State {
    connection: Option<Connection>,
    capacity: Option<Capacity>,
    write_same_unmap: bool,
}

pub struct BlockingIscsi {
    params: Arc<IscsiParams>,
    zeroes: ZeroBuffer,
    timeout: Duration,
    state: Mutex<State>,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: no answer in time"),
    )
}

/// Waits until an event `wanted` accepts arrives, servicing the socket; stray task events are
/// finished and dropped.
fn wait_for(
    connection: &mut Connection,
    deadline: Instant,
    wanted: impl Fn(&Event) -> bool,
) -> io::Result<Event> {
    loop {
        while let Some(event) = connection.next_event() {
            if wanted(&event) {
                return Ok(event);
            }
            if let Event::Task { slot, status } = event {
                connection.finish(slot, status);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out("iSCSI"));
        }
        let Some(fd) = connection.fd() else {
            return Err(io::Error::other(format!(
                "the connection is closed: {}",
                connection.last_error()
            )));
        };
        let slice = deadline
            .duration_since(now)
            .min(Duration::from_millis(POLL_SLICE_MS));
        let mut poll = libc::pollfd {
            fd,
            events: connection.which_events(),
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, slice.as_millis() as i32) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if ready > 0 && connection.service(poll.revents) < 0 {
            // What the failing call reported first (a refused connect, a failed login) beats
            // libiscsi's last words.
            while let Some(event) = connection.next_event() {
                if wanted(&event) {
                    return Ok(event);
                }
            }
            return Err(io::Error::other(connection.service_error()));
        }
    }
}

impl BlockingIscsi {
    pub fn new(params: Arc<IscsiParams>, zeroes: ZeroBuffer, timeout: Duration) -> Self {
        Self {
            params,
            zeroes,
            timeout,
            state: Mutex::new(State {
                connection: None,
                capacity: None,
                write_same_unmap: false,
            }),
        }
    }

    /// Runs one task on `connection` (sent by `send`) to its end.
    fn run_task(
        connection: &mut Connection,
        deadline: Instant,
        send: &mut dyn FnMut(&mut Connection) -> Result<(), String>,
    ) -> io::Result<super::connection::Finished> {
        send(connection).map_err(io::Error::other)?;
        let event = wait_for(connection, deadline, |event| {
            matches!(event, Event::Task { slot: SLOT, .. })
        })?;
        let Event::Task { status, .. } = event else {
            return Err(io::Error::other("unexpected event"));
        };
        Ok(connection.finish(SLOT, status))
    }

    /// Connects and logs in, and learns the capacity.
    fn connect(&self, state: &mut State, deadline: Instant) -> io::Result<()> {
        if state.connection.is_some() {
            return Ok(());
        }
        let mut connection = Connection::start(&self.params, 1)
            .map_err(|error| io::Error::other(crate::logger::error_chain(&error)))?;
        let Event::Connected { status } = wait_for(&mut connection, deadline, |event| {
            matches!(event, Event::Connected { .. })
        })?
        else {
            return Err(io::Error::other("unexpected event"));
        };
        if status != 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                connection.connect_error(),
            ));
        }
        let mut capacity = None;
        for _ in 0..=ISCSI_MAX_COMMAND_RETRIES {
            let finished =
                Self::run_task(&mut connection, deadline, &mut |c| c.read_capacity16(SLOT))?;
            match finished.outcome {
                Outcome::Good => {
                    capacity = finished.capacity;
                    break;
                }
                Outcome::Retry { .. } => continue,
                outcome => {
                    return Err(io::Error::other(format!(
                        "READ CAPACITY (16) failed: {outcome:?}"
                    )))
                }
            }
        }
        let capacity =
            capacity.ok_or_else(|| io::Error::other("READ CAPACITY (16) kept failing"))?;
        let mut write_same_unmap = false;
        if capacity.thin && capacity.reads_zeroes {
            let finished = Self::run_task(&mut connection, deadline, &mut |c| {
                c.inquiry_provisioning(SLOT)
            })?;
            write_same_unmap = finished.outcome == Outcome::Good && finished.write_same_unmap;
        }
        state.capacity = Some(capacity);
        state.write_same_unmap = write_same_unmap;
        state.connection = Some(connection);
        Ok(())
    }

    /// Runs one command to its end within the timeout, connecting (again) as needed.
    fn command(
        &self,
        what: &str,
        send: &mut dyn FnMut(&mut Connection, bool) -> Result<(), String>,
    ) -> io::Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut retries = 0;
        let mut last_error = None;
        loop {
            if Instant::now() >= deadline {
                state.connection = None;
                return Err(last_error.unwrap_or_else(|| timed_out(what)));
            }
            if let Err(error) = self.connect(&mut state, deadline) {
                last_error = Some(error);
                std::thread::sleep(Duration::from_millis(REMOTE_RECONNECT_MIN_MS));
                continue;
            }
            let unmap = state.write_same_unmap;
            let Some(connection) = state.connection.as_mut() else {
                continue;
            };
            match Self::run_task(connection, deadline, &mut |c| send(c, unmap)) {
                Ok(finished) => match finished.outcome {
                    Outcome::Good => return Ok(()),
                    Outcome::Retry { .. } if retries < ISCSI_MAX_COMMAND_RETRIES => retries += 1,
                    Outcome::Retry { .. } => {
                        return Err(io::Error::other(format!(
                            "{what}: the array keeps asking to retry"
                        )))
                    }
                    Outcome::Failed(errno) => return Err(io::Error::from_raw_os_error(errno)),
                    Outcome::ConnectionLost => {
                        state.connection = None;
                    }
                },
                Err(error) => {
                    // Dropping the connection frees its task: nothing refers to the caller's
                    // buffer once this returns.
                    state.connection = None;
                    last_error = Some(error);
                }
            }
        }
    }

    /// Connects (if not yet) and returns the array's capacity and whether WRITE SAME + UNMAP is
    /// used; within `wait`.
    pub fn capacity(&self, wait: Duration) -> io::Result<Capacity> {
        let deadline = Instant::now() + wait;
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            match self.connect(&mut state, deadline) {
                Ok(()) => break,
                Err(error)
                    if Instant::now() + Duration::from_millis(REMOTE_RECONNECT_MIN_MS)
                        >= deadline =>
                {
                    return Err(error)
                }
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(error)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(REMOTE_RECONNECT_MIN_MS)),
            }
        }
        state
            .capacity
            .ok_or_else(|| io::Error::other("no capacity known"))
    }

    pub fn read(&self, buf: &mut [u8], offset_bytes: u64, block: u32) -> io::Result<()> {
        let len =
            u32::try_from(buf.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let ptr = buf.as_mut_ptr();
        let lba = offset_bytes / u64::from(block);
        // SAFETY: `buf` is borrowed for the whole call, and `command` drops the connection
        // (freeing the task) before returning on any path where the task may still be live.
        self.command("READ (16)", &mut |c, _| unsafe {
            c.read16(SLOT, lba, ptr, len, block)
        })
    }

    pub fn write(&self, buf: &[u8], offset_bytes: u64, block: u32, fua: bool) -> io::Result<()> {
        let len =
            u32::try_from(buf.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let ptr = buf.as_ptr();
        let lba = offset_bytes / u64::from(block);
        // SAFETY: as for `read`.
        self.command("WRITE (16)", &mut |c, _| unsafe {
            c.write16(SLOT, lba, ptr, len, block, fua)
        })
    }

    pub fn write_zeroes(&self, offset_bytes: u64, len_bytes: u64, block: u32) -> io::Result<()> {
        let mut next = offset_bytes;
        let end = offset_bytes + len_bytes;
        let zeroes = self.zeroes.as_ptr();
        while next < end {
            let unmap = self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .write_same_unmap;
            let chunk = if unmap {
                (end - next).min(ISCSI_WRITE_SAME_CHUNK_BLOCKS * u64::from(block))
            } else {
                (end - next).min(ISCSI_ZERO_CHUNK_BYTES as u64)
            };
            let lba = next / u64::from(block);
            // SAFETY: the zero buffer lives as long as the driver and holds a chunk.
            self.command("zeroing", &mut |c, unmap| unsafe {
                if !unmap && chunk > ISCSI_ZERO_CHUNK_BYTES as u64 {
                    Err("the array no longer takes WRITE SAME with UNMAP".to_string())
                } else if unmap {
                    c.write_same16_unmap(
                        SLOT,
                        lba,
                        (chunk / u64::from(block)) as u32,
                        zeroes,
                        block,
                    )
                } else {
                    c.write16(SLOT, lba, zeroes, chunk as u32, block, false)
                }
            })?;
            next += chunk;
        }
        Ok(())
    }

    pub fn flush(&self) -> io::Result<()> {
        self.command("SYNCHRONIZE CACHE (16)", &mut |c, _| c.sync_cache16(SLOT))
    }
}
