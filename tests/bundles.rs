//! Bundles (SPEC §9.2): a dynamic document with `attributes.files` is a directory whose files
//! share one lease per binding — so an app reading a username and a password from two files
//! gets the two halves of one credential.

mod common;

use std::process::Command;
use std::time::Duration;

use common::backends::pg;
use common::*;
use serde_json::json;

fn pair_files() -> serde_json::Value {
    json!({"username": "raw:Username", "password": "raw:Password", "url": "template:postgres://{{Username}}:{{Password}}@{{host}}/app"})
}

fn sh(script: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn the_files_of_a_bundle_read_in_one_session_are_one_credential() {
    let env = {
        let mut env = Env::new();
        let script = env.script();
        env.doc(
            "d.json",
            &exec_catalog(&script, &[("dyn:db", "pair", json!({"files": pair_files(), "mode": "0444"}))]),
        );
        env.config(json!({"allow_other": true}));
        env.start();
        env
    };
    let dir = env.m("dyn/db");
    // A directory of the three files, searchable where they are readable.
    let listing = ok("ls", &["-l", dir.to_str().unwrap()]);
    assert!(listing.contains("password") && listing.contains("username") && listing.contains("url"), "{listing}");
    let md = std::fs::metadata(&dir).unwrap();
    assert!(md.is_dir());
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777, 0o555);
    assert!(env.lines("issued.txt").is_empty(), "listing issued nothing");

    // The shell idiom, as an app's entrypoint script would do it: two cats, one session.
    let d = dir.display();
    let out = sh(&format!("u=$(cat {d}/username); p=$(cat {d}/password); url=$(cat {d}/url); echo \"$u $p $url\""));
    let parts: Vec<&str> = out.split_whitespace().collect();
    let (u, p, url) = (parts[0], parts[1], parts[2]);
    assert_eq!(
        u.trim_start_matches("u-"),
        p.trim_start_matches("p-"),
        "username and password of one credential: {out}"
    );
    assert_eq!(url, format!("postgres://{u}:{p}@db.internal/app"));
    assert_eq!(env.lines("issued.txt").len(), 1, "one lease for the session");

    // One process reading both files: the same.
    let o = ok("python3", &["-c", &format!("print(open('{d}/username').read(), open('{d}/password').read())")]);
    let v: Vec<&str> = o.split_whitespace().collect();
    assert_eq!(v[0].trim_start_matches("u-"), v[1].trim_start_matches("p-"));

    // Two sessions: two leases, two credentials.
    let a = ok("setsid", &["-w", "sh", "-c", &format!("cat {d}/username")]);
    let b = ok("setsid", &["-w", "sh", "-c", &format!("cat {d}/username")]);
    assert_ne!(a, b, "another session gets its own lease");
    assert_ne!(a, u);

    // Another user (a container's, a service's) gets its own, and the lease ends for all files.
    let o = as_user("nobody", &["sh", "-c", &format!("cat {d}/username; echo; cat {d}/password")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = String::from_utf8(o.stdout).unwrap();
    let l: Vec<&str> = t.lines().collect();
    assert_eq!(l[0].trim_start_matches("u-"), l[1].trim_start_matches("p-"), "{t}");
    let leases = env.leases();
    assert!(leases.iter().all(|l| l["path"] == "/dyn/db"), "the lease belongs to the bundle: {leases:?}");
}

#[test]
fn bind_pid_and_none_separate_readers_and_the_whole_bundle_expires_together() {
    let mut env = Env::new();
    let script = env.script();
    env.doc(
        "d.json",
        &exec_catalog(
            &script,
            &[
                ("dyn:perpid", "pair", json!({"files": pair_files(), "bind": "pid"})),
                ("dyn:short", "pair", json!({"files": pair_files(), "ttl": "2s"})),
            ],
        ),
    );
    env.config(json!({}));
    env.start();
    let d = env.m("dyn/perpid");
    let out = sh(&format!("cat {0}/username; echo; cat {0}/password", d.display()));
    let l: Vec<&str> = out.lines().collect();
    assert_ne!(l[0].trim_start_matches("u-"), l[1].trim_start_matches("p-"), "two processes, two leases with bind pid");
    // At expiry every file of the lease reads EKEYEXPIRED, and it is revoked once.
    let s = env.m("dyn/short");
    let mut u = std::fs::File::open(s.join("username")).unwrap();
    let mut p = std::fs::File::open(s.join("password")).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    use std::io::Read;
    let mut buf = String::new();
    assert_eq!(u.read_to_string(&mut buf).unwrap_err().raw_os_error(), Some(libc::EKEYEXPIRED));
    assert_eq!(p.read_to_string(&mut buf).unwrap_err().raw_os_error(), Some(libc::EKEYEXPIRED));
    eventually(Duration::from_secs(5), "the bundle lease revoked", || env.revoked().len() == 1);
}

#[test]
fn a_shell_script_logs_in_to_postgresql_with_a_username_and_password_from_a_bundle() {
    let pg = pg();
    let mut env = Env::new();
    let docs = json!([
        {"path": "base:db:main", "attributes": {"type": "postgres"}, "data": pg.base_data()},
        dynamic("dynamic:db:app", "base:db:main", json!({
            "ttl": "1m", "grants": ["GRANT SELECT ON orders TO {{name}}"],
            "files": {"username": "raw:username", "password": "raw:password"}
        })),
    ]);
    env.doc("db.json", &docs.to_string());
    env.config(json!({}));
    env.start();
    let d = env.m("dynamic/db/app");
    let out = sh(&format!(
        "u=$(cat {0}/username); p=$(cat {0}/password); PGPASSWORD=\"$p\" psql -h 127.0.0.1 -p {1} -U \"$u\" -d postgres -tAc 'SELECT current_user, count(*) FROM orders'",
        d.display(),
        pg.port
    ));
    assert!(out.trim().starts_with("lfs_dynamic_db_app_") && out.trim().ends_with("|1"), "{out}");
}

#[test]
fn a_bundle_is_checked_like_any_document() {
    let mut env = Env::new();
    env.doc(
        "d.json",
        &json!([
            {"path": "base:x", "attributes": {"type": "jwt"}, "data": {"algorithm": "HS256", "key": "0123456789abcdef0123456789abcdef"}},
            dynamic("bad:names", "base:x", json!({"files": {"../up": "raw:token"}})),
            dynamic("bad:format", "base:x", json!({"files": {"t": "yaml"}})),
            {"path": "bad:static", "attributes": {"files": {"a": "raw:v"}}, "data": {"v": "x"}},
            dynamic("good:tok", "base:x", json!({"files": {"token": "raw:token", "all.json": "json"}})),
        ])
        .to_string(),
    );
    let cfg = env.config(json!({}));
    let o = run(BIN, &["check", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("\"../up\" is not a file name"), "{err}");
    assert!(err.contains("attributes.files.t"), "{err}");
    assert!(err.contains("not dynamic"), "{err}");
    env.start();
    let tok = cat(&env.m("good/tok/token"));
    let all: serde_json::Value = serde_json::from_str(&cat(&env.m("good/tok/all.json"))).unwrap();
    assert!(tok.split('.').count() == 3 && all["token"].is_string());
}
