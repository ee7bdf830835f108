//! podman as it works on this kind of machine (cgroup v1: runc, cgroupfs, no default ulimits),
//! shared by the container scenarios.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Runs `podman ARGS` with this machine's settings; panics only if podman cannot be started.
pub fn podman(args: &[&str]) -> Output {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    let conf = CONF.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("leasefs-test-podman-{}.conf", std::process::id()));
        std::fs::write(&p, "[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = \"cgroupfs\"\n").unwrap();
        p
    });
    Command::new("podman")
        .arg("--runtime")
        .arg("runc")
        .args(args)
        .env("CONTAINERS_CONF", conf)
        .output()
        .unwrap_or_else(|e| panic!("podman is installed by scripts/test.sh: {e}"))
}

/// `podman ARGS`, which must succeed: its stdout, trimmed.
pub fn podman_ok(args: &[&str]) -> String {
    let o = podman(args);
    assert!(o.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A local busybox image (from busybox-static; no registry) tagged `localhost/TAG:latest`, with
/// the directories `dirs` made for mount points; built once per test binary.
pub fn busybox_image(tag: &str, dirs: &[&str]) -> String {
    static IMG: OnceLock<String> = OnceLock::new();
    IMG.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for applet in ["sh", "cat", "ls", "id", "echo", "touch", "sleep"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        for d in ["tmp", "proc", "sys", "dev", "etc"].iter().chain(dirs) {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let tar = Command::new("tar").arg("-C").arg(dir.path()).args(["-c", "."]).output().unwrap();
        let name = format!("localhost/{tag}:latest");
        let mut child = Command::new("podman")
            .args(["import", "-", &name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
        assert!(child.wait().unwrap().success(), "podman import");
        name
    })
    .clone()
}
