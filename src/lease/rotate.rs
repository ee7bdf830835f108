//! Rotation for long-running readers (SPEC §9.4): the processes that opened a lease, if they
//! still run as the lease's uid, get its `rotate_signal`; the lease is no longer shared.

use super::table::Lease;

/// The real uid of a live process, from `/proc/PID/status`.
fn process_uid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// Retires the lease for sharing and signals its openers; each pid signalled, and whether the
/// signal went out.
pub fn signal_openers(lease: &Lease) -> Vec<(u32, bool)> {
    let Some((sig, _)) = lease.rotate else { return Vec::new() };
    lease.retire();
    let mut out = Vec::new();
    for pid in lease.openers() {
        if process_uid(pid) != Some(lease.requester.uid) {
            continue; // gone, or the pid now belongs to someone else
        }
        // SAFETY: a signal to a process of the lease's own user.
        let sent = unsafe { libc::kill(pid as i32, sig) } == 0;
        tracing::info!(lease = %lease.id, path = %lease.path(), pid, signal = sig, "rotation: signalled a reader to re-read");
        out.push((pid, sent));
    }
    out
}
