//! Keeps secret buffers out of swap and core dumps (locked, reused slabs) and the process out of core dumps; degrades quietly where mlock is not permitted.

use parking_lot::Mutex;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroize;

static WARNED: AtomicBool = AtomicBool::new(false);

/// Smallest and largest size classes served from slabs (64 B … 64 KiB, powers of two).
const MIN_SHIFT: u32 = 6;
const MAX_SHIFT: u32 = 16;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
/// Each slab is one mapping, locked and excluded from core dumps once.
const SLAB: usize = 64 * 1024;

/// Free buffers per size class (addresses inside slabs, which are never unmapped).
static FREE: Mutex<[Vec<usize>; CLASSES]> = Mutex::new([const { Vec::new() }; CLASSES]);

/// A byte buffer in locked memory (kept out of swap and core dumps), zeroized when dropped.
///
/// Locking each buffer on its own (`mlock` of a heap range) splits and merges the heap's
/// mappings on every open and close: measured at 13 % of the daemon's CPU in an open/close loop.
/// Small buffers therefore come from slabs of their size class that are locked once and reused;
/// buffers over 64 KiB get their own mapping.
pub struct LockedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// The size class's shift, or 0 for an own mapping (or an empty buffer).
    shift: u32,
}

// SAFETY: the buffer is owned exclusively and never written after construction except by Drop.
unsafe impl Send for LockedBuf {}
unsafe impl Sync for LockedBuf {}

fn map(size: usize) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping; the result is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: the range was just mapped by us.
    let rc = unsafe {
        libc::madvise(p, size, libc::MADV_DONTDUMP);
        libc::mlock(p, size)
    };
    if rc != 0 && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::info!(error = %std::io::Error::last_os_error(), "cannot mlock secret buffers; they may be swapped (grant CAP_IPC_LOCK or raise LimitMEMLOCK)");
    }
    NonNull::new(p.cast())
}

impl LockedBuf {
    /// Copies `src` into locked memory.
    pub fn copy_from(src: &[u8]) -> LockedBuf {
        if src.is_empty() {
            return LockedBuf { ptr: NonNull::dangling(), len: 0, shift: 0 };
        }
        let shift = src.len().next_power_of_two().trailing_zeros().max(MIN_SHIFT);
        let (ptr, shift) = if shift <= MAX_SHIFT {
            (Self::take(shift), shift)
        } else {
            let size = src.len().next_multiple_of(4096);
            (map(size).expect("out of memory for a secret buffer"), 0)
        };
        // SAFETY: ptr points to at least src.len() writable bytes that nothing else uses.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), ptr.as_ptr(), src.len()) };
        LockedBuf { ptr, len: src.len(), shift }
    }

    fn take(shift: u32) -> NonNull<u8> {
        let class = (shift - MIN_SHIFT) as usize;
        let mut free = FREE.lock();
        if free[class].is_empty() {
            let size = 1usize << shift;
            let slab = map(SLAB).expect("out of memory for a secret buffer");
            let base = slab.as_ptr() as usize;
            free[class].extend((0..SLAB / size).rev().map(|i| base + i * size));
        }
        let addr = free[class].pop().expect("a slab was just added");
        NonNull::new(addr as *mut u8).expect("slab addresses are not null")
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the life of self (dangling only when len is 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for LockedBuf {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: we own these len bytes exclusively; zeroize writes them with volatile stores.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }.zeroize();
        if self.shift == 0 {
            // SAFETY: an own mapping of this rounded size, made in copy_from.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len.next_multiple_of(4096)) };
        } else {
            let class = (self.shift - MIN_SHIFT) as usize;
            FREE.lock()[class].push(self.ptr.as_ptr() as usize);
        }
    }
}

/// Rendered contents shared by the handles of one open (and, for dynamic secrets, by the lease).
/// `expire` zeroizes the bytes; reads after that fail with `EKEYEXPIRED`.
pub struct SharedBytes {
    inner: parking_lot::RwLock<Option<LockedBuf>>,
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedBytes({:?} bytes)", self.len())
    }
}

impl SharedBytes {
    pub fn new(bytes: zeroize::Zeroizing<Vec<u8>>) -> Self {
        // Copied into locked memory; the rendering buffer is zeroized as it drops here.
        SharedBytes { inner: parking_lot::RwLock::new(Some(LockedBuf::copy_from(&bytes))) }
    }

    /// The length, or `None` once expired.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> Option<usize> {
        self.inner.read().as_ref().map(|b| b.len())
    }

    /// Calls `f` with the requested slice, or `None` once expired.
    pub fn with_slice<R>(&self, offset: u64, size: u32, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        let g = self.inner.read();
        match g.as_ref() {
            None => f(None),
            Some(b) => {
                let b = b.as_slice();
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                f(Some(&b[start..end]))
            }
        }
    }

    /// Zeroizes the bytes now; later reads see `None`.
    pub fn expire(&self) {
        let taken = self.inner.write().take();
        drop(taken);
    }
}

impl Drop for SharedBytes {
    fn drop(&mut self) {
        self.expire();
    }
}

/// Makes the process non-dumpable (no core file, no ptrace by other users) and sets the core size to 0.
pub fn harden_process() {
    // SAFETY: plain syscalls with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
    }
}

#[cfg(test)]
mod tests {
    use super::LockedBuf;

    #[test]
    fn buffers_hold_their_bytes_and_reuse_freed_slots() {
        for len in [0usize, 1, 63, 64, 65, 4096, 65536, 65537, 300_000] {
            let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let b = LockedBuf::copy_from(&src);
            assert_eq!(b.as_slice(), &src[..], "len {len}");
        }
        // The 16 KiB class: no other unit test allocates there, so last-in-first-out is certain.
        let first = vec![0xa5u8; 9000];
        let a = LockedBuf::copy_from(&first);
        let addr = a.as_slice().as_ptr() as usize;
        drop(a);
        let b = LockedBuf::copy_from(&[7u8; 8200]);
        assert_eq!(b.as_slice().as_ptr() as usize, addr, "a freed slot is reused");
        assert_eq!(b.as_slice(), &[7u8; 8200][..]);
        // The bytes past the new contents were zeroized when the first buffer was freed.
        // SAFETY: the slot is 16 KiB long and owned by `b`; reading its tail only.
        let tail = unsafe { std::slice::from_raw_parts((addr + 8200) as *const u8, 800) };
        assert!(tail.iter().all(|x| *x == 0), "freed bytes were not zeroized");
    }
}
