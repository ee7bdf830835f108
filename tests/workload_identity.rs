//! Workload identity on a real mount: two podman containers running as one uid get their own
//! leases (`reuse: "workload"`) and an `allow` on one container's id keeps the other out; a
//! process in a kubelet-style pod cgroup gets a JWT naming its pod; a `bind: "cgroup"` lease is
//! revoked once its cgroup empties; a systemd-style `*.service` cgroup is a `unit` for `allow`.
//! Processes are placed in cgroups of v1's `name=systemd` hierarchy (or the unified one), as
//! root, by writing their pid to `cgroup.procs`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::podman::{podman, podman_ok};
use common::*;
use serde_json::json;

/// The local busybox image these scenarios run.
fn busybox_image() -> String {
    common::podman::busybox_image("leasefs-test-wl", &["run/s"])
}

/// Removes a container when the test ends, however it ends.
struct Container(String);
impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.0]);
    }
}

/// The hierarchy leasefs reads a process's cgroup from: v1's `name=systemd`, else the unified one.
fn hierarchy() -> PathBuf {
    let systemd = Path::new("/sys/fs/cgroup/systemd");
    if systemd.join("cgroup.procs").exists() {
        return systemd.to_path_buf();
    }
    let unified = Path::new("/sys/fs/cgroup");
    assert!(unified.join("cgroup.procs").exists(), "no cgroup hierarchy to place processes in");
    unified.to_path_buf()
}

/// A cgroup made for the test (path relative to the hierarchy root), removed at the end.
struct Cgroup {
    rel: String,
    top: PathBuf,
}

impl Cgroup {
    /// Makes `/<top>/<rest>`; the whole `<top>` tree is removed at drop.
    fn new(top: &str, rest: &str) -> Cgroup {
        let h = hierarchy();
        let rel = format!("/{top}/{rest}");
        std::fs::create_dir_all(h.join(&rel[1..])).unwrap_or_else(|e| panic!("mkdir cgroup {rel}: {e}"));
        Cgroup { rel, top: h.join(top) }
    }
    fn dir(&self) -> PathBuf {
        hierarchy().join(&self.rel[1..])
    }
    fn place(&self, pid: u32) {
        std::fs::write(self.dir().join("cgroup.procs"), pid.to_string()).expect("write the pid to cgroup.procs");
    }
    fn procs(&self) -> String {
        std::fs::read_to_string(self.dir().join("cgroup.procs")).unwrap_or_default()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Deepest first; a cgroup still holding a process is moved out of by killing nothing: the
        // tests wait for their children before this runs.
        let mut dirs = Vec::new();
        let mut stack = vec![self.top.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A shell (as `nobody`) that waits for a line on stdin, then runs `script`; its pid is the
/// shell's, so it can be placed in a cgroup before it reads anything.
struct Waiting {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Waiting {
    fn new(script: &str) -> Waiting {
        let mut child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
            .arg(format!("read go; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv");
        let out = BufReader::new(child.stdout.take().unwrap());
        Waiting { child, out }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn go(&mut self) {
        self.child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }
    /// Runs to the end (its stdin closed); what it printed and wrote to stderr.
    fn finish(mut self) -> (String, String) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.out, &mut rest).unwrap();
        let o = self.child.wait_with_output().unwrap();
        (rest, String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// Runs `script` as `nobody` in cgroup `cg`; its output and stderr.
fn run_in(cg: &Cgroup, script: &str) -> (String, String) {
    let mut w = Waiting::new(script);
    cg.place(w.pid());
    w.go();
    w.finish()
}

fn denials(env: &Env, path: &str) -> Vec<serde_json::Value> {
    env.audit().into_iter().filter(|e| e["event"] == "deny" && e["path"] == path).collect()
}

#[test]
fn two_containers_of_one_uid_never_share_a_lease_and_allow_names_the_one_let_in() {
    require_root("rootful podman, cgroups");
    let mut env = Env::new();
    let script = env.script();
    // Created first (their ids are known before the mount starts), started once it is there.
    let create = |name: &str| {
        // The mount point (it exists before the mount does; podman looks at create).
        let dir = format!("{}:/run/s:ro", env.mnt().display());
        podman_ok(&[
            "create",
            "--name",
            name,
            "--network",
            "none",
            "--user",
            "1000:1000",
            "-v",
            &dir,
            &busybox_image(),
            "sleep",
            "300",
        ])
    };
    let tag = std::process::id();
    let (na, nb) = (format!("leasefs-wl-a-{tag}"), format!("leasefs-wl-b-{tag}"));
    let a = create(&na);
    let _a = Container(na.clone());
    let b = create(&nb);
    let _b = Container(nb.clone());
    assert!(a.len() == 64 && b.len() == 64, "podman create prints the container id: {a} {b}");
    let docs = exec_catalog(
        &script,
        &[
            ("w:cred", "royal", json!({"format": "raw:Password", "mode": "0444", "reuse": "workload", "ttl": "60s"})),
            (
                "w:only-a",
                "royal",
                json!({"format": "raw:Password", "mode": "0444", "allow": [{"container": &a[..12]}]}),
            ),
        ],
    );
    env.doc("d.json", &docs);
    env.config(json!({"allow_other": true}));
    env.start();
    podman_ok(&["start", &na]);
    podman_ok(&["start", &nb]);
    let exec = |name: &str, file: &str| podman(&["exec", name, "sh", "-c", &format!("id -u; cat /run/s/w/{file}")]);
    let out = |o: Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        let lines: Vec<String> = s.lines().map(String::from).collect();
        assert_eq!(lines[0], "1000", "both containers run as uid 1000");
        lines[1].clone()
    };
    let (a1, a2) = (out(exec(&na, "cred")), out(exec(&na, "cred")));
    let (b1, b2) = (out(exec(&nb, "cred")), out(exec(&nb, "cred")));
    assert!(a1.starts_with("pw-") && b1.starts_with("pw-"), "{a1} {b1}");
    assert_eq!(a1, a2, "one lease per container: its second read shares the first's");
    assert_eq!(b1, b2);
    assert_ne!(a1, b1, "the other container, same uid, gets its own credential");
    // leases.json names each lease's container.
    let leases = env.leases();
    let mut ids: Vec<&str> = leases.iter().filter_map(|l| l["workload"]["container"].as_str()).collect();
    ids.sort();
    let mut want = [a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(ids, want, "{leases:?}");

    // allow: [{"container": <a's id prefix>}]: a reads, b is refused and the refusal audited.
    assert!(out(exec(&na, "only-a")).starts_with("pw-"));
    let o = exec(&nb, "only-a");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("Permission denied"), "{err}");
    let d = denials(&env, "/w/only-a");
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["workload"]["container"], b.as_str(), "the audit line names who was refused: {d:?}");
    assert_eq!(d[0]["uid"], 1000);
    // The host (no container) is not let in either.
    assert_eq!(errno_of(read(&env.m("w/only-a"))), libc::EACCES);
}

#[test]
fn a_process_in_a_kubelet_pod_cgroup_gets_a_jwt_naming_its_pod_and_units_pass_allow() {
    require_root("cgroups");
    let mut env = Env::new();
    let key = "0123456789abcdef0123456789abcdef";
    let docs = json!([
        {"path": "base:jwt", "attributes": {"type": "jwt"}, "data": {"algorithm": "HS256", "key": key}},
        {"path": "t:pod", "attributes": {"linkConfig": {"linkType": "dynamic", "linkedSecret": "base:jwt"}, "mode": "0444",
         "subject": "spiffe://example.org/pod/{{workload.pod_uid}}", "audience": ["pods", "uid-{{requester.uid}}"],
         "claims": {"container": "{{workload.container}}"}, "format": "raw:token"}},
        {"path": "app:key", "attributes": {"mode": "0444", "allow": [{"unit": "x.service"}]}, "data": {"value": "for-x-only"}}
    ]);
    env.doc("d.json", &docs.to_string());
    env.config(json!({"allow_other": true}));
    env.start();
    let tag = format!("leasefs-test-wl-{}", std::process::id());
    let uid = "0d2c6f3e-5b1a-4c7e-9a8b-1f2e3d4c5b6a";
    let cid = "8f3c1f0e5b2a4d6c9e7f1a3b5c7d9e0f2a4b6c8d0e1f3a5b7c9d1e3f5a7b9c0d";
    let pod = Cgroup::new(&tag, &format!("kubepods/besteffort/pod{}/{cid}", uid.replace('-', "_")));
    let (out, err) = run_in(&pod, &format!("cat {}", env.m("t/pod").display()));
    assert!(err.is_empty(), "{err}");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_audience(&["pods"]);
    let t = jsonwebtoken::decode::<serde_json::Value>(
        out.trim(),
        &jsonwebtoken::DecodingKey::from_secret(key.as_bytes()),
        &v,
    )
    .expect("a valid token");
    assert_eq!(t.claims["sub"], format!("spiffe://example.org/pod/{uid}"));
    assert_eq!(t.claims["container"], cid);
    assert_eq!(t.claims["aud"], json!(["pods", "uid-65534"]));
    // A reader outside any pod has no pod uid: refused, audited, never an empty subject.
    let plain = Cgroup::new(&tag, "plain");
    let (out, err) = run_in(&plain, &format!("cat {}", env.m("t/pod").display()));
    assert!(out.is_empty() && err.contains("Permission denied"), "{out} {err}");
    let d = denials(&env, "/t/pod");
    assert!(d.len() == 1 && d[0]["detail"].as_str().unwrap().contains("workload.pod_uid"), "{d:?}");

    // allow: [{"unit": "x.service"}] on a static secret: x.service reads it, y.service does not.
    let x = Cgroup::new(&tag, "system.slice/x.service");
    let y = Cgroup::new(&tag, "system.slice/y.service");
    assert_eq!(run_in(&x, &format!("cat {}", env.m("app/key").display())).0, "for-x-only");
    let (out, err) = run_in(&y, &format!("cat {}", env.m("app/key").display()));
    assert!(out.is_empty() && err.contains("Permission denied"), "{out} {err}");
    let d = denials(&env, "/app/key");
    assert!(d.len() == 1 && d[0]["workload"]["unit"] == "y.service", "{d:?}");
    assert_eq!(errno_of(read(&env.m("app/key"))), libc::EACCES, "root outside x.service is refused too");
}

#[test]
fn a_cgroup_bound_lease_is_revoked_once_its_cgroup_has_no_process_left() {
    require_root("cgroups");
    let mut env = Env::new();
    let script = env.script();
    let docs = exec_catalog(
        &script,
        &[(
            "ci:db",
            "royal",
            json!({"files": {"password": "raw:Password"}, "mode": "0444", "bind": "cgroup", "ttl": "5m"}),
        )],
    );
    env.doc("d.json", &docs);
    env.config(json!({"allow_other": true}));
    env.start();
    let tag = format!("leasefs-test-wl-{}", std::process::id());
    let job = Cgroup::new(&tag, "ci/job-42.scope");
    // A bundle (its files share one lease per binding), bound to the reader's cgroup.
    let file = env.m("ci/db/password");
    // Two processes of the job: the second shares the first's lease (one per cgroup). The first
    // keeps the file open (fd 3) until told to end.
    let mut first = Waiting::new(&format!("exec 3< {}; cat <&3; echo; read done", file.display()));
    job.place(first.pid());
    first.go();
    let t1 = first.line();
    let (t2, _) = run_in(&job, &format!("cat {}", file.display()));
    assert!(t1.starts_with("pw-") && t1 == t2, "one lease per cgroup: {t1} {t2}");
    let leases = env.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    let id = leases[0]["id"].as_str().unwrap().to_string();
    assert_eq!(leases[0]["workload"]["cgroup"], format!("/{tag}/ci/job-42.scope"));
    // The issuer's script got the job's workload, in its environment and its request.
    let script_env = std::fs::read_to_string(env.path("last-env.txt")).unwrap();
    assert!(script_env.contains(&format!("LEASEFS_WORKLOAD_CGROUP=/{tag}/ci/job-42.scope\n")), "{script_env}");
    assert!(
        script_env.contains("LEASEFS_WORKLOAD_UNIT=job-42.scope\n") && !script_env.contains("LEASEFS_WORKLOAD_POD_UID")
    );
    let request: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("last-request.json")).unwrap()).unwrap();
    assert_eq!(request["requester"]["workload"]["unit"], "job-42.scope");
    // The first reader's open file, reopened through /proc/PID/fd/3 (the same node, so the same
    // lease): from the job's own cgroup it is shared; from another cgroup of the same uid, refused.
    let fd3 = format!("/proc/{}/fd/3", first.pid());
    assert_eq!(run_in(&job, &format!("cat {fd3}")).0, t1);
    let other = Cgroup::new(&tag, "other.scope");
    let (out, err) = run_in(&other, &format!("cat {fd3}"));
    assert!(out.is_empty() && err.contains("Permission denied"), "{out} {err}");
    assert!(env.revoked().is_empty(), "live while the job runs");
    // The job's last process exits: the lease is revoked within 2 s.
    let _ = first.finish();
    eventually(Duration::from_secs(5), "the job's cgroup to empty", || job.procs().trim().is_empty());
    let gone = Instant::now();
    eventually(Duration::from_secs(5), "the issuer's revoke call", || env.revoked().contains(&id));
    let took = gone.elapsed();
    assert!(took < Duration::from_secs(2), "revoked {took:?} after the cgroup emptied");
    let line = env.audit().into_iter().find(|e| e["event"] == "revoke" && e["lease_id"] == id.as_str());
    assert_eq!(line.map(|l| l["outcome"].clone()), Some(json!("cgroup")));
    assert!(env.leases().is_empty(), "no live lease left");
}
