//! Private inodes for dynamic files: every lookup of a dynamic entry hands the kernel a node id of
//! its own (a *view*), so that the page cache — which the kernel keeps per inode — never holds two
//! leases' bytes, and one reader's `stat`, open or read-ahead never touches another's inode.
//!
//! While a view is open it is bound to one lease: a second open of the same node (through
//! `/proc/PID/fd/N`, or a single file bind-mounted into a container) shares that lease, for the
//! same user only. After its last close the next open binds it afresh. The kernel forgets a view
//! when its inode is evicted (at the reader's last close); `forget` then drops it here.

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
    /// Who looked it up (uid, pid): until it is opened, that process's next lookup of the same
    /// name gets it again (`stat` then `open` see one inode, as `cp` checks).
    by: (u32, u32),
    /// Lookups the kernel holds on it (dropped by `forget`).
    lookups: u64,
    /// What its open handles serve (while any is open).
    bound: Option<Bound>,
    /// Handles open on it.
    open: u32,
    /// It was bound before: pages of earlier contents may be cached.
    used: bool,
}

/// A view is open for another user: an open of the same node by this one is refused.
#[derive(Debug)]
pub struct OtherUser;

/// What binding a view to a new open's contents gave.
pub enum Bind {
    /// Bound to them; `rebound`: an earlier binding's pages must go before the open is answered.
    Fresh { rebound: bool },
    /// Already open (and bound) for the same user: the open shares that binding instead.
    Joined(Bound),
}

#[derive(Default)]
struct Inner {
    map: HashMap<u64, View>,
    /// Views not opened since their lookup, by (entry, uid, pid) of that lookup.
    fresh: HashMap<(u64, u32, u32), u64>,
    /// By entry: a view the kernel still holds and nobody has open (its dentry is what the next
    /// path walk revalidates). The next lookup takes it, so a `cat` loop costs one lookup, not
    /// two; it is never handed to two lookups at once.
    spare: HashMap<u64, u64>,
}

impl Inner {
    fn drop_view(&mut self, id: u64) {
        if let Some(v) = self.map.remove(&id) {
            let key = (v.entry, v.by.0, v.by.1);
            if self.fresh.get(&key) == Some(&id) {
                self.fresh.remove(&key);
            }
            if self.spare.get(&v.entry) == Some(&id) {
                self.spare.remove(&v.entry);
            }
        }
    }
}

pub struct Views {
    inner: Mutex<Inner>,
    next: AtomicU64,
    /// Views with contents that went through the page cache (mmap, splice), by lease id: their
    /// pages must go when the lease ends.
    paged: Mutex<HashMap<String, Vec<u64>>>,
}

impl Default for Views {
    fn default() -> Self {
        Views { inner: Mutex::default(), next: AtomicU64::new(FIRST_VIEW), paged: Mutex::default() }
    }
}

impl Views {
    /// A view of tree inode `entry` for a lookup by process `pid` of user `uid`, with one more
    /// lookup held by the kernel: the one this process looked up before if it was not opened
    /// since; else the entry's spare view (open by nobody; its next open drops its old pages
    /// before it is answered); else a new one. Pid 0: always a new one.
    pub fn create(&self, entry: u64, uid: u32, pid: u32) -> u64 {
        let mut g = self.inner.lock();
        if pid != 0 {
            let key = (entry, uid, pid);
            if let Some(id) = g.fresh.get(&key).copied() {
                if let Some(v) = g.map.get_mut(&id) {
                    v.lookups += 1;
                    return id;
                }
            }
            if let Some(id) = g.spare.remove(&entry) {
                if let Some(v) = g.map.get_mut(&id).filter(|v| v.open == 0) {
                    v.lookups += 1;
                    v.by = (uid, pid);
                    g.fresh.insert(key, id);
                    return id;
                }
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        g.map.insert(id, View { entry, by: (uid, pid), lookups: 1, bound: None, open: 0, used: false });
        if pid != 0 {
            g.fresh.insert((entry, uid, pid), id);
        }
        id
    }

    /// The tree inode behind `ino` (itself if it is not a view); `None` for a forgotten view.
    pub fn entry(&self, ino: u64) -> Option<u64> {
        if !is_view(ino) {
            return Some(ino);
        }
        self.inner.lock().map.get(&ino).map(|v| v.entry)
    }

    /// The kernel dropped `n` lookups of `ino`; a view with none left and nothing open goes.
    pub fn forget(&self, ino: u64, n: u64) {
        if !is_view(ino) {
            return;
        }
        let mut g = self.inner.lock();
        if let Some(v) = g.map.get_mut(&ino) {
            v.lookups = v.lookups.saturating_sub(n);
            if v.lookups == 0 && v.open == 0 {
                g.drop_view(ino);
            }
        }
    }

    /// What the view's open handles serve, while one is open.
    pub fn bound(&self, view: u64) -> Option<Bound> {
        self.inner.lock().map.get(&view).and_then(|v| v.bound.clone())
    }

    /// Records an open handle on the view with contents `b`. If the view is open already (a
    /// concurrent first open), the open joins that binding when it is the same user's; another
    /// user's gets `Err` (and no handle is recorded).
    pub fn bind(&self, view: u64, b: &Bound) -> Result<Bind, OtherUser> {
        let mut g = self.inner.lock();
        let Some(v) = g.map.get_mut(&view) else { return Ok(Bind::Fresh { rebound: false }) };
        match &v.bound {
            Some(have) if have.uid != b.uid => Err(OtherUser),
            Some(have) => {
                v.open += 1;
                Ok(Bind::Joined(have.clone()))
            }
            None => {
                v.open += 1;
                v.bound = Some(b.clone());
                let rebound = std::mem::replace(&mut v.used, true);
                let (key, entry) = ((v.entry, v.by.0, v.by.1), v.entry);
                if g.fresh.get(&key) == Some(&view) {
                    g.fresh.remove(&key);
                }
                if g.spare.get(&entry) == Some(&view) {
                    g.spare.remove(&entry);
                }
                Ok(Bind::Fresh { rebound })
            }
        }
    }

    /// Records one more handle on the binding the view has while it is open, if it is the same
    /// user's (`Err` for another user's; `None` when it is not open).
    pub fn join(&self, view: u64, uid: u32) -> Result<Option<Bound>, OtherUser> {
        let mut g = self.inner.lock();
        let Some(v) = g.map.get_mut(&view) else { return Ok(None) };
        match &v.bound {
            Some(have) if have.uid != uid => Err(OtherUser),
            Some(have) => {
                v.open += 1;
                Ok(Some(have.clone()))
            }
            None => Ok(None),
        }
    }

    /// A handle on the view closed; with none left, the binding ends.
    pub fn closed(&self, view: u64) {
        let mut g = self.inner.lock();
        if let Some(v) = g.map.get_mut(&view) {
            v.open = v.open.saturating_sub(1);
            if v.open == 0 {
                v.bound = None;
                if v.lookups == 0 {
                    g.drop_view(view);
                } else {
                    let entry = v.entry;
                    g.spare.insert(entry, view);
                }
            }
        }
    }

    /// The size a view's `stat` shows: its contents' while open, else `listed`.
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
        self.inner.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Arc<SharedBytes> {
        Arc::new(SharedBytes::new(zeroize::Zeroizing::new(s.as_bytes().to_vec())).unwrap())
    }

    #[test]
    fn each_lookup_is_a_view_of_its_own_bound_while_open_and_forgotten_after_its_last_close() {
        let v = Views::default();
        let (a, b) = (v.create(7, 1, 0), v.create(7, 1, 0));
        assert_ne!(a, b);
        assert!(is_view(a) && !is_view(7));
        assert_eq!((v.entry(a), v.entry(7)), (Some(7), Some(7)));
        assert_eq!(v.size(a, 0), 0, "not opened: the listed size");
        let first = Bound { uid: 1, bytes: bytes("first"), lease: None };
        assert!(matches!(v.bind(a, &first), Ok(Bind::Fresh { rebound: false })));
        let second = Bound { uid: 1, bytes: bytes("second, longer"), lease: None };
        assert!(matches!(v.bind(a, &second), Ok(Bind::Joined(b)) if b.bytes.len() == Some(5)));
        assert!(v.bind(a, &Bound { uid: 2, bytes: bytes("other user"), lease: None }).is_err());
        assert_eq!(v.size(a, 0), 5, "bound by the first open");
        v.forget(a, 1);
        assert_eq!(v.entry(a), Some(7), "still open: kept");
        v.closed(a);
        v.closed(a);
        assert_eq!(v.entry(a), None, "forgotten and closed: gone");
        // A view kept by the kernel (a bind-mounted file) binds afresh after its last close.
        assert!(matches!(v.bind(b, &first), Ok(Bind::Fresh { rebound: false })));
        v.closed(b);
        assert!(v.bound(b).is_none());
        assert!(matches!(v.bind(b, &second), Ok(Bind::Fresh { rebound: true })));
        v.closed(b);
        v.forget(b, 1);
        assert_eq!(v.len(), 0);
    }

    #[test]
    fn a_process_looking_a_name_up_again_before_opening_it_gets_the_same_view() {
        let v = Views::default();
        let a = v.create(7, 1000, 42);
        assert_eq!(v.create(7, 1000, 42), a, "stat then open by one process: one inode");
        assert_ne!(v.create(7, 1000, 43), a, "another process: its own");
        assert_ne!(v.create(7, 1001, 42), a, "another user: its own");
        assert!(matches!(v.bind(a, &Bound { uid: 1000, bytes: bytes("x"), lease: None }), Ok(Bind::Fresh { .. })));
        assert_ne!(v.create(7, 1000, 42), a, "opened: the next lookup gets a new view");
        v.forget(a, 2);
        v.closed(a);
        assert_eq!(v.entry(a), None);
    }

    #[test]
    fn a_closed_view_the_kernel_still_holds_goes_to_one_next_lookup_which_drops_its_pages_at_open() {
        let v = Views::default();
        let a = v.create(7, 1000, 42);
        assert!(matches!(v.bind(a, &Bound { uid: 1000, bytes: bytes("x"), lease: None }), Ok(Bind::Fresh { .. })));
        assert_ne!(v.create(7, 1000, 43), a, "open: never handed out");
        v.closed(a);
        assert_eq!(v.create(7, 1001, 44), a, "closed and held by the kernel: the next lookup takes it");
        assert_ne!(v.create(7, 1002, 45), a, "but only one lookup");
        assert_eq!(v.create(7, 1001, 44), a, "that process's lookup again");
        let b = Bound { uid: 1001, bytes: bytes("y"), lease: None };
        assert!(matches!(v.bind(a, &b), Ok(Bind::Fresh { rebound: true })), "its old pages go first");
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
