//! `bind`/`reuse: "cgroup"`: a lease that ends (and is revoked) once the reader's cgroup has no
//! process left. Looked at from the deadline queue every half second — never from a request
//! thread; the manager queues the looks and ends the lease.

use super::table::Lease;

/// How often a cgroup-bound lease's cgroup is looked at (`cgroup.procs`): it ends within twice this
/// plus the revocation after the last process left.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// A look at the cgroup of a lease bound to it (due from the deadline queue): true when it is
/// empty, gone or was never known — the lease ends; false to look again (a cgroup that cannot be
/// read is looked at again).
pub fn emptied(lease: &Lease) -> bool {
    let empty = match &lease.requester.workload {
        Some(w) => w.cgroup_is_empty(),
        None => Some(true),
    };
    if empty == Some(true) {
        tracing::info!(lease = %lease.id, path = %lease.path(), "the reader's cgroup has no process left");
    }
    empty == Some(true)
}
