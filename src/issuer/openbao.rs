//! The `openbao` issuer: `GET` (or `POST` with a body) on any OpenBao path that issues — a
//! database role, `pki/issue/<role>`, `ssh/sign/<role>` with a key pair leasefs makes; lease id
//! and duration from the answer; revoke and renew through `sys/leases`, or by serial for PKI.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::{IssueRequest, Issued, Issuer, LeaseError, RevokeRequest};
use crate::error::ErrorKind;
use crate::fields::SecretFields;
use crate::openbao::{BaoClient, BaoError, Endpoints, fields_of};
use crate::openbao_auth::Login;

pub struct OpenBaoIssuer {
    timeout: Duration,
}

impl OpenBaoIssuer {
    pub fn new(timeout: Duration) -> Self {
        OpenBaoIssuer { timeout }
    }

    /// A client for the base secret's cluster: with the token of the source's login when the
    /// base comes from an `openbao` source, else the base's own `token`.
    async fn client(&self, base: &SecretFields, login: Option<&Login>) -> Result<BaoClient, LeaseError> {
        let endpoints =
            Endpoints::from_fields(base).ok_or_else(|| fail("the base secret needs \"address\" (or \"addresses\")"))?;
        let token = match login {
            Some(login) => login.token().await.map_err(fail)?,
            None => SecretString::from(
                base.get("token").ok_or_else(|| fail("the base secret needs \"token\""))?.to_string(),
            ),
        };
        BaoClient::new(&endpoints, token, self.timeout).map_err(fail)
    }
}

fn fail(msg: impl std::fmt::Display) -> LeaseError {
    LeaseError::failed(format!("openbao: {msg}"))
}

fn attr_text<'a>(attrs: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> Option<&'a str> {
    attrs.get(key).and_then(|v| v.as_str())
}

fn lease_id(v: &serde_json::Value) -> Option<&str> {
    v.get("lease_id").and_then(|l| l.as_str()).filter(|s| !s.is_empty())
}

#[async_trait]
impl Issuer for OpenBaoIssuer {
    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, LeaseError> {
        let attrs = req.secret.attributes();
        let path = req
            .secret
            .attr_str("path")
            .ok_or_else(|| fail("the entry needs attributes.path (e.g. database/creds/app)"))?;
        let post = match attrs.get("method").map(|m| m.as_str().map(str::to_ascii_uppercase)) {
            None => false,
            Some(Some(m)) if m == "GET" => false,
            Some(Some(m)) if m == "POST" => true,
            Some(_) => return Err(fail("attributes.method must be \"GET\" or \"POST\"")),
        };
        let mut body = match attrs.get("body") {
            None => serde_json::Map::new(),
            Some(serde_json::Value::Object(o)) => o.clone(),
            Some(_) => return Err(fail("attributes.body must be a JSON object")),
        };
        // ssh/sign/<role>: leasefs makes the key pair; OpenBao signs its public half.
        let key = match attr_text(attrs, "generate_key") {
            None => None,
            Some("ed25519") => {
                let k = super::sshkey::generate_ed25519(&format!("leasefs-{}", req.lease_id));
                body.insert("public_key".into(), k.public.clone().into());
                Some(k)
            }
            Some(_) => return Err(fail("attributes.generate_key must be \"ed25519\"")),
        };
        let client = self.client(req.base, req.login).await?;
        let not_found = |e| match e {
            BaoError::NotFound => fail(format!("{path}: not found")),
            // A silent server is a timeout (ETIMEDOUT), not a failure (EIO).
            BaoError::Timeout(m) => LeaseError::new(ErrorKind::Timeout, format!("{path}: {m}")),
            other => fail(other),
        };
        let mut answer = if post || key.is_some() {
            client.post(path, &serde_json::Value::Object(body)).await.map_err(not_found)?
        } else {
            client.read(path).await.map_err(not_found)?
        };
        let duration = answer.get("lease_duration").and_then(|d| d.as_u64()).unwrap_or(0);
        let renewable = answer.get("renewable").and_then(|r| r.as_bool()).unwrap_or(false);
        let id = lease_id(&answer).map(str::to_string);
        let data = answer
            .get_mut("data")
            .map(serde_json::Value::take)
            .ok_or_else(|| fail(format!("{path}: the answer has no data")))?;
        // A certificate states its own end (PKI `expiration`, epoch seconds).
        let cert_end = data.get("expiration").and_then(|e| e.as_i64()).and_then(|t| DateTime::from_timestamp(t, 0));
        let serial = data.get("serial_number").and_then(|s| s.as_str()).map(str::to_string);
        let mut fields = fields_of(data);
        if let Some(k) = key {
            fields.insert("private_key", k.private_pem.to_string());
            fields.insert("public_key", k.public);
        }
        let expires_at = (duration > 0).then(|| Utc::now() + chrono::Duration::seconds(duration as i64)).or(cert_end);
        let mut revocation = serde_json::json!({"lease_id": id, "renewable": renewable});
        // PKI: revoked by serial at the end of the lease, so the CRL lists it (opt-in).
        if attr_text(attrs, "revoke") == Some("serial") {
            let mount = path.split('/').next().unwrap_or("pki");
            let serial =
                serial.ok_or_else(|| fail(format!("{path}: revoke by serial, but the answer has no serial_number")))?;
            revocation["serial_number"] = serial.into();
            revocation["pki_mount"] = mount.into();
        }
        Ok(Issued { fields, expires_at, revocation })
    }

    async fn revoke(&self, req: &RevokeRequest<'_>) -> Result<(), LeaseError> {
        let serial = req.revocation.get("serial_number").and_then(|s| s.as_str());
        let mount = req.revocation.get("pki_mount").and_then(|s| s.as_str());
        if let (Some(serial), Some(mount)) = (serial, mount) {
            let client = self.client(req.base, req.login).await?;
            client
                .post(&format!("{mount}/revoke"), &serde_json::json!({"serial_number": serial}))
                .await
                .map_err(fail)?;
        }
        let Some(id) = lease_id(req.revocation) else { return Ok(()) };
        let client = self.client(req.base, req.login).await?;
        client.put("sys/leases/revoke", &serde_json::json!({"lease_id": id})).await.map(|_| ()).map_err(fail)
    }

    async fn renew(&self, req: &RevokeRequest<'_>, increment: Duration) -> Result<Option<DateTime<Utc>>, LeaseError> {
        let Some(id) = lease_id(req.revocation) else { return Ok(None) };
        if req.revocation.get("renewable").and_then(|r| r.as_bool()) != Some(true) {
            return Ok(None);
        }
        let client = self.client(req.base, req.login).await?;
        let answer = client
            .put("sys/leases/renew", &serde_json::json!({"lease_id": id, "increment": increment.as_secs()}))
            .await
            .map_err(fail)?;
        let d = answer.get("lease_duration").and_then(|d| d.as_u64()).unwrap_or(0);
        Ok((d > 0).then(|| Utc::now() + chrono::Duration::seconds(d as i64)))
    }
}
