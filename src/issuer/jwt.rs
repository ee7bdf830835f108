//! The `jwt` issuer: signs a short-lived session token (EdDSA or HS256) with `exp`, `sub`, `aud`, verifiable with the public key.

use async_trait::async_trait;
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::{IssueRequest, Issued, Issuer, LeaseError, RevokeRequest};
use crate::fields::SecretFields;

pub struct JwtIssuer;

#[async_trait]
impl Issuer for JwtIssuer {
    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, LeaseError> {
        let base = req.base;
        let alg = base.get("algorithm").unwrap_or("EdDSA");
        let (algorithm, key) = match alg {
            "EdDSA" => {
                let pem = base
                    .get("private_key")
                    .ok_or_else(|| fail("EdDSA needs \"private_key\" (PEM) in the base secret"))?;
                let k = EncodingKey::from_ed_pem(pem.as_bytes())
                    .map_err(|e| fail(&format!("private_key is not an Ed25519 PEM key: {e}")))?;
                (Algorithm::EdDSA, k)
            }
            "HS256" => {
                let k = base.get("key").ok_or_else(|| fail("HS256 needs \"key\" in the base secret"))?;
                if k.len() < 32 {
                    return Err(fail("HS256 \"key\" must be at least 32 bytes"));
                }
                (Algorithm::HS256, EncodingKey::from_secret(k.as_bytes()))
            }
            other => return Err(fail(&format!("algorithm {other:?} is not supported (EdDSA, HS256)"))),
        };
        let now = Utc::now();
        let exp = now + chrono::Duration::from_std(req.ttl).map_err(|_| fail("ttl out of range"))?;
        let attrs = req.secret.attributes();
        // `{{workload.*}}` and `{{requester.uid}}` in subject, audience and claims (the open
        // checked that this reader has every field named).
        let who = req.requester;
        let render = |key: &str, v: &serde_json::Value| {
            crate::workload::render_value(v, who.uid, who.gid, who.workload.as_deref())
                .map_err(|e| fail(&format!("attributes.{key}: {e}")))
        };
        let mut claims = serde_json::Map::new();
        if let Some(extra) = attrs.get("claims") {
            let obj = render("claims", extra)?;
            let obj = obj.as_object().ok_or_else(|| fail("attributes.claims must be an object"))?;
            claims.extend(obj.clone());
        }
        let set = |claims: &mut serde_json::Map<String, serde_json::Value>, k: &str, v: serde_json::Value| {
            claims.insert(k.to_string(), v);
        };
        if let Some(iss) = base.get("issuer") {
            set(&mut claims, "iss", iss.into());
        }
        let subject = match attrs.get("subject").filter(|v| v.is_string()) {
            Some(v) => render("subject", v)?,
            None => format!("uid:{}", req.requester.uid).into(),
        };
        set(&mut claims, "sub", subject);
        if let Some(aud) = attrs.get("audience") {
            set(&mut claims, "aud", render("audience", aud)?);
        }
        set(&mut claims, "iat", now.timestamp().into());
        set(&mut claims, "nbf", now.timestamp().into());
        set(&mut claims, "exp", exp.timestamp().into());
        set(&mut claims, "jti", req.lease_id.into());
        let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, &key)
            .map_err(|e| fail(&format!("cannot sign: {e}")))?;
        // The `exp` the signed token states, read back (a `claims` attribute cannot move it).
        let exp = stated_exp(&token).unwrap_or(exp);
        let mut fields = SecretFields::default();
        fields.insert("token", token);
        fields.insert("expires_at", exp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        Ok(Issued { fields, expires_at: Some(exp), revocation: serde_json::json!({"jti": req.lease_id}) })
    }

    fn can_revoke(&self) -> bool {
        false
    }

    /// Signing is in-process: nothing to wait for.
    fn is_inline(&self) -> bool {
        true
    }

    /// A signed token cannot be recalled; it dies at `exp`. Nothing to do.
    async fn revoke(&self, _req: &RevokeRequest<'_>) -> Result<(), LeaseError> {
        Ok(())
    }
}

/// The `exp` claim of a compact JWT's payload, unverified (ours, just signed).
fn stated_exp(token: &str) -> Option<chrono::DateTime<Utc>> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    chrono::DateTime::from_timestamp(claims.get("exp")?.as_i64()?, 0)
}

fn fail(msg: &str) -> LeaseError {
    LeaseError::failed(format!("jwt: {msg}"))
}

/// A fresh Ed25519 private key as PKCS#8 PEM (for the demo; production keys come from the base secret).
pub fn generate_ed25519_pem() -> String {
    use base64::Engine;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random source");
    // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): a fixed 16-byte prefix, then the 32 bytes.
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(&seed);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    zeroize::Zeroize::zeroize(&mut seed);
    zeroize::Zeroize::zeroize(&mut der);
    format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
}
