//! The audit log: one JSON line per event (open, issue, reuse, renew, revoke, expire, deny, error,
//! irrevocable) — who, what, outcome, never a value.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use parking_lot::Mutex;
use serde::Serialize;

use crate::secret::Requester;

/// What happened.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Open,
    Issue,
    Reuse,
    Renew,
    Revoke,
    Expire,
    Deny,
    Error,
    /// A lease whose issuer kept refusing revocation.
    Irrevocable,
    /// A rotation signal sent to a process that opened a lease.
    Rotate,
}

#[derive(Serialize, Debug, Clone)]
pub struct Event<'a> {
    pub event: EventKind,
    pub path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<&'a str>,
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

pub struct Audit {
    file: Option<Mutex<File>>,
    path: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event<'a>,
    uid: Option<u32>,
    gid: Option<u32>,
    pid: Option<u32>,
    comm: Option<&'a str>,
}

impl Audit {
    pub fn is_enabled(&self) -> bool {
        self.file.is_some()
    }

    pub fn disabled() -> Self {
        Audit { file: None, path: None }
    }

    fn open_file(path: &Path) -> std::io::Result<File> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        OpenOptions::new().create(true).append(true).mode(0o600).open(path)
    }

    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Audit { file: Some(Mutex::new(Self::open_file(path)?)), path: Some(path.to_path_buf()) })
    }

    /// Opens the file again by name (after logrotate moved it away); on SIGHUP.
    pub fn reopen(&self) {
        let (Some(f), Some(p)) = (&self.file, &self.path) else { return };
        match Self::open_file(p) {
            Ok(new) => *f.lock() = new,
            Err(e) => {
                tracing::warn!(error = %e, path = %p.display(), "cannot reopen the audit log; still writing to the old one")
            }
        }
    }

    /// Records an event. `who` is absent for events the daemon does itself (expiry, recovery).
    pub fn record(&self, ev: &Event<'_>, who: Option<&Requester>) {
        let Some(f) = &self.file else { return };
        let line = Line {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event: ev,
            uid: who.map(|r| r.uid),
            gid: who.map(|r| r.gid),
            pid: who.map(|r| r.pid),
            comm: who.map(|r| r.comm.as_str()),
        };
        let mut text = match serde_json::to_vec(&line) {
            Ok(t) => t,
            Err(_) => return,
        };
        text.push(b'\n');
        let mut g = f.lock();
        if let Err(e) = g.write_all(&text) {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }
}
