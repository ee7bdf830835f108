//! Installed the way operators install things: the Debian package built by
//! `scripts/package.sh`, installed with dpkg, mounted with `mount -t leasefs`, then purged.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn no_daemon_for(mnt: &Path) -> bool {
    let m = mnt.to_string_lossy().to_string();
    !std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()).any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&m) && String::from_utf8_lossy(&c).contains("leasefs"))
            .unwrap_or(false)
    })
}

#[test]
fn the_debian_package_installs_mounts_reads_and_purges_cleanly() {
    require_root("dpkg -i installs into /usr and /etc");
    assert!(
        !run("dpkg", &["-s", "leasefs"]).status.success() && !Path::new("/etc/leasefs").exists(),
        "leasefs is already installed on this machine; this test installs and purges its own package"
    );
    let out = tempfile::Builder::new().prefix("leasefs-test-deb-").tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let deb =
        ok(&format!("{root}/scripts/package.sh"), &["--bin", BIN, "--out", out.path().to_str().unwrap(), "--fast"]);
    let deb = deb.trim().to_string();
    let info = ok("dpkg-deb", &["-f", &deb, "Package", "Depends"]);
    assert!(info.contains("leasefs") && info.contains("fuse3"), "{info}");
    let o = run("dpkg", &["-i", &deb]);
    assert!(o.status.success(), "dpkg -i: {}", String::from_utf8_lossy(&o.stderr));
    let purge = scopeguard(|| {
        let _ = Command::new("dpkg").args(["--purge", "leasefs"]).output();
    });

    // What an operator finds.
    for p in [
        "/usr/bin/leasefs",
        "/usr/sbin/mount.leasefs",
        "/lib/systemd/system/leasefs.service",
        "/lib/systemd/system/leasefs@.service",
        "/usr/share/man/man1/leasefs.1.gz",
        "/usr/share/bash-completion/completions/leasefs",
    ] {
        assert!(Path::new(p).exists(), "{p} is missing");
    }
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("/etc/leasefs/config.json"), 0o600);
    assert_eq!(mode("/etc/leasefs/secrets"), 0o700);
    assert_eq!(std::fs::metadata("/etc/leasefs/config.json").unwrap().uid(), 0);
    assert!(Path::new("/var/lib/leasefs").is_dir());

    // The packaged config passes leasefs's own checks, with a secret dropped in.
    let secret = "/etc/leasefs/secrets/app.json";
    std::fs::write(
        secret,
        r#"{"path": "app:db:password", "attributes": {"mode": "0444"}, "data": {"value": "from-the-package"}}"#,
    )
    .unwrap();
    std::fs::set_permissions(secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let check = run("/usr/bin/leasefs", &["check", "--config", "/etc/leasefs/config.json"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    // mount -t leasefs, read, umount.
    let mnt = out.path().join("secrets");
    std::fs::create_dir(&mnt).unwrap();
    let o = run("mount", &["-t", "leasefs", "/etc/leasefs/config.json", mnt.to_str().unwrap()]);
    assert!(o.status.success(), "mount -t leasefs: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(cat(&mnt.join("app/db/password")), "from-the-package");
    let o = as_user("nobody", &["cat", mnt.join("app/db/password").to_str().unwrap()]);
    assert!(o.status.success(), "allow_other lets other users in where the mode says so");
    assert!(ok("umount", &[mnt.to_str().unwrap()]).is_empty());
    eventually(Duration::from_secs(10), "the daemon to exit after umount", || no_daemon_for(&mnt));

    // Purged: nothing left running, mounted or installed (the document we added is ours to
    // remove: dpkg keeps files it did not install).
    std::fs::remove_file(secret).unwrap();
    drop(purge);
    assert!(!run("dpkg", &["-s", "leasefs"]).status.success());
    for p in ["/usr/bin/leasefs", "/usr/sbin/mount.leasefs", "/etc/leasefs", "/var/lib/leasefs"] {
        assert!(!Path::new(p).exists(), "{p} is left after purge");
    }
    assert!(!is_mounted(&mnt));
    let installed_running = std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()).any(|e| {
        std::fs::read_link(e.path().join("exe")).is_ok_and(|x| x.to_string_lossy().starts_with("/usr/bin/leasefs"))
    });
    assert!(!installed_running, "a process of the installed leasefs is left running");
}

/// Runs `f` when dropped (cleanup that must happen even if an assertion fails).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    G(Some(f))
}
