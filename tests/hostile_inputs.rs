//! leasefs tried as an attacker and as a careless operator would (SPEC §9): readers that use
//! sendfile, splice and mmap, concurrent opens, hostile scripts and documents, limits.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A catalog with a static secret and dynamic entries of the test issuer.
fn setup(entries: &[(&str, &str, serde_json::Value)], defaults: serde_json::Value) -> Env {
    let mut env = Env::new();
    let script = env.script();
    env.doc("dynamic.json", &exec_catalog(&script, entries));
    env.doc("static.json", r#"{"path": "static:plain", "data": {"value": "static-value-0123456789"}}"#);
    env.config(json!({"defaults": defaults}));
    env.start();
    env
}

const SENDFILE: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
out = bytearray()
r, w = os.pipe()
while True:
    n = os.sendfile(w, fd, None, 65536)
    if n == 0:
        break
    out += os.read(r, n)
sys.stdout.write(out.decode())
"#;

const SPLICE: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
r, w = os.pipe()
out = bytearray()
while True:
    n = os.splice(fd, w, 65536)
    if n == 0:
        break
    out += os.read(r, n)
sys.stdout.write(out.decode())
"#;

#[test]
fn busybox_cat_sendfile_and_splice_readers_get_the_whole_file_static_and_dynamic() {
    let env = setup(&[("dyn:royal", "royal", json!({"format": "json"}))], json!({}));
    let busybox = "/bin/busybox";
    assert!(std::path::Path::new(busybox).exists(), "busybox-static is installed by scripts/test.sh");
    let stat = env.m("static/plain");
    let dynamic = env.m("dyn/royal");
    for round in 0..3 {
        // Static: the same bytes every time, by every reader.
        assert_eq!(ok(busybox, &["cat", stat.to_str().unwrap()]), "static-value-0123456789", "round {round}");
        assert_eq!(ok("python3", &["-c", SENDFILE, stat.to_str().unwrap()]), "static-value-0123456789");
        assert_eq!(ok("python3", &["-c", SPLICE, stat.to_str().unwrap()]), "static-value-0123456789");
        // Dynamic: a whole, fresh credential each time (never an empty file, never a stale one).
        let mut seen = std::collections::HashSet::new();
        for (how, text) in [
            ("busybox cat", ok(busybox, &["cat", dynamic.to_str().unwrap()])),
            ("sendfile", ok("python3", &["-c", SENDFILE, dynamic.to_str().unwrap()])),
            ("splice", ok("python3", &["-c", SPLICE, dynamic.to_str().unwrap()])),
        ] {
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{how} read {text:?}: {e}\n{}", env.log()));
            assert!(v["Password"].as_str().unwrap().starts_with("pw-"), "{how}: {v}");
            assert!(seen.insert(v["Password"].as_str().unwrap().to_string()), "{how} got a credential twice");
        }
    }
}

#[test]
fn a_shorter_credential_after_a_longer_one_is_exact_for_sendfile_readers() {
    let mut env = Env::new();
    // Lengths 5000, 10, 4097, 1, 8192, 3 in turn: the kernel's idea of the size must follow.
    let script = env.path("lengths.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\nhere=$(dirname \"$0\")\necho x >> \"$here/n\"\nn=$(wc -l < \"$here/n\")\n\
         set -- 5000 10 4097 1 8192 3\nshift $(( (n - 1) % 6 ))\n\
         printf '{\"v\": \"%s\"}' \"$(head -c \"$1\" /dev/zero | tr '\\0' 'k')\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    env.doc(
        "d.json",
        &json!([
            {"path": "base:len", "attributes": {"type": "exec"}, "data": {"command": [script]}},
            dynamic("dyn:len", "base:len", json!({"format": "raw:v"})),
        ])
        .to_string(),
    );
    env.config(json!({}));
    env.start();
    let f = env.m("dyn/len");
    for (round, want) in [5000usize, 10, 4097, 1, 8192, 3, 5000, 10].into_iter().enumerate() {
        let got = if round % 2 == 0 {
            ok("/bin/busybox", &["cat", f.to_str().unwrap()])
        } else {
            ok("python3", &["-c", SENDFILE, f.to_str().unwrap()])
        };
        assert_eq!(got.len(), want, "round {round}");
        assert!(got.bytes().all(|b| b == b'k'), "round {round}: bytes other than the credential's");
    }
}

/// The kernel's page cache in kB (`Cached:` in /proc/meminfo).
fn cached_kb() -> i64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    m.lines().find(|l| l.starts_with("Cached:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn what_a_sendfile_reader_pulled_into_the_page_cache_is_gone_after_close() {
    const MB12: usize = 12 * 1024 * 1024;
    let mut env = Env::new();
    env.doc("big.json", &json!({"path": "big", "data": {"value": "s".repeat(MB12)}}).to_string());
    env.config(json!({"defaults": {"cache_ttl": "1m"}}));
    env.start();
    let f = env.m("big");
    assert_eq!(read(&f).unwrap().len(), MB12);
    // busybox cat goes through the page cache on this kernel; the pages must not outlive the read.
    let growth = (0..3)
        .map(|_| {
            let before = cached_kb();
            for _ in 0..2 {
                let out = run("/bin/busybox", &["cat", f.to_str().unwrap()]);
                assert_eq!(out.stdout.len(), MB12);
            }
            std::thread::sleep(Duration::from_millis(300));
            cached_kb() - before
        })
        .min()
        .unwrap();
    eprintln!("page cache growth after 24 MiB read by busybox cat: {growth} kB");
    assert!(growth < 4 * 1024, "sendfile readers left {growth} kB in the page cache");
}

const MMAP: &str = r#"
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
m = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
sys.stdout.write(m[:size].decode() + "\n--\n")
sys.stdout.flush()
time.sleep(float(sys.argv[2]))
sys.stdout.write(m[:size].decode())
sys.stdout.flush()
"#;

#[test]
fn a_private_mmap_does_not_outlive_the_lease() {
    let env = setup(&[("dyn:short", "royal", json!({"ttl": "2s", "format": "raw:Password"}))], json!({}));
    let f = env.m("dyn/short");
    let out = run("python3", &["-c", MMAP, f.to_str().unwrap(), "3.5"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let (before, after) = text.split_once("\n--\n").unwrap_or_else(|| panic!("{text:?} {:?}", out.status));
    assert!(before.starts_with("pw-"), "the mapping showed the credential while the lease lived: {before:?}");
    assert!(!after.contains(before), "after expiry the mapping still held the credential");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "a fault after expiry fails like a read: {:?}", out.status);
}
