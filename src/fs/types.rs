//! The values the filesystem logic answers with: attributes and how long the kernel may keep
//! them, directory entries, opened handles and how the kernel must treat them, settings.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::error::FsError;
use super::tree::Owner;
use crate::defaults::Defaults;
use crate::source::Source;

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

/// An answer to `lookup` or `getattr`: the attributes and how long the kernel may keep them.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub attr: Attr,
    /// How long the kernel may keep the attributes.
    pub ttl: Duration,
    /// How long it may keep the name → node mapping (zero for a dynamic file: each path walk
    /// asks again, and gets a node of its own).
    pub entry_ttl: Duration,
}

/// A directory entry handed to the adapter; `next` is the offset of the entry after it.
pub struct DirEntry<'a> {
    pub ino: u64,
    pub name: &'a str,
    pub attr: Attr,
    pub next: u64,
    /// How long the kernel may keep the name and attributes (zero for a dynamic file).
    pub ttl: Duration,
}

/// A source as mounted: where, with which default owner.
pub struct SourceSpec {
    pub source: Arc<dyn Source>,
    pub prefix: Vec<String>,
    pub owner: Owner,
    /// Static secrets whose listed size is exact may be served through the page cache.
    pub page_cache: bool,
}

/// Settings the filesystem needs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub defaults: Defaults,
    pub root_owner: Owner,
    /// Whether `/.leasefs/` is shown.
    pub control: bool,
}

/// What `open` returns: the handle and how the kernel must treat it.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    /// Contents never enter the page cache; every read reaches the handle's bytes.
    pub direct_io: bool,
    /// Pages the kernel cached from an earlier open are still these contents: keep them.
    pub keep_cache: bool,
    /// The inode's cached attributes must be dropped before answering, so that `fstat` asks
    /// again and sees the handle's true size (not needed when raising the size lands on it exactly).
    pub refresh_attr: bool,
    /// The handle's contents must be stored in the inode's page cache before the open is answered
    /// (a view: private to this handle's binding); the kernel then serves its reads.
    pub store: bool,
    /// The handle's size: the kernel's idea of the file's size must reach at least this before
    /// the open is answered, or `sendfile`/`splice` (which the kernel bounds by it) read nothing.
    pub size: u64,
    /// The inode's pages hold other bytes (a view's kept pages that this open's contents would
    /// not replace whole): they must be dropped before anything is stored or answered.
    pub drop_first: bool,
}

impl Opened {
    /// A handle served with direct I/O; nothing else asked of the kernel.
    pub fn direct(fh: u64, size: u64) -> Opened {
        Opened { fh, direct_io: true, keep_cache: false, refresh_attr: false, store: false, size, drop_first: false }
    }

    /// Served through the page cache instead.
    pub fn cached(self) -> Opened {
        Opened { direct_io: false, ..self }
    }
}

/// Where the adapter stores the one placeholder byte that raises the kernel's size of a file to
/// `size` (> 0): never the first byte of its page, so the page it lands in is never marked up to
/// date and nobody reads the placeholder. Where `size - 1` starts a page, the byte goes at `size`
/// (the size is then one too large until the first, short, read).
pub fn placeholder_at(size: u64) -> u64 {
    const PAGE: u64 = 4096;
    if (size - 1) % PAGE == 0 { size } else { size - 1 }
}

/// An open under way. `inline` says it may finish without waiting (a cached payload, an
/// in-process issuer): the adapter polls it once in place before handing it to the runtime.
pub struct Opening {
    pub inline: bool,
    pub future: Pin<Box<dyn Future<Output = Result<Opened, FsError>> + Send>>,
}
