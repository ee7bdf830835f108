//! `bind`/`reuse: "cgroup"`: a lease that ends (and is revoked) once the reader's cgroup has no
//! process left. Polled from the deadline queue every half second — never from a request thread.

use std::sync::Arc;

use super::deadline::Action;
use super::{EndReason, Lease, LeaseManager};

/// How often a cgroup-bound lease's cgroup is looked at (`cgroup.procs`): it ends within twice this
/// plus the revocation after the last process left.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Queues the next look at the cgroup of a lease bound to it.
pub fn watch(m: &Arc<LeaseManager>, lease: &Arc<Lease>) {
    let next = m.clock.now() + POLL;
    m.deadlines.push(next, lease, Action::Cgroup);
}

/// A look at the cgroup (due from the deadline queue): empty, gone or never known — the lease
/// ends; else the next look is queued. A cgroup that cannot be read is looked at again.
pub fn check(m: &Arc<LeaseManager>, lease: &Arc<Lease>) {
    if !lease.is_live() {
        return;
    }
    let empty = match &lease.requester.workload {
        Some(w) => w.cgroup_is_empty(),
        None => Some(true),
    };
    if empty == Some(true) {
        tracing::info!(lease = %lease.id, path = %lease.path(), "the reader's cgroup has no process left");
        m.end(lease, EndReason::Cgroup);
    } else {
        watch(m, lease);
    }
}
