//! The control directory `/.leasefs/` (root only): `status.json`, `leases.json`, `metrics` and the
//! write-only `revoke`.

use std::sync::Arc;
use std::time::SystemTime;

use super::error::FsError;
use super::tree::{Control, Counts, NodeKind};
use super::{Attr, LeaseFs};
use crate::audit::{EventKind, Outcome};
use crate::lease::{EndReason, LeaseManager};
use crate::render::Bytes;
use crate::requester::Requester;

/// A source as `status.json` shows it.
#[derive(Default, Clone, serde::Serialize)]
pub struct Health {
    pub up: bool,
    pub last_ok: Option<String>,
    pub last_error: Option<String>,
    pub secrets: usize,
    pub problems: usize,
}

/// What the control files are made from.
pub struct View<'a> {
    pub started: SystemTime,
    pub counts: Counts,
    pub sources: Vec<(String, Health)>,
    pub open_handles: usize,
    /// Private nodes of dynamic files the kernel still holds (one per lookup until forgotten).
    pub views: usize,
    pub leases: &'a LeaseManager,
}

/// The contents of a control file, rendered when it is opened.
pub fn contents(c: Control, v: &View<'_>) -> Bytes {
    let text = match c {
        Control::Status => {
            let sources: Vec<serde_json::Value> =
                v.sources.iter().map(|(name, h)| serde_json::json!({"source": name, "health": h})).collect();
            let irrevocable: Vec<String> = v.leases.irrevocable().into_iter().map(|l| l.id).collect();
            let s = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "started": chrono::DateTime::<chrono::Utc>::from(v.started).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "sources": sources,
                "counts": v.counts,
                "open_handles": v.open_handles,
                "dynamic_views": v.views,
                "live_leases": v.leases.live(),
                "pending_revocations": v.leases.pending_revocations(),
                "irrevocable_leases": irrevocable,
                "unresolved_orphans": v.leases.unresolved_orphans(),
            });
            serde_json::to_string_pretty(&s).unwrap_or_default() + "\n"
        }
        Control::Leases => serde_json::to_string_pretty(&v.leases.list()).unwrap_or_default() + "\n",
        Control::Metrics => v.leases.metrics.render(v.leases.gauges(v.open_handles)),
        Control::Revoke => String::new(),
    };
    zeroize::Zeroizing::new(text.into_bytes())
}

/// A write to `/.leasefs/revoke`: lease ids (one per line or word), or `all`. Nothing in it (an
/// empty line) is an error, and so is an unknown id; ids before it in the same write are revoked.
pub fn revoke(leases: &Arc<LeaseManager>, data: &[u8], who: &Requester) -> Result<usize, FsError> {
    let text = std::str::from_utf8(data).map_err(|_| FsError::new(libc::EINVAL, "write a lease id or \"all\""))?;
    if text.split_whitespace().next().is_none() {
        return Err(FsError::new(libc::EINVAL, "nothing to revoke: write a lease id or \"all\""));
    }
    for word in text.split_whitespace() {
        if word == "all" {
            let n = leases.revoke_all(EndReason::Revoke, Some(who)).len();
            tracing::info!(count = n, uid = who.uid, comm = %who.comm, "revoke all requested");
        } else if !leases.revoke(word, Some(who)) {
            return Err(FsError::new(libc::ENOENT, "no live lease with that id"));
        }
    }
    Ok(data.len())
}

impl LeaseFs {
    /// Writes reach only `/.leasefs/revoke` (lease ids, or `all`, in order from the start of the
    /// file); everything else is read-only. Every refused write to it is audited.
    pub async fn write(&self, ino: u64, fh: u64, offset: u64, data: &[u8], who: Requester) -> Result<usize, FsError> {
        let tree = self.tree();
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        let NodeKind::Control(Control::Revoke) = n.kind else {
            return Err(FsError::erofs());
        };
        let who = who.with_comm();
        let path = tree.path_of(ino);
        let result = if !self.is_admin(&who) {
            Err(FsError::eacces("the control directory is for root only"))
        } else {
            match self.handles.advance(fh, offset, data.len() as u64) {
                None => Err(FsError::bad_handle()),
                Some(false) => Err(FsError::new(libc::EINVAL, "write lease ids from the start of the file, in order")),
                Some(true) => revoke(&self.leases, data, &who),
            }
        };
        if let Err(e) = &result {
            let kind = if e.errno == libc::EACCES { EventKind::Deny } else { EventKind::Error };
            self.record(kind, &path, Outcome::Refused, Some(&e.message), &who);
        }
        result
    }

    /// `setattr`: only truncating the revoke file (as `echo ID > revoke` does) is accepted.
    pub fn truncate(&self, ino: u64, who: &Requester) -> Result<Attr, FsError> {
        let tree = self.tree();
        let n = tree.node(ino).ok_or_else(FsError::enoent)?;
        match n.kind {
            NodeKind::Control(Control::Revoke) if self.is_admin(who) => Ok(self.attr_of(&tree, ino, n)),
            _ => Err(FsError::erofs()),
        }
    }
}
