//! Many sessions at a high queue depth on one reactor, on a slow LUN: more host requests in
//! flight than the reactor's ring may hold (its in-flight limit, `MAX_RING_IN_FLIGHT` less the entries kept for
//! receives and sends). Sessions that cannot get ring entries keep their requests and stop
//! reading until entries free up; every request completes, with the right data (fio's nbd
//! engine, several jobs, verify=crc32c), and the server stays responsive.

mod common;
use common::*;
use serde_json::json;

const MIB: u64 = 1 << 20;

#[test]
fn many_sessions_at_high_queue_depth_on_one_reactor_complete_with_the_right_data() {
    let server = Server::start_with(|_| vec!["--cores".into(), "1".into()]);
    // Every LUN I/O is held 10 ms (a fault LUN's delay: the I/O and a timer on the ring), so
    // the requests of all sessions pile up on the ring.
    server.ok(
        "lun_create",
        json!({"name": "base", "kind": "file", "size": 64 * MIB, "block_size": 4096}),
    );
    server.ok(
        "lun_create",
        json!({"name": "slow", "kind": "fault", "base": "base"}),
    );
    server.ok(
        "pool_create",
        json!({"name": "p", "luns": ["slow"], "extent_size": MIB}),
    );
    server.ok(
        "lun_inject_fault",
        json!({"name": "slow", "io_type": "all", "mode": "delay", "delay_us": 10_000}),
    );
    const JOBS: u64 = 24;
    const JOB_BYTES: u64 = 2 * MIB;
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": JOBS * JOB_BYTES}),
    );
    let url = server.url("v");
    let (ok, text) = fio(
        server.dir.path(),
        &[
            "--name=pressure".into(),
            "--ioengine=nbd".into(),
            format!("--uri={url}"),
            "--rw=randwrite".into(),
            "--bsrange=4k-64k".into(),
            "--iodepth=128".into(),
            format!("--numjobs={JOBS}"),
            format!("--size={JOB_BYTES}"),
            format!("--offset_increment={JOB_BYTES}"),
            "--verify=crc32c".into(),
            "--do_verify=1".into(),
            "--verify_fatal=1".into(),
            "--group_reporting=1".into(),
        ],
    );
    assert!(ok, "fio failed:\n{text}");
    assert!(
        !text.contains("verify: bad"),
        "fio found data it did not write:\n{text}"
    );
    let stat = &server.ok("bdev_get_iostat", json!({"name": "v"}))["bdevs"][0];
    assert_eq!(stat["num_errors"], 0, "{stat}");
    // A new client is served at once afterwards.
    write_and_verify(&url, &[(0x3d, 0, 4096)]);
}
