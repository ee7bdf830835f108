//! How leasefs logs in to OpenBao and keeps its own token alive (SPEC §9.5): a token file
//! (re-read at each use, so a rotated token is picked up), or AppRole (role id and secret id
//! files; optionally a response-wrapped secret id). A token that came from a login is renewed
//! at 2/3 of its TTL, and when renewal fails (or the token is gone after an outage longer than
//! its TTL) leasefs logs in again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::openbao::{BaoClient, BaoError, Endpoints};

/// The `auth` key of an `openbao` source.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthConfig {
    Token {
        token_file: PathBuf,
    },
    Approle {
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
        /// The secret id file holds a response-wrapping token to unwrap first.
        #[serde(default)]
        wrapped: bool,
    },
    /// TLS client certificate login (`auth/cert/login`), optionally for the named cert role.
    Cert {
        cert_file: PathBuf,
        key_file: PathBuf,
        #[serde(default)]
        name: Option<String>,
    },
}

struct Session {
    token: SecretString,
    /// When to renew (2/3 of the TTL), and when it ends; None: it does not expire.
    renew_at: Option<Instant>,
    ends: Option<Instant>,
    renewable: bool,
}

/// The daemon's own token for one cluster.
pub struct Login {
    auth: AuthConfig,
    endpoints: Endpoints,
    timeout: Duration,
    session: tokio::sync::Mutex<Option<Session>>,
    /// A wrapped secret id, once unwrapped (the wrapping token works once; later logins reuse it).
    unwrapped: Mutex<Option<SecretString>>,
    /// Logins and renewals so far (status and tests).
    pub counts: Mutex<(u32, u32)>,
}

fn read_trimmed(p: &PathBuf, what: &str) -> Result<SecretString, BaoError> {
    std::fs::read_to_string(p)
        .map(|t| SecretString::from(t.trim().to_string()))
        .map_err(|e| BaoError::Unreachable(format!("cannot read the {what} file {}: {e}", p.display())))
}

impl Login {
    pub fn new(auth: AuthConfig, endpoints: Endpoints, timeout: Duration) -> Arc<Login> {
        Arc::new(Login {
            auth,
            endpoints,
            timeout,
            session: tokio::sync::Mutex::new(None),
            unwrapped: Mutex::new(None),
            counts: Mutex::new((0, 0)),
        })
    }

    fn client(&self, token: SecretString) -> Result<BaoClient, BaoError> {
        BaoClient::new(&self.endpoints, token, self.timeout)
    }

    /// A token to use now: the file's, or the session's (renewed or logged in again as needed).
    pub async fn token(&self) -> Result<SecretString, BaoError> {
        if let AuthConfig::Token { token_file } = &self.auth {
            return read_trimmed(token_file, "token");
        }
        let mut g = self.session.lock().await;
        let now = Instant::now();
        if let Some(s) = g.as_ref() {
            let usable = s.ends.is_none_or(|e| e > now + Duration::from_secs(1));
            if usable && s.renew_at.is_none_or(|r| r > now) {
                return Ok(s.token.clone());
            }
            if usable && s.renewable {
                match self.renew(&s.token).await {
                    Ok(next) => {
                        self.counts.lock().1 += 1;
                        let t = next.token.clone();
                        *g = Some(next);
                        return Ok(t);
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing leasefs's OpenBao token failed; logging in again"),
                }
            }
        }
        let next = match &self.auth {
            AuthConfig::Approle { role_id_file, secret_id_file, wrapped } => {
                self.approle(role_id_file, secret_id_file, *wrapped).await?
            }
            AuthConfig::Cert { cert_file, key_file, name } => self.cert(cert_file, key_file, name.as_deref()).await?,
            AuthConfig::Token { .. } => unreachable!("a token file has no session"),
        };
        self.counts.lock().0 += 1;
        let t = next.token.clone();
        *g = Some(next);
        Ok(t)
    }

    /// Forgets the session (a 403: the token was revoked or expired early).
    pub async fn forget(&self) {
        *self.session.lock().await = None;
    }

    fn session_of(auth: &serde_json::Value) -> Result<Session, BaoError> {
        let token =
            auth["client_token"].as_str().ok_or_else(|| BaoError::Refused("the login answer has no token".into()))?;
        let ttl = auth["lease_duration"].as_u64().unwrap_or(0);
        let now = Instant::now();
        Ok(Session {
            token: SecretString::from(token.to_string()),
            renew_at: (ttl > 0).then(|| now + Duration::from_secs(ttl) * 2 / 3),
            ends: (ttl > 0).then(|| now + Duration::from_secs(ttl)),
            renewable: auth["renewable"].as_bool().unwrap_or(false),
        })
    }

    async fn approle(&self, role_file: &PathBuf, secret_file: &PathBuf, wrapped: bool) -> Result<Session, BaoError> {
        let role_id = read_trimmed(role_file, "role id")?;
        let kept = self.unwrapped.lock().clone();
        let secret_id = match kept {
            Some(s) if wrapped => s,
            _ if wrapped => {
                // The file holds a wrapping token: unwrap it once for the secret id inside.
                let token = read_trimmed(secret_file, "secret id")?;
                let v = self.client(token)?.post("sys/wrapping/unwrap", &json!({})).await?;
                let s = v
                    .pointer("/data/secret_id")
                    .and_then(|s| s.as_str())
                    .ok_or_else(|| BaoError::Refused("the wrapped answer holds no secret_id".into()))?;
                let s = SecretString::from(s.to_string());
                *self.unwrapped.lock() = Some(s.clone());
                s
            }
            _ => read_trimmed(secret_file, "secret id")?,
        };
        let body = json!({"role_id": role_id.expose_secret(), "secret_id": secret_id.expose_secret()});
        let v = self.client(SecretString::from(String::new()))?.post("auth/approle/login", &body).await?;
        tracing::info!("logged in to OpenBao with AppRole");
        Self::session_of(&v["auth"])
    }

    async fn cert(
        &self,
        cert: &std::path::Path,
        key: &std::path::Path,
        name: Option<&str>,
    ) -> Result<Session, BaoError> {
        let endpoints =
            Endpoints { client_cert: Some((cert.to_path_buf(), key.to_path_buf())), ..self.endpoints.clone() };
        let client = BaoClient::new(&endpoints, SecretString::from(String::new()), self.timeout)?;
        let body = match name {
            Some(n) => json!({"name": n}),
            None => json!({}),
        };
        let v = client.post("auth/cert/login", &body).await?;
        tracing::info!("logged in to OpenBao with a TLS client certificate");
        Self::session_of(&v["auth"])
    }

    async fn renew(&self, token: &SecretString) -> Result<Session, BaoError> {
        let v = self.client(token.clone())?.post("auth/token/renew-self", &json!({})).await?;
        let s = Self::session_of(&v["auth"])?;
        tracing::debug!("renewed leasefs's OpenBao token");
        Ok(s)
    }
}
