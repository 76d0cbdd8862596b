//! Device memory that several threads address at once: the storage of a RAM LUN.
//!
//! Reactors serve a RAM LUN concurrently, each copying host data in and out of it, and hosts
//! may send overlapping writes at the same time (a disk gives them unspecified bytes, never
//! an error). A `&mut [u8]` to shared memory, or plain copies racing on it, would be
//! undefined behaviour in Rust's memory model, so the region is a slice of `AtomicU64`
//! (each an `UnsafeCell`) and every access to it is a relaxed atomic word load or store:
//! racing overlapping writes leave some mix of the writers' 8-byte words, with no undefined
//! behaviour and nothing a reader can observe that a real device could not produce. Relaxed
//! word accesses compile to plain moves; only the byte-wise vectorised `memcpy` is lost.
//! Ordering between a write and a later read is the caller's (the front end completes a
//! write before it lets a dependent read start, and the reactor handoffs are synchronising).
//!
//! The memory is an anonymous private mapping: the kernel hands out zeroed pages on first
//! touch, and a mapping the kernel will not grant fails with an error, never an abort.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

const WORD_BYTES: usize = std::mem::size_of::<u64>();

/// Zeroed memory of a fixed size, written and read through shared references from any
/// thread. Every offset and length handed to it is a multiple of 8 bytes (LUN I/O is
/// block-aligned); the host-side buffers may have any alignment.
pub struct MemRegion {
    words: NonNull<AtomicU64>,
    len_bytes: usize,
}

// SAFETY: the region owns its mapping; every access through `&self` is an atomic word access,
// so sharing it between threads is as sound as sharing a `[AtomicU64]`.
unsafe impl Send for MemRegion {}
// SAFETY: as above.
unsafe impl Sync for MemRegion {}

impl MemRegion {
    /// Maps `len_bytes` (a non-zero multiple of 8) of zeroed memory, or fails with the
    /// kernel's error (ENOMEM when it will not grant that much).
    pub fn new(len_bytes: usize) -> std::io::Result<Self> {
        if len_bytes == 0 || len_bytes % WORD_BYTES != 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a fresh anonymous private mapping at an address the kernel picks; no
        // existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let Some(words) = NonNull::new(raw.cast::<AtomicU64>()) else {
            return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
        };
        Ok(Self { words, len_bytes })
    }

    pub fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    /// The words covering `offset_bytes..offset_bytes + len_bytes`.
    ///
    /// # Panics
    /// If the range is not inside the region or not word-aligned: callers check ranges first
    /// (`check_range`), so this is a bug of the caller.
    fn words(&self, offset_bytes: usize, len_bytes: usize) -> &[AtomicU64] {
        assert!(
            offset_bytes % WORD_BYTES == 0
                && len_bytes % WORD_BYTES == 0
                && offset_bytes
                    .checked_add(len_bytes)
                    .is_some_and(|end| end <= self.len_bytes),
            "region access {offset_bytes}+{len_bytes} outside {} bytes or unaligned",
            self.len_bytes
        );
        // SAFETY: the mapping holds len_bytes / 8 zero-initialised, 8-aligned (page-aligned
        // base) AtomicU64 for as long as self lives; the range is inside it (asserted), and
        // shared references to atomics may coexist on any thread.
        unsafe {
            std::slice::from_raw_parts(
                self.words.as_ptr().add(offset_bytes / WORD_BYTES),
                len_bytes / WORD_BYTES,
            )
        }
    }

    /// Copies `len_bytes` at `offset_bytes` out to `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len_bytes` bytes, and nobody else may access those
    /// bytes during the call.
    pub unsafe fn read_into(&self, offset_bytes: usize, dst: *mut u8, len_bytes: usize) {
        for (i, word) in self.words(offset_bytes, len_bytes).iter().enumerate() {
            let value = word.load(Ordering::Relaxed);
            // SAFETY: i * 8 + 8 <= len_bytes, inside what the caller made valid for writes;
            // unaligned stores, as the host buffer may have any alignment.
            unsafe { dst.add(i * WORD_BYTES).cast::<u64>().write_unaligned(value) };
        }
    }

    /// Copies `len_bytes` from `src` in at `offset_bytes`.
    ///
    /// # Safety
    /// `src` must be valid for reads of `len_bytes` bytes, and nobody may write them during the
    /// call.
    pub unsafe fn write_from(&self, offset_bytes: usize, src: *const u8, len_bytes: usize) {
        for (i, word) in self.words(offset_bytes, len_bytes).iter().enumerate() {
            // SAFETY: i * 8 + 8 <= len_bytes, inside what the caller made valid for reads.
            let value = unsafe { src.add(i * WORD_BYTES).cast::<u64>().read_unaligned() };
            word.store(value, Ordering::Relaxed);
        }
    }

    /// Zeroes `len_bytes` at `offset_bytes`.
    pub fn zero(&self, offset_bytes: usize, len_bytes: usize) {
        for word in self.words(offset_bytes, len_bytes) {
            word.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for MemRegion {
    fn drop(&mut self) {
        // SAFETY: words and len_bytes are exactly the mapping made in new(); nothing borrows
        // from it once the region is being dropped.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.len_bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_in_and_out_with_any_host_alignment() {
        let region = MemRegion::new(4096).expect("region");
        let source: Vec<u8> = (0..100u8).collect();
        // SAFETY: source[1..65] is 64 readable bytes, unaligned on purpose.
        unsafe { region.write_from(512, source.as_ptr().add(1), 64) };
        let mut back = vec![0u8; 67];
        // SAFETY: back[3..67] is 64 writable bytes we own.
        unsafe { region.read_into(512, back.as_mut_ptr().add(3), 64) };
        assert_eq!(&back[3..], &source[1..65]);
        region.zero(512, 8);
        // SAFETY: as above.
        unsafe { region.read_into(512, back.as_mut_ptr(), 16) };
        assert_eq!(&back[..8], &[0; 8]);
        assert_eq!(&back[8..16], &source[9..17]);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot ask the kernel for a mapping")]
    fn refuses_what_cannot_be_had() {
        assert!(MemRegion::new(0).is_err());
        assert!(MemRegion::new(12).is_err());
        // Far past any machine's memory and swap: the kernel refuses the mapping.
        assert!(MemRegion::new(1 << 62).is_err());
    }
}
