//! Rotation for long-running readers (SPEC §9.4, §10.2): the processes that opened a lease, if
//! they are still those very processes (pid and start time) and run as the lease's uid, get its
//! `rotate_signal` through a pidfd; the lease is no longer shared.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::table::Lease;
use crate::secret::process_stat;

/// The real uid of a live process, from `/proc/PID/status`.
fn process_uid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// A pidfd on the process that started at `start` (clock ticks since boot) as `pid` and runs as
/// `uid`; none if it is gone or the pid now belongs to another process. The pidfd is opened
/// first and the start time checked after: a match means the pidfd holds that very process,
/// and a signal through it never reaches a later one.
fn pin(pid: u32, start: u64, uid: u32) -> Option<OwnedFd> {
    if start == 0 || pid == 0 || pid > i32::MAX as u32 {
        return None; // never identified: it cannot be told from a later process
    }
    // SAFETY: pidfd_open(pid, flags) returns a new descriptor or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just returned to us and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
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

/// Retires the lease for sharing and signals its openers; each process signalled (by pid), and
/// whether the signal went out. An opener that is gone, or whose pid another process now holds,
/// is skipped.
pub fn signal_openers(lease: &Lease) -> Vec<(u32, bool)> {
    let Some((sig, _)) = lease.rotate else { return Vec::new() };
    lease.retire();
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
}
