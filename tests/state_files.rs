//! Trust of state files (SPEC §10.5): another user's link at the audit path, a state dir another
//! user owns, a FIFO at the journal or audit path are refused within 5 s, naming the path; a full
//! disk never tears the journal, and a restart revokes every lease that was minted.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Starts `leasefs mount` and expects it to give up by itself within 5 s with a non-zero exit;
/// returns its output. A daemon still running at 5 s is killed and the test fails (never hangs).
fn refused_within_5s(env: &Env) -> String {
    let log = env.path("refused.log");
    let logf = std::fs::File::create(&log).unwrap();
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .arg("mount")
        .arg(env.mnt())
        .arg("--config")
        .arg(env.path("config.json"))
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            if is_mounted(&env.mnt()) {
                detach(&env.mnt());
            }
            panic!(
                "leasefs was still running after 5 s (it should have refused to start):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "leasefs started although it should have refused:\n{out}");
    assert!(!is_mounted(&env.mnt()), "refused, yet mounted");
    out
}

/// A root-owned sticky world-writable directory (like `/tmp`) inside the test's directory, which
/// is made traversable for other users.
fn sticky_dir(env: &Env) -> PathBuf {
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = env.path("pub");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

fn as_nobody(cmd: &str) {
    let out = as_user("nobody", &["sh", "-c", cmd]);
    assert!(out.status.success(), "as nobody: {cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

fn static_catalog(env: &Env) {
    env.doc("static.json", r#"{"path": "static:plain", "data": {"value": "v"}}"#);
}

#[test]
fn another_users_link_at_the_audit_path_is_refused_and_the_target_is_untouched() {
    require_root("the link must belong to another user (nobody)");
    let env = Env::new();
    static_catalog(&env);
    let pubd = sticky_dir(&env);
    let victim = env.path("victim");
    std::fs::write(&victim, "").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let audit = pubd.join("audit.jsonl");
    as_nobody(&format!("ln -s '{}' '{}'", victim.display(), audit.display()));
    env.config(json!({"audit_log": audit}));
    let out = refused_within_5s(&env);
    assert!(out.contains(&audit.display().to_string()), "the message names the path:\n{out}");
    assert!(out.contains("symbolic link"), "the message says why:\n{out}");
    assert_eq!(std::fs::read(&victim).unwrap().len(), 0, "root appended to the link's target");
}

#[test]
fn a_world_writable_audit_file_of_another_user_is_refused_unless_insecure_perms() {
    require_root("the file must belong to another user (nobody)");
    let env = Env::new();
    static_catalog(&env);
    let pubd = sticky_dir(&env);
    let audit = pubd.join("audit.jsonl");
    as_nobody(&format!("touch '{0}' && chmod 666 '{0}'", audit.display()));
    env.config(json!({"audit_log": audit}));
    let out = refused_within_5s(&env);
    assert!(out.contains(&audit.display().to_string()), "{out}");
    assert!(out.contains("not by root or the daemon's user"), "{out}");
    assert_eq!(std::fs::metadata(&audit).unwrap().len(), 0, "another user's file received audit lines");
    // --insecure-perms relaxes it, loudly.
    let mut env = env;
    env.start_with(&["--insecure-perms"]);
    let log = env.log();
    assert!(log.contains("--insecure-perms: would be refused"), "{log}");
    assert!(log.contains(&audit.display().to_string()), "{log}");
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused_and_its_forged_journal_never_runs() {
    require_root("the state dir must belong to another user (nobody)");
    let env = Env::new();
    let script = env.script();
    env.doc("dynamic.json", &exec_catalog(&script, &[("dyn:a", "royal", json!({}))]));
    let pubd = sticky_dir(&env);
    let state = pubd.join("state");
    let forged = json!({"op": "issued", "lease_id": "forged-1", "path": "dyn/a", "issuer": "exec", "source": "/",
        "base": "base/exec/royal", "revocation": {"drop": "everything"}, "time": "2026-01-01T00:00:00Z"});
    as_nobody(&format!("mkdir -m 700 '{0}' && printf '%s\\n' '{1}' > '{0}/journal.jsonl'", state.display(), forged));
    env.config(json!({"state_dir": state}));
    let out = refused_within_5s(&env);
    assert!(out.contains(&state.display().to_string()), "the message names the path:\n{out}");
    assert!(out.contains("owned by uid"), "the message says why:\n{out}");
    assert!(env.revoked().is_empty(), "a forged journal record ran revoke_command: {:?}", env.revoked());
}

#[test]
fn a_fifo_at_the_journal_or_audit_path_is_refused_without_hanging() {
    let env = Env::new();
    static_catalog(&env);
    let fifo = |p: &Path| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", p.display());
    };
    let journal = env.path("state/journal.jsonl");
    fifo(&journal);
    env.config(json!({}));
    let out = refused_within_5s(&env);
    assert!(out.contains(&journal.display().to_string()), "{out}");
    assert!(out.contains("FIFO"), "{out}");

    std::fs::remove_file(&journal).unwrap();
    let audit = env.path("audit.jsonl");
    let _ = std::fs::remove_file(&audit); // the first start made it
    fifo(&audit);
    let out = refused_within_5s(&env);
    assert!(out.contains(&audit.display().to_string()), "{out}");
    assert!(out.contains("FIFO"), "{out}");
}

/// A tmpfs mounted for the test, lazily detached at the end.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        detach(&self.0);
    }
}

#[test]
fn a_full_state_disk_never_tears_the_journal_and_a_restart_revokes_every_minted_lease() {
    require_root("mounts a 32 KiB tmpfs for state_dir");
    let mut env = Env::new();
    let script = env.script();
    env.doc("dynamic.json", &exec_catalog(&script, &[("dyn:a", "royal", json!({"ttl": "10m", "reuse": "none"}))]));
    let small = env.path("small");
    std::fs::create_dir(&small).unwrap();
    let st = run("mount", &["-t", "tmpfs", "-o", "size=32k,mode=0700", "tmpfs", small.to_str().unwrap()]);
    assert!(st.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&st.stderr));
    let _tmpfs = Tmpfs(small.clone());
    env.config(json!({"state_dir": small, "defaults": {"issue_timeout": "10s"}}));
    env.start();
    for _ in 0..3 {
        cat(&env.m("dyn/a"));
    }
    // Fill the disk: whatever the journal appends next finds no room past its last page.
    let filler = small.join("filler");
    let _ = run("dd", &["if=/dev/zero", &format!("of={}", filler.display()), "bs=512"]);
    let mut failed = 0;
    for _ in 0..40 {
        match errno_of(read(&env.m("dyn/a"))) {
            0 => {}
            libc::EIO => failed += 1,
            e => panic!("an issuance on a full disk failed with errno {e}, not EIO"),
        }
    }
    assert!(failed > 0, "the disk never filled up: no issuance failed");
    // Space returns; issuance works again.
    std::fs::remove_file(&filler).unwrap();
    for _ in 0..3 {
        cat(&env.m("dyn/a"));
    }
    let log = env.log();
    assert!(log.contains("cut back to its last whole record"), "no failed append was cut back:\n{log}");
    // What a failed issuance minted is revoked at once, not at the next start.
    eventually(Duration::from_secs(10), "every minted lease live or revoked", || {
        let live: Vec<String> = env.leases().iter().map(|l| l["id"].as_str().unwrap().to_string()).collect();
        let revoked = env.revoked();
        env.lines("issued.txt").iter().all(|id| live.contains(id) || revoked.contains(id))
    });
    env.daemon().kill9();

    let text = std::fs::read_to_string(small.join("journal.jsonl")).unwrap();
    for (i, line) in text.lines().enumerate() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "journal line {} is not JSON (torn or glued): {line}",
            i + 1
        );
    }
    assert!(text.is_empty() || text.ends_with('\n'), "the journal ends in the middle of a record");

    env.start();
    let minted = env.lines("issued.txt");
    assert!(minted.len() >= 6, "minted {}", minted.len());
    eventually(Duration::from_secs(10), "every minted lease revoked", || {
        let revoked = env.revoked();
        minted.iter().all(|id| revoked.contains(id))
    });
    let log = env.log();
    assert!(!log.contains("unreadable"), "the restart found unreadable journal lines:\n{log}");
}

#[test]
fn journal_records_naming_no_configured_base_are_listed_and_never_run() {
    let mut env = Env::new();
    let script = env.script();
    env.doc("dynamic.json", &exec_catalog(&script, &[("dyn:a", "royal", json!({"ttl": "10m"}))]));
    env.config(json!({}));
    env.start();
    cat(&env.m("dyn/a"));
    let real = env.leases()[0]["id"].as_str().unwrap().to_string();
    env.daemon().kill9();
    // Records a previous run could not have written for this configuration: a base that is not
    // in it, and the configured exec base under another issuer's name.
    let j = env.path("state/journal.jsonl");
    let mut text = std::fs::read_to_string(&j).unwrap();
    for (id, base, issuer) in [("gone-1", "base/exec/gone", "exec"), ("wrong-issuer-1", "base/exec/royal", "postgres")]
    {
        let r = json!({"op": "issued", "lease_id": id, "path": "/dyn/a", "issuer": issuer, "source": "/",
            "base": base, "revocation": {"x": 1}, "time": "2026-01-01T00:00:00Z"});
        text.push_str(&format!("{r}\n"));
    }
    std::fs::write(&j, text).unwrap();
    env.start();
    eventually(Duration::from_secs(5), "the real orphan revoked", || env.revoked().contains(&real));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.revoked(), [real], "only the lease of a configured base is revoked");
    let status: serde_json::Value = serde_json::from_str(&cat(&env.m(".leasefs/status.json"))).unwrap();
    let listed: Vec<&str> =
        status["unresolved_orphans"].as_array().unwrap().iter().map(|u| u["lease_id"].as_str().unwrap()).collect();
    assert_eq!(listed, ["gone-1", "wrong-issuer-1"], "{status}");
    let log = env.log();
    assert!(log.contains("its base is not in the current configuration"), "{log}");
    assert!(log.contains("the configured base is exec"), "{log}");
    // They stay in the journal: a later start with the base back can revoke them.
    env.daemon().stop();
    assert!(std::fs::read_to_string(&j).unwrap().contains("gone-1"));
}
