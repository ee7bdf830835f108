//! SPEC §10.1 (issue 26, bullets 1–3): every reader of a dynamic file gets its own credential,
//! whole, whatever other users do at the same time, and no pattern of readers stalls the mount.
//!
//! Real mounts (`allow_other`), real programs (python3 readers using read/sendfile/splice/mmap,
//! busybox `cat`, coreutils `cat`, `stat`, `ls`) run as two real unprivileged users, `nobody` and
//! `daemon`. A frozen mount fails the test, it never hangs it: every probe of the mount is a child
//! with a deadline, every test has a budget, and when either is missed the watchdog aborts the
//! FUSE connection through fusectl, kills the readers and the test fails saying the mount froze.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// How long every reader pattern runs. Before their fixes, 10 s runs saw 6–59 foreign, mixed or
/// empty reads per user, and freezes within the first 41 issuances: 5 s shows either many times.
const RUN: Duration = Duration::from_secs(5);
/// A probe of the mount during the load that gets no answer this long means the mount froze.
const PROBE_LIMIT: Duration = Duration::from_secs(3);
/// After the load, `stat` (and `ls`) must answer within this.
const AFTER_LIMIT: Duration = Duration::from_secs(1);
/// Past this the watchdog aborts the connection whatever the test is doing.
const BUDGET: Duration = Duration::from_secs(30);
/// The exec credential's padding: its id repeated this often, ~5 KiB, so that it spans two pages.
const PAD_REPEAT: usize = 110;

/// The test with 32 loops takes the machine alone; the others (two readers each) share it.
static LOAD: RwLock<()> = RwLock::new(());

/// The exec issuer: names the requester (`u<uid>-<pid>`) and the lease, padded with that name.
const CRED_SCRIPT: &str = r#"#!/bin/sh
cat > /dev/null
id="u${LEASEFS_UID}-${LEASEFS_PID}-${LEASEFS_LEASE_ID}"
pad=""
i=0
while [ $i -lt 110 ]; do pad="$pad$id."; i=$((i+1)); done
printf '{"Username": "u%s-%s", "Password": "pw-%s", "Pad": "%s"}\n' "$LEASEFS_UID" "$LEASEFS_PID" "$LEASEFS_LEASE_ID" "$pad"
"#;

/// One reader: opens the file anew on every iteration, reads it whole the given way, prints one
/// JSON line per read (the bytes as a string, or `{"errno": …}`); bounded by its own clock.
const READER: &str = r#"
import json, mmap, os, sys, time
mode, path, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.monotonic() + secs
out = sys.stdout
out.write(json.dumps({"pid": os.getpid()}) + "\n")
r, w = os.pipe()

def drain(n):
    got = b""
    while len(got) < n:
        got += os.read(r, n - len(got))
    return got

def once():
    fd = os.open(path, os.O_RDONLY)
    try:
        data = b""
        if mode == "read":
            while True:
                b = os.read(fd, 65536)
                if not b:
                    return data
                data += b
        if mode in ("sendfile", "splice"):
            while True:
                n = os.sendfile(w, fd, None, 65536) if mode == "sendfile" else os.splice(fd, w, 65536)
                if n == 0:
                    return data
                data += drain(n)
        if mode == "mmap":
            size = os.fstat(fd).st_size
            if size == 0:
                return b""
            with mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as m:
                # The pages are touched in a forked child, so that a SIGBUS (a mapping past the
                # file's end) is counted instead of ending the reader.
                pr, pw = os.pipe()
                child = os.fork()
                if child == 0:
                    os.close(pr)
                    view = m[:]
                    while view:
                        view = view[os.write(pw, view):]
                    os._exit(0)
                os.close(pw)
                while True:
                    b = os.read(pr, 65536)
                    if not b:
                        break
                    data += b
                os.close(pr)
                _, st = os.waitpid(child, 0)
                if os.WIFSIGNALED(st):
                    raise ValueError("the mapping's reader was killed by signal %d" % os.WTERMSIG(st))
                return data
        raise SystemExit("unknown mode " + mode)
    finally:
        os.close(fd)

while time.monotonic() < end:
    try:
        line = json.dumps(once().decode("latin-1"))
    except OSError as e:
        line = json.dumps({"errno": e.errno, "error": str(e)})
    except ValueError as e:
        # mmap: the size changed between the reader's fstat and the mapping's own, or SIGBUS.
        line = json.dumps({"error": repr(e)})
    out.write(line + "\n")
out.flush()
"#;

/// Runs a program in a loop on `threads` threads until its clock runs out; one JSON line per run:
/// `[exit code, stdout, start of stderr]`.
const LOOP: &str = r#"
import json, subprocess, sys, threading, time
secs, threads, argv = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
end = time.monotonic() + secs
lock = threading.Lock()
def loop():
    while time.monotonic() < end:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = json.dumps([p.returncode, p.stdout.decode("latin-1"), p.stderr.decode("latin-1")[:300]])
        with lock:
            sys.stdout.write(line + "\n")
ts = [threading.Thread(target=loop) for _ in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
sys.stdout.flush()
"#;

fn ids(user: &str) -> (u32, u32) {
    (ok("id", &["-u", user]).trim().parse().unwrap(), ok("id", &["-g", user]).trim().parse().unwrap())
}

/// A mount (`allow_other`) with the exec entry `dyn/cred`, the jwt entry `tokens/api` (both 0444,
/// `reuse: "none"`) and a static `app/other`; the scratch directory is 0711 so that `nobody` and
/// `daemon` reach the mount and the reader scripts.
fn mount() -> Env {
    let mut env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let script = env.path("cred.sh");
    std::fs::write(&script, CRED_SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    let open = json!({"mode": "0444", "reuse": "none"});
    let with = |extra: serde_json::Value| {
        let mut a = open.clone();
        a.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        a
    };
    env.doc(
        "d.json",
        &json!([
            {"path": "base:cred", "attributes": {"type": "exec"}, "data": {"command": [script]}},
            dynamic("dyn:cred", "base:cred", with(json!({"format": "json"}))),
            {"path": "base:jwt", "attributes": {"type": "jwt"}, "data": {"algorithm": "HS256", "key": "k".repeat(32)}},
            dynamic("tokens:api", "base:jwt", with(json!({"format": "raw:token"}))),
            {"path": "app:other", "attributes": {"mode": "0444"}, "data": {"value": "another file"}},
        ])
        .to_string(),
    );
    for (name, text) in [("reader.py", READER), ("loop.py", LOOP)] {
        std::fs::write(env.path(name), text).unwrap();
        std::fs::set_permissions(env.path(name), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    env.config(json!({"allow_other": true}));
    // Info, as in production: a debug line per request would change the timing under test.
    let m = Mounted::start_full(
        &env.path("config.json"),
        &env.mnt(),
        &env.path("daemon.log"),
        &["--log-level", "info"],
        &[],
        &[],
    );
    env.mount = Some(m);
    env
}

/// Aborts the FUSE connection when a probe misses its deadline or the test its budget, and kills
/// the readers (their process groups). Never touches the mount itself.
struct Watchdog {
    mnt: PathBuf,
    /// Process groups of children not yet reaped (so their ids cannot have been reused).
    groups: Mutex<Vec<i32>>,
    fired: Mutex<Option<String>>,
    done: AtomicBool,
}

/// Stops the watchdog and kills whatever reader is left when the test ends (or panics).
struct Watched(Arc<Watchdog>);

impl Drop for Watched {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::SeqCst);
        for g in self.0.groups.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            // SAFETY: a process group we created whose leader we have not reaped.
            unsafe { libc::killpg(g, libc::SIGKILL) };
        }
    }
}

impl std::ops::Deref for Watched {
    type Target = Watchdog;
    fn deref(&self) -> &Watchdog {
        &self.0
    }
}

impl Watchdog {
    fn start(mnt: &Path, budget: Duration) -> Watched {
        assert!(fuse_connection(mnt).is_some(), "no FUSE connection for {}", mnt.display());
        let wd = Arc::new(Watchdog {
            mnt: mnt.to_path_buf(),
            groups: Mutex::new(Vec::new()),
            fired: Mutex::new(None),
            done: AtomicBool::new(false),
        });
        let w = Arc::clone(&wd);
        std::thread::spawn(move || {
            let end = Instant::now() + budget;
            while !w.done.load(Ordering::SeqCst) {
                if Instant::now() > end {
                    w.fire(&format!("the test ran past its budget of {budget:?}"));
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watched(wd)
    }

    fn fire(&self, why: &str) {
        let mut fired = self.fired.lock().unwrap_or_else(|e| e.into_inner());
        if fired.is_some() {
            return;
        }
        let aborted = match abort_fuse(&self.mnt) {
            Ok(c) => format!("FUSE connection {c} aborted through fusectl"),
            Err(e) => format!("and the abort failed: {e}"),
        };
        for &g in self.groups.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            // SAFETY: a process group we created whose leader we have not reaped.
            unsafe { libc::killpg(g, libc::SIGKILL) };
        }
        *fired = Some(format!("THE MOUNT FROZE: {why}; {aborted}, readers killed"));
    }

    fn fired(&self) -> Option<String> {
        self.fired.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Spawns a child in a process group of its own, from `/`, registered for killing.
    fn spawn(&self, cmd: &mut Command) -> Child {
        let child = cmd.process_group(0).current_dir("/").stdin(Stdio::null()).spawn().expect("spawn");
        self.groups.lock().unwrap().push(child.id() as i32);
        child
    }

    fn try_reap(&self, c: &mut Child) -> Option<ExitStatus> {
        let st = c.try_wait().unwrap()?;
        self.groups.lock().unwrap().retain(|&g| g != c.id() as i32);
        Some(st)
    }

    /// Runs `argv` (as root) and waits at most `limit` for it; a miss fires the watchdog.
    fn probe(&self, argv: &[&str], limit: Duration) -> Result<Duration, String> {
        let t = Instant::now();
        let mut c = self.spawn(Command::new(argv[0]).args(&argv[1..]).stdout(Stdio::null()).stderr(Stdio::piped()));
        loop {
            if let Some(st) = self.try_reap(&mut c) {
                let took = t.elapsed();
                if !st.success() {
                    let mut err = String::new();
                    let _ = std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err);
                    return Err(format!("`{}` failed ({st}): {}", argv.join(" "), err.trim()));
                }
                return Ok(took);
            }
            if t.elapsed() > limit {
                self.fire(&format!("`{}` got no answer within {limit:?}", argv.join(" ")));
                let _ = self.reap_within(std::slice::from_mut(&mut c), Duration::from_secs(3));
                return Err(format!("`{}` got no answer within {limit:?}", argv.join(" ")));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits (bounded) for the children; their statuses, `None` for those still running.
    fn reap_within(&self, kids: &mut [Child], limit: Duration) -> Vec<Option<ExitStatus>> {
        let end = Instant::now() + limit;
        let mut st: Vec<Option<ExitStatus>> = vec![None; kids.len()];
        loop {
            for (i, k) in kids.iter_mut().enumerate() {
                if st[i].is_none() {
                    st[i] = self.try_reap(k);
                }
            }
            if st.iter().all(Option::is_some) || Instant::now() > end {
                return st;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// While `kids` run (their own clocks stop them after `RUN`), probes the mount every
    /// `interval`: in turn `stat` of another file and `ls` of the root, each a child with
    /// `PROBE_LIMIT`. Fires when a probe gets no answer, or when the kids are still running 5 s
    /// after `RUN` (readers stuck on a frozen mount). Returns the probe latencies and the kids'
    /// exit statuses.
    fn watch(&self, kids: &mut [Child], interval: Duration) -> (Vec<Duration>, Vec<Option<ExitStatus>>) {
        let other = self.mnt.join("app/other");
        let probes: [Vec<&str>; 2] =
            [vec!["stat", "-c", "%s", other.to_str().unwrap()], vec!["ls", "-l", self.mnt.to_str().unwrap()]];
        let start = Instant::now();
        let mut lat = Vec::new();
        let mut st: Vec<Option<ExitStatus>> = vec![None; kids.len()];
        for i in 0.. {
            for (k, s) in kids.iter_mut().zip(st.iter_mut()) {
                if s.is_none() {
                    *s = self.try_reap(k);
                }
            }
            if st.iter().all(Option::is_some) || self.fired().is_some() {
                break;
            }
            if start.elapsed() > RUN + Duration::from_secs(5) {
                self.fire("the readers were still running 5 s after their own clocks stopped them");
                break;
            }
            match self.probe(&probes[i % 2], PROBE_LIMIT) {
                Ok(t) => lat.push(t),
                Err(e) if self.fired().is_none() => self.fire(&format!("a probe failed: {e}")),
                Err(_) => {}
            }
            std::thread::sleep(interval);
        }
        if self.fired().is_some() {
            let late = self.reap_within(kids, Duration::from_secs(3));
            for (s, l) in st.iter_mut().zip(late) {
                *s = s.or(l);
            }
        }
        (lat, st)
    }

    /// After the load: `stat` of another file and `ls` of the root answer within `AFTER_LIMIT`.
    fn answers_after(&self) -> Result<(Duration, Duration), String> {
        let other = self.mnt.join("app/other");
        let s = self.probe(&["stat", "-c", "%s", other.to_str().unwrap()], AFTER_LIMIT)?;
        let l = self.probe(&["ls", "-l", self.mnt.to_str().unwrap()], AFTER_LIMIT)?;
        Ok((s, l))
    }
}

/// Fails the test for a frozen mount: the connection is already aborted; the daemon is killed so
/// that tearing down does not wait on it.
fn froze(env: &mut Env, why: &str, detail: &str) -> ! {
    if let Some(m) = env.mount.as_mut() {
        m.kill9();
    }
    let log = env.log();
    let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
    panic!("{why}\n{detail}\ndaemon log (last lines):\n{}", tail.join("\n"));
}

fn percentile(lat: &[Duration], p: f64) -> Duration {
    let mut v = lat.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn lat_summary(lat: &[Duration]) -> String {
    format!(
        "{} probes, p50 {:?}, p99 {:?}, max {:?}",
        lat.len(),
        percentile(lat, 0.5),
        percentile(lat, 0.99),
        lat.iter().max().copied().unwrap_or_default()
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Cross-user mixes on the exec entry.

#[derive(Default, Debug)]
struct Tally {
    own: usize,
    foreign: usize,
    mixed: usize,
    empty: usize,
    /// Own uid and pid, but a lease this reader was given before (another lease's bytes).
    stale: usize,
    errors: usize,
    examples: Vec<String>,
}

impl Tally {
    fn bad(&self) -> usize {
        self.foreign + self.mixed + self.empty + self.stale + self.errors
    }
    /// Keeps a few examples: their length and whose credential ids the bytes hold (never whole).
    fn note(&mut self, what: &str, text: &str) {
        if self.examples.len() < 4 {
            let mut ids: Vec<(&str, usize)> = Vec::new();
            for seg in text.split(['.', '"']).filter(|s| s.starts_with('u') && s.matches('-').count() == 2) {
                match ids.iter_mut().find(|(i, _)| *i == seg) {
                    Some((_, n)) => *n += 1,
                    None => ids.push((seg, 1)),
                }
            }
            let ids: Vec<String> = ids.iter().take(4).map(|(i, n)| format!("{}…×{n}", &i[..i.len().min(16)])).collect();
            let head: String = text.chars().take(40).collect();
            let tail: String = text.chars().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            self.examples.push(format!(
                "{what}: {} bytes, ids [{}], starts {head:?}, ends {tail:?}",
                text.len(),
                ids.join(", ")
            ));
        }
    }
}

/// `(uid, pid, lease)` if `text` is one whole credential of the script.
fn credential(text: &str) -> Option<(u32, u32, String)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let user = v["Username"].as_str()?;
    let lease = v["Password"].as_str()?.strip_prefix("pw-")?;
    let (uid, pid) = user.strip_prefix('u')?.split_once('-')?;
    (v["Pad"].as_str()? == format!("{user}-{lease}.").repeat(PAD_REPEAT)).then_some(())?;
    Some((uid.parse().ok()?, pid.parse().ok()?, lease.to_string()))
}

fn tally(out: &str, uid: u32) -> Tally {
    let mut t = Tally::default();
    let mut lines = out.lines();
    let pid = lines
        .next()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["pid"].as_u64())
        .map(|p| p as u32);
    let Some(pid) = pid else {
        t.note("no pid line", out);
        return t;
    };
    let mut seen = HashSet::new();
    for line in lines {
        let text = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::String(s)) => s,
            Ok(other) => {
                t.errors += 1;
                t.note("error", &other.to_string());
                continue;
            }
            // A line cut by a kill: not a read.
            Err(_) => continue,
        };
        if text.is_empty() {
            t.empty += 1;
            continue;
        }
        match credential(&text) {
            Some((u, p, lease)) if u == uid && p == pid => {
                if seen.insert(lease) {
                    t.own += 1;
                } else {
                    t.stale += 1;
                    t.note("stale", &text);
                }
            }
            Some(_) => {
                t.foreign += 1;
                t.note("foreign", &text);
            }
            None => {
                t.mixed += 1;
                t.note("mixed", &text);
            }
        }
    }
    t
}

/// Reads per user below which a run proves nothing.
const MIN_READS: usize = 40;

fn cross_user_mix(nobody_reads: &str, daemon_reads: &str) {
    require_root("readers run as nobody and daemon");
    let _load = LOAD.read().unwrap_or_else(|e| e.into_inner());
    let mut env = mount();
    let wd = Watchdog::start(&env.mnt(), BUDGET);
    let file = env.m("dyn/cred");
    let reader = env.path("reader.py");
    let users = [("nobody", nobody_reads), ("daemon", daemon_reads)];
    let mut kids: Vec<Child> = users
        .iter()
        .map(|&(user, how)| {
            let (uid, gid) = ids(user);
            let out = std::fs::File::create(env.path(&format!("{user}.out"))).unwrap();
            let err = std::fs::File::create(env.path(&format!("{user}.err"))).unwrap();
            wd.spawn(
                Command::new("python3")
                    .arg(&reader)
                    .args([how, file.to_str().unwrap(), &RUN.as_secs_f64().to_string()])
                    .uid(uid)
                    .gid(gid)
                    .stdout(out)
                    .stderr(err),
            )
        })
        .collect();
    let (lat, statuses) = wd.watch(&mut kids, Duration::from_millis(300));
    let mut report = Vec::new();
    let mut tallies = Vec::new();
    for (i, &(user, how)) in users.iter().enumerate() {
        let t = tally(&std::fs::read_to_string(env.path(&format!("{user}.out"))).unwrap(), ids(user).0);
        let err = std::fs::read_to_string(env.path(&format!("{user}.err"))).unwrap();
        report.push(format!(
            "{user} ({how}): {} reads: own {}, foreign {}, mixed {}, empty {}, stale {}, errors {}; exit {:?}{}{}",
            t.own + t.bad(),
            t.own,
            t.foreign,
            t.mixed,
            t.empty,
            t.stale,
            t.errors,
            statuses[i],
            if err.is_empty() {
                String::new()
            } else {
                format!(
                    "; stderr ends: {}",
                    err.chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect::<String>()
                )
            },
            t.examples.iter().map(|e| format!("\n    e.g. {e}")).collect::<String>(),
        ));
        tallies.push(t);
    }
    let report = format!("{}\nprobes beside the readers: {}", report.join("\n"), lat_summary(&lat));
    eprintln!("{nobody_reads} vs {daemon_reads}:\n{report}");
    if let Some(why) = wd.fired() {
        froze(&mut env, &why, &report);
    }
    if let Err(e) = wd.answers_after() {
        froze(&mut env, &format!("{} after the readers stopped: {e}", wd.fired().unwrap_or_default()), &report);
    }
    for (i, t) in tallies.iter().enumerate() {
        let user = users[i].0;
        assert!(statuses[i].is_some_and(|s| s.success()), "{user}'s reader did not exit cleanly\n{report}");
        assert_eq!(t.bad(), 0, "{user} read bytes that were not its own whole credential\n{report}");
        assert!(t.own >= MIN_READS, "{user} made only {} reads in {RUN:?}: the run proves nothing\n{report}", t.own);
    }
}

#[test]
fn cross_user_sendfile_vs_sendfile_each_reader_gets_only_its_own_whole_credential() {
    cross_user_mix("sendfile", "sendfile");
}

#[test]
fn cross_user_splice_vs_splice_each_reader_gets_only_its_own_whole_credential() {
    cross_user_mix("splice", "splice");
}

#[test]
fn cross_user_mmap_vs_mmap_each_reader_gets_only_its_own_whole_credential() {
    cross_user_mix("mmap", "mmap");
}

#[test]
fn cross_user_read_vs_sendfile_each_reader_gets_only_its_own_whole_credential() {
    cross_user_mix("read", "sendfile");
}

#[test]
fn cross_user_read_vs_mmap_each_reader_gets_only_its_own_whole_credential() {
    cross_user_mix("read", "mmap");
}

// ---------------------------------------------------------------------------------------------
// 2–4. Program loops on the jwt entry.

/// Outcomes of a program loop's runs.
#[derive(Default, Debug)]
struct Runs {
    runs: usize,
    whole: usize,
    empty: usize,
    failed: usize,
    cut: usize,
    examples: Vec<String>,
}

fn is_whole_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

fn runs(out: &str) -> Runs {
    let mut r = Runs::default();
    for line in out.lines() {
        let Ok(serde_json::Value::Array(v)) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        r.runs += 1;
        let (rc, text, err) = (v[0].as_i64().unwrap_or(-1), v[1].as_str().unwrap_or(""), v[2].as_str().unwrap_or(""));
        let what = if rc != 0 {
            r.failed += 1;
            "failed"
        } else if text.is_empty() {
            r.empty += 1;
            "empty"
        } else if is_whole_jwt(text) {
            r.whole += 1;
            continue;
        } else {
            r.cut += 1;
            "not a whole JWT"
        };
        if r.examples.len() < 3 {
            r.examples.push(format!(
                "{what}: exit {rc}, {:?}, stderr {:?}",
                text.chars().take(120).collect::<String>(),
                err
            ));
        }
    }
    r
}

impl std::fmt::Display for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} runs: {} whole JWTs, {} empty, {} failed, {} not whole",
            self.runs, self.whole, self.empty, self.failed, self.cut
        )?;
        for e in &self.examples {
            write!(f, "\n    e.g. {e}")?;
        }
        Ok(())
    }
}

/// Runs for a program loop below which a run proves nothing.
const MIN_RUNS: usize = 40;

/// Starts `threads` loops of `argv` as `user`, each bounded by `RUN`; output to `<name>.out`.
fn program_loop(env: &Env, wd: &Watchdog, name: &str, user: &str, threads: usize, argv: &[&str]) -> Child {
    let (uid, gid) = ids(user);
    let out = std::fs::File::create(env.path(&format!("{name}.out"))).unwrap();
    let err = std::fs::File::create(env.path(&format!("{name}.err"))).unwrap();
    wd.spawn(
        Command::new("python3")
            .arg(env.path("loop.py"))
            .args([RUN.as_secs_f64().to_string(), threads.to_string()])
            .args(argv)
            .uid(uid)
            .gid(gid)
            .stdout(out)
            .stderr(err),
    )
}

/// Fails the test (aborting the connection) if a probe missed its deadline during the loops, or
/// if `stat` and `ls` do not answer within 1 s after them.
fn fail_if_frozen(env: &mut Env, wd: &Watchdog, report: &str) {
    if let Some(why) = wd.fired() {
        froze(env, &why, report);
    }
    match wd.answers_after() {
        Ok((s, l)) => eprintln!("after the loops: stat {s:?}, ls {l:?}"),
        Err(e) => froze(env, &format!("{} after the loops stopped: {e}", wd.fired().unwrap_or_default()), report),
    }
}

fn loop_runs(env: &Env, name: &str) -> Runs {
    runs(&std::fs::read_to_string(env.path(&format!("{name}.out"))).unwrap_or_default())
}

#[test]
fn busybox_cat_of_one_user_beside_cat_of_another_on_a_jwt_file_never_freezes_the_mount() {
    require_root("readers run as nobody and daemon");
    let _load = LOAD.read().unwrap_or_else(|e| e.into_inner());
    let mut env = mount();
    let wd = Watchdog::start(&env.mnt(), BUDGET);
    let f = env.m("tokens/api");
    let f = f.to_str().unwrap();
    let mut kids = vec![
        program_loop(&env, &wd, "busybox", "nobody", 1, &["/bin/busybox", "cat", f]),
        program_loop(&env, &wd, "cat", "daemon", 1, &["cat", f]),
    ];
    let (lat, statuses) = wd.watch(&mut kids, Duration::from_millis(200));
    let (bb, cat) = (loop_runs(&env, "busybox"), loop_runs(&env, "cat"));
    let report = format!(
        "busybox cat (nobody): {bb}\ncat (daemon): {cat}\nexits {statuses:?}\nprobes beside the loops: {}",
        lat_summary(&lat)
    );
    eprintln!("{report}");
    fail_if_frozen(&mut env, &wd, &report);
    assert!(
        bb.runs - bb.failed >= MIN_RUNS && cat.runs - cat.failed >= MIN_RUNS,
        "too few runs to prove anything\n{report}"
    );
}

#[test]
fn thirty_two_busybox_cat_loops_of_one_uid_on_a_jwt_file_get_whole_tokens_and_never_freeze_the_mount() {
    require_root("readers run as nobody");
    let _load = LOAD.write().unwrap_or_else(|e| e.into_inner());
    let mut env = mount();
    let wd = Watchdog::start(&env.mnt(), BUDGET);
    let f = env.m("tokens/api");
    let mut kids =
        vec![program_loop(&env, &wd, "busybox", "nobody", 32, &["/bin/busybox", "cat", f.to_str().unwrap()])];
    let (lat, statuses) = wd.watch(&mut kids, Duration::from_millis(100));
    let bb = loop_runs(&env, "busybox");
    let report =
        format!("32 busybox cat loops (nobody): {bb}\nexit {statuses:?}\nstat/ls beside them: {}", lat_summary(&lat));
    eprintln!("{report}");
    fail_if_frozen(&mut env, &wd, &report);
    assert!(bb.runs >= MIN_RUNS, "too few runs to prove anything\n{report}");
    assert_eq!(bb.whole, bb.runs, "every busybox cat must print one whole JWT\n{report}");
}

#[test]
fn busybox_cat_of_one_user_beside_a_stat_loop_of_another_on_the_same_jwt_file_never_reads_empty() {
    require_root("readers run as nobody and daemon");
    let _load = LOAD.read().unwrap_or_else(|e| e.into_inner());
    let mut env = mount();
    let wd = Watchdog::start(&env.mnt(), BUDGET);
    let f = env.m("tokens/api");
    let f = f.to_str().unwrap();
    let mut kids = vec![
        program_loop(&env, &wd, "busybox", "nobody", 1, &["/bin/busybox", "cat", f]),
        program_loop(&env, &wd, "stat", "daemon", 1, &["stat", "-c", "%s", f]),
    ];
    let (lat, statuses) = wd.watch(&mut kids, Duration::from_millis(300));
    let (bb, st) = (loop_runs(&env, "busybox"), loop_runs(&env, "stat"));
    let report = format!(
        "busybox cat (nobody): {bb}\nstat of the same file (daemon): {} runs, {} failed\nexits {statuses:?}\nprobes: {}",
        st.runs,
        st.failed,
        lat_summary(&lat)
    );
    eprintln!("{report}");
    if let Some(why) = wd.fired() {
        froze(&mut env, &why, &report);
    }
    assert!(bb.runs >= MIN_RUNS && st.runs >= MIN_RUNS, "too few runs to prove anything\n{report}");
    assert_eq!(bb.empty, 0, "busybox cat printed an empty file while another user ran stat\n{report}");
    assert_eq!(bb.whole, bb.runs, "every busybox cat must print one whole JWT\n{report}");
}
