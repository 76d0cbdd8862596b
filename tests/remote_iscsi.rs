//! LUNs of other arrays, over iSCSI: tgtd (Debian's tgt, tests/common/tgtd.rs) is the foreign
//! array. First the harness itself, proven with libiscsi's own tools (iscsi-inq,
//! iscsi-readcapacity16) and qemu-io: several arrays at once, each its own size and block
//! size; data written before a `kill -9` reads back after the restart on the same port; a
//! resized backing file shows after a restart; a CHAP account keeps out an initiator without
//! the secret.

mod common;
use common::tgtd::{Tgtd, TgtdConfig};
use common::*;

const MIB: u64 = 1 << 20;
/// Any name: tgtd's target is bound to ALL initiators.
const INITIATOR: &str = "iqn.2026-11.org.sds.test:initiator";

#[test]
fn tgtd_harness_runs_parallel_arrays_that_survive_kill_9() {
    // Three arrays started at once from threads, as parallel tests would: each must get its
    // own portal and control port and serve its own file (told apart by size and block size).
    let configs = [(16 * MIB, 512u32), (24 * MIB, 4096), (32 * MIB, 512)];
    let dirs: Vec<tempfile::TempDir> = configs
        .iter()
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut arrays: Vec<Tgtd> = std::thread::scope(|scope| {
        let started: Vec<_> = configs
            .iter()
            .zip(&dirs)
            .map(|(&(size_bytes, block_size), dir)| {
                scope.spawn(move || {
                    Tgtd::start_with(
                        dir.path(),
                        TgtdConfig {
                            size_bytes,
                            block_size,
                            chap: None,
                        },
                    )
                })
            })
            .collect();
        started
            .into_iter()
            .map(|handle| handle.join().expect("start tgtd"))
            .collect()
    });
    let mut controls: Vec<u16> = arrays.iter().map(|a| a.control).collect();
    controls.sort_unstable();
    controls.dedup();
    assert_eq!(controls.len(), arrays.len(), "control ports shared");
    for (array, &(size_bytes, block_size)) in arrays.iter().zip(&configs) {
        let (ok, text) = iscsi_inq(&array.url(), INITIATOR, None);
        assert!(
            ok && text.contains("DIRECT_ACCESS"),
            "{}: {text}",
            array.url()
        );
        let (ok, text, size) = iscsi_readcapacity16(&array.url(), INITIATOR);
        assert!(ok, "{}: {text}", array.url());
        assert_eq!(size, Some(size_bytes), "{}: {text}", array.url());
        assert!(
            text.contains(&format!("LOGICAL BLOCK LENGTH IN BYTES:{block_size}")),
            "{text}"
        );
    }

    // Data written through the array outlives a kill -9 and a restart on the same port.
    let array = &mut arrays[0];
    let writes = [(0x5au8, 0u64, 64 * 1024u64), (0xa5, 5 * MIB, 4096)];
    let commands: Vec<String> = writes
        .iter()
        .map(|&(p, o, l)| format!("write -P {p} {o} {l}"))
        .collect();
    let (ok, text) = qemu_io_iscsi(&array.url(), INITIATOR, &commands);
    assert!(ok, "{text}");
    let port = array.port;
    array.kill();
    assert!(!array.is_running());
    let (ok, text, _) = iscsi_readcapacity16(&array.url(), INITIATOR);
    assert!(!ok, "the killed array still answers: {text}");
    array.restart();
    assert_eq!(array.port, port);
    assert_eq!(array.starts, 2);
    let commands: Vec<String> = writes
        .iter()
        .map(|&(p, o, l)| format!("read -P {p} {o} {l}"))
        .collect();
    let (ok, text) = qemu_io_iscsi(&array.url(), INITIATOR, &commands);
    assert!(ok, "data lost across the array's restart: {text}");

    // A resized backing file shows after a restart.
    array.resize_backing(20 * MIB);
    array.restart();
    let (ok, text, size) = iscsi_readcapacity16(&array.url(), INITIATOR);
    assert!(ok, "{text}");
    assert_eq!(size, Some(20 * MIB), "{text}");

    // The others never noticed.
    for (array, &(size_bytes, _)) in arrays.iter().zip(&configs).skip(1) {
        let (ok, text, size) = iscsi_readcapacity16(&array.url(), INITIATOR);
        assert!(ok && size == Some(size_bytes), "{}: {text}", array.url());
    }
}

#[test]
fn tgtd_harness_chap_keeps_out_an_initiator_without_the_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let array = Tgtd::start_with(
        dir.path(),
        TgtdConfig {
            chap: Some(("sdsuser".into(), "sdssecret12345".into())),
            ..TgtdConfig::new(8 * MIB)
        },
    );
    let (ok, text) = iscsi_inq(&array.url(), INITIATOR, None);
    assert!(!ok, "logged in without CHAP: {text}");
    let wrong = array
        .url()
        .replacen("iscsi://", "iscsi://sdsuser%wrongsecret99@", 1);
    let (ok, text) = iscsi_inq(&wrong, INITIATOR, None);
    assert!(!ok, "logged in with a wrong secret: {text}");
    let right = array
        .url()
        .replacen("iscsi://", "iscsi://sdsuser%sdssecret12345@", 1);
    let (ok, text, size) = iscsi_readcapacity16(&right, INITIATOR);
    assert!(ok && size == Some(8 * MIB), "{text}");
}
