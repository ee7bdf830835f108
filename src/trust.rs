//! Trust of input files, like sshd's StrictModes (SPEC §9.1): the config, every document, every
//! directory from a source root up to `/`, and every program an `exec` base names must be owned
//! by root or the daemon's user and not writable by group or others; the config and documents
//! must not be readable by them either. A document is data, never a way to run a program the
//! operator did not install.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::diag::FileError;

/// The checks in force: `strict` unless `--insecure-perms` was given.
#[derive(Clone, Copy, Debug)]
pub struct Trust {
    pub strict: bool,
    /// The daemon's effective uid (besides root, the only owner trusted).
    pub uid: u32,
}

/// Strict, for the daemon's own uid.
impl Default for Trust {
    fn default() -> Trust {
        Trust::new(true)
    }
}

impl Trust {
    pub fn new(strict: bool) -> Trust {
        // SAFETY: geteuid cannot fail.
        Trust { strict, uid: unsafe { libc::geteuid() } }
    }

    fn owner_ok(&self, m: &std::fs::Metadata) -> Result<(), String> {
        if m.uid() == 0 || m.uid() == self.uid {
            Ok(())
        } else {
            Err(format!("owned by uid {}, not by root or the daemon's user (uid {})", m.uid(), self.uid))
        }
    }

    /// A file or directory nobody but its trusted owner can change.
    pub fn check_owned(&self, m: &std::fs::Metadata) -> Result<(), String> {
        if !self.strict {
            return Ok(());
        }
        self.owner_ok(m)?;
        let mode = m.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(format!("writable by group or others (mode {:04o})", mode & 0o7777));
        }
        Ok(())
    }

    /// A document or the config: owned as above, and not readable by group or others either.
    pub fn check_private(&self, m: &std::fs::Metadata) -> Result<(), String> {
        if !self.strict {
            return Ok(());
        }
        let mode = m.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "readable or writable by group or others (mode {:04o}); chmod 600 it, or start with --insecure-perms",
                mode & 0o7777
            ));
        }
        self.owner_ok(m)
    }

    /// Every directory from `dir` up to `/` (after resolving links): owned by root or the daemon's
    /// user, and not writable by group or others — except a root-owned sticky directory such as
    /// `/tmp`, where nobody can replace what another user owns.
    pub fn check_dirs(&self, dir: &Path) -> Result<(), String> {
        if !self.strict {
            return Ok(());
        }
        let real = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut at: Option<&Path> = Some(&real);
        while let Some(d) = at {
            let m = std::fs::metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
            let mode = m.permissions().mode();
            let sticky_root = mode & 0o1000 != 0 && m.uid() == 0;
            if mode & 0o022 != 0 && !sticky_root {
                return Err(format!(
                    "directory {} is writable by group or others (mode {:04o}): anyone could replace what is under it",
                    d.display(),
                    mode & 0o7777
                ));
            }
            self.owner_ok(&m).map_err(|e| format!("directory {}: {e}", d.display()))?;
            at = d.parent();
        }
        Ok(())
    }

    /// A program an `exec` base would run: found (in `PATH` when it has no `/`), a regular file
    /// owned and writable only as above, in directories that are too.
    pub fn check_program(&self, program: &str, path_var: &str) -> Result<PathBuf, String> {
        let found = if program.contains('/') {
            PathBuf::from(program)
        } else {
            path_var
                .split(':')
                .map(|d| Path::new(d).join(program))
                .find(|p| p.is_file())
                .ok_or_else(|| format!("{program:?} is not in PATH ({path_var})"))?
        };
        if !self.strict {
            return Ok(found);
        }
        let real = std::fs::canonicalize(&found).map_err(|e| format!("{}: {e}", found.display()))?;
        let m = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
        if !m.is_file() {
            return Err(format!("{} is not a regular file", real.display()));
        }
        self.check_owned(&m).map_err(|e| format!("{}: {e}", real.display()))?;
        if let Some(dir) = real.parent() {
            self.check_dirs(dir)?;
        }
        Ok(found)
    }
}

/// Refuses a config file that others can read or change, or that sits where others can replace it.
pub fn check_config_perms(file: &Path) -> Result<(), FileError> {
    let t = Trust::new(true);
    let meta = std::fs::metadata(file).map_err(|e| FileError::whole(file, e.to_string()))?;
    t.check_private(&meta).map_err(|m| FileError::whole(file, m))?;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    t.check_dirs(dir).map_err(|m| FileError::whole(file, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_directories_and_foreign_owners_are_refused() {
        let t = Trust { strict: true, uid: u32::MAX - 1 };
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("docs");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = t.check_dirs(&sub).unwrap_err();
        assert!(e.contains("writable by group or others"), "{e}");
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        // Owned by root (the suite runs as root) under the root-owned sticky /tmp: trusted.
        if std::fs::metadata(&sub).unwrap().uid() == 0 {
            assert!(t.check_dirs(&sub).is_ok(), "{:?}", t.check_dirs(&sub));
        }
        let f = sub.join("doc.json");
        std::fs::write(&f, "{}").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(t.check_private(&std::fs::metadata(&f).unwrap()).is_err());
        let loose = Trust { strict: false, ..t };
        assert!(loose.check_private(&std::fs::metadata(&f).unwrap()).is_ok());
        assert!(t.check_program("no-such-program-here", "/usr/bin:/bin").is_err());
    }
}
