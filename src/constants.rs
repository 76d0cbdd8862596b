//! Every bound in the server, in one place. A host's or an administrator's request past one of
//! these is refused with an error, never allocated. Relationships between them are checked at
//! compile time below.

/// Largest data payload of one host I/O. Advertised to NBD clients as the maximum block size;
/// a larger request is refused with EINVAL and its payload discarded, never buffered.
pub const MAX_IO_BYTES: usize = 4 * 1024 * 1024;
/// Largest request a client may send when it did not negotiate block sizes (NBD spec: 32 MiB).
pub const MAX_UNNEGOTIATED_IO_BYTES: usize = 32 * 1024 * 1024;
/// Requests in flight on one front-end connection.
pub const MAX_INFLIGHT_PER_CONNECTION: usize = 128;
/// Bytes of request buffers one connection may hold at once; requests beyond wait.
pub const MAX_BUFFER_BYTES_PER_CONNECTION: usize = 64 * 1024 * 1024;
/// Bytes of request buffers all front-end connections together hold (requests in flight and
/// replies waiting to be sent); a connection past it waits for its own replies to drain, but
/// one holding nothing may always take one request (see `target::buffer_budget`).
pub const MAX_BUFFER_BYTES_TOTAL: usize = 512 * 1024 * 1024;
/// Bytes of request buffers a connection keeps allocated for reuse; past it, a released
/// request's buffer is freed (so idle slots cannot pin a connection's peak forever).
pub const MAX_RETAINED_BUFFER_BYTES_PER_CONNECTION: usize = MAX_BUFFER_BYTES_PER_CONNECTION;
/// Bytes of the receive buffer each NBD connection reads request headers into.
pub const NBD_RECV_BUFFER_BYTES: usize = 256 * 1024;
/// Front-end connections one reactor serves.
pub const MAX_CONNECTIONS_PER_REACTOR: usize = 256;
/// Sessions that may have one volume open at once: every session of every reactor.
pub const MAX_OPENS_PER_VOLUME: usize = MAX_REACTORS * MAX_CONNECTIONS_PER_REACTOR;
/// Submission queue entries of each reactor's io_uring.
pub const RING_ENTRIES: u32 = 1024;
/// Completion queue entries of each reactor's io_uring (a power of two): also the most entries
/// a reactor has in flight, so its completion queue never overflows.
pub const RING_CQ_ENTRIES: u32 = 4096;
pub const MAX_RING_IN_FLIGHT: usize = RING_CQ_ENTRIES as usize;
/// Ring entries one LUN I/O may take: a FUA zeroing is a linked fallocate + fdatasync pair,
/// and a fault LUN's delay adds a timer.
pub const MAX_RING_ENTRIES_PER_LUN_IO: usize = 3;
/// Ring entries one round of a host request may take (its segments, or a flush of every LUN
/// of its pool): a session starts a round only with this much ring credit, else it waits.
pub const MAX_RING_ENTRIES_PER_ROUND: usize = if MAX_SEGMENTS_PER_IO > MAX_LUNS_PER_POOL {
    MAX_SEGMENTS_PER_IO * MAX_RING_ENTRIES_PER_LUN_IO
} else {
    MAX_LUNS_PER_POOL * MAX_RING_ENTRIES_PER_LUN_IO
};
/// Longest single QoS timer of a session's engine: a session that is closing never waits
/// longer than this for it.
pub const MAX_QOS_TIMER_NS: u64 = 50_000_000;
/// Ring entries kept for what sessions post besides LUN I/O, which never waits for credit:
/// each session has at most one receive, one send and one timer posted (an NBD session's QoS
/// timer, an iSCSI session's keep-alive tick), and the reactor its mailbox read and, at
/// shutdown, its cancel. The QoS timers of an iSCSI session's engines (one per LUN) are not
/// counted: on a ring with no entry left, an engine fails its throttled requests with an I/O
/// error rather than leave them waiting forever.
pub const RING_RESERVED_ENTRIES: usize = 3 * MAX_CONNECTIONS_PER_REACTOR + 2;
/// Reactors (poller threads) in one server.
pub const MAX_REACTORS: usize = 64;
/// Messages waiting in one reactor's mailbox.
pub const MAILBOX_CAPACITY: usize = 1024;
/// NBD connections negotiating at once, each on its own handshake thread (TLS included); a
/// connection past this or the per-source bounds below is closed at once
/// (`target::nbd::handshake_slots`).
pub const MAX_HANDSHAKES: usize = 64;
/// Of those, handshakes of peers that no host record names by address or user id (they
/// cannot take the slots of the hosts that have one; see `target::handshake_slots`).
pub const MAX_UNKNOWN_HANDSHAKES: usize = 16;
/// Handshakes one source address (or Unix user id) that no host record names may have in
/// progress at once.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 16;
/// Handshakes one source that a host record names may have in progress at once: room for a
/// burst of connections from one host (fio jobs, nbdcopy's connections, a hypervisor
/// reattaching its disks), while half the slots stay free for the other hosts.
pub const MAX_HANDSHAKES_PER_KNOWN_ADDRESS: usize = MAX_HANDSHAKES / 2;
/// Seconds a client may take for its whole NBD handshake (every read and write of the
/// negotiation together, TLS included); the default of `--nbd-handshake-timeout-secs`.
pub const HANDSHAKE_TIMEOUT_SECS: u64 = 30;
/// Longest `--nbd-handshake-timeout-secs`.
pub const MAX_HANDSHAKE_TIMEOUT_SECS: u64 = 600;
/// Largest NBD option payload accepted during the handshake.
pub const MAX_NBD_OPTION_BYTES: usize = 64 * 1024;
/// Requests one SendMsg of a remote NBD LUN's link carries at most (`backend::nbd_client::link`):
/// the link gathers the headers (and write payloads) of the requests waiting to go out into
/// one send of up to twice this many iovecs.
pub const NBD_LINK_MAX_SEND_BATCH: usize = 32;
const _: () = assert!(2 * NBD_LINK_MAX_SEND_BATCH <= 1024); // IOV_MAX
/// Bytes of the receive buffer of a remote NBD LUN's link: one receive takes every reply
/// that has arrived (headers and small reads' data, copied out from there).
pub const NBD_LINK_RECV_BUFFER_BYTES: usize = 64 * 1024;
/// A read's data at least this long is received straight into the read's buffer, not copied
/// through the link's receive buffer.
pub const NBD_LINK_DIRECT_RECV_BYTES: usize = 32 * 1024;
const _: () = assert!(NBD_LINK_DIRECT_RECV_BYTES <= NBD_LINK_RECV_BUFFER_BYTES);

/// iSCSI (`target::iscsi`): the largest data segment this target accepts in one PDU, declared
/// to every initiator as MaxRecvDataSegmentLength.
pub const ISCSI_MAX_RECV_DATA_SEGMENT_BYTES: u32 = 256 * 1024;
/// This target's offer of MaxBurstLength (the most data in one Data-In or solicited Data-Out
/// sequence) and FirstBurstLength (the most immediate and unsolicited data of one command);
/// a login settles on the smaller of these and the initiator's.
pub const ISCSI_MAX_BURST_BYTES: u32 = 1024 * 1024;
pub const ISCSI_FIRST_BURST_BYTES: u32 = 256 * 1024;
/// This target's offer of MaxOutstandingR2T: R2Ts one command may have unanswered.
pub const ISCSI_MAX_OUTSTANDING_R2T: u32 = 1;
/// The login's text format: the longest key (RFC 7143 §6.1: 63 bytes), the longest value
/// (room for a CHAP challenge or response in hex), the most text of one login or text
/// exchange (across continued PDUs), and the most key=value pairs in it.
pub const MAX_ISCSI_KEY_BYTES: usize = 63;
pub const MAX_ISCSI_VALUE_BYTES: usize = 8192;
pub const MAX_ISCSI_TEXT_BYTES: usize = 64 * 1024;
pub const MAX_ISCSI_TEXT_PAIRS: usize = 256;
/// The largest data segment a login or discovery PDU may carry (what this target declares
/// during login is its default, 8192, until the operational stage says otherwise; it reads
/// up to this much so an initiator that sends a large first PDU is not cut off).
pub const ISCSI_LOGIN_DATA_SEGMENT_BYTES: u32 = 64 * 1024;
/// Login and discovery PDUs one handshake may exchange before it is refused: a login takes a
/// handful, a SendTargets answer a few more.
pub const MAX_ISCSI_LOGIN_PDUS: usize = 64;
/// PDUs one discovery session may exchange (its login excluded) before it is closed.
pub const MAX_ISCSI_DISCOVERY_PDUS: usize = 256;
/// Sessions the iSCSI target serves at once (every kind, discovery included).
pub const MAX_ISCSI_SESSIONS: usize = MAX_CONNECTIONS_PER_REACTOR * MAX_REACTORS;

/// Extent sizes a pool may use: powers of two in this range.
pub const MIN_EXTENT_BYTES: u64 = 64 * 1024;
pub const MAX_EXTENT_BYTES: u64 = 1024 * 1024 * 1024;
pub const DEFAULT_EXTENT_BYTES: u64 = 1024 * 1024;
/// A pool's space threshold (`pool_set_threshold`), in percent of its capacity: the default,
/// and the largest (a threshold of 100 warns only when the pool is full).
pub const DEFAULT_POOL_THRESHOLD_PERCENT: u8 = 80;
pub const MAX_POOL_THRESHOLD_PERCENT: u8 = 100;
/// Pieces one host I/O can be split into when it crosses extent boundaries.
pub const MAX_SEGMENTS_PER_IO: usize = MAX_IO_BYTES / MIN_EXTENT_BYTES as usize + 1;
/// LUNs in one pool (the pool-local LUN index fits the mapping slot's 16-bit field).
pub const MAX_LUNS_PER_POOL: usize = 64;
/// Entries of a composite volume's LUN table (every pool LUN of every part): the engine's
/// 8-bit LUN field in ring tags indexes it.
pub const MAX_COMPOSITE_LUNS: usize = 256;
/// Parts of one composite volume (members of a volume set, legs of a mirror).
pub const MAX_COMPOSITE_PARTS: usize = 32;
/// Stripe size of a stripe volume set when `volume_set_create` is given none.
pub const DEFAULT_STRIPE_BYTES: u64 = 64 * 1024;
/// Largest stripe size of a stripe volume set.
pub const MAX_STRIPE_BYTES: u64 = 16 * 1024 * 1024;
/// Virtual extents of one volume.
pub const MAX_VOLUME_EXTENTS: u64 = 1 << 26;
/// Slots in one chunk of a volume's mapping table (a chunk is allocated on its first write).
pub const MAP_CHUNK_SLOTS: usize = 4096;
/// Chunk pointers in the fixed top level of a volume's mapping table: enough for the largest
/// volume, so growing never copies the table.
pub const MAP_TOP_CHUNKS: usize = MAX_VOLUME_EXTENTS as usize / MAP_CHUNK_SLOTS;

/// Longest chain of lineages a view looks through (a clone of a snapshot of a clone ...): a
/// clone or a revert that would go deeper is refused.
pub const MAX_LINEAGE_DEPTH: usize = 16;
/// How long taking a snapshot waits for the origin's writes in flight to complete (a LUN that
/// never answers fails the snapshot instead of hanging the provisioning thread).
pub const WRITE_GATE_DRAIN_TIMEOUT_MS: u64 = 30_000;
/// Bytes one step of a copy-on-write copies (the provisioning thread's buffer for it).
pub const COW_COPY_BYTES: usize = MAX_IO_BYTES;

/// LUNs, pools and volumes one server manages.
pub const MAX_LUNS: usize = 1024;
pub const MAX_POOLS: usize = 256;
pub const MAX_VOLUMES: usize = 4096;
/// Longest name of a LUN, pool or volume (also the NBD export name).
pub const MAX_NAME_BYTES: usize = 64;

/// Longest string libiscsi keeps for one iSCSI name or setting (initiator and target IQN,
/// alias, CHAP user and secret): its fixed buffers hold `MAX_STRING_SIZE` bytes and silently
/// truncate a longer one, so sds refuses it instead.
pub const MAX_ISCSI_STRING_BYTES: usize = 255;

/// Largest JSON-RPC request, and clients connected to the management socket at once.
pub const MAX_RPC_REQUEST_BYTES: usize = 1024 * 1024;
pub const MAX_RPC_CONNECTIONS: usize = 64;
/// Seconds a management connection may stay idle (no complete request since its last answer)
/// before it is closed. A full socket also evicts its longest-idle connection at once.
pub const RPC_IDLE_TIMEOUT_SECS: u64 = 30;
/// Requests waiting for the control thread.
pub const CONTROL_QUEUE_CAPACITY: usize = 256;
/// Provisioning requests the provisioning thread commits as one group.
pub const METADATA_BATCH_MAX: usize = 4096;

const _: () = assert!(MAX_IO_BYTES <= MAX_UNNEGOTIATED_IO_BYTES);
const _: () = assert!(
    MAX_ISCSI_STRING_BYTES == sds_sys::MAX_STRING_SIZE as usize,
    "libiscsi's own buffer size"
);
const _: () = assert!(MAX_IO_BYTES <= MAX_BUFFER_BYTES_PER_CONNECTION);
const _: () = assert!(MAX_BUFFER_BYTES_PER_CONNECTION <= MAX_BUFFER_BYTES_TOTAL);
const _: () = assert!(MAX_IO_BYTES <= MAX_RETAINED_BUFFER_BYTES_PER_CONNECTION);
const _: () = assert!(NBD_RECV_BUFFER_BYTES >= 4096);
const _: () = assert!(MIN_EXTENT_BYTES.is_power_of_two() && MAX_EXTENT_BYTES.is_power_of_two());
const _: () =
    assert!(DEFAULT_EXTENT_BYTES >= MIN_EXTENT_BYTES && DEFAULT_EXTENT_BYTES <= MAX_EXTENT_BYTES);
const _: () = assert!(MAX_LUNS_PER_POOL < (1 << 16));
const _: () = assert!(
    DEFAULT_POOL_THRESHOLD_PERCENT >= 1
        && DEFAULT_POOL_THRESHOLD_PERCENT <= MAX_POOL_THRESHOLD_PERCENT
);
const _: () = assert!(
    DEFAULT_STRIPE_BYTES.is_power_of_two()
        && MAX_STRIPE_BYTES.is_power_of_two()
        && DEFAULT_STRIPE_BYTES <= MAX_STRIPE_BYTES
);
const _: () = assert!(MAX_VOLUME_EXTENTS % MAP_CHUNK_SLOTS as u64 == 0 && MAP_TOP_CHUNKS > 0);
const _: () = assert!(MAX_INFLIGHT_PER_CONNECTION <= 256);
const _: () = assert!(MAX_CONNECTIONS_PER_REACTOR <= 1 << 16);
const _: () = assert!((RING_ENTRIES as usize) >= MAX_INFLIGHT_PER_CONNECTION * 2);
const _: () = assert!(RING_CQ_ENTRIES.is_power_of_two() && RING_CQ_ENTRIES >= RING_ENTRIES);
const _: () = assert!(MAX_RING_IN_FLIGHT <= RING_CQ_ENTRIES as usize);
// LUN I/O always has room for at least a few rounds beside the reserved entries.
const _: () = assert!(RING_RESERVED_ENTRIES + 4 * MAX_RING_ENTRIES_PER_ROUND <= MAX_RING_IN_FLIGHT);

/// Memory kept back from RAM LUNs: every `mem` LUN together must fit in `MemAvailable` (of
/// /proc/meminfo, when one is created) less this, so the server and the machine keep room.
pub const MEM_LUN_RESERVE_BYTES: u64 = 1 << 30;

/// A LUN's I/O errors are logged at most once per this many milliseconds per I/O type (each
/// line with the count it stands for): the control thread writes them, never a reactor.
pub const LUN_ERROR_LOG_INTERVAL_MS: u64 = 1000;
const _: () = assert!(LUN_ERROR_LOG_INTERVAL_MS >= DEFAULT_CYCLE_MS);

/// How often, and how many milliseconds apart, a server refused the state directory's lock
/// reads the holder's pid (the holder writes it just after locking), and the longest pid text
/// it reads.
pub const STATE_LOCK_HOLDER_READ_ATTEMPTS: u32 = 20;
pub const STATE_LOCK_HOLDER_READ_INTERVAL_MS: u64 = 10;
pub const MAX_STATE_LOCK_HOLDER_BYTES: usize = 32;

/// How long start-up waits, for all LUNs together, for a LUN's file or device that another
/// open holds (a server killed with SIGKILL frees its claims only when the kernel has torn
/// down its io_uring), and how often it tries again meanwhile.
pub const LUN_CLAIM_WAIT_MS: u64 = 2_000;
pub const LUN_CLAIM_RETRY_MS: u64 = 50;
const _: () = assert!(LUN_CLAIM_RETRY_MS < LUN_CLAIM_WAIT_MS);

/// Longest delay a fault LUN may inject into one I/O (`lun_inject_fault`, mode `delay`).
pub const MAX_FAULT_DELAY_US: u64 = 10_000_000;

/// NBD sessions one host may have open at once, unless its record says otherwise
/// (`host_create`/`host_set` `max_sessions`): below what one reactor serves, so that a single
/// host cannot take every session the server has.
pub const DEFAULT_MAX_SESSIONS_PER_HOST: usize = 64;
/// Largest `max_sessions` a host record may set: every session of the largest server.
pub const MAX_SESSIONS_PER_HOST: usize = MAX_CONNECTIONS_PER_REACTOR * MAX_REACTORS;
const _: () = assert!(DEFAULT_MAX_SESSIONS_PER_HOST < MAX_CONNECTIONS_PER_REACTOR);
const _: () = assert!(DEFAULT_MAX_SESSIONS_PER_HOST <= MAX_SESSIONS_PER_HOST);

/// Hosts, storage domains and virtual paths one server manages.
pub const MAX_HOSTS: usize = 4096;
pub const MAX_DOMAINS: usize = 256;
pub const MAX_VPATHS: usize = 16384;
/// Addresses one host may list, and the longest identity string (TLS subject, IQN, NQN).
pub const MAX_HOST_ADDRESSES: usize = 64;
pub const MAX_IDENTITY_BYTES: usize = 1024;
/// The longest iSCSI name, a host's `iqn` (RFC 7143 §4.2.7: 223 bytes).
pub const MAX_ISCSI_NAME_BYTES: usize = 223;
/// The longest NVMe Qualified Name, a host's `nqn` (NVMe base 2.0 §4.5: 223 bytes).
pub const MAX_NQN_BYTES: usize = 223;
/// A host's CHAP secrets (`host_set_chap`): RFC 7143 §12.1.3 wants at least 12 bytes (96
/// bits) of secret; 255 bytes is what initiators such as open-iscsi accept.
pub const MIN_CHAP_SECRET_BYTES: usize = 12;
pub const MAX_CHAP_SECRET_BYTES: usize = 255;
/// The longest CHAP user name (CHAP_N) a host may be given.
pub const MAX_CHAP_USER_BYTES: usize = 255;
/// The control loop's default cycle, and the bounds of `--cycle-ms`.
pub const DEFAULT_CYCLE_MS: u64 = 100;
pub const MIN_CYCLE_MS: u64 = 10;
pub const MAX_CYCLE_MS: u64 = 10_000;
/// The largest `sds serve --config` file read: a configuration is a few dozen lines, and a
/// file past this is a mistake (a log or an image named by accident), refused, not read.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;
/// The systemd watchdog (`WatchdogSec=`): the control thread pings this many times per
/// watchdog period, so one late cycle does not get a healthy server killed.
pub const WATCHDOG_PINGS_PER_PERIOD: u32 = 2;
/// The longest a test may wedge a reactor (`reactor_wedge`, refused unless SDS_TEST_FAULTS=1):
/// long enough for a watchdog to notice, short enough that the server shuts down after.
pub const MAX_REACTOR_WEDGE_MS: u64 = 60_000;

/// NBD connections over TLS at once, handshaking or relayed (each relayed one has its own
/// thread; see `target::nbd::tls`). A client past it gets NBD_REP_ERR_POLICY to
/// NBD_OPT_STARTTLS.
pub const MAX_TLS_CONNECTIONS: usize = 256;
/// Plaintext bytes a TLS relay holds in each direction, and the limit on rustls's own
/// buffers of unsent records for that connection.
pub const TLS_RELAY_BUFFER_BYTES: usize = 128 * 1024;
/// Seconds a TLS relay keeps trying to deliver its last replies after the session closed.
pub const TLS_RELAY_LINGER_SECS: u64 = 5;
/// Largest PEM file accepted for `--tls-cert`, `--tls-key` and `--tls-client-ca`.
pub const MAX_TLS_PEM_BYTES: usize = 1024 * 1024;
const _: () = assert!(MAX_TLS_CONNECTIONS >= MAX_HANDSHAKES);
// Strangers get a minority of the handshake slots; one source a minority of theirs.
const _: () = assert!(MAX_UNKNOWN_HANDSHAKES * 2 <= MAX_HANDSHAKES);
const _: () = assert!(MAX_HANDSHAKES_PER_ADDRESS <= MAX_UNKNOWN_HANDSHAKES);
const _: () = assert!(
    MAX_HANDSHAKES_PER_KNOWN_ADDRESS >= MAX_HANDSHAKES_PER_ADDRESS
        && MAX_HANDSHAKES_PER_KNOWN_ADDRESS < MAX_HANDSHAKES - MAX_UNKNOWN_HANDSHAKES
);
const _: () =
    assert!(HANDSHAKE_TIMEOUT_SECS >= 1 && HANDSHAKE_TIMEOUT_SECS <= MAX_HANDSHAKE_TIMEOUT_SECS);
// A relay buffer holds at least one whole TLS record (16 KiB of plaintext and its overhead).
const _: () = assert!(TLS_RELAY_BUFFER_BYTES >= 16 * 1024 + 256);
const _: () = assert!(ISCSI_FIRST_BURST_BYTES <= ISCSI_MAX_BURST_BYTES);
const _: () = assert!(ISCSI_MAX_BURST_BYTES as usize <= MAX_IO_BYTES);
const _: () = assert!(
    ISCSI_MAX_RECV_DATA_SEGMENT_BYTES >= 512 && ISCSI_MAX_RECV_DATA_SEGMENT_BYTES < (1 << 24)
);
const _: () = assert!(ISCSI_LOGIN_DATA_SEGMENT_BYTES as usize <= MAX_ISCSI_TEXT_BYTES);

// ---- SCSI layer (src/scsi) ------------------------------------------------------------------

/// Commands one `ScsiLun` holds at once (its task table); a transport past it answers TASK
/// SET FULL. The LUN's block engine gets at least this many slots, so every task that does
/// I/O finds one.
pub const SCSI_TASKS_PER_LUN: usize = 64;
/// Bytes of fixed-format sense data a task returns (SPC-4 4.5.3, with the sense-key specific
/// bytes; no additional sense bytes past byte 17).
pub const SCSI_SENSE_BYTES: usize = 18;
/// Bytes of a task's own buffer kept for reuse after release (the buffer answers the
/// non-I/O commands and takes parameter lists, CAW and VERIFY data): past it, a task that
/// needed a large buffer gives it back.
pub const SCSI_RETAINED_TASK_BUFFER_BYTES: usize = 64 * 1024;
/// Largest parameter list accepted (MODE SELECT, PERSISTENT RESERVE OUT, UNMAP).
pub const SCSI_MAX_PARAMETER_LIST_BYTES: usize = 8 + 16 * SCSI_MAX_UNMAP_DESCRIPTORS;
/// UNMAP block descriptors in one command (VPD B0 MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT).
pub const SCSI_MAX_UNMAP_DESCRIPTORS: usize = 256;
/// Blocks one UNMAP descriptor or WRITE SAME may cover (VPD B0 MAXIMUM UNMAP LBA COUNT and
/// MAXIMUM WRITE SAME LENGTH): 1 Mi blocks (libiscsi's conformance test holds an explicit
/// limit above that to be insane); the layer cuts them into engine requests.
pub const SCSI_MAX_UNMAP_BLOCKS: u64 = 1 << 20;
/// Bytes of one TRIM or WRITE_ZEROES engine request the layer makes from UNMAP or WRITE SAME.
pub const SCSI_MAX_ZEROING_REQUEST_BYTES: u64 = 1 << 30;
/// Bytes of COMPARE AND WRITE data (verify plus write halves) at most: VPD B0 reports the
/// largest block count that fits.
pub const SCSI_MAX_COMPARE_AND_WRITE_BYTES: usize = 64 * 1024;
/// COMPARE AND WRITE commands in flight at once on one logical unit, over every session
/// (the interlock's table); past it a CAW answers BUSY.
pub const SCSI_MAX_INTERLOCKED_RANGES: usize = 64;
/// Persistent reservation registrations per logical unit; past it REGISTER answers
/// INSUFFICIENT REGISTRATION RESOURCES.
pub const SCSI_MAX_PR_REGISTRATIONS: usize = 128;
/// Unit attentions queued per I_T nexus beyond the standing ones (SPC-4 lets the oldest be
/// dropped: the newest is then reported as overflow is not needed for our few kinds).
pub const SCSI_MAX_PENDING_UNIT_ATTENTIONS: usize = 16;
/// Extents GET LBA STATUS looks at for one answer: its last descriptor ends there (the
/// initiator asks again from that LBA), so a huge volume is never walked whole on a reactor.
pub const SCSI_MAX_LBA_STATUS_EXTENTS: u64 = 4096;
/// Largest persistent-reservation state file read back at start.
pub const SCSI_MAX_PR_FILE_BYTES: u64 = 1024 * 1024;
const _: () = assert!(SCSI_TASKS_PER_LUN <= crate::blockio::tag::MAX_SLOTS);
const _: () = assert!(SCSI_MAX_ZEROING_REQUEST_BYTES <= u32::MAX as u64);
const _: () = assert!(SCSI_MAX_COMPARE_AND_WRITE_BYTES <= MAX_IO_BYTES);

// ---- iSCSI full-feature phase (src/target/iscsi/session.rs) ----

/// Commands an iSCSI session may have outstanding, over all its LUNs (the CmdSN window when
/// none is).
pub const ISCSI_CMD_WINDOW: u32 = 64;
/// Additional header segments of one PDU at most (an extended CDB needs 260 bytes).
pub const ISCSI_MAX_AHS_BYTES: usize = 1024;
/// Engine slots numbered per LUN of an iSCSI session: LUN k's engine owns tags
/// `k * ISCSI_SLOTS_PER_LUN ..`.
pub const ISCSI_SLOTS_PER_LUN: usize = 64;
/// LUNs one iSCSI session serves: as many engines as the tag layout's slot field holds.
pub const MAX_LUNS_PER_ISCSI_SESSION: usize = crate::blockio::tag::MAX_SLOTS / ISCSI_SLOTS_PER_LUN;
/// Outgoing PDUs an iSCSI session builds ahead of the socket (headers, sense, digests).
pub const ISCSI_OUT_PDUS: usize = 256;
/// Of those, the ones Data-In and status never take: an R2T for every command the window
/// allows (MaxOutstandingR2T is 1), and room for NOP-In, Reject, task management and logout
/// answers, so none of them finds the pool full while answers wait for a slow socket.
pub const ISCSI_CONTROL_PDUS: usize = ISCSI_CMD_WINDOW as usize + 32;
const _: () = assert!(ISCSI_CONTROL_PDUS < ISCSI_OUT_PDUS);
/// The receive buffer of an iSCSI session: headers and every data segment that does not go
/// straight into a task's buffer; larger than the largest data segment it accepts.
pub const ISCSI_RECV_BUFFER_BYTES: usize = ISCSI_MAX_RECV_DATA_SEGMENT_BYTES as usize + 64 * 1024;
/// Seconds of silence after which the target sends an initiator a NOP-In.
pub const ISCSI_NOP_INTERVAL_SECS: u32 = 10;
/// Seconds a NOP-In may go unanswered before the session is taken for dead.
pub const ISCSI_NOP_TIMEOUT_SECS: u32 = 20;
const _: () = assert!(ISCSI_CMD_WINDOW as usize <= SCSI_TASKS_PER_LUN);
const _: () = assert!(SCSI_TASKS_PER_LUN <= ISCSI_SLOTS_PER_LUN);

// ---- NVMe/TCP transport and I/O queues (src/nvmf/pdu.rs, src/target/nvmf/queue) ----------

/// Entries of an I/O submission queue at most (CAP.MQES + 1; a Connect's SQSIZE past it is
/// refused): also the commands one I/O queue has in flight at most.
pub const NVMF_MAX_QUEUE_ENTRIES: usize = 128;
/// Engine slots numbered per namespace of an I/O queue: namespace k's engine owns tags
/// `k * NVMF_SLOTS_PER_NAMESPACE ..`. As many as the queue has entries, so one namespace can
/// take every command the host may send.
pub const NVMF_SLOTS_PER_NAMESPACE: usize = NVMF_MAX_QUEUE_ENTRIES;
/// Namespaces (VPs) an I/O queue serves: as many engines as the tag layout's slot field
/// holds. A host with more VPs is served the first ones by LUN.
pub const MAX_NAMESPACES_PER_SUBSYSTEM: usize =
    crate::blockio::tag::MAX_SLOTS / NVMF_SLOTS_PER_NAMESPACE;
/// Data an I/O command capsule may carry in itself (ICDOFF 0): IOCCSZ is
/// `(64 + this) / 16`. A write no larger goes without an R2T round trip.
pub const NVMF_IN_CAPSULE_DATA_BYTES: usize = 8192;
/// MAXH2CDATA announced in ICResp: the most data in one H2CData PDU.
pub const NVMF_MAX_H2C_DATA_BYTES: u32 = 128 * 1024;
/// The receive buffer of an I/O queue: PDU headers, in-capsule data and termination
/// requests; the data of a write goes straight into its request's buffer instead.
pub const NVMF_RECV_BUFFER_BYTES: usize = 256 * 1024;
/// Dataset Management ranges of one command at most (the specification's 256).
pub const NVMF_MAX_DSM_RANGES: usize = 256;
/// Dataset Management (deallocate) commands an I/O queue runs at once; one more waits.
pub const NVMF_DSM_COMMANDS: usize = 4;
/// Compare commands an I/O queue runs at once (each holds the host's data beside what it
/// reads); one more waits.
pub const NVMF_COMPARE_COMMANDS: usize = 2;
const _: () = assert!(NVMF_MAX_QUEUE_ENTRIES <= crate::blockio::tag::MAX_SLOTS);
const _: () = assert!(MAX_NAMESPACES_PER_SUBSYSTEM >= 1);
const _: () = assert!(NVMF_MAX_H2C_DATA_BYTES >= 4096 && NVMF_MAX_H2C_DATA_BYTES % 4 == 0);
const _: () = assert!((64 + NVMF_IN_CAPSULE_DATA_BYTES) % 16 == 0);
const _: () = assert!(NVMF_MAX_DSM_RANGES * 16 <= NVMF_IN_CAPSULE_DATA_BYTES);
// A capsule with its largest in-capsule data, digests and padding fits the receive buffer.
const _: () = assert!(NVMF_RECV_BUFFER_BYTES >= 2 * (NVMF_IN_CAPSULE_DATA_BYTES + 256));

// ---- NVMe/TCP controllers, admin queue, discovery (src/target/nvmf) -----------------------

/// NVMe controllers (admin queues, discovery controllers included) the server has at once,
/// each served by its own blocking thread; the Connect past it answers CONTROLLER_BUSY.
pub const MAX_NVMF_CONTROLLERS: usize = 256;
/// Of those, discovery controllers at most (anyone may open one): the rest are kept for
/// hosts' own subsystems, so strangers holding discovery controllers cannot lock hosts out.
pub const MAX_NVMF_DISCOVERY_CONTROLLERS: usize = 64;
/// Controllers of one host's subsystem at once (several paths, each with its admin queue, and
/// a reconnect overlapping the controller it replaces): one host cannot take them all.
pub const MAX_NVMF_CONTROLLERS_PER_HOST: usize = 16;
/// The keep-alive timeout of a discovery controller whose host asked for none (KATO 0, as
/// Linux's `nvme discover` does), so that forgotten discovery connections end.
pub const NVMF_DISCOVERY_KATO_MS: u32 = 120_000;
/// I/O queues one controller may have (Set Features Number of Queues grants at most this).
pub const NVMF_MAX_IO_QUEUES: usize = 8;
/// Largest NSID a subsystem can have (NN): a VP's LUN is below 16384, its NSID is LUN + 1.
pub const NVMF_MAX_NSID: u32 = 16384;
/// Asynchronous Event Requests a controller holds at once (AERL + 1); one more is refused.
pub const NVMF_MAX_PENDING_AERS: usize = 4;
/// Keep Alive Timer granularity (KAS, in its 100 ms units).
pub const NVMF_KEEP_ALIVE_GRANULARITY_MS: u32 = 100;
/// Time beyond KATO a controller waits for a Keep Alive before it ends: the host sends one
/// at half of KATO, and a guest under emulation or a loaded machine may be late.
pub const NVMF_KEEP_ALIVE_GRACE_MS: u32 = 1000;
/// How often an admin queue's thread looks at its controller when the host is silent
/// (keep-alive expiry, asynchronous events, the closed flag, shutdown).
pub const NVMF_ADMIN_TICK_MS: u64 = 100;
/// Time the host should wait for CSTS.RDY after setting CC.EN (CAP.TO, in 500 ms units).
pub const NVMF_READY_TIMEOUT_UNITS: u8 = 10;
/// Bytes an admin command sends back at most: every Identify structure and log page fits
/// (the largest are 4 KiB); a Get Log Page asking for more gets the page and zeroes up to this,
/// so a host's NUMD (up to 16 GiB) never sizes a buffer.
pub const NVMF_MAX_ADMIN_DATA_BYTES: usize = 8192;
/// Time a PDU, once its first byte arrived on the admin queue, may take to arrive whole.
pub const NVMF_ADMIN_PDU_TIMEOUT_MS: u64 = 10_000;
const _: () = assert!(NVMF_MAX_QUEUE_ENTRIES <= 1 << 16);
const _: () = assert!(NVMF_MAX_PENDING_AERS >= 1 && NVMF_MAX_PENDING_AERS <= 256);
const _: () = assert!(NVMF_MAX_ADMIN_DATA_BYTES >= 4096);
const _: () = assert!(MAX_NVMF_DISCOVERY_CONTROLLERS < MAX_NVMF_CONTROLLERS);
const _: () = assert!(MAX_NVMF_CONTROLLERS_PER_HOST < MAX_NVMF_CONTROLLERS);

// ---- NVMe/TCP initiator (sds perf --target nvme-tcp://) -----------------------------------
/// Entries of the initiator's admin queue (its Connect's SQSIZE + 1): the set-up sends one
/// command at a time, and Linux's target takes at most 32.
pub const NVMF_INITIATOR_ADMIN_QUEUE_ENTRIES: usize = 32;
/// Longest wait for one connect, send or receive of the set-up (a target in a TCG guest on a
/// loaded machine is slow).
pub const NVMF_INITIATOR_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest wait for CSTS.RDY after CC.EN, whatever CAP.TO says.
pub const NVMF_INITIATOR_MAX_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The keep-alive timeout the admin Connect asks for, and how often the run's keep-alive
/// thread sends Keep Alive (well inside it).
pub const NVMF_INITIATOR_KATO_MS: u32 = 30_000;
pub const NVMF_INITIATOR_KEEP_ALIVE_INTERVAL: std::time::Duration =
    std::time::Duration::from_secs(5);
/// The most PDU data the set-up accepts in one PDU (a 4 KiB Identify page is the largest it
/// asks for).
pub const NVMF_INITIATOR_SETUP_MAX_DATA_BYTES: u32 = 64 * 1024;
/// How often the set-up reads CSTS while it waits for RDY, and how often the keep-alive thread
/// looks at the clock and its stop flag.
pub const NVMF_INITIATOR_READY_POLL: std::time::Duration = std::time::Duration::from_millis(10);
/// I/O queues one `sds perf --target` run may open (`--queues`).
pub const NVMF_INITIATOR_MAX_IO_QUEUES: u32 = 64;
/// Receive buffer of one initiator I/O queue: PDU headers (and the start of data, which is
/// otherwise received straight into the command's buffer).
pub const NVMF_INITIATOR_RECV_BUFFER_BYTES: usize = 64 * 1024;
/// Pieces (headers and data) one sendmsg of an initiator I/O queue gathers.
pub const NVMF_INITIATOR_SEND_PIECES: usize = 64;
const _: () =
    assert!(NVMF_INITIATOR_KEEP_ALIVE_INTERVAL.as_millis() * 2 < NVMF_INITIATOR_KATO_MS as u128);
const _: () = assert!(NVMF_INITIATOR_SEND_PIECES <= 1024, "IOV_MAX");

// ---- Synchronous mirrors (volume::mirror, dirty_log, resync) ------------------------------
/// Legs of one mirror: at least two when created, at most three.
pub const MIN_MIRROR_LEGS: usize = 2;
pub const MAX_MIRROR_LEGS: usize = 3;
/// Mirrors one server keeps.
pub const MAX_MIRRORS: usize = 256;
/// Bytes one bit of a mirror's dirty-region log stands for, and the unit a resync copies: 1 MiB
/// keeps the log small (128 KiB of bits per TiB) and a copy large enough to stream, while a
/// leg's short outage costs a resync of only the megabytes it missed.
pub const MIRROR_REGION_BYTES: u64 = 1024 * 1024;
/// The dirty-region log file's block: its header is one, and each bitmap block is written and
/// synced whole.
pub const DIRTY_LOG_BLOCK_BYTES: usize = 4096;
/// Regions of one mirror (its largest size over [`MIRROR_REGION_BYTES`]).
pub const MAX_MIRROR_REGIONS: u64 = 1 << 24;
/// Resyncs copying at once; more wait for a free one (the control cycle retries).
pub const MAX_RESYNC_THREADS: usize = 4;
/// Copy threads of one resync: each reads a region from the source and writes it to the
/// targets, so several regions' I/O overlaps (one thread leaves the LUNs idle between its
/// read and its write).
pub const RESYNC_COPY_WORKERS: usize = 8;
/// A resync writes the bits it cleared to the log after this many regions or this long,
/// whichever comes first (a crash redoes at most that much).
pub const RESYNC_PERSIST_EVERY_REGIONS: u64 = 64;
pub const RESYNC_PERSIST_INTERVAL_MS: u64 = 250;
/// A degraded leg whose LUNs look well again is retried no more often than this.
pub const RESYNC_RETRY_MS: u64 = 2_000;
/// How long the cleaner lets a region of a healthy mirror stay quiet (no write started) before
/// it clears its bit: a region written again soon after keeps its bit and costs no sync.
pub const MIRROR_CLEAN_AFTER_MS: u64 = 2_000;
/// The largest block a LUN has (512 or 4096): a resync's bounce buffer holds a region and two.
pub const MAX_LUN_BLOCK_BYTES: usize = 4096;
/// The ring tag's LUN field of a mirror's I/O: leg × this + the leg pool's LUN index.
pub const MIRROR_LEG_LUN_STRIDE: usize = MAX_LUNS_PER_POOL;
/// Longest wait for a leg's in-flight I/O to drain before it is detached.
pub const MIRROR_DETACH_WAIT_MS: u64 = 10_000;
const _: () = assert!(MIRROR_REGION_BYTES.is_power_of_two());
const _: () = assert!(MIRROR_REGION_BYTES as usize <= MAX_IO_BYTES);
const _: () = assert!(
    MAX_MIRROR_LEGS * MIRROR_LEG_LUN_STRIDE <= 256,
    "the tag's 8-bit LUN field"
);
const _: () = assert!(MIN_MIRROR_LEGS <= MAX_MIRROR_LEGS && MAX_MIRROR_LEGS <= 8);

// ---- Remote LUNs (backend::remote, iSCSI and NBD links to other arrays) --------------------
/// Commands one link (one reactor's connection to the array) has on the wire at once; more
/// wait in the link's FIFO and start as commands complete.
pub const REMOTE_LINK_QUEUE_DEPTH: usize = 128;
/// Commands one link accepts beyond its queue depth: what a reactor's ring can have in flight
/// (the engine never has more outstanding than its ring credit). Past it a command fails with
/// EIO at once, which the bound makes unreachable.
pub const REMOTE_LINK_MAX_WAITING: usize = MAX_RING_IN_FLIGHT;
/// Reconnect backoff of a link: the first retry after this long, doubling up to the maximum.
pub const REMOTE_RECONNECT_MIN_MS: u64 = 100;
pub const REMOTE_RECONNECT_MAX_MS: u64 = 5_000;
/// Default `timeout_ms` of a remote LUN: a command not completed within it fails with EIO.
pub const REMOTE_IO_TIMEOUT_MS: u64 = 30_000;
/// Default `fail_after_ms`: a LUN whose array has been unreachable this long is failed (its
/// I/O fails at once) until a link connects again.
pub const REMOTE_FAIL_AFTER_MS: u64 = 120_000;
/// Bounds of the two settings (an administrator's value outside is refused).
pub const REMOTE_MIN_TIMEOUT_MS: u64 = 100;
pub const REMOTE_MAX_TIMEOUT_MS: u64 = 3_600_000;
/// How often a link looks at its clock: reconnects, timeouts, failing, posting what a full
/// ring refused, an idle ping.
pub const REMOTE_LINK_TICK_MS: u64 = 50;
/// A connect (TCP, login or negotiation, READ CAPACITY) that has not finished in this long is
/// abandoned and retried with backoff.
pub const REMOTE_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long start-up waits for a remote LUN's blocking connection before the LUN is kept as a
/// failed stand-in (pool replay needs it).
pub const REMOTE_STARTUP_CONNECT_MS: u64 = 10_000;
/// An idle link pings the array (iSCSI NOP-Out) this often: the round-trip estimate stays
/// current, and a dead connection is found (an unanswered ping past the LUN's timeout resets
/// it) even with no I/O.
pub const REMOTE_PING_INTERVAL_MS: u64 = 1_000;
/// How often one link of each remote LUN asks the array its size (iSCSI READ CAPACITY), so a
/// resized LUN is noticed even when the array sends no unit attention.
pub const REMOTE_CAPACITY_CHECK_MS: u64 = 10_000;
/// The round-trip estimate is an EWMA with weight 1/2^this for each new command's latency.
pub const REMOTE_RTT_EWMA_SHIFT: u32 = 3;
/// Longest remote LUN URL accepted.
pub const MAX_REMOTE_URL_BYTES: usize = 1024;
const _: () = assert!(REMOTE_RECONNECT_MIN_MS <= REMOTE_RECONNECT_MAX_MS);
const _: () = assert!(REMOTE_LINK_TICK_MS <= REMOTE_RECONNECT_MIN_MS);
const _: () = assert!(REMOTE_MIN_TIMEOUT_MS <= REMOTE_IO_TIMEOUT_MS);
const _: () = assert!(REMOTE_IO_TIMEOUT_MS <= REMOTE_MAX_TIMEOUT_MS);
const _: () = assert!(REMOTE_LINK_QUEUE_DEPTH <= u16::MAX as usize);
/// iSCSI LUNs: a command the array asks to be sent again (unit attention, busy) is sent at
/// most this many more times before it fails with EIO.
pub const ISCSI_MAX_COMMAND_RETRIES: u32 = 8;
/// Zeroing with zero-filled WRITE (16)s: the bytes of one write (and of the shared buffer of
/// zeroes they are sent from).
pub const ISCSI_ZERO_CHUNK_BYTES: usize = 1024 * 1024;
/// Zeroing with WRITE SAME (16) + UNMAP: the blocks of one command.
pub const ISCSI_WRITE_SAME_CHUNK_BLOCKS: u64 = 1 << 16;
/// The iSCSI port a remote LUN's URL without one means (RFC 7143's well-known port).
pub const ISCSI_DEFAULT_PORT: u16 = 3260;
/// The initiator name sds logs in with when the LUN names none: this prefix and the host name.
pub const ISCSI_DEFAULT_INITIATOR_PREFIX: &str = "iqn.2026-11.org.sds.initiator:";
const _: () = assert!(ISCSI_ZERO_CHUNK_BYTES % MAX_LUN_BLOCK_BYTES == 0);
const _: () = assert!(ISCSI_ZERO_CHUNK_BYTES <= u32::MAX as usize);
/// `/metrics`: how often the control cycle copies the counters into the snapshot scrapes read
/// (a scrape between two gathers sees the older one), and how often the HTTP thread checks
/// for shutdown while no request comes.
pub const METRICS_GATHER_INTERVAL_MS: u64 = 1_000;
pub const METRICS_POLL_MS: u64 = 200;
/// `/metrics` HTTP: connections open at once. Past it the oldest connection is closed to make
/// room for the newest, so idle connections can never lock a scraper out; each request is
/// answered and closed within [`METRICS_CONNECTION_TIMEOUT_MS`], so a scrape needs a slot for
/// milliseconds.
pub const METRICS_MAX_CONNECTIONS: usize = 64;
/// `/metrics` HTTP: a request's line and headers (there is no body to a GET); a longer one is
/// answered 431 and closed.
pub const METRICS_MAX_REQUEST_BYTES: usize = 8 * 1024;
/// `/metrics` HTTP: from accept to the last byte of the answer; a client slower than this
/// (or one that never sends) is closed.
pub const METRICS_CONNECTION_TIMEOUT_MS: u64 = 5_000;
