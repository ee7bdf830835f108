//! The issuance pipeline: base secret → intent journaled → issuer → expiry bounded → rendered →
//! journaled → a new lease. Whatever fails after something was created is revoked at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::journal::{Op, Record};
use super::revoke::{Engine, Job};
use super::table::{Lease, LeaseInfo, NewLease, Origin, rfc3339};
use crate::error::LeaseError;
use crate::issuer::{IssueRequest, Issued, parse_expiry};
use crate::memlock::SharedBytes;
use crate::policy::Effective;
use crate::render::render;
use crate::secret::{FieldValue, Requester, SecretFields, SecretMeta};

/// One issuance under way.
pub struct Issue<'a> {
    pub lease_id: &'a str,
    pub origin: &'a Arc<Origin>,
    pub secret: &'a SecretMeta,
    pub requester: &'a Requester,
    pub policy: &'a Effective,
    /// The inodes of the entry's files.
    pub inos: &'a [u64],
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
        let mut issued: Issued = match issuer.issue(&req).await {
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
        // A credential that says it lasts longer than its lease would be cached that long by
        // SDKs: the fields that state an expiry say the lease's when it is earlier.
        cap_expiry(&mut issued.fields, expires_at);
        // A bundle renders each of its files; a file, its one format.
        let rendered: Result<Vec<_>, LeaseError> = match &policy.files {
            Some(files) => files
                .iter()
                .map(|(name, f)| {
                    render(&issued.fields, f, Some(expires_at)).map_err(|e| LeaseError::failed(format!("{name}: {e}")))
                })
                .collect(),
            None => {
                render(&issued.fields, &policy.format, Some(expires_at)).map(|b| vec![b]).map_err(LeaseError::failed)
            }
        };
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
            files: rendered.into_iter().map(SharedBytes::new).collect(),
            revocation,
            revoke_on_close: policy.revoke_on_close,
            renew_while_open: policy.renew_while_open,
            reusable: policy.reuse != crate::config::Reuse::None,
            inos: issue.inos.to_vec(),
            rotate: policy.rotate,
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

/// Field names (compared without case and underscores) that state when a credential expires.
const EXPIRY_FIELDS: [&str; 6] = ["expiration", "expiresat", "expirationtimestamp", "expiry", "validuntil", "expires"];

/// Rewrites every field that states an expiry later than `at` to say `at` (RFC 3339, or epoch
/// seconds where the issuer wrote a number).
pub fn cap_expiry(fields: &mut SecretFields, at: DateTime<Utc>) {
    use secrecy::ExposeSecret;
    for (k, v) in fields.fields.iter_mut() {
        let norm: String = k.chars().filter(|c| *c != '_').collect::<String>().to_ascii_lowercase();
        if !EXPIRY_FIELDS.contains(&norm.as_str()) {
            continue;
        }
        let later = parse_expiry(v.text.expose_secret()).is_some_and(|t| t > at);
        if later {
            *v = if v.json {
                FieldValue { text: at.timestamp().to_string().into(), json: true }
            } else {
                FieldValue::string(rfc3339(at))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_later_than_the_lease_is_rendered_as_the_lease() {
        let mut f = SecretFields::from_json_object(
            r#"{"Expiration": "2036-01-01T00:00:00Z", "expires_at": 2082758400, "ExpiresAt": "2020-01-01T00:00:00Z", "Password": "2099-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let at = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        cap_expiry(&mut f, at);
        assert_eq!(f.get("Expiration"), Some("2030-01-01T00:00:00Z"));
        assert_eq!(f.get("expires_at"), Some("1893456000"));
        assert_eq!(f.get("ExpiresAt"), Some("2020-01-01T00:00:00Z"), "an earlier expiry stays");
        assert_eq!(f.get("Password"), Some("2099-01-01T00:00:00Z"), "only expiry fields");
    }
}
