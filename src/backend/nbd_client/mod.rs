//! The NBD client: a LUN that is an export of another NBD server (another sds's volume,
//! qemu-nbd, nbdkit), reached over TCP or a Unix socket, driven from the reactors through the
//! remote core (`backend::remote`).
//!
//! ```text
//!   lun_create {kind: nbd, uri} ──▶ uri::parse ──▶ driver::open ──▶ BlockingConnection (learns the Export)
//!                                                              └──▶ RemoteLun: one NbdLink per reactor
//!   engine ──submit──▶ RemoteLun ──▶ link core ──issue──▶ NbdLink ──SendMsg/Recv on the ring──▶ server
//!   provisioning / control ──read_at, write_at…──▶ NbdDriver ──▶ BlockingConnection (Mutex)
//! ```
//!
//! The protocol pieces do no I/O and are unit-tested alone: [`uri`], [`negotiation`] (the
//! handshake), [`request`] and [`reply`] (simple and structured replies). [`blocking`] drives
//! them with plain socket calls, [`link`] with entries on a reactor's io_uring ring.
//! [`driver`] holds what sds accepts of an export and the `RemoteDriver` glue.

pub mod blocking;
pub mod driver;
pub mod link;
pub mod negotiation;
pub mod reply;
pub mod request;
pub mod uri;
