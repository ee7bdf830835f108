//! The `openbao` issuer: `GET /v1/<path>` on any OpenBao dynamic path; lease id and duration from the answer, revoke and renew through `sys/leases`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::{IssueRequest, Issued, Issuer, LeaseError, RevokeRequest};
use crate::openbao::{BaoClient, BaoError, fields_of};
use crate::secret::SecretFields;

pub struct OpenBaoIssuer {
    timeout: Duration,
}

impl OpenBaoIssuer {
    pub fn new(timeout: Duration) -> Self {
        OpenBaoIssuer { timeout }
    }

    fn client(&self, base: &SecretFields) -> Result<BaoClient, LeaseError> {
        let address = base.get("address").ok_or_else(|| fail("the base secret needs \"address\""))?;
        let token = base.get("token").ok_or_else(|| fail("the base secret needs \"token\""))?;
        BaoClient::new(address, SecretString::from(token.to_string()), self.timeout).map_err(fail)
    }
}

fn fail(msg: impl std::fmt::Display) -> LeaseError {
    LeaseError::failed(format!("openbao: {msg}"))
}

fn lease_id(v: &serde_json::Value) -> Option<&str> {
    v.get("lease_id").and_then(|l| l.as_str()).filter(|s| !s.is_empty())
}

#[async_trait]
impl Issuer for OpenBaoIssuer {
    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, LeaseError> {
        let path = req
            .secret
            .attr_str("path")
            .ok_or_else(|| fail("the entry needs attributes.path (e.g. database/creds/app)"))?;
        let client = self.client(req.base)?;
        let mut answer = client.read(path).await.map_err(|e| match e {
            BaoError::NotFound => fail(format!("{path}: not found")),
            other => fail(other),
        })?;
        let duration = answer.get("lease_duration").and_then(|d| d.as_u64()).unwrap_or(0);
        let renewable = answer.get("renewable").and_then(|r| r.as_bool()).unwrap_or(false);
        let id = lease_id(&answer).map(str::to_string);
        let data = answer
            .get_mut("data")
            .map(serde_json::Value::take)
            .ok_or_else(|| fail(format!("{path}: the answer has no data")))?;
        let fields = fields_of(data);
        let expires_at = (duration > 0).then(|| Utc::now() + chrono::Duration::seconds(duration as i64));
        Ok(Issued { fields, expires_at, revocation: serde_json::json!({"lease_id": id, "renewable": renewable}) })
    }

    async fn revoke(&self, req: &RevokeRequest<'_>) -> Result<(), LeaseError> {
        let Some(id) = lease_id(req.revocation) else { return Ok(()) };
        let client = self.client(req.base)?;
        client.put("sys/leases/revoke", &serde_json::json!({"lease_id": id})).await.map(|_| ()).map_err(fail)
    }

    async fn renew(&self, req: &RevokeRequest<'_>, increment: Duration) -> Result<Option<DateTime<Utc>>, LeaseError> {
        let Some(id) = lease_id(req.revocation) else { return Ok(None) };
        if req.revocation.get("renewable").and_then(|r| r.as_bool()) != Some(true) {
            return Ok(None);
        }
        let client = self.client(req.base)?;
        let answer = client
            .put("sys/leases/renew", &serde_json::json!({"lease_id": id, "increment": increment.as_secs()}))
            .await
            .map_err(fail)?;
        let d = answer.get("lease_duration").and_then(|d| d.as_u64()).unwrap_or(0);
        Ok((d > 0).then(|| Utc::now() + chrono::Duration::seconds(d as i64)))
    }
}
