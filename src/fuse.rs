//! The fuser 0.18 adapter only: copies what it needs out of each request, runs slow work on the tokio runtime and replies from the task.

use std::ffi::OsStr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::fs::tree::Changes;
use crate::fs::{Attr, EntryKind, FsError, LeaseFs, Opened, placeholder_at};
use crate::metrics::Request as Op;
use crate::notifier::{Fill, Note, Notes};
use crate::requester::Requester;

thread_local! {
    /// Set on the threads that serve requests: they never wait for a notification.
    static REQUEST_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub struct FuseAdapter {
    fs: Arc<LeaseFs>,
    rt: Handle,
    /// The notifier threads: stores and invalidations never go through a request thread.
    notes: Notes,
}

impl FuseAdapter {
    pub fn new(fs: Arc<LeaseFs>, rt: Handle, notes: Notes) -> Self {
        // A lease that ends takes its pages along: a held descriptor's next read, or a private
        // mmap's next fault, then reaches the daemon and fails with EKEYEXPIRED. Off a request
        // thread (expiry, revocation) the end waits until they are gone (it is audited after).
        let n = notes.clone();
        fs.on_drop_pages(move |ino| {
            if REQUEST_THREAD.get() { n.inval(ino, 0) } else { n.inval_wait(ino, 0, Duration::from_secs(1)) }
        });
        // Pages a closed view kept for its next open go when that open does not come in time.
        let (f, n) = (fs.clone(), notes.clone());
        rt.spawn(async move {
            loop {
                let (due, next) = f.kept_pages_due();
                for view in due {
                    n.inval(view, 0);
                }
                match next {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => f.pages_kept().await,
                }
            }
        });
        FuseAdapter { fs, rt, notes }
    }

    fn count(&self, r: Op) {
        self.fs.leases().metrics.request(r);
    }
}

/// The errno for a failed operation, which is logged here once, at the error's level.
fn failed(op: &str, ino: INodeNo, e: &FsError) -> Errno {
    match e.level {
        tracing::Level::ERROR => tracing::error!(op, ino = ino.0, error = %e, "{op} failed"),
        tracing::Level::WARN => tracing::warn!(op, ino = ino.0, error = %e, "{op} failed"),
        tracing::Level::INFO => tracing::info!(op, ino = ino.0, error = %e, "{op} failed"),
        _ => tracing::debug!(op, ino = ino.0, error = %e, "{op} failed"),
    }
    // Never send an errno the kernel would drop (>= 512): the caller would hang.
    if e.errno <= 0 || e.errno >= 512 { Errno::EIO } else { Errno::from_i32(e.errno) }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: match a.kind {
            EntryKind::Dir => FileType::Directory,
            EntryKind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn who(req: &Request) -> Requester {
    Requester::new(req.uid(), req.gid(), req.pid())
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // FUSE_POSIX_ACL: the kernel caches "no ACL" per inode instead of asking on every `ls -l`
        // (there are none; permissions stay the mode bits, checked by the kernel).
        for flag in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_POSIX_ACL,
        ] {
            if let Err(unsupported) = config.add_capabilities(flag) {
                tracing::debug!(?unsupported, "kernel lacks a FUSE capability");
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.count(Op::Lookup);
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.fs.lookup_for(parent.0, name, req.uid(), req.pid()) {
            Ok(e) => reply.entry_with_ttls(&e.ttl, &e.entry_ttl, &file_attr(&e.attr), Generation(0)),
            Err(e) if e.errno == libc::ENOENT => {
                // A negative entry (inode 0) lets the kernel cache the miss for `ttl`.
                let (kind, mtime) = (EntryKind::File, SystemTime::UNIX_EPOCH);
                let none = Attr { ino: 0, size: 0, kind, perm: 0, uid: 0, gid: 0, mtime, nlink: 0 };
                reply.entry(&self.fs.entry_ttl(), &file_attr(&none), Generation(0))
            }
            Err(e) => reply.error(failed("lookup", parent, &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.count(Op::Getattr);
        match self.fs.getattr_entry(ino.0, fh.map(|f| f.0), req.pid()) {
            Ok(e) => reply.attr(&e.ttl, &file_attr(&e.attr)),
            Err(e) => reply.error(failed("getattr", ino, &e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.count(Op::Setattr);
        if size == Some(0) && mode.is_none() && uid.is_none() && gid.is_none() {
            match self.fs.truncate(ino.0, &who(req)) {
                Ok(a) => return reply.attr(&Duration::ZERO, &file_attr(&a)),
                Err(e) => return reply.error(failed("setattr", ino, &e)),
            }
        }
        reply.error(Errno::EROFS)
    }

    fn mknod(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _r: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS)
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS)
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _l: &std::path::Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS)
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }

    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS)
    }

    fn create(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _f: i32, reply: ReplyCreate) {
        reply.error(Errno::EROFS)
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.count(Op::Open);
        REQUEST_THREAD.set(true);
        let mut open = self.fs.opening(ino.0, flags.0, who(req));
        // An open the filesystem calls inline (a cached static payload, an in-process issuer such
        // as jwt) is polled once here and answered without a hop to the runtime; if it has to wait
        // after all (a source read), it continues as a task. Any other open (a script to start, a
        // round trip to an issuer) goes to the runtime at once; this thread serves other requests.
        let _rt = self.rt.enter();
        if open.inline {
            if let Poll::Ready(r) = open.future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                return reply_opened(&self.notes, &self.fs, ino, r, reply);
            }
        }
        let (notes, fs) = (self.notes.clone(), self.fs.clone());
        self.rt.spawn(async move {
            let r = open.future.await;
            reply_opened(&notes, &fs, ino, r, reply)
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.count(Op::Read);
        // Served from memory under a short lock: never blocks, so it is answered in place. The
        // kernel names a lock owner on a reader's direct read, never when it fills its page cache
        // (a mmap fault, splice, readahead): those pages must go at close.
        self.fs.read(fh.0, offset, size, lock_owner.is_none(), |r| match r {
            Ok(bytes) => reply.data(bytes),
            Err(e) => reply.error(failed("read", _ino, &e)),
        })
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.count(Op::Write);
        let fs = self.fs.clone();
        let who = who(req);
        let data = zeroize::Zeroizing::new(data.to_vec());
        self.rt.spawn(async move {
            match fs.write(ino.0, fh.0, offset, &data, who).await {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(failed("write", ino, &e)),
            }
        });
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lo: LockOwner, reply: ReplyEmpty) {
        self.count(Op::Flush);
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lo: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.count(Op::Release);
        REQUEST_THREAD.set(true);
        // Releasing may start a revocation (revoke_on_close), which runs on the runtime.
        let _rt = self.rt.enter();
        // What the handle cached (a view's bytes; a mmap or splice of direct I/O contents) goes,
        // queued before the view can be handed to another lookup.
        self.fs.release_with(fh.0, || self.notes.inval(ino.0, 0));
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        reply.ok()
    }

    /// Listings are metadata: the kernel keeps them (until a reload changes the directory and
    /// `invalidate` drops them), so a second `find` or `ls -R` never reaches the daemon.
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.count(Op::Opendir);
        match self.fs.opendir(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(failed("opendir", ino, &e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.count(Op::Readdir);
        let r = self.fs.readdir(ino.0, offset, |e| {
            let kind = if e.attr.kind == EntryKind::Dir { FileType::Directory } else { FileType::RegularFile };
            reply.add(INodeNo(e.ino), e.next, kind, e.name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(failed("readdir", ino, &e)),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        self.count(Op::Readdirplus);
        let r = self.fs.readdir(ino.0, offset, |e| {
            reply.add(INodeNo(e.ino), e.next, e.name, &e.ttl, &file_attr(&e.attr), Generation(0))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(failed("readdir", ino, &e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.count(Op::Statfs);
        let files = self.fs.tree().counts;
        let n = (files.static_secrets + files.dynamic_secrets + files.directories) as u64;
        reply.statfs(0, 0, 0, n, 0, 4096, 255, 4096)
    }

    fn setxattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, _v: &[u8], _f: i32, _p: u32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.count(Op::Getxattr);
        let r = match name.to_str() {
            Some(n) => self.fs.getxattr(ino.0, n),
            None => Err(FsError::new(libc::ENODATA, "no such attribute")),
        };
        xattr_reply(ino, r, size, reply)
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.count(Op::Listxattr);
        xattr_reply(ino, self.fs.listxattr(ino.0), size, reply)
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    /// Secrets are not terminals: what isatty() and friends expect to hear.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        self.count(Op::Ioctl);
        // Answered here, without fuser's warning per call (Python's open() issues one per file).
        reply.error(Errno::from_i32(libc::ENOTTY))
    }

    /// ENOSYS makes the kernel handle SEEK_SET/CUR/END itself and remember it.
    fn lseek(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _o: i64, _w: i32, reply: fuser::ReplyLseek) {
        self.count(Op::Lseek);
        reply.error(Errno::ENOSYS)
    }

    /// ENOSYS makes the kernel fall back to read/write (and remember it).
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS)
    }

    fn fallocate(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _o: u64, _l: u64, _m: i32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        reply.ok()
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Not called with default_permissions; answer like a permissive filesystem if it is.
        reply.ok()
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS)
    }

    fn bmap(&self, _req: &Request, _ino: INodeNo, _bs: u32, _idx: u64, reply: fuser::ReplyBmap) {
        reply.error(Errno::ENOSYS)
    }
}

/// Answers an open as the filesystem says: direct I/O or kept pages where asked. A view's contents
/// are first stored in its page cache by its notifier, which then answers (with direct I/O if that
/// fails). Contents served with direct I/O on a shared node first get the kernel's size raised to
/// theirs by one placeholder byte: `sendfile`/`splice` go through the page cache, bounded by that
/// size (kernels without "fuse: use copy_splice_read for FOPEN_DIRECT_IO"), and busybox `cat`
/// would print nothing. The byte goes where it is never the first byte of its page (that page is
/// never up to date, so a read fetches the real one); where `size - 1` starts a page it goes at
/// `size`, and the attributes are dropped so that `fstat` asks. No FLUSH: nothing is buffered.
fn reply_opened(notes: &Notes, fs: &LeaseFs, ino: INodeNo, r: Result<Opened, FsError>, reply: ReplyOpen) {
    let o = match r {
        Ok(o) => o,
        Err(e) => return reply.error(failed("open", ino, &e)),
    };
    let when = |on: bool, f: FopenFlags| if on { f } else { FopenFlags::empty() };
    let flags = FopenFlags::FOPEN_NOFLUSH
        | when(o.direct_io, FopenFlags::FOPEN_DIRECT_IO)
        | when(o.keep_cache, FopenFlags::FOPEN_KEEP_CACHE);
    let (fill, fallback) = if o.store {
        let direct = FopenFlags::FOPEN_NOFLUSH | FopenFlags::FOPEN_DIRECT_IO;
        match fs.contents(o.fh) {
            Some(bytes) => (Fill::Contents(bytes), direct),
            None => return reply.opened(FileHandle(o.fh), direct),
        }
    } else if o.direct_io && o.size > 0 {
        (Fill::Placeholder(placeholder_at(o.size)), flags)
    } else {
        (Fill::None, flags)
    };
    if matches!(fill, Fill::None) && !o.refresh_attr && !o.drop_first {
        return reply.opened(FileHandle(o.fh), flags);
    }
    let (drop, refresh) = (o.drop_first, o.refresh_attr);
    // Pages that must go are never kept by the fallback (without `keep_cache` the kernel drops
    // an inode's pages at open).
    let fallback = if drop { fallback - FopenFlags::FOPEN_KEEP_CACHE } else { fallback };
    let note = Note::Open { ino: ino.0, drop, fill, refresh, reply, fh: o.fh, flags, fallback };
    if let Err(Note::Open { reply, .. }) = notes.send(note) {
        reply.opened(FileHandle(o.fh), fallback);
    }
}

fn xattr_reply(ino: INodeNo, r: Result<Vec<u8>, FsError>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(Errno::ERANGE),
        Err(e) => reply.error(failed("getxattr", ino, &e)),
    }
}

/// Drops what the kernel cached from an earlier snapshot: listings of changed directories, names
/// that are gone or new (a missing name may be cached), and the attributes and pages of entries
/// that changed. Unknown inodes (never looked up) are skipped by the kernel.
pub fn invalidate(n: &Notes, ch: &Changes) {
    for dir in &ch.dirs {
        n.inval(*dir, 0);
    }
    for (parent, name) in ch.removed.iter().chain(&ch.added) {
        let _ = n.send(Note::Entry { parent: *parent, name: name.into() });
    }
    // Offset 0: the pages go too (a static secret served through the page cache changed).
    for ino in &ch.attrs {
        n.inval(*ino, 0);
    }
}
