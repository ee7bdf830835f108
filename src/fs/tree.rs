//! The inode tree: an immutable snapshot built from the sources' listings, swapped whole on reload; inode numbers stay stable per path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::FileError;
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
}

#[derive(Debug)]
pub enum NodeKind {
    /// Children sorted by name.
    Dir(Vec<(Box<str>, u64)>),
    Secret {
        source: usize,
        meta: Arc<SecretMeta>,
    },
    Control(Control),
}

#[derive(Debug)]
pub struct Node {
    pub parent: u64,
    pub name: Box<str>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u16,
    pub mtime: SystemTime,
    pub kind: NodeKind,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir(_))
    }
    pub fn child(&self, name: &str) -> Option<u64> {
        match &self.kind {
            NodeKind::Dir(c) => c.binary_search_by(|(n, _)| (**n).cmp(name)).ok().map(|i| c[i].1),
            _ => None,
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

/// Path → inode number, kept across reloads so that a path keeps its inode.
#[derive(Default)]
pub struct InoMap {
    by_path: HashMap<String, u64>,
    next: u64,
}

impl InoMap {
    fn get(&mut self, path: &str) -> u64 {
        if path.is_empty() {
            return ROOT;
        }
        if self.next <= ROOT {
            self.next = ROOT + 1;
        }
        if let Some(i) = self.by_path.get(path) {
            return *i;
        }
        let i = self.next;
        self.next += 1;
        self.by_path.insert(path.to_string(), i);
        i
    }
}

/// One source's contribution to a build.
pub struct SourceListing<'a> {
    pub prefix: Vec<String>,
    pub owner: Owner,
    pub secrets: &'a [Arc<SecretMeta>],
}

#[derive(Default, Debug)]
pub struct Tree {
    nodes: HashMap<u64, Node>,
    /// Base secrets by (source index, source-relative path).
    bases: HashMap<(usize, String), Arc<SecretMeta>>,
    pub counts: Counts,
}

#[derive(Default, Debug, Clone, Copy, serde::Serialize)]
pub struct Counts {
    pub static_secrets: usize,
    pub dynamic_secrets: usize,
    pub base_secrets: usize,
    pub directories: usize,
}

struct Building {
    nodes: HashMap<u64, Node>,
    children: HashMap<u64, Vec<(Box<str>, u64)>>,
}

impl Tree {
    pub fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn base(&self, source: usize, path: &str) -> Option<&Arc<SecretMeta>> {
        self.bases.get(&(source, path.to_string()))
    }

    pub fn path_of(&self, mut ino: u64) -> String {
        let mut parts = Vec::new();
        while ino != ROOT {
            let Some(n) = self.nodes.get(&ino) else { break };
            parts.push(&*n.name);
            ino = n.parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Builds a tree; conflicting or duplicate paths are skipped and reported.
    pub fn build(
        inos: &mut InoMap,
        sources: &[SourceListing<'_>],
        root_owner: Owner,
        control: bool,
    ) -> (Tree, Vec<FileError>) {
        let now = SystemTime::now();
        let mut b = Building { nodes: HashMap::new(), children: HashMap::new() };
        let mut tree = Tree::default();
        let mut problems = Vec::new();
        b.nodes.insert(ROOT, dir_node(ROOT, "", root_owner, now));
        b.children.insert(ROOT, Vec::new());

        if control {
            let ino = inos.get(".leasefs");
            b.nodes.insert(
                ino,
                Node {
                    parent: ROOT,
                    name: ".leasefs".into(),
                    uid: 0,
                    gid: 0,
                    mode: 0o500,
                    mtime: now,
                    kind: NodeKind::Dir(Vec::new()),
                },
            );
            b.children.get_mut(&ROOT).unwrap().push((".leasefs".into(), ino));
            let mut kids = Vec::new();
            for (c, name) in Control::ALL {
                let fino = inos.get(&format!(".leasefs/{name}"));
                let mode = if c == Control::Revoke { 0o200 } else { 0o400 };
                b.nodes.insert(
                    fino,
                    Node {
                        parent: ino,
                        name: name.into(),
                        uid: 0,
                        gid: 0,
                        mode,
                        mtime: now,
                        kind: NodeKind::Control(c),
                    },
                );
                kids.push((Box::<str>::from(name), fino));
            }
            b.children.insert(ino, kids);
        }

        for (si, src) in sources.iter().enumerate() {
            // Create the prefix directories.
            let mut parent = ROOT;
            let mut path = String::new();
            let mut ok = true;
            for seg in &src.prefix {
                match ensure_dir(&mut b, inos, parent, &mut path, seg, src.owner, now) {
                    Some(i) => parent = i,
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                problems.push(FileError::whole(std::path::Path::new(&path), "source prefix collides with a file"));
                continue;
            }
            let prefix_ino = parent;
            let prefix_path = path.clone();
            for meta in src.secrets {
                if let SecretKind::Base { .. } = meta.kind {
                    tree.counts.base_secrets += 1;
                    tree.bases.insert((si, meta.path()), meta.clone());
                    if !meta.is_listed() {
                        continue;
                    }
                }
                let mut parent = prefix_ino;
                let mut path = prefix_path.clone();
                let (last, dirs) = meta.segments.split_last().expect("validated non-empty");
                let mut ok = true;
                for seg in dirs {
                    match ensure_dir(&mut b, inos, parent, &mut path, seg, src.owner, now) {
                        Some(i) => parent = i,
                        None => {
                            ok = false;
                            break;
                        }
                    }
                }
                let where_ = locate(meta);
                if !ok {
                    problems
                        .push(where_.with(format!("path {:?} runs through a secret of the same name", meta.path())));
                    continue;
                }
                if !path.is_empty() {
                    path.push('/');
                }
                path.push_str(last);
                let ino = inos.get(&path);
                if b.nodes.contains_key(&ino) {
                    problems.push(
                        where_.with(format!("path {:?} is already defined (duplicate or a directory)", meta.path())),
                    );
                    continue;
                }
                match meta.kind {
                    SecretKind::Dynamic { .. } => tree.counts.dynamic_secrets += 1,
                    _ => tree.counts.static_secrets += 1,
                }
                b.nodes.insert(
                    ino,
                    Node {
                        parent,
                        name: last.as_str().into(),
                        uid: meta.uid.unwrap_or(src.owner.uid),
                        gid: meta.gid.unwrap_or(src.owner.gid),
                        mode: meta.mode.unwrap_or(src.owner.file_mode),
                        mtime: meta.mtime,
                        kind: NodeKind::Secret { source: si, meta: meta.clone() },
                    },
                );
                b.children.entry(parent).or_default().push((last.as_str().into(), ino));
            }
        }
        for (ino, mut kids) in b.children {
            kids.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(NodeKind::Dir(c)) = b.nodes.get_mut(&ino).map(|n| &mut n.kind) {
                *c = kids;
            }
        }
        tree.counts.directories = b.nodes.values().filter(|n| n.is_dir()).count();
        tree.nodes = b.nodes;
        (tree, problems)
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

fn dir_node(parent: u64, name: &str, owner: Owner, now: SystemTime) -> Node {
    Node {
        parent,
        name: name.into(),
        uid: owner.uid,
        gid: owner.gid,
        mode: owner.dir_mode,
        mtime: now,
        kind: NodeKind::Dir(Vec::new()),
    }
}

fn ensure_dir(
    b: &mut Building,
    inos: &mut InoMap,
    parent: u64,
    path: &mut String,
    seg: &str,
    owner: Owner,
    now: SystemTime,
) -> Option<u64> {
    if !path.is_empty() {
        path.push('/');
    }
    path.push_str(seg);
    let ino = inos.get(path);
    match b.nodes.get(&ino) {
        Some(n) if n.is_dir() => Some(ino),
        Some(_) => None,
        None => {
            b.nodes.insert(ino, dir_node(parent, seg, owner, now));
            b.children.insert(ino, Vec::new());
            b.children.entry(parent).or_default().push((seg.into(), ino));
            Some(ino)
        }
    }
}
