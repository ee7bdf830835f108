//! Keeps secret buffers out of swap (`mlock`) and the process out of core dumps; degrades quietly where not permitted.

use std::sync::atomic::{AtomicBool, Ordering};

static WARNED: AtomicBool = AtomicBool::new(false);

/// Locks the pages of a buffer in memory. Without CAP_IPC_LOCK or over RLIMIT_MEMLOCK this logs once and goes on.
pub fn lock(buf: &[u8]) {
    if buf.is_empty() {
        return;
    }
    // SAFETY: mlock only pins the pages of a live buffer; it does not read or write them.
    let rc = unsafe { libc::mlock(buf.as_ptr().cast(), buf.len()) };
    if rc != 0 && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::info!(error = %std::io::Error::last_os_error(), "cannot mlock secret buffers; they may be swapped (grant CAP_IPC_LOCK or raise LimitMEMLOCK)");
    }
}

pub fn unlock(buf: &[u8]) {
    if buf.is_empty() {
        return;
    }
    // SAFETY: as above; munlock of pages we locked (or never locked) is harmless.
    unsafe { libc::munlock(buf.as_ptr().cast(), buf.len()) };
}

/// Makes the process non-dumpable (no core file, no ptrace by other users) and sets the core size to 0.
pub fn harden_process() {
    // SAFETY: plain syscalls with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
    }
}
