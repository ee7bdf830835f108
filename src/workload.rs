//! Workload identity: who is reading, from the kernel (the reader's cgroup and executable), its
//! `unit`, `container` and `pod_uid`, cached per process. `allow.rs`: the `attributes.allow`
//! matchers over those fields; `template.rs`: the `{{workload.*}}` templates.

pub mod allow;
pub mod template;

pub use allow::{allows, check_allow, glob};
pub use template::{check_template_names, check_templates, has_templates, render, render_value};

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// Which cgroup hierarchy a path is in: the unified one (cgroup v2), or v1's `name=systemd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    Unified,
    Systemd,
}

/// What the kernel says about a reading process, beyond its uid, gid and pid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// Its cgroup path (`/system.slice/nginx.service`), in v1's `name=systemd` hierarchy where
    /// that exists, else in the unified one.
    pub cgroup: String,
    /// The innermost systemd unit (`*.service`, `*.scope`) on that path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The 64-hex id of the container (podman, docker, containerd, CRI-O) on that path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The Kubernetes pod uid of a `kubepods` path (with `-`, as the API writes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The executable (`/proc/PID/exe`), as the kernel names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip)]
    pub hierarchy: Hierarchy,
}

/// Serializes a shared workload (for `#[serde(serialize_with)]`: serde's `rc` feature is off).
pub fn serialize_shared<S: serde::Serializer>(w: &Option<Arc<Workload>>, s: S) -> Result<S::Ok, S::Error> {
    w.as_deref().serialize(s)
}

/// The template and matcher fields of a workload.
pub const FIELDS: [&str; 5] = ["unit", "container", "pod_uid", "cgroup", "exe"];

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id a cgroup path segment names: `libpod-<id>[.scope]`, `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, or a bare id (cgroupfs drivers).
fn container_of(seg: &str) -> Option<&str> {
    let s = seg.strip_suffix(".scope").unwrap_or(seg);
    let id = ["libpod-", "docker-", "cri-containerd-", "crio-"].iter().find_map(|p| s.strip_prefix(p)).unwrap_or(s);
    is_hex64(id).then_some(id)
}

/// The pod uid a segment below `kubepods` names: `pod<uid>` (cgroupfs) or
/// `kubepods-<class>-pod<uid>.slice` (systemd), `_` read as `-`.
pub(crate) fn pod_of(seg: &str) -> Option<String> {
    let s = seg.strip_suffix(".slice").unwrap_or(seg);
    let uid = match s.rfind("-pod") {
        Some(i) => &s[i + 4..],
        None => s.strip_prefix("pod")?,
    };
    let ok = (8..=64).contains(&uid.len()) && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
    ok.then(|| uid.replace('_', "-"))
}

impl Workload {
    /// Reads `unit`, `container` and `pod_uid` off a cgroup path.
    pub fn from_cgroup(cgroup: &str, hierarchy: Hierarchy, exe: Option<String>) -> Workload {
        let segs: Vec<&str> = cgroup.split('/').filter(|s| !s.is_empty()).collect();
        let unit = segs.iter().rev().find(|s| s.ends_with(".service") || s.ends_with(".scope")).map(|s| s.to_string());
        let container = segs.iter().rev().find_map(|s| container_of(s)).map(str::to_string);
        let pod_uid = match segs.iter().position(|s| s.starts_with("kubepods")) {
            Some(k) => segs[k..].iter().find_map(|s| pod_of(s)),
            None => None,
        };
        Workload { cgroup: cgroup.to_string(), unit, container, pod_uid, exe, hierarchy }
    }

    /// A field by name (`FIELDS`); None when the reader has none.
    pub fn field(&self, name: &str) -> Option<&str> {
        match name {
            "cgroup" => Some(&self.cgroup),
            "unit" => self.unit.as_deref(),
            "container" => self.container.as_deref(),
            "pod_uid" => self.pod_uid.as_deref(),
            "exe" => self.exe.as_deref(),
            _ => None,
        }
    }

    /// What `reuse: "workload"` shares a lease by: the pod, else the container, else the unit,
    /// else the cgroup.
    pub fn key(&self) -> String {
        match (&self.pod_uid, &self.container, &self.unit) {
            (Some(p), ..) => format!("pod:{p}"),
            (None, Some(c), _) => format!("container:{c}"),
            (None, None, Some(u)) => format!("unit:{u}"),
            _ => format!("cgroup:{}", self.cgroup),
        }
    }

    /// `LEASEFS_WORKLOAD_*` for an exec script: the fields this reader has.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        const NAMES: [&str; 5] = [
            "LEASEFS_WORKLOAD_UNIT",
            "LEASEFS_WORKLOAD_CONTAINER",
            "LEASEFS_WORKLOAD_POD_UID",
            "LEASEFS_WORKLOAD_CGROUP",
            "LEASEFS_WORKLOAD_EXE",
        ];
        FIELDS.iter().zip(NAMES).filter_map(|(f, n)| self.field(f).map(|v| (n, v.to_string()))).collect()
    }

    /// `cgroup.procs` of its cgroup, where the hierarchy is mounted.
    pub fn procs_file(&self) -> Option<PathBuf> {
        let root = match self.hierarchy {
            Hierarchy::Unified => MOUNTS.0.as_ref(),
            Hierarchy::Systemd => MOUNTS.1.as_ref(),
        }?;
        Some(root.join(self.cgroup.trim_start_matches('/')).join("cgroup.procs"))
    }

    /// Whether its cgroup holds no process (or is gone); None when that cannot be read.
    pub fn cgroup_is_empty(&self) -> Option<bool> {
        match std::fs::read(self.procs_file()?) {
            Ok(b) => Some(b.iter().all(u8::is_ascii_whitespace)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(true),
            Err(_) => None,
        }
    }
}

/// Where the unified hierarchy and v1's `name=systemd` are mounted (from this process's mountinfo).
static MOUNTS: LazyLock<(Option<PathBuf>, Option<PathBuf>)> = LazyLock::new(|| {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let (mut unified, mut systemd) = (None, None);
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let (Some(point), mut r) = (left.split(' ').nth(4), right.split(' ')) else { continue };
        match (r.next(), r.nth(1)) {
            (Some("cgroup2"), _) if unified.is_none() => unified = Some(PathBuf::from(point)),
            (Some("cgroup"), Some(opts)) if opts.split(',').any(|o| o == "name=systemd") => {
                systemd = Some(PathBuf::from(point))
            }
            _ => {}
        }
    }
    (unified, systemd)
});

/// The cgroup path of `/proc/PID/cgroup`: v1's `name=systemd` line, else the unified (`0::`) one.
pub fn cgroup_line(text: &str) -> Option<(&str, Hierarchy)> {
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctl), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if ctl == "name=systemd" {
            return Some((path, Hierarchy::Systemd));
        }
        if id == "0" && ctl.is_empty() {
            unified = Some((path, Hierarchy::Unified));
        }
    }
    unified
}

fn read(pid: u32) -> Option<Workload> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (path, hierarchy) = cgroup_line(&text)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.to_string_lossy().into_owned());
    Some(Workload::from_cgroup(path, hierarchy, exe))
}

/// How long a process's workload is taken from the cache before its cgroup is read again (a
/// process may move itself to a cgroup it can write).
const FRESH: Duration = Duration::from_secs(1);
/// Processes cached at most (each holds a pidfd).
const CACHE_MAX: usize = 256;

struct Cached {
    start: u64,
    at: Instant,
    workload: Arc<Workload>,
    /// Holds the very process: while it can be signalled, the pid is not another's.
    pidfd: OwnedFd,
}

static CACHE: LazyLock<Mutex<HashMap<u32, Cached>>> = LazyLock::new(Mutex::default);

/// A process's start time, `/proc/PID/stat` field 22 (clock ticks since boot).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, which may hold spaces): field 3 onwards.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

fn pidfd(pid: u32) -> Option<OwnedFd> {
    if pid == 0 || pid > i32::MAX as u32 {
        return None;
    }
    // SAFETY: pidfd_open(pid, flags) returns a new descriptor or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    // SAFETY: a descriptor just returned to us, owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process a pidfd holds has not been reaped (its pid cannot be another's yet).
fn alive(fd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal(pidfd, 0, NULL, 0) on a descriptor we own: a check, no signal.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), 0, std::ptr::null::<libc::siginfo_t>(), 0u32)
    };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The start time and workload of the process at `pid` (`start`: its start time, `/proc/PID/stat`
/// field 22, when known; else 0). A process seen before costs one pidfd signal check while its
/// entry is fresh; else its stat (once), cgroup and exe are read. None when the process is gone,
/// is not the one that started at `start`, or its cgroup cannot be read.
pub fn identify(pid: u32, start: u64) -> Option<(u64, Arc<Workload>)> {
    let mut g = CACHE.lock();
    if let Some(c) = g.get(&pid) {
        if (start == 0 || c.start == start) && alive(&c.pidfd) {
            if c.at.elapsed() < FRESH {
                return Some((c.start, c.workload.clone()));
            }
        } else {
            g.remove(&pid);
        }
    }
    let known = g.remove(&pid);
    drop(g);
    let (fd, start) = match known {
        Some(c) => (c.pidfd, c.start),
        None => {
            // The pidfd first, the start time after: a match means the pidfd holds that process.
            let fd = pidfd(pid)?;
            let now = start_time(pid)?;
            if now == 0 || (start != 0 && now != start) {
                return None;
            }
            (fd, now)
        }
    };
    let workload = Arc::new(read(pid)?);
    // Still that process (not reaped): what was read at its pid was its own.
    if !alive(&fd) {
        return None;
    }
    let mut g = CACHE.lock();
    if g.len() >= CACHE_MAX {
        g.retain(|_, c| c.at.elapsed() < FRESH && alive(&c.pidfd));
        if g.len() >= CACHE_MAX {
            g.clear();
        }
    }
    g.insert(pid, Cached { start, at: Instant::now(), workload: workload.clone(), pidfd: fd });
    Some((start, workload))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "f82fa918f68bc42e34251e07533889a2ab872a2d1708b71b0825bf803e20d4d6";

    #[test]
    fn fields_are_read_off_the_cgroup_path() {
        let w = |p: &str| Workload::from_cgroup(p, Hierarchy::Systemd, None);
        let podman = w(&format!("/libpod_parent/libpod-{ID}"));
        assert_eq!((podman.container.as_deref(), podman.unit.as_deref()), (Some(ID), None));
        assert_eq!(podman.key(), format!("container:{ID}"));
        let scope = w(&format!("/machine.slice/libpod-{ID}.scope"));
        assert_eq!(
            (scope.container.as_deref(), scope.unit.as_deref()),
            (Some(ID), Some(&*format!("libpod-{ID}.scope")))
        );
        for p in [format!("/system.slice/docker-{ID}.scope"), format!("/kubepods.slice/x/cri-containerd-{ID}.scope")] {
            assert_eq!(w(&p).container.as_deref(), Some(ID), "{p}");
        }
        assert_eq!(w(&format!("/libpod_parent/libpod-conmon-{ID}")).container, None, "conmon is not the container");
        let pod = w(&format!("/kubepods/besteffort/pod0d2c6f3e-5b1a-4c7e-9a8b-1f2e3d4c5b6a/{ID}"));
        assert_eq!(pod.pod_uid.as_deref(), Some("0d2c6f3e-5b1a-4c7e-9a8b-1f2e3d4c5b6a"));
        assert_eq!(pod.container.as_deref(), Some(ID));
        assert_eq!(pod.key(), "pod:0d2c6f3e-5b1a-4c7e-9a8b-1f2e3d4c5b6a");
        let sd = w(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d2c6f3e_5b1a_4c7e_9a8b_1f2e3d4c5b6a.slice",
        );
        assert_eq!(sd.pod_uid.as_deref(), Some("0d2c6f3e-5b1a-4c7e-9a8b-1f2e3d4c5b6a"));
        assert_eq!(w("/podman/pod1234567890").pod_uid, None, "no pod outside kubepods");
        let unit = w("/user.slice/user-1000.slice/user@1000.service/app.slice/x.service");
        assert_eq!((unit.unit.as_deref(), unit.key()), (Some("x.service"), "unit:x.service".to_string()));
        assert_eq!(w("/").key(), "cgroup:/");
    }

    #[test]
    fn the_systemd_line_wins_over_the_unified_one() {
        let v1 = "9:name=systemd:/a.service\n4:memory:/m\n0::/\n";
        assert_eq!(cgroup_line(v1), Some(("/a.service", Hierarchy::Systemd)));
        assert_eq!(
            cgroup_line("0::/system.slice/nginx.service\n"),
            Some(("/system.slice/nginx.service", Hierarchy::Unified))
        );
        assert_eq!(cgroup_line("4:memory:/m\n"), None);
    }

    #[test]
    fn this_process_is_identified_and_cached() {
        let me = std::process::id();
        let start = start_time(me).expect("this process's start time");
        let (s, w) = identify(me, start).expect("this process");
        assert_eq!(s, start);
        assert!(w.cgroup.starts_with('/') && w.exe.is_some(), "{w:?}");
        assert!(Arc::ptr_eq(&w, &identify(me, 0).unwrap().1), "the second lookup is the cached one");
        assert_eq!(identify(me, start + 1), None, "a later process at the pid is not this one");
        // A process that is gone is not identified, cached or not.
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = child.id();
        let (cs, _) = identify(pid, 0).expect("the child");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(identify(pid, cs), None, "reaped: its cache entry is not used");
    }
}
