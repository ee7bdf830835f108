//! Private inodes for dynamic files: every lookup of a dynamic entry hands the kernel a node id of
//! its own (a *view*), so that the page cache — which the kernel keeps per inode — never holds two
//! leases' bytes, and one reader's `stat`, open or read-ahead never touches another's inode.
//!
//! While a view is open it is bound to one lease: a second open of the same node (through
//! `/proc/PID/fd/N`, or a single file bind-mounted into a container) shares that lease, for the
//! same user only. After its last close the next open binds it afresh. The kernel forgets a view
//! when its inode is evicted (at the reader's last close); `forget` then drops it here.
//!
//! A view's open fills its page cache with the lease's bytes (the kernel then serves the reads, the
//! end of file and `fstat`), so each view remembers the size the kernel was last told: the next
//! binding's bytes land on that size exactly or the kernel must be told again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::lease::Lease;
use crate::memlock::SharedBytes;

/// How long a closed view keeps its last binding's pages (a live lease's bytes) for the next
/// open, which replaces them: a reader that opens the file again soon costs no page drop, and no
/// `getattr` from that drop racing its next lookup. Then they are dropped (or at once when the
/// lease ends, or when the next open's contents differ in length or user).
pub const KEEP_CLOSED: Duration = Duration::from_millis(500);

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
    /// The contents' length (kept after the bytes are zeroized at expiry: a held descriptor's
    /// `fstat` and reads then see the same size, and the reads fail with `EKEYEXPIRED`).
    pub size: u64,
}

impl Bound {
    pub fn new(uid: u32, bytes: Arc<SharedBytes>, lease: Option<Arc<Lease>>) -> Bound {
        let size = bytes.len().unwrap_or(0) as u64;
        Bound { uid, bytes, lease, size }
    }
}

struct View {
    /// The tree inode it shows.
    entry: u64,
    /// Who looked it up (uid, pid): until it is opened, that process's next lookup of the same
    /// name gets it again (`stat` then `open` see one inode, as `cp` checks).
    by: (u32, u32),
    /// The process (thread group) of the lookup that created it (0: unknown): until it is
    /// opened, that process's other threads are handed it too.
    proc: u32,
    /// The threads whose next lookup gets it (their keys in `fresh`), until it is opened.
    handed: Vec<u32>,
    /// It was handed to several threads at once: any of them may open it however late, so only
    /// the first open binds it; every other open gets `Bind::Own`, and it is never a spare.
    shared: bool,
    /// Lookups the kernel holds on it (dropped by `forget`).
    lookups: u64,
    /// What its open handles serve (while any is open).
    bound: Option<Bound>,
    /// Handles open on it.
    open: u32,
    /// It was bound before (its pages were dropped when that binding closed).
    used: bool,
    /// The uid and size of its last binding: a lookup by the same user is answered with that
    /// size, so that the next binding of the same length needs no size change (and no `getattr`).
    last: Option<(u32, u64)>,
    /// The size to show while it is not open (`None`: the listed size).
    shown: Option<u64>,
    /// The size the kernel was last told (a lookup or `getattr` answer, or an open's contents).
    told: u64,
    /// Closed, its pages still hold its last binding's bytes (see `KEEP_CLOSED`).
    kept: Option<Kept>,
}

/// The pages a closed view still holds: its last binding's bytes (its user and size are the
/// view's `last`), of a lease that is live.
struct Kept {
    lease: String,
    since: Instant,
}

/// A view is open for another user: an open of the same node by this one is refused.
#[derive(Debug)]
pub struct OtherUser;

/// What binding a view to a new open's contents gave.
pub enum Bind {
    /// Bound to them; `rebound`: it was bound before; `told`: the size the kernel holds for it;
    /// `drop_first`: its pages still hold another binding's bytes that these contents would not
    /// replace whole (another length, or another user's): they must go before the store.
    Fresh { rebound: bool, told: u64, drop_first: bool },
    /// Already open (and bound) for the same user: the open shares that binding instead.
    Joined(Bound),
    /// A view several threads were handed, bound by the first one's open (or after it, never
    /// bound again): this open keeps its own contents, served without the view's pages or size.
    Own,
}

#[derive(Default)]
struct Inner {
    map: HashMap<u64, View>,
    /// Views not opened since their lookup, by (entry, uid, pid) of each thread handed them.
    fresh: HashMap<(u64, u32, u32), u64>,
    /// The view last created for (entry, uid, process): its other threads share it until it is
    /// opened.
    latest: HashMap<(u64, u32, u32), u64>,
    /// By entry: a view the kernel still holds and nobody has open (its dentry is what the next
    /// path walk revalidates). The next lookup takes it, so a `cat` loop costs one lookup, not
    /// two; it is never handed to two lookups at once.
    spare: HashMap<u64, u64>,
    /// Open views, and closed ones that kept their pages, by lease id: their pages hold the
    /// lease's bytes and must go when it ends.
    by_lease: HashMap<String, Vec<u64>>,
    /// Views that kept their pages at close, oldest first, with when (an entry whose view was
    /// bound or kept again since is skipped).
    kept: VecDeque<(u64, Instant)>,
}

impl Inner {
    fn unlist(&mut self, lease: &str, view: u64) {
        if let Some(v) = self.by_lease.get_mut(lease) {
            v.retain(|x| *x != view);
            if v.is_empty() {
                self.by_lease.remove(lease);
            }
        }
    }

    /// Takes `id` out of the lookups it would be handed to (this thread's, its process's).
    fn unhand(&mut self, id: u64) {
        let Some(v) = self.map.get_mut(&id) else { return };
        let (entry, uid, proc) = (v.entry, v.by.0, v.proc);
        for pid in std::mem::take(&mut v.handed) {
            if self.fresh.get(&(entry, uid, pid)) == Some(&id) {
                self.fresh.remove(&(entry, uid, pid));
            }
        }
        if self.latest.get(&(entry, uid, proc)) == Some(&id) {
            self.latest.remove(&(entry, uid, proc));
        }
    }

    fn drop_view(&mut self, id: u64) {
        self.unhand(id);
        if let Some(v) = self.map.remove(&id) {
            if self.spare.get(&v.entry) == Some(&id) {
                self.spare.remove(&v.entry);
            }
            if let Some(k) = v.kept {
                self.unlist(&k.lease, id);
            }
        }
    }
}

pub struct Views {
    inner: Mutex<Inner>,
    next: AtomicU64,
    /// Told when a closed view keeps its pages (whoever drops them when they are due waits on it).
    kept_added: tokio::sync::Notify,
}

impl Default for Views {
    fn default() -> Self {
        Views { inner: Mutex::default(), next: AtomicU64::new(FIRST_VIEW), kept_added: tokio::sync::Notify::new() }
    }
}

impl Views {
    /// A view of tree inode `entry` for a lookup by thread `pid` of user `uid`, with one more
    /// lookup held by the kernel: the one this thread looked up before if it was not opened
    /// since; else the entry's spare view (open by nobody; its next open drops its old pages
    /// before it is answered); else one another thread of the same process (`process_of(pid)`,
    /// read only here) looked up and nobody opened yet; else a new one. Pid 0: always a new one.
    ///
    /// Threads of one process share an unopened view because the kernel keeps one dentry per
    /// name: a path walk whose lookup answers another node than the dentry holds throws it away
    /// and looks up again, so 200 threads each given a node of their own revalidate each other's
    /// dentries away — 150 lookups an open, a storm that slowed every other user's path walk.
    /// They share an address space, so sharing a view (and, when two open it at once, its
    /// binding) gives no thread anything it could not read already.
    pub fn create(&self, entry: u64, uid: u32, pid: u32, process_of: impl FnOnce(u32) -> u32) -> u64 {
        if pid != 0 {
            let mut g = self.inner.lock();
            if let Some(id) = g.fresh.get(&(entry, uid, pid)).copied() {
                if let Some(v) = g.map.get_mut(&id).filter(|v| v.open == 0) {
                    v.lookups += 1;
                    return id;
                }
                g.fresh.remove(&(entry, uid, pid));
            }
            if let Some(id) = g.spare.remove(&entry) {
                if let Some(v) = g.map.get_mut(&id).filter(|v| v.open == 0) {
                    v.lookups += 1;
                    v.by = (uid, pid);
                    v.proc = 0;
                    // The same user's last size: its next credential is likely as long (a
                    // token of the same issuer). Never another user's.
                    v.shown = v.last.filter(|(u, _)| *u == uid).map(|(_, size)| size);
                    v.handed.push(pid);
                    g.fresh.insert((entry, uid, pid), id);
                    return id;
                }
            }
        }
        // Read outside the lock (a /proc read); only a lookup that needs a view does.
        let proc = if pid == 0 { 0 } else { process_of(pid) };
        let mut g = self.inner.lock();
        if proc != 0 {
            if let Some(id) = g.latest.get(&(entry, uid, proc)).copied() {
                if let Some(v) = g.map.get_mut(&id).filter(|v| v.open == 0 && !v.used) {
                    v.lookups += 1;
                    v.shared = true;
                    v.handed.push(pid);
                    g.fresh.insert((entry, uid, pid), id);
                    return id;
                }
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let v = View {
            entry,
            by: (uid, pid),
            proc,
            handed: if pid != 0 { vec![pid] } else { Vec::new() },
            shared: false,
            lookups: 1,
            bound: None,
            open: 0,
            used: false,
            last: None,
            shown: None,
            told: 0,
            kept: None,
        };
        g.map.insert(id, v);
        if pid != 0 {
            g.fresh.insert((entry, uid, pid), id);
        }
        if proc != 0 {
            g.latest.insert((entry, uid, proc), id);
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
    /// user's gets `Err` (and no handle is recorded). A fresh binding to a lease is listed under
    /// it until the view's last close (`ended`).
    pub fn bind(&self, view: u64, b: &Bound) -> Result<Bind, OtherUser> {
        let mut g = self.inner.lock();
        let Some(v) = g.map.get_mut(&view) else {
            return Ok(Bind::Fresh { rebound: false, told: 0, drop_first: false });
        };
        match &v.bound {
            Some(have) if have.uid != b.uid => Err(OtherUser),
            _ if v.shared && v.used => {
                v.open += 1;
                Ok(Bind::Own)
            }
            Some(have) => {
                v.open += 1;
                Ok(Bind::Joined(have.clone()))
            }
            None => {
                v.open += 1;
                v.bound = Some(b.clone());
                let rebound = std::mem::replace(&mut v.used, true);
                // The open answers with these contents: the kernel's size becomes theirs.
                let told = std::mem::replace(&mut v.told, b.size);
                // The pages it kept are replaced whole by a store of as many bytes for the same
                // user; any others go first.
                let last = v.last.replace((b.uid, b.size));
                let kept = v.kept.take();
                let drop_first = kept.is_some() && last != Some((b.uid, b.size));
                let entry = v.entry;
                if let Some(k) = kept {
                    g.unlist(&k.lease, view);
                }
                g.unhand(view);
                if g.spare.get(&entry) == Some(&view) {
                    g.spare.remove(&entry);
                }
                if let Some(lease) = &b.lease {
                    g.by_lease.entry(lease.id.clone()).or_default().push(view);
                }
                Ok(Bind::Fresh { rebound, told, drop_first })
            }
        }
    }

    /// Records one more handle on the binding the view has while it is open, if it is the same
    /// user's (`Err` for another user's; `None` when it is not open, or several threads were
    /// handed it: those open afresh).
    pub fn join(&self, view: u64, uid: u32) -> Result<Option<Bound>, OtherUser> {
        let mut g = self.inner.lock();
        let Some(v) = g.map.get_mut(&view) else { return Ok(None) };
        match &v.bound {
            Some(have) if have.uid != uid => Err(OtherUser),
            // Shared by threads: each of their opens gets its own lease (`bind` says `Own`).
            Some(_) if v.shared => Ok(None),
            Some(have) => {
                v.open += 1;
                Ok(Some(have.clone()))
            }
            None => Ok(None),
        }
    }

    /// A handle on the view closed; with none left, the binding ends. Its pages hold the
    /// binding's bytes: while its lease is live (and the kernel holds the view, and no other
    /// thread was handed it) they are kept for up to `KEEP_CLOSED` — only an open of the view
    /// makes them readable, and that open replaces them first (`Bind::Fresh::drop_first`).
    /// Otherwise `drop_pages` is called before another lookup can be handed the view, so that
    /// the drop is queued ahead of that lookup's open.
    pub fn closed(&self, view: u64, drop_pages: impl FnOnce(u64)) {
        let mut g = self.inner.lock();
        let Some(v) = g.map.get_mut(&view) else { return };
        v.open = v.open.saturating_sub(1);
        if v.open > 0 {
            return;
        }
        let bound = v.bound.take();
        let (lookups, entry, v_shared) = (v.lookups, v.entry, v.shared);
        let live = bound.as_ref().and_then(|b| b.lease.as_ref()).filter(|l| l.is_live());
        if let Some(lease) = live.filter(|_| lookups > 0 && !v_shared) {
            // Still listed under its lease: the lease's end drops them.
            let since = Instant::now();
            v.kept = Some(Kept { lease: lease.id.clone(), since });
            g.kept.push_back((view, since));
            g.spare.insert(entry, view);
            drop(g);
            self.kept_added.notify_one();
            return;
        }
        if let Some(id) = bound.and_then(|b| b.lease).map(|l| l.id.clone()) {
            g.unlist(&id, view);
        }
        drop_pages(view);
        if lookups == 0 {
            g.drop_view(view);
        } else if !v_shared {
            g.spare.insert(entry, view);
        }
    }

    /// The size a view's `stat` shows, which the kernel is then told: its contents' while open,
    /// else the size its lookup showed (its user's last contents' size) or `listed`.
    pub fn size(&self, view: u64, listed: u64) -> u64 {
        let mut g = self.inner.lock();
        let Some(v) = g.map.get_mut(&view) else { return listed };
        let size = match &v.bound {
            Some(b) => b.size,
            // Its threads' own opens leave the kernel's size as the first one's open made it.
            None if v.shared && v.used => v.told,
            None => v.shown.unwrap_or(listed),
        };
        v.told = size;
        size
    }

    /// The views whose pages hold the bytes of lease `id`, which ended (open, or closed and kept).
    pub fn ended(&self, id: &str) -> Vec<u64> {
        let mut g = self.inner.lock();
        let views = g.by_lease.remove(id).unwrap_or_default();
        for view in &views {
            if let Some(v) = g.map.get_mut(view)
                && v.kept.as_ref().is_some_and(|k| k.lease == id)
            {
                v.kept = None;
            }
        }
        views
    }

    /// Closed views that have kept their pages for `keep` or longer, which must now go (they are
    /// no longer kept), and how long until the next one is due (`None`: none is kept).
    pub fn expire_kept(&self, keep: Duration) -> (Vec<u64>, Option<Duration>) {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let mut due = Vec::new();
        while let Some(&(view, since)) = g.kept.front() {
            let age = now.saturating_duration_since(since);
            if age < keep {
                return (due, Some(keep - age));
            }
            g.kept.pop_front();
            // Kept since then, not bound (or kept again) meanwhile.
            let Some(k) = g.map.get_mut(&view).and_then(|v| v.kept.take_if(|k| k.since == since)) else { continue };
            g.unlist(&k.lease, view);
            due.push(view);
        }
        (due, None)
    }

    /// Completes when a closed view has kept its pages since the last call (or one did before).
    pub async fn kept_added(&self) {
        self.kept_added.notified().await
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

    fn bound(uid: u32, s: &str) -> Bound {
        Bound::new(uid, Arc::new(SharedBytes::new(zeroize::Zeroizing::new(s.as_bytes().to_vec())).unwrap()), None)
    }

    fn close(v: &Views, view: u64) -> bool {
        let mut dropped = false;
        v.closed(view, |_| dropped = true);
        dropped
    }

    #[test]
    fn each_lookup_is_a_view_of_its_own_bound_while_open_and_forgotten_after_its_last_close() {
        let v = Views::default();
        let (a, b) = (v.create(7, 1, 0, |p| p), v.create(7, 1, 0, |p| p));
        assert_ne!(a, b);
        assert!(is_view(a) && !is_view(7));
        assert_eq!((v.entry(a), v.entry(7)), (Some(7), Some(7)));
        assert_eq!(v.size(a, 0), 0, "not opened: the listed size");
        let first = bound(1, "first");
        assert!(matches!(v.bind(a, &first), Ok(Bind::Fresh { rebound: false, told: 0, drop_first: false })));
        let second = bound(1, "second, longer");
        assert!(matches!(v.bind(a, &second), Ok(Bind::Joined(b)) if b.bytes.len() == Some(5)));
        assert!(v.bind(a, &bound(2, "other user")).is_err());
        assert_eq!(v.size(a, 0), 5, "bound by the first open");
        v.forget(a, 1);
        assert_eq!(v.entry(a), Some(7), "still open: kept");
        assert!(!close(&v, a), "another handle is open: its pages stay");
        assert!(close(&v, a), "the last close drops the binding's pages");
        assert_eq!(v.entry(a), None, "forgotten and closed: gone");
        // A view kept by the kernel (a bind-mounted file) binds afresh after its last close.
        assert!(matches!(v.bind(b, &first), Ok(Bind::Fresh { rebound: false, .. })));
        assert!(close(&v, b));
        assert!(v.bound(b).is_none());
        assert!(matches!(v.bind(b, &second), Ok(Bind::Fresh { rebound: true, told: 5, drop_first: false })));
        close(&v, b);
        v.forget(b, 1);
        assert_eq!(v.len(), 0);
    }

    #[test]
    fn a_process_looking_a_name_up_again_before_opening_it_gets_the_same_view() {
        let v = Views::default();
        let a = v.create(7, 1000, 42, |p| p);
        assert_eq!(v.create(7, 1000, 42, |p| p), a, "stat then open by one process: one inode");
        assert_ne!(v.create(7, 1000, 43, |p| p), a, "another process: its own");
        assert_ne!(v.create(7, 1001, 42, |p| p), a, "another user: its own");
        assert!(matches!(v.bind(a, &bound(1000, "x")), Ok(Bind::Fresh { .. })));
        assert_ne!(v.create(7, 1000, 42, |p| p), a, "opened: the next lookup gets a new view");
        v.forget(a, 2);
        close(&v, a);
        assert_eq!(v.entry(a), None);
    }

    #[test]
    fn a_closed_view_the_kernel_still_holds_goes_to_one_next_lookup_which_drops_its_pages_at_open() {
        let v = Views::default();
        let a = v.create(7, 1000, 42, |p| p);
        assert!(matches!(v.bind(a, &bound(1000, "x")), Ok(Bind::Fresh { .. })));
        assert_ne!(v.create(7, 1000, 43, |p| p), a, "open: never handed out");
        close(&v, a);
        assert_eq!(v.create(7, 1001, 44, |p| p), a, "closed and held by the kernel: the next lookup takes it");
        assert_ne!(v.create(7, 1002, 45, |p| p), a, "but only one lookup");
        assert_eq!(v.create(7, 1001, 44, |p| p), a, "that process's lookup again");
        assert!(matches!(v.bind(a, &bound(1001, "y")), Ok(Bind::Fresh { rebound: true, .. })));
    }

    #[test]
    fn a_lookup_shows_the_size_of_its_users_last_contents_and_the_next_open_knows_what_the_kernel_holds() {
        let v = Views::default();
        let a = v.create(7, 1000, 42, |p| p);
        assert_eq!(v.size(a, 0), 0, "never bound: the listed size");
        assert!(matches!(v.bind(a, &bound(1000, "token-1")), Ok(Bind::Fresh { told: 0, .. })));
        assert_eq!(v.size(a, 0), 7, "open: its contents' size");
        close(&v, a);
        // The same user's next lookup is told the last size; an open of as many bytes lands on it.
        assert_eq!(v.create(7, 1000, 43, |p| p), a);
        assert_eq!(v.size(a, 0), 7, "its user's last size");
        assert!(matches!(v.bind(a, &bound(1000, "token-2")), Ok(Bind::Fresh { told: 7, .. })));
        close(&v, a);
        // Another user is never shown it.
        assert_eq!(v.create(7, 1001, 44, |p| p), a);
        assert_eq!(v.size(a, 0), 0, "another user's size is not shown");
        assert!(matches!(v.bind(a, &bound(1001, "longer token")), Ok(Bind::Fresh { told: 0, .. })));
        close(&v, a);
    }

    #[test]
    fn threads_of_one_process_share_a_view_until_one_opens_it_and_other_processes_do_not() {
        let v = Views::default();
        // Threads 42 and 43 are process 40; thread 50 is process 50.
        let process = |pid: u32| if pid < 50 { 40 } else { pid };
        let a = v.create(7, 1000, 42, process);
        assert_eq!(v.create(7, 1000, 43, process), a, "another thread of the same process: the same view");
        let c = v.create(7, 1000, 50, process);
        assert_ne!(c, a, "another process: its own");
        let d = v.create(7, 1001, 43, |_| 40);
        assert_ne!(d, a, "another user: its own");
        assert!(matches!(v.bind(a, &bound(1000, "x")), Ok(Bind::Fresh { .. })));
        assert!(v.join(a, 1000).unwrap().is_none(), "another thread's open does not join: it opens afresh");
        assert!(matches!(v.bind(a, &bound(1000, "y")), Ok(Bind::Own)), "and keeps its own lease");
        let b = v.create(7, 1000, 43, process);
        assert_ne!(b, a, "opened: the next lookup of any of its threads gets a new view");
        assert_eq!(v.create(7, 1000, 42, process), b, "which the process's threads share again");
        close(&v, a);
        close(&v, a);
        v.forget(a, 2);
        v.forget(b, 2);
        v.forget(c, 1);
        v.forget(d, 1);
        assert!(v.inner.lock().fresh.is_empty() && v.inner.lock().latest.is_empty(), "nothing left behind");
    }
}
