//! The pool's on-disk decoders, which read whatever a LUN holds at start-up: a corrupt or
//! foreign disk must give an error, never a panic. The first byte picks the block size the
//! rest is read as (512 or 4096 bytes, zero-padded); every decoder sees the same block. What
//! decodes must encode back to the same meaning.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sds::pool::on_disk::{
    decode_journal_block, encode_journal_block, Checkpoint, ExtentRecord, RecordState, Superblock,
    SUPERBLOCK_BYTES,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let block_bytes = if selector & 1 == 0 { 512 } else { 4096 };
    let mut block = vec![0u8; (SUPERBLOCK_BYTES as usize).max(block_bytes)];
    let take = rest.len().min(block.len());
    block[..take].copy_from_slice(&rest[..take]);

    if let Ok(superblock) = Superblock::decode(&block) {
        let mut again = vec![0u8; SUPERBLOCK_BYTES as usize];
        superblock.encode(&mut again);
        assert_eq!(Superblock::decode(&again).ok(), Some(superblock));
        // Whatever the fields say, checking them against a LUN never panics, and a layout
        // that passes keeps every derived offset inside that LUN.
        let lun_bytes = u64::from_le_bytes(block[200..208].try_into().unwrap_or_default());
        let layout = superblock.layout;
        if layout.validate(lun_bytes, layout.block_size_bytes).is_ok() {
            assert!(layout.record_offset_bytes(layout.extent_count) <= layout.data_offset_bytes);
            assert!(layout.extent_offset_bytes(layout.extent_count) <= lun_bytes);
        }
    }
    let block = &block[..block_bytes];
    if let RecordState::Used(record) = ExtentRecord::decode(block) {
        let mut again = vec![0u8; block_bytes];
        record.encode(&mut again);
        assert_eq!(ExtentRecord::decode(&again), RecordState::Used(record));
    }
    if let RecordState::Used(record) = ExtentRecord::decode(block) {
        let _ = record.validate();
    }
    if let Some(checkpoint) = Checkpoint::decode(block) {
        let _ = checkpoint.validate();
        let mut again = vec![0u8; block_bytes];
        checkpoint.encode(&mut again);
        assert_eq!(Checkpoint::decode(&again), Some(checkpoint));
    }
    let mut entries = Vec::new();
    let expected = u64::from_le_bytes(block[8..16].try_into().unwrap_or_default());
    let min_epoch = u64::from(selector >> 1);
    if let Ok(epoch) = decode_journal_block(block, expected, min_epoch, &mut entries) {
        let mut again = vec![0u8; block_bytes];
        encode_journal_block(expected, epoch, &entries, &mut again);
        let mut decoded = Vec::new();
        assert_eq!(
            decode_journal_block(&again, expected, min_epoch, &mut decoded),
            Ok(epoch)
        );
        assert_eq!(decoded, entries);
    }
});
