//! Security and reliability scenarios that try to break leasefs: other users, process hardening, the
//! page cache, hostile catalogs, a vanished source, SIGTERM under load, and a soak.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn uid_of(user: &str) -> u32 {
    ok("id", &["-u", user]).trim().parse().unwrap()
}
fn gid_of(user: &str) -> u32 {
    ok("id", &["-g", user]).trim().parse().unwrap()
}

#[test]
fn group_readable_secrets_are_readable_by_that_group_only_and_nobody_writes_anywhere() {
    require_root("needs root to run children as other users");
    let mut env = Env::new();
    let daemon_gid = gid_of("daemon");
    env.doc(
        "a.json",
        &json!([
            {"path": "team:db", "attributes": {"group": daemon_gid, "mode": "0440"}, "data": {"value": "group-secret"}},
            {"path": "team:root", "data": {"value": "root-secret"}}
        ])
        .to_string(),
    );
    env.config(json!({"allow_other": true}));
    env.start();
    let db = env.m("team/db");
    let o = as_user("daemon", &["cat", db.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "group-secret", "{}", String::from_utf8_lossy(&o.stderr));
    for (user, file) in [("nobody", "team/db"), ("nobody", "team/root"), ("daemon", "team/root")] {
        let o = as_user(user, &["cat", env.m(file).to_str().unwrap()]);
        assert!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
            "{user} read {file}"
        );
    }
    for cmd in [
        vec!["touch", env.m("team/new").to_str().unwrap()],
        vec!["sh", "-c", &format!("echo x > '{}'", db.display())],
        vec!["sh", "-c", &format!("echo all > '{}'", env.m(".leasefs/revoke").display())],
        vec!["ls", env.m(".leasefs").to_str().unwrap()],
        vec!["cat", env.m(".leasefs/leases.json").to_str().unwrap()],
    ] {
        let o = as_user("nobody", &cmd);
        assert!(!o.status.success(), "nobody ran {cmd:?}");
    }
}

#[test]
fn the_daemon_is_not_dumpable_has_no_core_and_locks_secret_pages() {
    require_root("needs root to start a daemon as another user");
    // Run the daemon as nobody (through fusermount3): /proc/PID files of a non-dumpable process
    // belong to root, which is only visible when the process itself is not root.
    let mode = std::fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "/dev/fuse must be 0666 as distributions ship it (scripts/test.sh sets it)");
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    env.doc("a.json", r#"{"path": "app:key", "data": {"value": "locked-in-memory"}}"#);
    let cfg = env.config(json!({"audit_log": env.path("state/audit.jsonl")}));
    let nobody = (uid_of("nobody"), gid_of("nobody"));
    for p in [env.docs(), env.docs().join("a.json"), cfg.clone(), env.mnt(), env.path("state")] {
        std::os::unix::fs::chown(&p, Some(nobody.0), Some(nobody.1)).unwrap();
    }
    let log = env.path("daemon.log");
    let child = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid",
            &nobody.1.to_string(),
            "--clear-groups",
            "--",
            BIN,
            "--log-level",
            "debug",
            "mount",
        ])
        .arg(env.mnt())
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut d = Mounted { leave_mount: false, child: Some(child), mnt: env.mnt(), log: log.clone() };
    eventually(Duration::from_secs(10), "the nobody daemon to mount", || {
        is_mounted(&env.mnt()) && std::fs::read_to_string(&log).unwrap_or_default().contains("mounted")
    });
    let pid = d.pid();
    let status = Path::new(&format!("/proc/{pid}/status")).to_path_buf();
    let text = std::fs::read_to_string(&status).unwrap();
    assert!(text.lines().any(|l| l.starts_with("Uid:") && l.contains(&nobody.0.to_string())), "{text}");
    assert_eq!(std::fs::metadata(&status).unwrap().uid(), 0, "a dumpable process owns its /proc files");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(core.split_whitespace().collect::<Vec<_>>()[4..6], ["0", "0"], "{core}");
    // Root is kept out of a mount without allow_other; its owner reads, and the bytes are mlocked meanwhile.
    assert!(!run("cat", &[env.m("app/key").to_str().unwrap()]).status.success());
    let mut holder = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid", &nobody.1.to_string(), "--clear-groups", "--", "sh", "-c"])
        .arg(format!("exec 3< '{}'; cat <&3; exec sleep 3", env.m("app/key").display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(3), "VmLck > 0 while a secret is open", || {
        let s = std::fs::read_to_string(&status).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmLck:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            > 0
    });
    let _ = holder.kill();
    let out = holder.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "locked-in-memory");
    // The control directory belongs to the daemon's user: `leasefs leases` works for it.
    let leases = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid", &nobody.1.to_string(), "--clear-groups", "--", BIN, "leases"])
        .arg(env.mnt())
        .output()
        .unwrap();
    assert!(
        leases.status.success(),
        "leasefs leases as the daemon's user: {}",
        String::from_utf8_lossy(&leases.stderr)
    );
    assert!(d.stop().success(), "{}", std::fs::read_to_string(&log).unwrap());
    assert!(!is_mounted(&env.mnt()));
}

/// Reads the file whole through one descriptor, then prints how many of *its* pages the page
/// cache holds while that descriptor is still open (cachestat(2), syscall 451, Linux 6.5+): other
/// tests' reads at the same moment do not count.
const PAGES_AFTER_READ: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Range(ctypes.Structure): _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]
class Stat(ctypes.Structure): _fields_ = [(n, ctypes.c_uint64) for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]
fd = os.open(sys.argv[1], os.O_RDONLY)
n = 0
while True:
    b = os.read(fd, 1 << 20)
    if not b: break
    n += len(b)
r, s = Range(0, 0), Stat()
if libc.syscall(451, fd, ctypes.byref(r), ctypes.byref(s), 0) != 0:
    sys.exit("cachestat: " + os.strerror(ctypes.get_errno()))
print(n, s.cache)
"#;

/// (bytes read, pages of the file cached right after) for one read of `path`.
fn pages_after_read(path: &std::path::Path) -> (usize, u64) {
    let out = ok("python3", &["-c", PAGES_AFTER_READ, path.to_str().unwrap()]);
    let mut it = out.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    (it.next().unwrap() as usize, it.next().unwrap())
}

#[test]
fn contents_never_enter_the_page_cache_without_static_page_cache() {
    const MB12: usize = 12 * 1024 * 1024;
    let mut env = Env::new();
    let big = "s".repeat(MB12);
    env.doc("big.json", &json!({"path": "big", "data": {"value": big}}).to_string());
    // static_page_cache off (the default for remote sources): these contents take the path every
    // dynamic secret takes.
    let source = json!([{"type": "local", "prefix": "/", "path": env.docs(), "static_page_cache": false}]);
    env.config(json!({"sources": source, "defaults": {"cache_ttl": "1m"}}));
    env.start();
    let f = env.m("big");
    // Each read of 12 MiB through leasefs leaves none of the file's pages in the page cache.
    for _ in 0..2 {
        let (n, pages) = pages_after_read(&f);
        assert_eq!(n, MB12);
        assert!(pages < 16, "reading through leasefs left {pages} pages of the file in the page cache");
    }
    // Control: the same 12 MiB through bindfs (a FUSE filesystem using the page cache) is cached,
    // so the measurement can see FUSE pages.
    let src = env.path("plain");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("big"), &big).unwrap();
    let bmnt = env.path("bindfs");
    std::fs::create_dir(&bmnt).unwrap();
    ok("bindfs", &["-o", "ro", src.to_str().unwrap(), bmnt.to_str().unwrap()]);
    let (n, bindfs) = pages_after_read(&bmnt.join("big"));
    detach(&bmnt);
    assert_eq!(n, MB12);
    eprintln!("pages cached after a 12 MiB read: bindfs control {bindfs}");
    assert!(bindfs > 2048, "the control did not show FUSE page cache ({bindfs} pages): the measurement is blind");
}

#[test]
fn a_thousand_hostile_documents_among_a_thousand_good_ones() {
    let mut env = Env::new();
    for i in 0..1000 {
        env.doc(
            &format!("a-good-{i:04}.json"),
            &json!({"path": format!("good:{}:{i}", i % 10), "data": {"value": format!("v{i}")}}).to_string(),
        );
    }
    let deep = format!("{}1{}", "[".repeat(500), "]".repeat(500));
    for i in 0..1000 {
        let name = format!("z-bad-{i:04}.json");
        let text = match i % 8 {
            0 => format!("{{\"path\": \"bad:{i}\", \"data\": {{"),
            1 => format!("{{\"path\": {i}}}"),
            2 => format!("{{\"path\": \"..:etc:x{i}\"}}"),
            3 => json!({"path": format!("good:{}:{i}", i % 10), "data": {"value": "impostor"}}).to_string(),
            4 => format!("{{\"path\": \"deep:{i}\", \"data\": {{\"v\": {deep}}}}}"),
            5 => json!({"path": format!("long:{}{i}", "n".repeat(300))}).to_string(),
            6 => json!({"path": format!("ctl:a\u{7}b{i}")}).to_string(),
            _ => String::new(),
        };
        if i % 8 == 7 {
            let p = env.docs().join(&name);
            std::fs::write(&p, [b'{', 0xff, 0xfe, b'}']).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        } else {
            env.doc(&name, &text);
        }
    }
    env.config(json!({}));
    let t = Instant::now();
    env.start();
    let started = t.elapsed();
    let files = ok("find", &[env.m("good").to_str().unwrap(), "-type", "f"]);
    assert_eq!(files.lines().count(), 1000);
    for i in (0..1000).step_by(37) {
        assert_eq!(read(&env.m(&format!("good/{}/{i}", i % 10))).unwrap(), format!("v{i}"));
    }
    let o = run(BIN, &["check", "--config", env.path("config.json").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let named: std::collections::HashSet<&str> =
        err.lines().filter_map(|l| l.split("z-bad-").nth(1)).map(|r| &r[..4]).collect();
    assert_eq!(named.len(), 1000, "check must name every bad file");
    assert!(!err.contains("impostor"));
    eprintln!("hostile catalog: 2000 files mounted in {started:?}; check named {} bad files", named.len());
}

#[test]
fn a_vanished_local_source_keeps_its_listing_serves_cache_up_to_max_stale_and_recovers() {
    let mut env = Env::new();
    env.doc(
        "a.json",
        r#"[{"path": "app:cached", "data": {"value": "c1"}}, {"path": "app:cold", "data": {"value": "c2"}}]"#,
    );
    env.config(json!({"defaults": {"refresh": "1s", "cache_ttl": "1s", "max_stale": "2s"}}));
    env.start();
    // The payload is fetched during this cat: between `fetched` and `fetched + fetch`.
    let fetched = Instant::now();
    assert_eq!(cat(&env.m("app/cached")), "c1");
    let fetch = fetched.elapsed();
    let moved = env.path("docs-away");
    std::fs::rename(env.docs(), &moved).unwrap();
    eventually(Duration::from_secs(5), "source marked down", || {
        read(&env.m(".leasefs/status.json")).unwrap().contains("\"up\": false")
    });
    assert!(ok("ls", &[env.m("app").to_str().unwrap()]).contains("cold"), "the listing is kept");
    assert_eq!(errno_of(read(&env.m("app/cold"))), libc::EIO);
    assert_eq!(read(&env.m("app/cached")).unwrap(), "c1", "within cache_ttl + max_stale");
    // Read until refused: no read started after cache_ttl + max_stale (3 s) since the fetch is
    // served, and the refusal comes (EIO, never another error).
    loop {
        let started = fetched.elapsed();
        match read(&env.m("app/cached")) {
            Ok(v) => assert_eq!(v, "c1"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                break;
            }
        }
        assert!(started <= Duration::from_secs(3) + fetch, "served {started:?} after the fetch: beyond max_stale");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::rename(&moved, env.docs()).unwrap();
    eventually(Duration::from_secs(5), "recovery", || read(&env.m("app/cold")).is_ok());
    assert_eq!(cat(&env.m("app/cached")), "c1");
}

#[test]
fn a_failing_scripts_stderr_is_truncated_in_the_log() {
    let mut env = Env::new();
    let script = env.script();
    env.doc("d.json", &exec_catalog(&script, &[("dyn:noisy", "noisy", json!({}))]));
    env.config(json!({}));
    env.start();
    assert_eq!(errno_of(read(&env.m("dyn/noisy"))), libc::EIO);
    let log = env.log();
    let line = log.lines().find(|l| l.contains("issuance failed")).unwrap();
    assert!(line.contains("(10000 bytes)"), "{line}");
    assert!(line.len() < 2000, "stderr was not truncated: {} bytes", line.len());
}

#[test]
fn sigterm_with_reads_in_flight_completes_or_fails_cleanly_and_revokes_every_lease() {
    let mut env = Env::new();
    let script = env.script();
    env.doc(
        "d.json",
        &exec_catalog(
            &script,
            &[("dyn:a", "royal", json!({"ttl": "10m"})), ("dyn:slow", "sleep2", json!({"ttl": "10m"}))],
        ),
    );
    env.doc("s.json", r#"{"path": "static:s", "data": {"value": "s"}}"#);
    env.config(json!({}));
    env.start();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for i in 0..6 {
        let files = [env.m("dyn/a"), env.m("static/s"), env.m("dyn/slow")];
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut outcomes = (0, 0);
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                match read(&files[(i + outcomes.0 + outcomes.1) % if i == 0 { 3 } else { 2 }]) {
                    Ok(_) => outcomes.0 += 1,
                    Err(_) => outcomes.1 += 1,
                }
                worst = worst.max(t.elapsed());
            }
            (outcomes, worst)
        }));
    }
    std::thread::sleep(Duration::from_millis(800));
    let st = env.daemon().stop();
    assert!(st.success(), "{}", env.log());
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        let ((okc, errc), worst) = r.join().unwrap();
        assert!(okc > 0, "each reader read something before the stop");
        assert!(worst < Duration::from_secs(12), "a read hung for {worst:?} ({errc} errors)");
    }
    assert!(!is_mounted(&env.mnt()));
    // Every lease issued was revoked exactly once.
    let issued: Vec<String> = env
        .audit()
        .iter()
        .filter(|l| l["event"] == "issue")
        .map(|l| l["lease_id"].as_str().unwrap().to_string())
        .collect();
    let mut revoked = env.revoked();
    revoked.sort();
    let mut want = issued.clone();
    want.sort();
    assert!(!want.is_empty());
    assert_eq!(revoked, want);
}

/// A sample of `/.leasefs/metrics` (`name` with its labels); 0 when absent.
fn metric(env: &Env, sample: &str) -> u64 {
    let text = read(&env.m(".leasefs/metrics")).unwrap();
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

/// No revocation pending, and every lease issued counted revoked, for each issuer.
fn settled(env: &Env) -> bool {
    let counted = |what: &str, issuer: &str| metric(env, &format!("leasefs_{what}_total{{issuer=\"{issuer}\"}}"));
    metric(env, "leasefs_revocations_pending") == 0
        && ["jwt", "exec"].iter().all(|i| counted("issuances", i) == counted("revocations", i))
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}
fn rss_kb(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn soak_8_readers_5000_opens_each() {
    let mut env = Env::new();
    let script = env.script();
    let mut docs: Vec<serde_json::Value> =
        serde_json::from_str(&exec_catalog(&script, &[("dyn:exec", "royal", json!({"ttl": "2s"}))])).unwrap();
    docs.push(json!({"path": "base:jwt", "attributes": {"type": "jwt"}, "data": {"algorithm": "HS256", "key": "soak-key-0123456789abcdef0123456789"}}));
    docs.push(json!({"path": "dyn:jwt", "attributes": {"linkConfig": {"linkType": "dynamic", "linkedSecret": "base:jwt"}, "ttl": "2s", "format": "raw:token"}}));
    for i in 0..20 {
        docs.push(json!({"path": format!("static:s{i}"), "data": {"value": format!("static-{i}")}}));
    }
    env.doc("soak.json", &serde_json::to_string(&docs).unwrap());
    env.config(json!({"defaults": {"cache_ttl": "1s"}}));
    env.start();
    let pid = env.daemon().pid();
    let round = |n: usize| {
        let t = Instant::now();
        let handles: Vec<_> = (0..8)
            .map(|r| {
                let mnt = env.mnt();
                std::thread::spawn(move || {
                    let mut errors = 0;
                    for i in 0..n {
                        let f = match (i + r) % 50 {
                            0 => mnt.join("dyn/exec"),
                            k if k % 2 == 1 => mnt.join("dyn/jwt"),
                            k => mnt.join(format!("static/s{}", k % 20)),
                        };
                        match read(&f) {
                            Ok(s) if !s.is_empty() => {}
                            other => {
                                eprintln!("soak: {} read {other:?}", f.display());
                                errors += 1;
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        let errors: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        (errors, t.elapsed())
    };
    // A full-size warm-up round first: the allocator's high-water mark is not a leak. Then the
    // baseline, then the measured round.
    let (e, _) = round(5000);
    assert_eq!(e, 0);
    eventually(Duration::from_secs(15), "the lease table to drain after warm-up", || env.leases().is_empty());
    eventually(Duration::from_secs(10), "every revocation of the warm-up to finish", || settled(&env));
    let (fd0, rss0) = (fd_count(pid), rss_kb(pid));
    let (errors, took) = round(5000);
    assert_eq!(errors, 0, "errors during the soak");
    eventually(Duration::from_secs(15), "the lease table to drain", || env.leases().is_empty());
    // Decided: every lease issued is counted revoked and none is pending, so no revocation (a
    // second one of a lease, or a late one) can follow.
    eventually(Duration::from_secs(10), "every revocation to finish", || settled(&env));
    let (fd1, rss1) = (fd_count(pid), rss_kb(pid));
    let metrics = read(&env.m(".leasefs/metrics")).unwrap();
    let metric = |name: &str| -> u64 {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
    };
    let (jwt_issued, jwt_revoked) =
        (metric("leasefs_issuances_total{issuer=\"jwt\"}"), metric("leasefs_revocations_total{issuer=\"jwt\"}"));
    let (exec_issued, exec_revoked) =
        (metric("leasefs_issuances_total{issuer=\"exec\"}"), metric("leasefs_revocations_total{issuer=\"exec\"}"));
    let revoked_ids = env.revoked();
    let distinct: std::collections::HashSet<&String> = revoked_ids.iter().collect();
    eprintln!(
        "soak (after a 40000-open warm-up): 40000 opens in {took:?} ({:.0}/s); fds {fd0}->{fd1}; RSS {rss0}->{rss1} kB; jwt {jwt_issued} issued/{jwt_revoked} revoked; exec {exec_issued}/{exec_revoked}",
        40000.0 / took.as_secs_f64()
    );
    assert_eq!(jwt_issued, jwt_revoked);
    assert_eq!(exec_issued, exec_revoked);
    assert!(jwt_issued >= 40000, "{jwt_issued}");
    assert_eq!(revoked_ids.len() as u64, exec_issued, "exec revoke scripts ran once per lease");
    assert_eq!(distinct.len(), revoked_ids.len(), "a lease was revoked twice");
    assert!(fd1 <= fd0 + 2, "file descriptors leaked: {fd0} -> {fd1}");
    assert!(rss1 <= rss0 + 16 * 1024, "RSS grew from {rss0} kB to {rss1} kB");
}
