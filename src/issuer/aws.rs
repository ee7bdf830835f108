//! The `aws` issuer: a SigV4-signed STS `AssumeRole` (with `role_arn`) or `GetSessionToken`, asking
//! for the lease's length; an assumed-role session is revoked before its own expiry by a deny
//! policy on its role (`iam.rs`), lifted once the session has expired anyway.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::awsapi::{Service, call, fail, form_encode, tag};
use super::iam::{Iam, revoke_session, role_name};
use super::{IssueRequest, Issued, Issuer, LeaseError, RevokeRequest, parse_expiry};
use crate::fields::SecretFields;
use crate::secret::SecretMeta;

/// AWS STS refuses sessions shorter than 15 minutes; asked for less, it answers ValidationError
/// and is asked again for this.
const STS_MIN_SECONDS: u64 = 900;

pub struct AwsIssuer {
    /// Made once; an error (no CA certificates on this system) is reported at each issuance.
    http: Result<reqwest::Client, String>,
    /// STS endpoints that refused a duration under 15 minutes: asked for 15 minutes at once.
    needs_minimum: Mutex<HashSet<String>>,
    /// One read-modify-write of a role's deny policy at a time.
    iam_lock: tokio::sync::Mutex<()>,
}

impl AwsIssuer {
    pub fn new(timeout: Duration) -> Self {
        AwsIssuer {
            http: crate::tls::new_client(timeout),
            needs_minimum: Mutex::new(HashSet::new()),
            iam_lock: tokio::sync::Mutex::new(()),
        }
    }
}

fn with_slash(url: String) -> String {
    if url.ends_with('/') { url } else { format!("{url}/") }
}

/// A valid RoleSessionName: 2–64 of `[\w+=,.@-]`.
fn session_name(req: &IssueRequest<'_>) -> String {
    let wanted =
        req.secret.attr_str("session_name").map(str::to_string).unwrap_or_else(|| {
            format!("leasefs-{}-{}", req.requester.uid, &req.lease_id[..12.min(req.lease_id.len())])
        });
    let clean: String =
        wanted.chars().filter(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(*c)).take(64).collect();
    if clean.len() < 2 { format!("leasefs-{}", req.requester.uid) } else { clean }
}

fn sts_body(secret: &SecretMeta, session: &str, seconds: u64) -> String {
    let seconds = seconds.to_string();
    match secret.attr_str("role_arn") {
        Some(arn) => form_encode(&[
            ("Action", "AssumeRole"),
            ("Version", "2011-06-15"),
            ("RoleArn", arn),
            ("RoleSessionName", session),
            ("DurationSeconds", &seconds),
        ]),
        None => form_encode(&[("Action", "GetSessionToken"), ("Version", "2011-06-15"), ("DurationSeconds", &seconds)]),
    }
}

/// What `revoke` needs of an assumed-role session (journaled; no secret in it).
struct Handle<'a> {
    role_arn: &'a str,
    session: &'a str,
    expires: DateTime<Utc>,
}

fn handle(revocation: &serde_json::Value) -> Option<Handle<'_>> {
    Some(Handle {
        role_arn: revocation.get("role_arn")?.as_str()?,
        session: revocation.get("session")?.as_str()?,
        expires: parse_expiry(revocation.get("sts_expiration")?.as_str()?)?,
    })
}

impl AwsIssuer {
    /// Asks STS for `ttl` (at least 1 s); an STS that refuses a duration under its 15-minute
    /// minimum (AWS) is asked again for 15 minutes, and from then on at once.
    async fn ask_sts(
        &self,
        req: &IssueRequest<'_>,
        svc: &Service<'_>,
        session: &str,
    ) -> Result<zeroize::Zeroizing<String>, LeaseError> {
        let wanted = req.ttl.as_secs().max(1);
        let known_minimum = self.needs_minimum.lock().contains(&svc.endpoint);
        let first = if known_minimum { wanted.max(STS_MIN_SECONDS) } else { wanted };
        match call(&self.http, svc, sts_body(req.secret, session, first)).await {
            Ok(text) => Ok(text),
            Err(Ok(r)) if r.status == 400 && r.code == "ValidationError" && first < STS_MIN_SECONDS => {
                tracing::debug!(endpoint = %svc.endpoint, "STS refused a session under 15 minutes; asking for 15");
                let text = call(&self.http, svc, sts_body(req.secret, session, STS_MIN_SECONDS))
                    .await
                    .map_err(|e| e.map_or_else(|e| e, |r| r.into_error("STS")))?;
                self.needs_minimum.lock().insert(svc.endpoint.clone());
                Ok(text)
            }
            Err(e) => Err(e.map_or_else(|e| e, |r| r.into_error("STS"))),
        }
    }
}

#[async_trait]
impl Issuer for AwsIssuer {
    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, LeaseError> {
        let base = req.base;
        let region = base.get("region").unwrap_or("us-east-1");
        let endpoint =
            base.get("endpoint").map(str::to_string).unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        let svc = Service { name: "sts", endpoint: with_slash(endpoint), region, base };
        let session = session_name(req);
        let text = self.ask_sts(req, &svc, &session).await?;
        let get = |t: &str| tag(&text, t).ok_or_else(|| fail(format!("the STS answer lacks {t}")));
        let mut fields = SecretFields::default();
        fields.insert("access_key_id", get("AccessKeyId")?);
        fields.insert("secret_access_key", get("SecretAccessKey")?);
        fields.insert("session_token", get("SessionToken")?);
        let sts_expiry = parse_expiry(&get("Expiration")?).ok_or_else(|| fail("unreadable Expiration"))?;
        // The lease ends at our ttl even when STS grants longer (AWS's minimum is 15 minutes).
        let ours = Utc::now() + chrono::Duration::from_std(req.ttl).unwrap_or(chrono::Duration::minutes(15));
        let expires_at = sts_expiry.min(ours);
        fields.insert("expiration", expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let stated = sts_expiry.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let revocation = match req.secret.attr_str("role_arn") {
            // What `revoke` needs to deny exactly this session until STS's own expiry.
            Some(role_arn) => serde_json::json!({
                "arn": tag(&text, "Arn"), "role_arn": role_arn, "session": session, "sts_expiration": stated
            }),
            // A GetSessionToken session cannot be cut short (its aws:userid is the base user's).
            None => serde_json::json!({"arn": tag(&text, "Arn"), "sts_expiration": stated}),
        };
        Ok(Issued { fields, expires_at: Some(expires_at), revocation })
    }

    /// Assumed-role sessions: denied at the role until their STS expiry, then the deny is lifted
    /// (the lease manager calls again at [`Issuer::revoke_again_at`]). GetSessionToken sessions:
    /// nothing to do at AWS; they end at their own expiry.
    async fn revoke(&self, req: &RevokeRequest<'_>) -> Result<(), LeaseError> {
        let Some(h) = handle(req.revocation) else { return Ok(()) };
        let role = role_name(h.role_arn).ok_or_else(|| fail(format!("not a role ARN: {:?}", h.role_arn)))?;
        let base = req.base;
        let endpoint = base.get("iam_endpoint").unwrap_or("https://iam.amazonaws.com/").to_string();
        let region = base.get("iam_region").unwrap_or("us-east-1");
        let iam =
            Iam { http: &self.http, svc: Service { name: "iam", endpoint: with_slash(endpoint), region, base }, role };
        let _one_at_a_time = self.iam_lock.lock().await;
        let now = Utc::now();
        match revoke_session(&iam, h.session, h.expires, now).await {
            // Past its expiry the session is dead anyway: a deny left behind only takes room,
            // and the next revocation on the role prunes it.
            Err(e) if h.expires <= now => {
                tracing::warn!(lease = %req.lease_id, role, error = %e, "could not lift the deny of an expired STS session; the next revocation on the role prunes it");
                Ok(())
            }
            r => r,
        }
    }

    fn revocable(&self, _base: &SecretFields, revocation: &serde_json::Value) -> bool {
        handle(revocation).is_some()
    }

    fn stated_end(&self, issued: &Issued) -> Option<DateTime<Utc>> {
        parse_expiry(issued.revocation.get("sts_expiration")?.as_str()?).or(issued.expires_at)
    }

    fn revoke_again_at(&self, revocation: &serde_json::Value) -> Option<DateTime<Utc>> {
        handle(revocation).filter(|h| h.expires > Utc::now()).map(|h| h.expires + chrono::Duration::seconds(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handle_needs_role_session_and_expiry() {
        let h = serde_json::json!({"arn": "a", "role_arn": "arn:aws:iam::1:role/app", "session": "s", "sts_expiration": "2030-01-01T00:00:00Z"});
        assert!(handle(&h).is_some_and(|h| h.session == "s"));
        assert!(handle(&serde_json::json!({"arn": "a", "sts_expiration": "2030-01-01T00:00:00Z"})).is_none());
        assert!(handle(&serde_json::json!({"arn": "a"})).is_none(), "a record written before revocation existed");
    }
}
