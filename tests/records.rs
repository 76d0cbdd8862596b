//! Configuration records: a half-written (corrupt) or missing record file stops start-up with a
//! message that names the file, and changes nothing; put back, the server starts as before.

mod common;
use common::*;
use serde_json::json;

const MIB: u64 = 1 << 20;

#[test]
fn a_corrupt_or_missing_record_stops_start_up_and_names_its_file() {
    let mut server = Server::start();
    server.file_pool("p", MIB);
    server.ok(
        "volume_create",
        json!({"name": "v", "pool": "p", "size": 4 * MIB}),
    );
    write_and_verify(&server.url("v"), &[(0x5e, 0, 65536)]);
    assert!(server.stop(), "the server did not stop cleanly");
    let config = server.state_dir.join("config");

    // A record cut in half, as a crash during a non-atomic write would leave it.
    let volume_record = config.join("volume-v.json");
    let good = std::fs::read(&volume_record).expect("volume record");
    std::fs::write(&volume_record, &good[..good.len() / 2]).expect("cut");
    let text = serve_must_fail(
        &["--state-dir".as_ref(), server.state_dir.as_os_str()],
        "the server started on a bad configuration record",
    );
    assert!(
        text.contains(&volume_record.display().to_string()),
        "the error does not name {}:\n{text}",
        volume_record.display()
    );
    std::fs::write(&volume_record, &good).expect("restore");

    // A pool whose LUN record is gone.
    let lun_record = config.join("lun-p-a.json");
    let lun_good = std::fs::read(&lun_record).expect("LUN record");
    std::fs::remove_file(&lun_record).expect("remove");
    let text = serve_must_fail(
        &["--state-dir".as_ref(), server.state_dir.as_os_str()],
        "the server started on a bad configuration record",
    );
    assert!(
        text.contains(&lun_record.display().to_string()),
        "the error does not name {}:\n{text}",
        lun_record.display()
    );
    std::fs::write(&lun_record, &lun_good).expect("restore");

    // Nothing was reset on the way: the server comes back with the volume and its data.
    server.spawn();
    assert_eq!(
        server.ok("volume_get_volumes", json!({"name": "v"}))[0]["name"],
        "v"
    );
    verify(&server.url("v"), &[(0x5e, 0, 65536)]);
}
