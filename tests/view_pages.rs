//! A dynamic file's contents are served from its private node's page cache (stored there at
//! open): every reader — `cat`, busybox `cat` (sendfile), a program that checks `fstat` — gets its
//! own whole credential whatever its length against the one before, and the pages go when the
//! lease ends, so a held descriptor then reads `EKEYEXPIRED`.

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Prints a credential whose length follows LENGTHS (one per issuance), and keeps each value in
/// `values.txt`, one per line.
const SCRIPT: &str = r#"#!/bin/sh
here=$(dirname "$0")
cat > /dev/null
n=$(cat "$here/n" 2>/dev/null || echo 0); echo $((n + 1)) > "$here/n"
set -- 40 40 4096 4097 30 30 8192 1 8191 40
shift $((n % 10))
fill=$(printf "%s" "$LEASEFS_LEASE_ID" | sha256sum | cut -c1-16)
pw=$(head -c "$1" /dev/zero | tr '\0' 'x' | sed "s/^.\{0,16\}/$fill/" | head -c "$1")
printf '%s\n' "$pw" >> "$here/values.txt"
printf '{"Password": "%s"}\n' "$pw"
"#;

fn setup() -> Env {
    let mut env = Env::new();
    // Other users may reach the mount (the handover test reads as nobody and daemon).
    std::fs::set_permissions(env.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let script = env.path("lengths.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let docs = json!([
        {"path": "base:len", "attributes": {"type": "exec"}, "data": {"command": [script]}},
        dynamic("dyn:len", "base:len", json!({"format": "raw:Password", "ttl": "1m"})),
        dynamic("dyn:short", "base:len", json!({"format": "raw:Password", "ttl": "2s"})),
        dynamic("dyn:all", "base:len", json!({"format": "raw:Password", "ttl": "1m", "mode": "0444"})),
    ]);
    env.doc("d.json", &docs.to_string());
    env.config(json!({"allow_other": true}));
    env.start();
    env
}

fn last_value(env: &Env) -> String {
    env.lines("values.txt").pop().unwrap_or_default()
}

/// `fstat` on the open descriptor, then the whole contents.
fn fstat_then_read(p: &std::path::Path) -> (u64, String) {
    let mut f = std::fs::File::open(p).unwrap();
    let size = f.metadata().unwrap().size();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    (size, s)
}

#[test]
fn every_reader_gets_its_whole_credential_whatever_its_length_against_the_last_one() {
    let env = setup();
    let f = env.m("dyn/len");
    let p = f.to_str().unwrap();
    // Lengths 40 40 4096 4097 30 30 8192 1 8191 40, twice round, the readers taking turns: the
    // same length as the last (the kernel's size is already right), longer (raised by the
    // store), shorter (the kernel must ask), page-sized and one past.
    for i in 0..20 {
        let (got, fstat) = match i % 3 {
            0 => (ok("cat", &[p]), None),
            1 => (ok("busybox", &["cat", p]), None),
            _ => {
                let (size, s) = fstat_then_read(&f);
                (s, Some(size))
            }
        };
        let want = last_value(&env);
        assert_eq!(got.len(), want.len(), "read {i}: length");
        assert!(got == want, "read {i}: not the credential just issued");
        if let Some(size) = fstat {
            assert_eq!(size, want.len() as u64, "read {i}: fstat on the descriptor");
        }
    }
    assert_eq!(env.lines("values.txt").len(), 20, "one issuance per open");
}

/// Reads a file through a private `mmap` (from the page cache), as `user`.
const MMAP_READ: &str = "import mmap,sys\nf=open(sys.argv[1],'rb')\nm=mmap.mmap(f.fileno(),0,mmap.MAP_PRIVATE,mmap.PROT_READ)\nsys.stdout.write(m[:].decode())";

#[test]
fn right_after_one_users_read_another_users_reader_gets_only_its_own_credential() {
    // A closed node keeps its pages for its next open (up to 0.5 s) and goes to the next lookup
    // of any user: that open must replace them whole or drop them before anything is read —
    // through the page cache (`mmap`) and through reads alike, whatever the lengths.
    require_root("reads as nobody and daemon");
    let env = setup();
    let f = env.m("dyn/all");
    let p = f.to_str().unwrap();
    for i in 0..20 {
        let user = ["nobody", "daemon"][i % 2];
        let out = match i % 4 {
            0 | 1 => as_user(user, &["python3", "-c", MMAP_READ, p]),
            _ => as_user(user, &["cat", p]),
        };
        assert!(out.status.success(), "read {i} as {user}: {}", String::from_utf8_lossy(&out.stderr));
        let (got, want) = (String::from_utf8_lossy(&out.stdout).to_string(), last_value(&env));
        assert_eq!(got.len(), want.len(), "read {i} as {user}: length");
        assert!(got == want, "read {i} as {user}: not the credential issued for this open");
    }
    assert_eq!(env.lines("values.txt").len(), 20, "one issuance per open");
}

/// cachestat(2) (Linux 6.5+): pages of the file open as `fd` that the page cache holds.
fn cached_pages(fd: &std::fs::File) -> u64 {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    let (r, mut s) = (Range { off: 0, len: 0 }, Stat::default());
    // SAFETY: cachestat with valid pointers to structs we own.
    let rc = unsafe { libc::syscall(451, fd.as_raw_fd(), &r as *const Range, &mut s as *mut Stat, 0) };
    assert_eq!(rc, 0, "cachestat: {}", std::io::Error::last_os_error());
    s.cache
}

#[test]
fn a_held_descriptor_reads_from_the_page_cache_until_the_lease_ends_then_ekeyexpired() {
    let env = setup();
    let mut held = std::fs::File::open(env.m("dyn/short")).unwrap();
    let want = last_value(&env);
    // Served by the kernel: the credential is in this node's pages from the open on.
    assert!(cached_pages(&held) >= 1, "the open stored the credential in the page cache");
    let mut first = vec![0u8; 8];
    held.read_exact(&mut first).unwrap();
    assert_eq!(first, want.as_bytes()[..8]);
    let id = env.leases()[0]["id"].as_str().unwrap().to_string();
    // The expiry is audited once the pages are gone.
    eventually(Duration::from_secs(10), "the expiry audited", || {
        env.audit().iter().any(|l| l["event"] == "expire" && l["lease_id"] == id.as_str())
    });
    assert_eq!(cached_pages(&held), 0, "the lease ended: its pages are gone");
    let mut rest = Vec::new();
    let err = held.read_to_end(&mut rest).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EKEYEXPIRED), "{err}");
    assert_eq!(held.metadata().unwrap().size(), want.len() as u64, "fstat keeps the size");
}

/// A warm `cat` of a dynamic file costs the daemon three requests, as bindfs's `cat` of a plain
/// file does: the lookup (the name is looked up again at each path walk, and the node the last
/// reader closed is handed out again), the open and the release. The credential is stored in
/// the node's page cache before the open is answered, and the lookup already told the kernel
/// its size (the last one of this user's, which a token of the same issuer keeps), so the kernel
/// answers `fstat`, the reads and the end of file itself.
#[test]
fn a_warm_cat_of_a_dynamic_file_costs_three_requests() {
    let mut env = Env::new();
    env.doc(
        "jwt.json",
        &json!([
            {"path": "base:jwt", "attributes": {"type": "jwt"}, "data": {"algorithm": "HS256", "key": "k".repeat(32)}},
            {"path": "tokens:api", "attributes": {"linkConfig": {"linkType": "dynamic", "linkedSecret": "base:jwt"}, "format": "raw:token"}}
        ])
        .to_string(),
    );
    env.config(json!({}));
    env.start();
    let f = env.m("tokens/api");
    let p = f.to_str().unwrap();
    let first = cat(&f);
    let mut last = first.clone();
    for _ in 0..3 {
        let cost = requests_of(&env, || last = ok("cat", &[p]));
        assert_eq!(last.len(), first.len());
        let want = [("lookup", 1), ("open", 1), ("release", 1)].map(|(o, n)| (o.to_string(), n));
        assert_eq!(cost, want);
    }
    let (size, again) = fstat_then_read(&f);
    assert_eq!(size, first.len() as u64, "fstat: the handle's size");
    assert_ne!(again, last, "each open issues a fresh token");
}
