//! Private inodes for dynamic files: every lookup of a dynamic entry hands the kernel a node id of
//! its own (a *view*), so that the page cache — which the kernel keeps per inode — never holds two
//! leases' bytes, and one reader's `stat`, open or read-ahead never touches another's inode.
//!
//! A view is bound to the lease of its first open. The kernel forgets a view when its dentry
//! goes (entry TTL 0: at the last close) and the inode is evicted; `forget` then drops it here.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::lease::Lease;
use crate::memlock::SharedBytes;

/// View node ids start here: far above any tree inode (a tree holds at most a few million).
pub const FIRST_VIEW: u64 = 1 << 40;

/// Whether a node id names a view rather than a tree inode.
pub fn is_view(ino: u64) -> bool {
    ino >= FIRST_VIEW
}

/// What a view's first open bound it to.
#[derive(Clone)]
pub struct Bound {
    pub uid: u32,
    pub bytes: Arc<SharedBytes>,
    pub lease: Option<Arc<Lease>>,
}

struct View {
    /// The tree inode it shows.
    entry: u64,
    /// Lookups the kernel holds on it (dropped by `forget`).
    lookups: u64,
    bound: Option<Bound>,
    /// Handles open on it.
    open: u32,
}

pub struct Views {
    map: Mutex<HashMap<u64, View>>,
    next: AtomicU64,
    /// Views with contents that went through the page cache (mmap, splice), by lease id: their
    /// pages must go when the lease ends.
    paged: Mutex<HashMap<String, Vec<u64>>>,
}

impl Default for Views {
    fn default() -> Self {
        Views { map: Mutex::default(), next: AtomicU64::new(FIRST_VIEW), paged: Mutex::default() }
    }
}

impl Views {
    /// A new view of tree inode `entry`, with one lookup held by the kernel.
    pub fn create(&self, entry: u64) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.lock().insert(id, View { entry, lookups: 1, bound: None, open: 0 });
        id
    }

    /// The tree inode behind `ino` (itself if it is not a view); `None` for a forgotten view.
    pub fn entry(&self, ino: u64) -> Option<u64> {
        if !is_view(ino) {
            return Some(ino);
        }
        self.map.lock().get(&ino).map(|v| v.entry)
    }

    /// The kernel dropped `n` lookups of `ino`; a view with none left and nothing open goes.
    pub fn forget(&self, ino: u64, n: u64) {
        if !is_view(ino) {
            return;
        }
        let mut g = self.map.lock();
        if let Some(v) = g.get_mut(&ino) {
            v.lookups = v.lookups.saturating_sub(n);
            if v.lookups == 0 && v.open == 0 {
                g.remove(&ino);
            }
        }
    }

    /// What the view's first open bound it to, if it was opened before.
    pub fn bound(&self, view: u64) -> Option<Bound> {
        self.map.lock().get(&view).and_then(|v| v.bound.clone())
    }

    /// Records an open handle on the view; the first binds it to `b`. False if the view is gone.
    pub fn opened(&self, view: u64, b: &Bound) -> bool {
        let mut g = self.map.lock();
        let Some(v) = g.get_mut(&view) else { return false };
        v.open += 1;
        if v.bound.is_none() {
            v.bound = Some(b.clone());
        }
        true
    }

    /// A handle on the view closed.
    pub fn closed(&self, view: u64) {
        let mut g = self.map.lock();
        if let Some(v) = g.get_mut(&view) {
            v.open = v.open.saturating_sub(1);
            if v.lookups == 0 && v.open == 0 {
                g.remove(&view);
            }
        }
    }

    /// The size a view's `stat` shows: its contents' once opened, else `listed`.
    pub fn size(&self, view: u64, listed: u64) -> u64 {
        match self.bound(view) {
            Some(b) => b.bytes.len().unwrap_or(0) as u64,
            None => listed,
        }
    }

    /// A read of the view went through the page cache: its pages must go with the lease.
    pub fn paged(&self, view: u64, lease: &str) {
        let mut g = self.paged.lock();
        let v = g.entry(lease.to_string()).or_default();
        if !v.contains(&view) {
            v.push(view);
        }
    }

    /// The view's handle that read through the page cache closed (its pages go now).
    pub fn unpaged(&self, view: u64, lease: &str) {
        let mut g = self.paged.lock();
        if let Some(v) = g.get_mut(lease) {
            v.retain(|x| *x != view);
            if v.is_empty() {
                g.remove(lease);
            }
        }
    }

    /// The views whose pages hold the bytes of lease `id`, which ended.
    pub fn ended(&self, id: &str) -> Vec<u64> {
        self.paged.lock().remove(id).unwrap_or_default()
    }

    /// Views the kernel still holds.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Arc<SharedBytes> {
        Arc::new(SharedBytes::new(zeroize::Zeroizing::new(s.as_bytes().to_vec())))
    }

    #[test]
    fn each_lookup_is_a_view_of_its_own_bound_by_its_first_open_and_forgotten_after_its_last_close() {
        let v = Views::default();
        let (a, b) = (v.create(7), v.create(7));
        assert_ne!(a, b);
        assert!(is_view(a) && !is_view(7));
        assert_eq!((v.entry(a), v.entry(7)), (Some(7), Some(7)));
        assert_eq!(v.size(a, 0), 0, "not opened: the listed size");
        assert!(v.opened(a, &Bound { uid: 1, bytes: bytes("first"), lease: None }));
        assert!(v.opened(a, &Bound { uid: 1, bytes: bytes("second, longer"), lease: None }));
        assert_eq!(v.size(a, 0), 5, "bound by the first open");
        v.forget(a, 1);
        assert_eq!(v.entry(a), Some(7), "still open: kept");
        v.closed(a);
        v.closed(a);
        assert_eq!(v.entry(a), None, "forgotten and closed: gone");
        v.forget(b, 1);
        assert_eq!(v.len(), 0);
    }

    #[test]
    fn pages_of_a_lease_are_tracked_per_view_until_close_or_end() {
        let v = Views::default();
        v.paged(5, "l1");
        v.paged(5, "l1");
        v.paged(6, "l1");
        v.unpaged(5, "l1");
        assert_eq!(v.ended("l1"), vec![6]);
        assert!(v.ended("l1").is_empty());
    }
}
