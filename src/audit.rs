//! The audit log: one JSON line per event (open, issue, reuse, renew, revoke, expire, deny, error,
//! irrevocable, rotate) — who, what, outcome, never a value.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use parking_lot::Mutex;
use serde::Serialize;

use crate::error::{ErrorKind, LeaseError};
use crate::policy::IssuerKind;
use crate::requester::Requester;
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

/// How an event ended: the audit log's `outcome`, one word (or phrase) per case.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Error,
    /// A mode-bit check refused the requester.
    Denied,
    /// A control-file request was refused.
    Refused,
    /// A lease ended: its reason.
    Expire,
    Revoke,
    Close,
    Shutdown,
    /// `reuse`/`bind` `cgroup`: the reader's cgroup has no process left.
    Cgroup,
    /// A refusal or failure: its reason (`LeaseError::reason`).
    Timeout,
    Quota,
    Busy,
    /// A credential that states a validity past its lease: refused, or served (`allow_overhang`).
    Outlives,
    Revoked,
    #[serde(rename = "revoke failed")]
    RevokeFailed,
    Irrevocable,
    /// Automatic retries of an irrevocable lease stopped (`leasefs revoke` tries again).
    RevokeAbandoned,
    /// A lease a previous run left in the journal, revoked now.
    Orphan,
    #[serde(rename = "orphan not revoked")]
    OrphanNotRevoked,
    /// Rotation: a signal sent, one that could not be, a command that ran, nobody reached.
    Signalled,
    Failed,
    Command,
    RotateUnheard,
}

impl Outcome {
    /// The outcome of an error, by its kind (`timeout`, `shutdown`, `quota`, `busy`, `error`).
    pub fn of(e: &LeaseError) -> Outcome {
        match e.kind {
            ErrorKind::Timeout => Outcome::Timeout,
            ErrorKind::ShuttingDown => Outcome::Shutdown,
            ErrorKind::Quota => Outcome::Quota,
            ErrorKind::Busy => Outcome::Busy,
            ErrorKind::Outlives => Outcome::Outlives,
            ErrorKind::Failed | ErrorKind::Unavailable | ErrorKind::NoMemory => Outcome::Error,
        }
    }
}

/// One audit line's event: built with [`Event::new`], then `lease`, `detail` and `count` as
/// they apply.
#[derive(Serialize, Debug, Clone)]
pub struct Event<'a> {
    pub event: EventKind,
    pub path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<IssuerKind>,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
    /// How many events this line stands for (repeated denials folded into one line per 10 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl<'a> Event<'a> {
    pub fn new(event: EventKind, path: &'a str, outcome: Outcome) -> Self {
        Event { event, path, lease_id: None, issuer: None, outcome, detail: None, count: None }
    }
    /// The lease (or the credential a failed issuance would have been) and its issuer.
    pub fn lease(self, lease_id: &'a str, issuer: IssuerKind) -> Self {
        Event { lease_id: Some(lease_id), issuer: Some(issuer), ..self }
    }
    pub fn issuer(self, issuer: IssuerKind) -> Self {
        Event { issuer: Some(issuer), ..self }
    }
    pub fn lease_id(self, lease_id: &'a str) -> Self {
        Event { lease_id: Some(lease_id), ..self }
    }
    /// What went wrong, or more about what happened (never a value).
    pub fn detail(self, detail: impl Into<Option<&'a str>>) -> Self {
        Event { detail: detail.into(), ..self }
    }
    pub fn count(self, count: u64) -> Self {
        Event { count: Some(count), ..self }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_written_as_the_words_the_audit_log_always_had() {
        for (o, word) in [
            (Outcome::Ok, "ok"),
            (Outcome::RevokeFailed, "revoke failed"),
            (Outcome::OrphanNotRevoked, "orphan not revoked"),
            (Outcome::RotateUnheard, "rotate_unheard"),
            (Outcome::RevokeAbandoned, "revoke_abandoned"),
            (Outcome::Expire, "expire"),
            (Outcome::Quota, "quota"),
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), word);
        }
        assert_eq!(Outcome::of(&LeaseError::timeout(std::time::Duration::from_secs(1))), Outcome::Timeout);
        assert_eq!(Outcome::of(&LeaseError::unavailable("down")), Outcome::Error);
        let ev = Event::new(EventKind::Deny, "/p", Outcome::Busy).issuer(IssuerKind::Exec).detail("why").count(3);
        let want = serde_json::json!({"event": "deny", "path": "/p", "issuer": "exec", "outcome": "busy", "detail": "why", "count": 3});
        assert_eq!(serde_json::to_value(&ev).unwrap(), want);
        let ev = Event::new(EventKind::Open, "/q", Outcome::Ok).detail(None);
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            serde_json::json!({"event": "open", "path": "/q", "outcome": "ok"})
        );
    }
}
