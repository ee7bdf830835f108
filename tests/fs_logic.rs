//! The filesystem logic without FUSE in the loop: permission checks of the daemon itself (behind the
//! kernel's), errno of each refusal, handle sizes, directory offsets, and expiry seen by a handle.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use leasefs::audit::Audit;
use leasefs::defaults::Defaults;
use leasefs::fs::tree::Owner;
use leasefs::fs::views::KEEP_CLOSED;
use leasefs::fs::{EntryKind, LeaseFs, ROOT, Settings, SourceSpec};
use leasefs::issuer::registry::Issuers;
use leasefs::lease::{EndReason, LeaseManager};
use leasefs::metrics::Metrics;
use leasefs::requester::Requester;
use leasefs::source::local::LocalSource;

struct Fixture {
    fs: LeaseFs,
    dir: tempfile::TempDir,
}

async fn fixture(docs: &str) -> Fixture {
    fixture_with(docs, Defaults::default()).await
}

async fn fixture_with(docs: &str, defaults: Defaults) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("docs");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("a.json"), docs).unwrap();
    std::fs::set_permissions(d.join("a.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let audit = Arc::new(Audit::open(&dir.path().join("audit.jsonl")).unwrap());
    let leases = LeaseManager::new(
        Issuers::builtin(Duration::from_secs(5), true),
        None,
        defaults.clone(),
        audit.clone(),
        Arc::new(Metrics::default()),
        leasefs::clock::Clock::System,
    );
    let owner = Owner { uid: 0, gid: 0, file_mode: 0o400, dir_mode: 0o555 };
    let settings = Settings { defaults, root_owner: owner, control: true };
    // As a default configuration mounts a local source: static secrets may use the page cache.
    let source = Arc::new(LocalSource::new(d, true).with_sizes(true));
    let spec = SourceSpec { source, prefix: vec![], owner, page_cache: true };
    let fs = LeaseFs::new(settings, vec![spec], audit, leases);
    assert!(fs.refresh().await.is_empty());
    Fixture { fs, dir }
}

fn who(uid: u32, gid: u32) -> Requester {
    Requester { comm: "test".into(), ..Requester::new(uid, gid, std::process::id()) }
}

fn ino(fs: &LeaseFs, path: &str) -> u64 {
    path.split('/').fold(ROOT, |parent, name| fs.lookup(parent, name).unwrap().attr.ino)
}

const DOCS: &str = r#"[
  {"path": "a:root-only", "data": {"value": "r"}},
  {"path": "a:group", "attributes": {"group": 4242, "mode": "0440"}, "data": {"value": "g"}},
  {"path": "a:world", "attributes": {"mode": "0444"}, "data": {"value": "w"}},
  {"path": "base:jwt", "attributes": {"type": "jwt"}, "data": {"algorithm": "HS256", "key": "0123456789abcdef0123456789abcdef"}},
  {"path": "a:token", "attributes": {"linkConfig": {"linkType": "dynamic", "linkedSecret": "base:jwt"}, "format": "raw:token"}}
]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_checks_the_requester_again_and_audits_each_denial() {
    let f = fixture(DOCS).await;
    let fs = &f.fs;
    let (root_only, group, world) = (ino(fs, "a/root-only"), ino(fs, "a/group"), ino(fs, "a/world"));
    assert_eq!(fs.open(root_only, libc::O_RDONLY, who(1000, 1000)).await.unwrap_err().errno, libc::EACCES);
    assert_eq!(fs.open(group, libc::O_RDONLY, who(1000, 1000)).await.unwrap_err().errno, libc::EACCES);
    assert!(fs.open(group, libc::O_RDONLY, who(1000, 4242)).await.is_ok(), "the file's group may read 0440");
    assert!(fs.open(world, libc::O_RDONLY, who(1000, 1000)).await.is_ok());
    assert!(fs.open(root_only, libc::O_RDONLY, who(0, 0)).await.is_ok());
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).unwrap();
    let denials: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "deny")
        .collect();
    assert_eq!(denials.len(), 2, "{audit}");
    assert_eq!(denials[0]["path"], "/a/root-only");
    assert_eq!(denials[0]["uid"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_their_errno() {
    let f = fixture(DOCS).await;
    let fs = &f.fs;
    let file = ino(fs, "a/world");
    let root = who(0, 0);
    assert_eq!(fs.open(file, libc::O_WRONLY, root.clone()).await.unwrap_err().errno, libc::EROFS);
    assert_eq!(fs.open(file, libc::O_RDONLY | libc::O_TRUNC, root.clone()).await.unwrap_err().errno, libc::EROFS);
    assert_eq!(fs.open(ino(fs, "a"), libc::O_RDONLY, root.clone()).await.unwrap_err().errno, libc::EISDIR);
    assert_eq!(fs.lookup(ROOT, "nope").unwrap_err().errno, libc::ENOENT);
    assert_eq!(fs.lookup(file, "x").unwrap_err().errno, libc::ENOTDIR);
    assert_eq!(fs.write(file, 0, 0, b"x", root.clone()).await.unwrap_err().errno, libc::EROFS);
    // The control directory is for root (or the daemon's user) only.
    let status = ino(fs, ".leasefs/status.json");
    assert_eq!(fs.open(status, libc::O_RDONLY, who(1000, 1000)).await.unwrap_err().errno, libc::EACCES);
    let revoke = ino(fs, ".leasefs/revoke");
    assert_eq!(fs.write(revoke, 0, 0, b"all", who(1000, 1000)).await.unwrap_err().errno, libc::EACCES);
    let h = fs.open(revoke, libc::O_WRONLY, root.clone()).await.unwrap();
    assert_eq!(fs.write(revoke, h.fh, 0, b"no-such-lease", root).await.unwrap_err().errno, libc::ENOENT);
    // Base secrets are not listed.
    assert_eq!(fs.lookup(ROOT, "base").unwrap_err().errno, libc::ENOENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_sees_its_size_and_expiry_and_readdir_resumes_at_offsets() {
    let f = fixture(DOCS).await;
    let fs = &f.fs;
    // Each lookup of a dynamic file is a node of its own (a view); its open binds it.
    let token = ino(fs, "a/token");
    let other = ino(fs, "a/token");
    assert_ne!(token, other, "each lookup hands out a private node");
    let me = who(0, 0);
    let o = fs.open(token, libc::O_RDONLY, me.clone()).await.unwrap();
    // The view is this binding's alone: its contents are stored in its page cache before the open
    // is answered, and the kernel serves the reads.
    assert!(o.store && o.keep_cache && !o.direct_io, "{o:?}");
    let size = fs.read(o.fh, 0, 1 << 20, false, |r| r.unwrap().len());
    assert_eq!(o.size as usize, size);
    assert!(size > 50);
    let (a, _) = fs.getattr(token, None, me.pid).unwrap();
    assert_eq!(a.size as usize, size, "fstat of the view sees its contents' size");
    let (a, _) = fs.getattr(other, None, me.pid).unwrap();
    assert_eq!(a.size, 0, "another reader's node is not opened: 0");
    let entry = fs.lookup(ino(fs, "a"), "token").unwrap();
    assert_eq!(entry.entry_ttl, std::time::Duration::ZERO, "looked up again at each path walk");
    // The view opened again (as /proc/PID/fd/N does) serves the same contents, to its user only.
    let again = fs.open(token, libc::O_RDONLY, me.clone()).await.unwrap();
    assert!(again.store && again.keep_cache, "the same bytes, stored again before the answer: {again:?}");
    assert_eq!(fs.read(again.fh, 0, 1 << 20, false, |r| r.unwrap().len()), size);
    assert_eq!(fs.open(token, libc::O_RDONLY, who(1000, 1000)).await.unwrap_err().errno, libc::EBUSY);
    assert!(!fs.release(again.fh), "another handle on the view is open: its pages stay");
    // Revoke every lease: the open handle now reads EKEYEXPIRED (its pages were dropped when the
    // lease ended), `fstat` keeps its size, and a new open of the node gets a credential of its
    // own, read with direct I/O, leaving the view's size and pages alone.
    fs.leases().revoke_all(EndReason::Revoke, None);
    assert_eq!(fs.read(o.fh, 0, 10, false, |r| r.unwrap_err().errno), libc::EKEYEXPIRED);
    assert_eq!(fs.getattr(token, None, me.pid).unwrap().0.size as usize, size, "fstat after expiry");
    let own = fs.open(token, libc::O_RDONLY, me.clone()).await.unwrap();
    assert!(own.direct_io && own.keep_cache && !own.store && own.size == 0, "{own:?}");
    assert!(fs.read(own.fh, 0, 1 << 20, false, |r| r.unwrap().len()) > 50, "its own credential");
    assert!(!fs.release(own.fh), "the first handle is still open");
    assert!(fs.release(o.fh), "the view's last close drops its pages");
    // Closed, the view (a bind-mounted file keeps one) opens afresh with a new lease; the kernel
    // was last told the old size, which the new token (as long) lands on.
    let fresh = fs.open(token, libc::O_RDONLY, me.clone()).await.unwrap();
    assert!(fresh.store && !fresh.refresh_attr && fresh.size as usize == size, "{fresh:?}");
    assert!(fs.read(fresh.fh, 0, 1 << 20, false, |r| r.unwrap().len()) > 50);
    assert!(!fs.release(fresh.fh), "its lease is live: the pages are kept for the next open");
    assert_eq!(fs.read(o.fh, 0, 10, false, |r| r.unwrap_err().errno), libc::EBADF);
    // Forgotten views go; the tree's own node of a dynamic file never holds a lease (ESTALE: the
    // kernel looks the name up again).
    fs.forget(token, 1);
    fs.forget(other, 1);
    assert_eq!(fs.open(token, libc::O_RDONLY, me.clone()).await.unwrap_err().errno, libc::ESTALE);
    let tree_node = fs.tree().child(ino(fs, "a"), "token").unwrap();
    assert_eq!(fs.open(tree_node, libc::O_RDONLY, me.clone()).await.unwrap_err().errno, libc::ESTALE);

    // readdir: ".", "..", then children in name order; resuming at any offset continues there.
    let a_dir = ino(fs, "a");
    let mut all = Vec::new();
    fs.readdir(a_dir, 0, |e| {
        all.push((e.name.to_string(), e.next, e.attr.kind));
        false
    })
    .unwrap();
    let names: Vec<&str> = all.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(names, [".", "..", "group", "root-only", "token", "world"]);
    assert_eq!(all[0].2, EntryKind::Dir);
    let mut rest = Vec::new();
    fs.readdir(a_dir, all[2].1, |e| {
        rest.push(e.name.to_string());
        false
    })
    .unwrap();
    assert_eq!(rest, ["root-only", "token", "world"]);
    // A full buffer stops the listing.
    let mut one = Vec::new();
    fs.readdir(a_dir, 0, |e| {
        one.push(e.name.to_string());
        true
    })
    .unwrap();
    assert_eq!(one, ["."]);
}

/// A token any user may read.
const SHARED_TOKEN: &str = r#"[
  {"path": "base:jwt", "attributes": {"type": "jwt"}, "data": {"algorithm": "HS256", "key": "0123456789abcdef0123456789abcdef"}},
  {"path": "a:token", "attributes": {"linkConfig": {"linkType": "dynamic", "linkedSecret": "base:jwt"}, "format": "raw:token", "mode": "0444"}}
]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_views_pages_wait_for_its_next_open_which_replaces_or_drops_them_and_go_with_the_lease() {
    let f = fixture(SHARED_TOKEN).await;
    let fs = &f.fs;
    let dropped = Arc::new(std::sync::Mutex::new(Vec::new()));
    let d = dropped.clone();
    fs.on_drop_pages(move |view| d.lock().unwrap().push(view));
    let (me, other) = (who(0, 0), who(1000, 1000));
    let token = ino(fs, "a/token");
    let first = fs.open(token, libc::O_RDONLY, me.clone()).await.unwrap();
    assert!(first.store && !first.drop_first, "{first:?}");
    assert!(!fs.release(first.fh), "a live lease's pages stay at close");
    let (due, next) = fs.kept_pages_due();
    assert!(due.is_empty() && next.is_some_and(|w| w <= KEEP_CLOSED), "kept, not due yet");
    // The same user's next open of a token as long replaces every byte: nothing is dropped.
    let second = fs.open(token, libc::O_RDONLY, me.clone()).await.unwrap();
    assert!(second.store && !second.drop_first && second.size == first.size, "{second:?}");
    assert!(!fs.release(second.fh));
    // Another user's open of the node (the kernel hands a closed node to the next lookup of any
    // user) has them dropped before its own are stored.
    let theirs = fs.open(token, libc::O_RDONLY, other.clone()).await.unwrap();
    assert!(theirs.store && theirs.drop_first, "{theirs:?}");
    assert!(!fs.release(theirs.fh));
    // Its lease ends: the pages it kept go with it (the earlier leases' pages were replaced).
    assert!(dropped.lock().unwrap().is_empty());
    fs.leases().revoke_all(EndReason::Revoke, None);
    assert_eq!(*dropped.lock().unwrap(), [token], "the lease ended: its kept pages go");
    let third = fs.open(token, libc::O_RDONLY, me.clone()).await.unwrap();
    assert!(third.store && !third.drop_first, "they went with the lease: {third:?}");
    assert!(!fs.release(third.fh));
    // Kept past KEEP_CLOSED without an open: due, once.
    tokio::time::sleep(KEEP_CLOSED).await;
    let (due, next) = fs.kept_pages_due();
    assert_eq!((due, next), (vec![token], None));
    assert_eq!(fs.kept_pages_due(), (vec![], None), "nothing is kept any more");
    let fourth = fs.open(token, libc::O_RDONLY, other).await.unwrap();
    assert!(fourth.store && !fourth.drop_first, "nothing left to drop: {fourth:?}");
    fs.release(fourth.fh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_secret_is_listed_with_its_size_and_its_pages_are_kept_only_while_its_contents_are() {
    // Payloads are fetched again at each open (no payload cache), as after `cache_ttl`.
    let defaults = Defaults { cache_ttl: leasefs::defaults::Dur::secs(0), ..Defaults::default() };
    let f = fixture_with(DOCS, defaults).await;
    let fs = &f.fs;
    let world = ino(fs, "a/world");
    let me = who(0, 0);
    // Listing knows the exact size without an open (the value "w" renders as one byte).
    assert_eq!(fs.lookup(ino(fs, "a"), "world").unwrap().attr.size, 1);
    let first = fs.open(world, libc::O_RDONLY, me.clone()).await.unwrap();
    assert!(!first.direct_io && !first.keep_cache, "first open: page cache, nothing to keep yet");
    let (a, own) = fs.getattr(world, None, me.pid).unwrap();
    assert!(!own && a.size == 1, "fstat needs no uncached answer: the listed size is the handle's");
    assert!(!fs.release(first.fh), "its pages stay after close");
    let second = fs.open(world, libc::O_RDONLY, me.clone()).await.unwrap();
    assert!(second.keep_cache, "same contents: the kernel keeps its pages");
    fs.release(second.fh);

    // The document changes to other contents of another length; before a reload lists it again,
    // an open serves the new bytes with direct I/O and drops the old pages.
    let doc = f.dir.path().join("docs/a.json");
    std::fs::write(&doc, DOCS.replace(r#""value": "w""#, r#""value": "w2""#)).unwrap();
    let third = fs.open(world, libc::O_RDONLY, me.clone()).await.unwrap();
    assert!(third.direct_io && !third.keep_cache && third.size == 2);
    assert!(!third.refresh_attr, "longer than listed: raising the kernel's size lands on it exactly");
    assert!(fs.read(third.fh, 0, 4096, true, |r| r.unwrap() == b"w2"));
    assert!(fs.release(third.fh), "pages its splice or mmap readers filled go at close");
    // After the reload the listing has the new size and the page cache is used again.
    assert!(fs.refresh().await.is_empty());
    assert_eq!(fs.lookup(ino(fs, "a"), "world").unwrap().attr.size, 2);
    let fourth = fs.open(world, libc::O_RDONLY, me).await.unwrap();
    assert!(!fourth.direct_io && !fourth.keep_cache, "other contents than the pages held: not kept");
    fs.release(fourth.fh);
}
