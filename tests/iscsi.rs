//! The iSCSI target with initiators this project did not write: libiscsi's iscsi-ls,
//! iscsi-inq and iscsi-readcapacity16, and qemu-io's iscsi driver (qemu-block-extra), on a
//! host's VPs at their LUN numbers; what goes in over iSCSI comes back over NBD too.

mod common;

use common::{iscsi_inq, iscsi_ls, iscsi_readcapacity16, qemu_io_iscsi, Server};
use serde_json::json;

const INITIATOR: &str = "iqn.2026-11.org.sds.test:initiator";
const STRANGER: &str = "iqn.2026-11.org.sds.test:stranger";

/// A server with a file pool, volumes `a` (64 MiB) and `b` (32 MiB), and host `h` (this
/// initiator) with VPs to `a` at LUN 0 and `b` at LUN 3; returns the target name.
fn served(server: &Server) -> String {
    server.file_pool("p", 1 << 20);
    server.ok(
        "volume_create",
        json!({"name": "a", "pool": "p", "size": 64u64 << 20}),
    );
    server.ok(
        "volume_create",
        json!({"name": "b", "pool": "p", "size": 32u64 << 20}),
    );
    server.ok("host_create", json!({"name": "h", "iqn": INITIATOR}));
    server.ok(
        "vpath_create",
        json!({"host": "h", "volume": "a", "lun": 0}),
    );
    server.ok(
        "vpath_create",
        json!({"host": "h", "volume": "b", "lun": 3}),
    );
    server.iscsi_target()
}

#[test]
fn qemu_writes_patterns_across_extents_and_luns_and_reads_them_back_over_iscsi_and_nbd() {
    let server = Server::start();
    served(&server);
    // Pieces across extent boundaries (1 MiB extents), unaligned to them, one past 4 MiB.
    let writes_a: [(u8, u64, u64); 3] = [
        (0x11, 0, 4096),
        (0x22, (1 << 20) - 1024, 8192),
        (0x33, 5 << 20, 5 << 20),
    ];
    let writes_b: [(u8, u64, u64); 2] = [(0x44, 512, 1536), (0x55, (31 << 20), 1 << 20)];
    for (lun, writes) in [(0u32, &writes_a[..]), (3, &writes_b[..])] {
        let mut commands: Vec<String> = writes
            .iter()
            .map(|&(p, o, l)| format!("write -P {p} {o} {l}"))
            .collect();
        commands.extend(
            writes
                .iter()
                .map(|&(p, o, l)| format!("read -P {p} {o} {l}")),
        );
        let (clean, text) = qemu_io_iscsi(&server.iscsi_url(lun), INITIATOR, &commands);
        assert!(clean, "qemu-io over iSCSI, LUN {lun}:\n{text}");
        assert_eq!(
            text.matches("read ").count(),
            writes.len(),
            "every read ran:\n{text}"
        );
    }
    // The same bytes through the other front end, and the LUNs did not mix.
    common::verify(&server.url("a"), &writes_a);
    common::verify(&server.url("b"), &writes_b);
    let (clean, text) = qemu_io_iscsi(
        &server.iscsi_url(3),
        INITIATOR,
        &["read -P 0 0 512".into(), "read -P 0 2048 4096".into()],
    );
    assert!(
        clean,
        "LUN 3 reads zeroes where nothing was written:\n{text}"
    );
}

#[test]
fn libiscsi_tools_see_the_target_its_luns_and_their_capacity() {
    let server = Server::start();
    let target = served(&server);
    let portal = format!("iscsi://127.0.0.1:{}", server.iscsi_port());
    let (ok, text) = iscsi_ls(&portal, INITIATOR);
    assert!(ok, "iscsi-ls:\n{text}");
    assert!(text.contains(&target), "the target is listed:\n{text}");
    assert!(
        text.contains("Lun:0") && text.contains("Lun:3"),
        "both LUNs are listed:\n{text}"
    );
    let (ok, text) = iscsi_inq(&server.iscsi_url(0), INITIATOR, None);
    assert!(ok, "iscsi-inq:\n{text}");
    assert!(text.contains("SDS"), "vendor identification:\n{text}");
    let (ok, text, _) = iscsi_readcapacity16(&server.iscsi_url(3), INITIATOR);
    assert!(ok, "iscsi-readcapacity16:\n{text}");
    let blocks = (32u64 << 20) / 4096;
    assert!(
        text.contains(&format!("RETURNED LOGICAL BLOCK ADDRESS:{}", blocks - 1))
            && text.contains("LOGICAL BLOCK LENGTH IN BYTES:4096"),
        "the last LBA of a 32 MiB volume of 4096-byte blocks:\n{text}"
    );
}

#[test]
fn an_initiator_without_a_vp_sees_no_target_and_cannot_log_in() {
    let server = Server::start();
    let target = served(&server);
    let portal = format!("iscsi://127.0.0.1:{}", server.iscsi_port());
    let (_, text) = iscsi_ls(&portal, STRANGER);
    assert!(
        !text.contains(&target),
        "a stranger is shown no target:\n{text}"
    );
    let (ok, text) = iscsi_inq(&server.iscsi_url(0), STRANGER, None);
    assert!(!ok, "a stranger's login fails:\n{text}");
    // A host with no VP is no better.
    server.ok("host_create", json!({"name": "lonely", "iqn": STRANGER}));
    let (ok, text) = iscsi_inq(&server.iscsi_url(0), STRANGER, None);
    assert!(!ok, "a host with no VP cannot log in:\n{text}");
}
