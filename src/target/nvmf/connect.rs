//! The fabrics Connect command (NVMe-oF 1.1 §3.3): what it asks, and whether it is granted.
//!
//! An admin queue Connect (QID 0) makes a controller: of the discovery subsystem for anyone,
//! or of a host's own subsystem for that host only (its host record's `nqn` is the Connect's
//! host NQN) and only while it has at least one VP. An I/O queue Connect (QID 1..) joins an
//! existing NVM controller, and must name it (CNTLID) with the same host NQN, host identifier
//! and subsystem NQN its admin queue gave.
//!
//! A refusal is a Connect status: CONNECT_INVALID_HOST when a host may not reach the
//! subsystem, CONNECT_INVALID_PARAMETERS with the offset of the wrong field (IATTR/IPO in
//! the result), CONNECT_INCOMPATIBLE_FORMAT, CONNECT_CONTROLLER_BUSY.

use super::controller::{ControllerKind, ControllerShared};
use super::registry::Registry;
use super::subsystem;
use crate::constants::{NVMF_MAX_IO_QUEUES, NVMF_MAX_QUEUE_ENTRIES};
use crate::domain::nvme_name::DISCOVERY_NQN;
use crate::domain::snapshot::Snapshot;
use crate::nvmf::command::{Command, CNTLID_DYNAMIC};
use crate::nvmf::status::{self, Status};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Bytes of the Connect data (host identifier, CNTLID, NQNs).
pub const CONNECT_DATA_BYTES: usize = 1024;
/// The smallest admin queue a host may ask for (SQSIZE is 0's based: 32 entries).
pub const MIN_ADMIN_SQSIZE: u16 = 31;

// Offsets of Connect fields, reported in a CONNECT_INVALID_PARAMETERS result.
pub const SQE_OFFSET_RECFMT: u16 = 40;
pub const SQE_OFFSET_QID: u16 = 42;
pub const SQE_OFFSET_SQSIZE: u16 = 44;
pub const DATA_OFFSET_HOSTID: u16 = 0;
pub const DATA_OFFSET_CNTLID: u16 = 16;
pub const DATA_OFFSET_SUBNQN: u16 = 256;
pub const DATA_OFFSET_HOSTNQN: u16 = 512;

/// The command's own fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectCommand {
    pub recfmt: u16,
    pub qid: u16,
    /// 0's based.
    pub sqsize: u16,
    /// CATTR: bit 2 asks to disable SQ flow control (SQHD then need not be kept).
    pub cattr: u8,
    pub kato_ms: u32,
}

impl ConnectCommand {
    pub fn of(command: &Command) -> Self {
        Self {
            recfmt: command.u16_at(40),
            qid: command.u16_at(42),
            sqsize: command.u16_at(44),
            cattr: command.0[46],
            kato_ms: command.u32_at(48),
        }
    }

    /// Whether the host asked for SQ flow control to be disabled.
    pub fn sq_flow_control_disabled(&self) -> bool {
        self.cattr & (1 << 2) != 0
    }
}

/// The Connect data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

/// Why a Connect is refused: its status and result dword 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub result: u32,
}

impl Refusal {
    /// A refusal with `status` and nothing in the result.
    pub fn of(status: Status) -> Self {
        Self { status, result: 0 }
    }

    /// Invalid parameters at `offset` of the command (`in_data` false) or of its data.
    pub fn invalid(offset: u16, in_data: bool) -> Self {
        Self {
            status: status::CONNECT_INVALID_PARAMETERS,
            result: u32::from(offset) | (u32::from(in_data) << 16),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            status::CONNECT_INVALID_HOST => write!(f, "the host may not reach this subsystem"),
            status::CONNECT_INVALID_PARAMETERS => write!(
                f,
                "invalid parameter at offset {} of the {}",
                self.result & 0xffff,
                if self.result >> 16 != 0 {
                    "Connect data"
                } else {
                    "command"
                }
            ),
            status::CONNECT_CONTROLLER_BUSY => write!(f, "no controller available"),
            status::CONNECT_INCOMPATIBLE_FORMAT => write!(f, "unknown record format"),
            other => write!(f, "{other}"),
        }
    }
}

/// Reads the Connect data; an NQN that is not NUL-terminated text in its field is invalid.
pub fn parse_data(data: &[u8]) -> Result<ConnectData, Refusal> {
    if data.len() < CONNECT_DATA_BYTES {
        return Err(Refusal::of(status::DATA_SGL_LENGTH_INVALID));
    }
    let text = |at: u16| -> Result<String, Refusal> {
        let field = &data[usize::from(at)..usize::from(at) + 256];
        let end = field
            .iter()
            .position(|&b| b == 0)
            .ok_or(Refusal::invalid(at, true))?;
        match std::str::from_utf8(&field[..end]) {
            Ok(text) if !text.is_empty() => Ok(text.to_string()),
            _ => Err(Refusal::invalid(at, true)),
        }
    };
    let mut hostid = [0u8; 16];
    hostid.copy_from_slice(&data[..16]);
    Ok(ConnectData {
        hostid,
        cntlid: u16::from_le_bytes([data[16], data[17]]),
        subnqn: text(DATA_OFFSET_SUBNQN)?,
        hostnqn: text(DATA_OFFSET_HOSTNQN)?,
    })
}

/// Who an admin Connect makes a controller for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminGrant {
    pub kind: ControllerKind,
    /// The sds host (empty for a discovery controller of a host no record names).
    pub host: String,
}

/// Decides an admin queue Connect against the published configuration.
pub fn admit_admin(
    snapshot: &Snapshot,
    nqn_base: &str,
    command: &ConnectCommand,
    data: &ConnectData,
) -> Result<AdminGrant, Refusal> {
    check_queue(command, true)?;
    if data.cntlid != CNTLID_DYNAMIC {
        return Err(Refusal::invalid(DATA_OFFSET_CNTLID, true));
    }
    let host = snapshot.host_by_nqn(&data.hostnqn);
    if data.subnqn == DISCOVERY_NQN {
        return Ok(AdminGrant {
            kind: ControllerKind::Discovery,
            host: host.map(|h| h.name.clone()).unwrap_or_default(),
        });
    }
    let Some(owner) = subsystem::host_of_subsystem(snapshot, nqn_base, &data.subnqn) else {
        // Not one of ours at all: under our base it is some host's name that does not exist
        // (refused as a subsystem the host may not reach, revealing nothing); elsewhere it
        // is a wrong parameter.
        return Err(if data.subnqn.starts_with(nqn_base) {
            Refusal::of(status::CONNECT_INVALID_HOST)
        } else {
            Refusal::invalid(DATA_OFFSET_SUBNQN, true)
        });
    };
    let owns = host.is_some_and(|host| host.name == owner.name);
    if !owns || subsystem::namespaces(snapshot, &owner.name).is_empty() {
        return Err(Refusal::of(status::CONNECT_INVALID_HOST));
    }
    Ok(AdminGrant {
        kind: ControllerKind::Nvm,
        host: owner.name.clone(),
    })
}

/// Decides an I/O queue Connect: the controller it joins.
pub fn admit_io(
    registry: &Registry,
    command: &ConnectCommand,
    data: &ConnectData,
) -> Result<Arc<ControllerShared>, Refusal> {
    check_queue(command, false)?;
    let controller = registry
        .find(data.cntlid)
        .filter(|c| c.kind == ControllerKind::Nvm)
        .ok_or(Refusal::invalid(DATA_OFFSET_CNTLID, true))?;
    if controller.hostnqn != data.hostnqn {
        return Err(Refusal::of(status::CONNECT_INVALID_HOST));
    }
    if controller.hostid != data.hostid {
        return Err(Refusal::invalid(DATA_OFFSET_HOSTID, true));
    }
    if controller.subnqn != data.subnqn {
        return Err(Refusal::invalid(DATA_OFFSET_SUBNQN, true));
    }
    if !controller.ready.load(Ordering::Acquire) {
        return Err(Refusal::of(status::COMMAND_SEQUENCE_ERROR));
    }
    let limit = controller.io_queue_limit.load(Ordering::Acquire);
    if usize::from(command.qid) > limit.min(NVMF_MAX_IO_QUEUES) {
        return Err(Refusal::invalid(SQE_OFFSET_QID, false));
    }
    Ok(controller)
}

/// Record format 0, and a queue size from the minimum to MQES.
fn check_queue(command: &ConnectCommand, admin: bool) -> Result<(), Refusal> {
    if command.recfmt != 0 {
        return Err(Refusal::of(status::CONNECT_INCOMPATIBLE_FORMAT));
    }
    if admin != (command.qid == 0) {
        return Err(Refusal::invalid(SQE_OFFSET_QID, false));
    }
    let minimum = if admin { MIN_ADMIN_SQSIZE } else { 1 };
    if command.sqsize < minimum || usize::from(command.sqsize) >= NVMF_MAX_QUEUE_ENTRIES {
        return Err(Refusal::invalid(SQE_OFFSET_SQSIZE, false));
    }
    Ok(())
}

/// The Connect data bytes (the initiator's side, and tests').
pub fn encode_data(data: &ConnectData) -> [u8; CONNECT_DATA_BYTES] {
    let mut out = [0u8; CONNECT_DATA_BYTES];
    out[..16].copy_from_slice(&data.hostid);
    out[16..18].copy_from_slice(&data.cntlid.to_le_bytes());
    for (at, text) in [
        (DATA_OFFSET_SUBNQN, &data.subnqn),
        (DATA_OFFSET_HOSTNQN, &data.hostnqn),
    ] {
        let bytes = text.as_bytes();
        let len = bytes.len().min(255);
        out[usize::from(at)..usize::from(at) + len].copy_from_slice(&bytes[..len]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::command::{CommandBuilder, FCTYPE_CONNECT};
    use crate::target::nvmf::registry::NewController;
    use crate::target::nvmf::subsystem::tests::snapshot;

    const BASE: &str = "nqn.2026-11.org.sds:m";

    fn command(qid: u16, sqsize: u16) -> ConnectCommand {
        ConnectCommand::of(
            &CommandBuilder::fabrics(FCTYPE_CONNECT, 1)
                .bytes_at(42, &qid.to_le_bytes())
                .bytes_at(44, &sqsize.to_le_bytes())
                .bytes_at(46, &[1 << 2])
                .bytes_at(48, &5000u32.to_le_bytes())
                .build(),
        )
    }

    fn data(hostnqn: &str, subnqn: &str, cntlid: u16) -> ConnectData {
        ConnectData {
            hostid: [9; 16],
            cntlid,
            subnqn: subnqn.into(),
            hostnqn: hostnqn.into(),
        }
    }

    #[test]
    fn the_command_and_its_data_read_back() {
        let connect = command(3, 127);
        assert_eq!(
            (connect.qid, connect.sqsize, connect.kato_ms),
            (3, 127, 5000)
        );
        assert!(connect.sq_flow_control_disabled());
        let given = data(
            "nqn.2014-08.org.example:a",
            "nqn.2026-11.org.sds:m:a",
            0xffff,
        );
        assert_eq!(parse_data(&encode_data(&given)), Ok(given.clone()));
        let mut unterminated = encode_data(&given);
        unterminated[512..768].fill(b'x');
        assert_eq!(
            parse_data(&unterminated),
            Err(Refusal::invalid(DATA_OFFSET_HOSTNQN, true))
        );
        assert_eq!(
            parse_data(&[0; 100]).map_err(|r| r.status),
            Err(status::DATA_SGL_LENGTH_INVALID)
        );
    }

    #[test]
    fn the_owner_with_a_vp_gets_its_subsystem_and_nobody_else_does() {
        let snapshot = snapshot();
        let admin = command(0, 31);
        let a = "nqn.2014-08.org.example:a";
        let b = "nqn.2014-08.org.example:b";
        let stranger = "nqn.2014-08.org.example:stranger";
        let a_sub = subsystem::subsystem_nqn(BASE, "a");
        let b_sub = subsystem::subsystem_nqn(BASE, "b");
        assert_eq!(
            admit_admin(&snapshot, BASE, &admin, &data(a, &a_sub, 0xffff)),
            Ok(AdminGrant {
                kind: ControllerKind::Nvm,
                host: "a".into()
            })
        );
        let invalid_host = Err(Refusal::of(status::CONNECT_INVALID_HOST));
        assert_eq!(
            admit_admin(&snapshot, BASE, &admin, &data(stranger, &a_sub, 0xffff)),
            invalid_host
        );
        assert_eq!(
            admit_admin(&snapshot, BASE, &admin, &data(b, &a_sub, 0xffff)),
            invalid_host,
            "another host's subsystem"
        );
        assert_eq!(
            admit_admin(&snapshot, BASE, &admin, &data(b, &b_sub, 0xffff)),
            invalid_host,
            "its own subsystem, but no VP"
        );
        assert_eq!(
            admit_admin(
                &snapshot,
                BASE,
                &admin,
                &data(b, &subsystem::subsystem_nqn(BASE, "nobody"), 0xffff)
            ),
            invalid_host
        );
        assert_eq!(
            admit_admin(
                &snapshot,
                BASE,
                &admin,
                &data(a, "nqn.2016-06.io.spdk:cnode1", 0xffff)
            ),
            Err(Refusal::invalid(DATA_OFFSET_SUBNQN, true))
        );
        assert_eq!(
            admit_admin(
                &snapshot,
                BASE,
                &admin,
                &data(stranger, DISCOVERY_NQN, 0xffff)
            ),
            Ok(AdminGrant {
                kind: ControllerKind::Discovery,
                host: String::new()
            })
        );
        assert_eq!(
            admit_admin(&snapshot, BASE, &admin, &data(a, &a_sub, 1)),
            Err(Refusal::invalid(DATA_OFFSET_CNTLID, true))
        );
        assert_eq!(
            admit_admin(&snapshot, BASE, &command(0, 8), &data(a, &a_sub, 0xffff)),
            Err(Refusal::invalid(SQE_OFFSET_SQSIZE, false))
        );
        assert_eq!(
            admit_admin(&snapshot, BASE, &command(0, 128), &data(a, &a_sub, 0xffff)),
            Err(Refusal::invalid(SQE_OFFSET_SQSIZE, false))
        );
    }

    #[test]
    fn an_io_queue_joins_its_ready_controller_with_the_same_names() {
        let registry = Registry::new();
        let a = "nqn.2014-08.org.example:a";
        let a_sub = subsystem::subsystem_nqn(BASE, "a");
        let registered = registry
            .add(NewController {
                kind: ControllerKind::Nvm,
                host: "a".into(),
                hostnqn: a.into(),
                hostid: [9; 16],
                subnqn: a_sub.clone(),
                peer: String::new(),
                kato_ms: 0,
            })
            .unwrap();
        let cntlid = registered.shared().cntlid;
        let io = command(1, 127);
        assert_eq!(
            admit_io(&registry, &io, &data(a, &a_sub, cntlid)).map(|_| ()),
            Err(Refusal::of(status::COMMAND_SEQUENCE_ERROR)),
            "not enabled yet"
        );
        registered.shared().ready.store(true, Ordering::Release);
        assert_eq!(
            admit_io(&registry, &io, &data(a, &a_sub, cntlid)).map(|c| c.cntlid),
            Ok(cntlid)
        );
        assert_eq!(
            admit_io(&registry, &io, &data(a, &a_sub, cntlid + 1)).map(|_| ()),
            Err(Refusal::invalid(DATA_OFFSET_CNTLID, true))
        );
        assert_eq!(
            admit_io(
                &registry,
                &io,
                &data("nqn.2014-08.org.example:x", &a_sub, cntlid)
            )
            .map(|_| ()),
            Err(Refusal::of(status::CONNECT_INVALID_HOST))
        );
        let mut other_id = data(a, &a_sub, cntlid);
        other_id.hostid = [1; 16];
        assert_eq!(
            admit_io(&registry, &io, &other_id).map(|_| ()),
            Err(Refusal::invalid(DATA_OFFSET_HOSTID, true))
        );
        assert_eq!(
            admit_io(&registry, &command(9, 127), &data(a, &a_sub, cntlid)).map(|_| ()),
            Err(Refusal::invalid(SQE_OFFSET_QID, false))
        );
        assert_eq!(
            admit_io(&registry, &command(1, 128), &data(a, &a_sub, cntlid)).map(|_| ()),
            Err(Refusal::invalid(SQE_OFFSET_SQSIZE, false))
        );
        registered.shared().close();
        assert_eq!(
            admit_io(&registry, &io, &data(a, &a_sub, cntlid)).map(|_| ()),
            Err(Refusal::invalid(DATA_OFFSET_CNTLID, true)),
            "a closed controller takes no more queues"
        );
    }
}
