//! A pool whose on-disk metadata passes its checksums but names something outside the pool's
//! geometry: the server reports the damage, fails that pool, and keeps serving the others.

mod common;

use common::{verify, write_and_verify, Server};
use sds::pool::on_disk::{
    encode_journal_block, Checkpoint, ExtentRecord, JournalEntry, Superblock, CHECKPOINT_SLOTS,
    SUPERBLOCK_BYTES,
};
use serde_json::json;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// Reads `len` bytes at `offset` of `path`.
fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = std::fs::File::open(path).expect("open the LUN file");
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, offset)
        .expect("read the LUN file");
    bytes
}

/// Appends to the journal of the (stopped) pool LUN in `path` one block that is whole and
/// correctly checksummed, with the sequence and epoch replay expects next, carrying the entry
/// `entry` makes from the LUN's extent count. Returns the LUN block it was written to.
fn append_journal_block(path: &Path, entry: impl FnOnce(u64) -> JournalEntry) -> u64 {
    let superblock = Superblock::decode(&read_at(path, 0, SUPERBLOCK_BYTES as usize))
        .expect("a pool superblock");
    let layout = superblock.layout;
    let block = layout.block_size_bytes as usize;
    let checkpoint = (0..CHECKPOINT_SLOTS)
        .filter_map(|slot| {
            Checkpoint::decode(&read_at(path, layout.checkpoint_offset_bytes(slot), block))
        })
        .max_by_key(|c| c.generation)
        .expect("a valid checkpoint");
    let sequence = checkpoint.sequence + 1;
    let mut bytes = vec![0u8; block];
    encode_journal_block(
        sequence,
        checkpoint.epoch,
        &[entry(layout.extent_count)],
        &mut bytes,
    );
    let offset = layout.journal_block_offset_bytes(sequence);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the LUN file for writing");
    file.write_all_at(&bytes, offset).expect("write the block");
    file.sync_all().expect("sync");
    offset / block as u64
}

fn file_pool(server: &Server, pool: &str, luns: &[&str]) {
    for lun in luns {
        let path = server.dir.path().join(format!("{lun}.img"));
        server.ok(
            "lun_create",
            json!({"name": lun, "kind": "file", "path": path, "size": 32 * MIB, "block_size": 4096}),
        );
    }
    server.ok("pool_create", json!({"name": pool, "luns": luns}));
}

#[test]
fn a_journal_entry_past_the_lun_fails_its_pool_and_the_others_serve() {
    let mut server = Server::start();
    file_pool(&server, "hurt", &["h1", "h2"]);
    file_pool(&server, "well", &["w1"]);
    for (volume, pool) in [("hv", "hurt"), ("wv", "well")] {
        server.ok(
            "volume_create",
            json!({"name": volume, "pool": pool, "size": 8 * MIB}),
        );
    }
    let writes = [(0x3c, 0, MIB), (0x7e, 5 * MIB, 64 * 1024)];
    write_and_verify(&server.url("hv"), &writes);
    write_and_verify(&server.url("wv"), &writes);
    assert!(server.stop(), "the server did not stop cleanly");

    // Valid checksum, right sequence and epoch, but the physical extent just past the LUN's
    // last one (its record would land in the data area).
    let lun_path = server.dir.path().join("h2.img");
    let lun_block = append_journal_block(&lun_path, |extent_count| JournalEntry {
        extent: extent_count,
        record: Some(ExtentRecord {
            volume_uuid: [7; 16],
            virtual_extent: 0,
            sequence: 1 << 40,
        }),
    });

    server.spawn();
    let pools = server.ok("pool_get_pools", json!({}));
    let hurt = pools
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "hurt"))
        .unwrap_or_else(|| panic!("pool hurt is not listed: {pools}"));
    assert_eq!(hurt["state"], "failed", "{hurt}");
    let reason = hurt["reason"].as_str().unwrap_or_default();
    println!("pool hurt: {reason}");
    assert!(
        reason.contains("h2")
            && reason.contains(&lun_block.to_string())
            && reason.contains("extent"),
        "the reason names neither the LUN, the block nor the field: {reason}"
    );
    let volume = &server.ok("volume_get_volumes", json!({"name": "hv"}))[0];
    assert_eq!(volume["state"], "failed", "{volume}");
    assert!(
        server.log().contains(&format!("LUN block {lun_block}")),
        "the log does not report the damage"
    );
    // The other pool serves what was written before.
    let volume = &server.ok("volume_get_volumes", json!({"name": "wv"}))[0];
    assert_eq!(volume["state"], "online", "{volume}");
    verify(&server.url("wv"), &writes);
}

/// The 16 bytes of a volume's uuid as `volume_get_volumes` prints it.
fn uuid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("a hex uuid");
    }
    out
}

#[test]
fn a_record_past_the_end_of_its_volume_fails_its_pool() {
    let mut server = Server::start();
    file_pool(&server, "hurt", &["h1"]);
    file_pool(&server, "well", &["w1"]);
    server.ok(
        "volume_create",
        json!({"name": "hv", "pool": "hurt", "size": 8 * MIB}),
    );
    server.ok(
        "volume_create",
        json!({"name": "wv", "pool": "well", "size": 8 * MIB}),
    );
    let uuid = server.ok("volume_get_volumes", json!({"name": "hv"}))[0]["uuid"]
        .as_str()
        .map(uuid_bytes)
        .expect("uuid");
    let writes = [(0x42, MIB, 4096)];
    write_and_verify(&server.url("wv"), &writes);
    assert!(server.stop(), "the server did not stop cleanly");
    // A free physical extent now claims virtual extent 100 of an 8-extent volume.
    let lun_block = append_journal_block(&server.dir.path().join("h1.img"), |extent_count| {
        JournalEntry {
            extent: extent_count - 1,
            record: Some(ExtentRecord {
                volume_uuid: uuid,
                virtual_extent: 100,
                sequence: 1 << 40,
            }),
        }
    });
    server.spawn();
    let hurt = &server.ok("pool_get_pools", json!({"name": "hurt"}))[0];
    assert_eq!(hurt["state"], "failed", "{hurt}");
    let reason = hurt["reason"].as_str().unwrap_or_default();
    println!("pool hurt: {reason} (journal block at LUN block {lun_block})");
    assert!(
        reason.contains("h1") && reason.contains("virtual_extent") && reason.contains("hv"),
        "{reason}"
    );
    let volume = &server.ok("volume_get_volumes", json!({"name": "hv"}))[0];
    assert_eq!(volume["state"], "failed", "{volume}");
    verify(&server.url("wv"), &writes);
}
