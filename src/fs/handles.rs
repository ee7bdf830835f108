//! Open file handles: the bytes each one serves and the lease behind it, indexed by handle and by
//! (inode, process) so that `fstat` — which reaches the daemon without a handle — finds its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::lease::Lease;
use crate::memlock::SharedBytes;

pub struct Handle {
    pub ino: u64,
    /// The process that opened it.
    pub pid: u32,
    pub bytes: Arc<SharedBytes>,
    /// The lease behind a dynamic secret's handle.
    pub lease: Option<Arc<Lease>>,
    /// Bytes written so far (the control file `revoke` takes writes in order only).
    pub written: u64,
    /// Served through the page cache (a static secret as listed): its pages stay after close.
    pub cached: bool,
    /// A read came through the page cache (a `mmap` fault, `splice`, readahead): pages of these
    /// contents may be cached, and must go at close.
    pub paged: bool,
}

#[derive(Default)]
struct Inner {
    by_fh: HashMap<u64, Handle>,
    by_holder: HashMap<(u64, u32), Vec<u64>>,
}

pub struct Handles {
    inner: Mutex<Inner>,
    next: AtomicU64,
}

impl Default for Handles {
    fn default() -> Self {
        Handles { inner: Mutex::default(), next: AtomicU64::new(1) }
    }
}

impl Handles {
    pub fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        let mut g = self.inner.lock();
        g.by_holder.entry((h.ino, h.pid)).or_default().push(fh);
        g.by_fh.insert(fh, h);
        fh
    }

    pub fn remove(&self, fh: u64) -> Option<Handle> {
        let mut g = self.inner.lock();
        let h = g.by_fh.remove(&fh)?;
        let key = (h.ino, h.pid);
        if let Some(v) = g.by_holder.get_mut(&key) {
            v.retain(|x| *x != fh);
            if v.is_empty() {
                g.by_holder.remove(&key);
            }
        }
        Some(h)
    }

    pub fn bytes(&self, fh: u64) -> Option<Arc<SharedBytes>> {
        self.inner.lock().by_fh.get(&fh).map(|h| h.bytes.clone())
    }

    /// The bytes of `fh` for a read; `paged` (the read fills the page cache) is remembered.
    pub fn bytes_to_read(&self, fh: u64, paged: bool) -> Option<Arc<SharedBytes>> {
        let mut g = self.inner.lock();
        let h = g.by_fh.get_mut(&fh)?;
        h.paged |= paged;
        Some(h.bytes.clone())
    }

    /// The bytes `pid` holds open on `ino` (the largest, if it opened it more than once).
    pub fn held_by(&self, ino: u64, pid: u32) -> Option<Arc<SharedBytes>> {
        let g = self.inner.lock();
        g.by_holder
            .get(&(ino, pid))?
            .iter()
            .filter_map(|fh| g.by_fh.get(fh))
            .max_by_key(|h| h.bytes.len())
            .map(|h| h.bytes.clone())
    }

    /// Accepts a write of `n` bytes at `offset` on `fh` if it continues what was written so far.
    pub fn advance(&self, fh: u64, offset: u64, n: u64) -> Option<bool> {
        let mut g = self.inner.lock();
        let h = g.by_fh.get_mut(&fh)?;
        if h.written != offset {
            return Some(false);
        }
        h.written += n;
        Some(true)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().by_fh.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstat_finds_the_holders_handle_without_scanning() {
        let hs = Handles::default();
        let b = |n: usize| Arc::new(SharedBytes::new(zeroize::Zeroizing::new(vec![1u8; n])).unwrap());
        let a =
            hs.insert(Handle { ino: 5, pid: 10, bytes: b(3), lease: None, written: 0, cached: false, paged: false });
        let c =
            hs.insert(Handle { ino: 5, pid: 10, bytes: b(7), lease: None, written: 0, cached: false, paged: false });
        hs.insert(Handle { ino: 5, pid: 11, bytes: b(1), lease: None, written: 0, cached: false, paged: false });
        assert_eq!(hs.held_by(5, 10).unwrap().len(), Some(7));
        hs.remove(c);
        assert_eq!(hs.held_by(5, 10).unwrap().len(), Some(3));
        hs.remove(a);
        assert!(hs.held_by(5, 10).is_none());
        assert_eq!(hs.len(), 1);
    }
}
