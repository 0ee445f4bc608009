//! `ChunkBuf`: the buffer a PATCH body's bytes are gathered in before the store takes them.
//!
//! Like a `BytesMut` of fixed capacity, except that a buffer of [`ALIGNED_FROM`] bytes or more
//! starts on a page: the embedded store's direct writes then take the chunk's blocks from it as
//! it is, where from an allocator's buffer (jemalloc offsets large allocations by a random
//! multiple of the cache line) they would copy it first. Smaller buffers are allocated as
//! usual, so a short body does not hold a page (the byte budget charges the capacity).

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use bytes::Bytes;

/// Capacities from which a buffer starts on a page: jemalloc gives such sizes whole pages
/// anyway (the store writes data from where it is from 64 KiB on, `log::ALIGNED_MIN`, and a
/// chunk buffer grows from 16 KiB).
pub(super) const ALIGNED_FROM: usize = 16 << 10;
const PAGE: usize = 4096;

/// A byte buffer of fixed capacity; grow by making a larger one and copying.
pub(super) struct ChunkBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: `ChunkBuf` owns its allocation exclusively, like a `Box<[u8]>`.
unsafe impl Send for ChunkBuf {}

impl Default for ChunkBuf {
    fn default() -> Self {
        ChunkBuf {
            ptr: NonNull::dangling(),
            cap: 0,
            len: 0,
        }
    }
}

impl ChunkBuf {
    /// An empty buffer for `cap` bytes (page-aligned from [`ALIGNED_FROM`] on).
    pub(super) fn with_capacity(cap: usize) -> Self {
        let Some(layout) = Self::layout(cap) else {
            return ChunkBuf::default();
        };
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout);
        };
        ChunkBuf { ptr, cap, len: 0 }
    }

    /// The allocation's layout for `cap` bytes; `None` for 0 (nothing allocated).
    fn layout(cap: usize) -> Option<Layout> {
        if cap == 0 {
            return None;
        }
        let align = if cap >= ALIGNED_FROM { PAGE } else { 1 };
        // a chunk is far below isize::MAX; a size that is not is a caller's bug
        Some(Layout::from_size_align(cap, align).unwrap_or_else(|_| {
            panic!("chunk buffer of {cap} bytes");
        }))
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn capacity(&self) -> usize {
        self.cap
    }

    /// Appends `bytes`; they must fit in the capacity (the caller grows first).
    pub(super) fn extend_from_slice(&mut self, bytes: &[u8]) {
        assert!(
            bytes.len() <= self.cap - self.len,
            "chunk buffer overflow: {} + {} > {}",
            self.len,
            bytes.len(),
            self.cap
        );
        // SAFETY: the destination is inside our allocation (checked above) and cannot overlap
        // a slice the caller holds (we are borrowed mutably).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                bytes.len(),
            );
        }
        self.len += bytes.len();
    }

    /// The buffer as `Bytes`, without a copy.
    pub(super) fn freeze(self) -> Bytes {
        if self.is_empty() {
            Bytes::new()
        } else {
            Bytes::from_owner(self)
        }
    }
}

impl AsRef<[u8]> for ChunkBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of the allocation are initialized (written by
        // `extend_from_slice`); a dangling pointer with length 0 is a valid empty slice.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.cap) {
            // SAFETY: allocated in `with_capacity` with this layout, freed once.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_bytes_and_freezes_them_in_place() {
        for cap in [0, 1, 300, ALIGNED_FROM - 1, ALIGNED_FROM, 256 << 10] {
            let mut buf = ChunkBuf::with_capacity(cap);
            assert_eq!((buf.len(), buf.capacity()), (0, cap));
            let data: Vec<u8> = (0..cap).map(|i| (i % 251) as u8).collect();
            let half = cap / 2;
            buf.extend_from_slice(&data[..half]);
            buf.extend_from_slice(&data[half..]);
            assert_eq!(buf.as_ref(), &data[..]);
            let at = buf.as_ref().as_ptr();
            if cap >= ALIGNED_FROM {
                assert!(at.addr().is_multiple_of(PAGE), "{cap} bytes at {at:?}");
            }
            let frozen = buf.freeze();
            assert_eq!(&frozen[..], &data[..]);
            if cap > 0 {
                assert_eq!(frozen.as_ptr(), at, "frozen without a copy");
            }
        }
    }

    #[test]
    #[should_panic(expected = "chunk buffer overflow")]
    fn refuses_bytes_past_its_capacity() {
        let mut buf = ChunkBuf::with_capacity(4);
        buf.extend_from_slice(b"hello");
    }
}
