//! The filesystem logic — inodes, handles, open/read/readdir/xattr — with no FUSE types, so it is tested without a mount.

pub mod error;
pub mod tree;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;

pub use error::FsError;
use tree::{Changes, Control, Node, NodeKind, Owner, SourceListing, Tree};

use crate::audit::{Audit, Event};
use crate::config::{Defaults, FileError};
use crate::lease::{Lease, LeaseError, LeaseManager, OpenRequest};
use crate::render::{Format, render_static};
use crate::secret::{Requester, SecretFields, SecretKind, SecretMeta, SharedBytes};
use crate::source::{Source, SourceError};

pub use tree::ROOT;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
}

/// Attributes of an entry, as `stat` shows them.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub kind: EntryKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub nlink: u32,
}

/// A directory entry handed to the adapter; `next` is the offset of the entry after it.
pub struct DirEntry<'a> {
    pub ino: u64,
    pub name: &'a str,
    pub attr: Attr,
    pub next: u64,
}

/// A source as mounted: where, with which default owner, and what it last listed.
pub struct SourceSpec {
    pub source: Arc<dyn Source>,
    pub prefix: Vec<String>,
    pub owner: Owner,
}

#[derive(Default, Clone, serde::Serialize)]
pub struct Health {
    pub up: bool,
    pub last_ok: Option<String>,
    pub last_error: Option<String>,
    pub secrets: usize,
    pub problems: usize,
}

struct Slot {
    spec: SourceSpec,
    last: Mutex<(Arc<Vec<Arc<SecretMeta>>>, Health)>,
}

/// Settings the filesystem needs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub defaults: Defaults,
    pub root_owner: Owner,
    /// Whether `/.leasefs/` is shown.
    pub control: bool,
}

struct Cached {
    fetched: Instant,
    fields: Arc<SecretFields>,
}

struct Handle {
    ino: u64,
    /// The lease behind a dynamic secret's handle.
    lease: Option<Arc<Lease>>,
    /// The process that opened it: `fstat` reaches us without a handle, but with the caller's pid.
    pid: u32,
    bytes: Arc<SharedBytes>,
}

/// What `open` returns to the adapter.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
}

pub struct LeaseFs {
    settings: Settings,
    tree: RwLock<Arc<Tree>>,
    slots: Vec<Slot>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    cache: Mutex<LruCache<u64, Cached>>,
    audit: Arc<Audit>,
    leases: Arc<LeaseManager>,
    started: SystemTime,
    rebuilding: Mutex<()>,
    changed: std::sync::OnceLock<ChangeHook>,
}

type ChangeHook = Box<dyn Fn(&Changes) + Send + Sync>;

/// Static payloads kept for `cache_ttl` (zeroized when evicted or dropped).
const CACHE_ENTRIES: usize = 16384;

impl LeaseFs {
    pub fn new(settings: Settings, sources: Vec<SourceSpec>, audit: Arc<Audit>, leases: Arc<LeaseManager>) -> Self {
        let slots = sources
            .into_iter()
            .map(|spec| Slot { spec, last: Mutex::new((Arc::new(Vec::new()), Health::default())) })
            .collect();
        let fs = LeaseFs {
            settings,
            tree: RwLock::new(Arc::new(Tree::default())),
            slots,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            cache: Mutex::new(LruCache::new(NonZeroUsize::new(CACHE_ENTRIES).unwrap())),
            audit,
            leases,
            started: SystemTime::now(),
            rebuilding: Mutex::new(()),
            changed: std::sync::OnceLock::new(),
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

    /// Root, or the user the daemon runs as: who may use `/.leasefs/`.
    fn is_admin(&self, who: &Requester) -> bool {
        who.uid == 0 || who.uid == self.settings.root_owner.uid
    }

    fn count(&self, op: &AtomicU64) {
        op.fetch_add(1, Ordering::Relaxed);
    }

    /// The key the journal uses for a source: its prefix.
    fn source_key(spec: &SourceSpec) -> String {
        format!("/{}", spec.prefix.join("/"))
    }

    /// Finds a base secret by source prefix and path (journal recovery after a restart).
    pub fn resolve_base(&self, source_key: &str, path: &str) -> Option<(Arc<SecretMeta>, Arc<dyn Source>)> {
        let tree = self.tree();
        self.slots
            .iter()
            .enumerate()
            .find(|(_, s)| Self::source_key(&s.spec) == source_key)
            .and_then(|(i, s)| tree.base(i, path).map(|b| (b.clone(), s.spec.source.clone())))
    }

    pub fn tree(&self) -> Arc<Tree> {
        self.tree.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Lists every source again (each bounded by `issue_timeout`). A source that fails keeps its last
    /// listing. Returns the problems found (bad documents, conflicts), for logging and `check`.
    pub async fn refresh(&self) -> Vec<FileError> {
        let mut problems = Vec::new();
        let timeout = self.settings.defaults.issue_timeout.0;
        for slot in &self.slots {
            let result = match tokio::time::timeout(timeout, slot.spec.source.list()).await {
                Ok(r) => r,
                Err(_) => Err(SourceError::Unavailable(format!("listing took longer than {timeout:?}"))),
            };
            let mut g = slot.last.lock().unwrap_or_else(|e| e.into_inner());
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            match result {
                Ok(listing) => {
                    g.1.up = true;
                    g.1.last_ok = Some(now);
                    g.1.secrets = listing.secrets.len();
                    g.1.problems = listing.problems.len();
                    // A new vector, not an in-place collect: that would keep the listing's whole
                    // buffer (the size of every SecretMeta) alive to hold 8-byte pointers.
                    let mut metas = Vec::with_capacity(listing.secrets.len());
                    metas.extend(listing.secrets.into_iter().map(Arc::new));
                    g.0 = Arc::new(metas);
                    problems.extend(listing.problems);
                }
                Err(e) => {
                    if g.1.up || g.1.last_error.is_none() {
                        tracing::warn!(source = %slot.spec.source.describe(), error = %e, "source unavailable; serving its last listing");
                    }
                    g.1.up = false;
                    g.1.last_error = Some(format!("{now}: {e}"));
                }
            }
        }
        problems.extend(self.rebuild());
        problems
    }

    /// Called with what each rebuild changed (the adapter drops the kernel's cached copies).
    pub fn on_change(&self, f: impl Fn(&Changes) + Send + Sync + 'static) {
        let _ = self.changed.set(Box::new(f));
    }

    fn rebuild(&self) -> Vec<FileError> {
        let lasts: Vec<Arc<Vec<Arc<SecretMeta>>>> =
            self.slots.iter().map(|s| s.last.lock().unwrap_or_else(|e| e.into_inner()).0.clone()).collect();
        let listings: Vec<SourceListing<'_>> = self
            .slots
            .iter()
            .zip(&lasts)
            .map(|(s, l)| SourceListing { prefix: s.spec.prefix.clone(), owner: s.spec.owner, secrets: l })
            .collect();
        // One rebuild at a time: each starts from the snapshot it replaces (inode numbers stay per path).
        let _one = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        let prev = self.tree();
        let (tree, problems) = Tree::build(&prev, &listings, self.settings.root_owner, self.settings.control);
        // Compared only when someone listens (the mount; not `check`, not the first build).
        let changes = self.changed.get().map(|f| (f, tree.changes_since(&prev)));
        *self.tree.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tree);
        drop(prev);
        trim_heap();
        if let Some((f, changes)) = changes.filter(|(_, c)| !c.is_empty()) {
            f(&changes);
        }
        problems
    }

    pub fn health(&self) -> Vec<(String, Health)> {
        self.slots
            .iter()
            .map(|s| (s.spec.source.describe(), s.last.lock().unwrap_or_else(|e| e.into_inner()).1.clone()))
            .collect()
    }

    fn attr_of(&self, tree: &Tree, ino: u64, n: &Node) -> Attr {
        let (kind, size, nlink, mtime) = match &n.kind {
            NodeKind::Dir(d) => (EntryKind::Dir, 0, 2, d.mtime),
            NodeKind::Secret { meta, .. } => (EntryKind::File, meta.size.unwrap_or(0), 1, meta.mtime),
            NodeKind::Control(_) => (EntryKind::File, 0, 1, tree.built.unwrap_or(self.started)),
        };
        Attr { ino, size, kind, perm: n.mode, uid: n.uid, gid: n.gid, mtime, nlink }
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        self.count(&self.leases.metrics.ops.lookup);
        let tree = self.tree();
        let p = tree.node(parent).ok_or_else(FsError::enoent)?;
        if !p.is_dir() {
            return Err(FsError::not_dir());
        }
        let ino = tree.child(parent, name).ok_or_else(FsError::enoent)?;
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        Ok(self.attr_of(&tree, ino, n))
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
        let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        let own = match fh {
            Some(fh) => handles.get(&fh).map(|h| h.bytes.clone()),
            None => handles
                .values()
                .filter(|h| h.ino == ino && h.pid == pid)
                .max_by_key(|h| h.bytes.len())
                .map(|h| h.bytes.clone()),
        };
        drop(handles);
        match own {
            Some(b) => {
                a.size = b.len().unwrap_or(0) as u64;
                Ok((a, true))
            }
            None => Ok((a, false)),
        }
    }

    /// Opening a directory: it must exist and be one.
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

    /// Defence in depth beside the kernel's `default_permissions`: checks the mode bits again for the requester.
    fn check_access(&self, path: &str, n: &Node, who: &Requester, want_write: bool) -> Result<(), FsError> {
        if who.uid == 0 {
            return Ok(());
        }
        let bits = if who.uid == n.uid {
            (n.mode >> 6) & 7
        } else if who.gid == n.gid || supplementary_groups(who.pid).contains(&n.gid) {
            (n.mode >> 3) & 7
        } else {
            n.mode & 7
        };
        let need = if want_write { 2 } else { 4 };
        if bits & need == 0 {
            self.audit.record(
                &Event {
                    event: "deny",
                    path,
                    lease_id: None,
                    issuer: None,
                    outcome: "denied",
                    detail: Some("permission"),
                },
                Some(who),
            );
            return Err(FsError::eacces("permission denied"));
        }
        Ok(())
    }

    /// Opens an entry: fetches a static payload (cached for `cache_ttl`) or renders a control file.
    pub async fn open(&self, ino: u64, flags: i32, who: Requester) -> Result<Opened, FsError> {
        self.count(&self.leases.metrics.ops.open);
        let who = if self.audit.is_enabled() { who.with_comm() } else { who };
        let r = self.open_inner(ino, flags, who).await;
        if r.is_err() {
            self.count(&self.leases.metrics.ops.errors);
        }
        r
    }

    async fn open_inner(&self, ino: u64, flags: i32, who: Requester) -> Result<Opened, FsError> {
        let tree = self.tree();
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        let path = tree.path_of(ino);
        let acc = flags & libc::O_ACCMODE;
        let writes = wants_write(flags);
        match &n.kind {
            NodeKind::Dir(_) => Err(FsError::is_dir()),
            NodeKind::Control(c) => {
                if !self.is_admin(&who) {
                    return Err(FsError::eacces("the control directory is for root only"));
                }
                if *c == Control::Revoke {
                    if acc == libc::O_RDONLY {
                        return Err(FsError::eacces("revoke is write-only"));
                    }
                    return Ok(self.new_handle(ino, who.pid, Arc::new(SharedBytes::new(Default::default())), None));
                }
                if writes {
                    return Err(FsError::erofs());
                }
                let bytes = self.control_contents(*c);
                Ok(self.new_handle(ino, who.pid, Arc::new(SharedBytes::new(bytes)), None))
            }
            NodeKind::Secret { source, meta } => {
                if writes {
                    return Err(FsError::erofs());
                }
                self.check_access(&path, n, &who, false)?;
                match &meta.kind {
                    SecretKind::Static | SecretKind::Base { .. } => {
                        let result = self.open_static(ino, *source, meta).await;
                        self.audit_open(&path, &result, &who);
                        let bytes = result?;
                        Ok(self.new_handle(ino, who.pid, Arc::new(SharedBytes::new(bytes)), None))
                    }
                    SecretKind::Dynamic { link } => {
                        let slot = &self.slots[*source].spec;
                        let Some(base) = tree.base(*source, link).cloned() else {
                            let msg = format!("{path} links to {link:?}, which is not a base secret of its source");
                            tracing::warn!("{msg}");
                            self.audit.record(
                                &Event {
                                    event: "error",
                                    path: &path,
                                    lease_id: None,
                                    issuer: None,
                                    outcome: "error",
                                    detail: Some(&msg),
                                },
                                Some(&who),
                            );
                            return Err(FsError::eio(msg));
                        };
                        let req = OpenRequest {
                            secret: meta.clone(),
                            path: path.clone(),
                            base,
                            source: slot.source.clone(),
                            source_key: Self::source_key(slot),
                            requester: who.clone().with_comm(),
                        };
                        match self.leases.open(req).await {
                            Ok(lease) => Ok(self.new_handle(ino, who.pid, lease.bytes.clone(), Some(lease))),
                            Err(LeaseError::Timeout(d)) => {
                                Err(FsError::new(libc::ETIMEDOUT, format!("issuance timed out after {d:?}")))
                            }
                            Err(LeaseError::Failed(m)) => Err(FsError::eio(m)),
                        }
                    }
                }
            }
        }
    }

    fn audit_open(&self, path: &str, result: &Result<crate::render::Bytes, FsError>, who: &Requester) {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        let detail = result.as_ref().err().map(|e| e.message.clone());
        self.audit.record(
            &Event { event: "open", path, lease_id: None, issuer: None, outcome, detail: detail.as_deref() },
            Some(who),
        );
    }

    fn render_for(meta: &SecretMeta, fields: &SecretFields) -> Result<crate::render::Bytes, FsError> {
        let format = match meta.attr_str("format") {
            Some(f) => Some(Format::parse(f).map_err(FsError::eio)?),
            None => None,
        };
        render_static(fields, format.as_ref()).map_err(|e| {
            tracing::warn!(path = %meta.path(), error = %e, "cannot render secret");
            FsError::eio(e)
        })
    }

    fn new_handle(&self, ino: u64, pid: u32, bytes: Arc<SharedBytes>, lease: Option<Arc<Lease>>) -> Opened {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).insert(fh, Handle { ino, lease, pid, bytes });
        Opened { fh }
    }

    async fn open_static(
        &self,
        ino: u64,
        source: usize,
        meta: &Arc<SecretMeta>,
    ) -> Result<crate::render::Bytes, FsError> {
        let d = &self.settings.defaults;
        let cached = {
            let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            c.get(&ino).map(|e| (e.fetched.elapsed(), e.fields.clone()))
        };
        let fields = match cached {
            Some((age, f)) if age < d.cache_ttl.0 => f,
            stale => {
                let src = &self.slots[source].spec.source;
                let fetched = match tokio::time::timeout(d.issue_timeout.0, src.read(meta)).await {
                    Ok(r) => r,
                    Err(_) => {
                        Err(SourceError::Unavailable(format!("reading took longer than {:?}", d.issue_timeout.0)))
                    }
                };
                match fetched {
                    Ok(f) => {
                        let f = Arc::new(f);
                        self.cache
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .put(ino, Cached { fetched: Instant::now(), fields: f.clone() });
                        f
                    }
                    Err(SourceError::Unavailable(msg)) => match stale {
                        Some((age, f)) if age < d.cache_ttl.0 + d.max_stale.0 => {
                            tracing::warn!(path = %meta.path(), error = %msg, age_s = age.as_secs(), "source unavailable; serving the cached value");
                            f
                        }
                        _ => {
                            self.cache.lock().unwrap_or_else(|e| e.into_inner()).pop(&ino);
                            return Err(FsError::eio(msg));
                        }
                    },
                    Err(SourceError::Invalid(msg)) => {
                        self.cache.lock().unwrap_or_else(|e| e.into_inner()).pop(&ino);
                        tracing::warn!(path = %meta.path(), error = %msg, "cannot read secret");
                        return Err(FsError::eio(msg));
                    }
                }
            }
        };
        Self::render_for(meta, &fields)
    }

    /// Serves a read from the handle's bytes; after expiry, `EKEYEXPIRED`.
    pub fn read<R>(&self, fh: u64, offset: u64, size: u32, f: impl FnOnce(Result<&[u8], FsError>) -> R) -> R {
        self.count(&self.leases.metrics.ops.read);
        let bytes = self.handles.lock().unwrap_or_else(|e| e.into_inner()).get(&fh).map(|h| h.bytes.clone());
        match bytes {
            None => f(Err(FsError::bad_handle())),
            Some(b) => b.with_slice(offset, size, |s| f(s.ok_or_else(FsError::expired))),
        }
    }

    pub fn release(&self, fh: u64) {
        self.count(&self.leases.metrics.ops.release);
        let h = self.handles.lock().unwrap_or_else(|e| e.into_inner()).remove(&fh);
        if let Some(lease) = h.and_then(|h| h.lease) {
            self.leases.closed(&lease);
        }
    }

    /// Writes reach only `/.leasefs/revoke` (a lease id per line, or `all`); everything else is read-only.
    pub async fn write(&self, ino: u64, data: &[u8], who: Requester) -> Result<usize, FsError> {
        let tree = self.tree();
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        match n.kind {
            NodeKind::Control(Control::Revoke) if self.is_admin(&who) => {
                let text =
                    std::str::from_utf8(data).map_err(|_| FsError::new(libc::EINVAL, "write a lease id or \"all\""))?;
                for word in text.split_whitespace() {
                    if word == "all" {
                        let n = self.leases.revoke_all("revoke").len();
                        tracing::info!(count = n, comm = %who.comm, "revoke all requested");
                    } else if !self.leases.revoke(word) {
                        return Err(FsError::new(libc::ENOENT, "no live lease with that id"));
                    }
                }
                Ok(data.len())
            }
            NodeKind::Control(Control::Revoke) => Err(FsError::eacces("the control directory is for root only")),
            _ => Err(FsError::erofs()),
        }
    }

    /// `setattr`: only truncating the revoke file (as `echo ID > revoke` does) is accepted.
    pub fn truncate(&self, ino: u64, who: &Requester) -> Result<Attr, FsError> {
        let tree = self.tree();
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        match n.kind {
            NodeKind::Control(Control::Revoke) if self.is_admin(who) => Ok(self.attr_of(&tree, ino, n)),
            _ => Err(FsError::erofs()),
        }
    }

    pub fn open_handles(&self) -> usize {
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn xattrs(&self, n: &Node) -> Vec<(&'static str, String)> {
        let NodeKind::Secret { source, meta } = &n.kind else {
            return Vec::new();
        };
        let mut v = vec![("user.leasefs.id", meta.id().into_owned())];
        match &meta.kind {
            SecretKind::Dynamic { link } => {
                v.insert(0, ("user.leasefs.kind", "dynamic".into()));
                v.push(("user.leasefs.link", link.replace('/', ":")));
                let ttl = meta
                    .attr_str("ttl")
                    .map(str::to_string)
                    .unwrap_or_else(|| format_duration(self.settings.defaults.ttl.0));
                v.push(("user.leasefs.ttl", ttl));
                let issuer = self.tree().base(*source, link).and_then(|b| match &b.kind {
                    SecretKind::Base { issuer, .. } => Some(issuer.clone()),
                    _ => None,
                });
                v.push(("user.leasefs.issuer", issuer.unwrap_or_else(|| "unresolved".into())));
            }
            _ => v.insert(0, ("user.leasefs.kind", "static".into())),
        }
        v
    }

    pub fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        let tree = self.tree();
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        self.xattrs(n)
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or_else(|| FsError::new(libc::ENODATA, "no such attribute"))
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let tree = self.tree();
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        let mut out = Vec::new();
        for (k, _) in self.xattrs(n) {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    fn control_contents(&self, c: Control) -> crate::render::Bytes {
        let text = match c {
            Control::Status => {
                let tree = self.tree();
                let sources: Vec<serde_json::Value> = self
                    .health()
                    .into_iter()
                    .map(|(name, h)| serde_json::json!({"source": name, "health": h}))
                    .collect();
                let v = serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "started": chrono::DateTime::<chrono::Utc>::from(self.started).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "sources": sources,
                    "counts": tree.counts,
                    "open_handles": self.open_handles(),
                    "live_leases": self.leases.live(),
                    "pending_revocations": self.leases.pending_revocations(),
                });
                serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
            }
            Control::Leases => serde_json::to_string_pretty(&self.leases.list()).unwrap_or_default() + "\n",
            Control::Metrics => {
                self.leases.metrics.render(self.leases.live(), self.leases.pending_revocations(), self.open_handles())
            }
            Control::Revoke => String::new(),
        };
        zeroize::Zeroizing::new(text.into_bytes())
    }
}

/// Whether open flags ask to change the file (leasefs is read-only but for `/.leasefs/revoke`).
fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT) != 0
}

/// Formats a duration the way the configuration writes them (`"15m"`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s > 0 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The supplementary groups of a process, from `/proc/PID/status`.
fn supplementary_groups(pid: u32) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    text.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

/// Hands the heap's free pages back to the system after a rebuild (parsing and the old snapshot
/// leave large free ranges behind).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
