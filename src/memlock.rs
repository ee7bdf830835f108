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

/// No memory for a secret's bytes: the mapping that would hold them was refused (`ENOMEM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no memory for a secret's bytes ({bytes} bytes could not be mapped)")]
pub struct OutOfMemory {
    pub bytes: usize,
}

impl From<OutOfMemory> for std::io::Error {
    fn from(e: OutOfMemory) -> Self {
        std::io::Error::new(std::io::ErrorKind::OutOfMemory, e)
    }
}

#[cfg(test)]
thread_local! {
    /// Unit tests: mappings larger than this fail on this thread as an exhausted system's would.
    static MAP_LIMIT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Unit tests: makes this thread's mappings over `limit` bytes fail until the guard drops.
#[cfg(test)]
pub fn limit_maps(limit: usize) -> impl Drop {
    struct Reset(usize);
    impl Drop for Reset {
        fn drop(&mut self) {
            MAP_LIMIT.with(|l| l.set(self.0));
        }
    }
    Reset(MAP_LIMIT.with(|l| l.replace(limit)))
}

fn map(size: usize) -> Result<NonNull<u8>, OutOfMemory> {
    #[cfg(test)]
    if size > MAP_LIMIT.with(|l| l.get()) {
        return Err(OutOfMemory { bytes: size });
    }
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
        return Err(OutOfMemory { bytes: size });
    }
    // SAFETY: the range was just mapped by us.
    let rc = unsafe {
        libc::madvise(p, size, libc::MADV_DONTDUMP);
        libc::mlock(p, size)
    };
    if rc != 0 && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::info!(error = %std::io::Error::last_os_error(), "cannot mlock secret buffers; they may be swapped (grant CAP_IPC_LOCK or raise LimitMEMLOCK)");
    }
    NonNull::new(p.cast()).ok_or(OutOfMemory { bytes: size })
}

impl LockedBuf {
    /// Copies `src` into locked memory; fails when no mapping can be made for it.
    pub fn copy_from(src: &[u8]) -> Result<LockedBuf, OutOfMemory> {
        if src.is_empty() {
            return Ok(LockedBuf { ptr: NonNull::dangling(), len: 0, shift: 0 });
        }
        let shift = src.len().next_power_of_two().trailing_zeros().max(MIN_SHIFT);
        let (ptr, shift) =
            if shift <= MAX_SHIFT { (Self::take(shift)?, shift) } else { (map(src.len().next_multiple_of(4096))?, 0) };
        // SAFETY: ptr points to at least src.len() writable bytes that nothing else uses.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), ptr.as_ptr(), src.len()) };
        Ok(LockedBuf { ptr, len: src.len(), shift })
    }

    /// A free slot of size class `shift`, from a new slab when none is free.
    fn take(shift: u32) -> Result<NonNull<u8>, OutOfMemory> {
        let class = (shift - MIN_SHIFT) as usize;
        let mut free = FREE.lock();
        if free[class].is_empty() {
            let size = 1usize << shift;
            let base = map(SLAB)?.as_ptr() as usize;
            free[class].extend((0..SLAB / size).rev().map(|i| base + i * size));
        }
        // Slab addresses are never null; an empty list here would be a slab of no slots.
        free[class].pop().and_then(|addr| NonNull::new(addr as *mut u8)).ok_or(OutOfMemory { bytes: SLAB })
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
    /// Copies the bytes into locked memory (the rendering buffer is zeroized as it drops here);
    /// fails with `ENOMEM` when no memory can be mapped for them.
    pub fn new(bytes: zeroize::Zeroizing<Vec<u8>>) -> Result<Self, OutOfMemory> {
        Ok(SharedBytes { inner: parking_lot::RwLock::new(Some(LockedBuf::copy_from(&bytes)?)) })
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
            let b = LockedBuf::copy_from(&src).unwrap();
            assert_eq!(b.as_slice(), &src[..], "len {len}");
        }
        // The 16 KiB class: no other unit test allocates there, so last-in-first-out is certain.
        let first = vec![0xa5u8; 9000];
        let a = LockedBuf::copy_from(&first).unwrap();
        let addr = a.as_slice().as_ptr() as usize;
        drop(a);
        let b = LockedBuf::copy_from(&[7u8; 8200]).unwrap();
        assert_eq!(b.as_slice().as_ptr() as usize, addr, "a freed slot is reused");
        assert_eq!(b.as_slice(), &[7u8; 8200][..]);
        // The bytes past the new contents were zeroized when the first buffer was freed.
        // SAFETY: the slot is 16 KiB long and owned by `b`; reading its tail only.
        let tail = unsafe { std::slice::from_raw_parts((addr + 8200) as *const u8, 800) };
        assert!(tail.iter().all(|x| *x == 0), "freed bytes were not zeroized");
    }

    #[test]
    fn a_mapping_the_system_refuses_is_an_error_not_a_panic() {
        let _limit = super::limit_maps(64 * 1024);
        let e = LockedBuf::copy_from(&[1u8; 100_000]).err().expect("a 100 kB buffer needs its own mapping");
        assert_eq!(e.bytes, 100_000usize.next_multiple_of(4096));
        assert_eq!(std::io::Error::from(e).kind(), std::io::ErrorKind::OutOfMemory);
        let big = zeroize::Zeroizing::new(vec![2u8; 70_000]);
        assert!(super::SharedBytes::new(big).is_err());
        // Slabs (64 KiB) are still allowed: small secrets keep working.
        assert_eq!(LockedBuf::copy_from(b"small").unwrap().as_slice(), b"small");
    }
}
