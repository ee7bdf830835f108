//! Issuers: the `Issuer` trait and what it takes and hands back; one file per kind (`exec`, `jwt`, …),
//! and `registry.rs`, one of each by kind. An issuer turns a base secret and a request into a
//! credential, and revokes it.

pub mod aws;
pub mod awsapi;
pub mod azure;
pub mod exec;
pub mod guard;
pub mod iam;
pub mod jwt;
pub mod openbao;
pub mod postgres;
pub mod registry;
pub mod sshkey;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use crate::error::LeaseError;
use crate::fields::SecretFields;
use crate::openbao_auth::Login;
use crate::policy::IssuerKind;
use crate::requester::Requester;
use crate::secret::SecretMeta;

/// Everything an issuer may use to issue one credential.
pub struct IssueRequest<'a> {
    pub lease_id: &'a str,
    /// The dynamic secret (its `attributes` are the per-entry parameters).
    pub secret: &'a SecretMeta,
    /// Its path in the mount (`/dynamic/aws/temp-api`).
    pub path: &'a str,
    /// The base secret's data: the issuer's long-lived credential.
    pub base: &'a SecretFields,
    pub requester: &'a Requester,
    /// The lease length asked for (the entry's `ttl` or the default), already capped at `max_ttl`.
    pub ttl: Duration,
    /// What `prepare` chose, already journaled (e.g. a role name).
    pub intent: Option<&'a serde_json::Value>,
    /// The OpenBao login of the source the base secret comes from, if it has one.
    pub login: Option<&'a Login>,
}

/// What an issuer hands back.
pub struct Issued {
    pub fields: SecretFields,
    /// The credential's own expiry, if it has one (the lease manager applies ttl / max_ttl).
    pub expires_at: Option<DateTime<Utc>>,
    /// A non-secret handle that `revoke` needs (role name, lease id, …); it is journaled.
    pub revocation: serde_json::Value,
}

/// Everything an issuer may use to revoke.
pub struct RevokeRequest<'a> {
    pub lease_id: &'a str,
    pub path: &'a str,
    pub secret_id: &'a str,
    pub base: &'a SecretFields,
    pub revocation: &'a serde_json::Value,
    /// The OpenBao login of the source the base secret comes from, if it has one.
    pub login: Option<&'a Login>,
}

#[async_trait]
pub trait Issuer: Send + Sync {
    /// For issuers whose credential name is chosen locally: choose it now, so that the lease
    /// manager can journal the intent before `issue` creates anything.
    fn prepare(&self, _req: &IssueRequest<'_>) -> Option<serde_json::Value> {
        None
    }
    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, LeaseError>;
    /// Revokes a credential. Issuers that cannot revoke (expiry is the issuer's own) return Ok.
    /// A handle marked `"refused": true` is a credential refused at issuance (it outlived its
    /// lease): revoke it by any means there is, even one the entry did not ask for.
    async fn revoke(&self, req: &RevokeRequest<'_>) -> Result<(), LeaseError>;
    /// Whether `revoke` does anything. Leases of issuers that cannot revoke (a signed token) are
    /// not journaled: after a crash there would be nothing to do for them.
    fn can_revoke(&self) -> bool {
        true
    }
    /// Whether this credential can be ended at its issuer before the end it states, so that a
    /// stated validity past its lease does no harm (the lease's end revokes it). Judged per
    /// credential: an OpenBao certificate without a lease or serial to revoke cannot be; an STS
    /// assumed-role session can (a deny on its role), a GetSessionToken session cannot.
    fn revocable(&self, _base: &SecretFields, _revocation: &serde_json::Value) -> bool {
        self.can_revoke()
    }
    /// The end the credential itself states, when it differs from the lease's own expiry in
    /// `Issued::expires_at` (STS grants at least 15 minutes to a shorter lease).
    fn stated_end(&self, issued: &Issued) -> Option<DateTime<Utc>> {
        issued.expires_at
    }
    /// For a revocation that must be undone later (the deny on an STS session's role, lifted
    /// once the session has expired anyway): when to call `revoke` again. Until that call
    /// succeeds the lease stays in the journal, so a restart finishes it.
    fn revoke_again_at(&self, _revocation: &serde_json::Value) -> Option<DateTime<Utc>> {
        None
    }
    /// Whether `issue` finishes without waiting on I/O or a process (an in-process signer): an
    /// open through it may be answered on the thread that received it.
    fn is_inline(&self) -> bool {
        false
    }
    /// Extends a renewable lease by about `increment`; the new expiry, or None when it cannot be renewed.
    async fn renew(&self, _req: &RevokeRequest<'_>, _increment: Duration) -> Result<Option<DateTime<Utc>>, LeaseError> {
        Ok(None)
    }
}

/// The most bytes of credential (field names and values together) any issuer may hand back; a
/// larger one is refused (`EIO`) and revoked. `exec` stops reading its script's output here too.
pub const MAX_CREDENTIAL_BYTES: usize = 1024 * 1024;

/// Refuses a credential over [`MAX_CREDENTIAL_BYTES`], naming its size (never a value).
pub fn check_credential_size(kind: IssuerKind, fields: &SecretFields) -> Result<(), LeaseError> {
    use secrecy::ExposeSecret;
    let size: usize = fields.fields.iter().map(|(k, v)| k.len() + v.text.expose_secret().len()).sum();
    if size > MAX_CREDENTIAL_BYTES {
        return Err(LeaseError::failed(format!(
            "{kind}: the credential is {size} bytes, over the {MAX_CREDENTIAL_BYTES}-byte limit (refused; revoking it)"
        )));
    }
    Ok(())
}

/// Parses an expiry written by an issuer: RFC 3339, or seconds since the epoch.
pub fn parse_expiry(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text.trim()) {
        return Some(t.with_timezone(&Utc));
    }
    text.trim().parse::<i64>().ok().and_then(|s| DateTime::from_timestamp(s, 0))
}
