//! Where metadata and static payloads come from: the `Source` trait, and one implementation per kind (`local`, …).

pub mod document;
pub mod local;
pub mod openbao;
mod royal;
mod text;

use std::sync::Arc;

use async_trait::async_trait;

use crate::diag::FileError;
use crate::fields::SecretFields;
use crate::openbao_auth::Login;
use crate::secret::SecretMeta;

/// Everything a source knows about its secrets, without any value.
#[derive(Debug, Default)]
pub struct Listing {
    /// Shared from the start: a listing of a million entries is moved as pointers, not copies.
    pub secrets: Vec<Arc<SecretMeta>>,
    /// Documents that were skipped, each naming file, line and column.
    pub problems: Vec<FileError>,
}

/// Why a source could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The source is down or unreachable: callers keep what they had.
    #[error("source unavailable: {0}")]
    Unavailable(String),
    /// The secret is gone or its document no longer parses.
    #[error("{0}")]
    Invalid(String),
}

#[async_trait]
pub trait Source: Send + Sync {
    /// A short description for logs and `status.json` (never a credential).
    fn describe(&self) -> String;
    /// Lists metadata only: never reads or keeps a value.
    async fn list(&self) -> Result<Listing, SourceError>;
    /// Reads one secret's payload (a static value, or a base secret's data).
    async fn read(&self, secret: &SecretMeta) -> Result<SecretFields, SourceError>;
    /// How this source logs in to OpenBao, if it does: the `openbao` issuer of its dynamic
    /// mounts asks it for a current token at each use (never a copy kept with a base secret).
    fn openbao_login(&self) -> Option<Arc<Login>> {
        None
    }
}
