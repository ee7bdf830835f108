//! The guard that makes `exec` scripts die with the daemon (SPEC §9.7).
//!
//! At start, before any thread or file exists, the daemon forks one small guard process and keeps
//! the write end of a pipe to it. Each script's process group is registered with the guard while
//! it runs. When the daemon dies — however it dies, `kill -9` included — the kernel closes the
//! pipe, and the guard kills every registered group (the script and every child it started)
//! before a credential minted by a dead daemon can escape the journal. Scripts themselves are
//! spawned the cheap way (`posix_spawn`); registering costs one pipe write.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::sync::OnceLock;

use parking_lot::Mutex;

static PIPE: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// Starts the guard. Call it first thing in the daemon, while it has one thread and no files.
pub fn start() -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into an array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the daemon has a single thread here, so the child may run ordinary code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            // SAFETY: our own descriptors and signal dispositions.
            unsafe {
                libc::close(fds[1]);
                // It holds nothing of the daemon's: not its terminal, not its log pipe.
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                }
                for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                    libc::signal(sig, libc::SIG_IGN);
                }
                libc::prctl(libc::PR_SET_NAME, c"leasefs-guard".as_ptr());
            }
            // SAFETY: fds[0] is the read end we own.
            serve(unsafe { std::fs::File::from_raw_fd(fds[0]) });
            // SAFETY: leaving the forked process without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        _ => {
            // SAFETY: fds[0] belongs to the guard now; fds[1] is ours.
            unsafe { libc::close(fds[0]) };
            let _ = PIPE.set(Mutex::new(unsafe { std::fs::File::from_raw_fd(fds[1]) }));
            Ok(())
        }
    }
}

/// The guard: keeps the registered process groups until the pipe closes, then kills them.
fn serve(mut pipe: std::fs::File) {
    let mut groups = std::collections::HashSet::new();
    let mut msg = [0u8; 5];
    while pipe.read_exact(&mut msg).is_ok() {
        let pgid = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
        if msg[0] == b'+' {
            groups.insert(pgid);
        } else {
            groups.remove(&pgid);
        }
    }
    for g in groups {
        // SAFETY: signalling a process group a script of ours leads.
        unsafe { libc::killpg(g, libc::SIGKILL) };
    }
}

fn send(op: u8, pgid: i32) {
    if let Some(p) = PIPE.get() {
        let mut m = [op, 0, 0, 0, 0];
        m[1..].copy_from_slice(&pgid.to_le_bytes());
        let _ = p.lock().write_all(&m);
    }
}

/// A script's process group to kill if the daemon dies.
pub fn started(pgid: i32) {
    send(b'+', pgid);
}

/// That group is gone (the script ended or was killed).
pub fn finished(pgid: i32) {
    send(b'-', pgid);
}
