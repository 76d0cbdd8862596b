//! The data `sds perf --verify` writes and expects back.
//!
//! Every I/O covers one whole unit of the job's region (`--bs` bytes at a multiple of `--bs`).
//! A write stamps its unit with a number (a per-job counter, never 0); each 8-byte word of the
//! unit then holds its own byte offset in the volume XOR a mix of the stamp. So a read finds
//! out whether it got the last data written to that unit (not an older write: the stamp), and
//! at that place (not another unit's: the offset). Stamp 0 is "never written": all zeroes,
//! which is what a new thick or thin volume reads as.

/// A unit whose content is unknown (a write to it failed): reads of it are not checked.
pub const UNKNOWN_STAMP: u32 = u32::MAX;

/// The word that stamp `stamp` puts at byte `offset_bytes` of the volume.
#[inline]
fn word(offset_bytes: u64, stamp: u32) -> u64 {
    if stamp == 0 {
        0
    } else {
        offset_bytes ^ (u64::from(stamp) | 1 << 40).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// Fills `buf` (the data of a unit at `offset_bytes` of the volume) with `stamp`'s pattern.
pub fn fill(buf: &mut [u8], offset_bytes: u64, stamp: u32) {
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(offset_bytes + 8 * i as u64, stamp).to_le_bytes());
    }
}

/// Where a unit's data first differs from what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Byte offset in the volume.
    pub offset_bytes: u64,
    pub expected: u64,
    pub found: u64,
    pub stamp: u32,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "byte {} of the volume holds {:#018x}, expected {:#018x} (write stamp {})",
            self.offset_bytes, self.found, self.expected, self.stamp
        )
    }
}

/// Checks that `buf`, read from `offset_bytes` of the volume, holds `stamp`'s pattern.
pub fn check(buf: &[u8], offset_bytes: u64, stamp: u32) -> Result<(), Mismatch> {
    for (i, chunk) in buf.chunks_exact(8).enumerate() {
        let at = offset_bytes + 8 * i as u64;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let found = u64::from_le_bytes(bytes);
        let expected = word(at, stamp);
        if found != expected {
            return Err(Mismatch {
                offset_bytes: at,
                expected,
                found,
                stamp,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_reads_back_and_any_change_is_caught() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 8192, 7);
        assert_eq!(check(&buf, 8192, 7), Ok(()));
        // An older write, another place, zeroes: all caught.
        assert!(check(&buf, 8192, 6).is_err());
        assert!(check(&buf, 4096, 7).is_err());
        assert!(check(&buf, 8192, 0).is_err());
        buf[4000] ^= 1;
        let mismatch = check(&buf, 8192, 7).expect_err("flipped bit");
        assert_eq!(mismatch.offset_bytes, 8192 + 4000 / 8 * 8);
        assert!(mismatch.to_string().contains("stamp 7"));
    }

    #[test]
    fn stamp_zero_is_a_never_written_unit() {
        let buf = vec![0u8; 512];
        assert_eq!(check(&buf, 1 << 30, 0), Ok(()));
        let mut written = vec![0u8; 512];
        fill(&mut written, 1 << 30, 1);
        assert!(written.iter().any(|&b| b != 0));
    }
}
