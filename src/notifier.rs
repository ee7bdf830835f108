//! The one thread that sends the kernel store and invalidation notifications. Never a request
//! thread: the kernel may make a notification wait for a page that a read-ahead has locked, and
//! only a request thread can answer that read. An open that needs its size raised first is
//! answered from here, after the store, so no reader sees the file before its size.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, OnceLock};

use fuser::{FileHandle, FopenFlags, INodeNo, Notifier, ReplyOpen};

/// Set once a notification found the thread gone (reported once).
static GONE: AtomicBool = AtomicBool::new(false);

/// What the notifier thread is asked to do.
pub enum Note {
    /// Drop an inode's cached attributes (`offset` -1) or also its pages (`offset` 0).
    Inval { ino: u64, offset: i64 },
    /// Drop a name from a directory's cached entries.
    Entry { parent: u64, name: OsString },
    /// Drop the pages of `ino` if `drop` says so, raise the kernel's size of it with one
    /// placeholder byte at `at` (or drop its attributes if that fails or `refresh` says so), then
    /// answer the open.
    Open { ino: u64, drop: bool, at: Option<u64>, refresh: bool, reply: ReplyOpen, fh: u64, flags: FopenFlags },
}

/// A handle on the notifier thread; cheap to clone.
#[derive(Clone)]
pub struct Notes {
    tx: Sender<Note>,
}

impl Notes {
    /// Starts the thread. Notifications wait until the session's notifier is set; opens queued
    /// before that are answered without one.
    pub fn start(notifier: Arc<OnceLock<Notifier>>) -> std::io::Result<Notes> {
        let (tx, rx) = channel();
        std::thread::Builder::new().name("leasefs-notify".into()).spawn(move || serve(&notifier, rx))?;
        Ok(Notes { tx })
    }

    /// Queues a notification. False if the thread is gone (the caller then answers as if it
    /// had failed).
    pub fn send(&self, n: Note) -> Result<(), Note> {
        self.tx.send(n).map_err(|e| e.0)
    }

    pub fn inval(&self, ino: u64, offset: i64) {
        if self.send(Note::Inval { ino, offset }).is_err() && !GONE.swap(true, Ordering::Relaxed) {
            tracing::error!("the notifier thread has ended: the kernel's caches are no longer invalidated");
        }
    }
}

fn serve(notifier: &OnceLock<Notifier>, rx: Receiver<Note>) {
    while let Ok(note) = rx.recv() {
        let n = notifier.get();
        match note {
            Note::Inval { ino, offset } => {
                if let Some(n) = n {
                    let _ = n.inval_inode(INodeNo(ino), offset, 0);
                }
            }
            Note::Entry { parent, name } => {
                if let Some(n) = n {
                    let _ = n.inval_entry(INodeNo(parent), &name);
                }
            }
            Note::Open { ino, drop, at, refresh, reply, fh, flags } => {
                if let Some(n) = n {
                    if drop {
                        let _ = n.inval_inode(INodeNo(ino), 0, 0);
                    }
                    let raised = at.is_none_or(|at| store(n, ino, at));
                    if refresh || !raised {
                        let _ = n.inval_inode(INodeNo(ino), -1, 0);
                    }
                }
                reply.opened(FileHandle(fh), flags);
            }
        }
    }
}

/// One placeholder byte at `at`: the kernel's size of `ino` becomes at least `at + 1`.
fn store(n: &Notifier, ino: u64, at: u64) -> bool {
    n.store(INodeNo(ino), at, &[0])
        .map_err(|e| tracing::debug!(ino, error = %e, "cannot raise the kernel's file size"))
        .is_ok()
}
