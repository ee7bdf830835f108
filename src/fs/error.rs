//! Filesystem errors: each carries the errno the kernel will see, and a message that never holds a value.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub errno: i32,
    pub message: String,
}

impl FsError {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        FsError { errno, message: message.into() }
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
    pub fn eio(why: impl Into<String>) -> Self {
        FsError::new(libc::EIO, why)
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
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, std::io::Error::from_raw_os_error(self.errno))
    }
}

impl std::error::Error for FsError {}
