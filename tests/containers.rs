//! leasefs with real containers (podman, runc): an unprivileged container reading leasefs
//! files through bind mounts, leasefs itself inside a container sharing its mount with the host,
//! and the Kubernetes manifests checked against the API schemas.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::podman::{podman, podman_ok};
use common::*;
use serde_json::json;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The local busybox image these scenarios run.
fn busybox_image() -> String {
    common::podman::busybox_image("leasefs-test-bb", &["run/secrets"])
}

#[test]
fn an_unprivileged_container_reads_leasefs_files_through_bind_mounts() {
    require_root("rootful podman");
    let mut env = Env::new();
    let script = env.script();
    let mut docs: Vec<serde_json::Value> = serde_json::from_str(&exec_catalog(
        &script,
        &[("dyn:db:password", "royal", json!({"format": "raw:Password", "mode": "0444"}))],
    ))
    .unwrap();
    docs.push(json!({"path": "dyn:db:host", "attributes": {"mode": "0444"}, "data": {"value": "db.internal"}}));
    docs.push(json!({"path": "dyn:db:root-only", "data": {"value": "not-for-containers"}}));
    docs.push(json!({"path": "app:token", "attributes": {"mode": "0444"}, "data": {"value": "static-token"}}));
    let pair: serde_json::Value = serde_json::from_str(&exec_catalog(
        &script,
        &[(
            "app:db",
            "pair",
            json!({"mode": "0444", "files": {"username": "raw:Username", "password": "raw:Password"}}),
        )],
    ))
    .unwrap();
    docs.extend(pair.as_array().unwrap().iter().filter(|d| d["path"] != "base:exec:test").cloned());
    env.doc("d.json", &serde_json::to_string(&docs).unwrap());
    env.config(json!({"allow_other": true}));
    env.start();
    let dir = format!("{}:/run/secrets/db:ro", env.m("dyn/db").display());
    let file = format!("{}:/run/secrets/token:ro", env.m("app/token").display());
    let bundle = format!("{}:/run/secrets/pg:ro", env.m("app/db").display());
    let script = "cat /run/secrets/db/password; echo; cat /run/secrets/db/password; echo; \
                  cat /run/secrets/db/host; echo; cat /run/secrets/token; echo; id -u; \
                  cat /run/secrets/db/root-only 2>&1; echo \"rc=$?\"; \
                  touch /run/secrets/db/x 2>&1; echo \"rc=$?\"; ls /run/secrets/db; \
                  echo bundle $(cat /run/secrets/pg/username) $(cat /run/secrets/pg/password)";
    let out = podman_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        "65534:65534",
        "-v",
        &dir,
        "-v",
        &file,
        "-v",
        &bundle,
        &busybox_image(),
        "sh",
        "-c",
        script,
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("pw-") && lines[1].starts_with("pw-"), "{out}");
    assert_ne!(lines[0], lines[1], "each read in the container is a fresh credential");
    assert_eq!(lines[2], "db.internal", "{out}");
    assert_eq!(lines[3], "static-token", "{out}");
    assert_eq!(lines[4], "65534");
    assert!(out.contains("Permission denied") && out.contains("rc=1"), "EACCES where the mode says so: {out}");
    assert!(out.contains("Read-only file system"), "nothing is written: {out}");
    assert!(out.contains("password") && out.contains("host"), "{out}");
    // The bundle directory: username and password read in one session are one credential.
    let b: Vec<&str> =
        lines.iter().find(|l| l.starts_with("bundle ")).unwrap_or_else(|| panic!("{out}")).split_whitespace().collect();
    assert_eq!(b[1].trim_start_matches("u-"), b[2].trim_start_matches("p-"), "{out}");
    assert_eq!(env.lines("issued.txt").len(), 3, "two opens of the file, one bundle lease");
}

#[test]
fn leasefs_inside_a_container_shares_its_mount_with_the_host() {
    require_root("rootful podman, bind mounts");
    let image = ok(&format!("{ROOT}/scripts/image.sh"), &["--bin", BIN, "--tag", "localhost/leasefs-test:latest"]);
    assert_eq!(image.trim(), "localhost/leasefs-test:latest");
    let env = Env::new();
    // /etc/leasefs in the container: config.json and secrets/ (0700, documents 0600).
    let cfg = container_etc(
        &env,
        &json!({"path": "app:key", "attributes": {"mode": "0444"}, "data": {"value": "from-the-container"}}),
    );
    // The host directory the container's mount appears in: a shared mount point.
    let etc = format!("{}:/etc/leasefs:ro", cfg.display());
    let (shared, name, _unmount, _rm) =
        run_leasefs_container(&env, "leasefs-test", &etc, "localhost/leasefs-test:latest");
    let key = shared.join("app/key");
    eventually(Duration::from_secs(20), "the container's mount to reach the host", || key.exists());
    assert_eq!(cat(&key), "from-the-container");
    let o = as_user("nobody", &["cat", key.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from-the-container", "other host users read it too");
    // Stopping the container revokes, unmounts, and the host sees it go.
    podman_ok(&["stop", "-t", "20", &name]);
    eventually(Duration::from_secs(10), "the mount to leave the host", || !key.exists());
    let logs = podman_ok(&["logs", &name]);
    let logs = logs + &String::from_utf8_lossy(&podman(&["logs", &name]).stderr);
    assert!(logs.contains("unmounted"), "{logs}");
}

/// /etc/leasefs for a container: config.json and secrets/ (0700, documents 0600), with
/// `documents` as secrets/app.json.
fn container_etc(env: &Env, documents: &serde_json::Value) -> PathBuf {
    let cfg = env.path("etc");
    std::fs::create_dir_all(cfg.join("secrets")).unwrap();
    for d in [cfg.clone(), cfg.join("secrets")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let doc = cfg.join("secrets/app.json");
    std::fs::write(&doc, documents.to_string()).unwrap();
    std::fs::set_permissions(&doc, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        cfg.join("config.json"),
        json!({"sources": [{"type": "local", "path": "/etc/leasefs/secrets"}], "state_dir": "/var/lib/leasefs", "allow_other": true})
            .to_string(),
    )
    .unwrap();
    std::fs::set_permissions(cfg.join("config.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
    cfg
}

#[test]
fn an_exec_issuer_runs_in_the_exec_image_and_the_plain_image_says_why_it_cannot() {
    require_root("rootful podman, bind mounts");
    let exec_image = ok(
        &format!("{ROOT}/scripts/image.sh"),
        &["--bin", BIN, "--tag", "localhost/leasefs-test-exec:latest", "--exec"],
    );
    assert_eq!(exec_image.trim(), "localhost/leasefs-test-exec:latest");
    let plain = ok(&format!("{ROOT}/scripts/image.sh"), &["--bin", BIN, "--tag", "localhost/leasefs-test:latest"]);
    assert_eq!(plain.trim(), "localhost/leasefs-test:latest");
    let env = Env::new();
    // An issuer script as docs/issuers.md writes them: #!/bin/sh, the request on stdin.
    let docs = json!([
        {"path": "base:exec:db", "attributes": {"type": "exec"}, "data": {"command": ["/etc/leasefs/issuer.sh"]}},
        {"path": "dyn:db:password", "attributes": {"linkConfig": {"linkType": "dynamic", "linkedSecret": "base:exec:db"},
            "format": "raw:Password", "mode": "0444"}},
    ]);
    let cfg = container_etc(&env, &docs);
    let script = cfg.join("issuer.sh");
    std::fs::write(&script, "#!/bin/sh\ncat >/dev/null\necho \"{\\\"Password\\\": \\\"pw-$$-$(date +%s)\\\"}\"\n")
        .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let etc = format!("{}:/etc/leasefs:ro", cfg.display());

    // The plain image has no shell: check says so, naming the script and its #! line.
    let o = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &etc,
        plain.trim(),
        "check",
        "--config",
        "/etc/leasefs/config.json",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "check passed in an image without /bin/sh: {err}");
    assert!(err.contains("issuer.sh") && err.contains("#!/bin/sh") && err.contains("No such file"), "{err}");

    // The exec image runs it: each read on the host is a fresh credential from the container.
    let (shared, name, _unmount, _rm) = run_leasefs_container(&env, "leasefs-test-exec", &etc, exec_image.trim());
    let file = shared.join("dyn/db/password");
    eventually(Duration::from_secs(20), "the container's mount to reach the host", || file.exists());
    let (a, b) = (read(&file), read(&file));
    let logs = String::from_utf8_lossy(&podman(&["logs", &name]).stderr).into_owned();
    let (a, b) = (a.unwrap_or_else(|e| panic!("{e}: {logs}")), b.unwrap_or_else(|e| panic!("{e}: {logs}")));
    assert!(a.starts_with("pw-") && b.starts_with("pw-") && a != b, "{a:?} {b:?}: {logs}");
    podman_ok(&["stop", "-t", "20", &name]);
}

/// Starts `image` detached, running `leasefs mount /secrets` with the config volume `etc`, its
/// mount shared back to the host at a fresh directory: (that directory, the container's name, and
/// guards that unmount it and remove the container).
fn run_leasefs_container(env: &Env, prefix: &str, etc: &str, image: &str) -> (PathBuf, String, Unmount, Remove) {
    let shared = env.path("shared");
    std::fs::create_dir(&shared).unwrap();
    ok("mount", &["--bind", shared.to_str().unwrap(), shared.to_str().unwrap()]);
    ok("mount", &["--make-shared", shared.to_str().unwrap()]);
    let unmount = Unmount(shared.clone());
    let name = format!("{prefix}-{}", std::process::id());
    let secrets = format!("{}:/secrets:rshared", shared.display());
    let o = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "--device",
        "/dev/fuse",
        "--cap-add",
        "SYS_ADMIN",
        "-v",
        etc,
        "-v",
        &secrets,
        image,
        "mount",
        "/secrets",
        "--config",
        "/etc/leasefs/config.json",
    ]);
    assert!(o.status.success(), "podman run: {}", String::from_utf8_lossy(&o.stderr));
    let rm = Remove(name.clone());
    (shared, name, unmount, rm)
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

struct Remove(String);
impl Drop for Remove {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", &self.0]);
    }
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let venv = std::env::var("LEASEFS_MOTO_VENV").expect("scripts/backends.sh sets LEASEFS_MOTO_VENV");
    let tool = Path::new(&venv).join("bin/kubernetes-validate");
    assert!(tool.exists(), "kubernetes-validate is installed by scripts/backends.sh");
    for f in ["leasefs.yaml", "example-pod.yaml"] {
        let p = format!("{ROOT}/deploy/kubernetes/{f}");
        let o = Command::new(&tool).args(["--strict", &p]).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{f}: {text}");
        assert!(text.contains("passed"), "{f}: {text}");
    }
    // A broken manifest is caught: the checker is not blind.
    let bad = std::env::temp_dir().join("leasefs-test-bad.yaml");
    std::fs::write(&bad, "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec: {selector: 5}\n").unwrap();
    let o = Command::new(&tool).args(["--strict", bad.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success(), "a broken DaemonSet passed validation");
}
