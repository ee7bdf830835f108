//! `mount.leasefs`: mount(8)'s helper protocol — parses `CONFIG MOUNTPOINT -o OPTIONS`, starts
//! `leasefs mount` detached, and returns once the mount is live or says why the daemon failed.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// mount(8)'s exit code for "mount failure".
const FAIL: u8 = 32;
/// How much of the daemon's own output a failed mount prints.
const KEPT: usize = 16 * 1024;

/// mount(8)'s generic options, which mount passes on to helpers; leasefs has nothing to do with
/// them. Besides these, the families in [`IGNORED_PREFIXES`] are ignored.
const GENERIC: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "rw",
    "ro",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "sync",
    "async",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "nolazytime",
    "silent",
    "loud",
];

/// Option families mount(8) itself uses or passes on (`user=NAME` for a user mount from fstab).
const IGNORED_PREFIXES: &[&str] = &["x-", "comment=", "user=", "uhelper=", "helper="];

/// What `-o` asked of leasefs.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    pub log: Option<String>,
    pub log_level: Option<String>,
    pub insecure_perms: bool,
}

/// Parses the `-o` options; an option leasefs does not know is refused, by name.
pub fn parse_options(opts: &[String]) -> Result<Options, String> {
    let mut out = Options::default();
    for o in opts.iter().filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("log", v)) if !v.is_empty() => out.log = Some(v.to_string()),
            Some(("log_level", v)) if !v.is_empty() => out.log_level = Some(v.to_string()),
            None if o == "insecure_perms" => out.insecure_perms = true,
            None if GENERIC.contains(&o.as_str()) => {}
            _ if IGNORED_PREFIXES.iter().any(|p| o.starts_with(p)) => {}
            _ => {
                return Err(format!(
                    "unknown option {o:?} (leasefs takes log=FILE, log_level=LEVEL, insecure_perms and mount(8)'s generic options)"
                ));
            }
        }
    }
    Ok(out)
}

/// `mount.leasefs CONFIG MOUNTPOINT [-sfnv] [-o OPTIONS]`, as mount(8) and fstab call it.
pub fn run(args: Vec<String>) -> ExitCode {
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let mut fake = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => opts.extend(it.next().unwrap_or_default().split(',').map(str::to_string)),
            "-t" | "-N" => {
                it.next();
            }
            "-f" => fake = true,
            "-s" | "-n" | "-v" => {}
            s if s.starts_with("-o") => opts.extend(s[2..].split(',').map(str::to_string)),
            _ => pos.push(a),
        }
    }
    let [config, mountpoint] = pos.as_slice() else {
        eprintln!("usage: mount.leasefs CONFIG MOUNTPOINT [-o options]");
        return ExitCode::from(FAIL);
    };
    let opts = match parse_options(&opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mount.leasefs: {e}");
            return ExitCode::from(FAIL);
        }
    };
    if fake {
        return ExitCode::SUCCESS;
    }
    match start(config, Path::new(mountpoint), &opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mount.leasefs: {e}");
            ExitCode::from(FAIL)
        }
    }
}

/// Where the daemon's stderr goes: the `log=` file (read back from where it ended on failure),
/// or a pipe the helper drains until the mount is live.
enum Output {
    Log { path: String, from: u64 },
    Pipe(std::sync::mpsc::Receiver<Vec<u8>>),
}

impl Output {
    /// What the daemon wrote since it started, at most the last [`KEPT`] bytes.
    fn said(self) -> String {
        let bytes = match self {
            Output::Log { path, from } => {
                let mut buf = Vec::new();
                if let Ok(mut f) = std::fs::File::open(&path) {
                    let _ = f.seek(SeekFrom::Start(from)).and_then(|_| f.read_to_end(&mut buf));
                }
                buf
            }
            // The daemon's exec guard holds the pipe too, for the moment it takes to notice.
            Output::Pipe(rx) => {
                let mut all = Vec::new();
                let until = Instant::now() + Duration::from_secs(2);
                while let Ok(chunk) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    all.extend_from_slice(&chunk);
                }
                all
            }
        };
        let cut = bytes.len().saturating_sub(KEPT);
        String::from_utf8_lossy(&bytes[cut..]).trim_end().to_string()
    }
}

fn start(config: &str, mountpoint: &Path, opts: &Options) -> Result<(), String> {
    let exe = std::env::current_exe().unwrap_or_else(|_| "leasefs".into());
    let mut cmd = Command::new(exe);
    cmd.arg("--log-level").arg(opts.log_level.as_deref().unwrap_or("info"));
    cmd.arg("mount").arg(mountpoint).arg("--config").arg(config);
    if opts.insecure_perms {
        cmd.arg("--insecure-perms");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let log_file = match &opts.log {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open the log {p}: {e}"))?;
            let from = f.metadata().map(|m| m.len()).unwrap_or(0);
            cmd.stderr(f);
            Some((p.clone(), from))
        }
        None => {
            cmd.stderr(Stdio::piped());
            None
        }
    };
    // SAFETY: setsid in the child before exec: the daemon outlives mount(8) and its terminal.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    // Ready when a leasefs mount is added there: the mountpoint may be a mount already (a shared
    // bind mount for containers, or a leasefs mount being replaced).
    let target = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.into());
    let before = leasefs_mounts_at(&target);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start leasefs: {e}"))?;
    let output = match (log_file, child.stderr.take()) {
        (Some((path, from)), _) => Output::Log { path, from },
        // Drained while the helper waits (the daemon never blocks on a full pipe); once the helper
        // exits the daemon's later writes to it fail and are dropped, as with no log before.
        (None, Some(mut pipe)) => {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 || tx.send(chunk[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
            Output::Pipe(rx)
        }
        (None, None) => return Err("cannot read the daemon's output".into()),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if leasefs_mounts_at(&target) > before && std::fs::metadata(&target).is_ok() {
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            let said = output.said();
            let said = if said.is_empty() { "(it printed nothing)".to_string() } else { said };
            return Err(format!("leasefs exited ({st}) before mounting {}:\n{said}", target.display()));
        }
        if Instant::now() > deadline {
            // SAFETY: signalling the child we started; it revokes nothing it has not issued.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            return Err(format!("{} was not mounted within 30 s; leasefs was stopped", target.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many leasefs mounts /proc/mounts lists at `target` (stacked mounts count each).
fn leasefs_mounts_at(target: &Path) -> usize {
    let want = target.to_string_lossy().replace(' ', "\\040");
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    text.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            // leasefs mounts as `leasefs` (its FSName), type fuse (or fuse.leasefs via fusermount3).
            f.len() > 2 && f[1] == want && f[0] == "leasefs" && f[2].starts_with("fuse")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Result<Options, String> {
        parse_options(&s.split(',').map(str::to_string).collect::<Vec<_>>())
    }

    #[test]
    fn known_and_generic_options_pass_and_an_unknown_one_is_named() {
        let o = opts("defaults,_netdev,rw,x-systemd.requires=network.target,log=/tmp/l,log_level=debug,insecure_perms")
            .unwrap();
        assert_eq!(o.log.as_deref(), Some("/tmp/l"));
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        assert!(o.insecure_perms);
        let e = opts("defaults,bogus=1").unwrap_err();
        assert!(e.contains("\"bogus=1\""), "{e}");
        assert!(opts("log=").is_err(), "an empty log= is refused");
    }
}
