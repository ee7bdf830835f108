//! The audit log: one JSON line per event (open, issue, reuse, renew, revoke, expire, deny, error,
//! irrevocable) — who, what, outcome, never a value.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use parking_lot::Mutex;
use serde::Serialize;

use crate::secret::Requester;
use crate::statefile::StateTrust;

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
    /// How many events this line stands for (repeated denials folded into one line per 10 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

pub struct Audit {
    file: Option<Mutex<File>>,
    path: Option<std::path::PathBuf>,
    /// Whether the file's ownership and mode are enforced (not `--insecure-perms`).
    strict: bool,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<&'a crate::workload::Workload>,
}

impl Audit {
    pub fn is_enabled(&self) -> bool {
        self.file.is_some()
    }

    pub fn disabled() -> Self {
        Audit { file: None, path: None, strict: true }
    }

    /// Opens the audit log for appending: its directory made and trusted, the file never opened
    /// through a link, refused unless a regular file owned and writable only by root or the
    /// daemon's user (SPEC §10.5).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::open_trusted(path, true)
    }

    /// As [`Audit::open`]; `strict` false (`--insecure-perms`) only warns about ownership and modes.
    pub fn open_trusted(path: &Path, strict: bool) -> std::io::Result<Self> {
        let (real, f) = StateTrust::new(strict).audit_log(path).map_err(std::io::Error::other)?;
        Ok(Audit { file: Some(Mutex::new(f)), path: Some(real), strict })
    }

    /// Opens the file again by name (after logrotate moved it away); on SIGHUP.
    pub fn reopen(&self) {
        let (Some(f), Some(p)) = (&self.file, &self.path) else { return };
        match StateTrust::new(self.strict).audit_log(p) {
            Ok((_, new)) => *f.lock() = new,
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
            workload: who.and_then(|r| r.workload.as_deref()),
        };
        let mut text = match serde_json::to_vec(&line) {
            Ok(t) => t,
            Err(_) => return,
        };
        text.push(b'\n');
        let mut g = f.lock();
        // A write cut short (a full disk) is cut back, so that the next line starts on a line.
        let before = g.metadata().map(|m| m.len());
        if let Err(e) = g.write_all(&text) {
            if let Ok(len) = before {
                let _ = g.set_len(len);
            }
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }
}
