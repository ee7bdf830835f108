//! How an entry's leases are rotated, typed from its `rotate_*` attributes (SPEC §9.4, §10.10):
//! a signal to the lease's openers and a daemon's pid file, or a command. `lease/rotate.rs` acts
//! on it.

use std::path::Path;
use std::sync::Arc;

/// How a rotation reaches the daemon that holds a lease, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Thousandths of the lease.
    pub at: u32,
    pub by: RotateBy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotateBy {
    /// The lease's live openers, and the pid in `pid_file` if set, get `signal`.
    Signal { signal: i32, pid_file: Option<Arc<Path>> },
    /// The command runs (argv; cleared environment; bounded by `issue_timeout`).
    Command(Arc<[String]>),
}

type Attrs = serde_json::Map<String, serde_json::Value>;

/// An entry's `rotate_pid_file` and `rotate_command`, as written.
pub type Targets = (Option<Arc<Path>>, Option<Arc<[String]>>);

/// Why `rotate_*` attributes were refused: the key, and what is wrong (never the value).
pub type Refusal = (&'static str, &'static str);

/// `rotate_pid_file` (an absolute path; needs `rotate_signal`, given as `signal`) and
/// `rotate_command` (argv; not with `rotate_signal` or `rotate_pid_file`: it runs instead of
/// signalling). An error names the key, never a value.
pub fn parse(attrs: &Attrs, signal: bool) -> Result<Targets, Refusal> {
    let err = |key: &'static str, m: &'static str| (key, m);
    let mut pid_file = None;
    if let Some(v) = attrs.get("rotate_pid_file") {
        let path = v.as_str().map(Path::new).filter(|p| p.is_absolute() && p.file_name().is_some());
        let path = path.ok_or_else(|| {
            err(
                "rotate_pid_file",
                "attributes.rotate_pid_file must be an absolute path to a file (e.g. /run/nginx.pid)",
            )
        })?;
        if !signal {
            return Err(err(
                "rotate_pid_file",
                "attributes.rotate_pid_file needs attributes.rotate_signal (the signal to send)",
            ));
        }
        pid_file = Some(Arc::from(path));
    }
    let mut command = None;
    if let Some(v) = attrs.get("rotate_command") {
        let argv: Option<Vec<String>> =
            v.as_array().and_then(|a| a.iter().map(|s| s.as_str().map(String::from)).collect());
        let argv = argv.filter(|a| a.first().is_some_and(|p| !p.is_empty())).ok_or_else(|| {
            err("rotate_command", "attributes.rotate_command must be a non-empty array of strings (argv, no shell)")
        })?;
        if signal || pid_file.is_some() {
            return Err(err(
                "rotate_command",
                "attributes.rotate_command runs instead of signalling: set it or rotate_signal/rotate_pid_file, not both",
            ));
        }
        command = Some(Arc::from(argv));
    }
    Ok((pid_file, command))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn attrs(v: serde_json::Value) -> Attrs {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_rotation_signals_openers_and_a_pid_file_or_runs_a_command() {
        let p = |v| Policy::parse(&attrs(v)).unwrap().rotation();
        assert_eq!(p(serde_json::json!({})), None);
        let r = p(serde_json::json!({"rotate_signal": "SIGHUP", "rotate_pid_file": "/run/nginx.pid"})).unwrap();
        let pid_file = Some(Path::new("/run/nginx.pid").into());
        assert_eq!(r, Rotation { at: 667, by: RotateBy::Signal { signal: libc::SIGHUP, pid_file } });
        let r = p(serde_json::json!({"rotate_command": ["systemctl", "reload", "nginx"], "rotate_at": 0.5})).unwrap();
        let argv: Arc<[String]> = ["systemctl", "reload", "nginx"].map(String::from).into();
        assert_eq!(r, Rotation { at: 500, by: RotateBy::Command(argv) });
    }
}
