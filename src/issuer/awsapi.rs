//! The AWS query API as the `aws` issuer uses it (STS, IAM): SigV4-signed form POSTs with the
//! aws-sigv4 crate, and the few fields read from their flat XML answers.

use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

use super::LeaseError;
use crate::fields::SecretFields;

pub fn fail(msg: impl std::fmt::Display) -> LeaseError {
    LeaseError::failed(format!("aws: {msg}"))
}

/// The text of `<tag>…</tag>` in an answer (a fixed, flat schema), XML entities decoded.
pub fn tag(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(unescape(xml[start..end].trim()))
}

fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&quot;", "\"").replace("&apos;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Everything but RFC 3986's unreserved characters is escaped, as the AWS SDKs do (a policy's
/// `*` included: AWS's signature check re-encodes the form that way).
const AWS_QUERY: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, AWS_QUERY).to_string();
    pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

/// Where and as whom to call one AWS service.
pub struct Service<'a> {
    /// `sts`, `iam`.
    pub name: &'static str,
    /// The URL, ending in `/`.
    pub endpoint: String,
    pub region: &'a str,
    pub base: &'a SecretFields,
}

/// An answer that is not a success: the HTTP status, AWS's error code and a short message.
pub struct Refusal {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Refusal {
    pub fn into_error(self, service: &str) -> LeaseError {
        fail(format!("{service} refused ({}): {}: {}", self.status, self.code, self.message))
    }
}

/// POSTs `body` signed for `svc`: Ok(answer text), or Err(Ok(refusal)) when the service said no,
/// Err(Err(error)) when it could not be asked.
pub async fn call(
    http: &Result<reqwest::Client, String>,
    svc: &Service<'_>,
    body: String,
) -> Result<zeroize::Zeroizing<String>, Result<Refusal, LeaseError>> {
    let base = svc.base;
    let akid = base.get("access_key_id").ok_or_else(|| Err(fail("the base secret needs \"access_key_id\"")))?;
    let secret =
        base.get("secret_access_key").ok_or_else(|| Err(fail("the base secret needs \"secret_access_key\"")))?;
    let endpoint = &svc.endpoint;
    let identity = aws_credential_types::Credentials::new(
        akid,
        secret,
        base.get("session_token").map(str::to_string),
        None,
        "leasefs-base-secret",
    )
    .into();
    let cannot_sign = |e: &dyn std::fmt::Display| Err(fail(format!("cannot sign: {e}")));
    let params: aws_sigv4::http_request::SigningParams<'_> = v4::SigningParams::builder()
        .identity(&identity)
        .region(svc.region)
        .name(svc.name)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| cannot_sign(&e))?
        .into();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(endpoint)
        .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
        .body(body.clone())
        .map_err(|e| Err(fail(format!("bad endpoint {endpoint:?}: {e}"))))?;
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
    .map_err(|e| cannot_sign(&e))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| cannot_sign(&e))?.into_parts();
    instructions.apply_to_request_http1x(&mut request);
    let request = reqwest::Request::try_from(request).map_err(|e| Err(fail(e)))?;

    let upper = svc.name.to_uppercase();
    let resp = http.as_ref().map_err(|e| Err(fail(e)))?.execute(request).await.map_err(|e| {
        Err(fail(if e.is_timeout() { format!("{upper} timed out") } else { format!("{upper} unreachable: {e}") }))
    })?;
    let status = resp.status();
    let text = crate::tls::read_capped(resp, &format!("{upper} {endpoint}")).await.map_err(|e| match e {
        crate::tls::BodyError::TooLarge(m) => Err(fail(m)),
        crate::tls::BodyError::Read(e) => Err(fail(format!("reading the {upper} answer: {e}"))),
    })?;
    if !status.is_success() {
        return Err(Ok(Refusal {
            status: status.as_u16(),
            code: crate::diag::excerpt(&tag(&text, "Code").unwrap_or_else(|| "unknown".into()), 128),
            message: crate::diag::excerpt(&tag(&text, "Message").unwrap_or_default(), 512),
        }));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_assume_role_answer() {
        let xml = "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIA1</AccessKeyId>\
                   <SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken>\
                   <Expiration>2030-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>";
        assert_eq!(tag(xml, "AccessKeyId").as_deref(), Some("ASIA1"));
        assert_eq!(tag(xml, "Expiration").as_deref(), Some("2030-01-01T00:00:00Z"));
        assert_eq!(tag(xml, "Missing"), None);
        assert_eq!(tag("<M>a &quot;b&quot; &amp;lt;</M>", "M").as_deref(), Some("a \"b\" &lt;"));
    }

    #[test]
    fn form_encoding_escapes() {
        assert_eq!(
            form_encode(&[("RoleArn", "arn:aws:iam::1:role/a b"), ("D", "{\"A\":\"*\"}~")]),
            "RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fa%20b&D=%7B%22A%22%3A%22%2A%22%7D~"
        );
    }
}
