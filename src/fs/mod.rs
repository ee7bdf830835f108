//! The filesystem logic — inodes, handles, open/read/readdir/xattr — with no FUSE types, so it is
//! tested without a mount. Each answer carries what the kernel may do with it (cache TTLs, open
//! flags), so the adapter holds no policy.

pub mod access;
pub mod cache;
pub mod catalog;
pub mod control;
pub mod error;
pub mod handles;
pub mod tree;
pub mod types;
pub mod xattr;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};

pub use control::Health;
pub use error::FsError;
use handles::{Handle, Handles};
use tree::{Changes, Control, Node, NodeKind, SourceListing, Tree};
pub use types::*;

use crate::audit::{Audit, Event, EventKind};
use crate::config::Defaults;
use crate::diag::FileError;
use crate::lease::{LeaseManager, OpenRequest};
use crate::memlock::SharedBytes;
use crate::render::render_static;
use crate::secret::{Requester, SecretFields, SecretKind, SecretMeta};
use crate::source::Source;

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
    /// For contents served with direct I/O: how large the kernel may think each file is.
    sizes: cache::KernelSizes,
}

type PagesHook = Box<dyn Fn(u64) + Send + Sync>;

impl LeaseFs {
    pub fn new(settings: Settings, sources: Vec<SourceSpec>, audit: Arc<Audit>, leases: Arc<LeaseManager>) -> Self {
        // When a lease ends, what a reader's mmap or splice put in the page cache goes too.
        let drop_pages: Arc<std::sync::OnceLock<PagesHook>> = Arc::default();
        let hook = drop_pages.clone();
        leases.on_end(move |ino| {
            if let Some(f) = hook.get() {
                f(ino)
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

    fn count(&self, op: &std::sync::atomic::AtomicU64) {
        op.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Entry, FsError> {
        self.count(&self.leases.metrics.ops.lookup);
        let tree = self.tree();
        let p = tree.node(parent).ok_or_else(FsError::enoent)?;
        if !p.is_dir() {
            return Err(FsError::not_dir());
        }
        let ino = tree.child(parent, name).ok_or_else(FsError::enoent)?;
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        Ok(Entry { attr: self.attr_of(&tree, ino, n), ttl: self.settings.defaults.attr_ttl.0 })
    }

    /// `stat`. For a process that holds this file open (`fstat`), the size is the real size of its
    /// handle's contents; the second value says so, and such attributes must not be cached.
    /// The kernel's getattr carries no file handle for `fstat`, so the handle is found by the caller's pid.
    pub fn getattr(&self, ino: u64, fh: Option<u64>, pid: u32) -> Result<(Attr, bool), FsError> {
        self.count(&self.leases.metrics.ops.getattr);
        let tree = self.tree();
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        let mut a = self.attr_of(&tree, ino, n);
        if a.kind == EntryKind::Dir {
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
        Ok(Entry { attr, ttl: if own { ttl.min(Duration::from_secs(1)) } else { ttl } })
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
        self.count(&self.leases.metrics.ops.readdir);
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
            if add(DirEntry { ino: cino, name, attr, next: i + 1 }) {
                break;
            }
        }
        Ok(())
    }

    fn record(&self, event: EventKind, path: &str, outcome: &str, detail: Option<&str>, who: &Requester) {
        self.audit.record(&Event { event, path, lease_id: None, issuer: None, outcome, detail }, Some(who));
    }

    /// Starts an open for the adapter: the work as a `'static` future, and whether it may finish
    /// in place (no process to start, no round trip to wait for).
    pub fn opening(self: &Arc<Self>, ino: u64, flags: i32, who: Requester) -> Opening {
        let tree = self.tree();
        let inline = match tree.node(ino).map(|n| &n.kind) {
            Some(NodeKind::Secret { meta, source } | NodeKind::Bundle { meta, source, .. }) => match &meta.kind {
                SecretKind::Dynamic { link } => tree.base(*source, link).is_some_and(
                    |b| matches!(b.kind, SecretKind::Base { issuer, .. } if self.leases.is_inline(issuer)),
                ),
                _ => true,
            },
            _ => true,
        };
        drop(tree);
        let me = self.clone();
        Opening { inline, future: Box::pin(async move { me.open(ino, flags, who).await }) }
    }

    /// Opens an entry: fetches a static payload (cached for `cache_ttl`), issues a dynamic secret,
    /// or renders a control file.
    pub async fn open(&self, ino: u64, flags: i32, who: Requester) -> Result<Opened, FsError> {
        self.count(&self.leases.metrics.ops.open);
        let who = if self.audit.is_enabled() { who.with_comm() } else { who };
        let r = self.open_inner(ino, flags, who).await;
        if r.is_err() {
            self.count(&self.leases.metrics.ops.errors);
        }
        r
    }

    /// A handle served with direct I/O; `listed` is the size `stat` gives the entry.
    fn new_handle(
        &self,
        ino: u64,
        pid: u32,
        listed: u64,
        bytes: Arc<SharedBytes>,
        lease: Option<Arc<crate::lease::Lease>>,
    ) -> Opened {
        let size = bytes.len().unwrap_or(0) as u64;
        let fh = self.handles.insert(Handle { ino, pid, bytes, lease, written: 0, cached: false, paged: false });
        let refresh_attr = !self.sizes.raise(ino, listed, size);
        Opened { fh, direct_io: true, keep_cache: false, refresh_attr, size }
    }

    /// A handle on a static secret of `page_cache` source. Its contents go through the page cache
    /// when they are exactly as long as listed (the kernel then knows the file's end without
    /// asking); pages cached by earlier opens are kept when they hold these same contents. Any other
    /// contents (the document changed since the listing) are served like a dynamic secret's.
    fn static_handle(&self, ino: u64, pid: u32, listed: Option<u64>, bytes: crate::render::Bytes) -> Opened {
        if listed != Some(bytes.len() as u64) {
            return self.new_handle(ino, pid, listed.unwrap_or(0), Arc::new(SharedBytes::new(bytes)), None);
        }
        let keep_cache = self.served.unchanged(ino, &bytes);
        let bytes = Arc::new(SharedBytes::new(bytes));
        let size = bytes.len().unwrap_or(0) as u64;
        let fh = self.handles.insert(Handle { ino, pid, bytes, lease: None, written: 0, cached: true, paged: false });
        Opened { fh, direct_io: false, keep_cache, refresh_attr: false, size }
    }

    async fn open_inner(&self, ino: u64, flags: i32, who: Requester) -> Result<Opened, FsError> {
        let tree = self.tree();
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        let path = tree.path_of(ino);
        let writes = access::wants_write(flags);
        // The size `stat` gives it: what the kernel may hold before this open raises it.
        let listed = self.attr_of(&tree, ino, n).size;
        match &n.kind {
            NodeKind::Dir(_) => Err(FsError::is_dir()),
            NodeKind::Control(c) => {
                if !self.is_admin(&who) {
                    return Err(FsError::eacces("the control directory is for root only"));
                }
                if *c == Control::Revoke {
                    if flags & libc::O_ACCMODE == libc::O_RDONLY {
                        return Err(FsError::eacces("revoke is write-only"));
                    }
                    return Ok(self.new_handle(
                        ino,
                        who.pid,
                        listed,
                        Arc::new(SharedBytes::new(Default::default())),
                        None,
                    ));
                }
                if writes {
                    return Err(FsError::erofs());
                }
                let view = control::View {
                    started: self.started,
                    counts: tree.counts,
                    sources: self.health(),
                    open_handles: self.handles.len(),
                    leases: &self.leases,
                };
                let bytes = control::contents(*c, &view);
                Ok(self.new_handle(ino, who.pid, listed, Arc::new(SharedBytes::new(bytes)), None))
            }
            NodeKind::Secret { source, meta } | NodeKind::Bundle { source, meta, .. } => {
                if writes {
                    return Err(FsError::erofs());
                }
                if !access::allowed(n.uid, n.gid, n.mode, &who, false) {
                    self.record(EventKind::Deny, &path, "denied", Some("permission"), &who);
                    return Err(FsError::eacces("permission denied"));
                }
                // A bundle's files share its lease: the entry is the directory, the file an index.
                let (entry_path, inos, file) = match &n.kind {
                    NodeKind::Bundle { file, .. } => {
                        (tree.path_of(n.parent), tree.children_of(n.parent), *file as usize)
                    }
                    _ => (path.clone(), vec![ino], 0),
                };
                match &meta.kind {
                    SecretKind::Static | SecretKind::Base { .. } => {
                        let result = self.open_static(ino, *source, meta).await.map_err(|e| e.at(&path));
                        let detail = result.as_ref().err().map(|e| e.message.clone());
                        let outcome = if result.is_ok() { "ok" } else { "error" };
                        self.record(EventKind::Open, &path, outcome, detail.as_deref(), &who);
                        let bytes = result?;
                        if self.catalog.spec(*source).page_cache {
                            return Ok(self.static_handle(ino, who.pid, meta.size.map(u64::from), bytes));
                        }
                        Ok(self.new_handle(ino, who.pid, listed, Arc::new(SharedBytes::new(bytes)), None))
                    }
                    SecretKind::Dynamic { link } => {
                        let slot = self.catalog.spec(*source);
                        let Some(base) = tree.base(*source, link).cloned() else {
                            let msg = format!("{path} links to {link:?}, which is not a base secret of its source");
                            self.record(EventKind::Error, &path, "error", Some(&msg), &who);
                            return Err(FsError::eio(msg));
                        };
                        let req = OpenRequest {
                            secret: meta.clone(),
                            path: entry_path,
                            base,
                            source: slot.source.clone(),
                            source_key: self.catalog.source_key(*source),
                            requester: who.clone().with_comm(),
                            inos,
                        };
                        let lease = self.leases.open(req).await.map_err(|e| FsError::from(e).at(&path))?;
                        let bytes =
                            lease.file(file).cloned().ok_or_else(|| FsError::eio("no such file in the bundle"))?;
                        Ok(self.new_handle(ino, who.pid, listed, bytes, Some(lease)))
                    }
                }
            }
        }
    }

    fn render_for(meta: &SecretMeta, fields: &SecretFields) -> Result<crate::render::Bytes, FsError> {
        render_static(fields, meta.policy().format.as_ref()).map_err(|e| FsError::eio(format!("cannot render: {e}")))
    }

    async fn open_static(
        &self,
        ino: u64,
        source: usize,
        meta: &Arc<SecretMeta>,
    ) -> Result<crate::render::Bytes, FsError> {
        let src = &self.catalog.spec(source).source;
        let fields = self.cache.fetch(ino, src.as_ref(), meta, &self.settings.defaults).await?;
        Self::render_for(meta, &fields)
    }

    /// Serves a read from the handle's bytes; after expiry, `EKEYEXPIRED`. `paged`: the kernel
    /// reads to fill its page cache (not a reader's direct read), so the pages must go at close.
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        paged: bool,
        f: impl FnOnce(Result<&[u8], FsError>) -> R,
    ) -> R {
        self.count(&self.leases.metrics.ops.read);
        match self.handles.bytes_to_read(fh, paged) {
            None => f(Err(FsError::bad_handle())),
            Some(b) => b.with_slice(offset, size, |s| f(s.ok_or_else(FsError::expired))),
        }
    }

    /// Closes a handle. Returns whether what the kernel cached for its inode must go: pages that
    /// reads through the page cache filled with contents served with direct I/O (a static secret
    /// served through the page cache keeps its pages; a handle read only directly has none).
    pub fn release(&self, fh: u64) -> bool {
        self.count(&self.leases.metrics.ops.release);
        let Some(h) = self.handles.remove(fh) else { return true };
        if let Some(lease) = &h.lease {
            self.leases.closed(lease);
        }
        h.paged && !h.cached
    }

    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    pub fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        xattr::get(&self.tree(), ino, name, self.settings.defaults.ttl.0)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        xattr::list(&self.tree(), ino, self.settings.defaults.ttl.0)
    }
}
