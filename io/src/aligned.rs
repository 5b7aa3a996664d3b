//! [`AlignedBuf`]: a growable heap byte buffer whose start is aligned to
//! [`BLOCK_SIZE_BYTES`] (4096), the unit O_DIRECT needs for buffer addresses, file
//! offsets and lengths. It owns its allocation exactly like `Vec<u8>` does; all
//! `unsafe` of this crate's buffers lives here, behind a safe API.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// The O_DIRECT block: buffer addresses, file offsets and IO lengths are multiples of
/// it. 4096 covers both 512-byte and 4 KiB logical-block devices.
pub const BLOCK_SIZE_BYTES: usize = 4096;

/// Rounds `v` down to a multiple of [`BLOCK_SIZE_BYTES`].
pub const fn align_down(v: u64) -> u64 {
    v & !(BLOCK_SIZE_BYTES as u64 - 1)
}

/// Rounds `v` up to a multiple of [`BLOCK_SIZE_BYTES`] (saturating at the top).
pub const fn align_up(v: u64) -> u64 {
    align_down(v.saturating_add(BLOCK_SIZE_BYTES as u64 - 1))
}

/// A zero-initialised byte buffer whose first byte is 4096-aligned and whose capacity
/// is a whole number of blocks, so `as_slice()` can be handed to O_DIRECT as is once
/// its length is block-aligned.
pub struct AlignedBuf {
    /// Invariant: points to an allocation made with `layout_for(capacity)` (never
    /// zero-sized: capacity ≥ one block) and all `capacity` bytes are initialised.
    ptr: NonNull<u8>,
    /// Bytes in use; `len <= capacity`.
    len: usize,
    /// Allocated bytes; a non-zero multiple of [`BLOCK_SIZE_BYTES`].
    capacity: usize,
}

// SAFETY: AlignedBuf uniquely owns its allocation (like Vec<u8>); no interior sharing.
unsafe impl Send for AlignedBuf {}
// SAFETY: &AlignedBuf only gives out &[u8]; no interior mutability.
unsafe impl Sync for AlignedBuf {}

fn layout_for(capacity: usize) -> Layout {
    // A capacity that overflows a Layout is an allocation failure, like Vec's.
    match Layout::from_size_align(capacity, BLOCK_SIZE_BYTES) {
        Ok(layout) => layout,
        Err(_) => capacity_overflow(capacity),
    }
}

#[cold]
fn capacity_overflow(capacity: usize) -> ! {
    // Same policy as Vec: an impossible allocation size is a caller bug, not an IO error.
    panic!("AlignedBuf capacity overflow: {capacity} bytes")
}

fn round_capacity(len: usize) -> usize {
    let blocks = len.div_ceil(BLOCK_SIZE_BYTES).max(1);
    match blocks.checked_mul(BLOCK_SIZE_BYTES) {
        Some(c) => c,
        None => capacity_overflow(len),
    }
}

impl AlignedBuf {
    /// A buffer of `len` zero bytes (capacity rounded up to whole blocks, at least one).
    pub fn zeroed(len: usize) -> Self {
        let capacity = round_capacity(len);
        let layout = layout_for(capacity);
        // SAFETY: layout has non-zero size (capacity ≥ one block).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len, capacity }
    }

    /// An empty buffer with room for `capacity` bytes without reallocating.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Self::zeroed(capacity);
        buf.len = 0;
        buf
    }

    /// A copy of `bytes` in an aligned buffer.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut buf = Self::zeroed(bytes.len());
        buf.as_mut_slice().copy_from_slice(bytes);
        buf
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated bytes: a multiple of [`BLOCK_SIZE_BYTES`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for capacity ≥ len initialised bytes, uniquely owned.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes from the start up to `len` rounded up to a whole block: the region an
    /// O_DIRECT write of this buffer covers. Bytes past `len` are zero (see
    /// [`AlignedBuf::truncate`]), so padding never leaks stale data.
    pub fn as_block_padded_slice(&self) -> &[u8] {
        let padded = self.len.div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES;
        // SAFETY: padded ≤ capacity (capacity is a block multiple ≥ len) and all
        // capacity bytes are initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), padded) }
    }

    /// Sets the length to `new_len`; new bytes are zero. Grows the allocation (keeping
    /// the alignment) when needed, at least doubling to amortise appends.
    pub fn resize(&mut self, new_len: usize) {
        if new_len > self.capacity {
            let wanted = new_len.max(self.capacity.saturating_mul(2));
            self.grow_to(round_capacity(wanted));
        }
        if new_len < self.len {
            self.truncate(new_len);
        } else {
            self.len = new_len;
        }
    }

    /// Shortens to `new_len` (no-op if longer) and zeroes the dropped bytes, keeping
    /// the invariant that bytes between `len` and `capacity` are zero.
    pub fn truncate(&mut self, new_len: usize) {
        if new_len >= self.len {
            return;
        }
        let old_len = self.len;
        self.as_mut_slice()[new_len..old_len].fill(0);
        self.len = new_len;
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let old_len = self.len;
        self.resize(old_len + bytes.len());
        self.as_mut_slice()[old_len..].copy_from_slice(bytes);
    }

    /// Removes the first `n` bytes (all if `n > len`), moving the rest to the front.
    pub fn drain_front(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        let len = self.len;
        self.as_mut_slice().copy_within(n..len, 0);
        self.truncate(len - n);
    }

    fn grow_to(&mut self, new_capacity: usize) {
        debug_assert!(
            new_capacity > self.capacity && new_capacity.is_multiple_of(BLOCK_SIZE_BYTES)
        );
        let new_layout = layout_for(new_capacity);
        let old_layout = layout_for(self.capacity);
        // SAFETY: ptr was allocated with old_layout; new size is non-zero and a valid
        // Layout size with the same alignment (realloc keeps the old alignment).
        let raw = unsafe { alloc::realloc(self.ptr.as_ptr(), old_layout, new_capacity) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(new_layout)
        };
        // SAFETY: realloc preserved the first `capacity` bytes; the grown tail is
        // uninitialised, so zero it to keep "all capacity bytes initialised and zero
        // past len".
        unsafe {
            std::ptr::write_bytes(
                ptr.as_ptr().add(self.capacity),
                0,
                new_capacity - self.capacity,
            );
        }
        self.ptr = ptr;
        self.capacity = new_capacity;
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with layout_for(capacity) and is freed once here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout_for(self.capacity)) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        Self::from_slice(self.as_slice())
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl PartialEq for AlignedBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for AlignedBuf {}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        for len in [0, 1, 4095, 4096, 4097, 3 * 4096 + 17] {
            let buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.as_slice().as_ptr() as usize % BLOCK_SIZE_BYTES, 0);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.capacity() % BLOCK_SIZE_BYTES, 0);
            assert!(buf.iter().all(|&b| b == 0));
            assert_eq!(buf.as_block_padded_slice().len(), len.div_ceil(4096) * 4096);
        }
    }

    #[test]
    fn grow_truncate_drain_keep_alignment_and_zero_padding() {
        let mut buf = AlignedBuf::with_capacity(10);
        for i in 0..20_000u32 {
            buf.extend_from_slice(&[(i % 251) as u8]);
        }
        assert_eq!(buf.as_slice().as_ptr() as usize % BLOCK_SIZE_BYTES, 0);
        assert_eq!(buf.len(), 20_000);
        assert!(buf.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        buf.truncate(5000);
        assert!(buf.as_block_padded_slice()[5000..].iter().all(|&b| b == 0));
        buf.drain_front(4096);
        assert_eq!(buf.len(), 904);
        assert_eq!(buf[0], (4096 % 251) as u8);
        assert!(buf.as_block_padded_slice()[904..].iter().all(|&b| b == 0));
        buf.resize(9000);
        assert!(buf[904..].iter().all(|&b| b == 0));
        buf.clear();
        assert!(buf.is_empty());
    }

    #[test]
    fn align_helpers() {
        assert_eq!(align_down(4097), 4096);
        assert_eq!(align_up(4097), 8192);
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(u64::MAX), align_down(u64::MAX));
    }
}
