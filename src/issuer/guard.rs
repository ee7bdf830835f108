//! The guard an `exec` script runs under, so that it dies with the daemon (SPEC §9.7): a small
//! process (`leasefs __exec-guard`) that leads the script's process group, is told by the kernel
//! when the daemon dies (`PR_SET_PDEATHSIG`), and then kills the whole group — the script and
//! every child it started — before a credential minted by a dead daemon can escape the journal.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// The argument that makes the `leasefs` binary act as the guard.
pub const ARG: &str = "__exec-guard";

static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Scripts run under `program __exec-guard …` from now on (the daemon sets its own binary).
pub fn install(program: PathBuf) {
    let _ = PROGRAM.set(program);
}

/// The argv that runs `argv` under the guard, or `argv` itself when no guard is installed.
pub fn wrap(argv: &[String]) -> Vec<OsString> {
    match PROGRAM.get() {
        Some(p) => {
            // SAFETY: getpid cannot fail.
            let me = unsafe { libc::getpid() };
            let mut v: Vec<OsString> = vec![p.into(), ARG.into(), me.to_string().into(), "--".into()];
            v.extend(argv.iter().map(OsString::from));
            v
        }
        None => argv.iter().map(OsString::from).collect(),
    }
}

fn sigset(sig: i32) -> libc::sigset_t {
    // SAFETY: a sigset_t we own, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        set
    }
}

/// The guard itself: `args` are `PARENT_PID -- PROGRAM ARGS…`. Returns the exit code.
pub fn main(args: &[OsString]) -> i32 {
    let (Some(parent), Some(rest)) = (
        args.first().and_then(|p| p.to_str()?.parse::<i32>().ok()),
        args.iter().position(|a| a == "--").map(|i| &args[i + 1..]),
    ) else {
        eprintln!("usage: leasefs {ARG} PARENT_PID -- PROGRAM [ARGS…]");
        return 2;
    };
    let Some((program, program_args)) = rest.split_first() else { return 2 };
    let term = sigset(libc::SIGTERM);
    // SAFETY: plain syscalls on our own process; SIGTERM is blocked so that it is waited for below.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &term, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
        if libc::getppid() != parent {
            return 137; // the daemon died before we could watch it
        }
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(program_args);
    // SAFETY: only async-signal-safe calls between fork and exec: the script starts with no
    // signal blocked.
    unsafe {
        cmd.pre_exec(|| {
            let all = sigset(libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &all, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot run {}: {e}", program.to_string_lossy());
            return 127;
        }
    };
    let wait = libc::timespec { tv_sec: 0, tv_nsec: 50_000_000 };
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9)),
            Ok(None) => {}
            Err(_) => return 1,
        }
        // SAFETY: waits for the blocked SIGTERM with a timeout; no memory is shared.
        let got = unsafe { libc::sigtimedwait(&term, std::ptr::null_mut(), &wait) };
        if got == libc::SIGTERM {
            // The daemon is gone (or asks us to stop): the whole group goes, us included.
            // SAFETY: signalling our own process group.
            unsafe { libc::killpg(0, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(100));
            return 137;
        }
    }
}
