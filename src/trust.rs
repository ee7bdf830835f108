//! Trust of input files: who may own and write the config and documents (checked like ssh's StrictModes).

use std::path::Path;

use crate::diag::FileError;

/// Refuses a file that group or others can read or write when it holds data (like ssh with private keys).
pub fn check_private(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "readable or writable by group or others (mode {:04o}); chmod 600 it, or start with --insecure-perms",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Refuses a config file that group or others can read when it may hold credentials (like ssh).
pub fn check_config_perms(file: &Path) -> Result<(), FileError> {
    let meta = std::fs::metadata(file).map_err(|e| FileError::whole(file, e.to_string()))?;
    check_private(&meta).map_err(|m| FileError::whole(file, m))
}
