//! The daemon's own access checks, behind the kernel's `default_permissions`: mode bits against the
//! requester (supplementary groups included), and which open flags ask to write.

use crate::requester::Requester;

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
