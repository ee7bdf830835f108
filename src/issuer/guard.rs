//! The guard that makes `exec` scripts die with the daemon (SPEC §9.7), and its supervision (§10.3).
//!
//! At start, before any thread or file exists, the daemon forks one small guard process and keeps
//! the write end of a pipe to it. Each script's process group is registered with the guard while
//! it runs. When the daemon dies — however it dies, `kill -9` included — the kernel closes the
//! pipe, and the guard kills every registered group (the script and every child it started)
//! before a credential minted by a dead daemon can escape the journal. Scripts themselves are
//! spawned the cheap way (`posix_spawn`); registering costs one pipe write.
//!
//! A thread of the daemon waits on the guard (`waitpid`): if the guard dies, it is reaped (no
//! zombie), logged at error level, counted (`leasefs_guard_restarts_total`) and started again —
//! as the daemon's own binary run with [`GUARD_ARG`], reading the pipe on its stdin, because a
//! multi-threaded process must not fork and go on running Rust code — and every script group
//! still running is registered with the new guard. No script starts while no guard runs
//! ([`ready`]).

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;

/// The argument that makes the `leasefs` binary run as a guard (`main.rs` checks it first).
pub const GUARD_ARG: &str = "--leasefs-internal-guard";
/// The guard's process name (`/proc/PID/comm`).
pub const NAME: &str = "leasefs-guard";

/// The pipe to the guard that runs now (none while it is being restarted), and the script groups
/// running now (registered again with a new guard).
struct State {
    pipe: Option<File>,
    groups: HashSet<i32>,
}

struct Supervised {
    state: Mutex<State>,
    /// Whether a guard runs: scripts wait on it.
    running: tokio::sync::watch::Sender<bool>,
}

static GUARD: OnceLock<Supervised> = OnceLock::new();

impl Supervised {
    fn up(&self, mut pipe: File) -> Result<usize, std::io::Error> {
        let mut s = self.state.lock();
        for g in &s.groups {
            pipe.write_all(&message(b'+', *g))?;
        }
        s.pipe = Some(pipe);
        self.running.send_replace(true);
        Ok(s.groups.len())
    }

    fn down(&self) {
        self.state.lock().pipe = None;
        self.running.send_replace(false);
    }
}

fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into an array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Starts the guard and its supervisor. Call it first thing in the daemon, while it has one
/// thread and no files: the first guard is a plain fork (cheap).
pub fn start() -> std::io::Result<()> {
    let sup = GUARD.get_or_init(|| Supervised {
        state: Mutex::new(State { pipe: None, groups: HashSet::new() }),
        running: tokio::sync::watch::channel(false).0,
    });
    let (first, result) = match fork_first() {
        Ok((pid, pipe)) => {
            let _ = sup.up(pipe);
            (Some(Running::Forked(pid)), Ok(()))
        }
        // The supervisor starts one the other way.
        Err(e) => (None, Err(e)),
    };
    std::thread::Builder::new().name("leasefs-guardw".into()).spawn(move || supervise(first))?;
    result
}

/// Forks the first guard; returns its pid and the write end of its pipe.
fn fork_first() -> std::io::Result<(i32, File)> {
    let (read, write) = pipe()?;
    // SAFETY: the daemon has a single thread here, so the child may run ordinary code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(write);
            // It holds nothing of the daemon's: not its terminal, not its log pipe.
            // SAFETY: our own descriptors.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                }
            }
            become_guard();
            serve(read);
            // SAFETY: leaving the forked process without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        pid => Ok((pid, write)),
    }
}

/// Ignores the signals a terminal or an init system sends the daemon's group, and takes the name.
fn become_guard() {
    // SAFETY: our own signal dispositions and name.
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_NAME, c"leasefs-guard".as_ptr());
    }
}

/// The body of a guard started with [`GUARD_ARG`]: the pipe is its stdin.
pub fn run_spawned() -> ! {
    become_guard();
    // SAFETY: stdin is the read end of the pipe the daemon gave us, and nothing else uses it.
    serve(unsafe { File::from_raw_fd(0) });
    std::process::exit(0)
}

/// The guard: keeps the registered process groups until the pipe closes, then kills them.
fn serve(mut pipe: File) {
    let mut groups = HashSet::new();
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

/// A guard the supervisor waits on.
enum Running {
    Forked(i32),
    Spawned(Child),
}

impl Running {
    /// Waits until the guard dies and reaps it: its pid and how it ended.
    fn wait(self) -> (u32, String) {
        match self {
            Running::Forked(pid) => {
                let mut status = 0;
                loop {
                    // SAFETY: waiting on our own child.
                    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                    if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    let how = if r != pid {
                        format!("lost ({})", std::io::Error::last_os_error())
                    } else if libc::WIFSIGNALED(status) {
                        format!("killed by signal {}", libc::WTERMSIG(status))
                    } else {
                        format!("exited with {}", libc::WEXITSTATUS(status))
                    };
                    return (pid as u32, how);
                }
            }
            Running::Spawned(mut child) => {
                let how = match child.wait() {
                    Ok(st) => st.to_string(),
                    Err(e) => format!("lost ({e})"),
                };
                (child.id(), how)
            }
        }
    }
}

/// Starts a guard as this binary run with [`GUARD_ARG`] (fork + exec: safe in a threaded process).
fn spawn_guard() -> std::io::Result<(Child, File)> {
    let (read, write) = pipe()?;
    let child = Command::new("/proc/self/exe")
        .arg0(NAME)
        .arg(GUARD_ARG)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::from(OwnedFd::from(read)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((child, write))
}

/// The supervisor thread: waits on the guard, and starts a new one whenever it dies.
fn supervise(mut current: Option<Running>) {
    let Some(sup) = GUARD.get() else { return };
    let mut restart = current.is_some();
    let mut since = std::time::Instant::now();
    loop {
        if let Some(guard) = current.take() {
            let (pid, how) = guard.wait();
            sup.down();
            tracing::error!(pid, status = %how, "the exec guard died; starting a new one (no exec script starts until it runs)");
            restart = true;
            // One that dies as soon as it starts is not restarted in a tight loop.
            if since.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        match spawn_guard() {
            Ok((child, pipe)) => {
                since = std::time::Instant::now();
                let pid = child.id();
                match sup.up(pipe) {
                    Ok(groups) if restart => {
                        crate::metrics::guard_restarted();
                        tracing::warn!(
                            pid,
                            groups,
                            "a new exec guard runs; the running scripts are registered with it"
                        );
                    }
                    Ok(_) => tracing::info!(pid, "the exec guard runs"),
                    Err(e) => tracing::error!(pid, error = %e, "the new exec guard died at once"),
                }
                current = Some(Running::Spawned(child));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start an exec guard; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn message(op: u8, pgid: i32) -> [u8; 5] {
    let mut m = [op, 0, 0, 0, 0];
    m[1..].copy_from_slice(&pgid.to_le_bytes());
    m
}

/// Tells the guard (if one runs) about a group; a guard found dead is restarted by the supervisor,
/// which registers the group with the new one.
fn send(op: u8, pgid: i32) {
    let Some(sup) = GUARD.get() else { return };
    let mut s = sup.state.lock();
    if op == b'+' {
        s.groups.insert(pgid);
    } else {
        s.groups.remove(&pgid);
    }
    let failed = s.pipe.as_mut().is_some_and(|p| p.write_all(&message(op, pgid)).is_err());
    if failed {
        s.pipe = None;
        sup.running.send_replace(false);
    }
}

/// Waits (at most `wait`) until a guard runs; an error if none does. Without a guard started in
/// this process (a library user, a unit test), scripts run unguarded as before.
pub async fn ready(wait: Duration) -> Result<(), String> {
    let Some(sup) = GUARD.get() else { return Ok(()) };
    let mut rx = sup.running.subscribe();
    match tokio::time::timeout(wait, rx.wait_for(|up| *up)).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(format!(
            "no exec guard is running (it died and was not restarted within {wait:?}); a script is not started without one, since it could outlive the daemon"
        )),
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
