//! Who asked: the uid, gid, pid and command of a request, and the session and start time of a
//! process read from `/proc` when a lease is bound to them.

use std::sync::Arc;

/// Who asked: copied out of the FUSE request.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Requester {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The process's command name (`/proc/PID/comm`), when it could be read.
    pub comm: String,
    /// Its session id, read when a lease is bound to the session (0: not read).
    #[serde(skip)]
    pub sid: u32,
    /// Its start time (`/proc/PID/stat` field 22, clock ticks since boot), read where a process
    /// must not be taken for a later one with the same pid (0: not read, or gone).
    #[serde(skip)]
    pub start: u64,
    /// Its cgroup, unit, container, pod and executable, read where an entry needs them.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::workload::serialize_shared")]
    pub workload: Option<Arc<crate::workload::Workload>>,
}

/// The session id and start time of a live process, from one read of `/proc/PID/stat`.
pub fn process_stat(pid: u32) -> Option<(u32, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The process (thread group id) that thread `tid` belongs to, from `/proc/TID/status`; 0 when
/// it is gone or cannot be read (FUSE names the thread that asked, not its process).
pub fn thread_group(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status")).ok().as_deref().and_then(parse_tgid).unwrap_or(0)
}

fn parse_tgid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Tgid:"))?.trim().parse().ok()
}

fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    // After the command name (in parentheses, which may hold spaces): field 3 (state) onwards.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let sid = rest.nth(3)?.parse().ok()?; // field 6
    let start = rest.nth(15)?.parse().ok()?; // field 22
    Some((sid, start))
}

impl Requester {
    /// A requester without its command name (reading /proc costs a syscall trio per open;
    /// `with_comm` adds it where it is recorded).
    pub fn new(uid: u32, gid: u32, pid: u32) -> Self {
        Requester { uid, gid, pid, comm: String::new(), sid: 0, start: 0, workload: None }
    }

    /// Fills in the session id and start time from one read of `/proc/PID/stat`.
    fn read_stat(&mut self) {
        let (sid, start) = process_stat(self.pid).unwrap_or((self.pid, 0));
        self.sid = sid;
        self.start = start;
    }

    /// Fills in the session id (and the start time with it), if not known yet.
    pub fn with_session(mut self) -> Self {
        if self.sid == 0 {
            self.read_stat();
        }
        self
    }

    /// Fills in the start time (and the session id with it), if not known yet.
    pub fn with_start(mut self) -> Self {
        if self.start == 0 {
            self.read_stat();
        }
        self
    }

    /// Whether `other` is this very process: same uid, pid and start time (a start time that
    /// could not be read matches nothing).
    pub fn same_process(&self, other: &Requester) -> bool {
        self.uid == other.uid && self.pid == other.pid && self.start != 0 && self.start == other.start
    }

    /// Fills in the command name from `/proc/PID/comm`, if not known yet.
    pub fn with_comm(mut self) -> Self {
        if self.comm.is_empty() {
            self.comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
                .map(|s| s.trim_end().to_string())
                .unwrap_or_default();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_and_start_time_are_read_after_the_command_name() {
        let line = "4242 (a) b (c) S 1 4242 4100 0 -1 4194560 90 0 0 0 0 0 0 0 20 0 1 0 987654 2490368 200";
        assert_eq!(parse_stat(line), Some((4100, 987654)));
        assert_eq!(parse_stat("1 (x) S 1"), None, "cut short");
        // This very process: its session, and a start time that a later process cannot have.
        let me = std::process::id();
        let (sid, start) = process_stat(me).unwrap();
        // SAFETY: getsid of the calling process.
        assert_eq!(sid as i32, unsafe { libc::getsid(0) });
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let (_, later) = process_stat(child.id()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(start > 0 && later >= start, "{start} {later}");
        let who = Requester::new(0, 0, me).with_start();
        assert_eq!((who.start, who.sid), (start, sid), "one read fills both");
        assert!(who.same_process(&who.clone()));
        assert!(!who.same_process(&Requester { start: start + 1, ..who.clone() }), "a later process at the pid");
        assert!(!who.same_process(&Requester { uid: 1, ..who.clone() }), "another uid");
        let gone = Requester::new(0, 0, u32::MAX).with_start();
        assert!(!gone.same_process(&gone.clone()), "an unknown start time matches nothing");
    }

    #[test]
    fn a_thread_is_known_by_its_process() {
        assert_eq!(parse_tgid("Name:\tx\nUmask:\t0022\nState:\tS\nTgid:\t4100\nNgid:\t0\nPid:\t4242\n"), Some(4100));
        assert_eq!(parse_tgid("Name:\tx\n"), None);
        let me = std::process::id();
        let other = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let t = unsafe { libc::gettid() } as u32;
            (t, thread_group(t))
        })
        .join()
        .unwrap();
        assert_ne!(other.0, me, "a thread of its own");
        assert_eq!(other.1, me, "its process is this one");
        assert_eq!(thread_group(me), me);
        assert_eq!(thread_group(u32::MAX), 0, "gone: unknown");
    }
}
