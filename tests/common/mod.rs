//! Test harness: a temp catalog, a real `leasefs mount` child process, and real programs to read it. Always detaches on drop.
#![allow(dead_code)]

pub mod backends;
pub mod podman;
pub mod recipes;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_leasefs");

pub fn is_mounted(p: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let want = p.to_string_lossy().replace(' ', "\\040");
    text.lines().any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// statfs answers with FUSE's magic number only on a live FUSE mount.
pub fn is_live_fuse(p: &Path) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs into a zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == FUSE_SUPER_MAGIC
    }
}

pub fn detach(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: umount2 with a valid path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// A scratch directory with `docs/`, `mnt/`, `state/` and a config; detaches any mount before deleting.
pub struct Env {
    pub mount: Option<Mounted>,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new().prefix("leasefs-test-").tempdir().unwrap();
        for d in ["docs", "mnt", "state"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::set_permissions(dir.path().join("docs"), std::fs::Permissions::from_mode(0o700)).unwrap();
        Env { mount: None, dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn docs(&self) -> PathBuf {
        self.path("docs")
    }
    pub fn mnt(&self) -> PathBuf {
        self.path("mnt")
    }
    /// A path inside the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt().join(rel)
    }

    /// Writes a document file (mode 0600) under docs/.
    pub fn doc(&self, name: &str, text: &str) -> PathBuf {
        let p = self.docs().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// Writes config.json (mode 0600) with a local source over docs/ and the given extra top-level keys.
    pub fn config(&self, extra: serde_json::Value) -> PathBuf {
        let mut cfg = serde_json::json!({
            "sources": [{"type": "local", "prefix": "/", "path": self.docs()}],
            "state_dir": self.path("state"),
            "audit_log": self.path("audit.jsonl"),
        });
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        let p = self.path("config.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// Mounts with the current config.json.
    pub fn start(&mut self) -> &mut Mounted {
        self.start_with(&[])
    }

    pub fn start_with(&mut self, args: &[&str]) -> &mut Mounted {
        self.start_env(args, &[])
    }

    /// Mounts with extra arguments (before `mount`, e.g. `--log-format json`, go in `pre`) and environment.
    pub fn start_env(&mut self, args: &[&str], envs: &[(&str, &str)]) -> &mut Mounted {
        drop(self.mount.take());
        let m = Mounted::start_full(&self.path("config.json"), &self.mnt(), &self.path("daemon.log"), &[], args, envs);
        self.mount = Some(m);
        self.mount.as_mut().unwrap()
    }

    pub fn daemon(&mut self) -> &mut Mounted {
        self.mount.as_mut().expect("not mounted")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// A sample of `/.leasefs/metrics` (its name with its labels, e.g.
    /// `x_total{issuer="exec"}`); 0 when absent.
    pub fn metric(&self, sample: &str) -> u64 {
        let text = read(&self.m(".leasefs/metrics")).unwrap();
        text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        drop(self.mount.take());
        let mnt = self.mnt();
        if is_mounted(&mnt) {
            detach(&mnt);
        }
    }
}

/// A running `leasefs mount` process.
pub struct Mounted {
    /// After `kill9` the dead mount is left for the next daemon to recover.
    pub leave_mount: bool,
    pub child: Option<Child>,
    pub mnt: PathBuf,
    pub log: PathBuf,
}

impl Mounted {
    pub fn start(config: &Path, mnt: &Path, log: &Path, args: &[&str]) -> Mounted {
        Self::start_full(config, mnt, log, &[], args, &[])
    }

    pub fn start_full(
        config: &Path,
        mnt: &Path,
        log: &Path,
        pre: &[&str],
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Mounted {
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let level = if pre.contains(&"--log-level") {
            vec![]
        } else {
            vec!["--log-level".to_string(), std::env::var("LEASEFS_TEST_LOG").unwrap_or_else(|_| "debug".into())]
        };
        let child = Command::new(BIN)
            .args(&level)
            .args(pre)
            .envs(envs.iter().copied())
            .arg("mount")
            .arg(mnt)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("LEASEFS_TEST_LEAK", "should-not-pass")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn leasefs");
        let mut m = Mounted { leave_mount: false, child: Some(child), mnt: mnt.to_path_buf(), log: log.to_path_buf() };
        m.wait_ready();
        m
    }

    /// Waits until the mountpoint is in /proc/mounts and is a live FUSE mount (a mount left dead by
    /// a killed daemon is listed too, but statfs on it fails with ENOTCONN).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(is_mounted(&self.mnt) && is_live_fuse(&self.mnt)) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("leasefs exited with {st} before mounting:\n{}", std::fs::read_to_string(&self.log).unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "not mounted after 20 s:\n{}",
                std::fs::read_to_string(&self.log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Sends SIGTERM and waits (at most 15 s) for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(15)).expect("leasefs did not exit after SIGTERM")
    }

    /// `kill -9`: the mount is left dead, like after a crash.
    pub fn kill9(&mut self) {
        self.leave_mount = true;
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(5)).expect("SIGKILL");
    }

    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
            if self.wait(Duration::from_secs(10)).is_none() {
                self.signal(libc::SIGKILL);
                let _ = self.wait(Duration::from_secs(5));
            }
        }
        if !self.leave_mount && is_mounted(&self.mnt) {
            detach(&self.mnt);
        }
    }
}

/// Runs a program; returns its output.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// Runs a program and returns stdout, asserting success.
pub fn ok(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(o.status.success(), "{cmd} {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Runs a program expecting failure; returns stderr.
pub fn fails(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(!o.status.success(), "{cmd} {args:?} unexpectedly succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn cat(p: &Path) -> String {
    ok("cat", &[p.to_str().unwrap()])
}

/// Reads a whole file with std (one open, reads to EOF).
pub fn read(p: &Path) -> std::io::Result<String> {
    let mut s = String::new();
    std::fs::File::open(p)?.read_to_string(&mut s)?;
    Ok(s)
}

pub fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// Runs a command as another user (via runuser), returning the output.
pub fn as_user(user: &str, cmd: &[&str]) -> Output {
    Command::new("runuser").arg("-u").arg(user).arg("--").args(cmd).output().expect("runuser")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails the test (never skips it) when it does not run as root: the suite runs as root in CI,
/// and a test whose precondition is missing must not pass.
pub fn require_root(why: &str) {
    assert!(is_root(), "this test must run as root ({why}); run ./scripts/test.sh as root");
}

/// A test issuer script (sh) with modes chosen by its first argument; it logs what it was asked
/// to `issued.txt`, `last-request.json`, `last-env.txt`, and revocations to `revoked.jsonl`.
pub const ISSUER_SCRIPT: &str = r#"#!/bin/sh
here=$(dirname "$0")
mode=$1
if [ "$mode" = revoke ]; then
  req=$(cat); printf '%s\n' "$req" >> "$here/revoked.jsonl"; exit 0
fi
if [ "$mode" = revoke-fail ]; then
  echo "revocation endpoint down" >&2; exit 1
fi
cat > "$here/last-request.json"
env > "$here/last-env.txt"
echo "$LEASEFS_LEASE_ID" >> "$here/issued.txt"
n=$(wc -l < "$here/issued.txt")
pw=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
case "$mode" in
  royal)   printf '{"Username": "user-%s", "Password": "pw-%s", "LeaseId": "%s"}\n' "$n" "$pw" "$LEASEFS_LEASE_ID" ;;
  aws)     printf '{"Version": 1, "AccessKeyId": "ASIA%s", "SecretAccessKey": "sk-%s", "SessionToken": "st-%s", "Expiration": "%s"}\n' "$n" "$pw" "$pw" "$(date -u -d '+10 min' +%Y-%m-%dT%H:%M:%SZ)" ;;
  token)   printf '{"token": "tok-%s"}\n' "$pw" ;;
  far)     printf '{"Username": "u%s", "Password": "pw-%s", "ExpiresAt": "2099-01-01T00:00:00Z"}\n' "$n" "$pw" ;;
  expired) printf '{"Username": "u%s", "Password": "pw-%s", "ExpiresAt": "2001-01-01T00:00:00Z"}\n' "$n" "$pw" ;;
  garbage) echo "this is not json pw-$pw" ;;
  binary)  head -c 200 /dev/urandom ;;
  huge)    head -c 20000000 /dev/zero | tr '\0' 'a' ;;
  slow)    echo $$ > "$here/slow.pid"; sleep 37; echo '{"Password": "late"}' ;;
  sleep2)  sleep 2; printf '{"Password": "pw-%s"}\n' "$pw" ;;
  fail)    echo "boom: cannot reach the vault" >&2; exit 3 ;;
  noisy)   head -c 10000 /dev/zero | tr '\0' 'e' >&2; exit 1 ;;
  pair)    printf '{"Username": "u-%s", "Password": "p-%s", "host": "db.internal"}\n' "$pw" "$pw" ;;
  loud)    head -c 1000000 /dev/zero | tr '\0' 'e' >&2; echo "secret-in-stderr-$pw" >&2; exit 1 ;;
  slowmint) echo $$ > "$here/slowmint.pid"; (sleep 31.5; echo late > "$here/late-child") & sleep 3; echo minted >> "$here/minted.txt"; printf '{"Password": "pw-%s"}\n' "$pw" ;;
  *)       echo "unknown mode $mode" >&2; exit 2 ;;
esac
"#;

impl Env {
    /// Installs the test issuer as `issuer.sh` (0700) and returns its path.
    pub fn script(&self) -> String {
        let p = self.path("issuer.sh");
        std::fs::write(&p, ISSUER_SCRIPT).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// Lines of a file the test issuer writes (empty if it does not exist yet).
    pub fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()
    }

    /// The ids of leases the test issuer was asked to revoke.
    pub fn revoked(&self) -> Vec<String> {
        self.lines("revoked.jsonl")
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lease_id"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn leases(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&read(&self.m(".leasefs/leases.json")).unwrap()).unwrap()
    }
}

/// A dynamic document linking `path` to the base secret `base`, with extra attributes.
pub fn dynamic(path: &str, base: &str, attrs: serde_json::Value) -> serde_json::Value {
    let mut a = serde_json::json!({"linkConfig": {"linkType": "dynamic", "linkedSecret": base}});
    a.as_object_mut().unwrap().extend(attrs.as_object().unwrap().clone());
    serde_json::json!({"path": path, "attributes": a})
}

/// A base secret for the test issuer, and dynamic entries using it in the given modes.
pub fn exec_catalog(script: &str, entries: &[(&str, &str, serde_json::Value)]) -> String {
    let mut docs = vec![serde_json::json!({
        "path": "base:exec:test", "attributes": {"type": "exec"},
        "data": {"command": [script, "royal"], "revoke_command": [script, "revoke"], "api_token": "base-secret-token-xyz"}
    })];
    for (path, mode, attrs) in entries {
        let base = format!("base:exec:{mode}");
        docs.push(serde_json::json!({
            "path": base, "attributes": {"type": "exec"},
            "data": {"command": [script, mode], "revoke_command": [script, "revoke"], "api_token": "base-secret-token-xyz"}
        }));
        let mut a = serde_json::json!({"linkConfig": {"linkType": "dynamic", "linkedSecret": base}});
        if let (Some(o), Some(extra)) = (a.as_object_mut(), attrs.as_object()) {
            o.extend(extra.clone());
        }
        docs.push(serde_json::json!({"id": format!("id-{}", path.replace(':', "-")), "path": path, "attributes": a}));
    }
    let mut seen = std::collections::HashSet::new();
    docs.retain(|d| seen.insert(d["path"].as_str().unwrap().to_string()));
    serde_json::to_string_pretty(&docs).unwrap()
}

/// Waits until `f` holds (polling every 50 ms), or panics with `what` after `limit`.
pub fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CA (`ca.pem`) and a certificate for `san` (`node.pem`, `node.key`) in `dir`, made with openssl.
pub fn test_certificates(dir: &Path, san: &str) {
    let p = |n: &str| dir.join(n).to_string_lossy().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    ok(
        "openssl",
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", &p("ca.key"), "-out", &p("ca.pem"), "-days", "1", "-subj", "/CN=leasefs test CA"],
        ]
        .concat(),
    );
    ok(
        "openssl",
        &[&["req"][..], &ec, &["-keyout", &p("node.key"), "-out", &p("node.csr"), "-subj", "/CN=leasefs test node"]]
            .concat(),
    );
    std::fs::write(dir.join("ext"), format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\n")).unwrap();
    ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p("node.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("node.pem"),
            "-days",
            "1",
            "-extfile",
            &p("ext"),
        ],
    );
}

/// Starts a test fixture (`tests/fixtures/NAME`) and waits for it to print "ready".
pub fn fixture_server(name: &str, args: &[&str]) -> Child {
    let mut child = Command::new("python3")
        .arg(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "ready", "{name} did not start");
    child
}

/// A free TCP port on loopback.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// FUSE requests by operation, from `/.leasefs/metrics`.
pub fn fuse_requests(env: &Env) -> std::collections::BTreeMap<String, i64> {
    let m = cat(&env.m(".leasefs/metrics"));
    m.lines()
        .filter_map(|l| l.strip_prefix("leasefs_fuse_requests_total{op=\""))
        .filter_map(|l| {
            let (op, rest) = l.split_once("\"} ")?;
            Some((op.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// The FUSE requests `f` makes, by operation (what reading the metrics costs, measured just
/// before, is taken off).
pub fn requests_of(env: &Env, f: impl FnOnce()) -> Vec<(String, i64)> {
    let (a, b) = (fuse_requests(env), fuse_requests(env));
    f();
    let c = fuse_requests(env);
    let was = |m: &std::collections::BTreeMap<String, i64>, op: &str| m.get(op).copied().unwrap_or(0);
    c.iter()
        .map(|(op, n)| (op.clone(), n - was(&b, op) - (was(&b, op) - was(&a, op))))
        .filter(|(_, n)| *n != 0)
        .collect()
}

/// The FUSE connection number of the mount at `mnt`: the minor device number in
/// `/proc/self/mountinfo` (field 3), read without touching the mount, which may be frozen.
pub fn fuse_connection(mnt: &Path) -> Option<u32> {
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = info.lines().rfind(|l| l.split(' ').nth(4) == Some(want.as_str()))?;
    line.split(' ').nth(2)?.split_once(':')?.1.parse().ok()
}

/// Aborts the FUSE connection of the mount at `mnt` (mounting fusectl at
/// /sys/fs/fuse/connections first if it is not): every request waiting on it fails, which is the
/// only way to free a frozen mount. Returns the connection number.
pub fn abort_fuse(mnt: &Path) -> Result<u32, String> {
    let conn = fuse_connection(mnt).ok_or_else(|| format!("{} is not in /proc/self/mountinfo", mnt.display()))?;
    let ctl = Path::new("/sys/fs/fuse/connections");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| l.split(' ').nth(2) == Some("fusectl")) {
        let o = run("mount", &["-t", "fusectl", "none", "/sys/fs/fuse/connections"]);
        if !o.status.success() {
            return Err(format!("cannot mount fusectl: {}", String::from_utf8_lossy(&o.stderr)));
        }
    }
    std::fs::write(ctl.join(conn.to_string()).join("abort"), "1")
        .map_err(|e| format!("cannot abort FUSE connection {conn}: {e}"))?;
    Ok(conn)
}
