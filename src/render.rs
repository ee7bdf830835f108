//! Credential → bytes, per `attributes.format` (SPEC §6); output goes into zeroizing buffers and errors never quote a value.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::fields::SecretFields;

/// A rendering format, parsed from `attributes.format`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    CredentialProcess,
    ExecCredential,
    AwsIni,
    Env,
    Raw(String),
    Template(String),
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        Ok(match s {
            "json" => Format::Json,
            "credential_process" => Format::CredentialProcess,
            "exec_credential" => Format::ExecCredential,
            "aws_ini" => Format::AwsIni,
            "env" => Format::Env,
            _ => {
                if let Some(f) = s.strip_prefix("raw:") {
                    if f.is_empty() {
                        return Err("raw: needs a field name, e.g. raw:password".into());
                    }
                    Format::Raw(f.to_string())
                } else if let Some(t) = s.strip_prefix("template:") {
                    check_template(t)?;
                    Format::Template(t.to_string())
                } else {
                    return Err(format!(
                        "unknown format {s:?} (json, credential_process, exec_credential, aws_ini, env, raw:<field>, template:<text>)"
                    ));
                }
            }
        })
    }
}

fn check_template(t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let end = after.find("}}").ok_or("template has an unclosed {{")?;
        if after[..end].trim().is_empty() {
            return Err("template has an empty {{}}".into());
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

pub type Bytes = Zeroizing<Vec<u8>>;

fn buffer(fields: &SecretFields) -> Bytes {
    // Reserve enough up front so that the buffer never reallocates (and leaves copies behind).
    use secrecy::ExposeSecret;
    let need: usize = fields.fields.iter().map(|(k, v)| k.len() * 2 + v.text.expose_secret().len() * 2 + 64).sum();
    Zeroizing::new(Vec::with_capacity(need + 1024))
}

/// A time as the credentials, `leases.json` and the log write it: RFC 3339 in UTC, whole seconds.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn need<'a>(fields: &'a SecretFields, keys: &[&str], format: &str) -> Result<&'a str, String> {
    fields
        .get_any(keys)
        .ok_or_else(|| format!("format {format} needs a field {:?}; the credential has {:?}", keys[0], fields))
}

fn write_json<T: Serialize>(out: &mut Bytes, v: &T) -> Result<(), String> {
    serde_json::to_writer_pretty(&mut **out, v).map_err(|e| format!("cannot encode JSON: {e}"))?;
    out.push(b'\n');
    Ok(())
}

/// Renders a static secret: `{"value": "..."}` alone is served raw unless a format says otherwise.
pub fn render_static(fields: &SecretFields, format: Option<&Format>) -> Result<Bytes, String> {
    match format {
        Some(f) => render(fields, f, None),
        None if fields.len() == 1 && fields.fields.get("value").is_some_and(|v| !v.json) => {
            render(fields, &Format::Raw("value".into()), None)
        }
        None => render(fields, &Format::Json, None),
    }
}

/// Renders a credential in `format`. `expires_at` is the lease's expiry, used where the format carries one.
pub fn render(fields: &SecretFields, format: &Format, expires_at: Option<DateTime<Utc>>) -> Result<Bytes, String> {
    let mut out = buffer(fields);
    let expiry = || -> Option<String> {
        fields
            .get_any(&["expiration", "expires_at", "ExpiresAt"])
            .map(str::to_string)
            .or_else(|| expires_at.map(rfc3339))
    };
    match format {
        Format::Json => write_json(&mut out, fields)?,
        Format::CredentialProcess => credential_process(&mut out, fields, expiry())?,
        Format::ExecCredential => exec_credential(&mut out, fields, expiry())?,
        Format::AwsIni => aws_ini(&mut out, fields)?,
        Format::Env => env(&mut out, fields),
        Format::Raw(field) => {
            let v = fields
                .get(field)
                .ok_or_else(|| format!("format raw:{field}: no field {field:?}; the credential has {fields:?}"))?;
            out.extend_from_slice(v.as_bytes());
        }
        Format::Template(t) => template(&mut out, fields, t, expiry)?,
    }
    Ok(out)
}

/// The AWS SDKs' `credential_process` contract (version 1).
fn credential_process(out: &mut Bytes, fields: &SecretFields, expiration: Option<String>) -> Result<(), String> {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Cp<'a> {
        version: u8,
        access_key_id: &'a str,
        secret_access_key: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        session_token: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expiration: Option<String>,
    }
    let cp = Cp {
        version: 1,
        access_key_id: need(fields, &["access_key_id", "AccessKeyId"], "credential_process")?,
        secret_access_key: need(fields, &["secret_access_key", "SecretAccessKey"], "credential_process")?,
        session_token: fields.get_any(&["session_token", "SessionToken"]),
        expiration,
    };
    write_json(out, &cp)
}

/// A Kubernetes client-go `ExecCredential`.
fn exec_credential(out: &mut Bytes, fields: &SecretFields, expiration: Option<String>) -> Result<(), String> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Status<'a> {
        token: &'a str,
        expiration_timestamp: Option<String>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ExecCredential<'a> {
        api_version: &'static str,
        kind: &'static str,
        status: Status<'a>,
    }
    // Borrowed straight from the secret box into the output buffer: no copy of the token.
    let token = need(fields, &["token", "Token"], "exec_credential")?;
    let v = ExecCredential {
        api_version: "client.authentication.k8s.io/v1",
        kind: "ExecCredential",
        status: Status { token, expiration_timestamp: expiration },
    };
    write_json(out, &v)
}

/// An AWS shared credentials file's `[default]` profile.
fn aws_ini(out: &mut Bytes, fields: &SecretFields) -> Result<(), String> {
    out.extend_from_slice(b"[default]\n");
    for (key, names) in [
        ("aws_access_key_id", &["access_key_id", "AccessKeyId"][..]),
        ("aws_secret_access_key", &["secret_access_key", "SecretAccessKey"][..]),
        ("aws_session_token", &["session_token", "SessionToken"][..]),
    ] {
        let v = if key == "aws_session_token" {
            match fields.get_any(names) {
                Some(v) => v,
                None => continue,
            }
        } else {
            need(fields, names, "aws_ini")?
        };
        check_one_line(key, v)?;
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b" = ");
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    Ok(())
}

/// `KEY='value'` lines a shell can source: keys upper-cased, single quotes escaped.
fn env(out: &mut Bytes, fields: &SecretFields) {
    use secrecy::ExposeSecret;
    for (k, v) in &fields.fields {
        let key: String =
            k.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
        let key = if key.starts_with(|c: char| c.is_ascii_digit()) { format!("_{key}") } else { key };
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"='");
        for b in v.text.expose_secret().bytes() {
            if b == b'\'' {
                out.extend_from_slice(b"'\\''");
            } else {
                out.push(b);
            }
        }
        out.extend_from_slice(b"'\n");
    }
}

/// `{{field}}` replaced by the field's value; `{{expires_at}}` by the expiry when no field has
/// that name.
fn template(
    out: &mut Bytes,
    fields: &SecretFields,
    t: &str,
    expiry: impl Fn() -> Option<String>,
) -> Result<(), String> {
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        out.extend_from_slice(&rest.as_bytes()[..i]);
        let after = &rest[i + 2..];
        let end = after.find("}}").ok_or("template has an unclosed {{")?;
        let name = after[..end].trim();
        match fields.get(name) {
            Some(v) => out.extend_from_slice(v.as_bytes()),
            None if name == "expires_at" => out.extend_from_slice(expiry().unwrap_or_default().as_bytes()),
            None => {
                return Err(format!("template names {{{{{name}}}}}, but the credential has {fields:?}"));
            }
        }
        rest = &after[end + 2..];
    }
    out.extend_from_slice(rest.as_bytes());
    Ok(())
}

fn check_one_line(key: &str, v: &str) -> Result<(), String> {
    if v.contains('\n') || v.contains('\r') {
        return Err(format!("{key} contains a line break and cannot be written as INI"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws() -> SecretFields {
        let mut f = SecretFields::default();
        f.insert("access_key_id", "ASIAEXAMPLE");
        f.insert("secret_access_key", "s3cr3t'quote");
        f.insert("session_token", "tok");
        f.insert("expiration", "2030-01-01T00:00:00Z");
        f
    }

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn credential_process_follows_the_aws_contract() {
        let out = text(render(&aws(), &Format::CredentialProcess, None).unwrap());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Version"], 1);
        assert_eq!(v["AccessKeyId"], "ASIAEXAMPLE");
        assert_eq!(v["SecretAccessKey"], "s3cr3t'quote");
        assert_eq!(v["SessionToken"], "tok");
        assert_eq!(v["Expiration"], "2030-01-01T00:00:00Z");
    }

    #[test]
    fn env_is_shell_safe() {
        let out = text(render(&aws(), &Format::Env, None).unwrap());
        assert!(out.contains("SECRET_ACCESS_KEY='s3cr3t'\\''quote'\n"), "{out}");
    }

    #[test]
    fn aws_ini_and_template_and_raw() {
        let out = text(render(&aws(), &Format::AwsIni, None).unwrap());
        assert!(out.starts_with("[default]\naws_access_key_id = ASIAEXAMPLE\n"), "{out}");
        let t = Format::parse("template:id={{access_key_id}} exp={{ expiration }}").unwrap();
        assert_eq!(text(render(&aws(), &t, None).unwrap()), "id=ASIAEXAMPLE exp=2030-01-01T00:00:00Z");
        assert_eq!(text(render(&aws(), &Format::parse("raw:session_token").unwrap(), None).unwrap()), "tok");
    }

    #[test]
    fn missing_fields_are_named_without_values() {
        let e = render(&aws(), &Format::parse("raw:password").unwrap(), None).unwrap_err();
        assert!(e.contains("password") && !e.contains("s3cr3t"), "{e}");
        let e = render(&aws(), &Format::ExecCredential, None).unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn exec_credential_shape() {
        let mut f = SecretFields::default();
        f.insert("token", "abc");
        let when = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let v: serde_json::Value =
            serde_json::from_slice(&render(&f, &Format::ExecCredential, Some(when)).unwrap()).unwrap();
        assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1");
        assert_eq!(v["kind"], "ExecCredential");
        assert_eq!(v["status"]["token"], "abc");
        assert_eq!(v["status"]["expirationTimestamp"], "2030-01-01T00:00:00Z");
    }

    #[test]
    fn static_value_is_raw() {
        let f = SecretFields::from_json_object(r#"{"value": "pw"}"#).unwrap();
        assert_eq!(text(render_static(&f, None).unwrap()), "pw");
        let f = SecretFields::from_json_object(r#"{"user": "u", "port": 5}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&render_static(&f, None).unwrap()).unwrap();
        assert_eq!(v["port"], 5);
    }

    #[test]
    fn bad_formats_are_refused() {
        assert!(Format::parse("yaml").is_err());
        assert!(Format::parse("raw:").is_err());
        assert!(Format::parse("template:{{oops").is_err());
    }
}
