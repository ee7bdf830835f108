//! The `openbao` issuer: `GET` (or `POST` with a body) on any OpenBao path that issues — a
//! database role, `pki/issue/<role>`, `ssh/sign/<role>` with a key pair leasefs makes; lease id
//! and duration from the answer; revoke and renew through `sys/leases`, or by serial for PKI. A
//! certificate is asked for no longer than its lease (`ttl` in the body) and its own end is read
//! back (x509 `notAfter`, SSH `ValidBefore`).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::{IssueRequest, Issued, Issuer, LeaseError, RevokeRequest};
use crate::error::ErrorKind;
use crate::fields::SecretFields;
use crate::openbao::{BaoClient, BaoError, Endpoints, fields_of};
use crate::openbao_auth::Login;
use crate::policy::AttrError;

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

/// An `openbao` entry's parameters, read from its attributes when its document loads (so that
/// `check` names a wrong one at its key) and again at each issuance.
pub struct Params<'a> {
    pub path: &'a str,
    pub post: bool,
    pub body: serde_json::Map<String, serde_json::Value>,
    /// `generate_key: "ed25519"`: leasefs makes the key pair whose public half OpenBao signs.
    pub generate_key: bool,
    /// `revoke: "serial"`: a certificate is revoked by its serial at the end of its lease.
    pub revoke_serial: bool,
}

impl<'a> Params<'a> {
    pub fn parse(attrs: &'a serde_json::Map<String, serde_json::Value>) -> Result<Params<'a>, AttrError> {
        let bad = |key: &str, m: &str| AttrError::new(key, format!("attributes.{key} {m}"));
        let path = match attrs.get("path") {
            Some(serde_json::Value::String(p)) if !p.trim_matches('/').is_empty() => p.trim_matches('/'),
            Some(_) => return Err(bad("path", "must be an OpenBao path (e.g. database/creds/app)")),
            None => return Err(bad("path", "is needed: the OpenBao path that issues (e.g. database/creds/app)")),
        };
        let post = match attrs.get("method").map(|m| m.as_str().map(str::to_ascii_uppercase)) {
            None => false,
            Some(Some(m)) if m == "GET" => false,
            Some(Some(m)) if m == "POST" => true,
            Some(_) => return Err(bad("method", "must be \"GET\" or \"POST\"")),
        };
        let body = match attrs.get("body") {
            None => serde_json::Map::new(),
            Some(serde_json::Value::Object(o)) => o.clone(),
            Some(_) => return Err(bad("body", "must be a JSON object")),
        };
        let generate_key = match attrs.get("generate_key") {
            None => false,
            Some(k) if k == "ed25519" => true,
            Some(_) => return Err(bad("generate_key", "must be \"ed25519\"")),
        };
        let revoke_serial = match attrs.get("revoke") {
            None => false,
            Some(k) if k == "serial" => true,
            Some(_) => return Err(bad("revoke", "must be \"serial\" (revoke a certificate by its serial)")),
        };
        Ok(Params { path, post, body, generate_key, revoke_serial })
    }

    /// Whether the path issues a certificate (`<mount>/issue/<role>`, `<mount>/sign/<role>`,
    /// `pki/issuer/<ref>/issue/<role>`), whose validity OpenBao takes from the body's `ttl`.
    fn issues_certificate(&self) -> bool {
        matches!(self.path.rsplit('/').nth(1), Some("issue" | "sign"))
    }
}

fn lease_id(v: &serde_json::Value) -> Option<&str> {
    v.get("lease_id").and_then(|l| l.as_str()).filter(|s| !s.is_empty())
}

/// The `notAfter` of the first certificate in a PEM text (RFC 5280's TBSCertificate.validity).
pub fn pem_not_after(pem: &str) -> Option<DateTime<Utc>> {
    use base64::Engine;
    let body = pem.split("-----BEGIN CERTIFICATE-----").nth(1)?.split("-----END CERTIFICATE-----").next()?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let secs = not_after(&der).ok()?;
    DateTime::from_timestamp(i64::try_from(secs.as_secs()).ok()?, 0)
}

fn not_after(cert: &[u8]) -> der::Result<Duration> {
    use der::asn1::{GeneralizedTime, UtcTime};
    use der::{Decode, Reader, Tag, TagNumber};
    fn skip_rest<'r>(r: &mut impl Reader<'r>) -> der::Result<()> {
        let rest = r.remaining_len();
        r.read_slice(rest).map(|_| ())
    }
    let mut r = der::SliceReader::new(cert)?;
    r.sequence(|c| {
        let end = c.sequence(|tbs| {
            if tbs.peek_tag()? == (Tag::ContextSpecific { constructed: true, number: TagNumber::N0 }) {
                tbs.tlv_bytes()?; // version
            }
            for _ in 0..3 {
                tbs.tlv_bytes()?; // serial, signature algorithm, issuer
            }
            let end = tbs.sequence(|v| {
                v.tlv_bytes()?; // notBefore
                if v.peek_tag()? == Tag::UtcTime {
                    Ok(UtcTime::decode(v)?.to_unix_duration())
                } else {
                    Ok(GeneralizedTime::decode(v)?.to_unix_duration())
                }
            })?;
            skip_rest(tbs)?;
            Ok(end)
        })?;
        skip_rest(c)?;
        Ok(end)
    })
}

/// The latest end of validity an answer states: its lease, a PKI certificate's `notAfter` (or
/// `expiration`), an SSH certificate's `ValidBefore`.
fn stated_end(lease_duration: u64, data: &serde_json::Value) -> Option<DateTime<Utc>> {
    let lease = (lease_duration > 0).then(|| Utc::now() + chrono::Duration::seconds(lease_duration as i64));
    let text = |k: &str| data.get(k).and_then(|v| v.as_str());
    let cert = text("certificate")
        .and_then(pem_not_after)
        .or_else(|| data.get("expiration").and_then(|e| e.as_i64()).and_then(|t| DateTime::from_timestamp(t, 0)));
    let ssh = text("signed_key").and_then(super::sshkey::cert_valid_before);
    [lease, cert, ssh].into_iter().flatten().max()
}

#[async_trait]
impl Issuer for OpenBaoIssuer {
    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, LeaseError> {
        let params = Params::parse(req.secret.attributes()).map_err(fail)?;
        let (path, mut body) = (params.path, params.body.clone());
        // A certificate is asked for no longer than its lease, unless the document says otherwise.
        if params.issues_certificate() && !body.contains_key("ttl") {
            body.insert("ttl".into(), format!("{}s", req.ttl.as_secs().max(1)).into());
        }
        // ssh/sign/<role>: leasefs makes the key pair; OpenBao signs its public half.
        let key = params.generate_key.then(|| {
            let k = super::sshkey::generate_ed25519(&format!("leasefs-{}", req.lease_id));
            body.insert("public_key".into(), k.public.clone().into());
            k
        });
        let client = self.client(req.base, req.login).await?;
        let not_found = |e| match e {
            BaoError::NotFound => fail(format!("{path}: not found")),
            // A silent server is a timeout (ETIMEDOUT), not a failure (EIO).
            BaoError::Timeout(m) => LeaseError::new(ErrorKind::Timeout, format!("{path}: {m}")),
            other => fail(other),
        };
        let mut answer = if params.post || key.is_some() {
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
        // What the credential itself states, read back (the lease manager weighs it against the lease).
        let expires_at = stated_end(duration, &data);
        let serial = data.get("serial_number").and_then(|s| s.as_str()).map(str::to_string);
        let mut fields = fields_of(data);
        if let Some(k) = key {
            fields.insert("private_key", k.private_pem.to_string());
            fields.insert("public_key", k.public);
        }
        let mut revocation = serde_json::json!({"lease_id": id, "renewable": renewable});
        // PKI: revoked by serial at the end of the lease, so the CRL lists it (opt-in).
        if params.revoke_serial {
            let mount = path.split('/').next().unwrap_or("pki");
            let serial =
                serial.ok_or_else(|| fail(format!("{path}: revoke by serial, but the answer has no serial_number")))?;
            revocation["serial_number"] = serial.into();
            revocation["pki_mount"] = mount.into();
        } else if let (Some(serial), true) = (serial, fields.get("certificate").is_some()) {
            // Not revoked at the lease's end (the entry did not ask), but at once if refused.
            revocation["refused_serial"] = serial.into();
            revocation["pki_mount"] = path.split('/').next().unwrap_or("pki").into();
        }
        Ok(Issued { fields, expires_at, revocation })
    }

    async fn revoke(&self, req: &RevokeRequest<'_>) -> Result<(), LeaseError> {
        let text = |k: &str| req.revocation.get(k).and_then(|s| s.as_str());
        let refused = req.revocation.get("refused") == Some(&serde_json::Value::Bool(true));
        let serial = text("serial_number").or_else(|| text("refused_serial").filter(|_| refused));
        let mount = text("pki_mount");
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

    /// Revocable when OpenBao holds a lease for it, or a certificate is revoked by serial; an SSH
    /// certificate, or a PKI one without `revoke: "serial"`, lives to the end it states.
    fn revocable(&self, _base: &SecretFields, revocation: &serde_json::Value) -> bool {
        lease_id(revocation).is_some() || revocation.get("serial_number").is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn params_are_judged_as_an_issuance_reads_them() {
        let a = attrs(serde_json::json!({"path": "pki/issue/web", "method": "post", "revoke": "serial"}));
        let p = Params::parse(&a).unwrap();
        assert!(p.post && p.revoke_serial && p.issues_certificate() && !p.generate_key);
        let a = attrs(serde_json::json!({"path": "database/creds/app"}));
        assert!(!Params::parse(&a).unwrap().issues_certificate());
        for (bad, key) in [
            (serde_json::json!({"method": "GET"}), "path"),
            (serde_json::json!({"path": "x/y", "method": "PUT"}), "method"),
            (serde_json::json!({"path": "x/y", "body": "ttl=1h"}), "body"),
            (serde_json::json!({"path": "x/y", "generate_key": "rsa"}), "generate_key"),
            (serde_json::json!({"path": "x/y", "revoke": "lease"}), "revoke"),
        ] {
            let e = Params::parse(&attrs(bad)).err().unwrap();
            assert_eq!(e.key, key);
            assert!(e.message.starts_with(&format!("attributes.{key} ")), "{}", e.message);
        }
    }

    /// openssl writes UTCTime up to 2049 and GeneralizedTime from 2050 on.
    #[test]
    fn a_certificates_not_after_is_read_from_its_der() {
        let dir = tempfile::tempdir().unwrap();
        for days in ["2", "20000"] {
            let cert = dir.path().join(format!("{days}.pem"));
            let key = dir.path().join("key.pem");
            let o = std::process::Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ed25519", "-nodes", "-subj", "/CN=t", "-days", days])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let o = std::process::Command::new("openssl")
                .args(["x509", "-noout", "-enddate", "-in"])
                .arg(&cert)
                .output()
                .unwrap();
            let text = String::from_utf8(o.stdout).unwrap();
            let want = chrono::NaiveDateTime::parse_from_str(
                text.trim().trim_start_matches("notAfter="),
                "%b %e %H:%M:%S %Y GMT",
            )
            .unwrap()
            .and_utc();
            let pem = std::fs::read_to_string(&cert).unwrap();
            assert_eq!(pem_not_after(&pem), Some(want), "-days {days}");
        }
        assert_eq!(pem_not_after("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), None);
    }
}
