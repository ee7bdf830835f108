//! A newcomer follows README.md and the install and mount(8) sections of docs/operations.md to
//! the letter: every fenced shell command is run as written (with paths moved under a scratch
//! root, a mechanical change listed below), every JSON example is written where the text puts
//! it and passed through `leasefs check` and a mount, and the fstab line is parsed by the mount
//! helper. A command that cannot run here is in `NOT_RUN` with the reason; a command the docs
//! gain that is in neither list fails the test.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Commands not run, with the reason. Matched against the command as written.
const NOT_RUN: &[(&str, &str)] = &[
    ("./scripts/test.sh", "runs the whole suite, this test among it"),
    (
        "cargo install --path .",
        "a release build (minutes) into ~/.cargo/bin; this test uses its own build as `leasefs`",
    ),
    ("./scripts/package.sh", "a release build (minutes); tests/packaging.rs runs it with --bin on the test build"),
    ("./scripts/image.sh", "a release build (minutes); tests/containers.rs runs it with --bin on the test build"),
    (
        "./scripts/image.sh --exec",
        "a release build (minutes); tests/containers.rs runs it with --bin on the test build",
    ),
    (
        "exec 3< ./secrets/dynamic/token; sleep 31; cat <&3",
        "waits out the demo token's 30 s lease; expiry (EKEYEXPIRED) is tested in tests/dynamic_secrets.rs",
    ),
    (
        "sudo apt install ./target/debian/leasefs_*.deb",
        "installs into the system; tests/packaging.rs installs the package with dpkg -i",
    ),
    (
        "sudoedit /etc/leasefs/secrets/app.json",
        "an interactive editor; the test writes README.md's example document there instead",
    ),
    ("sudo systemctl enable --now leasefs", "needs systemd as PID 1, which the test machines do not run"),
    (
        "systemctl daemon-reload && systemctl enable --now leasefs",
        "needs systemd as PID 1, which the test machines do not run",
    ),
    ("cargo build --release", "a release build (minutes); `target/release/leasefs` below is the test's own build"),
    (
        "podman run -d --name leasefs --device /dev/fuse --cap-add SYS_ADMIN -v /etc/leasefs:/etc/leasefs:ro -v /secrets:/secrets:rshared localhost/leasefs:0.1.0 mount /secrets --config /etc/leasefs/config.json",
        "needs the image of scripts/image.sh (a release build); tests/containers.rs runs this command on an image of the test build",
    ),
];

/// Commands run, in the order the docs give them. `Mount` runs in the background until the
/// mount is live; `Demo` stands for `cargo run --release -- demo` (the test's build instead of a
/// release build, in the background until its banner is printed).
#[derive(Clone, Copy, PartialEq, Debug)]
enum How {
    Run,
    Mount,
    Demo,
}

const RUN: &[(&str, How)] = &[
    ("cargo run --release -- demo", How::Demo),
    ("ls -lR ./secrets", How::Run),
    ("cat ./secrets/app/db/password", How::Run),
    ("cat ./secrets/dynamic/token; cat ./secrets/dynamic/token", How::Run),
    ("getfattr -d ./secrets/dynamic/token", How::Run),
    ("leasefs leases ./secrets", How::Run),
    ("leasefs mount /secrets --config /etc/leasefs/config.json", How::Mount),
    ("leasefs check --config /etc/leasefs/config.json", How::Run),
    ("leasefs --help", How::Run),
    ("sudo leasefs check --config /etc/leasefs/config.json", How::Run),
    ("sudo mount --bind /secrets /secrets && sudo mount --make-shared /secrets", How::Run),
    ("install -m 0755 target/release/leasefs /usr/bin/leasefs", How::Run),
    ("ln -sf /usr/bin/leasefs /usr/sbin/mount.leasefs", How::Run),
    ("install -d -m 0700 /etc/leasefs /etc/leasefs/secrets /var/log/leasefs", How::Run),
    ("leasefs manpage | gzip > /usr/share/man/man1/leasefs.1.gz", How::Run),
    ("leasefs completions bash > /etc/bash_completion.d/leasefs", How::Run),
    ("install -m 0644 systemd/leasefs.service systemd/leasefs@.service /etc/systemd/system/", How::Run),
    ("mount -t leasefs /etc/leasefs/config.json /secrets -o log=/var/log/leasefs/daemon.log", How::Run),
    ("umount /secrets", How::Run),
];

/// A fenced block: its language and its lines.
struct Block {
    doc: &'static str,
    lang: String,
    body: String,
}

/// The fenced blocks of `doc`, or of its `## ` sections whose titles start with one of `sections`.
fn blocks(doc: &'static str, sections: &[&str]) -> Vec<Block> {
    let text = std::fs::read_to_string(Path::new(ROOT).join(doc)).unwrap();
    let mut out = Vec::new();
    let mut keep = sections.is_empty();
    let mut open: Option<Block> = None;
    for line in text.lines() {
        if let Some(b) = open.as_mut() {
            if line.trim_start().starts_with("```") {
                out.push(open.take().unwrap());
            } else {
                b.body.push_str(line);
                b.body.push('\n');
            }
            continue;
        }
        if let Some(title) = line.strip_prefix("## ") {
            keep = sections.is_empty() || sections.iter().any(|s| title.starts_with(s));
        } else if let Some(lang) = line.trim_start().strip_prefix("```") {
            if keep {
                open = Some(Block { doc, lang: lang.trim().to_string(), body: String::new() });
            } else {
                // A block outside the sections: skipped whole.
                open = Some(Block { doc: "", lang: String::new(), body: String::new() });
            }
        }
    }
    out.retain(|b| !b.doc.is_empty());
    out
}

/// The commands of a shell block: comments dropped, `\` continuations joined, blanks skipped.
fn commands(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in body.lines() {
        let line = strip_comment(line);
        if let Some(head) = line.trim_end().strip_suffix('\\') {
            cur.push_str(head.trim());
            cur.push(' ');
            continue;
        }
        cur.push_str(line.trim());
        let c = std::mem::take(&mut cur).trim().to_string();
        if !c.is_empty() && !c.starts_with('#') {
            out.push(c);
        }
    }
    out
}

/// A line without its trailing `# comment` (a `#` after whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let b = line.as_bytes();
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && (i == 0 || b[i - 1].is_ascii_whitespace()) => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The mechanical change: absolute paths under /etc, /usr, /var and /secrets move under the
/// scratch root `p` (and the configuration's default state_dir with them); `sudo` is dropped (the test runs as root); `target/release/leasefs` is the
/// test's build; `mount -t leasefs A B` is what mount(8) runs for it, `mount.leasefs A B`
/// (mount(8) looks for helpers only in /sbin).
fn adapt(cmd: &str, p: &Path) -> String {
    let mut s =
        cmd.replace("sudo ", "").replace("target/release/leasefs", BIN).replace("mount -t leasefs ", "mount.leasefs ");
    for dir in ["/etc/", "/usr/", "/var/", "/secrets"] {
        s = prefix_paths(&s, dir, p);
    }
    s
}

/// Prefixes `dir` where it starts a path (after whitespace, `=`, `:`, a quote or at the start).
fn prefix_paths(s: &str, dir: &str, p: &Path) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(dir) {
        out.push_str(&rest[..i]);
        if out.chars().last().is_none_or(|c| c.is_whitespace() || "=:'\"(".contains(c)) {
            out.push_str(&p.display().to_string());
        }
        out.push_str(dir);
        rest = &rest[i + dir.len()..];
    }
    out.push_str(rest);
    out
}

/// The scratch world: a root for /etc, /usr, /var and /secrets, a PATH holding `leasefs` and
/// `mount.leasefs` (the test's build), and a directory for the demo.
struct World {
    dir: tempfile::TempDir,
    daemons: Vec<Child>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::Builder::new().prefix("leasefs-test-docs-").tempdir().unwrap();
        // Other users reach the mounts below (as they would /secrets).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(BIN, bin.join("leasefs")).unwrap();
        std::os::unix::fs::symlink(BIN, bin.join("mount.leasefs")).unwrap();
        // The directories a Debian system has (the docs write into them, never create them).
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/share/man/man1",
            "etc/bash_completion.d",
            "etc/systemd/system",
            "var/log",
            "secrets",
            "demo",
        ] {
            std::fs::create_dir_all(dir.path().join("root").join(d)).unwrap();
        }
        World { dir, daemons: Vec::new() }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn path_var(&self) -> String {
        format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.dir.path().join("bin").display())
    }
    fn sh(&self, cmd: &str, cwd: &Path) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(cmd).current_dir(cwd).env("PATH", self.path_var()).env("HOME", self.dir.path());
        c
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let _ = d.wait();
        }
        // The shared bind mount of the container recipe, and anything left above it.
        for m in [self.root().join("secrets"), self.dir.path().join("root/demo/secrets")] {
            for _ in 0..3 {
                if is_mounted(&m) {
                    let _ = Command::new("umount").arg("-l").arg(&m).status();
                }
            }
        }
    }
}

fn mounted_live(p: &Path) -> bool {
    is_mounted(p) && std::fs::read_dir(p).is_ok()
}

#[test]
fn readme_and_the_install_and_mount_sections_of_operations_work_as_written() {
    require_root("the docs' commands mount, bind-mount and install as root");
    let mut all = blocks("README.md", &[]);
    all.extend(blocks("docs/operations.md", &["Install", "mount(8)"]));
    let mut w = World::new();
    let p = w.root();
    let demo_dir = p.join("demo");

    // The JSON examples, written where README.md puts them: the configuration at the path
    // "Using it" gives, the document at the path the text names.
    let jsons: Vec<&Block> = all.iter().filter(|b| b.lang == "json").collect();
    assert_eq!(jsons.len(), 2, "README.md's JSON examples: the configuration and a document");
    let cfg: serde_json::Value = serde_json::from_str(&jsons[0].body).expect("the configuration example is JSON");
    assert!(cfg.get("sources").is_some(), "the first JSON example is the configuration: {cfg}");
    let example: serde_json::Value = serde_json::from_str(&jsons[1].body).expect("the document example is JSON");
    assert!(example.get("path").is_some() && example.get("data").is_some(), "the second is a document: {example}");
    std::fs::create_dir_all(p.join("etc/leasefs/secrets")).unwrap();
    for d in ["etc/leasefs", "etc/leasefs/secrets"] {
        std::fs::set_permissions(p.join(d), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    // README's configuration leaves state_dir at its default, /var/lib/leasefs: moved under the
    // scratch root like every other path (a leasefs installed here may be using the real one).
    let mut config: serde_json::Value = serde_json::from_str(&adapt(&jsons[0].body, &p)).unwrap();
    assert!(config.get("state_dir").is_none(), "README's configuration now sets state_dir: adapt it like the others");
    config["state_dir"] = p.join("var/lib/leasefs").to_string_lossy().into();
    let config = config.to_string();
    for (file, body) in
        [("etc/leasefs/config.json", config), ("etc/leasefs/secrets/app.json", adapt(&jsons[1].body, &p))]
    {
        std::fs::write(p.join(file), body).unwrap();
        std::fs::set_permissions(p.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // Every command of every shell block is listed, and every listed command is still there.
    let cmds: Vec<(&'static str, String)> = all
        .iter()
        .filter(|b| b.lang == "sh")
        .flat_map(|b| commands(&b.body).into_iter().map(move |c| (b.doc, c)))
        .collect();
    for (doc, c) in &cmds {
        let known = NOT_RUN.iter().any(|(n, _)| n == c) || RUN.iter().any(|(r, _)| r == c);
        assert!(
            known,
            "{doc} has a command this test does not know: `{c}` — add it to RUN, or to NOT_RUN with the reason"
        );
    }
    for listed in RUN.iter().map(|(c, _)| *c).chain(NOT_RUN.iter().map(|(c, _)| *c)) {
        assert!(cmds.iter().any(|(_, c)| c == listed), "`{listed}` is listed here but no longer in the docs");
    }
    for (c, why) in NOT_RUN {
        eprintln!("not run: {c}\n    because: {why}");
    }

    for (doc, c) in &cmds {
        let Some((_, how)) = RUN.iter().find(|(r, _)| r == c) else { continue };
        let demo = c.contains("./secrets");
        let cwd = if demo { demo_dir.clone() } else { PathBuf::from(ROOT) };
        let cmd = if demo { c.clone() } else { adapt(c, &p) };
        eprintln!("{doc}: {c}\n    runs: {cmd}");
        match how {
            How::Demo => {
                let mut child = Command::new(BIN)
                    .arg("demo")
                    .current_dir(&demo_dir)
                    .env("PATH", w.path_var())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let out = child.stdout.take().unwrap();
                w.daemons.push(child);
                use std::io::BufRead;
                let ready =
                    std::io::BufReader::new(out).lines().map_while(Result::ok).any(|l| l.starts_with("Press Ctrl-C"));
                assert!(ready, "the demo printed no banner");
            }
            How::Mount => {
                let child =
                    w.sh(&format!("exec {cmd}"), &cwd).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
                w.daemons.push(child);
                let mnt = p.join("secrets");
                eventually(Duration::from_secs(20), "the documented mount to be live", || mounted_live(&mnt));
                // What README.md says of its example document.
                let f = mnt.join("app/db/password");
                let m = std::fs::metadata(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                assert_eq!(m.mode() & 0o7777, 0o440, "README: mode 0440");
                assert_eq!((m.uid(), m.gid()), (0, 33), "README: owned by root:www-data");
                let value = example["data"]["value"].as_str().unwrap();
                assert_eq!(cat(&f), value);
                let o = as_user("www-data", &["cat", f.to_str().unwrap()]);
                assert_eq!(String::from_utf8_lossy(&o.stdout), value, "the web server's group reads it");
                let o = as_user("nobody", &["cat", f.to_str().unwrap()]);
                assert!(!o.status.success(), "other users may not");
                // Stopped as the docs say: SIGTERM.
                let mut d = w.daemons.pop().unwrap();
                // SAFETY: signalling our own child (sh, which exec'd leasefs).
                unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
                let st = d.wait().unwrap();
                assert!(st.success(), "leasefs mount exited {st} after SIGTERM");
                assert!(!is_mounted(&mnt));
            }
            How::Run => {
                let o = w.sh(&cmd, &cwd).output().unwrap();
                let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                assert!(o.status.success(), "{doc}: `{c}` failed ({}):\n{out}{err}", o.status);
                if c.starts_with("mount -t leasefs") {
                    assert!(mounted_live(&p.join("secrets")), "`{c}` returned but nothing is mounted");
                    assert_eq!(cat(&p.join("secrets/app/db/password")), example["data"]["value"].as_str().unwrap());
                }
                if c.starts_with("umount") {
                    eventually(Duration::from_secs(10), "the mount(8) daemon to leave", || {
                        !is_live_fuse(&p.join("secrets"))
                    });
                }
                if c.starts_with("cat ") || c.starts_with("ls ") || c.contains(" leases ") || c.contains("--help") {
                    assert!(!out.trim().is_empty(), "`{c}` printed nothing");
                }
            }
        }
    }

    // What the from-source install left, and the mount(8) log: no warning on umount.
    for f in [
        "usr/bin/leasefs",
        "usr/sbin/mount.leasefs",
        "usr/share/man/man1/leasefs.1.gz",
        "etc/systemd/system/leasefs@.service",
    ] {
        assert!(p.join(f).exists(), "{f} is missing after the docs' install commands");
    }
    let log_file = p.join("var/log/leasefs/daemon.log");
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    eventually(Duration::from_secs(10), "the mount(8) daemon to log `unmounted`", || log().contains("unmounted"));
    let log = log();
    assert!(log.contains("unmounted") && !log.contains(" WARN "), "{log}");

    // The fstab line: six fields, type leasefs, options the helper accepts (-f: parse, do not mount).
    let fstab = all.iter().find(|b| b.lang.is_empty() && b.body.contains("# /etc/fstab")).expect("the fstab example");
    let line = fstab.body.lines().find(|l| !l.starts_with('#') && !l.trim().is_empty()).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 6, "{line}");
    assert_eq!(f[2], "leasefs", "{line}");
    let o =
        w.sh(&adapt(&format!("mount.leasefs {} {} -f -o {}", f[0], f[1], f[3]), &p), Path::new(ROOT)).output().unwrap();
    assert!(o.status.success(), "the fstab options are refused: {}", String::from_utf8_lossy(&o.stderr));
}
