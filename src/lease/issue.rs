//! The issuance pipeline: base secret → intent journaled → issuer → expiry bounded → rendered →
//! journaled → a new lease. Whatever fails after something was created is revoked at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::journal::{Op, Record};
use super::revoke::{Engine, Job};
use super::table::{Lease, LeaseInfo, NewLease, Origin, rfc3339};
use crate::error::LeaseError;
use crate::issuer::{IssueRequest, Issued};
use crate::memlock::SharedBytes;
use crate::policy::Effective;
use crate::render::render;
use crate::secret::{Requester, SecretMeta};

/// One issuance under way.
pub struct Issue<'a> {
    pub lease_id: &'a str,
    pub origin: &'a Arc<Origin>,
    pub secret: &'a SecretMeta,
    pub requester: &'a Requester,
    pub policy: &'a Effective,
}

impl Engine {
    /// Revokes now what an issuance created before it failed.
    fn undo(self: &Arc<Self>, issue: &Issue<'_>, revocation: serde_json::Value, expires_at: Option<DateTime<Utc>>) {
        let now = self.clock.now();
        let info =
            LeaseInfo::revoking(issue.lease_id, issue.origin, Some(issue.requester), now, expires_at.unwrap_or(now));
        self.spawn(Job { lease_id: issue.lease_id.into(), origin: issue.origin.clone(), revocation, expires_at, info });
    }

    /// Runs one issuance to a lease (not yet in the table or the deadline queue).
    pub async fn issue(self: &Arc<Self>, issue: &Issue<'_>) -> Result<Lease, LeaseError> {
        let origin = issue.origin;
        let issuer = self
            .issuers
            .get(origin.issuer)
            .ok_or_else(|| LeaseError::failed(format!("issuer kind {} is not available", origin.issuer)))?;
        let base = self.bases.fields(origin).await?;
        let policy = issue.policy;
        let mut req = IssueRequest {
            lease_id: issue.lease_id,
            secret: issue.secret,
            path: &origin.path,
            base: &base,
            requester: issue.requester,
            ttl: policy.ttl,
            intent: None,
        };
        let intent = issuer.prepare(&req);
        let record = |op, revocation: &serde_json::Value, exp| {
            Record::new(op, issue.lease_id, origin, revocation, exp, self.clock.now())
        };
        if let Some(i) = &intent {
            self.journal(record(Op::Intent, i, None)).await?;
        }
        req.intent = intent.as_ref();
        // If this future is dropped (timeout), the intent stays journaled and is revoked at the
        // next start; a failure here revokes it now.
        let issued: Issued = match issuer.issue(&req).await {
            Ok(i) => i,
            Err(e) => {
                if let Some(i) = intent {
                    self.undo(issue, i, None);
                }
                return Err(e);
            }
        };
        let now = self.clock.now();
        let cap = now + chrono::Duration::from_std(policy.max_ttl).unwrap_or(chrono::Duration::hours(1));
        let expires_at = match issued.expires_at {
            None => now + chrono::Duration::from_std(policy.ttl).unwrap_or(chrono::Duration::minutes(15)),
            Some(t) if t <= now => {
                self.undo(issue, issued.revocation, Some(t));
                return Err(LeaseError::failed(format!(
                    "the issuer returned a credential that expired at {} (refused; revoking it)",
                    rfc3339(t)
                )));
            }
            Some(t) => t.min(cap),
        };
        let rendered = render(&issued.fields, &policy.format, Some(expires_at)).map_err(LeaseError::failed);
        let rendered = match rendered {
            Ok(r) => r,
            Err(e) => {
                self.undo(issue, issued.revocation, Some(expires_at));
                return Err(e);
            }
        };
        // Durable before the contents are returned.
        if let Err(e) = self.journal(record(Op::Issued, &issued.revocation, Some(expires_at))).await {
            self.undo(issue, issued.revocation, Some(expires_at));
            return Err(e);
        }
        let Issued { fields, revocation, .. } = issued;
        drop(fields);
        Ok(Lease::new(NewLease {
            id: issue.lease_id.to_string(),
            origin: origin.clone(),
            requester: issue.requester.clone(),
            issued_at: now,
            expires_at,
            cap,
            bytes: SharedBytes::new(rendered),
            revocation,
            revoke_on_close: policy.revoke_on_close,
            renew_while_open: policy.renew_while_open,
        }))
    }

    /// Extends a renewable lease by its own period, never past its cap: the new expiry, if any.
    pub async fn renew(&self, lease: &Lease) -> Result<Option<DateTime<Utc>>, LeaseError> {
        let issuer = self
            .issuers
            .get(lease.issuer())
            .ok_or_else(|| LeaseError::failed(format!("issuer kind {} is not available", lease.issuer())))?;
        let increment = self.clock.until(lease.cap).min(lease.period).max(Duration::from_secs(1));
        let work = async {
            let base = self.bases.fields(&lease.origin).await?;
            let req = crate::issuer::RevokeRequest {
                lease_id: &lease.id,
                path: lease.path(),
                secret_id: &lease.origin.secret_id,
                base: &base,
                revocation: &lease.revocation,
            };
            issuer.renew(&req, increment).await
        };
        tokio::time::timeout(self.timeout, work).await.unwrap_or_else(|_| Err(LeaseError::timeout(self.timeout)))
    }
}
