//! The SCSI layer without sockets: RAM LUNs under a real volume, a provisioner the test
//! answers in person, and a real ring only because the session context wants one. Each case
//! sends CDBs as a transport would and checks status, sense bytes, data and residuals.

use super::*;
use crate::backend::{open_lun, LunKind, LunSpec};
use crate::blockio::EngineConfig;
use crate::constants::{RING_CQ_ENTRIES, RING_ENTRIES};
use crate::domain::qos::RateLimit;
use crate::domain::snapshot::{Published, Snapshot};
use crate::domain::vpath::Vpath;
use crate::pool::Pool;
use crate::reactor::mailbox::{Mailbox as ReactorMailbox, SessionId};
use crate::reactor::ring::IoRing;
use crate::reactor::session::CreditWaiters;
use crate::reactor::{PollMode, ReactorHandle};
use crate::scsi::reservations as pr;
use crate::scsi::LuRegistry;
use crate::volume::provisioner::{provision, Provisioner, Request};
use crate::volume::Volume;
use crossbeam::channel::Receiver;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};

const EXTENT_BYTES: u64 = 1 << 20;
const VOLUME_BYTES: u64 = 4 << 20;
const BLOCK: usize = 512;
const BLOCKS: u64 = VOLUME_BYTES / BLOCK as u64;

/// One volume, its logical unit and one ScsiLun per nexus.
struct Rig {
    volume: Arc<Volume>,
    lu: Arc<LogicalUnit>,
    luns: Vec<ScsiLun>,
    provisions: Vec<Receiver<Request>>,
    /// What the test's provisioner answers (0, or an errno).
    provision_errno: i32,
    ring: IoRing,
    reactor: Arc<ReactorHandle>,
    waiters: CreditWaiters,
}

/// What came back for one command.
#[derive(Debug)]
struct Reply {
    status: u8,
    sense: Option<Sense>,
    data: Vec<u8>,
    residual: Residual,
}

impl Reply {
    fn good(&self) -> &Self {
        assert_eq!(self.status, status::GOOD, "{self:?}");
        self
    }

    /// Asserts CHECK CONDITION with this sense key, ASC and ASCQ.
    fn check(&self, key: u8, asc: u8, ascq: u8) -> Sense {
        assert_eq!(self.status, status::CHECK_CONDITION, "{self:?}");
        let sense = self.sense.expect("sense data");
        assert_eq!(
            (sense.key, sense.asc, sense.ascq),
            (key, asc, ascq),
            "{sense:?}"
        );
        sense
    }
}

fn nexus(n: usize) -> Nexus {
    Nexus {
        initiator_port: format!("iqn.2026-01.test:host{n},i,0x00023d00000{n}"),
        target_port: "iqn.2026-11.org.sds:t,t,0x0001".to_string(),
        host: format!("h{n}"),
    }
}

impl Rig {
    fn new(thin: bool, mode: AccessMode, nexuses: usize) -> Self {
        Self::with_unit(thin, mode, nexuses, None)
    }

    fn with_unit(
        thin: bool,
        mode: AccessMode,
        nexuses: usize,
        lu: Option<Arc<LogicalUnit>>,
    ) -> Self {
        let lun = open_lun(&LunSpec {
            name: "ram".to_string(),
            kind: LunKind::Mem,
            path: None,
            size_bytes: Some(16 << 20),
            block_size_bytes: BLOCK as u32,
            remote: None,
        })
        .expect("RAM LUN");
        let pool = Pool::create("p", [1; 16], EXTENT_BYTES, None, vec![lun]).expect("pool");
        let volume = Arc::new(Volume::new(
            "v",
            [0xA5; 16],
            Arc::new(pool),
            VOLUME_BYTES,
            BLOCK as u32,
            thin,
        ));
        if !thin {
            let wanted: Vec<(&Volume, u64)> = (0..VOLUME_BYTES / EXTENT_BYTES)
                .map(|e| (volume.as_ref(), e))
                .collect();
            for result in provision(&wanted) {
                result.expect("thick");
            }
        }
        let lu = lu.unwrap_or_else(|| Arc::new(LogicalUnit::unpersisted(volume.uuid)));
        let reactor = Arc::new(ReactorHandle {
            index: 0,
            core: 0,
            mailbox: ReactorMailbox::new(64).expect("mailbox"),
            busy_us: AtomicU64::new(0),
            idle_us: AtomicU64::new(0),
            sessions: AtomicUsize::new(0),
            sleeping: AtomicBool::new(false),
            heartbeat: AtomicU64::new(0),
            poll: PollMode::Busy,
        });
        let mut luns = Vec::new();
        let mut provisions = Vec::new();
        for n in 0..nexuses {
            let vpath = Arc::new(Vpath::new(n as u64 + 1, "h", volume.clone(), mode, 0, 1));
            let published = Arc::new(Published::default());
            published.publish(Snapshot::one_path(
                "h",
                vpath.clone(),
                "d",
                BTreeMap::new(),
                vec![RateLimit::UNLIMITED].into_boxed_slice(),
            ));
            let (provisioner, receiver) = Provisioner::detached();
            let engine = BlockEngine::new(
                vpath,
                0,
                published,
                provisioner,
                EngineConfig {
                    slot_base: n * SCSI_TASKS_PER_LUN,
                    slots: SCSI_TASKS_PER_LUN,
                    max_io_bytes: MAX_IO_BYTES,
                    initial_buffer_bytes: 0,
                    retained_buffer_bytes: 1 << 20,
                    domain: true,
                },
            );
            let mut lun = ScsiLun::new(
                0,
                engine,
                lu.clone(),
                Arc::new(nexus(n)),
                LunIdentity::new(volume.uuid, "iqn.2026-11.org.sds:t", 5),
            );
            lun.attach(0);
            luns.push(lun);
            provisions.push(receiver);
        }
        Self {
            volume,
            lu,
            luns,
            provisions,
            provision_errno: 0,
            ring: IoRing::with_sizes(RING_ENTRIES, RING_CQ_ENTRIES).expect("io_uring"),
            reactor,
            waiters: CreditWaiters::default(),
        }
    }

    fn with<T>(&mut self, f: impl FnOnce(&mut Vec<ScsiLun>, &mut SessionContext) -> T) -> T {
        let mut ctx = SessionContext {
            ring: &mut self.ring,
            reactor_index: 0,
            reactor: &self.reactor,
            id: SessionId {
                index: 0,
                generation: 1,
            },
            credit_waiters: &mut self.waiters,
        };
        f(&mut self.luns, &mut ctx)
    }

    /// Answers every provisioning request of nexus `n`; whether there was one.
    fn answer_provisioner(&mut self, n: usize) -> bool {
        let mut answered = false;
        while let Ok(request) = self.provisions[n].try_recv() {
            let Request::Provision {
                volume,
                extent,
                reply,
            } = request
            else {
                panic!("only provisioning expected");
            };
            let errno = self.provision_errno;
            if errno == 0 {
                provision(&[(volume.as_ref(), extent)])
                    .remove(0)
                    .expect("provisioned");
            }
            self.with(|luns, ctx| luns[n].on_wake(reply.token, errno, ctx));
            answered = true;
        }
        answered
    }

    /// Submits a command on nexus `n` without waiting for it.
    fn start(&mut self, n: usize, cdb: &[u8], data_out: &[u8], expected: u32) -> Submit {
        let dir = if !data_out.is_empty() {
            DataDirection::Write
        } else if expected > 0 {
            DataDirection::Read
        } else {
            DataDirection::None
        };
        let submitted = self.with(|luns, ctx| luns[n].submit(7, cdb, expected, dir, ctx));
        if let Submit::NeedData { task, len } = submitted {
            let buf = self.luns[n].data_out_buffer(task);
            assert_eq!(buf.len(), len as usize);
            let k = buf.len().min(data_out.len());
            buf[..k].copy_from_slice(&data_out[..k]);
            self.with(|luns, ctx| luns[n].data_out_done(task, ctx));
        }
        submitted
    }

    /// Waits for nexus `n`'s next finished task, answering the provisioner meanwhile.
    fn finish(&mut self, n: usize) -> Reply {
        for _ in 0..100 {
            if let Some(done) = self.luns[n].pop_done() {
                let lun = &mut self.luns[n];
                let data = lun.data_in(done.task).to_vec();
                assert_eq!(data.len(), done.data_in_len as usize);
                let sense = Sense::parse_fixed(lun.sense(done.task));
                lun.release(done.task);
                return Reply {
                    status: done.status,
                    sense,
                    data,
                    residual: done.residual,
                };
            }
            if !self.answer_provisioner(n) {
                break;
            }
        }
        panic!("the command did not finish");
    }

    /// Sends one command on nexus `n` and waits for its end.
    fn cmd(&mut self, n: usize, cdb: &[u8], data_out: &[u8], expected: u32) -> Reply {
        let submitted = self.start(n, cdb, data_out, expected);
        assert_ne!(submitted, Submit::Busy);
        self.finish(n)
    }

    /// Clears the power-on unit attention of every nexus.
    fn ready(mut self) -> Self {
        for n in 0..self.luns.len() {
            self.cmd(n, &[0; 6], &[], 0)
                .check(sense::KEY_UNIT_ATTENTION, 0x29, 0x00);
            self.cmd(n, &[0; 6], &[], 0).good();
        }
        self
    }

    fn write(&mut self, n: usize, lba: u64, data: &[u8]) -> Reply {
        self.cmd(
            n,
            &rw16(0x8A, lba, (data.len() / BLOCK) as u32),
            data,
            data.len() as u32,
        )
    }

    fn read(&mut self, n: usize, lba: u64, blocks: u32) -> Vec<u8> {
        let reply = self.cmd(n, &rw16(0x88, lba, blocks), &[], blocks * BLOCK as u32);
        reply.good();
        reply.data
    }
}

fn rw10(opcode: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = opcode;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

fn rw12(opcode: u8, lba: u32, blocks: u32) -> [u8; 12] {
    let mut cdb = [0u8; 12];
    cdb[0] = opcode;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[6..10].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn inquiry(evpd: bool, page: u8, len: u16) -> [u8; 6] {
    let l = len.to_be_bytes();
    [0x12, u8::from(evpd), page, l[0], l[1], 0]
}

fn pr_out(action: u8, pr_type: u8, key: u64, sa_key: u64, aptpl: bool) -> ([u8; 10], Vec<u8>) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5F;
    cdb[1] = action;
    cdb[2] = pr_type;
    cdb[8] = 24;
    let mut params = vec![0u8; 24];
    params[0..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&sa_key.to_be_bytes());
    params[20] = u8::from(aptpl);
    (cdb, params)
}

fn pr_in(action: u8) -> [u8; 10] {
    [0x5E, action, 0, 0, 0, 0, 0, 0x10, 0, 0]
}

#[test]
fn a_new_nexus_hears_power_on_once_but_inquiry_passes() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 1);
    rig.cmd(0, &inquiry(false, 0, 96), &[], 96).good();
    // Reported before the CDB is looked at: even an unknown opcode hears it first.
    let sense =
        rig.cmd(0, &[0x1D, 0, 0, 0, 0, 0], &[], 0)
            .check(sense::KEY_UNIT_ATTENTION, 0x29, 0x00);
    assert_eq!(sense.information, None);
    rig.cmd(0, &[0x1D, 0, 0, 0, 0, 0], &[], 0)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x20, 0x00);
    rig.cmd(0, &[0; 6], &[], 0).good();
}

#[test]
fn standard_inquiry_and_vpd_pages() {
    let mut rig = Rig::new(true, AccessMode::ReadWrite, 1).ready();
    let standard = rig.cmd(0, &inquiry(false, 0, 255), &[], 255);
    standard.good();
    let data = &standard.data;
    assert_eq!(data.len(), 74);
    assert_eq!(&data[..4], &[0x00, 0x00, 0x06, 0x12]);
    assert_eq!(data[4] as usize, data.len() - 5);
    assert_eq!(data[7], 0x02, "CMDQUE");
    assert_eq!(&data[8..16], b"SDS     ");
    assert_eq!(&data[16..32], b"VOLUME          ");
    assert_eq!(standard.residual, Residual::Underflow(255 - 74));
    // Cut to the allocation length: 36 bytes, no residual against 36 expected.
    let short = rig.cmd(0, &inquiry(false, 0, 36), &[], 36);
    assert_eq!((short.data.len(), short.residual), (36, Residual::None));
    // Supported pages.
    let pages = rig.cmd(0, &inquiry(true, 0x00, 255), &[], 255);
    assert_eq!(
        pages.good().data,
        vec![0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    );
    // Unit serial number: the volume UUID in hex.
    let serial = rig.cmd(0, &inquiry(true, 0x80, 255), &[], 255);
    assert_eq!(&serial.good().data[4..], "a5".repeat(16).as_bytes());
    // Device identification: NAA 3 first, from the UUID.
    let ids = rig.cmd(0, &inquiry(true, 0x83, 1024), &[], 1024);
    let ids = &ids.good().data;
    assert_eq!(&ids[4..8], &[0x01, 0x03, 0x00, 0x08]);
    assert_eq!(
        &ids[8..16],
        &[0x35, 0xA5, 0xA5, 0xA5, 0xA5, 0xA5, 0xA5, 0xA5]
    );
    assert_eq!(u16::from_be_bytes([ids[2], ids[3]]) as usize, ids.len() - 4);
    let text = String::from_utf8_lossy(ids);
    assert!(
        text.contains("iqn.2026-11.org.sds:t,t,0x0001"),
        "the target port"
    );
    // Block limits: max transfer = MAX_IO_BYTES / block; unmap limits on a thin volume.
    let limits = rig.cmd(0, &inquiry(true, 0xB0, 255), &[], 255);
    let limits = &limits.good().data;
    assert_eq!(limits.len(), 64);
    assert_eq!(
        u32::from_be_bytes(limits[8..12].try_into().unwrap()),
        (MAX_IO_BYTES / BLOCK) as u32
    );
    assert_eq!(limits[5], 64, "CAW: 64 KiB / 2 / 512");
    assert_eq!(u32::from_be_bytes(limits[24..28].try_into().unwrap()), 256);
    assert_eq!(u32::from_be_bytes(limits[28..32].try_into().unwrap()), 2048);
    // Provisioning: thin, UNMAP and WRITE SAME with UNMAP, unmapped reads zero.
    let lbp = rig.cmd(0, &inquiry(true, 0xB2, 255), &[], 255);
    assert_eq!(lbp.good().data, vec![0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]);
    rig.cmd(0, &inquiry(true, 0xB1, 255), &[], 255).good();
    // An unknown page, and a page code without EVPD.
    let bad =
        rig.cmd(0, &inquiry(true, 0xC7, 255), &[], 255)
            .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
    assert_eq!(bad, Sense::invalid_field_in_cdb(2, None));
    rig.cmd(0, &inquiry(false, 0x80, 255), &[], 255)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
    // A thick volume reports full provisioning.
    let mut thick = Rig::new(false, AccessMode::ReadWrite, 1).ready();
    let lbp = thick.cmd(0, &inquiry(true, 0xB2, 255), &[], 255);
    assert_eq!(lbp.good().data, vec![0, 0xB2, 0, 4, 0, 0, 0, 0]);
}

#[test]
fn read_capacity_reports_blocks_and_provisioning_and_notices_a_resize() {
    let mut rig = Rig::new(true, AccessMode::ReadWrite, 1).ready();
    let cap10 = rig.cmd(0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    let mut want = (BLOCKS as u32 - 1).to_be_bytes().to_vec();
    want.extend_from_slice(&(BLOCK as u32).to_be_bytes());
    assert_eq!(cap10.good().data, want);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9E;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let cap16 = rig.cmd(0, &cdb, &[], 32);
    let data = &cap16.good().data;
    assert_eq!(data.len(), 32);
    assert_eq!(
        u64::from_be_bytes(data[..8].try_into().unwrap()),
        BLOCKS - 1
    );
    assert_eq!(data[14], 0xC0, "LBPME and LBPRZ on a thin volume");
    // The volume grows: the next command hears CAPACITY DATA HAS CHANGED, once.
    rig.volume.grow(VOLUME_BYTES * 2);
    rig.cmd(0, &[0; 6], &[], 0)
        .check(sense::KEY_UNIT_ATTENTION, 0x2A, 0x09);
    let cap16 = rig.cmd(0, &cdb, &[], 32);
    assert_eq!(
        u64::from_be_bytes(cap16.good().data[..8].try_into().unwrap()),
        2 * BLOCKS - 1
    );
    // A bad service action of SERVICE ACTION IN(16).
    cdb[1] = 0x11;
    rig.cmd(0, &cdb, &[], 32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
}

#[test]
fn every_read_and_write_size_moves_the_same_bytes() {
    for thin in [false, true] {
        let mut rig = Rig::new(thin, AccessMode::ReadWrite, 1).ready();
        // WRITE(6)/READ(6) at LBA 1, 2 blocks.
        let a = pattern(1, 2 * BLOCK);
        rig.cmd(0, &[0x0A, 0, 0, 1, 2, 0], &a, a.len() as u32)
            .good();
        let r = rig.cmd(0, &[0x08, 0, 0, 1, 2, 0], &[], a.len() as u32);
        assert_eq!(r.good().data, a);
        // WRITE(10) FUA / READ(10) DPO across an extent boundary.
        let b = pattern(2, 8 * BLOCK);
        let lba = (EXTENT_BYTES / BLOCK as u64 - 4) as u32;
        let mut cdb = rw10(0x2A, lba, 8);
        cdb[1] = 0x08;
        rig.cmd(0, &cdb, &b, b.len() as u32).good();
        let mut cdb = rw10(0x28, lba, 8);
        cdb[1] = 0x10;
        assert_eq!(rig.cmd(0, &cdb, &[], b.len() as u32).good().data, b);
        // WRITE(12)/READ(12).
        let c = pattern(3, 3 * BLOCK);
        rig.cmd(0, &rw12(0xAA, 100, 3), &c, c.len() as u32).good();
        assert_eq!(rig.cmd(0, &rw12(0xA8, 100, 3), &[], c.len() as u32).data, c);
        // WRITE(16)/READ(16) at the last blocks.
        let d = pattern(4, 4 * BLOCK);
        rig.write(0, BLOCKS - 4, &d).good();
        assert_eq!(rig.read(0, BLOCKS - 4, 4), d);
        // What READ(6) read is still there; a never-written block reads zeroes.
        assert_eq!(rig.read(0, 1, 2), a);
        assert_eq!(rig.read(0, 3000, 1), vec![0; BLOCK]);
        // A zero-length transfer does nothing and succeeds.
        rig.cmd(0, &rw10(0x28, 5, 0), &[], 0).good();
        rig.cmd(0, &rw10(0x2A, 5, 0), &[], 0).good();
    }
}

#[test]
fn ranges_and_protection_fields_are_checked() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 1).ready();
    rig.cmd(0, &rw16(0x88, BLOCKS, 1), &[], 512)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x21, 0x00);
    rig.cmd(0, &rw16(0x88, BLOCKS - 1, 2), &[], 1024)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x21, 0x00);
    rig.cmd(0, &rw16(0x8A, u64::MAX, 2), &vec![0; 1024], 1024)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x21, 0x00);
    rig.cmd(0, &rw10(0x28, BLOCKS as u32 + 1, 0), &[], 0).check(
        sense::KEY_ILLEGAL_REQUEST,
        0x21,
        0x00,
    );
    // RDPROTECT: no protection information here.
    let mut cdb = rw10(0x28, 0, 1);
    cdb[1] = 0x20;
    let sense = rig
        .cmd(0, &cdb, &[], 512)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0x00);
    assert_eq!(sense, Sense::invalid_field_in_cdb(1, Some(7)));
    // Longer than the largest transfer.
    let blocks = (MAX_IO_BYTES / BLOCK) as u32 + 1;
    rig.cmd(0, &rw16(0x88, 0, blocks), &[], blocks * 512).check(
        sense::KEY_ILLEGAL_REQUEST,
        0x24,
        0x00,
    );
    // An unknown opcode, and NACA in the control byte.
    rig.cmd(
        0,
        &[0xC0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
        0,
    )
    .check(sense::KEY_ILLEGAL_REQUEST, 0x20, 0x00);
    rig.cmd(0, &[0, 0, 0, 0, 0, 0x04], &[], 0)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0x00);
}

#[test]
fn residuals_follow_the_expected_length() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 1).ready();
    let data = pattern(9, 2 * BLOCK);
    rig.write(0, 10, &data).good();
    // Expecting less than the command reads: what fits, and the overflow.
    let short = rig.cmd(0, &rw10(0x28, 10, 2), &[], 700);
    assert_eq!(short.good().data, data[..700].to_vec());
    assert_eq!(short.residual, Residual::Overflow(2 * 512 - 700));
    // A failed read sends nothing: everything expected is residual.
    let failed = rig.cmd(0, &rw10(0x28, BLOCKS as u32, 2), &[], 1024);
    failed.check(sense::KEY_ILLEGAL_REQUEST, 0x21, 0);
    assert_eq!(failed.residual, Residual::Underflow(1024));
    // Expecting less Data-Out than the command writes: the whole blocks that come are
    // written, the rest is overflow (less than a block: nothing written).
    let short = rig.cmd(0, &rw10(0x2A, 10, 2), &[0xEE; 200], 200);
    assert_eq!(short.good().residual, Residual::Overflow(2 * 512 - 200));
    assert_eq!(rig.read(0, 10, 2), data);
    let one = pattern(7, BLOCK);
    let cut = rig.cmd(0, &rw10(0x2A, 10, 2), &one, BLOCK as u32);
    assert_eq!(cut.good().residual, Residual::Overflow(512));
    assert_eq!(rig.read(0, 10, 1), one, "the block that came is written");
    assert_eq!(
        rig.read(0, 11, 1),
        data[BLOCK..].to_vec(),
        "the next is not"
    );
    // Expecting more: the command's length is written, the rest is underflow.
    let mut big = pattern(5, BLOCK);
    big.extend_from_slice(&[0xEE; 100]);
    let more = rig.cmd(0, &rw10(0x2A, 10, 1), &big, big.len() as u32);
    assert_eq!(more.good().residual, Residual::Underflow(100));
    assert_eq!(rig.read(0, 10, 1), big[..BLOCK].to_vec());
}

#[test]
fn a_read_only_path_refuses_every_change_with_write_protected() {
    let mut rig = Rig::new(true, AccessMode::ReadOnly, 1).ready();
    rig.read(0, 0, 1);
    rig.write(0, 0, &[1; BLOCK])
        .check(sense::KEY_DATA_PROTECT, 0x27, 0x00);
    let mut unmap = [0u8; 10];
    unmap[0] = 0x42;
    unmap[8] = 24;
    rig.cmd(0, &unmap, &[0; 24], 24)
        .check(sense::KEY_DATA_PROTECT, 0x27, 0x00);
    let mut ws = rw16(0x93, 0, 1);
    ws[1] = 0x01; // NDOB
    rig.cmd(0, &ws, &[], 0)
        .check(sense::KEY_DATA_PROTECT, 0x27, 0x00);
    rig.cmd(
        0,
        &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        &[0; 1024],
        1024,
    )
    .check(sense::KEY_DATA_PROTECT, 0x27, 0x00);
    // MODE SENSE says so: WP in the header.
    let mode = rig.cmd(0, &[0x1A, 0x08, 0x3F, 0, 255, 0], &[], 255);
    assert_eq!(mode.good().data[2] & 0x80, 0x80);
}

#[test]
fn a_full_pool_is_space_allocation_failed_and_an_io_error_is_a_medium_error() {
    let mut rig = Rig::new(true, AccessMode::ReadWrite, 1).ready();
    rig.provision_errno = libc::ENOSPC;
    rig.write(0, 0, &[1; BLOCK])
        .check(sense::KEY_DATA_PROTECT, 0x27, 0x07);
    rig.provision_errno = libc::EIO;
    rig.write(0, 0, &[1; BLOCK])
        .check(sense::KEY_MEDIUM_ERROR, 0x0C, 0x00);
    rig.provision_errno = 0;
    rig.write(0, 0, &[1; BLOCK]).good();
    // The mapping in one place.
    assert_eq!(
        block_failure(BlockOp::Read, BlockStatus::IoError, false),
        Failure::Check(sense::UNRECOVERED_READ_ERROR)
    );
    assert_eq!(
        block_failure(BlockOp::Write, BlockStatus::ShutDown, true),
        Failure::Check(sense::NOT_READY_BEING_REMOVED)
    );
    assert_eq!(
        block_failure(BlockOp::Write, BlockStatus::ShutDown, false),
        Failure::Check(sense::COMMAND_ABORTED_SHUTDOWN)
    );
}

fn caw(lba: u64, blocks: u8) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[13] = blocks;
    cdb
}

#[test]
fn compare_and_write_writes_on_a_match_and_reports_the_first_difference() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 1).ready();
    let old = pattern(1, 2 * BLOCK);
    let new = pattern(2, 2 * BLOCK);
    rig.write(0, 20, &old).good();
    let mut data = old.clone();
    data.extend_from_slice(&new);
    rig.cmd(0, &caw(20, 2), &data, data.len() as u32).good();
    assert_eq!(rig.read(0, 20, 2), new);
    // Now the verify half no longer matches at byte 700: MISCOMPARE, INFORMATION 700.
    let mut stale = new.clone();
    stale[700] ^= 0xFF;
    stale.extend_from_slice(&old);
    let sense = rig.cmd(0, &caw(20, 2), &stale, stale.len() as u32).check(
        sense::KEY_MISCOMPARE,
        0x1D,
        0x00,
    );
    assert_eq!(sense.information, Some(700));
    assert_eq!(rig.read(0, 20, 2), new, "nothing written");
    assert!(rig.lu.interlock.is_empty(), "the range is given back");
    // Data-Out other than both halves: refused, nothing written.
    rig.cmd(0, &caw(20, 2), &data[..2 * BLOCK], 2 * BLOCK as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x0E, 0x03);
    let mut long = data.clone();
    long.extend_from_slice(&[0; BLOCK]);
    rig.cmd(0, &caw(20, 2), &long, long.len() as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x0E, 0x03);
    assert_eq!(rig.read(0, 20, 2), new);
    // Zero blocks: nothing; too many: refused.
    rig.cmd(0, &caw(20, 0), &[], 0).good();
    let sense = rig
        .cmd(0, &caw(20, 65), &vec![0; 65 * 1024], 65 * 1024)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
    assert_eq!(sense, Sense::invalid_field_in_cdb(13, None));
    rig.cmd(0, &caw(BLOCKS, 1), &[0; 1024], 1024)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x21, 0);
}

#[test]
fn compare_and_write_holds_its_blocks_against_every_nexus_until_it_has_written() {
    // Thin: the CAW's write waits for its extent, so the interlock is seen held.
    let mut rig = Rig::new(true, AccessMode::ReadWrite, 2).ready();
    let mut data = vec![0u8; BLOCK];
    data.extend_from_slice(&[0x77; BLOCK]);
    let started = rig.start(0, &caw(5, 1), &data, data.len() as u32);
    assert!(matches!(started, Submit::NeedData { .. }));
    assert!(
        rig.luns[0].pop_done().is_none(),
        "waiting for the provisioner"
    );
    assert!(!rig.lu.interlock.is_empty());
    // Another nexus: a write or a CAW over that block is BUSY, elsewhere it is fine.
    assert_eq!(rig.write(1, 5, &[1; BLOCK]).status, status::BUSY);
    assert_eq!(
        rig.cmd(1, &caw(5, 1), &data, data.len() as u32).status,
        status::BUSY
    );
    rig.write(1, 6, &[1; BLOCK]).good();
    // The CAW finishes; then the block is free again.
    rig.finish(0).good();
    assert!(rig.lu.interlock.is_empty());
    assert_eq!(rig.read(1, 5, 1), vec![0x77; BLOCK]);
    rig.write(1, 5, &[2; BLOCK]).good();
    // A write that asked for its data before a CAW took its block is checked again when
    // its data has come (block 3000: an unmapped extent, so the CAW waits there).
    let early = rig
        .with(|luns, ctx| luns[1].submit(8, &rw10(0x2A, 3000, 1), 512, DataDirection::Write, ctx));
    let Submit::NeedData { task, .. } = early else {
        panic!("{early:?}");
    };
    rig.start(0, &caw(3000, 1), &data, data.len() as u32);
    assert!(!rig.lu.interlock.is_empty());
    rig.with(|luns, ctx| luns[1].data_out_done(task, ctx));
    assert_eq!(rig.luns[1].pop_done().map(|d| d.status), Some(status::BUSY));
    rig.luns[1].release(task);
    rig.finish(0).good();
    assert_eq!(rig.read(1, 3000, 1), vec![0x77; BLOCK]);
}

fn unmap_list(descriptors: &[(u64, u32)]) -> Vec<u8> {
    let mut list = vec![0u8; 8];
    let n = descriptors.len() * 16;
    list[0..2].copy_from_slice(&((n + 6) as u16).to_be_bytes());
    list[2..4].copy_from_slice(&(n as u16).to_be_bytes());
    for (lba, blocks) in descriptors {
        list.extend_from_slice(&lba.to_be_bytes());
        list.extend_from_slice(&blocks.to_be_bytes());
        list.extend_from_slice(&[0; 4]);
    }
    list
}

fn unmap_cdb(len: usize) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x42;
    cdb[7..9].copy_from_slice(&(len as u16).to_be_bytes());
    cdb
}

#[test]
fn unmap_zeroes_its_descriptors_and_checks_the_list_first() {
    let mut rig = Rig::new(true, AccessMode::ReadWrite, 1).ready();
    let data = pattern(3, 16 * BLOCK);
    rig.write(0, 0, &data).good();
    let list = unmap_list(&[(2, 3), (10, 2), (12, 0)]);
    rig.cmd(0, &unmap_cdb(list.len()), &list, list.len() as u32)
        .good();
    let back = rig.read(0, 0, 16);
    for block in 0..16 {
        let got = &back[block * BLOCK..(block + 1) * BLOCK];
        if (2..5).contains(&block) || (10..12).contains(&block) {
            assert_eq!(got, &[0; BLOCK][..], "block {block} unmapped");
        } else {
            assert_eq!(
                got,
                &data[block * BLOCK..(block + 1) * BLOCK],
                "block {block}"
            );
        }
    }
    // A descriptor past the end: nothing is unmapped.
    let list = unmap_list(&[(0, 1), (BLOCKS, 1)]);
    rig.cmd(0, &unmap_cdb(list.len()), &list, list.len() as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x21, 0);
    assert_eq!(rig.read(0, 0, 1), data[..BLOCK].to_vec());
    // A list too short to have a header.
    rig.cmd(0, &unmap_cdb(4), &[0; 4], 4)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x1A, 0);
    // Descriptor length past the list.
    let mut bad = unmap_list(&[(0, 1)]);
    bad[3] = 32;
    rig.cmd(0, &unmap_cdb(bad.len()), &bad, bad.len() as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x26, 0);
    // No list: nothing to do.
    rig.cmd(0, &unmap_cdb(0), &[], 0).good();
    // ANCHOR is not supported.
    let mut anchored = unmap_cdb(24);
    anchored[1] = 1;
    rig.cmd(0, &anchored, &[0; 24], 24)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
}

#[test]
fn write_same_repeats_its_block_zeroes_and_unmaps() {
    let mut rig = Rig::new(true, AccessMode::ReadWrite, 1).ready();
    let block = pattern(8, BLOCK);
    // WRITE SAME(10) of a pattern over 5000 blocks (across extents).
    let mut cdb = rw10(0x41, 100, 5000);
    rig.cmd(0, &cdb, &block, BLOCK as u32).good();
    let back = rig.read(0, 100, 5000);
    assert!(back.chunks(BLOCK).all(|c| c == &block[..]));
    assert_eq!(rig.read(0, 99, 1), vec![0; BLOCK]);
    assert_eq!(rig.read(0, 5100, 1), vec![0; BLOCK]);
    // WRITE SAME(16) with UNMAP and a zero block: reads zeroes.
    let mut ws16 = rw16(0x93, 200, 10);
    ws16[1] = 0x08;
    rig.cmd(0, &ws16, &[0; BLOCK], BLOCK as u32).good();
    assert_eq!(rig.read(0, 200, 10), vec![0; 10 * BLOCK]);
    assert_eq!(rig.read(0, 210, 1), block);
    // NDOB: zeroes with no Data-Out.
    let mut ndob = rw16(0x93, 300, 4);
    ndob[1] = 0x01;
    rig.cmd(0, &ndob, &[], 0).good();
    assert_eq!(rig.read(0, 300, 4), vec![0; 4 * BLOCK]);
    // UNMAP with a non-zero block writes the block.
    cdb[1] = 0x08;
    cdb[2..6].copy_from_slice(&400u32.to_be_bytes());
    cdb[7..9].copy_from_slice(&2u16.to_be_bytes());
    rig.cmd(0, &cdb, &block, BLOCK as u32).good();
    assert_eq!(rig.read(0, 401, 1), block);
    // Data-Out of other than one block.
    let mut two = block.clone();
    two.extend_from_slice(&block);
    rig.cmd(0, &rw10(0x41, 0, 1), &two, two.len() as u32).check(
        sense::KEY_ILLEGAL_REQUEST,
        0x0E,
        0x03,
    );
    rig.cmd(0, &rw10(0x41, 0, 1), &block[..100], 100)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x0E, 0x03);
    // Zero blocks (WSNZ), past the end, ANCHOR.
    rig.cmd(0, &rw10(0x41, 0, 0), &block, BLOCK as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
    rig.cmd(0, &rw10(0x41, BLOCKS as u32 - 1, 2), &block, BLOCK as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x21, 0);
    let mut anchor = rw10(0x41, 0, 1);
    anchor[1] = 0x10;
    rig.cmd(0, &anchor, &block, BLOCK as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
}

#[test]
fn verify_checks_the_medium_or_compares_the_data() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 1).ready();
    let data = pattern(4, 4 * BLOCK);
    rig.write(0, 50, &data).good();
    rig.cmd(0, &rw10(0x2F, 50, 4), &[], 0).good();
    rig.cmd(0, &rw10(0x2F, BLOCKS as u32 - 1, 2), &[], 0).check(
        sense::KEY_ILLEGAL_REQUEST,
        0x21,
        0,
    );
    let mut bytchk = rw16(0x8F, 50, 4);
    bytchk[1] = 0x02;
    rig.cmd(0, &bytchk, &data, data.len() as u32).good();
    let mut wrong = data.clone();
    wrong[3 * BLOCK + 17] ^= 1;
    let sense =
        rig.cmd(0, &bytchk, &wrong, wrong.len() as u32)
            .check(sense::KEY_MISCOMPARE, 0x1D, 0);
    assert_eq!(sense.information, Some((3 * BLOCK + 17) as u32));
    // BYTCHK 11b is not implemented.
    bytchk[1] = 0x06;
    rig.cmd(0, &bytchk, &data, data.len() as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
    // WRITE AND VERIFY writes, reads back and compares.
    let next = pattern(6, 3 * BLOCK);
    let mut wv = rw10(0x2E, 60, 3);
    wv[1] = 0x02;
    rig.cmd(0, &wv, &next, next.len() as u32).good();
    assert_eq!(rig.read(0, 60, 3), next);
    let wv16 = rw16(0x8E, 70, 1);
    rig.cmd(0, &wv16, &next[..BLOCK], BLOCK as u32).good();
    assert_eq!(rig.read(0, 70, 1), next[..BLOCK].to_vec());
}

#[test]
fn synchronize_cache_flushes_within_range() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 1).ready();
    rig.cmd(0, &rw10(0x35, 0, 0), &[], 0).good();
    rig.cmd(0, &rw16(0x91, 10, 100), &[], 0).good();
    rig.cmd(0, &rw16(0x91, BLOCKS, 1), &[], 0)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x21, 0);
}

#[test]
fn mode_sense_and_select_change_only_the_write_cache() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 2).ready();
    let all = rig.cmd(0, &[0x1A, 0, 0x3F, 0, 255, 0], &[], 255);
    let data = &all.good().data;
    assert_eq!(data[0] as usize, data.len() - 1);
    assert_eq!(data[3], 8, "one block descriptor");
    assert_eq!(&data[12..15], &[0x08, 18, 0x04], "caching page with WCE");
    // Changeable values: only WCE.
    let changeable = rig.cmd(0, &[0x1A, 0x08, 0x48, 0, 255, 0], &[], 255);
    assert_eq!(&changeable.good().data[4..7], &[0x08, 18, 0x04]);
    // Saved values are not implemented.
    rig.cmd(0, &[0x1A, 0x08, 0xC8, 0, 255, 0], &[], 255)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x39, 0);
    // MODE SELECT(10) clearing WCE: taken, and every nexus sees it.
    let mut sensed = rig
        .cmd(0, &[0x5A, 0x08, 0x08, 0, 0, 0, 0, 0, 255, 0], &[], 255)
        .data;
    sensed[0] = 0;
    sensed[1] = 0;
    sensed[3] = 0;
    sensed[10] &= !0x04;
    let mut select = [0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
    select[8] = sensed.len() as u8;
    rig.cmd(0, &select, &sensed, sensed.len() as u32).good();
    assert!(!rig.lu.write_cache_enabled());
    rig.cmd(1, &[0; 6], &[], 0)
        .check(sense::KEY_UNIT_ATTENTION, 0x2A, 0x01);
    let mode = rig.cmd(1, &[0x1A, 0x08, 0x08, 0, 255, 0], &[], 255);
    assert_eq!(mode.good().data[6], 0, "WCE clear");
    rig.cmd(0, &[0; 6], &[], 0).good();
    rig.write(0, 0, &[3; BLOCK]).good();
    // Anything else is refused, pointing at the byte.
    sensed[11] = 0x01;
    let sense = rig.cmd(0, &select, &sensed, sensed.len() as u32).check(
        sense::KEY_ILLEGAL_REQUEST,
        0x26,
        0,
    );
    assert_eq!(sense, Sense::invalid_field_in_parameter_list(11, Some(0)));
    // SP (save pages) is refused.
    select[1] = 0x11;
    rig.cmd(0, &select, &sensed, sensed.len() as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
}

#[test]
fn request_sense_reports_and_clears_a_unit_attention() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 1);
    let first = rig.cmd(0, &[0x03, 0, 0, 0, 252, 0], &[], 252);
    let sense = Sense::parse_fixed(&first.good().data).expect("sense data");
    assert_eq!((sense.key, sense.asc), (sense::KEY_UNIT_ATTENTION, 0x29));
    assert_eq!(first.data.len(), 18);
    let second = rig.cmd(0, &[0x03, 0, 0, 0, 252, 0], &[], 252);
    assert_eq!(&second.good().data[..3], &[0x70, 0, 0]);
    rig.cmd(0, &[0; 6], &[], 0).good();
    // A LUN reset and a LUN inventory change are heard, in that order.
    rig.luns[0].reset();
    rig.luns[0].luns_changed();
    rig.cmd(0, &[0; 6], &[], 0)
        .check(sense::KEY_UNIT_ATTENTION, 0x29, 0x03);
    rig.cmd(0, &[0; 6], &[], 0)
        .check(sense::KEY_UNIT_ATTENTION, 0x3F, 0x0E);
    rig.cmd(0, &[0; 6], &[], 0).good();
}

#[test]
fn report_supported_operation_codes_all_and_one() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 1).ready();
    let all = rig.cmd(0, &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0], &[], 8192);
    let data = &all.good().data;
    let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
    assert_eq!(len, data.len() - 4);
    assert_eq!(len, 8 * (opcodes::SUPPORTED.len() - 1), "no UNMAP: thick");
    let read10 = data[4..]
        .chunks(8)
        .find(|d| d[0] == 0x28)
        .expect("READ(10)");
    assert_eq!(read10[6..8], [0, 10]);
    // One command: READ(16), with its usage data.
    let one = rig.cmd(
        0,
        &[0xA3, 0x0C, 0x01, 0x88, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
        256,
    );
    let one = &one.good().data;
    assert_eq!(&one[..4], &[0, 0x03, 0, 16]);
    assert_eq!(one[4], 0x88);
    // A command with service actions asked without one, and an unsupported opcode.
    rig.cmd(
        0,
        &[0xA3, 0x0C, 0x01, 0x5E, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
        256,
    )
    .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
    let none = rig.cmd(
        0,
        &[0xA3, 0x0C, 0x01, 0xC5, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
        256,
    );
    assert_eq!(&none.good().data[..2], &[0, 0x01]);
    // With service action: PERSISTENT RESERVE IN / READ KEYS, and with timeouts.
    let sa = rig.cmd(
        0,
        &[0xA3, 0x0C, 0x82, 0x5E, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
        256,
    );
    let sa = &sa.good().data;
    assert_eq!(&sa[..4], &[0, 0x83, 0, 10]);
    assert_eq!(sa.len(), 4 + 10 + 12);
}

#[test]
fn persistent_reservations_between_two_nexuses() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 2).ready();
    let (a, b) = (0, 1);
    // An unregistered nexus cannot reserve.
    let (cdb, p) = pr_out(pr::SA_RESERVE, pr::TYPE_WRITE_EXCLUSIVE, 0xA, 0, false);
    assert_eq!(
        rig.cmd(a, &cdb, &p, 24).status,
        status::RESERVATION_CONFLICT
    );
    for (n, key) in [(a, 0xAu64), (b, 0xB)] {
        let (cdb, p) = pr_out(pr::SA_REGISTER, 0, 0, key, false);
        rig.cmd(n, &cdb, &p, 24).good();
    }
    // Registering again with the wrong key conflicts.
    let (cdb, p) = pr_out(pr::SA_REGISTER, 0, 0x99, 0xC, false);
    assert_eq!(
        rig.cmd(b, &cdb, &p, 24).status,
        status::RESERVATION_CONFLICT
    );
    let keys = rig.cmd(b, &pr_in(pr::SA_READ_KEYS), &[], 4096);
    let keys = &keys.good().data;
    assert_eq!(
        &keys[..8],
        &[0, 0, 0, 2, 0, 0, 0, 16],
        "generation 2, two keys"
    );
    assert_eq!(keys[15], 0xA);
    assert_eq!(keys[23], 0xB);
    // A reserves Write Exclusive: B may read, not write.
    let (cdb, p) = pr_out(pr::SA_RESERVE, pr::TYPE_WRITE_EXCLUSIVE, 0xA, 0, false);
    rig.cmd(a, &cdb, &p, 24).good();
    rig.write(a, 0, &[1; BLOCK]).good();
    rig.read(b, 0, 1);
    assert_eq!(
        rig.write(b, 0, &[2; BLOCK]).status,
        status::RESERVATION_CONFLICT
    );
    rig.cmd(b, &inquiry(false, 0, 36), &[], 36).good();
    rig.cmd(b, &[0; 6], &[], 0).good();
    let held = rig.cmd(b, &pr_in(pr::SA_READ_RESERVATION), &[], 4096);
    let held = &held.good().data;
    assert_eq!(&held[4..8], &[0, 0, 0, 16]);
    assert_eq!(held[15], 0xA, "the holder's key");
    assert_eq!(held[21], pr::TYPE_WRITE_EXCLUSIVE);
    // RESERVE by B conflicts; a RELEASE by B (not the holder) is GOOD and does nothing.
    let (cdb, p) = pr_out(pr::SA_RESERVE, pr::TYPE_WRITE_EXCLUSIVE, 0xB, 0, false);
    assert_eq!(
        rig.cmd(b, &cdb, &p, 24).status,
        status::RESERVATION_CONFLICT
    );
    let (cdb, p) = pr_out(pr::SA_RELEASE, pr::TYPE_WRITE_EXCLUSIVE, 0xB, 0, false);
    rig.cmd(b, &cdb, &p, 24).good();
    assert_eq!(
        rig.write(b, 0, &[2; BLOCK]).status,
        status::RESERVATION_CONFLICT
    );
    // The holder releasing with the wrong type: INVALID RELEASE.
    let (cdb, p) = pr_out(pr::SA_RELEASE, pr::TYPE_EXCLUSIVE_ACCESS, 0xA, 0, false);
    rig.cmd(a, &cdb, &p, 24)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x26, 0x04);
    // B preempts A as Exclusive Access: A's registration goes, A hears it, and A can
    // neither read nor write.
    let (cdb, p) = pr_out(pr::SA_PREEMPT, pr::TYPE_EXCLUSIVE_ACCESS, 0xB, 0xA, false);
    rig.cmd(b, &cdb, &p, 24).good();
    rig.cmd(a, &[0; 6], &[], 0)
        .check(sense::KEY_UNIT_ATTENTION, 0x2A, 0x05);
    let r = rig.cmd(a, &rw16(0x88, 0, 1), &[], 512);
    assert_eq!(r.status, status::RESERVATION_CONFLICT);
    rig.write(b, 0, &[3; BLOCK]).good();
    let keys = rig.cmd(a, &pr_in(pr::SA_READ_KEYS), &[], 4096);
    assert_eq!(&keys.good().data[4..8], &[0, 0, 0, 8], "only B's key");
    // Full status: B holds it.
    let full = rig.cmd(a, &pr_in(pr::SA_READ_FULL_STATUS), &[], 4096);
    let full = &full.good().data;
    assert_eq!(full[8 + 7], 0xB);
    assert_eq!(full[8 + 12], 0x01, "R_HOLDER");
    assert_eq!(full[8 + 13], pr::TYPE_EXCLUSIVE_ACCESS);
    assert_eq!(
        full[8 + 24],
        0x45,
        "TransportID: iSCSI with the port's ISID"
    );
    // A registers again; B changes to Exclusive Access Registrants Only: A may write.
    let (cdb, p) = pr_out(pr::SA_REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, 0xA2, false);
    rig.cmd(a, &cdb, &p, 24).good();
    let (cdb, p) = pr_out(
        pr::SA_PREEMPT_AND_ABORT,
        pr::TYPE_EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
        0xB,
        0xB,
        false,
    );
    rig.cmd(b, &cdb, &p, 24).good();
    // The type changed: the remaining registrant hears RESERVATIONS RELEASED.
    rig.cmd(a, &[0; 6], &[], 0)
        .check(sense::KEY_UNIT_ATTENTION, 0x2A, 0x04);
    rig.write(a, 0, &[4; BLOCK]).good();
    // Clear: everything goes, A hears RESERVATIONS PREEMPTED.
    let (cdb, p) = pr_out(pr::SA_CLEAR, 0, 0xB, 0, false);
    rig.cmd(b, &cdb, &p, 24).good();
    rig.cmd(a, &[0; 6], &[], 0)
        .check(sense::KEY_UNIT_ATTENTION, 0x2A, 0x03);
    let keys = rig.cmd(a, &pr_in(pr::SA_READ_KEYS), &[], 4096);
    assert_eq!(&keys.good().data[4..8], &[0, 0, 0, 0]);
    // Capabilities; a bad parameter list length.
    let caps = rig.cmd(a, &pr_in(pr::SA_REPORT_CAPABILITIES), &[], 4096);
    assert_eq!(&caps.good().data[..2], &[0, 8]);
    let (mut cdb, p) = pr_out(pr::SA_REGISTER, 0, 0, 1, false);
    cdb[8] = 20;
    rig.cmd(a, &cdb, &p[..20], 20)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x1A, 0);
}

#[test]
fn all_registrants_reservations_let_every_registrant_through() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 3).ready();
    for (n, key) in [(0, 1u64), (1, 2)] {
        let (cdb, p) = pr_out(pr::SA_REGISTER, 0, 0, key, false);
        rig.cmd(n, &cdb, &p, 24).good();
    }
    let (cdb, p) = pr_out(
        pr::SA_RESERVE,
        pr::TYPE_EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
        1,
        0,
        false,
    );
    rig.cmd(0, &cdb, &p, 24).good();
    rig.write(1, 0, &[1; BLOCK]).good();
    assert_eq!(
        rig.cmd(2, &rw16(0x88, 0, 1), &[], 512).status,
        status::RESERVATION_CONFLICT,
        "not registered"
    );
    let held = rig.cmd(2, &pr_in(pr::SA_READ_RESERVATION), &[], 4096);
    assert_eq!(
        &held.good().data[8..16],
        &[0; 8],
        "all-registrants key is 0"
    );
    // The reserving nexus unregisters: the others still hold it.
    let (cdb, p) = pr_out(pr::SA_REGISTER, 0, 1, 0, false);
    rig.cmd(0, &cdb, &p, 24).good();
    rig.write(1, 0, &[1; BLOCK]).good();
    assert_eq!(
        rig.write(0, 0, &[1; BLOCK]).status,
        status::RESERVATION_CONFLICT
    );
    // The last registrant unregisters: no reservation.
    let (cdb, p) = pr_out(pr::SA_REGISTER, 0, 2, 0, false);
    rig.cmd(1, &cdb, &p, 24).good();
    rig.write(2, 0, &[1; BLOCK]).good();
}

#[test]
fn aptpl_reservations_are_read_back_by_a_new_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = LuRegistry::new(dir.path());
    let probe = Rig::new(false, AccessMode::ReadWrite, 1);
    let lu = registry.get(&probe.volume);
    assert!(
        Arc::ptr_eq(&lu, &registry.get(&probe.volume)),
        "one per volume"
    );
    let mut rig = Rig::with_unit(false, AccessMode::ReadWrite, 2, Some(lu)).ready();
    let (cdb, p) = pr_out(pr::SA_REGISTER, 0, 0, 0x1234, true);
    rig.cmd(0, &cdb, &p, 24).good();
    let (cdb, p) = pr_out(pr::SA_RESERVE, pr::TYPE_WRITE_EXCLUSIVE, 0x1234, 0, false);
    rig.cmd(0, &cdb, &p, 24).good();
    let path = crate::scsi::logical_unit::pr_path(dir.path(), &rig.volume.uuid);
    assert!(path.exists());
    // A restart: a new registry reads the reservation back.
    let restarted = LuRegistry::new(dir.path());
    let mut after = Rig::with_unit(
        false,
        AccessMode::ReadWrite,
        2,
        Some(restarted.get(&rig.volume)),
    )
    .ready();
    assert_eq!(
        after.write(1, 0, &[1; BLOCK]).status,
        status::RESERVATION_CONFLICT
    );
    after.write(0, 0, &[1; BLOCK]).good();
    let keys = after.cmd(1, &pr_in(pr::SA_READ_KEYS), &[], 4096);
    assert_eq!(keys.good().data[15], 0x34);
    // APTPL cleared by a register: the file goes.
    let (cdb, p) = pr_out(pr::SA_REGISTER, 0, 0x1234, 0x1234, false);
    after.cmd(0, &cdb, &p, 24).good();
    assert!(!path.exists());
    // A file that does not parse is set aside; the unit starts without reservations.
    std::fs::write(&path, b"{ not json").expect("write");
    let lu = LuRegistry::new(dir.path()).get(&rig.volume);
    assert!(!lu.reservations.is_reserved());
    assert!(!path.exists());
    assert!(path.with_extension("json.corrupt").exists());
}

#[test]
fn spc2_reserve_and_release() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 2).ready();
    rig.cmd(0, &[0x16, 0, 0, 0, 0, 0], &[], 0).good();
    rig.cmd(0, &[0x16, 0, 0, 0, 0, 0], &[], 0).good();
    assert_eq!(
        rig.cmd(1, &[0; 6], &[], 0).status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(
        rig.cmd(1, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
            .status,
        status::RESERVATION_CONFLICT
    );
    rig.cmd(1, &inquiry(false, 0, 36), &[], 36).good();
    let (cdb, p) = pr_out(pr::SA_REGISTER, 0, 0, 5, false);
    assert_eq!(
        rig.cmd(1, &cdb, &p, 24).status,
        status::RESERVATION_CONFLICT
    );
    // A release by the other nexus is GOOD and changes nothing.
    rig.cmd(1, &[0x17, 0, 0, 0, 0, 0], &[], 0).good();
    assert_eq!(rig.read(0, 0, 1).len(), BLOCK);
    assert_eq!(
        rig.write(1, 0, &[1; BLOCK]).status,
        status::RESERVATION_CONFLICT
    );
    rig.cmd(0, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
        .good();
    rig.write(1, 0, &[1; BLOCK]).good();
    // A LUN reset releases it.
    rig.cmd(1, &[0x16, 0, 0, 0, 0, 0], &[], 0).good();
    rig.luns[1].reset();
    rig.cmd(0, &[0; 6], &[], 0)
        .check(sense::KEY_UNIT_ATTENTION, 0x29, 0x03);
    rig.cmd(0, &[0; 6], &[], 0).good();
    // Third-party reservations are refused.
    rig.cmd(0, &[0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
}

#[test]
fn tasks_are_bounded_and_aborted_ones_end_without_a_response() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 1).ready();
    let mut waiting = Vec::new();
    for i in 0..SCSI_TASKS_PER_LUN {
        let submitted = rig.with(|luns, ctx| {
            luns[0].submit(
                i as u32,
                &rw10(0x2A, i as u32, 1),
                512,
                DataDirection::Write,
                ctx,
            )
        });
        let Submit::NeedData { task, len } = submitted else {
            panic!("{submitted:?}");
        };
        assert_eq!(len, 512);
        waiting.push(task);
    }
    let busy = rig.with(|luns, ctx| luns[0].submit(99, &[0; 6], 0, DataDirection::None, ctx));
    assert_eq!(busy, Submit::Busy);
    assert!(rig.luns[0].abort_task(3));
    assert!(!rig.luns[0].abort_task(3), "already aborted");
    assert!(
        rig.luns[0].pop_done().is_none(),
        "no response for an aborted task"
    );
    rig.cmd(0, &[0; 6], &[], 0).good();
    rig.luns[0].abort_all();
    assert!(rig.luns[0].pop_done().is_none());
    assert!(rig.luns[0].is_idle());
    // Every task is free again.
    for i in 0..SCSI_TASKS_PER_LUN {
        let submitted = rig.with(|luns, ctx| {
            luns[0].submit(i as u32, &rw10(0x28, 0, 1), 512, DataDirection::Read, ctx)
        });
        assert!(matches!(submitted, Submit::Started { .. }), "{submitted:?}");
    }
    let mut done = 0;
    while let Some(d) = rig.luns[0].pop_done() {
        assert_eq!(d.status, status::GOOD);
        rig.luns[0].release(d.task);
        done += 1;
    }
    assert_eq!(done, SCSI_TASKS_PER_LUN);
}

/// Pseudo-random CDBs of every supported opcode, with pseudo-random Data-Out (parameter
/// lists included) and expected lengths: every one ends with some status, none panics,
/// and the LUN is idle with every task free afterwards.
#[test]
fn any_cdb_and_parameter_list_ends_with_a_status() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 1);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for supported in opcodes::SUPPORTED {
        for round in 0..60 {
            let mut cdb = [0u8; 16];
            for chunk in cdb.chunks_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes()[..chunk.len()]);
            }
            cdb[0] = supported.opcode;
            if let Some(action) = supported.service_action {
                if round % 2 == 0 {
                    cdb[1] = action as u8;
                }
            }
            // Mostly small counts and LBAs, so that commands get past the range checks.
            if round % 3 != 0 {
                for b in &mut cdb[2..] {
                    *b &= 0x01;
                }
                cdb[15] = 0;
                cdb[cdb.len() - 1] = 0;
            }
            let len = (next() % 4096) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let expected = if round % 4 == 0 { 0 } else { len as u32 };
            let dir = if round % 2 == 0 {
                DataDirection::Write
            } else {
                DataDirection::Read
            };
            let submitted = rig.with(|luns, ctx| luns[0].submit(round, &cdb, expected, dir, ctx));
            if let Submit::NeedData { task, .. } = submitted {
                let buf = rig.luns[0].data_out_buffer(task);
                let k = buf.len().min(data.len());
                buf[..k].copy_from_slice(&data[..k]);
                rig.with(|luns, ctx| luns[0].data_out_done(task, ctx));
            }
            assert_ne!(submitted, Submit::Busy);
            let done = rig.luns[0].pop_done().expect("finished");
            let _ = rig.luns[0].data_in(done.task);
            let _ = rig.luns[0].sense(done.task);
            rig.luns[0].release(done.task);
            assert!(rig.luns[0].pop_done().is_none());
        }
    }
    assert!(rig.luns[0].is_idle());
    // Every task is free: a full table can be taken again.
    assert_eq!(rig.luns[0].free_tasks.len(), SCSI_TASKS_PER_LUN);
}

#[test]
fn get_lba_status_prefetch_start_stop_defects_and_the_12_byte_verifies() {
    let mut rig = Rig::new(true, AccessMode::ReadWrite, 1).ready();
    // Extent 1 (blocks 2048..4096) written: deallocated, mapped, deallocated.
    rig.write(0, 2048 + 7, &[9; BLOCK]).good();
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9E;
    cdb[1] = 0x12;
    cdb[13] = 255;
    let status = rig.cmd(0, &cdb, &[], 255);
    let data = &status.good().data;
    assert_eq!(&data[..4], &[0, 0, 0, 4 + 3 * 16]);
    let descriptor = |i: usize| {
        let d = &data[8 + 16 * i..8 + 16 * (i + 1)];
        (
            u64::from_be_bytes(d[..8].try_into().unwrap()),
            u32::from_be_bytes(d[8..12].try_into().unwrap()),
            d[12],
        )
    };
    assert_eq!(descriptor(0), (0, 2048, 1));
    assert_eq!(descriptor(1), (2048, 2048, 0));
    assert_eq!(descriptor(2), (4096, 4096, 1));
    // From inside the mapped extent; past the end.
    cdb[2..10].copy_from_slice(&3000u64.to_be_bytes());
    let from = rig.cmd(0, &cdb, &[], 255);
    assert_eq!(
        &from.good().data[8..20],
        &[0, 0, 0, 0, 0, 0, 0x0B, 0xB8, 0, 0, 0x04, 0x48]
    );
    cdb[2..10].copy_from_slice(&BLOCKS.to_be_bytes());
    rig.cmd(0, &cdb, &[], 255)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x21, 0);
    // PRE-FETCH checks the range only; START STOP UNIT cannot eject.
    rig.cmd(0, &rw10(0x34, 0, 8), &[], 0).good();
    rig.cmd(0, &rw16(0x90, BLOCKS, 1), &[], 0)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x21, 0);
    rig.cmd(0, &[0x1B, 0, 0, 0, 0x01, 0], &[], 0).good();
    rig.cmd(0, &[0x1B, 0, 0, 0, 0x02, 0], &[], 0)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
    // READ DEFECT DATA: no defects, the request echoed.
    let defects = rig.cmd(0, &[0x37, 0, 0x1D, 0, 0, 0, 0, 0, 32, 0], &[], 32);
    assert_eq!(defects.good().data, vec![0, 0x1D, 0, 0]);
    let defects = rig.cmd(0, &[0xB7, 0x0C, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], &[], 32);
    assert_eq!(defects.good().data, vec![0, 0x0C, 0, 0, 0, 0, 0, 0]);
    // VERIFY(12) and WRITE AND VERIFY(12).
    let data = pattern(3, 2 * BLOCK);
    rig.cmd(0, &rw12(0xAE, 2048 + 20, 2), &data, data.len() as u32)
        .good();
    let mut verify = rw12(0xAF, 2048 + 20, 2);
    verify[1] = 0x02;
    rig.cmd(0, &verify, &data, data.len() as u32).good();
}

/// A session moves between threads before it is attached: its LUNs must be Send, and the
/// shared unit Send and Sync.
#[test]
fn a_scsi_lun_can_move_to_its_reactor() {
    fn send<T: Send>() {}
    fn shared<T: Send + Sync>() {}
    send::<ScsiLun>();
    shared::<LogicalUnit>();
    shared::<LuRegistry>();
}

#[test]
fn an_aborted_task_in_flight_ends_silently_when_its_io_does() {
    let mut rig = Rig::new(true, AccessMode::ReadWrite, 1).ready();
    // A write to an unmapped extent waits for the provisioner.
    let started = rig.start(0, &rw10(0x2A, 0, 1), &[5; BLOCK], 512);
    assert!(matches!(started, Submit::NeedData { .. }));
    assert!(rig.luns[0].pop_done().is_none());
    assert!(rig.luns[0].abort_task(7));
    assert!(!rig.luns[0].is_idle(), "the provisioner still has it");
    assert!(rig.answer_provisioner(0));
    assert!(rig.luns[0].pop_done().is_none(), "no response");
    assert!(rig.luns[0].is_idle());
    assert_eq!(rig.luns[0].free_tasks.len(), SCSI_TASKS_PER_LUN);
    // Shutting down drops what waits for data; what runs still answers.
    let waiting =
        rig.with(|luns, ctx| luns[0].submit(9, &rw10(0x2A, 1, 1), 512, DataDirection::Write, ctx));
    assert!(matches!(waiting, Submit::NeedData { .. }));
    rig.luns[0].shut_down();
    assert!(rig.luns[0].pop_done().is_none());
    assert_eq!(rig.luns[0].free_tasks.len(), SCSI_TASKS_PER_LUN);
    let after =
        rig.with(|luns, ctx| luns[0].submit(10, &rw10(0x28, 0, 1), 512, DataDirection::Read, ctx));
    assert!(matches!(after, Submit::Started { .. }));
    let done = rig.luns[0].pop_done().expect("refused at once");
    assert_eq!(done.status, status::CHECK_CONDITION);
    assert_eq!(
        Sense::parse_fixed(rig.luns[0].sense(done.task)).map(|s| s.key),
        Some(sense::KEY_ABORTED_COMMAND)
    );
    rig.luns[0].release(done.task);
}

#[test]
fn a_fully_provisioned_volume_has_no_unmap() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 1).ready();
    let list = unmap_list(&[(0, 1)]);
    rig.cmd(0, &unmap_cdb(list.len()), &list, list.len() as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x20, 0);
    let mut ws = rw16(0x93, 0, 1);
    ws[1] = 0x08;
    rig.cmd(0, &ws, &[0; BLOCK], BLOCK as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
    // WRITE SAME without UNMAP zeroes as on any volume.
    rig.write(0, 0, &[7; BLOCK]).good();
    ws[1] = 0;
    rig.cmd(0, &ws, &[0; BLOCK], BLOCK as u32).good();
    assert_eq!(rig.read(0, 0, 1), vec![0; BLOCK]);
    let one = rig.cmd(
        0,
        &[0xA3, 0x0C, 0x01, 0x42, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
        256,
    );
    assert_eq!(&one.good().data[..2], &[0, 0x01], "UNMAP: not supported");
}

#[test]
fn orwrite_ors_the_data_into_the_blocks() {
    let mut rig = Rig::new(false, AccessMode::ReadWrite, 1).ready();
    let old: Vec<u8> = (0..2 * BLOCK).map(|i| (i % 3) as u8 * 0x11).collect();
    rig.write(0, 40, &old).good();
    let mask: Vec<u8> = (0..2 * BLOCK).map(|i| 1 << (i % 8)).collect();
    let mut cdb = rw16(0x8B, 40, 2);
    cdb[1] = 0x08; // FUA
    rig.cmd(0, &cdb, &mask, mask.len() as u32).good();
    let want: Vec<u8> = old.iter().zip(&mask).map(|(a, b)| a | b).collect();
    assert_eq!(rig.read(0, 40, 2), want);
    assert!(rig.lu.interlock.is_empty());
    rig.cmd(0, &rw16(0x8B, 0, 0), &[], 0).good();
    rig.cmd(0, &rw16(0x8B, BLOCKS + 1, 0), &[], 0)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x21, 0);
    rig.cmd(0, &rw16(0x8B, BLOCKS - 1, 2), &mask, mask.len() as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x21, 0);
    let mut protect = rw16(0x8B, 0, 1);
    protect[1] = 0x20;
    rig.cmd(0, &protect, &mask[..BLOCK], BLOCK as u32)
        .check(sense::KEY_ILLEGAL_REQUEST, 0x24, 0);
}
