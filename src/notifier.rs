//! The threads that send the kernel store and invalidation notifications. Never a request thread:
//! the kernel may make a notification wait for a page that a read-ahead has locked, and only a
//! request thread can answer that read. An open that needs its size raised or its pages filled
//! first is answered from here, after the store, so no reader sees the file before its contents.
//!
//! There is one notifier per request loop; each inode's notifications go to one of them (by its
//! number), so they reach the kernel in the order they were sent — a view's page drop at its last
//! close before the next binding's store — while opens of different views are answered in parallel.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fuser::{FileHandle, FopenFlags, INodeNo, Notifier, ReplyOpen};

use crate::memlock::{LockedBuf, SharedBytes};

/// Set once a notification found the thread gone (reported once).
static GONE: AtomicBool = AtomicBool::new(false);

/// What a notifier does before it answers an open.
pub enum Fill {
    /// Nothing to store.
    None,
    /// One placeholder byte at this offset: the kernel's size becomes at least offset + 1.
    Placeholder(u64),
    /// The handle's whole contents, from offset 0 (the kernel's size becomes at least theirs).
    Contents(Arc<SharedBytes>),
}

/// What the notifier thread is asked to do.
pub enum Note {
    /// Drop an inode's cached attributes (`offset` -1) or also its pages (`offset` 0); `done` is
    /// told once it is dropped.
    Inval { ino: u64, offset: i64, done: Option<SyncSender<()>> },
    /// Drop a name from a directory's cached entries.
    Entry { parent: u64, name: OsString },
    /// Drop the pages if `drop` says so, store `fill`, drop the attributes if that fails or
    /// `refresh` says so, then answer the open with `flags` (with `fallback` if the contents could
    /// not be stored: their reads then go to the daemon).
    Open {
        ino: u64,
        drop: bool,
        fill: Fill,
        refresh: bool,
        reply: ReplyOpen,
        fh: u64,
        flags: FopenFlags,
        fallback: FopenFlags,
    },
}

impl Note {
    fn ino(&self) -> u64 {
        match self {
            Note::Inval { ino, .. } | Note::Open { ino, .. } => *ino,
            Note::Entry { parent, .. } => *parent,
        }
    }
}

/// A handle on the notifier threads; cheap to clone.
#[derive(Clone)]
pub struct Notes {
    tx: Arc<[Sender<Note>]>,
}

impl Notes {
    /// Starts one notifier per request loop (one per two cores, at least two, at most four, as
    /// the daemon runs them). Notifications wait until the session's notifier is set; opens queued
    /// before that are answered without one.
    pub fn start(notifier: Arc<OnceLock<Notifier>>) -> std::io::Result<Notes> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Notes::start_n(notifier, (cores / 2).clamp(2, 4))
    }

    /// Starts `n` notifier threads.
    pub fn start_n(notifier: Arc<OnceLock<Notifier>>, n: usize) -> std::io::Result<Notes> {
        let mut tx = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let (t, rx) = channel();
            let notifier = notifier.clone();
            std::thread::Builder::new().name(format!("leasefs-notify{i}")).spawn(move || serve(&notifier, rx))?;
            tx.push(t);
        }
        Ok(Notes { tx: tx.into() })
    }

    /// Queues a notification on its inode's notifier. `Err` gives it back if the thread is gone
    /// (the caller then answers as if it had failed).
    pub fn send(&self, n: Note) -> Result<(), Note> {
        self.tx[(n.ino() % self.tx.len() as u64) as usize].send(n).map_err(|e| e.0)
    }

    pub fn inval(&self, ino: u64, offset: i64) {
        if self.send(Note::Inval { ino, offset, done: None }).is_err() {
            gone();
        }
    }

    /// `inval`, returning once the kernel has dropped them (at most `limit` later).
    pub fn inval_wait(&self, ino: u64, offset: i64, limit: Duration) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if self.send(Note::Inval { ino, offset, done: Some(done) }).is_err() {
            return gone();
        }
        let _ = wait.recv_timeout(limit);
    }
}

fn gone() {
    if !GONE.swap(true, Ordering::Relaxed) {
        tracing::error!("a notifier thread has ended: the kernel's caches are no longer invalidated");
    }
}

fn serve(notifier: &OnceLock<Notifier>, rx: Receiver<Note>) {
    while let Ok(note) = rx.recv() {
        run(notifier.get(), note);
    }
}

fn run(n: Option<&Notifier>, note: Note) {
    match note {
        Note::Inval { ino, offset, done } => {
            if let Some(n) = n {
                let _ = n.inval_inode(INodeNo(ino), offset, 0);
            }
            if let Some(done) = done {
                let _ = done.try_send(());
            }
        }
        Note::Entry { parent, name } => {
            if let Some(n) = n {
                let _ = n.inval_entry(INodeNo(parent), &name);
            }
        }
        Note::Open { ino, drop, fill, refresh, reply, fh, flags, fallback } => {
            let stored = n.is_some_and(|n| {
                // A failed drop answers with `fallback` (no `keep_cache`: the kernel drops them).
                if drop && n.inval_inode(INodeNo(ino), 0, 0).is_err() {
                    return false;
                }
                let stored = store(n, ino, fill);
                if refresh || !stored {
                    let _ = n.inval_inode(INodeNo(ino), -1, 0);
                }
                stored
            });
            reply.opened(FileHandle(fh), if stored { flags } else { fallback });
        }
    }
}

/// Stores `fill` in the kernel's page cache of `ino`. The contents are copied out of their lock
/// first: the store may wait for a page that a reader's read holds, and that read needs them.
fn store(n: &Notifier, ino: u64, fill: Fill) -> bool {
    let r = match fill {
        Fill::None => return true,
        Fill::Placeholder(at) => n.store(INodeNo(ino), at, &[0]),
        Fill::Contents(bytes) => {
            let copy = bytes.with_slice(0, u32::MAX, |s| s.map(LockedBuf::copy_from));
            match copy {
                Some(Ok(buf)) => n.store(INodeNo(ino), 0, buf.as_slice()),
                // Expired meanwhile, or no memory for the copy: the reads go to the daemon.
                _ => return false,
            }
        }
    };
    r.map_err(|e| tracing::debug!(ino, error = %e, "cannot store in the kernel's page cache")).is_ok()
}
