//! Workload identity: who is reading, from the kernel (the reader's cgroup and executable), its
//! `unit`, `container` and `pod_uid`, cached per process; `attributes.allow` matchers and the
//! `{{workload.*}}` templates over those fields.

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
fn pod_of(seg: &str) -> Option<String> {
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
            let now = crate::secret::process_stat(pid)?.1;
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

/// Whether `name` matches glob `pattern`: `*` any run of characters (`/` included), `?` one.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// The keys of one `attributes.allow` matcher.
pub const MATCHER_KEYS: [&str; 7] = ["uid", "gid", "unit", "cgroup", "container", "pod_uid", "exe"];

/// Checks `attributes.allow`: a non-empty list of non-empty matchers of known keys. The message
/// names the matcher and key, never a value.
pub fn check_allow(v: &serde_json::Value) -> Result<(), String> {
    let list = v.as_array().ok_or("attributes.allow must be a list of matchers, e.g. [{\"unit\": \"app.service\"}]")?;
    if list.is_empty() {
        return Err(
            "attributes.allow is empty: nobody could open the entry (leave it out to let the mode decide)".into()
        );
    }
    for (i, m) in list.iter().enumerate() {
        let at = format!("attributes.allow[{i}]");
        let obj =
            m.as_object().ok_or_else(|| format!("{at} must be an object such as {{\"unit\": \"app.service\"}}"))?;
        if obj.is_empty() {
            return Err(format!("{at} is empty and would match every reader"));
        }
        for (k, v) in obj {
            let s = v.as_str().unwrap_or("");
            let ok = match k.as_str() {
                "uid" | "gid" => v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)),
                "container" => (12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()),
                "cgroup" | "exe" => s.starts_with('/'),
                "unit" => !s.is_empty() && !s.contains('/'),
                "pod_uid" => pod_of(&format!("pod{s}")).is_some_and(|p| p == s),
                other => {
                    let hint = crate::diag::did_you_mean(other, MATCHER_KEYS).map(|k| format!("; did you mean `{k}`?"));
                    let shown = crate::diag::shown_key(other);
                    return Err(format!("{at}: unknown matcher `{shown}`{}", hint.unwrap_or_default()));
                }
            };
            if !ok {
                let want = match k.as_str() {
                    "uid" | "gid" => "a number",
                    "container" => "12 to 64 hex digits (a container id or its prefix)",
                    "cgroup" => "a cgroup path or glob starting with /",
                    "exe" => "an absolute path",
                    "unit" => "a unit name such as app.service",
                    _ => "a pod uid such as 0d2c6f3e-5b1a-4c7e-9a8b-1f2e3d4c5b6a",
                };
                return Err(format!("{at}.{k} must be {want}"));
            }
        }
    }
    Ok(())
}

/// Whether a reader (uid, gid, workload) matches one of the matchers of `attributes.allow`
/// (checked at load). Fields the reader lacks match nothing.
pub fn allows(allow: &serde_json::Value, uid: u32, gid: u32, w: Option<&Workload>) -> bool {
    let one = |k: &str, v: &serde_json::Value| match k {
        "uid" => v.as_u64() == Some(u64::from(uid)),
        "gid" => v.as_u64() == Some(u64::from(gid)),
        _ => match (w, v.as_str()) {
            (Some(w), Some(want)) => match k {
                "cgroup" => glob(want, &w.cgroup),
                "container" => w.container.as_deref().is_some_and(|c| c.starts_with(want)),
                f => w.field(f) == Some(want),
            },
            _ => false,
        },
    };
    allow.as_array().is_some_and(|l| {
        l.iter().any(|m| m.as_object().is_some_and(|o| !o.is_empty() && o.iter().all(|(k, v)| one(k, v))))
    })
}

/// Renders `{{workload.FIELD}}` and `{{requester.uid}}` / `{{requester.gid}}` in `text`; a field
/// this reader lacks (or no workload at all) is an error naming it, never an empty string.
pub fn render(text: &str, uid: u32, gid: u32, w: Option<&Workload>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find("}}").ok_or("a template opens with {{ and does not close with }}")?;
        let name = after[..end].trim();
        let value = match name {
            "requester.uid" => uid.to_string(),
            "requester.gid" => gid.to_string(),
            _ => match name.strip_prefix("workload.") {
                Some(f) if FIELDS.contains(&f) => match w.and_then(|w| w.field(f)) {
                    Some(v) => v.to_string(),
                    None => return Err(format!("this reader has no {name}")),
                },
                _ => {
                    return Err(format!(
                        "unknown template field {name:?} (workload.<{}>, requester.uid)",
                        FIELDS.join("|")
                    ));
                }
            },
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `render` over every string in a JSON value (a claim's value, an audience list).
pub fn render_value(
    v: &serde_json::Value,
    uid: u32,
    gid: u32,
    w: Option<&Workload>,
) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match v {
        Value::String(s) if s.contains("{{") => Value::String(render(s, uid, gid, w)?),
        Value::Array(a) => Value::Array(a.iter().map(|x| render_value(x, uid, gid, w)).collect::<Result<_, _>>()?),
        Value::Object(o) => Value::Object(
            o.iter().map(|(k, x)| Ok((k.clone(), render_value(x, uid, gid, w)?))).collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// The attributes whose strings may hold templates (the `jwt` issuer's).
pub const TEMPLATED: [&str; 3] = ["subject", "audience", "claims"];

/// Renders the templated attributes of an entry for a reader, to check that every field is
/// known for it (the open is refused otherwise) before anything is issued.
pub fn check_templates(
    attrs: &serde_json::Map<String, serde_json::Value>,
    uid: u32,
    gid: u32,
    w: Option<&Workload>,
) -> Result<(), String> {
    for key in TEMPLATED {
        if let Some(v) = attrs.get(key) {
            render_value(v, uid, gid, w).map_err(|e| format!("attributes.{key}: {e}"))?;
        }
    }
    Ok(())
}

/// Whether an entry's attributes name a template anywhere a template is rendered.
pub fn has_templates(attrs: &serde_json::Map<String, serde_json::Value>) -> bool {
    fn any(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains("{{"),
            serde_json::Value::Array(a) => a.iter().any(any),
            serde_json::Value::Object(o) => o.values().any(any),
            _ => false,
        }
    }
    TEMPLATED.iter().any(|k| attrs.get(*k).is_some_and(any))
}

/// Checks the templates of an entry at load: every field named is one leasefs knows.
pub fn check_template_names(attrs: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    let all = Workload {
        cgroup: "/".into(),
        unit: Some(String::new()),
        container: Some(String::new()),
        pod_uid: Some(String::new()),
        exe: Some(String::new()),
        hierarchy: Hierarchy::Unified,
    };
    check_templates(attrs, 0, 0, Some(&all))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let start = crate::secret::process_stat(me).unwrap().1;
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

    #[test]
    fn allow_matchers() {
        let w =
            Workload::from_cgroup(&format!("/libpod_parent/libpod-{ID}"), Hierarchy::Systemd, Some("/bin/cat".into()));
        let allow = |v: serde_json::Value| {
            check_allow(&v).unwrap();
            allows(&v, 1000, 1000, Some(&w))
        };
        assert!(allow(json!([{"container": &ID[..12]}])));
        assert!(!allow(json!([{"container": "0123456789ab"}])));
        assert!(allow(json!([{"unit": "x.service"}, {"cgroup": "/libpod_parent/*"}])));
        assert!(!allow(json!([{"cgroup": "/libpod_parent/*", "uid": 0}])), "every key of a matcher must match");
        assert!(allow(json!([{"uid": 1000, "exe": "/bin/cat"}])));
        assert!(!allow(json!([{"pod_uid": "0d2c6f3e-5b1a-4c7e-9a8b-1f2e3d4c5b6a"}])), "a field the reader lacks");
        assert!(!allows(&json!([{"unit": "x.service"}]), 0, 0, None), "no workload: only uid and gid can match");
        for bad in [json!([]), json!([{}]), json!({"unit": "x"}), json!([{"unti": "x"}]), json!([{"container": "xyz"}])]
        {
            assert!(check_allow(&bad).is_err(), "{bad}");
        }
        let e = check_allow(&json!([{"unti": "secret-unit"}])).unwrap_err();
        assert!(e.contains("did you mean `unit`") && !e.contains("secret-unit"), "{e}");
        assert!(glob("/a/*/c", "/a/b/x/c") && glob("/a?", "/ab") && !glob("/a", "/ab") && glob("*", ""));
    }

    #[test]
    fn templates_render_known_fields_and_refuse_the_rest() {
        let w = Workload::from_cgroup(&format!("/kubepods/besteffort/podabcdef12-3456/{ID}"), Hierarchy::Unified, None);
        let r = render("spiffe://x/pod/{{ workload.pod_uid }}/u{{requester.uid}}", 7, 8, Some(&w));
        assert_eq!(r.unwrap(), "spiffe://x/pod/abcdef12-3456/u7");
        assert!(render("{{workload.unit}}", 7, 8, Some(&w)).unwrap_err().contains("no workload.unit"));
        assert!(render("{{workload.pod_uid}}", 7, 8, None).is_err());
        assert!(render("{{workload.nope}}", 7, 8, Some(&w)).is_err());
        assert!(render("{{workload.unit", 7, 8, Some(&w)).is_err());
        let v = render_value(&json!({"a": ["{{requester.uid}}", 1]}), 7, 8, None).unwrap();
        assert_eq!(v, json!({"a": ["7", 1]}));
        let attrs = json!({"subject": "{{workload.container}}", "claims": {"x": "{{workload.bogus}}"}});
        assert!(check_template_names(attrs.as_object().unwrap()).unwrap_err().contains("attributes.claims"));
        assert!(has_templates(attrs.as_object().unwrap()));
        assert_eq!(w.env().len(), 3, "cgroup, container, pod_uid: {:?}", w.env());
    }
}
