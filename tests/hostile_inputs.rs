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
#[test]
fn what_a_sendfile_reader_pulled_into_the_page_cache_is_gone_after_close() {
    const MB12: usize = 12 * 1024 * 1024;
    let mut env = Env::new();
    env.doc("big.json", &json!({"path": "big", "data": {"value": "s".repeat(MB12)}}).to_string());
    // static_page_cache off (the default for remote sources): these contents take the path every
    // dynamic secret takes.
    let source = json!([{"type": "local", "prefix": "/", "path": env.docs(), "static_page_cache": false}]);
    env.config(json!({"sources": source, "defaults": {"cache_ttl": "1m"}}));
    env.start();
    let f = env.m("big");
    assert_eq!(read(&f).unwrap().len(), MB12);
    // busybox cat goes through the page cache on this kernel; the pages must not outlive the read.
    // Measured on the file itself (cachestat(2), Linux 6.5+), so that other tests' reads at the
    // same moment do not count, through a descriptor opened *before* the reads (an open without
    // FOPEN_KEEP_CACHE drops the pages itself, which would hide a missing drop at close).
    let out = ok("python3", &["-c", CACHESTAT, f.to_str().unwrap(), &MB12.to_string()]);
    let pages: Vec<u64> = out.split_whitespace().map(|p| p.parse().unwrap()).collect();
    eprintln!("pages of the 12 MiB file cached: {pages:?} (after the reads, then up to 5 s later)");
    assert!(pages[0] > 1000, "busybox went through the page cache (or this test proves nothing): {pages:?}");
    assert!(*pages.last().unwrap() < 64, "sendfile readers left pages in the page cache: {pages:?}");
}

/// Holds the file open, runs `busybox cat` on it twice, and prints how many of its pages the page
/// cache holds (cachestat(2), syscall 451) while the second read is open, then until they are
/// gone (at most 5 s).
const CACHESTAT: &str = r#"
import ctypes, os, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
class Range(ctypes.Structure): _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]
class Stat(ctypes.Structure): _fields_ = [(n, ctypes.c_uint64) for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]
path, size = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
def cached():
    r, s = Range(0, 0), Stat()
    if libc.syscall(451, fd, ctypes.byref(r), ctypes.byref(s), 0) != 0:
        sys.exit("cachestat: " + os.strerror(ctypes.get_errno()))
    return s.cache
subprocess.run(["/bin/busybox", "cat", path], stdout=subprocess.DEVNULL, check=True)
p = subprocess.Popen(["sh", "-c", 'exec 3< "$1"; /bin/busybox cat <&3 | wc -c; read x', "sh", path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
n = int(p.stdout.readline())
assert n == size, n
seen = [cached()]
p.stdin.close(); p.wait()
deadline = time.time() + 5
while seen[-1] >= 64 and time.time() < deadline:
    time.sleep(0.05)
    seen.append(cached())
print(seen[0], seen[-1])
"#;

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

#[test]
fn a_writable_documents_directory_does_not_let_another_user_run_programs_as_the_daemon() {
    require_root("documents owned by another user, a daemon running as root");
    let mut env = Env::new();
    let good = env.doc("good.json", r#"{"path": "app:key", "data": {"value": "fine"}}"#);
    // The careless operator's directory: anyone may drop a document in it.
    let open_dir = env.docs().join("dropbox");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let pwned = env.path("pwned");
    let evil = json!([
        {"path": "base:evil", "attributes": {"type": "exec"},
         "data": {"command": ["/bin/sh", "-c", format!("id > {}; echo '{{\"p\": \"x\"}}'", pwned.display())]}},
        dynamic("evil:run", "base:evil", json!({"mode": "0444"})),
    ]);
    let nobody = (run("id", &["-u", "nobody"]).stdout, run("id", &["-g", "nobody"]).stdout);
    let (uid, gid): (u32, u32) = (
        String::from_utf8_lossy(&nobody.0).trim().parse().unwrap(),
        String::from_utf8_lossy(&nobody.1).trim().parse().unwrap(),
    );
    let dropped = open_dir.join("evil.json");
    std::fs::write(&dropped, evil.to_string()).unwrap();
    std::fs::set_permissions(&dropped, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&dropped, Some(uid), Some(gid)).unwrap();
    // A document owned by another user in a good directory, and a program others can write.
    let foreign = env.doc("foreign.json", &json!([{"path": "foreign:x", "data": {"value": "y"}}]).to_string());
    std::os::unix::fs::chown(&foreign, Some(uid), Some(gid)).unwrap();
    let script = env.path("writable.sh");
    std::fs::write(&script, "#!/bin/sh\necho '{\"p\": \"x\"}'\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o777)).unwrap();
    env.doc(
        "w.json",
        &json!([
            {"path": "base:w", "attributes": {"type": "exec"}, "data": {"command": [script]}},
            dynamic("w:run", "base:w", json!({})),
        ])
        .to_string(),
    );
    let cfg = env.config(json!({}));
    // check names each one and fails.
    let o = run(BIN, &["check", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("dropbox") && err.contains("writable by group or others"), "{err}");
    assert!(err.contains("foreign.json") && err.contains("not by root or the daemon's user"), "{err}");
    assert!(err.contains("writable.sh") && err.contains("not trusted"), "{err}");
    // The daemon serves the rest, never reads the dropped document, never runs the writable script.
    env.start();
    assert_eq!(cat(&env.m("app/key")), "fine");
    assert_eq!(errno_of(std::fs::metadata(env.m("evil/run"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::metadata(env.m("foreign/x"))), libc::ENOENT);
    // Not served at all: what check refuses, the mount does not list.
    assert_eq!(errno_of(std::fs::metadata(env.m("w/run"))), libc::ENOENT);
    assert!(!pwned.exists(), "a dropped document ran a program as the daemon");
    assert!(env.log().contains("not trusted"), "{}", env.log());
    // --insecure-perms relaxes it, loudly.
    drop(env.mount.take());
    env.start_with(&["--insecure-perms"]);
    assert!(env.log().contains("--insecure-perms: ownership and mode checks"), "{}", env.log());
    assert!(std::fs::metadata(env.m("foreign/x")).is_ok());
    let _ = good;
}

#[test]
fn two_hundred_concurrent_cats_with_reuse_uid_issue_one_credential() {
    let env = setup(&[("dyn:shared", "royal", json!({"reuse": "uid", "format": "raw:Password"}))], json!({}));
    let f = env.m("dyn/shared");
    let readers: Vec<_> = (0..200)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || std::process::Command::new("cat").arg(&f).output().unwrap())
        })
        .collect();
    let outs: std::collections::HashSet<String> = readers
        .into_iter()
        .map(|r| {
            let o = r.join().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8(o.stdout).unwrap()
        })
        .collect();
    assert_eq!(outs.len(), 1, "every reader got the one shared credential");
    assert_eq!(env.lines("issued.txt").len(), 1, "one issuance for 200 concurrent opens");
}

#[test]
fn a_far_expiry_is_rendered_as_the_leases_and_sdks_see_the_truth() {
    let env = setup(
        &[
            ("dyn:far", "far", json!({"max_ttl": "1m", "format": "json"})),
            ("dyn:aws", "aws", json!({"max_ttl": "1m", "format": "credential_process"})),
        ],
        json!({}),
    );
    let limit = chrono::Utc::now() + chrono::Duration::seconds(65);
    let far: serde_json::Value = serde_json::from_str(&cat(&env.m("dyn/far"))).unwrap();
    let t = chrono::DateTime::parse_from_rfc3339(far["ExpiresAt"].as_str().unwrap()).unwrap();
    assert!(t < limit, "the issuer said 2099; the file must say the lease's expiry: {far}");
    let aws: serde_json::Value = serde_json::from_str(&cat(&env.m("dyn/aws"))).unwrap();
    let t = chrono::DateTime::parse_from_rfc3339(aws["Expiration"].as_str().unwrap()).unwrap();
    assert!(t < limit, "the issuer said +10 min; max_ttl is 1 min: {aws}");
}

/// Processes (not zombies) in process group `pgid`, from /proc.
fn live_in_group(pgid: i32) -> usize {
    let stats = std::fs::read_dir("/proc").unwrap().filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        name.parse::<u32>().ok()?;
        std::fs::read_to_string(format!("/proc/{name}/stat")).ok()
    });
    // Fields after the command (which may hold spaces) begin at the last ')': state, ppid, pgrp.
    stats
        .filter(|s| {
            let rest: Vec<&str> = s.rsplit_once(')').map_or("", |r| r.1).split_whitespace().collect();
            rest.len() > 2 && rest[0] != "Z" && rest[2] == pgid.to_string()
        })
        .count()
}

#[test]
fn kill_9_during_an_exec_issuance_kills_the_script_and_its_children_and_the_restart_revokes() {
    let mut env = setup(&[("dyn:mint", "slowmint", json!({"format": "raw:Password"}))], json!({}));
    let f = env.m("dyn/mint");
    let reader = std::thread::spawn(move || read(&f));
    eventually(Duration::from_secs(5), "the script to start", || env.path("slowmint.pid").exists());
    let pid: i32 = std::fs::read_to_string(env.path("slowmint.pid")).unwrap().trim().parse().unwrap();
    let lease = env.lines("issued.txt")[0].clone();
    // The intent is on disk before the program runs.
    let journal = std::fs::read_to_string(env.path("state/journal.jsonl")).unwrap();
    assert!(journal.contains(&lease) && journal.contains("\"intent\""), "{journal}");
    // The script, its background subshell and that one's `sleep`.
    eventually(Duration::from_secs(3), "the script's child to start", || live_in_group(pid) >= 3);
    env.daemon().kill9();
    let _ = reader.join();
    eventually(Duration::from_secs(3), "the script to die with the daemon", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    // The script ran in its own process group: once no live process is left in it, nothing of
    // the script can mint any more, and whether it did is decided.
    eventually(Duration::from_secs(3), "every process of the script's group to die too", || live_in_group(pid) == 0);
    assert!(!env.path("minted.txt").exists(), "the script went on minting after the daemon died");
    assert!(!env.path("late-child").exists(), "the script's child outlived the daemon");
    env.start();
    eventually(Duration::from_secs(10), "the restart to revoke the intent", || env.revoked().contains(&lease));
}

#[test]
fn a_failing_script_with_a_megabyte_of_stderr_fails_at_once_and_its_stderr_stays_out_of_the_audit_log() {
    let env = setup(&[("dyn:loud", "loud", json!({}))], json!({"issue_timeout": "20s"}));
    let t = Instant::now();
    assert_eq!(errno_of(read(&env.m("dyn/loud"))), libc::EIO);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}: stderr was not drained", t.elapsed());
    let audit = std::fs::read_to_string(env.path("audit.jsonl")).unwrap();
    assert!(audit.contains("\"error\""), "the failure is audited: {audit}");
    assert!(!audit.contains("secret-in-stderr") && !audit.contains("eeee"), "stderr reached the audit log");
    assert!(env.log().contains("stderr"), "stderr goes to the daemon log (truncated)");
}

#[test]
fn a_value_in_a_malformed_document_never_reaches_check_or_the_log() {
    let mut env = Env::new();
    env.doc("bad.json", "{\n  \"path\": \"app:db\",\n  \"data\": \"hunter2\"\n}\n");
    env.doc("bad2.json", "[{\"path\": \"x\", \"attributes\": {\"ttl\": \"hunter3\"}}]");
    let cfg = env.config(json!({}));
    let o = run(BIN, &["check", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("bad.json:3:") && err.contains("invalid type: string"), "named by position and type: {err}");
    assert!(!err.contains("hunter2") && !err.contains("hunter3"), "check quoted a value: {err}");
    env.start();
    assert!(env.log().contains("bad.json"), "{}", env.log());
    assert!(!env.log().contains("hunter2") && !env.log().contains("hunter3"), "the log quoted a value");
}

#[test]
fn one_uid_cannot_hold_more_than_max_leases_per_uid() {
    let env = setup(&[("dyn:q", "royal", json!({}))], json!({"max_leases_per_uid": 3}));
    let f = env.m("dyn/q");
    let held: Vec<std::fs::File> = (0..3).map(|_| std::fs::File::open(&f).unwrap()).collect();
    let e = std::fs::File::open(&f).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    let audit = std::fs::read_to_string(env.path("audit.jsonl")).unwrap();
    assert!(audit.lines().any(|l| l.contains("\"deny\"") && l.contains("\"quota\"")), "{audit}");
    drop(held);
    // Closed, their bytes are gone and they no longer count.
    assert!(std::fs::File::open(&f).is_ok());
}

#[test]
fn hostile_names_and_files_are_named_and_dangling_links_fail_check() {
    let mut env = Env::new();
    let deep = (0..500).map(|i| format!("d{i}")).collect::<Vec<_>>().join(":");
    env.doc(
        "names.json",
        &json!([
            {"path": deep, "data": {"value": "deep"}},
            {"path": "spoof:rtl\u{202e}txt.sh", "data": {"value": "x"}},
            {"path": "spoof:zero\u{200b}width", "data": {"value": "x"}},
            {"path": "ok:name", "data": {"value": "fine"}},
            dynamic("dangling:x", "base:nowhere", json!({})),
        ])
        .to_string(),
    );
    let fifo = env.docs().join("pipe.json");
    ok("mkfifo", &[fifo.to_str().unwrap()]);
    let cfg = env.config(json!({}));
    let o = run(BIN, &["check", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("more than 64 segments"), "{err}");
    assert_eq!(err.matches("invisible or bidirectional").count(), 2, "{err}");
    assert!(err.contains("pipe.json: not a regular file"), "{err}");
    assert!(err.contains("dangling/x links to \"base:nowhere\""), "{err}");
    env.start();
    assert_eq!(cat(&env.m("ok/name")), "fine");
}

#[test]
fn the_revoke_file_takes_ids_in_order_refuses_empty_writes_and_audits_who() {
    let env = setup(&[("dyn:r", "royal", json!({}))], json!({}));
    let f = std::fs::File::open(env.m("dyn/r")).unwrap();
    let id = env.leases()[0]["id"].as_str().unwrap().to_string();
    let revoke = env.m(".leasefs/revoke");
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let mut w = std::fs::OpenOptions::new().write(true).open(&revoke).unwrap();
    assert_eq!(w.write(b"\n").unwrap_err().raw_os_error(), Some(libc::EINVAL), "an empty line");
    let w2 = std::fs::OpenOptions::new().write(true).open(&revoke).unwrap();
    assert_eq!(
        w2.write_at(id.as_bytes(), 100).unwrap_err().raw_os_error(),
        Some(libc::EINVAL),
        "a write past the start"
    );
    let mut w3 = std::fs::OpenOptions::new().write(true).open(&revoke).unwrap();
    w3.write_all(format!("{id}\n").as_bytes()).unwrap();
    drop(f);
    eventually(Duration::from_secs(5), "the revocation", || env.revoked().contains(&id));
    let audit = std::fs::read_to_string(env.path("audit.jsonl")).unwrap();
    let rev = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "revoke" && v["outcome"] == "revoke")
        .unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(rev["uid"], 0, "the revoke names who asked: {rev}");
    assert!(audit.lines().filter(|l| l.contains("\"refused\"")).count() >= 2, "refused writes are audited: {audit}");
}

#[test]
fn the_log_has_no_colour_codes_when_it_is_not_a_terminal() {
    let env = setup(&[], json!({}));
    assert!(env.log().contains("mounted"));
    assert!(!env.log().contains('\u{1b}'), "ANSI escape codes in a log file");
}

#[test]
fn a_legacy_app_polling_a_dynamic_file_is_bounded_per_minute_with_eagain() {
    let env = setup(&[("dyn:polled", "royal", json!({"max_issues_per_minute": 5}))], json!({}));
    let f = env.m("dyn/polled");
    let results: Vec<i32> = (0..12).map(|_| errno_of(read(&f))).collect();
    assert_eq!(results.iter().filter(|e| **e == 0).count(), 5, "{results:?}");
    assert!(results[5..].iter().all(|e| *e == libc::EAGAIN), "{results:?}");
    assert_eq!(env.lines("issued.txt").len(), 5, "no more than 5 credentials minted");
    let audit = std::fs::read_to_string(env.path("audit.jsonl")).unwrap();
    assert!(audit.lines().any(|l| l.contains("\"deny\"") && l.contains("\"busy\"")), "{audit}");
    let metrics = read(&env.m(".leasefs/metrics")).unwrap();
    assert!(metrics.contains("reason=\"busy\"} 7"), "{metrics}");
}
