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
