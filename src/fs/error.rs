//! Filesystem errors: each carries the errno the kernel will see, the level its failed operation
//! is logged at, and a message that never holds a value.

use std::fmt;

use crate::error::{LeaseError, ToErrno};
use crate::source::SourceError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub errno: i32,
    pub message: String,
    /// How loudly the adapter logs the operation that failed with it.
    pub level: tracing::Level,
    /// More for the daemon log only (a script's stderr), never for the audit log.
    pub log_detail: Option<String>,
}

impl FsError {
    /// An ordinary refusal (missing name, read-only, denied): logged at debug.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        FsError { errno, message: message.into(), level: tracing::Level::DEBUG, log_detail: None }
    }
    pub fn enoent() -> Self {
        FsError::new(libc::ENOENT, "no such entry")
    }
    pub fn erofs() -> Self {
        FsError::new(libc::EROFS, "leasefs is read-only")
    }
    pub fn eacces(why: impl Into<String>) -> Self {
        FsError::new(libc::EACCES, why)
    }
    /// A failure of a source, an issuer or a document: logged at warn.
    pub fn eio(why: impl Into<String>) -> Self {
        FsError { level: tracing::Level::WARN, ..FsError::new(libc::EIO, why) }
    }
    pub fn expired() -> Self {
        FsError::new(libc::EKEYEXPIRED, "lease expired")
    }
    pub fn is_dir() -> Self {
        FsError::new(libc::EISDIR, "is a directory")
    }
    pub fn not_dir() -> Self {
        FsError::new(libc::ENOTDIR, "not a directory")
    }
    pub fn bad_handle() -> Self {
        FsError::new(libc::EBADF, "unknown file handle")
    }
    /// Adds context (a path) in front of the message.
    pub fn at(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl ToErrno for FsError {
    fn errno(&self) -> i32 {
        self.errno
    }
}

impl From<LeaseError> for FsError {
    fn from(e: LeaseError) -> Self {
        FsError {
            errno: e.errno(),
            message: e.to_string(),
            level: e.level(),
            log_detail: e.log_detail().map(str::to_string),
        }
    }
}

impl From<crate::memlock::OutOfMemory> for FsError {
    fn from(e: crate::memlock::OutOfMemory) -> Self {
        FsError { level: tracing::Level::WARN, ..FsError::new(libc::ENOMEM, e.to_string()) }
    }
}

impl ToErrno for SourceError {
    fn errno(&self) -> i32 {
        libc::EIO
    }
}

impl From<SourceError> for FsError {
    fn from(e: SourceError) -> Self {
        FsError::eio(e.to_string())
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, std::io::Error::from_raw_os_error(self.errno))?;
        if let Some(d) = &self.log_detail {
            write!(f, "; {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FsError {}
