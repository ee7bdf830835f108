//! The filesystem logic — inodes, handles, open/read/readdir/xattr — with no FUSE types, so it is
//! tested without a mount. Each answer carries what the kernel may do with it (cache TTLs, open
//! flags), so the adapter holds no policy.

pub mod access;
pub mod cache;
pub mod catalog;
pub mod control;
pub mod error;
pub mod handles;
mod open;
pub mod tree;
pub mod types;
pub mod views;
pub mod xattr;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};

pub use control::Health;
pub use error::FsError;
use handles::Handles;
use tree::{Changes, Node, NodeKind, SourceListing, Tree};
pub use types::*;

use crate::audit::{Audit, Event, EventKind, Outcome};
use crate::defaults::Defaults;
use crate::diag::FileError;
use crate::lease::LeaseManager;
use crate::requester::Requester;
use crate::secret::SecretMeta;
use crate::source::Source;
use views::Views;

pub use tree::ROOT;

type ChangeHook = Box<dyn Fn(&Changes) + Send + Sync>;

pub struct LeaseFs {
    settings: Settings,
    tree: RwLock<Arc<Tree>>,
    catalog: catalog::Catalog,
    handles: Handles,
    cache: cache::PayloadCache,
    audit: Arc<Audit>,
    leases: Arc<LeaseManager>,
    started: SystemTime,
    rebuilding: Mutex<()>,
    changed: std::sync::OnceLock<ChangeHook>,
    /// Drops an inode's pages from the page cache (set by the adapter).
    drop_pages: Arc<std::sync::OnceLock<PagesHook>>,
    /// For static secrets served through the page cache: what the kernel holds.
    served: cache::ServedPages,
    /// For contents served with direct I/O on a shared inode (a static secret of a remote source,
    /// a control file): how large the kernel may think each file is.
    sizes: cache::KernelSizes,
    /// Private inodes of dynamic files, one per lookup.
    views: Arc<Views>,
}

type PagesHook = Box<dyn Fn(u64) + Send + Sync>;

impl LeaseFs {
    pub fn new(settings: Settings, sources: Vec<SourceSpec>, audit: Arc<Audit>, leases: Arc<LeaseManager>) -> Self {
        // When a lease ends, what a reader's mmap or splice put in the page cache goes too.
        let drop_pages: Arc<std::sync::OnceLock<PagesHook>> = Arc::default();
        let views = Arc::new(Views::default());
        let (hook, paged) = (drop_pages.clone(), views.clone());
        leases.on_end(move |lease_id| {
            if let Some(f) = hook.get() {
                for view in paged.ended(lease_id) {
                    f(view)
                }
            }
        });
        let fs = LeaseFs {
            settings,
            tree: RwLock::new(Arc::new(Tree::default())),
            catalog: catalog::Catalog::new(sources),
            handles: Handles::default(),
            cache: cache::PayloadCache::default(),
            audit,
            leases,
            started: SystemTime::now(),
            rebuilding: Mutex::new(()),
            changed: std::sync::OnceLock::new(),
            drop_pages,
            served: Default::default(),
            sizes: Default::default(),
            views,
        };
        fs.rebuild();
        fs
    }

    pub fn defaults(&self) -> &Defaults {
        &self.settings.defaults
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    pub fn leases(&self) -> &Arc<LeaseManager> {
        &self.leases
    }

    /// How long the kernel may keep names, attributes and missing names (never contents).
    pub fn entry_ttl(&self) -> Duration {
        self.settings.defaults.attr_ttl.0
    }

    /// Root, or the user the daemon runs as: who may use `/.leasefs/`.
    fn is_admin(&self, who: &Requester) -> bool {
        who.uid == 0 || who.uid == self.settings.root_owner.uid
    }

    /// Finds a base secret by source prefix and path (journal recovery after a restart).
    pub fn resolve_base(&self, source_key: &str, path: &str) -> Option<(Arc<SecretMeta>, Arc<dyn Source>)> {
        let i = self.catalog.find(source_key)?;
        self.tree().base(i, path).map(|b| (b.clone(), self.catalog.spec(i).source.clone()))
    }

    /// The sources and what they last listed.
    pub fn catalog(&self) -> &catalog::Catalog {
        &self.catalog
    }

    pub fn tree(&self) -> Arc<Tree> {
        self.tree.read().clone()
    }

    /// Lists every source again (each bounded by `issue_timeout`). A source that fails keeps its last
    /// listing. Returns the problems found (bad documents, conflicts), for logging and `check`.
    pub async fn refresh(&self) -> Vec<FileError> {
        let mut problems = self.catalog.list_all(self.settings.defaults.issue_timeout.0).await;
        problems.extend(self.rebuild());
        problems
    }

    /// Views whose closed pages were kept `KEEP_CLOSED` without an open replacing them: their
    /// pages must go now. Also how long until the next is due (`None`: none is kept).
    pub fn kept_pages_due(&self) -> (Vec<u64>, Option<std::time::Duration>) {
        self.views.expire_kept(views::KEEP_CLOSED)
    }

    /// Completes once a closed view keeps its pages (see `kept_pages_due`).
    pub async fn pages_kept(&self) {
        self.views.kept_added().await
    }

    /// Called with each inode whose pages must leave the page cache (its lease ended).
    pub fn on_drop_pages(&self, f: impl Fn(u64) + Send + Sync + 'static) {
        let _ = self.drop_pages.set(Box::new(f));
    }

    /// Called with what each rebuild changed (the adapter drops the kernel's cached copies).
    pub fn on_change(&self, f: impl Fn(&Changes) + Send + Sync + 'static) {
        let _ = self.changed.set(Box::new(f));
    }

    fn rebuild(&self) -> Vec<FileError> {
        let lasts = self.catalog.lasts();
        let listings: Vec<SourceListing<'_>> = (0..lasts.len())
            .map(|i| {
                let spec = self.catalog.spec(i);
                SourceListing { prefix: spec.prefix.clone(), owner: spec.owner, secrets: &lasts[i] }
            })
            .collect();
        // One rebuild at a time: each starts from the snapshot it replaces (inode numbers stay per path).
        let _one = self.rebuilding.lock();
        let prev = self.tree();
        let (tree, problems) = Tree::build(&prev, &listings, self.settings.root_owner, self.settings.control);
        // Compared only when someone listens (the mount; not `check`, not the first build).
        let changes = self.changed.get().map(|f| (f, tree.changes_since(&prev)));
        // A static payload whose document changed is fetched again at its next open.
        for ino in changes.iter().flat_map(|(_, c)| &c.attrs) {
            self.cache.forget(*ino);
        }
        *self.tree.write() = Arc::new(tree);
        drop(prev);
        tree::trim_heap();
        if let Some((f, changes)) = changes.filter(|(_, c)| !c.is_empty()) {
            f(&changes);
        }
        problems
    }

    pub fn health(&self) -> Vec<(String, Health)> {
        self.catalog.health()
    }

    fn attr_of(&self, tree: &Tree, ino: u64, n: &Node) -> Attr {
        let (kind, size, nlink, mtime) = match &n.kind {
            NodeKind::Dir(d) => (EntryKind::Dir, 0, 2, d.mtime),
            NodeKind::Secret { meta, .. } => (EntryKind::File, meta.size.map_or(0, u64::from), 1, meta.mtime),
            NodeKind::Bundle { meta, .. } => (EntryKind::File, 0, 1, meta.mtime),
            NodeKind::Control(_) => (EntryKind::File, 0, 1, tree.built.unwrap_or(self.started)),
        };
        Attr { ino, size, kind, perm: n.mode, uid: n.uid, gid: n.gid, mtime, nlink }
    }

    /// `lookup` on behalf of no process in particular (each dynamic file gets a new view).
    pub fn lookup(&self, parent: u64, name: &str) -> Result<Entry, FsError> {
        self.lookup_for(parent, name, 0, 0)
    }

    /// `lookup` by process `pid` of user `uid`.
    pub fn lookup_for(&self, parent: u64, name: &str, uid: u32, pid: u32) -> Result<Entry, FsError> {
        let tree = self.tree();
        let p = tree.node(parent).ok_or_else(FsError::enoent)?;
        if !p.is_dir() {
            return Err(FsError::not_dir());
        }
        let ino = tree.child(parent, name).ok_or_else(FsError::enoent)?;
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        let ttl = self.settings.defaults.attr_ttl.0;
        let mut attr = self.attr_of(&tree, ino, n);
        if n.is_dynamic() {
            // A node id of its own, looked up again at every path walk (entry TTL 0): this reader's
            // open gets an inode, and pages, that no other reader shares.
            attr.ino = self.views.create(ino, uid, pid, crate::requester::thread_group);
            attr.size = self.views.size(attr.ino, attr.size);
            return Ok(Entry { attr, ttl, entry_ttl: Duration::ZERO });
        }
        Ok(Entry { attr, ttl, entry_ttl: ttl })
    }

    /// The kernel dropped `n` lookups of node `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.views.forget(ino, n);
    }

    /// Views of dynamic files the kernel holds.
    pub fn views(&self) -> usize {
        self.views.len()
    }

    /// `stat`. For a process that holds this file open (`fstat`), the size is the real size of its
    /// handle's contents; the second value says so, and such attributes must not be cached.
    /// The kernel's getattr carries no file handle for `fstat`, so the handle is found by the caller's pid.
    pub fn getattr(&self, ino: u64, fh: Option<u64>, pid: u32) -> Result<(Attr, bool), FsError> {
        let tree = self.tree();
        let entry = self.views.entry(ino).ok_or_else(FsError::enoent)?;
        let n = tree.node(entry).ok_or_else(FsError::enoent)?;
        let mut a = self.attr_of(&tree, entry, n);
        if a.kind == EntryKind::Dir {
            return Ok((a, false));
        }
        if views::is_view(ino) {
            // Private to one reader: its size is its contents' once opened, and stays cacheable.
            a.ino = ino;
            a.size = self.views.size(ino, a.size);
            return Ok((a, false));
        }
        let own = match fh {
            Some(fh) => self.handles.bytes(fh),
            None => self.handles.held_by(ino, pid),
        };
        match own.map(|b| b.len().unwrap_or(0) as u64) {
            // The listed size is this handle's too (a static secret as listed): cacheable.
            Some(size) if size != a.size => {
                a.size = size;
                Ok((a, true))
            }
            _ => Ok((a, false)),
        }
    }

    /// `getattr` as the kernel gets it. A handle's true size is true for its holder only: it is
    /// kept at most a second (a reader that opens the file again in that time skips a round
    /// trip; an open of other contents drops it, see `KernelSizes`).
    pub fn getattr_entry(&self, ino: u64, fh: Option<u64>, pid: u32) -> Result<Entry, FsError> {
        let (attr, own) = self.getattr(ino, fh, pid)?;
        let ttl = self.settings.defaults.attr_ttl.0;
        Ok(Entry { attr, ttl: if own { ttl.min(Duration::from_secs(1)) } else { ttl }, entry_ttl: ttl })
    }

    /// Opening a directory: it must exist and be one. Listings are metadata, so the kernel may
    /// keep them (until a reload changes the directory and `on_change` drops them).
    pub fn opendir(&self, ino: u64) -> Result<(), FsError> {
        match self.tree().node(ino) {
            Some(n) if n.is_dir() => Ok(()),
            Some(_) => Err(FsError::not_dir()),
            None => Err(FsError::enoent()),
        }
    }

    /// Calls `add` for each entry from `offset` on, until it returns true (buffer full).
    pub fn readdir(&self, ino: u64, offset: u64, mut add: impl FnMut(DirEntry<'_>) -> bool) -> Result<(), FsError> {
        let tree = self.tree();
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        let NodeKind::Dir(dir) = &n.kind else {
            return Err(FsError::not_dir());
        };
        let children = &dir.children;
        let parent_ino = if ino == ROOT { ROOT } else { n.parent };
        let total = children.len() as u64 + 2;
        for i in offset..total {
            let (cino, dots) = match i {
                0 => (ino, Some(".")),
                1 => (parent_ino, Some("..")),
                _ => (children[(i - 2) as usize], None),
            };
            let Some(cn) = tree.node(cino) else { continue };
            let name = dots.unwrap_or_else(|| cn.name());
            let attr = self.attr_of(&tree, cino, cn);
            // A dynamic file's name is looked up again at each path walk (it gets a view then).
            let ttl = if cn.is_dynamic() { Duration::ZERO } else { self.settings.defaults.attr_ttl.0 };
            if add(DirEntry { ino: cino, name, attr, next: i + 1, ttl }) {
                break;
            }
        }
        Ok(())
    }

    fn record(&self, event: EventKind, path: &str, outcome: Outcome, detail: Option<&str>, who: &Requester) {
        self.audit.record(&Event::new(event, path, outcome).detail(detail), Some(who));
    }

    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    pub fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        let entry = self.views.entry(ino).ok_or_else(FsError::enoent)?;
        xattr::get(&self.tree(), entry, name, self.settings.defaults.ttl.0)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let entry = self.views.entry(ino).ok_or_else(FsError::enoent)?;
        xattr::list(&self.tree(), entry, self.settings.defaults.ttl.0)
    }
}
