//! The daemon's own access checks, behind the kernel's `default_permissions`: mode bits against the
//! requester (supplementary groups included), which open flags ask to write, and the workload
//! checks of an entry (`attributes.allow`, templates whose fields the reader must have).

use crate::requester::Requester;
use crate::secret::{SecretKind, SecretMeta};
use crate::workload;

/// Whether `who` may read (or write) an entry with this owner, group and mode.
pub fn allowed(uid: u32, gid: u32, mode: u16, who: &Requester, want_write: bool) -> bool {
    if who.uid == 0 {
        return true;
    }
    let bits = if who.uid == uid {
        (mode >> 6) & 7
    } else if who.gid == gid || supplementary_groups(who.pid).contains(&gid) {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    let need = if want_write { 2 } else { 4 };
    bits & need != 0
}

/// Reads the workload of `who` where the entry needs it: an `attributes.allow`, or a dynamic entry
/// (its lease records it; a binding or template may use it). Cached per process.
pub fn identify(who: Requester, meta: &SecretMeta) -> Requester {
    let needed = matches!(meta.kind, SecretKind::Dynamic { .. }) || meta.attributes().contains_key("allow");
    if !needed || who.workload.is_some() {
        return who;
    }
    let mut who = who;
    if let Some((start, w)) = workload::identify(who.pid, who.start) {
        who.start = start;
        who.workload = Some(w);
    }
    who
}

/// The workload checks of an open (after `identify`): the reader matches `attributes.allow`,
/// and has every field the entry's templates name. Err: why not, for the audit log (no value).
pub fn admit(meta: &SecretMeta, who: &Requester) -> Result<(), String> {
    let attrs = meta.attributes();
    let w = who.workload.as_deref();
    if let Some(allow) = attrs.get("allow") {
        if !workload::allows(allow, who.uid, who.gid, w) {
            return Err(if w.is_none() {
                "attributes.allow: the reader's cgroup could not be read".into()
            } else {
                "the reader matches no matcher of attributes.allow".into()
            });
        }
    }
    if matches!(meta.kind, SecretKind::Dynamic { .. }) && workload::has_templates(attrs) {
        workload::check_templates(attrs, who.uid, who.gid, w)?;
    }
    Ok(())
}

/// Whether `who` is of the workload that `holder` (the requester a lease was issued to) was of:
/// an open that joins a node open already never crosses containers, pods or units.
pub fn same_workload(holder: &Requester, who: &Requester) -> bool {
    let Some(h) = &holder.workload else { return true };
    workload::identify(who.pid, who.start).is_some_and(|(_, w)| w.key() == h.key())
}

/// Whether open flags ask to change the file (leasefs is read-only but for `/.leasefs/revoke`).
pub fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT) != 0
}

/// The supplementary groups of a process, from `/proc/PID/status`.
fn supplementary_groups(pid: u32) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    text.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_bits_decide() {
        let who = |uid, gid| Requester::new(uid, gid, u32::MAX);
        assert!(allowed(1, 2, 0o400, &who(1, 9), false));
        assert!(!allowed(1, 2, 0o400, &who(3, 2), false));
        assert!(allowed(1, 2, 0o440, &who(3, 2), false));
        assert!(!allowed(1, 2, 0o440, &who(3, 4), false));
        assert!(allowed(1, 2, 0o444, &who(3, 4), false));
        assert!(!allowed(1, 2, 0o444, &who(3, 4), true));
        assert!(allowed(1, 2, 0o000, &who(0, 0), true));
        assert!(wants_write(libc::O_WRONLY) && wants_write(libc::O_RDONLY | libc::O_TRUNC));
        assert!(!wants_write(libc::O_RDONLY));
    }
}
