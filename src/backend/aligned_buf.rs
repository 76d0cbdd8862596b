//! A heap buffer aligned for O_DIRECT. Request slots, metadata sectors and bounce buffers all
//! use it, so any buffer can be handed to any LUN whatever its block size.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Alignment of every buffer: the largest LUN block size and the page size.
pub const BUFFER_ALIGN_BYTES: usize = 4096;

/// An owned, zero-initialised, 4096-byte-aligned byte buffer of fixed capacity.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: like Box<[u8]>: a shared reference allows only reads of the owned bytes (as_slice,
// as_ptr); every way to write them takes &mut self. Memory that threads write while sharing it
// is a `mem_region::MemRegion`, never an AlignedBuf.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (rounded up to the alignment; at least one block).
    pub fn new(len: usize) -> Self {
        let len = len
            .max(BUFFER_ALIGN_BYTES)
            .next_multiple_of(BUFFER_ALIGN_BYTES);
        let layout = Self::layout(len);
        // SAFETY: layout has a non-zero size (len >= 4096) and a power-of-two alignment.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout);
        };
        Self { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        match Layout::from_size_align(len, BUFFER_ALIGN_BYTES) {
            Ok(layout) => layout,
            Err(_) => panic!("buffer of {len} bytes exceeds the address space"),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len initialised bytes and &mut self makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated in new() with exactly this layout and not freed since.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut buf = AlignedBuf::new(10);
        assert_eq!(buf.len(), 4096);
        assert_eq!(buf.as_ptr() as usize % BUFFER_ALIGN_BYTES, 0);
        assert!(buf.as_slice().iter().all(|&b| b == 0));
        buf.as_mut_slice()[4095] = 7;
        assert_eq!(buf.as_slice()[4095], 7);
    }
}
