//! Errors of issuance, leases and sources: each carries the errno a reader will see, the level it
//! is logged at, and its cause — and never a secret value.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The errno an error turns into at the filesystem boundary (mountpoint-s3's `ToErrno`).
pub trait ToErrno {
    fn errno(&self) -> i32;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The issuer or source did not answer within `issue_timeout` (`ETIMEDOUT`).
    Timeout,
    /// It answered with an error or something unusable (`EIO`).
    Failed,
    /// It could not be reached (`EIO`; callers may serve what they had).
    Unavailable,
    /// leasefs is stopping; nothing new is issued (`EIO`).
    ShuttingDown,
    /// The requester's uid holds as many leases (or bytes) as it may (`EDQUOT`).
    Quota,
    /// The entry is issuing as much as it may, at once or per minute (`EAGAIN`).
    Busy,
    /// The credential states a validity past its lease that its issuer cannot cut short (`EIO`).
    Outlives,
    /// No memory could be mapped for the secret's bytes (`ENOMEM`).
    NoMemory,
}

/// Why an issuance, renewal or revocation failed.
#[derive(Clone)]
pub struct LeaseError {
    pub kind: ErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    /// Diagnostics for the daemon log only (a script's stderr): never in the audit log, never in
    /// `Display`.
    log_detail: Option<String>,
    /// A refusal repeated within its fold (audited once per 10 s with a count): logged at debug.
    repeat: bool,
}

impl LeaseError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        LeaseError { kind, message: message.into(), source: None, log_detail: None, repeat: false }
    }
    /// Marks a refusal that its fold already audited and logged (not the first).
    pub fn repeated(mut self) -> Self {
        self.repeat = true;
        self
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failed, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn timeout(after: Duration) -> Self {
        Self::new(ErrorKind::Timeout, format!("timed out after {after:?}"))
    }
    /// Keeps `cause` as this error's source (its text must hold no value either).
    pub fn caused_by(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(cause));
        self
    }
    /// Text for the daemon log only, never the audit log (e.g. a failing script's stderr).
    pub fn with_log_detail(mut self, detail: String) -> Self {
        self.log_detail = Some(detail);
        self
    }
    pub fn log_detail(&self) -> Option<&str> {
        self.log_detail.as_deref()
    }
    /// Adds context in front of the message.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }
    /// The level a failed operation with this error is logged at.
    pub fn level(&self) -> tracing::Level {
        if self.repeat {
            return tracing::Level::DEBUG;
        }
        match self.kind {
            ErrorKind::ShuttingDown | ErrorKind::Quota | ErrorKind::Busy => tracing::Level::INFO,
            _ => tracing::Level::WARN,
        }
    }
    /// A short reason for metrics and the audit log.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ErrorKind::Timeout => "timeout",
            ErrorKind::ShuttingDown => "shutdown",
            ErrorKind::Quota => "quota",
            ErrorKind::Busy => "busy",
            ErrorKind::Outlives => "outlives",
            ErrorKind::Failed | ErrorKind::Unavailable | ErrorKind::NoMemory => "error",
        }
    }
}

impl ToErrno for LeaseError {
    fn errno(&self) -> i32 {
        match self.kind {
            ErrorKind::Timeout => libc::ETIMEDOUT,
            ErrorKind::Quota => libc::EDQUOT,
            ErrorKind::Busy => libc::EAGAIN,
            ErrorKind::NoMemory => libc::ENOMEM,
            ErrorKind::Failed | ErrorKind::Unavailable | ErrorKind::ShuttingDown | ErrorKind::Outlives => libc::EIO,
        }
    }
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseError({:?}, {self})", self.kind)
    }
}

impl std::error::Error for LeaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_errno_level_and_cause() {
        let e = LeaseError::timeout(Duration::from_secs(2));
        assert_eq!(e.errno(), libc::ETIMEDOUT);
        assert_eq!(e.reason(), "timeout");
        let io = std::io::Error::other("connection refused");
        let e = LeaseError::unavailable("cannot reach the server").caused_by(io).context("/db/app");
        assert_eq!(e.errno(), libc::EIO);
        assert_eq!(e.level(), tracing::Level::WARN);
        assert_eq!(e.to_string(), "/db/app: cannot reach the server: connection refused");
        assert!(std::error::Error::source(&e).is_some());
    }
}
