//! The inode tree: an immutable snapshot built from the sources' listings, swapped whole on reload; inode numbers stay stable per path.
//!
//! Compact by design (one entry costs a node in a vector indexed by inode, its inode in the parent's
//! child list, and the shared metadata): a secret's name is the last segment of its metadata path,
//! only directories own a name, and child lists hold inode numbers sorted by name.

use foldhash::{HashMap, HashMapExt};
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::SystemTime;

use crate::diag::FileError;
use crate::secret::{SecretKind, SecretMeta};

pub const ROOT: u64 = 1;

/// Files of the control directory `/.leasefs/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Status,
    Leases,
    Metrics,
    Revoke,
}

impl Control {
    pub const ALL: [(Control, &'static str); 4] = [
        (Control::Status, "status.json"),
        (Control::Leases, "leases.json"),
        (Control::Metrics, "metrics"),
        (Control::Revoke, "revoke"),
    ];
    pub const DIR: &'static str = ".leasefs";

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(c, _)| *c == self).map(|(_, n)| *n).unwrap_or("")
    }
}

#[derive(Debug)]
pub struct Dir {
    pub name: Box<str>,
    /// Changes only when the directory's entries change.
    pub mtime: SystemTime,
    /// Children's inode numbers, sorted by name.
    pub children: Box<[u64]>,
}

#[derive(Debug)]
pub enum NodeKind {
    Dir(Box<Dir>),
    Secret {
        source: usize,
        meta: Arc<SecretMeta>,
    },
    /// File `file` of a bundle (a dynamic secret with `attributes.files`); its parent directory
    /// is the bundle.
    Bundle {
        source: usize,
        meta: Arc<SecretMeta>,
        file: u16,
    },
    Control(Control),
}

#[derive(Debug)]
pub struct Node {
    pub parent: u64,
    pub uid: u32,
    pub gid: u32,
    pub mode: u16,
    pub kind: NodeKind,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir(_))
    }
    /// A dynamic secret or a bundle's file: each open issues (or reuses) a lease.
    pub fn is_dynamic(&self) -> bool {
        match &self.kind {
            NodeKind::Secret { meta, .. } | NodeKind::Bundle { meta, .. } => {
                matches!(meta.kind, SecretKind::Dynamic { .. })
            }
            _ => false,
        }
    }
    pub fn name(&self) -> &str {
        match &self.kind {
            NodeKind::Dir(d) => &d.name,
            NodeKind::Secret { meta, .. } => meta.name(),
            NodeKind::Bundle { meta, file, .. } => {
                meta.policy().files.as_ref().and_then(|f| f.get(*file as usize)).map_or("", |(n, _)| n)
            }
            NodeKind::Control(c) => c.name(),
        }
    }
    pub fn children(&self) -> &[u64] {
        match &self.kind {
            NodeKind::Dir(d) => &d.children,
            _ => &[],
        }
    }
}

/// Per-source defaults for entries a document does not set.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
}

/// One source's contribution to a build.
pub struct SourceListing<'a> {
    pub prefix: Vec<String>,
    pub owner: Owner,
    pub secrets: &'a [Arc<SecretMeta>],
}

#[derive(Default, Debug)]
pub struct Tree {
    /// Indexed by inode number (0 is never used). Paths that left the tree leave a hole.
    nodes: Vec<Option<Node>>,
    /// Base secrets by (source index, source-relative path).
    /// Base secrets by source index, then source-relative path (looked up without allocating).
    bases: Vec<HashMap<Box<str>, Arc<SecretMeta>>>,
    /// When this snapshot was built (the control files' mtime).
    pub built: Option<SystemTime>,
    pub counts: Counts,
}

#[derive(Default, Debug, Clone, Copy, serde::Serialize)]
pub struct Counts {
    pub static_secrets: usize,
    pub dynamic_secrets: usize,
    pub base_secrets: usize,
    pub directories: usize,
}

/// What changed between two snapshots, for the kernel's caches.
#[derive(Default, Debug)]
pub struct Changes {
    /// Directories whose entries changed (their cached listing must go).
    pub dirs: Vec<u64>,
    /// Names that are gone, by parent directory.
    pub removed: Vec<(u64, String)>,
    /// Names that are new, by parent directory (the kernel may hold them as missing).
    pub added: Vec<(u64, String)>,
    /// Entries whose attributes changed.
    pub attrs: Vec<u64>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.removed.is_empty() && self.added.is_empty() && self.attrs.is_empty()
    }
}

impl Tree {
    pub fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino).ok()?)?.as_ref()
    }

    /// The inodes of a directory's entries.
    pub fn children_of(&self, dir: u64) -> Vec<u64> {
        self.node(dir).map(|d| d.children().to_vec()).unwrap_or_default()
    }

    /// The child of `parent` called `name`.
    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        let kids = self.node(parent)?.children();
        kids.binary_search_by(|c| self.node(*c).map_or("", Node::name).cmp(name)).ok().map(|i| kids[i])
    }

    pub fn base(&self, source: usize, path: &str) -> Option<&Arc<SecretMeta>> {
        self.bases.get(source)?.get(path)
    }

    /// The largest inode number in use (new paths get numbers above it).
    fn max_ino(&self) -> u64 {
        self.nodes.len().saturating_sub(1) as u64
    }

    pub fn path_of(&self, mut ino: u64) -> String {
        let mut parts = Vec::new();
        while ino != ROOT {
            let Some(n) = self.node(ino) else { break };
            parts.push(n.name());
            ino = n.parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Builds a snapshot; a path keeps the inode number it had in `prev`. Conflicting or duplicate
    /// paths are skipped and reported.
    pub fn build<'n>(
        prev: &Tree,
        sources: &'n [SourceListing<'n>],
        root_owner: Owner,
        control: bool,
    ) -> (Tree, Vec<FileError>) {
        let now = SystemTime::now();
        let entries = sources.iter().map(|s| s.secrets.len()).sum::<usize>();
        let mut b = Building {
            prev,
            next: prev.max_ino().max(ROOT),
            nodes: Vec::with_capacity(prev.nodes.len().max(entries + 64)),
            index: HashMap::with_capacity(entries + 16),
            dirs: HashMap::new(),
            kids: Vec::new(),
            last_parent: (0, 0),
            last_dir: None,
            tree: Tree { built: Some(now), ..Tree::default() },
            problems: Vec::new(),
        };
        b.put(
            ROOT,
            Node { parent: ROOT, uid: root_owner.uid, gid: root_owner.gid, mode: root_owner.dir_mode, kind: dir("") },
        );
        b.open_dir(ROOT);
        if control {
            b.add_control(root_owner);
        }
        for (si, src) in sources.iter().enumerate() {
            b.add_source(si, src);
        }
        b.finish(now)
    }

    /// What the kernel may have cached from `prev` that this snapshot changes.
    pub fn changes_since(&self, prev: &Tree) -> Changes {
        let mut ch = Changes::default();
        for (ino, old) in prev.nodes.iter().enumerate() {
            let (ino, Some(old)) = (ino as u64, old) else { continue };
            let new = self.node(ino);
            if let NodeKind::Dir(d) = &old.kind {
                let same = matches!(new.map(|n| &n.kind), Some(NodeKind::Dir(nd)) if nd.children == d.children);
                if !same {
                    ch.dirs.push(ino);
                    for c in d.children.iter() {
                        if self.node(*c).is_none_or(|n| n.parent != ino) {
                            ch.removed.push((ino, prev.node(*c).map_or("", Node::name).to_string()));
                        }
                    }
                    if let Some(nd) = new.filter(|n| n.is_dir()) {
                        let old: std::collections::HashSet<u64> = d.children.iter().copied().collect();
                        for c in nd.children().iter().filter(|c| !old.contains(c)) {
                            ch.added.push((ino, self.node(*c).map_or("", Node::name).to_string()));
                        }
                    }
                }
            }
            if let Some(new) = new {
                let (a, b) = (attr_key(old), attr_key(new));
                if a != b {
                    ch.attrs.push(ino);
                }
            }
        }
        ch
    }
}

fn attr_key(n: &Node) -> (u32, u32, u16, Option<SystemTime>, Option<u32>, bool) {
    match &n.kind {
        NodeKind::Secret { meta, .. } | NodeKind::Bundle { meta, .. } => {
            (n.uid, n.gid, n.mode, Some(meta.mtime), meta.size, false)
        }
        NodeKind::Dir(d) => (n.uid, n.gid, n.mode, Some(d.mtime), None, true),
        NodeKind::Control(_) => (n.uid, n.gid, n.mode, None, None, false),
    }
}

fn dir(name: &str) -> NodeKind {
    NodeKind::Dir(Box::new(Dir { name: name.into(), mtime: SystemTime::UNIX_EPOCH, children: Box::new([]) }))
}

fn name_in(nodes: &[Option<Node>], ino: u64) -> &str {
    nodes.get(ino as usize).and_then(Option::as_ref).map_or("", Node::name)
}

/// A snapshot under construction.
struct Building<'p, 'n> {
    prev: &'p Tree,
    /// The last inode number handed out.
    next: u64,
    nodes: Vec<Option<Node>>,
    /// (parent, name) → inode, for every entry placed so far.
    index: HashMap<(u64, &'n str), u64>,
    /// Each directory's slot in `kids`.
    dirs: HashMap<u64, usize>,
    /// Directories' children, unsorted, by slot.
    kids: Vec<Vec<u64>>,
    /// The directory the last child went to, and its slot (children of one directory mostly
    /// arrive together: one hash lookup saved per entry).
    last_parent: (u64, usize),
    /// The directory part of the last secret's path under a prefix, and the directory it named
    /// (documents list a directory's secrets together: its path is walked once, not per secret).
    last_dir: Option<(u64, &'n str, u64)>,
    /// The snapshot's counts and base secrets, filled in as secrets are placed.
    tree: Tree,
    problems: Vec<FileError>,
}

impl<'n> Building<'_, 'n> {
    fn put(&mut self, ino: u64, node: Node) {
        let i = ino as usize;
        if self.nodes.len() <= i {
            self.nodes.resize_with(i + 1, || None);
        }
        self.nodes[i] = Some(node);
    }

    /// Places an entry; `None` if the name is taken. A path keeps the inode number it had in
    /// `prev`; a new one gets the next free number.
    fn add(&mut self, parent: u64, name: &'n str, node: Node) -> Option<u64> {
        let ino = match self.index.entry((parent, name)) {
            Entry::Occupied(_) => return None,
            Entry::Vacant(v) => *v.insert(self.prev.child(parent, name).unwrap_or_else(|| {
                self.next += 1;
                self.next
            })),
        };
        self.put(ino, node);
        if self.last_parent.0 != parent {
            let Some(&slot) = self.dirs.get(&parent) else { return Some(ino) };
            self.last_parent = (parent, slot);
        }
        self.kids[self.last_parent.1].push(ino);
        Some(ino)
    }

    /// Makes `ino` a directory with no children yet.
    fn open_dir(&mut self, ino: u64) {
        self.dirs.insert(ino, self.kids.len());
        self.kids.push(Vec::new());
    }

    /// The directory `name` under `parent`, created if needed; `None` if a file holds the name.
    fn ensure_dir(&mut self, parent: u64, name: &'n str, owner: Owner) -> Option<u64> {
        if let Some(&ino) = self.index.get(&(parent, name)) {
            return self.dirs.contains_key(&ino).then_some(ino);
        }
        let node = Node { parent, uid: owner.uid, gid: owner.gid, mode: owner.dir_mode, kind: dir(name) };
        let ino = self.add(parent, name, node)?;
        self.open_dir(ino);
        Some(ino)
    }

    /// The control directory `/.leasefs/`, owned by the daemon's own user (root, or whoever runs
    /// it with fusermount3).
    fn add_control(&mut self, root_owner: Owner) {
        let (uid, gid) = (root_owner.uid, root_owner.gid);
        let owner = Owner { uid, gid, file_mode: 0o400, dir_mode: 0o500 };
        // The root is still empty, so the name is free.
        let Some(dino) = self.ensure_dir(ROOT, Control::DIR, owner) else { return };
        for (c, name) in Control::ALL {
            let mode = if c == Control::Revoke { 0o200 } else { 0o400 };
            self.add(dino, name, Node { parent: dino, uid, gid, mode, kind: NodeKind::Control(c) });
        }
    }

    /// One source's secrets under its prefix.
    fn add_source(&mut self, si: usize, src: &'n SourceListing<'n>) {
        let mut parent = Some(ROOT);
        for seg in &src.prefix {
            parent = parent.and_then(|p| self.ensure_dir(p, seg, src.owner));
        }
        let Some(prefix_ino) = parent else {
            let path = src.prefix.join("/");
            self.problems.push(FileError::whole(std::path::Path::new(&path), "source prefix collides with a file"));
            return;
        };
        for meta in src.secrets {
            if let SecretKind::Base { .. } = meta.kind {
                self.tree.counts.base_secrets += 1;
                if self.tree.bases.len() <= si {
                    self.tree.bases.resize_with(si + 1, HashMap::new);
                }
                self.tree.bases[si].insert(meta.path().into(), meta.clone());
                if !meta.is_listed() {
                    continue;
                }
            }
            if let Err(message) = self.add_secret(si, src.owner, prefix_ino, meta) {
                self.problems.push(locate(meta).with(message));
            }
        }
    }

    /// Places one listed secret (a file, or a bundle's directory of files) with the directories
    /// its path runs through.
    fn add_secret(
        &mut self,
        si: usize,
        owner: Owner,
        prefix_ino: u64,
        meta: &'n Arc<SecretMeta>,
    ) -> Result<(), String> {
        let (dir_part, last) = meta.path().rsplit_once('/').unwrap_or(("", meta.path()));
        let parent = match self.last_dir {
            Some((p, d, ino)) if p == prefix_ino && d == dir_part => Some(ino),
            _ => {
                let mut parent = Some(prefix_ino);
                for seg in dir_part.split('/').filter(|_| !dir_part.is_empty()) {
                    parent = parent.and_then(|p| self.ensure_dir(p, seg, owner));
                }
                self.last_dir = parent.map(|ino| (prefix_ino, dir_part, ino));
                parent
            }
        };
        let Some(parent) = parent else {
            return Err(format!("path {:?} runs through a secret of the same name", meta.path()));
        };
        let taken = || format!("path {:?} is already defined (duplicate or a directory)", meta.path());
        let (uid, gid) = (meta.uid().unwrap_or(owner.uid), meta.gid().unwrap_or(owner.gid));
        let mode = meta.mode().unwrap_or(owner.file_mode);
        if let Some(files) = meta.policy().files.as_deref().filter(|_| meta.is_listed()) {
            // A bundle: a directory (searchable where its files are readable) of its files.
            let dir_mode = mode | ((mode & 0o444) >> 2);
            let dnode = Node { parent, uid, gid, mode: dir_mode, kind: dir(last) };
            let dino = self.add(parent, last, dnode).ok_or_else(taken)?;
            self.open_dir(dino);
            for (i, (name, _)) in files.iter().enumerate() {
                let kind = NodeKind::Bundle { source: si, meta: meta.clone(), file: i as u16 };
                self.add(dino, name, Node { parent: dino, uid, gid, mode, kind });
            }
            self.tree.counts.dynamic_secrets += 1;
            return Ok(());
        }
        let node = Node { parent, uid, gid, mode, kind: NodeKind::Secret { source: si, meta: meta.clone() } };
        self.add(parent, last, node).ok_or_else(taken)?;
        match meta.kind {
            SecretKind::Dynamic { .. } => self.tree.counts.dynamic_secrets += 1,
            _ => self.tree.counts.static_secrets += 1,
        }
        Ok(())
    }

    /// Child lists, sorted by name; a directory keeps its mtime while its entries stay the same.
    fn finish(mut self, now: SystemTime) -> (Tree, Vec<FileError>) {
        drop(self.index);
        let dirs = std::mem::take(&mut self.dirs);
        let mut kids = std::mem::take(&mut self.kids);
        self.tree.counts.directories = dirs.len();
        let mut named: Vec<(&str, u64)> = Vec::new();
        let mut sorted: Vec<(u64, Box<[u64]>)> = Vec::with_capacity(dirs.len());
        for (ino, slot) in dirs {
            // Each name looked up once, not at every comparison.
            named.clear();
            named.extend(std::mem::take(&mut kids[slot]).into_iter().map(|k| (name_in(&self.nodes, k), k)));
            named.sort_unstable_by(|x, y| x.0.cmp(y.0));
            sorted.push((ino, named.iter().map(|&(_, k)| k).collect()));
        }
        drop(named);
        for (ino, kids) in sorted {
            let kept = self.prev.node(ino).and_then(|p| match &p.kind {
                NodeKind::Dir(d) if d.children == kids => Some(d.mtime),
                _ => None,
            });
            if let Some(Some(Node { kind: NodeKind::Dir(d), .. })) = self.nodes.get_mut(ino as usize) {
                d.children = kids;
                d.mtime = kept.unwrap_or(now);
            }
        }
        self.tree.nodes = self.nodes;
        self.tree.nodes.shrink_to_fit();
        (self.tree, self.problems)
    }
}

struct Where(Option<(std::path::PathBuf, usize)>);
impl Where {
    fn with(&self, message: String) -> FileError {
        match &self.0 {
            Some((f, i)) => FileError::whole(f, format!("document #{}: {message}", i + 1)),
            None => FileError::whole(std::path::Path::new("(source)"), message),
        }
    }
}
fn locate(meta: &SecretMeta) -> Where {
    match &meta.locator {
        crate::secret::Locator::File { file, index, .. } => Where(Some((file.path.clone(), *index as usize))),
        _ => Where(None),
    }
}

/// Hands the heap's free pages back to the system after a rebuild (parsing and the old snapshot
/// leave large free ranges behind).
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Locator;

    fn meta(path: &str) -> Arc<SecretMeta> {
        let segs: Vec<String> = path.split('/').map(String::from).collect();
        let m = SecretMeta::new(None, &segs, SecretKind::Static, Default::default(), None, UNIX, Locator::None);
        Arc::new(m)
    }
    const UNIX: SystemTime = SystemTime::UNIX_EPOCH;
    const OWNER: Owner = Owner { uid: 0, gid: 0, file_mode: 0o400, dir_mode: 0o500 };

    fn build(prev: &Tree, paths: &[&str]) -> (Tree, Vec<String>) {
        let secrets: Vec<_> = paths.iter().map(|p| meta(p)).collect();
        let src = [SourceListing { prefix: vec!["p".into()], owner: OWNER, secrets: &secrets }];
        let (t, problems) = Tree::build(prev, &src, OWNER, false);
        (t, problems.iter().map(|p| p.to_string()).collect())
    }

    fn names(t: &Tree, dir: u64) -> Vec<&str> {
        t.children_of(dir).iter().map(|&i| t.node(i).unwrap().name()).collect()
    }

    fn at(t: &Tree, path: &str) -> Option<u64> {
        path.split('/').try_fold(ROOT, |d, n| t.child(d, n))
    }

    #[test]
    fn directories_listed_apart_in_the_documents_gather_their_children_sorted_by_name() {
        let (t, problems) = build(&Tree::default(), &["a/s10", "b/x", "a/s2", "a/s1", "c/d/e", "b/w", "c/d/a", "top"]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(names(&t, at(&t, "p").unwrap()), ["a", "b", "c", "top"]);
        assert_eq!(names(&t, at(&t, "p/a").unwrap()), ["s1", "s10", "s2"]);
        assert_eq!(names(&t, at(&t, "p/b").unwrap()), ["w", "x"]);
        assert_eq!(names(&t, at(&t, "p/c/d").unwrap()), ["a", "e"]);
        assert_eq!((t.counts.static_secrets, t.counts.directories), (8, 6), "root, p, a, b, c, c/d");
    }

    #[test]
    fn a_duplicate_or_a_path_through_a_file_is_skipped_and_named_while_the_rest_is_placed() {
        let (t, problems) = build(&Tree::default(), &["a/f", "a/f", "a/f/g", "a/f/h", "a/ok"]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("\"a/f\" is already defined"), "{problems:?}");
        assert!(problems[1].contains("\"a/f/g\" runs through a secret"), "{problems:?}");
        assert!(problems[2].contains("\"a/f/h\" runs through a secret"), "{problems:?}");
        assert_eq!(names(&t, at(&t, "p/a").unwrap()), ["f", "ok"]);
        assert!(!t.node(at(&t, "p/a/f").unwrap()).unwrap().is_dir());
    }

    #[test]
    fn a_rebuild_keeps_each_paths_inode_and_an_unchanged_directorys_mtime() {
        let (t1, _) = build(&Tree::default(), &["a/x", "a/y", "b/z"]);
        let (t2, _) = build(&t1, &["b/z", "new/n", "a/y", "a/x"]);
        for p in ["p/a", "p/a/x", "p/a/y", "p/b/z"] {
            assert_eq!(at(&t1, p), at(&t2, p), "{p}");
        }
        assert!(at(&t2, "p/new/n").unwrap() > t1.max_ino());
        let mtime = |t: &Tree, p: &str| match &t.node(at(t, p).unwrap()).unwrap().kind {
            NodeKind::Dir(d) => d.mtime,
            _ => unreachable!(),
        };
        assert_eq!(mtime(&t1, "p/a"), mtime(&t2, "p/a"), "same children, same mtime");
    }
}
