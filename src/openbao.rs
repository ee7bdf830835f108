//! A small OpenBao (Vault-compatible) HTTP client shared by the `openbao` source and issuer: one
//! connection pool per server, every call has a timeout, the token never reaches a log.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::fields::SecretFields;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BaoError {
    /// Connection refused, 5xx, a TLS failure: the server is down, unreachable or not trusted.
    #[error("OpenBao unreachable: {0}")]
    Unreachable(String),
    /// No answer within the timeout (a server that accepts and stays silent).
    #[error("OpenBao did not answer in time: {0}")]
    Timeout(String),
    /// The server answered with an error (4xx) or something unusable.
    #[error("OpenBao: {0}")]
    Refused(String),
    #[error("OpenBao: not found")]
    NotFound,
}

/// Where an OpenBao (or Vault) cluster answers: its nodes, and how to trust their TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Node addresses (`https://bao-1:8200`, …), tried in turn; a standby's redirect is followed.
    pub addresses: Vec<String>,
    /// A PEM file of CA certificates to trust besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// The name to verify the nodes' certificates against (when addresses are IPs).
    pub tls_server_name: Option<String>,
    /// A TLS client certificate and its key (PEM files), for the `cert` login.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Endpoints {
    pub fn one(address: &str) -> Endpoints {
        Endpoints { addresses: vec![address.trim_end_matches('/').to_string()], ..Endpoints::default() }
    }

    /// From a base secret's fields: `address` or `addresses` (a JSON array), `ca_file`,
    /// `tls_server_name`.
    pub fn from_fields(f: &SecretFields) -> Option<Endpoints> {
        let mut addresses: Vec<String> =
            f.get("addresses").and_then(|a| serde_json::from_str(a).ok()).unwrap_or_default();
        if let Some(a) = f.get("address") {
            if !addresses.iter().any(|x| x == a) {
                addresses.insert(0, a.to_string());
            }
        }
        if addresses.is_empty() {
            return None;
        }
        Some(Endpoints {
            addresses: addresses.into_iter().map(|a| a.trim_end_matches('/').to_string()).collect(),
            ca_file: f.get("ca_file").map(std::path::PathBuf::from),
            tls_server_name: f.get("tls_server_name").map(str::to_string),
            client_cert: None,
        })
    }

    /// Writes these endpoints into a base secret's fields (for the `openbao` issuer).
    pub fn to_fields(&self, f: &mut SecretFields) {
        f.insert("address", self.addresses.first().cloned().unwrap_or_default());
        f.insert_json("addresses", &serde_json::json!(self.addresses));
        if let Some(c) = &self.ca_file {
            f.insert("ca_file", c.to_string_lossy().to_string());
        }
        if let Some(n) = &self.tls_server_name {
            f.insert("tls_server_name", n.clone());
        }
    }
}

/// One node: the URL prefix to use and the shared HTTP client for it.
#[derive(Clone)]
struct Node {
    base: String,
    http: reqwest::Client,
    /// What its certificate is checked against (named in a TLS error).
    trust: String,
}

/// The node of each cluster that answered last: tried first next time.
static PREFERRED: std::sync::LazyLock<parking_lot::Mutex<std::collections::HashMap<Vec<String>, usize>>> =
    std::sync::LazyLock::new(Default::default);

#[derive(Clone)]
pub struct BaoClient {
    nodes: Vec<Node>,
    key: Vec<String>,
    token: SecretString,
    timeout: Duration,
}

impl BaoClient {
    /// A client for `endpoints` with `token`; each node's HTTP connections are a shared pool.
    pub fn new(endpoints: &Endpoints, token: SecretString, timeout: Duration) -> Result<Self, BaoError> {
        let mut nodes = Vec::new();
        for a in &endpoints.addresses {
            let identity = endpoints.client_cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            let (ca, name) = (endpoints.ca_file.as_deref(), endpoints.tls_server_name.as_deref());
            let (base, http) = crate::tls::node_client(a, ca, name, identity, timeout).map_err(BaoError::Refused)?;
            let trust = format!(
                "trusted: the system's CAs{}; name checked: {}",
                ca.map(|c| format!(" and ca_file {}", c.display())).unwrap_or_default(),
                name.map(str::to_string).unwrap_or_else(|| "the address's host".into())
            );
            nodes.push(Node { base, http, trust });
        }
        if nodes.is_empty() {
            return Err(BaoError::Refused("no address".into()));
        }
        Ok(BaoClient { nodes, key: endpoints.addresses.clone(), token, timeout })
    }

    /// Sends a request to the cluster within the client's timeout. Moves to the next node, and
    /// after a round to a jittered backoff, only when the request cannot have been processed:
    /// the connection failed, or the node answered 502, 503 (sealed, standby, no leader) or 429
    /// (waited out as `Retry-After` says). A timeout or a 500 is final: a request that issues a
    /// credential is never sent twice.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, BaoError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let first = PREFERRED.lock().get(&self.key).copied().unwrap_or(0) % self.nodes.len();
        let mut last = String::new();
        let mut round = 0u32;
        let mut throttle = crate::retry::Throttle::new("OpenBao", deadline);
        loop {
            for i in (0..self.nodes.len()).map(|k| (first + k) % self.nodes.len()) {
                let node = &self.nodes[i];
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Err(BaoError::Timeout(format!("no node answered in time ({last})")));
                    }
                    let url = format!("{}/v1/{}", node.base, path.trim_start_matches('/'));
                    let mut req = node
                        .http
                        .request(method.clone(), url)
                        .timeout(left)
                        .header("X-Vault-Token", self.token.expose_secret());
                    if let Some(b) = body {
                        req = req.json(b);
                    }
                    let resp = match req.send().await {
                        Ok(r) => r,
                        Err(e) if e.is_timeout() => {
                            return Err(BaoError::Timeout(format!("{}: {}", node.base, describe(&e, node))));
                        }
                        Err(e) if e.is_connect() => {
                            last = format!("{}: {}", node.base, describe(&e, node));
                            break; // next node
                        }
                        Err(e) => return Err(BaoError::Unreachable(describe(&e, node))),
                    };
                    let status = resp.status();
                    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                        if !throttle.wait(&resp, &node.base).await {
                            let past = format!("{}: rate limited (429) past the timeout", node.base);
                            return Err(BaoError::Unreachable(past));
                        }
                        continue; // the same node
                    }
                    if status == reqwest::StatusCode::BAD_GATEWAY || status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    {
                        last = format!("{}: {status}", node.base);
                        break; // next node
                    }
                    PREFERRED.lock().insert(self.key.clone(), i);
                    return answer(resp, path).await;
                }
            }
            // Every node failed this round: back off (1 s, 2 s, 4 s … ±25 %) within the deadline.
            let wait = crate::retry::backoff(round);
            round += 1;
            if tokio::time::Instant::now() + wait >= deadline {
                return Err(BaoError::Unreachable(last));
            }
            tracing::debug!(error = %last, wait_ms = wait.as_millis() as u64, "no OpenBao node answered; retrying");
            tokio::time::sleep(wait).await;
        }
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

/// Turns an answer into JSON or the error it states.
async fn answer(resp: reqwest::Response, path: &str) -> Result<Value, BaoError> {
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(BaoError::NotFound);
    }
    if status == reqwest::StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
    let text = crate::tls::read_capped(resp, path).await.map_err(|e| match e {
        crate::tls::BodyError::TooLarge(m) => BaoError::Refused(m),
        crate::tls::BodyError::Read(e) => body_error(&e, path),
    })?;
    if status.is_server_error() {
        return Err(BaoError::Unreachable(format!("{status} on {path}")));
    }
    if !status.is_success() {
        // Error bodies are {"errors": [...]}: messages, never secret data; at most a short excerpt.
        let errors = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("errors").cloned())
            .map(|e| crate::diag::excerpt(&e.to_string(), 512))
            .unwrap_or_default();
        return Err(BaoError::Refused(format!("{status} on {path} {errors}")));
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|_| BaoError::Refused(format!("{path}: the answer is not JSON")))
}

fn describe(e: &reqwest::Error, node: &Node) -> String {
    if e.is_timeout() {
        "no answer within the timeout (the server accepted the connection and stayed silent)".into()
    } else if let Some(tls) = tls_cause(e) {
        format!("TLS certificate problem: {tls} ({})", node.trust)
    } else if e.is_connect() {
        "connection refused or unreachable".into()
    } else {
        // reqwest's Display names the URL (no token, no body).
        e.to_string()
    }
}

/// A body that could not be read: a timeout (the server went silent mid-answer) or a broken link.
fn body_error(e: &reqwest::Error, path: &str) -> BaoError {
    if e.is_timeout() {
        BaoError::Timeout(format!("{path}: the answer stopped arriving within the timeout"))
    } else {
        BaoError::Unreachable(format!("{path}: the answer broke off: {e}"))
    }
}

/// The TLS failure behind an error, if one is in its chain (an untrusted or misnamed certificate).
fn tls_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        // An io::Error's `source` skips the error it wraps: follow that one instead.
        let wrapped = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        cur = match wrapped {
            Some(w) => Some(w as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
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
