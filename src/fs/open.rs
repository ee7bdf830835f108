//! `open`, `read` and `release`: a static payload fetched from its source, a dynamic secret issued
//! (or a live lease reused) for the view the kernel opens, a control file rendered; the handle
//! that serves it.

use std::sync::Arc;

use super::handles::Handle;
use super::tree::{Control, Node, NodeKind, Tree};
use super::views::{Bind, Bound, is_view};
use super::{FsError, LeaseFs, Opened, Opening, access, control};
use crate::audit::{Event, EventKind, Outcome};
use crate::fields::SecretFields;
use crate::lease::{Lease, OpenRequest};
use crate::memlock::SharedBytes;
use crate::render::render_static;
use crate::requester::Requester;
use crate::secret::{SecretKind, SecretMeta};

impl LeaseFs {
    /// Starts an open for the adapter: the work as a `'static` future, and whether it may finish
    /// in place (no process to start, no round trip to wait for).
    pub fn opening(self: &Arc<Self>, ino: u64, flags: i32, who: Requester) -> Opening {
        let tree = self.tree();
        let entry = self.views.entry(ino).unwrap_or(ino);
        let inline = match tree.node(entry).map(|n| &n.kind) {
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
    /// or renders a control file. A dynamic secret is opened through a view (a node id of its own).
    pub async fn open(&self, ino: u64, flags: i32, who: Requester) -> Result<Opened, FsError> {
        let who = if self.audit.is_enabled() { who.with_comm() } else { who };
        let joined = if is_view(ino) { self.join(ino, flags, &who) } else { None };
        let r = match joined {
            Some(r) => r,
            None => match self.views.entry(ino) {
                Some(entry) => self.open_entry(ino, entry, flags, who).await,
                None => Err(FsError::new(libc::ESTALE, "this file was forgotten; open it by its path")),
            },
        };
        if r.is_err() {
            self.leases.metrics.open_failed();
        }
        r
    }

    /// An open of a view that is open already (through `/proc/PID/fd/N`, or a file bind-mounted
    /// into a container): it shares the open's lease, for the same user only — never a second
    /// lease on the same pages. `None`: the view was closed meanwhile, or its lease ended (open it
    /// afresh).
    fn join(&self, view: u64, flags: i32, who: &Requester) -> Option<Result<Opened, FsError>> {
        if access::wants_write(flags) {
            return Some(Err(FsError::erofs()));
        }
        match self.views.join(view, who.uid) {
            // Its lease ended (its last holder is closing it, or it was revoked) or has less than
            // half its length left: this open gets a credential of its own, like any new open.
            Ok(Some(have)) if near_end(&have, self.leases.clock().now()) => {
                self.views.closed(view, |v| self.drop_pages_of(v));
                None
            }
            Ok(Some(have)) => Some(self.joined(view, who, have)),
            Ok(None) => None,
            Err(_) => Some(Err(busy())),
        }
    }

    /// A handle on the contents a view is bound to (its handle count is taken already).
    fn joined(&self, view: u64, who: &Requester, have: Bound) -> Result<Opened, FsError> {
        if let Some(lease) = &have.lease {
            if !lease.is_live() {
                self.views.closed(view, |v| self.drop_pages_of(v));
                return Err(FsError::expired());
            }
            if !access::same_workload(&lease.requester, who) {
                self.views.closed(view, |v| self.drop_pages_of(v));
                self.record(EventKind::Deny, lease.path(), Outcome::Denied, Some("open by another workload"), who);
                return Err(FsError::eacces("this node is open by another workload; bind its directory instead"));
            }
            self.leases.hold(lease);
            let event = Event::new(EventKind::Reuse, lease.path(), Outcome::Ok)
                .lease(&lease.id, lease.issuer())
                .detail("the same node, open already");
            self.audit.record(&event, Some(who));
        }
        let (size, pid) = (have.size, who.pid);
        let (bytes, lease) = (have.bytes, have.lease);
        let fh = self.handles.insert(Handle { ino: view, pid, bytes, lease, written: 0, cached: false, paged: false });
        // The first open filled (or is still filling) the view's pages with these same bytes: an
        // open that joins one still under way (two processes opening one bind-mounted file at
        // once) would otherwise be answered before the kernel knows the size, and read nothing.
        // Storing the same bytes again is harmless to a reader of the pages.
        Ok(Opened { keep_cache: true, store: size > 0, ..Opened::direct(fh, size) }.cached())
    }

    /// Opens tree inode `entry` on behalf of node `ino` (the same inode, or a view of it).
    async fn open_entry(&self, ino: u64, entry: u64, flags: i32, who: Requester) -> Result<Opened, FsError> {
        let tree = self.tree();
        let n = tree.node(entry).ok_or_else(FsError::enoent)?;
        match &n.kind {
            NodeKind::Dir(_) => Err(FsError::is_dir()),
            NodeKind::Control(c) => self.open_control(&tree, ino, *c, flags, &who),
            NodeKind::Secret { meta, .. } | NodeKind::Bundle { meta, .. } => {
                if access::wants_write(flags) {
                    return Err(FsError::erofs());
                }
                let path = tree.path_of(entry);
                if !access::allowed(n.uid, n.gid, n.mode, &who, false) {
                    self.record(EventKind::Deny, &path, Outcome::Denied, Some("permission"), &who);
                    return Err(FsError::eacces("permission denied"));
                }
                let who = access::identify(who, meta);
                if let Err(why) = access::admit(meta, &who) {
                    self.record(EventKind::Deny, &path, Outcome::Denied, Some(&why), &who);
                    return Err(FsError::eacces(why));
                }
                match &meta.kind {
                    SecretKind::Dynamic { .. } if !is_view(ino) => {
                        // Only a view may hold a lease's bytes (a dentry from a listing): look again.
                        Err(FsError::new(libc::ESTALE, "a dynamic file is opened through its own inode"))
                    }
                    SecretKind::Dynamic { link } => self.open_dynamic(&tree, ino, n, link, &path, who).await,
                    SecretKind::Static | SecretKind::Base { .. } => {
                        let listed = self.attr_of(&tree, entry, n).size;
                        self.open_static_entry(ino, n, meta, &path, listed, who).await
                    }
                }
            }
        }
    }

    fn open_control(&self, tree: &Tree, ino: u64, c: Control, flags: i32, who: &Requester) -> Result<Opened, FsError> {
        if !self.is_admin(who) {
            return Err(FsError::eacces("the control directory is for root only"));
        }
        let bytes = if c == Control::Revoke {
            if flags & libc::O_ACCMODE == libc::O_RDONLY {
                return Err(FsError::eacces("revoke is write-only"));
            }
            Default::default()
        } else {
            if access::wants_write(flags) {
                return Err(FsError::erofs());
            }
            let view = control::View {
                started: self.started,
                counts: tree.counts,
                sources: self.health(),
                open_handles: self.handles.len(),
                views: self.views.len(),
                leases: &self.leases,
            };
            control::contents(c, &view)
        };
        Ok(self.new_handle(ino, who, 0, Arc::new(SharedBytes::new(bytes)?), None))
    }

    async fn open_static_entry(
        &self,
        ino: u64,
        n: &Node,
        meta: &Arc<SecretMeta>,
        path: &str,
        listed: u64,
        who: Requester,
    ) -> Result<Opened, FsError> {
        let NodeKind::Secret { source, .. } = &n.kind else { return Err(FsError::eio("not a static secret")) };
        let result = self.open_static(ino, *source, meta).await.map_err(|e| e.at(path));
        let detail = result.as_ref().err().map(|e| e.message.clone());
        let outcome = if result.is_ok() { Outcome::Ok } else { Outcome::Error };
        self.record(EventKind::Open, path, outcome, detail.as_deref(), &who);
        let bytes = result?;
        if self.catalog.spec(*source).page_cache {
            return self.static_handle(ino, &who, meta.size.map(u64::from), bytes).map_err(|e| e.at(path));
        }
        Ok(self.new_handle(
            ino,
            &who,
            listed,
            Arc::new(SharedBytes::new(bytes).map_err(|e| FsError::from(e).at(path))?),
            None,
        ))
    }

    /// Issues (or reuses) the lease of a dynamic secret or of a bundle's file, for view `view`.
    async fn open_dynamic(
        &self,
        tree: &Tree,
        view: u64,
        n: &Node,
        link: &str,
        path: &str,
        who: Requester,
    ) -> Result<Opened, FsError> {
        let (NodeKind::Secret { source, meta } | NodeKind::Bundle { source, meta, .. }) = &n.kind else {
            return Err(FsError::eio("not a dynamic secret"));
        };
        // A bundle's files share its lease: the entry is the directory, the file an index.
        let (entry_path, file) = match &n.kind {
            NodeKind::Bundle { file, .. } => (tree.path_of(n.parent), *file as usize),
            _ => (path.to_string(), 0),
        };
        let Some(base) = tree.base(*source, link).cloned() else {
            let msg = format!("{path} links to {link:?}, which is not a base secret of its source");
            self.record(EventKind::Error, path, Outcome::Error, Some(&msg), &who);
            return Err(FsError::eio(msg));
        };
        let slot = self.catalog.spec(*source);
        let req = OpenRequest {
            secret: meta.clone(),
            path: entry_path,
            base,
            source: slot.source.clone(),
            source_key: self.catalog.source_key(*source),
            requester: who.clone().with_comm(),
        };
        let lease = self.leases.open(req).await.map_err(|e| FsError::from(e).at(path))?;
        let Some(bytes) = lease.file(file).cloned() else {
            self.leases.closed(&lease);
            return Err(FsError::eio("no such file in the bundle"));
        };
        self.view_handle(view, &who, bytes, lease)
    }

    /// Binds view `view` to a lease's bytes and opens a handle on them. If another open bound
    /// the view meanwhile, this one shares that binding (same user) or is refused (`EBUSY`), and
    /// its own lease is let go.
    ///
    /// The view is private to this binding, so its contents go through its page cache: the open is
    /// answered once they are stored there (`store`), and the kernel serves the reads, the end of
    /// file and `fstat` itself. The pages go when the lease ends (then a held descriptor's next
    /// read reaches the daemon and fails with `EKEYEXPIRED`), and after the view's last close at
    /// its next open or within `KEEP_CLOSED` (see `Views::closed`).
    fn view_handle(
        &self,
        view: u64,
        who: &Requester,
        bytes: Arc<SharedBytes>,
        lease: Arc<Lease>,
    ) -> Result<Opened, FsError> {
        let b = Bound::new(who.uid, bytes, Some(lease.clone()));
        let (told, drop_first) = match self.views.bind(view, &b) {
            Ok(Bind::Fresh { told, drop_first, .. }) => (told, drop_first),
            Ok(Bind::Joined(have)) if !near_end(&have, self.leases.clock().now()) => {
                self.leases.closed(&lease);
                return self.joined(view, who, have);
            }
            Ok(Bind::Joined(_) | Bind::Own) => {
                // Another thread of the process whose first open bound the view (threads share
                // an unopened view; joining would let that thread's close end the lease this one
                // reads, and binding it again would race their reads), or the binding's lease is
                // at or near its end: this open keeps its own lease, read with direct I/O, leaving
                // the view's pages and size alone (size 0: no placeholder).
                let (bytes, lease, pid) = (b.bytes, b.lease, who.pid);
                let h = Handle { ino: view, pid, bytes, lease, written: 0, cached: false, paged: false };
                return Ok(Opened { keep_cache: true, ..Opened::direct(self.handles.insert(h), 0) });
            }
            Err(_) => {
                self.leases.closed(&lease);
                return Err(busy());
            }
        };
        let (size, pid) = (b.size, who.pid);
        let h = Handle { ino: view, pid, bytes: b.bytes, lease: b.lease, written: 0, cached: false, paged: false };
        let fh = self.handles.insert(h);
        // Storing raises the kernel's size to the contents' (and makes it ask for the attributes
        // again); a smaller size than it holds must be asked for. Pages the view kept from its
        // last binding are replaced by the store, or dropped first when it would not replace them
        // whole.
        let opened = Opened {
            keep_cache: true,
            store: size > 0,
            refresh_attr: size < told,
            drop_first,
            ..Opened::direct(fh, size)
        };
        Ok(opened.cached())
    }

    /// A handle served with direct I/O on a node every reader shares (a static secret of a
    /// remote source, a control file); `listed` is the size `stat` gives the entry.
    fn new_handle(
        &self,
        ino: u64,
        who: &Requester,
        listed: u64,
        bytes: Arc<SharedBytes>,
        lease: Option<Arc<Lease>>,
    ) -> Opened {
        let size = bytes.len().unwrap_or(0) as u64;
        let refresh_attr = !self.sizes.raise(ino, listed, size);
        let pid = who.pid;
        let fh = self.handles.insert(Handle { ino, pid, bytes, lease, written: 0, cached: false, paged: false });
        Opened { refresh_attr, ..Opened::direct(fh, size) }
    }

    /// A handle on a static secret of `page_cache` source. Its contents go through the page cache
    /// when they are exactly as long as listed (the kernel then knows the file's end without
    /// asking); pages cached by earlier opens are kept when they hold these same contents. Any other
    /// contents (the document changed since the listing) are served like a dynamic secret's.
    fn static_handle(
        &self,
        ino: u64,
        who: &Requester,
        listed: Option<u64>,
        bytes: crate::render::Bytes,
    ) -> Result<Opened, FsError> {
        if listed != Some(bytes.len() as u64) {
            return Ok(self.new_handle(ino, who, listed.unwrap_or(0), Arc::new(SharedBytes::new(bytes)?), None));
        }
        let keep_cache = self.served.unchanged(ino, &bytes);
        let bytes = Arc::new(SharedBytes::new(bytes)?);
        let size = bytes.len().unwrap_or(0) as u64;
        let pid = who.pid;
        let fh = self.handles.insert(Handle { ino, pid, bytes, lease: None, written: 0, cached: true, paged: false });
        Ok(Opened { keep_cache, ..Opened::direct(fh, size) }.cached())
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
        match self.handles.bytes_to_read(fh, paged) {
            None => f(Err(FsError::bad_handle())),
            Some(b) => b.with_slice(offset, size, |s| f(s.ok_or_else(FsError::expired))),
        }
    }

    /// Closes a handle. Returns whether what the kernel cached for its inode must go (see
    /// `release_with`).
    pub fn release(&self, fh: u64) -> bool {
        let mut dropped = false;
        self.release_with(fh, || dropped = true);
        dropped
    }

    /// Closes a handle, calling `drop_pages` when what the kernel cached for its inode must go: a
    /// view's pages at its last close (called before the view can be handed to another lookup, so
    /// the drop is queued ahead of that lookup's open), or pages that reads through the page cache
    /// filled with contents served with direct I/O (a static secret served through the page cache
    /// keeps its pages; a handle read only directly has none).
    pub fn release_with(&self, fh: u64, drop_pages: impl FnOnce()) {
        let Some(h) = self.handles.remove(fh) else { return drop_pages() };
        if is_view(h.ino) {
            self.views.closed(h.ino, |_| drop_pages());
        } else if h.paged && !h.cached {
            drop_pages();
        }
        if let Some(lease) = &h.lease {
            self.leases.closed(lease);
        }
    }

    /// The bytes a handle serves, while it is open (the adapter stores them in a view's pages).
    pub fn contents(&self, fh: u64) -> Option<Arc<SharedBytes>> {
        self.handles.bytes(fh)
    }

    /// Drops a node's pages through the adapter's hook (a binding that ended while being joined).
    fn drop_pages_of(&self, ino: u64) {
        if let Some(f) = self.drop_pages.get() {
            f(ino)
        }
    }
}

fn busy() -> FsError {
    FsError::new(
        libc::EBUSY,
        "this dynamic file is open by another user through the same node (a bind-mounted file?); bind its directory instead, or open it by its path",
    )
}

/// Whether a binding's lease has ended or has less than half its length left: a second open of
/// its view then gets a lease of its own rather than one that may end while it reads.
fn near_end(have: &Bound, now: chrono::DateTime<chrono::Utc>) -> bool {
    let Some(l) = &have.lease else { return false };
    !l.is_live() || l.remaining(now) * 2 < l.period
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::audit::Audit;
    use crate::defaults::Defaults;
    use crate::fs::tree::Owner;
    use crate::fs::{LeaseFs, ROOT, Settings, SourceSpec};
    use crate::issuer::registry::Issuers;
    use crate::lease::LeaseManager;
    use crate::metrics::Metrics;
    use crate::requester::Requester;
    use crate::source::local::LocalSource;

    /// The system refuses the mapping for a secret's bytes: the open fails with ENOMEM (no
    /// panic), and the filesystem goes on serving. The refusal is injected on this thread (the
    /// test runtime's only one) for mappings over 64 KiB.
    #[tokio::test]
    async fn an_open_without_memory_for_the_secret_fails_with_enomem_and_the_next_open_works() {
        let dir = tempfile::tempdir().unwrap();
        let big = "x".repeat(100_000);
        let docs = serde_json::json!([
            {"path": "big", "data": {"value": big}},
            {"path": "small", "data": {"value": "s"}},
        ]);
        std::fs::write(dir.path().join("a.json"), docs.to_string()).unwrap();
        std::fs::set_permissions(dir.path().join("a.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let audit = Arc::new(Audit::disabled());
        let defaults = Defaults::default();
        let leases = LeaseManager::new(
            Issuers::builtin(Duration::from_secs(5), true),
            None,
            defaults.clone(),
            audit.clone(),
            Arc::new(Metrics::default()),
            crate::clock::Clock::System,
        );
        let owner = Owner { uid: 0, gid: 0, file_mode: 0o400, dir_mode: 0o555 };
        let settings = Settings { defaults, root_owner: owner, control: true };
        let mut fs = Vec::new();
        for page_cache in [false, true] {
            let source = Arc::new(LocalSource::new(dir.path().to_path_buf(), true).with_sizes(page_cache));
            let spec = SourceSpec { source, prefix: vec![], owner, page_cache };
            fs.push(LeaseFs::new(settings.clone(), vec![spec], audit.clone(), leases.clone()));
        }
        let root = Requester::new(0, 0, std::process::id());
        let _refused = crate::memlock::limit_maps(64 * 1024);
        for fs in &fs {
            assert!(fs.refresh().await.is_empty());
            let ino = |name: &str| fs.lookup(ROOT, name).unwrap().attr.ino;
            let e = fs.open(ino("big"), libc::O_RDONLY, root.clone()).await.expect_err("no memory for 100 kB");
            assert_eq!(e.errno, libc::ENOMEM, "{e}");
            assert!(e.message.starts_with("/big"), "names the file: {e}");
            let small = fs.open(ino("small"), libc::O_RDONLY, root.clone()).await.expect("a small secret still opens");
            fs.read(small.fh, 0, 10, false, |r| assert_eq!(r.unwrap(), b"s"));
            fs.release(small.fh);
        }
    }
}
