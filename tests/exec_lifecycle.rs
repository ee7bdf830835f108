//! The life of an exec issuance around failures (SPEC §10.3, §10.4): the guard that kills scripts
//! with the daemon is supervised and restarted, and an issuance that does not finish is revoked
//! at once by its lease id — after a timeout, and at SIGTERM.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Modes: `revoke` records the request in revoked.jsonl; `mint-sleep` records its lease id in
/// minted.txt and then hangs; `quick` records it and prints a credential; `slow-kid` records its
/// pid and a child's, then hangs.
const SCRIPT: &str = r#"#!/bin/sh
here=$(dirname "$0")
case "$1" in
  revoke) req=$(cat); printf '%s\n' "$req" >> "$here/revoked.jsonl"; exit 0 ;;
  mint-sleep) cat > /dev/null; echo "$LEASEFS_LEASE_ID" >> "$here/minted.txt"; exec sleep 30 ;;
  quick) cat > /dev/null; echo "$LEASEFS_LEASE_ID" >> "$here/minted.txt"; echo '{"Password": "pw-quick"}' ;;
  slow-kid) cat > /dev/null; sleep 41.5 & echo $! > "$here/kid.pid"; echo $$ > "$here/slow.pid"; sleep 40; echo '{"Password": "late"}' ;;
  *) echo "unknown mode $1" >&2; exit 2 ;;
esac
"#;

/// A catalog of the entries, not mounted yet.
fn catalog(entries: &[(&str, &str, serde_json::Value)], defaults: serde_json::Value) -> Env {
    require_root("mounts FUSE and kills the daemon's processes");
    let env = Env::new();
    let script = env.path("lifecycle.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    env.doc("dynamic.json", &exec_catalog(script.to_str().unwrap(), entries));
    env.config(json!({"defaults": defaults}));
    env
}

fn setup(entries: &[(&str, &str, serde_json::Value)], defaults: serde_json::Value) -> Env {
    let mut env = catalog(entries, defaults);
    env.start();
    env
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat, counted after the command name.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(n - 3).map(String::from)
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    stat_field(pid, 3).is_some_and(|state| state != "Z")
}

/// The daemon's children named leasefs-guard (zombies included: one left unreaped is a bug).
fn guards_of(daemon: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "leasefs-guard" && stat_field(pid, 4) == Some(daemon.to_string()) {
            out.push((pid, stat_field(pid, 3).unwrap_or_default()));
        }
    }
    out
}

fn pid_in(env: &Env, name: &str) -> i32 {
    std::fs::read_to_string(env.path(name)).unwrap().trim().parse().unwrap()
}

#[test]
fn a_killed_guard_is_logged_counted_and_restarted_and_the_new_one_kills_scripts_with_the_daemon() {
    let mut env =
        setup(&[("dyn:slow", "slow-kid", json!({"format": "raw:Password"}))], json!({"issue_timeout": "60s"}));
    let daemon = env.daemon().pid();
    let first = guards_of(daemon);
    assert_eq!(first.len(), 1, "one guard at start: {first:?}");
    let old = first[0].0;
    // SAFETY: killing the daemon's guard, a process this test started (through the daemon).
    unsafe { libc::kill(old, libc::SIGKILL) };

    eventually(Duration::from_secs(5), "an error line saying the guard died", || {
        env.log().lines().any(|l| l.contains("ERROR") && l.contains("exec guard died"))
    });
    eventually(Duration::from_secs(5), "a new guard, and the old one reaped", || {
        let now = guards_of(daemon);
        now.len() == 1 && now[0].0 != old && now[0].1 != "Z"
    });
    let metrics = read(&env.m(".leasefs/metrics")).unwrap();
    assert!(metrics.lines().any(|l| l == "leasefs_guard_restarts_total 1"), "{metrics}");

    // The new guard does the old one's work: a script running when the daemon is killed dies with
    // it, and so does its child.
    let f = env.m("dyn/slow");
    let reader = std::thread::spawn(move || read(&f));
    eventually(Duration::from_secs(5), "the script and its child to start", || {
        env.path("slow.pid").exists() && env.path("kid.pid").exists()
    });
    let (script, kid) = (pid_in(&env, "slow.pid"), pid_in(&env, "kid.pid"));
    assert!(alive(script) && alive(kid));
    env.daemon().kill9();
    let _ = reader.join();
    eventually(Duration::from_secs(3), "the script and its child to die with the daemon", || {
        !alive(script) && !alive(kid)
    });
}

#[test]
fn timed_out_issuances_are_revoked_at_once_by_their_lease_ids() {
    let mut env = setup(&[("dyn:hang", "mint-sleep", json!({}))], json!({"issue_timeout": "2s"}));
    for _ in 0..3 {
        assert_eq!(errno_of(read(&env.m("dyn/hang"))), libc::ETIMEDOUT);
    }
    // The failed issuances' lease ids, as audited (whether or not a script got as far as minting).
    let minted: Vec<String> = env
        .audit()
        .iter()
        .filter(|e| e["event"] == "error" && e["outcome"] == "timeout")
        .map(|e| e["lease_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(minted.len(), 3, "{minted:?}");
    assert!(env.lines("minted.txt").iter().all(|id| minted.contains(id)));
    eventually(Duration::from_secs(10), "the three timed-out leases to be revoked", || {
        let revoked = env.revoked();
        minted.iter().all(|id| revoked.contains(id))
    });
    assert!(env.daemon().wait(Duration::ZERO).is_none(), "the daemon keeps running");
    let journal = std::fs::read_to_string(env.path("state/journal.jsonl")).unwrap();
    for id in &minted {
        assert!(
            journal.lines().any(|l| l.contains(id.as_str()) && l.contains("\"revoked\"")),
            "journaled like any revocation: {journal}"
        );
    }
}

#[test]
fn an_intent_pending_at_sigterm_is_revoked_before_exit() {
    let mut env = setup(&[("dyn:hang", "mint-sleep", json!({}))], json!({"issue_timeout": "5s"}));
    let f = env.m("dyn/hang");
    let reader = std::thread::spawn(move || errno_of(read(&f)));
    eventually(Duration::from_secs(5), "the script to mint", || env.lines("minted.txt").len() == 1);
    let id = env.lines("minted.txt")[0].clone();
    let status = env.daemon().stop();
    assert!(status.success(), "{status}");
    let _ = reader.join();
    assert!(env.revoked().contains(&id), "the intent {id} was not revoked before exit:\n{}", env.log());
    let journal = std::fs::read_to_string(env.path("state/journal.jsonl")).unwrap();
    assert!(journal.lines().any(|l| l.contains(id.as_str()) && l.contains("\"revoked\"")), "{journal}");
}

#[test]
fn no_script_starts_while_no_guard_runs_and_scripts_run_again_once_one_does() {
    let mut env =
        catalog(&[("dyn:quick", "quick", json!({"format": "raw:Password"}))], json!({"issue_timeout": "10s"}));
    // The daemon runs from a copy of the binary, so that the test can stop it from starting guards.
    let bin = env.path("leasefs");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let logf = std::fs::File::create(env.path("daemon.log")).unwrap();
    let child = std::process::Command::new(&bin)
        .args(["--log-level", "debug", "mount", env.mnt().to_str().unwrap(), "--config"])
        .arg(env.path("config.json"))
        .stdin(std::process::Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    env.mount = Some(Mounted { leave_mount: false, child: Some(child), mnt: env.mnt(), log: env.path("daemon.log") });
    let mnt = env.mnt();
    eventually(Duration::from_secs(20), "the mount", || is_mounted(&mnt) && is_live_fuse(&mnt));
    let daemon = env.daemon().pid();
    let old = guards_of(daemon)[0].0;

    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o000)).unwrap();
    // SAFETY: killing the daemon's guard.
    unsafe { libc::kill(old, libc::SIGKILL) };
    eventually(Duration::from_secs(5), "the restart to fail", || env.log().contains("cannot start an exec guard"));
    let t = std::time::Instant::now();
    assert_eq!(errno_of(read(&env.m("dyn/quick"))), libc::EIO);
    assert!(t.elapsed() < Duration::from_secs(5), "waited {:?} for a guard", t.elapsed());
    assert!(env.log().contains("no exec guard is running"), "{}", env.log());
    assert!(env.lines("minted.txt").is_empty(), "a script ran while no guard did");

    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    eventually(Duration::from_secs(5), "a new guard", || guards_of(daemon).iter().any(|(p, s)| *p != old && s != "Z"));
    assert_eq!(read(&env.m("dyn/quick")).unwrap(), "pw-quick");
    assert_eq!(env.lines("minted.txt").len(), 1);
}

#[test]
fn only_a_credential_the_next_start_could_revoke_is_journaled() {
    // `dyn/kept` has a revoke_command; `dyn/plain`'s base has none, so nothing could revoke its
    // credential after a crash: its lease costs no journal line (and no fsync before the read).
    let mut env = catalog(&[("dyn:kept", "quick", json!({"format": "raw:Password", "ttl": "2s"}))], json!({}));
    let script = env.path("lifecycle.sh");
    let plain = json!([
        {"path": "base:exec:plain", "attributes": {"type": "exec"}, "data": {"command": [script, "quick"]}},
        {"path": "dyn:plain", "attributes": {"linkConfig": {"linkType": "dynamic", "linkedSecret": "base:exec:plain"},
         "format": "raw:Password", "ttl": "2s"}}
    ]);
    env.doc("plain.json", &plain.to_string());
    env.start();
    assert_eq!(read(&env.m("dyn/kept")).unwrap(), "pw-quick");
    assert_eq!(read(&env.m("dyn/plain")).unwrap(), "pw-quick");
    let minted = env.lines("minted.txt");
    assert_eq!(minted.len(), 2, "{minted:?}");
    let (kept, plain) = (&minted[0], &minted[1]);
    let journal = || std::fs::read_to_string(env.path("state/journal.jsonl")).unwrap_or_default();
    let ops_of = |id: &str| -> Vec<String> {
        journal()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["lease_id"] == id)
            .map(|r| r["op"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ops_of(kept), ["intent", "issued"], "{}", journal());
    assert!(ops_of(plain).is_empty(), "a lease nothing can revoke was journaled: {}", journal());
    // Both end (at close or with their ttl); only the revocable one is revoked at its issuer and journaled so.
    eventually(Duration::from_secs(10), "the revocable lease to be revoked", || env.revoked().contains(kept));
    eventually(Duration::from_secs(5), "its revocation to be journaled", || ops_of(kept).len() == 3);
    assert_eq!(ops_of(kept)[2], "revoked");
    let ended = |id: &str| {
        env.audit().iter().any(|e| e["lease_id"] == id && matches!(e["event"].as_str(), Some("expire" | "revoke")))
    };
    eventually(Duration::from_secs(5), "both leases to be audited as ended", || ended(kept) && ended(plain));
    assert!(ops_of(plain).is_empty(), "{}", journal());
    assert_eq!(read(&env.m("dyn/plain")).unwrap(), "pw-quick", "a new lease is issued after the old one ended");
}
