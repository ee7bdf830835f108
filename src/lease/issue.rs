//! The issuance pipeline: base secret → intent journaled → issuer → expiry bounded → overhang
//! judged → rendered → journaled → a new lease. Whatever fails after something was created is
//! revoked at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::journal::{Op, Record};
use super::revoke::{Engine, Job};
use super::table::{Lease, LeaseInfo, NewLease, Origin};
use crate::audit::{Event, EventKind, Outcome};
use crate::error::{ErrorKind, LeaseError};
use crate::fields::{FieldValue, SecretFields};
use crate::issuer::{IssueRequest, Issued, parse_expiry};
use crate::memlock::SharedBytes;
use crate::policy::Effective;
use crate::render::{Bytes, render, rfc3339};
use crate::requester::Requester;
use crate::secret::SecretMeta;

/// One issuance under way.
pub struct Issue<'a> {
    pub lease_id: &'a str,
    pub origin: &'a Arc<Origin>,
    pub secret: &'a SecretMeta,
    pub requester: &'a Requester,
    pub policy: &'a Effective,
}

/// Revokes what an issuance created if it stops before its lease exists (SPEC §10.4): a failure,
/// refused output, or the future dropped at `issue_timeout` or at shutdown. Armed with the
/// journaled intent, then with the issued credential's handle; disarmed when the lease is made.
struct Undo<'e, 'a> {
    engine: &'e Arc<Engine>,
    issue: &'e Issue<'a>,
    armed: Option<(serde_json::Value, Option<DateTime<Utc>>)>,
}

impl Drop for Undo<'_, '_> {
    fn drop(&mut self) {
        if let Some((revocation, expires_at)) = self.armed.take() {
            self.engine.undo(self.issue, revocation, expires_at);
        }
    }
}

impl Engine {
    /// Revokes now, by its lease id, what an issuance created before it failed.
    fn undo(self: &Arc<Self>, issue: &Issue<'_>, revocation: serde_json::Value, expires_at: Option<DateTime<Utc>>) {
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(lease = %issue.lease_id, path = %issue.origin.path, "an unfinished issuance outlived the runtime; the journal keeps it for the next start");
            return;
        }
        tracing::warn!(lease = %issue.lease_id, path = %issue.origin.path, "the issuance did not finish; revoking what it may have created");
        let now = self.clock.now();
        let info =
            LeaseInfo::revoking(issue.lease_id, issue.origin, Some(issue.requester), now, expires_at.unwrap_or(now));
        let (lease_id, origin) = (issue.lease_id.into(), issue.origin.clone());
        let job = Job { lease_id, origin, revocation, expires_at, info, journaled: true };
        let handle = self.spawn(job);
        self.undone(handle);
    }

    /// Runs one issuance to a lease (not yet in the table or the deadline queue).
    pub async fn issue(self: &Arc<Self>, issue: &Issue<'_>) -> Result<Lease, LeaseError> {
        let origin = issue.origin;
        let issuer = self
            .issuers
            .get(origin.issuer)
            .ok_or_else(|| LeaseError::failed(format!("issuer kind {} is not available", origin.issuer)))?;
        let base = self.bases.fields(origin).await?;
        let login = origin.source.openbao_login();
        let policy = issue.policy;
        let mut req = IssueRequest {
            lease_id: issue.lease_id,
            secret: issue.secret,
            path: &origin.path,
            base: &base,
            requester: issue.requester,
            ttl: policy.ttl,
            intent: None,
            login: login.as_deref(),
        };
        let intent = issuer.prepare(&req);
        let record = |op, revocation: &serde_json::Value, exp| {
            Record::new(op, issue.lease_id, origin, revocation, exp, self.clock.now())
        };
        let mut undo = Undo { engine: self, issue, armed: None };
        if let Some(i) = &intent {
            // Armed first: an append cut short by a timeout may still reach the disk.
            undo.armed = Some((i.clone(), None));
            if let Err(e) = self.journal(record(Op::Intent, i, None)).await {
                undo.armed = None; // nothing ran: the intent, if it landed, is revoked at the next start
                return Err(e);
            }
        }
        req.intent = intent.as_ref();
        // From here on, a failure or a dropped future revokes the intent (then the credential).
        let mut issued: Issued = issuer.issue(&req).await?;
        undo.armed = Some((issued.revocation.clone(), None));
        // One bound for every issuer, as exec's output has (SPEC §10.6); revoked by `undo`.
        crate::issuer::check_credential_size(origin.issuer, &issued.fields)?;
        let now = self.clock.now();
        let end = lease_end(policy, issued.expires_at, now);
        if let Err(t) = end {
            undo.armed = Some((issued.revocation.clone(), Some(t)));
        }
        let (expires_at, cap) = end.map_err(expired)?;
        undo.armed = Some((issued.revocation.clone(), Some(expires_at)));
        let revocable = issuer.revocable(&base, &issued.revocation);
        let stated = issuer.stated_end(&issued);
        if let Err(e) = self.judge_overhang(issue, &mut issued.revocation, stated, expires_at, revocable) {
            undo.armed = Some((issued.revocation.clone(), Some(expires_at)));
            return Err(e);
        }
        // A credential that says it lasts longer than its lease would be cached that long by
        // SDKs: the fields that state an expiry say the lease's when it is earlier.
        cap_expiry(&mut issued.fields, expires_at);
        let rendered = render_files(&issued.fields, policy, expires_at)?;
        // Into locked memory while the undo is armed: without memory, the credential is revoked.
        let files = locked(rendered)?;
        // Durable before the contents are returned, when the next start could act on it: a
        // credential nothing can revoke (an `exec` base without `revoke_command`) costs no fsync.
        let journaled = intent.is_some() || revocable;
        if journaled {
            self.journal(record(Op::Issued, &issued.revocation, Some(expires_at))).await?;
        }
        undo.armed = None;
        let Issued { fields, revocation, .. } = issued;
        drop(fields);
        Ok(Lease::new(NewLease {
            id: issue.lease_id.to_string(),
            origin: origin.clone(),
            requester: issue.requester.clone(),
            issued_at: now,
            expires_at,
            cap,
            files,
            revocation,
            journaled,
            revoke_on_close: policy.revoke_on_close,
            renew_while_open: policy.renew_while_open,
            reusable: policy.reuse != crate::defaults::Reuse::None,
            rotate: policy.rotate.clone(),
        }))
    }

    /// Weighs the end a credential states against its lease's: past it by more than
    /// `max_overhang`, one its issuer cannot revoke is refused (`outlives`; the caller's undo
    /// revokes what can be: the handle is marked `refused`) unless the entry says
    /// `allow_overhang: true` (audited, counted).
    fn judge_overhang(
        &self,
        issue: &Issue<'_>,
        revocation: &mut serde_json::Value,
        stated: Option<DateTime<Utc>>,
        lease_end: DateTime<Utc>,
        revocable: bool,
    ) -> Result<(), LeaseError> {
        let Some(stated) = stated else { return Ok(()) };
        let rule = crate::attrs::overhang(issue.secret.attributes()).map_err(|p| LeaseError::failed(p.message))?;
        let over = (stated - lease_end).to_std().unwrap_or_default();
        if over <= rule.max || revocable {
            return Ok(());
        }
        let kind = issue.origin.issuer;
        let what = format!(
            "the credential states it is valid until {}, {} s past its lease's end, and {kind} cannot revoke it (max_overhang {} s)",
            rfc3339(stated),
            over.as_secs(),
            rule.max.as_secs()
        );
        if !rule.allow {
            // An issuer revokes now what it would otherwise leave to the end it states.
            if let Some(o) = revocation.as_object_mut() {
                o.insert("refused".into(), true.into());
            }
            let msg = format!("{what}: refused (allow_overhang: true would serve it)");
            return Err(LeaseError::new(ErrorKind::Outlives, msg));
        }
        tracing::warn!(lease = %issue.lease_id, path = %issue.origin.path, issuer = %kind, overhang_s = over.as_secs(), "served a credential that outlives its lease (allow_overhang)");
        self.metrics.overhang_allowed(kind.as_str());
        let detail = format!("{what}: served (allow_overhang)");
        let event = Event::new(EventKind::Issue, &issue.origin.path, Outcome::Outlives)
            .lease(issue.lease_id, kind)
            .detail(detail.as_str());
        self.audit.record(&event, Some(issue.requester));
        Ok(())
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
            let login = lease.origin.source.openbao_login();
            let req = crate::issuer::RevokeRequest {
                lease_id: &lease.id,
                path: lease.path(),
                secret_id: &lease.origin.secret_id,
                base: &base,
                revocation: &lease.revocation,
                login: login.as_deref(),
            };
            issuer.renew(&req, increment).await
        };
        tokio::time::timeout(self.timeout, work).await.unwrap_or_else(|_| Err(LeaseError::timeout(self.timeout)))
    }
}

/// A bundle renders each of its files; a file, its one format.
fn render_files(fields: &SecretFields, policy: &Effective, at: DateTime<Utc>) -> Result<Vec<Bytes>, LeaseError> {
    match &policy.files {
        Some(files) => files
            .iter()
            .map(|(name, f)| render(fields, f, Some(at)).map_err(|e| LeaseError::failed(format!("{name}: {e}"))))
            .collect(),
        None => Ok(vec![render(fields, &policy.format, Some(at)).map_err(LeaseError::failed)?]),
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

/// The lease's expiry (the issuer's, within `max_ttl`, else `ttl` from now) and its cap; `Err`
/// with the credential's own expiry if that has passed already.
fn lease_end(
    policy: &Effective,
    stated: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), DateTime<Utc>> {
    let cap = now + chrono::Duration::from_std(policy.max_ttl).unwrap_or(chrono::Duration::hours(1));
    match stated {
        None => Ok((now + chrono::Duration::from_std(policy.ttl).unwrap_or(chrono::Duration::minutes(15)), cap)),
        Some(t) if t <= now => Err(t),
        Some(t) => Ok((t.min(cap), cap)),
    }
}

/// A credential refused for having expired at `t` already.
fn expired(t: DateTime<Utc>) -> LeaseError {
    LeaseError::failed(format!(
        "the issuer returned a credential that expired at {} (refused; revoking it)",
        rfc3339(t)
    ))
}

/// The rendered files in locked memory; `ENOMEM` when none can be mapped.
fn locked(rendered: Vec<Bytes>) -> Result<Vec<SharedBytes>, LeaseError> {
    let files = rendered.into_iter().map(SharedBytes::new).collect::<Result<Vec<_>, _>>();
    files.map_err(|e| LeaseError::new(crate::error::ErrorKind::NoMemory, e.to_string()))
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
