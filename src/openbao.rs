//! A small OpenBao (Vault-compatible) HTTP client shared by the `openbao` source and issuer: one
//! connection pool per server, every call has a timeout, the token never reaches a log.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::secret::SecretFields;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BaoError {
    /// Connection refused, timeout, 5xx: the server is down or unreachable.
    #[error("OpenBao unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error (4xx) or something unusable.
    #[error("OpenBao: {0}")]
    Refused(String),
    #[error("OpenBao: not found")]
    NotFound,
}

#[derive(Clone)]
pub struct BaoClient {
    http: reqwest::Client,
    address: String,
    token: SecretString,
}

impl BaoClient {
    /// A client for `address` with `token`; the HTTP connections are the server's shared pool.
    pub fn new(address: &str, token: SecretString, timeout: Duration) -> Result<Self, BaoError> {
        let address = address.trim_end_matches('/').to_string();
        let http = crate::tls::client_for(&address, timeout).map_err(BaoError::Refused)?;
        Ok(BaoClient { http, address, token })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.address, path.trim_start_matches('/'))
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, BaoError> {
        let mut req = self.http.request(method, self.url(path)).header("X-Vault-Token", self.token.expose_secret());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| BaoError::Unreachable(describe(&e)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(BaoError::NotFound);
        }
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let text = zeroize::Zeroizing::new(resp.text().await.map_err(|e| BaoError::Unreachable(describe(&e)))?);
        if status.is_server_error() {
            return Err(BaoError::Unreachable(format!("{status} on {path}")));
        }
        if !status.is_success() {
            // Error bodies are {"errors": [...]}: messages, never secret data.
            let errors = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("errors").cloned())
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(BaoError::Refused(format!("{status} on {path} {errors}")));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|_| BaoError::Refused(format!("{path}: the answer is not JSON")))
    }

    /// `LIST` a path: the keys (sub-directories end with `/`).
    pub async fn list(&self, path: &str) -> Result<Vec<String>, BaoError> {
        let m = reqwest::Method::from_bytes(b"LIST").expect("LIST is a valid method");
        let v = self.call(m, path, None).await?;
        Ok(v.pointer("/data/keys")
            .and_then(|k| k.as_array())
            .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
            .unwrap_or_default())
    }

    /// `GET` a path; callers move what they need out of the answer.
    pub async fn read(&self, path: &str) -> Result<Value, BaoError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, BaoError> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, BaoError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused or unreachable".into()
    } else {
        // reqwest's Display names the URL (no token, no body).
        e.to_string()
    }
}

/// Moves a JSON object's fields into secret fields, consuming the value.
pub fn fields_of(v: Value) -> SecretFields {
    let mut f = SecretFields::default();
    if let Value::Object(map) = v {
        for (k, val) in map {
            match val {
                Value::String(s) => f.insert(&k, s),
                other => f.insert_json(&k, &other),
            }
        }
    }
    f
}
