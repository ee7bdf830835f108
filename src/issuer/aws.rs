//! The `aws` issuer: a SigV4-signed STS `AssumeRole` (with `role_arn`) or `GetSessionToken`; STS cannot revoke, so expiry is STS's own.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use chrono::Utc;

use super::{IssueRequest, Issued, Issuer, LeaseError, RevokeRequest, parse_expiry};
use crate::fields::SecretFields;

/// STS refuses sessions shorter than 15 minutes; a shorter lease simply ends earlier on our side.
const STS_MIN_SECONDS: u64 = 900;

pub struct AwsIssuer {
    /// Made once; an error (no CA certificates on this system) is reported at each issuance.
    http: Result<reqwest::Client, String>,
}

impl AwsIssuer {
    pub fn new(timeout: Duration) -> Self {
        AwsIssuer { http: crate::tls::new_client(timeout) }
    }
}

fn fail(msg: impl std::fmt::Display) -> LeaseError {
    LeaseError::failed(format!("aws: {msg}"))
}

/// The text of `<tag>…</tag>` in an STS answer (a fixed, flat schema; no entities in these fields).
fn tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
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

#[async_trait]
impl Issuer for AwsIssuer {
    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, LeaseError> {
        let base = req.base;
        let akid = base.get("access_key_id").ok_or_else(|| fail("the base secret needs \"access_key_id\""))?;
        let secret =
            base.get("secret_access_key").ok_or_else(|| fail("the base secret needs \"secret_access_key\""))?;
        let region = base.get("region").unwrap_or("us-east-1");
        let endpoint =
            base.get("endpoint").map(str::to_string).unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        let endpoint = if endpoint.ends_with('/') { endpoint } else { format!("{endpoint}/") };
        let seconds = req.ttl.as_secs().max(STS_MIN_SECONDS).to_string();
        let session = session_name(req);
        let role = req.secret.attr_str("role_arn");
        let body = match role {
            Some(arn) => form_encode(&[
                ("Action", "AssumeRole"),
                ("Version", "2011-06-15"),
                ("RoleArn", arn),
                ("RoleSessionName", &session),
                ("DurationSeconds", &seconds),
            ]),
            None => {
                form_encode(&[("Action", "GetSessionToken"), ("Version", "2011-06-15"), ("DurationSeconds", &seconds)])
            }
        };

        let identity = aws_credential_types::Credentials::new(
            akid,
            secret,
            base.get("session_token").map(str::to_string),
            None,
            "leasefs-base-secret",
        )
        .into();
        let params: aws_sigv4::http_request::SigningParams<'_> = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("sts")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| fail(format!("cannot sign: {e}")))?
            .into();
        let mut request = http::Request::builder()
            .method("POST")
            .uri(&endpoint)
            .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
            .body(body.clone())
            .map_err(|e| fail(format!("bad endpoint {endpoint:?}: {e}")))?;
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        let signable = SignableRequest::new(
            "POST",
            endpoint.as_str(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| fail(format!("cannot sign: {e}")))?;
        let (instructions, _) = sign(signable, &params).map_err(|e| fail(format!("cannot sign: {e}")))?.into_parts();
        instructions.apply_to_request_http1x(&mut request);
        let request = reqwest::Request::try_from(request).map_err(fail)?;

        let resp =
            self.http.as_ref().map_err(fail)?.execute(request).await.map_err(|e| {
                fail(if e.is_timeout() { "STS timed out".into() } else { format!("STS unreachable: {e}") })
            })?;
        let status = resp.status();
        let text = crate::tls::read_capped(resp, &format!("STS {endpoint}")).await.map_err(|e| match e {
            crate::tls::BodyError::TooLarge(m) => fail(m),
            crate::tls::BodyError::Read(e) => fail(format!("reading the STS answer: {e}")),
        })?;
        if !status.is_success() {
            let code = crate::diag::excerpt(tag(&text, "Code").unwrap_or("unknown"), 128);
            let message = crate::diag::excerpt(tag(&text, "Message").unwrap_or(""), 512);
            return Err(fail(format!("STS refused ({status}): {code}: {message}")));
        }
        let get = |t: &str| tag(&text, t).ok_or_else(|| fail(format!("the STS answer lacks {t}")));
        let mut fields = SecretFields::default();
        fields.insert("access_key_id", get("AccessKeyId")?);
        fields.insert("secret_access_key", get("SecretAccessKey")?);
        fields.insert("session_token", get("SessionToken")?);
        let sts_expiry = parse_expiry(get("Expiration")?).ok_or_else(|| fail("unreadable Expiration"))?;
        // The lease ends at our ttl even when STS grants longer (its minimum is 15 minutes).
        let ours = Utc::now() + chrono::Duration::from_std(req.ttl).unwrap_or(chrono::Duration::minutes(15));
        let expires_at = sts_expiry.min(ours);
        fields.insert("expiration", expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        // STS cannot revoke: the journal keeps only the assumed-role ARN, for the audit trail.
        let revocation = serde_json::json!({"arn": tag(&text, "Arn")});
        Ok(Issued { fields, expires_at: Some(expires_at), revocation })
    }

    fn can_revoke(&self) -> bool {
        false
    }

    /// STS credentials cannot be revoked individually; they end at their expiry.
    async fn revoke(&self, _req: &RevokeRequest<'_>) -> Result<(), LeaseError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_assume_role_answer() {
        let xml = "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIA1</AccessKeyId>\
                   <SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken>\
                   <Expiration>2030-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>";
        assert_eq!(tag(xml, "AccessKeyId"), Some("ASIA1"));
        assert_eq!(tag(xml, "Expiration"), Some("2030-01-01T00:00:00Z"));
        assert_eq!(tag(xml, "Missing"), None);
    }

    #[test]
    fn form_encoding_escapes() {
        assert_eq!(
            form_encode(&[("RoleArn", "arn:aws:iam::1:role/a b")]),
            "RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fa+b"
        );
    }
}
