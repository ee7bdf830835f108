//! Installed the way operators install things: the Debian package built by
//! `scripts/package.sh`, installed with dpkg (over an installed one too), mounted with
//! `mount -t leasefs` as docs/operations.md writes it, then purged with a daemon still running;
//! and the manual page it installs, read with man(1).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Processes running the installed binary (a daemon, its guard), even once the file is deleted.
fn installed_processes() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            let exe = exe.to_string_lossy().to_string();
            exe.starts_with("/usr/bin/leasefs").then(|| format!("{} {exe}", e.file_name().to_string_lossy()))
        })
        .collect()
}

fn build_deb(dir: &Path) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let deb = ok(&format!("{root}/scripts/package.sh"), &["--bin", BIN, "--out", dir.to_str().unwrap(), "--fast"]);
    deb.trim().to_string()
}

/// When leasefs was installed before the test (as docs/operations.md installs it), its
/// configuration is kept aside and the package purged, so that the test starts from a machine
/// without it; afterwards the package (this build of it) is installed again and the
/// configuration put back.
struct Preinstalled {
    deb: String,
    etc: tempfile::TempDir,
}

impl Preinstalled {
    fn set_aside(deb: &str) -> Option<Preinstalled> {
        if !run("dpkg", &["-s", "leasefs"]).status.success() {
            assert!(!Path::new("/etc/leasefs").exists(), "/etc/leasefs exists without the package");
            return None;
        }
        let etc = tempfile::tempdir().unwrap();
        ok("cp", &["-a", "/etc/leasefs", etc.path().to_str().unwrap()]);
        let o = run("dpkg", &["--purge", "leasefs"]);
        assert!(o.status.success(), "dpkg --purge of the installed leasefs: {}", String::from_utf8_lossy(&o.stderr));
        // What dpkg keeps (documents the operator added) is in the copy.
        std::fs::remove_dir_all("/etc/leasefs").unwrap_or_default();
        Some(Preinstalled { deb: deb.to_string(), etc })
    }
}

impl Drop for Preinstalled {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["-i", &self.deb]).output();
        let _ = std::fs::remove_dir_all("/etc/leasefs");
        let _ = Command::new("cp").arg("-a").arg(self.etc.path().join("leasefs")).arg("/etc/leasefs").status();
    }
}

#[test]
fn the_debian_package_installs_mounts_reads_and_purges_cleanly() {
    require_root("dpkg -i installs into /usr and /etc");
    let out = tempfile::Builder::new().prefix("leasefs-test-deb-").tempdir().unwrap();
    let deb = build_deb(out.path());
    let info = ok("dpkg-deb", &["-f", &deb, "Package", "Depends"]);
    assert!(info.contains("leasefs") && info.contains("fuse3"), "{info}");
    let before = Preinstalled::set_aside(&deb);
    eprintln!("leasefs installed before the test: {}", before.is_some());
    let o = run("dpkg", &["-i", &deb]);
    assert!(o.status.success(), "dpkg -i: {}", String::from_utf8_lossy(&o.stderr));
    let secret = "/etc/leasefs/secrets/app.json";
    let purge = scopeguard(|| {
        // Files the test added (dpkg keeps what it did not install), then the package.
        let _ = std::fs::remove_file(secret);
        let _ = std::fs::remove_file("/etc/leasefs/broken.json");
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
        "/usr/share/doc/leasefs/README.md",
        "/usr/share/doc/leasefs/docs/configuration.md",
        "/usr/share/doc/leasefs/docs/operations.md",
    ] {
        assert!(Path::new(p).exists(), "{p} is missing");
    }
    assert_eq!(ok("man", &["-w", "leasefs"]).trim(), "/usr/share/man/man1/leasefs.1.gz");
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("/etc/leasefs/config.json"), 0o600);
    assert_eq!(mode("/etc/leasefs/secrets"), 0o700);
    assert_eq!(mode("/var/log/leasefs"), 0o700, "the log directory the documented mount -o log= uses");
    assert_eq!(std::fs::metadata("/etc/leasefs/config.json").unwrap().uid(), 0);
    assert!(Path::new("/var/lib/leasefs").is_dir());

    // The packaged config passes leasefs's own checks, with a secret dropped in.
    std::fs::write(
        secret,
        r#"{"path": "app:db:password", "attributes": {"mode": "0444"}, "data": {"value": "from-the-package"}}"#,
    )
    .unwrap();
    std::fs::set_permissions(secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let check = run("/usr/bin/leasefs", &["check", "--config", "/etc/leasefs/config.json"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    // mount -t leasefs as docs/operations.md writes it, read, umount: the log says nothing at warn.
    let mnt = out.path().join("secrets");
    std::fs::create_dir(&mnt).unwrap();
    let m = mnt.to_str().unwrap();
    let log = "/var/log/leasefs/daemon.log";
    let o = run("mount", &["-t", "leasefs", "/etc/leasefs/config.json", m, "-o", &format!("log={log}")]);
    assert!(o.status.success(), "mount -t leasefs: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(cat(&mnt.join("app/db/password")), "from-the-package");
    let o = as_user("nobody", &["cat", mnt.join("app/db/password").to_str().unwrap()]);
    assert!(o.status.success(), "allow_other lets other users in where the mode says so");
    assert!(ok("umount", &[m]).is_empty());
    eventually(Duration::from_secs(10), "the daemon to exit after umount", || installed_processes().is_empty());
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("unmounted"), "{text}");
    assert!(!text.contains(" WARN ") && !text.contains(" ERROR "), "a plain umount logged a warning:\n{text}");

    // An option leasefs does not know is refused by name; nothing is mounted.
    let o = run("mount", &["-t", "leasefs", "/etc/leasefs/config.json", m, "-o", "bogus=1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(32), "{err}");
    assert!(err.contains("bogus=1"), "the refusal does not name the option: {err}");
    assert!(!is_mounted(&mnt));
    // A daemon that fails says why, through mount(8), without -o log=.
    let broken = Path::new("/etc/leasefs/broken.json");
    std::fs::write(
        broken,
        r#"{"sources": [{"type": "local", "path": "/etc/leasefs/secrets"}], "state_dir": "/etc/leasefs/config.json"}"#,
    )
    .unwrap();
    std::fs::set_permissions(broken, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = run("mount", &["-t", "leasefs", broken.to_str().unwrap(), m]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(32), "{err}");
    assert!(err.contains("cannot use the state_dir /etc/leasefs/config.json"), "the daemon's reason is lost: {err}");
    std::fs::remove_file(broken).unwrap();

    // Enabled, and mounted by mount(8) when the package is purged: the daemon is stopped (its
    // leases revoked, its mount gone) and so is the symlink `systemctl enable` made.
    let o = run("systemctl", &["enable", "leasefs"]);
    assert!(o.status.success(), "systemctl enable: {}", String::from_utf8_lossy(&o.stderr));
    let wants = "/etc/systemd/system/multi-user.target.wants/leasefs.service";
    assert!(std::fs::symlink_metadata(wants).is_ok(), "systemctl enable made no {wants}");
    let o = run("mount", &["-t", "leasefs", "/etc/leasefs/config.json", m]);
    assert!(o.status.success(), "mount -t leasefs: {}", String::from_utf8_lossy(&o.stderr));
    assert!(!installed_processes().is_empty());

    // Purged: nothing left running, mounted or installed.
    drop(purge);
    assert!(!run("dpkg", &["-s", "leasefs"]).status.success());
    for p in ["/usr/bin/leasefs", "/usr/sbin/mount.leasefs", "/etc/leasefs", "/var/lib/leasefs", "/var/log/leasefs"] {
        assert!(!Path::new(p).exists(), "{p} is left after purge");
    }
    assert!(std::fs::symlink_metadata(wants).is_err(), "{wants} is left after purge");
    assert!(!is_mounted(&mnt), "the mount is left after purge");
    let left = installed_processes();
    assert!(left.is_empty(), "processes of the purged leasefs are left running: {left:?}");
    drop(before);
}

#[test]
fn the_manual_page_lists_its_examples_and_files_and_names_only_pages_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("leasefs.1");
    std::fs::write(&page, run(BIN, &["manpage"]).stdout).unwrap();
    // groff's own warnings (-ww) about the roff: none.
    let o = run("groff", &["-man", "-Tutf8", "-ww", "-z", page.to_str().unwrap()]);
    assert!(o.status.success() && o.stderr.is_empty(), "groff: {}", String::from_utf8_lossy(&o.stderr));
    // As man(1) shows it, without the overstrike of bold and underline.
    let o = Command::new("sh").arg("-c").arg("man -l \"$0\" | col -bx").arg(&page).env("MANWIDTH", "100").output();
    let text = String::from_utf8_lossy(&o.unwrap().stdout).to_string();
    let section = |name: &str| -> Vec<String> {
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.iter().position(|l| *l == name).unwrap_or_else(|| panic!("no {name} section:\n{text}"));
        lines[start + 1..].iter().take_while(|l| l.is_empty() || l.starts_with(' ')).map(|l| l.to_string()).collect()
    };
    // Each example and each file on a line of its own, not reflowed into one paragraph.
    let examples = section("EXAMPLES");
    for cmd in ["leasefs demo", "leasefs check --config /etc/leasefs/config.json", "leasefs leases /secrets"] {
        assert!(examples.iter().any(|l| l.trim() == cmd), "{cmd:?} is not a line of EXAMPLES:\n{examples:#?}");
    }
    let files = section("FILES");
    for f in ["/etc/leasefs/config.json", "/var/lib/leasefs/journal.jsonl", "/usr/share/doc/leasefs/"] {
        assert!(files.iter().any(|l| l.trim() == f), "{f:?} is not a line of FILES:\n{files:#?}");
    }
    // Every page it names exists here; the docs are named where the package installs them.
    let named: Vec<(String, String)> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter_map(|w| {
            let (name, rest) = w.split_once('(')?;
            let sec = rest.strip_suffix(')')?;
            (sec.len() == 1 && sec.chars().all(|c| c.is_ascii_digit()) && !name.is_empty())
                .then(|| (name.to_string(), sec.to_string()))
        })
        .collect();
    assert!(named.iter().any(|(n, _)| n == "mount"), "{named:?}");
    for (name, sec) in &named {
        if name == "leasefs" {
            continue;
        }
        let o = run("man", &["-w", sec, name]);
        assert!(o.status.success(), "the manual page names {name}({sec}), which does not exist");
    }
    assert!(text.contains("/usr/share/doc/leasefs/docs/"), "{text}");
    assert!(!text.contains("in the source tree"), "{text}");
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
