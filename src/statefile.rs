//! Trust of the files the daemon writes (SPEC §10.5): `state_dir`, the journal and `audit_log`
//! get §9.1's rules — owned by root or the daemon's user, not writable by group or others, every
//! parent directory trusted, no symbolic link another user owns anywhere on the way — and are
//! opened with `O_NOFOLLOW | O_NONBLOCK` and refused unless a regular file (so a FIFO never blocks
//! the start).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::trust::Trust;

/// How a state file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read what is there (the journal at start); `Ok(None)` if it does not exist.
    Read,
    /// Append, creating it `0600` if missing (the audit log).
    Append,
    /// Create or empty it, then append (the journal's rewrite).
    Replace,
}

/// Checks a state path; with `--insecure-perms` a failure is only logged (loudly).
pub struct StateTrust {
    pub trust: Trust,
}

impl StateTrust {
    pub fn new(strict: bool) -> StateTrust {
        StateTrust { trust: Trust::new(strict) }
    }

    /// Refuses (strict) or warns (`--insecure-perms`).
    fn verdict(&self, path: &Path, problem: Result<(), String>) -> Result<(), String> {
        match problem {
            Ok(()) => Ok(()),
            Err(why) if self.trust.strict => Err(format!("{}: {why}", path.display())),
            Err(why) => {
                tracing::warn!(path = %path.display(), "--insecure-perms: would be refused: {why}");
                Ok(())
            }
        }
    }

    fn strict(&self) -> Trust {
        Trust { strict: true, ..self.trust }
    }

    /// Every existing prefix of `path` that is a symbolic link must belong to root or the daemon's
    /// user: in a world-writable sticky directory (`/tmp`) another user's link would choose where
    /// root writes.
    fn links_trusted(&self, path: &Path) -> Result<(), String> {
        for p in path.ancestors() {
            let Ok(m) = std::fs::symlink_metadata(p) else { continue };
            if m.file_type().is_symlink() && m.uid() != 0 && m.uid() != self.trust.uid {
                return Err(format!(
                    "{} is a symbolic link owned by uid {}, not by root or the daemon's user",
                    p.display(),
                    m.uid()
                ));
            }
        }
        Ok(())
    }

    /// Makes sure `dir` exists (created `mode` from its nearest existing, trusted ancestor) and is
    /// trusted: a directory owned by root or the daemon's user, not writable by group or others
    /// (`own`; otherwise a root-owned sticky directory such as `/tmp` will do, as for every
    /// parent), below trusted directories. Returns its resolved path, used from then on.
    pub fn dir(&self, dir: &Path, mode: u32, own: bool) -> Result<PathBuf, String> {
        let abs = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        self.verdict(&abs, self.links_trusted(&abs))?;
        if std::fs::symlink_metadata(&abs).is_err() {
            let existing = abs.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
            self.verdict(existing, self.strict().check_dirs(existing))?;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&abs)
                .map_err(|e| format!("{}: cannot create it: {e}", abs.display()))?;
        }
        let real = std::fs::canonicalize(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
        let m = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
        if !m.is_dir() {
            return Err(format!("{}: not a directory", abs.display()));
        }
        if own {
            self.verdict(&abs, self.strict().check_owned(&m))?;
        }
        self.verdict(&abs, self.strict().check_dirs(&real))?;
        Ok(real)
    }

    /// Opens a state file in a directory already checked by [`StateTrust::dir`]: never through a
    /// symbolic link, never blocking (a FIFO), refused unless a regular file that is trusted.
    pub fn open(&self, path: &Path, access: Access) -> Result<Option<File>, String> {
        let mut o = OpenOptions::new();
        let mut flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
        match access {
            Access::Read => o.read(true),
            Access::Append => o.append(true).create(true),
            // O_APPEND too: a file cut back after a failed write is appended at its new end.
            Access::Replace => {
                flags |= libc::O_APPEND;
                o.write(true).create(true).truncate(true)
            }
        };
        let f = match o.custom_flags(flags).mode(0o600).open(path) {
            Ok(f) => f,
            Err(e) if access == Access::Read && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {}", path.display(), describe_open_error(path, &e))),
        };
        let m = f.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
        if !m.file_type().is_file() {
            return Err(format!("{}: not a regular file ({}); refused", path.display(), kind_of(&m)));
        }
        self.verdict(path, self.strict().check_owned(&m))?;
        clear_nonblock(&f).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Some(f))
    }

    /// The audit log: its directory made and checked, the file opened for appending.
    pub fn audit_log(&self, path: &Path) -> Result<(PathBuf, File), String> {
        let abs = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
            return Err(format!("{}: not a file path", path.display()));
        };
        self.verdict(&abs, self.links_trusted(&abs))?;
        let real = self.dir(parent, 0o750, false)?.join(name);
        let f = self.open(&real, Access::Append)?.ok_or_else(|| format!("{}: cannot open it", real.display()))?;
        Ok((real, f))
    }
}

fn describe_open_error(path: &Path, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => "a symbolic link; refused (state files are never opened through links)".into(),
        Some(libc::ENXIO) => match std::fs::symlink_metadata(path) {
            Ok(m) => format!("not a regular file ({}); refused", kind_of(&m)),
            Err(_) => e.to_string(),
        },
        _ => e.to_string(),
    }
}

fn kind_of(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

fn clear_nonblock(f: &File) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn links_fifos_and_writable_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateTrust::new(true);
        let d = st.dir(&dir.path().join("state"), 0o700, true).unwrap();
        let fifo = d.join("journal.jsonl");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = st.open(&fifo, Access::Read).unwrap_err();
        assert!(e.contains("a FIFO"), "{e}");
        let e = st.open(&fifo, Access::Append).unwrap_err();
        assert!(e.contains("a FIFO"), "{e}");
        std::fs::remove_file(&fifo).unwrap();
        let target = d.join("target");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, &fifo).unwrap();
        let e = st.open(&fifo, Access::Append).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = st.open(&target, Access::Append).unwrap_err();
        assert!(e.contains("writable by group or others"), "{e}");
        assert!(StateTrust::new(false).open(&target, Access::Append).unwrap().is_some());
        assert!(st.open(&d.join("missing"), Access::Read).unwrap().is_none());
    }
}
