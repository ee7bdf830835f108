//! A process is not a pid (SPEC §10.2): a process of another user that gets the pid of one that
//! read a `reuse: "pid"` entry (or a `bind: "pid"` bundle) and exited gets its own credential,
//! not the old process's lease.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Run as root: process A (uid A) reads the files and exits; then, by writing A's pid - 1 to
/// `/proc/sys/kernel/ns_last_pid` and forking (retried if another process takes the pid first),
/// process B (uid B) is placed at A's pid and reads them. Prints one JSON object.
const SAME_PID: &str = r#"
import json, os, pwd, sys

def reader(user, paths, w):
    pw = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    out = []
    for p in paths:
        with open(p) as f:
            out.append(f.read())
    os.write(w, json.dumps(out).encode())
    os._exit(0)

def run(user, paths, at=None):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if at is not None and os.getpid() != at:
            os._exit(3)
        reader(user, paths, w)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return pid, status, data

user_a, user_b, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
a_pid, status, a_out = run(user_a, paths)
assert status == 0, f"A failed: {status}"
for tries in range(1, 201):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(a_pid - 1))
    b_pid, status, b_out = run(user_b, paths, at=a_pid)
    if b_pid == a_pid:
        assert status == 0, f"B failed: {status}"
        print(json.dumps({"pid": a_pid, "tries": tries, "a": json.loads(a_out), "b": json.loads(b_out)}))
        sys.exit(0)
sys.exit(f"no process got pid {a_pid} in 200 tries")
"#;

struct SamePid {
    pid: u64,
    a: Vec<String>,
    b: Vec<String>,
}

/// `a` reads `paths` and exits; `b`, at the same pid, reads them.
fn same_pid(env: &Env, paths: &[&str], a: &str, b: &str) -> SamePid {
    let helper = env.path("same_pid.py");
    std::fs::write(&helper, SAME_PID).unwrap();
    let mut args = vec![helper.to_str().unwrap().to_string(), a.into(), b.into()];
    args.extend(paths.iter().map(|p| env.m(p).to_string_lossy().into_owned()));
    let out = std::process::Command::new("timeout").arg("60").arg("python3").args(&args).output().expect("python3");
    assert!(out.status.success(), "the helper failed: {}\n{}", String::from_utf8_lossy(&out.stderr), env.log());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let strings = |k: &str| v[k].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    SamePid { pid: v["pid"].as_u64().unwrap(), a: strings("a"), b: strings("b") }
}

/// The audit lines (event, uid, lease id) of opens of `path` by `pid`.
fn opens(env: &Env, path: &str, pid: u64) -> Vec<(String, u64, String)> {
    env.audit()
        .iter()
        .filter(|l| l["path"] == path && l["pid"].as_u64() == Some(pid))
        .filter(|l| l["event"] == "issue" || l["event"] == "reuse")
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (s("event"), l["uid"].as_u64().unwrap(), s("lease_id"))
        })
        .collect()
}

fn mounted(entries: &[(&str, &str, serde_json::Value)]) -> Env {
    require_root("it places a process of another user at a pid through /proc/sys/kernel/ns_last_pid");
    let mut env = Env::new();
    // nobody and daemon walk to the mount.
    std::fs::set_permissions(env.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = env.script();
    env.doc("d.json", &exec_catalog(&script, entries));
    env.config(json!({"allow_other": true}));
    env.start();
    eventually(Duration::from_secs(10), "the mount answers", || env.m("dyn").is_dir());
    env
}

const NOBODY: u64 = 65534;
const DAEMON: u64 = 1;

#[test]
fn a_later_process_of_another_user_at_the_same_pid_gets_its_own_credential() {
    let env = mounted(&[("dyn:token", "token", json!({"reuse": "pid", "mode": "0444"}))]);
    let r = same_pid(&env, &["dyn/token"], "nobody", "daemon");
    assert!(r.a[0].contains("tok-") && r.b[0].contains("tok-"), "{:?} {:?}", r.a, r.b);
    assert_ne!(r.a[0], r.b[0], "the process at A's old pid read A's credential");
    let seen = opens(&env, "/dyn/token", r.pid);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!((seen[0].0.as_str(), seen[0].1), ("issue", NOBODY), "{seen:?}");
    assert_eq!((seen[1].0.as_str(), seen[1].1), ("issue", DAEMON), "B got a lease of its own: {seen:?}");
    assert_ne!(seen[0].2, seen[1].2);
    assert_eq!(env.lines("issued.txt").len(), 2);

    // The same user, too: a process is its pid and its start time, not its pid and uid.
    let r = same_pid(&env, &["dyn/token"], "nobody", "nobody");
    assert_ne!(r.a[0], r.b[0], "a later process of the same user at the pid read the old one's credential");
    let seen = opens(&env, "/dyn/token", r.pid);
    let events: Vec<(&str, u64)> = seen.iter().map(|(e, u, _)| (e.as_str(), *u)).collect();
    assert_eq!(events[events.len() - 2..], [("issue", NOBODY), ("issue", NOBODY)], "{seen:?}");
}

#[test]
fn a_later_process_at_the_same_pid_does_not_join_a_bundle_bound_to_the_pid() {
    let files = json!({"username": "raw:Username", "password": "raw:Password"});
    let env = mounted(&[("dyn:pair", "pair", json!({"files": files, "bind": "pid", "mode": "0444"}))]);
    let r = same_pid(&env, &["dyn/pair/username", "dyn/pair/password"], "nobody", "daemon");
    // Each process's two files are halves of one credential; the two processes' are not the same.
    for half in [&r.a, &r.b] {
        assert_eq!(half[0].trim_start_matches("u-"), half[1].trim_start_matches("p-"), "{half:?}");
    }
    assert_ne!(r.a[0], r.b[0], "the process at A's old pid joined A's bundle lease");
    let seen = opens(&env, "/dyn/pair", r.pid);
    let events: Vec<(&str, u64)> = seen.iter().map(|(e, u, _)| (e.as_str(), *u)).collect();
    assert_eq!(events, [("issue", NOBODY), ("reuse", NOBODY), ("issue", DAEMON), ("reuse", DAEMON)], "{seen:?}");
    assert_eq!(seen[0].2, seen[1].2);
    assert_eq!(seen[2].2, seen[3].2);
    assert_ne!(seen[0].2, seen[2].2);
}

/// Run as root, all as `user`: A reads the file and exits; C reads it and stays (execs `sleep`);
/// B is placed at A's pid and stays without reading. Prints `{"b": pid, "c": pid}`, then on a
/// line from stdin kills B and C and prints how each ended (`{"b": signal, "c": signal}`).
const ROTATE: &str = r#"
import json, os, pwd, signal, sys

user, path = sys.argv[1], sys.argv[2]
pw = pwd.getpwnam(user)

def child(read, stay, at=None):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if at is not None and os.getpid() != at:
            os._exit(3)
        os.setgroups([]); os.setgid(pw.pw_gid); os.setuid(pw.pw_uid)
        if read:
            with open(path) as f:
                f.read()
        os.write(w, b"r")
        if not stay:
            os._exit(0)
        os.execvp("sleep", ["sleep", "60"])
    os.close(w)
    os.read(r, 1)  # it has read (or it exited)
    os.close(r)
    return pid

a = child(read=True, stay=False)
_, st = os.waitpid(a, 0)
assert st == 0, f"A failed: {st}"
c = child(read=True, stay=True)
b = None
for _ in range(200):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(a - 1))
    p = child(read=False, stay=True, at=a)
    if p == a:
        b = p
        break
    os.waitpid(p, 0)
if b is None:
    os.kill(c, signal.SIGKILL)
    sys.exit(f"no process got pid {a}")
print(json.dumps({"b": b, "c": c}), flush=True)
sys.stdin.readline()
out = {}
for name, pid in (("b", b), ("c", c)):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, st = os.waitpid(pid, 0)
    out[name] = os.WTERMSIG(st) if os.WIFSIGNALED(st) else -os.WEXITSTATUS(st)
print(json.dumps(out), flush=True)
"#;

#[test]
fn a_rotation_signal_never_reaches_a_later_process_at_an_openers_pid() {
    use std::io::{BufRead, Write};
    let attrs = json!({"reuse": "uid", "ttl": "8s", "min_remaining": "1s", "rotate_signal": "SIGHUP", "rotate_at": 0.5, "mode": "0444"});
    let env = mounted(&[("dyn:rot", "token", attrs)]);
    let helper = env.path("rotate.py");
    std::fs::write(&helper, ROTATE).unwrap();
    let mut child = std::process::Command::new("timeout")
        .args(["60", "python3", helper.to_str().unwrap(), "nobody", env.m("dyn/rot").to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pids: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("helper: {line:?}"));
    let (b, c) = (pids["b"].as_u64().unwrap(), pids["c"].as_u64().unwrap());
    // A (at what is B's pid now) issued the lease, C shares it: both are its openers.
    let (by_a, by_c) = (opens(&env, "/dyn/rot", b), opens(&env, "/dyn/rot", c));
    assert_eq!(by_a.len() + by_c.len(), 2, "{by_a:?} {by_c:?}");
    assert_eq!((by_a[0].0.as_str(), by_c[0].0.as_str()), ("issue", "reuse"));
    assert_eq!(by_a[0].2, by_c[0].2);
    let rotated = env.audit().iter().any(|l| l["event"] == "rotate");
    assert!(!rotated, "B was placed at the pid only after the rotation: the check below would prove nothing");
    // The definite event: the rotation reached C, which opened the lease after A; A's place
    // (B's pid) was handled before it, in the same pass.
    let rotations =
        |pid: u64| env.audit().iter().filter(|l| l["event"] == "rotate" && l["pid"].as_u64() == Some(pid)).count();
    eventually(Duration::from_secs(15), "the rotation signal reaches the reader that is still running", || {
        rotations(c) > 0
    });
    child.stdin.take().unwrap().write_all(b"done\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let ended: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("helper: {line:?}"));
    let _ = child.wait();
    assert_eq!(ended["c"], libc::SIGHUP, "the opener still running got the rotation signal");
    // Had B been signalled, that SIGHUP (fatal by default, so it set the exit status when it was
    // sent) would be what it died of, not the helper's SIGKILL.
    assert_eq!(ended["b"], libc::SIGKILL, "a later process at an opener's pid was signalled");
    assert_eq!(rotations(b), 0, "no rotate event for the pid of an opener that is gone");
}
