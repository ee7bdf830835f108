//! Rotation for long-running readers (SPEC §9.4, §10.2, §10.10): at `rotate_at` the lease is no
//! longer shared, and the daemon holding it is told to re-read — its openers that are still those
//! very processes (pid and start time) and run as the lease's uid, and the pid in its
//! `rotate_pid_file`, get `rotate_signal` through a pidfd; or its `rotate_command` runs. A
//! rotation that reaches nobody is audited `rotate_unheard`, counted, and logged at warn.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::table::Lease;
use crate::audit::{Audit, Event, EventKind, Outcome};
use crate::metrics::Metrics;
use crate::policy::RotateBy;
use crate::requester::{Requester, process_stat};
use crate::trust::Trust;

/// The real uid of a live process, from `/proc/PID/status`.
fn process_uid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// A pidfd on the process at `pid` now; none if there is none.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    if pid == 0 || pid > i32::MAX as u32 {
        return None;
    }
    // SAFETY: pidfd_open(pid, flags) returns a new descriptor or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just returned to us and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A pidfd on the process that started at `start` (clock ticks since boot) as `pid` and runs as
/// `uid`; none if it is gone or the pid now belongs to another process. The pidfd is opened
/// first and the start time checked after: a match means the pidfd holds that very process,
/// and a signal through it never reaches a later one.
fn pin(pid: u32, start: u64, uid: u32) -> Option<OwnedFd> {
    if start == 0 {
        return None; // never identified: it cannot be told from a later process
    }
    let fd = pidfd(pid)?;
    let (_, now) = process_stat(pid)?;
    (now == start && process_uid(pid) == Some(uid)).then_some(fd)
}

/// Sends `sig` through a pidfd: whether it went out; none if the process is gone.
fn send(fd: &OwnedFd, sig: i32) -> Option<bool> {
    // SAFETY: pidfd_send_signal(pidfd, sig, info = NULL, flags = 0) on a descriptor we own.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0u32)
    };
    match r {
        0 => Some(true),
        _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) => None,
        _ => Some(false),
    }
}

/// Signals the lease's openers: each process signalled (by pid), and whether the signal went out.
/// An opener that is gone, or whose pid another process now holds, is skipped.
pub fn signal_openers(lease: &Lease, sig: i32) -> Vec<(u32, bool)> {
    let mut out = Vec::new();
    for (pid, start) in lease.openers() {
        let Some(fd) = pin(pid, start, lease.requester.uid) else {
            tracing::debug!(lease = %lease.id, pid, "rotation: an opener is gone (or its pid is another process's now)");
            continue;
        };
        let Some(sent) = send(&fd, sig) else { continue };
        tracing::info!(lease = %lease.id, path = %lease.path(), pid, signal = sig, sent, "rotation: signalled a reader to re-read");
        out.push((pid, sent));
    }
    out
}

/// The pid in a daemon's pid file, read now. The file must be a regular file (not a link) owned by
/// root or the daemon's user and not writable by group or others: whoever can write it chooses
/// which process leasefs signals.
pub fn read_pid_file(path: &Path, daemon_uid: u32) -> Result<u32, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot open it: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    Trust { strict: true, uid: daemon_uid }.check_owned(&meta)?;
    let mut text = String::new();
    f.take(64).read_to_string(&mut text).map_err(|e| format!("cannot read it: {e}"))?;
    let pid = text.trim().parse::<u32>().ok().filter(|p| *p > 0 && *p <= i32::MAX as u32);
    pid.ok_or_else(|| "it does not hold a pid".into())
}

/// Signals the pid in `path` unless it is one of `done` (openers already signalled): Ok(pid) if
/// the signal went out, else why nobody was reached through the file.
fn signal_pid_file(path: &Path, sig: i32, done: &[u32], daemon_uid: u32) -> Result<(u32, bool), String> {
    let pid = read_pid_file(path, daemon_uid)?;
    if done.contains(&pid) {
        return Ok((pid, false));
    }
    let fd = pidfd(pid).ok_or_else(|| format!("pid {pid} is not running"))?;
    match send(&fd, sig) {
        Some(true) => Ok((pid, true)),
        Some(false) => Err(format!("pid {pid} could not be signalled: {}", std::io::Error::last_os_error())),
        None => Err(format!("pid {pid} is not running")),
    }
}

/// What a rotation works with: where it is audited and counted, who may own a `rotate_command`,
/// and how long one may run (`issue_timeout`).
#[derive(Clone)]
pub struct Rotator {
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    pub trust: Trust,
    pub timeout: Duration,
}

impl Rotator {
    fn audit(&self, lease: &Lease, outcome: Outcome, who: Option<&Requester>) {
        let ev = Event::new(EventKind::Rotate, lease.path(), outcome).lease(&lease.id, lease.issuer());
        self.audit.record(&ev, who);
    }
}

/// At `rotate_at`: no new open shares the lease, and the daemon holding it is told to re-read.
pub fn rotate(m: &Rotator, lease: &Arc<Lease>) {
    let Some(rotation) = lease.rotate.clone() else { return };
    lease.retire();
    match rotation.by {
        RotateBy::Signal { signal, pid_file } => {
            if let Err(why) = signal_all(m, lease, signal, pid_file.as_deref()) {
                unheard(m, lease, &why);
            }
        }
        RotateBy::Command(argv) => {
            let (m, lease) = (m.clone(), lease.clone());
            tokio::spawn(async move {
                let ran = crate::issuer::exec::run_rotate_command(&m.trust, &argv, &lease.id, lease.path(), m.timeout);
                match ran.await {
                    Ok(()) => {
                        m.audit(&lease, Outcome::Command, None);
                        tracing::info!(lease = %lease.id, path = %lease.path(), program = %argv[0], "rotation: rotate_command ran");
                    }
                    Err(e) => {
                        let detail = e.log_detail().unwrap_or_default();
                        tracing::debug!(lease = %lease.id, detail, "rotation: rotate_command failed");
                        unheard(&m, &lease, &format!("rotate_command: {e}"));
                    }
                }
            });
        }
    }
}

/// Signals the lease's openers and the pid in its pid file, auditing each signal: Ok if one went
/// out, else why none did.
fn signal_all(m: &Rotator, lease: &Lease, sig: i32, pid_file: Option<&Path>) -> Result<(), String> {
    let who =
        |pid: u32| Requester { pid, uid: process_uid(pid).unwrap_or(lease.requester.uid), ..lease.requester.clone() };
    let openers = signal_openers(lease, sig);
    for (pid, sent) in &openers {
        m.audit(lease, if *sent { Outcome::Signalled } else { Outcome::Failed }, Some(&who(*pid)));
    }
    let signalled: Vec<u32> = openers.iter().filter(|(_, sent)| *sent).map(|(pid, _)| *pid).collect();
    let mut why = if signalled.is_empty() { vec!["no live opener".to_string()] } else { Vec::new() };
    match pid_file {
        None => why.push("no rotate_pid_file".into()),
        Some(path) => match signal_pid_file(path, sig, &signalled, m.trust.uid) {
            Ok((_, false)) => {}
            Ok((pid, true)) => {
                m.audit(lease, Outcome::Signalled, Some(&who(pid)));
                tracing::info!(lease = %lease.id, path = %lease.path(), pid, signal = sig, pid_file = %path.display(), "rotation: signalled the daemon in its pid file");
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(lease = %lease.id, pid_file = %path.display(), why = %e, "rotation: nobody reached through the pid file");
                why.push(format!("rotate_pid_file {}: {e}", path.display()));
            }
        },
    }
    if signalled.is_empty() { Err(why.join("; ")) } else { Ok(()) }
}

/// A rotation that reached nobody: the daemon will hold the lease past its expiry.
fn unheard(m: &Rotator, lease: &Lease, why: &str) {
    m.metrics.rotate_unheard();
    let ev = Event::new(EventKind::Rotate, lease.path(), Outcome::RotateUnheard)
        .lease(&lease.id, lease.issuer())
        .detail(why);
    m.audit.record(&ev, None);
    tracing::warn!(lease = %lease.id, path = %lease.path(), why, "rotation reached nobody: whoever holds this lease was not told to re-read and may use it past its expiry");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_pinned_only_while_its_start_time_matches() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let (_, start) = process_stat(pid).unwrap();
        assert!(pin(pid, start + 1, uid).is_none(), "another start time: another process");
        assert!(pin(pid, start, uid + 1).is_none(), "another uid");
        assert!(pin(pid, 0, uid).is_none(), "never identified");
        let fd = pin(pid, start, uid).expect("the process itself");
        assert_eq!(send(&fd, libc::SIGTERM), Some(true));
        let _ = child.wait();
        assert_eq!(send(&fd, libc::SIGTERM), None, "the pidfd still names the reaped process: ESRCH");
        assert!(pin(pid, start, uid).is_none(), "gone");
    }

    #[test]
    fn a_pid_file_is_read_only_if_nobody_else_could_have_written_it() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.pid");
        std::fs::write(&f, "4242\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_pid_file(&f, uid), Ok(4242));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(read_pid_file(&f, uid).unwrap_err().contains("writable by group or others"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        if uid != 0 {
            assert!(read_pid_file(&f, uid + 1).unwrap_err().contains("owned by uid"));
        }
        let link = dir.path().join("link.pid");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(read_pid_file(&link, uid).is_err(), "a symbolic link is refused");
        assert_eq!(read_pid_file(dir.path(), uid), Err("not a regular file".into()));
        std::fs::write(&f, "nginx\n").unwrap();
        assert!(read_pid_file(&f, uid).unwrap_err().contains("does not hold a pid"));
        assert!(read_pid_file(&dir.path().join("none.pid"), uid).is_err());
    }
}
