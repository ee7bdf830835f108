//! The `azure` issuer (Delinea DSV's second dynamic type, SPEC §9.6): an OAuth2
//! client-credentials token for Microsoft Graph, then `addPassword` on the application at each
//! issuance and `removePassword` by `keyId` at the end of the lease. Graph's 429 `Retry-After`
//! is honoured within `issue_timeout`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{IssueRequest, Issued, Issuer, LeaseError, RevokeRequest};
use crate::fields::SecretFields;

pub struct AzureIssuer {
    timeout: Duration,
}

impl AzureIssuer {
    pub fn new(timeout: Duration) -> Self {
        AzureIssuer { timeout }
    }
}

fn fail(msg: impl std::fmt::Display) -> LeaseError {
    LeaseError::failed(format!("azure: {msg}"))
}

/// What a base secret holds, with the defaults of Microsoft's public cloud.
struct App<'a> {
    tenant: &'a str,
    client_id: &'a str,
    client_secret: &'a str,
    object_id: &'a str,
    authority: String,
    graph: String,
    http: reqwest::Client,
}

impl AzureIssuer {
    fn app<'a>(&self, base: &'a SecretFields) -> Result<App<'a>, LeaseError> {
        let need = |k: &str| base.get(k).ok_or_else(|| fail(format!("the base secret needs \"{k}\"")));
        let http = match base.get("ca_file") {
            Some(ca) => crate::tls::client_with_ca(std::path::Path::new(ca), self.timeout),
            None => crate::tls::client_for("azure", self.timeout),
        }
        .map_err(fail)?;
        Ok(App {
            tenant: need("tenant_id")?,
            client_id: need("client_id")?,
            client_secret: need("client_secret")?,
            object_id: need("application_object_id")?,
            authority: base
                .get("authority")
                .unwrap_or("https://login.microsoftonline.com")
                .trim_end_matches('/')
                .into(),
            graph: base.get("graph").unwrap_or("https://graph.microsoft.com").trim_end_matches('/').into(),
            http,
        })
    }
}

/// Graph's and Entra ID's error shapes, as text: codes and messages, never a value.
fn error_text(status: reqwest::StatusCode, body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let (code, msg) = match (&v["error"], &v["error_description"]) {
        (Value::Object(e), _) => (e.get("code").and_then(Value::as_str), e.get("message").and_then(Value::as_str)),
        (Value::String(c), d) => (Some(c.as_str()), d.as_str()),
        _ => (None, None),
    };
    let msg = msg.unwrap_or("").lines().next().unwrap_or("");
    format!("{status}: {}: {}", crate::diag::excerpt(code.unwrap_or("unknown"), 128), crate::diag::excerpt(msg, 512))
}

impl App<'_> {
    /// Sends a request, waiting out 429s (`Retry-After`, else 1 s) until `deadline`.
    async fn send(
        &self,
        deadline: Instant,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, zeroize::Zeroizing<String>), LeaseError> {
        let mut throttle = crate::retry::Throttle::new("azure: Graph", deadline.into());
        loop {
            let resp = build().send().await.map_err(|e| {
                fail(if e.is_timeout() { "timed out".to_string() } else { format!("unreachable: {e}") })
            })?;
            let status = resp.status();
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                if !throttle.wait(&resp, &self.graph).await {
                    return Err(LeaseError::timeout(deadline.saturating_duration_since(Instant::now()))
                        .context("azure: throttled (429) past issue_timeout"));
                }
                continue;
            }
            let what = resp.url().path().to_string();
            let body = crate::tls::read_capped(resp, &what).await.map_err(|e| match e {
                crate::tls::BodyError::TooLarge(m) => fail(m),
                crate::tls::BodyError::Read(e) => fail(format!("reading the answer: {e}")),
            })?;
            return Ok((status, body));
        }
    }

    /// An access token for Graph (client credentials).
    async fn token(&self, deadline: Instant) -> Result<SecretString, LeaseError> {
        let url = format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant);
        let scope = format!("{}/.default", self.graph);
        let form = zeroize::Zeroizing::new(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("client_id", self.client_id),
                    ("client_secret", self.client_secret),
                    ("scope", scope.as_str()),
                    ("grant_type", "client_credentials"),
                ])
                .finish(),
        );
        let (status, body) = self
            .send(deadline, || {
                self.http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.to_string())
            })
            .await?;
        if !status.is_success() {
            return Err(fail(format!("token request refused ({})", error_text(status, &body))));
        }
        let v: Value = serde_json::from_str(&body).map_err(|_| fail("the token answer is not JSON"))?;
        let t = v["access_token"].as_str().ok_or_else(|| fail("the token answer has no access_token"))?;
        Ok(SecretString::from(t.to_string()))
    }

    async fn graph_post(
        &self,
        deadline: Instant,
        token: &SecretString,
        action: &str,
        body: &Value,
    ) -> Result<(reqwest::StatusCode, zeroize::Zeroizing<String>), LeaseError> {
        let url = format!("{}/v1.0/applications/{}/{action}", self.graph, self.object_id);
        self.send(deadline, || self.http.post(&url).bearer_auth(token.expose_secret()).json(body)).await
    }
}

#[async_trait]
impl Issuer for AzureIssuer {
    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, LeaseError> {
        let deadline = Instant::now() + self.timeout;
        let app = self.app(req.base)?;
        let token = app.token(deadline).await?;
        let end: DateTime<Utc> = Utc::now() + chrono::Duration::from_std(req.ttl).unwrap_or(chrono::Duration::hours(1));
        let body = json!({"passwordCredential": {
            "displayName": req.lease_id,
            "endDateTime": end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }});
        let (status, answer) = app.graph_post(deadline, &token, "addPassword", &body).await?;
        if !status.is_success() {
            return Err(fail(format!("addPassword refused ({})", error_text(status, &answer))));
        }
        let v: Value = serde_json::from_str(&answer).map_err(|_| fail("the addPassword answer is not JSON"))?;
        let secret = v["secretText"].as_str().ok_or_else(|| fail("the addPassword answer has no secretText"))?;
        let key_id = v["keyId"].as_str().ok_or_else(|| fail("the addPassword answer has no keyId"))?.to_string();
        let expires = v["endDateTime"].as_str().and_then(super::parse_expiry).unwrap_or(end);
        let mut fields = SecretFields::default();
        fields.insert("client_id", app.client_id);
        fields.insert("client_secret", secret);
        fields.insert("tenant_id", app.tenant);
        fields.insert("key_id", key_id.clone());
        fields.insert("expires_at", expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        Ok(Issued { fields, expires_at: Some(expires), revocation: json!({"key_id": key_id}) })
    }

    async fn revoke(&self, req: &RevokeRequest<'_>) -> Result<(), LeaseError> {
        let Some(key_id) = req.revocation.get("key_id").and_then(Value::as_str) else {
            return Ok(()); // an intent that never reached Graph
        };
        let deadline = Instant::now() + self.timeout;
        let app = self.app(req.base)?;
        let token = app.token(deadline).await?;
        let (status, answer) = app.graph_post(deadline, &token, "removePassword", &json!({"keyId": key_id})).await?;
        // Already gone (removed by hand, or by an earlier attempt whose answer was lost): done.
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(fail(format!("removePassword refused ({})", error_text(status, &answer))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_and_entra_errors_are_read_without_values() {
        let s = reqwest::StatusCode::BAD_REQUEST;
        let g = error_text(s, r#"{"error": {"code": "Request_BadRequest", "message": "Invalid keyId\nmore"}}"#);
        assert_eq!(g, "400 Bad Request: Request_BadRequest: Invalid keyId");
        let e = error_text(
            s,
            r#"{"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}"#,
        );
        assert!(e.contains("invalid_client: AADSTS7000215"), "{e}");
        assert!(error_text(s, "not json").contains("unknown"));
    }
}
