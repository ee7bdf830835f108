//! Scenarios for the foundation: mount a local catalog, list it, read static secrets, refuse writes, survive bad documents and crashes.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;

const CATALOG: &str = r#"[
  {"id": "id-pw", "path": "app:db:password", "data": {"value": "hunter2-static"}},
  {"id": "id-cfg", "path": "app/db/config", "attributes": {"owner": 0, "group": "1234", "mode": "0440"},
   "data": {"host": "db.internal", "port": 5432}},
  {"id": "id-url", "path": "app:db:url", "attributes": {"format": "template:postgres://{{user}}@{{host}}/app"},
   "data": {"user": "app", "host": "db.internal"}},
  {"id": "id-env", "path": "app:env", "attributes": {"format": "env"}, "data": {"api_key": "k'1"}},
  {"id": "id-world", "path": "public:motd", "attributes": {"mode": "0444"}, "data": {"value": "hello"}},
  {"path": "base:hidden", "attributes": {"type": "exec"}, "data": {"command": ["/bin/true"]}}
]"#;

fn mounted(extra: serde_json::Value) -> Env {
    let mut env = Env::new();
    env.doc("app.json", CATALOG);
    env.config(extra);
    env.start();
    env
}

#[test]
fn ls_find_and_stat_show_the_tree_with_owner_group_and_mode() {
    let env = mounted(serde_json::json!({}));
    let mnt = env.mnt();
    let m = mnt.to_str().unwrap();

    let mut found: Vec<String> = ok("find", &[m, "-type", "f", "-not", "-path", "*/.leasefs/*"])
        .lines()
        .map(|l| l.strip_prefix(m).unwrap().to_string())
        .collect();
    found.sort();
    assert_eq!(found, ["/app/db/config", "/app/db/password", "/app/db/url", "/app/env", "/public/motd"]);

    // Defaults: files 0400 and directories 0555, owned by the daemon's user (root in CI); a local
    // static secret has its exact size.
    let st = ok("stat", &["-c", "%a %u %g %F", env.m("app/db/password").to_str().unwrap()]);
    assert_eq!(st.trim(), format!("400 {} {} regular file", unsafe { libc::geteuid() }, unsafe { libc::getegid() }));
    let st = ok("stat", &["-c", "%a %F", env.m("app/db").to_str().unwrap()]);
    assert_eq!(st.trim(), "555 directory");
    // Per-document owner, group (numeric string) and mode.
    let st = ok("stat", &["-c", "%a %u %g", env.m("app/db/config").to_str().unwrap()]);
    assert_eq!(st.trim(), "440 0 1234");

    let lr = ok("ls", &["-lR", m]);
    assert!(lr.contains("-r--r----- 1 root 1234"), "{lr}");
    // A base secret is not listed unless exposed.
    assert!(!lr.contains("hidden"), "{lr}");
}

#[test]
fn cat_prints_static_secrets_in_their_format() {
    let env = mounted(serde_json::json!({}));
    assert_eq!(cat(&env.m("app/db/password")), "hunter2-static");
    let cfg: serde_json::Value = serde_json::from_str(&cat(&env.m("app/db/config"))).unwrap();
    assert_eq!(cfg, serde_json::json!({"host": "db.internal", "port": 5432}));
    assert_eq!(cat(&env.m("app/db/url")), "postgres://app@db.internal/app");
    assert_eq!(cat(&env.m("app/env")), "API_KEY='k'\\''1'\n");
    // fstat on the open handle gives the real size of its contents.
    let f = std::fs::File::open(env.m("app/db/password")).unwrap();
    assert_eq!(f.metadata().unwrap().size(), "hunter2-static".len() as u64);
    // stat by anyone without a handle: the size the listing found ("hello"), no open involved.
    assert_eq!(std::fs::metadata(env.m("public/motd")).unwrap().size(), 5);
    drop(f);
}

#[test]
fn writes_creates_renames_and_chmod_are_erofs_and_unknown_names_enoent() {
    let env = mounted(serde_json::json!({}));
    let pw = env.m("app/db/password");
    let p = pw.to_str().unwrap();
    let erofs = "Read-only file system";
    assert!(fails("touch", &[env.m("app/new").to_str().unwrap()]).contains(erofs));
    assert!(fails("mkdir", &[env.m("app/dir").to_str().unwrap()]).contains(erofs));
    assert!(fails("rm", &["-f", p]).contains(erofs));
    assert!(fails("mv", &[p, env.m("app/db/moved").to_str().unwrap()]).contains(erofs));
    assert!(fails("chmod", &["0644", p]).contains(erofs));
    assert!(fails("ln", &["-s", "/etc/passwd", env.m("app/link").to_str().unwrap()]).contains(erofs));
    assert_eq!(errno_of(std::fs::OpenOptions::new().write(true).open(&pw)), libc::EROFS);
    assert_eq!(errno_of(std::fs::OpenOptions::new().append(true).open(&pw)), libc::EROFS);
    assert_eq!(errno_of(std::fs::File::open(env.m("app/nope"))), libc::ENOENT);
    assert_eq!(errno_of(std::fs::metadata(env.m("nope/deeper/still"))), libc::ENOENT);
    assert!(fails("cat", &[env.m("app/db/nope").to_str().unwrap()]).contains("No such file or directory"));
    // The value is untouched.
    assert_eq!(cat(&pw), "hunter2-static");
}

#[test]
fn getfattr_shows_metadata_never_values() {
    let env = mounted(serde_json::json!({}));
    let out = ok("getfattr", &["-d", "-m", "user.leasefs", env.m("app/db/password").to_str().unwrap()]);
    assert!(out.contains("user.leasefs.kind=\"static\""), "{out}");
    assert!(out.contains("user.leasefs.id=\"id-pw\""), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
}

#[test]
fn malformed_and_hostile_documents_are_skipped_and_named_while_the_rest_is_served() {
    let mut env = Env::new();
    env.doc("good.json", r#"{"path": "good:one", "data": {"value": "fine"}}"#);
    env.doc("syntax.json", "{\n  \"path\": \"bad:syntax\",\n  \"data\": {\"value\": }\n}");
    env.doc("types.json", "[\n  {\"path\": \"good:two\", \"data\": {\"value\": \"also fine\"}},\n  {\"path\": 42}\n]");
    env.doc(
        "traversal.json",
        "[{\"path\": \"..:..:etc:passwd\", \"data\": {}},\n {\"path\": \"a//b\"},\n {\"path\": \"x:y\\u0000z\"}]",
    );
    env.doc("zz-dupe.json", r#"{"path": "good:one", "data": {"value": "impostor"}}"#);
    env.doc(
        "deep.json",
        &format!("{{\"path\": \"deep\", \"data\": {{\"v\": {}1{}}}}}", "[".repeat(10_000), "]".repeat(10_000)),
    );
    env.doc("notjson.json", "this is not json");
    env.doc("nested/dir/three.json", r#"{"path": "good:three", "data": {"value": "3"}}"#);
    env.doc("ignored.txt", "not a document");
    env.config(serde_json::json!({}));
    env.start();

    assert_eq!(cat(&env.m("good/one")), "fine");
    assert_eq!(cat(&env.m("good/two")), "also fine");
    assert_eq!(cat(&env.m("good/three")), "3");
    let mut names: Vec<String> =
        std::fs::read_dir(env.mnt()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, [".leasefs", "good"]);

    let log = env.log();
    for needle in [
        "syntax.json:3:",
        "types.json:3:",
        "traversal.json:1:2",
        "traversal.json:2:2",
        "traversal.json:3:2",
        "zz-dupe.json",
        "deep.json:1:",
        "notjson.json:1:",
    ] {
        assert!(log.contains(needle), "log does not name {needle}:\n{log}");
    }

    // `leasefs check` names every bad file with line and column and exits non-zero.
    let o = run(BIN, &["check", "--config", env.path("config.json").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in
        ["syntax.json:3:", "types.json:3:", "traversal.json:1:2", "zz-dupe.json", "deep.json:1:", "notjson.json:1:"]
    {
        assert!(err.contains(needle), "check does not name {needle}:\n{err}");
    }
    assert!(!err.contains("impostor") && !err.contains("also fine"), "check printed a value:\n{err}");
}

#[test]
fn check_passes_a_good_catalog_and_refuses_a_bad_config() {
    let env = Env::new();
    env.doc("app.json", CATALOG);
    let cfg = env.config(serde_json::json!({}));
    let o = run(BIN, &["check", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok: 5 static"));

    std::fs::write(&cfg, "{\n  \"sources\": [\n    {\"type\": \"local\", \"path\": 7}\n  ]\n}").unwrap();
    let o = run(BIN, &["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("config.json:3:"), "{err}");
}

#[test]
fn an_edited_value_shows_up_after_cache_ttl_and_sighup_picks_up_new_documents() {
    let mut env = Env::new();
    env.doc("a.json", r#"{"path": "rotating", "data": {"value": "v1"}}"#);
    env.config(serde_json::json!({"defaults": {"cache_ttl": "2s", "refresh": "1h"}}));
    env.start();
    assert_eq!(cat(&env.m("rotating")), "v1");
    env.doc("a.json", r#"{"path": "rotating", "data": {"value": "v2"}}"#);
    // Within cache_ttl the cached value is served; after it, the new one.
    assert_eq!(cat(&env.m("rotating")), "v1");
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(cat(&env.m("rotating")), "v2");

    // A new document appears after SIGHUP, without unmounting; an open handle keeps what it read.
    let held = std::fs::File::open(env.m("rotating")).unwrap();
    env.doc("b.json", r#"{"path": "added:later", "data": {"value": "new"}}"#);
    assert_eq!(errno_of(std::fs::metadata(env.m("added/later"))), libc::ENOENT);
    env.daemon().signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while read(&env.m("added/later")).is_err() {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload:\n{}", env.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cat(&env.m("added/later")), "new");
    let mut s = String::new();
    std::io::Read::read_to_string(&mut &held, &mut s).unwrap();
    assert_eq!(s, "v2");
}

/// The kernel may keep names, attributes and whole listings for `attr_ttl` (here an hour); a reload
/// still shows at once what changed, and inode numbers stay with their paths.
#[test]
fn listings_are_kept_by_the_kernel_and_a_reload_still_shows_changes_at_once() {
    let mut env = Env::new();
    env.doc("a.json", r#"[{"path": "team:x", "data": {"value": "1"}}, {"path": "team:y", "data": {"value": "2"}}]"#);
    env.config(serde_json::json!({"defaults": {"attr_ttl": "1h", "refresh": "1h"}}));
    env.start();
    let dir = env.m("team");
    let d = dir.to_str().unwrap();
    let readdirs = || {
        let m = cat(&env.m(".leasefs/metrics"));
        let count = |op: &str| {
            let line =
                m.lines().find(|l| l.starts_with(&format!("leasefs_fuse_requests_total{{op=\"{op}\"}}"))).unwrap();
            line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
        };
        count("readdir") + count("readdirplus")
    };
    assert_eq!(ok("ls", &[d]), "x\ny\n");
    let ino_x = ok("stat", &["-c", "%i", env.m("team/x").to_str().unwrap()]);
    // Listings after the first come from the kernel's cache: the daemon is not asked again.
    let m = env.mnt();
    let first = ok("find", &[m.to_str().unwrap()]);
    let before = readdirs();
    assert_eq!(ok("ls", &[d]), "x\ny\n");
    assert_eq!(ok("find", &[m.to_str().unwrap()]), first);
    assert_eq!(readdirs(), before, "a cached listing reached the daemon");

    // y goes, z comes, x's mode changes: all visible right after SIGHUP despite the hour-long caches.
    env.doc(
        "a.json",
        r#"[{"path": "team:x", "attributes": {"mode": "0440"}, "data": {"value": "1"}}, {"path": "team:z", "data": {"value": "3"}}]"#,
    );
    env.daemon().signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), "the reload to show in ls", || ok("ls", &[d]) == "x\nz\n");
    assert_eq!(errno_of(std::fs::metadata(env.m("team/y"))), libc::ENOENT);
    assert_eq!(cat(&env.m("team/z")), "3");
    let st = ok("stat", &["-c", "%i %a", env.m("team/x").to_str().unwrap()]);
    assert_eq!(st.trim(), format!("{} 440", ino_x.trim()), "x keeps its inode number and shows its new mode");
}

#[test]
fn sigterm_unmounts_cleanly_even_with_a_file_open() {
    let mut env = mounted(serde_json::json!({}));
    let held = std::fs::File::open(env.m("app/db/password")).unwrap();
    let st = env.daemon().stop();
    assert!(st.success(), "exit status {st}:\n{}", env.log());
    assert!(!is_mounted(&env.mnt()), "still mounted after SIGTERM");
    drop(held);
    // The directory is an ordinary empty directory again.
    assert_eq!(std::fs::read_dir(env.mnt()).unwrap().count(), 0);
}

#[test]
fn a_mountpoint_left_dead_by_kill_9_is_recovered_on_restart() {
    let mut env = mounted(serde_json::json!({}));
    env.daemon().kill9();
    assert!(is_mounted(&env.mnt()), "kill -9 should leave the mount behind");
    assert_eq!(errno_of(std::fs::metadata(env.m("app"))), libc::ENOTCONN);
    env.start();
    assert_eq!(cat(&env.m("app/db/password")), "hunter2-static");
    assert!(env.log().contains("dead mount"), "{}", env.log());
}

#[test]
fn a_second_daemon_on_a_live_mount_is_refused() {
    let env = mounted(serde_json::json!({}));
    let o = run(BIN, &["mount", env.mnt().to_str().unwrap(), "--config", env.path("config.json").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already a mount point"));
    assert_eq!(cat(&env.m("app/db/password")), "hunter2-static");
}

#[test]
fn other_users_are_kept_out_by_mode_and_by_allow_other() {
    require_root("needs root to run a child as nobody");
    // Without allow_other only the mounting user gets in, whatever the mode.
    let env = mounted(serde_json::json!({}));
    let o = as_user("nobody", &["cat", env.m("public/motd").to_str().unwrap()]);
    assert!(!o.status.success());
    drop(env);

    // With allow_other, the mode decides: 0444 readable, 0400 root-only.
    let env = mounted(serde_json::json!({"allow_other": true}));
    let o = as_user("nobody", &["cat", env.m("public/motd").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello");
    let o = as_user("nobody", &["cat", env.m("app/db/password").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied"));
    let o = as_user("nobody", &["ls", env.m(".leasefs").to_str().unwrap()]);
    assert!(!o.status.success(), "nobody listed the control directory");
}

#[test]
fn group_or_world_readable_documents_and_config_are_refused_unless_insecure_perms() {
    use std::os::unix::fs::PermissionsExt;
    let mut env = Env::new();
    let good = env.doc("good.json", r#"{"path": "good", "data": {"value": "1"}}"#);
    let loose = env.doc("loose.json", r#"{"path": "loose", "data": {"value": "2"}}"#);
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = env.config(serde_json::json!({}));
    let o = run(BIN, &["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("loose.json: readable or writable by group or others"));
    env.start();
    assert_eq!(cat(&env.m("good")), "1");
    assert_eq!(errno_of(std::fs::metadata(env.m("loose"))), libc::ENOENT);
    drop(env.mount.take());

    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(BIN, &["mount", env.mnt().to_str().unwrap(), "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("group or others"));

    env.start_with(&["--insecure-perms"]);
    assert_eq!(cat(&env.m("loose")), "2");
    let _ = good;
}

#[test]
fn everyday_probes_of_programs_are_answered_quietly() {
    // Python's open() sends an ioctl (isatty) per file, cp tries copy_file_range, less seeks:
    // each used to log a warning, enough to fill and block a log pipe nobody reads.
    let env = mounted(serde_json::json!({}));
    let p = env.m("public/motd");
    let script = format!("import os\nfor _ in range(200):\n    open('{}').read()\n", p.display());
    ok("python3", &["-c", &script]);
    let copy = env.path("motd-copy");
    ok("cp", &[p.to_str().unwrap(), copy.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), "hello");
    let o = run("python3", &["-c", &format!("import sys\nf=open('{}')\nprint(f.isatty())", p.display())]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "False");
    let log = env.log();
    assert!(
        !log.contains("Not Implemented"),
        "{}",
        log.lines().filter(|l| l.contains("Not Implemented")).take(3).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn check_reads_and_writes_nothing_to_disk() {
    let env = Env::new();
    env.doc("a.json", r#"{"path": "a", "data": {"value": "1"}}"#);
    let fresh = env.path("never");
    let cfg =
        env.config(serde_json::json!({"state_dir": fresh.join("state"), "audit_log": fresh.join("log/audit.jsonl")}));
    let o = run(BIN, &["check", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!fresh.exists(), "check created {}", fresh.display());
}

/// SPEC §2 (revised): a local source's static secrets go through the kernel page cache. `stat`
/// shows the exact size before any open, a warm `cat` costs the daemon an open and a release and
/// nothing else, and an edit of the same length still shows up at once after a reload.
#[test]
fn static_secrets_are_served_from_the_page_cache_until_their_document_changes() {
    let mut env = Env::new();
    env.doc("a.json", r#"{"path": "app:token", "data": {"value": "first-value"}}"#);
    env.config(serde_json::json!({"defaults": {"refresh": "1h"}}));
    env.start();
    let f = env.m("app/token");
    let p = f.to_str().unwrap();
    assert_eq!(ok("stat", &["-c", "%s", p]).trim(), "11", "exact size before any open");
    assert_eq!(cat(&f), "first-value");
    // The contents stay in the page cache after close, as they do for the document file itself.
    let resident = ok("fincore", &["--noheadings", "--bytes", "--output", "RES", p]);
    assert_eq!(resident.trim(), "4096", "one page resident after close");

    // A warm cat: the daemon sees its open and release only (reading the metrics costs requests
    // of its own, measured first and taken off).
    let cost = requests_of(&env, || assert_eq!(ok("cat", &[p]), "first-value"));
    assert_eq!(cost, [("open".to_string(), 1), ("release".to_string(), 1)]);

    // The same length, other contents: the reload drops the cached pages along with the attributes.
    env.doc("a.json", r#"{"path": "app:token", "data": {"value": "other-value"}}"#);
    env.daemon().signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), "the edit to show after SIGHUP", || cat(&f) == "other-value");
    assert_eq!(ok("stat", &["-c", "%s", p]).trim(), "11");
}
