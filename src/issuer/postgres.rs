//! The `postgres` issuer: creates a login role with `VALID UNTIL` and the entry's grants; revoke terminates its sessions and drops it.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use chrono::Utc;
use tokio_postgres::{Client, NoTls};

use super::{IssueRequest, Issued, Issuer, LeaseError, RevokeRequest};
use crate::fields::SecretFields;
use crate::policy::AttrError;

pub struct PostgresIssuer {
    timeout: Duration,
    /// PostgreSQL fails concurrent changes to one object's ACL ("tuple concurrently updated"):
    /// grants and drops are serialized here, and retried for other daemons in a fleet.
    acl: tokio::sync::Mutex<()>,
}

impl PostgresIssuer {
    pub fn new(timeout: Duration) -> Self {
        PostgresIssuer { timeout, acl: tokio::sync::Mutex::new(()) }
    }
}

/// Runs statements that change ACLs, retrying PostgreSQL's "tuple concurrently updated" (XX000).
async fn acl_change(client: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let mut attempt = 0u32;
    loop {
        match client.batch_execute(sql).await {
            Err(e) if attempt < 5 && e.as_db_error().is_some_and(|d| d.message().contains("concurrently updated")) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

fn fail(msg: impl std::fmt::Display) -> LeaseError {
    LeaseError::failed(format!("postgres: {msg}"))
}

/// `"name"` with inner quotes doubled: an identifier, never pasted raw.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled, as an escape-string literal so backslashes are literal too.
pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// `lfs_<path>_<random>`: lower-case letters, digits and `_`, at most 63 bytes.
fn role_name(path: &str) -> String {
    let mut stem: String = path
        .trim_start_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    stem.truncate(40);
    let mut r = [0u8; 5];
    getrandom::fill(&mut r).expect("the OS random source");
    let suffix: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("lfs_{stem}_{suffix}")
}

fn password() -> zeroize::Zeroizing<String> {
    let mut r = zeroize::Zeroizing::new([0u8; 24]);
    getrandom::fill(&mut *r).expect("the OS random source");
    zeroize::Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*r))
}

struct Admin<'a> {
    host: &'a str,
    port: u16,
    database: &'a str,
}

fn admin(base: &SecretFields) -> Result<Admin<'_>, LeaseError> {
    let host = base.get("host").unwrap_or("127.0.0.1");
    let port = base.get("port").unwrap_or("5432").parse().map_err(|_| fail("\"port\" is not a port number"))?;
    let database = base.get("database").unwrap_or("postgres");
    Ok(Admin { host, port, database })
}

async fn connect(base: &SecretFields, timeout: Duration) -> Result<Client, LeaseError> {
    match base.get("sslmode").unwrap_or("disable") {
        "disable" | "prefer" | "allow" => {}
        other => return Err(fail(format!("sslmode {other:?} is not supported by this build (disable, prefer)"))),
    }
    let a = admin(base)?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(a.host)
        .port(a.port)
        .dbname(a.database)
        .user(base.get("username").ok_or_else(|| fail("the base secret needs \"username\""))?)
        .password(base.get("password").ok_or_else(|| fail("the base secret needs \"password\""))?)
        .application_name("leasefs")
        .connect_timeout(timeout);
    let (client, conn) =
        cfg.connect(NoTls).await.map_err(|e| fail(format!("cannot connect to {}:{}: {e}", a.host, a.port)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres admin connection closed");
        }
    });
    Ok(client)
}

/// The entry's `grants`: one SQL string or an array of them (read when its document loads too).
fn grant_list(attrs: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<String>, AttrError> {
    let bad = || AttrError::new("grants", "attributes.grants must be a string or an array of strings");
    match attrs.get("grants") {
        None => Ok(Vec::new()),
        Some(serde_json::Value::String(s)) => Ok(vec![s.clone()]),
        Some(serde_json::Value::Array(a)) => {
            a.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(bad)).collect::<Result<_, _>>()
        }
        Some(_) => Err(bad()),
    }
}

/// Checks an entry's `grants` as an issuance will read them.
pub fn check_grants(attrs: &serde_json::Map<String, serde_json::Value>) -> Result<(), AttrError> {
    grant_list(attrs).map(|_| ())
}

/// The entry's `grants`, with `{{name}}` standing for the quoted role.
fn grants(req: &IssueRequest<'_>, role: &str) -> Result<Vec<String>, LeaseError> {
    let list = grant_list(req.secret.attributes()).map_err(|e| fail(e.message))?;
    Ok(list.into_iter().map(|g| g.replace("{{name}}", &quote_ident(role))).collect())
}

#[async_trait]
impl Issuer for PostgresIssuer {
    fn prepare(&self, req: &IssueRequest<'_>) -> Option<serde_json::Value> {
        Some(serde_json::json!({"role": role_name(req.path)}))
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, LeaseError> {
        let role = req
            .intent
            .and_then(|i| i.get("role"))
            .and_then(|r| r.as_str())
            .ok_or_else(|| fail("no role name was prepared"))?
            .to_string();
        let grants = grants(req, &role)?;
        let client = connect(req.base, self.timeout).await?;
        let expires_at = Utc::now() + chrono::Duration::from_std(req.ttl).unwrap_or(chrono::Duration::minutes(15));
        let valid_until = expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let pw = password();
        let create = zeroize::Zeroizing::new(format!(
            "CREATE ROLE {} WITH LOGIN PASSWORD {} VALID UNTIL {}",
            quote_ident(&role),
            quote_literal(&pw),
            quote_literal(&valid_until)
        ));
        client.batch_execute(&create).await.map_err(|e| fail(format!("CREATE ROLE failed: {}", db_error(&e))))?;
        if !grants.is_empty() {
            let _serial = self.acl.lock().await;
            for g in &grants {
                if let Err(e) = acl_change(&client, g).await {
                    let _ = drop_role(&client, &role).await;
                    return Err(fail(format!("a grant failed, role dropped: {}", db_error(&e))));
                }
            }
        }
        // The end the role states, read back (`VALID UNTIL`, as the server stored it).
        let expires_at = valid_until_of(&client, &role).await.unwrap_or(expires_at);
        let a = admin(req.base)?;
        let mut fields = SecretFields::default();
        let url = format!(
            "postgres://{}:{}@{}:{}/{}",
            url::form_urlencoded::byte_serialize(role.as_bytes()).collect::<String>(),
            &*pw,
            a.host,
            a.port,
            a.database
        );
        fields.insert("username", role.clone());
        fields.insert("password", pw.to_string());
        fields.insert("host", a.host);
        fields.insert("port", a.port.to_string());
        fields.insert("database", a.database);
        fields.insert("url", url);
        fields.insert("expires_at", valid_until);
        Ok(Issued { fields, expires_at: Some(expires_at), revocation: serde_json::json!({"role": role}) })
    }

    async fn revoke(&self, req: &RevokeRequest<'_>) -> Result<(), LeaseError> {
        let role =
            req.revocation.get("role").and_then(|r| r.as_str()).ok_or_else(|| fail("the lease names no role"))?;
        let client = connect(req.base, self.timeout).await?;
        let _serial = self.acl.lock().await;
        drop_role(&client, role).await
    }
}

/// A role's `VALID UNTIL` as the server keeps it; None when it has none (or it cannot be read).
async fn valid_until_of(client: &Client, role: &str) -> Option<chrono::DateTime<Utc>> {
    let sql = "SELECT floor(extract(epoch FROM rolvaliduntil))::bigint FROM pg_roles \
               WHERE rolname = $1 AND rolvaliduntil IS NOT NULL AND rolvaliduntil <> 'infinity'";
    let row = client.query_opt(sql, &[&role]).await.ok()??;
    chrono::DateTime::from_timestamp(row.try_get::<_, i64>(0).ok()?, 0)
}

/// The database's own message (never the statement, which may hold a password).
fn db_error(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| format!("{} ({})", d.message(), d.code().code())).unwrap_or_else(|| e.to_string())
}

/// Ends a role: no new logins, its sessions terminated, what it owns reassigned, then dropped.
async fn drop_role(client: &Client, role: &str) -> Result<(), LeaseError> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map_err(|e| fail(db_error(&e)))?
        .is_some();
    if !exists {
        return Ok(());
    }
    let q = quote_ident(role);
    client.batch_execute(&format!("ALTER ROLE {q} NOLOGIN")).await.map_err(|e| fail(db_error(&e)))?;
    // An admin that is not a superuser (CREATEROLE, its privileges WITH GRANT OPTION) may end the
    // role's sessions and drop what it was granted only as a member of it: it makes itself one
    // (CREATEROLE allows that for roles it may administer; a superuser needs nothing).
    let superuser: bool = client
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = CURRENT_USER", &[])
        .await
        .map_err(|e| fail(db_error(&e)))?
        .get(0);
    if !superuser {
        acl_change(client, &format!("GRANT {q} TO CURRENT_USER")).await.map_err(|e| {
            fail(format!("the admin cannot take membership of the role to revoke it: {}", db_error(&e)))
        })?;
    }
    let terminated = client
        .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", &[&role])
        .await
        .map_err(|e| fail(format!("cannot end the role's sessions: {}", db_error(&e))))?;
    if terminated.iter().any(|r| !r.get::<_, bool>(0)) {
        return Err(fail("a session of the role could not be terminated"));
    }
    acl_change(client, &format!("REASSIGN OWNED BY {q} TO CURRENT_USER; DROP OWNED BY {q}; DROP ROLE IF EXISTS {q}"))
        .await
        .map_err(|e| fail(format!("DROP ROLE failed: {}", db_error(&e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\'b"), r"E'a\\''b'");
    }

    #[test]
    fn role_names_are_safe_and_short() {
        let r = role_name("/dynamic/db/App-Prod; DROP TABLE x");
        assert!(r.starts_with("lfs_dynamic_db_app_prod__drop_"), "{r}");
        assert!(r.len() <= 63 && r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        assert_ne!(role_name("/a"), role_name("/a"));
    }
}
