//! One iSCSI connection (one libiscsi context, one login) and its tasks, as both the reactor's
//! link and the blocking connection use it: nothing here blocks or polls; the owner waits for
//! the socket ([`Connection::fd`], [`Connection::which_events`]) its own way and calls
//! [`Connection::service`].
//!
//! libiscsi calls back from inside `iscsi_service` (and `iscsi_destroy_context`). The
//! callbacks only append an event to a queue this connection owns on the heap, reached through
//! a raw pointer (no Rust reference to it is live while libiscsi runs); the owner drains the
//! queue after each call ([`Connection::next_event`]). Tasks are numbered by *slot* (the link's
//! command index, or a few slots of its own for READ CAPACITY and INQUIRY): each slot holds at
//! most one task, its iovec (data moves straight between the socket and the engine's buffer),
//! and its callback's argument, all at stable heap addresses.
//!
//! A connection is used once: a lost one is destroyed (`iscsi_destroy_context` cancels what it
//! still holds, whose tasks are freed here) and a new one is made. libiscsi's own reconnect is
//! off.

use super::outcome::{classify, Outcome};
use super::IscsiParams;
use crate::backend::iscsi_context::{HeaderDigest, IscsiContext, IscsiContextError, SessionType};
use std::collections::VecDeque;
use std::ffi::{c_int, c_void, CString};

/// What a libiscsi callback reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The connect and login finished (`status` 0: logged in).
    Connected { status: i32 },
    /// The task of `slot` finished with `status`.
    Task { slot: u32, status: i32 },
}

/// Where callbacks report: the events, and why the connect failed (libiscsi's text at that
/// moment; later calls overwrite it, e.g. with its reconnect's complaint).
struct Inbox {
    events: VecDeque<Event>,
    connect_error: Option<String>,
}

/// The argument of a task's callback: where to report, and which slot.
struct CallbackData {
    inbox: *mut Inbox,
    slot: u32,
}

/// How many of libiscsi's latest error messages a thread keeps.
const LOGGED_ERRORS: usize = 4;

thread_local! {
    /// libiscsi's latest error messages on this thread: a failing `iscsi_service` overwrites
    /// its context's error text with its reconnect's complaint ("can not reconnect right
    /// now"), while its log still has the cause (a refused login, a reset connection).
    static LOGGED: std::cell::RefCell<VecDeque<String>> =
        std::cell::RefCell::new(VecDeque::with_capacity(LOGGED_ERRORS));
}

/// libiscsi's log function, at level 1 (errors only): keeps the latest messages.
unsafe extern "C" fn on_log(_level: c_int, message: *const std::ffi::c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: libiscsi passes a NUL-terminated message valid for the call.
    let text = unsafe { std::ffi::CStr::from_ptr(message) }.to_string_lossy();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    LOGGED.with(|logged| {
        let mut logged = logged.borrow_mut();
        if logged.len() == LOGGED_ERRORS {
            logged.pop_front();
        }
        logged.push_back(text);
    });
}

/// The slot argument the connect callback carries.
const CONNECT_SLOT: u32 = u32::MAX;

/// What READ CAPACITY 16 says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub size_bytes: u64,
    pub block_size_bytes: u32,
    /// Logical block provisioning is on (LBPME) and unmapped blocks read as zeroes (LBPRZ).
    pub thin: bool,
    pub reads_zeroes: bool,
}

/// A finished task, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    pub outcome: Outcome,
    pub capacity: Option<Capacity>,
    /// From INQUIRY VPD B2: WRITE SAME (16) with UNMAP is supported (LBPWS).
    pub write_same_unmap: bool,
}

/// One libiscsi connection and its task slots.
pub struct Connection {
    /// `None` only while being dropped.
    context: Option<IscsiContext>,
    /// Owned; freed in `Drop` after the context (whose destruction still calls back).
    inbox: *mut Inbox,
    callbacks: Box<[CallbackData]>,
    connect_callback: Box<CallbackData>,
    iovs: Box<[sds_sys::scsi_iovec]>,
    tasks: Box<[*mut sds_sys::scsi_task]>,
    lun: c_int,
}

// SAFETY: a connection is used by one thread at a time (a link's reactor, or the blocking
// connection's mutex holder); libiscsi contexts are not tied to a thread, only not
// thread-safe, and every pointer here is owned by the connection.
unsafe impl Send for Connection {}

/// libiscsi's callback: queues the event; touches nothing else.
unsafe extern "C" fn on_callback(
    iscsi: *mut sds_sys::iscsi_context,
    status: c_int,
    _command_data: *mut c_void,
    private_data: *mut c_void,
) {
    if private_data.is_null() {
        return;
    }
    // SAFETY: every callback sds registers carries a pointer to a `CallbackData` owned by the
    // connection, which outlives its context (see `Drop`); the queue it points at likewise.
    // No Rust reference to the queue is live while libiscsi runs (the owner only reaches it
    // between libiscsi calls), and its capacity covers every slot, so the push does not
    // allocate on the data path.
    unsafe {
        let data = &*(private_data as *const CallbackData);
        let inbox = &mut *data.inbox;
        let event = if data.slot == CONNECT_SLOT {
            if status != 0 && !iscsi.is_null() {
                // The connect path only (never the data path): keep libiscsi's reason now.
                let text = sds_sys::iscsi_get_error(iscsi);
                if !text.is_null() {
                    let text = std::ffi::CStr::from_ptr(text).to_string_lossy();
                    inbox.connect_error = Some(text.trim_end().to_string());
                }
            }
            Event::Connected { status }
        } else {
            Event::Task {
                slot: data.slot,
                status,
            }
        };
        inbox.events.push_back(event);
    }
}

impl Connection {
    /// Creates a context for `params` with `slots` task slots and starts connecting and
    /// logging in; [`Event::Connected`] says how it went.
    pub fn start(params: &IscsiParams, slots: usize) -> Result<Self, IscsiContextError> {
        let mut context = IscsiContext::new(&params.initiator_iqn)?;
        context.set_target_name(&params.url.target_iqn)?;
        context.set_session_type(SessionType::Normal)?;
        // CRC32C header digests when the array accepts them; libiscsi has no data digest.
        context.set_header_digest(HeaderDigest::Crc32cThenNone)?;
        if let Some((user, secret)) = &params.chap {
            context.set_chap(user, secret)?;
        }
        context.set_auto_reconnect(false);
        LOGGED.with(|logged| logged.borrow_mut().clear());
        // SAFETY: live context; `on_log` is a plain function that only touches this thread's
        // LOGGED; level 1 logs errors only (never on the data path's success).
        unsafe {
            sds_sys::iscsi_set_log_fn(context.raw(), Some(on_log));
            sds_sys::iscsi_set_log_level(context.raw(), 1);
        }
        let inbox = Box::into_raw(Box::new(Inbox {
            events: VecDeque::with_capacity(slots + 2),
            connect_error: None,
        }));
        let mut connection = Self {
            context: Some(context),
            inbox,
            callbacks: (0..slots as u32)
                .map(|slot| CallbackData { inbox, slot })
                .collect(),
            connect_callback: Box::new(CallbackData {
                inbox,
                slot: CONNECT_SLOT,
            }),
            iovs: (0..slots)
                .map(|_| sds_sys::scsi_iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            tasks: vec![std::ptr::null_mut(); slots].into_boxed_slice(),
            lun: c_int::try_from(params.url.lun).unwrap_or(c_int::MAX),
        };
        let portal = CString::new(params.url.portal.as_str()).map_err(|source| {
            IscsiContextError::InteriorNul {
                field: "portal",
                source,
            }
        })?;
        let argument = (&*connection.connect_callback as *const CallbackData).cast_mut();
        let raw = connection.raw();
        // SAFETY: the context is live; `portal` is NUL-terminated and copied by the call; the
        // callback's argument lives in the connection, which outlives the context.
        let status = unsafe {
            sds_sys::iscsi_full_connect_async(
                raw,
                portal.as_ptr(),
                connection.lun,
                Some(on_callback),
                argument.cast(),
            )
        };
        if status != 0 {
            return Err(IscsiContextError::Refused {
                call: "iscsi_full_connect_async",
                source: connection.context_ref().last_error(),
            });
        }
        Ok(connection)
    }

    fn context_ref(&self) -> &IscsiContext {
        // The context is `None` only inside `Drop`.
        self.context
            .as_ref()
            .expect("a connection's context lives until it is dropped")
    }

    fn raw(&mut self) -> *mut sds_sys::iscsi_context {
        self.context
            .as_mut()
            .expect("a connection's context lives until it is dropped")
            .raw()
    }

    /// libiscsi's text of its last error.
    pub fn last_error(&self) -> String {
        self.context_ref().last_error().0.trim_end().to_string()
    }

    pub fn fd(&self) -> Option<c_int> {
        self.context_ref().fd()
    }

    pub fn which_events(&self) -> i16 {
        self.context_ref().which_events()
    }

    /// Lets libiscsi read and write for the poll events `revents`; callbacks queue events.
    /// A negative result: the connection is unusable.
    pub fn service(&mut self, revents: i16) -> c_int {
        let raw = self.raw();
        // SAFETY: the context is live and exclusively ours; the callbacks it may run only
        // append to the event queue (see `on_callback`).
        unsafe { sds_sys::iscsi_service(raw, c_int::from(revents)) }
    }

    /// Why the last [`Connection::service`] failed: the latest error libiscsi logged that is
    /// not its complaint about reconnecting, else its context's error text.
    pub fn service_error(&self) -> String {
        LOGGED
            .with(|logged| {
                logged
                    .borrow()
                    .iter()
                    .rev()
                    .find(|text| !text.contains("reconnect"))
                    .cloned()
            })
            .unwrap_or_else(|| self.last_error())
    }

    /// The next event a callback queued.
    pub fn next_event(&mut self) -> Option<Event> {
        // SAFETY: the queue is owned by the connection and no libiscsi call runs now (we hold
        // `&mut self`), so this is the only reference to it.
        unsafe { (*self.inbox).events.pop_front() }
    }

    /// Why the connect or login failed, as libiscsi said when it did; else its last error.
    pub fn connect_error(&self) -> String {
        // SAFETY: as in `next_event` (`&self`: no libiscsi call runs now).
        let saved = unsafe { (*self.inbox).connect_error.clone() };
        format!(
            "connect or login failed: {}",
            saved.unwrap_or_else(|| self.last_error())
        )
    }

    /// Whether `slot` has a task in flight.
    pub fn busy(&self, slot: u32) -> bool {
        self.tasks
            .get(slot as usize)
            .is_some_and(|task| !task.is_null())
    }

    /// Stores a task libiscsi returned for `slot`, or reports why there is none.
    fn started(&mut self, slot: u32, task: *mut sds_sys::scsi_task) -> Result<(), String> {
        if task.is_null() {
            return Err(self.last_error());
        }
        self.tasks[slot as usize] = task;
        Ok(())
    }

    fn slot_args(&mut self, slot: u32) -> Result<(*mut c_void, *mut sds_sys::scsi_iovec), String> {
        let index = slot as usize;
        if index >= self.tasks.len() || !self.tasks[index].is_null() {
            return Err(format!("task slot {slot} is busy or out of range"));
        }
        Ok((
            (&self.callbacks[index] as *const CallbackData)
                .cast_mut()
                .cast(),
            &mut self.iovs[index] as *mut sds_sys::scsi_iovec,
        ))
    }

    /// READ (16) of `len_bytes` at `lba` straight into `buf`.
    ///
    /// # Safety
    /// `buf` must be valid for `len_bytes` writes until the task's event has been taken and
    /// [`Connection::finish`] called for the slot, or the connection is dropped.
    pub unsafe fn read16(
        &mut self,
        slot: u32,
        lba: u64,
        buf: *mut u8,
        len_bytes: u32,
        block_size_bytes: u32,
    ) -> Result<(), String> {
        let (argument, iov) = self.slot_args(slot)?;
        // SAFETY: `iov` points into this connection's slot array (stable, unused by any other
        // task); the caller keeps `buf` valid while the task lives.
        unsafe {
            (*iov).iov_base = buf.cast();
            (*iov).iov_len = len_bytes as usize;
        }
        let raw = self.raw();
        // SAFETY: live context; the iovec and callback argument outlive the task (both are
        // the connection's); libiscsi reads into `buf` through the iovec.
        let task = unsafe {
            sds_sys::iscsi_read16_iov_task(
                raw,
                self.lun,
                lba,
                len_bytes,
                block_size_bytes as c_int,
                0,
                0,
                0,
                0,
                0,
                Some(on_callback),
                argument,
                iov,
                1,
            )
        };
        self.started(slot, task)
    }

    /// WRITE (16) of `len_bytes` from `buf` at `lba`, FUA if asked.
    ///
    /// # Safety
    /// As for [`Connection::read16`]; `buf` is only read.
    pub unsafe fn write16(
        &mut self,
        slot: u32,
        lba: u64,
        buf: *const u8,
        len_bytes: u32,
        block_size_bytes: u32,
        fua: bool,
    ) -> Result<(), String> {
        let (argument, iov) = self.slot_args(slot)?;
        // SAFETY: as in `read16`; libiscsi only reads the data through the iovec.
        unsafe {
            (*iov).iov_base = buf.cast_mut().cast();
            (*iov).iov_len = len_bytes as usize;
        }
        let raw = self.raw();
        // SAFETY: live context; data NULL with an iovec (libiscsi sends from the iovec, which
        // with the callback argument outlives the task).
        let task = unsafe {
            sds_sys::iscsi_write16_iov_task(
                raw,
                self.lun,
                lba,
                std::ptr::null_mut(),
                len_bytes,
                block_size_bytes as c_int,
                0,
                0,
                c_int::from(fua),
                0,
                0,
                Some(on_callback),
                argument,
                iov,
                1,
            )
        };
        self.started(slot, task)
    }

    /// WRITE SAME (16) of `blocks` blocks from the one block at `block` (zeroes), with UNMAP.
    ///
    /// # Safety
    /// `block` must hold one block and stay valid until the task is finished (libiscsi copies
    /// it into the PDU when it builds it, but the bound is kept as for the other tasks).
    pub unsafe fn write_same16_unmap(
        &mut self,
        slot: u32,
        lba: u64,
        blocks: u32,
        block: *const u8,
        block_size_bytes: u32,
    ) -> Result<(), String> {
        let (argument, _) = self.slot_args(slot)?;
        let raw = self.raw();
        // SAFETY: live context; `block` holds `block_size_bytes` bytes (caller).
        let task = unsafe {
            sds_sys::iscsi_writesame16_task(
                raw,
                self.lun,
                lba,
                block.cast_mut(),
                block_size_bytes,
                blocks,
                0,
                1,
                0,
                0,
                Some(on_callback),
                argument,
            )
        };
        self.started(slot, task)
    }

    /// SYNCHRONIZE CACHE (16) of the whole LUN.
    pub fn sync_cache16(&mut self, slot: u32) -> Result<(), String> {
        let (argument, _) = self.slot_args(slot)?;
        let raw = self.raw();
        // SAFETY: live context; the callback argument outlives the task.
        let task = unsafe {
            sds_sys::iscsi_synchronizecache16_task(
                raw,
                self.lun,
                0,
                0,
                0,
                0,
                Some(on_callback),
                argument,
            )
        };
        self.started(slot, task)
    }

    /// READ CAPACITY (16).
    pub fn read_capacity16(&mut self, slot: u32) -> Result<(), String> {
        let (argument, _) = self.slot_args(slot)?;
        let raw = self.raw();
        // SAFETY: live context; the callback argument outlives the task.
        let task = unsafe {
            sds_sys::iscsi_readcapacity16_task(raw, self.lun, Some(on_callback), argument)
        };
        self.started(slot, task)
    }

    /// INQUIRY of the Logical Block Provisioning VPD page (B2h).
    pub fn inquiry_provisioning(&mut self, slot: u32) -> Result<(), String> {
        let (argument, _) = self.slot_args(slot)?;
        let raw = self.raw();
        // SAFETY: live context; the callback argument outlives the task.
        let task = unsafe {
            sds_sys::iscsi_inquiry_task(raw, self.lun, 1, 0xB2, 64, Some(on_callback), argument)
        };
        self.started(slot, task)
    }

    /// A NOP-Out the array answers with a NOP-In (a ping); its event comes on `slot`, with no
    /// task to finish.
    pub fn nop_out(&mut self, slot: u32) -> Result<(), String> {
        let (argument, _) = self.slot_args(slot)?;
        let raw = self.raw();
        // SAFETY: live context; no data; the callback argument outlives the PDU (it lives in
        // the connection, and destroying the context cancels the PDU first).
        let status = unsafe {
            sds_sys::iscsi_nop_out_async(raw, Some(on_callback), std::ptr::null_mut(), 0, argument)
        };
        if status != 0 {
            return Err(self.last_error());
        }
        Ok(())
    }

    /// Decodes and frees the task of `slot` that finished with `status`.
    pub fn finish(&mut self, slot: u32, status: i32) -> Finished {
        let mut finished = Finished {
            outcome: Outcome::ConnectionLost,
            capacity: None,
            write_same_unmap: false,
        };
        let Some(task) = self
            .tasks
            .get_mut(slot as usize)
            .map(|task| std::mem::replace(task, std::ptr::null_mut()))
        else {
            return finished;
        };
        if task.is_null() {
            return finished;
        }
        // SAFETY: `task` came from libiscsi for this slot and has finished (its callback ran),
        // so it is ours to read and free; it is freed exactly once, here (the slot is cleared).
        unsafe {
            let fields = &*task;
            let short = fields.residual_status == sds_sys::scsi_residual::SCSI_RESIDUAL_UNDERFLOW
                && fields.residual > 0;
            finished.outcome = classify(status, fields.sense.key, fields.sense.ascq, short);
            if finished.outcome == Outcome::Good {
                let opcode = fields.cdb[0];
                if opcode == 0x9E {
                    let data = sds_sys::scsi_datain_unmarshall(task);
                    if !data.is_null() {
                        let capacity = &*(data as *const sds_sys::scsi_readcapacity16);
                        finished.capacity = Some(Capacity {
                            size_bytes: capacity
                                .returned_lba
                                .saturating_add(1)
                                .saturating_mul(u64::from(capacity.block_length)),
                            block_size_bytes: capacity.block_length,
                            thin: capacity.lbpme != 0,
                            reads_zeroes: capacity.lbprz != 0,
                        });
                    } else {
                        finished.outcome = Outcome::Failed(libc::EIO);
                    }
                } else if opcode == 0x12 {
                    let data = sds_sys::scsi_datain_unmarshall(task);
                    if !data.is_null() {
                        let page =
                            &*(data as *const sds_sys::scsi_inquiry_logical_block_provisioning);
                        finished.write_same_unmap = page.lbpws != 0;
                    }
                }
            }
            sds_sys::scsi_free_scsi_task(task);
        }
        finished
    }

    /// Shuts the socket down: a poll posted on it completes at once (the owner then drops the
    /// connection).
    pub fn shutdown_socket(&self) {
        if let Some(fd) = self.fd() {
            // SAFETY: `fd` is the context's live socket; shutdown changes no memory.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Destroying the context closes the socket and cancels what it holds; the callbacks of
        // the cancelled PDUs still write to the event queue, so it goes after.
        drop(self.context.take());
        for task in self.tasks.iter_mut() {
            if !task.is_null() {
                // SAFETY: a task of ours whose PDU the destroyed context no longer refers to;
                // freed once (nulled).
                unsafe {
                    sds_sys::scsi_free_scsi_task(std::mem::replace(task, std::ptr::null_mut()))
                };
            }
        }
        // SAFETY: `inbox` came from `Box::into_raw` in `start` and is freed once, here, after
        // the context that could call back into it is gone.
        drop(unsafe { Box::from_raw(self.inbox) });
    }
}
